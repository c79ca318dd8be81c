"""Parity of the deployed backends with the torch reference (``tf-parity``).

Modules, one job each:

* :mod:`.compare`: tolerances, score-map statistics, detection matching, NMS-tie grouping;
* :mod:`.images`: the seeded synthetic test image (shared with tests and benchmarks);
* :mod:`.harness`: reference cases, one runner vs the reference, a whole parity run;
* :mod:`.report`: the Markdown table, the summary line and the JSON report;
* :mod:`.cli`: ``tf-parity`` (arguments, the export it needs, exit status).
"""

"""Scale out on Ray: whole datasets across a cluster (batch) and detection over HTTP (online).

- :mod:`.pool`: :func:`~.pool.run_tasks` runs any per-file function ``process(detector, task,
  options)`` over an actor pool, one detector per actor, with per-file failures collected,
  lost workers retried, finished outputs skipped, and progress for the whole job;
  :func:`~.pool.run_serial` is the same contract in this process.
- :mod:`.cluster`: connecting to (or starting) a Ray cluster, its resources, the pool plan.
- :mod:`.options`: the ``--ray [ADDRESS]`` / ``--workers`` options shared by the CLIs.
- :mod:`.detect_tasks`: ``tf-detect`` as tasks for the pool.
- :mod:`.service`: HTTP request handling without any framework (limits, decoding, JSON errors).
- :mod:`.serve`: the Ray Serve deployment; :mod:`.cli_serve`: ``tf-serve``.

Ray is imported lazily (inside functions): importing this package costs nothing when the
``scale`` extra (``ray[data,serve]``) is not installed.
"""

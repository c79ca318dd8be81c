"""Parity results as a Markdown table, a summary line and a JSON report.

Every failed result names each criterion that failed with its measured value and limit
(e.g. ``dprob 7.2e-02 > 0.05``), in the table and in the JSON.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

from tinyfaces_trt.parity.compare import TOLERANCES, Tolerances, format_stat
from tinyfaces_trt.parity.harness import (DETECTIONS_NOT_COMPARED, FAILED, PASSED, SKIPPED,
                                          ParityResult)

_HEAD = ("| backend | image WxH | status | levels | max abs | max rel | maps | dets ref/test "
         "| matched | max Δprob | dets |\n|---|---|---|---|---|---|---|---|---|---|---|")


def _cell(text: str) -> str:
    """Text safe inside a Markdown table cell (one line, pipes escaped)."""
    return " ".join(text.split()).replace("|", "\\|")


def _verdict(failures: Sequence[str]) -> str:
    return "ok" if not failures else "FAIL: " + "; ".join(failures)


def markdown_table(results: Sequence[ParityResult]) -> str:
    """A Markdown table of the results, one row per backend and image size.

    The ``maps`` and ``dets`` cells say ``ok`` or ``FAIL:`` followed by every failed
    criterion; a skipped row gives the reason in the last cell.
    """
    rows = [_HEAD]
    for r in results:
        size = f"{r.width}x{r.height}"
        if r.status == SKIPPED:
            reason = r.skipped.splitlines()[0] if r.skipped.strip() else "not run"
            rows.append(f"| {r.backend} | {size} | skipped | - | - | - | - | - | - | - | "
                        f"{_cell(reason)} |")
            continue
        m, d = r.maps, r.detections
        maps = _verdict(m.failures) if m is not None else "FAIL: not compared"
        if d is None:
            dets, matched, diff = "-", "-", "-"
            dets_ok = f"FAIL: {DETECTIONS_NOT_COMPARED}"
        else:
            dets, matched, diff = f"{d.n_ref}/{d.n_test}", str(d.n_matched), \
                format_stat(d.max_score_diff)
            dets_ok = _verdict(d.failures)
            if d.nms_ambiguous:
                dets_ok += f" ({d.nms_ambiguous} NMS-ambiguous)"
        status = "FAILED" if r.status == FAILED else r.status
        rows.append(f"| {r.backend} | {size} | {status} | {r.levels} | "
                    f"{format_stat(m.max_abs) if m else '-'} | "
                    f"{format_stat(m.max_rel) if m else '-'} | {_cell(maps)} | {dets} | "
                    f"{matched} | {diff} | {_cell(dets_ok)} |")
    return "\n".join(rows)


def count_statuses(results: Sequence[ParityResult]) -> dict[str, int]:
    """``{"passed": n, "failed": n, "skipped": n}``."""
    counts = {PASSED: 0, FAILED: 0, SKIPPED: 0}
    for r in results:
        counts[r.status] += 1
    return counts


def summary_line(results: Sequence[ParityResult], seconds: float, source: str) -> str:
    """E.g. ``4 passed, 1 failed, 2 skipped in 3.2 s (untrained seeded network)``."""
    c = count_statuses(results)
    return (f"{c[PASSED]} passed, {c[FAILED]} failed, {c[SKIPPED]} skipped in {seconds:.1f} s "
            f"({source})")


def _clean(value: Any) -> Any:
    """JSON-safe: non-finite floats as strings, tuples as lists, recursively."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def results_to_json(results: Sequence[ParityResult]) -> list[dict[str, Any]]:
    """JSON-ready result dicts: the comparisons' fields plus ``status``, ``passed`` and
    ``failures`` (every failed criterion with its measured value and limit)."""
    return [_clean({**asdict(r), "status": r.status, "passed": r.passed, "failures": r.failures})
            for r in results]


def json_report(results: Sequence[ParityResult], *, exit_code: int, backends: Sequence[str],
                requested: bool, allow_skip: bool, sizes: Sequence[tuple[int, int]],
                weights: str | None, seconds: float,
                tolerances: dict[str, Tolerances] | None = None,
                settings: dict[str, Any] | None = None) -> dict[str, Any]:
    """The whole run as one JSON-ready dict (what ``tf-parity --json`` writes); ``settings``:
    the detection settings both sides ran with (``prob_thresh``, ``nms_thresh``,
    ``pyramid``).

    ``passed`` is true exactly when the run exits 0: no comparison failed, and no skip was
    refused (a requested backend, or nothing compared at all, without ``--allow-skip``).
    """
    return _clean({
        "passed": exit_code == 0,
        "exit_code": exit_code,
        "counts": count_statuses(results),
        "reference": "torch fp32 CPU",
        "weights": weights,
        "untrained": weights is None,
        "sizes_wh": [list(s) for s in sizes],
        "backends": list(backends),
        "backends_requested": requested,
        "allow_skip": allow_skip,
        "seconds": round(seconds, 3),
        "settings": dict(settings or {}),
        "tolerances": {k: asdict(v) for k, v in (tolerances or TOLERANCES).items()},
        "results": results_to_json(results),
    })

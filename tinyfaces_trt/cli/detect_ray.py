"""``tf-detect --ray``: the tf-detect job as tasks for :func:`~tinyfaces_trt.scaleout.pool.run_tasks`.

    python -m tinyfaces_trt.cli.detect_ray photos/ --model export/ --out results/ --ray

It reuses tf-detect's own pieces (input walk, output names, ``write_outputs``, the JSON
record and the console line), so a distributed run writes exactly the files a
single-process run writes, under the same names. What has to differ:

- Output names (``a_2`` when two inputs share a name), WIDER name clashes and outputs that
  would replace an input are decided in the driver by tf-detect's own plan
  (:func:`~tinyfaces_trt.cli.detect.plan_run`), before dispatch, so every worker writes
  names fixed by its task.
- Each worker writes an image's files with tf-detect's ``write_outputs``, each one atomically
  (a temporary name renamed when complete): a worker killed mid-image leaves no half-written
  file under a final name, and an image whose outputs are not all there is run again.
- An image whose outputs all exist, made by this run's network and detection settings, is
  skipped (resume: :func:`~tinyfaces_trt.cli.detect_plan.resume_state`), reported as
  tf-detect does: under ``"skipped"`` in ``--json``, and in the summary line.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from tinyfaces_trt.cli.detect import (
    EXIT_USAGE, PROG, detector_spec, finish_run, format_line, output_boxes, prepare_run,
    redo_line, skipped_line, skipped_record, write_image_outputs)
from tinyfaces_trt.cli.detect_plan import (
    DetectOptions, DetectTask, InputOverwriteError, expected_outputs, memory_failure, plan_tasks,
    refuse_outside_out, resume_state, task_plan)
import tinyfaces_trt.core.progress as progress
from tinyfaces_trt.core.cli import stderr_line, stdout_line
from tinyfaces_trt.core.errors import ConfigError, TinyFacesError
from tinyfaces_trt.core.files import temporaries_of
from tinyfaces_trt.detector_record import expected_identity
from tinyfaces_trt.scaleout.options import ray_address, ray_requested
from tinyfaces_trt.scaleout.pool import TaskResult, run_serial, run_tasks


@dataclass(frozen=True)
class DetectValue:
    """What a worker returns for one image: its JSON record, its console line and why its
    existing outputs were made again (None: none was)."""

    record: dict[str, Any]
    line: str
    redone: str | None = None


def outputs_exist(task: DetectTask, options: DetectOptions) -> bool:
    """True when the image has outputs, all of them exist, made by this run's detector, and
    ``--overwrite`` is not given (the pool then skips it: a rerun resumes)."""
    return resume_state(task, options).done


def process_detect_task(detector: Any, task: DetectTask, options: DetectOptions) -> DetectValue:
    """Detects one image and writes its outputs, each atomically under its final name, as
    tf-detect does: outputs that exist are kept unless ``--overwrite`` (a worker killed on
    this image leaves no partial file under a final name, and its retry completes the rest).

    Raises:
        TinyFacesError: the image fails (the pool reports its message): as in tf-detect's own
            run, also where its outputs' folder leads outside ``--out`` (nothing read or
            removed there) or the worker ran out of memory on it
            (:func:`~.detect_plan.memory_failure`).
    """
    from tinyfaces_trt.runtime.imageio import load_image_stored

    job = task.job
    plan = task_plan(task, options)
    if plan is not None:  # (planned so; a link put there since)
        refuse_outside_out(plan, options.resolved_out(), job.path)
    state = resume_state(task, options)
    if plan is not None:
        _remove_stale_temporaries(plan.paths())
    try:
        stored = load_image_stored(job.path, log_others=True)
    except MemoryError as exc:
        raise memory_failure(job, exc) from None
    image = stored.rgb
    try:
        boxes, logits, masked = output_boxes(detector, image, detector.detect(image))
        record = write_image_outputs(task, options, state, image, boxes, logits, masked,
                                     stored)
    except MemoryError as exc:
        raise memory_failure(job, exc, image) from None
    return DetectValue(record, format_line(job.path, boxes), state.reason)


def _remove_stale_temporaries(paths: Sequence[Path]) -> None:
    """Removes the temporary files that an attempt killed while writing these outputs left
    beside them; the pool runs an image on one worker at a time, so none of them is being
    written now."""
    for path in paths:
        for stale in temporaries_of(path):
            stale.unlink(missing_ok=True)


def run_detect(args: argparse.Namespace) -> int:
    """tf-detect's run (``detect._run``) on a Ray cluster; returns the exit status."""
    start = time.perf_counter()
    say = lambda line: stderr_line(f"{PROG}: {line}")  # noqa: E731
    try:
        run, untrained = prepare_run(args)
        spec = detector_spec(args, say, for_workers=True)
        args.backend = spec.backend  # "auto" resolved, as tf-detect does: the JSON records what ran
        model = expected_identity(spec.model_dir, spec.weights, spec.backend, spec.fp16)
        options = replace(run.options, backend=spec.backend, model=model)
    except (InputOverwriteError, ConfigError) as exc:
        say(f"error: {exc}")
        return EXIT_USAGE
    except TinyFacesError as exc:
        say(f"error: {exc}")
        return 1
    failures = run.failures
    tasks = run.tasks

    def on_result(result: TaskResult) -> None:
        if result.status == "done" and result.value.redone is not None:
            stderr_line(redo_line(result.task.job, result.value.redone))
        if result.status == "done" and not args.json:
            stdout_line(result.value.line)
        elif result.status == "failed":
            say(f"error: {result.error}")

    pool = run_tasks if ray_requested(args) else run_serial
    where = {"address": ray_address(args), "workers": args.workers} if ray_requested(args) else {}
    try:  # (no cluster is started for a run with nothing to do)
        results = pool(tasks, spec, process_detect_task, options, is_done=outputs_exist,
                       progress=progress.on_terminal(), on_result=on_result, desc=PROG,
                       **where) if tasks else []
    except TinyFacesError as exc:
        say(f"error: {exc}")
        return 1
    records: list[dict[str, Any]] = []
    skipped: list[dict[str, Any]] = []
    for result in results:
        if result.status == "failed":
            failures.append({"image": str(result.task.job.path), "error": result.error})
        elif result.status == "done":
            records.append(result.value.record)
        else:
            stderr_line(skipped_line(result.task.job))
            skipped.append(skipped_record(result.task.job))
    finish_run(args, untrained, options.model, records, skipped, failures, start)
    return 1 if failures else 0


def main(argv: Sequence[str] | None = None) -> int:
    """``tf-detect``, with ``--ray`` (``python -m tinyfaces_trt.cli.detect_ray`` is the same)."""
    from tinyfaces_trt.cli.detect import main as detect_main

    return detect_main(argv)


__all__ = ["DetectOptions", "DetectTask", "DetectValue", "expected_outputs", "main",
           "outputs_exist", "plan_tasks", "process_detect_task", "run_detect"]


if __name__ == "__main__":
    sys.exit(main())

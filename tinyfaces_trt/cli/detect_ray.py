"""``tf-detect --ray``: the tf-detect job as tasks for :func:`~tinyfaces_trt.scaleout.pool.run_tasks`.

    python -m tinyfaces_trt.cli.detect_ray photos/ --model export/ --out results/ --ray

It reuses tf-detect's own pieces (input walk, output names, ``write_outputs``, the JSON
record and the console line), so a distributed run writes exactly the files a
single-process run writes, under the same names. What has to differ:

- Output names (``a_2`` when two inputs share a name) and WIDER name clashes are decided
  in the driver, in input order, before dispatch, so every worker writes names fixed by
  its task.
- Each worker writes an image's files into a private staging folder under ``--out`` and
  renames them into place, the JSON sidecar last: a worker killed mid-image leaves no
  half-written file under a final name, and the sidecar marks the image finished.
- An image whose outputs all exist is skipped (resume); its JSON record is read back from
  its sidecar for ``--json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tinyfaces_trt.cli.detect import (
    PROG, ImageJob, OutputNames, _check_weights_path, collect_images, format_line,
    _resolved, output_stem, plan_outputs, write_outputs)
from tinyfaces_trt.core.cli import is_untrained, stderr_line, untrained_banner
from tinyfaces_trt.core.errors import TinyFacesError
from tinyfaces_trt.core.files import atomic_output, prepare_output_dir, temporaries_of
from tinyfaces_trt.runtime.imageio import DEFAULT_JPEG_QUALITY
from tinyfaces_trt.runtime.results import detections_to_list
from tinyfaces_trt.detectors import spec_from_arguments
from tinyfaces_trt.scaleout.options import ray_address, ray_requested
from tinyfaces_trt.scaleout.pool import TaskResult, run_serial, run_tasks


@dataclass(frozen=True)
class DetectOptions:
    """What every image of a tf-detect run shares (picklable, sent to each worker once)."""

    backend: str
    out_dir: Path | None = None
    wider_dir: Path | None = None
    anonymise: str | None = None  # "blur", "pixelate" or None
    draw: bool = False  # with anonymise: also the copy with the faces visible (--draw)
    jpeg_quality: int = DEFAULT_JPEG_QUALITY
    overwrite: bool = False
    model: dict[str, Any] | None = None  # the detector's identity, recorded in every JSON


@dataclass(frozen=True)
class DetectTask:
    """One image and the output names the driver gave it.

    Attributes:
        job: tf-detect's image job.
        stem: its output name under ``--out`` (None without ``--out``).
        wider_file: its WIDER result file (None without ``--wider-dir``).
    """

    job: ImageJob
    stem: Path | None = None
    wider_file: Path | None = None


@dataclass(frozen=True)
class DetectValue:
    """What a worker returns for one image: its JSON record and its console line."""

    record: dict[str, Any]
    line: str


def plan_tasks(jobs: Sequence[ImageJob], options: DetectOptions
               ) -> tuple[list[DetectTask], list[tuple[ImageJob, str]]]:
    """Fixes every image's output names, in input order as tf-detect does.

    Returns:
        (tasks, refused): refused images would overwrite the WIDER result of an earlier
        image of the run (same event and name), with tf-detect's message.
    """
    from tinyfaces_trt.wider.format import detection_path

    names = OutputNames()
    wider_owner: dict[Path, Path] = {}
    tasks: list[DetectTask] = []
    refused: list[tuple[ImageJob, str]] = []
    for job in jobs:
        wider_file = None
        if options.wider_dir is not None:
            wider_file = detection_path(options.wider_dir, job.event, job.path.stem)
            other = wider_owner.setdefault(wider_file, job.path)
            if other != job.path:
                refused.append((job, f"{job.path}: its WIDER result {wider_file} was already "
                                     f"written for {other} (same event and name); rename one "
                                     "of the two images"))
                continue
        stem = output_stem(names, options.out_dir, job) if options.out_dir is not None else None
        tasks.append(DetectTask(job, stem, wider_file))
    return tasks, refused


def _plan(task: DetectTask, options: DetectOptions) -> Any:
    """tf-detect's output plan of one image (None without ``--out``)."""
    if options.out_dir is None or task.stem is None:
        return None
    return plan_outputs(options.out_dir, task.stem, task.job, options.anonymise,
                        draw=options.draw or options.anonymise is None)


def expected_outputs(task: DetectTask, options: DetectOptions) -> list[Path]:
    """The final files of one image, exactly as tf-detect names them, then its WIDER file."""
    plan = _plan(task, options)
    return (plan.paths() if plan else []) + ([task.wider_file] if task.wider_file else [])


def outputs_exist(task: DetectTask, options: DetectOptions) -> bool:
    """True when the image has outputs, all of them exist and ``--overwrite`` is not given
    (the pool then skips it: a rerun resumes)."""
    paths = expected_outputs(task, options)
    return not options.overwrite and bool(paths) and all(p.is_file() for p in paths)


def process_detect_task(detector: Any, task: DetectTask, options: DetectOptions) -> DetectValue:
    """Detects one image and writes its outputs, each atomically under its final name, as
    tf-detect does: outputs that exist are kept unless ``--overwrite`` (a worker killed on
    this image leaves no partial file under a final name, and its retry completes the rest)."""
    from tinyfaces_trt.runtime.imageio import load_image
    from tinyfaces_trt.wider.format import write_detection_file

    job = task.job
    image = load_image(job.path)
    boxes = detector.detect(image)
    record = {"image": str(job.path), **_resolved(job),
              "width": int(image.shape[1]), "height": int(image.shape[0]),
              "backend": options.backend, "model": options.model,
              "detections": detections_to_list(boxes)}
    plan = _plan(task, options)
    if plan is not None:
        _remove_stale_temporaries(plan.paths())
        keep = [] if options.overwrite else [p for p in plan.paths() if p.exists()]
        write_outputs(plan, image, boxes, record, options.anonymise,
                      jpeg_quality=options.jpeg_quality, keep=keep)
    if task.wider_file is not None and (options.overwrite or not task.wider_file.exists()):
        task.wider_file.parent.mkdir(parents=True, exist_ok=True)
        with atomic_output(task.wider_file) as tmp:
            write_detection_file(tmp, f"{job.event}/{job.path.name}", boxes)
    return DetectValue(record, format_line(job.path, boxes))


def _remove_stale_temporaries(paths: Sequence[Path]) -> None:
    """Removes the temporary files that an attempt killed while writing these outputs left
    beside them; the pool runs an image on one worker at a time, so none of them is being
    written now."""
    for path in paths:
        for stale in temporaries_of(path):
            stale.unlink(missing_ok=True)


def _sidecar_record(task: DetectTask, options: DetectOptions) -> dict[str, Any] | None:
    """The JSON record a finished image left in its sidecar (None without one)."""
    paths = [p for p in expected_outputs(task, options) if p.suffix == ".json"]
    try:
        return json.loads(paths[0].read_text()) if paths else None
    except (OSError, ValueError):
        return None


def run_detect(args: argparse.Namespace) -> int:
    """tf-detect's run (``detect._run``) on a Ray cluster; returns the exit status."""
    start = time.perf_counter()
    say = lambda line: stderr_line(f"{PROG}: {line}")  # noqa: E731
    try:
        _check_weights_path(args.weights)
        out_dir = prepare_output_dir(args.out, f"--out {args.out}") if args.out else None
        wider_dir = prepare_output_dir(args.wider_dir, f"--wider-dir {args.wider_dir}") \
            if args.wider_dir else None
        untrained = is_untrained(args.model, args.weights)
        if untrained:
            stderr_line(untrained_banner(PROG, args.model))
        spec = spec_from_arguments(args, say, for_workers=True)
    except TinyFacesError as exc:
        say(f"error: {exc}")
        return 1
    jobs, errors = collect_images(args.images, [d for d in (out_dir, wider_dir) if d])
    failures = [{"image": arg, "error": message} for arg, message in errors]
    for _, message in errors:
        say(f"error: {message}")
    anonymise = "blur" if args.blur else "pixelate" if args.pixelate else None
    try:
        options = DetectOptions(args.backend, out_dir, wider_dir, anonymise, draw=args.draw,
                                jpeg_quality=args.jpeg_quality, overwrite=args.overwrite,
                                model=_model_identity(spec))
    except TinyFacesError as exc:
        say(f"error: {exc}")
        return 1
    tasks, refused = plan_tasks(jobs, options)
    for job, message in refused:
        say(f"error: {message}")
        failures.append({"image": str(job.path), "error": message})

    def on_result(result: TaskResult) -> None:
        if result.status == "done" and not args.json:
            print(result.value.line, flush=True)
        elif result.status == "failed":
            say(f"error: {result.error}")

    run = run_tasks if ray_requested(args) else run_serial
    where = {"address": ray_address(args), "workers": args.workers} if ray_requested(args) else {}
    try:
        results = run(tasks, spec, process_detect_task, options, is_done=outputs_exist,
                      progress=sys.stderr.isatty(), on_result=on_result, desc=PROG, **where)
    except TinyFacesError as exc:
        say(f"error: {exc}")
        return 1
    records: list[dict[str, Any]] = []
    skipped = 0
    for result in results:
        if result.status == "failed":
            failures.append({"image": str(result.task.job.path), "error": result.error})
        elif result.status == "done":
            records.append(result.value.record)
        else:
            skipped += 1
            record = _sidecar_record(result.task, options)
            if record is not None:
                records.append(record)
    faces = sum(len(r["detections"]) for r in records)
    if args.json:
        print(json.dumps({"backend": args.backend, "untrained": untrained,
                          "images": records, "errors": failures}, indent=2))
    stderr_line(f"{PROG}: {len(records)} image(s), {faces} face(s), {len(failures)} error(s)"
                f"{f', {skipped} already done (skipped)' if skipped else ''} "
                f"in {time.perf_counter() - start:.1f} s")
    return 1 if failures else 0


def _model_identity(spec: Any) -> dict[str, Any]:
    """The model identity every JSON records, as the workers' detectors will report it."""
    if spec.model_dir is not None:
        from tinyfaces_trt.core.manifest import load_export_folder

        return load_export_folder(spec.model_dir, verify=False).identity.to_dict()
    from tinyfaces_trt.detectors import torch_identity

    return torch_identity(spec.weights).to_dict()


def main(argv: Sequence[str] | None = None) -> int:
    """``tf-detect``, with ``--ray`` (``python -m tinyfaces_trt.cli.detect_ray`` is the same)."""
    from tinyfaces_trt.cli.detect import main as detect_main

    return detect_main(argv)


if __name__ == "__main__":
    sys.exit(main())

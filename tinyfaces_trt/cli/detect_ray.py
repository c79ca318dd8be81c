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
import hashlib
import json
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tinyfaces_trt.cli.detect import (
    PROG, ImageJob, OutputNames, _check_weights_path, _is_untrained, build_parser,
    collect_images, detections_to_list, format_line, untrained_banner, write_outputs,
    _check_arguments, _JPEG)
from tinyfaces_trt.core.cli import logging_to_stderr, stderr_line
from tinyfaces_trt.core.errors import TinyFacesError
from tinyfaces_trt.core.files import TEMP_PREFIX, atomic_output, prepare_output_dir
from tinyfaces_trt.scaleout.options import (
    add_ray_arguments, check_ray_arguments, detector_spec, ray_address, ray_requested)
from tinyfaces_trt.scaleout.pool import TaskResult, run_serial, run_tasks


@dataclass(frozen=True)
class DetectOptions:
    """What every image of a tf-detect run shares (picklable, sent to each worker once)."""

    backend: str
    out_dir: Path | None = None
    wider_dir: Path | None = None
    anonymise: str | None = None  # "blur", "pixelate" or None


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
        stem = names.stem(job) if options.out_dir is not None else None
        tasks.append(DetectTask(job, stem, wider_file))
    return tasks, refused


def expected_outputs(task: DetectTask, options: DetectOptions) -> list[Path]:
    """The final files of one image, as ``write_outputs`` names them (sidecar last), then
    its WIDER file."""
    paths: list[Path] = []
    if options.out_dir is not None and task.stem is not None:
        base = options.out_dir / task.stem
        ext = ".jpg" if task.job.path.suffix.lower() in _JPEG else ".png"
        paths.append(base.with_name(base.name + "_boxes" + ext))
        if options.anonymise:
            suffix = "_blurred" if options.anonymise == "blur" else "_pixelated"
            paths.append(base.with_name(base.name + suffix + ext))
        paths.append(base.with_name(base.name + ".json"))
    if task.wider_file is not None:
        paths.append(task.wider_file)
    return paths


def outputs_exist(task: DetectTask, options: DetectOptions) -> bool:
    """True when the image has outputs and all of them exist (the pool then skips it)."""
    paths = expected_outputs(task, options)
    return bool(paths) and all(p.is_file() for p in paths)


def _staging_dir(out_dir: Path, stem: Path) -> Path:
    digest = hashlib.sha1(stem.as_posix().encode()).hexdigest()[:16]
    return out_dir / f"{TEMP_PREFIX}stage-{digest}"


def process_detect_task(detector: Any, task: DetectTask, options: DetectOptions) -> DetectValue:
    """Detects one image and writes its outputs (idempotent: a rerun replaces them)."""
    from tinyfaces_trt.runtime.imageio import load_image
    from tinyfaces_trt.wider.format import write_detection_file

    job = task.job
    image = load_image(job.path)
    boxes = detector.detect(image)
    record = {"image": str(job.path), "width": int(image.shape[1]), "height": int(image.shape[0]),
              "backend": options.backend, "detections": detections_to_list(boxes)}
    if options.out_dir is not None and task.stem is not None:
        staging = _staging_dir(options.out_dir, task.stem)
        shutil.rmtree(staging, ignore_errors=True)  # left by a worker killed on this image
        try:
            written = write_outputs(staging, task.stem, job, image, boxes, record,
                                    options.anonymise)
            for path in written:  # the JSON sidecar comes last: it marks the image finished
                final = options.out_dir / path.relative_to(staging)
                final.parent.mkdir(parents=True, exist_ok=True)
                path.replace(final)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    if task.wider_file is not None:
        task.wider_file.parent.mkdir(parents=True, exist_ok=True)
        with atomic_output(task.wider_file) as tmp:
            write_detection_file(tmp, f"{job.event}/{job.path.name}", boxes)
    return DetectValue(record, format_line(job.path, boxes))


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
        untrained = _is_untrained(args)
        if untrained:
            stderr_line(untrained_banner(args.model))
        spec = detector_spec(args, progress=say)
    except TinyFacesError as exc:
        say(f"error: {exc}")
        return 1
    jobs, errors = collect_images(args.images, [d for d in (out_dir, wider_dir) if d])
    failures = [{"image": arg, "error": message} for arg, message in errors]
    for _, message in errors:
        say(f"error: {message}")
    anonymise = "blur" if args.blur else "pixelate" if args.pixelate else None
    options = DetectOptions(args.backend, out_dir, wider_dir, anonymise)
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


def build_ray_parser() -> argparse.ArgumentParser:
    """tf-detect's parser with ``--ray [ADDRESS]`` and ``--workers N``."""
    parser = build_parser()
    add_ray_arguments(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """tf-detect with the cluster options (until tf-detect itself takes ``--ray``)."""
    parser = build_ray_parser()
    args = parser.parse_args(argv)
    _check_arguments(parser, args)
    check_ray_arguments(parser, args)
    try:
        with logging_to_stderr(PROG, args.verbose):
            return run_detect(args)
    except KeyboardInterrupt:
        stderr_line(f"{PROG}: interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())

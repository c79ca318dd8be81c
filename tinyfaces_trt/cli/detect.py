"""``tf-detect``: detect faces in images and folders, draw, anonymise, or write WIDER results.

    tf-detect photo.jpg --model export/ --out results/
    tf-detect photos/ --weights checkpoint.pth --out results/ --blur
    tf-detect WIDER_val/images --model export/ --wider-dir pred/ --prob-thresh 0.03 --pyramid fixed

Per image it prints one line (or, with ``--json``, one JSON document for the run), and with
``--out`` writes ``<name>.json`` (detections and the model's identity) and
``<name>_boxes.jpg|png`` (boxes drawn); with ``--blur``/``--pixelate`` it writes
``<name>_blurred|_pixelated.jpg|png`` and NO copy with the faces visible unless ``--draw``
asks for one. Every file is written atomically (complete or absent); a write error is
reported for that image and counted in the exit status. Outputs that exist already are kept
(an image whose outputs all exist is skipped) unless ``--overwrite``, or unless they were made
by another network or with other detection settings than this run's (the JSON records both; a
WIDER result's are in ``--wider-dir``'s ``.tf-detect/``), or an anonymised copy with other
masks (the JSON's ``"anonymised"``; none recorded: an older tf-detect's): those are made again.
The anonymised copy masks the detector's unclipped boxes with tf-anonymize's default masks
(:data:`~tinyfaces_trt.runtime.masks.ANONYMIZE_STYLE`, in the mode asked for): the same pixels
as tf-anonymize and tf-serve's ``/anonymize``; every other output has them clipped to the
image. Copies of an image on standard input (``-``, ``/dev/stdin`` or another name of it, all
read alike) are JPEG when its bytes are, as a ``.jpg`` file's. An output that would replace an
input file of the run is refused before any work (exit 2), and a WIDER file that is not the
image's own result, or an ``--out`` copy without the detections JSON that shows tf-detect
wrote it (unless ``--overwrite``), is neither skipped as done nor replaced (that image fails).
Nothing is written into a folder that leads outside ``--out`` (a symbolic link to a folder
elsewhere placed in it: that image fails; ``--out`` itself may be a link, resolved when the
run starts). Output folders are never read as inputs. A bad image, or one this process runs
out of memory on, is reported on stderr and skipped; the exit status is then 1. User mistakes
never give a traceback (:class:`TinyFacesError` is caught); argument errors exit with 2.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import sys
import textwrap
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from tinyfaces_trt.core.cli import (EXIT_USAGE, add_version_argument, checked, is_untrained,
                                    run_interruptible, shown, stderr_line,
                                    untrained_banner, write_stdout)
from tinyfaces_trt.core.config import coordinate_base_of
from tinyfaces_trt.core.errors import ConfigError, ImageError, TinyFacesError
import tinyfaces_trt.core.progress as progress
from tinyfaces_trt.core.progress import detect_with_progress
from tinyfaces_trt.detector_options import add_detector_arguments, check_detector_arguments
from tinyfaces_trt.detector_record import record_from_arguments
from tinyfaces_trt.core.threads import usable_cores
from tinyfaces_trt.runtime.postprocess import probability
from tinyfaces_trt.runtime.results import detections_to_list
from tinyfaces_trt.scaleout.options import add_ray_arguments, check_ray_arguments, ray_requested
from tinyfaces_trt.media_files import IMAGE_ALIASES
from tinyfaces_trt.cli.detect_plan import (
    IMAGE_SUFFIXES, MASK_RECORD, DetectOptions, DetectTask, ImageJob, InputOverwriteError,
    Resume, find_inputs, is_stdin_argument, mask_record, memory_failure, plan_tasks,
    refuse_outside_out, refuse_replacing_inputs, refuse_unwritable, resolved_of, resume_state,
    task_plan, write_outputs, write_wider_result)
from tinyfaces_trt.core.files import prepare_output_dir, removed_if_left_empty
from tinyfaces_trt.runtime.imageio import DEFAULT_JPEG_QUALITY
from tinyfaces_trt.runtime.masks import ANONYMIZE_STYLE

if TYPE_CHECKING:
    from tinyfaces_trt.detectors import DetectorSpec
    from tinyfaces_trt.runtime.pipeline import Detector

PROG = "tf-detect"
log = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (its ``--help`` documents every option)."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description=textwrap.fill(
            "Detect faces with the Tiny Faces detector (Hu & Ramanan, CVPR 2017). Prints the "
            "detections of every image (x1,y1,x2,y2 in pixels, and the face probability); "
            "optionally draws them, anonymises the faces, or writes the official WIDER FACE "
            "result files.", 88),
        epilog="""\
network source (pick one; the default is loud about being useless):
  --model DIR     an export folder written by tf-export (any backend but torch and
                  torch-cuda)
  --weights F     a checkpoint: torch and torch-cuda run it directly; the other backends
                  export it once into the cache $TINYFACES_CACHE (default
                  ~/.cache/tinyfaces_trt/<sha256 prefix>/; tensorrt also builds an engine
                  there) and reuse it later
  (neither)       the seeded UNTRAINED network: detections are meaningless

examples:
  tf-detect photo.jpg --model export/ --out results/
  tf-detect photos/ --weights checkpoint.pth --out anonymised/ --blur
  tf-detect photo.jpg --model export/ --json --prob-thresh 0.8
  tf-detect WIDER_val/images --model export/ --wider-dir pred/ --prob-thresh 0.03 --pyramid fixed

outputs: with --blur/--pixelate, --out holds only anonymised images and the
detections JSON (add --draw for copies with boxes drawn, faces visible). Every
file is written to a temporary name and renamed when complete; a run whose
output would replace one of its input files is refused before any work.
Images inside --out/--wider-dir are not read as inputs (a line says how many
were left out). Progress of folder runs goes to stderr when it is a terminal.

exit status: 0 all images processed, 1 an image, one of its output files or the
setup failed (errors are listed on stderr, other images are still processed),
2 bad command-line arguments or an output that would replace an input file,
130 interrupted (Ctrl-C or SIGTERM).""",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("images", nargs="+", metavar="IMAGE",
                        help="image files, or folders (walked recursively, following symbolic "
                             "links, each real folder once, for "
                             + "/".join(s[1:] for s in IMAGE_SUFFIXES) + " files; also "
                             + "/".join(s[1:] for s in IMAGE_ALIASES) + ": JPEG; hidden "
                             "entries, unreadable folders and pipes are left out and named; "
                             "images of other formats, e.g. .heic, are errors; videos are "
                             "named), "
                             "or - (or /dev/stdin) for one image on standard input")
    add_detector_arguments(parser)
    parser.add_argument("--out", metavar="DIR",
                        help="write <name>.json (detections) and <name>_boxes.jpg|png (boxes "
                             "drawn; with --blur/--pixelate only if --draw) for every image "
                             "into DIR (default: write nothing)")
    parser.add_argument("--json", action="store_true",
                        help="print one JSON document with every image's detections instead "
                             "of one line per image (default: lines)")
    anon = parser.add_mutually_exclusive_group()
    anon.add_argument("--blur", action="store_true",
                      help="write <name>_blurred.jpg|png with every face blurred (each box "
                           f"enlarged {ANONYMIZE_STYLE.scale:g}x about its centre, as "
                           "tf-anonymize does: a detected box is tight around the face; a box "
                           "cut by the image border is enlarged whole, then cut), and no "
                           "copy showing the faces unless --draw (needs --out)")
    anon.add_argument("--pixelate", action="store_true",
                      help="write <name>_pixelated.jpg|png with every face pixelated into "
                           f"{ANONYMIZE_STYLE.cells} x {ANONYMIZE_STYLE.cells} cells (each box "
                           f"enlarged {ANONYMIZE_STYLE.scale:g}x about its centre, as "
                           "tf-anonymize does; a box cut by the image border is enlarged whole, "
                           "then cut), and no copy showing the faces unless --draw (needs --out)")
    parser.add_argument("--draw", action="store_true",
                        help="with --blur/--pixelate, also write <name>_boxes.jpg|png, the "
                             "ORIGINAL image with boxes drawn, faces visible (default: off when "
                             "anonymising, on otherwise; without it, an image whose _boxes copy "
                             "an earlier run left in --out is refused)")
    parser.add_argument("--jpeg-quality", type=_jpeg_quality, default=DEFAULT_JPEG_QUALITY,
                        metavar="Q", help="quality 1..100 of the JPEG files written for JPEG "
                                          "inputs (.jpg/.jpeg files, and JPEG data on standard "
                                          "input; other inputs get PNG) (default: %(default)s)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace output files that exist (default: keep them; an image "
                             "whose outputs all exist is skipped, so a re-run resumes, unless "
                             "another network or other --prob-thresh/--nms-thresh/--min-face/"
                             "--max-face/--pyramid made them, or the anonymised copy was masked "
                             "otherwise (by an older tf-detect): those are made again; an image "
                             "on standard input is never taken as done: it gets the next free "
                             "name, stdin_2, ...)")
    parser.add_argument("--wider-dir", metavar="DIR",
                        help="write the official WIDER FACE result files DIR/<event>/<image>.txt; "
                             "for a folder IMAGE (e.g. WIDER_val/images) its event sub-folders "
                             "are kept; a .txt there whose first line is not <event>/<image> "
                             "(another image's, a label file) is never skipped nor replaced: "
                             "that image fails (default: none)")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="log backend details (providers in use, cache hits)")
    add_ray_arguments(parser)
    add_version_argument(parser)
    return parser


def _jpeg_quality(text: str) -> int:
    return checked(text, int, lambda v: 1 <= v <= 100, "an integer", "between 1 and 100")


def format_line(path: Path, boxes: np.ndarray, shown: int = 5) -> str:
    """``photo.jpg: 7 faces: 10,12,40,52 0.981; 60,8,90,47 0.734; ... (+5 more)``.

    Only the ``shown`` best boxes are listed; every box is in the JSON outputs.
    """
    n = len(boxes)
    text = f"{path}: {n} face{'s' if n != 1 else ''}"
    if n:
        rows = np.asarray(boxes, dtype=np.float64)[:shown]
        text += ": " + "; ".join(f"{x1:.0f},{y1:.0f},{x2:.0f},{y2:.0f} {p:.3f}"
                                 for x1, y1, x2, y2, p in rows)
        if n > shown:
            text += f"; ... (+{n - shown} more)"
    return text


# ---------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------

def _error(message: str) -> None:
    stderr_line(f"{PROG}: error: {message}")


def _check_weights_path(weights: str | None) -> None:
    if weights and Path(weights).is_dir():
        hint = (f"; {weights} is an export folder: pass it with --model"
                if (Path(weights) / "manifest.json").is_file() else "")
        raise TinyFacesError(f"--weights {weights} is a folder, not a checkpoint file "
                             f"(.pth or .mat){hint}")


def detector_spec(args: argparse.Namespace, progress: Callable[[str], None] | None = None, *,
                  for_workers: bool = False) -> DetectorSpec:
    """The detector a tf-detect run makes (:func:`~tinyfaces_trt.detectors.spec_from_arguments`
    of its arguments). With ``--wider-dir`` its config's ``score`` is ``"logit"``: column 4 of
    its detections is the network's float32 logit, which the WIDER result files carry
    exactly (:func:`~tinyfaces_trt.cli.detect_plan.write_wider_result`), and
    :func:`split_scores` turns it back into the probability for every other output. An
    internal switch: it moves no box, and the detection settings recorded for reruns
    (:func:`~tinyfaces_trt.detector_record.record_from_arguments`) do not name it.

    With ``--blur``/``--pixelate`` its config's ``clip_boxes`` is False, as tf-anonymize's and
    tf-serve's replicas' (:func:`~tinyfaces_trt.scaleout.serve.replica_spec`): the anonymised
    copy masks the unclipped boxes as they do (a face cut by the border gets the same enlarged
    mask), and :func:`output_boxes` clips them for every other output, exactly as the
    detector would have. Neither is recorded either."""
    from tinyfaces_trt.detectors import spec_from_arguments

    spec = spec_from_arguments(args, progress, for_workers=for_workers)
    if getattr(args, "blur", False) or getattr(args, "pixelate", False):
        from tinyfaces_trt.scaleout.serve import replica_spec

        spec, _ = replica_spec(spec)
    if getattr(args, "wider_dir", None):
        spec = replace(spec, config_overrides=(*spec.config_overrides, ("score", "logit")))
    return spec


def split_scores(detector: Any, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """What ``detector.detect`` returned, as ``(boxes, logits)``: ``boxes`` with column 4 the
    probability, whatever the detector's ``config.score`` (the JSON, the console line, masks
    and drawings take them), and ``logits`` the float32 logits of its rows where the detector
    wrote them (``score="logit"``: :func:`detector_spec` with ``--wider-dir``), else None.
    The probability is the host path's (:func:`~tinyfaces_trt.runtime.postprocess.probability`)."""
    if getattr(getattr(detector, "config", None), "score", "prob") != "logit":
        return boxes, None
    rows = np.array(boxes, dtype=np.float32).reshape(-1, 5)
    logits = rows[:, 4].copy()
    rows[:, 4] = probability(logits)
    return rows, logits


def output_boxes(detector: Any, image: np.ndarray, found: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """``(boxes, logits, masked)`` of what ``detector.detect(image)`` returned (``found``):
    ``boxes`` and ``logits`` as :func:`split_scores` gives them, clipped to the image (the
    JSON, the console line, the drawn copy and the WIDER result take them); ``masked``, the
    rows the anonymised copy hides: the same, unclipped where the detector keeps them so
    (:func:`detector_spec` with ``--blur``/``--pixelate``), clipped for ``boxes`` with
    :func:`~tinyfaces_trt.scaleout.service.clip_to_image`, as tf-serve's ``/detect`` clips
    them."""
    boxes, logits = split_scores(detector, found)
    config = getattr(detector, "config", None)
    if getattr(config, "clip_boxes", True):
        return boxes, logits, boxes
    from tinyfaces_trt.scaleout.service import clip_to_image

    return clip_to_image(boxes, image.shape[:2], config), logits, boxes


def _make_detector(args: argparse.Namespace) -> Detector:
    def say(line: str) -> None:
        stderr_line(f"{PROG}: {line}")

    spec = detector_spec(args, say)
    args.backend = spec.backend  # "auto" resolved: the JSON records what ran
    return spec.create(say)


def _check_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Argument combinations argparse cannot express; exits 2 through ``parser.error``."""
    if (args.blur or args.pixelate) and not args.out:
        parser.error("--blur/--pixelate write an anonymised copy and need --out DIR")
    if args.draw and not args.out:
        parser.error("--draw writes copies with boxes drawn and needs --out DIR")
    check_detector_arguments(parser, args)
    check_ray_arguments(parser, args)
    piped = [i for i in args.images if is_stdin_argument(i)]
    if ray_requested(args) and piped:
        parser.error(f"--ray distributes files; standard input ({piped[0]}) cannot be sent to "
                     "the workers")
    if len(piped) > 1:
        parser.error(f"standard input can be given once ({', '.join(piped)})")
    inputs = {Path(i).resolve() for i in args.images if Path(i).is_dir()}
    for option, folder in (("--out", args.out), ("--wider-dir", args.wider_dir)):
        if folder and Path(folder).resolve() in inputs:
            parser.error(f"{option} {folder} is also an input folder: its output files would be "
                         f"mixed with the images (and read as images next run); give "
                         f"another folder, e.g. {Path(folder).resolve().name}_out")


def main(argv: Sequence[str] | None = None) -> int:
    """``tf-detect`` entry point; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    _check_arguments(parser, args)
    return run_interruptible(PROG, lambda: _run(args), verbose=args.verbose,
                             interrupted="interrupted (files written so far are complete; no "
                                         "partial file was left)")


class _Console:
    """Lines for stdout and stderr, kept clear of the progress bar (when there is one)."""

    def __init__(self, bar: Any = None) -> None:
        self.bar = bar

    def out(self, line: str) -> None:
        self._write(line, sys.stdout)

    def err(self, line: str) -> None:
        self._write(line, sys.stderr)

    def _write(self, line: str, stream: Any) -> None:
        line = shown(line, stream)
        # the bar (on stderr) cleared while the line is written, then drawn again
        with self.bar.external_write_mode(file=stream) if self.bar is not None else \
                contextlib.nullcontext():
            if stream is sys.stdout:
                write_stdout(line + "\n")
            else:
                print(line, file=stream, flush=True)


def _progress_bar(jobs: Sequence[Any], args: argparse.Namespace) -> Any:
    """tqdm on stderr for folder inputs (several images) when stderr is a terminal (a log
    file gets no bar frames), else None."""
    if len(jobs) < 2 or not any(Path(a).is_dir() for a in args.images) \
            or not progress.on_terminal():
        return None
    from tqdm import tqdm

    return tqdm(total=len(jobs), desc=PROG, unit="image", file=sys.stderr, **progress.bar_size())


def _run(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    with removed_if_left_empty(args.out, args.wider_dir):
        if ray_requested(args):
            from tinyfaces_trt.cli.detect_ray import run_detect

            return run_detect(args)
        return _run_in(args, start)


@dataclass
class RunPlan:
    """A run's images with their output names, before any is processed.

    Attributes:
        tasks: the images to process, in order.
        options: what they share (``backend`` and ``model`` still as given).
        failures: ``{"image", "error"}`` of the arguments and images refused (reported).
    """

    tasks: list[DetectTask]
    options: DetectOptions
    failures: list[dict[str, str]]


def plan_run(args: argparse.Namespace, out_dir: Path | None,
             wider_dir: Path | None) -> RunPlan:
    """Finds the images, names their outputs, and reports on stderr the arguments and
    images refused and the images left out in output folders.

    Raises:
        InputOverwriteError: an output would replace an input file (nothing is reported).
    """
    outputs = {d.resolve(): f"{option} {d}"
               for option, d in (("--wider-dir", wider_dir), ("--out", out_dir)) if d}
    found = find_inputs(args.images, list(outputs))
    found.jobs = [_with_stdin_data(job) if job.is_stdin else job for job in found.jobs]
    options = DetectOptions(args.backend, out_dir, wider_dir,
                            "blur" if args.blur else "pixelate" if args.pixelate else None,
                            draw=args.draw, jpeg_quality=args.jpeg_quality,
                            overwrite=args.overwrite, detector=record_from_arguments(args),
                            out_root=out_dir.resolve() if out_dir is not None else None)
    tasks, refused = plan_tasks(found.jobs, options)
    refuse_replacing_inputs(tasks, options, found.jobs)
    tasks, unwritable = refuse_unwritable(tasks, options)
    refused += unwritable
    failures = [{"image": arg, "error": message} for arg, message in found.errors]
    failures += [{"image": str(job.path), "error": message} for job, message in refused]
    for failure in failures:
        _error(failure["error"])
    for folder, count in found.left_out.items():
        stderr_line(f"{PROG}: left out {count} image file(s) in {outputs[folder]}: an output "
                    "folder is not read as input (move them elsewhere to detect them)")
    if found.repeated:
        names = list(dict.fromkeys(found.repeated))
        more = f" and {len(names) - 5} more" if len(names) > 5 else ""
        stderr_line(f"{PROG}: left out {len(found.repeated)} image(s) given again (the same "
                    f"path as an earlier input): {', '.join(names[:5])}{more}")
    return RunPlan(tasks, options, failures)


def _with_stdin_data(job: ImageJob) -> ImageJob:
    """``job`` (standard input) with the bytes it sends, read now: their format picks the
    outputs' suffix (:func:`~tinyfaces_trt.cli.detect_plan.image_suffix`: a JPEG gets JPEG
    copies, as a ``.jpg`` file does). Where standard input cannot be read, ``job`` as it is:
    its load reports why.

    Raises:
        ImageError: standard input sends more than ``MAX_STREAM_BYTES`` (``tf-detect - <
            /dev/zero``): the run fails before any work, not after filling the memory.
    """
    from tinyfaces_trt.runtime.imageio import read_stream

    try:
        return replace(job, data=read_stream(sys.stdin.buffer, "<stdin>"))
    except (AttributeError, OSError, ValueError):  # closed or no standard input
        return job


def prepare_run(args: argparse.Namespace) -> tuple[RunPlan, bool]:
    """What a run does before its detector is made, in one process or with ``--ray``: the
    weights path checked, ``--out``/``--wider-dir`` prepared, the images planned
    (:func:`plan_run`) and the untrained banner printed. Returns the plan and whether the
    network is untrained.

    Raises:
        InputOverwriteError: an output would replace an input file.
        TinyFacesError: any other problem found before detecting.
    """
    _check_weights_path(args.weights)
    out_dir = prepare_output_dir(args.out, f"--out {args.out}") if args.out else None
    wider_dir = prepare_output_dir(args.wider_dir, f"--wider-dir {args.wider_dir}") \
        if args.wider_dir else None
    run = plan_run(args, out_dir, wider_dir)
    untrained = is_untrained(args.model, args.weights)
    if untrained:
        stderr_line(untrained_banner(PROG, args.model))
    return run, untrained


def _run_in(args: argparse.Namespace, start: float) -> int:
    try:
        if args.threads is not None and args.threads > usable_cores():
            stderr_line(f"{PROG}: --threads {args.threads} is more than the {usable_cores()} "
                        f"usable core(s); using {usable_cores()}")
            args.threads = usable_cores()
        run, untrained = prepare_run(args)
        detector = _make_detector(args)
    except (InputOverwriteError, ConfigError) as exc:  # (ConfigError: a setting given, e.g.
        _error(str(exc))                                 # a --max-face no level can reach)
        return EXIT_USAGE
    except TinyFacesError as exc:
        _error(str(exc))
        return 1
    identity = detector.identity
    options = replace(run.options, backend=args.backend,
                      model=identity.to_dict() if identity is not None else None)
    failures = run.failures
    records: list[dict[str, Any]] = []
    skipped: list[dict[str, Any]] = []
    bar = _progress_bar(run.tasks, args)
    console = _Console(bar)
    from tqdm.contrib.logging import logging_redirect_tqdm

    redirect = logging_redirect_tqdm([logging.getLogger("tinyfaces_trt")]) if bar is not None \
        else contextlib.nullcontext()
    try:
        with redirect:
            for task in run.tasks:
                try:
                    try:
                        record = _process(detector, task, options, args.json, console)
                    except MemoryError as exc:  # (_process names the size where it knows it)
                        raise memory_failure(task.job, exc) from None
                except TinyFacesError as exc:
                    console.err(f"{PROG}: error: {exc}")
                    failures.append({"image": str(task.job.path), "error": str(exc)})
                else:
                    (skipped if record.get("skipped") else records).append(record)
                if bar is not None:
                    bar.update(1)
    finally:
        if bar is not None:
            bar.close()
        detector.close()  # device memory and streams back before the summary
    finish_run(args, untrained, options.model, records, skipped, failures, start)
    return 1 if failures else 0


def finish_run(args: argparse.Namespace, untrained: bool, model: dict[str, Any] | None,
               records: list[dict[str, Any]], skipped: list[dict[str, Any]],
               failures: list[dict[str, str]], start: float) -> None:
    """Prints the run's JSON document (with ``--json``) and its summary line on stderr."""
    if args.json:
        write_stdout(json.dumps({"backend": args.backend, "untrained": untrained, "model": model,
                                 "images": records, "skipped": skipped, "errors": failures},
                                indent=2) + "\n")
    faces = sum(len(record["detections"]) for record in records)
    stderr_line(f"{PROG}: {len(records)} image(s), {faces} face(s), "
                + (f"{len(skipped)} skipped (outputs exist), " if skipped else "")
                + f"{len(failures)} error(s) in {time.perf_counter() - start:.1f} s")


def _load(job: ImageJob) -> Any:
    """The job's :class:`~tinyfaces_trt.runtime.imageio.StoredImage` (standard input's
    without its alpha channel or grey levels: RGB, as read)."""
    from tinyfaces_trt.runtime.imageio import StoredImage, load_image_stored, load_image_stream

    if job.is_stdin:
        if job.data is not None:
            return StoredImage(load_image_stream(io.BytesIO(job.data), "<stdin>"), 1, None, False)
        if sys.stdin is None:  # closed when Python started (tf-detect - 0<&-)
            raise ImageError("<stdin>: standard input is closed; pipe the image to it")
        return StoredImage(load_image_stream(sys.stdin.buffer, "<stdin>"), 1, None, False)
    return load_image_stored(job.path, log_others=True)  # ("has N frames", as load_image)


def skipped_record(job: ImageJob) -> dict[str, Any]:
    """The JSON record of an image skipped because its outputs exist."""
    return {"image": str(job.path), "skipped": True}


def skipped_line(job: ImageJob) -> str:
    """The stderr line of an image skipped because its outputs exist."""
    return f"{PROG}: {job.path}: skipped, its outputs exist (--overwrite replaces them)"


def redo_line(job: ImageJob, reason: str) -> str:
    """The stderr line of an image whose existing outputs are made again (``reason``: why)."""
    return f"{PROG}: {job.path}: making its outputs again: {reason}"


def detector_fields(options: DetectOptions) -> dict[str, Any]:
    """An image's JSON record of the detector: ``backend``, ``model`` (the network) and
    ``config`` (the detection settings a rerun compares)."""
    return {"backend": options.backend, "model": options.model,
            "config": options.detector.config if options.detector is not None else None}


def _process(detector: Detector, task: DetectTask, options: DetectOptions, quiet: bool,
             console: _Console) -> dict[str, Any]:
    """Detects one image, prints its line (unless ``quiet``), writes its files; returns its
    JSON record (:func:`skipped_record` when all its outputs exist and ``--overwrite`` is
    not given: outputs that exist are kept).

    Raises:
        TinyFacesError: the image fails: unreadable, its outputs' folder leads outside
            ``--out`` (nothing read), an output not written, or this process ran out of
            memory on it (:func:`~.detect_plan.memory_failure`).
    """
    job = task.job
    plan = task_plan(task, options)
    if plan is not None:  # (planned so; a link put there since)
        refuse_outside_out(plan, options.resolved_out(), job.path)
    state = resume_state(task, options)
    if state.done:
        console.err(skipped_line(job))
        return skipped_record(job)
    if state.reason is not None:
        console.err(redo_line(job, state.reason))
    try:
        stored = _load(job)
    except MemoryError as exc:
        raise memory_failure(job, exc) from None
    image = stored.rgb
    try:
        boxes, logits, masked = output_boxes(detector, image,
                                             detect_with_progress(detector, image, str(job.rel)))
        record = write_image_outputs(task, options, state, image, boxes, logits, masked,
                                     stored)
    except MemoryError as exc:
        raise memory_failure(job, exc, image) from None
    if not quiet:
        console.out(format_line(job.path, boxes))
    return record


def write_image_outputs(task: DetectTask, options: DetectOptions, state: Resume,
                        image: np.ndarray, boxes: np.ndarray,
                        logits: np.ndarray | None = None,
                        masked: np.ndarray | None = None, stored: Any = None) -> dict[str, Any]:
    """Writes an image's outputs but those ``state`` keeps (each atomically under its final
    name) and returns its JSON record; the same in one process and on a Ray worker.
    ``boxes``, ``logits``, ``masked``: :func:`output_boxes` of the detector's output (the
    WIDER result file gets ``logits`` exactly, the other outputs ``boxes``' probabilities;
    the anonymised copy hides ``masked``, default ``boxes``, and keeps ``stored``'s alpha
    channel and grey levels where given). With an anonymised copy the record says how it is
    made (``"anonymised"``: :func:`~.detect_plan.mask_record`)."""
    job = task.job
    plan = task_plan(task, options)
    masks = ({MASK_RECORD: mask_record(options.anonymise)}
             if plan is not None and plan.anonymised is not None and options.anonymise else {})
    record = {"image": str(job.path), **resolved_of(job),
              "width": int(image.shape[1]), "height": int(image.shape[0]),
              **detector_fields(options), **masks, "detections": detections_to_list(boxes)}
    if plan is not None:
        write_outputs(plan, image, boxes, record, options.anonymise,
                      jpeg_quality=options.jpeg_quality, keep=state.keep,
                      base=coordinate_base_of((options.model or {}).get("variant")),
                      masked=masked, root=options.resolved_out(), stored=stored)
    if task.wider_file is not None and task.wider_file not in state.keep:
        write_wider_result(task.wider_file, job, boxes, options, logits)
    return record


if __name__ == "__main__":
    sys.exit(main())

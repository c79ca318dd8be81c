"""``tf-detect``: detect faces in images and folders, draw, anonymise, or write WIDER results.

    tf-detect photo.jpg --model export/ --out results/
    tf-detect photos/ --weights checkpoint.pth --out results/ --blur
    tf-detect WIDER_val/images --model export/ --wider-dir pred/ --prob-thresh 0.03

Per image it prints one line (or, with ``--json``, one JSON document for the run), and with
``--out`` writes ``<name>.json`` (detections and the model's identity) and
``<name>_boxes.jpg|png`` (boxes drawn); with ``--blur``/``--pixelate`` it writes
``<name>_blurred|_pixelated.jpg|png`` and NO copy with the faces visible unless ``--draw``
asks for one. Every file is written atomically (complete or absent); a write error is
reported for that image and counted in the exit status. Outputs that exist already are kept
(an image whose outputs all exist is skipped) unless ``--overwrite``. A bad image is
reported on stderr and skipped; the exit status is then 1. User mistakes never give a
traceback (:class:`TinyFacesError` is caught); argument errors exit with 2.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
import textwrap
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tinyfaces_trt.core.cli import (add_version_argument, checked, is_untrained,
                                    run_interruptible, stderr_line, untrained_banner)
from tinyfaces_trt.core.errors import TinyFacesError
from tinyfaces_trt.core.progress import detect_with_progress
from tinyfaces_trt.detector_options import add_detector_arguments, check_detector_arguments
from tinyfaces_trt.runtime.results import detections_to_list
from tinyfaces_trt.scaleout.options import add_ray_arguments, check_ray_arguments, ray_requested
from tinyfaces_trt.core.files import (prepare_output_dir, removed_if_left_empty,
                                      write_text_atomic, written_for_another)

PROG = "tf-detect"
log = logging.getLogger(__name__)
#: IMAGE arguments that mean "read one image from standard input".
STDIN_ARGUMENTS = ("-",)
DEFAULT_JPEG_QUALITY = 95
#: Suffixes picked up when an IMAGE argument is a folder.
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
_JPEG = (".jpg", ".jpeg")



@dataclass(frozen=True)
class ImageJob:
    """One image to process.

    Attributes:
        path: the image file.
        rel: its path relative to the folder argument it was found in (for a file argument:
            just its name); output names and WIDER event folders follow it.
        event: the WIDER event folder its detections go to.
    """

    path: Path
    rel: Path
    event: str

    @property
    def is_stdin(self) -> bool:
        """The image comes from standard input (argument ``-``)."""
        return str(self.path) in STDIN_ARGUMENTS


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
  tf-detect WIDER_val/images --model export/ --wider-dir pred/ --prob-thresh 0.03

outputs: with --blur/--pixelate, --out holds only anonymised images and the
detections JSON (add --draw for copies with boxes drawn, faces visible). Every
file is written to a temporary name and renamed when complete. Progress of
folder runs goes to stderr.

exit status: 0 all images processed, 1 an image, one of its output files or the
setup failed (errors are listed on stderr, other images are still processed),
2 bad command-line arguments, 130 interrupted (Ctrl-C or SIGTERM).""",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("images", nargs="+", metavar="IMAGE",
                        help="image files, or folders (walked recursively, following symbolic "
                             "links, for " + "/".join(s[1:] for s in IMAGE_SUFFIXES)
                             + " files), or - (or /dev/stdin) for one image on standard input")
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
                      help="write <name>_blurred.jpg|png with every face blurred, and no copy "
                           "showing the faces unless --draw (needs --out)")
    anon.add_argument("--pixelate", action="store_true",
                      help="write <name>_pixelated.jpg|png with every face pixelated, and no "
                           "copy showing the faces unless --draw (needs --out)")
    parser.add_argument("--draw", action="store_true",
                        help="with --blur/--pixelate, also write <name>_boxes.jpg|png, the "
                             "ORIGINAL image with boxes drawn, faces visible (default: off when "
                             "anonymising, on otherwise)")
    parser.add_argument("--jpeg-quality", type=_jpeg_quality, default=DEFAULT_JPEG_QUALITY,
                        metavar="Q", help="quality 1..100 of the JPEG files written for JPEG "
                                          "inputs (default: %(default)s)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace output files that exist (default: keep them; an image "
                             "whose outputs all exist is skipped, so a re-run resumes)")
    parser.add_argument("--wider-dir", metavar="DIR",
                        help="write the official WIDER FACE result files DIR/<event>/<image>.txt; "
                             "for a folder IMAGE (e.g. WIDER_val/images) its event sub-folders "
                             "are kept (default: none)")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="log backend details (providers in use, cache hits)")
    add_ray_arguments(parser)
    add_version_argument(parser)
    return parser


def _jpeg_quality(text: str) -> int:
    return checked(text, int, lambda v: 1 <= v <= 100, "an integer", "between 1 and 100")


# ---------------------------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------------------------

def _inside(path: Path, folders: Sequence[Path]) -> bool:
    resolved = path.resolve()
    return any(resolved == f or f in resolved.parents for f in folders)


def collect_images(arguments: Sequence[str], exclude: Sequence[Path] = ()
                   ) -> tuple[list[ImageJob], list[tuple[str, str]]]:
    """Expands IMAGE arguments into jobs; returns (jobs, [(argument, error message)]).

    A folder is walked recursively (sorted, hidden entries skipped) for image suffixes,
    skipping anything inside those ``exclude`` folders (the output folders) that lie inside
    it, so a re-run does not read its own drawn copies. A file is taken as is, so a
    non-image file gives a clear error when it is loaded. A missing path or a folder without
    images is an error.
    """
    excluded = [Path(e).resolve() for e in exclude]
    jobs: list[ImageJob] = []
    errors: list[tuple[str, str]] = []
    for arg in arguments:
        path = Path(arg)
        if arg in STDIN_ARGUMENTS:
            jobs.append(ImageJob(path, Path("stdin"), "stdin"))
        elif path.is_dir():
            root = path.resolve()
            below = [e for e in excluded if root in e.parents]
            found = sorted(p for p in _walk(path) if not _inside(p, below))
            if not found:
                errors.append((str(path), f"{path}: folder holds no image files "
                                          f"({', '.join(IMAGE_SUFFIXES)})"))
            for p in found:
                rel = p.relative_to(path)
                event = rel.parent.as_posix() if rel.parent != Path(".") else root.name
                jobs.append(ImageJob(p, rel, event))
        else:
            jobs.append(ImageJob(path, Path(path.name), path.resolve().parent.name or "images"))
    return jobs, errors


def _walk(folder: Path) -> Iterator[Path]:
    """Image files below ``folder``, following symbolic links to folders; a link back to a
    folder already walked (a loop, or the same folder twice) is skipped with a warning."""
    seen: set[tuple[int, int]] = set()
    def unreadable(exc: OSError) -> None:
        log.warning("%s: cannot read the folder (%s); skipped", exc.filename,
                    exc.strerror or exc)

    for root, dirs, files in os.walk(folder, followlinks=True, onerror=unreadable):
        try:
            info = os.stat(root)
        except OSError as exc:
            log.warning("%s: cannot read the folder (%s); skipped", root, exc.strerror or exc)
            dirs[:] = []
            continue
        if (info.st_dev, info.st_ino) in seen:
            log.warning("%s: links to a folder already searched (a symbolic-link loop or "
                        "a second link); skipped", root)
            dirs[:] = []
            continue
        seen.add((info.st_dev, info.st_ino))
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in files:
            if not name.startswith(".") and Path(name).suffix.lower() in IMAGE_SUFFIXES:
                yield Path(root) / name


# ---------------------------------------------------------------------------------------------
# Outputs
# ---------------------------------------------------------------------------------------------

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


class OutputNames:
    """Unique output stems under ``--out``: the image's relative path without its suffix,
    with ``_2``, ``_3``, ... appended when two inputs would write the same files."""

    def __init__(self) -> None:
        self._used: set[str] = set()

    def stem(self, job: ImageJob, taken: Callable[[Path], bool] = lambda stem: False) -> Path:
        """The first stem no other input of this run has and ``taken`` does not refuse
        (reserved: only that one)."""
        base = job.rel.with_suffix("")
        candidate, k = base, 1
        while candidate.as_posix().lower() in self._used or taken(candidate):
            k += 1
            candidate = base.with_name(f"{base.name}_{k}")
        self._used.add(candidate.as_posix().lower())
        return candidate


def output_stem(names: OutputNames, out_dir: Path, job: ImageJob) -> Path:
    """``job``'s output stem: the next one of :class:`OutputNames` whose detections JSON, where
    an earlier run wrote one, is this image's (``a.jpg`` then ``a.png``, or two folders'
    ``p.jpg``, must neither skip nor overwrite each other's files)."""
    return names.stem(job, lambda stem: written_for_another(
        out_dir / stem.parent / f"{stem.name}.json", "image", job.path))


@dataclass(frozen=True)
class OutputPlan:
    """The files ``--out`` gets for one image (None: not written)."""

    drawn: Path | None
    anonymised: Path | None
    detections: Path

    def paths(self) -> list[Path]:
        return [p for p in (self.anonymised, self.detections, self.drawn) if p is not None]


def plan_outputs(out_dir: Path, stem: Path, job: ImageJob, anonymise: str | None,
                 draw: bool) -> OutputPlan:
    """Where the outputs of ``job`` go: the drawn copy only when ``draw`` (an anonymised
    folder must not hold the faces), the anonymised copy when ``anonymise``."""
    ext = ".jpg" if job.path.suffix.lower() in _JPEG else ".png"
    base = out_dir / stem
    suffix = {"blur": "_blurred", "pixelate": "_pixelated"}.get(anonymise or "")
    return OutputPlan(drawn=base.with_name(base.name + "_boxes" + ext) if draw else None,
                      anonymised=base.with_name(base.name + suffix + ext) if suffix else None,
                      detections=base.with_name(base.name + ".json"))


def write_outputs(plan: OutputPlan, image: np.ndarray, boxes: np.ndarray,
                  record: dict[str, Any], anonymise: str | None, *,
                  jpeg_quality: int = DEFAULT_JPEG_QUALITY,
                  keep: Sequence[Path] = ()) -> list[Path]:
    """Writes the planned files (each atomically), except those in ``keep``; returns the
    paths written.

    Raises:
        TinyFacesError: naming every file that could not be written (the others are
            written; none is left truncated).
    """
    from tinyfaces_trt.runtime.draw import blur_boxes, draw_boxes, pixelate_boxes
    from tinyfaces_trt.runtime.imageio import save_image

    try:
        plan.detections.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise TinyFacesError(f"cannot create output folder {plan.detections.parent}: "
                             f"{exc.strerror or exc}") from exc
    # the JSON first: it names the input, claiming the file names for it in later runs
    makers: list[tuple[Path | None, Callable[[Path], None]]] = [
        (plan.detections, lambda path: write_text_atomic(path, json.dumps(record, indent=2) + "\n")),
        (plan.anonymised, lambda path: save_image(
            path, (blur_boxes if anonymise == "blur" else pixelate_boxes)(image, boxes),
            jpeg_quality=jpeg_quality)),
        (plan.drawn, lambda path: save_image(path, draw_boxes(image, boxes),
                                             jpeg_quality=jpeg_quality)),
    ]
    written: list[Path] = []
    failed: list[str] = []
    for path, make in makers:
        if path is None or path in keep:
            continue
        try:
            make(path)
        except TinyFacesError as exc:
            failed.append(str(exc))
        except OSError as exc:
            failed.append(f"{path}: cannot write ({exc.strerror or exc})")
        else:
            written.append(path)
    if failed:
        raise TinyFacesError("; ".join(failed))
    return written


class WiderWriter:
    """Writes the official WIDER FACE result file of each image, ``<dir>/<event>/<stem>.txt``,
    refusing to overwrite the file of another image of this run (``a.jpg`` and ``a.png`` of
    one event would share it)."""

    def __init__(self, wider_dir: Path) -> None:
        self.wider_dir = wider_dir
        self._written: dict[Path, Path] = {}

    def claim(self, job: ImageJob) -> Path:
        """The result file of ``job``, reserved for it in this run.

        Raises:
            TinyFacesError: another image of this run has that file.
        """
        from tinyfaces_trt.wider.format import detection_path

        target = detection_path(self.wider_dir, job.event, Path(job.rel.name).stem)
        other = self._written.get(target)
        if other is not None and other != job.path:
            raise TinyFacesError(f"{job.path}: its WIDER result {target} was already written for "
                                 f"{other} (same event and name); rename one of the two images")
        self._written[target] = job.path
        return target

    def write(self, job: ImageJob, boxes: np.ndarray) -> Path:
        """Writes the result file of ``job`` (atomically); returns its path."""
        from tinyfaces_trt.wider.format import write_detection_file

        target = self.claim(job)
        try:
            write_detection_file(target, f"{job.event}/{job.rel.name}", boxes)
        except OSError as exc:
            raise TinyFacesError(f"cannot write WIDER result {target} for {job.path}: "
                                 f"{exc.strerror or exc}") from exc
        return target


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


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def _make_detector(args: argparse.Namespace) -> Any:
    from tinyfaces_trt.detectors import spec_from_arguments

    def progress(line: str) -> None:
        stderr_line(f"{PROG}: {line}")

    spec = spec_from_arguments(args, progress)
    args.backend = spec.backend  # "auto" resolved: the JSON records what ran
    return spec.create(progress)


def _check_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Argument combinations argparse cannot express; exits 2 through ``parser.error``."""
    if (args.blur or args.pixelate) and not args.out:
        parser.error("--blur/--pixelate write an anonymised copy and need --out DIR")
    if args.draw and not args.out:
        parser.error("--draw writes copies with boxes drawn and needs --out DIR")
    check_detector_arguments(parser, args)
    check_ray_arguments(parser, args)
    if ray_requested(args) and any(i in STDIN_ARGUMENTS for i in args.images):
        parser.error("--ray distributes files; standard input (-) cannot be sent to the workers")
    if sum(1 for i in args.images if i in STDIN_ARGUMENTS) > 1:
        parser.error("- (standard input) can be given once")
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
        if self.bar is not None:
            self.bar.write(line, file=stream)
            stream.flush()
        else:
            print(line, file=stream, flush=True)


def _progress_bar(jobs: list[ImageJob], args: argparse.Namespace) -> Any:
    """tqdm on stderr for folder inputs (several images), else None."""
    if len(jobs) < 2 or not any(Path(a).is_dir() for a in args.images):
        return None
    from tqdm import tqdm

    return tqdm(total=len(jobs), desc=PROG, unit="image", file=sys.stderr, dynamic_ncols=True)


def _run(args: argparse.Namespace) -> int:
    if ray_requested(args):
        from tinyfaces_trt.cli.detect_ray import run_detect

        return run_detect(args)
    start = time.perf_counter()
    with removed_if_left_empty(args.out, args.wider_dir):
        return _run_in(args, start)


def _run_in(args: argparse.Namespace, start: float) -> int:
    try:
        _check_weights_path(args.weights)
        if args.threads is not None and args.threads > usable_cores():
            stderr_line(f"{PROG}: --threads {args.threads} is more than the {usable_cores()} "
                        f"usable core(s); using {usable_cores()}")
            args.threads = usable_cores()
        out_dir = prepare_output_dir(args.out, f"--out {args.out}") if args.out else None
        wider = WiderWriter(prepare_output_dir(args.wider_dir, f"--wider-dir {args.wider_dir}")) \
            if args.wider_dir else None
        untrained = is_untrained(args.model, args.weights)
        if untrained:
            stderr_line(untrained_banner(PROG, args.model))
        detector = _make_detector(args)
    except TinyFacesError as exc:
        _error(str(exc))
        return 1
    identity = getattr(detector, "identity", None)
    model = identity.to_dict() if identity is not None else None
    jobs, errors = collect_images(
        args.images, [d for d in (out_dir, wider and wider.wider_dir) if d])
    failures = [{"image": arg, "error": message} for arg, message in errors]
    for _, message in errors:
        _error(message)
    anonymise = "blur" if args.blur else "pixelate" if args.pixelate else None
    names = OutputNames()
    records: list[dict[str, Any]] = []
    skipped: list[dict[str, Any]] = []
    faces = 0
    bar = _progress_bar(jobs, args)
    console = _Console(bar)
    from tqdm.contrib.logging import logging_redirect_tqdm

    redirect = logging_redirect_tqdm([logging.getLogger("tinyfaces_trt")]) if bar is not None \
        else contextlib.nullcontext()
    try:
        with redirect:
            for job in jobs:
                try:
                    record = _process(detector, job, args, names, out_dir, wider, anonymise,
                                      model, console)
                except TinyFacesError as exc:
                    console.err(f"{PROG}: error: {exc}")
                    failures.append({"image": str(job.path), "error": str(exc)})
                else:
                    if record.get("skipped"):
                        skipped.append(record)
                    else:
                        faces += len(record["detections"])
                        records.append(record)
                if bar is not None:
                    bar.update(1)
    finally:
        if bar is not None:
            bar.close()
        detector.close()  # device memory and streams back before the summary
    if args.json:
        print(json.dumps({"backend": args.backend, "untrained": untrained, "model": model,
                          "images": records, "skipped": skipped, "errors": failures}, indent=2))
    stderr_line(f"{PROG}: {len(records)} image(s), {faces} face(s), "
                + (f"{len(skipped)} skipped (outputs exist), " if skipped else "")
                + f"{len(failures)} error(s) in {time.perf_counter() - start:.1f} s")
    return 1 if failures else 0


def _load(job: ImageJob) -> np.ndarray:
    from tinyfaces_trt.runtime.imageio import load_image, load_image_stream

    if job.is_stdin:
        return load_image_stream(sys.stdin.buffer, "<stdin>")
    return load_image(job.path)


def _resolved(job: ImageJob) -> dict[str, str]:
    """``{"resolved": the image's real path}`` for its record (none for standard input):
    the input a later run's :func:`output_stem` recognises, from any working folder."""
    return {} if job.is_stdin else {"resolved": os.path.realpath(job.path)}


def _process(detector: Any, job: ImageJob, args: argparse.Namespace, names: OutputNames,
             out_dir: Path | None, wider: WiderWriter | None, anonymise: str | None,
             model: dict[str, Any] | None, console: _Console) -> dict[str, Any]:
    """Detects one image, prints its line, writes its files; returns its JSON record
    (``{"image", "skipped"}`` when all its outputs exist and ``--overwrite`` is not given)."""
    plan = plan_outputs(out_dir, output_stem(names, out_dir, job), job, anonymise,
                        draw=args.draw or anonymise is None) if out_dir is not None else None
    wider_target = wider.claim(job) if wider is not None else None
    targets = (plan.paths() if plan else []) + ([wider_target] if wider_target else [])
    present = [t for t in targets if t.exists()] if not args.overwrite else []
    if targets and len(present) == len(targets):
        console.err(f"{PROG}: {job.path}: skipped, its outputs exist (--overwrite replaces them)")
        return {"image": str(job.path), "skipped": True}
    image = _load(job)
    boxes = detect_with_progress(detector, image, str(job.rel))
    record = {"image": str(job.path), **_resolved(job),
              "width": int(image.shape[1]), "height": int(image.shape[0]),
              "backend": args.backend, "model": model, "detections": detections_to_list(boxes)}
    if plan is not None:
        write_outputs(plan, image, boxes, record, anonymise, jpeg_quality=args.jpeg_quality,
                      keep=present)
    if wider is not None and wider_target not in present:
        wider.write(job, boxes)
    if not args.json:
        console.out(format_line(job.path, boxes))
    return record


if __name__ == "__main__":
    sys.exit(main())

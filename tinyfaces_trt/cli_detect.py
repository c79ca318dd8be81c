"""``tf-detect``: detect faces in images and folders, draw, anonymise, or write WIDER results.

    tf-detect photo.jpg --model export/ --out results/
    tf-detect photos/ --weights checkpoint.pth --out results/ --blur
    tf-detect WIDER_val/images --model export/ --wider-dir pred/ --prob-thresh 0.03

Per image it prints one line (or, with ``--json``, one JSON document for the run), and with
``--out`` writes ``<name>_boxes.jpg|png`` (boxes drawn), ``<name>.json`` (detections) and,
with ``--blur``/``--pixelate``, ``<name>_blurred|_pixelated.jpg|png``. A bad image is
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

from tinyfaces_trt.core.cli import fraction, logging_to_stderr, positive_int, probability, stderr_line
from tinyfaces_trt.core.errors import TinyFacesError
from tinyfaces_trt.core.files import prepare_output_dir

PROG = "tf-detect"
#: Suffixes picked up when an IMAGE argument is a folder.
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
_JPEG = (".jpg", ".jpeg")

_BANNER_WIDTH = 72


def untrained_banner(model: str | None = None) -> str:
    """The loud warning printed on every run of an untrained network.

    Args:
        model: the ``--model`` folder when it holds an untrained export, else None (the
            seeded default network, no ``--weights``/``--model`` given). Not printed: a
            long path would break the box.
    """
    if model:
        why = ("The --model export folder holds the seeded RANDOM-weight network (its "
               "manifest says \"untrained\": true).")
    else:
        why = ("No --weights or --model was given, so tf-detect runs the seeded RANDOM-weight "
               "default network.")
    text = (f"WARNING: UNTRAINED NETWORK. {why} Its detections are MEANINGLESS (plumbing tests "
            "only). Pass --weights F (a trained checkpoint) or --model DIR (a tf-export folder "
            "of trained weights).")
    inner = _BANNER_WIDTH - 4
    rows = textwrap.wrap(text, inner)
    border = "*" * _BANNER_WIDTH
    return "\n".join([border, *(f"* {row:<{inner}} *" for row in rows), border])


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
  --model DIR     an export folder written by tf-export (any backend but torch)
  --weights F     a checkpoint: torch runs it directly; onnxruntime (and tensorrt, which
                  also builds an engine) export it once into the cache $TINYFACES_CACHE
                  (default ~/.cache/tinyfaces_trt/<sha256 prefix>/) and reuse it later
  (neither)       the seeded UNTRAINED network: detections are meaningless

examples:
  tf-detect photo.jpg --model export/ --out results/
  tf-detect photos/ --weights checkpoint.pth --out anonymised/ --blur
  tf-detect photo.jpg --model export/ --json --prob-thresh 0.8
  tf-detect WIDER_val/images --model export/ --wider-dir pred/ --prob-thresh 0.03

exit status: 0 all images processed, 1 an image or the setup failed (errors are listed
on stderr, other images are still processed), 2 bad command-line arguments.""",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("images", nargs="+", metavar="IMAGE",
                        help="image files, or folders (walked recursively for "
                             + "/".join(s[1:] for s in IMAGE_SUFFIXES) + " files)")
    parser.add_argument("--backend", choices=("onnxruntime", "torch", "tensorrt"),
                        default="onnxruntime",
                        help="network runtime (default: onnxruntime, on the CPU)")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--model", metavar="EXPORT_DIR",
                        help="export folder from tf-export (default: none)")
    source.add_argument("--weights", metavar="F",
                        help="checkpoint (.pth from tiny-faces-pytorch, or the authors' "
                             "hr_res101.mat); needs the 'export' extra (torch) (default: none)")
    parser.add_argument("--out", metavar="DIR",
                        help="write <name>_boxes.jpg|png (boxes drawn) and <name>.json "
                             "(detections) for every image into DIR (default: write nothing)")
    parser.add_argument("--json", action="store_true",
                        help="print one JSON document with every image's detections instead "
                             "of one line per image (default: lines)")
    anon = parser.add_mutually_exclusive_group()
    anon.add_argument("--blur", action="store_true",
                      help="also write <name>_blurred.jpg|png with every face blurred (needs --out)")
    anon.add_argument("--pixelate", action="store_true",
                      help="also write <name>_pixelated.jpg|png with every face pixelated "
                           "(needs --out)")
    parser.add_argument("--prob-thresh", type=probability, metavar="P",
                        help="keep detections with probability > P (default: the model's, 0.5)")
    parser.add_argument("--nms-thresh", type=fraction, metavar="T",
                        help="suppress boxes overlapping a better one with IoU > T "
                             "(default: the model's, 0.3)")
    parser.add_argument("--wider-dir", metavar="DIR",
                        help="write the official WIDER FACE result files DIR/<event>/<image>.txt; "
                             "for a folder IMAGE (e.g. WIDER_val/images) its event sub-folders "
                             "are kept (default: none)")
    parser.add_argument("--fp16", action="store_true",
                        help="run the fp16 ONNX model / TensorRT engine (default: fp32)")
    parser.add_argument("--providers", default=None, metavar="LIST",
                        help="onnxruntime execution providers, comma separated (cpu, cuda, "
                             "tensorrt) or 'auto' for the best available (default: cpu)")
    parser.add_argument("--threads", type=positive_int, metavar="N",
                        help="onnxruntime intra-op threads (default: all cores)")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="log backend details (providers in use, cache hits)")
    return parser


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
        if path.is_dir():
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
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in files:
            if not name.startswith(".") and Path(name).suffix.lower() in IMAGE_SUFFIXES:
                yield Path(root) / name


# ---------------------------------------------------------------------------------------------
# Outputs
# ---------------------------------------------------------------------------------------------

def detections_to_list(boxes: np.ndarray) -> list[dict[str, Any]]:
    """(N, 5) [x1, y1, x2, y2, prob] -> ``[{"box": [x1, y1, x2, y2], "score": p}, ...]``."""
    return [{"box": [round(float(v), 2) for v in row[:4]], "score": round(float(row[4]), 5)}
            for row in np.asarray(boxes, dtype=np.float64).reshape(-1, 5)]


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

    def stem(self, job: ImageJob) -> Path:
        base = job.rel.with_suffix("")
        candidate, k = base, 1
        while candidate.as_posix().lower() in self._used:
            k += 1
            candidate = base.with_name(f"{base.name}_{k}")
        self._used.add(candidate.as_posix().lower())
        return candidate


def write_outputs(out_dir: Path, stem: Path, job: ImageJob, image: np.ndarray, boxes: np.ndarray,
                  record: dict[str, Any], anonymise: str | None) -> list[Path]:
    """Writes the drawn copy, the detections JSON and the anonymised copy; returns the paths."""
    from tinyfaces_trt.runtime.draw import blur_boxes, draw_boxes, pixelate_boxes
    from tinyfaces_trt.runtime.imageio import save_image

    ext = ".jpg" if job.path.suffix.lower() in _JPEG else ".png"
    base = out_dir / stem
    try:
        base.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise TinyFacesError(f"cannot create output folder {base.parent}: {exc}") from exc
    written = [base.with_name(base.name + "_boxes" + ext)]
    save_image(written[-1], draw_boxes(image, boxes))
    if anonymise:
        hide = blur_boxes if anonymise == "blur" else pixelate_boxes
        suffix = "_blurred" if anonymise == "blur" else "_pixelated"
        written.append(base.with_name(base.name + suffix + ext))
        save_image(written[-1], hide(image, boxes))
    written.append(base.with_name(base.name + ".json"))
    try:
        written[-1].write_text(json.dumps(record, indent=2) + "\n")
    except OSError as exc:
        raise TinyFacesError(f"cannot write {written[-1]}: {exc}") from exc
    return written


class WiderWriter:
    """Writes the official WIDER FACE result file of each image, ``<dir>/<event>/<stem>.txt``,
    refusing to overwrite the file of another image of this run (``a.jpg`` and ``a.png`` of
    one event would share it)."""

    def __init__(self, wider_dir: Path) -> None:
        self.wider_dir = wider_dir
        self._written: dict[Path, Path] = {}

    def write(self, job: ImageJob, boxes: np.ndarray) -> Path:
        from tinyfaces_trt.wider.format import detection_path, write_detection_file

        target = detection_path(self.wider_dir, job.event, job.path.stem)
        other = self._written.get(target)
        if other is not None:
            raise TinyFacesError(f"{job.path}: its WIDER result {target} was already written for "
                                 f"{other} (same event and name); rename one of the two images")
        try:
            write_detection_file(target, f"{job.event}/{job.path.name}", boxes)
        except OSError as exc:
            raise TinyFacesError(f"cannot write WIDER result for {job.path}: {exc}") from exc
        self._written[target] = job.path
        return target


# ---------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------

def _error(message: str) -> None:
    stderr_line(f"{PROG}: error: {message}")


def _is_untrained(args: argparse.Namespace) -> bool:
    if args.weights:
        return False
    if not args.model:
        return True
    from tinyfaces_trt.core.manifest import load_export_folder

    return load_export_folder(args.model).untrained


def _check_weights_path(weights: str | None) -> None:
    if weights and Path(weights).is_dir():
        hint = (f"; {weights} is an export folder: pass it with --model"
                if (Path(weights) / "manifest.json").is_file() else "")
        raise TinyFacesError(f"--weights {weights} is a folder, not a checkpoint file "
                             f"(.pth or .mat){hint}")


def _make_detector(args: argparse.Namespace) -> Any:
    from tinyfaces_trt.detectors import create_detector

    providers = args.providers.split(",") if args.providers and args.providers != "auto" \
        else args.providers
    return create_detector(
        args.backend, model_dir=args.model, weights=args.weights,
        config_overrides={"prob_thresh": args.prob_thresh, "nms_thresh": args.nms_thresh},
        fp16=args.fp16, providers=providers, threads=args.threads,
        progress=lambda line: stderr_line(f"{PROG}: {line}"))


def _check_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Argument combinations argparse cannot express; exits 2 through ``parser.error``."""
    if (args.blur or args.pixelate) and not args.out:
        parser.error("--blur/--pixelate write an anonymised copy and need --out DIR")
    if args.backend != "onnxruntime" and (args.providers or args.threads):
        parser.error("--providers/--threads are onnxruntime options")
    if args.backend == "torch" and args.fp16:
        parser.error("--fp16 applies to the onnxruntime and tensorrt backends")
    if args.backend == "torch" and args.model:
        parser.error("--backend torch runs a checkpoint (--weights F) directly; an export "
                     "folder (--model) runs with --backend onnxruntime or tensorrt")
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
    try:
        with logging_to_stderr(PROG, args.verbose):
            return _run(args)
    except KeyboardInterrupt:
        stderr_line(f"{PROG}: interrupted")
        return 130


def _run(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    try:
        _check_weights_path(args.weights)
        out_dir = prepare_output_dir(args.out, f"--out {args.out}") if args.out else None
        wider = WiderWriter(prepare_output_dir(args.wider_dir, f"--wider-dir {args.wider_dir}")) \
            if args.wider_dir else None
        untrained = _is_untrained(args)
        if untrained:
            stderr_line(untrained_banner(args.model))
        detector = _make_detector(args)
    except TinyFacesError as exc:
        _error(str(exc))
        return 1
    jobs, errors = collect_images(
        args.images, [d for d in (out_dir, wider and wider.wider_dir) if d])
    failures = [{"image": arg, "error": message} for arg, message in errors]
    for _, message in errors:
        _error(message)
    anonymise = "blur" if args.blur else "pixelate" if args.pixelate else None
    names = OutputNames()
    records: list[dict[str, Any]] = []
    faces = 0
    for job in jobs:
        try:
            record = _process(detector, job, args, names, out_dir, wider, anonymise)
        except TinyFacesError as exc:
            _error(str(exc))
            failures.append({"image": str(job.path), "error": str(exc)})
            continue
        faces += len(record["detections"])
        records.append(record)
    if args.json:
        print(json.dumps({"backend": args.backend, "untrained": untrained,
                          "images": records, "errors": failures}, indent=2))
    stderr_line(f"{PROG}: {len(records)} image(s), {faces} face(s), {len(failures)} error(s) "
            f"in {time.perf_counter() - start:.1f} s")
    return 1 if failures else 0


def _process(detector: Any, job: ImageJob, args: argparse.Namespace, names: OutputNames,
             out_dir: Path | None, wider: WiderWriter | None,
             anonymise: str | None) -> dict[str, Any]:
    """Detects one image, prints its line, writes its files; returns its JSON record."""
    from tinyfaces_trt.runtime.imageio import load_image

    image = load_image(job.path)
    boxes = detector.detect(image)
    record = {"image": str(job.path), "width": int(image.shape[1]), "height": int(image.shape[0]),
              "backend": args.backend, "detections": detections_to_list(boxes)}
    if out_dir is not None:
        write_outputs(out_dir, names.stem(job), job, image, boxes, record, anonymise)
    if wider is not None:
        wider.write(job, boxes)
    if not args.json:
        print(format_line(job.path, boxes), flush=True)
    return record


if __name__ == "__main__":
    sys.exit(main())

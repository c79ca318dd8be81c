"""``tf-export``: checkpoint -> export folder (ONNX fp32/fp16, manifest.json, TensorRT engine)."""

from __future__ import annotations

import importlib.util
import argparse
import re
import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path

from tinyfaces_trt.core.cli import (EXIT_ERROR, EXIT_OK, EXIT_USAGE, add_version_argument, checked,
                                     parse_image_size, positive_float, positive_int, run_interruptible,
                                     seed_argument, stderr_line, stdout_line)
from tinyfaces_trt.core.errors import TinyFacesError
from tinyfaces_trt.core.files import check_future_folder, removed_if_left_empty, temporary_folder
from tinyfaces_trt.core.optional import import_optional
from tinyfaces_trt.core.profiles import DEFAULT_MAX_SIDE, Profile

from tinyfaces_trt.export.opset import DEFAULT_OPSET, MAX_OPSET, MIN_OPSET
from tinyfaces_trt.export.trt_build import DEFAULT_WORKSPACE_GB, EngineBuildError, TensorRTUnavailableError

EXIT_NO_TENSORRT = 3
EXIT_ENGINE_FAILED = 4

EPILOG = f"""\
The profile (the input shapes a TensorRT engine accepts) covers every pyramid level of the
--image-size images (the first one is the typical size: the builder tunes for its largest
level), or is given as --min-shape/--opt-shape/--max-shape. Default: every image up to
1920x1920 pixels (min 1x3x1x1 -- 1x3x3x3 for the matconvnet variant --, opt 1x3x2160x3840,
max 1x3x3840x3840).

--fp16 implies an fp16 engine when TensorRT is installed; without TensorRT it writes the
ONNX files and prints the trtexec command instead. --engine requires an engine.

Exit codes:
  {EXIT_OK}  success (also: --fp16 without TensorRT, ONNX written)
  {EXIT_ERROR}  error: bad or missing weights, invalid shapes, export or check failure
  {EXIT_USAGE}  invalid command line
  {EXIT_NO_TENSORRT}  --engine given but no usable TensorRT (>= 10) here (ONNX files and manifest written
     into a new or empty --out; one holding files is left as it was); or --fp16 without
     TensorRT into an --out that holds an engine (left as it was)
  {EXIT_ENGINE_FAILED}  TensorRT failed to parse the ONNX or build the engine (likewise)

A failed or interrupted export leaves the previous --out folder as it was. An --out that is a
symbolic link is followed: the folder it points to is replaced, the link kept. An --out that
cannot be swapped whole -- a mount point (a Docker or Kubernetes volume), a folder on another
file system than its parent, or one under a read-only folder -- is written in place: the
export is built in a hidden folder inside it, then its files are moved in one by one,
manifest.json last (a failed move puts the previous files back; an export killed during the
moves leaves a folder that loading refuses until the next export).

Examples:
  tf-export --weights checkpoint_50.pth --out out/ --fp16
  tf-export --weights hr_res101.mat --out out/ --engine --image-size 1920x1080
  tf-export --untrained --depth 50 --out /tmp/untrained
"""

_SHAPE_RE = re.compile(r"^(?:[A-Za-z_][\w.]*:)?(\d+)x(\d+)x(\d+)x(\d+)$")
def parse_shape(text: str) -> tuple[int, int, int, int]:
    """``"NxCxHxW"`` (optionally ``"image:1x3xHxW"``, trtexec style) -> a 4-tuple."""
    m = _SHAPE_RE.match(text.strip())
    if not m:
        raise argparse.ArgumentTypeError(f"shape must be NxCxHEIGHTxWIDTH (NCHW, C = 3), e.g. 1x3x720x1280; "
                                         f"got {text!r}")
    return tuple(int(v) for v in m.groups())  # type: ignore[return-value]


PROG = "tf-export"


def opset_argument(text: str) -> int:
    """argparse type of ``--opset``: an integer in :data:`MIN_OPSET`..:data:`MAX_OPSET`."""
    return checked(text, int, lambda v: MIN_OPSET <= v <= MAX_OPSET, "an integer",
                   f"between {MIN_OPSET} and {MAX_OPSET}, the opsets torch's exporter converts "
                   f"this network to (default {DEFAULT_OPSET})")


def _progress(message: str) -> None:
    stderr_line(f"{PROG}: {message}")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``tf-export`` (its ``--help``)."""
    p = argparse.ArgumentParser(
        prog="tf-export",
        description=textwrap.fill(
            "Export a Tiny Faces checkpoint to an export folder: model.onnx (fp32, dynamic HxW), "
            "optionally model_fp16.onnx and a TensorRT engine, and manifest.json with everything "
            "the runtime needs (templates, normalisation, constants, profile).", 88),
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_argument_group("source")
    src.add_argument("--weights", metavar="W", help="checkpoint: tiny-faces-pytorch .pth or the authors' "
                                                    "hr_res101.mat (kind detected from the content)")
    src.add_argument("--untrained", action="store_true",
                     help="no checkpoint: export a network with seeded RANDOM weights (for testing only)")
    src.add_argument("--depth", type=int, choices=(50, 101), help="ResNet depth (default: from the "
                                                                 "checkpoint; 101 with --untrained)")
    src.add_argument("--variant", choices=("pytorch", "matconvnet"),
                     help="network variant (default: from the checkpoint; pytorch with --untrained)")
    src.add_argument("--seed", type=seed_argument, help="seed of --untrained weights (default 0)")
    out = p.add_argument_group("output")
    out.add_argument("--out", metavar="DIR", default="tinyfaces_export", help="export folder (default: %(default)s)")
    out.add_argument("--fp16", action="store_true", help="also write model_fp16.onnx (float32 I/O); "
                                                         "builds an fp16 engine when TensorRT is installed")
    out.add_argument("--opset", type=opset_argument, default=DEFAULT_OPSET,
                     help=f"ONNX opset, {MIN_OPSET} to {MAX_OPSET} (default %(default)s); the one "
                          f"written is read back from model.onnx into the manifest")
    out.add_argument("--simplify", action="store_true", help="run onnxslim (or onnxsim) on the graph; measured "
                                                             "to change nothing on this network")
    out.add_argument("--no-verify", action="store_true",
                     help="skip the ONNX Runtime vs torch check on two small random images "
                          "(normalised as the network's inputs are)")
    prof = p.add_argument_group("profile (input shapes of the engine)")
    prof.add_argument("--image-size", metavar="WxH", action="append", type=parse_image_size, default=[],
                      help="cover every pyramid level of this image size; repeatable, the first is the typical size")
    prof.add_argument("--max-batch", metavar="N", type=positive_int, default=1,
                      help="the engine takes batches of 1 to N images of one size, each pyramid "
                           "level run once for all (video frames, camera streams: "
                           "Detector.detect_batch, tf-anonymize, tf-serve), tuned for N; "
                           "needs --image-size, the frames' size (the engine takes N times the "
                           "GPU memory of its largest level); default: 1, single images")
    for which in ("min", "opt", "max"):
        prof.add_argument(f"--{which}-shape", metavar="NxCxHxW", type=parse_shape,
                          help=f"explicit profile {which} shape, NCHW (all three together; "
                               f"trtexec's 'image:' prefix is accepted)")
    trt = p.add_argument_group("TensorRT")
    eng = trt.add_mutually_exclusive_group()
    eng.add_argument("--engine", dest="engine", action="store_const", const=True, default=None,
                     help="build a TensorRT engine (exit code 3 when no TensorRT >= 10 imports)")
    eng.add_argument("--no-engine", dest="engine", action="store_const", const=False,
                     help="never build an engine, even with --fp16")
    trt.add_argument("--workspace", metavar="GB", type=positive_float, default=DEFAULT_WORKSPACE_GB,
                     help="builder workspace memory-pool limit in GiB (default %(default)s)")
    trt.add_argument("--timing-cache", metavar="F", help="timing-cache file: loaded if present, saved after the build")
    add_version_argument(p)
    return p


def _check_args(p: argparse.ArgumentParser, a: argparse.Namespace) -> Profile | None:
    if a.weights is None and not a.untrained:
        p.error("--weights is required (or --untrained to export random weights for testing)")
    if a.weights is not None and a.untrained:
        p.error("--weights and --untrained exclude each other")
    if a.seed is not None and not a.untrained:
        p.error("--seed applies to --untrained weights only")
    shapes = (a.min_shape, a.opt_shape, a.max_shape)
    if any(shapes) and not all(shapes):
        p.error("--min-shape, --opt-shape and --max-shape go together: give all three")
    if all(shapes) and a.image_size:
        p.error("give either --image-size or --min/--opt/--max-shape, not both")
    if all(shapes) and a.max_batch != 1:
        p.error("--max-batch applies to --image-size; with --min/--opt/--max-shape give the "
                "batch as the first dimension of --opt-shape and --max-shape (--min-shape's is 1)")
    if a.max_batch != 1 and not a.image_size:
        # the default profile's largest level is 3x3840x3840: N of them is an engine few GPUs hold
        p.error(f"--max-batch {a.max_batch} needs --image-size: a batch is images of one size "
                f"(video frames, a camera's); for batches of every image up to "
                f"{DEFAULT_MAX_SIDE}x{DEFAULT_MAX_SIDE} (the default profile) the engine would need "
                f"{a.max_batch} times the memory of the largest pyramid level")
    return Profile(*shapes) if all(shapes) else None


def check_out_dir(out: str) -> None:
    """Fails early, before the weights load, when ``--out`` cannot become the export folder
    (the folder itself is created by the export)."""
    check_future_folder(out, f"--out {out}")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``tf-export``; returns the exit code (see ``--help``)."""
    p = build_parser()
    a = p.parse_args(argv)
    return run_interruptible("tf-export", lambda: _run(p, a),  # logs e.g. the --variant warning
                             interrupted=f"interrupted; {a.out} is unchanged")


def _run(p: argparse.ArgumentParser, a: argparse.Namespace) -> int:
    try:
        profile = _check_args(p, a)
        check_out_dir(a.out)
        for module in ("torch", "onnx"):  # one line, not a traceback, without the export extra
            import_optional(module, purpose="tf-export",
                            extra_hint="pip install 'tinyfaces-trt[export]'")
        from tinyfaces_trt.export.export_pipeline import checkpoint_sha256, export_model, step
        from tinyfaces_trt.export.weights import load_model

        if a.simplify:  # before the load and the export, not after them
            from tinyfaces_trt.export.onnx_export import NO_SIMPLIFIER, SIMPLIFIERS

            if not any(importlib.util.find_spec(name) for name in SIMPLIFIERS):
                raise TinyFacesError(NO_SIMPLIFIER)

        # hashed before the load: export_model checks that the file still has that hash
        sha256 = None if a.weights is None else checkpoint_sha256(a.weights, _progress)
        with step(_progress, f"loading {'an untrained network' if a.untrained else a.weights}"):
            model, config = load_model(a.weights, depth=a.depth, variant=a.variant,
                                       seed=a.seed or 0)
        with removed_if_left_empty(a.out):  # the folders above --out it made, on a failure
            export_model(model, config, a.out, fp16=a.fp16, opset=a.opset, engine=a.engine,
                         image_sizes=[(s.height, s.width) for s in a.image_size] or None,
                         profile=profile, max_batch=a.max_batch, workspace_gb=a.workspace,
                         timing_cache=a.timing_cache, simplify=a.simplify,
                         weights_path=a.weights, weights_sha256=sha256,
                         untrained=a.untrained, verify=not a.no_verify, log=_progress)
    except TensorRTUnavailableError as exc:  # --engine asked for: the ONNX files are written
        stderr_line(f"tf-export: error: {exc}")
        return EXIT_NO_TENSORRT
    except EngineBuildError as exc:
        stderr_line(f"tf-export: error: {exc}")
        return EXIT_ENGINE_FAILED
    except TinyFacesError as exc:
        stderr_line(f"tf-export: error: {exc}")
        return EXIT_ERROR
    except OSError as exc:  # writing the export folder (disk full, permissions, ...)
        detail = exc.strerror if exc.strerror and temporary_folder(exc) is not None else exc
        stderr_line(f"tf-export: error: cannot write the export folder {a.out}: {detail}")
        return EXIT_ERROR
    stdout_line(str(Path(a.out) / "manifest.json"))
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())

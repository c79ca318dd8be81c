"""``tf-parity``: compare the deployed backends with the torch reference, from the shell.

Parses the arguments, loads the reference network, exports what the backends need (or
checks a given export folder), runs :func:`~.harness.run_parity`, prints the table
(:mod:`.report`) and returns the exit status documented in ``--help``.

Run as ``tf-parity`` or ``python -m tinyfaces_trt.parity.cli``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import textwrap
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tinyfaces_trt.core.cli import (EXIT_OK, EXIT_USAGE, add_version_argument, fraction,
                                    parse_image_sizes, probability,
                                    run_interruptible, seed_argument, stderr_line,
                                    write_stdout)
from tinyfaces_trt.core.config import VARIANTS, DetectorConfig
from tinyfaces_trt.core.errors import TinyFacesError
from tinyfaces_trt.core.files import inputs_replaced_by, replaced_entry, write_text_atomic
from tinyfaces_trt.core.optional import import_optional
from tinyfaces_trt.detector_options import PYRAMID_RULES
from tinyfaces_trt.parity.compare import TOLERANCES
from tinyfaces_trt.parity.harness import FAILED, PARITY_BACKENDS, SKIPPED, ParityResult, run_parity
from tinyfaces_trt.parity.report import json_report, markdown_table, summary_line

#: Exit statuses (also in ``--help``).
EXIT_FAILED = 1   # a comparison was out of tolerance
EXIT_SETUP = EXIT_USAGE  # bad arguments, or a setup error (missing file, export of other weights)
EXIT_SKIPPED = 3  # a requested backend could not run here, or nothing was compared
EXIT_INTERRUPTED = 130  # Ctrl-C or SIGTERM

PROG = "tf-parity"

DEFAULT_SIZES = "33x47,64x64,131x97,160x120"


def parse_backends(text: str) -> list[str]:
    """Comma-separated keys of :data:`~.harness.PARITY_BACKENDS`."""
    names = [b.strip() for b in text.split(",") if b.strip()]
    unknown = [b for b in names if b not in PARITY_BACKENDS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown backend(s) {unknown or names}; choose from {', '.join(PARITY_BACKENDS)}")
    return list(dict.fromkeys(names))


def default_backends() -> list[str]:
    """The ONNX Runtime backends, plus TensorRT ones when TensorRT and a GPU are usable."""
    from tinyfaces_trt.runtime.backends import available_backends

    names = ["onnxruntime", "onnxruntime-fp16"]
    if "tensorrt" in available_backends():
        names += ["tensorrt", "tensorrt-fp16"]
    return names


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (its ``--help`` documents options, tolerances and exit status)."""
    tol = "\n".join(
        f"  {k}: maps |d| <= {v.maps.atol:g} + {v.maps.rtol:g}*|ref| and mean |d| <= {v.maps.mean:g};\n"
        f"        detections matched at IoU >= {v.detections.iou:g}, |dprob| <= {v.detections.score:g},"
        f" may differ within {v.detections.margin:g} of the threshold"
        for k, v in TOLERANCES.items()) + (
        "\n  tf32 holds an fp32 export run with TF32 convolutions (ONNX Runtime's TensorRT "
        "provider,\n        which onnxruntime-cuda tries first where TensorRT is installed)"
        "\n  any NaN or inf in a map or a detection fails")
    parser = argparse.ArgumentParser(
        prog=PROG,
        description=textwrap.fill(
            "Compare the deployed backends (ONNX Runtime fp32/fp16 on the CPU or the GPU, "
            "TensorRT fp32/fp16) with the "
            "torch reference: the raw 125-channel score maps of every pyramid level, and the "
            "final detections, on synthetic images of several sizes. Prints a Markdown table "
            "(status passed / FAILED / skipped per backend and size; a FAIL names each "
            "criterion that failed, measured value > limit). The reference is the PyTorch "
            "model: this needs the export extra (pip install 'tinyfaces-trt[export]').", 88),
        epilog=f"""\
tolerances:
{tol}

exit status:
  {EXIT_OK}  every comparison ran and passed (the default backends are ONNX Runtime's, plus
     TensorRT's only where TensorRT and a GPU are usable; a default one that still cannot
     run is reported as skipped and does not fail)
  {EXIT_FAILED}  a comparison was out of tolerance (or had NaN/inf values)
  {EXIT_SETUP}  bad arguments, or a setup error (missing file or dependency, export folder of
     other weights or whose manifest gives the network other settings than the weights have,
     a file that cannot be written)
  {EXIT_SKIPPED}  a backend named in --backends was skipped (cannot run here), or nothing at
     all was compared; --allow-skip turns this into {EXIT_OK}
  {EXIT_INTERRUPTED}  interrupted (Ctrl-C or SIGTERM); no --json report is written and the
       temporary export folder is removed

example:
  tf-parity --untrained --depth 50 --sizes 33x47,64x64 --json parity.json
  tf-parity --weights checkpoint.pth --model export/ --backends tensorrt,tensorrt-fp16""",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--weights", metavar="W", help="checkpoint (.pth or MatConvNet .mat) to test")
    src.add_argument("--untrained", action="store_true",
                     help="test the seeded random-weight network instead of a checkpoint")
    parser.add_argument("--depth", type=int, default=101, choices=(50, 101),
                        help="ResNet depth of the --untrained network (default: 101)")
    parser.add_argument("--seed", type=seed_argument, default=0,
                        help="seed of the --untrained network (default: 0)")
    parser.add_argument("--variant", choices=VARIANTS, default=None,
                        help="variant of the --untrained network (default: pytorch), or how to "
                             "read --weights, as tf-export --variant did for the --model folder "
                             "(default: the checkpoint's own)")
    parser.add_argument("--model", metavar="EXPORT_DIR",
                        help="export folder to test (must come from the same weights); default: "
                             "export into a temporary folder first")
    parser.add_argument("--sizes", type=parse_image_sizes, default=parse_image_sizes(DEFAULT_SIZES),
                        help=f"image sizes WxH, comma separated (default: {DEFAULT_SIZES})")
    parser.add_argument("--backends", type=parse_backends, default=None,
                        help="comma separated, from: " + ", ".join(PARITY_BACKENDS)
                             + " (default: onnxruntime,onnxruntime-fp16, plus tensorrt,"
                               "tensorrt-fp16 when TensorRT and a GPU are usable); a backend "
                               "named here that cannot run is an error (exit "
                             + f"{EXIT_SKIPPED}) unless --allow-skip")
    parser.add_argument("--prob-thresh", type=probability, metavar="P",
                        help="detections compared: probability > P (default: the model's, 0.5; "
                             "the WIDER protocol's is 0.03, with --pyramid fixed)")
    parser.add_argument("--nms-thresh", type=fraction, metavar="T",
                        help="NMS IoU threshold of both sides (default: the model's)")
    parser.add_argument("--pyramid", choices=PYRAMID_RULES,
                        help="pyramid rule of both sides: adaptive or fixed (the WIDER "
                             "protocol) (default: the model's, adaptive)")
    parser.add_argument("--allow-skip", action="store_true",
                        help="accept skipped backends: exit 0 when everything that ran passed")
    parser.add_argument("--json", metavar="OUT", help="also write the full results as JSON")
    add_version_argument(parser)
    return parser


def detection_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The config overrides ``--prob-thresh``, ``--nms-thresh`` and ``--pyramid`` give (both
    sides decode and suppress with them)."""
    given = {"prob_thresh": args.prob_thresh, "nms_thresh": args.nms_thresh,
             "pyramid": args.pyramid}
    return {name: value for name, value in given.items() if value is not None}


def _check_writable(path: Path, args: argparse.Namespace) -> None:
    """Raises :class:`TinyFacesError` where ``path`` cannot be written (checked again when it
    is), or where writing it would replace an input: the ``--weights`` file (or the file a
    link there points to), or anything in the ``--model`` folder."""
    victims = inputs_replaced_by([path], [args.weights] if args.weights else [])
    if victims:
        raise TinyFacesError(f"--json {path} would replace the weights file {victims[str(path)]}; "
                             "give another --json")
    if args.model and Path(args.model).resolve() in replaced_entry(path).parents:
        raise TinyFacesError(f"--json {path} is inside the export folder under test "
                             f"(--model {args.model}); give another --json")
    parent = path.resolve().parent
    problem = (f"{parent} is not a folder" if not parent.is_dir()
               else f"{path} is a folder" if path.is_dir()
               else f"{parent} is not writable" if not os.access(parent, os.W_OK) else None)
    if problem:
        raise TinyFacesError(f"cannot write --json {path}: {problem}")


def _check_folder_source(folder: Any, args: argparse.Namespace) -> None:
    """Refuses an export folder made from other weights than the reference's, before the
    reference is built (a ``--variant`` hint is no use then)."""
    manifest = folder.manifest
    model = manifest.get("model") or {}
    if args.weights:
        from tinyfaces_trt.export_cache import file_sha256

        recorded = (manifest.get("weights") or {}).get("sha256")
        if recorded != file_sha256(args.weights, what="weights file"):
            afresh = f"leave out --model to export {args.weights} afresh"
            made_from = (f"the UNTRAINED seeded network (test it with --untrained); {afresh}"
                         if folder.untrained else
                         f"weights with sha256 {recorded}; give --weights the checkpoint it was "
                         f"exported from, or {afresh}" if recorded else
                         f"weights its manifest does not identify (no sha256); {afresh}")
            raise TinyFacesError(f"export folder {folder.path} was not made from {args.weights} "
                                 f"but from {made_from}")
    else:
        depth = model.get("depth")
        seed = model.get("seed")  # None: a folder made before it was kept
        if not folder.untrained or depth not in (None, args.depth) or seed not in (None, args.seed):
            raise TinyFacesError(f"export folder {folder.path} does not hold the untrained "
                                 f"ResNet-{args.depth} network of seed {args.seed} "
                                 f"(untrained={folder.untrained}, depth={depth}, seed={seed})")


def _check_folder_variant(folder: Any, args: argparse.Namespace, reference: DetectorConfig) -> None:
    """Refuses an export folder of the reference's weights read as another variant (its score
    maps would differ in shape: a setup error, not a failure)."""
    variant = (folder.manifest.get("model") or {}).get("variant") or folder.config.variant
    if variant != reference.variant:
        if args.weights:
            from tinyfaces_trt.export.weights import runnable_variants

            can_run = variant in runnable_variants(args.weights)
        else:
            can_run = variant in VARIANTS
        hint = (f"give --variant {variant} to compare like with like" if can_run else
                f"{args.weights} cannot run as that variant (its manifest is inconsistent); "
                f"re-export it with tf-export --weights {args.weights}")
        raise TinyFacesError(f"export folder {folder.path} holds the {variant!r} variant of the "
                             f"network, the reference is the {reference.variant!r} one; {hint}")


#: The config fields the weights fix: what the network was trained with, and the variant whose
#: box coordinates it gives (matconvnet: 1-based). A folder's detection settings (thresholds,
#: pyramid, face sizes, ...) are its own and may differ.
NETWORK_FIELDS = ("variant", "template_policy", "templates", "normalization", "stride",
                  "offset")


def _check_folder_network(folder: Any, args: argparse.Namespace,
                          reference: DetectorConfig) -> None:
    """Refuses an export folder whose manifest gives the network other templates,
    normalisation or score-map geometry than the reference's weights imply (an edited
    manifest): both sides of the comparison would run with them and agree, on detections the
    network does not make. Called after :func:`_check_folder_variant`."""
    import numpy as np

    changed = [name for name in NETWORK_FIELDS if not (
        np.array_equal(getattr(folder.config, name), getattr(reference, name))
        if name == "templates" else getattr(folder.config, name) == getattr(reference, name))]
    if changed:
        source = args.weights or f"the untrained ResNet-{args.depth} of seed {args.seed}"
        raise TinyFacesError(f"export folder {folder.path}: its manifest's network settings "
                             f"differ from those of {source} ({', '.join(changed)}; an edited "
                             f"manifest?); its detections would not be the network's: "
                             f"re-export it")


def _export_folders(model: Any, config: DetectorConfig, backends: Sequence[str], work: Path,
                    weights: str | None) -> dict[str, Any]:
    """Exports what ``backends`` need into ``work``; backend -> export folder."""
    from tinyfaces_trt.core.manifest import load_export_folder

    from tinyfaces_trt.export.export_pipeline import export_model
    from tinyfaces_trt.export.trt_build import tensorrt_version

    trt = tensorrt_version() is not None
    folders: dict[str, Any] = {}
    for fp16 in (False, True):
        names = [b for b in backends if PARITY_BACKENDS[b][1] == fp16]
        if not names:
            continue
        engine = trt and any(PARITY_BACKENDS[b][0] == "tensorrt" for b in names)
        out = work / ("fp16" if fp16 else "fp32")
        # no trtexec hint: it would name a file of this temporary folder
        export_model(model, config, out, fp16=fp16, engine=engine, weights_path=weights,
                     untrained=weights is None, verify=False, hints=False,
                     log=lambda line: stderr_line(f"tf-parity: {line}"))
        folder = load_export_folder(out)
        folders.update({b: folder for b in names})
    return folders


def exit_status(results: Sequence[ParityResult], requested: bool, allow_skip: bool) -> int:
    """The exit status of a run (see ``--help``): a failed comparison first, then a refused
    skip (a backend named in ``--backends``, or nothing compared at all)."""
    if any(r.status == FAILED for r in results):
        return EXIT_FAILED
    skipped = any(r.status == SKIPPED for r in results)
    nothing_ran = all(r.status == SKIPPED for r in results)
    if not allow_skip and ((requested and skipped) or nothing_ran):
        return EXIT_SKIPPED
    return EXIT_OK


def _explain_skips(results: Sequence[ParityResult], requested: bool, code: int) -> None:
    """One stderr line per skipped backend, saying whether the skip fails the run."""
    reasons = {r.backend: r.skipped.splitlines()[0] for r in results
               if r.status == SKIPPED and r.skipped.strip()}
    if code == EXIT_SKIPPED:
        what = ("requested backend" if requested else "no backend could run; backend")
        for name, reason in reasons.items():
            stderr_line(f"tf-parity: error: {what} {name} was skipped: {reason}")
        stderr_line("tf-parity: nothing was verified for the skipped backend(s); pass "
                    "--allow-skip to accept skips")
    else:
        for name, reason in reasons.items():
            stderr_line(f"tf-parity: note: {name} skipped: {reason}")


def main(argv: Sequence[str] | None = None) -> int:
    """``tf-parity`` entry point; returns the exit status (see ``--help``)."""
    args = build_parser().parse_args(argv)
    return run_interruptible(PROG, lambda: _run(args),
                             interrupted="interrupted (no report was written; the temporary "
                                         "export folder was removed)",
                             status=EXIT_INTERRUPTED)


def _run(args: argparse.Namespace) -> int:
    """The run of :func:`main` once the arguments are parsed."""
    requested = args.backends is not None
    backends = args.backends or default_backends()
    try:
        if args.json:
            _check_writable(Path(args.json), args)  # before minutes of work
        # one line, not a traceback, without the export extra: the reference is torch
        import_optional("torch", purpose="tf-parity (its reference is the PyTorch model)",
                        extra_hint="pip install 'tinyfaces-trt[export]'")
        from tinyfaces_trt.core.manifest import load_export_folder
        from tinyfaces_trt.export.weights import load_model

        folder = load_export_folder(args.model) if args.model else None
        if folder is not None:
            _check_folder_source(folder, args)  # before seconds of building the reference
        # --depth and --seed describe the --untrained network only
        model, config = load_model(args.weights, depth=None if args.weights else args.depth,
                                   variant=args.variant, seed=args.seed)
        with tempfile.TemporaryDirectory(prefix="tf-parity-") as work:
            if folder is not None:
                _check_folder_variant(folder, args, config)
                _check_folder_network(folder, args, config)
                config = folder.config
                folders: dict[str, Any] = {b: folder for b in backends}
            else:
                folders = _export_folders(model, config, backends, Path(work), args.weights)
            start = time.perf_counter()
            config = config.with_(**detection_settings(args))
            results = run_parity(model, config, folders, backends, args.sizes)
            elapsed = time.perf_counter() - start
    except TinyFacesError as exc:
        stderr_line(f"tf-parity: error: {exc}")
        return EXIT_SETUP
    code = exit_status(results, requested, args.allow_skip)
    write_stdout(markdown_table(results) + "\n\n" + summary_line(
        results, elapsed, "untrained seeded network" if args.untrained else str(args.weights))
        + "\n")
    _explain_skips(results, requested, code)
    if args.json:
        report = json_report(results, exit_code=code, backends=backends, requested=requested,
                             allow_skip=args.allow_skip, sizes=args.sizes,
                             weights=None if args.untrained else str(args.weights),
                             seconds=elapsed,
                             settings={"prob_thresh": config.prob_thresh,
                                       "nms_thresh": config.nms_thresh,
                                       "pyramid": config.pyramid})
        try:
            write_text_atomic(args.json, json.dumps(report, indent=2) + "\n")
        except OSError as exc:
            stderr_line(f"tf-parity: error: cannot write {args.json}: {exc}")
            return EXIT_SETUP
    return code


if __name__ == "__main__":
    sys.exit(main())

"""The detector's command-line options, one definition for tf-detect, tf-anonymize and tf-serve.

:func:`add_detector_arguments` declares ``--backend``, ``--model`` / ``--weights``,
``--prob-thresh``, ``--nms-thresh``, ``--min-face``, ``--max-face``, ``--pyramid``, ``--fp16``,
``--torch-mode``, ``--providers`` and ``--threads``; :func:`check_detector_arguments` refuses
the combinations argparse cannot express (exit 2); :func:`tinyfaces_trt.detectors.spec_from_arguments` turns
the parsed options into a detector.
"""

from __future__ import annotations

import argparse

from tinyfaces_trt.core.cli import fraction, positive_float, positive_int, probability
from tinyfaces_trt.core.errors import TinyFacesError
from tinyfaces_trt.detectors import BACKENDS, TORCH_CUDA_MODES, OptionNames, check_backend_options
from tinyfaces_trt.runtime.backends.onnxruntime_runner import (unknown_providers,
                                                               unknown_providers_message)

#: ``--pyramid``'s choices (``DetectorConfig.pyramid``).
PYRAMID_RULES = ("adaptive", "fixed")


def add_detector_arguments(parser: argparse.ArgumentParser, *, title: str | None = None,
                           backend_note: str = "", threads_default: str = "all cores") -> None:
    """Adds the detector options to ``parser`` (in an argument group when ``title`` is given).

    Args:
        backend_note: appended to ``--backend``'s help (e.g. how replicas get GPUs).
        threads_default: ``--threads``' default, in words.
    """
    group = parser.add_argument_group(title) if title else parser
    group.add_argument("--backend", choices=BACKENDS, default="onnxruntime",
                       help="network runtime: onnxruntime (CPU), onnxruntime-cuda "
                            "(onnxruntime-gpu), tensorrt, torch (the CPU reference), torch-cuda "
                            "(torch on a GPU: fp16, CUDA graphs of the fused network; "
                            "--torch-mode), or auto (the fastest present here; says "
                            f"which){backend_note} (default: onnxruntime)")
    source = group.add_mutually_exclusive_group()
    source.add_argument("--model", metavar="EXPORT_DIR",
                        help="export folder from tf-export (default: none)")
    source.add_argument("--weights", metavar="F",
                        help="checkpoint (.pth from tiny-faces-pytorch, or the authors' "
                             "hr_res101.mat); needs the 'export' extra (torch) (default: none: "
                             "the UNTRAINED seeded network, meaningless detections)")
    group.add_argument("--prob-thresh", type=probability, metavar="P",
                       help="keep detections with probability > P (default: the model's, 0.5)")
    group.add_argument("--nms-thresh", type=fraction, metavar="T",
                       help="suppress boxes overlapping a better one with IoU > T "
                            "(default: the model's: 0.3, 0.1 for the authors' hr_res101.mat "
                            "as in their demo)")
    group.add_argument("--min-face", type=positive_float, metavar="PIXELS",
                       help="look only for faces at least PIXELS long: skips the pyramid "
                            "levels/templates that can only find smaller ones; smaller faces "
                            "may be missed (default: none; see tf-anonymize --help)")
    group.add_argument("--max-face", type=positive_float, metavar="PIXELS",
                       help="look only for faces at most PIXELS long (default: none)")
    group.add_argument("--pyramid", choices=PYRAMID_RULES,
                       help="pyramid rule: adaptive (the authors' demo: levels chosen from the "
                            "image and template sizes, from where the largest template covers "
                            "the image up to 2x) or fixed (the port's and both references' WIDER "
                            "protocol: the short side times 2^-2, 2^-1, 1, 2; use it for WIDER "
                            "results). fixed goes no lower than 1/4 (faces much over 440 px may "
                            "be missed) and drops a level longer than max_input_dim (5000 px: no "
                            "2x level past 2500 px) where adaptive takes a smaller one; the "
                            "face size limits prune the levels of both (default: the model's, "
                            "adaptive)")
    group.add_argument("--fp16", action=argparse.BooleanOptionalAction, default=None,
                       help="fp16 network: the fp16 ONNX model / TensorRT engine, fp16 compute "
                            "for torch-cuda (default: fp32, but fp16 for torch-cuda)")
    group.add_argument("--torch-mode", choices=TORCH_CUDA_MODES, metavar="MODE",
                       help="how torch-cuda prepares each input shape: fused (the "
                            "BatchNorm-folded network, each convolution with its bias, residual "
                            "add and ReLU in one cuDNN call, one CUDA graph per shape; nothing "
                            "to compile), compile (torch.compile + CUDA graph, cached on disk), "
                            "aoti (AOTInductor packages in the cache: later runs load them "
                            "without compiling; loadable from C++), graphs (the network as "
                            "given, CUDA graphs) or eager (default: fused)")
    group.add_argument("--providers", metavar="LIST",
                       help="onnxruntime execution providers, comma separated (cpu, cuda, "
                            "tensorrt, or full names such as CUDAExecutionProvider) or 'auto' "
                            "for the best available (default: cpu). With onnxruntime-cuda: "
                            "'cuda' leaves ONNX Runtime's TensorRT provider out (any image "
                            "size, no engine build; default: tensorrt,cuda where TensorRT is "
                            "installed, one engine for the export's profile)")
    group.add_argument("--threads", type=positive_int, metavar="N",
                       help=f"onnxruntime intra-op threads, at most the usable cores "
                            f"(default: {threads_default})")


#: How :func:`check_detector_arguments` names the options in
#: :func:`~tinyfaces_trt.detectors.check_backend_options`' messages: by their flags.
FLAG_NAMES = OptionNames({"fp16": "--fp16", "torch_mode": "--torch-mode",
                          "providers": "--providers", "threads": "--threads",
                          "model_dir": "--model", "weights": "--weights F"}, "--backend {}")


def check_detector_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuses the detector option combinations argparse cannot express (``parser.error``,
    exit 2): an option the backend does not use (the rule of ``create_detector``:
    :func:`~tinyfaces_trt.detectors.check_backend_options`, in flags), unknown
    ``--providers`` names, ``--min-face`` above ``--max-face``."""
    try:
        check_backend_options(args.backend, names=FLAG_NAMES, fp16=args.fp16,
                              torch_mode=args.torch_mode, providers=args.providers,
                              threads=args.threads, model_dir=args.model)
    except TinyFacesError as exc:
        parser.error(str(exc))
    if args.min_face is not None and args.max_face is not None and args.min_face > args.max_face:
        parser.error(f"--min-face {args.min_face:g} is larger than --max-face {args.max_face:g}")
    if args.providers is not None:
        unknown = unknown_providers(args.providers)  # against the installed onnxruntime's
        if unknown:
            parser.error(f"--providers: {unknown_providers_message(unknown)}")

"""The cluster options every batch CLI shares: ``--ray [ADDRESS]`` and ``--workers N``.

    add_ray_arguments(parser)
    args = parser.parse_args()
    check_ray_arguments(parser, args)
    if ray_requested(args):
        results = run_tasks(..., address=ray_address(args), workers=args.workers)
"""

from __future__ import annotations

import argparse
from typing import Any

from tinyfaces_trt.core.cli import positive_int

#: ``--ray`` given without an address (argparse ``const``): let Ray find or start a cluster.
_FIND_OR_START = ""


def add_ray_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds ``--ray [ADDRESS]`` and ``--workers N`` in their own help section."""
    group = parser.add_argument_group(
        "cluster (Ray; needs the 'scale' extra: pip install 'tinyfaces-trt[scale]')")
    group.add_argument(
        "--ray", nargs="?", const=_FIND_OR_START, default=None, metavar="ADDRESS",
        help="run the files on a Ray cluster: an actor pool with one detector per worker "
             "(a GPU each where the cluster has GPUs and the backend uses one, else CPUs). "
             "Without ADDRESS: $RAY_ADDRESS, else the cluster `ray start` runs on this "
             "machine, else a new local one; 'local' always starts one; HOST:6379 or "
             "ray://HOST:10001 joins that cluster. Inputs and outputs must be at the same "
             "path on every node (shared storage). Finished outputs are skipped, so a rerun "
             "resumes (default: no cluster, this process)")
    group.add_argument("--workers", type=positive_int, metavar="N",
                       help="number of pool workers with --ray (default: one per GPU, or one "
                            "per CPU of the cluster)")


def check_ray_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """``--workers`` only means something with ``--ray``; exits 2 through ``parser.error``."""
    if args.workers is not None and args.ray is None:
        parser.error("--workers sizes the Ray worker pool and needs --ray")


def ray_requested(args: argparse.Namespace) -> bool:
    """Whether ``--ray`` was given."""
    return getattr(args, "ray", None) is not None


def ray_address(args: argparse.Namespace) -> str | None:
    """The ``--ray`` address for :func:`~tinyfaces_trt.scaleout.cluster.connect` (None:
    find or start a cluster)."""
    return args.ray or None


def detector_spec(args: argparse.Namespace, progress: Any = None) -> Any:
    """The detector the tf-detect options ask for (``--backend``, ``--model``, ``--weights``,
    ``--fp16``, ``--providers``, ``--threads``, ``--prob-thresh``, ``--nms-thresh``), as a
    :class:`~tinyfaces_trt.detectors.DetectorSpec` for workers and replicas.

    For ONNX Runtime a checkpoint (or the untrained default) is exported into the cache
    here, once, so the workers only load the export folder instead of all exporting it.
    """
    from tinyfaces_trt.detectors import DetectorSpec, resolve_backend
    from tinyfaces_trt.export_cache import cached_export

    providers = args.providers.split(",") if args.providers and args.providers != "auto" \
        else args.providers
    # "auto" is resolved here, on the driver, so that the pool is planned for the backend
    # the workers will run (GPU actors for a GPU backend)
    backend = resolve_backend(args.backend, args.model, fp16=bool(args.fp16))
    if progress is not None and backend != args.backend:
        progress(f"backend auto: {backend} (the fastest present on this machine)")
    model_dir, weights = args.model, args.weights
    if backend in ("onnxruntime", "onnxruntime-cuda") and model_dir is None:
        folder = cached_export(weights, fp16=bool(args.fp16), progress=progress)
        model_dir, weights = str(folder.path), None
    overrides = tuple((k, getattr(args, k, None)) for k in
                      ("prob_thresh", "nms_thresh", "min_face", "max_face")
                      if getattr(args, k, None) is not None)
    return DetectorSpec(backend, model_dir, weights, overrides, fp16=args.fp16,
                        providers=tuple(providers) if isinstance(providers, list) else providers,
                        threads=args.threads)

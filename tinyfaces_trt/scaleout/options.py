"""The cluster options every batch CLI shares: ``--ray [ADDRESS]`` and ``--workers N``.

    add_ray_arguments(parser)
    args = parser.parse_args()
    check_ray_arguments(parser, args)
    if ray_requested(args):
        results = run_tasks(..., address=ray_address(args), workers=args.workers)
"""

from __future__ import annotations

import argparse

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

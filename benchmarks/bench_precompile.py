"""Compiling a benchmark run's network input shapes ahead of it, in other processes.

``latency.py --precompile`` with the arguments of the run it readies compiles every input
shape that run's ``torch-cuda-compile`` backend will prepare into its compile cache on disk,
and measures nothing. The run then loads each shape from its file instead of compiling it (about
6-7 s a shape with torch.compile on an H200: 159 s of the 2026-12-04 GPU check's 374 s);
a shape still being compiled when the run needs it is waited for (the cache's lock per
shape), never compiled twice. ``tools/gpu_check.py`` runs it beside its GPU tests when
``torch-cuda-compile`` is benchmarked; ``--precompile-part K/N`` lets N processes split the
shapes.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench_common import one_line

Shape = tuple[int, ...]


def parse_part(text: str) -> tuple[int, int]:
    """``"K/N"`` (1 <= K <= N) -> (K, N); ValueError otherwise."""
    try:
        k, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise ValueError(f"expected K/N, e.g. 1/2, got {text!r}") from None
    if not 1 <= k <= n:
        raise ValueError(f"K/N needs 1 <= K <= N, got {text!r}")
    return k, n


def run_shapes(image_sizes: list[Any], batch: int, config: Any) -> list[Shape]:
    """Every network input shape a run prepares, in its order: per image size (width,
    height), the levels of one image; after the first size's, its batch's (``batch`` >= 2)."""
    from tinyfaces_trt.core.pyramid import plan_pyramid

    shapes: list[Shape] = []
    for k, (width, height) in enumerate(image_sizes):
        levels = plan_pyramid(height, width, config)
        shapes += [(1, 3, lv.height, lv.width) for lv in levels]
        if k == 0 and batch >= 2:
            shapes += [(batch, 3, lv.height, lv.width) for lv in levels]
    return list(dict.fromkeys(shapes))


def compiling_backends(names: list[str]) -> list[Any]:
    """The backends of ``names`` (benchmark backend names) that compile their network per
    input shape into a cache (those with a precompile: ``torch-cuda-compile``)."""
    from bench_backends import BACKENDS

    specs = {b.name: b for b in BACKENDS}
    return [specs[n] for n in names if n in specs and specs[n].precompile is not None]


def precompile(args: argparse.Namespace, model: Any, config: Any,
               log: Callable[[str], None]) -> int:
    """Compiles this part of the run's shapes for every requested backend that compiles
    into a cache. Returns 0 when done (also when every shape was already cached), 1 when no
    requested backend compiles here or a compile failed (the shapes before it are cached)."""
    from bench_backends import BenchContext, Skip

    compiling = compiling_backends(args.backends)
    if not compiling:
        log(f"precompile: none of {', '.join(args.backends)} compiles its network into a "
            "cache (torch-cuda-compile does): nothing to do")
        return 1
    shapes = run_shapes(args.image_size, args.batch, config)
    k, n = args.precompile_part
    mine = shapes[k - 1::n]
    ctx = BenchContext(model=model, config=config, levels=[], image_hw=(0, 0), threads=1,
                       export_root=Path(args.export_dir or "."), log=log,
                       torch_mode=args.torch_mode,
                       cache_dir=Path(args.cache_dir) if args.cache_dir else None)
    start = time.perf_counter()
    compiled = cached = 0
    skipped = []
    for spec in compiling:
        log(f"precompile: {spec.name}: {len(mine)} of the run's "
            f"{len(shapes)} input shapes (part {k}/{n})")
        try:
            records = spec.precompile(ctx, mine)  # each compiled shape said through ctx.log
        except Skip as exc:
            skipped.append(f"{spec.name}: {exc}")
            log(f"precompile: {spec.name} cannot run here: {exc}")
            continue
        except Exception as exc:
            log(f"precompile: {spec.name} failed: {one_line(exc, with_type=True)} (the shapes "
                "compiled before it are in the cache)")
            return 1
        if not records:
            log(f"precompile: {spec.name} compiles nothing")
        cached += sum(1 for r in records.values() if r.cache_loaded)
        compiled += sum(1 for r in records.values() if not r.cache_loaded)
    if len(skipped) == len(compiling):
        log(f"precompile: nothing compiled: {'; '.join(skipped)}")
        return 1
    log(f"precompile: done in {time.perf_counter() - start:.1f} s: {compiled} compiled, "
        f"{cached} already in the cache")
    return 0

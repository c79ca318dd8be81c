"""Pyramid levels side by side on one GPU: the plan and the fork/join of
:meth:`TorchCudaRunner.run_levels <tinyfaces_trt.export.torch_cuda.TorchCudaRunner.run_levels>`.

A 1080p pyramid's four smallest levels took 0.74-1.11 ms each on an H200 for 1.2% of its FLOPs
(benchmarks/results/h200-2026-12-04/run4): about a hundred convolutions one after another,
each too small to fill the GPU, so their time is the kernels' latency, not their work. Given
streams of their own, forked from the runner's stream and joined back into it with CUDA events,
they run beside each other and beside the large levels, which stay on the runner's stream.

    plan = plan_levels(shapes, max_pixels=CONCURRENT_MAX_PIXELS, max_branches=8)
    outputs = run_forked(plan, main, branches, run_one, copy, on_stream, buffer_of)

Inputs of one shape share their CUDA graph (and its output buffer): they stay on one stream, one
after another, and an output whose buffer a later input on that stream replays into is copied
before that replay.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

#: Input pixels (N x h x w) up to which a level gets a stream of its own. 960x540 (the 1080p
#: pyramid's 0.5x level, 128 TFLOP/s alone on an H200, against 253-306 for the larger ones)
#: is the largest such single-image level.
CONCURRENT_MAX_PIXELS = 1 << 19
#: Streams a runner forks levels onto at most (more small shapes share them in turn).
MAX_BRANCHES = 8

Shape = tuple[int, ...]


@dataclass(frozen=True)
class LevelPlan:
    """Which input runs where: ``main`` (indices, in order) on the runner's stream, each list of
    ``branches`` on a stream of its own."""

    main: tuple[int, ...]
    branches: tuple[tuple[int, ...], ...]

    @classmethod
    def in_turn(cls, count: int) -> "LevelPlan":
        """Every input on the main stream, in order."""
        return cls(tuple(range(count)), ())


def plan_levels(shapes: Sequence[Shape], max_pixels: int = CONCURRENT_MAX_PIXELS,
                max_branches: int = MAX_BRANCHES) -> LevelPlan:
    """Inputs of at most ``max_pixels`` pixels (batch x height x width) on branches, one
    shape per branch while there are branches (then in turn), the others on the main stream;
    inputs of one shape always together, in their given order. No branch for a single input
    (nothing to run beside it) or ``max_branches`` 0."""
    by_shape: dict[Shape, list[int]] = {}
    for i, shape in enumerate(shapes):
        by_shape.setdefault(tuple(shape), []).append(i)
    small = [group for shape, group in by_shape.items() if _pixels(shape) <= max_pixels]
    if len(shapes) < 2 or max_branches < 1 or not small:
        return LevelPlan(tuple(range(len(shapes))), ())
    branches: list[list[int]] = [[] for _ in range(min(max_branches, len(small)))]
    for k, group in enumerate(small):
        branches[k % len(branches)].extend(group)
    on_branch = {i for branch in branches for i in branch}
    main = tuple(i for i in range(len(shapes)) if i not in on_branch)
    if not main and len(branches) == 1:  # one shape, all small: nothing beside it
        return LevelPlan(tuple(range(len(shapes))), ())
    return LevelPlan(main, tuple(tuple(branch) for branch in branches))


def _pixels(shape: Shape) -> int:
    n, _, h, w = shape
    return int(n) * int(h) * int(w)


def run_forked(plan: LevelPlan, main: Any, branches: Sequence[Any], run_one: Callable[[int], Any],
               copy: Callable[[Any], Any],
               on_stream: Callable[[Any], AbstractContextManager[Any]],
               buffer_of: Callable[[int], Hashable]) -> list[Any]:
    """Runs input ``i`` by ``run_one(i)`` under ``on_stream(stream)`` of its plan's stream:
    each branch waits (``branch.wait_stream(main)``) for the work queued on ``main`` so far,
    then ``main``'s own inputs are queued, and ``main`` waits for every branch that was forked
    (also when a run raises), so what is queued on ``main`` afterwards sees every output and
    may reuse every input.

    ``buffer_of(i)``: what names the buffer input ``i``'s output is written to (its CUDA
    graph's shape), read once input ``i`` has run; ``copy(output)`` keeps an output whose
    buffer a later input of its stream writes to. Returns the outputs in input order."""
    if len(branches) < len(plan.branches):
        raise ValueError(f"{len(plan.branches)} branches planned, {len(branches)} streams given")
    outputs: list[Any] = [None] * (len(plan.main) + sum(len(b) for b in plan.branches))
    forked: list[Any] = []
    try:
        for stream, indices in zip(branches, plan.branches):
            stream.wait_stream(main)
            forked.append(stream)
            with on_stream(stream):
                _run_in_turn(indices, run_one, copy, buffer_of, outputs)
        with on_stream(main):
            _run_in_turn(plan.main, run_one, copy, buffer_of, outputs)
    finally:
        for stream in forked:
            main.wait_stream(stream)
    return outputs


def _run_in_turn(indices: Sequence[int], run_one: Callable[[int], Any],
                 copy: Callable[[Any], Any], buffer_of: Callable[[int], Hashable],
                 outputs: list[Any]) -> None:
    for k, i in enumerate(indices):
        out = run_one(i)
        buffer = buffer_of(i)
        if any(buffer_of(j) == buffer for j in indices[k + 1:]):
            out = copy(out)  # a later run writes that buffer
        outputs[i] = out


__all__ = ["CONCURRENT_MAX_PIXELS", "LevelPlan", "MAX_BRANCHES", "plan_levels", "run_forked"]

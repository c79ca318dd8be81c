"""A small deterministic stand-in network for pipeline tests that need detections."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import numpy as np

from tinyfaces_trt.core.runner import HOST, RunnerBase, RunnerCapabilities


class PooledRunner(RunnerBase):
    """Score maps from a fixed random map per input size plus each image's mean: every image
    scores on its own (a batch gives exactly its images' single results) and images differ.
    Records the batch size of every run in ``batches``."""

    def __init__(self, capabilities: RunnerCapabilities = HOST) -> None:
        self.capabilities = capabilities
        self.batches: list[int] = []

    def run(self, x: np.ndarray) -> np.ndarray:
        n, _, h, w = x.shape
        self.batches.append(n)
        base = np.random.default_rng(h * 1000 + w).standard_normal(
            (1, 125, -(-h // 8), -(-w // 8))).astype(np.float32)
        return base + x.mean(axis=(1, 2, 3))[:, None, None, None]


class CurrentStream:
    """A stand-in for ``torch.cuda.stream(s)``: while the block runs, :attr:`name` is
    ``name_of(s)`` (the stream named at the start outside every block)."""

    def __init__(self, start: object, name_of: Callable[[object], object]) -> None:
        self.name = start
        self.name_of = name_of

    @contextlib.contextmanager
    def __call__(self, stream: object) -> Iterator[None]:
        before, self.name = self.name, self.name_of(stream)
        try:
            yield
        finally:
            self.name = before

"""A small deterministic stand-in network for pipeline tests that need detections."""

from __future__ import annotations

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

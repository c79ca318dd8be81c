"""The seeded synthetic test image shared by parity, tests and benchmarks."""

from __future__ import annotations

import numpy as np


def synthetic_image(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A deterministic (height, width, 3) uint8 RGB test image: smooth colour blobs plus
    mild noise (a network sees structure at several scales, unlike pure noise).

    The same ``(height, width, seed)`` always gives the same pixels, on every machine. The
    parity tolerances (:mod:`.compare`) were measured on these images.
    """
    if height < 1 or width < 1:
        raise ValueError(f"image size must be positive, got height {height}, width {width}")
    rng = np.random.default_rng([seed, height, width])
    gy = np.linspace(0.0, 1.0, height)[:, None, None]
    gx = np.linspace(0.0, 1.0, width)[None, :, None]
    phase = rng.uniform(0, 2 * np.pi, size=(1, 1, 3))
    freq = rng.uniform(2, 6, size=(2, 1, 1, 3))
    smooth = 127.5 + 100.0 * np.sin(freq[0] * np.pi * gy + phase) * np.cos(freq[1] * np.pi * gx)
    noisy = smooth + rng.normal(0.0, 20.0, size=(height, width, 3))
    return np.clip(np.rint(noisy), 0, 255).astype(np.uint8)

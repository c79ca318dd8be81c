"""Antialiased bilinear resize: Pillow's ``BILINEAR`` resample, in float.

This is what the PyTorch port gets through torchvision + PIL, but without Pillow's
intermediate uint8 rounding of 8-bit images. Separable: a horizontal pass, then a vertical
pass, each a weighted sum over a small window of input pixels (see docs/DESIGN.md; the CUDA
resize kernel uses the same coefficients).
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from tinyfaces_trt.core.errors import ImageError


def resize_coefficients(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pillow's bilinear filter coefficients for resampling ``in_size`` -> ``out_size``.

    Returns:
        ``(starts, weights)``: ``starts`` (out_size,) int64 first input index of each output
        sample; ``weights`` (out_size, taps) float64, output ``i`` is
        ``sum_k weights[i, k] * input[starts[i] + k]``. Rows are normalised to sum 1 and
        padded with zeros past each window; ``starts[i] + taps`` never exceeds ``in_size``.
    """
    if in_size < 1 or out_size < 1:
        raise ImageError(f"resize sizes must be >= 1, got {in_size} -> {out_size}")
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support = 1.0 * filterscale
    ss = 1.0 / filterscale
    center = (np.arange(out_size, dtype=np.float64) + 0.5) * scale
    # int() truncates toward zero; both arguments are >= -0.5 here, so clip-then-trunc is exact.
    xmin = np.maximum(np.trunc(center - support + 0.5), 0).astype(np.int64)
    xmax = np.minimum(np.trunc(center + support + 0.5), in_size).astype(np.int64)
    taps = min(int((xmax - xmin).max()), in_size)
    # Shift windows that would run past the end left; the extra taps there get weight 0.
    starts = np.minimum(xmin, in_size - taps)
    x = starts[:, None] + np.arange(taps)[None, :]
    inside = (x >= xmin[:, None]) & (x < xmax[:, None])
    w = np.where(inside, np.maximum(0.0, 1.0 - np.abs((x - center[:, None] + 0.5) * ss)), 0.0)
    total = w.sum(axis=1, keepdims=True)
    w = np.divide(w, total, out=np.zeros_like(w), where=total != 0)
    return starts, w


def _resize_matrix(in_size: int, out_size: int) -> sp.csr_matrix:
    """The (out_size, in_size) float32 sparse matrix of :func:`resize_coefficients`."""
    starts, weights = resize_coefficients(in_size, out_size)
    taps = weights.shape[1]
    rows = np.repeat(np.arange(out_size), taps)
    cols = (starts[:, None] + np.arange(taps)[None, :]).ravel()
    return sp.csr_matrix((weights.ravel().astype(np.float32), (rows, cols)), shape=(out_size, in_size))


def resize_bilinear_aa(image: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """Resizes an (H, W, C) image (uint8 or float) to (out_h, out_w, C) float32.

    Same coefficients as Pillow's ``Image.resize(..., Image.BILINEAR)`` (which antialiases
    when downscaling), computed in float without rounding between the two passes.
    """
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[0] < 1 or image.shape[1] < 1:
        raise ImageError(f"expected a non-empty (H, W, C) image, got shape {image.shape}")
    if out_h < 1 or out_w < 1:
        raise ImageError(f"resize target must be at least 1x1, got {out_h}x{out_w}")
    in_h, in_w, channels = image.shape
    if out_w == in_w:
        rows = image.astype(np.float32)                        # (H, W, C)
    else:
        # Horizontal pass as (out_w, W) @ (W, H*C) on the transposed image.
        cols = np.ascontiguousarray(image.transpose(1, 0, 2)).reshape(in_w, in_h * channels)
        cols = _resize_matrix(in_w, out_w) @ cols.astype(np.float32)
        rows = np.ascontiguousarray(cols.reshape(out_w, in_h, channels).transpose(1, 0, 2))
    if out_h == in_h:
        return rows
    out = _resize_matrix(in_h, out_h) @ rows.reshape(in_h, out_w * channels)
    return np.asarray(out, dtype=np.float32).reshape(out_h, out_w, channels)

"""Antialiased bilinear resize vs Pillow, and the normalisation into NCHW."""

import numpy as np
import pytest
from PIL import Image

from tinyfaces_trt.core.config import DetectorConfig
from tinyfaces_trt.core.errors import ImageError
from tinyfaces_trt.runtime.preprocess import HostPreprocessor, normalize
from tinyfaces_trt.core.pyramid import PyramidLevel
from tinyfaces_trt.runtime.resize import resize_bilinear_aa, resize_coefficients

# (in_h, in_w) -> (out_h, out_w): down, up, mixed, non-integer ratios, 1-pixel, identity.
CASES = [((120, 160), (30, 40)), ((47, 33), (94, 66)), ((33, 47), (17, 100)), ((100, 77), (71, 109)),
         ((64, 48), (1, 1)), ((1, 1), (5, 3)), ((45, 60), (45, 31)), ((45, 60), (45, 60)),
         ((160, 120), (113, 85))]


def _design_coefficients(in_size, out_size):
    """The DESIGN.md pseudo-code, literally, as a dense (out, in) matrix."""
    m = np.zeros((out_size, in_size))
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support = 1.0 * filterscale
    ss = 1.0 / filterscale
    for xx in range(out_size):
        center = (xx + 0.5) * scale
        xmin = max(int(center - support + 0.5), 0)
        xmax = min(int(center + support + 0.5), in_size)
        w = [max(0.0, 1 - abs((x - center + 0.5) * ss)) for x in range(xmin, xmax)]
        m[xx, xmin:xmax] = np.asarray(w) / sum(w)
    return m


@pytest.mark.parametrize("in_size,out_size", [(160, 40), (40, 160), (47, 33), (33, 47), (5, 1),
                                              (1, 7), (1920, 240), (100, 100), (7, 3)])
def test_coefficients_follow_design(in_size, out_size):
    starts, weights = resize_coefficients(in_size, out_size)
    assert starts.shape == (out_size,) and weights.shape[0] == out_size
    assert starts.min() >= 0 and starts.max() + weights.shape[1] <= in_size
    dense = np.zeros((out_size, in_size))
    for k in range(weights.shape[1]):
        dense[np.arange(out_size), starts + k] += weights[:, k]
    np.testing.assert_allclose(dense, _design_coefficients(in_size, out_size), rtol=0, atol=1e-15)
    np.testing.assert_allclose(weights.sum(axis=1), 1.0, atol=1e-12)


@pytest.mark.parametrize("src,dst", CASES)
def test_float_matches_pillow_f_mode(src, dst):
    rng = np.random.default_rng(sum(src) + sum(dst))
    image = (rng.random(src + (3,)) * 255).astype(np.float32)
    ours = resize_bilinear_aa(image, *dst)
    assert ours.shape == dst + (3,) and ours.dtype == np.float32
    for c in range(3):
        pil = Image.fromarray(image[:, :, c], mode="F").resize(dst[::-1], Image.BILINEAR)
        np.testing.assert_allclose(ours[:, :, c], np.asarray(pil), rtol=0, atol=1e-4)


@pytest.mark.parametrize("src,dst", CASES)
def test_uint8_within_one_level_of_pillow(src, dst):
    rng = np.random.default_rng(7 + sum(dst))
    image = rng.integers(0, 256, src + (3,), dtype=np.uint8)
    ours = resize_bilinear_aa(image, *dst)
    pil = np.asarray(Image.fromarray(image).resize(dst[::-1], Image.BILINEAR), dtype=np.float32)
    # Pillow rounds to uint8 after each pass (<= 0.5 each); we do not round at all.
    passes = (src[0] != dst[0]) + (src[1] != dst[1])
    assert np.abs(ours - pil).max() <= 0.5 * passes + 1e-3
    assert np.abs(ours - pil).mean() < 0.4


def test_constant_image_stays_constant_and_input_untouched():
    image = np.full((37, 53, 3), 200, np.uint8)
    before = image.copy()
    out = resize_bilinear_aa(image, 80, 11)
    np.testing.assert_allclose(out, 200.0, atol=1e-4)
    np.testing.assert_array_equal(image, before)


@pytest.mark.parametrize("shape, size, message", [
    ((10, 10), (5, 5), r"expected a non-empty \(H, W, C\) image, got shape \(10, 10\)"),
    ((0, 10, 3), (5, 5), r"expected a non-empty \(H, W, C\) image, got shape \(0, 10, 3\)"),
    ((10, 10, 3), (0, 4), "resize target must be at least 1x1, got 0x4")])
def test_resize_rejects_bad_input(shape, size, message):
    with pytest.raises(ImageError, match=message):
        resize_bilinear_aa(np.zeros(shape, np.uint8), *size)


def test_normalize_imagenet_and_average_image():
    rng = np.random.default_rng(3)
    image = (rng.random((9, 13, 3)) * 255).astype(np.float32)
    x = normalize(image, DetectorConfig())
    assert x.shape == (1, 3, 9, 13) and x.dtype == np.float32
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    expected = ((image.astype(np.float64) / 255.0 - mean) / std).transpose(2, 0, 1)
    np.testing.assert_allclose(x[0], expected, atol=2e-6)
    mc = DetectorConfig.for_variant("matconvnet")
    expected_mc = (image.astype(np.float64) - np.array([123.68, 116.779, 103.939])).transpose(2, 0, 1)
    np.testing.assert_allclose(normalize(image, mc)[0], expected_mc, atol=2e-5)


def test_host_preprocessor_prepares_a_level():
    rng = np.random.default_rng(5)
    image = rng.integers(0, 256, (60, 80, 3), dtype=np.uint8)
    level = PyramidLevel(0, -1.0, 0.5, 30, 40)
    config = DetectorConfig()
    x = HostPreprocessor(config).prepare(image, level)
    assert x.shape == (1, 3, 30, 40) and x.dtype == np.float32 and x.flags.c_contiguous
    np.testing.assert_array_equal(x, normalize(resize_bilinear_aa(image, 30, 40), config))

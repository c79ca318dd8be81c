"""Input-shape profiles from the pyramid plan (runtime/profiles.py, torch-free)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from tinyfaces_trt.core.config import DetectorConfig
from tinyfaces_trt.core.errors import ImageError, ManifestError
from tinyfaces_trt.core.profiles import (Profile, default_profile, format_shape, profile_for_image_sizes,
                                            pyramid_shapes)

CFG = DetectorConfig()


def test_pyramid_shapes_480x640_adaptive():
    # min_e = min(floor(log2(82/640)), floor(log2(110/480))) = -3; exponents -3..0, 0.5, 1
    # (max_e = 1 since 640 * 2 <= 5000); sizes ceil(s * side).
    assert pyramid_shapes(480, 640, CFG) == [
        (1, 3, 60, 80), (1, 3, 120, 160), (1, 3, 240, 320), (1, 3, 480, 640),
        (1, 3, 679, 906), (1, 3, 960, 1280)]


def test_pyramid_shapes_fixed_rule():
    cfg = CFG.with_(pyramid="fixed")  # short side int(100 * 2**k), long side int(short * 2)
    assert pyramid_shapes(100, 200, cfg) == [(1, 3, 25, 50), (1, 3, 50, 100), (1, 3, 100, 200), (1, 3, 200, 400)]


def test_profile_covers_both_orientations_and_opt_is_first_sizes_largest_level():
    p = profile_for_image_sizes([(480, 640), (640, 480)], CFG)
    assert p.min == (1, 3, 60, 60)
    assert p.max == (1, 3, 1280, 1280)
    assert p.opt == (1, 3, 960, 1280)
    q = profile_for_image_sizes([(640, 480), (480, 640)], CFG)
    assert q.opt == (1, 3, 1280, 960)
    assert (q.min, q.max) == (p.min, p.max)


def test_profile_contains_every_level_and_not_more_than_needed():
    sizes = [(360, 640), (123, 77), (1000, 1900)]
    p = profile_for_image_sizes(sizes, CFG)
    levels = [s for h, w in sizes for s in pyramid_shapes(h, w, CFG)]
    assert all(p.contains(s) for s in levels)
    # tight: every bound is attained by some level
    for i in (2, 3):
        assert p.min[i] == min(s[i] for s in levels)
        assert p.max[i] == max(s[i] for s in levels)


def test_profile_fixed_pyramid():
    p = profile_for_image_sizes([(100, 200)], CFG.with_(pyramid="fixed"))
    assert (p.min, p.opt, p.max) == ((1, 3, 25, 50), (1, 3, 200, 400), (1, 3, 200, 400))


def test_profile_needs_sizes_and_valid_sizes():
    with pytest.raises(ManifestError, match="at least one image size"):
        profile_for_image_sizes([], CFG)
    with pytest.raises(ImageError, match="image height must be >= 1, got 0"):
        profile_for_image_sizes([(0, 10)], CFG)


def test_default_profile_covers_every_image_up_to_1920():
    p = default_profile(CFG)
    assert (p.min, p.opt, p.max) == ((1, 3, 1, 1), (1, 3, 2160, 3840), (1, 3, 3840, 3840))
    rng = np.random.default_rng(0)
    sizes = [(int(h), int(w)) for h, w in rng.integers(1, 1921, size=(300, 2))] + [(1, 1920), (1920, 1), (1, 1)]
    for cfg in (CFG, CFG.with_(pyramid="fixed")):
        prof = default_profile(cfg)
        for h, w in sizes:
            try:
                shapes = pyramid_shapes(h, w, cfg)
            except ImageError:
                continue  # the fixed rule can leave a sliver image without levels
            assert all(prof.contains(s) for s in shapes), (h, w)
    # and an image beyond it is not covered (its 2x level is 5000 wide)
    assert not all(p.contains(s) for s in pyramid_shapes(1080, 2500, CFG))


def test_profile_validation_messages():
    with pytest.raises(ManifestError, match="min <= opt <= max"):
        Profile((1, 3, 100, 100), (1, 3, 50, 100), (1, 3, 200, 200))
    with pytest.raises(ManifestError, match=r"^profile min shape must be \[N, 3, h, w\] \(N >= 1 "
                                            r"images, RGB\), got \[0, 3, 10, 10\]$"):
        Profile((0, 3, 10, 10), (2, 3, 10, 10), (2, 3, 10, 10))
    with pytest.raises(ManifestError, match=r"\[N, 3, h, w\]"):
        Profile((1, 4, 10, 10), (1, 4, 10, 10), (1, 4, 10, 10))
    with pytest.raises(ManifestError, match=r"^profile min shape must have batch 1, got \[2, 3, 8, 8\]$"):
        Profile((2, 3, 8, 8), (4, 3, 64, 64), (4, 3, 128, 128))  # single images could not run
    with pytest.raises(ManifestError, match="4 integers"):
        Profile((1, 3, 10), (1, 3, 10, 10), (1, 3, 10, 10))
    with pytest.raises(ManifestError, match="positive"):
        Profile((1, 3, 0, 10), (1, 3, 10, 10), (1, 3, 10, 10))
    with pytest.raises(ManifestError, match="min, opt and max"):
        Profile.from_dict({"min": [1, 3, 1, 1], "max": [1, 3, 2, 2]})


def test_a_batch_profile_runs_1_to_n_images_and_is_tuned_for_n():
    single = profile_for_image_sizes([(1080, 1920)], CFG)
    batch = profile_for_image_sizes([(1080, 1920)], CFG, max_batch=8)
    assert single.max_batch == 1 and batch.max_batch == 8
    assert batch.min == single.min and batch.opt == (8, *single.opt[1:])
    assert batch.max == (8, *single.max[1:])
    assert batch.contains((5, 3, *single.opt[2:])) and not batch.contains((9, 3, *single.opt[2:]))
    assert default_profile(CFG, max_batch=4).max == (4, 3, 3840, 3840)
    assert Profile.from_dict(batch.to_dict()) == batch
    with pytest.raises(ManifestError, match="^a profile's batch must be >= 1, got 0$"):
        profile_for_image_sizes([(1080, 1920)], CFG, max_batch=0)


def test_profile_round_trip_contains_check_and_trtexec_args():
    p = Profile([1, 3, 8, 16], [1, 3, 32, 48], [1, 3, 64, 64])
    assert p.min == (1, 3, 8, 16)  # lists are normalised to tuples
    assert Profile.from_dict(p.to_dict()) == p
    assert p.to_dict() == {"min": [1, 3, 8, 16], "opt": [1, 3, 32, 48], "max": [1, 3, 64, 64]}
    assert p.contains((1, 3, 8, 64)) and not p.contains((1, 3, 7, 20)) and not p.contains((1, 3, 65, 20))
    with pytest.raises(ManifestError, match=r"1x3x7x20 is outside.*min 1x3x8x16, max 1x3x64x64"):
        p.check((1, 3, 7, 20))
    assert p.trtexec_args() == ["--minShapes=image:1x3x8x16", "--optShapes=image:1x3x32x48",
                                "--maxShapes=image:1x3x64x64"]
    assert format_shape([1, 3, 5, 7]) == "1x3x5x7"


def test_runtime_modules_do_not_import_torch():
    code = ("import sys; import tinyfaces_trt.core.profiles, tinyfaces_trt.core.manifest; "
            "sys.exit(1 if 'torch' in sys.modules else 0)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_profile_never_goes_below_the_variants_smallest_input():
    mcn = DetectorConfig.for_variant("matconvnet")
    # the plan itself drops levels the MatConvNet trunk cannot run (a side under 3 px) ...
    assert pyramid_shapes(6, 1920, mcn)[0] == (1, 3, 3, 960)
    p = default_profile(mcn)
    assert p.min == (1, 3, 3, 3) and p.max == (1, 3, 3840, 3840)  # ... so profiles never go below
    assert profile_for_image_sizes([(6, 1920)], mcn) == Profile((1, 3, 3, 960), (1, 3, 12, 3840), (1, 3, 12, 3840))
    assert profile_for_image_sizes([(1, 1920)], CFG) == Profile((1, 3, 1, 60), (1, 3, 2, 3840), (1, 3, 2, 3840))


def test_a_size_without_levels_is_a_clear_error_for_a_profile():
    mcn = DetectorConfig.for_variant("matconvnet")
    with pytest.raises(ImageError, match="no pyramid level fits a 1x1 image"):
        profile_for_image_sizes([(480, 640), (1, 1)], mcn)

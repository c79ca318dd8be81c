"""The Python API's contract at its edges: an image with no pyramid level has no faces (no
error), a face-size range no image can meet is refused when the config is made, and the
detector's setters and argument errors are clear ConfigErrors / ImageErrors; the package
ships its type hints."""

from __future__ import annotations

import ast
import logging
import tomllib
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from helpers_runners import PooledRunner
from tinyfaces_trt.core.config import DetectorConfig
from tinyfaces_trt.core.errors import ConfigError, ImageError, ImageTooLargeError, TinyFacesError
from tinyfaces_trt.core.manifest import ModelIdentity
from tinyfaces_trt.core.pyramid import face_range_reachable, no_level_reason, plan_pyramid
from tinyfaces_trt.core.runner import RunnerCapabilities
from tinyfaces_trt.runtime.backends import apply_overrides, create_detector
from tinyfaces_trt.runtime.pipeline import Detector

ROOT = Path(__file__).resolve().parent.parent
NO_BOXES = ((0, 5), np.float32)


def _result(boxes: np.ndarray) -> tuple[tuple[int, ...], type]:
    return boxes.shape, boxes.dtype.type


# ---------------------------------------------------------------------------------------------
# An image with no pyramid level: no faces, the network does not run
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("hw", [(1, 1), (1, 100), (100, 1), (2, 1)])
def test_an_image_too_thin_for_the_matconvnet_trunk_has_no_faces(hw):
    """Every level of these is below the MatConvNet trunk's 3 px: it raised ImageError."""
    runner = PooledRunner(RunnerCapabilities(batch=True))
    detector = Detector(runner, DetectorConfig.for_variant("matconvnet"))
    image = np.full((*hw, 3), 128, np.uint8)
    assert detector.plan(*hw) == []
    assert _result(detector.detect(image)) == NO_BOXES
    assert [_result(b) for b in detector.detect_batch([image] * 3)] == [NO_BOXES] * 3
    assert [_result(b) for b in detector.detect_batch(np.stack([image] * 2))] == [NO_BOXES] * 2
    assert detector.warmup([hw], batch_sizes=(1, 4)) == (1, 4)  # nothing to prepare
    assert runner.batches == []
    assert "smallest side the matconvnet network runs at: 3 px" in no_level_reason(*hw, detector.config)


def test_an_image_too_small_for_min_face_has_no_faces(caplog):
    """A 60x80 image's levels (1x to 2x) produce faces of at most 220 px; min_face=5000 is
    valid (a large image's downscaled levels reach it) but leaves this one no level."""
    image = np.full((60, 80, 3), 128, np.uint8)
    runner = PooledRunner()
    detector = Detector(runner, DetectorConfig(min_face=5000))
    with caplog.at_level(logging.DEBUG, logger="tinyfaces_trt.core.pyramid"):
        assert _result(detector.detect(image)) == NO_BOXES
    assert runner.batches == []
    assert [r.getMessage() for r in caplog.records] == [
        "no pyramid level of a 60x80 image can produce faces of 5000..inf px (min_face/max_face, "
        "size_refinement=2): it has no faces of that size"]
    assert [lv.exponent for lv in plan_pyramid(1080, 1920, detector.config)] == [-5.0]
    unlimited = PooledRunner()
    assert len(Detector(unlimited).detect(image)) > 0 and unlimited.batches == [1, 1, 1]


def test_a_closed_detector_still_refuses_an_image_with_no_level():
    from tinyfaces_trt.core.errors import TinyFacesError

    detector = Detector(PooledRunner(), DetectorConfig.for_variant("matconvnet"))
    detector.close()
    with pytest.raises(TinyFacesError, match="this detector is closed"):
        detector.detect(np.zeros((1, 1, 3), np.uint8))
    with pytest.raises(TinyFacesError, match="this detector is closed"):
        detector.warmup([(1, 1)])


# ---------------------------------------------------------------------------------------------
# A face-size range no image can meet is refused when the config is made
# ---------------------------------------------------------------------------------------------

def test_max_face_below_every_level_is_refused_at_creation():
    """The smallest shipped template the port's policy runs (42.77 px) at 2x, halved by
    size_refinement=2, is 10.69 px: max_face=10 left every image without a level. Refused
    before any runner is made (an export folder's config stands in for the folder)."""
    message = (r"^max_face \(10\) is below the smallest face any pyramid level can produce "
               r"\(10\.69 px: the smallest template at the adaptive rule's largest scale, "
               r"shrunk by size_refinement=2\): no image could have a face detected; widen "
               r"min_face/max_face \(--min-face/--max-face on the command lines\)$")
    with pytest.raises(ConfigError, match=message):
        create_detector("onnxruntime", folder=SimpleNamespace(config=DetectorConfig()),
                        config_overrides={"max_face": 10})
    with pytest.raises(ConfigError, match=message):
        apply_overrides(DetectorConfig(), {"max_face": 10})
    assert DetectorConfig(max_face=10.7).max_face == 10.7  # the 2x level's smallest template
    # the release's policy runs the 22.2 px Type B templates at 2x: 5.56 px and up
    assert DetectorConfig.for_variant("matconvnet", max_face=10).max_face == 10.0


@pytest.mark.parametrize("fields, message", [
    (dict(min_face=1000, pyramid="fixed"),
     r"^min_face \(1000\) is above the largest face any pyramid level can produce \(880 px"),
    (dict(min_face=100, max_face=100, size_refinement=1.0),
     r"^min_face/max_face \(100\.\.100 px\) falls between the face sizes the templates produce"),
])
def test_other_ranges_no_level_can_meet_are_refused(fields, message):
    with pytest.raises(ConfigError, match=message):
        DetectorConfig(**fields)


@pytest.mark.parametrize("fields", [
    dict(min_face=1e6),                    # adaptive: a large enough image's 2**-n level
    dict(min_face=879, pyramid="fixed"),   # 110 px at 2**-2, stretched 2x: 880 px
    dict(min_face=20, max_face=30),
    dict(min_face=110, max_face=110, size_refinement=1.0),  # template 4 at 1x exactly
    dict(max_face=43, size_refinement=1.0),
])
def test_ranges_some_level_can_meet_are_accepted(fields):
    config = DetectorConfig(**fields)
    assert face_range_reachable(config)


# ---------------------------------------------------------------------------------------------
# Setters and argument errors
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("value", ["x", 0, -5, 1.5, 1000.0, True, [100]])
def test_max_pixels_refuses_anything_but_none_or_a_positive_integer(value):
    detector = Detector(PooledRunner())
    with pytest.raises(ConfigError) as refused:
        detector.max_pixels = value
    assert str(refused.value) == (f"Detector.max_pixels must be None (any size) or an integer "
                                  f">= 1, got {value!r}")
    assert detector.max_pixels == 178956970  # unchanged


def test_max_pixels_takes_none_and_integers_of_any_integral_type():
    detector = Detector(PooledRunner())
    detector.max_pixels = np.int64(4000)
    assert detector.max_pixels == 4000 and type(detector.max_pixels) is int
    with pytest.raises(ImageTooLargeError, match=r"\(4000 pixels, Detector.max_pixels\)"):
        detector.detect(np.zeros((50, 100, 3), np.uint8))
    detector.max_pixels = None
    assert detector.max_pixels is None


def test_an_image_buffer_on_the_host_path_is_plain_numpy_memory_detect_takes():
    """Detector.image_buffer: (H, W, 3), or (count, H, W, 3) with ``count``, uint8, new each
    call; detect / detect_batch take it filled (on the host path plain numpy memory: the
    page-locked kind is the GPU path's, tests/test_device_path_cpu.py)."""
    detector = Detector(PooledRunner())
    frame = detector.image_buffer(40, 60)
    frames = detector.image_buffer(40, 60, count=np.int64(3))
    assert (frame.shape, frame.dtype, frames.shape, frames.dtype) == (
        (40, 60, 3), np.uint8, (3, 40, 60, 3), np.uint8)
    assert frame.flags.c_contiguous and frame.flags.writeable
    assert not np.shares_memory(frame, detector.image_buffer(40, 60))
    frame[:] = 128
    frames[:] = frame
    assert detector.detect(frame).shape[1] == 5
    assert len(detector.detect_batch(frames)) == 3
    detector.close()
    with pytest.raises(TinyFacesError, match="this detector is closed"):
        detector.image_buffer(40, 60)


@pytest.mark.parametrize("error", [RuntimeError("the network failed"), KeyboardInterrupt()])
def test_a_call_that_raises_waits_for_the_preprocessors_work_then_raises_its_own_error(error):
    """A detect that fails mid-way waits for the preprocessor's queued work before it raises
    (a GPU upload may still read the caller's image), also on Ctrl-C; a failing wait does
    not replace the call's own error."""
    from tinyfaces_trt.runtime.preprocess import HostPreprocessor

    class Failing(PooledRunner):
        def run(self, x):
            raise error

    class Waits(HostPreprocessor):
        waits = 0

        def synchronize(self):
            Waits.waits += 1
            raise TinyFacesError("the device is in an error state")

    detector = Detector(Failing(), preprocessor=Waits(DetectorConfig()))
    with pytest.raises(type(error)) as raised:
        detector.detect(np.zeros((40, 60, 3), np.uint8))
    assert raised.value is error and Waits.waits == 1
    assert detector.detect_batch([]) == []  # the detector is usable again


@pytest.mark.parametrize("args, kwargs, error, message", [
    ((0, 60), {}, ConfigError, r"must be positive, got \(0, 60\)"),
    ((40, 1.5), {}, ConfigError, r"pairs of integers, got \(40, 1.5\)"),
    ((40, 60), {"count": 0}, ConfigError,
     "count must be None .one image. or an integer >= 1, got 0"),
    ((40, 60), {"count": True}, ConfigError, "an integer >= 1, got True"),
    ((40, 60), {"count": 2.0}, ConfigError, "an integer >= 1, got 2.0"),
    ((5000, 5000), {}, ImageTooLargeError, r"\(4000 pixels, Detector.max_pixels\)"),
])
def test_an_image_buffer_of_a_size_detect_refuses_is_refused(args, kwargs, error, message):
    detector = Detector(PooledRunner())
    detector.max_pixels = 4000
    with pytest.raises(error, match=message):
        detector.image_buffer(*args, **kwargs)


@pytest.mark.parametrize("sizes, batch_sizes, message", [
    ((240, 320), (1,), r"^warmup takes a list of \(height, width\) image sizes, got the single "
                       r"size \(240, 320\); pass \[\(240, 320\)\]$"),
    ([240, 320], (1,), r"got the single size \(240, 320\)"),
    (240, (1,), r"^warmup takes a list of \(height, width\) image sizes, got int$"),
    ([(0, 64)], (1,), r"must be positive"),
    ([(48, 64)], 8, r"^batch sizes are integers, got 8$"),
    ([], (1,), r"^warmup needs at least one image size"),
])
def test_warmup_argument_errors_are_config_errors(sizes, batch_sizes, message):
    runner = PooledRunner()
    with pytest.raises(ConfigError, match=message) as refused:
        Detector(runner).warmup(sizes, batch_sizes)
    assert isinstance(refused.value, ValueError)  # what the callers caught before
    assert runner.batches == []


def test_a_bad_frame_of_a_batch_is_named_by_its_index():
    good = np.zeros((40, 48, 3), np.uint8)
    detector = Detector(PooledRunner())
    with pytest.raises(ImageError) as refused:
        detector.detect_batch([good, good, good, good[:, :, 0]])
    assert str(refused.value) == ("image 3 of the batch: expected an (H, W, 3) RGB image, got "
                                  "shape (40, 48)")
    with pytest.raises(ImageError, match=r"^image 1 of the batch: expected a uint8 image"):
        detector.detect_batch([good, good.astype(np.float32)])
    detector.max_pixels = 100
    with pytest.raises(ImageTooLargeError, match=r"^image 0 of the batch: image of 48x40"):
        detector.detect_batch(np.stack([good, good]))


def test_a_config_of_another_variant_than_the_network_is_refused():
    identity = ModelIdentity(None, True, "the untrained default network", variant="pytorch")
    with pytest.raises(ConfigError, match=r"^the network is a pytorch one \(the untrained "
                                          r"default network\) but the config is for the "
                                          r"matconvnet variant"):
        Detector(PooledRunner(), DetectorConfig.for_variant("matconvnet"), identity=identity)
    assert Detector(PooledRunner(), DetectorConfig(), identity=identity).identity is identity


# ---------------------------------------------------------------------------------------------
# Type hints ship (PEP 561) and the lazy names are visible to type checkers
# ---------------------------------------------------------------------------------------------

def test_the_package_ships_py_typed():
    assert (ROOT / "tinyfaces_trt" / "py.typed").is_file()
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "py.typed" in pyproject["tool"]["setuptools"]["package-data"]["tinyfaces_trt"]


def test_every_lazy_name_has_a_type_checking_import():
    """``__getattr__ -> Any`` hid create_detector, load_image, ... from type checkers."""
    import tinyfaces_trt

    tree = ast.parse((ROOT / "tinyfaces_trt" / "__init__.py").read_text())
    typed = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
            typed.update({alias.name: imp.module for imp in node.body
                          if isinstance(imp, ast.ImportFrom) for alias in imp.names})
    assert typed == tinyfaces_trt._LAZY

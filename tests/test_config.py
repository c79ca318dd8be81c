"""DetectorConfig: variants, validation, and the manifest round trip."""

import math

import numpy as np
import pytest

from tinyfaces_trt.core.config import DetectorConfig, Normalization
from tinyfaces_trt.core.errors import ConfigError, ManifestError, TinyFacesError


def test_defaults_follow_the_pytorch_port():
    c = DetectorConfig()
    assert (c.variant, c.template_policy, c.stride, c.offset) == ("pytorch", "pytorch", 8, -1.0)
    assert c.normalization == Normalization(1 / 255, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    assert c.templates.shape == (25, 5) and c.templates[4].tolist() == [-40.5, -54.5, 40.5, 54.5, 1.0]
    assert float(c.logit_thresh) == 0.0  # prob 0.5
    assert math.isclose(float(c.with_(prob_thresh=0.9).logit_thresh), math.log(9), rel_tol=1e-6)



def test_matconvnet_defaults_follow_the_release_demo():
    """tiny_face_detector.m: ``if nargin < 4, nms_thresh = 0.1``, prob_thresh 0.5, boxes in
    1-based pixels; the port (and the authors' WIDER scripts) use nms_thresh 0.3."""
    mcn, port = DetectorConfig.for_variant("matconvnet"), DetectorConfig.for_variant("pytorch")
    assert (mcn.prob_thresh, mcn.nms_thresh, mcn.coordinate_base) == (0.5, 0.1, 1.0)
    assert (port.prob_thresh, port.nms_thresh, port.coordinate_base) == (0.5, 0.3, 0.0)
    assert DetectorConfig.for_variant("matconvnet", nms_thresh=0.3).nms_thresh == 0.3
    assert DetectorConfig.from_dict(mcn.to_dict()).nms_thresh == 0.1

def test_round_trip_through_a_manifest_dict():
    c = DetectorConfig.for_variant("matconvnet", prob_thresh=0.03, pyramid="fixed")
    back = DetectorConfig.from_dict(c.to_dict())
    assert back == c and np.array_equal(back.templates, c.templates)


@pytest.mark.parametrize("field, value, message", [
    ("variant", "caffe", "unknown variant"),
    ("prob_thresh", 1.0, "prob_thresh must be in"),
    ("nms_thresh", -0.1, "nms_thresh must be in"),
    ("stride", 0, "stride (0) and max_input_dim"),
    ("max_input_dim", -5, "max_input_dim (-5) must be >= 1"),
    ("offset", float("nan"), "non-finite"),
    ("templates", np.zeros((24, 5)), "shape (25, 5)"),
    ("normalization", Normalization(1.0, (0, 0, 0), (1.0, 0.0, 1.0)), "std must not be 0"),
])
def test_invalid_values_are_refused(field, value, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")) as info:
        DetectorConfig(**{field: value})
    # A bad argument is a config (value) error, not a broken export folder.
    assert not isinstance(info.value, ManifestError)
    assert isinstance(info.value, TinyFacesError) and isinstance(info.value, ValueError)


@pytest.mark.parametrize("k", [-2000.0, -65.0, 65.0, 2000.0])
def test_fixed_scale_exponents_are_bounded_on_both_sides(k):
    """A level is 2**k times the image: k = -2000 is as unusable as +2000. Accepting it would
    give plans that are silently empty (and a divide-by-zero warning with min_face) instead
    of this ConfigError."""
    with pytest.raises(ConfigError) as info:
        DetectorConfig(pyramid="fixed", fixed_scales=(0.0, k))
    assert str(info.value) == ("fixed_scales are exponents k (a level is 2**k times the image), "
                               f"each within +-64; got {k:g}")
    assert DetectorConfig(pyramid="fixed", fixed_scales=(-64.0, 64.0)).fixed_scales == (-64.0, 64.0)


@pytest.mark.parametrize("prob, logit", [(0.02, -3.891820192337036), (0.3, -0.8472978472709656),
                                         (0.45, -0.20067068934440613), (0.7, 0.8472978472709656)])
def test_logit_thresh_is_the_float64_logit_rounded_once_to_float32(prob, logit):
    """The numpy and CUDA decoders compare float32 logits with this one value. Computing
    log(p / (1 - p)) in float32 instead moves 45 of the thresholds 0.01 .. 0.99 by one ulp
    (these four among them), which changes which cells at the threshold are faces."""
    t = DetectorConfig(prob_thresh=prob).logit_thresh
    assert type(t) is np.float32 and float(t) == logit


@pytest.mark.parametrize("field, value, message", [
    ("prob_thresh", "0.3", "prob_thresh must be a number, got '0.3' (str)"),
    ("nms_thresh", None, "nms_thresh must be a number, got None (NoneType)"),
    ("size_refinement", True, "size_refinement must be a number, got True (bool)"),
    ("stride", 8.5, "stride must be an integer, got 8.5 (float)"),
    ("max_input_dim", "5000", "max_input_dim must be an integer, got '5000' (str)"),
    ("pyramid", ["fixed"], "pyramid must be a string, got ['fixed'] (list)"),
    ("clip_boxes", "no", "clip_boxes must be True or False, got 'no' (str)"),
    ("normalization", "imagenet", "normalization must be a Normalization, got 'imagenet' (str)"),
    ("fixed_scales", (0.0, "1"), "fixed_scales must be a sequence of numbers, got (0.0, '1') (tuple)"),
])
def test_values_of_the_wrong_type_are_config_errors_naming_the_field(field, value, message):
    """They reached the range checks as a bare TypeError or AttributeError."""
    with pytest.raises(ConfigError) as info:
        DetectorConfig(**{field: value})
    assert str(info.value) == message



def test_numbers_of_any_numeric_type_are_stored_as_python_numbers():
    """numpy scalars (a threshold computed with numpy) were kept as they came, and the
    config then failed to go into a manifest or a sidecar ("float32 is not JSON
    serializable"); an integral float is an integer."""
    import json

    c = DetectorConfig(prob_thresh=np.float32(0.25), stride=np.int64(8), max_input_dim=4000.0,
                       fixed_scales=np.array([0, 1.5]), clip_boxes=np.bool_(False),
                       min_face=np.float32(20), pyramid="fixed")
    assert (c.prob_thresh, c.stride, c.max_input_dim, c.fixed_scales, c.clip_boxes, c.min_face) \
        == (0.25, 8, 4000, (0.0, 1.5), False, 20.0)
    assert [type(v) for v in (c.prob_thresh, c.stride, c.max_input_dim, c.clip_boxes, c.min_face,
                              *c.fixed_scales)] == [float, int, int, bool, float, float, float]
    assert DetectorConfig.from_dict(json.loads(json.dumps(c.to_dict()))) == c


def test_bad_overrides_and_malformed_dicts_are_config_errors():
    with pytest.raises(ConfigError, match="unknown variant 'caffe'"):
        DetectorConfig.for_variant("caffe")
    with pytest.raises(ConfigError, match="nms_thresh must be in"):
        DetectorConfig().with_(nms_thresh=2.0)
    with pytest.raises(ConfigError, match="detector config is incomplete or malformed: KeyError"):
        DetectorConfig.from_dict({"variant": "pytorch"})
    bad = {**DetectorConfig().to_dict(), "prob_thresh": 0.0}
    with pytest.raises(ConfigError, match=r"^prob_thresh must be in \(0, 1\), got 0.0$"):
        DetectorConfig.from_dict(bad)  # the range message itself, not re-wrapped

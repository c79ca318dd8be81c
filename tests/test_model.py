"""The torch reference network: layout, shapes, crop semantics, seeded weights, runner."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from helpers_weights import port_state_dict_shapes
from tinyfaces_trt.export.model import (TinyFacesNet, bilinear_upsample_filter, build_model,
                                        score_map_size)
from tinyfaces_trt.export.resnet import ResNetTrunk
from tinyfaces_trt.export.torch_runner import TorchRunner
from tinyfaces_trt.core.config import DetectorConfig


@pytest.fixture(scope="module")
def seeded50(seeded) -> TinyFacesNet:
    """The session's build_model(depth=50, seed=0) (variant "pytorch"), built once per worker."""
    model = seeded[0]
    assert (model.depth, model.variant, model.seed) == (50, "pytorch", 0)
    return model


def _image_input(height: int, width: int, variant: str, seed: int) -> torch.Tensor:
    """A normalised (1, 3, H, W) input from a random blocky uint8 image."""
    rng = np.random.default_rng(seed)
    coarse = torch.from_numpy(rng.uniform(0, 255, (1, 3, max(1, height // 6), max(1, width // 6))))
    pixels = F.interpolate(coarse, size=(height, width), mode="nearest")[0].numpy()
    pixels = np.clip(pixels + rng.normal(0, 10, pixels.shape), 0, 255).round()
    a, b = DetectorConfig.for_variant(variant).normalization.scale_and_bias()
    x = pixels * a[:, None, None] + b[:, None, None]
    return torch.from_numpy(x[None].astype(np.float32))


# ----------------------------------------------------------------------------------- layout

@pytest.mark.parametrize("depth,num_keys", [(50, 263), (101, 569)])
def test_state_dict_matches_port_layout(depth, num_keys):
    # torchvision resnet50/101 state_dicts have 320/626 keys; minus layer4 (60) and fc (2),
    # plus the port's 5 head tensors. The port's own state_dict keeps fc (it deletes only
    # layer4): the loader leaves those 2 out.
    state = TinyFacesNet(depth).state_dict()
    expected = port_state_dict_shapes(depth)
    assert {k: expected.pop(k) for k in ("model.fc.weight", "model.fc.bias")} == {
        "model.fc.weight": (1000, 2048), "model.fc.bias": (1000,)}
    assert len(state) == num_keys == len(expected)
    assert {k: tuple(v.shape) for k, v in state.items()} == expected


@pytest.mark.parametrize("depth,params", [(50, 8_543_296), (101, 27_535_424)])
def test_trunk_parameter_count_is_torchvision_minus_layer4_and_fc(depth, params):
    # torchvision: resnet50 25,557,032 and resnet101 44,549,160 parameters; layer4 has
    # 14,964,736 and fc 2,049,000 in both.
    trunk = ResNetTrunk(depth)
    assert sum(p.numel() for p in trunk.parameters()) == params


def test_stride_placement_and_pool():
    tv, caffe = ResNetTrunk(50), ResNetTrunk(50, stride_in_1x1=True, ceil_pool=True)
    for layer in ("layer2", "layer3"):
        assert getattr(tv, layer)[0].conv1.stride == (1, 1)
        assert getattr(tv, layer)[0].conv2.stride == (2, 2)
        assert getattr(caffe, layer)[0].conv1.stride == (2, 2)
        assert getattr(caffe, layer)[0].conv2.stride == (1, 1)
        assert getattr(caffe, layer)[0].downsample[0].stride == (2, 2)
    # Caffe ceil-mode pool == MatConvNet pad [0 1 0 1] (bottom/right only, -inf padding)
    x = torch.randn(2, 4, 17, 24)
    ref = F.max_pool2d(F.pad(x, (0, 1, 0, 1), value=-math.inf), 3, 2)
    assert torch.equal(caffe.maxpool(x), ref)
    assert ref.shape[-2:] == (8, 12)
    assert tv.maxpool(x).shape[-2:] == (9, 12)


def test_bilinear_filter():
    w = bilinear_upsample_filter(3)
    taps = torch.tensor([0.25, 0.75, 0.75, 0.25])
    assert torch.equal(w[1, 1], torch.outer(taps, taps))
    assert torch.count_nonzero(w[0, 1]) == 0 and torch.count_nonzero(w[2, 0]) == 0
    assert torch.equal(TinyFacesNet(50).score4_upsample.weight, bilinear_upsample_filter(125))


# ----------------------------------------------------------------------------------- shapes

SIZES = [(33, 47), (65, 31), (1, 1), (17, 9)]


@pytest.mark.parametrize("depth,sizes", [(50, SIZES), (101, SIZES[:2])])
def test_pytorch_output_shape(depth, sizes):
    model = TinyFacesNet(depth).eval()
    with torch.no_grad():
        for h, w in sizes:
            out = model(torch.randn(1, 3, h, w))
            assert out.shape == (1, 125, math.ceil(h / 8), math.ceil(w / 8)), (h, w)
            assert model.output_size(h, w) == out.shape[2:]


# MatConvNet geometry, by hand: a = ceil(H/2), b = floor(a/2), h3 = ceil(b/2), h4 = ceil(h3/2),
# rows = 2*h4 - 1. E.g. H = 65: a 33, b 16, h3 8, h4 4 -> 7 (ceil(65/8) would be 9).
MATCONVNET_SIZES = {(33, 47): (3, 5), (65, 31): (7, 3), (40, 57): (5, 7), (24, 18): (3, 1),
                    (3, 8): (1, 1)}


@pytest.mark.parametrize("depth,count", [(50, len(MATCONVNET_SIZES)), (101, 2)])
def test_matconvnet_output_shape(depth, count):
    model = TinyFacesNet(depth, "matconvnet").eval()
    with torch.no_grad():
        for (h, w), expected in list(MATCONVNET_SIZES.items())[:count]:
            out = model(torch.randn(1, 3, h, w))
            assert tuple(out.shape) == (1, 125) + expected, (h, w)
            assert score_map_size(h, w, "matconvnet") == expected


@pytest.mark.parametrize("variant", ["pytorch", "matconvnet"])
def test_forward_crops_like_the_reference(variant):
    """score4 / score_res3 alignment written out with an uncropped transposed convolution."""
    torch.manual_seed(0)
    model = TinyFacesNet(50, variant).eval()
    for p in (model.score_res3.bias, model.score_res4.bias):
        p.data.normal_()
    x = torch.randn(1, 3, 70, 45)
    with torch.no_grad():
        res3, res4 = model.model(x)
        s3 = model.score_res3(res3)
        full = F.conv_transpose2d(model.score_res4(res4), model.score4_upsample.weight, stride=2)
        if variant == "pytorch":
            # port: padding 1 (crop 1 each side), then cut at the end to res3's size
            s4 = full[:, :, 1:-1, 1:-1][:, :, :s3.shape[2], :s3.shape[3]]
        else:
            # vl_nnconvt crop [1 2 1 2], then dagnn.Crop([0 0]) trims score_res3's bottom/right
            s4 = full[:, :, 1:-2, 1:-2]
            s3 = s3[:, :, :s4.shape[2], :s4.shape[3]]
        torch.testing.assert_close(model(x), s3 + s4, rtol=1e-5, atol=1e-5)


def test_detector_config_follows_variant():
    assert TinyFacesNet(50).detector_config().variant == "pytorch"
    cfg = TinyFacesNet(50, "matconvnet").detector_config(prob_thresh=0.9)
    assert (cfg.variant, cfg.template_policy, cfg.prob_thresh) == ("matconvnet", "matconvnet", 0.9)
    with pytest.raises(ValueError, match="variant"):
        TinyFacesNet(50, "caffe")
    with pytest.raises(ValueError, match="depth"):
        TinyFacesNet(34)


# ----------------------------------------------------------------------------- seeded model

def test_seeded_weights_are_deterministic(seeded50):
    again = build_model(50, "pytorch", seed=0).state_dict()
    other = build_model(50, "pytorch", seed=1).state_dict()
    state = seeded50.state_dict()
    assert all(torch.equal(state[k], again[k]) for k in state)
    differing = [k for k in state if not torch.equal(state[k], other[k])]
    assert "model.layer3.5.conv3.weight" in differing and "score_res3.bias" in differing
    assert not seeded50.training


# mean / std of the output for _image_input(40, 56, variant, seed=123), depth 50, seed 0
PINNED = {"pytorch": (-0.411543959, 0.993643824), "matconvnet": (-0.452389845, 1.086241008)}


@pytest.mark.parametrize("variant", ["pytorch", "matconvnet"])
def test_seeded_output_checksum(variant, seeded50):
    model = seeded50 if variant == "pytorch" else build_model(50, variant, seed=0)
    with torch.no_grad():
        out = model(_image_input(40, 56, variant, seed=123)).double()
    mean, std = PINNED[variant]
    assert float(out.mean()) == pytest.approx(mean, rel=1e-4, abs=1e-5)
    assert float(out.std()) == pytest.approx(std, rel=1e-4)


@pytest.mark.parametrize("depth,variant", [(50, "pytorch"), (101, "matconvnet")])
def test_seeded_scores_are_realistic(depth, variant, seeded50):
    model = seeded50 if depth == 50 else build_model(depth, variant, seed=3)
    with torch.no_grad():
        out = model(_image_input(96, 128, variant, seed=7))[0]
    cls, reg = out[:25], out[25:]
    assert torch.isfinite(out).all()
    positive = float((cls > 0).double().mean())
    assert 0.002 < positive < 0.2, positive           # a few cells fire, most do not
    assert float(cls.median()) < -1.0
    assert float(reg.abs().quantile(0.99)) < 0.6      # offsets / log-scales of a trained net
    assert float(reg.abs().max()) < 3.0               # exp(tw) stays small


# ------------------------------------------------------------------------------ TorchRunner

def test_torch_runner_matches_model(seeded50):
    runner = TorchRunner(seeded50)
    x = _image_input(33, 47, "pytorch", seed=1).numpy()
    y = runner.run(x)
    assert isinstance(y, np.ndarray) and y.dtype == np.float32 and y.flags.c_contiguous
    assert y.shape == (1, 125, 5, 6)
    with torch.no_grad():
        np.testing.assert_array_equal(y, seeded50(torch.from_numpy(x)).numpy())
    with pytest.raises(ValueError, match=r"\(N, 3, h, w\)"):
        runner.run(x[0])


def test_torch_runner_rejects_half_on_cpu(seeded50):
    with pytest.raises(ValueError, match="CUDA"):
        TorchRunner(seeded50, dtype=torch.float16)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_torch_runner_cuda_fp16_close_to_fp32(seeded50):
    x = _image_input(65, 31, "pytorch", seed=2).numpy()
    ref = TorchRunner(seeded50).run(x)
    fp32 = TorchRunner(seeded50, device="cuda").run(x)
    fp16 = TorchRunner(seeded50, device="cuda", dtype=torch.float16).run(x)
    assert next(seeded50.parameters()).device.type == "cpu"  # caller's model untouched
    np.testing.assert_allclose(fp32, ref, atol=1e-3, rtol=1e-3)
    assert fp16.dtype == np.float32
    np.testing.assert_allclose(fp16, ref, atol=0.1)

"""Weight loaders: every tensor round-trips, MatConvNet layouts hold, errors name the keys."""

from __future__ import annotations

import logging
import pickle
import warnings

import numpy as np
import pytest
import torch

from helpers_weights import write_fake_hr_res101_mat, write_fake_pytorch_checkpoint
from tinyfaces_trt.export.model import TinyFacesNet
from tinyfaces_trt.export.weights import load_weights, matconvnet_param_map
from tinyfaces_trt.core.config import load_default_templates
from tinyfaces_trt.core.errors import WeightsError

EPS = 1e-5  # torch BatchNorm2d default


# ------------------------------------------------------------------------ PyTorch checkpoints

@pytest.mark.parametrize("depth,bare", [(50, False), (50, True), (101, False)])
def test_pytorch_checkpoint_round_trip(tmp_path, depth, bare):
    path = tmp_path / "checkpoint_50.pth"
    saved = write_fake_pytorch_checkpoint(path, depth=depth, seed=depth, bare=bare)
    model, config = load_weights(path)
    assert (model.depth, model.variant, config.variant) == (depth, "pytorch", "pytorch")
    assert not model.training
    state = model.state_dict()
    # every tensor but the port's never-run classifier, which its checkpoints keep
    assert set(saved) - set(state) == {"model.fc.weight", "model.fc.bias"}
    assert set(state) < set(saved)
    for key, value in state.items():
        assert torch.equal(value, saved[key]), key


def test_a_checkpoint_without_the_ports_classifier_loads_too(tmp_path):
    """A state_dict taken from TinyFacesNet itself (or cleaned by hand) has no model.fc; one
    whose model.fc is not torchvision's 1000-class classifier is not silently dropped."""
    path = tmp_path / "c.pth"
    write_fake_pytorch_checkpoint(path, depth=50, drop=("model.fc.weight", "model.fc.bias"))
    assert load_weights(path)[0].depth == 50
    write_fake_pytorch_checkpoint(path, depth=50, override={"model.fc.bias": torch.zeros(2)})
    with pytest.raises(WeightsError, match=r"unexpected keys: model\.fc\.bias"):
        load_weights(path)


def test_pytorch_checkpoint_as_matconvnet_variant_is_loaded_with_a_warning(tmp_path, caplog):
    path = tmp_path / "c.pth"
    write_fake_pytorch_checkpoint(path, depth=50)
    with caplog.at_level(logging.WARNING, logger="tinyfaces_trt"):
        load_weights(path)
        load_weights(path, variant="pytorch")
    assert caplog.records == []
    with caplog.at_level(logging.WARNING, logger="tinyfaces_trt"):
        model, config = load_weights(path, variant="matconvnet")
    assert model.variant == config.variant == "matconvnet"
    assert model.model.layer2[0].conv1.stride == (2, 2)
    # the state_dicts of both variants are alike, so the override can only be flagged
    pytorch_state = TinyFacesNet(50, "pytorch").state_dict()
    assert {k: v.shape for k, v in model.state_dict().items()} == \
        {k: v.shape for k, v in pytorch_state.items()}
    (record,) = caplog.records
    assert record.levelno == logging.WARNING and record.name == "tinyfaces_trt.export.weights"
    message = record.getMessage()
    assert message.startswith(f"WARNING: loading the PyTorch checkpoint {path} as variant "
                              f"'matconvnet': this changes the input normalisation")
    assert "stride placement" in message and "right only for a checkpoint trained that way" in message


def test_pytorch_missing_unexpected_and_misshaped_keys(tmp_path):
    path = tmp_path / "c.pth"
    write_fake_pytorch_checkpoint(path, depth=50, drop=("model.layer2.1.bn2.running_var",))
    with pytest.raises(WeightsError, match=r"missing keys: model\.layer2\.1\.bn2\.running_var"):
        load_weights(path)

    write_fake_pytorch_checkpoint(path, depth=50,
                                  override={"model.layer4.0.conv1.weight": torch.zeros(3)})
    with pytest.raises(WeightsError, match=r"unexpected keys: model\.layer4\.0\.conv1\.weight"):
        load_weights(path)

    write_fake_pytorch_checkpoint(path, depth=50,
                                  override={"score_res3.weight": torch.zeros(25, 512, 1, 1)})
    with pytest.raises(WeightsError) as err:
        load_weights(path)
    assert "score_res3.weight (25, 512, 1, 1) (model expects (125, 512, 1, 1))" in str(err.value)
    assert str(path) in str(err.value)

    # integer weights loaded as a network of zeros that found "0 faces" and passed parity;
    # complex ones lost their imaginary part with a warning only
    write_fake_pytorch_checkpoint(path, depth=50, override={
        "score_res3.weight": torch.ones(125, 512, 1, 1, dtype=torch.int32),
        "score_res3.bias": torch.zeros(125, dtype=torch.bool),
        "model.conv1.weight": torch.zeros(64, 3, 7, 7, dtype=torch.complex64)})
    with pytest.raises(WeightsError) as err:
        load_weights(path)
    assert str(err.value).endswith(
        "not floating-point weights: model.conv1.weight (complex64), score_res3.weight (int32), "
        "score_res3.bias (bool)")
    write_fake_pytorch_checkpoint(path, depth=50, override={  # half precision: upcast
        "score_res3.weight": torch.ones(125, 512, 1, 1, dtype=torch.float16),
        "model.bn1.num_batches_tracked": torch.tensor(7)})
    assert float(load_weights(path)[0].score_res3.weight.detach().sum()) == 125 * 512


def test_pytorch_depth_is_inferred_and_checked(tmp_path):
    path = tmp_path / "c.pth"
    write_fake_pytorch_checkpoint(path, depth=50)
    with pytest.raises(WeightsError, match=r"ResNet-50 \(6 layer3 blocks\).*depth=101"):
        load_weights(path, depth=101)
    write_fake_pytorch_checkpoint(path, depth=50,
                                  override={"model.layer3.9.conv1.weight": torch.zeros(1)})
    with pytest.raises(WeightsError, match="cannot infer the ResNet depth: 7 model.layer3 blocks"):
        load_weights(path)


def test_corrupt_and_foreign_files(tmp_path):
    good = tmp_path / "good.pth"
    write_fake_pytorch_checkpoint(good, depth=50)
    cases = {
        "random.pth": np.random.default_rng(0).bytes(4096),
        "empty.pth": b"",
        "truncated.pth": good.read_bytes()[:100_000],
        "text.pth": b"not a checkpoint\n",
    }
    for name, data in cases.items():
        path = tmp_path / name
        path.write_bytes(data)
        with pytest.raises(WeightsError) as err:
            load_weights(path)
        assert str(path) in str(err.value) and "expected" in str(err.value), name

    with pytest.raises(WeightsError, match=r"empty\.pth: the file is empty \(0 bytes\); "
                                           r"expected a torch\.save file"):
        load_weights(tmp_path / "empty.pth")  # was "(EOFError: EOFError)"

    listed = tmp_path / "list.pth"
    torch.save([torch.zeros(2)], listed)
    with pytest.raises(WeightsError, match=r"found list, expected a torch\.save file"):
        load_weights(listed)
    for empty in ({"model": {}}, {}):  # was "found dict, expected ..."
        torch.save(empty, listed)
        with pytest.raises(WeightsError, match=r"list\.pth: the state dict is empty \(no "
                                               r"tensors\); expected a torch\.save file"):
            load_weights(listed)

    unsafe = tmp_path / "unsafe.pth"  # arbitrary pickled objects are refused (weights_only)
    with open(unsafe, "wb") as f:
        pickle.dump({"model": {"x": torch.zeros(1)}, "args": _Opaque()}, f, protocol=2)
    with pytest.raises(WeightsError, match=r"torch\.load\(weights_only=True\) refuses"):
        load_weights(unsafe)

    with pytest.raises(WeightsError, match="weights file not found"):
        load_weights(tmp_path / "missing.pth")

    plain = tmp_path / "plain.pth"  # a plain pickle: the error alone, not torch's warning first
    with open(plain, "wb") as f:
        pickle.dump({"a": 1}, f, protocol=4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(WeightsError, match="not a readable PyTorch checkpoint"):
            load_weights(plain)


class _Opaque:
    pass


# ------------------------------------------------------------------------ MatConvNet .mat

def _torch_layout(value: np.ndarray, kind: str) -> np.ndarray:
    if kind == "filter":
        return np.transpose(value, (3, 2, 0, 1))
    if kind == "vector":
        return value.reshape(-1)
    if kind == "mean":
        return value[:, 0]
    return value[:, 1].astype(np.float64) ** 2 - EPS


@pytest.fixture(scope="module")
def mat50(tmp_path_factory):
    path = tmp_path_factory.mktemp("mat") / "hr_res50.mat"
    clusters = load_default_templates() + np.arange(125).reshape(25, 5) * 1e-3
    params = write_fake_hr_res101_mat(path, depth=50, seed=1, clusters=clusters,
                                      average_image=(120.5, 115.25, 101.75))
    model, config = load_weights(path)
    yield path, params, clusters, model, config
    path.unlink()


def test_mat_round_trips_every_tensor(mat50):
    path, params, clusters, model, config = mat50
    mapping = matconvnet_param_map(50)
    state = model.state_dict()
    assert mapping.keys() == state.keys()
    assert {name for name, kind in mapping.values() if kind != "zero"} == set(params)
    for key, tensor in state.items():
        name, kind = mapping[key]
        if kind == "zero":
            assert int(tensor) == 0, key
            continue
        expected = _torch_layout(params[name], kind)
        assert tensor.dtype == torch.float32 and tensor.shape == expected.shape, key
        if kind == "var":
            np.testing.assert_allclose(tensor.numpy(), expected, rtol=1e-6, err_msg=key)
        else:
            np.testing.assert_array_equal(tensor.numpy(), expected, err_msg=key)


# The mapping written out by hand (Caffe names -> torchvision names).
SPOT_CHECKS_50 = [
    ("model.conv1.weight", "conv1_filter", "filter"),
    ("model.bn1.weight", "bn_conv1_mult", "vector"),
    ("model.layer1.0.downsample.0.weight", "res2a_branch1_filter", "filter"),
    ("model.layer2.0.downsample.1.running_mean", "bn3a_branch1_moments", "mean"),
    ("model.layer2.3.conv2.weight", "res3d_branch2b_filter", "filter"),
    ("model.layer3.5.bn3.bias", "bn4f_branch2c_bias", "vector"),
    ("model.layer3.5.bn3.running_var", "bn4f_branch2c_moments", "var"),
    ("score_res3.weight", "score_res3_filter", "filter"),
    ("score_res4.bias", "score_res4_bias", "vector"),
    ("score4_upsample.weight", "score4f", "filter"),
]


@pytest.mark.parametrize("key,name,kind", SPOT_CHECKS_50)
def test_mat_name_mapping_spot_checks(mat50, key, name, kind):
    _, params, _, model, _ = mat50
    np.testing.assert_allclose(model.state_dict()[key].numpy(), _torch_layout(params[name], kind),
                               rtol=1e-6)


def test_mat_config_comes_from_meta(mat50):
    _, _, clusters, model, config = mat50
    assert (model.variant, model.depth, config.variant) == ("matconvnet", 50, "matconvnet")
    assert config.template_policy == "matconvnet"
    np.testing.assert_array_equal(config.templates, clusters)
    n = config.normalization
    assert (n.input_scale, n.mean, n.std) == (1.0, (120.5, 115.25, 101.75), (1.0, 1.0, 1.0))


def test_mat_convolution_is_cross_correlation_hwio(mat50):
    """A 3x3 MatConvNet conv (y = sum F[u,v,c,o] x[c, i+u-1, j+v-1]) after loading."""
    _, params, _, model, _ = mat50
    filt = params["res2a_branch2b_filter"].astype(np.float64)  # 3 x 3 x 64 x 64
    x = np.random.default_rng(2).standard_normal((64, 5, 6))
    windows = np.lib.stride_tricks.sliding_window_view(np.pad(x, ((0, 0), (1, 1), (1, 1))),
                                                       (3, 3), axis=(1, 2))
    expected = np.einsum("cijuv,uvco->oij", windows, filt)
    with torch.no_grad():
        got = model.model.layer1[0].conv2(torch.from_numpy(x[None]).float())[0].numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


def test_mat_batchnorm_divides_by_sigma(mat50):
    _, params, _, model, _ = mat50
    mult, bias, moments = (params[f"bn2a_branch2b_{s}"] for s in ("mult", "bias", "moments"))
    x = np.random.default_rng(3).standard_normal((64, 4, 3))
    flat = x.reshape(64, -1)
    expected = (mult * (flat - moments[:, :1]) / moments[:, 1:] + bias).reshape(x.shape)
    with torch.no_grad():
        got = model.model.layer1[0].bn2(torch.from_numpy(x[None]).float())[0].numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_mat_transposed_convolution_follows_vl_nnconvt(mat50):
    """vl_nnconvt: F is H x W x K(out) x D(in); y[k, 2m+u-top, 2n+v-left] += F[u,v,k,d] x[d,m,n];
    test-time crop [1 2 1 2] as the matconvnet forward applies it."""
    _, params, _, model, _ = mat50
    filt = params["score4f"].astype(np.float64)  # random, so orientation matters
    x = np.random.default_rng(4).standard_normal((125, 3, 4))
    full = np.zeros((125, 2 * 2 + 4, 2 * 3 + 4))
    for u in range(4):
        for v in range(4):
            full[:, u:u + 6:2, v:v + 8:2] += np.einsum("dmn,kd->kmn", x, filt[u, v])
    expected = full[:, 1:-2, 1:-2]
    with torch.no_grad():
        got = model.score4_upsample(torch.from_numpy(x[None]).float())[0, :, :-1, :-1].numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


def test_mat_model_runs(mat50):
    _, _, _, model, _ = mat50
    with torch.no_grad():
        out = model(torch.randn(1, 3, 65, 31))
    assert out.shape == (1, 125, 7, 3) and torch.isfinite(out).all()


def test_full_resnet101_mat(tmp_path):
    """The real file's layout: res3b1..b3, res4b1..b22 and the bilinear score4f (~113 MB)."""
    path = tmp_path / "hr_res101.weights"  # dispatch is by content, not by name
    params = write_fake_hr_res101_mat(path, depth=101, seed=5, bilinear_score4=True)
    try:
        model, config = load_weights(path)
    finally:
        path.unlink()
    assert (model.depth, model.variant) == (101, "matconvnet")
    state = model.state_dict()
    for key, name, kind in [("model.layer2.3.conv3.weight", "res3b3_branch2c_filter", "filter"),
                            ("model.layer2.1.bn2.weight", "bn3b1_branch2b_mult", "vector"),
                            ("model.layer3.1.conv1.weight", "res4b1_branch2a_filter", "filter"),
                            ("model.layer3.22.bn1.running_var", "bn4b22_branch2a_moments", "var"),
                            ("model.layer3.0.downsample.0.weight", "res4a_branch1_filter",
                             "filter")]:
        np.testing.assert_allclose(state[key].numpy(), _torch_layout(params[name], kind),
                                   rtol=1e-6, err_msg=key)
    # the released bilinear filter loads as the port's bilinear init (channel-diagonal)
    assert torch.equal(state["score4_upsample.weight"], TinyFacesNet(50).score4_upsample.weight)


def test_mat_missing_unused_and_misshaped_params(tmp_path):
    path = tmp_path / "net.mat"
    write_fake_hr_res101_mat(path, depth=50, drop=("res4c_branch2a_filter",))
    with pytest.raises(WeightsError, match=r"missing parameters: res4c_branch2a_filter "
                                           r"\(for model\.layer3\.2\.conv1\.weight\)"):
        load_weights(path)

    write_fake_hr_res101_mat(path, depth=50, override={
        "res5a_branch2a_filter": np.zeros((1, 1, 1024, 512), np.float32)})
    with pytest.raises(WeightsError, match=r"unused parameters: res5a_branch2a_filter"):
        load_weights(path)

    write_fake_hr_res101_mat(path, depth=50,
                             override={"score_res3_bias": np.zeros((1, 100), np.float32)})
    with pytest.raises(WeightsError, match=r"score_res3_bias \(1, 100\) -> score_res3\.bias "
                                           r"\(model expects \(125,\)\)"):
        load_weights(path)

    write_fake_hr_res101_mat(path, depth=50,  # MatConvNet stores single: integers are no weights
                             override={"score_res3_bias": np.zeros((1, 125), np.int32)})
    with pytest.raises(WeightsError, match=r"not floating-point parameters: score_res3_bias "
                                           r"\(int32\)$"):
        load_weights(path)


def test_mat_variant_depth_and_meta_checks(tmp_path):
    path = tmp_path / "net.mat"
    write_fake_hr_res101_mat(path, depth=50)
    with pytest.raises(WeightsError, match="only as variant 'matconvnet'"):
        load_weights(path, variant="pytorch")
    with pytest.raises(WeightsError, match="holds a ResNet-50 but depth=101"):
        load_weights(path, depth=101)
    write_fake_hr_res101_mat(path, depth=50, clusters=np.zeros((24, 5)))
    with pytest.raises(WeightsError, match=r"net\.meta\.clusters: templates must have shape"):
        load_weights(path)


def test_corrupt_mat_files(tmp_path):
    good = tmp_path / "good.mat"
    write_fake_hr_res101_mat(good, depth=50)
    truncated = tmp_path / "truncated.mat"
    truncated.write_bytes(good.read_bytes()[:5_000_000])
    with pytest.raises(WeightsError) as err:
        load_weights(truncated)
    assert str(truncated) in str(err.value)

    # MATLAB v7.3 header (HDF5 container): scipy cannot read it
    header = b"MATLAB 7.3 MAT-file, Platform: GLNXA64".ljust(116) + b"\0" * 8 + b"\x00\x02IM"
    v73 = tmp_path / "v73.mat"
    v73.write_bytes(header + b"\0" * 512)
    with pytest.raises(WeightsError, match="v7.3"):
        load_weights(v73)



EXPECTED_MAT = ("expected a MatConvNet DagNN: a MATLAB v5/v7 .mat file whose variable 'net' is a "
                "struct with fields params, layers and meta, as dagnn.DagNN.saveobj writes it (the "
                "authors' hr_res101.mat); or a tiny-faces-pytorch .pth checkpoint")


@pytest.mark.parametrize("variables, problem", [
    ({"x": np.zeros(3)}, "a MATLAB file without a MatConvNet network: no variable 'net' (it holds x)"),
    ({"x": 1, "y": 2},
     "a MATLAB file without a MatConvNet network: no variable 'net' (it holds x, y)"),
    ({"net": {"foo": 1}}, "the 'net' struct lacks the DagNN field(s) params, layers, meta (it has foo)"),
    ({"net": {"params": 1, "meta": 2}},
     "the 'net' struct lacks the DagNN field(s) layers (it has params, meta)"),
    ({"net": 5.0}, "variable 'net' is a 1x1 double array, not a struct"),
    ({"net": np.array([{"a": 1}, {"a": 2}])}, "variable 'net' is a 1x2 cell array, not a struct"),
    ({"net": {"params": 1.0, "layers": 2, "meta": 3}},
     "net.params is a 1x1 double array, not a struct array with fields name and value"),
    ({"net": {"params": {"name": 7.0, "value": 1}, "layers": 2, "meta": 3}},
     "net.params(1).name is not a name (expected a char array, got float64)"),
], ids=["no-net", "two-variables", "net-without-fields", "net-without-layers", "net-number",
        "net-cell", "params-number", "param-name-number"])
def test_mat_without_a_dagnn_names_what_was_expected(tmp_path, variables, problem):
    import scipy.io

    path = tmp_path / "other.mat"
    scipy.io.savemat(path, variables)
    with pytest.raises(WeightsError) as err:
        load_weights(path)
    assert str(err.value) == f"{path}: {problem}; {EXPECTED_MAT}"


def test_mat_suffix_is_not_decisive(tmp_path):
    """Content decides the loader; a .mat name without MAT content is called that, not a
    broken PyTorch checkpoint."""
    for name, data in (("random.mat", np.random.default_rng(0).bytes(4096)),
                       ("text.MAT", b"plain text\n")):
        path = tmp_path / name
        path.write_bytes(data)
        with pytest.raises(WeightsError) as err:
            load_weights(path)
        assert str(err.value) == (f"{path}: not a MATLAB .mat file (it does not start with the "
                                  f"'MATLAB' header of a v5/v7 MAT-file); {EXPECTED_MAT}"), name
        assert "PyTorch" not in str(err.value)
    (tmp_path / "empty.mat").write_bytes(b"")
    with pytest.raises(WeightsError) as err:
        load_weights(tmp_path / "empty.mat")
    assert str(err.value) == f"{tmp_path / 'empty.mat'}: the file is empty (0 bytes); {EXPECTED_MAT}"
    renamed = tmp_path / "checkpoint.mat"  # a real torch checkpoint under a .mat name loads
    saved = write_fake_pytorch_checkpoint(renamed, depth=50)
    model, config = load_weights(renamed)
    assert (model.depth, config.variant) == (50, "pytorch")
    assert torch.equal(model.state_dict()["score_res3.bias"], saved["score_res3.bias"])

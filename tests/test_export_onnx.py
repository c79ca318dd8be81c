"""ONNX export (fp32 and fp16) of a seeded ResNet-50 TinyFacesNet, and the export folder format."""

from __future__ import annotations

import copy
import json
import math
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from tinyfaces_trt.export.export_pipeline import _commit, export_model
from tinyfaces_trt.export.onnx_export import VERIFY_RTOL, onnx_vs_torch
from tinyfaces_trt.core.config import DetectorConfig
from tinyfaces_trt.core.errors import ConfigError, ManifestError
from tinyfaces_trt.core.manifest import (FORMAT, MANIFEST_NAME, build_manifest, load_export_folder,
                                                 write_manifest)
from tinyfaces_trt.core.profiles import Profile

ort = pytest.importorskip("onnxruntime")

ODD_SIZES = ((37, 53), (61, 29))


@pytest.fixture(scope="module")
def model(seeded):
    """The session's seeded ResNet-50 (build_model(depth=50, seed=0): variant "pytorch")."""
    net = seeded[0]
    assert (net.depth, net.variant, net.seed) == (50, "pytorch", 0)
    return net


@pytest.fixture(scope="module")
def exported(model, export_dir, tmp_path_factory):
    """One fp32 + fp16 export (no engine) shared by the tests of this module. Its torch -> ONNX
    step is the session export's: that graph is torch_to_onnx of this same network (the
    session's checkpoint of it), made once per run; everything after it runs here."""
    from tinyfaces_trt.export import export_pipeline

    proto = onnx.load(str(export_dir / "model.onnx"))
    out = tmp_path_factory.mktemp("export")
    lines: list[str] = []
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(export_pipeline, "torch_to_onnx", lambda *a, **k: copy.deepcopy(proto))
        manifest = export_model(model, model.detector_config(), out, fp16=True, engine=False,
                                image_sizes=[(120, 160)], untrained=True, verify=False,
                                log=lines.append)
    return out, manifest, lines


def _dims(value: onnx.ValueInfoProto) -> list:
    return [d.dim_value if d.HasField("dim_value") else d.dim_param for d in value.type.tensor_type.shape.dim]


def test_fp32_graph_is_valid_with_dynamic_batch_and_spatial_dims(exported):
    out, _, _ = exported
    proto = onnx.load(str(out / "model.onnx"))
    onnx.checker.check_model(proto, full_check=True)
    assert [o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")] == [17]
    (inp,), (outp,) = proto.graph.input, proto.graph.output
    assert (inp.name, _dims(inp)) == ("image", ["batch", 3, "height", "width"])
    assert (outp.name, _dims(outp)) == ("scores", ["batch", 125, "score_height", "score_width"])
    assert inp.type.tensor_type.elem_type == outp.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    # BatchNorm folded into the convolutions; the crop of the res4 upsampling to res3's size
    # is the shape arithmetic
    assert Counter(n.op_type for n in proto.graph.node) == {
        "Conv": 45, "Relu": 40, "Add": 18, "MaxPool": 1, "ConvTranspose": 1,
        "Shape": 2, "Squeeze": 2, "Div": 2, "Reshape": 2, "Slice": 2}


def test_a_model_fx_cannot_trace_is_exported_unfolded(monkeypatch):
    from tinyfaces_trt.export import onnx_export

    def untraceable(model):
        raise torch.fx.proxy.TraceError("symbolically traced variables cannot be used as inputs "
                                        "to control flow")

    monkeypatch.setattr(onnx_export, "fold_batchnorm", untraceable)
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 125, 3, stride=8), torch.nn.BatchNorm2d(125)).eval()
    lines: list[str] = []
    proto = onnx_export.torch_to_onnx(net, log=lines.append)
    assert lines == ["  BatchNorm not folded before the export (TraceError: symbolically traced "
                     "variables cannot be used as inputs to control flow); exporting the model "
                     "as it is"]
    assert [n.op_type for n in proto.graph.node] == ["Conv"]  # the exporter folded it instead
    x = np.random.default_rng(0).standard_normal((1, 3, 40, 56), dtype=np.float32)
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        np.testing.assert_allclose(session.run(None, {"image": x})[0], net(torch.from_numpy(x)).numpy(),
                                   rtol=1e-5, atol=1e-5)


def _wrapped_interrupt() -> RuntimeError:
    """What torch.export raised for a Ctrl-C: its own error, raised while handling an
    AttributeError raised while handling the KeyboardInterrupt."""
    try:
        try:
            try:
                raise KeyboardInterrupt
            except KeyboardInterrupt:
                raise AttributeError("module 'torch._dynamo' has no attribute 'exc'")
        except AttributeError as exc:
            raise RuntimeError("Failed to export the model with torch.export") from exc
    except RuntimeError as exc:
        return exc


def test_an_interrupt_wrapped_by_a_library_is_raised_again():
    from tinyfaces_trt.core.errors import reraise_interrupt

    wrapped = _wrapped_interrupt()
    with pytest.raises(KeyboardInterrupt):
        reraise_interrupt(wrapped)
    plain = RuntimeError("no interrupt here")
    plain.__context__ = ValueError("nor here")
    plain.__context__.__context__ = plain  # a cycle ends the walk too
    reraise_interrupt(plain)


def test_ctrl_c_in_the_first_exporter_is_not_answered_by_the_second(monkeypatch):
    """A Ctrl-C that torch.export wrapped in its own error must stop the export, not make it
    try the TorchScript exporter and finish (tf-export exited 0 after an interrupt)."""
    from tinyfaces_trt.export import onnx_export

    def interrupted(*args, **kwargs):
        raise _wrapped_interrupt()

    def second(*args, **kwargs):
        raise AssertionError("the second exporter ran after an interrupt")

    monkeypatch.setattr(onnx_export, "_export_dynamo", interrupted)
    monkeypatch.setattr(onnx_export, "_export_torchscript", second)
    net = torch.nn.Conv2d(3, 125, 3, stride=8).eval()
    with pytest.raises(KeyboardInterrupt):
        onnx_export.torch_to_onnx(net, log=lambda line: None)


def test_an_opset_the_exporter_cannot_write_is_an_error_not_opset_18():
    """torch's exporter writes opset 18 when it cannot convert the graph to the requested
    opset, hiding the warning: the requested opset must be written or the export fails."""
    from tinyfaces_trt.core.errors import TinyFacesError
    from tinyfaces_trt.export import onnx_export

    torch.manual_seed(0)
    net = torch.nn.Conv2d(3, 125, 3, stride=8).eval()
    with pytest.raises(TinyFacesError) as info:
        onnx_export.torch_to_onnx(net, opset=30, log=lambda line: None)
    assert str(info.value).startswith(
        f"the exported graph has ONNX opset 18, not the requested 30: torch {torch.__version__}'s "
        f"exporter could not convert this network to opset 30; tf-export writes ONNX opsets 15 "
        f"to 28")
    proto = onnx_export.torch_to_onnx(net, opset=15, log=lambda line: None)
    assert onnx_export.onnx_opset(proto) == 15


def _small_net() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Conv2d(3, 125, 3, stride=8).eval()


@pytest.mark.parametrize("changes, message", [
    (dict(fp16="no"), "fp16 must be True or False, got 'no' (str)"),
    (dict(verify=1), "verify must be True or False, got 1 (int)"),
    (dict(engine="yes"), "engine must be True, False or None, got 'yes' (str)"),
    (dict(max_batch=2.5), "max_batch must be an integer >= 1, got 2.5"),
    (dict(max_batch=0), "max_batch must be an integer >= 1, got 0"),
    (dict(max_batch=True), "max_batch must be an integer >= 1, got True"),
    (dict(image_sizes=["160x120"]), "image_sizes must be (height, width) pairs of positive integers, "
     "e.g. [(1080, 1920)] for 1920x1080 images; got '160x120' in ['160x120']"),
    (dict(image_sizes="160x120"), "image_sizes must be a list of (height, width) pairs, e.g. "
     "[(1080, 1920)] for 1920x1080 images; got '160x120' (str)"),
    (dict(image_sizes=[(120, 160.5)]), "image_sizes must be (height, width) pairs of positive "
     "integers, e.g. [(1080, 1920)] for 1920x1080 images; got (120, 160.5) in [(120, 160.5)]"),
    (dict(image_sizes=[(120, 0)]), "image_sizes must be (height, width) pairs of positive "
     "integers, e.g. [(1080, 1920)] for 1920x1080 images; got (120, 0) in [(120, 0)]"),
    (dict(opset=13), "opset 13 is not supported: tf-export writes ONNX opsets 15 to 28, the ones "
     "torch's exporter converts this network to (default 17)"),
    (dict(opset=30), "opset 30 is not supported: tf-export writes ONNX opsets 15 to 28"),
    (dict(opset="17"), "opset must be an integer, got '17' (str); tf-export writes ONNX opsets 15 to 28"),
    (dict(profile=((1, 3, 8, 8),) * 3), "profile must be a Profile (min/opt/max shapes) or None"),
    (dict(workspace_gb=0), "workspace_gb must be a number of GiB > 0, got 0"),
    (dict(timing_cache=b"t.cache"), "timing_cache must be a path (str or os.PathLike) or None, got b't.cache'"),
    (dict(log="print"), "log must be a function taking a line of text, or None; got 'print'"),
    (dict(config={"variant": "pytorch"}), "config must be a DetectorConfig, got dict"),
])
def test_export_model_checks_its_arguments_before_any_work(tmp_path, changes, message):
    """A wrong argument was taken by its truth value (fp16="no" wrote fp16) or failed deep
    inside as a bare ValueError (image_sizes=["160x120"])."""
    args = dict(config=DetectorConfig(), untrained=True, verify=False, log=lambda line: None)
    args.update(changes)
    config = args.pop("config")
    with pytest.raises(ConfigError) as info:
        export_model(_small_net(), config, tmp_path / "out", **args)
    assert str(info.value).startswith(message), str(info.value)
    assert list(tmp_path.iterdir()) == []  # nothing written, not even the folder


def test_export_model_refuses_an_out_dir_it_cannot_create_before_any_work(tmp_path, monkeypatch):
    """From Python (the CLI checked already), a file where out_dir's parent should be was a raw
    NotADirectoryError, and a read-only parent a raw PermissionError from mkdir."""
    from tinyfaces_trt.core import files
    from tinyfaces_trt.core.errors import TinyFacesError

    args = dict(untrained=True, verify=False, log=lambda line: None)
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    with pytest.raises(TinyFacesError) as info:
        export_model(_small_net(), DetectorConfig(), blocker / "out", **args)
    assert str(info.value) == (f"cannot create out_dir {blocker / 'out'}: {blocker} is a file, "
                               "not a folder")
    with pytest.raises(TinyFacesError) as info:
        export_model(_small_net(), DetectorConfig(), blocker, **args)
    assert str(info.value) == f"out_dir {blocker} exists and is not a folder; give a folder"
    read_only = tmp_path / "ro"
    read_only.mkdir()  # this test may run as root, whom mode bits do not stop
    monkeypatch.setattr(files.os, "access", lambda path, mode: Path(path) != read_only)
    with pytest.raises(TinyFacesError) as info:
        export_model(_small_net(), DetectorConfig(), read_only / "new" / "out", **args)
    assert str(info.value) == (f"cannot write into {read_only} (out_dir {read_only / 'new' / 'out'}); "
                               "give a writable folder")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file", "ro"]
    assert list(read_only.iterdir()) == [] and blocker.read_text() == "x"


def test_export_model_accepts_numpy_integers_and_size_pairs(tmp_path):
    lines: list[str] = []
    export_model(_small_net(), DetectorConfig(), tmp_path / "out", opset=np.int64(18),
                 image_sizes=[np.array([120, 160])], max_batch=np.int32(2), untrained=True,
                 verify=False, log=lines.append)
    folder = load_export_folder(tmp_path / "out")
    assert folder.opset == 18 and folder.manifest["opset"] == 18
    assert folder.profile.max[0] == 2
    assert "wrote model.onnx: ONNX opset 18 (read back from the file)" in lines


def test_fp32_onnxruntime_matches_torch_on_odd_sizes(exported, model):
    out, _, _ = exported
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(5)
    for h, w in ODD_SIZES:
        x = rng.standard_normal((1, 3, h, w), dtype=np.float32)
        got = session.run(None, {"image": x})[0]
        with torch.no_grad():
            ref = model(torch.from_numpy(x)).numpy()
        assert got.shape == ref.shape == (1, 125, math.ceil(h / 8), math.ceil(w / 8))
        err = np.abs(got - ref).max()
        # measured ~1e-5 on maps reaching |5|; different summation order only
        assert err < 1e-4 * max(1.0, np.abs(ref).max()), (h, w, err)


def test_fp16_model_has_float32_io_and_stays_within_tolerance(exported, model):
    out, _, _ = exported
    proto = onnx.load(str(out / "model_fp16.onnx"))
    onnx.checker.check_model(proto, full_check=True)
    assert _dims(proto.graph.input[0]) == ["batch", 3, "height", "width"]
    assert proto.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert proto.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    weights = [i for i in proto.graph.initializer if len(i.dims) == 4]
    assert weights and all(i.data_type == onnx.TensorProto.FLOAT16 for i in weights)
    session = ort.InferenceSession(str(out / "model_fp16.onnx"), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].type == session.get_outputs()[0].type == "tensor(float)"

    err, ref_max = onnx_vs_torch(model, out / "model_fp16.onnx", ODD_SIZES, seed=5)
    # documented bound VERIFY_RTOL["fp16"] = 2e-2 relative to max|ref|; measured ~2e-3
    assert err <= VERIFY_RTOL["fp16"] * max(1.0, ref_max)
    assert err > 1e-5  # really float16 weights, not a float32 copy


def test_the_export_check_feeds_inputs_in_the_networks_own_range(exported, model, monkeypatch):
    """The check fed unit normal inputs, where the matconvnet variant's network sees raw pixels
    less the average image (+-130): its float16 activations overflowed in tf-parity while the
    export's own check passed. It now feeds random pixels through the config's normalisation."""
    from tinyfaces_trt.core.config import Normalization
    from tinyfaces_trt.export import onnx_export

    out, _, _ = exported
    seen = []
    real = ort.InferenceSession

    class Recording(real):
        def run(self, names, feed, *args, **kwargs):
            seen.append(next(iter(feed.values())))
            return super().run(names, feed, *args, **kwargs)

    monkeypatch.setattr(ort, "InferenceSession", Recording)
    onnx_export.verify_against_torch(model, out / "model.onnx", "fp32",
                                     Normalization.average_image((123.68, 116.779, 103.939)))
    assert len(seen) == len(onnx_export.VERIFY_SIZES)
    x = np.concatenate([a.reshape(3, -1) for a in seen], axis=1)
    assert x.min() < -100 and x.max() > 120  # 0..255 less about 120, not +-3
    seen.clear()
    onnx_export.verify_against_torch(model, out / "model.onnx", "fp32", Normalization.imagenet())
    x = np.concatenate([a.reshape(3, -1) for a in seen], axis=1)
    assert -2.2 < x.min() < -1.9 and 2.4 < x.max() < 2.7  # (0..1 - mean) / std
    # the export checks with its config's normalisation
    from tinyfaces_trt.export import export_pipeline

    asked = []
    monkeypatch.setattr(export_pipeline, "verify_against_torch",
                        lambda model, path, precision, normalization: asked.append(
                            normalization) or 0.0)
    config = DetectorConfig.for_variant("matconvnet")
    assert export_pipeline._verify(model, out / "model.onnx", "fp16", config) == \
        "ONNX Runtime vs torch max abs error 0.00e+00"
    assert asked == [config.normalization]


def test_manifest_of_export_round_trips(exported, model):
    out, manifest_path, lines = exported
    assert manifest_path == out / MANIFEST_NAME
    folder = load_export_folder(out)
    assert folder.onnx_path() == out / "model.onnx" and folder.onnx_path(fp16=True) == out / "model_fp16.onnx"
    assert folder.engine_fp32 is None and folder.engine_fp16 is None
    assert (folder.input_name, folder.output_name, folder.num_channels, folder.stride, folder.opset) == \
        ("image", "scores", 125, 8, 17)
    cfg = folder.config
    ref = model.detector_config()
    assert cfg == ref and np.array_equal(cfg.templates, ref.templates)  # templates: compare=False
    assert folder.untrained is True
    # profile covers the pyramid of 120x160: min_e = min(floor(log2(82/160)), floor(log2(110/120)))
    # = -1, so levels 2^-1, 2^0, 2^0.5, 2^1: 60x80 .. 240x320
    assert folder.profile == Profile((1, 3, 60, 80), (1, 3, 240, 320), (1, 3, 240, 320))
    raw = folder.manifest
    assert raw["weights"] is None and raw["model"] == {"depth": 50, "variant": "pytorch", "seed": 0}
    assert {"torch", "onnx", "python"} <= set(raw["tools"])
    with pytest.raises(ManifestError, match="no fp16 TensorRT engine.*--engine --fp16"):
        folder.engine_path(fp16=True)
    # progress lines, the untrained warning, and the trtexec hint with the exact profile
    assert any(line.startswith("WARNING: exporting a network with RANDOM") for line in lines)
    assert any("exporting fp32 ONNX (opset 17): done in" in line for line in lines)
    assert "wrote model.onnx: ONNX opset 17 (read back from the file)" in lines
    assert raw["opset"] == 17
    hint = [line for line in lines if "trtexec" in line]
    assert len(hint) == 1 and "--minShapes=image:1x3x60x80 --optShapes=image:1x3x240x320 " \
                               "--maxShapes=image:1x3x240x320 --stronglyTyped" in hint[0]
    assert "--onnx=" + str(out / "model_fp16.onnx") in hint[0]


# ------------------------------------------------------------------------------------------
# manifest validation, on a small fake folder (no export needed)
# ------------------------------------------------------------------------------------------

@pytest.fixture
def fake_folder(tmp_path):
    (tmp_path / "model.onnx").write_bytes(b"onnx")
    (tmp_path / "model.engine").write_bytes(b"engine")
    write_manifest(tmp_path, config=DetectorConfig.for_variant("matconvnet", prob_thresh=0.7),
                   files={"onnx_fp32": "model.onnx", "engine_fp32": "model.engine"}, opset=18,
                   weights={"path": "/w.mat", "sha256": "ab" * 32},
                   profile=Profile((1, 3, 8, 8), (1, 3, 16, 16), (1, 3, 32, 32)), tools={"onnx": "1"})
    return tmp_path


def _edit(folder: Path, **changes) -> None:
    path = folder / MANIFEST_NAME
    manifest = json.loads(path.read_text())
    manifest.update(changes)
    path.write_text(json.dumps(manifest))


def test_manifest_round_trip(fake_folder):
    folder = load_export_folder(fake_folder / MANIFEST_NAME)  # the manifest path works too
    assert folder.path == fake_folder
    assert folder.config.variant == "matconvnet" and folder.config.prob_thresh == 0.7
    assert folder.config.normalization.mean == (123.68, 116.779, 103.939)
    assert folder.engine_path() == fake_folder / "model.engine" and folder.onnx_fp16 is None
    assert folder.profile.opt == (1, 3, 16, 16) and folder.opset == 18 and folder.untrained is False
    assert folder.manifest["weights"]["sha256"] == "ab" * 32
    assert folder.manifest["format"] == FORMAT
    with pytest.raises(ManifestError, match="no fp16 ONNX model; re-export with tf-export --fp16"):
        folder.onnx_path(fp16=True)


@pytest.mark.parametrize("changes, message", [
    (dict(format="something-else"), "format 'something-else', expected 'tinyfaces-trt-export'"),
    (dict(format_version=2), "format_version 2; this tinyfaces-trt reads version 1"),
    (dict(num_channels=124), "num_channels is 124; the Tiny Faces score map has 125"),
    (dict(stride=16), "stride 16 disagrees with its config stride 8"),
    (dict(files={"onnx_fp32": "model.onnx", "onnx_fp16": "model_fp16.onnx"}),
     "lists onnx_fp16 = 'model_fp16.onnx' but .* is missing"),
    (dict(files={"onnx_fp32": "../model.onnx"}), "must be a file name inside the folder"),
    (dict(files={"weights": "model.onnx"}), r"unknown file roles \['weights'\]"),
    (dict(files={}), "lists no model file"),
    (dict(profile={"min": [1, 3, 8, 8]}), "min, opt and max"),
    (dict(input_name=3), "'input_name' has the wrong type"),
    (dict(config={"variant": "pytorch"}), "detector config is incomplete"),
])
def test_manifest_validation_errors(fake_folder, changes, message):
    _edit(fake_folder, **changes)
    with pytest.raises(ManifestError, match=message):
        load_export_folder(fake_folder)


def test_invalid_config_in_a_manifest_is_a_manifest_error(fake_folder):
    """DetectorConfig raises ConfigError; the loader wraps it, naming the manifest."""
    config = DetectorConfig.for_variant("matconvnet", prob_thresh=0.7).to_dict()
    _edit(fake_folder, config={**config, "prob_thresh": 1.5})
    with pytest.raises(ManifestError) as info:
        load_export_folder(fake_folder)
    message = str(info.value)
    assert str(fake_folder / MANIFEST_NAME) in message and "prob_thresh must be in (0, 1), got 1.5" \
        in message and "re-export the folder with tf-export" in message
    assert isinstance(info.value.__cause__, ConfigError)


def test_missing_folder_manifest_and_bad_json(tmp_path):
    with pytest.raises(ManifestError, match="does not exist"):
        load_export_folder(tmp_path / "nope")
    with pytest.raises(ManifestError, match="has no manifest.json; it is not a tf-export folder"):
        load_export_folder(tmp_path)
    (tmp_path / MANIFEST_NAME).write_text("{not json")
    with pytest.raises(ManifestError, match="cannot read"):
        load_export_folder(tmp_path)
    (tmp_path / MANIFEST_NAME).write_text("[1, 2]")
    with pytest.raises(ManifestError, match="must hold a JSON object"):
        load_export_folder(tmp_path)


def test_build_manifest_rejects_unknown_roles_and_overrides():
    cfg = DetectorConfig()
    with pytest.raises(ManifestError, match="unknown file roles"):
        build_manifest(config=cfg, files={"model": "x"}, opset=17)
    with pytest.raises(ManifestError, match="would override"):
        build_manifest(config=cfg, files={}, opset=17, extra={"opset": 3})
    with pytest.raises(ManifestError, match=r"opset must be an integer >= 1 \(the ONNX files' opset\), got '17'"):
        build_manifest(config=cfg, files={}, opset="17")


def _staged(folder):
    folder.mkdir()
    (folder / "model.onnx").write_text("new")
    (folder / MANIFEST_NAME).write_text("{new}")
    return folder


def test_reexport_replaces_an_export_folder_whole(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    for name in ("model.onnx", "model_fp16.onnx", "model.engine", MANIFEST_NAME):
        (out / name).write_text("old")
    _commit(_staged(tmp_path / "staging"), out, lambda _: None)
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "model.onnx"]
    assert (out / "model.onnx").read_text() == "new" and not (tmp_path / "staging").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no folder left aside


def test_reexport_keeps_other_files_and_removes_only_stale_model_files(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    for name in ("model.onnx", "model_fp16.onnx", "model.engine", "notes.txt", MANIFEST_NAME):
        (out / name).write_text("old")
    removed: list[str] = []
    _commit(_staged(tmp_path / "staging"), out, removed.append)
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "model.onnx", "notes.txt"]
    assert (out / MANIFEST_NAME).read_text() == "{new}" and (out / "notes.txt").read_text() == "old"
    assert sum("removed" in line for line in removed) == 2


def test_simplify_without_a_simplifier_says_what_to_install():
    import importlib.util

    from tinyfaces_trt.export.onnx_export import simplify_onnx
    from tinyfaces_trt.core.errors import BackendUnavailableError

    if any(importlib.util.find_spec(name) for name in ("onnxslim", "onnxsim")):
        pytest.skip("a simplifier is installed")
    with pytest.raises(BackendUnavailableError, match=r"--simplify needs onnxslim or onnxsim.*pip install onnxslim"):
        simplify_onnx(onnx.ModelProto())

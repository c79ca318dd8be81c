"""tf-parity checks an export folder's source (weights, or the untrained network's seed) before
its variant: a ``--variant`` hint for a folder of other weights sent the user to a command
the weights refuse (a .mat runs only as 'matconvnet')."""

from __future__ import annotations

from pathlib import Path

import pytest

from tinyfaces_trt.core.hashing import file_sha256
from tinyfaces_trt.core.manifest import write_manifest
from tinyfaces_trt.export.model import TinyFacesNet
from tinyfaces_trt.parity.cli import main

from helpers_weights import write_fake_hr_res101_mat, write_fake_pytorch_checkpoint


def _folder(path: Path, variant: str, *, weights: Path | None = None, seed: int = 0) -> Path:
    """An export folder whose manifest says it holds ``variant`` made from ``weights`` (or the
    untrained network of ``seed``); its ONNX file is never loaded by these tests."""
    path.mkdir()
    (path / "model.onnx").write_bytes(b"never loaded")
    write_manifest(path, config=TinyFacesNet(50, variant).detector_config(),
                   files={"onnx_fp32": "model.onnx"}, opset=17, untrained=weights is None,
                   weights=None if weights is None else {"path": str(weights),
                                                         "sha256": file_sha256(weights)},
                   extra={"model": {"depth": 50, "variant": variant, "seed": seed}})
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("weights")
    mat, pth, other = root / "hr_res50.mat", root / "c.pth", root / "other.pth"
    write_fake_hr_res101_mat(mat, depth=50)
    write_fake_pytorch_checkpoint(pth, depth=50, seed=1)
    write_fake_pytorch_checkpoint(other, depth=50, seed=2)
    return mat, pth, other


def _error(capsys, argv: list[str]) -> str:
    assert main(argv + ["--sizes", "33x47", "--backends", "onnxruntime"]) == 2
    return capsys.readouterr().err.strip()


def test_a_mat_with_a_folder_of_other_weights_is_told_so_not_given_a_variant(capsys, tmp_path,
                                                                            files):
    mat, pth, other = files
    folder = _folder(tmp_path / "pytorch_of_other", "pytorch", weights=other)
    assert _error(capsys, ["--weights", str(mat), "--model", str(folder)]) == (
        f"tf-parity: error: export folder {folder} was not made from {mat} but from weights "
        f"with sha256 {file_sha256(other)}; give --weights the checkpoint it was exported "
        f"from, or leave out --model to export {mat} afresh")
    # the weights' own folder of another variant: then the variant, which a .pth can run as
    own = _folder(tmp_path / "matconvnet_of_pth", "matconvnet", weights=pth)
    assert _error(capsys, ["--weights", str(pth), "--model", str(own)]) == (
        f"tf-parity: error: export folder {own} holds the 'matconvnet' variant of the network, "
        f"the reference is the 'pytorch' one; give --variant matconvnet to compare like with "
        f"like")


def test_a_variant_the_weights_cannot_run_as_is_never_suggested(capsys, tmp_path, files):
    """A folder whose manifest pairs the .mat's sha256 with the 'pytorch' variant (which no
    tf-export of it writes): no '--variant pytorch', which the .mat would refuse."""
    mat, _, _ = files
    folder = _folder(tmp_path / "inconsistent", "pytorch", weights=mat)
    assert _error(capsys, ["--weights", str(mat), "--model", str(folder)]) == (
        f"tf-parity: error: export folder {folder} holds the 'pytorch' variant of the network, "
        f"the reference is the 'matconvnet' one; {mat} cannot run as that variant (its "
        f"manifest is inconsistent); re-export it with tf-export --weights {mat}")


def test_an_untrained_folder_of_another_seed_and_variant_names_the_seed_first(capsys, tmp_path):
    folder = _folder(tmp_path / "mcn_seed3", "matconvnet", seed=3)
    base = ["--untrained", "--depth", "50", "--model", str(folder)]
    assert _error(capsys, base) == (
        f"tf-parity: error: export folder {folder} does not hold the untrained ResNet-50 "
        f"network of seed 0 (untrained=True, depth=50, seed=3)")
    assert _error(capsys, base + ["--seed", "3"]) == (
        f"tf-parity: error: export folder {folder} holds the 'matconvnet' variant of the "
        f"network, the reference is the 'pytorch' one; give --variant matconvnet to compare "
        f"like with like")


def test_a_folder_of_other_weights_is_refused_before_the_reference_is_built(capsys, tmp_path,
                                                                            files, monkeypatch):
    """The reference (a ResNet-101 takes seconds to build) is built only once the folder's
    source is known to match; a missing --weights is named as the weights file."""
    from tinyfaces_trt.export import weights

    def built(*args, **kwargs):
        raise AssertionError("the reference was built")

    monkeypatch.setattr(weights, "load_model", built)
    _, pth, other = files
    folder = _folder(tmp_path / "of_other", "pytorch", weights=other)
    assert _error(capsys, ["--weights", str(pth), "--model", str(folder)]).startswith(
        f"tf-parity: error: export folder {folder} was not made from {pth} but from weights ")
    untrained = _folder(tmp_path / "seed3", "pytorch", seed=3)
    assert _error(capsys, ["--untrained", "--depth", "50", "--model", str(untrained)]).startswith(
        f"tf-parity: error: export folder {untrained} does not hold the untrained ResNet-50 ")
    missing = tmp_path / "missing.pth"
    assert _error(capsys, ["--weights", str(missing), "--model", str(folder)]) == (
        f"tf-parity: error: weights file not found: {missing}")


def test_a_folder_whose_manifest_gives_the_network_other_settings_is_refused(capsys, tmp_path,
                                                                             files):
    """An edited manifest (the normalisation, the templates) ran on both sides of the
    comparison, which agreed: tf-parity passed detections the network does not make. The
    folder's network settings are checked against the weights'; its detection settings
    (thresholds) stay its own. The .mat's own settings pass that check, through the
    manifest's JSON."""
    from tinyfaces_trt.export.weights import load_model

    mat, _, _ = files
    config = load_model(mat)[1]

    def folder(name: str, **changes) -> Path:
        path = tmp_path / name
        path.mkdir()
        (path / "model.onnx").write_bytes(b"never loaded")
        write_manifest(path, config=config.with_(**changes), files={"onnx_fp32": "model.onnx"},
                       opset=17, untrained=False,
                       weights={"path": str(mat), "sha256": file_sha256(mat)},
                       extra={"model": {"depth": 50, "variant": "matconvnet", "seed": 0}})
        return path

    own = folder("own", prob_thresh=0.9, nms_thresh=0.2)
    assert main(["--weights", str(mat), "--model", str(own), "--sizes", "33x47",
                 "--backends", "onnxruntime"]) == 3  # on to running it: its ONNX is no model
    assert "cannot load ONNX model" in capsys.readouterr().err
    std = config.normalization.__class__(config.normalization.input_scale,
                                         config.normalization.mean, (2.0, 2.0, 2.0))
    edited = folder("edited", normalization=std, templates=config.templates * 1.5)
    assert _error(capsys, ["--weights", str(mat), "--model", str(edited)]) == (
        f"tf-parity: error: export folder {edited}: its manifest's network settings differ "
        f"from those of {mat} (templates, normalization; an edited manifest?); its detections "
        f"would not be the network's: re-export it")
    # the config's variant edited, the model's left: the runtime gave the other coordinates
    relabelled = folder("relabelled", variant="pytorch")
    assert _error(capsys, ["--weights", str(mat), "--model", str(relabelled)]) == (
        f"tf-parity: error: export folder {relabelled}: its manifest's network settings differ "
        f"from those of {mat} (variant; an edited manifest?); its detections would not be the "
        "network's: re-export it")

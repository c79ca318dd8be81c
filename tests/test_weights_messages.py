"""What the weight loader says about checkpoints it cannot use: training checkpoints holding
Python objects (refused by the safe ``weights_only`` load) and other networks' state dicts."""

from __future__ import annotations

import argparse
import shlex

import pytest
import torch

from tinyfaces_trt.core.errors import WeightsError
from tinyfaces_trt.export.model import TinyFacesNet
from tinyfaces_trt.export.weights import load_weights, runnable_variants

from helpers_weights import write_fake_hr_res101_mat, write_fake_pytorch_checkpoint


def _message(path) -> str:
    with pytest.raises(WeightsError) as err:
        load_weights(path)
    return str(err.value)


@pytest.mark.parametrize("key", ["model", "state_dict"])
def test_a_checkpoint_with_training_args_names_the_global_and_the_re_save(tmp_path, key):
    """``{"model": state_dict, "args": argparse.Namespace(...)}`` (common in training forks;
    also under "state_dict"): the message named no global, as it was cut at torch's first
    sentence."""
    state = write_fake_pytorch_checkpoint(tmp_path / "fork.pth", depth=50)
    path = tmp_path / "ckpt 1.pth"  # a space: the command must quote it
    torch.save({key: state, "args": argparse.Namespace(lr=0.01, epochs=50)}, path)
    message = _message(path)
    out = tmp_path / "ckpt 1_state_dict.pth"
    assert message.startswith(
        f"{path}: the checkpoint holds Python objects besides tensors, which "
        f"torch.load(weights_only=True) refuses (unsupported global: argparse.Namespace)")
    assert "If you trust the file, re-save just its state dict: python -c " in message
    assert message.endswith(f"then pass {out}")
    # the command given runs as printed and its output loads
    command = message.split("re-save just its state dict: ", 1)[1].split(" (a whole saved", 1)[0]
    argv = shlex.split(command)
    assert argv[:2] == ["python", "-c"] and "weights_only=False" in argv[2]
    # run in this process, as python -c would, in a namespace of its own (it imports torch
    # itself): the process boundary is not what is checked, the command's text is
    exec(compile(argv[2], "<string>", "exec"), {"__name__": "__main__"})
    assert load_weights(out)[0].depth == 50


def test_a_whole_saved_module_names_its_class(tmp_path):
    path = tmp_path / "whole.pth"
    torch.save(torch.nn.Conv2d(3, 4, 1), path)
    message = _message(path)
    assert "(unsupported global: torch.nn.modules.conv.Conv2d)" in message
    assert 'torch.save({"model": c.state_dict()}, ...)' in message


def test_a_torchvision_resnet_state_dict_is_not_a_detector(tmp_path):
    """A plain ResNet classifier's state dict (no 'model.' prefix, no score heads) was
    reported as 'cannot infer the ResNet depth: 0 model.layer3 blocks found'."""
    resnet = {k[len("model."):]: v for k, v in TinyFacesNet(50, "pytorch").state_dict().items()
              if k.startswith("model.")}
    resnet.update({"fc.weight": torch.zeros(1000, 2048), "fc.bias": torch.zeros(1000)})
    path = tmp_path / "resnet50.pth"
    torch.save(resnet, path)
    message = _message(path)
    assert message.startswith(
        f"{path}: not a Tiny Faces detector checkpoint: it has no score heads (score_res3, "
        f"score_res4, score4_upsample) and no ResNet trunk under 'model.' (it looks like a "
        f"torchvision ResNet classifier's: keys such as layer3.0.conv1.weight and fc.weight "
        f"without the 'model.' prefix); its keys: conv1.weight, bn1.weight")
    assert ("Expected TinyFacesNet's state dict: model.conv1.weight, model.bn1.*, "
            "model.layer1..layer3.* (ResNet-50 or -101), score_res3.weight, score_res3.bias, "
            "score_res4.weight, score_res4.bias, score4_upsample.weight") in message
    assert "cannot infer the ResNet depth" not in message
    other = tmp_path / "other.pth"
    torch.save({"model": {"encoder.weight": torch.zeros(2)}}, other)
    assert _message(other).startswith(
        f"{other}: not a Tiny Faces detector checkpoint: it has no score heads (score_res3, "
        f"score_res4, score4_upsample) and no ResNet trunk under 'model.'; its keys: "
        f"encoder.weight. Expected")
    # a detector's state dict short of its heads still gets the list of missing keys
    partial = tmp_path / "partial.pth"
    write_fake_pytorch_checkpoint(partial, depth=50, drop=(
        "score_res3.weight", "score_res3.bias", "score_res4.weight", "score_res4.bias",
        "score4_upsample.weight"))
    assert "missing keys: score_res3.weight, score_res3.bias" in _message(partial)


def test_runnable_variants_follow_the_file_content(tmp_path):
    pth, mat = tmp_path / "c.pth", tmp_path / "c.mat"
    write_fake_pytorch_checkpoint(pth, depth=50)
    write_fake_hr_res101_mat(mat, depth=50)
    assert runnable_variants(pth) == ("pytorch", "matconvnet")
    assert runnable_variants(mat) == ("matconvnet",)


def test_a_weights_path_that_is_no_regular_file_is_named_as_such(tmp_path, capsys):
    """A named pipe (bash's <(...)), /dev/zero: "weights file not found", though it exists."""
    import os

    from tinyfaces_trt.core.hashing import file_sha256
    from tinyfaces_trt.export.cli_export import main as export
    from tinyfaces_trt.parity.cli import main as parity

    pipe = tmp_path / "weights.pth"
    os.mkfifo(pipe)
    message = (f"weights file {pipe} is not a regular file (a pipe, device or socket); give the "
               "file itself")
    with pytest.raises(WeightsError, match=r"^" + message.replace("(", r"\(").replace(")", r"\)")):
        load_weights(str(pipe))
    with pytest.raises(Exception, match="is not a regular file"):
        file_sha256(pipe, what="weights file")
    assert export(["--weights", str(pipe), "--out", str(tmp_path / "out")]) == 1
    assert parity(["--weights", str(pipe), "--sizes", "33x47"]) == 2
    err = capsys.readouterr().err
    assert f"tf-export: error: {message}\n" in err and f"tf-parity: error: {message}\n" in err
    assert not (tmp_path / "out").exists()
    with pytest.raises(WeightsError, match=f"^weights file not found: {tmp_path / 'gone.pth'}$"):
        load_weights(str(tmp_path / "gone.pth"))
    with pytest.raises(WeightsError, match=f"^weights file {tmp_path} is a folder, not a file$"):
        load_weights(str(tmp_path))

"""tools/fp16_parity_estimate.py: the fp16 network emulated in float32, against the reference."""

from __future__ import annotations

import json

import numpy as np
import torch

from helpers_run import load_script

from tinyfaces_trt.parity.compare import TOLERANCES, compare_maps


def _tool():
    return load_script("tools/fp16_parity_estimate.py", "fp16_parity_estimate")


def test_the_emulation_rounds_to_fp16_within_its_tolerances_and_leaves_the_model(seeded):
    model = seeded[0]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    emulated = _tool().fp16_emulation(model)
    x = torch.from_numpy(np.random.default_rng(0).standard_normal((1, 3, 72, 88), np.float32))
    with torch.no_grad():
        exact, rounded = model(x), emulated(x)
    assert torch.equal(rounded, rounded.half().float())  # the output is fp16 storage
    assert all(torch.equal(p, p.half().float()) for p in emulated.parameters())
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in emulated.modules())  # folded
    diff = (rounded - exact).abs().max().item()
    assert 1e-4 < diff  # fp16 rounding shows ...
    assert compare_maps(exact.numpy(), rounded.numpy(), TOLERANCES["fp16"].maps).passed  # ... within
    assert not model._forward_hooks and not model._forward_pre_hooks
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_the_estimate_is_the_parity_row_of_the_gpu_check(capsys):
    assert _tool().main(["--image-size", "96x64,64x48", "--depth", "50"]) == 0
    small, smaller = json.loads(capsys.readouterr().out)
    assert small["passed"] is True and small["precision"] == "fp16"
    assert small["image_size"] == [96, 64] and small["depth"] == 50
    assert small["reference"] > 0 and small["matched"] > 0 and small["max_score_diff"] > 0
    assert smaller["image_size"] == [64, 48]

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


def test_the_estimate_is_the_parity_row_of_the_gpu_check(capsys, monkeypatch, seeded):
    """Two small images (one row each; the rows do not depend on the size). The tool's network,
    build_model(depth=50, variant="pytorch", seed=0), is the session's seeded one: build_model
    is deterministic (bitwise), so the same weights without building them once per size."""
    tool = _tool()
    built = []

    def seeded_network(depth, variant, seed):
        built.append((depth, variant, seed))
        return seeded[0]

    monkeypatch.setattr(tool, "build_model", seeded_network)
    assert tool.main(["--image-size", "64x48,32x24", "--depth", "50"]) == 0
    assert built == [(50, "pytorch", 0)] * 2  # the default variant and seed, once per size
    small, smaller = json.loads(capsys.readouterr().out)
    assert small["passed"] is True and small["precision"] == "fp16"
    assert small["image_size"] == [64, 48] and small["depth"] == 50
    assert small["reference"] > 0 and small["matched"] > 0 and small["max_score_diff"] > 0
    assert smaller["image_size"] == [32, 24]

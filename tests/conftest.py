"""Fixtures shared by the test modules: one seeded ResNet-50, its checkpoint and its export."""

from __future__ import annotations

import pytest
import torch

from tinyfaces_trt.export.model import build_model
from tinyfaces_trt.export_cache import cached_export


@pytest.fixture(scope="session")
def seeded():
    """(model, config) of the seeded ResNet-50 network."""
    model = build_model(depth=50, seed=0)
    return model, model.detector_config()


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory, seeded):
    """The seeded ResNet-50 as a tiny-faces-pytorch checkpoint (``{"model": state_dict}``)."""
    path = tmp_path_factory.mktemp("seeded50") / "seeded50.pth"
    torch.save({"model": seeded[0].state_dict()}, path)
    return path


@pytest.fixture(scope="session")
def export_dir(checkpoint):
    """Its export folder (fp32 + fp16 ONNX), made once per session through the export cache."""
    return cached_export(checkpoint, fp16=True, cache_dir=checkpoint.parent / "cache",
                         progress=lambda _: None, verify=False).path

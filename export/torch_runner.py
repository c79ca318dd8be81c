"""The torch reference runner: a :class:`NetworkRunner` over a :class:`TinyFacesNet`."""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn

from tinyfaces_trt.core.runner import RunnerBase, RunnerCapabilities, check_network_input
from tinyfaces_trt.export.torch_settings import ieee_fp32_convolutions

_HALF_TYPES = (torch.float16, torch.bfloat16)


class TorchRunner(RunnerBase):
    """Runs a torch network on numpy inputs (the reference every other backend is compared to;
    float32 on a GPU in IEEE fp32, not TF32).

    Args:
        model: the network, e.g. :class:`~tinyfaces_trt.export.model.TinyFacesNet`. It is put in
            eval mode; when ``device``/``dtype`` differ from the model's, a converted copy is
            used so the caller's model is left unchanged.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ...
        dtype: compute dtype: ``torch.float32``, or ``torch.float16`` / ``torch.bfloat16``
            (CUDA only). Inputs are cast to it; outputs are always returned as float32.
    """

    def __init__(self, model: nn.Module, device: str | torch.device = "cpu",
                 dtype: torch.dtype = torch.float32) -> None:
        self.device = torch.device(device)
        self.capabilities = RunnerCapabilities(batch=True, gpu=self.device.type == "cuda")
        if dtype not in (torch.float32,) + _HALF_TYPES:
            raise ValueError(f"unsupported dtype {dtype}; use float32, float16 or bfloat16")
        if dtype in _HALF_TYPES and self.device.type != "cuda":
            raise ValueError(f"{dtype} inference needs a CUDA device, got {self.device}")
        self.dtype = dtype
        first = next(model.parameters(), None)
        if first is not None and (first.device != self.device or first.dtype != dtype):
            model = copy.deepcopy(model).to(device=self.device, dtype=dtype)
        self.model: nn.Module | None = model.eval()

    def run(self, net_input: np.ndarray) -> np.ndarray:
        """(N, 3, h, w) float32 array -> (N, 125, h', w') float32 array (C-contiguous).

        Raises:
            NetworkInputError: another input (``core.runner.check_network_input``).
        """
        x = check_network_input(net_input, batch=self.capabilities.batch)
        model = self._require_open(self.model)
        with torch.inference_mode(), ieee_fp32_convolutions(self.device, self.dtype):
            t = torch.from_numpy(x)
            y = model(t.to(device=self.device, dtype=self.dtype))
            return np.ascontiguousarray(y.float().cpu().numpy())

    def synchronize(self) -> None:
        """Waits for queued CUDA work (used by the pipeline's per-stage timing)."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def close(self) -> None:
        """Drops the model (the converted copy's memory, or this runner's hold on the caller's
        model); idempotent. A closed runner may not run again."""
        self.model = None

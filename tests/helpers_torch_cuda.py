"""A tiny stand-in for the Tiny Faces network (same I/O contract: 3 -> 125 channels, score map
ceil(h/8) x ceil(w/8)) that torch.compile handles in seconds, and a worker that compiles it
in a fresh process (the compile-cache tests run it twice)."""

from __future__ import annotations

import gc
import json
import sys
import weakref

import numpy as np
import torch
from torch import nn

INPUT_SHAPE = (2, 3, 32, 48)


class StandInNet(nn.Module):
    """conv 3x3/2 + BatchNorm + ReLU, then conv 3x3/4 to 125 channels (stride 8 in all)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.score = nn.Conv2d(16, 125, 3, stride=4, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.score(torch.relu(self.bn1(self.conv1(x))))


def stand_in(seed: int = 0) -> StandInNet:
    """Seeded weights with non-trivial BatchNorm statistics (so folding changes the convs)."""
    gen = torch.Generator().manual_seed(seed)
    model = StandInNet()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
        model.bn1.weight.copy_(0.5 + torch.rand(16, generator=gen))
        model.bn1.running_mean.copy_(torch.randn(16, generator=gen))
        model.bn1.running_var.copy_(0.5 + torch.rand(16, generator=gen))
    return model.eval()


def net_input(shape: tuple[int, ...] = INPUT_SHAPE, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def compile_worker(cache_dir: str, out_prefix: str) -> None:
    """Compiles the stand-in on the CPU through TorchCudaRunner; writes <out_prefix>.npy (the
    compiled output), <out_prefix>-eager.npy and <out_prefix>.json (the shape's record and
    whether close() released the compiled model)."""
    from tinyfaces_trt.export.torch_cuda import TorchCudaRunner

    model, x = stand_in(), net_input()
    said: list[str] = []
    said_eager: list[str] = []
    eager = TorchCudaRunner(model, device="cpu", dtype=torch.float32, mode="eager",
                            progress=said_eager.append).run(x)
    runner = TorchCudaRunner(model, device="cpu", dtype=torch.float32, mode="compile",
                             cache_dir=cache_dir, progress=said.append)
    out = runner.run(x)
    again = runner.run(x)
    record = runner.records[tuple(x.shape)]
    folded = weakref.ref(runner._folded)
    runner.close()
    gc.collect()
    np.save(out_prefix + ".npy", out)
    np.save(out_prefix + "-eager.npy", eager)
    with open(out_prefix + ".json", "w") as f:
        json.dump({"mode": record.mode, "cache_file": str(record.cache_file),
                   "cache_loaded": record.cache_loaded, "hits": record.inductor_hits,
                   "misses": record.inductor_misses, "repeat_equal": bool((out == again).all()),
                   "released": folded() is None, "said": said, "said_eager": said_eager}, f)


if __name__ == "__main__":
    compile_worker(sys.argv[1], sys.argv[2])

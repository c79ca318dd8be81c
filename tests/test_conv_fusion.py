"""Convolution epilogues fused into one operation (export/conv_fusion.py), on the CPU: which
patterns are rewritten, bit-identical results (on the CPU the fused operation runs the same
convolution, add and ReLU), the operation under torch.compile, and the torch-cuda runner's
``fuse_epilogues``. cuDNN's fused kernels themselves run only on a GPU
(tests/test_torch_cuda_gpu.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import fx, nn

from helpers_torch_cuda import net_input, stand_in
from tinyfaces_trt.export.batchnorm import fold_batchnorm
from tinyfaces_trt.export.compile_cache import CompileCache
from tinyfaces_trt.export.conv_fusion import fuse_conv_epilogues, fused_count
from tinyfaces_trt.export.torch_cuda import TorchCudaRunner, _Forward

FUSED = torch.ops.tinyfaces.conv2d_add_relu.default


def _folded(model: nn.Module) -> fx.GraphModule:
    return fold_batchnorm(_Forward(model, torch.float32, True)).eval()


def test_every_trunk_convolution_takes_its_relu_and_residual_add(seeded):
    """ResNet-50 up to res4: the stem and two convolutions per bottleneck take their ReLU,
    the third its residual add and ReLU (13 blocks); the downsample convolutions (added to,
    not adding) and the score heads stay; the results are bit-identical on the CPU."""
    folded = _folded(seeded[0])
    before = [(n.op, n.target) for n in folded.graph.nodes]
    fused = fuse_conv_epilogues(folded, torch.zeros(1, 3, 64, 64))
    assert [(n.op, n.target) for n in folded.graph.nodes] == before  # the caller's graph
    assert fused_count(fused) == (1 + 13 * 2 + 13, 13) and fused_count(folded) == (0, 0)
    convs = sorted(str(n.target) for n in fused.graph.nodes if n.op == "call_module"
                   and isinstance(fused.get_submodule(str(n.target)), nn.Conv2d))
    assert convs == ["net.model.layer1.0.downsample.0", "net.model.layer2.0.downsample.0",
                     "net.model.layer3.0.downsample.0", "net.score_res3", "net.score_res4"]
    assert not any(n.op == "call_module" and isinstance(fused.get_submodule(str(n.target)),
                                                        nn.ReLU) for n in fused.graph.nodes)
    x = torch.from_numpy(net_input((2, 3, 40, 56)))
    with torch.inference_mode():
        assert torch.equal(fused(x), folded(x))


class _Patterns(nn.Module):
    """What may and may not be fused: a result used twice, a sum used twice, the convolution
    as the add's second operand, two convolutions added, a reflect-padded convolution, an
    added tensor that broadcasts."""

    def __init__(self) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        self.convs = nn.ModuleList(nn.Conv2d(4, 4, 3, padding=1) for _ in range(7))
        self.reflect = nn.Conv2d(4, 4, 3, padding=1, padding_mode="reflect")
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=gen) * 0.3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.convs
        used_twice = c[0](x)
        a = torch.relu(used_twice) + used_twice              # not fused: conv used twice
        total = c[1](a) + x
        b = torch.relu(total) * total                        # not fused: sum used twice
        d = torch.relu(x + c[2](b))                          # fused, z = x
        e = nn.functional.relu(c[3](d) + c[4](x))            # fused, one conv is z
        f = self.reflect(e).relu()                           # not fused: reflect padding
        g = torch.relu(c[6](x) + x.mean((2, 3), keepdim=True))  # not fused: broadcasts
        return c[5](f).relu_() + g                           # fused (in-place relu)


def test_only_a_convolution_and_sum_nothing_else_reads_are_fused():
    model = _Patterns().eval()
    gm = fx.symbolic_trace(model)
    x = torch.randn(2, 4, 9, 7, generator=torch.Generator().manual_seed(1))
    fused = fuse_conv_epilogues(gm, x)
    assert fused_count(fused) == (3, 2)
    calls = [n for n in fused.graph.nodes if n.target == FUSED]
    assert calls[0].args[2].name == "x"  # the add's first operand, the conv being the second
    with torch.inference_mode():
        assert torch.equal(fused(x), model(x))


def test_the_fused_operation_compiles_and_its_fake_matches_it():
    """torch.compile traces through the operation (its fake gives shape and layout; Inductor
    calls it as an external kernel), the results equal eager."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    conv = nn.Conv2d(3, 8, 3, stride=2, padding=1).eval()
    x = torch.randn(1, 3, 11, 14).to(memory_format=torch.channels_last)
    z = torch.randn(1, 8, 6, 7)
    args = ([2, 2], [1, 1], [1, 1], 1)
    real = FUSED(x, conv.weight, z, conv.bias, *args)
    with FakeTensorMode() as mode:
        fake = FUSED(mode.from_tensor(x), mode.from_tensor(conv.weight), mode.from_tensor(z),
                     mode.from_tensor(conv.bias), *args)
    assert (fake.shape, fake.stride(), fake.dtype) == (real.shape, real.stride(), real.dtype)
    assert real.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(real, torch.relu(conv(x) + z))
    fused = fuse_conv_epilogues(_folded(stand_in()), torch.zeros(1, 3, 32, 48))
    compiled = torch.compile(fused, fullgraph=True)
    x = torch.from_numpy(net_input())
    with torch.inference_mode():
        np.testing.assert_allclose(compiled(x), fused(x), atol=1e-5, rtol=0)


def test_the_runner_fuses_where_asked(seeded, tmp_path):
    """Modes eager (and graphs) run the folded, fused network; compile compiles it into a cache
    of its own; AOTInductor packages cannot hold the operation."""
    model = seeded[0]
    x = net_input((1, 3, 40, 56))
    fused = TorchCudaRunner(model, device="cpu", dtype=torch.float32, mode="eager",
                            fuse_epilogues=True)
    plain = TorchCudaRunner(model, device="cpu", dtype=torch.float32, mode="eager")
    np.testing.assert_allclose(fused.run(x), plain.run(x), atol=1e-4, rtol=1e-5)
    assert fused_count(fused._eager_forward()) == (40, 13)
    caches = [TorchCudaRunner(model, device="cpu", dtype=torch.float32, fuse_epilogues=f,
                              cache_dir=tmp_path)._shape_cache() for f in (False, True)]
    assert all(isinstance(c, CompileCache) for c in caches)
    assert caches[0].folder != caches[1].folder
    with pytest.raises(ValueError, match="fuse_epilogues cannot go with mode 'aoti'"):
        TorchCudaRunner(model, device="cpu", dtype=torch.float32, mode="aoti",
                        fuse_epilogues=True)

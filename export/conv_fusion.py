"""Convolution epilogues fused into cuDNN: ``relu(conv(x))`` and ``relu(conv(x) + z)``.

After BatchNorm folding (:mod:`.batchnorm`) the ResNet trunk is convolutions with a bias,
residual adds and ReLUs. Eager torch runs each add and ReLU as a kernel of its own, and
Inductor fuses them into one Triton kernel after each cuDNN convolution (at least 4.5 ms of
the 20 ms 1080p pyramid on an H200, 2026-12-04: a pass over the activations each). cuDNN can
apply bias, residual and ReLU inside the convolution (``torch.cudnn_convolution_relu`` /
``torch.cudnn_convolution_add_relu``, cuDNN's runtime fusion), so the activations are
written once, as TensorRT does.

:func:`fuse_conv_epilogues` rewrites an FX graph so that each such pattern calls
``torch.ops.tinyfaces.conv2d_add_relu``: on a CUDA tensor cuDNN's fused convolution, elsewhere
(the CPU) the same convolution, add and ReLU as the unfused graph, in the same order (the
CPU results are bit-identical, which the tests check). The op has a fake (meta)
implementation, so ``torch.compile`` traces through it (Inductor calls it as an external
kernel); AOTInductor packages cannot hold it (it is a Python op).

Numerics on the GPU: cuDNN adds ``z`` before the bias (``relu(conv + z + bias)``) and may pick
other convolution algorithms than the unfused graph: the fp16 / fp32 parity tolerances apply.
"""

from __future__ import annotations

import copy
import logging
import operator
from collections.abc import Sequence

import torch
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp, TensorMetadata
from torch.nn import functional as F

from tinyfaces_trt.core.errors import first_line

_logger = logging.getLogger(__name__)

#: The fused operation's qualified name (``torch.ops.tinyfaces.conv2d_add_relu``).
OP_NAME = "tinyfaces::conv2d_add_relu"


def _memory_format(x: torch.Tensor, weight: torch.Tensor) -> torch.memory_format:
    """The layout the output takes: channels_last when the input or the weight has it (as
    cuDNN's convolutions suggest), else contiguous; the fake and real results agree on it."""
    channels_last = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous() \
        or weight.is_contiguous(memory_format=torch.channels_last) and not weight.is_contiguous()
    return torch.channels_last if channels_last else torch.contiguous_format


@torch.library.custom_op(OP_NAME, mutates_args=())
def conv2d_add_relu(x: torch.Tensor, weight: torch.Tensor, z: torch.Tensor | None,
                    bias: torch.Tensor | None, stride: Sequence[int], padding: Sequence[int],
                    dilation: Sequence[int], groups: int) -> torch.Tensor:
    """``relu(conv2d(x, weight, bias) + z)`` (``z`` None: no add); cuDNN's fused convolution
    on CUDA tensors where cuDNN is enabled."""
    fmt = _memory_format(x, weight)
    same = z is None or (tuple(z.shape) == _output_shape(x, weight, stride, padding, dilation)
                         and z.dtype == x.dtype)  # (else torch's broadcasting rules, unfused)
    if same and x.is_cuda and torch.backends.cudnn.is_available() \
            and torch.backends.cudnn.enabled and _shape_key(x, weight) not in _UNFUSED:
        try:
            if z is None:
                y = torch.cudnn_convolution_relu(x, weight, bias, stride, padding, dilation,
                                                 groups)
            else:
                y = torch.cudnn_convolution_add_relu(x, weight, z.contiguous(memory_format=fmt),
                                                     1.0, bias, stride, padding, dilation, groups)
            return y.contiguous(memory_format=fmt)
        except RuntimeError as exc:  # a configuration cuDNN's runtime fusion does not take
            _unfused_once(x, weight, exc)
    y = F.conv2d(x, weight, bias, stride, padding, dilation, groups)
    if z is not None:
        y = y + z
    return torch.relu(y).contiguous(memory_format=fmt)


#: Convolution shapes cuDNN refused to fuse: run unfused from then on (not tried again).
_UNFUSED: set[tuple[object, ...]] = set()


def unfused_shapes() -> int:
    """How many convolution shapes cuDNN refused to fuse in this process (they run unfused)."""
    return len(_UNFUSED)


def _shape_key(x: torch.Tensor, weight: torch.Tensor) -> tuple[object, ...]:
    return tuple(x.shape), tuple(weight.shape), x.dtype, x.device


def _unfused_once(x: torch.Tensor, weight: torch.Tensor, exc: RuntimeError) -> None:
    """Logs that cuDNN refused to fuse this convolution shape, which then runs unfused."""
    key = _shape_key(x, weight)
    if key not in _UNFUSED:
        _UNFUSED.add(key)
        _logger.warning("cuDNN did not fuse the convolution of input %s, weight %s (%s): "
                        "running it unfused", tuple(x.shape), tuple(weight.shape),
                        first_line(exc))


def _output_shape(x: torch.Tensor, weight: torch.Tensor, stride: Sequence[int],
                  padding: Sequence[int], dilation: Sequence[int]) -> tuple[int, ...]:
    """The convolution's (N, C_out, H', W')."""
    n, _, h, w = x.shape
    size = [(d + 2 * p - q * (k - 1) - 1) // s + 1
            for d, p, q, k, s in zip((h, w), padding, dilation, weight.shape[2:], stride)]
    return (n, weight.shape[0], *size)


@conv2d_add_relu.register_fake
def _conv2d_add_relu_fake(x: torch.Tensor, weight: torch.Tensor, z: torch.Tensor | None,
                          bias: torch.Tensor | None, stride: Sequence[int],
                          padding: Sequence[int], dilation: Sequence[int],
                          groups: int) -> torch.Tensor:
    out = x.new_empty(_output_shape(x, weight, stride, padding, dilation))
    return out.contiguous(memory_format=_memory_format(x, weight))


def _is_module(gm: fx.GraphModule, node: fx.Node, kind: type) -> bool:
    return node.op == "call_module" and isinstance(gm.get_submodule(str(node.target)), kind)


def _is_relu(gm: fx.GraphModule, node: fx.Node) -> bool:
    return (_is_module(gm, node, nn.ReLU)
            or node.op == "call_function" and node.target in (torch.relu, F.relu, torch.relu_)
            or node.op == "call_method" and node.target in ("relu", "relu_"))


def _is_add(node: fx.Node) -> bool:
    return (node.op == "call_function" and node.target in (operator.add, operator.iadd, torch.add)
            and len(node.args) == 2 and not node.kwargs)


def _fusable_conv(gm: fx.GraphModule, node: object) -> nn.Conv2d | None:
    """The zero-padded 2-D convolution module ``node`` calls, where its output has no other
    user; else None."""
    if not isinstance(node, fx.Node) or not _is_module(gm, node, nn.Conv2d) \
            or len(node.users) != 1:
        return None
    conv = gm.get_submodule(str(node.target))
    if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
        return None
    return conv


def _same_tensor_type(conv: fx.Node, z: object) -> bool:
    """Whether ``z`` is a tensor of the convolution's shape and dtype (as propagated)."""
    if not isinstance(z, fx.Node):
        return False
    a, b = conv.meta.get("tensor_meta"), z.meta.get("tensor_meta")
    return isinstance(a, TensorMetadata) and isinstance(b, TensorMetadata) \
        and a.shape == b.shape and a.dtype == b.dtype


def _fusable(gm: fx.GraphModule, relu: fx.Node
             ) -> tuple[fx.Node, nn.Conv2d, fx.Node | None, fx.Node | None] | None:
    """(the convolution's node, its module, the add's node, the added tensor) that the ReLU
    ``relu`` ends, the last two None where it takes the convolution alone; None where the
    pattern is not there or something else reads an intermediate result."""
    src = relu.args[0] if relu.args else relu.kwargs.get("input")
    conv = _fusable_conv(gm, src)
    if conv is not None:
        return src, conv, None, None
    if isinstance(src, fx.Node) and _is_add(src) and len(src.users) == 1:
        for a, b in (src.args, src.args[::-1]):
            conv = _fusable_conv(gm, a)
            if conv is not None and _same_tensor_type(a, b):
                return a, conv, src, b
    return None


def fuse_conv_epilogues(gm: fx.GraphModule, example: torch.Tensor) -> fx.GraphModule:
    """A copy of ``gm`` (sharing its parameters) in which every ``relu(conv(x))`` and
    ``relu(conv(x) + z)`` whose intermediate results have no other user calls
    ``torch.ops.tinyfaces.conv2d_add_relu`` instead (see the module docstring); an add only
    where ``z`` has the convolution's shape and dtype when ``gm`` runs on ``example`` (no
    broadcasting or type promotion inside the fused operation)."""
    out = fx.GraphModule(gm, copy.deepcopy(gm.graph))  # the caller's graph is left alone
    with torch.no_grad():
        ShapeProp(out).propagate(example)
    graph = out.graph
    for relu in list(graph.nodes):
        match = _fusable(out, relu) if _is_relu(out, relu) else None
        if match is None:
            continue
        conv_node, conv, add, z = match
        with graph.inserting_before(relu):
            weight = graph.get_attr(f"{conv_node.target}.weight")
            bias = graph.get_attr(f"{conv_node.target}.bias") if conv.bias is not None else None
            fused = graph.call_function(torch.ops.tinyfaces.conv2d_add_relu.default, (
                conv_node.args[0], weight, z, bias, list(conv.stride), list(conv.padding),
                list(conv.dilation), conv.groups))
        fused.meta = dict(relu.meta)  # its result is the ReLU's (a later add checks it)
        relu.replace_all_uses_with(fused)
        for node in (relu, add, conv_node):  # each one's only user erased before it
            if node is not None:
                graph.erase_node(node)
    graph.lint()
    out.recompile()
    return out


def fused_count(gm: fx.GraphModule) -> tuple[int, int]:
    """(convolutions with a fused ReLU, of which with a fused residual add) in ``gm``."""
    fused = torch.ops.tinyfaces.conv2d_add_relu.default
    calls = [n for n in gm.graph.nodes if n.op == "call_function" and n.target == fused]
    return len(calls), sum(1 for n in calls if n.args[2] is not None)


__all__ = ["OP_NAME", "conv2d_add_relu", "fuse_conv_epilogues", "fused_count", "unfused_shapes"]

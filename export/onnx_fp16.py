"""float32 -> float16 conversion of an ONNX graph that keeps float32 inputs and outputs.

``onnxconverter_common`` is not a dependency, and this network needs little: every float
tensor (initializers, ``Constant`` values, ``Cast`` targets) becomes float16, a ``Cast`` to
float16 follows each float32 graph input and a ``Cast`` back to float32 precedes each float32
graph output. Integer tensors (the shape arithmetic of the dynamic crop) are untouched.
Afterwards strict type inference checks the graph, so an op that would need float32 on some
input fails here with a clear message rather than in a runtime.

The network's weights are far inside float16 range; values beyond it would become inf, so
they are refused rather than silently clipped.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from tinyfaces_trt.core.errors import TinyFacesError

_FP16_MAX = float(np.finfo(np.float16).max)


def _to_fp16(tensor: TensorProto) -> TensorProto:
    values = numpy_helper.to_array(tensor)
    finite = values[np.isfinite(values)]
    if finite.size and np.abs(finite).max() > _FP16_MAX:
        raise TinyFacesError(f"fp16 conversion: tensor {tensor.name!r} has values up to "
                             f"{np.abs(finite).max():.4g}, beyond float16's {_FP16_MAX:.0f}")
    return numpy_helper.from_array(values.astype(np.float16), tensor.name)


def _rename_uses(graph: onnx.GraphProto, old: str, new: str) -> None:
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name == old:
                node.input[i] = new


def convert_to_fp16(model: onnx.ModelProto) -> onnx.ModelProto:
    """A float16 copy of ``model`` whose float32 graph inputs/outputs stay float32.

    Raises:
        TinyFacesError: a weight is outside float16 range, or the converted graph fails
            ONNX strict type/shape inference.
    """
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph

    for i, init in enumerate(graph.initializer):
        if init.data_type == TensorProto.FLOAT:
            graph.initializer[i].CopyFrom(_to_fp16(init))
    for node in graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value" and attr.t.data_type == TensorProto.FLOAT:
                    attr.t.CopyFrom(_to_fp16(attr.t))
                elif attr.name in ("value_float", "value_floats"):
                    raise TinyFacesError(f"fp16 conversion: Constant {node.name!r} uses {attr.name}, "
                                         f"which has no float16 form")
        elif node.op_type == "Cast":
            for attr in node.attribute:
                if attr.name == "to" and attr.i == TensorProto.FLOAT:
                    attr.i = TensorProto.FLOAT16

    head, tail = [], []
    for inp in graph.input:
        if inp.type.tensor_type.elem_type == TensorProto.FLOAT:
            inner = f"{inp.name}__fp16"
            _rename_uses(graph, inp.name, inner)
            head.append(helper.make_node("Cast", [inp.name], [inner], name=f"{inp.name}__to_fp16",
                                         to=TensorProto.FLOAT16))
    for outp in graph.output:
        if outp.type.tensor_type.elem_type == TensorProto.FLOAT:
            inner = f"{outp.name}__fp16"
            for node in graph.node:
                for i, name in enumerate(node.output):
                    if name == outp.name:
                        node.output[i] = inner
            _rename_uses(graph, outp.name, inner)
            tail.append(helper.make_node("Cast", [inner], [outp.name], name=f"{outp.name}__to_fp32",
                                         to=TensorProto.FLOAT))
    nodes = head + list(graph.node) + tail
    del graph.node[:]
    graph.node.extend(nodes)
    del graph.value_info[:]

    try:
        return onnx.shape_inference.infer_shapes(out, check_type=True, strict_mode=True, data_prop=True)
    except onnx.shape_inference.InferenceError as exc:
        raise TinyFacesError(f"fp16 conversion produced an invalid graph: {exc}") from exc

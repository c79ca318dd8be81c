"""torch -> ONNX: export, check, optional simplification, and a numeric check against torch.

The graph has one input ``image`` (1, 3, height, width) float32 with dynamic height/width and
one output ``scores`` (1, 125, score_height, score_width) float32. The torch.export-based
exporter (torch's default) is used; should it fail on some torch version, the TorchScript
exporter is tried once. BatchNorm is folded into the convolutions before the export
(:func:`~tinyfaces_trt.export.batchnorm.fold_batchnorm`), which the exporter's optimiser did
after it before: the graph is the same (115 nodes for ResNet-50, 234 for ResNet-101), and
torch.export traces a third fewer operators. Measured here (torch 2.13, 2 cores, seeded
ResNet-101, opset 17): the first export of a process 25.9 -> 18.0 s (medians of 3 processes
each, alternating), the next one in the same process 18.9 -> 13.0 s; ONNX Runtime vs the
unfolded torch model max|d| / max|ref| 1.8e-5 (1.9e-5 before).

``--simplify`` (onnxslim, else onnxsim, whichever imports) is optional and off by default:
measured here (torch 2.13 export, opset 17, onnxslim 0.1.98, ONNX Runtime 1.32 CPU, 2 threads,
480x640 input, median of 5 runs on a shared machine) it changed nothing that matters:
ResNet-50 115 -> 115 nodes (45 Conv, 40 Relu, 18 Add, 1 MaxPool, 1 ConvTranspose, 10 nodes of
shape arithmetic for the dynamic crop), 0.92 vs 1.00 s; ResNet-101 234 -> 234 nodes, 1.66 vs
1.55 s; outputs bit-identical. BatchNorm is folded before the export, the exporter's
optimiser folds constants, and TensorRT fuses on its own.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import logging
import warnings
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from tinyfaces_trt.core.config import NUM_CHANNELS, Normalization
from tinyfaces_trt.core.errors import (BackendUnavailableError, TinyFacesError, first_line,
                                       reraise_interrupt)
from tinyfaces_trt.core.manifest import INPUT_NAME, OUTPUT_NAME
from tinyfaces_trt.core.optional import MIN_ONNXRUNTIME_VERSION, import_optional
from tinyfaces_trt.export.batchnorm import fold_batchnorm
from tinyfaces_trt.export.opset import DEFAULT_OPSET, SUPPORTED

#: Sample input size used to trace the network; odd sizes so no dimension is specialised.
TRACE_SIZE = (67, 91)
#: Sizes of the torch-vs-ONNX Runtime check run after each export (odd on purpose).
VERIFY_SIZES: tuple[tuple[int, int], ...] = ((67, 91), (45, 33))
#: Largest accepted ``max|onnx - torch| / max(1, max|torch|)`` of the post-export check.
#: fp32: observed ~3e-6 on the seeded ResNet-50; the bound only catches broken graphs.
#: fp16 (weights and input rounded to float16): observed ~3e-3 in ONNX Runtime CPU, which
#: computes in float32 after casting; full float16 compute (torch half) showed ~5e-3.
VERIFY_RTOL = {"fp32": 1e-3, "fp16": 2e-2}

Log = Callable[[str], None]


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[io.StringIO]:
    """Silences the exporter's stdout chatter, warnings and INFO/WARNING logs."""
    buf = io.StringIO()
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "onnxscript", "torch.export", "torch._dynamo")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(buf), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield buf
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _export_dynamo(model: nn.Module, sample: torch.Tensor, opset: int) -> onnx.ModelProto:
    batch = torch.export.Dim("batch", min=1)
    height = torch.export.Dim("height", min=1)
    width = torch.export.Dim("width", min=1)
    program = torch.onnx.export(model, (sample,), input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                                opset_version=opset, dynamo=True, external_data=False, verbose=False,
                                dynamic_shapes=({0: batch, 2: height, 3: width},))
    return program.model_proto


def _export_torchscript(model: nn.Module, sample: torch.Tensor, opset: int) -> onnx.ModelProto:
    buf = io.BytesIO()
    torch.onnx.export(model, (sample,), buf, input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                      opset_version=opset, dynamo=False, do_constant_folding=True,
                      dynamic_axes={INPUT_NAME: {0: "batch", 2: "height", 3: "width"},
                                    OUTPUT_NAME: {0: "batch", 2: "score_height", 3: "score_width"}})
    return onnx.load_from_string(buf.getvalue())


def _name_dims(proto: onnx.ModelProto) -> None:
    """Gives the dynamic dimensions readable names (the exporter writes formulas)."""
    for value, names in ((proto.graph.input[0], ("batch", None, "height", "width")),
                         (proto.graph.output[0], ("batch", None, "score_height", "score_width"))):
        dims = value.type.tensor_type.shape.dim
        for dim, name in zip(dims, names):
            if name is None:
                continue
            if not dim.HasField("dim_value"):
                dim.dim_param = name


def onnx_opset(proto: onnx.ModelProto) -> int | None:
    """The default-domain (``ai.onnx``) opset ``proto`` imports, or None when it imports
    none or several."""
    versions = {o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")}
    return versions.pop() if len(versions) == 1 else None


def read_onnx_opset(path: str | Path) -> int | None:
    """:func:`onnx_opset` of the model saved at ``path`` (read back from the file)."""
    return onnx_opset(onnx.load(str(path), load_external_data=False))


def check_opset(proto: onnx.ModelProto, opset: int, what: str = "the exported graph") -> int:
    """Returns ``opset`` when ``proto`` imports exactly it; raises :class:`TinyFacesError`
    otherwise (torch's exporter falls back to its own opset, silently, when it cannot
    convert the graph to the requested one)."""
    got = onnx_opset(proto)
    if got != opset:
        raise TinyFacesError(f"{what} has ONNX opset {got if got is not None else 'unknown'}, not the "
                             f"requested {opset}: torch {torch.__version__}'s exporter could not "
                             f"convert this network to opset {opset}; {SUPPORTED}")
    return opset


def torch_to_onnx(model: nn.Module, opset: int = DEFAULT_OPSET, log: Log | None = None) -> onnx.ModelProto:
    """Exports ``model`` (eval mode, CPU float32) to an in-memory ONNX model of opset ``opset``.

    Raises:
        TinyFacesError: both exporters failed (the message carries the first error), or the
            exporter wrote another opset than ``opset`` (:func:`check_opset`).
    """
    model = model.eval()
    try:
        model = fold_batchnorm(model)
    except Exception as exc:  # fx cannot trace every module; the exporter folds it then
        reraise_interrupt(exc)
        if log:
            log(f"  BatchNorm not folded before the export ({type(exc).__name__}: "
                f"{first_line(exc)}); exporting the model as it is")
    # batch 2: torch.export specialises a dimension traced at size 1
    sample = torch.from_numpy(np.random.default_rng(0).standard_normal((2, 3, *TRACE_SIZE),
                                                                       dtype=np.float32))
    try:
        with _quiet_exporter(), torch.no_grad():
            proto = _export_dynamo(model, sample, opset)
    except Exception as first:  # the exporter raises many unrelated types
        reraise_interrupt(first)
        if log:
            log(f"  torch.export-based exporter failed ({type(first).__name__}: "
                f"{str(first).splitlines()[0] if str(first) else ''}); trying the TorchScript exporter")
        try:
            with _quiet_exporter(), torch.no_grad():
                proto = _export_torchscript(model, sample, opset)
        except Exception as second:
            reraise_interrupt(second)
            raise TinyFacesError(f"ONNX export failed with both torch exporters: {first!r}; {second!r}") from second
    check_opset(proto, opset)
    _name_dims(proto)
    proto.producer_name = "tinyfaces-trt"
    return proto


def check_onnx(proto: onnx.ModelProto) -> onnx.ModelProto:
    """``onnx.checker`` (full) plus strict shape inference; checks the I/O contract.

    Returns the model with inferred value_info. Raises :class:`TinyFacesError` when the
    graph is invalid or its input/output are not ``image`` (N,3,H,W) / ``scores`` (N,125,h,w)
    float32 with dynamic batch and spatial dimensions.
    """
    try:
        onnx.checker.check_model(proto, full_check=True)
        inferred = onnx.shape_inference.infer_shapes(proto, check_type=True, strict_mode=True, data_prop=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise TinyFacesError(f"exported ONNX graph is invalid: {exc}") from exc
    graph = inferred.graph
    if [i.name for i in graph.input] != [INPUT_NAME] or [o.name for o in graph.output] != [OUTPUT_NAME]:
        raise TinyFacesError(f"exported graph has inputs {[i.name for i in graph.input]} and outputs "
                             f"{[o.name for o in graph.output]}; expected [{INPUT_NAME!r}] and [{OUTPUT_NAME!r}]")
    for value, channels in ((graph.input[0], 3), (graph.output[0], NUM_CHANNELS)):
        tt = value.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else d.dim_param for d in tt.shape.dim]
        if tt.elem_type != onnx.TensorProto.FLOAT or len(dims) != 4 or dims[1] != channels \
                or any(isinstance(d, int) for d in (dims[0], dims[2], dims[3])):
            raise TinyFacesError(f"exported {value.name!r} is {onnx.TensorProto.DataType.Name(tt.elem_type)} "
                                 f"{dims}; expected FLOAT [dynamic, {channels}, dynamic, dynamic]")
    return inferred


#: The ONNX simplifiers ``--simplify`` uses, the first that imports; and what is said without.
SIMPLIFIERS = ("onnxslim", "onnxsim")
NO_SIMPLIFIER = ("--simplify needs onnxslim or onnxsim; install one (pip install onnxslim) or "
                 "leave out --simplify")


def simplify_onnx(proto: onnx.ModelProto) -> tuple[onnx.ModelProto, str]:
    """Simplifies with onnxslim, else onnxsim; returns ``(model, "tool version")``.

    Raises:
        BackendUnavailableError: neither package imports.
        TinyFacesError: the simplifier failed.
    """
    for name in SIMPLIFIERS:
        try:
            mod = importlib.import_module(name)
        except ImportError:
            continue
        tool = f"{name} {getattr(mod, '__version__', '?')}"
        try:
            with _quiet_exporter():
                if name == "onnxslim":
                    out = mod.slim(proto)
                else:
                    out, ok = mod.simplify(proto)
                    if not ok:
                        raise RuntimeError("onnxsim could not validate the simplified model")
        except Exception as exc:
            raise TinyFacesError(f"{tool} failed to simplify the model: {exc!r}") from exc
        return out, tool
    raise BackendUnavailableError(NO_SIMPLIFIER)


def onnx_vs_torch(model: nn.Module, onnx_path: str | Path,
                  sizes: Iterable[tuple[int, int]] = VERIFY_SIZES, seed: int = 0,
                  normalization: Normalization | None = None) -> tuple[float, float]:
    """Runs ONNX Runtime (CPU) and torch on seeded inputs of each (height, width): images of
    uniform random pixels put through ``normalization`` (the network's own input range: the
    matconvnet variant's raw pixels less the average image reach +-130, where float16
    activations overflow that unit normal inputs never show), or, without one, unit normal
    values.

    Returns ``(max_abs_error, max_abs_reference)`` over all sizes.

    Raises:
        BackendUnavailableError: onnxruntime is not installed.
        TinyFacesError: output shapes differ.
    """
    ort = import_optional("onnxruntime", purpose="checking the ONNX model against torch",
                          min_version=MIN_ONNXRUNTIME_VERSION,
                          extra_hint="pip install 'tinyfaces-trt[export]'")
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(seed)
    if normalization is not None:
        scale, bias = (v[:, None, None] for v in normalization.scale_and_bias())
    err = ref_max = 0.0
    for h, w in sizes:
        if normalization is None:
            x = rng.standard_normal((1, 3, h, w), dtype=np.float32)
        else:
            x = rng.integers(0, 256, (1, 3, h, w)).astype(np.float32) * scale + bias
        got = session.run([OUTPUT_NAME], {INPUT_NAME: x})[0]
        with torch.no_grad():
            ref = model(torch.from_numpy(x)).numpy()
        if got.shape != ref.shape or got.dtype != np.float32:
            raise TinyFacesError(f"{onnx_path}: output {got.dtype} {got.shape} for a {h}x{w} input, "
                                 f"torch gives float32 {ref.shape}")
        # NaN anywhere makes the error NaN (never dropped: max(0.0, nan) would be 0.0)
        diff = float(np.abs(got.astype(np.float64) - ref).max())
        err = diff if not np.isfinite(diff) or not np.isfinite(err) else max(err, diff)
        peak = float(np.abs(ref).max())
        ref_max = peak if not np.isfinite(peak) else max(ref_max, peak)
    return err, ref_max


def verify_against_torch(model: nn.Module, onnx_path: str | Path, precision: str,
                         normalization: Normalization | None = None) -> float:
    """:func:`onnx_vs_torch` (on inputs of ``normalization``, the network's config's) with the
    :data:`VERIFY_RTOL` bound; returns the max abs error.

    Raises:
        TinyFacesError: the error exceeds the bound (the export is wrong), or either output
            holds NaN or infinity (a NaN error is a failure, never a pass).
    """
    err, ref_max = onnx_vs_torch(model, onnx_path, normalization=normalization)
    if not np.isfinite(ref_max) or not np.isfinite(err):
        raise TinyFacesError(f"{onnx_path}: the network's output holds NaN or infinite values "
                             f"(torch max |output| {ref_max:.3g}, ONNX Runtime vs torch max error "
                             f"{err:.3g}); the weights or the export are broken")
    bound = VERIFY_RTOL[precision] * max(1.0, ref_max)
    if not err <= bound:
        raise TinyFacesError(f"{onnx_path}: ONNX Runtime differs from torch by {err:.3g} "
                             f"(allowed {bound:.3g} for {precision}); the export is broken")
    return err

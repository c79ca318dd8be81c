"""Weight loaders: tiny-faces-pytorch checkpoints and the authors' MatConvNet ``hr_res101.mat``.

``load_weights(path)`` looks at the file's content (not its name) and returns the loaded
:class:`~.model.TinyFacesNet` (eval mode) with its :class:`DetectorConfig`:

* A ``torch.save`` file (read with ``weights_only=True``) holding ``{"model": state_dict}`` as
  written by the port's ``main.py`` (other entries such as ``optimizer`` are ignored), or a bare
  state_dict. Keys must match :class:`TinyFacesNet` exactly, but for the torchvision classifier
  ``model.fc`` that the port's model keeps and never runs (:data:`UNUSED_PORT_KEYS`, left
  out). Variant ``"pytorch"`` by default;
  ``variant="matconvnet"`` is accepted with a logged WARNING (the state_dict cannot show it).
* A MATLAB v5/v7 ``.mat`` with a ``net`` variable saved by ``dagnn.DagNN.saveobj`` (fields
  ``vars``, ``params``, ``layers``, ``meta``; ``params`` entries ``(name, value, ...)``), as
  the authors' ``hr_res101.mat``. Variant ``"matconvnet"``; templates from
  ``net.meta.clusters``, normalisation from ``net.meta.normalization.averageImage``.
  A file named ``.mat`` that is not a MAT-file, or a MAT-file without such a ``net``, is a
  :class:`WeightsError` saying so.

MatConvNet -> torch layout (see :func:`matconvnet_param_map`):

* ``<layer>_filter``: MatConvNet convolution filters are H x W x Cin x Cout; torch Conv2d wants
  (Cout, Cin, H, W): ``transpose(3, 2, 0, 1)``. Both cross-correlate (no flip).
* ``score4f``: ``vl_nnconvt`` filters are H x W x K x D, D = input channels, K = output channels
  (the transposed convolution is the adjoint of ``vl_nnconv`` with that same bank, which maps
  K -> D). torch ConvTranspose2d wants (Cin, Cout, H, W) = (D, K, H, W): the same
  ``transpose(3, 2, 0, 1)``.
* BatchNorm ``bn*_mult`` / ``_bias`` -> weight / bias; ``_moments`` (N x 2, [mean, sigma]) ->
  running_mean = mean, running_var = sigma^2 - eps. MatConvNet's test-mode BN divides by sigma
  itself, and torch divides by sqrt(running_var + eps), which is sigma again for any eps.
* ``<layer>_bias`` of the two 1x1 score convolutions (1 x 125) -> bias.

ResNet-101 block names ``res2a..c``, ``res3a, res3b1..b3``, ``res4a, res4b1..b22`` map onto
``layer1.0-2``, ``layer2.0-3``, ``layer3.0-22``; the Caffe ResNet-50 names (``res3a..d``,
``res4a..f``) are accepted too.
"""

from __future__ import annotations

import json
import logging
import re
import shlex
import string
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tinyfaces_trt.core.config import VARIANTS, DetectorConfig, Normalization
from tinyfaces_trt.core.errors import ConfigError, WeightsError, first_line
from tinyfaces_trt.core.hashing import not_a_file

from tinyfaces_trt.export.model import TinyFacesNet, build_model
from tinyfaces_trt.export.resnet import BLOCKS_PER_STAGE

_MAT_MAGIC = b"MATLAB"
_EXPECTED_TORCH = ("a torch.save file holding {'model': state_dict} (tiny-faces-pytorch) "
                   "or a bare state_dict, readable with torch.load(weights_only=True)")
_EXPECTED_MAT = ("a MatConvNet DagNN: a MATLAB v5/v7 .mat file whose variable 'net' is a struct "
                 "with fields params, layers and meta, as dagnn.DagNN.saveobj writes it (the "
                 "authors' hr_res101.mat); or a tiny-faces-pytorch .pth checkpoint")
_DAGNN_FIELDS = ("params", "layers", "meta")
_MAX_LISTED = 8

log = logging.getLogger(__name__)


def load_weights(path: str | Path, depth: int | None = None,
                 variant: str | None = None) -> tuple[TinyFacesNet, DetectorConfig]:
    """Loads a checkpoint of either kind (decided by content) into a new TinyFacesNet.

    Args:
        path: the checkpoint file.
        depth: 50 or 101; inferred from the file when None, checked when given.
        variant: network variant; defaults to ``"pytorch"`` for torch checkpoints and must be
            ``"matconvnet"`` (or None) for ``.mat`` files. ``"matconvnet"`` with a torch
            checkpoint is allowed but logs :func:`variant_override_warning` (the state_dict
            cannot show which variant it was trained as).

    Returns:
        ``(model, config)``: the network in eval mode on CPU, float32, and its detector config.

    Raises:
        WeightsError: missing/unreadable/corrupt file, or keys/shapes that do not match.
    """
    path = Path(path)
    if (problem := not_a_file(path, "weights file")) is not None:
        raise WeightsError(problem)
    if path.stat().st_size == 0:  # torch.load says only "EOFError"
        expected = _EXPECTED_MAT if path.suffix.lower() == ".mat" else _EXPECTED_TORCH
        raise WeightsError(f"{path}: the file is empty (0 bytes); expected {expected}")
    with open(path, "rb") as f:
        head = f.read(len(_MAT_MAGIC))
    if head == _MAT_MAGIC:
        return load_matconvnet_mat(path, depth, variant)
    return load_pytorch_checkpoint(path, depth, variant)


def runnable_variants(path: str | Path) -> tuple[str, ...]:
    """The variants :func:`load_weights` reads the checkpoint at ``path`` as: only
    ``"matconvnet"`` for a MatConvNet ``.mat`` (by content), every variant for a torch one."""
    with open(path, "rb") as f:
        return ("matconvnet",) if f.read(len(_MAT_MAGIC)) == _MAT_MAGIC else tuple(VARIANTS)


def load_model(weights: str | Path | None, depth: int | None = None, variant: str | None = None,
               seed: int = 0) -> tuple[TinyFacesNet, DetectorConfig]:
    """``(model, config)`` of a checkpoint (:func:`load_weights`; ``seed`` unused), or with
    ``weights=None`` of the network with seeded RANDOM weights (``build_model``; depth 101 and
    variant ``"pytorch"`` unless given)."""
    if weights is None:
        model = build_model(depth=depth or 101, variant=variant or "pytorch", seed=seed)
        return model, model.detector_config()
    return load_weights(weights, depth=depth, variant=variant)


# ------------------------------------------------------------------------------------------
# tiny-faces-pytorch checkpoints
# ------------------------------------------------------------------------------------------

def load_pytorch_checkpoint(path: str | Path, depth: int | None = None,
                            variant: str | None = None) -> tuple[TinyFacesNet, DetectorConfig]:
    """Loads a ``{"model": state_dict}`` (or bare state_dict) torch checkpoint."""
    try:
        with warnings.catch_warnings():  # a plain pickle's file: the error says what it is
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises RuntimeError, UnpicklingError, EOFError, ...
        if Path(path).suffix.lower() == ".mat":  # named as a MATLAB file: say what it lacks
            raise WeightsError(f"{path}: not a MATLAB .mat file (it does not start with the "
                               f"'MATLAB' header of a v5/v7 MAT-file); expected "
                               f"{_EXPECTED_MAT}") from None
        refused = _unsupported_globals(exc)
        if refused:
            raise WeightsError(_unsafe_checkpoint_message(path, refused)) from None
        raise WeightsError(f"{path}: not a readable PyTorch checkpoint ({type(exc).__name__}: "
                           f"{_first_line(exc)}); expected {_EXPECTED_TORCH}") from None
    state = _extract_state_dict(obj, path)
    model = model_from_state_dict(state, depth, variant or "pytorch", source=str(path))
    if model.variant != "pytorch":
        log.warning(variant_override_warning(path, model.variant))
    return model, model.detector_config()


_UNSUPPORTED_GLOBAL = re.compile(r"Unsupported (?:global: GLOBAL|class) ([A-Za-z_][\w.]*)")


def _unsupported_globals(exc: BaseException) -> list[str]:
    """The Python globals (classes, functions) torch's ``weights_only`` unpickler refused, as
    its message names them; empty for any other failure."""
    return list(dict.fromkeys(m.rstrip(".") for m in _UNSUPPORTED_GLOBAL.findall(str(exc))))


def _unsafe_checkpoint_message(path: str | Path, refused: list[str]) -> str:
    """Why a checkpoint holding Python objects besides tensors is refused, and the one-line
    re-save of its state dict (to run only on a trusted file)."""
    path = Path(path)
    out = path.with_name(f"{path.stem}_state_dict.pth")
    code = (f"import torch; c = torch.load({json.dumps(str(path))}, map_location=\"cpu\", "
            f"weights_only=False); torch.save({{\"model\": c[\"model\"] if \"model\" in c "
            f"else c[\"state_dict\"]}}, "
            f"{json.dumps(str(out))})")
    return (f"{path}: the checkpoint holds Python objects besides tensors, which "
            f"torch.load(weights_only=True) refuses (unsupported global: {', '.join(refused)}), "
            f"e.g. a training script's argparse.Namespace next to the state dict, or a whole "
            f"model saved with torch.save(model); weights are only read that safe way, as "
            f"unpickling anything else can run code from the file. If you trust the file, "
            f"re-save just its state dict: python -c {shlex.quote(code)} (a whole saved model: "
            f"torch.save({{\"model\": c.state_dict()}}, ...) instead, with its class importable), "
            f"then pass {out}")


def variant_override_warning(path: str | Path, variant: str) -> str:
    """The warning logged when a torch checkpoint is loaded as a variant other than "pytorch".

    The two variants' state_dicts have the same keys and shapes (stride placement and input
    normalisation are not weights), so the override cannot be checked, only flagged.
    """
    return (f"WARNING: loading the PyTorch checkpoint {path} as variant {variant!r}: this changes "
            f"the input normalisation (raw 0..255 RGB minus an average image instead of /255 and "
            f"ImageNet mean/std), the trunk's stride placement (Caffe: stride 2 on the first 1x1 "
            f"conv of res3a/res4a, unpadded ceil-mode pool1) and the template policy. A state_dict "
            f"cannot tell the variants apart: this is right only for a checkpoint trained that "
            f"way; tiny-faces-pytorch checkpoints are variant 'pytorch'")


def _extract_state_dict(obj: Any, path: str | Path) -> dict[str, torch.Tensor]:
    if isinstance(obj, Mapping) and isinstance(obj.get("model"), Mapping):
        obj = obj["model"]
    elif isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]
    if isinstance(obj, Mapping) and not obj:
        raise WeightsError(f"{path}: the state dict is empty (no tensors); expected "
                           f"{_EXPECTED_TORCH}")
    if not isinstance(obj, Mapping):
        raise WeightsError(f"{path}: found {type(obj).__name__}, expected {_EXPECTED_TORCH}")
    bad = [str(k) for k, v in obj.items() if not isinstance(k, str) or not torch.is_tensor(v)]
    if bad:
        raise WeightsError(f"{path}: entries that are not named tensors: {_listing(bad)}; "
                           f"expected {_EXPECTED_TORCH}")
    state = dict(obj)
    if all(k.startswith("module.") for k in state):  # saved from nn.DataParallel
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def infer_depth(state: Mapping[str, Any], source: str = "state_dict") -> int:
    """ResNet depth from the number of ``model.layer3`` blocks in a state_dict's keys."""
    blocks = {k.split(".")[2] for k in state if k.startswith("model.layer3.")}
    n = len(blocks)
    for depth, per_stage in BLOCKS_PER_STAGE.items():
        if per_stage[2] == n:
            return depth
    options = " or ".join(f"{b[2]} (ResNet-{d})" for d, b in BLOCKS_PER_STAGE.items())
    raise WeightsError(f"{source}: cannot infer the ResNet depth: {n} model.layer3 blocks "
                       f"found, expected {options}")


#: torchvision's ResNet classifier: tiny-faces-pytorch's DetectionModel deletes only
#: ``layer4``, so its checkpoints keep ``fc``, which the detector never runs.
UNUSED_PORT_KEYS = {"model.fc.weight": (1000, 2048), "model.fc.bias": (1000,)}


#: The detection heads of TinyFacesNet (on top of the ResNet trunk under ``model.``).
HEAD_KEYS = ("score_res3.weight", "score_res3.bias", "score_res4.weight", "score_res4.bias",
             "score4_upsample.weight")


def _check_detector_keys(state: Mapping[str, Any], source: str) -> None:
    """Refuses a state_dict with neither the detector's trunk (``model.layer3.*``) nor any of
    its heads (:data:`HEAD_KEYS`): some other network's, e.g. a torchvision ResNet
    classifier's. A partial detector state_dict gets the precise missing-key report."""
    if any(k.startswith("model.layer3.") for k in state) or any(k in state for k in HEAD_KEYS):
        return
    looks = (" (it looks like a torchvision ResNet classifier's: keys such as layer3.0.conv1.weight "
             "and fc.weight without the 'model.' prefix)"
             if any(k.startswith("layer3.") for k in state) else "")
    raise WeightsError(
        f"{source}: not a Tiny Faces detector checkpoint: it has no score heads "
        f"(score_res3, score_res4, score4_upsample) and no ResNet trunk under 'model.'{looks}; "
        f"its keys: {_listing(list(state))}. Expected TinyFacesNet's state dict: "
        f"model.conv1.weight, model.bn1.*, model.layer1..layer3.* (ResNet-50 or -101), "
        f"{', '.join(HEAD_KEYS)}, in {_EXPECTED_TORCH}")


def model_from_state_dict(state: Mapping[str, torch.Tensor], depth: int | None = None,
                          variant: str = "pytorch", source: str = "state_dict") -> TinyFacesNet:
    """A TinyFacesNet (eval mode) holding ``state`` (the port's unused ``model.fc`` entries,
    :data:`UNUSED_PORT_KEYS`, are left out); any other key/shape mismatch is a WeightsError."""
    state = {k: v for k, v in state.items()
             if not (k in UNUSED_PORT_KEYS and tuple(v.shape) == UNUSED_PORT_KEYS[k])}
    _check_detector_keys(state, source)
    found = infer_depth(state, source)
    if depth is not None and depth != found:
        raise WeightsError(f"{source}: checkpoint is ResNet-{found} "
                           f"({BLOCKS_PER_STAGE[found][2]} layer3 blocks) but depth={depth} "
                           f"was requested")
    model = TinyFacesNet(found, variant)
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [f"{k} {tuple(state[k].shape)} (model expects {tuple(v.shape)})"
              for k, v in expected.items() if k in state and state[k].shape != v.shape]
    # integer or bool weights load as whole numbers (a network of zeros: "no faces"), complex
    # ones lose their imaginary part
    kinds = [f"{k} ({str(state[k].dtype).removeprefix('torch.')})" for k, v in expected.items()
             if k in state and v.is_floating_point() and torch.is_tensor(state[k])
             and not state[k].is_floating_point()]
    problems = [f"{label}: {_listing(items)}" for label, items in
                (("missing keys", missing), ("unexpected keys", unexpected),
                 ("shape mismatches", shapes),
                 ("not floating-point weights", kinds)) if items]
    if problems:
        raise WeightsError(f"{source}: weights do not match TinyFacesNet(depth={found}, "
                           f"variant={variant!r}): " + "; ".join(problems))
    check_finite(state, source)
    model.load_state_dict(dict(state), strict=True)
    return model.eval()


def check_finite(state: Mapping[str, torch.Tensor], source: str = "state_dict") -> None:
    """Refuses weights holding NaN or infinity (a diverged or corrupted checkpoint runs but
    detects nothing, which an anonymiser must never pass off as "no faces").

    Raises:
        WeightsError: naming the tensors with non-finite values and how many.
    """
    bad = []
    for key, value in state.items():
        if torch.is_tensor(value) and value.is_floating_point():
            count = int((~torch.isfinite(value)).sum())
            if count:
                bad.append(f"{key} ({count} of {value.numel()})")
    if bad:
        raise WeightsError(f"{source}: weights hold NaN or infinite values in {_listing(bad)}; "
                           "the checkpoint is corrupt or its training diverged")


# ------------------------------------------------------------------------------------------
# MatConvNet hr_res101.mat
# ------------------------------------------------------------------------------------------

def _block_names(depth: int) -> list[list[str]]:
    """MatConvNet block suffixes per stage, e.g. [['2a', '2b', '2c'], ['3a', '3b1', ...], ...]."""
    names = []
    for stage, count in zip((2, 3, 4), BLOCKS_PER_STAGE[depth]):
        if depth == 101 and stage > 2:  # Caffe ResNet-101: res3b1.., res4b1..
            rest = [f"b{i}" for i in range(1, count)]
        else:  # Caffe ResNet-50 / stage 2 of both: letters
            rest = list(string.ascii_lowercase[1:count])
        names.append([f"{stage}{s}" for s in ["a"] + rest])
    return names


def matconvnet_param_map(depth: int = 101) -> dict[str, tuple[str, str]]:
    """Every TinyFacesNet state_dict key -> (MatConvNet param name, conversion).

    Conversions: ``"filter"`` (H x W x I x O -> transpose(3, 2, 0, 1)), ``"vector"`` (reshape
    to 1-D), ``"mean"`` / ``"var"`` (column 0 / column 1 squared minus eps of a ``_moments``
    array), ``"zero"`` (``num_batches_tracked``; no MatConvNet counterpart).
    """
    out: dict[str, tuple[str, str]] = {}

    def conv(key: str, layer: str) -> None:
        out[f"{key}.weight"] = (f"{layer}_filter", "filter")

    def bn(key: str, layer: str) -> None:
        out[f"{key}.weight"] = (f"{layer}_mult", "vector")
        out[f"{key}.bias"] = (f"{layer}_bias", "vector")
        out[f"{key}.running_mean"] = (f"{layer}_moments", "mean")
        out[f"{key}.running_var"] = (f"{layer}_moments", "var")
        out[f"{key}.num_batches_tracked"] = ("", "zero")

    conv("model.conv1", "conv1")
    bn("model.bn1", "bn_conv1")
    for stage_index, blocks in enumerate(_block_names(depth)):
        for i, name in enumerate(blocks):
            key = f"model.layer{stage_index + 1}.{i}"
            for j, branch in enumerate("abc", start=1):
                conv(f"{key}.conv{j}", f"res{name}_branch2{branch}")
                bn(f"{key}.bn{j}", f"bn{name}_branch2{branch}")
            if i == 0:
                conv(f"{key}.downsample.0", f"res{name}_branch1")
                bn(f"{key}.downsample.1", f"bn{name}_branch1")
    for head in ("score_res3", "score_res4"):
        conv(head, head)
        out[f"{head}.bias"] = (f"{head}_bias", "vector")
    out["score4_upsample.weight"] = ("score4f", "filter")
    return out


def load_matconvnet_mat(path: str | Path, depth: int | None = None,
                        variant: str | None = None) -> tuple[TinyFacesNet, DetectorConfig]:
    """Loads the authors' DagNN ``.mat`` (``hr_res101.mat``) as a ``"matconvnet"`` network."""
    if variant not in (None, "matconvnet"):
        raise WeightsError(f"{path}: a MatConvNet .mat runs only as variant 'matconvnet' "
                           f"(Caffe-style trunk), not {variant!r}")
    params, meta = read_dagnn_mat(path)
    found = _mat_depth(params, path)
    if depth is not None and depth != found:
        raise WeightsError(f"{path}: file holds a ResNet-{found} but depth={depth} was requested")
    model = TinyFacesNet(found, "matconvnet")
    state = _convert_params(params, matconvnet_param_map(found), model, path)
    check_finite(state, str(path))
    model.load_state_dict(state, strict=True)  # keys and shapes were checked above
    return model.eval(), _mat_config(meta, path)


def read_dagnn_mat(path: str | Path) -> tuple[dict[str, np.ndarray], Any]:
    """``({param name: value}, meta struct)`` of a DagNN saved to a v5/v7 .mat file."""
    import scipy.io

    try:
        mat = scipy.io.loadmat(str(path), struct_as_record=True, squeeze_me=False)
    except NotImplementedError:
        raise WeightsError(f"{path}: MATLAB v7.3 (HDF5) .mat files are not supported; re-save "
                           f"it in MATLAB with save(file, '-struct', ..., '-v7')") from None
    except Exception as exc:
        raise WeightsError(f"{path}: not a readable .mat file ({type(exc).__name__}: "
                           f"{_first_line(exc)}); expected {_EXPECTED_MAT}") from None
    net = _dagnn_struct(mat, path)
    entries = _dagnn_field(net, "params", path)
    if not _is_struct(entries) or not {"name", "value"} <= set(np.asarray(entries).dtype.names):
        raise WeightsError(f"{path}: net.params is {_describe(entries)}, not a struct array with "
                           f"fields name and value; expected {_EXPECTED_MAT}")
    params: dict[str, np.ndarray] = {}
    for i, entry in enumerate(np.asarray(entries).ravel()):
        try:
            name = _mat_string(entry["name"])
        except TypeError as exc:
            raise WeightsError(f"{path}: net.params({i + 1}).name is not a name ({exc}); "
                               f"expected {_EXPECTED_MAT}") from None
        if name in params:
            raise WeightsError(f"{path}: parameter {name!r} appears twice")
        params[name] = np.asarray(entry["value"])
    return params, _dagnn_field(net, "meta", path)


def _dagnn_struct(mat: Mapping[str, Any], path: str | Path) -> Any:
    """The DagNN struct of a loadmat dict: variable ``net`` (as ``tiny_face_detector.m`` reads
    it), or the file's variables themselves (saved with ``-struct``)."""
    variables = sorted(k for k in mat if not k.startswith("__"))
    if "net" not in mat:
        if set(_DAGNN_FIELDS) <= set(variables):
            return mat
        raise WeightsError(f"{path}: a MATLAB file without a MatConvNet network: no variable "
                           f"'net' (it holds {', '.join(variables) or 'no variables'}); "
                           f"expected {_EXPECTED_MAT}")
    net = mat["net"]
    if not _is_struct(net):
        raise WeightsError(f"{path}: variable 'net' is {_describe(net)}, not a struct; "
                           f"expected {_EXPECTED_MAT}")
    if np.asarray(net).size != 1:
        raise WeightsError(f"{path}: variable 'net' is {_describe(net)}, not a single (1x1) "
                           f"struct; expected {_EXPECTED_MAT}")
    fields = np.asarray(net).dtype.names
    missing = [f for f in _DAGNN_FIELDS if f not in fields]
    if missing:
        raise WeightsError(f"{path}: the 'net' struct lacks the DagNN field(s) "
                           f"{', '.join(missing)} (it has {', '.join(fields)}); "
                           f"expected {_EXPECTED_MAT}")
    return net


def _dagnn_field(net: Any, name: str, path: str | Path) -> Any:
    try:
        return _field(net, name)
    except (KeyError, ValueError) as exc:
        raise WeightsError(f"{path}: unexpected .mat layout ({_first_line(exc)}); "
                           f"expected {_EXPECTED_MAT}") from None


def _is_struct(value: Any) -> bool:
    return isinstance(value, np.ndarray) and value.dtype.names is not None


def _describe(value: Any) -> str:
    """MATLAB-style description of a loadmat value, e.g. ``a 1x1 double array``."""
    if not isinstance(value, np.ndarray):
        return f"a {type(value).__name__}"
    if value.dtype.kind in "US":
        return "a char array"
    size = "x".join(str(n) for n in ((1,) * (2 - value.ndim) + value.shape))
    if value.dtype.names is not None:
        return f"a {size} struct array"
    kind = {"O": "cell", "b": "logical", "f8": "double", "f4": "single"}
    name = kind.get(value.dtype.kind, kind.get(value.dtype.str[1:], value.dtype.name))
    return f"a {size} {name} array"


def _field(struct: Any, name: str) -> Any:
    """Field ``name`` of a loadmat struct (1x1 record array) or of the top-level dict."""
    if isinstance(struct, Mapping):
        if name not in struct:
            raise KeyError(f"no variable or field {name!r}")
        return struct[name]
    arr = np.asarray(struct)
    if arr.dtype.names is None or name not in arr.dtype.names:
        raise KeyError(f"struct has no field {name!r} (fields: {arr.dtype.names})")
    if arr.size != 1:
        raise ValueError(f"expected a 1x1 struct holding {name!r}, got shape {arr.shape}")
    value = arr.ravel()[0][name]
    # a struct-valued field arrives as a (1, 1) object array around the record array
    while isinstance(value, np.ndarray) and value.dtype == object and value.size == 1:
        value = value.ravel()[0]
    return value


def _mat_string(value: Any) -> str:
    arr = np.asarray(value)
    while arr.dtype == object and arr.size == 1:
        arr = np.asarray(arr.ravel()[0])
    if arr.dtype.kind != "U":
        raise TypeError(f"expected a char array, got {arr.dtype}")
    return "".join(arr.ravel().tolist())


def _mat_depth(params: Mapping[str, np.ndarray], path: str | Path) -> int:
    for depth in sorted(BLOCKS_PER_STAGE, reverse=True):
        last = _block_names(depth)[2][-1]
        if f"res{last}_branch2a_filter" in params:
            return depth
    raise WeightsError(f"{path}: cannot tell the ResNet depth: neither res4b22_* (ResNet-101) "
                       f"nor res4f_* (ResNet-50) parameters found; expected {_EXPECTED_MAT}")


def _convert_params(params: Mapping[str, np.ndarray], mapping: Mapping[str, tuple[str, str]],
                    model: TinyFacesNet, path: str | Path) -> dict[str, torch.Tensor]:
    expected = model.state_dict()
    state: dict[str, torch.Tensor] = {}
    used: set[str] = set()
    missing: list[str] = []
    shapes: list[str] = []
    kinds: list[str] = []
    for key, (name, kind) in mapping.items():
        target = expected[key]
        if kind == "zero":
            state[key] = torch.zeros_like(target)
            continue
        if name not in params:
            missing.append(f"{name} (for {key})")
            continue
        used.add(name)
        raw = np.asarray(params[name])
        if raw.dtype.kind != "f":  # MatConvNet stores single; integers hold no trained weights
            kinds.append(f"{name} ({raw.dtype})")
            continue
        value = _convert(raw, kind, model, key)
        if value is None or tuple(value.shape) != tuple(target.shape):
            shapes.append(f"{name} {raw.shape} -> {key} (model expects {tuple(target.shape)})")
            continue
        state[key] = torch.from_numpy(np.ascontiguousarray(value, dtype=np.float32))
    unused = sorted(set(params) - used)
    problems = [f"{label}: {_listing(items)}" for label, items in
                (("missing parameters", missing), ("unused parameters", unused),
                 ("shape mismatches", shapes), ("not floating-point parameters", kinds))
                if items]
    if problems:
        raise WeightsError(f"{path}: MatConvNet parameters do not match "
                           f"TinyFacesNet(depth={model.depth}, variant='matconvnet'): "
                           + "; ".join(problems))
    return state


def _convert(raw: np.ndarray, kind: str, model: TinyFacesNet, key: str) -> np.ndarray | None:
    """The torch-layout array for one MatConvNet value, or None when its shape cannot fit."""
    if kind == "filter":
        if raw.ndim > 4:
            return None
        # MATLAB drops trailing singleton dimensions (e.g. a 1 x 1 x C x 1 filter)
        return raw.reshape(raw.shape + (1,) * (4 - raw.ndim)).transpose(3, 2, 0, 1)
    if kind == "vector":
        return raw.reshape(-1)
    if raw.ndim != 2 or raw.shape[1] != 2:  # _moments: N x 2 [mean, sigma]
        return None
    if kind == "mean":
        return raw[:, 0]
    eps = model.get_submodule(key.rsplit(".", 1)[0]).eps
    return raw[:, 1].astype(np.float64) ** 2 - eps


def _mat_config(meta: Any, path: str | Path) -> DetectorConfig:
    try:
        clusters = np.asarray(_field(meta, "clusters"), dtype=np.float64)
        average = np.asarray(_field(_field(meta, "normalization"), "averageImage"),
                             dtype=np.float64).reshape(-1)
    except (KeyError, ValueError, TypeError) as exc:
        raise WeightsError(f"{path}: net.meta lacks the detector metadata "
                           f"(meta.clusters, meta.normalization.averageImage): "
                           f"{_first_line(exc)}") from None
    if average.size != 3:
        raise WeightsError(f"{path}: net.meta.normalization.averageImage has {average.size} "
                           f"values; expected one per RGB channel (3)")
    try:
        return DetectorConfig.for_variant(
            "matconvnet", templates=clusters,
            normalization=Normalization.average_image(tuple(average.tolist())))
    except ConfigError as exc:
        raise WeightsError(f"{path}: net.meta.clusters: {exc}") from None


def _listing(items: list[str]) -> str:
    shown = ", ".join(items[:_MAX_LISTED])
    more = len(items) - _MAX_LISTED
    return shown + (f" and {more} more" if more > 0 else "")


def _first_line(exc: BaseException) -> str:
    """The first sentence of an exception's message (torch's can run to a paragraph)."""
    line = first_line(exc)
    return line.split(". ")[0] if len(line) > 120 else line

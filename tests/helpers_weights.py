"""Builders of synthetic weight files with the exact layout of the real ones (for tests).

* :func:`write_fake_pytorch_checkpoint`: ``torch.save({"model": state_dict, "epoch", ...})``
  as tiny-faces-pytorch's ``main.py`` writes it, keys of its ``DetectionModel`` (torchvision
  ResNet without layer4 as ``model.*``: it deletes ``layer4`` only, so its never-run ``fc``
  stays in every checkpoint; plus the score heads).
* :func:`write_fake_hr_res101_mat`: a MATLAB v5 ``.mat`` with one variable ``net`` laid out as
  ``dagnn.DagNN.saveobj`` writes it (struct with ``vars``, ``params``, ``layers``, ``meta``;
  ``params`` entries ``name, value, learningRate, weightDecay``; ``layers`` entries ``name,
  type, inputs, outputs, params, block``; ``meta.normalization.averageImage`` and
  ``meta.clusters`` at the positions the TensorFlow port's converter indexes).

Both derive names and shapes here, independently of the loaders, from the published layouts.
Values are seeded random float32 (BN variances / sigmas positive). A full ResNet-101 file is
~120 MB; ``depth=50`` (Caffe ResNet-50 names, res3a..d / res4a..f) gives ~35 MB.
"""

from __future__ import annotations

import functools
import string
from pathlib import Path

import numpy as np
import scipy.io
import torch

from tinyfaces_trt.core.config import load_default_templates

STAGES = {50: (3, 4, 6), 101: (3, 4, 23)}
STAGE_PLANES = (64, 128, 256)
DEFAULT_AVERAGE_IMAGE = (123.68, 116.779, 103.939)


# ------------------------------------------------------------------------------------------
# tiny-faces-pytorch
# ------------------------------------------------------------------------------------------

def port_state_dict_shapes(depth: int = 101) -> dict[str, tuple[int, ...]]:
    """Key -> shape of tiny-faces-pytorch's DetectionModel.state_dict() (torchvision names)."""
    shapes: dict[str, tuple[int, ...]] = {}

    def bn(prefix: str, n: int) -> None:
        for name in ("weight", "bias", "running_mean", "running_var"):
            shapes[f"{prefix}.{name}"] = (n,)
        shapes[f"{prefix}.num_batches_tracked"] = ()

    shapes["model.conv1.weight"] = (64, 3, 7, 7)
    bn("model.bn1", 64)
    inplanes = 64
    for layer, (count, planes) in enumerate(zip(STAGES[depth], STAGE_PLANES), start=1):
        for i in range(count):
            p = f"model.layer{layer}.{i}"
            shapes[f"{p}.conv1.weight"] = (planes, inplanes, 1, 1)
            bn(f"{p}.bn1", planes)
            shapes[f"{p}.conv2.weight"] = (planes, planes, 3, 3)
            bn(f"{p}.bn2", planes)
            shapes[f"{p}.conv3.weight"] = (planes * 4, planes, 1, 1)
            bn(f"{p}.bn3", planes * 4)
            if i == 0:
                shapes[f"{p}.downsample.0.weight"] = (planes * 4, inplanes, 1, 1)
                bn(f"{p}.downsample.1", planes * 4)
            inplanes = planes * 4
    shapes["model.fc.weight"] = (1000, 2048)  # torchvision's classifier, kept by the port
    shapes["model.fc.bias"] = (1000,)
    for head, channels in (("score_res3", 512), ("score_res4", 1024)):
        shapes[f"{head}.weight"] = (125, channels, 1, 1)
        shapes[f"{head}.bias"] = (125,)
    shapes["score4_upsample.weight"] = (125, 125, 4, 4)
    return shapes


def fake_port_state_dict(depth: int = 101, seed: int = 0) -> dict[str, torch.Tensor]:
    """Seeded random tensors for every key of :func:`port_state_dict_shapes` (new tensors at
    each call; a ResNet-50's generated once per seed in a process)."""
    made = _cached_port_state_dict(seed) if depth == 50 else _fake_port_state_dict(depth, seed)
    return {key: value.clone() for key, value in made.items()}


def _fake_port_state_dict(depth: int, seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    state: dict[str, torch.Tensor] = {}
    for key, shape in port_state_dict_shapes(depth).items():
        if key.endswith("num_batches_tracked"):
            state[key] = torch.tensor(1000 + len(state), dtype=torch.long)
        elif key.endswith("running_var"):
            state[key] = 0.5 + torch.rand(shape, generator=gen)
        else:
            state[key] = 0.05 * torch.randn(shape, generator=gen)
    return state


@functools.lru_cache(maxsize=4)  # ~35 MB each
def _cached_port_state_dict(seed: int) -> dict[str, torch.Tensor]:
    return _fake_port_state_dict(50, seed)


def write_fake_pytorch_checkpoint(path: str | Path, depth: int = 50, seed: int = 0, *,
                                  bare: bool = False, drop: tuple[str, ...] = (),
                                  override: dict[str, torch.Tensor] | None = None
                                  ) -> dict[str, torch.Tensor]:
    """Writes a checkpoint as the port's ``trainer.save_checkpoint`` does; returns its state_dict.

    Args:
        bare: save the state_dict itself instead of ``{"model": ..., "optimizer": ...}``.
        drop: keys to leave out; override: entries to replace or add.
    """
    state = fake_port_state_dict(depth, seed)
    for key in drop:
        del state[key]
    state.update(override or {})
    if bare:
        torch.save(state, str(path))
    else:
        optimizer = {"state": {}, "param_groups": [
            {"lr": 1e-4, "momentum": 0.9, "dampening": 0, "weight_decay": 5e-4,
             "nesterov": False, "params": list(range(4))}]}
        torch.save({"epoch": 50, "batch_size": 12, "model": state, "optimizer": optimizer},
                   str(path))
    return state


# ------------------------------------------------------------------------------------------
# MatConvNet hr_res101.mat
# ------------------------------------------------------------------------------------------

def caffe_block_names(depth: int) -> list[list[str]]:
    """Caffe/MatConvNet ResNet block names: res2a..c; res3a, res3b1..b3; res4a, res4b1..b22
    for ResNet-101, letters throughout for ResNet-50."""
    out = []
    for stage, count in zip((2, 3, 4), STAGES[depth]):
        if depth == 101 and stage > 2:
            names = ["a"] + [f"b{i}" for i in range(1, count)]
        else:
            names = list(string.ascii_lowercase[:count])
        out.append([f"{stage}{n}" for n in names])
    return out


class _DagBuilder:
    """Collects DagNN layers and seeded parameter values in MatConvNet layouts."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.layers: list[dict] = []
        self.params: dict[str, np.ndarray] = {}

    def layer(self, name, type_, inputs, outputs, params, block) -> None:
        self.layers.append(dict(name=name, type=type_, inputs=list(inputs),
                                outputs=list(outputs), params=list(params), block=block))

    def conv(self, name, inp, h, cin, cout, stride=1, pad=0, bias=False) -> str:
        filt = self.rng.normal(0.0, np.sqrt(2.0 / (h * h * cin)), size=(h, h, cin, cout))
        self.params[f"{name}_filter"] = filt.astype(np.float32)  # H x W x Cin x Cout
        names = [f"{name}_filter"]
        if bias:
            self.params[f"{name}_bias"] = self.rng.normal(0, 0.1, (1, cout)).astype(np.float32)
            names.append(f"{name}_bias")
        block = dict(size=np.array([[h, h, cin, cout]], float), hasBias=bool(bias),
                     opts=np.empty((1, 0), object), pad=np.full((1, 4), float(pad)),
                     stride=np.full((1, 2), float(stride)), dilate=np.ones((1, 2)))
        self.layer(name, "dagnn.Conv", [inp], [name], names, block)
        return name

    def bn(self, name, inp, n) -> str:
        rng = self.rng
        self.params[f"{name}_mult"] = rng.uniform(0.5, 1.5, (n, 1)).astype(np.float32)
        self.params[f"{name}_bias"] = rng.normal(0.0, 0.1, (n, 1)).astype(np.float32)
        moments = np.concatenate([rng.normal(0.0, 1.0, (n, 1)), rng.uniform(0.5, 2.0, (n, 1))], 1)
        self.params[f"{name}_moments"] = moments.astype(np.float32)  # [mean, sigma]
        block = dict(numChannels=float(n), epsilon=1e-5, opts=np.empty((1, 0), object))
        self.layer(name, "dagnn.BatchNorm", [inp], [name],
                   [f"{name}_mult", f"{name}_bias", f"{name}_moments"], block)
        return name

    def relu(self, name, inp, out) -> str:
        self.layer(name, "dagnn.ReLU", [inp], [out], [],
                   dict(useShortCircuit=True, leak=0.0, opts=np.empty((1, 0), object)))
        return out


def _build_dagnn(depth: int, seed: int, bilinear_score4: bool) -> _DagBuilder:
    d = _DagBuilder(seed)
    x = d.relu("conv1_relu", d.bn("bn_conv1", d.conv("conv1", "data", 7, 3, 64, 2, 3), 64),
               "conv1x")
    d.layer("pool1", "dagnn.Pooling", [x], ["pool1"], [],
            dict(method="max", poolSize=np.array([[3.0, 3.0]]), opts=np.empty((1, 0), object),
                 pad=np.array([[0.0, 1.0, 0.0, 1.0]]), stride=np.array([[2.0, 2.0]])))
    x, cin = "pool1", 64
    taps = {}
    for stage, (names, planes) in enumerate(zip(caffe_block_names(depth), STAGE_PLANES)):
        for i, n in enumerate(names):
            stride = 2 if (i == 0 and stage > 0) else 1
            if i == 0:
                proj = d.conv(f"res{n}_branch1", x, 1, cin, planes * 4, stride)
                shortcut = d.bn(f"bn{n}_branch1", proj, planes * 4)
            else:
                shortcut = x
            y = d.conv(f"res{n}_branch2a", x, 1, cin, planes, stride)  # Caffe: stride on 1x1
            y = d.relu(f"res{n}_branch2a_relu", d.bn(f"bn{n}_branch2a", y, planes),
                       f"res{n}_branch2ax")
            y = d.conv(f"res{n}_branch2b", y, 3, planes, planes, 1, 1)
            y = d.relu(f"res{n}_branch2b_relu", d.bn(f"bn{n}_branch2b", y, planes),
                       f"res{n}_branch2bx")
            y = d.bn(f"bn{n}_branch2c", d.conv(f"res{n}_branch2c", y, 1, planes, planes * 4),
                     planes * 4)
            d.layer(f"res{n}", "dagnn.Sum", [shortcut, y], [f"res{n}"], [], dict(numInputs=2.0))
            x, cin = d.relu(f"res{n}_relu", f"res{n}", f"res{n}x"), planes * 4
        taps[stage] = x
    d.conv("score_res4", taps[2], 1, 1024, 125, bias=True)
    if bilinear_score4:
        taps1 = np.array([0.25, 0.75, 0.75, 0.25])
        f = np.zeros((4, 4, 125, 125))
        for i in range(125):
            f[:, :, i, i] = np.outer(taps1, taps1)
    else:
        f = d.rng.normal(0.0, 0.1, (4, 4, 125, 125))
    d.params["score4f"] = f.astype(np.float32)  # H x W x K(out) x D(in), as vl_nnconvt
    d.layer("score4", "dagnn.ConvTranspose", ["score_res4"], ["score4"], ["score4f"],
            dict(size=np.array([[4.0, 4.0, 125.0, 125.0]]), hasBias=False,
                 upsample=np.array([[2.0, 2.0]]), crop=np.array([[0.0, 0.0, 0.0, 0.0]]),
                 numGroups=1.0, opts=np.empty((1, 0), object)))
    d.conv("score_res3", taps[1], 1, 512, 125, bias=True)
    d.layer("fusex", "dagnn.Sum", ["score_res3", "score4"], ["score_final"], [],
            dict(numInputs=2.0))
    d.layer("split", "dagnn.Split", ["score_final"], ["score_cls", "score_reg"], [],
            dict(childIds=np.array([np.arange(1, 26.0), np.arange(26, 126.0)], dtype=object)))
    return d


@functools.lru_cache(maxsize=4)  # ~35 MB each
def _cached_dagnn50(seed: int, bilinear_score4: bool) -> _DagBuilder:
    """A ResNet-50 DagNN's layers and values, built once per arguments in a process (read
    only: the writer copies the values it returns)."""
    return _build_dagnn(50, seed, bilinear_score4)


def _cell(items: list[str]) -> np.ndarray:
    if not items:
        return np.empty((0, 0), dtype=object)
    cell = np.empty((1, len(items)), dtype=object)
    cell[0, :] = items
    return cell


def _struct_array(records: list[dict], fields: tuple[str, ...]) -> np.ndarray:
    arr = np.empty((1, len(records)), dtype=[(f, object) for f in fields])
    for i, rec in enumerate(records):
        arr[0, i] = tuple(rec[f] for f in fields)
    return arr


def write_fake_hr_res101_mat(path: str | Path, depth: int = 101, seed: int = 0, *,
                             drop: tuple[str, ...] = (),
                             override: dict[str, np.ndarray] | None = None,
                             clusters: np.ndarray | None = None,
                             average_image: tuple[float, float, float] = DEFAULT_AVERAGE_IMAGE,
                             bilinear_score4: bool = False) -> dict[str, np.ndarray]:
    """Writes a DagNN ``net`` with hr_res101.mat's structure; returns {param name: value}.

    Args:
        depth: 101 (the real file) or 50 (same structure, Caffe ResNet-50 block names).
        drop: parameter names to leave out; override: parameters to replace or add.
        clusters: (25, 5) templates for ``net.meta.clusters`` (default: the shipped ones).
        average_image: ``net.meta.normalization.averageImage`` (stored 3 x 1).
        bilinear_score4: the real file's channel-diagonal bilinear ``score4f`` instead of a
            random one (random makes the filter orientation observable).
    """
    d = (_cached_dagnn50(seed, bilinear_score4) if depth == 50
         else _build_dagnn(depth, seed, bilinear_score4))
    params = {k: v.copy() for k, v in d.params.items() if k not in drop}
    params.update(override or {})
    param_records = [dict(name=k, value=v, learningRate=1.0, weightDecay=1.0)
                     for k, v in params.items()]
    layer_records = [dict(l, inputs=_cell(l["inputs"]), outputs=_cell(l["outputs"]),
                          params=_cell(l["params"])) for l in d.layers]
    var_names = ["data"] + [o for l in d.layers for o in l["outputs"]]
    var_records = [dict(name=v, precious=False) for v in dict.fromkeys(var_names)]
    templates = load_default_templates() if clusters is None else np.asarray(clusters, float)
    meta = {  # field order puts normalization at index 2 and clusters at index 6, as the real file
        "inputs": {"name": "data", "size": np.array([[500.0, 500.0, 3.0, 12.0]])},
        "classes": {"name": _cell(["face"]), "description": _cell(["face"])},
        "normalization": {"imageSize": np.array([[224.0, 224.0, 3.0]]),
                          "interpolation": "bilinear",
                          "averageImage": np.asarray(average_image, float).reshape(3, 1),
                          "keepAspect": True, "border": np.array([[32.0, 32.0]])},
        "augmentation": {"transformation": "none"},
        "trainOpts": {"batchSize": 12.0, "numEpochs": 50.0},
        "varSizes": np.empty((0, 0)),
        "clusters": templates,
    }
    net = {
        "vars": _struct_array(var_records, ("name", "precious")),
        "params": _struct_array(param_records, ("name", "value", "learningRate", "weightDecay")),
        "layers": _struct_array(layer_records,
                                ("name", "type", "inputs", "outputs", "params", "block")),
        "meta": meta,
    }
    scipy.io.savemat(str(path), {"net": net}, format="5", do_compression=False)
    return params


def save_another_epoch(checkpoint: Path) -> None:
    """Replaces ``checkpoint`` atomically with other bytes, as a training run saving
    ``latest.pth`` does (a temporary file renamed over it)."""
    newer = checkpoint.with_name(f".{checkpoint.name}.tmp")
    newer.write_bytes(checkpoint.read_bytes() + b"another epoch")
    newer.replace(checkpoint)

"""The reference pipeline, as tiny-faces-pytorch runs it (re-implemented for the benchmark).

The port's ``tinyfaces/evaluation.py::get_detections`` (varunagrawal/tiny-faces-pytorch) does,
per image: for each scale, PIL-resize the short side (torchvision ``resize`` on a PIL image =
``Image.resize(..., BILINEAR)``), ``ToTensor`` + ``Normalize`` in torch, the torch forward,
sigmoid, ``.cpu().numpy()`` and a transpose to NHWC, numpy ``get_bboxes`` (template masking
by zeroing probabilities, ``np.where`` over the 4-D array, regression refinement), stacking
the levels; then one CPU NMS over everything (Girshick's ``py_cpu_nms`` loop with ``+1``
areas). torchvision is not available here, so its few transforms are written out with
torch/PIL; the flow, the data layouts and the libraries doing the work are the port's.

Differences, all in the benchmark's favour of comparability: the pyramid levels are given
(the same ones every backend runs), and the input is the uint8 RGB image instead of a
``ToTensor``'d tensor that the port turns back into a PIL image.
"""

from __future__ import annotations

import time
from collections.abc import MutableMapping, Sequence

import numpy as np
import torch
from PIL import Image

from tinyfaces_trt.core.config import NUM_TEMPLATES, DetectorConfig
from tinyfaces_trt.core.pyramid import PyramidLevel

_TYPE_A = np.arange(4, 12)
_TYPE_B = np.arange(18, 25)


def port_invalid_templates(scale: float, templates: np.ndarray) -> np.ndarray:
    """Template ids whose probabilities the port zeroes at ``scale`` (its get_bboxes rule)."""
    never = np.setdiff1d(np.arange(NUM_TEMPLATES), np.concatenate([_TYPE_A, _TYPE_B]))
    tscale = templates[_TYPE_B, 4]
    bad_b = tscale >= 1.0 if scale < 1 else tscale != 1.0
    return np.concatenate([never, _TYPE_B[bad_b]])


def port_decode(output: torch.Tensor, scale: float, config: DetectorConfig) -> np.ndarray:
    """One level's network output -> (N, 5) [x1, y1, x2, y2, logit], the port's way (NHWC numpy)."""
    t = config.templates
    score_cls = output[:, :NUM_TEMPLATES]
    prob_cls = torch.sigmoid(score_cls).cpu().numpy().transpose((0, 2, 3, 1))
    score_cls = score_cls.cpu().numpy().transpose((0, 2, 3, 1))
    score_reg = output[:, NUM_TEMPLATES:].cpu().numpy().transpose((0, 2, 3, 1))
    prob_cls[:, :, :, port_invalid_templates(scale, t)] = 0.0
    fb, fy, fx, fc = np.where(prob_cls > config.prob_thresh)
    scores = score_cls[fb, fy, fx, fc]
    cy = fy * config.stride + config.offset
    cx = fx * config.stride + config.offset
    cw = t[fc, 2] - t[fc, 0] + 1
    ch = t[fc, 3] - t[fc, 1] + 1
    n = NUM_TEMPLATES
    tx, ty, tw, th = (score_reg[fb, fy, fx, k * n + fc] for k in range(4))
    rcx, rcy = cx + cw * tx, cy + ch * ty
    rcw, rch = cw * np.exp(tw), ch * np.exp(th)
    boxes = np.stack([rcx - rcw / 2, rcy - rch / 2, rcx + rcw / 2, rcy + rch / 2], axis=1)
    return np.hstack([boxes * (1.0 / scale), scores[:, None]])


def greedy_cpu_nms(dets: np.ndarray, thresh: float) -> np.ndarray:
    """Classic one-box-at-a-time numpy NMS with ``+1`` widths (the py_cpu_nms algorithm).

    Takes (N, 5) [x1, y1, x2, y2, score]; returns indices of the kept rows, best first.
    """
    x1, y1, x2, y2, score = (dets[:, k] for k in range(5))
    area = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = np.argsort(score)[::-1]
    keep = []
    while order.size:
        best, rest = order[0], order[1:]
        keep.append(best)
        w = np.maximum(0.0, np.minimum(x2[best], x2[rest]) - np.maximum(x1[best], x1[rest]) + 1)
        h = np.maximum(0.0, np.minimum(y2[best], y2[rest]) - np.maximum(y1[best], y1[rest]) + 1)
        inter = w * h
        iou = inter / (area[best] + area[rest] - inter)
        order = rest[iou <= thresh]
    return np.asarray(keep, dtype=np.int64)


class ReferencePipeline:
    """tiny-faces-pytorch's ``get_detections`` over given pyramid levels.

    Args:
        model: the torch network (fp32; moved to ``device``).
        config: templates, receptive field, thresholds (the port's rf: stride 8, offset -1).
        device: where the forward runs (the port uses ``cuda:0`` when available).
    """

    def __init__(self, model: torch.nn.Module, config: DetectorConfig, device: str = "cpu") -> None:
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.config = config
        n = config.normalization  # the port's ImageNet mean/std (variant "pytorch")
        self.mean = torch.tensor(n.mean, dtype=torch.float32)[:, None, None]
        self.std = torch.tensor(n.std, dtype=torch.float32)[:, None, None]

    def synchronize(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _prepare(self, image: Image.Image, level: PyramidLevel) -> torch.Tensor:
        scaled = image.resize((level.width, level.height), Image.BILINEAR)
        # ToTensor: HWC uint8 -> CHW float in [0, 1]; Normalize: (x - mean) / std
        x = torch.from_numpy(np.array(scaled, copy=True)).permute(2, 0, 1).contiguous()
        x = x.float().div(255).sub_(self.mean).div_(self.std)
        return x.unsqueeze_(0).to(self.device)

    def detect(self, image: np.ndarray, levels: Sequence[PyramidLevel],
               timings: MutableMapping[str, float] | None = None) -> np.ndarray:
        """(H, W, 3) uint8 RGB -> (N, 5) [x1, y1, x2, y2, logit] kept by NMS (unclipped).

        ``timings`` (if given) gets seconds added under ``preprocess``, ``network``,
        ``network[L<i>]`` (per level), ``decode`` and ``nms``.
        """
        clock = _Laps(timings, self.synchronize)
        pil = Image.fromarray(image)
        dets = np.empty((0, 5))
        with torch.no_grad():
            for level in levels:
                x = self._prepare(pil, level)
                clock.lap("preprocess")
                output = self.model(x)
                clock.lap("network", f"network[L{level.index}]")
                dets = np.vstack([dets, port_decode(output, level.scale, self.config)])
                clock.lap("decode")
        keep = greedy_cpu_nms(dets, self.config.nms_thresh)
        clock.lap("nms")
        return dets[keep]


class _Laps:
    """Adds synchronised wall time since the previous lap to one or more ``timings`` keys."""

    def __init__(self, timings: MutableMapping[str, float] | None, sync) -> None:
        self.timings, self.sync = timings, sync
        self.last = time.perf_counter()

    def lap(self, *names: str) -> None:
        if self.timings is None:
            return
        self.sync()
        now = time.perf_counter()
        for name in names:
            self.timings[name] = self.timings.get(name, 0.0) + now - self.last
        self.last = now

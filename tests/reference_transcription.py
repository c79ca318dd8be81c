"""Direct transcriptions of the reference algorithms, for tests only (float64, no runtime code).

Each function follows one reference file step by step, keeping its structure, layout and
enumeration order, so that the runtime can be checked against what the references compute:

- ``matlab_scales`` / ``matlab_level_size``: peiyunh/tiny ``tiny_face_detector.m`` scale rule
  and ``imresize(img, s)`` output size.
- ``torchvision_resize_size``: the size ``transforms.functional.resize(pil_image, n)`` picks
  (the port's ``get_detections`` resizes the short side to ``int(min_side * scale)``).
- ``port_invalid_templates``: tiny-faces-pytorch ``tinyfaces/models/utils.py`` get_bboxes.
- ``authors_invalid_templates``: peiyunh/tiny ``cnn_widerface_test_AB.m`` with
  ``allscale_templateIds = 5:12`` and ``onescale_templateIds = 19:25`` (scripts/hr_res101.m).
- ``get_bboxes``: the port's get_bboxes on NHWC arrays (enumeration order (y, x, c)).
- ``py_cpu_nms``: the port's old ``tinyfaces/utils/nms.py`` (Girshick, +1 areas).
- ``nms_mex``: peiyunh/tiny ``toolbox/nms/nms_mex.cpp`` (std::multimap on score).
- ``reference_detections``: get_detections' loop + NMS + the clipping of
  ``tiny_face_detector.m`` (1-based) for the matconvnet policy, its 0-based translation
  for the port's (which does not clip).
"""

from __future__ import annotations

import math

import numpy as np


# ---------------------------------------------------------------- pyramid (tiny_face_detector.m)
def matlab_colon(a: float, step: float, b: float) -> list[float]:
    """MATLAB ``a:step:b`` for step > 0 (empty when b < a)."""
    if b < a:
        return []
    n = int(math.floor((b - a) / step))
    return [a + k * step for k in range(n + 1)]


def matlab_scales(raw_h: int, raw_w: int, clusters: np.ndarray, max_input_dim: int) -> list[float]:
    """``scales = [min_scale:0, 0.5:0.5:max_scale]`` of tiny_face_detector.m."""
    clusters_h = clusters[:, 3] - clusters[:, 1] + 1
    clusters_w = clusters[:, 2] - clusters[:, 0] + 1
    normal_idx = np.where(clusters[:, 4] == 1)[0]
    min_scale = min(math.floor(math.log2(np.max(clusters_w[normal_idx] / raw_w))),
                    math.floor(math.log2(np.max(clusters_h[normal_idx] / raw_h))))
    max_scale = min(1, -math.log2(max(raw_h, raw_w) / max_input_dim))
    return matlab_colon(min_scale, 1, 0) + matlab_colon(0.5, 0.5, max_scale)


def matlab_max_scale(raw_h: int, raw_w: int, max_input_dim: int) -> float:
    return min(1, -math.log2(max(raw_h, raw_w) / max_input_dim))


def matlab_level_size(raw_h: int, raw_w: int, s: float) -> tuple[int, int]:
    """``imresize(img, s)``: output size ``ceil(s * [h w])``."""
    return math.ceil(s * raw_h), math.ceil(s * raw_w)


# ---------------------------------------------------------------- pyramid (port, torchvision)
def torchvision_resize_size(h: int, w: int, size: int) -> tuple[int, int]:
    """torchvision ``_compute_resized_output_size`` for an int size: returns (new_h, new_w)."""
    short, long = (w, h) if w <= h else (h, w)
    new_short, new_long = size, int(size * long / short)
    new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
    return new_h, new_w


def port_fixed_sizes(h: int, w: int, scales=(-2, -1, 0, 1)) -> list[tuple[float, int, int]]:
    """get_detections: ``resize(image, int(min_side * scale))`` per ``scale = 2**k``."""
    min_side = min(h, w)
    out = []
    for k in scales:
        scale = 2 ** k
        new_h, new_w = torchvision_resize_size(h, w, int(min_side * scale))
        out.append((scale, new_h, new_w))
    return out


# ---------------------------------------------------------------- template selection
def port_invalid_templates(scale: float, templates: np.ndarray) -> np.ndarray:
    """The ids get_bboxes zeroes out at ``scale`` (0-based)."""
    all_scale_template_ids = np.arange(4, 12)
    one_scale_template_ids = np.arange(18, 25)
    ignored_template_ids = np.setdiff1d(
        np.arange(25), np.concatenate((all_scale_template_ids, one_scale_template_ids)))
    template_scales = templates[:, 4]
    if scale < 1:
        invalid_one_scale_idx = np.where(template_scales[one_scale_template_ids] >= 1.0)
    elif scale == 1:
        invalid_one_scale_idx = np.where(template_scales[one_scale_template_ids] != 1.0)
    elif scale > 1:
        invalid_one_scale_idx = np.where(template_scales[one_scale_template_ids] != 1.0)
    return np.concatenate((ignored_template_ids, one_scale_template_ids[invalid_one_scale_idx]))


def authors_invalid_templates(s: float, clusters: np.ndarray) -> np.ndarray:
    """cnn_widerface_test_AB.m ``invalid_tid`` (converted from 1-based to 0-based ids)."""
    allscale_templateIds = np.arange(5, 13)      # 5:12
    onescale_templateIds = np.arange(19, 26)     # 19:25
    ignoredTemplateIds = np.setdiff1d(np.arange(1, 26),
                                      np.concatenate([allscale_templateIds, onescale_templateIds]))
    clusters_scale = clusters[:, 4]
    onescale_scales = clusters_scale[onescale_templateIds - 1]
    if s < 1:
        invalid_onescale_idx = np.where(onescale_scales >= 1)[0]
    elif s == 1:
        invalid_onescale_idx = np.where(onescale_scales != 1)[0]
    elif s > 1:
        invalid_onescale_idx = np.where(onescale_scales <= 1)[0]
    invalid_tid = np.concatenate([ignoredTemplateIds, onescale_templateIds[invalid_onescale_idx]])
    return invalid_tid - 1


# ---------------------------------------------------------------- decode (port get_bboxes)
def get_bboxes(score_cls, score_reg, prob_cls, templates, prob_thresh, rf, scale, invalid_template_id):
    """tinyfaces/models/utils.py get_bboxes (refine=True) on NHWC float64 arrays.

    Returns ``(bboxes (N, 4), scores (N, 1), (fy, fx, fc))`` in np.where order over (b, y, x, c).
    """
    num_templates = templates.shape[0]
    prob_cls = prob_cls.copy()
    # The port writes prob_cls[:, :, invalid_template_id] on this NHWC array, which indexes x, not the
    # template axis (README, "Which reference is the default"); transcribed here as the port means it.
    prob_cls[:, :, :, invalid_template_id] = 0.0
    indices = np.where(prob_cls > prob_thresh)
    fb, fy, fx, fc = indices
    scores = score_cls[fb, fy, fx, fc]
    scores = scores.reshape((scores.shape[0], 1))
    stride, offset = rf["stride"], rf["offset"]
    cy, cx = fy * stride[0] + offset[0], fx * stride[1] + offset[1]
    cw = templates[fc, 2] - templates[fc, 0] + 1
    ch = templates[fc, 3] - templates[fc, 1] + 1
    tx = score_reg[:, :, :, 0:num_templates]
    ty = score_reg[:, :, :, 1 * num_templates:2 * num_templates]
    tw = score_reg[:, :, :, 2 * num_templates:3 * num_templates]
    th = score_reg[:, :, :, 3 * num_templates:4 * num_templates]
    # regression_refinement
    dcx = cw * tx[indices]
    dcy = ch * ty[indices]
    rcx = cx + dcx
    rcy = cy + dcy
    rcw = cw * np.exp(tw[indices])
    rch = ch * np.exp(th[indices])
    bboxes = np.array([rcx - rcw / 2, rcy - rch / 2, rcx + rcw / 2, rcy + rch / 2]).T
    factor = 1 / scale
    bboxes = bboxes * factor
    return bboxes.reshape(-1, 4), scores, (fy, fx, fc)


# ---------------------------------------------------------------- NMS
def py_cpu_nms(dets: np.ndarray, thresh: float) -> np.ndarray:
    """tinyfaces/utils/nms.py (before commit 5da2d8c): greedy NMS with +1 areas."""
    x1 = dets[:, 0]
    y1 = dets[:, 1]
    x2 = dets[:, 2]
    y2 = dets[:, 3]
    scores = dets[:, 4]
    areas = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = scores.argsort()[::-1]
    keep = []
    while order.size > 0:
        i = order[0]
        keep.append(int(i))
        xx1 = np.maximum(x1[i], x1[order[1:]])
        yy1 = np.maximum(y1[i], y1[order[1:]])
        xx2 = np.minimum(x2[i], x2[order[1:]])
        yy2 = np.minimum(y2[i], y2[order[1:]])
        w = np.maximum(0.0, xx2 - xx1 + 1)
        h = np.maximum(0.0, yy2 - yy1 + 1)
        inter = w * h
        ovr = inter / (areas[i] + areas[order[1:]] - inter)
        inds = np.where(ovr <= thresh)[0]
        order = order[inds + 1]
    return np.array(keep).astype(int)


def nms_mex(boxes: np.ndarray, overlap: float) -> list[int]:
    """toolbox/nms/nms_mex.cpp on (N, 5) [x1 y1 x2 y2 score]; returns 0-based picks.

    ``std::multimap<T, int>`` keeps equal scores in insertion order and ``rbegin()`` is the
    last of them, so among tied scores the highest row index is picked first.
    """
    n = boxes.shape[0]
    if n == 0:
        return []
    area = [float(boxes[i, 2] - boxes[i, 0] + 1) * (boxes[i, 3] - boxes[i, 1] + 1) for i in range(n)]
    scores = sorted(range(n), key=lambda i: boxes[i, 4])  # stable: multimap insertion order
    pick = []
    while scores:
        last = scores[-1]
        pick.append(last)
        remaining = []
        for it in scores:
            xx1 = max(boxes[last, 0], boxes[it, 0])
            yy1 = max(boxes[last, 1], boxes[it, 1])
            xx2 = min(boxes[last, 2], boxes[it, 2])
            yy2 = min(boxes[last, 3], boxes[it, 3])
            w, h = max(0.0, xx2 - xx1 + 1), max(0.0, yy2 - yy1 + 1)
            ov = w * h / (area[last] + area[it] - w * h)
            if not ov > overlap:
                remaining.append(it)
        scores = remaining
    return pick


# ---------------------------------------------------------------- whole post-processing
def reference_detections(score_maps, scales, templates, prob_thresh, nms_thresh, policy,
                         image_hw, use_nms_mex=False, drop_outside=True):
    """get_detections' per-scale loop, one NMS, then the clipping of the policy's pixel
    convention (:func:`image_pixel_area`).

    ``drop_outside``: our one deliberate deviation from the reference, on by default: kept
    boxes lying entirely outside the image are dropped before clipping (the reference clips
    them into zero-area boxes on the border; issue 10 item 6).

    ``score_maps``: list of (1, 125, h, w) network outputs; ``policy``: "pytorch" or
    "matconvnet" template selection and pixel convention. Returns (N, 5) float64
    [x1, y1, x2, y2, logit] in NMS order, plus the pre-NMS (N, 5) stack.
    """
    rf = {"stride": [8, 8], "offset": [-1, -1]}
    num_templates = templates.shape[0]
    dets = np.empty((0, 5))
    for output, scale in zip(score_maps, scales):
        output = np.asarray(output, dtype=np.float64)
        score_cls = output[:, :num_templates, :, :]
        prob_cls = 1.0 / (1.0 + np.exp(-score_cls))
        score_cls = score_cls.transpose((0, 2, 3, 1))
        prob_cls = prob_cls.transpose((0, 2, 3, 1))
        score_reg = output[:, num_templates:, :, :].transpose((0, 2, 3, 1))
        if policy == "pytorch":
            invalid = port_invalid_templates(scale, templates)
        else:
            invalid = authors_invalid_templates(scale, templates)
        t_bboxes, scores, _ = get_bboxes(score_cls, score_reg, prob_cls, templates, prob_thresh,
                                         rf, scale, invalid)
        dets = np.vstack((dets, np.hstack((t_bboxes, scores))))
    keep = nms_mex(dets, nms_thresh) if use_nms_mex else py_cpu_nms(dets, nms_thresh)
    out = dets[np.asarray(keep, dtype=int)].reshape(-1, 5)
    lo, max_h, max_w = image_pixel_area(policy, image_hw)
    if drop_outside:
        out = out[(out[:, 2] >= lo) & (out[:, 3] >= lo) & (out[:, 0] <= max_w)
                  & (out[:, 1] <= max_h)]
    # tiny_face_detector.m, after its NMS:
    #   bboxes(:,[2 4]) = max(1, min(raw_h, bboxes(:,[2 4])));
    #   bboxes(:,[1 3]) = max(1, min(raw_w, bboxes(:,[1 3])));
    out[:, [1, 3]] = np.maximum(lo, np.minimum(max_h, out[:, [1, 3]]))
    out[:, [0, 2]] = np.maximum(lo, np.minimum(max_w, out[:, [0, 2]]))
    return out, dets


def image_pixel_area(policy, image_hw):
    """``(lo, max_h, max_w)``: first and last pixel coordinates of a ``(raw_h, raw_w)`` image.

    "matconvnet": the release's 1-based pixels, ``(1, raw_h, raw_w)``, the bounds
    tiny_face_detector.m clips to. "pytorch": the port does not clip; its 0-based boxes
    cover the same pixels at ``(0, raw_h - 1, raw_w - 1)``.
    """
    raw_h, raw_w = image_hw
    if policy == "matconvnet":
        return 1, raw_h, raw_w
    return 0, raw_h - 1, raw_w - 1

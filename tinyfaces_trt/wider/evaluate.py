"""WIDER FACE evaluation, a numpy port of the official MATLAB ``eval_tools``.

Reproduces the official driver ``wider_eval.m`` (not in the mirror), i.e. ``read_pred.m`` +
``norm_score.m`` + ``evaluation.m`` + ``boxoverlap.m`` + ``plot/VOCap.m`` (mirror: github
peiyunh/tiny, ``eval_tools/``), including the MATLAB type rules that change results:

* Ground truth is read from ``wider_face_val.mat`` (image list) and
  ``wider_{easy,medium,hard}_val.mat`` (``face_bbx_list`` of ``[x y w h]`` rows, ``gt_list``
  = 1-based indices of the faces that count in that setting; every other face is "ignored":
  matching it is neither a hit nor a false positive). The official code names the keep flag
  ``ignore``; here it is ``keep``.
* Predictions are sorted by raw score, descending, stably (MATLAB ``sort``), then min-max
  normalised over all predictions of the ground-truth images (``norm_score``; ``read_pred.m``
  reads no other image, so :func:`evaluate_predictions` leaves other keys out, with a
  warning). The official bounds start at
  ``realmin('single')`` / ``realmax('single')``, which makes them single precision, so the
  normalisation runs in float32 and, e.g., an all-negative score set has max = 1.18e-38.
  If every score is equal the official division is 0/0 (NaN) and every AP is 0; we warn.
* Boxes become ``[x, y, x+w, y+h]`` (no -1) and the overlap is ``boxoverlap`` with its +1
  areas. ``face_bbx_list`` is int32 in the official files, so MATLAB evaluates the overlap in
  int32 arithmetic: prediction corners are rounded inside the intersection, the union is
  rounded, and the IoU itself is rounded to an integer (0 or 1). The threshold test
  ``IoU >= 0.5`` survives that, but ``max`` then returns the FIRST ground-truth face with
  IoU >= 0.5, not the best one. We emulate this when the file stores integer boxes and use
  plain float64 IoU when it stores floating-point boxes, as MATLAB would.
* A prediction matching (IoU >= 0.5) an ignored face is dropped from the proposals; one
  matching a kept face counts a hit the first time (later ones are false positives).
* 1000 thresholds ``1 - t/1000``, t = 1..1000; per image the predictions with normalised
  score >= threshold are counted; summed over images. Precision = hits / proposals,
  recall = hits / (number of kept faces, including those of images without predictions).
  Images without ground truth boxes or without predictions are skipped (their faces still
  count), exactly as the official loop does.
* AP = ``VOCap(recall, precision)``: precision made monotone from the right with NaN
  ignored (MATLAB ``max``), summed over recall changes.

Cross-checked against the official .m files run under GNU Octave 7.3 (same MATLAB type rules):
identical PR curves on the real val ground truth with jittered, fractional, logit-scored
predictions, and identical APs on the synthetic cases of tests/test_wider_eval.py.

Deviations (documented): the event count comes from the files (the official hard-codes 61);
malformed prediction files raise instead of being dropped (box lines after the declared count
are ignored, as official, with one warning for all such files); a missing prediction file counts
as an image without detections (as official) with a warning, or raises with
``on_missing="error"``; a prediction folder with no file for any ground-truth image raises.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tinyfaces_trt.core.errors import TinyFacesError
from tinyfaces_trt.wider.format import detection_path, matlab_round, read_detection_file

SETTINGS = ("easy", "medium", "hard")
INDEX_FILE = "wider_face_val.mat"
SETTING_FILES = {s: f"wider_{s}_val.mat" for s in SETTINGS}
IOU_THRESH = 0.5
THRESH_NUM = 1000

#: Prediction-face pairs per block of the overlap matrix :func:`image_evaluation` computes at a
#: time: its dozen temporary arrays then take about 1 MB however many boxes an image has (the
#: whole matrix of 20000 predictions x 1000 faces took 2.3 GB). Blocks of 64 KB arrays also
#: run faster than larger ones: the allocator reuses their memory instead of mapping new pages.
OVERLAP_BLOCK_PAIRS = 1 << 13

_INT32_MIN = -(2 ** 31)
_INT32_MAX = 2 ** 31 - 1
_SINGLE_REALMIN = np.float32(np.finfo(np.float32).tiny)
_SINGLE_REALMAX = np.float32(np.finfo(np.float32).max)

ImageKey = tuple[str, str]


class WiderEvalError(TinyFacesError):
    """Ground-truth files or a prediction folder are missing or unusable."""


class MissingPredictionsError(WiderEvalError):
    """``on_missing="error"``: some ground-truth images have no prediction file.

    Attributes:
        missing: the paths that were not found.
        total: the number of ground-truth images.
    """

    def __init__(self, message: str, missing: Sequence[Path], total: int) -> None:
        super().__init__(message)
        self.missing = list(missing)
        self.total = total


# --------------------------------------------------------------------------- ground truth


@dataclass(frozen=True, eq=False)
class WiderGroundTruth:
    """One ground-truth .mat file.

    Attributes:
        path: where it was read from.
        events: event folder names (``event_list``).
        images: per event, image names without extension (``file_list``).
        boxes: per event, per image, (G, 4) ``[x, y, w, h]`` (``face_bbx_list``), in the file's
            MATLAB class (int32 in the official files).
        keep: per event, per image, 0-based indices of the faces that count (``gt_list``);
            None for ``wider_face_val.mat``, which has no ``gt_list``.
    """

    path: Path
    events: tuple[str, ...]
    images: tuple[tuple[str, ...], ...]
    boxes: tuple[tuple[np.ndarray, ...], ...]
    keep: tuple[tuple[np.ndarray, ...], ...] | None

    def image_keys(self) -> list[ImageKey]:
        """All (event, image) pairs in file order."""
        return [(e, name) for e, names in zip(self.events, self.images) for name in names]


@dataclass(frozen=True, eq=False)
class WiderGroundTruthSet:
    """The image list (``wider_face_val.mat``) and the three difficulty settings."""

    index: WiderGroundTruth
    settings: dict[str, WiderGroundTruth]


def _cell_column(value: Any, what: str, path: Path) -> list[Any]:
    if not isinstance(value, np.ndarray) or value.dtype != object:
        raise WiderEvalError(f"{path}: '{what}' is not a MATLAB cell array")
    return list(value.reshape(-1, order="F"))


def _cell_string(value: Any, what: str, path: Path) -> str:
    arr = np.asarray(value)
    if arr.dtype.kind != "U":
        raise WiderEvalError(f"{path}: '{what}' holds a non-string entry")
    return "".join(str(s) for s in arr.reshape(-1))


def load_ground_truth_file(path: str | Path, need_keep: bool) -> WiderGroundTruth:
    """Reads one official ground-truth .mat file (MATLAB v5, as shipped)."""
    from scipy.io import loadmat  # scipy is a runtime dependency; keep import time low

    path = Path(path)
    if not path.is_file():
        raise WiderEvalError(f"ground-truth file not found: {path}")
    try:
        mat = loadmat(str(path), mat_dtype=True)  # mat_dtype: arrays in their MATLAB class
    except NotImplementedError:
        raise WiderEvalError(f"{path}: MATLAB v7.3 (HDF5) files are not supported; "
                             "re-save it with save(..., '-v7')") from None
    except Exception as exc:  # scipy raises several types for corrupt files
        raise WiderEvalError(f"{path}: not a readable .mat file ({exc})") from None
    names = ["event_list", "file_list", "face_bbx_list"] + (["gt_list"] if need_keep else [])
    missing = [n for n in names if n not in mat]
    if missing:
        raise WiderEvalError(f"{path}: not a WIDER FACE ground-truth file "
                             f"(missing variable(s) {', '.join(missing)})")

    events = [_cell_string(e, "event_list", path)
              for e in _cell_column(mat["event_list"], "event_list", path)]
    file_cells = _cell_column(mat["file_list"], "file_list", path)
    box_cells = _cell_column(mat["face_bbx_list"], "face_bbx_list", path)
    keep_cells = _cell_column(mat["gt_list"], "gt_list", path) if need_keep else None
    if not (len(events) == len(file_cells) == len(box_cells)
            and (keep_cells is None or len(keep_cells) == len(events))):
        raise WiderEvalError(f"{path}: event_list, file_list, face_bbx_list"
                             f"{', gt_list' if need_keep else ''} have different lengths")

    images, boxes, keeps = [], [], []
    for i, event in enumerate(events):
        names = [_cell_string(n, "file_list", path)
                 for n in _cell_column(file_cells[i], "file_list", path)]
        ev_boxes = _cell_column(box_cells[i], "face_bbx_list", path)
        if len(ev_boxes) != len(names):
            raise WiderEvalError(f"{path}: event {event!r} has {len(names)} images but "
                                 f"{len(ev_boxes)} face_bbx_list entries")
        ev_boxes = [_box_array(b, path, event, n) for b, n in zip(ev_boxes, names)]
        images.append(tuple(names))
        boxes.append(tuple(ev_boxes))
        if keep_cells is not None:
            ev_keep = _cell_column(keep_cells[i], "gt_list", path)
            if len(ev_keep) != len(names):
                raise WiderEvalError(f"{path}: event {event!r} has {len(names)} images but "
                                     f"{len(ev_keep)} gt_list entries")
            keeps.append(tuple(_keep_array(k, len(b), path, event, n)
                               for k, b, n in zip(ev_keep, ev_boxes, names)))
    return WiderGroundTruth(path, tuple(events), tuple(images), tuple(boxes),
                            tuple(keeps) if keep_cells is not None else None)


def _box_array(value: Any, path: Path, event: str, image: str) -> np.ndarray:
    arr = np.asarray(value)
    if arr.size == 0:
        return arr.reshape(0, 4)
    if arr.ndim != 2 or arr.shape[1] != 4 or arr.dtype.kind not in "iuf":
        raise WiderEvalError(f"{path}: boxes of {event}/{image} must be a numeric (G, 4) "
                             f"[x y w h] matrix, got {_describe(arr)}")
    return arr


def _describe(arr: np.ndarray) -> str:
    """How an error message names a MATLAB value that is not a numeric array."""
    if arr.dtype == object:
        return f"a cell array {arr.shape}"
    if arr.dtype.kind in "US":
        return f"text {''.join(str(s) for s in arr.reshape(-1))!r}"
    return f"{arr.dtype} {arr.shape}"


def _keep_array(value: Any, num_boxes: int, path: Path, event: str, image: str) -> np.ndarray:
    arr = np.asarray(value)
    if arr.size and arr.dtype.kind not in "iuf":
        raise WiderEvalError(f"{path}: gt_list of {event}/{image} must be a numeric vector of "
                             f"1-based face indices in 1..{num_boxes}, got {_describe(arr)}")
    arr = arr.astype(np.float64).reshape(-1)  # numeric, or empty (of any class)
    if arr.size and (np.any(arr != np.round(arr)) or arr.min() < 1 or arr.max() > num_boxes):
        raise WiderEvalError(f"{path}: gt_list of {event}/{image} must hold 1-based face "
                             f"indices in 1..{num_boxes}, got {arr.tolist()}")
    return arr.astype(np.int64) - 1


def load_ground_truth(gt_dir: str | Path,
                      settings: Sequence[str] = SETTINGS) -> WiderGroundTruthSet:
    """Reads ``wider_face_val.mat`` and ``wider_<setting>_val.mat`` from ``gt_dir``."""
    gt_dir = Path(gt_dir)
    if not gt_dir.is_dir():
        raise WiderEvalError(f"ground-truth folder not found: {gt_dir}")
    unknown = [s for s in settings if s not in SETTING_FILES]
    if unknown:
        raise WiderEvalError(f"unknown setting(s) {unknown}; expected some of {SETTINGS}")
    wanted = [INDEX_FILE] + [SETTING_FILES[s] for s in settings]
    absent = [name for name in wanted if not (gt_dir / name).is_file()]
    if absent:
        raise WiderEvalError(f"{gt_dir}: missing ground-truth file(s) {', '.join(absent)} "
                             "(the official eval_tools/ground_truth folder has all four)")
    index = load_ground_truth_file(gt_dir / INDEX_FILE, need_keep=False)
    loaded = {}
    for s in settings:
        gt = load_ground_truth_file(gt_dir / SETTING_FILES[s], need_keep=True)
        # The official code indexes predictions read with wider_face_val.mat's lists by
        # position in the setting's lists; they must agree.
        if gt.events != index.events or gt.images != index.images:
            raise WiderEvalError(f"{gt.path}: its event/image lists differ from {index.path}")
        loaded[s] = gt
    return WiderGroundTruthSet(index, loaded)


# --------------------------------------------------------------------------- predictions


@dataclass(frozen=True, eq=False)
class PredictionSet:
    """Predictions per image: (P, 5) float64 ``[x, y, w, h, score]`` sorted by score
    (descending, stable), as ``read_pred.m`` leaves them; images without a file are absent.

    Attributes:
        boxes: (event, image) -> array.
        missing: paths of the prediction files that were not found.
    """

    boxes: dict[ImageKey, np.ndarray]
    missing: list[Path] = field(default_factory=list)


def sort_predictions(boxes: np.ndarray) -> np.ndarray:
    """Rows sorted by score (column 4) descending; ties keep file order (MATLAB ``sort``)."""
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 5)
    return b[np.argsort(-b[:, 4], kind="stable")]


def read_predictions(pred_dir: str | Path, index: WiderGroundTruth,
                     on_missing: str = "warn") -> PredictionSet:
    """Reads ``<pred_dir>/<event>/<image>.txt`` for every image of ``index``.

    ``on_missing``: ``"warn"`` (count as no detections and emit one warning), ``"ignore"``
    (same, silently; the paths are in ``PredictionSet.missing``) or ``"error"``.
    """
    if on_missing not in ("warn", "ignore", "error"):
        raise ValueError(f"on_missing must be 'warn', 'ignore' or 'error', got {on_missing!r}")
    pred_dir = Path(pred_dir)
    if not pred_dir.is_dir():
        raise WiderEvalError(f"prediction folder not found: {pred_dir}")
    boxes: dict[ImageKey, np.ndarray] = {}
    missing: list[Path] = []
    overlong: list[tuple[Path, int, int]] = []  # (path, declared, extra lines)
    for event, image in index.image_keys():
        path = detection_path(pred_dir, event, image)
        if not path.is_file():
            missing.append(path)
            continue
        parsed = read_detection_file(path)
        if parsed.extra_lines:
            overlong.append((path, len(parsed.boxes), parsed.extra_lines))
        boxes[(event, image)] = sort_predictions(parsed.boxes)
    if overlong:
        path, declared, extra = overlong[0]
        warnings.warn(f"{len(overlong)} of {len(boxes)} prediction files have more box lines "
                      f"than their line 2 declares; only the declared number was read and the "
                      f"rest ignored, as the official read_pred.m does, e.g. {path} (declares "
                      f"{declared}, {declared + extra} box lines follow)", stacklevel=2)
    total = len(boxes) + len(missing)
    if total and not boxes:
        raise WiderEvalError(
            f"{pred_dir}: no prediction file for any of the {total} ground-truth images "
            f"(expected e.g. {missing[0]}; layout is <pred>/<event>/<image>.txt)")
    if missing and on_missing == "error":
        raise MissingPredictionsError(
            f"{len(missing)} of {total} prediction files are missing (on_missing='error' "
            f"refuses that), e.g. {missing[0]}; write one for every ground-truth image (box "
            f"count 0 for an image without detections) or pass on_missing='warn' to count "
            f"them as images without detections", missing, total)
    if missing and on_missing == "warn":
        warnings.warn(f"{len(missing)} of {total} prediction files are missing and count as "
                      f"images without detections, e.g. {missing[0]}", stacklevel=2)
    return PredictionSet(boxes, missing)


def normalize_scores(predictions: Mapping[ImageKey, np.ndarray]) -> dict[ImageKey, np.ndarray]:
    """``norm_score.m``: min-max normalisation of column 4 over all non-empty images given
    (:func:`evaluate_predictions` gives those of the ground-truth images only, as
    ``read_pred.m`` reads no other).

    Bounds start at realmin/realmax('single'), so (as in MATLAB) they and the arithmetic are
    single precision; the result is stored back as float64.
    """
    non_empty = [b for b in predictions.values() if len(b)]
    if not non_empty:
        return {k: np.asarray(b, dtype=np.float64).reshape(-1, 5) for k, b in predictions.items()}
    scores = np.concatenate([b[:, 4] for b in non_empty])
    hi = np.float32(max(_SINGLE_REALMIN, np.float32(scores.max())))
    lo = np.float32(min(_SINGLE_REALMAX, np.float32(scores.min())))
    with np.errstate(over="ignore"):
        span = hi - lo
    if not np.isfinite(span):  # each score fits single precision, their range does not
        raise WiderEvalError(
            f"the prediction scores span {float(lo):g} to {float(hi):g}, a range beyond single "
            "precision: the official norm_score, which works in single, would make every "
            "score NaN or 0; rescale the scores")
    if hi == lo:
        warnings.warn("all prediction scores are equal: the official min-max normalisation "
                      "divides 0 by 0 and every AP is 0", stacklevel=2)
    out = {}
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        for key, b in predictions.items():
            b = np.array(b, dtype=np.float64).reshape(-1, 5)
            if len(b):
                b[:, 4] = ((b[:, 4].astype(np.float32) - lo) / (hi - lo)).astype(np.float64)
            out[key] = b
    return out


# --------------------------------------------------------------------------- one image


def _to_int32(values: np.ndarray) -> np.ndarray:
    """MATLAB double -> int32 conversion: round half away from zero, saturate (as int64)."""
    return np.clip(matlab_round(values), _INT32_MIN, _INT32_MAX).astype(np.int64)


def _sat(values: np.ndarray) -> np.ndarray:
    return np.clip(values, _INT32_MIN, _INT32_MAX)


def _overlap_int32(gt: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """``boxoverlap(gt, pred)`` with int32 ``gt`` corners, (P, G) int64 (MATLAB int32 rules)."""
    g = gt.astype(np.int64)
    p = pred[:, None, :]
    ix1 = np.maximum(g[None, :, 0], _to_int32(p[..., 0]))
    iy1 = np.maximum(g[None, :, 1], _to_int32(p[..., 1]))
    ix2 = np.minimum(g[None, :, 2], _to_int32(p[..., 2]))
    iy2 = np.minimum(g[None, :, 3], _to_int32(p[..., 3]))
    w = _sat(ix2 - ix1 + 1)
    h = _sat(iy2 - iy1 + 1)
    inter = _sat(w.astype(np.float64) * h).astype(np.int64)
    aarea = _sat(_sat(g[:, 2] - g[:, 0] + 1).astype(np.float64) * _sat(g[:, 3] - g[:, 1] + 1))
    barea = (pred[:, 2] - pred[:, 0] + 1) * (pred[:, 3] - pred[:, 1] + 1)
    union = _sat(_to_int32(aarea[None, :] + barea[:, None]) - inter)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = inter / union.astype(np.float64)
    o = np.where(union != 0, _to_int32(np.nan_to_num(ratio)),
                 np.sign(inter) * np.where(inter > 0, _INT32_MAX, -_INT32_MIN))
    o[(w <= 0) | (h <= 0)] = 0
    return o


def _overlap_float(gt: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """``boxoverlap(gt, pred)`` in double precision, (P, G) float64 (NaN where 0/0)."""
    g = gt.astype(np.float64)[None, :, :]
    p = pred[:, None, :]
    w = np.minimum(g[..., 2], p[..., 2]) - np.maximum(g[..., 0], p[..., 0]) + 1
    h = np.minimum(g[..., 3], p[..., 3]) - np.maximum(g[..., 1], p[..., 1]) + 1
    inter = w * h
    aarea = (g[..., 2] - g[..., 0] + 1) * (g[..., 3] - g[..., 1] + 1)
    barea = (p[..., 2] - p[..., 0] + 1) * (p[..., 3] - p[..., 1] + 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        o = inter / (aarea + barea - inter)
    o[(w <= 0) | (h <= 0)] = 0.0
    return o


def _official_corners(gt_xywh: np.ndarray, pred_xywh: np.ndarray
                      ) -> tuple[np.ndarray, np.ndarray]:
    """The official ``[x, y, x+w, y+h]`` corners: of the faces as int64 holding MATLAB int32
    values (integer ``gt_xywh``) or as float64, and of the predictions as float64."""
    gt = np.asarray(gt_xywh)
    pred = np.asarray(pred_xywh, dtype=np.float64)[:, :4].copy()
    pred[:, 2:4] += pred[:, 0:2]
    if gt.dtype.kind in "iu":
        g = gt.astype(np.int64)
        g[:, 2:4] = _sat(g[:, 2:4] + g[:, 0:2])
        return g, pred
    g = gt.astype(np.float64).copy()
    g[:, 2:4] += g[:, 0:2]
    return g, pred


def _corner_overlaps(gt: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """(P, G) ``boxoverlap`` of corners from :func:`_official_corners`."""
    return _overlap_int32(gt, pred) if gt.dtype.kind == "i" else _overlap_float(gt, pred)


def box_overlaps(gt_xywh: np.ndarray, pred_xywh: np.ndarray) -> np.ndarray:
    """(P, G) ``boxoverlap`` of every prediction with every face, after the official
    ``[x, y, x+w, y+h]`` conversion; integer ``gt_xywh`` gives MATLAB's int32 result."""
    return _corner_overlaps(*_official_corners(gt_xywh, pred_xywh))


def _first_maxima(overlaps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row, MATLAB ``max``'s index (the first maximum, NaN skipped) and value (NaN for a
    row of NaN only)."""
    rows = np.arange(len(overlaps))
    if overlaps.dtype.kind == "f":
        nan = np.isnan(overlaps)
        idx = np.argmax(np.where(nan, -np.inf, overlaps), axis=1)
        return idx, np.where(nan.all(axis=1), np.nan, overlaps[rows, idx])
    idx = np.argmax(overlaps, axis=1)
    return idx, overlaps[rows, idx]


def _best_faces(gt_xywh: np.ndarray, pred: np.ndarray,
                block_pairs: int) -> tuple[np.ndarray, np.ndarray]:
    """:func:`_first_maxima` of :func:`box_overlaps` (at least one face and one prediction),
    computed a block of about ``block_pairs`` (prediction, face) pairs at a time, so memory
    stays bounded; rows are independent, so the values are those of the whole matrix."""
    gt, corners = _official_corners(gt_xywh, pred)
    step = max(1, block_pairs // len(gt))
    blocks = [_first_maxima(_corner_overlaps(gt, corners[start:start + step]))
              for start in range(0, len(corners), step)]
    return np.concatenate([b[0] for b in blocks]), np.concatenate([b[1] for b in blocks])


def image_evaluation(pred: np.ndarray, gt_xywh: np.ndarray, keep: np.ndarray,
                     iou_thresh: float = IOU_THRESH,
                     block_pairs: int = OVERLAP_BLOCK_PAIRS) -> tuple[np.ndarray, np.ndarray]:
    """``image_evaluation`` of one image.

    Args:
        pred: (P, 5) ``[x, y, w, h, score]`` sorted best first.
        gt_xywh: (G, 4) faces; integer dtype = MATLAB int32 arithmetic.
        keep: (G,) bool, True for faces that count in this setting.
        iou_thresh: the overlap a match needs (``>=``).
        block_pairs: (prediction, face) overlaps computed at a time (at least one row);
            bounds memory, never changes the result.

    Returns:
        ``pred_recall`` (P,) int: kept faces hit by predictions 0..h;
        ``proposal`` (P,) int: 1 for a counted proposal, -1 for one matching an ignored face.
    """
    if len(gt_xywh) == 0 or len(pred) == 0:
        return np.zeros(len(pred), dtype=np.int64), np.ones(len(pred), dtype=np.int64)
    idx, best = _best_faces(gt_xywh, pred, block_pairs)
    matched = best >= iou_thresh
    kept_hit = matched & keep[idx]
    proposal = np.where(matched & ~keep[idx], -1, 1)
    first = np.zeros(len(pred), dtype=np.int64)
    hit_rows = np.flatnonzero(kept_hit)
    _, first_pos = np.unique(idx[hit_rows], return_index=True)
    first[hit_rows[first_pos]] = 1
    return np.cumsum(first), proposal


def thresholds(thresh_num: int = THRESH_NUM) -> np.ndarray:
    """``1 - t/thresh_num`` for t = 1..thresh_num (float64, as MATLAB computes them)."""
    return 1.0 - np.arange(1, thresh_num + 1, dtype=np.float64) / thresh_num


def image_pr_info(scores: np.ndarray, proposal: np.ndarray, pred_recall: np.ndarray,
                  thresh_num: int = THRESH_NUM) -> np.ndarray:
    """(thresh_num, 2) [proposals, hits] of one image at every threshold.

    ``scores`` are normalised and non-increasing, so "the last index with score >= thresh"
    (official ``find(..., 1, 'last')``) is the count of such scores.
    """
    scores = np.asarray(scores, dtype=np.float64)
    th = thresholds(thresh_num)
    if np.isnan(scores).any():  # only the official 0/0 case: nothing passes any threshold
        counts = np.zeros(thresh_num, dtype=np.int64)
    else:
        if np.any(np.diff(scores) > 0):
            raise ValueError("scores must be sorted in descending order")
        counts = np.searchsorted(-scores, -th, side="right")
    cum_prop = np.concatenate([[0], np.cumsum(proposal == 1)])
    cum_hits = np.concatenate([[0], pred_recall])
    return np.stack([cum_prop[counts], cum_hits[counts]], axis=1).astype(np.float64)


# --------------------------------------------------------------------------- dataset


def voc_ap(recall: np.ndarray, precision: np.ndarray) -> float:
    """``VOCap.m``: all-point interpolated AP; NaN precisions are skipped as MATLAB ``max`` does."""
    mrec = np.concatenate([[0.0], np.asarray(recall, np.float64), [1.0]])
    mpre = np.concatenate([[0.0], np.asarray(precision, np.float64), [0.0]])
    mpre = np.fmax.accumulate(mpre[::-1])[::-1]
    i = np.flatnonzero(mrec[1:] != mrec[:-1]) + 1
    return float(np.sum((mrec[i] - mrec[i - 1]) * mpre[i]))


@dataclass(frozen=True, eq=False)
class SettingResult:
    """The official PR curve and AP of one difficulty setting.

    Attributes:
        name: ``"easy"``, ``"medium"`` or ``"hard"``.
        ap: VOCap of the curve (NaN when the setting has no kept face).
        precision, recall: (thresh_num,) curve, point t at threshold ``1 - t/thresh_num``
            (the official ``pr_cruve`` columns 1 and 2); precision is NaN where nothing passes.
        num_faces: kept faces (the official ``count_face``).
    """

    name: str
    ap: float
    precision: np.ndarray
    recall: np.ndarray
    num_faces: int


@dataclass(frozen=True, eq=False)
class WiderEvalResult:
    """AP per setting plus the bookkeeping of one evaluation."""

    settings: dict[str, SettingResult]
    num_images: int
    missing: list[Path]
    iou_thresh: float
    thresh_num: int

    @property
    def ap(self) -> dict[str, float]:
        return {name: r.ap for name, r in self.settings.items()}

    def to_dict(self, curves: bool = True) -> dict[str, Any]:
        """JSON-ready summary (NaN written as None)."""
        def num(x: float) -> float | None:
            return None if math.isnan(x) else float(x)

        out: dict[str, Any] = {
            "protocol": "WIDER FACE official eval_tools (evaluation.m)",
            "iou_thresh": self.iou_thresh, "thresh_num": self.thresh_num,
            "num_images": self.num_images, "num_missing_predictions": len(self.missing),
            "missing_predictions": [str(p) for p in self.missing],
            "ap": {k: num(v) for k, v in self.ap.items()}, "settings": {}}
        for name, r in self.settings.items():
            entry: dict[str, Any] = {"ap": num(r.ap), "num_faces": r.num_faces}
            if curves:
                entry["thresholds"] = thresholds(self.thresh_num).tolist()
                entry["precision"] = [num(v) for v in r.precision]
                entry["recall"] = [num(v) for v in r.recall]
            out["settings"][name] = entry
        return out


def evaluate_setting(gt: WiderGroundTruth, normalized: Mapping[ImageKey, np.ndarray],
                     iou_thresh: float = IOU_THRESH,
                     thresh_num: int = THRESH_NUM, name: str = "") -> SettingResult:
    """``evaluation.m`` for one setting; ``normalized`` from :func:`normalize_scores`."""
    if gt.keep is None:
        raise WiderEvalError(f"{gt.path}: has no gt_list, not a difficulty-setting file")
    org = np.zeros((thresh_num, 2), dtype=np.float64)
    count_face = 0
    for event, names, ev_boxes, ev_keep in zip(gt.events, gt.images, gt.boxes, gt.keep):
        for image, boxes, keep_idx in zip(names, ev_boxes, ev_keep):
            count_face += len(keep_idx)
            pred = normalized.get((event, image))
            if len(boxes) == 0 or pred is None or len(pred) == 0:
                continue
            keep = np.zeros(len(boxes), dtype=bool)
            keep[keep_idx] = True
            pred_recall, proposal = image_evaluation(pred, boxes, keep, iou_thresh)
            org += image_pr_info(pred[:, 4], proposal, pred_recall, thresh_num)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = org[:, 1] / org[:, 0]
        recall = org[:, 1] / count_face if count_face else np.full(thresh_num, np.nan)
    ap = voc_ap(recall, precision) if count_face else math.nan
    return SettingResult(name, ap, precision, recall, count_face)


def evaluate_predictions(gt_set: WiderGroundTruthSet,
                         predictions: Mapping[ImageKey, np.ndarray],
                         iou_thresh: float = IOU_THRESH, thresh_num: int = THRESH_NUM,
                         missing: Sequence[Path] = ()) -> WiderEvalResult:
    """Evaluates raw (un-normalised) predictions, sorted best first per image.

    Keys are ``(event, image name without extension)`` as in ``wider_face_val.mat``. Keys of
    no ground-truth image are left out of the evaluation and of the score normalisation, as
    ``read_pred.m`` reads only the ground-truth images; one warning names a few of them.
    """
    gt_keys = set(gt_set.index.image_keys())
    unknown = [key for key in predictions if key not in gt_keys]
    if unknown:
        warnings.warn(_unknown_keys_warning(unknown, len(predictions), sorted(gt_keys)[:1]),
                      stacklevel=2)
    normalized = normalize_scores({k: v for k, v in predictions.items() if k in gt_keys})
    results = {name: evaluate_setting(gt, normalized, iou_thresh, thresh_num, name)
               for name, gt in gt_set.settings.items()}
    return WiderEvalResult(results, len(gt_set.index.image_keys()), list(missing),
                           iou_thresh, thresh_num)


def _key_name(key: Any) -> str:
    """``event/image`` for an ``(event, image)`` key, else its repr."""
    if isinstance(key, tuple) and len(key) == 2 and all(isinstance(p, str) for p in key):
        return f"{key[0]}/{key[1]}"
    return repr(key)


def _unknown_keys_warning(unknown: Sequence[Any], total: int,
                          example: Sequence[ImageKey]) -> str:
    """The warning about prediction keys that name no ground-truth image."""
    shown = ", ".join(_key_name(k) for k in unknown[:3])
    more = f" and {len(unknown) - 3} more" if len(unknown) > 3 else ""
    if len(unknown) == total:
        like = f", e.g. {example[0]!r}" if example else ""
        return (f"NONE of the {total} prediction images is a ground-truth image ({shown}{more}): "
                f"nothing is evaluated and every AP is 0; keys must be (event, image name "
                f"without extension) exactly as in {INDEX_FILE}{like}")
    return (f"{len(unknown)} of {total} prediction images are not ground-truth images and are "
            f"ignored, as the official read_pred.m reads only the ground-truth images (their "
            f"scores do not enter the normalisation): {shown}{more}")


def evaluate_folder(gt_dir: str | Path, pred_dir: str | Path,
                    settings: Sequence[str] = SETTINGS, on_missing: str = "warn",
                    iou_thresh: float = IOU_THRESH,
                    thresh_num: int = THRESH_NUM) -> WiderEvalResult:
    """The whole official evaluation: ground-truth folder + detections folder -> AP."""
    gt_set = load_ground_truth(gt_dir, settings)
    preds = read_predictions(pred_dir, gt_set.index, on_missing)
    return evaluate_predictions(gt_set, preds.boxes, iou_thresh, thresh_num, preds.missing)

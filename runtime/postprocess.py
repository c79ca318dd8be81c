"""Host (numpy) postprocessing: decode every level, one NMS over all levels, clip, score.

Boxes lying entirely outside the image are dropped after NMS (:func:`inside_image`): a
broken or mismatched network can emit thousands of them, and clipped they become
zero-area boxes on the border that hide nothing. The image's pixel area is taken in the
variant's coordinates (:attr:`~tinyfaces_trt.core.config.DetectorConfig.coordinate_base`):
``[0, W-1] x [0, H-1]`` for the port's 0-based boxes, ``[1, W] x [1, H]`` for the authors'
1-based ones, where ``tiny_face_detector.m`` clips them.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from tinyfaces_trt.core.config import NUM_TEMPLATES, DetectorConfig
from tinyfaces_trt.core.errors import NonFiniteScoresError, ScoreMapError, StageOrderError
from tinyfaces_trt.runtime.decode import Candidates, decode_level
from tinyfaces_trt.runtime.nms import nms
from tinyfaces_trt.core.pyramid import PyramidLevel


def inside_image(boxes: np.ndarray, image_hw: tuple[int, int], base: float) -> np.ndarray:
    """bool (N,): the (N, 4+) ``[x1, y1, x2, y2]`` boxes that overlap the image's pixel
    area ``[base, base + width - 1] x [base, base + height - 1]`` (a box touching its border
    counts as inside); ``base``: the coordinate of the first pixel
    (``DetectorConfig.coordinate_base``)."""
    height, width = image_hw
    b = np.asarray(boxes)
    if b.dtype != np.float32:  # float32 rows compare as they are: the bounds are exact there
        b = b.astype(np.float64, copy=False)
    return ((b[:, 2] >= base) & (b[:, 3] >= base)
            & (b[:, 0] <= base + width - 1) & (b[:, 1] <= base + height - 1))


def finish_boxes(rows: np.ndarray, image_hw: tuple[int, int], config: DetectorConfig) -> np.ndarray:
    """(N, 5) [x1, y1, x2, y2, score] rows in NMS order, unclipped -> the rows of boxes that
    overlap the image, clipped when ``config.clip_boxes``: the numpy path's last two steps
    (:func:`select_detections`; ``tf_nms`` does the same on the GPU with
    ``tf_nms_params.drop_outside``, tested against this). Both take the image's pixel area
    in the variant's coordinates (``config.coordinate_base``): x in ``[0, W-1]`` for
    ``"pytorch"``, ``[1, W]`` for ``"matconvnet"``, y likewise."""
    base = config.coordinate_base
    rows = rows[inside_image(rows, image_hw, base)]  # a copy: ``rows`` itself is left alone
    if config.clip_boxes:
        height, width = image_hw
        right, bottom = base + width - 1, base + height - 1
        np.clip(rows[:, :4], np.array([base] * 4, rows.dtype),
                np.array([right, bottom, right, bottom], rows.dtype), out=rows[:, :4])
    return rows


def probability(logits: np.ndarray) -> np.ndarray:
    """``1 / (1 + exp(-logits))`` in float64: the host path's score (the device path's
    kernel computes it in float32)."""
    with np.errstate(over="ignore"):
        return 1.0 / (1.0 + np.exp(-np.asarray(logits, np.float64)))


def select_detections(candidates: Candidates, image_hw: tuple[int, int],
                      config: DetectorConfig) -> np.ndarray:
    """NMS over ``candidates``, dropping boxes entirely outside the image, then clipping;
    (N, 5) float32 [x1, y1, x2, y2, score]: score = sigmoid(logit), or with
    ``config.score == "logit"`` the float32 logit itself (exactly: float32 -> float64 ->
    float32 is lossless). The cells were selected on the logit (``config.logit_thresh``)
    at decode; the score column decides nothing here."""
    keep = nms(candidates.boxes, candidates.logits, candidates.keys, config.nms_thresh,
               config.box_pixel_offset)
    logits = candidates.logits[keep].astype(np.float64)
    score = logits if config.score == "logit" else probability(logits)
    rows = np.concatenate([candidates.boxes[keep], score[:, None]], axis=1)  # float64
    return finish_boxes(rows, image_hw, config).astype(np.float32)


def _score_map_cells(score_map: np.ndarray) -> int:
    """``25*h*w`` of a (1, 125, h, w) or (125, h, w) score map: its share of the key space."""
    h, w = np.shape(score_map)[-2:]
    return NUM_TEMPLATES * int(h) * int(w)


def postprocess_levels(score_maps: Sequence[np.ndarray], levels: Sequence[PyramidLevel],
                       image_hw: tuple[int, int], config: DetectorConfig) -> np.ndarray:
    """Decode + NMS + clip of one image's score maps (one per level, in plan order).

    Returns:
        (N, 5) float32 [x1, y1, x2, y2, prob], best first.
    """
    if len(score_maps) != len(levels):
        raise ScoreMapError(f"{len(score_maps)} score maps for {len(levels)} levels")
    post = HostPostprocessor(config)
    post.reset(*image_hw)
    for score_map, level in zip(score_maps, levels):
        post.add_level(score_map, level)
    return post.finish()


class HostPostprocessor:
    """:class:`~tinyfaces_trt.runtime.pipeline.Postprocessor` on the CPU: numpy decode and NMS."""

    def __init__(self, config: DetectorConfig) -> None:
        self.config = config
        self._image_hw: tuple[int, int] | None = None
        self._parts: list[list[Candidates]] = []
        self._level_base = 0

    def reset(self, image_height: int, image_width: int, count: int = 1) -> None:
        """Starts ``count`` new images of the given original size."""
        self._image_hw = (int(image_height), int(image_width))
        self._parts = [[] for _ in range(count)]
        self._level_base = 0

    def add_level(self, score_map: np.ndarray, level: PyramidLevel) -> None:
        """Decodes one level's (count, 125, h, w) score map into each image's candidates."""
        if self._image_hw is None:
            raise StageOrderError("HostPostprocessor.reset() must be called before add_level()")
        score_map = np.asarray(score_map)
        if score_map.ndim != 4 or score_map.shape[0] != len(self._parts):
            raise ScoreMapError(f"score map must have shape ({len(self._parts)}, 125, h, w) for "
                                f"{len(self._parts)} image(s), got {score_map.shape}")
        for i, parts in enumerate(self._parts):
            try:
                parts.append(decode_level(score_map[i:i + 1], level, self.config, self._level_base))
            except NonFiniteScoresError as exc:
                if len(self._parts) == 1:
                    raise
                raise NonFiniteScoresError(f"image {i + 1} of a batch of {len(self._parts)}: "
                                           f"{exc}") from None
        self._level_base += _score_map_cells(score_map)

    def finish_all(self) -> list[np.ndarray]:
        """NMS per image; one (N_i, 5) float32 [x1, y1, x2, y2, prob] array each, best first."""
        if self._image_hw is None:
            raise StageOrderError("HostPostprocessor.reset() must be called before finish()")
        return [select_detections(Candidates.concatenate(parts), self._image_hw, self.config)
                for parts in self._parts]

    def finish(self) -> np.ndarray:
        """:meth:`finish_all` of a single image."""
        (boxes,) = self.finish_all()
        return boxes

    def synchronize(self) -> None:
        """Nothing is queued on the host."""

    def close(self) -> None:
        """Nothing to release."""

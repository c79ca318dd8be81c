"""Temporal consistency: faces tracked across frames, masks held and back-filled.

A detector misses a face now and then; in an anonymised video one missed frame shows it.
:class:`TemporalMasker` takes each frame's detections in order and gives back, ``hold``
frames later, the masks of every frame:

* detections are associated with tracks by IoU (greedy, best pairs first, IoU >= ``iou``)
  against each track's box predicted at constant velocity, a track staying open while it
  was last detected at most ``hold + 1`` frames ago; a track of a single detection (no
  velocity yet) also takes the nearest detection of a similar size within :data:`REACH` of
  its size per frame, so that a fast face's second detection continues its track;
* a track's mask is **held** for up to ``hold`` frames after a detection: a gap between two
  detections of one track is filled by linear interpolation of the two boxes, so a moving
  face stays covered; after the last detection the box moves on at the track's velocity;
* a new track is **back-filled** for up to ``hold`` frames before its first detection (the
  frames in which the detector had not found it yet), extrapolated backwards at the velocity
  of its first two detections.

A velocity from two detections carries the detector's jitter (a few pixels, multiplied by up
to ``hold`` frames), so an extrapolated mask (held after the last detection, back-filled
before the first) is never smaller than the detection it extends from, and always contains
it (:func:`extend_box`): a still face stays covered, and a moving one as far as the
velocity's jitter does not slow the mask below the face's speed.

Pure logic (no images): unit-tested with known detections.

    masker = TemporalMasker(hold=5)
    for i, dets in enumerate(per_frame_detections):
        for frame in masker.push(i, dets):
            use(frame.index, frame.boxes())
    for frame in masker.flush():
        use(frame.index, frame.boxes())
"""

from __future__ import annotations

import dataclasses
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from tinyfaces_trt.runtime.boxes import box_iou

#: How far (in the box's longer side per frame) a track of one detection reaches for its
#: next detection when they overlap too little (:meth:`TemporalMasker.push`).
REACH = 1.0

DETECTED = "detected"
HELD = "held"
FILLED = "filled"


@dataclass(frozen=True)
class FaceMask:
    """One face's mask in one frame.

    Attributes:
        track: the track id (0, 1, ... in order of first detection).
        box: (x1, y1, x2, y2) in frame pixels.
        score: the detection's probability; None for held and back-filled masks.
        kind: ``"detected"``, ``"held"`` or ``"filled"``.
    """

    track: int
    box: tuple[float, float, float, float]
    score: float | None
    kind: str


@dataclass
class FrameMasks:
    """Every mask of one frame, in track order."""

    index: int
    masks: list[FaceMask] = field(default_factory=list)

    def boxes(self) -> np.ndarray:
        """(N, 4) float64 boxes of all masks."""
        return np.array([m.box for m in self.masks], dtype=np.float64).reshape(-1, 4)


#: A face's size may change by at most this factor between two detections of one track
#: joined by distance (:func:`associate`'s ``reach``).
SIZE_CHANGE = 2.0


def associate(track_boxes: np.ndarray, detections: np.ndarray, iou: float,
              reach: np.ndarray | None = None) -> list[tuple[int, int]]:
    """Greedy one-to-one matching: ``[(track_row, detection_row)]``.

    First by IoU, best first, IoU >= ``iou`` (> 0). Then, where ``reach`` (one value per
    track, 0: none) is given, the tracks and detections left are matched by distance,
    nearest first: a detection whose centre lies within ``reach`` x the track box's longer
    side of the track box's centre, and whose size is within :data:`SIZE_CHANGE` of it.
    """
    if len(track_boxes) == 0 or len(detections) == 0:
        return []
    pairs: list[tuple[int, int]] = []
    used_t: set[int] = set()
    used_d: set[int] = set()
    overlaps = box_iou(track_boxes, detections)
    _greedy(-overlaps, (overlaps >= iou) & (overlaps > 0), pairs, used_t, used_d)
    if reach is not None:
        distance, near = _centre_distances(np.asarray(track_boxes, np.float64)[:, :4],
                                           np.asarray(detections, np.float64)[:, :4])
        _greedy(distance, near & (distance <= np.asarray(reach, np.float64)[:, None]),
                pairs, used_t, used_d)
    return pairs


def _greedy(cost: np.ndarray, allowed: np.ndarray, pairs: list[tuple[int, int]],
            used_t: set[int], used_d: set[int]) -> None:
    """Appends the allowed pairs of unused rows and columns to ``pairs``, lowest cost first."""
    for flat in np.argsort(np.where(allowed, cost, np.inf), axis=None, kind="stable"):
        t, d = divmod(int(flat), cost.shape[1])
        if not allowed[t, d]:
            break
        if t in used_t or d in used_d:
            continue
        used_t.add(t)
        used_d.add(d)
        pairs.append((t, d))


def _centre_distances(tracks: np.ndarray, dets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(T, D) centre distances in units of the track box's longer side, and where the two
    sizes (square roots of the areas) are within :data:`SIZE_CHANGE` of each other."""
    def centres(b: np.ndarray) -> np.ndarray:
        return (b[:, :2] + b[:, 2:4]) / 2

    def sizes(b: np.ndarray) -> np.ndarray:
        return np.sqrt(np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None))

    side = np.maximum(tracks[:, 2] - tracks[:, 0], tracks[:, 3] - tracks[:, 1])
    gap = np.linalg.norm(centres(tracks)[:, None, :] - centres(dets)[None, :, :], axis=2)
    with np.errstate(divide="ignore", invalid="ignore"):
        distance = np.where(side[:, None] > 0, gap / side[:, None], np.inf)
        ratio = sizes(dets)[None, :] / sizes(tracks)[:, None]
    similar = (ratio >= 1 / SIZE_CHANGE) & (ratio <= SIZE_CHANGE)
    return distance, similar


#: An extrapolated mask grows by this fraction of its face's size on every side, per frame
#: it is extended: the velocity from two detections is off by their jitter (a tenth of the
#: face is common), and a face first seen has no velocity yet.
GROWTH_PER_FRAME = 0.15


def extend_box(anchor: np.ndarray, velocity: np.ndarray | None, frames: int) -> np.ndarray:
    """The mask of a face ``frames`` frames after (negative: before) its detected box
    ``anchor`` (x1, y1, x2, y2), moving at ``velocity`` (per frame, per coordinate; None:
    not known yet).

    The box moved at ``velocity``, at least as large as ``anchor`` about its moved centre (a
    velocity that shrinks the box is the detector's jitter), joined with ``anchor`` (one
    that moves it may be too), then grown by :data:`GROWTH_PER_FRAME` of the anchor's size
    per frame: never smaller than the detection, never off it, wider the further it goes.
    """
    anchor = np.asarray(anchor, np.float64)[:4]
    step = np.zeros(4) if velocity is None else np.asarray(velocity, np.float64)[:4]
    moved = anchor + step * frames
    centre = (moved[:2] + moved[2:]) / 2
    size = anchor[2:] - anchor[:2]
    half = np.maximum(moved[2:] - moved[:2], size) / 2
    margin = GROWTH_PER_FRAME * abs(frames) * size
    return np.concatenate([np.minimum(centre - half, anchor[:2]) - margin,
                           np.maximum(centre + half, anchor[2:]) + margin])


@dataclass
class _Track:
    id: int
    first: int
    last: int
    detections: dict[int, tuple[np.ndarray, float]] = field(default_factory=dict)
    rows: dict[int, int] = field(default_factory=dict)  # frame -> its detection's row there
    velocity: np.ndarray = field(default_factory=lambda: np.zeros(4))  # per frame, latest
    first_velocity: np.ndarray | None = None  # of the first two detections

    def box_at(self, index: int) -> np.ndarray:
        """The last box moved on to frame ``index`` at the latest velocity (the prediction
        detections are associated with; a held mask is :func:`extend_box`'s)."""
        return self.detections[self.last][0] + self.velocity * (index - self.last)

    def add(self, index: int, box: np.ndarray, score: float, row: int) -> None:
        self.velocity = (box - self.detections[self.last][0]) / (index - self.last)
        if self.first_velocity is None:
            self.first_velocity = self.velocity
        self.detections[index] = (box, score)
        self.rows[index] = row
        self.last = index


class _Tracker:
    """One set of tracks: detections associated by IoU, and with ``reach`` also a track of
    one detection by distance (:data:`REACH`); the masks of any frame still pending."""

    def __init__(self, hold: int, iou: float, reach: bool) -> None:
        self.hold, self.iou, self.reach = hold, iou, reach
        self.tracks: list[_Track] = []
        self._next_id = 0

    def push(self, index: int, dets: np.ndarray) -> None:
        open_tracks = [t for t in self.tracks if index - t.last <= self.hold + 1]
        reach = np.array([REACH * (index - t.last) if self.reach and t.first == t.last else 0.0
                          for t in open_tracks])
        pairs = associate(np.array([t.box_at(index) for t in open_tracks]).reshape(-1, 4),
                          dets, self.iou, reach)
        matched = set()
        for t_row, d_row in pairs:
            open_tracks[t_row].add(index, dets[d_row, :4].copy(), float(dets[d_row, 4]), d_row)
            matched.add(d_row)
        for d_row in range(len(dets)):
            if d_row not in matched:
                self.tracks.append(_Track(self._next_id, index, index,
                                          {index: (dets[d_row, :4].copy(), float(dets[d_row, 4]))},
                                          {index: d_row}))
                self._next_id += 1

    def masks(self, index: int) -> list[tuple[FaceMask, tuple[int, int]]]:
        """Frame ``index``'s masks, each with the detection ``(frame, row)`` it comes from
        (for a held mask the last one before, for a back-filled one the first after)."""
        found = []
        for track in self.tracks:
            mask = self._mask_of(track, index)
            if mask is not None:
                found.append(mask)
        return found

    def _mask_of(self, track: _Track, index: int
                 ) -> tuple[FaceMask, tuple[int, int]] | None:
        if index in track.detections:
            box, score = track.detections[index]
            return FaceMask(track.id, _tuple(box), score, DETECTED), (index, track.rows[index])
        if index < track.first:
            if track.first - index > self.hold:
                return None
            box = extend_box(track.detections[track.first][0], track.first_velocity,
                             index - track.first)
            return (FaceMask(track.id, _tuple(box), None, FILLED),
                    (track.first, track.rows[track.first]))
        before = max((f for f in track.detections if f < index), default=None)
        if before is None or index - before > self.hold:
            return None
        after = min((f for f in track.detections if f > index), default=None)
        if after is not None:
            w = (index - before) / (after - before)
            box = (1 - w) * track.detections[before][0] + w * track.detections[after][0]
        else:
            box = extend_box(track.detections[track.last][0], track.velocity, index - track.last)
        return FaceMask(track.id, _tuple(box), None, HELD), (before, track.rows[before])

    def forget(self, index: int, oldest: int) -> None:
        """Drops what no pending or future frame can need: closed tracks whose masks are all
        emitted, and detections older than the latest one before the oldest pending frame
        (a pending frame interpolates or holds from at most that one)."""
        keep = []
        for track in self.tracks:
            if track.last + self.hold < oldest and index + 1 - track.last > self.hold + 1:
                continue
            older = [f for f in track.detections if f < oldest]
            for f in sorted(older)[:-1]:
                if f != track.first:
                    del track.detections[f]
                    del track.rows[f]
            keep.append(track)
        self.tracks = keep


class TemporalMasker:
    """Tracks faces over frames and emits each frame's masks ``hold`` frames late.

    Two trackers run side by side: one by IoU only, and one that also joins a track of a
    single detection to the nearest detection within reach (a fast face). A frame's masks
    are the first's, plus the second's where they differ: joining by distance may bridge a
    fast face's missed frames, but a wrong join (two people side by side) never takes away
    a mask the IoU tracks give. An added mask carries the IoU track id of the detection it
    comes from.

    Args:
        hold: frames a mask is held after a track's last detection and back-filled before
            its first (0: detections only, no delay).
        iou: smallest IoU that continues a track.
    """

    def __init__(self, hold: int = 5, iou: float = 0.3) -> None:
        if hold < 0:
            raise ValueError(f"hold must be >= 0 frames, got {hold}")
        if not 0.0 < iou <= 1.0:
            raise ValueError(f"iou must be in (0, 1], got {iou}")
        self.hold = int(hold)
        self.iou = float(iou)
        self._steady = _Tracker(self.hold, self.iou, reach=False)
        self._moving = _Tracker(self.hold, self.iou, reach=True)
        self._owner: dict[tuple[int, int], int] = {}  # (frame, row) -> its IoU track's id
        self._pending: deque[int] = deque()  # frame indices pushed, not yet emitted
        self._last_index: int | None = None

    def push(self, index: int, detections: np.ndarray) -> list[FrameMasks]:
        """Adds frame ``index``'s detections ((N, 5) [x1, y1, x2, y2, prob]; indices must
        increase); returns the frames now final (those at least ``hold`` frames back)."""
        if self._last_index is not None and index <= self._last_index:
            raise ValueError(f"frame indices must increase: {index} after {self._last_index}")
        self._last_index = index
        dets = np.asarray(detections, np.float64).reshape(-1, 5) if np.size(detections) \
            else np.zeros((0, 5))
        self._steady.push(index, dets)
        self._moving.push(index, dets)
        for track in self._steady.tracks:
            if track.last == index:
                self._owner[(index, track.rows[index])] = track.id
        self._pending.append(index)
        ready = []
        while self._pending and self._pending[0] <= index - self.hold:
            ready.append(self._emit(self._pending.popleft()))
        oldest = self._pending[0] if self._pending else index + 1
        self._steady.forget(index, oldest)
        self._moving.forget(index, oldest)
        # a pending frame's masks come from detections at most hold + 1 frames before it
        for key in [k for k in self._owner if k[0] < oldest - self.hold - 1]:
            del self._owner[key]
        return ready

    def flush(self) -> list[FrameMasks]:
        """The remaining frames' masks (call once after the last frame)."""
        ready = [self._emit(i) for i in self._pending]
        self._pending.clear()
        return ready

    def _emit(self, index: int) -> FrameMasks:
        frame = FrameMasks(index)
        frame.masks = [mask for mask, _ in self._steady.masks(index)]
        given = {mask.box for mask in frame.masks}
        for mask, source in self._moving.masks(index):
            if mask.box not in given:
                frame.masks.append(dataclasses.replace(mask, track=self._owner[source]))
                given.add(mask.box)
        frame.masks.sort(key=lambda m: m.track)
        return frame


def _tuple(box: np.ndarray) -> tuple[float, float, float, float]:
    return tuple(float(v) for v in box[:4])  # type: ignore[return-value]

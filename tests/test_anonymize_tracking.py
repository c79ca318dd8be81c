"""Face tracks over frames: IoU association, held and back-filled masks (known detections)."""

from __future__ import annotations

import numpy as np
import pytest

from tinyfaces_trt.anonymize.tracking import DETECTED, FILLED, HELD, TemporalMasker, associate
from tinyfaces_trt.runtime.boxes import box_iou


def _run(masker, per_frame):
    frames = []
    for i, dets in enumerate(per_frame):
        frames += masker.push(i, np.array(dets, dtype=np.float64).reshape(-1, 5))
    frames += masker.flush()
    assert [f.index for f in frames] == list(range(len(per_frame)))
    return frames


def _kinds(frames, track=0):
    return [next((m.kind for m in f.masks if m.track == track), None) for f in frames]


def test_iou_and_greedy_association():
    a = np.array([[0, 0, 10, 10], [100, 100, 110, 110]])
    b = np.array([[101, 100, 111, 110], [0, 1, 10, 11], [50, 50, 60, 60]])
    iou = box_iou(a, b)
    assert iou[0, 1] == pytest.approx(90 / 110) and iou[0, 0] == 0 and iou[1, 2] == 0
    assert sorted(associate(a, b, 0.3)) == [(0, 1), (1, 0)]
    assert associate(a, b, 0.95) == []


def test_gap_is_held_by_interpolation_and_new_track_back_filled():
    face = [10, 10, 30, 30, 0.9]
    moved = [20, 10, 40, 30, 0.8]   # IoU with face = 1/3: same track
    later = [100, 100, 120, 120, 0.7]
    per_frame = [[], [], [face], [], [], [moved], [moved, later], [], [], [], [], []]
    frames = _run(TemporalMasker(hold=2, iou=0.3), per_frame)
    assert _kinds(frames, 0) == [FILLED, FILLED, DETECTED, HELD, HELD, DETECTED, DETECTED,
                                 HELD, HELD, None, None, None]
    # the gap 3..4 is interpolated between the boxes of frames 2 and 5
    assert frames[3].masks[0].box == pytest.approx((10 + 10 / 3, 10, 30 + 10 / 3, 30))
    assert frames[4].masks[0].box == pytest.approx((10 + 20 / 3, 10, 30 + 20 / 3, 30))
    # held after the last (still: velocity 0), grown by GROWTH_PER_FRAME (0.15) of its 20 px
    assert frames[7].masks[0].box == pytest.approx((17, 7, 43, 33))
    assert frames[8].masks[0].box == pytest.approx((14, 4, 46, 36))
    assert frames[2].masks[0].score == pytest.approx(0.9) and frames[3].masks[0].score is None
    # second face: track 1, back-filled on frames 4-5, held on 7-8
    assert _kinds(frames, 1) == [None] * 4 + [FILLED, FILLED, DETECTED, HELD, HELD, None, None,
                                              None]


def _covered(frames, truth):
    """Per frame, whether some mask contains the true box ``truth[i]`` whole."""
    return [any(m.box[0] <= t[0] and m.box[1] <= t[1] and m.box[2] >= t[2] and m.box[3] >= t[3]
                for m in f.masks) for f, t in zip(frames, truth)]


@pytest.mark.parametrize("speed, missed", [(30, (3, 4)), (45, (3,)), (45, (1,)), (30, (1, 2))])
def test_a_fast_face_missed_for_frames_stays_covered(speed, missed):
    """A 48 px face moving more than half its width per frame overlapped its last box by
    IoU < 0.3: each detection began a track of its own, held where the face had been, and
    a missed frame left half the face visible."""
    truth = [(100 + speed * i, 100, 148 + speed * i, 148) for i in range(8)]
    per_frame = [[] if i in missed else [[*box, 0.9]] for i, box in enumerate(truth)]
    frames = _run(TemporalMasker(hold=5, iou=0.3), per_frame)
    assert _covered(frames, [np.array(t) + (0.001, 0.001, -0.001, -0.001) for t in truth]) \
        == [True] * 8


@pytest.mark.parametrize("gap", [8, 24])
def test_two_people_side_by_side_stay_covered_when_one_is_missed(gap):
    """Joining a track of one detection by distance took the neighbour's first detection:
    the held mask slid between the two faces and the neighbour lost its back-fill (left
    fully visible). A join by distance only adds masks to those of the IoU tracks."""
    right = (100 + 48 + gap, 100, 148 + 48 + gap, 160)
    left = (100, 100, 148, 160)
    per_frame = [[[*right, 0.9]] if i in (0, 4, 5, 6, 7) else [] for i in range(8)]
    for i in range(3, 8):
        per_frame[i].append([*left, 0.8])
    frames = _run(TemporalMasker(hold=5, iou=0.3), per_frame)
    inner = (0.001, 0.001, -0.001, -0.001)
    assert _covered(frames, [np.array(right) + inner] * 8) == [True] * 8
    assert _covered(frames, [np.array(left) + inner] * 8) == [True] * 8
    tracks = {m.track for f in frames for m in f.masks}
    assert tracks == {0, 1}  # the IoU tracks' ids, also on masks the distance join added


def test_reach_joins_only_a_near_detection_of_a_similar_size():
    track = np.array([[0, 0, 40, 40]])
    assert associate(track, np.array([[35, 0, 75, 40]]), 0.3) == []  # IoU 5/75
    assert associate(track, np.array([[35, 0, 75, 40]]), 0.3, np.array([1.0])) == [(0, 0)]
    assert associate(track, np.array([[41, 0, 81, 40]]), 0.3, np.array([1.0])) == []  # 41 px
    assert associate(track, np.array([[41, 0, 81, 40]]), 0.3, np.array([2.0])) == [(0, 0)]
    assert associate(track, np.array([[30, 0, 110, 80]]), 0.3, np.array([2.0])) == [(0, 0)]
    assert associate(track, np.array([[30, 0, 115, 85]]), 0.3, np.array([2.0])) == []  # > 2x
    assert associate(track, np.array([[35, 0, 75, 40]]), 0.3, np.array([0.0])) == []
    # IoU pairs come first, the nearest of the rest next
    tracks = np.array([[0, 0, 40, 40], [200, 0, 240, 40]])
    dets = np.array([[230, 0, 270, 40], [205, 0, 245, 40], [30, 0, 70, 40]])
    assert associate(tracks, dets, 0.3, np.array([1.0, 1.0])) == [(1, 1), (0, 2)]


def test_gap_longer_than_hold_starts_a_new_track():
    face = [10, 10, 30, 30, 0.9]
    frames = _run(TemporalMasker(hold=1), [[face], [], [], [], [face]])
    assert _kinds(frames, 0) == [DETECTED, HELD, None, None, None]
    assert _kinds(frames, 1) == [None, None, None, FILLED, DETECTED]


def test_hold_zero_emits_detections_immediately():
    masker = TemporalMasker(hold=0)
    ready = masker.push(0, np.array([[1, 1, 5, 5, 0.6]]))
    assert len(ready) == 1 and ready[0].masks[0].kind == DETECTED
    assert masker.push(1, np.zeros((0, 5)))[0].masks == []


def test_masks_come_out_hold_frames_late_and_indices_must_increase():
    masker = TemporalMasker(hold=3)
    assert [len(masker.push(i, np.zeros((0, 5)))) for i in range(5)] == [0, 0, 0, 1, 1]
    with pytest.raises(ValueError, match="must increase"):
        masker.push(4, np.zeros((0, 5)))
    with pytest.raises(ValueError, match="hold"):
        TemporalMasker(hold=-1)


def test_moving_face_with_dropped_detections_is_never_unmasked():
    """A face moving 3 px/frame; the detector misses 1, 2 or 3 frames in a row. Every frame
    where the face exists must have a mask covering it (hold 3), and without hold some don't."""
    n = 60
    truth = [(5 + 3 * i, 20, 25 + 3 * i, 44) for i in range(n)]
    dropped = {4, 9, 10, 17, 18, 19, 30, 41, 42, 55}
    per_frame = [[] if i in dropped else [[*truth[i], 0.9]] for i in range(n)]
    per_frame[0] = []  # missed on its first frame too: back-fill covers it

    def unmasked(hold):
        frames = _run(TemporalMasker(hold=hold), per_frame)
        bad = 0
        for f, (x1, y1, x2, y2) in zip(frames, truth):
            b = f.boxes()
            covered = ((b[:, 0] <= x1 + 1e-9) & (b[:, 1] <= y1) & (b[:, 2] >= x2 - 1e-9)
                       & (b[:, 3] >= y2)).any()
            bad += not covered
        return bad

    assert unmasked(hold=3) == 0
    assert unmasked(hold=0) == len(dropped | {0})


def test_memory_is_bounded_on_long_runs():
    masker = TemporalMasker(hold=2)
    for i in range(500):
        masker.push(i, np.array([[i, 0, i + 10, 10, 0.9], [1000 + 50 * (i % 7), 0, 1010 + 50 * (i % 7), 10, 0.9]]))
    for tracker in (masker._steady, masker._moving):
        assert len(tracker.tracks) <= 10
        assert all(len(t.detections) <= 6 for t in tracker.tracks)
    assert len(masker._owner) <= 2 * 6


FACE = (102, 102, 138, 138)
#: Detector jitter between the two boxes a velocity comes from: the second box 2 px larger
#: on each side (10% of a 36 px face) or 4 px to the right.
JITTER = {"grow": (-2, -2, 2, 2), "shift": (4, 0, 4, 0)}


def _back_fill_and_hold(boxes, first, hold=5):
    """Runs a face's detections ``boxes`` from frame ``first`` on, missed in the ``hold``
    frames before and after them (the most hold and back-fill cover)."""
    per_frame = [[]] * first + [[[*b, 0.9]] for b in boxes] + [[]] * hold
    frames = _run(TemporalMasker(hold=hold), per_frame)
    assert len(frames) == first + len(boxes) + hold
    return frames


@pytest.mark.parametrize("jitter", sorted(JITTER))
def test_jitter_never_shrinks_or_slides_a_back_filled_mask_off_a_still_face(jitter):
    """A still face missed in its first 5 frames (--hold 5), then detected with the second
    box 2 px larger a side: back-filled at that 'velocity', the mask of frame 1 shrank to
    [110, 110, 130, 130], leaving 44% of the face visible at --mask-scale 1.3 (4 px to the
    right: it slid 16 px left, 25% visible). A back-filled mask holds the first detection."""
    second = tuple(np.add(FACE, JITTER[jitter]))
    frames = _back_fill_and_hold([FACE, second, FACE], first=5)
    assert _kinds(frames)[:5] == [FILLED] * 5
    assert _covered(frames[:5], [FACE] * 5) == [True] * 5


@pytest.mark.parametrize("jitter", sorted(JITTER))
def test_jitter_never_shrinks_or_slides_a_held_mask_off_a_still_face(jitter):
    """The same forwards: the last but one detection of a still face 2 px a side larger
    (or 4 px to the right), then the face missed for 5 frames: held at that 'velocity', the
    mask shrank (slid) off it. A held mask holds the last detection."""
    last_but_one = tuple(np.add(FACE, JITTER[jitter]))
    frames = _back_fill_and_hold([FACE, last_but_one, FACE], first=0)
    assert _kinds(frames)[3:] == [HELD] * 5
    assert _covered(frames[3:], [FACE] * 5) == [True] * 5


@pytest.mark.parametrize("backwards", [True, False], ids=["back-filled", "held"])
def test_a_moving_face_stays_covered_in_every_filled_and_held_frame(backwards):
    """A face moving 6 px a frame, missed for 5 frames before its first and after its last
    detection: the extended mask moves on with it, exact or with the second box 2 px a side
    larger (which shrank the mask off the face), or 4 px off along the motion (a velocity
    4 px a frame wrong: the mask grows by GROWTH_PER_FRAME of the face a frame). (Frame 0,
    the farthest back-filled, is emitted with the first detection, before a velocity is
    known: only the growth covers it, not whole.)"""
    truth = [np.add(FACE, (6 * i, 0, 6 * i, 0)) for i in range(13)]
    for name, jitter in [("none", (0, 0, 0, 0)), ("grow", JITTER["grow"]),
                         ("right", (4, 0, 4, 0)), ("left", (-4, 0, -4, 0))]:
        boxes = [tuple(b) for b in truth[5:8]]
        # the second detection jitters: the first velocity's (back-fill) and the last's
        boxes[1] = tuple(np.add(boxes[1], jitter))
        frames = _back_fill_and_hold(boxes, first=5)
        extended = slice(1, 5) if backwards else slice(8, 13)
        kinds = _kinds(frames)[extended]
        assert kinds == [FILLED if backwards else HELD] * len(kinds), name
        assert _covered(frames[extended], truth[extended]) == [True] * len(kinds), name

"""WIDER FACE evaluation (runtime/wider_eval.py, wider_format.py, cli_eval.py).

Expected APs are computed by hand from the official algorithm (eval_tools/evaluation.m):
scores are min-max normalised over all predictions, a threshold ``1 - t/1000`` admits the
predictions with normalised score >= it, and AP is VOCap over the 1000 (recall, precision)
points. With raw scores 3, 2, 1 the normalised scores are 1, 0.5, 0: the first prediction
is alone for t = 1..499, the second joins at t = 500, the third at t = 1000. The end-to-end
cases here were also run through the official .m files under GNU Octave 7.3: same APs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from tinyfaces_trt.wider import cli as cli_eval
from tinyfaces_trt.core.errors import TinyFacesError
from tinyfaces_trt.wider.evaluate import (
    MissingPredictionsError, WiderEvalError, box_overlaps, evaluate_folder,
    evaluate_predictions, image_evaluation,
    image_pr_info, load_ground_truth, normalize_scores, sort_predictions, voc_ap)
from tinyfaces_trt.wider.format import (
    PredictionFormatError, format_detections, matlab_round, parse_detections,
    read_detection_file, to_official_boxes, write_image_detections)

from wider_synthetic import SynthImage, cells, replace_variables, write_ground_truth

# Faces [x, y, w, h]. easy: 5 faces, medium: 6 (+A2), hard: 8 (+B1, D0).
A0, A1, A2 = [10, 10, 20, 20], [100, 10, 20, 20], [200, 10, 8, 8]
B0, B1 = [50, 50, 30, 30], [150, 50, 6, 6]
C0, C1 = [30, 30, 40, 40], [120, 30, 40, 40]
D0 = [10, 10, 5, 5]
FAR = [400, 400, 20, 20]  # overlaps no face
EVENTS = {
    "0--Parade": [
        SynthImage("0_Parade_a", [A0, A1, A2], {"easy": [0, 1]}),
        SynthImage("0_Parade_b", [B0, B1], {"easy": [0], "medium": [0]}),
    ],
    "1--Handshaking": [
        SynthImage("1_Handshaking_c", [C0, C1]),
        SynthImage("1_Handshaking_d", [D0], {"easy": [], "medium": []}),
    ],
}
IMAGES = [(e, im.name) for e, ims in EVENTS.items() for im in ims]
FACES = {"easy": 5, "medium": 6, "hard": 8}


@pytest.fixture(scope="module")
def gt_dir(tmp_path_factory) -> Path:
    return write_ground_truth(tmp_path_factory.mktemp("gt"), EVENTS)


def write_preds(root: Path, preds: dict, skip: tuple = ()) -> Path:
    """Writes raw ``x y w h score`` files for every ground-truth image (empty if none)."""
    for event, image in IMAGES:
        if (event, image) in skip:
            continue
        rows = preds.get((event, image), [])
        path = root / event / f"{image}.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        lines = [f"{image}.jpg", str(len(rows))]
        lines += [" ".join(repr(float(v)) for v in r) for r in rows]
        path.write_text("\n".join(lines) + "\n")
    return root


def at(box, score):
    return [*box, score]


def ap_of(gt_dir, pred_dir, **kw):
    return evaluate_folder(gt_dir, pred_dir, **kw).ap


# ----------------------------------------------------------------------------- ground truth


def test_synthetic_ground_truth_loads_with_official_structure(gt_dir):
    gt = load_ground_truth(gt_dir)
    assert gt.index.events == ("0--Parade", "1--Handshaking")
    assert gt.index.images == (("0_Parade_a", "0_Parade_b"), ("1_Handshaking_c", "1_Handshaking_d"))
    assert gt.index.keep is None
    boxes = gt.settings["easy"].boxes[0][0]
    assert boxes.dtype == np.int32 and boxes.tolist() == [A0, A1, A2]
    assert [k.tolist() for k in gt.settings["easy"].keep[0]] == [[0, 1], [0]]
    assert [k.tolist() for k in gt.settings["hard"].keep[1]] == [[0, 1], [0]]
    assert sum(len(k) for ev in gt.settings["medium"].keep for k in ev) == FACES["medium"]


def test_missing_ground_truth_file_is_named(gt_dir, tmp_path):
    for name in ("wider_face_val.mat", "wider_easy_val.mat", "wider_medium_val.mat"):
        (tmp_path / name).write_bytes((gt_dir / name).read_bytes())
    with pytest.raises(WiderEvalError, match="missing ground-truth file.*wider_hard_val.mat"):
        load_ground_truth(tmp_path)
    with pytest.raises(WiderEvalError, match="ground-truth folder not found"):
        load_ground_truth(tmp_path / "nope")


def test_setting_file_without_gt_list_is_rejected(gt_dir, tmp_path):
    for name in ("wider_face_val.mat", "wider_medium_val.mat", "wider_hard_val.mat"):
        (tmp_path / name).write_bytes((gt_dir / name).read_bytes())
    (tmp_path / "wider_easy_val.mat").write_bytes((gt_dir / "wider_face_val.mat").read_bytes())
    with pytest.raises(WiderEvalError, match=r"wider_easy_val.mat: not a WIDER FACE .*gt_list"):
        load_ground_truth(tmp_path)


def test_keep_index_out_of_range_is_rejected(tmp_path):
    write_ground_truth(tmp_path, {"0--E": [SynthImage("x", [A0], {"easy": [1]})]})
    with pytest.raises(WiderEvalError, match=r"gt_list of 0--E/x must hold 1-based face indices"
                                              r" in 1..1"):
        load_ground_truth(tmp_path)


@pytest.mark.parametrize("variable, cell, got", [
    ("gt_list", "ab", "got text 'ab'"),
    ("gt_list", cells([1.0]), "got a cell array (1, 1)"),
    ("face_bbx_list", "ab", "got text 'ab'"),
    ("face_bbx_list", cells([np.array([[1, 2, 3, 4]], np.int32)]), "got a cell array (1, 1)"),
])
def test_malformed_ground_truth_cells_are_errors_naming_file_and_image(tmp_path, capsys,
                                                                      variable, cell, got):
    write_ground_truth(tmp_path / "gt", {"0--E": [SynthImage("x", [A0]), SynthImage("y", [A1])]})
    good = np.array([[1.0]]) if variable == "gt_list" else np.array([[1, 2, 3, 4]], np.int32)
    mat = replace_variables(tmp_path / "gt" / "wider_easy_val.mat",
                            **{variable: cells([cells([cell, good])])})
    expected = {"gt_list": f"{mat}: gt_list of 0--E/x must be a numeric vector of 1-based face "
                           f"indices in 1..1, {got}",
                "face_bbx_list": f"{mat}: boxes of 0--E/x must be a numeric (G, 4) [x y w h] "
                                 f"matrix, {got}"}[variable]
    with pytest.raises(WiderEvalError) as exc:
        load_ground_truth(tmp_path / "gt")
    assert str(exc.value) == expected
    pred = write_preds(tmp_path / "pred", {})
    assert cli_eval.main(["--gt", str(tmp_path / "gt"), "--pred", str(pred)]) == 1
    assert capsys.readouterr().err == f"tf-eval: error: {expected}\n"


# ----------------------------------------------------------------------------- building blocks


def test_boxoverlap_uses_official_plus_one_areas_and_int32_rounding():
    gt = np.array([[0, 0, 10, 10]], np.int32)  # -> [0, 0, 10, 10]: 11 x 11 pixels
    pred = np.array([[5.0, 0, 10, 10, 1]])      # -> [5, 0, 15, 10]: overlap 6 x 11
    assert box_overlaps(gt.astype(np.float64), pred)[0, 0] == 66 / 176
    assert box_overlaps(gt, pred)[0, 0] == 0    # int32 class: round(0.375)
    # IoU exactly 0.5 (6 / 12) passes ">= 0.5" with both classes.
    half_gt, half_pred = np.array([[0, 0, 2, 2]], np.int32), np.array([[1.0, 0, 2, 2, 1]])
    assert box_overlaps(half_gt.astype(float), half_pred)[0, 0] == 0.5
    assert box_overlaps(half_gt, half_pred)[0, 0] == 1


def test_int32_overlap_rounds_the_union_before_dividing():
    """MATLAB adds the int32 face area and the double prediction area in int32, so the union
    is rounded before the division: 100 + 50.4 -> 150, union 150 - 50 = 100, IoU 0.5 -> 1
    (a hit). Without that rounding the union is 100.4, the IoU 0.498 rounds to 0 and the
    prediction would wrongly become a false positive."""
    gt = np.array([[0, 0, 9, 9]], np.int32)     # -> [0, 0, 9, 9]: 10 x 10 pixels
    pred = np.array([[0.0, 0, 9, 4.04, 1]])     # -> [0, 0, 9, 4.04]: area 10 x 5.04 = 50.4
    # the intersection uses the rounded corner 4: 10 x 5 = 50
    assert box_overlaps(gt, pred).tolist() == [[1]]
    assert [a.tolist() for a in image_evaluation(pred, gt, np.array([True]))] == [[1], [1]]


def test_image_evaluation_greedy_matching_and_ignores():
    gt = np.array([A0, A1, A2], np.int32)
    keep = np.array([True, True, False])
    pred = np.array([at(A0, 5), at(A0, 4), at(FAR, 3), at(A2, 2), at(A1, 1)], float)
    pred_recall, proposal = image_evaluation(pred, gt, keep)
    assert pred_recall.tolist() == [1, 1, 1, 1, 2]       # the duplicate does not recall again
    assert proposal.tolist() == [1, 1, 1, -1, 1]         # only the ignored match is dropped
    info = image_pr_info(np.array([1.0, 0.75, 0.5, 0.25, 0.0]), proposal, pred_recall)
    assert info[248].tolist() == [1, 1]    # t=249, thresh 0.751: only the first passes
    assert info[249].tolist() == [2, 1]    # t=250, thresh 0.75: the duplicate joins (>=)
    assert info[999].tolist() == [4, 2]    # t=1000, thresh 0: all five, four proposals


def test_a_prediction_matching_no_face_is_a_false_positive_even_when_face_0_is_ignored():
    """A prediction that overlaps no face still points at face 0 (the first maximum of a row
    of zeros). Only a real match (IoU >= 0.5) with an ignored face drops a prediction from
    the proposals: dropping this false positive because face 0 is ignored would give AP 1.0
    here instead of 0.5."""
    gt = np.array([A0, A1], np.int32)
    keep = np.array([False, True])                         # face 0 ignored
    pred = np.array([at(FAR, 0.95), at(A1, 0.9)], float)  # a false positive above a hit
    pred_recall, proposal = image_evaluation(pred, gt, keep)
    assert pred_recall.tolist() == [0, 1]
    assert proposal.tolist() == [1, 1]


def test_float_ground_truth_iou_of_exactly_one_half_is_a_hit():
    """The official test is IoU >= 0.5: with double ground truth (no int32 rounding of the
    IoU) a prediction at exactly 0.5 must be a hit, not a false positive."""
    gt = np.array([[0.0, 0, 9, 9]])              # -> [0, 0, 9, 9]: 10 x 10 pixels
    pred = np.array([[0.0, 0, 9, 4, 1]])         # -> [0, 0, 9, 4]: 10 x 5, IoU 50 / 100
    assert box_overlaps(gt, pred).tolist() == [[0.5]]
    pred_recall, proposal = image_evaluation(pred, gt, np.array([True]))
    assert pred_recall.tolist() == [1] and proposal.tolist() == [1]


def _random_image(rng, dtype, faces=40, preds=300):
    """Faces (some of zero or negative size) and predictions jittered around them (many
    matches, duplicates included), sorted best first; about half the faces kept."""
    gt = np.c_[rng.integers(0, 200, (faces, 2)), rng.integers(-2, 30, (faces, 2))]
    near = gt[rng.integers(0, faces, preds)] + rng.normal(0, 2, (preds, 4))
    pred = sort_predictions(np.c_[near, rng.random(preds)])
    if dtype == np.int32:
        return gt.astype(np.int32), pred, rng.random(faces) < 0.5
    return gt + rng.choice([0, 0.5, 0.25], gt.shape), pred, rng.random(faces) < 0.5


@pytest.mark.parametrize("dtype", [np.int32, np.float64])
def test_image_evaluation_in_blocks_equals_the_whole_matrix(dtype):
    rng = np.random.default_rng(7)
    for _ in range(3):
        gt, pred, keep = _random_image(rng, dtype, preds=200)
        whole = image_evaluation(pred, gt, keep, block_pairs=len(pred) * len(gt))
        assert whole[0][-1] > 5 and (whole[1] == -1).sum() > 5  # kept and ignored matches
        for block_pairs in (1, 7, len(gt), 3 * len(gt) + 1, 5000):
            rows = image_evaluation(pred, gt, keep, block_pairs=block_pairs)
            assert np.array_equal(rows[0], whole[0]) and np.array_equal(rows[1], whole[1])


def test_image_evaluation_memory_stays_bounded():
    """The (predictions, faces) overlap matrix is made a block of rows at a time: the whole
    2000 x 300 one took 68 MB of temporary arrays, the blocks about 1 MB."""
    gt, pred, keep = _random_image(np.random.default_rng(0), np.int32, faces=300, preds=2000)
    tracemalloc.start()
    try:
        image_evaluation(pred, gt, keep)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4_000_000


def test_voc_ap_interpolates_and_skips_nan_precision():
    assert voc_ap(np.array([0.5, 1.0]), np.array([1.0, 0.5])) == 0.75
    assert voc_ap(np.array([0.5, 1.0]), np.array([np.nan, 0.5])) == 0.5  # MATLAB max(NaN, x) = x
    ap = voc_ap(np.array([0.2, 0.2, 0.4]), np.array([0.0, 0.5, 2 / 3]))
    assert ap == pytest.approx(0.4 * 2 / 3, abs=1e-15)


def test_score_normalisation_is_single_precision_like_norm_score():
    out = normalize_scores({("e", "a"): np.array([[0, 0, 1, 1, 1.0], [0, 0, 1, 1, 0.7]]),
                            ("e", "b"): np.array([[0, 0, 1, 1, 0.0]])})
    assert out[("e", "a")][:, 4].tolist() == [1.0, float(np.float32(0.7))]
    assert out[("e", "a")][1, 4] != 0.7
    # All-negative scores: the official max starts at realmin('single'), not at the max score.
    neg = normalize_scores({("e", "a"): np.array([[0, 0, 1, 1, -1.0], [0, 0, 1, 1, -3.0]])})
    assert neg[("e", "a")][:, 4].tolist() == [float(np.float32(2) / np.float32(3)), 0.0]


def test_scores_whose_range_passes_single_precision_are_refused():
    """3e38 and -3e38 each fit single precision, their range does not: every score came out
    NaN or 0, without a word."""
    with pytest.raises(WiderEvalError, match=r"^the prediction scores span -3e\+38 to 3e\+38, "
                       r"a range beyond single precision"):
        normalize_scores({("e", "a"): np.array([[0, 0, 1, 1, 3e38], [0, 0, 1, 1, -3e38]])})


def test_keys_of_no_ground_truth_image_leave_the_normalisation_alone(gt_dir):
    """read_pred.m reads only the ground-truth images: a key of no such image (here with a
    huge score) must not stretch the min-max normalisation of the others."""
    gt = load_ground_truth(gt_dir)
    preds = {("0--Parade", "0_Parade_a"): sort_predictions(np.array([at(FAR, 3.0), at(A0, 2.0)])),
             ("1--Handshaking", "1_Handshaking_c"): sort_predictions(np.array([at(C0, 1.0)]))}
    # as test_false_positive_above_true_positives: AP = (2/N)(2/3)
    expected = {"easy": 4 / 15, "medium": 2 / 9, "hard": 1 / 6}
    assert evaluate_predictions(gt, preds).ap == pytest.approx(expected, abs=1e-15)
    extra = dict(preds)
    extra[("0--Parade", "not_in_the_ground_truth")] = np.array([at(A0, 1000.0)])
    extra[("9--Nowhere", "x")] = np.array([at(FAR, -50.0)])
    with pytest.warns(UserWarning) as caught:
        result = evaluate_predictions(gt, extra)
    assert result.ap == pytest.approx(expected, abs=1e-15)
    assert [str(w.message) for w in caught] == [
        "2 of 4 prediction images are not ground-truth images and are ignored, as the "
        "official read_pred.m reads only the ground-truth images (their scores do not enter "
        "the normalisation): 0--Parade/not_in_the_ground_truth, 9--Nowhere/x"]


def test_prediction_keys_that_match_no_ground_truth_image_warn_loudly(gt_dir):
    gt = load_ground_truth(gt_dir)
    preds = {(event.upper(), image): sort_predictions(np.array(rows))
             for (event, image), rows in perfect_preds().items()}
    with pytest.warns(UserWarning) as caught:
        result = evaluate_predictions(gt, preds)
    assert result.ap == {"easy": 0.0, "medium": 0.0, "hard": 0.0}
    assert [str(w.message) for w in caught] == [
        "NONE of the 4 prediction images is a ground-truth image (0--PARADE/0_Parade_a, "
        "0--PARADE/0_Parade_b, 1--HANDSHAKING/1_Handshaking_c and 1 more): nothing is "
        "evaluated and every AP is 0; keys must be (event, image name without extension) "
        "exactly as in wider_face_val.mat, e.g. ('0--Parade', '0_Parade_a')"]


# ----------------------------------------------------------------------------- end to end


def perfect_preds():
    scores = iter(range(100, 0, -1))
    return {key: [at(box, next(scores)) for box in im.boxes]
            for key, im in zip(IMAGES, [im for ims in EVENTS.values() for im in ims])}


def test_perfect_detections_written_by_our_writer_give_ap_1(gt_dir, tmp_path):
    for (event, image), rows in perfect_preds().items():
        xyxy = np.array([[x, y, x + w - 1, y + h - 1, s] for x, y, w, h, s in rows], float)
        write_image_detections(tmp_path, f"{event}/{image}.jpg", xyxy)
    assert ap_of(gt_dir, tmp_path) == pytest.approx({"easy": 1, "medium": 1, "hard": 1}, abs=1e-15)


def test_half_of_the_faces_found(gt_dir, tmp_path):
    write_preds(tmp_path, {("0--Parade", "0_Parade_a"): [at(A0, 2.0)],
                           ("0--Parade", "0_Parade_b"): [at(B0, 1.0)]})
    # No false positive: AP = recall = 2 / number of kept faces.
    assert ap_of(gt_dir, tmp_path) == pytest.approx({"easy": 0.4, "medium": 2 / 6, "hard": 0.25},
                                                    abs=1e-15)


def test_false_positive_above_true_positives(gt_dir, tmp_path):
    write_preds(tmp_path, {("0--Parade", "0_Parade_a"): [at(FAR, 3.0), at(A0, 2.0)],
                           ("1--Handshaking", "1_Handshaking_c"): [at(C0, 1.0)]})
    # t<500: P=0 R=0; t=500..999: P=1/2 R=1/N; t=1000: P=2/3 R=2/N -> AP = (2/N)(2/3).
    ap = ap_of(gt_dir, tmp_path)
    assert ap["easy"] == pytest.approx(4 / 15, abs=1e-15)
    assert ap["medium"] == pytest.approx(2 / 9, abs=1e-15)
    assert ap["hard"] == pytest.approx(1 / 6, abs=1e-15)


def test_false_positive_between_true_positives(gt_dir, tmp_path):
    write_preds(tmp_path, {("0--Parade", "0_Parade_a"): [at(A0, 3.0), at(FAR, 2.0)],
                           ("1--Handshaking", "1_Handshaking_c"): [at(C0, 1.0)]})
    # t<500: P=1 R=1/N; t=500..999: P=1/2 R=1/N; t=1000: P=2/3 R=2/N -> AP = 1/N + (1/N)(2/3).
    ap = ap_of(gt_dir, tmp_path)
    assert ap["easy"] == pytest.approx(1 / 5 + 2 / 15, abs=1e-15)
    assert ap["hard"] == pytest.approx(1 / 8 + 1 / 12, abs=1e-15)


def test_duplicate_detection_is_a_false_positive(gt_dir, tmp_path):
    write_preds(tmp_path, {("0--Parade", "0_Parade_a"): [at(A0, 3.0), at([11, 10, 20, 20], 2.0)],
                           ("0--Parade", "0_Parade_b"): [at(B0, 1.0)]})
    assert ap_of(gt_dir, tmp_path)["easy"] == pytest.approx(1 / 5 + 2 / 15, abs=1e-15)


def test_matching_an_ignored_face_is_not_a_false_positive(gt_dir, tmp_path):
    write_preds(tmp_path, {("0--Parade", "0_Parade_a"): [at(A2, 3.0), at(A0, 2.0), at(A1, 1.0)]})
    # easy ignores A2: its prediction leaves the proposals; medium/hard count it as a hit.
    assert ap_of(gt_dir, tmp_path) == pytest.approx({"easy": 0.4, "medium": 0.5, "hard": 0.375},
                                                    abs=1e-15)


def test_predictions_on_an_image_without_faces_are_not_false_positives(tmp_path):
    """evaluation.m skips an image whose face list is empty (``if isempty(gt_bbx)``), its
    predictions included: counting the one here as a false positive above the hit would
    give AP 0.5 instead of 1.0."""
    events = {"0--E": [SynthImage("a", [A0]), SynthImage("empty", [])]}
    gt = write_ground_truth(tmp_path / "gt", events)
    for image, row in (("a", at(A0, 1.0)), ("empty", at(FAR, 2.0))):  # x y w h score
        path = tmp_path / "pred" / "0--E" / f"{image}.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"{image}.jpg\n1\n{' '.join(map(str, row))}\n")
    assert ap_of(gt, tmp_path / "pred") == {"easy": 1.0, "medium": 1.0, "hard": 1.0}


def test_int32_ground_truth_matches_the_first_face_over_threshold(tmp_path):
    g0, g1, g2 = [0, 0, 10, 10], [2, 0, 10, 10], [100, 100, 20, 20]  # IoU(g0, g1) = 0.69
    events = {"0--E": [SynthImage("x", [g0, g1, g2], {"easy": [1, 2]})]}
    preds = {"0--E/x": [at(g1, 2.0), at(g2, 1.0)]}
    results = {}
    for dtype in (np.int32, np.float64):
        gt = write_ground_truth(tmp_path / f"gt_{np.dtype(dtype).name}", events, box_dtype=dtype)
        pred = tmp_path / f"pred_{np.dtype(dtype).name}"
        (pred / "0--E").mkdir(parents=True)
        (pred / "0--E" / "x.txt").write_text(format_detections("x", np.array(
            [[x, y, x + w - 1, y + h - 1, s] for x, y, w, h, s in preds["0--E/x"]], float)))
        results[dtype] = ap_of(gt, pred)["easy"]
    # MATLAB int32 IoU is 0 or 1, and max() takes the first: the prediction on g1 goes to the
    # ignored g0. With double boxes it goes to g1 (IoU 1).
    assert results == {np.int32: 0.5, np.float64: 1.0}


def test_all_equal_scores_give_zero_ap_like_the_official_code(gt_dir, tmp_path):
    write_preds(tmp_path, {k: [r[:4] + [0.9] for r in rows] for k, rows in perfect_preds().items()})
    with pytest.warns(UserWarning, match="all prediction scores are equal"):
        assert ap_of(gt_dir, tmp_path) == {"easy": 0.0, "medium": 0.0, "hard": 0.0}


def test_missing_prediction_file_counts_as_no_detections(gt_dir, tmp_path):
    write_preds(tmp_path, perfect_preds(), skip=(("1--Handshaking", "1_Handshaking_c"),))
    with pytest.warns(UserWarning, match=r"1 of 4 prediction files are missing.*_c.txt"):
        result = evaluate_folder(gt_dir, tmp_path)
    assert result.ap == pytest.approx({"easy": 0.6, "medium": 4 / 6, "hard": 0.75}, abs=1e-15)
    assert [p.name for p in result.missing] == ["1_Handshaking_c.txt"]
    with pytest.raises(WiderEvalError, match="1 of 4 prediction files are missing"):
        evaluate_folder(gt_dir, tmp_path, on_missing="error")


def test_refused_missing_files_are_not_said_to_count(gt_dir, tmp_path):
    write_preds(tmp_path, perfect_preds(), skip=(("1--Handshaking", "1_Handshaking_c"),
                                                 ("0--Parade", "0_Parade_a")))
    with pytest.raises(MissingPredictionsError) as exc:
        evaluate_folder(gt_dir, tmp_path, on_missing="error")
    first = tmp_path / "0--Parade" / "0_Parade_a.txt"
    assert str(exc.value) == (
        f"2 of 4 prediction files are missing (on_missing='error' refuses that), e.g. {first}; "
        f"write one for every ground-truth image (box count 0 for an image without detections) "
        f"or pass on_missing='warn' to count them as images without detections")
    assert [p.name for p in exc.value.missing] == ["0_Parade_a.txt", "1_Handshaking_c.txt"]
    assert exc.value.total == 4


def test_prediction_folder_errors(gt_dir, tmp_path):
    with pytest.raises(WiderEvalError, match="prediction folder not found"):
        evaluate_folder(gt_dir, tmp_path / "nope")
    (tmp_path / "0_Parade_a.txt").write_text("x\n0\n")  # flat layout: no <event>/ folders
    with pytest.raises(WiderEvalError, match=r"no prediction file for any of the 4 .*"
                                              r"<event>/<image>.txt"):
        evaluate_folder(gt_dir, tmp_path)


def test_malformed_prediction_line_names_file_and_line(gt_dir, tmp_path):
    write_preds(tmp_path, perfect_preds())
    bad = tmp_path / "0--Parade" / "0_Parade_b.txt"
    bad.write_text("0_Parade_b.jpg\n2\n50 50 30 30 0.9\n150 50 6 0.5\n")
    with pytest.raises(PredictionFormatError, match=r"0_Parade_b.txt:4: expected 'x y w h score'"):
        evaluate_folder(gt_dir, tmp_path)


# ----------------------------------------------------------------------------- text format


def test_matlab_round_halves_away_from_zero():
    got = matlab_round(np.array([-2.5, -0.5, 0.5, 1.5, 2.5, 0.49999999999999994, -1.2]))
    assert got.tolist() == [-3, -1, 1, 2, 3, 0, -1]


def test_writer_uses_the_authors_rounding():
    boxes = np.array([[10.5, 20.5, 30.4, 40.6, 0.9], [-0.5, 0.0, 9.0, 9.0, 0.25]])
    # Corners rounded first: w = 30 - 11 + 1 = 20 (the port's round(30.4 - 10.5 + 1) gives 21).
    assert to_official_boxes(boxes).tolist() == [[11, 21, 20, 21, 0.9], [-1, 0, 11, 10, 0.25]]
    assert format_detections("0--Parade/a.jpg", boxes) == (
        "0--Parade/a.jpg\n2\n11 21 20 21 0.900000\n-1 0 11 10 0.250000\n")
    assert format_detections("a", np.zeros((0, 5))) == "a\n0\n"
    with pytest.raises(PredictionFormatError, match="non-finite"):
        format_detections("a", np.array([[0, 0, np.nan, 1, 1]]))


def test_detection_file_round_trip(tmp_path):
    boxes = np.array([[12.2, 7.6, 40.0, 30.5, 0.875], [0, 0, 3, 3, 0.123456789]], np.float32)
    path = write_image_detections(tmp_path, "3--Riot/3_Riot_x_1.jpg", boxes)
    assert path == tmp_path / "3--Riot" / "3_Riot_x_1.txt"
    parsed = read_detection_file(path)
    assert parsed.image_name == "3--Riot/3_Riot_x_1.jpg"
    np.testing.assert_allclose(parsed.boxes, to_official_boxes(boxes), atol=5e-7, rtol=0)
    assert parsed.boxes[:, :4].tolist() == [[12, 8, 29, 24], [0, 0, 4, 4]]


def test_reader_accepts_official_variants():
    parsed = parse_detections("img\n3\n1 2 3 4 5 0.7\n5,6,7,8,0.5\n  9 10 11 12 -1.5e-1  \n\n\n")
    # Six columns: the last one is the score (read_pred.m's raw_info(end)).
    assert parsed.boxes.tolist() == [[1, 2, 3, 4, 0.7], [5, 6, 7, 8, 0.5], [9, 10, 11, 12, -0.15]]
    assert parse_detections("\n0\n").boxes.shape == (0, 5)
    # str2num reads a count written as a float; "1_0" would be 10 for Python, an error for it.
    for count in ("1.0", "1.", "+1", "1e0", " 0.1E1 "):
        parsed = parse_detections(f"img\n{count}\n1 2 3 4 0.5\n")
        assert parsed.boxes.tolist() == [[1, 2, 3, 4, 0.5]]
    assert parse_detections("img\n2e0\n1 2 3 4 0.5\n5 6 7 8 0.25\n").boxes.shape == (2, 5)
    assert parse_detections("img\n0.0\n").boxes.shape == (0, 5)


def test_reader_reads_only_the_declared_box_lines_as_read_pred_m():
    """read_pred.m reads lines 3..count+2 and nothing after them: a count of 0 with a dummy
    box line (a common writer habit) and surplus lines read as the official tool reads them."""
    zero = parse_detections("a.jpg\n0\n0 0 0 0 0\n", "f.txt")
    assert zero.boxes.shape == (0, 5) and zero.extra_lines == 1
    one = parse_detections("a.jpg\n1\n1 2 3 4 0.5\n5 6 7 8 0.4\n", "f.txt")
    assert one.boxes.tolist() == [[1, 2, 3, 4, 0.5]] and one.extra_lines == 1
    # lines after the count are never parsed, whatever they hold
    junk = parse_detections("a.jpg\n1\n1 2 3 4 0.5\n\nnot numbers\n1 2\n", "f.txt")
    assert junk.boxes.tolist() == [[1, 2, 3, 4, 0.5]] and junk.extra_lines == 2
    exact = parse_detections("a.jpg\n1\n1 2 3 4 0.5\n\n", "f.txt")
    assert exact.extra_lines == 0


def test_surplus_box_lines_are_ignored_with_one_warning(gt_dir, tmp_path):
    write_preds(tmp_path, {("0--Parade", "0_Parade_a"): [at(A0, 2.0)],
                           ("0--Parade", "0_Parade_b"): [at(B0, 1.0)]})
    # A false positive on a surplus line, and a dummy line under a count of 0: the official
    # reader reads neither, so the AP is that of test_half_of_the_faces_found.
    (tmp_path / "0--Parade" / "0_Parade_a.txt").write_text(
        f"0_Parade_a.jpg\n1\n10 10 20 20 2.0\n{' '.join(map(str, FAR))} 9.0\n")
    (tmp_path / "1--Handshaking" / "1_Handshaking_c.txt").write_text(
        "1_Handshaking_c.jpg\n0\n0 0 0 0 0\n")
    with pytest.warns(UserWarning) as caught:
        ap = ap_of(gt_dir, tmp_path)
    assert ap == pytest.approx({"easy": 0.4, "medium": 2 / 6, "hard": 0.25}, abs=1e-15)
    assert [str(w.message) for w in caught] == [
        f"2 of 4 prediction files have more box lines than their line 2 declares; only the "
        f"declared number was read and the rest ignored, as the official read_pred.m does, "
        f"e.g. {tmp_path / '0--Parade' / '0_Parade_a.txt'} (declares 1, 2 box lines follow)"]


def test_cli_warns_once_for_surplus_box_lines(gt_dir, tmp_path, capsys):
    write_preds(tmp_path, perfect_preds())
    for event, image in IMAGES:
        path = tmp_path / event / f"{image}.txt"
        path.write_text(path.read_text() + "0 0 0 0 0\n")
    assert cli_eval.main(["--gt", str(gt_dir), "--pred", str(tmp_path)]) == 0
    err = capsys.readouterr().err
    assert err.count("tf-eval: warning: 4 of 4 prediction files have more box lines") == 1
    assert err.count("warning") == 1


@pytest.mark.parametrize("text, message", [
    ("img\n", r"f.txt: expected the image name on line 1 and the box count on line 2"),
    ("img\nthree\n", r"f.txt:2: expected the number of boxes, got 'three'"),
    ("img\n-1\n", r"f.txt:2: negative box count"),
    ("img\n2\n1 2 3 4 0.5\n", r"f.txt: line 2 declares 2 box\(es\) but only 1 box line\(s\) "
                              r"follow \(the official read_pred.m would drop the whole image"),
    ("img\n1\n1 2 3 nan 0.5\n", r"f.txt:3: non-finite value"),
    ("img\n1\n1 2 x 4 0.5\n", r"f.txt:3: expected numbers, got '1 2 x 4 0.5'"),
    ("img\n1_0\n" + "1 2 3 4 0.5\n" * 10, r"f.txt:2: expected the number of boxes, got '1_0'"),
    ("img\n1.5\n1 2 3 4 0.5\n", r"f.txt:2: expected a whole number of boxes, got '1.5'"),
    ("img\ninf\n", r"f.txt:2: expected a whole number of boxes, got 'inf'"),
    ("img\n1\n1 2 3_0 4 0.5\n", r"f.txt:3: expected numbers, got '1 2 3_0 4 0.5'"),
    ("img\n1\n1 2 30 4 0.5_0\n", r"f.txt:3: expected numbers, got '1 2 30 4 0.5_0'"),
    # (a float32 overflow: the AP came out distorted after a bare numpy warning)
    ("img\n1\n1 2 30 4 1e300\n", r"f.txt:3: score 1e300 is beyond single precision \(the "
                                 r"official evaluation's norm_score works in single: it would "
                                 r"be infinite\); got '1 2 30 4 1e300'"),
    ("img\n1\n1 2 30 4 -3.5e38\n", r"f.txt:3: score -3.5e38 is beyond single precision"),
])
def test_reader_errors_name_file_and_line(text, message):
    with pytest.raises(PredictionFormatError, match=message):
        parse_detections(text, "f.txt")


# ----------------------------------------------------------------------------- CLI


def test_cli_prints_the_table_and_writes_json(gt_dir, tmp_path, capsys):
    pred = write_preds(tmp_path / "pred", {("0--Parade", "0_Parade_a"): [at(FAR, 3.0), at(A0, 2.0)],
                                           ("1--Handshaking", "1_Handshaking_c"): [at(C0, 1.0)]})
    out_json = tmp_path / "out" / "ap.json"
    code = cli_eval.main(["--gt", str(gt_dir), "--pred", str(pred), "--json", str(out_json)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert captured.out.splitlines() == [
        "setting       AP   faces",
        "easy      0.2667       5",
        "medium    0.2222       6",
        "hard      0.1667       8",
    ]
    data = json.loads(out_json.read_text())
    assert data["ap"]["easy"] == pytest.approx(4 / 15, abs=1e-15)
    assert data["settings"]["hard"]["num_faces"] == 8
    curve = data["settings"]["easy"]
    assert len(curve["precision"]) == len(curve["recall"]) == len(curve["thresholds"]) == 1000
    assert curve["thresholds"][499] == 0.5
    assert (curve["precision"][499], curve["recall"][499]) == (0.5, 0.2)
    assert (curve["precision"][998], curve["precision"][999]) == (0.5, pytest.approx(2 / 3))


def test_cli_missing_file_warns_or_fails_with_strict(gt_dir, tmp_path, capsys):
    pred = write_preds(tmp_path, perfect_preds(), skip=(("0--Parade", "0_Parade_b"),))
    assert cli_eval.main(["--gt", str(gt_dir), "--pred", str(pred)]) == 0
    captured = capsys.readouterr()
    assert "warning: 1 of 4 images have no prediction file" in captured.err
    assert "easy      0.8000" in captured.out
    assert cli_eval.main(["--gt", str(gt_dir), "--pred", str(pred), "--strict"]) == 1
    assert "tf-eval: error: 1 of 4 prediction files are missing" in capsys.readouterr().err


def test_cli_strict_says_missing_files_are_refused(gt_dir, tmp_path, capsys):
    pred = write_preds(tmp_path, perfect_preds(), skip=(("0--Parade", "0_Parade_b"),))
    assert cli_eval.main(["--gt", str(gt_dir), "--pred", str(pred), "--strict"]) == 1
    assert capsys.readouterr().err == (
        f"tf-eval: error: 1 of 4 prediction files are missing (--strict refuses that), e.g. "
        f"{pred / '0--Parade' / '0_Parade_b.txt'}; write one for every ground-truth image (box "
        f"count 0 for an image without detections) or drop --strict to count them as images "
        f"without detections\n")


def test_cli_errors_are_messages_with_exit_code_1(gt_dir, tmp_path, capsys):
    assert cli_eval.main(["--gt", str(tmp_path / "nogt"), "--pred", str(tmp_path)]) == 1
    assert "tf-eval: error: ground-truth folder not found" in capsys.readouterr().err
    pred = write_preds(tmp_path / "pred", perfect_preds())
    (pred / "0--Parade" / "0_Parade_a.txt").write_text("a\n1\n1 2 3\n")
    assert cli_eval.main(["--gt", str(gt_dir), "--pred", str(pred)]) == 1
    err = capsys.readouterr().err
    assert "0_Parade_a.txt:3: expected 'x y w h score', got '1 2 3'" in err
    assert "Traceback" not in err
    with pytest.raises(SystemExit) as exc:
        cli_eval.main(["--pred", str(pred)])
    assert exc.value.code == 2


def test_cli_plot(gt_dir, tmp_path, capsys):
    pred = write_preds(tmp_path / "pred", perfect_preds())
    png = tmp_path / "pr.png"
    code = cli_eval.main(["--gt", str(gt_dir), "--pred", str(pred), "--plot", str(png)])
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert code == 1
        assert "--plot needs matplotlib" in capsys.readouterr().err
        assert not png.exists()
    else:
        assert code == 0
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_plot_name_without_suffix_is_refused_before_evaluating(gt_dir, tmp_path, capsys,
                                                                   monkeypatch):
    pytest.importorskip("matplotlib")
    pred = write_preds(tmp_path / "pred", perfect_preds())
    out = tmp_path / "out"
    out.mkdir()
    ran = []
    monkeypatch.setattr(cli_eval, "evaluate_folder", lambda *a, **k: ran.append(a))
    code = cli_eval.main(["--gt", str(gt_dir), "--pred", str(pred), "--json",
                          str(out / "ap.json"), "--plot", str(out / "pr")])
    (line,) = capsys.readouterr().err.splitlines()
    # a bad command line, as the help's exit list says (it exited 1)
    assert code == 2 and ran == [] and list(out.iterdir()) == []
    assert line.startswith(f"tf-eval: error: --plot {out / 'pr'}: the name has no image suffix "
                           f"to choose the format; end it with one of ")
    assert ".pdf" in line and ".png" in line and ".svg" in line
    # save_pr_plot itself: the suffix, never the temporary file's name, picks the format.
    result = evaluate_folder(gt_dir, pred)
    with pytest.raises(TinyFacesError, match=r"the name has no image suffix"):
        cli_eval.save_pr_plot(result, out / "pr")
    assert list(out.iterdir()) == []
    cli_eval.save_pr_plot(result, out / "PR.SVG")
    assert b"<svg" in (out / "PR.SVG").read_bytes()[:500]


def test_cli_creates_output_folders_only_when_writing(gt_dir, tmp_path, capsys, monkeypatch):
    pytest.importorskip("matplotlib")
    pred = write_preds(tmp_path / "pred", perfect_preds())
    out_json, out_png = tmp_path / "new" / "sub" / "ap.json", tmp_path / "new2" / "pr.png"
    outputs = ["--json", str(out_json), "--plot", str(out_png)]
    assert cli_eval.main(["--gt", str(tmp_path / "nothere"), "--pred", str(pred), *outputs]) == 1
    assert "ground-truth folder not found" in capsys.readouterr().err
    assert not (tmp_path / "new").exists() and not (tmp_path / "new2").exists()

    def failing_plot(result, path):
        path.parent.mkdir(parents=True)
        raise TinyFacesError("plot failed")
    monkeypatch.setattr(cli_eval, "save_pr_plot", failing_plot)
    assert cli_eval.main(["--gt", str(gt_dir), "--pred", str(pred), "--plot", str(out_png)]) == 1
    assert capsys.readouterr().err == "tf-eval: error: plot failed\n"
    assert not (tmp_path / "new2").exists()
    monkeypatch.undo()

    assert cli_eval.main(["--gt", str(gt_dir), "--pred", str(pred), *outputs]) == 0, \
        capsys.readouterr().err
    assert json.loads(out_json.read_text())["ap"]["easy"] == 1.0
    assert out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_refuses_an_output_folder_it_cannot_write(gt_dir, tmp_path, capsys, monkeypatch):
    pred = write_preds(tmp_path / "pred", perfect_preds())
    ran = []
    monkeypatch.setattr(cli_eval, "evaluate_folder", lambda *a, **k: ran.append(a))
    monkeypatch.setattr(os, "access", lambda path, mode: Path(path) != tmp_path)  # root passes
    out_json = tmp_path / "new" / "ap.json"
    assert cli_eval.main(["--gt", str(gt_dir), "--pred", str(pred), "--json", str(out_json)]) == 1
    assert capsys.readouterr().err == (
        f"tf-eval: error: cannot write --json {out_json}: the folder {tmp_path} is not "
        f"writable; give a writable folder\n")
    assert ran == [] and not (tmp_path / "new").exists()


def test_cli_output_and_path_mistakes_fail_before_evaluating(gt_dir, tmp_path, capsys,
                                                             monkeypatch):
    pytest.importorskip("matplotlib")
    pred = write_preds(tmp_path / "pred", perfect_preds())
    ran = []
    monkeypatch.setattr(cli_eval, "evaluate_folder", lambda *a, **k: ran.append(a))
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    for extra, message, status in (
            (["--plot", str(tmp_path / "pr.jpgx")], "unknown image format 'jpgx'", 2),
            (["--json", str(blocker / "ap.json")], "cannot create the folder of --json", 1),
            (["--json", str(tmp_path)], "is a folder; give a file name", 1)):
        code = cli_eval.main(["--gt", str(gt_dir), "--pred", str(pred), *extra])
        err = capsys.readouterr().err
        assert code == status and "Traceback" not in err
        (line,) = err.splitlines()
        assert line.startswith("tf-eval: error:") and message in line
    gt_file = gt_dir / "wider_face_val.mat"
    assert cli_eval.main(["--gt", str(gt_file), "--pred", str(pred)]) == 1
    assert f"--gt {gt_file} is a file; pass the folder that holds it ({gt_dir})" \
        in capsys.readouterr().err
    assert ran == []


def test_cli_help_shows_defaults_and_an_example(capsys):
    with pytest.raises(SystemExit) as exc:
        cli_eval.main(["--help"])
    assert exc.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "examples: tf-detect WIDER_val/images" in text
    assert "tf-eval --gt eval_tools/ground_truth --pred pred/" in text
    assert "(default: none)" in text and "exit status" in text


def test_help_s_tf_detect_example_is_tf_detect_s_wider_protocol_one():
    """tf-eval's example left out --pyramid fixed: tf-detect then runs the authors' adaptive
    demo pyramid, whose AP cannot be compared with the published WIDER numbers."""
    import shlex

    from tinyfaces_trt.cli import detect as cli_detect

    (example,) = [line.strip() for line in cli_eval._parser().format_help().splitlines()
                  if line.startswith("  tf-detect ")]
    detect_parser = cli_detect.build_parser()
    assert example in [line.strip() for line in detect_parser.format_help().splitlines()]
    args = detect_parser.parse_args(shlex.split(example)[1:])
    assert (args.pyramid, args.wider_dir, args.prob_thresh) == ("fixed", "pred/", 0.03)


def test_console_module_runs_end_to_end(gt_dir, tmp_path):
    pred = write_preds(tmp_path, {("0--Parade", "0_Parade_a"): [at(A0, 2.0)],
                                  ("0--Parade", "0_Parade_b"): [at(B0, 1.0)]})
    proc = subprocess.run([sys.executable, "-m", "tinyfaces_trt.wider.cli",
                           "--gt", str(gt_dir), "--pred", str(pred)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "easy      0.4000       5" in proc.stdout
    assert "hard      0.2500       8" in proc.stdout


def test_errors_are_tinyfaces_errors():
    assert issubclass(WiderEvalError, TinyFacesError)
    assert issubclass(PredictionFormatError, TinyFacesError)


def test_result_files_carry_the_logit_behind_each_float32_probability():
    """The authors write score_cls (the logit); the official min-max normalisation makes the AP
    depend on the scores' spread, so probabilities gave other AP figures for the same boxes."""
    from tinyfaces_trt.wider.format import MAX_FLOAT32_LOGIT, logits_of

    logits = np.array([-3.5, -0.25, 0.0, 2.0, 5.0, 8.0, 12.0, 16.0, 25.0])
    probs = (1.0 / (1.0 + np.exp(-logits))).astype(np.float32)
    back = logits_of(probs)
    np.testing.assert_allclose(back[:4], logits[:4], atol=5e-7)  # the printed %f digits
    assert np.all(np.abs(back[4:8] - logits[4:8]) <= 3e-8 * np.exp(logits[4:8]))  # float32's p
    assert probs[8] == 1.0 and back[8] == MAX_FLOAT32_LOGIT == pytest.approx(16.6355, abs=1e-4)
    assert np.all(np.diff(back) >= 0)  # the order is kept

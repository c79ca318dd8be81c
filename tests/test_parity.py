"""Parity of ONNX Runtime fp32 / fp16 with the torch reference (seeded ResNet-50), and the
comparison library itself (map statistics, greedy matching, the detection criterion)."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
import torch

from tinyfaces_trt.core.config import DetectorConfig
from tinyfaces_trt.parity.cli import EXIT_SKIPPED, exit_status, main
from tinyfaces_trt.parity.compare import (TOLERANCES, DetectionTolerance, compare_detections,
                                          compare_maps, match_detections)
from tinyfaces_trt.parity.harness import ParityResult, ReferenceCase, compare_runner, run_parity
from tinyfaces_trt.parity.report import markdown_table, results_to_json
from tinyfaces_trt.export.torch_runner import TorchRunner
from tinyfaces_trt.runtime.backends import create_runner
from tinyfaces_trt.core.manifest import load_export_folder

HAS_TENSORRT = importlib.util.find_spec("tensorrt") is not None
SIZES = [(33, 47), (47, 33), (71, 53)]  # (width, height), odd ones included


@pytest.fixture(scope="module")
def folder(export_dir):
    return load_export_folder(export_dir)


# ---------------------------------------------------------------------------------------------
# ONNX Runtime vs torch
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def results(seeded, folder):
    model, config = seeded
    return run_parity(model, config, folder, ["onnxruntime", "onnxruntime-fp16"], SIZES)


def test_onnxruntime_fp32_matches_torch(results):
    fp32 = [r for r in results if r.backend == "onnxruntime"]
    assert [(r.width, r.height) for r in fp32] == SIZES
    for r in fp32:
        assert r.passed and not r.skipped, markdown_table([r])
        assert r.maps.max_abs < 1e-4 and r.maps.n_failed == 0
        assert r.detections.n_ref == r.detections.n_test == r.detections.n_matched
        assert r.detections.max_score_diff < 1e-5 and r.detections.min_iou > 0.9999
    assert sum(r.detections.n_ref for r in fp32) > 10  # the comparison saw real detections


def test_onnxruntime_fp16_within_documented_tolerance(results):
    fp16 = [r for r in results if r.backend == "onnxruntime-fp16"]
    assert [(r.width, r.height) for r in fp16] == SIZES
    for r in fp16:
        assert r.passed, markdown_table([r])
        # Really reduced precision (an fp32 model would be ~1e-5), yet far inside tolerance.
        assert 1e-3 < r.maps.max_abs < TOLERANCES["fp16"].maps.atol / 3
        assert r.detections.missing_firm == r.detections.extra_firm == 0
        assert r.detections.max_score_diff < TOLERANCES["fp16"].detections.score


def test_shifted_map_fails_parity(seeded, folder):
    """A runner off by one score-map column (a classic crop bug) must fail."""
    model, config = seeded
    inner = create_runner("onnxruntime", folder)

    class Shifted:
        def run(self, x):
            return np.roll(inner.run(x), 1, axis=3)

    r = compare_runner(TorchRunner(model), Shifted(), config, 33, 47, "fp32", "shifted")
    assert not r.passed and r.status == "failed" and not r.maps.passed and r.maps.n_failed > 1000
    row = markdown_table([r]).splitlines()[-1]
    assert row.startswith("| shifted | 47x33 | FAILED |")
    # The row names the criterion, its measured value and its limit.
    assert f"FAIL: {r.maps.n_failed} of {r.maps.n_elements} elements with abs error > " \
        f"0.0005 + 0.0001*abs(ref) (max abs error {r.maps.max_abs:.2e})" in row


def test_a_single_nan_in_a_map_fails(seeded, folder, case_33x47):
    """A runner returning one NaN in one level's map fails, saying non-finite values were found
    (NaN compares false with every limit, so a max/<= test alone could let it pass)."""
    _, config = seeded
    inner = create_runner("onnxruntime", folder)
    calls = []

    class OneNaN:
        def run(self, x):
            out = inner.run(x).copy()
            if not calls:
                out[0, 7, 1, 2] = np.nan  # one score of the first level
            calls.append(1)
            return out

    case = case_33x47
    r = compare_runner(case, OneNaN(), config, 33, 47, "fp32", "nan")
    assert r.status == "failed" and r.maps.n_nonfinite_test == 1 and r.maps.n_failed == 0
    assert "maps: non-finite values found: 1 in the test maps, 0 in the reference maps (limit 0)" \
        in r.failures
    assert np.isfinite(r.maps.max_abs) and r.maps.max_abs < 1e-4  # the other values still agree
    assert "non-finite values found" in markdown_table([r])
    assert r.detections is None  # said as the failures say it, not "the maps' shapes differ"
    assert "FAIL: not compared (the score maps' shapes differ or hold non-finite values)" \
        in markdown_table([r])
    # NaN in the reference fails too, whatever the order of the merged levels.
    ref = case.maps[0].copy()
    ref[0, 0, 0, 0] = np.inf
    first = compare_maps(ref, case.maps[0]).merge(compare_maps(case.maps[0], case.maps[0]))
    last = compare_maps(case.maps[0], case.maps[0]).merge(compare_maps(ref, case.maps[0]))
    for c in (first, last):
        assert not c.passed and c.n_nonfinite_ref == 1
        assert c.failures == ("non-finite values found: 0 in the test maps, 1 in the reference "
                              "maps (limit 0)",)


@pytest.fixture(scope="module")
def case_33x47(seeded):
    model, config = seeded
    return ReferenceCase(TorchRunner(model), config, 33, 47)


def test_small_bias_fails_fp32_but_not_fp16(case_33x47):
    case = case_33x47
    biased = [m + np.float32(4e-5) for m in case.maps]  # a systematic error, tiny per element
    fp32 = compare_maps(case.maps[0], biased[0], TOLERANCES["fp32"].maps)
    assert fp32.n_failed == 0 and not fp32.passed
    assert fp32.failures == (f"mean abs error {fp32.mean_abs:.2e} > 2.5e-05",)
    assert compare_maps(case.maps[0], biased[0], TOLERANCES["fp16"].maps).passed


# ---------------------------------------------------------------------------------------------
# The comparison library
# ---------------------------------------------------------------------------------------------

def test_compare_maps_statistics():
    ref = np.array([[1.0, -4.0], [0.5, 0.0]], np.float32)
    same = compare_maps(ref, ref.copy())
    assert same.passed and same.max_abs == 0.0 and same.n_failed == 0
    test = ref.copy()
    test[0, 1] += 1e-3  # |ref| = 4: allowed 5e-4 + 4e-4 = 9e-4 < 1e-3
    c = compare_maps(ref, test, TOLERANCES["fp32"].maps)
    assert not c.passed and c.n_failed == 1 and c.n_elements == 4
    assert c.max_abs == pytest.approx(1e-3, rel=1e-3)
    assert c.max_rel == pytest.approx(1e-3 / 4, rel=1e-3)
    assert c.mean_abs == pytest.approx(1e-3 / 4, rel=1e-3)
    assert compare_maps(ref, test, TOLERANCES["fp16"].maps).passed
    assert c.failures == ("1 of 4 elements with abs error > 0.0005 + 0.0001*abs(ref) "
                          "(max abs error 1.00e-03)", "mean abs error 2.50e-04 > 2.5e-05")
    bad = compare_maps(ref, ref[:, :1])
    assert not bad.passed and not bad.shape_ok and bad.failures == ("shape (2, 1) != reference (2, 2)",)
    nan = ref.copy()
    nan[1, 1] = np.nan
    c = compare_maps(ref, nan, TOLERANCES["fp16"].maps)
    assert not c.passed and c.n_nonfinite_test == 1 and "non-finite values found: 1" in c.detail
    assert c.max_abs == 0.0  # the finite elements agree
    merged = compare_maps(ref, test).merge(compare_maps(ref, ref))
    assert merged.n_elements == 8 and merged.n_failed == 1 and not merged.passed
    assert merged.mean_abs == pytest.approx(1e-3 / 8, rel=1e-3)
    # A shape error merged after good levels keeps the statistics unknown (NaN), not hidden.
    shape_last = compare_maps(ref, ref).merge(bad)
    assert not shape_last.passed and np.isnan(shape_last.max_abs) and not shape_last.shape_ok


def _det(x1, y1, x2, y2, p):
    return [x1, y1, x2, y2, p]


def test_match_detections_is_greedy_by_reference_score():
    ref = np.array([_det(0, 0, 10, 10, 0.6),     # lower score, visited second
                    _det(1, 0, 11, 10, 0.9),     # visited first: takes the best-overlapping test
                    _det(50, 50, 60, 60, 0.7)])  # nothing near it
    test = np.array([_det(1, 0, 11, 10, 0.85),   # IoU 1.0 with ref 1, 0.818 with ref 0
                     _det(0, 0, 10, 10.5, 0.55),  # IoU 0.952 with ref 0
                     _det(80, 80, 90, 90, 0.8)])
    m = match_detections(ref, test, iou_thresh=0.5)
    assert list(zip(m.ref_index.tolist(), m.test_index.tolist())) == [(1, 0), (0, 1)]
    np.testing.assert_allclose(m.iou, [1.0, 100 / 105])
    assert m.unmatched_ref.tolist() == [2] and m.unmatched_test.tolist() == [2]
    assert match_detections(ref, test, iou_thresh=0.99).ref_index.tolist() == [1]
    empty = match_detections(ref, np.zeros((0, 5)))
    assert empty.ref_index.size == 0 and empty.unmatched_ref.tolist() == [0, 1, 2]


TOL = DetectionTolerance(iou=0.8, score=0.05, margin=0.05, nms_iou_margin=0.05)


def test_compare_detections_firm_and_borderline():
    ref = np.array([_det(0, 0, 10, 10, 0.9), _det(40, 40, 50, 50, 0.52)])
    # The borderline (0.52, within 0.05 of 0.5) detection may vanish; the firm one may not.
    ok = compare_detections(ref, ref[:1] + [0, 0, 0, 0, 0.01], 0.5, 0.3, TOL)
    assert ok.passed and ok.n_ref == 2 and ok.n_matched == 1 and ok.n_ref_firm == 1
    assert ok.max_score_diff == pytest.approx(0.01)
    missing = compare_detections(ref, ref[1:], 0.5, 0.3, TOL)
    assert not missing.passed and missing.missing_firm == 1 and missing.extra_firm == 0
    extra = compare_detections(ref, np.vstack([ref, _det(80, 80, 90, 90, 0.8)]), 0.5, 0.3, TOL)
    assert not extra.passed and extra.extra_firm == 1
    assert missing.failures == ("missing 1 > 0 (firm reference detections without a test "
                                "match at IoU >= 0.8)",)
    drift = compare_detections(ref, ref + [0, 0, 0, 0, 0.06], 0.5, 0.3, TOL)
    assert not drift.passed and drift.max_score_diff == pytest.approx(0.06)
    assert drift.failures == ("dprob 6.0e-02 > 0.05",)
    moved = compare_detections(ref, ref + [7, 0, 7, 0, 0], 0.5, 0.3, TOL)  # IoU 3/17
    assert not moved.passed and moved.n_matched == 0 and moved.missing_firm == 1
    # which box moved, and how far: the missing firm one and its new place, the borderline
    # ones left out
    assert moved.missing_examples == ((0, 0, 10, 10, 0.9, round(3 / 17, 4)),)
    assert moved.extra_examples == ((7, 0, 17, 10, 0.9, round(3 / 17, 4)),)
    assert ok.missing_examples == () and missing.missing_examples == ((0, 0, 10, 10, 0.9, 0.0),)
    # at most EXAMPLES of them, highest prob first
    many = np.array([_det(20 * i, 0, 20 * i + 10, 10, p) for i, p in
                     enumerate((0.6, 0.9, 0.7, 0.95, 0.8, 0.65, 0.85))])
    listed = compare_detections(many, many[:0], 0.5, 0.3, TOL)
    assert listed.missing_firm == 7
    assert [e[4] for e in listed.missing_examples] == [0.95, 0.9, 0.85, 0.8, 0.7]
    # A box moved so that its old and new place overlap like two NMS rivals with tied scores
    # cannot be told from an NMS flip by the detections alone (the maps comparison catches it).
    rivals = compare_detections(ref, ref + [3, 0, 3, 0, 0], 0.5, 0.3, TOL)  # IoU 7/13
    assert rivals.passed and rivals.nms_ambiguous == 2


def test_compare_detections_accepts_nms_flip_between_tied_boxes():
    # Two overlapping boxes (IoU 0.6 > nms 0.3) with near-tied scores: either may be kept.
    a, b = _det(0, 0, 10, 10, 0.801), _det(0, 2.5, 10, 12.5, 0.800)
    flip = compare_detections(np.array([a]), np.array([b]), 0.5, 0.3, TOL)
    assert flip.passed and flip.n_matched == 0 and flip.nms_ambiguous == 2
    # Same geometry with clearly different scores is a real difference.
    c = _det(0, 2.5, 10, 12.5, 0.7)
    real = compare_detections(np.array([a]), np.array([c]), 0.5, 0.3, TOL)
    assert not real.passed and real.missing_firm == 1 and real.extra_firm == 1


def test_compare_detections_fails_on_non_finite_values():
    ref = np.array([_det(0, 0, 10, 10, 0.9), _det(40, 40, 50, 50, 0.8)])
    nan_prob = ref.copy()
    nan_prob[1, 4] = np.nan  # would be "not firm" (|nan - 0.5| > margin is False) and excused
    c = compare_detections(ref, nan_prob, 0.5, 0.3, TOL)
    assert not c.passed and c.n_nonfinite_test == 1 and c.n_test == 2 and c.n_matched == 1
    assert c.failures[0] == "non-finite values found: 1 test and 0 reference detections (limit 0)"
    nan_box = ref.copy()
    nan_box[0, 2] = np.inf
    c = compare_detections(nan_box, ref, 0.5, 0.3, TOL)
    assert not c.passed and c.n_nonfinite_ref == 1
    assert "non-finite values found: 0 test and 1 reference detections (limit 0)" in c.failures


def test_failed_rows_name_every_criterion_in_table_and_json():
    ref = np.array([_det(0, 0, 10, 10, 0.9), _det(40, 40, 50, 50, 0.8)])
    dets = compare_detections(ref, ref[:1] + [0, 0, 0, 0, 0.072], 0.5, 0.3, TOL)
    maps = compare_maps(np.zeros((1, 125, 2, 2)), np.zeros((1, 125, 2, 2)), TOLERANCES["fp16"].maps)
    r = ParityResult("onnxruntime-fp16", "fp16", 47, 33, 1, maps=maps, detections=dets)
    assert r.status == "failed"
    assert r.failures == ["detections: missing 1 > 0 (firm reference detections without a test "
                          "match at IoU >= 0.8)", "detections: dprob 7.2e-02 > 0.05"]
    row = markdown_table([r]).splitlines()[-1]
    assert row.endswith("| ok | 2/1 | 1 | 7.20e-02 | FAIL: missing 1 > 0 (firm reference "
                        "detections without a test match at IoU >= 0.8); dprob 7.2e-02 > 0.05 |")
    (entry,) = results_to_json([r])
    assert entry["status"] == "failed" and entry["passed"] is False
    assert entry["failures"] == r.failures
    assert entry["detections"]["failures"] == list(dets.failures)


def test_statuses_and_exit_status():
    ok = ParityResult("onnxruntime", "fp32", 47, 33, 1,
                      maps=compare_maps(np.zeros(4), np.zeros(4)),
                      detections=compare_detections(np.zeros((0, 5)), np.zeros((0, 5)), 0.5, 0.3,
                                                    TOL))
    skipped = ParityResult("tensorrt", "fp32", 47, 33, 0, skipped="no TensorRT here")
    failed = ParityResult("onnxruntime", "fp32", 47, 33, 1,
                          maps=compare_maps(np.zeros(4), np.ones(4)),
                          detections=ok.detections)
    assert (ok.status, skipped.status, failed.status) == ("passed", "skipped", "failed")
    assert not skipped.passed and skipped.failures == []  # a skip is not a pass
    assert exit_status([ok], requested=True, allow_skip=False) == 0
    assert exit_status([ok, skipped], requested=False, allow_skip=False) == 0  # default list
    assert exit_status([ok, skipped], requested=True, allow_skip=False) == EXIT_SKIPPED
    assert exit_status([ok, skipped], requested=True, allow_skip=True) == 0
    assert exit_status([skipped], requested=False, allow_skip=False) == EXIT_SKIPPED  # nothing ran
    assert exit_status([skipped], requested=False, allow_skip=True) == 0
    assert exit_status([failed, skipped], requested=True, allow_skip=True) == 1
    assert "| tensorrt | 47x33 | skipped | - |" in markdown_table([skipped])


# ---------------------------------------------------------------------------------------------
# tf-parity
# ---------------------------------------------------------------------------------------------

def test_cli_reports_table_and_json_and_detection_settings_reach_both_sides(capsys, tmp_path,
                                                                           checkpoint, folder):
    """The report of a run with the default detection settings, then a run with wider ones
    compared with its onnxruntime 33x47 row (the same comparison a run of that row alone
    makes: the reference and each backend run per size)."""
    out = tmp_path / "parity.json"
    code = main(["--weights", str(checkpoint), "--model", str(folder.path), "--sizes", "33x47,21x18",
                 "--backends", "onnxruntime,onnxruntime-fp16", "--json", str(out)])
    stdout = capsys.readouterr().out
    assert code == 0
    assert "| backend | image WxH |" in stdout and "| onnxruntime-fp16 | 21x18 |" in stdout
    assert "4 passed, 0 failed, 0 skipped" in stdout
    assert "| onnxruntime | 33x47 | passed |" in stdout
    report = json.loads(out.read_text())
    assert report["passed"] is True and report["exit_code"] == 0 and len(report["results"]) == 4
    assert report["counts"] == {"passed": 4, "failed": 0, "skipped": 0}
    assert all(r["status"] == "passed" and r["failures"] == [] for r in report["results"])
    assert report["tolerances"]["fp16"]["maps"]["atol"] == TOLERANCES["fp16"].maps.atol
    assert all(r["maps"]["max_abs"] < 0.1 for r in report["results"])

    (row,) = [r for r in report["results"]
              if (r["backend"], r["width"], r["height"]) == ("onnxruntime", 33, 47)]
    counts = {"default": (row["levels"], row["detections"]["n_ref"], row["detections"]["n_test"])}
    out = tmp_path / "wider.json"
    assert main(["--weights", str(checkpoint), "--model", str(folder.path), "--sizes", "33x47",
                 "--backends", "onnxruntime", "--json", str(out), "--prob-thresh", "0.03",
                 "--pyramid", "fixed", "--nms-thresh", "0.5"]) == 0
    report = json.loads(out.read_text())
    (row,) = report["results"]
    assert report["settings"] == {"prob_thresh": 0.03, "nms_thresh": 0.5, "pyramid": "fixed"}
    counts["wider"] = (row["levels"], row["detections"]["n_ref"], row["detections"]["n_test"])
    capsys.readouterr()
    levels, n_ref, n_test = counts["wider"]
    assert levels == 4  # the fixed rule's 2^-2 .. 2^1
    assert n_ref == n_test > counts["default"][1]
    assert counts["default"][0] != 4


def test_cli_exports_into_a_temporary_folder_when_no_model_is_given(capsys, tmp_path,
                                                                    monkeypatch, fast_export):
    """--help's first example (without --model) end to end: no trtexec hint naming a file of
    the temporary folder, which is gone afterwards. (fast_export: the untrained ResNet-50 of
    seed 0 is the seeded network, whose graph the shared export holds; the rest of the
    export, into the temporary folder, runs.)"""
    import tempfile

    work = tmp_path / "tmp"
    work.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(work))
    out = tmp_path / "parity.json"
    code = main(["--untrained", "--depth", "50", "--sizes", "33x47", "--backends", "onnxruntime",
                 "--json", str(out)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "1 passed, 0 failed, 0 skipped" in captured.out
    assert "tf-parity: exporting fp32 ONNX (opset 17): done in" in captured.err
    assert "trtexec" not in captured.err
    assert json.loads(out.read_text())["passed"] is True
    assert list(work.glob("tf-parity-*")) == []  # (torch keeps its own caches there)


def test_cli_refuses_an_export_of_other_weights(capsys, tmp_path, folder, seeded):
    other = tmp_path / "other.pth"
    state = dict(seeded[0].state_dict())
    state["model.conv1.weight"] = state["model.conv1.weight"] * 1.5  # other weights, same network
    torch.save({"model": state}, other)
    code = main(["--weights", str(other), "--model", str(folder.path), "--sizes", "33x47"])
    assert code == 2
    assert "was not made from" in capsys.readouterr().err


def test_cli_names_an_untrained_export_given_with_weights(capsys, tmp_path, checkpoint, seeded):
    from tinyfaces_trt.core.manifest import write_manifest

    untrained = tmp_path / "untrained"
    untrained.mkdir()
    (untrained / "model.onnx").write_bytes(b"never loaded")
    write_manifest(untrained, config=seeded[1],  # build_model(depth=50, seed=0)'s
                   files={"onnx_fp32": "model.onnx"}, opset=17, untrained=True)
    code = main(["--weights", str(checkpoint), "--model", str(untrained), "--sizes", "33x47"])
    assert code == 2
    assert "but from the UNTRAINED seeded network (test it with --untrained)" \
        in capsys.readouterr().err


def test_cli_refuses_an_untrained_export_of_another_seed_and_an_unwritable_json_first(
        capsys, tmp_path, seeded):
    """Another seed's network failed every comparison (max abs error 5) as if a backend were
    wrong; a --json that cannot be written was found after the whole run."""
    from tinyfaces_trt.core.manifest import write_manifest

    untrained = tmp_path / "untrained"
    untrained.mkdir()
    (untrained / "model.onnx").write_bytes(b"never loaded")
    write_manifest(untrained, config=seeded[1],  # build_model(depth=50, seed=0)'s
                   files={"onnx_fp32": "model.onnx"}, opset=17, untrained=True,
                   extra={"model": {"depth": 50, "variant": "pytorch", "seed": 0}})
    code = main(["--untrained", "--depth", "50", "--seed", "3", "--model", str(untrained),
                 "--sizes", "33x47"])
    assert code == 2
    assert capsys.readouterr().err.strip() == (
        f"tf-parity: error: export folder {untrained} does not hold the untrained ResNet-50 "
        f"network of seed 3 (untrained=True, depth=50, seed=0)")
    blocker = tmp_path / "afile"
    blocker.write_text("")
    code = main(["--untrained", "--depth", "50", "--json", str(blocker / "x.json")])
    assert code == 2
    assert capsys.readouterr().err.strip() == (
        f"tf-parity: error: cannot write --json {blocker / 'x.json'}: {blocker} is not a folder")
    assert main(["--untrained", "--depth", "50", "--json", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip() == (
        f"tf-parity: error: cannot write --json {tmp_path}: {tmp_path} is a folder")


def test_cli_refuses_a_json_that_would_replace_an_input_before_any_work(capsys, tmp_path,
                                                                        checkpoint):
    """--json naming the --weights file replaced the checkpoint with the report (exit 0);
    naming a file in --model broke the export folder for the next run."""
    weights = tmp_path / "ck.pth"
    weights.write_bytes(checkpoint.read_bytes())
    link = tmp_path / "link.pth"
    link.symlink_to(weights)
    folder = tmp_path / "export"
    folder.mkdir()
    (folder / "manifest.json").write_text("{}")
    for argv, json_path, message in [
            (["--weights", str(link)], weights, f"would replace the weights file {link}"),
            (["--weights", str(weights), "--model", str(folder)], folder / "manifest.json",
             f"is inside the export folder under test (--model {folder})"),
            (["--untrained", "--model", str(folder)], folder / "new.json",
             f"is inside the export folder under test (--model {folder})")]:
        assert main([*argv, "--sizes", "33x47", "--json", str(json_path)]) == 2
        assert capsys.readouterr().err.strip() == (
            f"tf-parity: error: --json {json_path} {message}; give another --json")
    assert weights.read_bytes() == checkpoint.read_bytes()
    assert (folder / "manifest.json").read_text() == "{}" and not (folder / "new.json").exists()


def test_cli_refuses_an_export_of_another_variant_and_takes_variant(capsys, tmp_path):
    """A matconvnet export compared with the pytorch reference failed on the maps' shapes
    (exit 1, as if a backend were wrong), and an untrained matconvnet export could not be
    tested at all."""
    from tinyfaces_trt.core.manifest import write_manifest

    mcn = tmp_path / "mcn"
    mcn.mkdir()
    (mcn / "model.onnx").write_bytes(b"not an ONNX model")
    # a matconvnet network's config (TinyFacesNet.detector_config), without building one
    write_manifest(mcn, config=DetectorConfig.for_variant("matconvnet"),
                   files={"onnx_fp32": "model.onnx"},
                   opset=17, untrained=True,
                   extra={"model": {"depth": 50, "variant": "matconvnet", "seed": 0}})
    argv = ["--untrained", "--depth", "50", "--model", str(mcn), "--sizes", "33x47",
            "--backends", "onnxruntime"]
    assert main(argv) == 2
    assert capsys.readouterr().err.strip() == (
        f"tf-parity: error: export folder {mcn} holds the 'matconvnet' variant of the network, "
        f"the reference is the 'pytorch' one; give --variant matconvnet to compare like with like")
    code = main(argv + ["--variant", "matconvnet"])  # like with like: on to running the model
    err = capsys.readouterr().err
    assert code == EXIT_SKIPPED and "variant" not in err
    assert f"requested backend onnxruntime was skipped: cannot load ONNX model {mcn}" in err


@pytest.mark.skipif(HAS_TENSORRT, reason="tensorrt is installed here")
def test_cli_requested_but_unavailable_tensorrt_fails_unless_allowed(capsys, tmp_path, checkpoint,
                                                                     folder):
    """A parity run that compares nothing must not pass."""
    out = tmp_path / "parity.json"
    argv = ["--weights", str(checkpoint), "--model", str(folder.path), "--sizes", "33x47",
            "--backends", "onnxruntime,tensorrt", "--json", str(out)]
    code = main(argv)
    captured = capsys.readouterr()
    assert code == EXIT_SKIPPED == 3
    assert "| tensorrt | 33x47 | skipped | - | - | - |" in captured.out
    assert "| onnxruntime | 33x47 | passed |" in captured.out
    assert "1 passed, 0 failed, 1 skipped" in captured.out
    assert "tf-parity: error: requested backend tensorrt was skipped: " in captured.err
    assert "--allow-skip" in captured.err
    report = json.loads(out.read_text())
    assert report["passed"] is False and report["exit_code"] == 3
    assert [r["status"] for r in report["results"]] == ["passed", "skipped"]
    assert main(argv + ["--allow-skip"]) == 0
    assert "tf-parity: note: tensorrt skipped: " in capsys.readouterr().err
    assert json.loads(out.read_text())["passed"] is True


def test_cli_help_documents_exit_status(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    text = capsys.readouterr().out
    assert info.value.code == 0
    assert "exit status:" in text and "--allow-skip" in text
    for line in ("0  every comparison ran and passed", "1  a comparison was out of tolerance",
                 "2  bad arguments", "3  a backend named in --backends was skipped"):
        assert line in text


def test_cli_argument_errors(capsys):
    for argv, message in ((["--sizes", "33x47"], "one of the arguments --weights --untrained"),
                          (["--untrained", "--sizes", "33by47"], "WIDTHxHEIGHT with positive integers, e.g. 1920x1080; got '33by47'"),
                          (["--untrained", "--backends", "cuda"], "unknown backend(s) ['cuda']"),
                          (["--untrained", "--seed", "-1"],
                           "argument --seed: -1 must be >= 0")):
        with pytest.raises(SystemExit) as info:
            main(argv)
        assert info.value.code == 2 and message in capsys.readouterr().err


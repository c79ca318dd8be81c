"""A tf-detect rerun keeps an image's outputs only when the same network with the same detection
settings made them: results of another checkpoint or threshold are made again, never kept as done
(seeded ResNet-50 export, ONNX Runtime CPU, in-process; ``--ray``'s logic through the serial pool)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from helpers_cli import run_tf_detect as _run
from tinyfaces_trt.cli.detect import build_parser
from tinyfaces_trt.cli.detect_plan import mask_record
from tinyfaces_trt.anonymize.sidecar import MASKS_REVISION
from tinyfaces_trt.wider.records import RECORDS_FOLDER as WIDER_RECORDS
from tinyfaces_trt.cli.detect_ray import run_detect
from tinyfaces_trt.detector_record import DetectorRecord
from tinyfaces_trt.parity.images import synthetic_image


def _photos(folder: Path, count: int = 2) -> Path:
    for k in range(count):
        (folder / "ev").mkdir(parents=True, exist_ok=True)
        Image.fromarray(synthetic_image(40, 52, seed=k)).save(folder / "ev" / f"p{k}.png")
    return folder


def _lines(err: str, photos: Path) -> list[str]:
    """stderr's per-image lines, paths relative to ``photos``, the summary cut before its time."""
    return [line.replace(f"{photos}/", "").rsplit(" in ", 1)[0] for line in err.splitlines()
            if line.startswith("tf-detect: ") and "UNTRAINED" not in line]


def _ray(capsys, *argv) -> tuple[int, str, str]:
    """tf-detect --ray's own run (plan, per-task work, reports) through the serial pool."""
    code = run_detect(build_parser().parse_args([str(a) for a in argv]))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("run", [_run, _ray], ids=["single", "ray"])
def test_outputs_of_another_threshold_are_made_again_then_resumed(capsys, export_dir, tmp_path,
                                                                  run):
    photos = _photos(tmp_path / "photos")
    out, pred = tmp_path / "out", tmp_path / "pred"
    argv = [photos, "--model", export_dir, "--out", out, "--wider-dir", pred]
    assert run(capsys, *argv)[0] == 0
    before = json.loads((out / "ev" / "p0.json").read_text())
    assert before["config"] == {"prob_thresh": 0.5, "nms_thresh": 0.3, "min_face": None,
                                "max_face": None, "pyramid": "adaptive"}
    wider = (pred / "ev" / "p0.txt").read_text()

    code, _, err = run(capsys, *argv, "--prob-thresh", "0.9")
    assert code == 0
    assert _lines(err, photos) == [
        *(f"tf-detect: ev/p{k}.png: making its outputs again: they were made with prob_thresh "
          "0.5 (now 0.9)" for k in range(2)),
        "tf-detect: 2 image(s), 0 face(s), 0 error(s)"]  # (no score of this map reaches 0.9)
    after = json.loads((out / "ev" / "p0.json").read_text())
    assert after["config"]["prob_thresh"] == 0.9 and after["detections"] == []
    assert before["detections"] and (pred / "ev" / "p0.txt").read_text() != wider
    record = json.loads((pred / WIDER_RECORDS / "ev" / "p0.json").read_text())
    assert record["config"] == after["config"] and record["model"] == after["model"]

    code, _, err = run(capsys, *argv, "--prob-thresh", "0.9")  # the same settings: resumed
    assert code == 0 and _lines(err, photos) == [
        *(f"tf-detect: ev/p{k}.png: skipped, its outputs exist (--overwrite replaces them)"
          for k in range(2)),
        "tf-detect: 0 image(s), 0 face(s), 2 skipped (outputs exist), 0 error(s)"]


def _first_run(capsys, export_dir: Path, tmp_path: Path) -> tuple[Path, Path, Path]:
    """(photos, --out, one image's detections JSON) of a first run over one photo."""
    photos = _photos(tmp_path / "photos", count=1)
    out = tmp_path / "out"
    assert _run(capsys, photos, "--model", export_dir, "--out", out)[0] == 0
    return photos, out, out / "ev" / "p0.json"


def test_outputs_of_the_untrained_network_are_made_again_by_trained_weights(capsys, export_dir,
                                                                            tmp_path):
    photos, out, detections = _first_run(capsys, export_dir, tmp_path)
    trained = json.loads(detections.read_text())
    sha = trained["model"]["weights_sha256"]
    assert isinstance(sha, str) and trained["model"]["untrained"] is False
    earlier = {**trained, "model": {"weights_sha256": None, "untrained": True}, "detections": []}
    detections.write_text(json.dumps(earlier))
    drawn = out / "ev" / "p0_boxes.png"
    drawn.write_bytes(b"the untrained network's boxes")

    code, _, err = _run(capsys, photos, "--model", export_dir, "--out", out)
    assert code == 0
    assert _lines(err, photos)[0] == ("tf-detect: ev/p0.png: making its outputs again: they were "
                                      f"made with model untrained (now sha256 {sha[:12]})")
    assert json.loads(detections.read_text()) == trained
    assert drawn.read_bytes() != b"the untrained network's boxes"


def test_outputs_of_another_precision_or_variant_of_the_same_weights_are_made_again(
        capsys, export_dir, tmp_path):
    """The review's case: fp16 after fp32 (or another variant's export of one checkpoint) was
    skipped as done, so both AP figures were the first one's."""
    photos = _photos(tmp_path / "photos", count=1)
    pred = tmp_path / "pred"
    argv = [photos, "--model", export_dir, "--wider-dir", pred]
    assert _run(capsys, *argv)[0] == 0
    record = pred / WIDER_RECORDS / "ev" / "p0.json"
    fp32 = json.loads(record.read_text())["model"]
    assert (fp32["precision"], fp32["variant"], fp32["depth"], fp32["seed"]) == \
        ("fp32", "pytorch", 50, None)
    code, _, err = _run(capsys, *argv, "--fp16")
    assert code == 0 and _lines(err, photos)[0] == (
        "tf-detect: ev/p0.png: making its outputs again: they were made with precision fp32 "
        "(now fp16)")
    assert json.loads(record.read_text())["model"]["precision"] == "fp16"
    record.write_text(json.dumps({"model": {**fp32, "precision": "fp16",
                                            "variant": "matconvnet"}}))
    code, _, err = _run(capsys, *argv, "--fp16")
    assert code == 0 and _lines(err, photos)[0] == (
        "tf-detect: ev/p0.png: making its outputs again: they were made with variant matconvnet "
        "(now pytorch), no recorded detection settings (an older version wrote it)")


def test_backend_auto_compares_the_precision_of_the_backend_it_picks(capsys, export_dir,
                                                                     tmp_path):
    """auto recorded no precision, so fp16 outputs were kept by its fp32 run."""
    photos = _photos(tmp_path / "photos", count=1)
    argv = [photos, "--model", export_dir, "--out", tmp_path / "out"]
    assert _run(capsys, *argv, "--fp16")[0] == 0
    code, _, err = _run(capsys, *argv, "--backend", "auto")
    assert code == 0 and (
        "tf-detect: ev/p0.png: making its outputs again: they were made with precision fp16 "
        "(now fp32)") in _lines(err, photos)
    code, _, err = _run(capsys, *argv, "--backend", "auto")
    assert code == 0 and "skipped, its outputs exist" in err


def test_a_checkpoint_run_knows_its_variant_before_it_is_loaded(tmp_path):
    """--weights compared no variant (unknown until loaded): outputs of a matconvnet export of
    the same checkpoint were kept by a run that reads it as pytorch."""
    from tinyfaces_trt.detector_record import detector_record

    pth, mat = tmp_path / "w.pth", tmp_path / "w.mat"
    pth.write_bytes(b"PK\x03\x04 a torch zip")
    mat.write_bytes(b"MATLAB 5.0 MAT-file, a DagNN")
    assert detector_record(None, pth).model["variant"] == "pytorch"
    assert detector_record(None, mat).model["variant"] == "matconvnet"
    recorded = {"model": {**detector_record(None, pth).model, "variant": "matconvnet"},
                "config": detector_record(None, pth).config}
    assert detector_record(None, pth).changes(recorded) == [
        "variant matconvnet (now pytorch)"]


def test_a_missing_output_is_added_beside_the_kept_ones_of_the_same_detector(capsys, export_dir,
                                                                           tmp_path):
    """The drawn copy is kept; the JSON is written again with the anonymised copy added, as it
    records how that copy was made."""
    photos, out, detections = _first_run(capsys, export_dir, tmp_path)
    first = json.loads(detections.read_text())
    drawn = out / "ev" / "p0_boxes.png"
    drawn.write_bytes(drawn.read_bytes() + b"kept")  # marks the file as kept
    kept = drawn.read_bytes()
    code, _, err = _run(capsys, photos, "--model", export_dir, "--out", out, "--blur", "--draw")
    assert code == 0 and "making its outputs again" not in err
    assert drawn.read_bytes() == kept and (out / "ev" / "p0_blurred.png").is_file()
    assert json.loads(detections.read_text()) == {**first, "anonymised": mask_record("blur")}


@pytest.mark.parametrize("record", [None, "not json", '{"model": {"untrained": true}}'],
                         ids=["missing", "unreadable", "another"])
def test_a_wider_result_whose_detector_is_not_recorded_is_made_again(capsys, export_dir,
                                                                     tmp_path, record):
    """Results in --wider-dir from an older tf-detect, or another tool, carry no record: they
    may be any detector's, so none is kept as this run's result."""
    photos = _photos(tmp_path / "photos", count=1)
    pred = tmp_path / "pred"
    (pred / "ev").mkdir(parents=True)
    (pred / "ev" / "p0.txt").write_text("ev/p0.png\n0\n")  # another run's: no face
    path = pred / WIDER_RECORDS / "ev" / "p0.json"
    if record is not None:
        path.parent.mkdir(parents=True)
        path.write_text(record)
    code, _, err = _run(capsys, photos, "--model", export_dir, "--wider-dir", pred)
    assert code == 0
    reason = (f"{path}, which records the detector that made them, is missing or unreadable"
              if record != '{"model": {"untrained": true}}' else
              "they were made with model untrained (now sha256 ")
    assert _lines(err, photos)[0].startswith(f"tf-detect: ev/p0.png: making its outputs again: "
                                             f"{reason}")
    assert (pred / "ev" / "p0.txt").read_text() != "ev/p0.png\n0\n"
    assert json.loads(path.read_text())["model"]["untrained"] is False


def test_record_changes_name_each_difference_and_distrust_unknown_networks():
    trained = DetectorRecord({"weights_sha256": "ab" * 32, "untrained": False},
                             {"prob_thresh": 0.5, "nms_thresh": 0.3})
    same = {"model": {"weights_sha256": "ab" * 32, "untrained": False, "source": "x"},
            "config": {"prob_thresh": 0.5, "nms_thresh": 0.3, "min_face": 10}}
    assert trained.changes(same) == []
    assert trained.changes({**same, "config": {"prob_thresh": 0.03}}) == [
        "prob_thresh 0.03 (now 0.5)", "nms_thresh default (now 0.3)"]
    assert trained.changes({**same, "model": {"weights_sha256": "cd" * 32, "untrained": False}}
                           ) == [f"model sha256 {'cd' * 6} (now sha256 {'ab' * 6})"]
    assert trained.changes(["not", "a", "record"])[0] == f"model unknown (now sha256 {'ab' * 6})"
    unknown = DetectorRecord(None, {})
    assert unknown.changes(same) == ["model sha256 ababababab (now unknown)".replace(
        "ababababab", "ab" * 6)]
    assert trained.changes({**same, "model": {**same["model"], "variant": "matconvnet",
                                              "precision": "fp16"}}) == []  # not known now
    assert trained.changes({"model": same["model"]}) == [  # an older tf-detect's JSON
        "no recorded detection settings (an older version wrote it)"]
    untrained = DetectorRecord({"weights_sha256": None, "untrained": True, "variant": "pytorch",
                                "depth": 101, "seed": 0, "precision": "fp32"}, {})
    recorded = {"weights_sha256": None, "untrained": True, "variant": "pytorch", "depth": 101,
                "seed": 0, "precision": None}
    assert untrained.changes({"model": recorded, "config": {}}) == []
    assert untrained.changes({"model": {**recorded, "seed": 1, "precision": "fp16"}, "config": {}}) == [
        "seed 1 (now 0)", "precision fp16 (now fp32)"]
    assert untrained.changes({"model": {"untrained": True}, "config": {}}) == [  # which seed is not known
        "variant unknown (now pytorch)", "depth unknown (now 101)", "seed unknown (now 0)"]


def _blurred_run(capsys, export_dir: Path, tmp_path: Path, run=_run
                 ) -> tuple[list[Any], Path, Path, dict[str, Any]]:
    """(argv, the detections JSON, the blurred copy, the JSON's content) of a first --blur run
    over one photo."""
    photos = _photos(tmp_path / "photos", count=1)
    out = tmp_path / "out"
    argv = [photos, "--model", export_dir, "--out", out, "--blur"]
    assert run(capsys, *argv)[0] == 0
    return argv, out / "ev" / "p0.json", out / "ev" / "p0_blurred.png", \
        json.loads((out / "ev" / "p0.json").read_text())


@pytest.mark.parametrize("run", [_run, _ray], ids=["single", "ray"])
def test_an_anonymised_copy_of_other_masks_is_made_again(capsys, export_dir, tmp_path, run):
    """A rerun kept the blurred copy of an older tf-detect (the bare box, or the clipped box
    enlarged), or of other masks, and reported the image as done: the JSON recorded nothing of
    how the copy was made. It records it now, and a copy recorded otherwise is made again."""
    argv, detections, copy, first = _blurred_run(capsys, export_dir, tmp_path, run)
    photos = argv[0]
    assert first["anonymised"] == {"mode": "blur", "shape": "box", "scale": 1.3,
                                   "blur_strength": 0.25, "masks_revision": MASKS_REVISION}
    assert list(first)[-2:] == ["anonymised", "detections"]
    made = copy.read_bytes()
    stale = (photos / "ev" / "p0.png").read_bytes()  # stands for a copy masked otherwise
    older = {key: value for key, value in first.items() if key != "anonymised"}
    for recorded, reason in (
            (older, "no recorded mask settings (an older version made the anonymised copy)"),
            ({**first, "anonymised": {**first["anonymised"], "scale": 1.0, "masks_revision": 1}},
             f"mask scale 1.0 (now 1.3), masks revision 1 (now {MASKS_REVISION})"),
            ({**first, "anonymised": {"mode": "pixelate", "shape": "box", "scale": 1.3,
                                      "cells": None, "block": None,
                                      "masks_revision": MASKS_REVISION}},
             "mask mode pixelate (now blur)")):
        detections.write_text(json.dumps(recorded))
        copy.write_bytes(stale)
        code, _, err = run(capsys, *argv)
        assert code == 0 and _lines(err, photos)[0] == (
            f"tf-detect: ev/p0.png: making its outputs again: they were made with {reason}")
        assert copy.read_bytes() == made and json.loads(detections.read_text()) == first
    code, _, err = run(capsys, *argv)  # recorded with this run's masks: kept
    assert code == 0 and "skipped, its outputs exist" in err
    # no copy asked: the record of one is nothing to compare; the JSON is kept as it is
    code, _, err = run(capsys, *argv[:-1])
    assert code == 0 and "making its outputs again" not in err
    assert json.loads(detections.read_text()) == first
    assert (detections.parent / "p0_boxes.png").is_file()


@pytest.mark.parametrize("run", [_run, _ray], ids=["single", "ray"])
def test_a_pixelated_copy_of_the_old_finer_grid_is_made_again(capsys, export_dir, tmp_path, run):
    """tf-detect --pixelate used pixelate_boxes' own grid (about 8 cells across a face,
    recorded as cells null) where tf-anonymize and tf-serve use ANONYMIZE_STYLE's 5 x 5. The
    JSON records the grid now, so a rerun makes the finer copy again with theirs."""
    photos = _photos(tmp_path / "photos", count=1)
    out = tmp_path / "out"
    argv = [photos, "--model", export_dir, "--out", out, "--pixelate"]
    assert run(capsys, *argv)[0] == 0
    detections, copy = out / "ev" / "p0.json", out / "ev" / "p0_pixelated.png"
    first = json.loads(detections.read_text())
    assert first["anonymised"] == {"mode": "pixelate", "shape": "box", "scale": 1.3, "cells": 5,
                                   "block": None, "masks_revision": MASKS_REVISION}
    made = copy.read_bytes()
    detections.write_text(json.dumps({**first, "anonymised": {**first["anonymised"],
                                                              "cells": None}}))
    copy.write_bytes((photos / "ev" / "p0.png").read_bytes())  # stands for the finer mosaic
    code, _, err = run(capsys, *argv)
    assert code == 0 and _lines(err, photos)[0] == (
        "tf-detect: ev/p0.png: making its outputs again: they were made with mask cells "
        "default (now 5)")
    assert copy.read_bytes() == made and json.loads(detections.read_text()) == first
    code, _, err = run(capsys, *argv)  # recorded with this run's grid: kept
    assert code == 0 and "skipped, its outputs exist" in err


def test_a_copy_replaced_is_recorded_only_once_it_is_complete(capsys, export_dir, tmp_path,
                                                             monkeypatch):
    """A run stopped while it replaced a stale copy (here: its write fails) must not leave a
    JSON recording this run's masks beside the old copy: the next rerun would keep it."""
    import tinyfaces_trt.runtime.imageio as imageio
    from tinyfaces_trt.core.errors import ImageError

    argv, detections, copy, first = _blurred_run(capsys, export_dir, tmp_path)
    made = copy.read_bytes()
    detections.write_text(json.dumps({k: v for k, v in first.items() if k != "anonymised"}))
    stale = (argv[0] / "ev" / "p0.png").read_bytes()
    copy.write_bytes(stale)
    save = imageio.save_image

    def full_disk(path, *args, **kwargs):
        if Path(path).name.endswith("_blurred.png"):
            raise ImageError(f"{path}: cannot save: disk full")
        return save(path, *args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(imageio, "save_image", full_disk)
        code, _, err = _run(capsys, *argv)
    assert code == 1 and "cannot save: disk full" in err
    assert copy.read_bytes() == stale
    assert json.loads(detections.read_text()) == {k: v for k, v in first.items()
                                                  if k != "anonymised"}
    code, _, err = _run(capsys, *argv)
    assert code == 0 and ("making its outputs again: they were made with no recorded mask "
                          "settings") in err
    assert copy.read_bytes() == made and json.loads(detections.read_text()) == first


@pytest.mark.parametrize("run", [_run, _ray], ids=["single", "ray"])
def test_an_anonymised_copy_is_not_written_beside_a_copy_showing_the_faces(capsys, export_dir,
                                                                          tmp_path, run):
    """A first run drew the boxes on a copy (faces visible); a --blur rerun without --draw
    would have left that copy beside the blurred one (of other detections, maybe): refused,
    --overwrite or not, until it is removed or --draw makes it again."""
    photos, out, detections = _first_run(capsys, export_dir, tmp_path)
    drawn, blurred = out / "ev" / "p0_boxes.png", out / "ev" / "p0_blurred.png"
    shown, record = drawn.read_bytes(), detections.read_text()
    argv = [photos, "--model", export_dir, "--out", out, "--blur"]
    for extra in ([], ["--overwrite"], ["--prob-thresh", "0.9"]):
        code, _, err = run(capsys, *argv, *extra)
        assert code == 1 and _lines(err, photos) == [
            f"tf-detect: error: ev/p0.png: {drawn} (a copy with the faces visible and boxes "
            "drawn) would stay beside the blurred copy this run writes; a folder of anonymised "
            "copies must not show the faces: remove it, or pass --draw to make it again with "
            "this run's boxes",
            "tf-detect: 0 image(s), 0 face(s), 1 error(s)"], extra
        assert not blurred.exists() and drawn.read_bytes() == shown
        assert detections.read_text() == record
    code, _, err = run(capsys, *argv, "--draw", "--prob-thresh", "0.9")
    assert code == 0 and blurred.is_file() and drawn.read_bytes() != shown
    # a rerun of those settings without --draw writes nothing: skipped, as before, not refused
    code, _, err = run(capsys, *argv, "--prob-thresh", "0.9")
    assert code == 0 and "skipped, its outputs exist" in err and drawn.is_file()
    code, _, err = run(capsys, *argv, "--prob-thresh", "0.9", "--overwrite")  # rewrites: refused
    assert code == 1 and "would stay beside the blurred copy" in err
    drawn.unlink()
    code, _, err = run(capsys, *argv, "--prob-thresh", "0.9")
    assert code == 0 and "skipped, its outputs exist" in err and not drawn.exists()

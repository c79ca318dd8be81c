"""--pyramid {adaptive,fixed}: tf-detect and tf-anonymize run the rule asked for (the fixed
exponents -2..1 of the short side reproduce both references' WIDER protocol), record it, and a
rerun with the other rule makes the outputs again (seeded ResNet-50 export, ONNX Runtime CPU,
in-process)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from helpers_cli import run_tf_detect
from tinyfaces_trt.anonymize import cli as anonymize_cli
from tinyfaces_trt.detector_record import DetectorRecord, detector_record
from tinyfaces_trt.parity.images import synthetic_image
from tinyfaces_trt.runtime.backends.onnxruntime_runner import OnnxRuntimeRunner
from tinyfaces_trt.wider.records import RECORDS_FOLDER, detectors_of

# the network inputs of a 48x64 image's pyramid levels
FIXED = [(12, 16), (24, 32), (48, 64), (96, 128)]  # 2^-2, 2^-1, 1, 2 of the short side
ADAPTIVE = [(48, 64), (68, 91), (96, 128)]  # 1, 1.41, 2 (the largest template covers it at 1)


@pytest.fixture
def network_inputs(monkeypatch) -> list[tuple[int, int]]:
    """The (height, width) of every input the ONNX Runtime network runs, in order."""
    seen: list[tuple[int, int]] = []
    run = OnnxRuntimeRunner.run

    def spy(self, net_input):
        seen.append(tuple(net_input.shape[2:]))
        return run(self, net_input)

    monkeypatch.setattr(OnnxRuntimeRunner, "run", spy)
    return seen


def _photos(folder: Path) -> Path:
    (folder / "ev").mkdir(parents=True)
    Image.fromarray(synthetic_image(48, 64, seed=0)).save(folder / "ev" / "p0.png")
    return folder


def _image_lines(err: str) -> list[str]:
    return [line.split(": ", 2)[2] for line in err.splitlines()
            if line.startswith("tf-detect: ") and "p0.png" in line]


def test_tf_detect_runs_and_records_the_fixed_levels(capsys, export_dir, tmp_path,
                                                     network_inputs):
    photos, out, pred = _photos(tmp_path / "photos"), tmp_path / "out", tmp_path / "pred"
    argv = [photos, "--model", export_dir, "--out", out, "--wider-dir", pred]
    assert run_tf_detect(capsys, *argv, "--pyramid", "fixed")[0] == 0
    assert network_inputs == FIXED
    detections = json.loads((out / "ev" / "p0.json").read_text())
    assert detections["config"] == {"prob_thresh": 0.5, "nms_thresh": 0.3, "min_face": None,
                                    "max_face": None, "pyramid": "fixed"}
    record = json.loads((pred / RECORDS_FOLDER / "ev" / "p0.json").read_text())
    assert record["config"] == detections["config"]
    # tf-eval names the rule of the detector that wrote the WIDER results
    (name, count), = detectors_of(pred).counts
    assert count == 1 and name.endswith("prob_thresh 0.5, nms_thresh 0.3, pyramid fixed")

    network_inputs.clear()
    assert run_tf_detect(capsys, *argv, "--overwrite")[0] == 0  # the model's rule: adaptive
    assert network_inputs == ADAPTIVE
    assert json.loads((out / "ev" / "p0.json").read_text())["config"]["pyramid"] == "adaptive"


def test_a_tf_detect_rerun_with_another_rule_makes_the_outputs_again(capsys, export_dir,
                                                                     tmp_path, network_inputs):
    photos, out, pred = _photos(tmp_path / "photos"), tmp_path / "out", tmp_path / "pred"
    argv = [photos, "--model", export_dir, "--out", out, "--wider-dir", pred]
    skipped = "skipped, its outputs exist (--overwrite replaces them)"
    runs = [([], None), (["--pyramid", "fixed"], "pyramid adaptive (now fixed)"),
            (["--pyramid", "fixed"], skipped), ([], "pyramid fixed (now adaptive)"),
            (["--pyramid", "adaptive"], skipped)]
    for flags, expected in runs:
        network_inputs.clear()
        code, _, err = run_tf_detect(capsys, *argv, *flags)
        assert code == 0
        if expected is not None:
            lines = [expected] if expected == skipped else \
                [f"making its outputs again: they were made with {expected}"]
            assert _image_lines(err) == lines, err
        assert network_inputs == ([] if expected == skipped else
                                  FIXED if "fixed" in flags else ADAPTIVE)


def test_outputs_recording_no_rule_ran_the_models_own(capsys, export_dir, tmp_path):
    """JSONs of versions without --pyramid record no rule: they ran the model's (adaptive), so
    a run with it keeps them and one with --pyramid fixed makes them again."""
    photos, out = _photos(tmp_path / "photos"), tmp_path / "out"
    argv = [photos, "--model", export_dir, "--out", out]
    assert run_tf_detect(capsys, *argv)[0] == 0
    path = out / "ev" / "p0.json"
    older = json.loads(path.read_text())
    del older["config"]["pyramid"]
    path.write_text(json.dumps(older))
    assert _image_lines(run_tf_detect(capsys, *argv)[2]) == [
        "skipped, its outputs exist (--overwrite replaces them)"]
    assert _image_lines(run_tf_detect(capsys, *argv, "--pyramid", "fixed")[2]) == [
        "making its outputs again: they were made with pyramid adaptive (now fixed)"]


def test_a_tf_anonymize_rerun_with_another_rule_makes_the_output_again(capsys, export_dir,
                                                                       tmp_path, network_inputs):
    photo, out = tmp_path / "p.png", tmp_path / "out"
    Image.fromarray(synthetic_image(48, 64, seed=0)).save(photo)
    argv = [str(photo), "--out", str(out), "--model", str(export_dir)]
    assert anonymize_cli.main(argv) == 0
    assert network_inputs == ADAPTIVE
    network_inputs.clear()
    assert anonymize_cli.main(argv + ["--pyramid", "fixed"]) == 0
    err = capsys.readouterr().err
    assert (f"tf-anonymize: {photo}: making {out / 'p.png'} again: it was made with pyramid "
            "adaptive (now fixed)") in err.splitlines(), err
    assert network_inputs == FIXED
    assert anonymize_cli.main(argv) == 0
    assert (f"tf-anonymize: {photo}: making {out / 'p.png'} again: it was made with pyramid "
            "fixed (now adaptive)") in capsys.readouterr().err.splitlines()


def test_a_record_without_the_rule_is_compared_with_the_networks_own(tmp_path):
    """A MAT-file is read as the matconvnet variant: its record holds that variant's
    nms_thresh 0.1 (0.3, the pytorch default, was recorded though 0.1 ran) and its own rule."""
    mat = tmp_path / "w.mat"
    mat.write_bytes(b"MATLAB 5.0 MAT-file, a DagNN")
    record = detector_record(None, mat, {"pyramid": "fixed"})
    assert record.config == {"prob_thresh": 0.5, "nms_thresh": 0.1, "min_face": None,
                             "max_face": None, "pyramid": "fixed"}
    assert record.own == {"pyramid": "adaptive"}
    older = {"model": record.model, "config": {"prob_thresh": 0.5, "nms_thresh": 0.1,
                                               "min_face": None, "max_face": None}}
    assert record.changes(older) == ["pyramid adaptive (now fixed)"]
    assert detector_record(None, mat).changes(older) == []
    fixed_network = DetectorRecord(record.model, record.config, {"pyramid": "fixed"})
    assert fixed_network.changes(older) == []

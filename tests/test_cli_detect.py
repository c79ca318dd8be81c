"""tf-detect end to end on a seeded ResNet-50 export (ONNX Runtime CPU), in-process."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers_cli import run_tf_detect as _run
from test_anonymize_jobs import BoxDetector
from tinyfaces_trt.parity.images import synthetic_image
from tinyfaces_trt.export_cache import cache_key
from tinyfaces_trt.runtime.backends.onnxruntime_runner import OnnxRuntimeRunner
from tinyfaces_trt.cli.detect import build_parser, main
from tinyfaces_trt.cli.detect_ray import run_detect
from tinyfaces_trt.runtime.draw import box_regions
from tinyfaces_trt.core.manifest import load_export_folder
from tinyfaces_trt.runtime.imageio import load_image
from tinyfaces_trt.runtime.pipeline import Detector
from tinyfaces_trt.runtime.results import detections_to_list
from tinyfaces_trt.wider.format import read_detection_file

HAS_TENSORRT = importlib.util.find_spec("tensorrt") is not None


@pytest.fixture(scope="module")
def reference(export_dir):
    folder = load_export_folder(export_dir)
    return Detector(OnnxRuntimeRunner(folder.onnx_fp32), folder.config)


@pytest.fixture
def photos(tmp_path):
    """A WIDER-like folder: two events, a JPEG, a PNG and a text file named .jpg."""
    root = tmp_path / "images"
    (root / "1--Event").mkdir(parents=True)
    (root / "2--Other").mkdir()
    Image.fromarray(synthetic_image(47, 63, seed=1)).save(root / "1--Event" / "a.jpg", quality=95)
    Image.fromarray(synthetic_image(64, 48, seed=2)).save(root / "2--Other" / "b.png")
    (root / "2--Other" / "broken.jpg").write_text("not an image")
    return root


def test_console_script_is_wired():
    scripts = {e.name: e.value for e in importlib.metadata.entry_points(group="console_scripts")}
    assert scripts.get("tf-detect") == "tinyfaces_trt.cli.detect:main"


def test_help_documents_every_option_with_defaults_and_examples():
    done = subprocess.run([sys.executable, "-m", "tinyfaces_trt.cli.detect", "--help"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0
    text = " ".join(done.stdout.split())
    for option in ("--backend", "--model", "--weights", "--out", "--json", "--blur", "--pixelate",
                   "--prob-thresh", "--nms-thresh", "--wider-dir", "--fp16", "--providers",
                   "--threads"):
        assert option in text
    assert "default: onnxruntime" in text and "default: the model's, 0.5" in text
    assert "UNTRAINED" in text and "examples:" in text and "tf-detect photo.jpg --model" in text
    assert "exit status" in text
    # --blur and --pixelate mask the boxes enlarged as tf-anonymize's (ANONYMIZE_STYLE.scale)
    assert text.count("enlarged 1.3x about its centre, as tf-") == 2


def test_folder_run_writes_outputs_and_reports_bad_files(capsys, photos, export_dir, tmp_path,
                                                         reference):
    out = tmp_path / "out"
    missing = tmp_path / "missing.jpg"
    code, stdout, stderr = _run(capsys, photos, missing, "--model", export_dir, "--out", out)
    assert code == 1
    assert "broken.jpg: not a recognised image file" in stderr
    assert "missing.jpg: image file not found" in stderr
    assert "2 image(s)" in stderr and "2 error(s)" in stderr
    assert "UNTRAINED" not in stderr
    lines = stdout.splitlines()
    assert len(lines) == 2 and "a.jpg: " in lines[0] and "b.png: " in lines[1]
    for rel, ext in (("1--Event/a", ".jpg"), ("2--Other/b", ".png")):
        record = json.loads((out / f"{rel}.json").read_text())
        image = load_image(record["image"])
        expected = reference.detect(image)
        got = np.array([d["box"] + [d["score"]] for d in record["detections"]]).reshape(-1, 5)
        assert len(expected) > 0 and got.shape == expected.shape
        np.testing.assert_allclose(got, expected, atol=0.01)
        assert (record["width"], record["height"]) == (image.shape[1], image.shape[0])
        drawn = load_image(out / f"{rel}_boxes{ext}")
        assert drawn.shape == image.shape
        if ext == ".png":  # lossless: boxes were drawn on a copy
            assert np.any(drawn != image)
    assert not (out / "2--Other" / "broken.json").exists()


def test_json_output_and_prob_thresh(capsys, photos, export_dir, reference):
    image_path = photos / "2--Other" / "b.png"
    code, stdout, _ = _run(capsys, image_path, "--model", export_dir, "--json", "--prob-thresh", 0.6)
    assert code == 0
    doc = json.loads(stdout)
    assert doc["backend"] == "onnxruntime" and doc["untrained"] is False and doc["errors"] == []
    (record,) = doc["images"]
    scores = np.array([d["score"] for d in record["detections"]])
    strict = Detector(reference.runner, reference.config.with_(prob_thresh=0.6))
    expected = strict.detect(load_image(image_path))
    assert len(scores) == len(expected) > 0 and np.all(scores > 0.6)
    np.testing.assert_allclose(scores, expected[:, 4], atol=1e-5)


@pytest.mark.parametrize("flag, suffix", [("--blur", "_blurred"), ("--pixelate", "_pixelated")])
def test_anonymised_copy_changes_only_face_regions(capsys, photos, export_dir, tmp_path, flag, suffix):
    """Only the boxes enlarged 1.3x about their centres change, as tf-anonymize's masks
    (ANONYMIZE_STYLE.scale): tf-detect masked the bare detected box, tight around the face."""
    from tinyfaces_trt.core.config import coordinate_base_of
    from tinyfaces_trt.runtime.masks import ANONYMIZE_STYLE, mask_regions

    image_path = photos / "2--Other" / "b.png"
    out = tmp_path / "anon"
    # at 0.6 the seeded network's boxes leave room for the enlargement inside the image
    code, _, _ = _run(capsys, image_path, "--model", export_dir, "--out", out, flag,
                      "--prob-thresh", "0.6")
    assert code == 0
    original = load_image(image_path)
    hidden = load_image(out / f"b{suffix}.png")
    record = json.loads((out / "b.json").read_text())
    boxes = np.array([d["box"] for d in record["detections"]]).reshape(-1, 4)
    assert len(boxes) > 0
    base = coordinate_base_of(record["model"]["variant"])
    bare = np.zeros(original.shape[:2], bool)
    for r0, r1, c0, c1 in box_regions(boxes - base, *original.shape[:2]):
        bare[r0:r1, c0:c1] = True
    inside = np.zeros(original.shape[:2], bool)
    for r0, r1, c0, c1 in mask_regions(boxes, *original.shape[:2], ANONYMIZE_STYLE, base=base):
        inside[r0:r1, c0:c1] = True
    assert np.array_equal(hidden[~inside], original[~inside])
    assert np.any(hidden[bare] != original[bare])
    ring = inside & ~bare  # the enlargement, outside every detected box
    assert ring.any() and np.any(hidden[ring] != original[ring])


@pytest.mark.parametrize("flag", ["--blur", "--pixelate"])
def test_anonymised_copy_masks_the_unclipped_boxes_as_tf_anonymize(capsys, photos, export_dir,
                                                                   tmp_path, reference, flag):
    """tf-detect enlarged the boxes clipped to the image, tf-anonymize the detector's own: a
    face half past the left border was masked over columns 0..22, not 0..25. The copy is now
    tf-anonymize's for the same detections; the JSON, the console line and the drawn copy keep
    the clipped boxes, byte for byte."""
    from dataclasses import replace

    from tinyfaces_trt.anonymize.cli import main as anonymize
    from tinyfaces_trt.runtime.masks import ANONYMIZE_STYLE, apply_masks

    image_path = photos / "2--Other" / "b.png"
    plain, anon = tmp_path / "plain", tmp_path / "anon"
    argv = [image_path, "--model", export_dir, "--prob-thresh", "0.6"]
    code, line, _ = _run(capsys, *argv, "--out", plain)
    assert code == 0
    code, anon_line, _ = _run(capsys, *argv, "--out", anon, flag, "--draw")
    assert code == 0 and anon_line == line
    record = json.loads((anon / "b.json").read_text())
    del record["anonymised"]
    assert json.dumps(record, indent=2) + "\n" == (plain / "b.json").read_text()
    assert (anon / "b_boxes.png").read_bytes() == (plain / "b_boxes.png").read_bytes()

    image = load_image(image_path)
    config = reference.config.with_(prob_thresh=0.6)
    clipped = Detector(reference.runner, config).detect(image)
    unclipped = Detector(reference.runner, config.with_(clip_boxes=False)).detect(image)
    assert record["detections"] == detections_to_list(clipped)
    assert (unclipped[:, 0] < 0).any() and (unclipped[:, 1] < 0).any()  # cut by the border
    assert np.array_equal(np.clip(unclipped[:, [0, 2]], 0, 47), clipped[:, [0, 2]])
    style = replace(ANONYMIZE_STYLE, mode=flag[2:])  # tf-anonymize's default masks
    hidden = load_image(anon / f"b_{'blurred' if flag == '--blur' else 'pixelated'}.png")
    assert np.array_equal(hidden, apply_masks(image, unclipped, style))
    assert not np.array_equal(hidden, apply_masks(image, clipped, style))  # (what it was)
    # --ray's workers (here its serial pool) build the same detector and write the same files
    ray = tmp_path / "ray"
    assert run_detect(build_parser().parse_args(
        [str(a) for a in (*argv, "--out", ray, flag, "--draw")])) == 0
    capsys.readouterr()
    assert sorted(p.name for p in ray.iterdir()) == sorted(p.name for p in anon.iterdir())
    assert all((ray / p.name).read_bytes() == p.read_bytes() for p in anon.iterdir())
    # tf-anonymize's own copy of the image, its default masks in that mode
    assert anonymize([str(image_path), "--model", str(export_dir), "--out",
                      str(tmp_path / "tf-anonymize"), "--prob-thresh", "0.6", "--quiet",
                      "--mode", flag[2:]]) == 0
    assert np.array_equal(hidden, load_image(tmp_path / "tf-anonymize" / "b.png"))


class _FixedBoxes(BoxDetector):
    """A detector finding fixed faces, two of them cut by the image border, unclipped as the
    detector of a --blur/--pixelate run (and tf-anonymize's) returns them."""

    from tinyfaces_trt.core.config import DetectorConfig

    BOXES = np.array([[-12, -6, 20, 30, 0.9],  # past the left and top borders
                      [52, 28, 95, 75, 0.8],  # past the right and bottom borders
                      [28, 10, 50, 34, 0.7]], np.float32)  # inside, overlapping the first
    config = DetectorConfig(clip_boxes=False)
    coordinate_base = 0.0

    def detect(self, image):
        return self.BOXES.copy()


@pytest.mark.parametrize("mode", ["blur", "pixelate"])
def test_the_anonymised_copy_is_tf_anonymizes_and_tf_serves_for_the_same_boxes(
        capsys, tmp_path, monkeypatch, mode):
    """tf-detect --pixelate used pixelate_boxes' own grid (7 cells across a 43 px face, cells
    of 4+ px) where tf-anonymize --mode pixelate and tf-serve /anonymize?mode=pixelate use
    ANONYMIZE_STYLE's 5 x 5: a finer mosaic, hiding less. The three now give the same pixels
    for the same detections, also where a box is cut by the border, and the JSON records the
    grid (a copy recorded with the old one is made again: test_cli_detect_reruns)."""
    from dataclasses import replace

    import tinyfaces_trt.anonymize.cli as anonymize_cli
    import tinyfaces_trt.cli.detect as detect_cli
    from tinyfaces_trt.anonymize.sidecar import MASKS_REVISION
    from tinyfaces_trt.runtime.imageio import decode_image
    from tinyfaces_trt.runtime.masks import ANONYMIZE_STYLE, apply_masks
    from tinyfaces_trt.scaleout.service import anonymise, parse_anonymise_query

    image = np.random.default_rng(5).integers(0, 256, (60, 80, 3), dtype=np.uint8)
    photo = tmp_path / "p.png"
    Image.fromarray(image).save(photo)
    monkeypatch.setattr(detect_cli, "_make_detector", lambda args: _FixedBoxes())
    monkeypatch.setattr(anonymize_cli, "_make_detector", lambda args: _FixedBoxes())
    code, _, err = _run(capsys, photo, "--out", tmp_path / "detect", f"--{mode}")
    assert code == 0, err
    assert anonymize_cli.main([str(photo), "--out", str(tmp_path / "anonymize"), "--mode", mode,
                               "--quiet"]) == 0
    copy = load_image(tmp_path / "detect" / {"blur": "p_blurred.png",
                                             "pixelate": "p_pixelated.png"}[mode])
    expected = apply_masks(image, _FixedBoxes.BOXES, replace(ANONYMIZE_STYLE, mode=mode))
    assert np.array_equal(copy, expected)
    assert np.array_equal(load_image(tmp_path / "anonymize" / "p.png"), expected)
    body = photo.read_bytes()
    served = anonymise(image, _FixedBoxes.BOXES, parse_anonymise_query({"mode": mode}, body))
    assert np.array_equal(decode_image(served), expected)
    # the border cuts the masks: the first face's enlarged box starts at -16.8, -11.4
    assert (copy[0, 0] != image[0, 0]).any() and (copy[59, 79] != image[59, 79]).any()
    fields = {"blur_strength": 0.25} if mode == "blur" else {"cells": 5, "block": None}
    assert json.loads((tmp_path / "detect" / "p.json").read_text())["anonymised"] == {
        "mode": mode, "shape": "box", "scale": 1.3, **fields, "masks_revision": MASKS_REVISION}


def test_wider_dir_keeps_event_folders(capsys, photos, export_dir, tmp_path):
    wider = tmp_path / "pred"
    code, stdout, _ = _run(capsys, photos / "1--Event", photos / "2--Other" / "b.png",
                           "--model", export_dir, "--wider-dir", wider, "--json")
    assert code == 0
    records = {r["image"]: r for r in json.loads(stdout)["images"]}
    for rel in ("1--Event/a.jpg", "2--Other/b.png"):
        parsed = read_detection_file(wider / f"{rel.rsplit('.', 1)[0]}.txt")
        assert parsed.image_name == rel
        detections = records[str(photos / rel)]["detections"]
        assert len(parsed.boxes) == len(detections) > 0
        prob = np.array([d["score"] for d in detections], np.float64)
        # the logit, as the authors' cnn_widerface_test_AB.m writes score_cls
        np.testing.assert_allclose(parsed.boxes[:, 4], np.log(prob / (1 - prob)), atol=1e-4)


def test_same_names_get_distinct_outputs(capsys, photos, export_dir, tmp_path):
    other = tmp_path / "elsewhere"
    other.mkdir()
    shutil.copy(photos / "2--Other" / "b.png", other / "b.png")
    out = tmp_path / "out"
    code, _, _ = _run(capsys, photos / "2--Other" / "b.png", other / "b.png",
                      "--model", export_dir, "--out", out)
    assert code == 0
    assert (out / "b.json").is_file() and (out / "b_2.json").is_file()
    assert json.loads((out / "b_2.json").read_text())["image"] == str(other / "b.png")


def test_an_image_given_again_is_detected_once(capsys, photos, export_dir, tmp_path,
                                              monkeypatch):
    monkeypatch.chdir(photos / "2--Other")
    (photos / "2--Other" / "broken.jpg").unlink()
    (photos / "2--Other" / "link.png").symlink_to(photos / "2--Other" / "b.png")
    out = tmp_path / "out"
    # b.png named again, as ./b.png and in its folder; link.png is another name, kept
    code, stdout, stderr = _run(capsys, "b.png", "./b.png", ".", "b.png", "--model",
                                export_dir, "--out", out, "--json")
    assert code == 0
    images = [r["image"] for r in json.loads(stdout)["images"]]
    assert images == ["b.png", "link.png"]
    assert sorted(p.name for p in out.iterdir()) == ["b.json", "b_boxes.png", "link.json",
                                                     "link_boxes.png"]
    assert "left out 3 image(s) given again (the same path as an earlier input): b.png" \
        in stderr
    # L/../b.png, L linking into another folder, names that folder's neighbour: another file
    elsewhere = photos / "elsewhere"
    (elsewhere / "sub").mkdir(parents=True)
    shutil.copy(photos / "1--Event" / "a.jpg", elsewhere / "b.png")
    (photos / "2--Other" / "L").symlink_to(elsewhere / "sub")
    code, stdout, stderr = _run(capsys, "b.png", "L/../b.png", "--model", export_dir, "--out",
                                tmp_path / "out2", "--json", "--overwrite")
    assert code == 0 and "given again" not in stderr
    assert [r["image"] for r in json.loads(stdout)["images"]] == ["b.png", "L/../b.png"]


def test_untrained_default_shouts_every_run_and_reuses_cache(capsys, photos, export_dir,
                                                             tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("TINYFACES_CACHE", str(cache))
    shutil.copytree(export_dir, cache / cache_key(None))  # stands in for the default export
    for _ in range(2):
        code, stdout, stderr = _run(capsys, photos / "2--Other" / "b.png", "--json")
        assert code == 0
        assert "WARNING: UNTRAINED NETWORK" in stderr and "MEANINGLESS" in stderr
        assert "exporting" not in stderr
        assert json.loads(stdout)["untrained"] is True


def test_torch_backend_runs_weights_directly(capsys, photos, checkpoint, reference):
    image_path = photos / "2--Other" / "b.png"
    code, stdout, stderr = _run(capsys, image_path, "--backend", "torch", "--weights", checkpoint,
                                "--json")
    assert code == 0 and "UNTRAINED" not in stderr
    (record,) = json.loads(stdout)["images"]
    expected = reference.detect(load_image(image_path))
    assert len(record["detections"]) == len(expected)
    np.testing.assert_allclose([d["score"] for d in record["detections"]], expected[:, 4],
                               atol=1e-4)


@pytest.mark.parametrize("argv, message", [
    (["--blur"], "--blur/--pixelate write an anonymised copy and need --out DIR"),
    (["--prob-thresh", "1.5"], "must be between 0 and 1"),
    (["--nms-thresh", "x"], "'x' is not a number"),
    (["--backend", "caffe"], "invalid choice: 'caffe'"),
    (["--backend", "torch", "--threads", "2"], "--providers/--threads are onnxruntime options"),
    (["--blur", "--pixelate", "--out", "o"], "not allowed with argument"),
    (["--backend", "torch", "--model", "m"], "--backend torch runs a checkpoint (--weights F)"),
    # /dev/stdin is -: once, and never sent to --ray's workers
    (["-", "/dev/stdin"], "standard input can be given once (-, /dev/stdin)"),
    (["/dev/stdin", "--ray"], "standard input (/dev/stdin) cannot be sent to the workers"),
])
def test_argument_errors_exit_2(capsys, argv, message):
    with pytest.raises(SystemExit) as info:
        main(["x.jpg", *argv])
    assert info.value.code == 2
    assert message in capsys.readouterr().err


def test_setup_errors_are_one_message_without_traceback(capsys, photos, tmp_path, export_dir):
    image = photos / "2--Other" / "b.png"
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"garbage")
    code, _, stderr = _run(capsys, image, "--backend", "torch", "--weights", bad)
    assert code == 1 and "tf-detect: error:" in stderr and "bad.pth" in stderr
    code, _, stderr = _run(capsys, image, "--model", tmp_path / "nope")
    assert code == 1 and "does not exist" in stderr
    if not HAS_TENSORRT:
        code, _, stderr = _run(capsys, image, "--backend", "tensorrt", "--model", export_dir)
        assert code == 1
        (line,) = [l for l in stderr.splitlines() if l.startswith("tf-detect: error:")]
        assert "TensorRT" in line and "not installed" in line


def test_console_line_lists_the_best_boxes_only():
    from tinyfaces_trt.cli.detect import format_line

    boxes = np.array([[10, 12, 40, 52, 0.981], [60, 8, 90, 47, 0.734], [1, 2, 3, 4, 0.6]], np.float32)
    assert format_line(Path("a.jpg"), boxes[:0]) == "a.jpg: 0 faces"
    assert format_line(Path("a.jpg"), boxes[:1]) == "a.jpg: 1 face: 10,12,40,52 0.981"
    assert (format_line(Path("a.jpg"), boxes, shown=2)
            == "a.jpg: 3 faces: 10,12,40,52 0.981; 60,8,90,47 0.734; ... (+1 more)")


def test_untrained_export_folder_banner_names_the_folder(capsys, photos, export_dir, tmp_path):
    folder = tmp_path / "untrained_export"
    shutil.copytree(export_dir, folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["untrained"] = True
    (folder / "manifest.json").write_text(json.dumps(manifest))
    code, _, stderr = _run(capsys, photos / "2--Other" / "b.png", "--model", folder)
    assert code == 0 and "WARNING: UNTRAINED NETWORK" in stderr
    banner = " ".join(line.strip("* ") for line in stderr.splitlines() if line.startswith("*"))
    assert "No --weights or --model was given" not in banner
    assert "The --model export folder holds the seeded RANDOM-weight network" in banner
    assert all(len(line) == 72 for line in stderr.splitlines() if line.startswith("*"))


def test_unusable_out_folder_is_one_error_before_any_image(capsys, photos, export_dir, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    code, stdout, stderr = _run(capsys, photos, "--model", export_dir, "--out", blocker / "out")
    assert code == 1 and stdout == ""
    (line,) = [l for l in stderr.splitlines() if l.startswith("tf-detect: error:")]
    assert line.startswith(f"tf-detect: error: cannot create --out {blocker / 'out'}: ")
    code, _, stderr = _run(capsys, photos, "--model", export_dir, "--wider-dir", blocker)
    assert code == 1 and f"--wider-dir {blocker} exists and is not a folder" in stderr


def test_out_folder_around_the_input_folder_still_finds_the_images(capsys, photos, export_dir):
    code, stdout, stderr = _run(capsys, photos / "2--Other", "--model", export_dir,
                                "--out", photos.parent)
    assert "holds no image files" not in stderr
    assert "b.png: " in stdout and (photos.parent / "b.json").is_file()
    assert code == 1  # broken.jpg only


def test_out_folder_equal_to_the_input_folder_is_refused(capsys, photos, export_dir):
    with pytest.raises(SystemExit) as info:
        main([str(photos), "--model", str(export_dir), "--out", str(photos)])
    assert info.value.code == 2
    assert f"--out {photos} is also an input folder" in capsys.readouterr().err


def test_weights_folder_points_to_model(capsys, photos, export_dir):
    code, _, stderr = _run(capsys, photos / "2--Other" / "b.png", "--weights", export_dir)
    assert code == 1
    assert (f"--weights {export_dir} is a folder, not a checkpoint file (.pth or .mat); "
            f"{export_dir} is an export folder: pass it with --model") in stderr


def test_wider_results_of_two_images_never_overwrite_each_other(capsys, photos, export_dir,
                                                               tmp_path):
    event = photos / "1--Event"
    shutil.copy(photos / "2--Other" / "b.png", event / "a.png")  # same stem as a.jpg
    wider = tmp_path / "pred"
    code, _, stderr = _run(capsys, event, "--model", export_dir, "--wider-dir", wider)
    assert code == 1
    assert f"{event / 'a.png'}: its WIDER result {wider / '1--Event' / 'a.txt'} was already " \
           f"written for {event / 'a.jpg'}" in stderr
    assert read_detection_file(wider / "1--Event" / "a.txt").image_name == "1--Event/a.jpg"


@pytest.mark.parametrize("edit, message", [
    (lambda m: m["config"].__setitem__("max_input_dim", -5), "max_input_dim (-5) must be >= 1"),
    (lambda m: m["config"].__setitem__("prob_thresh", 7), "prob_thresh must be in (0, 1)"),
    (lambda m: m.__setitem__("untrained", "no"), "entry 'untrained' has the wrong type"),
    (lambda m: m.__setitem__("profile", {"low": 1}), "profile must be null or an object"),
])
def test_edited_manifest_is_a_message_naming_it(capsys, photos, export_dir, tmp_path, edit, message):
    folder = tmp_path / "edited"
    shutil.copytree(export_dir, folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    edit(manifest)
    (folder / "manifest.json").write_text(json.dumps(manifest))
    code, _, stderr = _run(capsys, photos / "2--Other" / "b.png", "--model", folder)
    assert code == 1
    (line,) = [l for l in stderr.splitlines() if l.startswith("tf-detect: error:")]
    assert f"{folder / 'manifest.json'}: " in line and message in line


def test_model_pointing_at_a_file_names_its_folder(capsys, photos, export_dir):
    code, _, stderr = _run(capsys, photos / "2--Other" / "b.png", "--model",
                           export_dir / "model.onnx")
    assert code == 1
    assert f"is a file, not an export folder; pass the folder that holds it, {export_dir}" in stderr


def test_unknown_provider_is_a_usage_error(capsys, photos, export_dir):
    with pytest.raises(SystemExit) as info:
        main([str(photos / "2--Other" / "b.png"), "--model", str(export_dir),
              "--providers", "cdua"])
    assert info.value.code == 2  # as --help documents for bad arguments (issue 10, item 7)
    assert "unknown ONNX Runtime provider(s) ['cdua']" in capsys.readouterr().err



def test_blurred_and_drawn_copies_place_one_based_boxes_on_their_pixels(tmp_path):
    """tf-detect --blur of the matconvnet variant's boxes (1-based) left the face's left
    column and top row unblurred."""
    from tinyfaces_trt.cli.detect_plan import OutputPlan, write_outputs

    image = np.random.default_rng(0).integers(0, 256, (40, 40, 3), dtype=np.uint8)
    plan = OutputPlan(drawn=None, anonymised=tmp_path / "p_pixelated.png",
                      detections=tmp_path / "p.json")
    boxes = np.array([[1, 1, 20, 20, 0.9]], np.float32)
    write_outputs(plan, image, boxes, {}, "pixelate", base=1.0)
    changed = (np.asarray(Image.open(plan.anonymised)) != image).any(axis=2)
    assert changed[0, :20].any() and changed[:20, 0].any()  # the face's first row and column
    # pixels 0..19 enlarged 1.3x as tf-anonymize's: -2.85..21.85, so pixels 0..22
    assert changed[21:23, :20].any() and changed[:20, 21:23].any()
    assert not changed[23:, :].any() and not changed[:, 23:].any()


def test_a_ray_run_with_nothing_to_do_starts_no_cluster_and_leaves_no_folder(
        capsys, export_dir, tmp_path, monkeypatch):
    """--ray for an empty folder: Ray was started for no task and the empty --out and
    --wider-dir folders stayed, where the single-process run removes them (a missing image is
    a task: it fails on a worker, as it fails where the single-process run loads it)."""
    from tinyfaces_trt.cli import detect_ray

    def no_cluster(*args, **kwargs):
        raise AssertionError("a Ray cluster was started for no task")

    monkeypatch.setattr(detect_ray, "run_tasks", no_cluster)
    work = tmp_path / "work"
    (work / "empty").mkdir(parents=True)
    code, out, err = _run(capsys, work / "empty", "--model", export_dir, "--out", work / "out",
                          "--wider-dir", work / "pred", "--ray")
    assert code == 1 and out == ""
    assert f"tf-detect: error: {work / 'empty'}: " in err
    assert [p.name for p in work.iterdir()] == ["empty"]


def test_a_face_size_no_level_can_reach_is_a_usage_error(capsys, photos, export_dir, tmp_path,
                                                         monkeypatch):
    """--max-face 5 (below the smallest face any level produces) exited 1, as a failed image;
    --help gives 2 for bad arguments, as --min-face 100 --max-face 10 exits."""
    from tinyfaces_trt.anonymize.cli import main as anonymize

    code, out, err = _run(capsys, photos, "--model", export_dir, "--max-face", "5")
    assert code == 2 and out == ""
    assert err.startswith("tf-detect: error: max_face (5) is below the smallest face any "
                          "pyramid level can produce")
    assert anonymize([str(photos), "--model", str(export_dir), "--out", str(tmp_path / "out"),
                      "--max-face", "5"]) == 2
    assert capsys.readouterr().err.startswith("tf-anonymize: error: max_face (5) is below")
    assert not (tmp_path / "out").exists()
    from tinyfaces_trt.scaleout import pool

    def no_cluster(*args, **kwargs):
        raise AssertionError("a Ray cluster was started")

    monkeypatch.setattr(pool, "run_tasks", no_cluster)
    # --overwrite: no expected detector is made on the driver, which found it before
    assert anonymize([str(photos), "--model", str(export_dir), "--out", str(tmp_path / "out"),
                      "--max-face", "5", "--ray", "--overwrite"]) == 2
    assert "tf-anonymize: error: max_face (5) is below" in capsys.readouterr().err

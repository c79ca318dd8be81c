"""tf-anonymize's audit trail and the outputs it must not keep or write (privacy review rD):
the masking revision and version every sidecar records (an older revision's output is made
again), the output's size and sha256 (an output replaced after it was made is made again), the
run (backend, providers, command line, UTC times), the pyramid levels that ran and the face
sizes they find (an image or video no level can search fails, nothing written), pages of a
multi-page image left out as a counted warning, and ``--mode none`` said at the start and in
every sidecar."""

from __future__ import annotations

import datetime
import hashlib
import json
import logging
import re
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from test_anonymize_jobs import FACE, BoxDetector, _photo, _run_cli
from tinyfaces_trt.anonymize import cli, jobs, sidecar
from tinyfaces_trt.anonymize.jobs import Options, is_done, plan_tasks, process_file
from tinyfaces_trt.core.config import DetectorConfig
from tinyfaces_trt.core.pyramid import no_level_reason


def _side(path: Path) -> dict:
    return json.loads(Path(f"{path}.json").read_text())


def _face_hidden(output: Path, source: Path) -> bool:
    """Whether the face (:data:`FACE`) of ``source`` is blurred in ``output``."""
    from PIL import Image

    x1, y1, x2, y2 = FACE
    inner = np.s_[y1 + 6:y2 - 6, x1 + 6:x2 - 6]
    made, original = (np.asarray(Image.open(p).convert("RGB")).astype(int)
                      for p in (output, source))
    return np.abs(made[inner] - original[inner]).mean() > 20


class CountingDetector(BoxDetector):
    """:class:`BoxDetector` with another config, counting the images it is shown."""

    def __init__(self, config: DetectorConfig | None = None, runner=None) -> None:
        self.config = config or DetectorConfig()
        self.shown = 0
        if runner is not None:
            self.runner = runner

    def detect(self, image):
        self.shown += 1
        return super().detect(image)


# --- finding 1: an output of an older masking revision ---------------------------------------

def test_an_output_of_an_older_masking_revision_is_made_again(tmp_path, monkeypatch, capsys):
    """Every sidecar records the masking revision and the version; an output whose sidecar
    records none (an older tf-anonymize, whose masks may have let a face through) or another
    revision is made again, saying why; this revision's own is skipped."""
    import tinyfaces_trt

    photo, out = _photo(tmp_path / "p.png"), tmp_path / "out"
    status, err = _run_cli([photo, "--out", out, "-q"], monkeypatch, capsys)
    assert status == 0
    side = _side(out / "p.png")
    assert (side["masks_revision"], side["version"]) == (sidecar.MASKS_REVISION,
                                                        tinyfaces_trt.__version__)
    status, err = _run_cli([photo, "--out", out], monkeypatch, capsys)
    assert status == 0 and "0 done, 1 skipped, 0 failed" in err
    for recorded, which, age in ((None, "none recorded", "an older"),
                                 (sidecar.MASKS_REVISION - 1,
                                  f"revision {sidecar.MASKS_REVISION - 1}", "an older")):
        side = _side(out / "p.png")
        side.pop("masks_revision")
        if recorded is not None:
            side["masks_revision"] = recorded
        (out / "p.png.json").write_text(json.dumps(side))
        (out / "p.png").write_bytes(photo.read_bytes())  # a bug of that revision: face visible
        side["output_file"] = sidecar.output_record(out / "p.png")
        (out / "p.png.json").write_text(json.dumps(side))
        status, err = _run_cli([photo, "--out", out], monkeypatch, capsys)
        assert status == 0 and "1 done, 0 skipped, 0 failed" in err
        assert (f"tf-anonymize: {photo}: making {out / 'p.png'} again: it was made by {age} "
                f"masking revision ({which}; this tf-anonymize writes revision "
                f"{sidecar.MASKS_REVISION}): its masks may differ from what this version "
                "writes") in err.splitlines()
        assert _face_hidden(out / "p.png", photo)
        assert _side(out / "p.png")["masks_revision"] == sidecar.MASKS_REVISION


# --- finding 4: an output replaced after it was made; the run's record -----------------------

def test_an_output_replaced_after_it_was_made_is_made_again(tmp_path, monkeypatch, capsys):
    """The sidecar records the output's size and sha256 as written; a rerun makes again an
    output replaced by its original (another size) or changed in place (same size), naming
    it, and --ray's resume check agrees."""
    photo, out = _photo(tmp_path / "p.png"), tmp_path / "out"
    assert _run_cli([photo, "--out", out, "-q"], monkeypatch, capsys)[0] == 0
    output = out / "p.png"
    data = output.read_bytes()
    assert _side(output)["output_file"] == {"size": len(data),
                                            "sha256": hashlib.sha256(data).hexdigest()}
    task = plan_tasks([photo], out, overwrite=True)[0][0]
    assert is_done(task, Options())
    output.write_bytes(photo.read_bytes())  # the original published as the anonymised copy
    assert not is_done(task, Options())
    status, err = _run_cli([photo, "--out", out], monkeypatch, capsys)
    assert status == 0 and "1 done, 0 skipped, 0 failed" in err
    assert (f"tf-anonymize: {photo}: making {output} again: {output} is not the file "
            f"tf-anonymize wrote (size {photo.stat().st_size} bytes, was {len(data)}): it was "
            "replaced or changed since") in err.splitlines()
    assert _face_hidden(output, photo) and output.read_bytes() == data
    changed = bytearray(data)
    changed[-20] ^= 0xFF
    output.write_bytes(bytes(changed))
    status, err = _run_cli([photo, "--out", out], monkeypatch, capsys)
    assert (f"tf-anonymize: {photo}: making {output} again: {output} is not the file "
            "tf-anonymize wrote (same size, other sha256): it was replaced or changed "
            "since") in err.splitlines()
    assert output.read_bytes() == data
    assert _run_cli([photo, "--out", out], monkeypatch, capsys)[1].count("1 skipped") == 1


def test_the_sidecar_records_the_run(tmp_path, monkeypatch, capsys):
    """Backend (as tf-detect --json), the ONNX Runtime providers in use (null for a runner
    naming none), the command line and the UTC start and finish of the file; not among the
    options a rerun compares."""
    photo, out = _photo(tmp_path / "p.png"), tmp_path / "out"
    before = datetime.datetime.now(datetime.timezone.utc)
    assert _run_cli([photo, "--out", out, "-q"], monkeypatch, capsys)[0] == 0
    after = datetime.datetime.now(datetime.timezone.utc)
    side = _side(out / "p.png")
    run = side["run"]
    assert (run["backend"], run["providers"], run["command"]) == ("onnxruntime", None, sys.argv)
    started, finished = (datetime.datetime.fromisoformat(run[k].replace("Z", "+00:00"))
                         for k in ("started", "finished"))
    assert run["started"].endswith("Z") and before - datetime.timedelta(seconds=1) <= started
    assert started <= finished <= after + datetime.timedelta(seconds=1)
    assert not {"backend", "command"} & set(side["options"])
    runner = SimpleNamespace(providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
    task = plan_tasks([photo], tmp_path / "out2")[0][0]
    options = Options(backend="onnxruntime-cuda", command=("tf-anonymize", "p.png"))
    assert process_file(CountingDetector(runner=runner), task, options).status == "done"
    assert {k: v for k, v in _side(Path(task.output))["run"].items()
            if k in ("backend", "providers", "command")} == {
        "backend": "onnxruntime-cuda", "providers": list(runner.providers),
        "command": ["tf-anonymize", "p.png"]}


# --- finding 2: an image or video no pyramid level can search ---------------------------------

def test_an_image_no_pyramid_level_can_search_fails_and_nothing_is_written(tmp_path, monkeypatch,
                                                                          capsys):
    """A 12 x 21000 strip with --pyramid fixed: every level is over max_input_dim, so the
    network would never run and its faces would be written as they are; it fails (exit 1,
    the reason said, nothing written). A 1 x 1 image, too small to hold a face, passes with 0
    detections and its sidecar says no level ran."""
    from PIL import Image

    strip, out = tmp_path / "strip.png", tmp_path / "out"
    Image.fromarray(np.full((12, 21000, 3), 90, np.uint8)).save(strip)
    fixed = CountingDetector(DetectorConfig(pyramid="fixed"))
    status, err = _run_cli([strip, "--out", out, "--pyramid", "fixed"], monkeypatch, capsys,
                           fixed)
    reason = no_level_reason(12, 21000, fixed.config).split(": it has no faces")[0]
    assert status == 1 and fixed.shown == 0
    assert (f"tf-anonymize: error: {strip}: not anonymised: {reason}, so the detector cannot "
            "search the image, which can hold faces of 10.7 px and up; --pyramid adaptive "
            "(the default) downscales it as far as it takes") in err.splitlines()
    assert "0 done, 0 skipped, 1 failed" in err
    assert not out.exists() or list(out.iterdir()) == []
    dot = tmp_path / "dot.png"
    Image.fromarray(np.zeros((1, 1, 3), np.uint8)).save(dot)
    matconvnet = DetectorConfig.for_variant("matconvnet")
    task = plan_tasks([dot], out)[0][0]
    result = process_file(CountingDetector(matconvnet), task, Options())
    assert result.status == "done"
    pyramid = _side(Path(task.output))["pyramid"]
    assert (pyramid["scales"], pyramid["no_level"]) == ([], no_level_reason(1, 1, matconvnet))
    assert pyramid["smallest_face"] is None and result.notes == (
        f"not searched for faces: {no_level_reason(1, 1, matconvnet).split(': it has')[0]}; "
        "the image is too small to hold a face the detector can find (5.6 px and up)",)


def _older_copy(photo: Path, out: Path, monkeypatch, capsys) -> None:
    """``photo``'s output and sidecar as an older tf-anonymize left them: the photo copied as
    it is (no level ran, or a masking bug) and a sidecar recording no masking revision."""
    assert _run_cli([photo, "--out", out, "-q"], monkeypatch, capsys)[0] == 0
    side = _side(out / photo.name)
    del side["masks_revision"]
    (out / photo.name).write_bytes(photo.read_bytes())
    side["output_file"] = sidecar.output_record(out / photo.name)
    Path(f"{out / photo.name}.json").write_text(json.dumps(side))


def test_an_earlier_output_that_cannot_be_made_again_is_removed(tmp_path, monkeypatch, capsys):
    """An older version copied the 12 x 21000 strip as it is (no pyramid level ran); the rerun
    makes it again (older masking revision), which now fails: that copy and its sidecar are
    removed, the error says so, and the next run fails with nothing to remove."""
    from PIL import Image

    strip, out = tmp_path / "strip.png", tmp_path / "out"
    Image.fromarray(np.full((12, 21000, 3), 90, np.uint8)).save(strip)
    _older_copy(strip, out, monkeypatch, capsys)
    fixed = CountingDetector(DetectorConfig(pyramid="fixed"))
    status, err = _run_cli([strip, "--out", out, "--pyramid", "fixed"], monkeypatch, capsys,
                           fixed)
    assert status == 1 and fixed.shown == 0 and "0 done, 0 skipped, 1 failed" in err
    assert f"tf-anonymize: {strip}: making {out / 'strip.png'} again: it was made by an older " \
        "masking revision" in err
    line = next(line for line in err.splitlines() if line.startswith("tf-anonymize: error:"))
    assert line.startswith(f"tf-anonymize: error: {strip}: not anonymised: no pyramid level")
    assert line.endswith(f"(the default) downscales it as far as it takes; removed the earlier "
                         f"output {out / 'strip.png'} and its sidecar {out / 'strip.png.json'}: "
                         "it could not be made again and may not hide every face")
    assert list(out.iterdir()) == []
    status, err = _run_cli([strip, "--out", out, "--pyramid", "fixed"], monkeypatch, capsys,
                           fixed)
    assert status == 1 and "removed" not in err and "0 done, 0 skipped, 1 failed" in err


def test_which_earlier_outputs_a_failure_removes(tmp_path, monkeypatch, capsys):
    """With --overwrite, a failure removes an earlier output this version would not skip (an
    older revision's) but keeps one it would (this revision's, same input and options), a file
    without a sidecar and one whose JSON is not tf-anonymize's; a run interrupted while making
    an output again removes nothing (exit 130); a failure after this run's own output took the
    name keeps that output."""
    from test_anonymize_jobs import FailingDetector

    photo, out = _photo(tmp_path / "p.png"), tmp_path / "out"
    output, side_path = out / "p.png", out / "p.png.json"
    failing = FailingDetector("the network ran out of memory")

    def kept(*extra: str) -> bytes:
        data, side = output.read_bytes(), side_path.read_bytes() if side_path.exists() else None
        status, err = _run_cli([photo, "--out", out, *extra], monkeypatch, capsys, failing)
        assert status == 1 and "removed" not in err
        assert (f"tf-anonymize: error: {photo}: the network ran out of memory") in err.splitlines()
        assert output.read_bytes() == data and not (out / "p_2.png").exists()
        assert (side_path.read_bytes() if side_path.exists() else None) == side
        return data

    assert _run_cli([photo, "--out", out, "-q"], monkeypatch, capsys)[0] == 0
    assert _face_hidden(output, photo)
    kept("--overwrite")  # this revision's own: not stale
    _older_copy(photo, out, monkeypatch, capsys)
    status, err = _run_cli([photo, "--out", out, "--overwrite"], monkeypatch, capsys, failing)
    assert status == 1 and (
        f"tf-anonymize: error: {photo}: the network ran out of memory; removed the earlier output "
        f"{output} and its sidecar {side_path}: it could not be made again and may not hide "
        "every face") in err.splitlines()
    assert list(out.iterdir()) == []

    output.write_bytes(photo.read_bytes())  # a user's file: no sidecar
    kept("--overwrite")
    side_path.write_text(json.dumps({"input": str(photo)}))  # names it, but no format: not ours
    kept()
    output.unlink()
    side_path.unlink()

    class Interrupting(BoxDetector):
        def detect(self, image):
            raise KeyboardInterrupt

    _older_copy(photo, out, monkeypatch, capsys)
    data, side = output.read_bytes(), side_path.read_bytes()
    status, err = _run_cli([photo, "--out", out], monkeypatch, capsys, Interrupting())
    assert status == 130 and (output.read_bytes(), side_path.read_bytes()) == (data, side)

    def full_disk(self, path, **header):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(jobs.AuditLog, "write", full_disk)
    status, err = _run_cli([photo, "--out", out], monkeypatch, capsys)
    assert status == 1 and "removed" not in err
    assert f"tf-anonymize: error: {photo}: No space left on device" in err.splitlines()
    assert _face_hidden(output, photo) and _side(output)["incomplete"] is True  # its claim


def test_a_face_range_no_level_of_an_image_can_find_fails(tmp_path):
    """--max-face 12 on a 4000 px image: its levels stop at 1x (max_input_dim), none finds
    faces that small; the image could hold them, so it fails, saying what to change."""
    from PIL import Image

    photo = tmp_path / "wide.png"
    Image.fromarray(np.zeros((300, 4000, 3), np.uint8)).save(photo)
    config = DetectorConfig(max_face=12.0)
    task = plan_tasks([photo], tmp_path / "out")[0][0]
    result = process_file(CountingDetector(config), task, Options())
    reason = no_level_reason(300, 4000, config).split(": it has no faces")[0]
    assert (result.status, result.error) == (
        "failed", f"{photo}: not anonymised: {reason}, so the detector cannot search the "
                  "image, which can hold faces of 10.7 px and up; give a --min-face/--max-face "
                  "range its levels can find")
    assert not (tmp_path / "out").exists()


def test_a_video_whose_frames_no_level_can_search_fails_before_any_frame(tmp_path):
    av = pytest.importorskip("av")
    clip = tmp_path / "cam.mp4"
    with av.open(str(clip), "w") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for k in range(3):
            image = np.full((48, 64, 3), 40 * k, np.uint8)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode())
    config = DetectorConfig(pyramid="fixed", max_input_dim=10)
    detector = CountingDetector(config)
    task = plan_tasks([clip], tmp_path / "out")[0][0]
    result = process_file(detector, task, Options())
    reason = no_level_reason(48, 64, config).split(": it has no faces")[0]
    assert (result.status, result.error) == (
        "failed", f"{clip}: not anonymised: {reason}, so the detector cannot search the "
                  "video's frames, which can hold faces of 10.7 px and up; --pyramid adaptive "
                  "(the default) downscales it as far as it takes")
    assert detector.shown == 0 and not (tmp_path / "out").exists()
    result = process_file(CountingDetector(), task, Options())
    assert result.status == "done"
    assert _side(Path(task.output))["pyramid"] == sidecar.pyramid_record(48, 64, DetectorConfig())


# --- finding 7: the levels that ran and the faces they find ----------------------------------

def test_the_sidecar_records_the_levels_that_ran_and_the_face_sizes(tmp_path, monkeypatch,
                                                                   capsys):
    """An auditor can tell a small photo (searched at up to 2x: faces from 10.7 px) from a
    panorama over max_input_dim (at most 0.5x: faces from 42.8 px, 85.5 nominally)."""
    photo, out = _photo(tmp_path / "p.png"), tmp_path / "out"
    assert _run_cli([photo, "--out", out, "-q"], monkeypatch, capsys)[0] == 0
    assert _side(out / "p.png")["pyramid"] == {
        "rule": "adaptive", "scales": [1.0, 1.414214, 2.0], "smallest_face": 10.7,
        "largest_face": 220.0, "nominal_smallest_face": 21.4, "nominal_largest_face": 110.0,
        "size_refinement": 2.0, "no_level": None}
    panorama = sidecar.pyramid_record(4096, 8192, DetectorConfig())
    assert panorama["scales"] == [0.007812, 0.015625, 0.03125, 0.0625, 0.125, 0.25, 0.5]
    assert (panorama["smallest_face"], panorama["nominal_smallest_face"]) == (42.8, 85.5)
    assert sidecar.pyramid_record(1080, 1920, DetectorConfig())["scales"][-1] == 2.0


# --- finding 8: a multi-page image keeps its first page -------------------------------------

def test_pages_of_a_multi_page_image_left_out_are_a_counted_warning(tmp_path, monkeypatch,
                                                                   capsys):
    """A 2-page TIFF and a 3-frame APNG: their first picture is anonymised, the others are
    left out with a warning counted in the summary and recorded in the sidecar; a camera's MPO
    (photo and preview) and a plain PNG are single pictures."""
    from PIL import Image

    folder = tmp_path / "in"
    folder.mkdir()
    pages = [Image.fromarray(np.full((48, 64, 3), 30 * k, np.uint8)) for k in range(3)]
    pages[0].save(folder / "scan.tif", save_all=True, append_images=pages[1:2])
    pages[0].save(folder / "anim.png", save_all=True, append_images=pages[1:])
    pages[0].save(folder / "camera.jpg", format="MPO", save_all=True, append_images=pages[1:2])
    pages[0].save(folder / "plain.png")
    out = tmp_path / "out"
    status, err = _run_cli([folder, "--out", out, "-q"], monkeypatch, capsys)
    assert status == 0
    assert err.splitlines()[-2:-1] == [
        f"tf-anonymize: warning: {folder / 'scan.tif'}: holds 2 frames or pages; only the "
        f"first is anonymised and written to {out / 'scan.tif'} (1 left out)"]
    assert (f"tf-anonymize: warning: {folder / 'anim.png'}: holds 3 frames or pages; only the "
            f"first is anonymised and written to {out / 'anim.png'} (2 left out)") in err
    assert "4 done (2 with warnings), 0 skipped, 0 failed" in err
    assert "first frame only" not in err  # the reader's own log line is not said twice
    assert {name: _side(out / name)["image_frames"] for name in
            ("scan.tif", "anim.png", "camera.jpg", "plain.png")} == {
        "scan.tif": {"in_file": 2, "kept": 1}, "anim.png": {"in_file": 3, "kept": 1},
        "camera.jpg": {"in_file": 1, "kept": 1}, "plain.png": {"in_file": 1, "kept": 1}}


def test_load_image_frames_counts_pictures_without_logging(tmp_path, caplog):
    from PIL import Image

    from tinyfaces_trt.runtime.imageio import load_image_frames

    pages = [Image.fromarray(np.full((16, 24, 3), 60 * k, np.uint8)) for k in range(2)]
    pages[0].save(tmp_path / "a.gif", save_all=True, append_images=pages[1:])
    pages[0].save(tmp_path / "c.jpg", format="MPO", save_all=True, append_images=pages[1:])
    pages[0].save(tmp_path / "p.png")
    caplog.set_level(logging.DEBUG, logger="tinyfaces_trt.runtime.imageio")
    counts = {name: load_image_frames(tmp_path / name) for name in ("a.gif", "c.jpg", "p.png")}
    assert {name: (image.shape, n) for name, (image, n) in counts.items()} == {
        "a.gif": ((16, 24, 3), 2), "c.jpg": ((16, 24, 3), 1), "p.png": ((16, 24, 3), 1)}
    assert not [r for r in caplog.records if "frames" in r.getMessage()]


# --- finding 5: --mode none ---------------------------------------------------------------------

def test_mode_none_is_said_at_the_start_per_file_in_the_summary_and_in_the_sidecar(
        tmp_path, monkeypatch, capsys):
    photo, out = _photo(tmp_path / "p.png"), tmp_path / "out"
    monkeypatch.setattr(cli, "_make_detector", lambda args: BoxDetector())
    assert cli.main([str(photo), "--out", str(out), "--mode", "none"]) == 0
    printed = capsys.readouterr()
    assert printed.err.splitlines()[0] == ("tf-anonymize: warning: --mode none: the outputs "
                                           "are NOT anonymised; faces stay visible")
    assert printed.out.rstrip().endswith("0 to review (NOT anonymised: --mode none)")
    assert printed.err.rstrip().endswith("; 1 NOT anonymised (--mode none: faces visible)")
    side = _side(out / "p.png")
    assert (side["anonymised"], side["mode"], side["options"]["style"]["mode"]) == (
        False, "none", "none")
    assert cli.main([str(photo), "--out", str(out), "--mode", "blur", "-q"]) == 0
    printed = capsys.readouterr()
    assert "NOT anonymised" not in printed.err + printed.out
    side = _side(out / "p.png")
    assert (side["anonymised"], side["mode"]) == (True, "blur")
    assert jobs.Result(jobs.Task("a", "b", "b.json", "image"), "done").anonymised


# --- documentation review rB, finding 10: the help names every exit status --------------------

def test_the_help_names_every_exit_status_the_command_returns(tmp_path, monkeypatch, capsys):
    """tf-anonymize returns 0 (done), 1 (an input failed), 2 (bad arguments) and 130 (Ctrl-C
    or SIGTERM): its help's exit status list names exactly those, 130 in tf-detect's words."""
    from tinyfaces_trt.cli import detect

    photo, out = _photo(tmp_path / "p.png"), tmp_path / "out"
    returned = {_run_cli([photo, "--out", out, "-q"], monkeypatch, capsys)[0],
                _run_cli([tmp_path / "gone.png", "--out", out, "-q"], monkeypatch, capsys)[0]}
    with pytest.raises(SystemExit) as usage:
        cli.main([str(photo), "--out", str(out), "--hold", "-1"])
    returned.add(usage.value.code)

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "_run", interrupted)
    returned.add(cli.main([str(photo), "--out", str(out)]))
    capsys.readouterr()
    assert returned == {0, 1, 2, 130}
    section = " ".join(cli.build_parser().format_help().split("exit status:")[1].split())
    assert {int(n) for n in re.findall(r"(?:^|, )(\d+) (?=[a-z])", section)} == returned
    assert section.endswith(", 130 interrupted (Ctrl-C or SIGTERM).")
    assert "130 interrupted (Ctrl-C or SIGTERM)." in " ".join(
        detect.build_parser().format_help().split())

"""Progress over one image's pyramid levels: Detector.detect's on_level and the bar the
command-line tools show with it (core.progress)."""

from __future__ import annotations

import functools
import os
import re
from types import SimpleNamespace

import numpy as np
import pytest
import tqdm
from PIL import Image

from tinyfaces_trt.core import progress
from tinyfaces_trt.core.config import DetectorConfig
from tinyfaces_trt.core.runner import RunnerBase, RunnerCapabilities
from tinyfaces_trt.parity.images import synthetic_image
from tinyfaces_trt.runtime.pipeline import Detector

IMAGE = synthetic_image(90, 120, seed=4)


class NoiseRunner(RunnerBase):
    """Score maps of seeded noise (a few hundred candidates per image), counting its runs."""

    def __init__(self) -> None:
        self.runs = 0

    def run(self, x: np.ndarray) -> np.ndarray:
        self.runs += 1
        rng = np.random.default_rng(x.shape[2] * 10_000 + x.shape[3])
        shape = (x.shape[0], 125, -(-x.shape[2] // 8), -(-x.shape[3] // 8))
        return rng.normal(-1.0, 1.5, shape).astype(np.float32)


def _detector() -> Detector:
    return Detector(NoiseRunner(), DetectorConfig())


@pytest.fixture
def terminal(monkeypatch):
    """stderr taken for a terminal, and bars shown from the start and at every level (a level
    takes milliseconds here)."""
    monkeypatch.setattr(progress, "on_terminal", lambda: True)
    monkeypatch.setattr(progress, "LEVEL_BAR_DELAY_S", 0.0)
    monkeypatch.setattr(tqdm, "tqdm", functools.partial(tqdm.tqdm, mininterval=0))


def test_on_level_is_called_with_each_planned_level_once_it_ran():
    detector = _detector()
    seen = []
    boxes = detector.detect(IMAGE, on_level=lambda level: seen.append((level, detector.runner.runs)))
    levels = detector.plan(*IMAGE.shape[:2])
    assert len(levels) >= 4
    assert seen == [(level, i + 1) for i, level in enumerate(levels)]  # after its network run
    assert len(boxes) > 0
    np.testing.assert_array_equal(boxes, _detector().detect(IMAGE))


def test_a_bar_in_pyramid_pixels_on_a_terminal(terminal, capsys):
    detector = _detector()
    boxes = progress.detect_with_progress(detector, IMAGE, "photo.jpg")
    np.testing.assert_array_equal(boxes, _detector().detect(IMAGE))
    err = capsys.readouterr().err
    levels = detector.plan(*IMAGE.shape[:2])
    total = sum(level.height * level.width for level in levels)
    shown = re.findall(r"photo\.jpg: +(\d+)%\|[^|]*\| ([\d.]+)k?/([\d.]+)k", err)
    assert shown, err
    assert shown[-1] == ("100", f"{total / 1000:.1f}", f"{total / 1000:.1f}")
    assert err.endswith("\r")  # cleared when the image is done (leave=False)


def test_no_bar_off_a_terminal_when_disabled_or_on_a_gpu(terminal, capsys, monkeypatch):
    progress.detect_with_progress(_detector(), IMAGE, "photo.jpg", enabled=False)
    assert capsys.readouterr().err == ""
    for caps in (RunnerCapabilities(device_io=True), RunnerCapabilities(gpu=True)):
        detector = SimpleNamespace(runner=SimpleNamespace(capabilities=caps),
                                   detect=lambda image: "boxes")  # no on_level
        assert progress.detect_with_progress(detector, IMAGE, "photo.jpg") == "boxes"
    assert capsys.readouterr().err == ""
    monkeypatch.setattr(progress, "on_terminal", lambda: False)
    progress.detect_with_progress(_detector(), IMAGE, "photo.jpg")
    assert capsys.readouterr().err == ""


def test_runners_say_whether_they_run_on_a_gpu(export_dir):
    """What decides the bar: ONNX Runtime from its providers, torch from its device (torch on
    cuda fed host arrays had no ``providers`` and was taken for ONNX Runtime on the CPU)."""
    import torch

    from tinyfaces_trt.export.torch_runner import TorchRunner
    from tinyfaces_trt.runtime.backends.onnxruntime_runner import OnnxRuntimeRunner

    assert not TorchRunner(torch.nn.Conv2d(3, 125, 1)).capabilities.on_gpu
    assert RunnerCapabilities(gpu=True).on_gpu and RunnerCapabilities(device_io=True).on_gpu
    assert not RunnerCapabilities().on_gpu
    assert not OnnxRuntimeRunner(export_dir / "model.onnx", threads=1).capabilities.on_gpu
    import onnxruntime

    if "AzureExecutionProvider" in onnxruntime.get_available_providers():  # not a GPU one
        azure = OnnxRuntimeRunner(export_dir / "model.onnx", threads=1,
                                  providers=["AzureExecutionProvider"])
        assert azure.providers[0] == "AzureExecutionProvider" and not azure.capabilities.on_gpu


def test_tf_anonymize_shows_the_bar_for_an_image_unless_quiet(terminal, capsys, tmp_path):
    from tinyfaces_trt.anonymize.jobs import Options, plan_tasks, process_file

    Image.fromarray(IMAGE).save(tmp_path / "street.png")
    for quiet in (True, False):
        (task,), _, _ = plan_tasks([tmp_path / "street.png"], tmp_path / f"out{quiet}")
        result = process_file(_detector(), task, Options(progress=not quiet))
        assert result.status == "done" and result.detections > 0
        err = capsys.readouterr().err
        assert ("street.png: 100%|" in err) is not quiet, err


def test_tf_detect_shows_the_bar_of_each_image_it_detects(terminal, capsys, tmp_path, export_dir):
    """A 1080p photo ran for 15-50 s on a CPU with nothing on the screen."""
    from tinyfaces_trt.cli.detect import main

    folder = tmp_path / "photos"
    (folder / "day").mkdir(parents=True)
    Image.fromarray(IMAGE).save(folder / "day" / "a.png")
    Image.fromarray(IMAGE[:60]).save(folder / "b.png")
    assert main([str(folder), "--model", str(export_dir)]) == 0
    err = capsys.readouterr().err
    for name in ("day/a.png", "b.png"):  # relative to the folder given
        assert re.search(rf"\r{re.escape(name)}: 100%\|[^|]*\| [\d.]+k/[\d.]+k ", err), err
    assert "tf-detect: 100%|" in err  # under the folder's bar of images


@pytest.mark.skipif(not hasattr(os, "openpty"), reason="needs a pseudo-terminal")
def test_every_bar_gets_a_size_where_the_terminal_reports_none():
    """A pseudo-terminal never sized reports 0 x 0, which tqdm takes as no room and hides the
    bar: core.progress.bar_size (used by all four bars) gives 80 x 24 there, and follows a
    sized terminal or a stream without one."""
    import fcntl
    import io
    import struct
    import termios

    from tinyfaces_trt.core.progress import bar_size

    leader, follower = os.openpty()
    try:
        class Pty(io.StringIO):
            def fileno(self) -> int:
                return follower

        fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 0, 0, 0, 0))
        assert bar_size(Pty()) == {"ncols": 80, "nrows": 24}
        fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
        assert bar_size(Pty()) == {"dynamic_ncols": True}
    finally:
        os.close(leader)
        os.close(follower)
    assert bar_size(io.StringIO()) == {"dynamic_ncols": True}

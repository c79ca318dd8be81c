"""``Detector.warmup``: a detector gets ready for its image sizes before the first real image
(``tf-serve --warmup``). The runner is asked to prepare exactly each pyramid level's shape
for each batch size, sizes it cannot run are refused before any work, and one blank image of
each size and batch size goes through the whole pipeline."""

from __future__ import annotations

import numpy as np
import pytest

from helpers_runners import PooledRunner
from tinyfaces_trt.core.config import DetectorConfig
from tinyfaces_trt.core.errors import TinyFacesError
from tinyfaces_trt.core.runner import RunnerBase, RunnerCapabilities
from tinyfaces_trt.runtime.pipeline import Detector


class Recording(RunnerBase):
    """Records what the detector asks: check_levels, warmup and run calls, in order."""

    def __init__(self, batch: bool = True, refuse: list | None = None) -> None:
        self.capabilities = RunnerCapabilities(batch=batch)
        self.refuse = refuse  # a plan (list of levels) this runner cannot run
        self.calls: list[tuple] = []

    def check_levels(self, levels):
        self.calls.append(("check", len(levels)))
        if list(levels) == self.refuse:
            raise TinyFacesError("this image size is outside the profile")

    def warmup(self, shapes):
        self.calls.append(("warmup", list(shapes)))

    def run(self, x):
        self.calls.append(("run", x.shape))
        assert np.unique(x).size <= 3  # a blank image: one value per channel
        return np.zeros((x.shape[0], 125, -(-x.shape[2] // 8), -(-x.shape[3] // 8)), np.float32)


def test_warmup_prepares_each_level_for_each_batch_size_then_runs_a_blank_image():
    runner = Recording()
    detector = Detector(runner, DetectorConfig())
    detector.warmup([(48, 64), (40, 56), (48, 64)], batch_sizes=(4, 1, 4))
    a, b = detector.plan(48, 64), detector.plan(40, 56)
    assert len(a) > 1 and len(b) > 1
    shapes = [(n, 3, lv.height, lv.width) for levels in (a, b) for n in (1, 4) for lv in levels]
    blank_runs = [call for levels in (a, b) for n in (1, 4)
                  for call in [("check", len(levels))]
                  + [("run", (n, 3, lv.height, lv.width)) for lv in levels]]
    assert runner.calls == [("check", len(a)), ("check", len(b)), ("warmup", shapes),
                            *blank_runs]


def test_a_runner_without_batches_warms_up_single_images_only():
    runner = Recording(batch=False)
    detector = Detector(runner, DetectorConfig())
    assert detector.warmup([(48, 64)], batch_sizes=(1, 8)) == (1,)
    levels = detector.plan(48, 64)
    shapes = [(1, 3, lv.height, lv.width) for lv in levels]
    assert runner.calls[:2] == [("check", len(levels)), ("warmup", shapes)]
    assert [c for c in runner.calls if c[0] == "run"] == [("run", s) for s in shapes]


def test_batch_sizes_past_the_runners_max_batch_become_its_max_batch():
    """A TensorRT engine built for batches of up to 4 warms up with 4 where 8 is asked: the
    detector runs a batch of 8 as two of 4."""
    runner = Recording()
    runner.capabilities = RunnerCapabilities(batch=True, max_batch=4)
    detector = Detector(runner, DetectorConfig())
    assert detector.warmup([(48, 64)], batch_sizes=(1, 2, 8, 16)) == (1, 2, 4)
    levels = detector.plan(48, 64)
    assert runner.calls[1] == ("warmup", [(n, 3, lv.height, lv.width) for n in (1, 2, 4)
                                          for lv in levels])


def test_a_size_the_runner_cannot_run_is_refused_before_any_work():
    detector = Detector(Recording(), DetectorConfig())
    runner = detector.runner = Recording(refuse=detector.plan(40, 56))
    with pytest.raises(TinyFacesError, match="^this image size is outside the profile$"):
        detector.warmup([(48, 64), (40, 56)])
    assert [c[0] for c in runner.calls] == ["check", "check"]


@pytest.mark.parametrize("sizes, batch_sizes, message", [
    ([(0, 64)], (1,), r"an image size \(height, width\) must be positive, got \(0, 64\)"),
    ((48, 64), (1,), r"got the single size \(48, 64\); pass \[\(48, 64\)\]"),
    ([], (1,), r"warmup needs at least one image size and batch sizes >= 1"),
    ([(48, 64)], (0, 2), r"warmup needs at least one image size and batch sizes >= 1, got "
                         r"sizes \[\(48, 64\)\], batch sizes \[0, 2\]"),
    (["48"], (1,), r"image sizes are \(height, width\) pairs of integers, got '48'"),
    ([(48.5, 64)], (1,), r"image sizes are \(height, width\) pairs of integers, got \(48.5, 64\)"),
    ([(48, 64)], 8, r"batch sizes are integers, got 8"),
    ([(48, 64)], (1.5,), r"batch sizes are integers, got \(1.5,\)"),
])
def test_bad_sizes_are_clear_errors(sizes, batch_sizes, message):
    runner = Recording()
    with pytest.raises(ValueError, match=message):
        Detector(runner, DetectorConfig()).warmup(sizes, batch_sizes)
    assert runner.calls == []


def test_a_host_runner_warmup_prepares_nothing_and_the_detector_still_detects():
    """RunnerBase.warmup is the host runners' 'nothing to prepare'; the blank runs leave no
    state behind: the next image's boxes are those of a detector that never warmed up."""
    from tinyfaces_trt.parity.images import synthetic_image
    from tinyfaces_trt.runtime.postprocess import HostPostprocessor

    assert RunnerBase().warmup([(1, 3, 8, 8)]) is None
    image = synthetic_image(48, 64, seed=5)
    fresh = Detector(PooledRunner(), DetectorConfig()).detect(image)
    warmed = Detector(PooledRunner(), DetectorConfig())
    warmed.warmup([(48, 64), (32, 32)], batch_sizes=(1, 2))
    assert isinstance(warmed.postprocessor, HostPostprocessor)
    assert len(fresh) > 0
    np.testing.assert_array_equal(warmed.detect(image), fresh)

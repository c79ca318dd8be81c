"""Pyramid levels side by side (export/level_streams.py) and the detector's one call for all
levels (``capabilities.concurrent_levels``), on the CPU: the plan, the fork/join order of the
streams (stand-ins recording every call), and the pipeline's boxes against the level-by-level
path. The GPU run of the same is in tests/test_torch_cuda_gpu.py."""

from __future__ import annotations

import numpy as np
import pytest

from helpers_runners import CurrentStream, PooledRunner
from tinyfaces_trt.core.config import DetectorConfig
from tinyfaces_trt.core.errors import TinyFacesError
from tinyfaces_trt.core.pyramid import plan_pyramid
from tinyfaces_trt.core.runner import RunnerCapabilities
from tinyfaces_trt.export.level_streams import (CONCURRENT_MAX_PIXELS, LevelPlan, plan_levels,
                                                run_forked)
from tinyfaces_trt.runtime.pipeline import Detector


def _shapes(height, width, batch=1):
    return [(batch, 3, lv.height, lv.width) for lv in plan_pyramid(height, width, DetectorConfig())]


def test_the_small_levels_of_a_1080p_pyramid_get_a_stream_each_and_the_large_stay_on_main():
    shapes = _shapes(1080, 1920)
    plan = plan_levels(shapes)
    small = [i for i, s in enumerate(shapes) if s[2] * s[3] <= CONCURRENT_MAX_PIXELS]
    assert small and len(small) < len(shapes)
    assert plan.branches == tuple((i,) for i in small)
    assert plan.main == tuple(i for i in range(len(shapes)) if i not in small)
    # the 960x540 level is the largest that gets one; a batch of 8 multiplies the pixels
    assert max(shapes[i][2] * shapes[i][3] for i in small) == 960 * 540
    batch_plan = plan_levels(_shapes(1080, 1920, batch=8))
    assert len(batch_plan.branches) == len(small) - 2 and len(batch_plan.main) == len(shapes) - len(small) + 2


def test_inputs_of_one_shape_stay_together_and_branches_are_shared_beyond_the_limit():
    shapes = [(1, 3, 8, 8), (1, 3, 16, 16), (1, 3, 8, 8), (1, 3, 1000, 1000), (1, 3, 4, 4)]
    assert plan_levels(shapes) == LevelPlan((3,), ((0, 2), (1,), (4,)))
    assert plan_levels(shapes, max_branches=2) == LevelPlan((3,), ((0, 2, 4), (1,)))
    assert plan_levels(shapes, max_branches=0) == LevelPlan.in_turn(5)
    assert plan_levels(shapes, max_pixels=0) == LevelPlan.in_turn(5)
    # nothing to run beside: one input, or one small shape and nothing else
    assert plan_levels(shapes[:1]) == LevelPlan.in_turn(1)
    assert plan_levels([(1, 3, 8, 8)] * 3) == LevelPlan.in_turn(3)


class _Stream:
    def __init__(self, name, log):
        self.name, self.log = name, log

    def wait_stream(self, other):
        self.log.append(("wait", self.name, other.name))


def _runner(log, shapes, fail_at=None):
    on_stream = CurrentStream("main", lambda stream: stream.name)

    def run_one(i):
        log.append(("run", i, on_stream.name))
        if i == fail_at:
            raise RuntimeError("boom")
        return f"out{i}"

    def copy(out):
        log.append(("copy", out, on_stream.name))
        return out + "'"

    return run_one, copy, on_stream


def test_branches_fork_after_main_work_and_join_before_anything_after():
    """Each branch waits for the main stream before its first input, main's own inputs are
    queued after every fork (so they run beside the branches), and main waits for every branch
    before returning; an output whose shape runs again on its stream is copied first."""
    shapes = [(1, 3, 8, 8), (1, 3, 16, 16), (1, 3, 8, 8), (1, 3, 1000, 1000)]
    log = []
    main, branches = _Stream("main", log), [_Stream(f"b{k}", log) for k in range(3)]
    run_one, copy, on_stream = _runner(log, shapes)
    plan = plan_levels(shapes)
    outputs = run_forked(plan, main, branches, run_one, copy, on_stream, lambda i: shapes[i])
    assert outputs == ["out0'", "out1", "out2", "out3"]
    assert log == [("wait", "b0", "main"), ("run", 0, "b0"), ("copy", "out0", "b0"),
                   ("run", 2, "b0"),
                   ("wait", "b1", "main"), ("run", 1, "b1"),
                   ("run", 3, "main"),
                   ("wait", "main", "b0"), ("wait", "main", "b1")]


def test_a_failing_run_still_joins_every_forked_branch():
    shapes = [(1, 3, 8, 8), (1, 3, 16, 16), (1, 3, 1000, 1000)]
    for fail_at, joined in ((1, ["b0", "b1"]), (2, ["b0", "b1"]), (0, ["b0"])):
        log = []
        main, branches = _Stream("main", log), [_Stream(f"b{k}", log) for k in range(2)]
        run_one, copy, on_stream = _runner(log, shapes, fail_at)
        with pytest.raises(RuntimeError, match="boom"):
            run_forked(plan_levels(shapes), main, branches, run_one, copy, on_stream,
                       lambda i: shapes[i])
        assert [c[2] for c in log if c[:2] == ("wait", "main")] == joined, fail_at


def test_in_turn_runs_everything_on_main_copying_what_a_later_run_overwrites():
    """The copy follows the buffer an output is in (a batch padded into a larger one's graph
    shares that graph's), read once the input has run (a run may prepare a graph that a later
    input then pads into)."""
    shapes = [(1, 3, 8, 8), (1, 3, 8, 8), (1, 3, 16, 16), (2, 3, 16, 16)]
    log = []
    run_one, copy, on_stream = _runner(log, shapes)
    buffers = {0: "a", 1: "a", 2: "b", 3: "c"}
    outputs = run_forked(LevelPlan.in_turn(4), _Stream("main", log), [], run_one, copy,
                         on_stream, lambda i: buffers[i])
    assert outputs == ["out0'", "out1", "out2", "out3"]
    assert log == [("run", 0, "main"), ("copy", "out0", "main"), ("run", 1, "main"),
                   ("run", 2, "main"), ("run", 3, "main")]
    del log[:]

    def preparing(i):  # input 3 prepares its graph: input 2 pads into it from then on
        if i == 3:
            buffers[2] = "c"
        return run_one(i)

    buffers[2] = "b"
    outputs = run_forked(LevelPlan((0, 1, 3, 2), ()), _Stream("main", log), [], preparing, copy,
                         on_stream, lambda i: buffers[i])
    assert outputs == ["out0'", "out1", "out2", "out3'"]
    with pytest.raises(ValueError, match="2 branches planned, 1 streams given"):
        run_forked(LevelPlan((), ((0,), (1,))), _Stream("main", log), [_Stream("b0", log)],
                   run_one, copy, on_stream, lambda i: shapes[i])


# ---------------------------------------------------------------------------------------------
# The detector's one call for all levels
# ---------------------------------------------------------------------------------------------

class _AllLevels(PooledRunner):
    """PooledRunner declaring concurrent_levels; records each run_levels call's shapes."""

    def __init__(self, maps_missing: int = 0) -> None:
        super().__init__(RunnerCapabilities(batch=True, concurrent_levels=True))
        self.calls: list[list[tuple[int, ...]]] = []
        self.maps_missing = maps_missing

    def run_levels(self, net_inputs):
        self.calls.append([x.shape for x in net_inputs])
        maps = [self.run(x) for x in net_inputs]
        return maps[:len(maps) - self.maps_missing]


def test_the_detector_hands_all_levels_to_run_levels_at_once_with_the_same_boxes():
    config = DetectorConfig(prob_thresh=0.9)
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (120, 160, 3), dtype=np.uint8)
    frames = [image, rng.integers(0, 255, (120, 160, 3), dtype=np.uint8)]
    levels = plan_pyramid(120, 160, config)
    assert len(levels) > 1
    runner = _AllLevels()
    seen, timings = [], {}
    with Detector(runner, config) as together, Detector(PooledRunner(), config) as one_by_one:
        boxes = together.detect(image, timings, on_level=seen.append)
        assert runner.calls == [[(1, 3, lv.height, lv.width) for lv in levels]]
        expected = one_by_one.detect(image)
        assert len(expected) > 0
        np.testing.assert_array_equal(boxes, expected)
        assert seen == levels  # each once it is decoded, smallest first
        assert {"preprocess", "network", "decode", "nms"} <= timings.keys()
        batch = together.detect_batch(frames)
        assert runner.calls[-1] == [(2, 3, lv.height, lv.width) for lv in levels]
        for got, frame in zip(batch, frames):
            np.testing.assert_array_equal(got, one_by_one.detect(frame))


def test_run_levels_returning_too_few_maps_and_a_runner_without_it_are_refused():
    config = DetectorConfig()
    image = np.zeros((120, 160, 3), np.uint8)
    n = len(plan_pyramid(120, 160, config))
    with Detector(_AllLevels(maps_missing=1), config) as detector:
        with pytest.raises(TinyFacesError, match=f"returned {n - 1} score maps for {n} levels"):
            detector.detect(image)
    declares = PooledRunner(RunnerCapabilities(concurrent_levels=True))
    with pytest.raises(TypeError, match="^PooledRunner is not a NetworkRunner: it has no "
                                        "run_levels although its capabilities declare "
                                        "concurrent_levels$"):
        Detector(declares, config)


def test_the_benchmark_times_levels_run_side_by_side_as_one_network_stage():
    """benchmarks' DetectorBench wraps the runner for per-level times: with concurrent_levels
    it passes the one call on, books the network only as a whole (no level's time alone) and
    counts each level as a network call."""
    from helpers_run import load_script

    load_script("benchmarks/latency.py", "tinyfaces_bench_latency")  # benchmarks/ on sys.path
    import bench_backends

    config = DetectorConfig()
    runner = _AllLevels()
    levels = plan_pyramid(120, 160, config)
    bench = bench_backends.DetectorBench(Detector(runner, config))
    timings = {}
    bench.detect(np.zeros((120, 160, 3), np.uint8), timings)
    assert len(runner.calls) == 1 and bench.runner_calls() == len(levels)
    assert timings["network"] > 0 and not [k for k in timings if k.startswith("network[")]
    bench.detect_batch([np.zeros((120, 160, 3), np.uint8)] * 2)
    assert len(runner.calls) == 2 and bench.runner_calls() == len(levels)
    plain = bench_backends.DetectorBench(Detector(PooledRunner(), config))
    plain.detect(np.zeros((120, 160, 3), np.uint8), timings := {})
    assert sorted(k for k in timings if k.startswith("network[")) == \
        [f"network[L{i}]" for i in range(len(levels))]

"""The Ray pool's driver without a cluster: ``run_tasks`` against a simulated Ray (actors are
placed at given times, each runs its calls one after another for a given time on a simulated
clock), so which actor gets which file, the stall warning and the progress output are exact
and need no Ray. The workers' work runs in this process (the real ``DetectorWorker``)."""

from __future__ import annotations

import contextlib
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from PIL import Image

import tinyfaces_trt.scaleout.pool as pool
from tinyfaces_trt.parity.images import synthetic_image
from tinyfaces_trt.scaleout.cluster import Resources
from tinyfaces_trt.scaleout.pool import STALL_WARNING_S, run_tasks


class _ActorError(Exception):
    pass


class _RayError(Exception):
    pass


@dataclass(eq=False)
class _Ref:
    at: float  # simulated time it completes
    value: Any


class _Method:
    def __init__(self, call: Any) -> None:
        self.remote = call


class _Actor:
    """One actor: placed and its detector built at ``ready_at`` (``math.inf``: never, no free
    CPUs), then its calls in the order given, each ``duration(task)`` seconds."""

    def __init__(self, ray: FakeRay, name: str, ready_at: float, worker: Any) -> None:
        self.ray, self.name, self.worker = ray, name, worker
        self.free_at = ready_at
        self.queued: list[float] = []  # when each submitted call ends
        self.ready = _Method(lambda: _Ref(ready_at, worker.ready()))
        self.run = _Method(self._run)

    def _run(self, index: int, task: Any) -> _Ref:
        waiting = sum(1 for end in self.queued if end > self.ray.now)
        self.ray.submits.append((self.ray.now, self.name, index, waiting))
        self.free_at = max(self.free_at, self.ray.now) + self.ray.duration(task)
        self.queued.append(self.free_at)
        _, status, value, error, _ = self.worker.run(index, task)
        return _Ref(self.free_at, (index, status, value, error, self.name))


class FakeRay:
    """The part of the ``ray`` module the pool uses, on a simulated clock (``now``)."""

    exceptions = SimpleNamespace(RayActorError=_ActorError, RayError=_RayError)

    def __init__(self, ready_at: list[float], duration: Any = lambda task: 10.0) -> None:
        self.ready_at, self.duration = list(ready_at), duration
        self.now = 0.0
        self.actors: list[_Actor] = []
        self.submits: list[tuple[float, str, int, int]] = []  # (time, actor, task, queued behind)

    def remote(self, cls: Any) -> Any:
        ray = self

        class ActorClass:
            def options(self, **_: Any) -> ActorClass:
                return self

            def remote(self, *args: Any) -> _Actor:
                name = "ABCDEFGH"[len(ray.actors)]
                actor = _Actor(ray, name, ray.ready_at[len(ray.actors)], cls(*args))
                ray.actors.append(actor)
                return actor

        return ActorClass()

    def wait(self, refs: list[_Ref], num_returns: int, timeout: float
             ) -> tuple[list[_Ref], list[_Ref]]:
        first = min(refs, key=lambda ref: ref.at)
        if first.at <= self.now + timeout:
            self.now = max(self.now, first.at)
            return [first], [ref for ref in refs if ref is not first]
        self.now += timeout
        return [], refs

    def get(self, ref: _Ref) -> Any:
        return ref.value

    def kill(self, actor: _Actor, no_restart: bool = True) -> None:
        actor.worker.close()


@dataclass(frozen=True)
class _Spec:
    """A detector recipe whose detector does nothing (the tasks' durations are simulated)."""

    backend: str = "fake"
    providers: Any = None
    threads: int | None = 1
    # what a driver reads of the network (its detection settings' check): the untrained one
    model_dir: Any = None
    weights: Any = None
    variant: Any = None
    config_overrides: tuple = ()

    def create(self) -> Any:
        return SimpleNamespace(close=lambda: None)


def _name(detector: Any, task: Any, options: Any) -> Any:
    return task


@pytest.fixture
def simulate(monkeypatch):
    """``simulate(ready_at, duration)``: the pool runs on a :class:`FakeRay` of as many actors
    (2 CPUs), and its clock is the simulation's."""

    def start(ready_at: list[float], duration: Any = lambda task: 10.0) -> FakeRay:
        ray = FakeRay(ready_at, duration)
        monkeypatch.setattr(pool, "connect", lambda address=None: contextlib.nullcontext(ray))
        monkeypatch.setattr(pool, "cluster_resources", lambda: Resources(2, 0))
        monkeypatch.setattr(pool, "_now", lambda: ray.now)
        return ray

    return start


def _workers(results: list[Any]) -> list[str]:
    return [r.worker for r in results]


def test_a_worker_ready_later_gets_a_file_instead_of_the_first_ones_second(simulate):
    """2 videos on 2 workers: the first worker ready took both (2 in flight each), one after
    the other, and the other worker never worked (50.9 s instead of about 25)."""
    ray = simulate([0.0, 2.0])
    results = run_tasks(["v1.mp4", "v2.mp4"], _Spec(), _name, workers=2, progress=False)
    assert [r.status for r in results] == ["done", "done"]
    assert _workers(results) == ["A", "B"]
    assert ray.submits == [(0.0, "A", 0, 0), (2.0, "B", 1, 0)]
    assert ray.now == 12.0  # both at once, not 20 s one after the other


def test_the_last_file_goes_to_the_worker_free_first(simulate):
    """With every worker busy, a file is not queued behind one while the queue holds no more
    than the others can take: it goes to the one that frees up first."""
    ray = simulate([0.0, 0.0], duration=lambda task: {"slow": 100.0}.get(task, 1.0))
    results = run_tasks(["slow", "a", "b"], _Spec(), _name, workers=2, progress=False)
    assert _workers(results) == ["A", "B", "B"]
    assert ray.now == 100.0


def test_many_files_keep_two_in_flight_per_worker(simulate):
    ray = simulate([0.0, 0.0], duration=lambda task: 1.0)
    results = run_tasks(range(10), _Spec(), _name, workers=2, progress=False)
    assert [r.value for r in results] == list(range(10))
    assert sorted(_workers(results)) == ["A"] * 5 + ["B"] * 5
    # the first four dispatched at once: one running and one waiting on each worker
    assert ray.submits[:4] == [(0.0, "A", 0, 0), (0.0, "A", 1, 1),
                               (0.0, "B", 2, 0), (0.0, "B", 3, 1)]
    assert max(waiting for _, _, _, waiting in ray.submits) == 1
    assert ray.now == 5.0


def test_workers_the_cluster_cannot_place_get_no_file(simulate):
    ray = simulate([0.0, math.inf, math.inf, 0.0], duration=lambda task: 1.0)
    results = run_tasks(range(5), _Spec(), _name, workers=4, progress=False)
    assert [r.status for r in results] == ["done"] * 5
    assert {r.worker for r in results} == {"A", "D"}
    assert {name for _, name, _, _ in ray.submits} == {"A", "D"}


def test_a_resumed_run_whose_workers_wait_for_cpus_says_so(simulate, caplog):
    """Skipped (finished) files counted as results: a resumed run whose workers could not
    be placed waited without a word."""
    simulate([STALL_WARNING_S + 40.0])  # placed once another job frees a CPU
    with caplog.at_level(logging.WARNING, logger="tinyfaces_trt.scaleout"):
        results = run_tasks(range(3), _Spec(), _name, workers=1, progress=False,
                            is_done=lambda task, options: task < 2)
    assert [r.status for r in results] == ["skipped", "skipped", "done"]
    assert [r.getMessage() for r in caplog.records] == [
        f"no worker has finished a file after {STALL_WARNING_S} s (0 of 1 worker(s) started); "
        "the workers may be waiting for free CPUs/GPUs in the cluster (ray status shows "
        "them), or the first files are slow"]


def test_no_stall_warning_once_a_file_is_finished(simulate, caplog):
    simulate([0.0], duration=lambda task: 50.0)  # 100 s in all, a file done after 50
    with caplog.at_level(logging.WARNING, logger="tinyfaces_trt.scaleout"):
        run_tasks(range(2), _Spec(), _name, workers=1, progress=False)
    assert not [r for r in caplog.records if "no worker has finished" in r.getMessage()]


def test_progress_off_a_terminal_is_a_plain_line_every_30_s(simulate, capsys):
    simulate([0.0, 0.0], duration=lambda task: 20.0)
    run_tasks(range(3), _Spec(), _name, workers=2, progress=True, desc="tf-anonymize",
              is_done=lambda task, options: False)
    err = capsys.readouterr().err
    assert "\r" not in err  # no tqdm frames in a log file
    # files 0 and 1 at 20 s, file 2 runs 20-40 s: one line, at 30 s
    assert err == "tf-anonymize: 2/3 files, 30s elapsed, 15.0 s/file, ETA 15s\n"


def test_progress_lines():
    class Clock:
        now = 0.0

    clock, log = Clock(), []
    stream = SimpleNamespace(write=log.append, flush=lambda: None, isatty=lambda: False)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(pool, "_now", lambda: clock.now)
        bar = pool._progress_bar(100, 10, True, "tf-anonymize", stream)
        assert isinstance(bar, pool._ProgressLines)
        clock.now = 29.0
        bar.update(5)
        clock.now = 75.0
        bar.update(10)
        bar.update(1)  # within 30 s of the last line
        clock.now = 4000.0
        bar.tick()
    assert log == ["tf-anonymize: 25/100 files, 1m15s elapsed, 5.0 s/file, ETA 6m15s\n",
                   "tf-anonymize: 26/100 files, 1h06m elapsed, 250.0 s/file, ETA 5h08m\n"]
    quiet = pool._progress_bar(100, 10, False, "tf-anonymize", stream)
    quiet.update(1)
    quiet.close()
    assert len(log) == 2


# ---------------------------------------------------------------------------------------------
# The CLIs' --ray runs on the simulated pool (the real per-file work, in this process)
# ---------------------------------------------------------------------------------------------

def _images(folder: Path, count: int) -> Path:
    folder.mkdir()
    for i in range(count):
        Image.fromarray(synthetic_image(48, 64, seed=i)).save(folder / f"photo{i}.png")
    return folder


def test_detect_ray_records_the_backend_auto_resolved_to(simulate, export_dir, tmp_path, capsys):
    """``--backend auto`` was recorded as "auto" with --ray, as the backend it ran without."""
    from tinyfaces_trt.cli.detect import main as detect_main
    from tinyfaces_trt.cli.detect_ray import main as ray_detect_main

    photos = _images(tmp_path / "photos", 2)
    common = [str(photos), "--model", str(export_dir), "--backend", "auto", "--json"]
    assert detect_main([*common, "--out", str(tmp_path / "single")]) == 0
    single = json.loads(capsys.readouterr().out)
    simulate([0.0, 0.0])
    assert ray_detect_main([*common, "--out", str(tmp_path / "dist"), "--ray",
                            "--workers", "2"]) == 0
    dist = json.loads(capsys.readouterr().out)
    assert dist["backend"] == single["backend"] != "auto"
    assert [r["backend"] for r in dist["images"]] == [single["backend"]] * 2
    for name in ("photo0.json", "photo1.json"):
        sidecar = json.loads((tmp_path / "dist" / name).read_text())
        assert sidecar["backend"] == single["backend"]
    assert dist["images"] == single["images"]


def test_anonymize_ray_writes_plain_progress_lines_to_a_log(simulate, export_dir, tmp_path,
                                                           capsys):
    """tf-anonymize --ray drew tqdm frames ("\\r") into a log file (2> an.err)."""
    from tinyfaces_trt.anonymize.cli import main as anonymize_main

    photos = _images(tmp_path / "photos", 3)
    simulate([0.0, 0.0], duration=lambda task: 20.0)
    assert anonymize_main([str(photos), "--model", str(export_dir), "--out",
                           str(tmp_path / "out"), "--ray", "--workers", "2"]) == 0
    err = capsys.readouterr().err
    assert "\r" not in err
    assert "tf-anonymize: 2/3 files, 30s elapsed, 15.0 s/file, ETA 15s\n" in err
    assert "3 done, 0 skipped, 0 failed" in err


class _BoxWorkerDetector:
    """What a worker builds: tf-anonymize's tests' fixed-face detector (score 0.9)."""

    def __init__(self) -> None:
        from test_anonymize_jobs import BoxDetector

        self.box = BoxDetector()
        self.config, self.identity = self.box.config, self.box.identity

    def detect_batch(self, images: list[Any]) -> list[Any]:
        return self.box.detect_batch(images)

    def detect(self, image: Any) -> Any:
        return self.box.detect(image)

    def close(self) -> None:
        pass


@dataclass(frozen=True)
class _BoxSpec(_Spec):
    def create(self) -> Any:
        return _BoxWorkerDetector()


def test_anonymize_ray_redoes_an_output_whose_review_list_the_sidecar_cannot_give(
        simulate, tmp_path, monkeypatch, capsys):
    """--review-band 0.4 over a photo made with 0.1: its face's score is recorded as 0.9, the
    new band's top, so the planner makes it again; --ray's done-check skipped it ("0 done, 1
    skipped", the old band kept). It is made again, the planner's check the only read of the
    output; the next run skips it."""
    from test_anonymize_jobs import _photo, _run_cli
    from tinyfaces_trt import detectors
    from tinyfaces_trt.anonymize import jobs, reruns
    from tinyfaces_trt.anonymize.cli import main as anonymize_main

    photo, out = _photo(tmp_path / "p.png"), tmp_path / "out"
    assert _run_cli([photo, "--out", out, "-q"], monkeypatch, capsys)[0] == 0
    task = jobs.plan_tasks([photo], out, overwrite=True)[0][0]
    assert jobs.is_done(task, jobs.Options()) and \
        not jobs.is_done(task, jobs.Options(review_band=0.4))  # the planner's rule
    monkeypatch.setattr(detectors, "spec_from_arguments", lambda *a, **k: _BoxSpec())
    hashed: list[str] = []
    record = reruns.output_record
    monkeypatch.setattr(reruns, "output_record", lambda path: hashed.append(path) or record(path))
    simulate([0.0, 0.0])
    argv = [str(photo), "--out", str(out), "--review-band", "0.4", "--ray", "--workers", "2"]
    assert anonymize_main(argv) == 0
    err = capsys.readouterr().err
    assert (f"tf-anonymize: {photo}: making {out / 'p.png'} again: it was made with review_band "
            "0.1 (now 0.4), and a detection of frame 0 is recorded with the score 0.9") in err
    assert "1 done, 0 skipped, 0 failed" in err and hashed == [str(out / "p.png")]
    side = json.loads((out / "p.png.json").read_text())
    assert side["options"]["review_band"] == 0.4
    assert side["review"] == {"band": [0.5, 0.9],
                              "frames": [{"index": 0, "time": None, "scores": [0.9]}]}
    assert anonymize_main(argv) == 0 and "0 done, 1 skipped, 0 failed" in capsys.readouterr().err

"""Run a per-file function over a Ray actor pool, one detector per actor.

    results = run_tasks(tasks, DetectorSpec(model_dir="export/"), process_file, options,
                        is_done=outputs_exist, address=None, workers=None)
    failed = [r for r in results if r.status == "failed"]

``process(detector, task, options) -> value`` is the single-process work for one file (an
image, or a whole video); tasks, options and values must pickle. Contract:

- **One result per task, in task order**: ``done`` (its value), ``failed`` (the error
  message: an exception in ``process`` fails that file only, the others go on) or
  ``skipped`` (``is_done(task, options)`` was already true before dispatch: resume).
- **Lost workers**: an actor whose process dies is restarted by Ray (it builds its
  detector again) and the file it held is run again, on it or another actor, at most
  ``max_attempts`` times in all; then that file fails with "worker lost". ``process`` must
  therefore be idempotent: write every output atomically
  (:func:`tinyfaces_trt.core.files.atomic_output`) to a name fixed by the task, so a rerun
  replaces, never duplicates, and a killed attempt leaves no final file half-written.
- **Progress**: a tqdm bar over all files (skipped ones count as done) on a terminal's
  stderr; elsewhere (a log file, nohup) a plain line at most every
  :data:`PROGRESS_LINE_INTERVAL_S` seconds; ``on_result`` sees each result in the driver as
  it arrives (print a line, log an error).
- **Dispatch**: an actor gets files once it is placed and has built its detector; it holds
  up to two (one running, one waiting, so it never waits on the driver), the second only
  while more files are queued than the other actors (placed or still starting) have free
  slots: a file does not wait behind a busy actor while another one would take it.
- **Placement**: CPU actors share the cluster's CPUs (``num_cpus`` each, also their ONNX
  Runtime threads when the spec leaves ``threads`` unset); GPU actors take one GPU each
  (see :func:`~tinyfaces_trt.scaleout.cluster.plan_pool`).

Files are read and written by the workers: on a multi-node cluster, inputs and outputs must
be on storage every node mounts at the same path (NFS, a Kubernetes volume).

:func:`run_serial` keeps the same contract in this process, without Ray.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import logging
import os
import socket
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from tinyfaces_trt.core.errors import TinyFacesError
from tinyfaces_trt.core.progress import TimedLines, bar_size, duration_text
from tinyfaces_trt.scaleout.cluster import cluster_resources, connect, plan_pool

log = logging.getLogger("tinyfaces_trt.scaleout")

Process = Callable[[Any, Any, Any], Any]
IsDone = Callable[[Any, Any], bool]

#: Calls in flight per actor: one running, one queued, so an actor never waits on the driver
#: (the second only while the queue holds more files than the other actors have free slots).
_IN_FLIGHT_PER_ACTOR = 2
#: Ray-level restarts of one actor after its process dies, and re-runs of its task there.
_ACTOR_RESTARTS = 4
#: Seconds into a run without any file finished by a worker before the pool says that it is
#: waiting (skipped files do not count).
STALL_WARNING_S = 60
#: Seconds between two progress lines off a terminal.
PROGRESS_LINE_INTERVAL_S = 30.0
#: Seconds the driver waits for a result before it looks at the clock again.
_POLL_S = 5.0
_ACTOR_TASK_RETRIES = 1


def _now() -> float:
    """The pool's clock (monotonic seconds)."""
    return time.monotonic()


class WorkerSetupError(TinyFacesError):
    """No worker of the pool could build its detector (the message says why)."""


@dataclass(frozen=True)
class TaskResult:
    """What became of one task.

    Attributes:
        index: its position in the task list.
        task: the task.
        status: ``"done"``, ``"failed"`` or ``"skipped"`` (already finished before the run).
        value: what ``process`` returned (``done`` only).
        error: the failure message (``failed`` only).
        attempts: how many times the driver dispatched it (0 when skipped).
        worker: ``host:pid`` of the process that finished it.
    """

    index: int
    task: Any
    status: str
    value: Any = None
    error: str | None = None
    attempts: int = 0
    worker: str | None = None

    @property
    def ok(self) -> bool:
        """True unless the task failed."""
        return self.status != "failed"


def describe_error(exc: BaseException) -> str:
    """The message of a user-side error, or ``Type: message`` for anything else."""
    if isinstance(exc, TinyFacesError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


def _worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class DetectorWorker:
    """The state of one pool actor: its detector, the process function and the options.

    A plain class (made a Ray actor by :func:`run_tasks`), so it also runs in-process.
    A detector that cannot be built is remembered as an error instead of raising, so the
    driver can tell a broken setup from a broken file.
    """

    def __init__(self, spec: Any, process: Process, options: Any) -> None:
        self.process = process
        self.options = options
        self.detector: Any = None
        self.setup_error: str | None = None
        try:
            self.detector = spec.create()
        except Exception as exc:  # reported through ready()/run(), never lost
            self.setup_error = describe_error(exc)

    def ready(self) -> str | None:
        """None when the detector is built, else why not."""
        return self.setup_error

    def run(self, index: int, task: Any) -> tuple[int, str, Any, str | None, str]:
        """Processes one task: ``(index, status, value, error, worker)``; status is ``done``,
        ``failed`` or ``setup`` (no detector here: run it elsewhere)."""
        if self.detector is None:
            return index, "setup", None, self.setup_error, _worker_name()
        try:
            value = self.process(self.detector, task, self.options)
        except Exception as exc:  # one file's failure; the worker goes on
            return index, "failed", None, describe_error(exc), _worker_name()
        return index, "done", value, None, _worker_name()

    def close(self) -> None:
        if self.detector is not None:
            self.detector.close()


def _skip_finished(tasks: Sequence[Any], options: Any, is_done: IsDone | None
                   ) -> tuple[list[TaskResult | None], list[int]]:
    results: list[TaskResult | None] = [None] * len(tasks)
    pending = []
    for i, task in enumerate(tasks):
        if is_done is not None and is_done(task, options):
            results[i] = TaskResult(i, task, "skipped")
        else:
            pending.append(i)
    return results, pending


def _progress_bar(total: int, done: int, enabled: bool, desc: str, stream: Any = None) -> Any:
    """The job's progress on ``stream`` (None: stderr): a tqdm bar on a terminal, else
    :class:`_ProgressLines` (a log file gets no carriage-return frames); nothing unless
    ``enabled``."""
    from tqdm import tqdm

    stream = sys.stderr if stream is None else stream
    if enabled and not stream.isatty():
        return _ProgressLines(total, done, desc, stream, PROGRESS_LINE_INTERVAL_S)
    return tqdm(total=total, initial=done, disable=not enabled, desc=desc, unit="file",
                file=stream, smoothing=0.1, **bar_size(stream))


class _ProgressLines(TimedLines):
    """The job's progress for a log file: a plain line at most every ``interval`` seconds, e.g.
    ``tf-anonymize: 3/10 files, 1m15s elapsed, 25.0 s/file, ETA 2m55s`` (the rate of this
    run's files; skipped ones count as done). The tqdm bar's interface as the pool uses it."""

    def __init__(self, total: int, initial: int, desc: str, stream: Any,
                 interval: float) -> None:
        super().__init__(stream, lambda: _now(), interval, initial)
        self.total, self.initial, self.desc = total, initial, desc

    def __enter__(self) -> _ProgressLines:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def external_write_mode(self, file: Any = None) -> contextlib.AbstractContextManager[None]:
        """Nothing to clear before another line is written."""
        return contextlib.nullcontext()

    def line(self, now: float) -> str:
        """The progress line at ``now``."""
        elapsed = now - self.start
        text = f"{self.desc}: {self.n}/{self.total} files, {duration_text(elapsed)} elapsed"
        finished = self.n - self.initial
        if finished > 0 and elapsed > 0:
            per_file = elapsed / finished
            text += f", {per_file:.1f} s/file" if per_file >= 1 else \
                f", {1 / per_file:.1f} files/s"
            if self.total > self.n:
                text += f", ETA {duration_text((self.total - self.n) * per_file)}"
        return text


def _report(bar: Any, result: TaskResult, on_result: Callable[[TaskResult], None] | None) -> None:
    if on_result is not None:
        with bar.external_write_mode(file=sys.stdout):
            on_result(result)
    bar.update(1)


def run_serial(tasks: Iterable[Any], spec: Any, process: Process, options: Any = None, *,
               is_done: IsDone | None = None, progress: bool = True,
               on_result: Callable[[TaskResult], None] | None = None,
               desc: str = "files") -> list[TaskResult]:
    """:func:`run_tasks` in this process with one detector (the single-process reference).

    Raises:
        WorkerSetupError: the detector cannot be built.
    """
    tasks = list(tasks)
    results, pending = _skip_finished(tasks, options, is_done)
    if pending:
        worker = DetectorWorker(spec, process, options)
        if worker.setup_error:
            raise WorkerSetupError(worker.setup_error)
        with _progress_bar(len(tasks), len(tasks) - len(pending), progress, desc) as bar:
            try:
                for i in pending:
                    _, status, value, error, name = worker.run(i, tasks[i])
                    results[i] = TaskResult(i, tasks[i], status, value, error, 1, name)
                    _report(bar, results[i], on_result)
            finally:
                worker.close()
    return results  # type: ignore[return-value]


def run_tasks(tasks: Iterable[Any], spec: Any, process: Process, options: Any = None, *,
              is_done: IsDone | None = None, address: str | None = None,
              workers: int | None = None, num_gpus: int | None = None,
              max_attempts: int = 3, progress: bool = True,
              on_result: Callable[[TaskResult], None] | None = None,
              desc: str = "files") -> list[TaskResult]:
    """Runs ``process(detector, task, options)`` for every task on a Ray actor pool.

    Args:
        tasks: picklable tasks (one file each).
        spec: a :class:`~tinyfaces_trt.detectors.DetectorSpec`; each actor calls
            ``spec.create()`` once.
        process: the per-task function (picklable: a module-level function).
        options: passed to every call (picklable), sent to each actor once.
        is_done: ``is_done(task, options)`` true when the task's outputs already exist; such
            tasks are not dispatched (resume after a crash) and come back ``skipped``.
        address: the Ray cluster (see :func:`~tinyfaces_trt.scaleout.cluster.connect`);
            ignored when this process is already connected.
        workers: number of actors (default: one per GPU or per CPU of the cluster).
        num_gpus: GPUs per actor, 0 or 1 (default: 1 if the detector wants a GPU and the
            cluster has one).
        max_attempts: dispatches of one task before a lost worker fails it.
        progress: show the job's progress on stderr (a tqdm bar on a terminal, else a line
            at most every :data:`PROGRESS_LINE_INTERVAL_S` seconds).
        on_result: called in this process with each result as it arrives.
        desc: the progress bar's label.

    Returns:
        One :class:`TaskResult` per task, in task order.

    Raises:
        WorkerSetupError: no actor could build its detector.
        TinyFacesError: Ray is missing or the cluster cannot be reached.
    """
    tasks = list(tasks)
    if max_attempts < 1:
        raise TinyFacesError(f"max_attempts must be >= 1, got {max_attempts}")
    results, pending = _skip_finished(tasks, options, is_done)
    if not pending:
        return results  # type: ignore[return-value]
    with connect(address) as ray:
        plan = plan_pool(cluster_resources(), spec, workers, num_gpus)
        if plan.num_gpus == 0 and spec.threads is None and spec.backend == "onnxruntime":
            spec = dataclasses.replace(spec, threads=plan.num_cpus)  # one worker, its CPUs
        actor_class = ray.remote(DetectorWorker).options(
            num_cpus=plan.num_cpus, num_gpus=plan.num_gpus,
            max_restarts=_ACTOR_RESTARTS, max_task_retries=_ACTOR_TASK_RETRIES)
        count = min(plan.workers, len(pending))
        log.info("starting %d worker(s), %d CPU / %d GPU each", count, plan.num_cpus,
                 plan.num_gpus)
        actors = [actor_class.remote(spec, process, options) for _ in range(count)]
        try:
            with _progress_bar(len(tasks), len(tasks) - len(pending), progress, desc) as bar:
                tick = bar.tick if isinstance(bar, _ProgressLines) else None
                _Dispatcher(ray, actors, tasks, pending, results, max_attempts,
                            lambda r: _report(bar, r, on_result), tick).run()
        finally:
            for actor in actors:
                ray.kill(actor, no_restart=True)
    return results  # type: ignore[return-value]


class _Dispatcher:
    """Keeps every live actor fed with a bounded number of tasks and books their results.

    An actor gets tasks once it is placed and has built its detector (its ``ready()`` call
    answered): tasks queued on an actor the cluster has no free CPUs/GPUs for would wait
    forever while the placed ones ran out of work. A call given to an actor cannot be taken
    back, so :meth:`_fill` gives an actor a second task only while the queue holds more than
    the other actors (placed or still starting) have free slots.

    ``ray`` is the ``ray`` module (or a stand-in with ``wait``, ``get``, ``kill`` and
    ``exceptions``); ``tick`` is called after every wait (progress lines)."""

    def __init__(self, ray: Any, actors: list[Any], tasks: Sequence[Any], pending: list[int],
                 results: list[TaskResult | None], max_attempts: int,
                 report: Callable[[TaskResult], None],
                 tick: Callable[[], None] | None = None) -> None:
        self.ray = ray
        self.tasks = tasks
        self.results = results
        self.max_attempts = max_attempts
        self.report = report
        self.tick = tick
        self.queue = collections.deque(pending)
        self.attempts: collections.Counter[int] = collections.Counter()
        self.live: dict[int, Any] = dict(enumerate(actors))
        self.losses: collections.Counter[int] = collections.Counter()
        self.in_flight: dict[Any, tuple[int, int]] = {}  # ref -> (task index, actor key)
        self.starting: dict[Any, int] = {actor.ready.remote(): key for key, actor in
                                         self.live.items()}  # ready() ref -> actor key
        self.ready: set[int] = set()
        self.setup_errors: list[str] = []
        self.started_at = _now()
        self.finished_any = False  # a worker has finished (or failed) a file of this run
        self.stall_warned = False

    def _submit(self, key: int) -> None:
        i = self.queue.popleft()
        self.attempts[i] += 1
        self.in_flight[self.live[key].run.remote(i, self.tasks[i])] = (i, key)

    def _fill(self) -> None:
        """Gives queued tasks to the ready actors: one to each that has none, then more (up
        to :data:`_IN_FLIGHT_PER_ACTOR`) only while the queue holds more tasks than the free
        slots of the other live actors, started or still starting: a task does not wait
        behind a busy actor while another would take it (2 videos on 2 workers ran one after
        the other on the first worker ready). With many tasks every actor keeps one waiting."""
        load = collections.Counter(key for _, key in self.in_flight.values())
        ready = [key for key in self.live if key in self.ready]
        for key in ready:
            if self.queue and load[key] == 0:
                self._submit(key)
                load[key] += 1
        for level in range(1, _IN_FLIGHT_PER_ACTOR):
            for key in ready:
                free = sum(_IN_FLIGHT_PER_ACTOR - load[other] for other in self.live
                           if other != key)
                if load[key] == level and len(self.queue) > free:
                    self._submit(key)
                    load[key] += 1

    def _finish(self, i: int, status: str, value: Any = None, error: str | None = None,
                worker: str | None = None) -> None:
        result = TaskResult(i, self.tasks[i], status, value, error, self.attempts[i], worker)
        self.results[i] = result
        self.report(result)

    def _drop(self, key: int) -> None:
        actor = self.live.pop(key, None)
        if actor is not None:
            self.ray.kill(actor, no_restart=True)

    def _warn_if_stalled(self) -> None:
        """Says once why the job may be waiting, when no worker has finished a file of this
        run (skipped files do not count: a resumed run warns too) after
        :data:`STALL_WARNING_S`."""
        if self.stall_warned or self.finished_any or _now() - self.started_at < STALL_WARNING_S:
            return
        self.stall_warned = True
        log.warning("no worker has finished a file after %d s (%d of %d worker(s) started); "
                    "the workers may be waiting for free CPUs/GPUs in the cluster (ray status "
                    "shows them), or the first files are slow", STALL_WARNING_S,
                    len(self.ready & self.live.keys()), len(self.live))

    def run(self) -> None:
        errors = self.ray.exceptions
        while self.queue or self.in_flight:
            self._fill()
            if not self.in_flight and not self.starting:  # every actor is gone, tasks remain
                why = "; ".join(dict.fromkeys(self.setup_errors)) or "every worker was lost"
                if self.setup_errors and not any(r and r.status != "skipped"
                                                 for r in self.results):
                    raise WorkerSetupError(f"no worker could build the detector: {why}")
                while self.queue:
                    self._finish(self.queue.popleft(), "failed", error=f"not run: {why}")
                return
            ready, _ = self.ray.wait(list(self.in_flight) + list(self.starting), num_returns=1,
                                     timeout=_POLL_S)
            if self.tick is not None:
                self.tick()
            if not ready:
                self._warn_if_stalled()
                continue
            for ref in ready:
                if ref in self.starting:
                    self._started(ref)
                    continue
                i, key = self.in_flight.pop(ref)
                try:
                    _, status, value, error, worker = self.ray.get(ref)
                except errors.RayActorError as exc:
                    self._lost(i, key, exc)
                    continue
                except errors.RayError as exc:  # e.g. a result that does not pickle: this task
                    self.finished_any = True
                    self._finish(i, "failed", error=describe_error(exc).splitlines()[0])
                    continue
                if status == "setup":  # this actor has no detector: move the task elsewhere
                    self._setup_failed(key, error or "unknown error")
                    self.attempts[i] -= 1
                    self.queue.appendleft(i)
                    continue
                self.finished_any = True
                self._finish(i, status, value, error, worker)

    def _started(self, ref: Any) -> None:
        """An actor's ready() answered: it takes tasks, or it is dropped (no detector), or
        asked again after Ray restarted it."""
        errors = self.ray.exceptions
        key = self.starting.pop(ref)
        try:
            error = self.ray.get(ref)
        except errors.RayActorError:
            if self._count_loss(key):
                self.starting[self.live[key].ready.remote()] = key
            return
        except errors.RayError as exc:  # e.g. ActorUnschedulableError: this worker only
            self._setup_failed(key, describe_error(exc).splitlines()[0])
            return
        if error is not None:
            self._setup_failed(key, error)
        elif key in self.live:
            self.ready.add(key)

    def _setup_failed(self, key: int, why: str) -> None:
        """The actor ``key`` has no detector: noted, and dropped."""
        self.setup_errors.append(why)
        self._drop(key)

    def _count_loss(self, key: int) -> bool:
        """Counts a death of the actor ``key``, dropped once past its restarts; whether it is
        still in the pool."""
        self.losses[key] += 1
        if self.losses[key] > _ACTOR_RESTARTS:
            self._drop(key)
        return key in self.live

    def _lost(self, i: int, key: int, exc: Exception) -> None:
        """Ray gave up on a call (its actor died, restarts and retries spent or under way)."""
        self._count_loss(key)
        if self.attempts[i] < self.max_attempts:
            log.warning("worker lost while processing task %d; running it again", i)
            self.queue.appendleft(i)
        else:
            first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            self._finish(i, "failed", error=f"worker lost {self.attempts[i]} time(s) while "
                                            f"processing it ({type(exc).__name__}: {first_line})")

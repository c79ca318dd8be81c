#!/usr/bin/env python3
"""The one GPU check: kernels, GPU tests, compute-sanitizer, parity and latency, in one run.

On a machine with an NVIDIA GPU (written for the lent H100/H200: preinstalled python3 with
torch, cuda-python, nvcc and compute-sanitizer; no pip, no network), from a plain checkout:

    python3 tools/gpu_check.py --out gpu_out/
    python3 tools/gpu_check.py --out $OUT            # the device tool: 7 files come back

writes gpu_out/gpu_check.md (the report), gpu_check.json (everything), gpu_check.png (the
targets and the step times), gpu_check.log (every step's full output) and the benchmark's
latency.md / .json / .png. The report and the log are rewritten as the steps finish (and the
benchmark saves each size once its backends are measured), so a run killed from outside
still leaves what it had done, marked INCOMPLETE.

Result and exit status: PASS (0) when every step that ran passed; SKIPPED (0) when nothing
could run (no GPU) or every step was left out; FAIL (1) when a step failed (an error of this
script counts, and the check goes on); INCOMPLETE (1) on a GPU machine when a step was
killed at its time limit before anything had failed or skipped for lack of time (named in
the report's first line). Speed targets are reported, never a failure.

Steps, in order, with their time on the lent H200 (fresh machine, torch 2.11.0+cu130;
benchmarks/results/h200-2026-12-04/): 374 s in all in run 1 (--budget-s 450), 159 s of it
compiling the benchmark's torch-cuda network, which torch-cuda no longer does by default
(run 3: the fused CUDA graphs are faster and a 1080p pyramid is ready in 3-10 s); within the
default --budget-s 285 each step gets what is left and a step that cannot fit is skipped:

  environment    ~5-8 s  GPU, driver, torch, CUDA, cuda-python, CuPy, nvcc, sanitizer
  build        ~10-17 s  the kernels (python -m tinyfaces_trt.kernels.build, which
                         tf-build-kernels runs) for this GPU's architecture, with the C
                         example
  ptxas           (in the build) registers / spills per kernel, read off the build's
                         -Xptxas -v (a library already up to date is compiled again, ~6 s)
  GPU tests    ~40-235 s every test marked `gpu` (tests/*_gpu.py must not skip; an
                         expected failure is named in the summary; the torch-cuda tests
                         compile small networks, one of them into an AOTInductor package);
                         in 4 pytest-xdist workers where xdist is installed (the kernel
                         tests' numpy oracles are CPU-bound); the slowest listed. Run 6:
                         234 s, 203 s of it the AOTInductor test compiling two packages
                         for torch 2.11's loader to crash on, which it now names at once
                         for that build (estimated 40-60 s without it; not measured)
  sanitizers     ~61 s   memcheck, racecheck, synccheck on the C example (~3 s); memcheck
                         and racecheck on a subset of the GPU tests (~33 s, ~25 s)
  benchmark     ~67-90 s benchmarks/latency.py: the reference pipeline vs every GPU backend
                         present, side by side, 1920x1080 then 1280x720; batch of 8 at
                         1080p; decode + NMS at 10k / 50k candidates (every NMS rule); a
                         torch profile; the targets table (run 3: 126 s with a
                         torch.compile row beside, from the compile cache)
  parity          (in the benchmark) every GPU backend's detections against the CPU
                         reference (torch fp32 on the CPU, runtime pipeline), per size

With a backend that compiles its network (--backends ...,torch-cuda-compile) a "benchmark
precompile" starts after the environment: 2 processes (1 on fewer than 8 CPUs) of
benchmarks/latency.py --precompile compile its input shapes into the compile cache beside
the steps above, and the benchmark loads them; run 3 measured that beside the tests it made
them slower (235 s), so the check as a whole was no faster: it is there to bound the
benchmark's own time, not the check's.

A step starts only with enough time left before what is kept for the benchmark (105 s; 175 s
with a compiling backend); where the budget is short, a sanitizer subset, the 1280x720 size
and/or the batch rows are skipped, saying so in the report (result INCOMPLETE);
--budget-s 450 fitted everything with the default backends (run 5: 342 s; not with a
compiling one: run 3's GPU tests took 235 s beside its precompile). Without a GPU every step is skipped with the
reason, in a few seconds.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import importlib.util
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # a plain checkout: tinyfaces_trt imports from here
    sys.path.insert(0, str(REPO))

DEFAULT_BUDGET_S = 285.0
DEFAULT_SIZES = "1920x1080,1280x720"
DEFAULT_BACKENDS = ("reference,torch-cuda,torch-cuda-in-turn,onnxruntime-cuda,"
                    "tensorrt-fp16-cuda")
#: Seconds the steps before the benchmark leave to it: what the default backends need at both
#: sizes with the batch (run 5 on the H200, three torch-cuda-like rows and the profiles: 67 s), and
#: more where a backend compiles its network (torch-cuda-compile: ~54 s a size, ~50 s the
#: batch, less from a cache its precompile filled).
BENCHMARK_RESERVE_S = 105.0
COMPILE_RESERVE_S = 70.0
#: The GPU tests' slowest calls listed in the report (pytest --durations; run 6 found the
#: AOTInductor test taking 203 s of 234 s).
SLOWEST_TESTS = 12
#: GPU-test subsets run under compute-sanitizer (memcheck and racecheck are 10-100x slower).
SANITIZER_TESTS = {
    "memcheck": "random_score_maps or overflow or resize_pitched or detector_with_cuda_stages "
                "or uncapped_chain or uncapped_nested or uncapped_identical or replays_its_nms "
                "or one_resize_plan or block_sort",
    # the one-block sort at 12,672 candidates (25 items a lane): its shared-memory passes
    # and warps (the C example reaches it at an NMS size of 1024)
    "racecheck": "all_above_threshold or uncapped_chain or uncapped_nested "
                 "or block_sort_and_past_it and 12672",
}
STEP_KEYS = ("build", "ptxas", "tests", "sanitizers", "benchmark")
#: Processes compiling the benchmark's torch-cuda shapes beside the earlier steps (one on a
#: machine of fewer than PRECOMPILE_MIN_CPUS CPUs).
PRECOMPILE_PROCESSES = 2
PRECOMPILE_MIN_CPUS = 8
#: pytest-xdist workers for the GPU tests (where it is installed).
XDIST_WORKERS = 4
#: Seconds a step needs left (before the benchmark's reserve) to start at all.
MIN_TESTS_S = 60.0
MIN_SANITIZER_EXAMPLE_S = 20.0
#: (the subsets took 25-43 s on the H200: racecheck's ~25 s, and the one-block sort under it
#: is new, so it may start with less than the slower memcheck took)
MIN_SANITIZER_TESTS_S = 35.0
#: A GPU test running longer has its stack dumped into the log (pytest's faulthandler):
#: a step killed at its limit then still names the test it was in (-q prints only dots).
TEST_STACK_DUMP_S = 90
#: Where a skip in the GPU run is a failure: the GPU-only files, and the case files whose tests
#: test_kernels_gpu.py collects (pytest reports a skip at the function's own file).
MUST_RUN = re.compile(r"tests/(?:\S+_gpu|kernel_\w+_cases)\.py")
#: How a test file marks GPU tests (a decorator, or the module's ``pytestmark``).
GPU_MARK = re.compile(r"^\s*(?:@pytest\.mark\.gpu\b|pytestmark\s*=.*\bpytest\.mark\.gpu\b)", re.M)


# ---------------------------------------------------------------------------------------------
# Parsing tool output
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class SanitizerSummary:
    """What compute-sanitizer's closing lines say.

    memcheck, synccheck and initcheck print ``ERROR SUMMARY: N errors``; racecheck prints
    ``RACECHECK SUMMARY: N hazards displayed (E errors, W warnings)``. A run of several
    processes prints one line per process: the counts are summed.
    """

    found: bool
    errors: int
    warnings: int

    def describe(self) -> str:
        if not self.found:
            return "no sanitizer summary in the output"
        text = f"{self.errors} error{'s' if self.errors != 1 else ''}"
        return text + (f", {self.warnings} warning{'s' if self.warnings != 1 else ''}"
                       if self.warnings else "")


# (past its print limit the tool adds "ERROR SUMMARY: N errors were not printed. ...": a part
# of the first line's count, not more errors)
_ERROR_SUMMARY = re.compile(r"ERROR SUMMARY: (\d+) errors?[ \t]*$", flags=re.M)
_RACECHECK_SUMMARY = re.compile(
    r"RACECHECK SUMMARY: (\d+) hazards? displayed \((\d+) errors?, (\d+) warnings?\)")


def parse_sanitizer_summary(text: str) -> SanitizerSummary:
    """Errors and warnings from compute-sanitizer output (any tool)."""
    errors = warnings = 0
    found = False
    for m in _ERROR_SUMMARY.finditer(text):
        found, errors = True, errors + int(m[1])
    for m in _RACECHECK_SUMMARY.finditer(text):
        found, errors, warnings = True, errors + int(m[2]), warnings + int(m[3])
    return SanitizerSummary(found, errors, warnings)


#: The Itanium mangling's letters of the builtin types a kernel template may take.
_BUILTIN_TYPES = {"b": "bool", "c": "char", "a": "signed char", "h": "unsigned char",
                  "s": "short", "t": "unsigned short", "i": "int", "j": "unsigned int",
                  "l": "long", "m": "unsigned long", "x": "long long",
                  "y": "unsigned long long", "f": "float", "d": "double"}


def kernel_name(symbol: str) -> str | None:
    """Our kernel's name (``..._kernel``) in a C++-mangled symbol, else None (CUB's kernels,
    helpers): the length-prefixed identifiers of the mangling are read one by one."""
    if not symbol.startswith("_Z"):
        return symbol if symbol.endswith("_kernel") else None
    # _Z<name> or _ZN<name><name>...: each name is its length then its characters (an
    # anonymous namespace's ends in nvcc's hash, which may end in a digit: 3c19decode_...)
    at = 3 if symbol.startswith("_ZN") else 2
    while (length := re.match(r"\d+", symbol[at:])) is not None:
        start = at + length.end()
        at = start + int(length[0])
        ident = symbol[start:at]
        if ident.endswith("_kernel"):
            # template arguments: literals (<true>, <4>: L<type><value>E) and builtin types
            # (<unsigned int>: one letter), between I and E
            args = re.match(r"I((?:L[a-z]n?\d+E|[a-z])+)E", symbol[at:])
            if args:
                values = [_BUILTIN_TYPES.get(kind, kind) if not v
                          else ("false", "true")[int(v)] if t == "b" else v.replace("n", "-")
                          for kind, t, v in re.findall(r"(L([a-z])(n?\d+)E|[a-z])", args[1])]
                ident += f"<{', '.join(values)}>"
            return ident
    return None


def parse_ptxas(text: str) -> list[tuple[str, str, int, int, int]]:
    """(kernel, arch, registers, spill stores, spill loads) of our kernels from ``-Xptxas -v``
    (CUB's kernels left out)."""
    rows = []
    current = None
    spills = (0, 0)
    for line in text.splitlines():
        entry = re.search(r"Compiling entry function '(\S+)' for '(sm_\d+a?)'", line)
        if entry:
            name = kernel_name(entry[1])
            current = (name, entry[2]) if name and "cub" not in entry[1].lower() else None
            spills = (0, 0)
            continue
        if current is None:
            continue
        spill = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", line)
        if spill:
            spills = (int(spill[1]), int(spill[2]))
        used = re.search(r"Used (\d+) registers", line)
        if used:
            rows.append((current[0], current[1], int(used[1]), *spills))
            current = None
    return list(dict.fromkeys(rows))  # a kernel compiled twice for one arch: once


@dataclass(frozen=True)
class PytestSummary:
    """The closing counts of a pytest run and the reasons of its skips."""

    line: str
    counts: dict[str, int]
    skips: list[tuple[int, str]]   # (tests, "file:line: reason") per -rs line
    xfails: list[str] = field(default_factory=list)  # "test - reason" per -rx line

    @property
    def ran(self) -> int:
        return self.counts.get("passed", 0) + self.counts.get("failed", 0)


def parse_pytest(text: str) -> PytestSummary:
    """Counts from pytest's last summary line (``3 passed, 1 skipped in 2.0s``), the
    ``SKIPPED [n] file:line: reason`` lines of ``-rs`` and the ``XFAIL test - reason`` lines of
    ``-rx``."""
    lines = re.findall(r"^=*\s*((?:\d+ \w+(?:, )?)+.*? in [\d.]+s.*?|no tests ran in [\d.]+s)\s*=*$",
                       text, flags=re.M)
    line = lines[-1] if lines else ""
    counts: dict[str, int] = {}
    for n, what in re.findall(r"(\d+) (passed|failed|skipped|errors?|deselected|xfailed|xpassed)",
                              line):
        counts["error" if what.startswith("error") else what] = int(n)
    skips = [(int(n), reason) for n, reason in
             re.findall(r"^SKIPPED \[(\d+)\] (.+)$", text, flags=re.M)]
    xfails = re.findall(r"^XFAIL (.+)$", text, flags=re.M)
    return PytestSummary(line, counts, skips, xfails)


# ---------------------------------------------------------------------------------------------
# Running things
# ---------------------------------------------------------------------------------------------

@dataclass
class Ran:
    code: int
    output: str
    seconds: float
    timed_out: bool = False


class Budget:
    """The run's time budget in seconds (monotonic clock)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.start = time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def left(self) -> float:
        return self.seconds - self.elapsed()


def run(cmd: list[str], env: dict[str, str], timeout: float, echo: bool = False,
        log: Any = None) -> Ran:
    """Runs ``cmd`` from the repository root in its own process group; on timeout the whole
    group (compile workers, a sanitizer's target) is killed. ``echo`` streams the output to
    stderr as it comes; ``log`` (a file) gets all of it."""
    started = start(cmd, env, echo, log)
    return started if isinstance(started, Ran) else started.wait(timeout)


def start(cmd: list[str], env: dict[str, str], echo: bool = False,
          log: Any = None) -> "Running | Ran":
    """Starts ``cmd`` as :func:`run` does, without waiting for it; a :class:`Ran` (exit
    127) when it cannot start."""
    if log is not None:
        log.write(f"\n$ {' '.join(cmd)}\n")
        log.flush()
    begun = time.perf_counter()
    with _LIVE_LOCK:  # kill_running() sees it live once it is started
        try:
            proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, text=True, errors="replace",
                                    start_new_session=True)
        except OSError as exc:
            return Ran(127, f"{cmd[0]}: {exc.strerror or exc}", time.perf_counter() - begun)
        return Running(cmd, proc, begun, echo, log)


class Running:
    """A started command whose output a thread reads (into :attr:`lines`, the log, stderr).
    Every one not yet waited for is in :data:`_LIVE` (:func:`kill_running`)."""

    def __init__(self, cmd: list[str], proc: subprocess.Popen, begun: float, echo: bool,
                 log: Any) -> None:
        self.cmd, self.proc, self.begun = cmd, proc, begun
        _LIVE.add(self)  # (start() holds _LIVE_LOCK)
        self.lines: list[str] = []
        self.pumped = threading.Event()  # set once the output has all been read (EOF)
        self._echo, self._log = echo, log
        self._reader = threading.Thread(target=self._pump, daemon=True)
        try:
            self._reader.start()
        except BaseException:  # a signal in the start's wait: the thread may run all the same
            _kill_group(proc)
            self.pumped.wait(timeout=5)  # its last lines reach the log before it is closed
            raise

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        try:
            for line in self.proc.stdout:
                self.lines.append(line)
                if self._log is not None and not self._log.closed:
                    self._log.write(line)
                if self._echo:
                    sys.stderr.write("    | " + line)
                    sys.stderr.flush()
        finally:
            self.pumped.set()

    def wait(self, timeout: float) -> Ran:
        """Waits up to ``timeout`` seconds, then kills the process group (a Ran with exit
        124, ``timed_out``); Ctrl-C or a SIGTERM kills it too, and is raised."""
        timed_out = False
        try:
            code = self.proc.wait(timeout=max(1.0, timeout))
        except subprocess.TimeoutExpired:
            timed_out = True
            _kill_group(self.proc)
            code = self.proc.wait()
        except BaseException:  # Ctrl-C, a SIGTERM: take the children down too
            _kill_group(self.proc)
            self.pumped.wait(timeout=5)  # their last lines reach the log before it is closed
            raise
        self._reader.join(timeout=10)
        with _LIVE_LOCK:
            _LIVE.discard(self)
        output = "".join(self.lines)
        if timed_out:
            output += f"\n[gpu_check: killed after {timeout:.0f} s (the step's time limit)]\n"
        return Ran(124 if timed_out else code, output, time.perf_counter() - self.begun,
                   timed_out)

    def kill(self) -> None:
        """Kills the process group (nothing when it has ended)."""
        if self.proc.poll() is None:
            _kill_group(self.proc)


#: The commands started and not waited for (the benchmark's precompile running beside the
#: steps): killed when the check ends (also early: Ctrl-C, a SIGTERM, an error).
_LIVE: set[Running] = set()
_LIVE_LOCK = threading.Lock()


def kill_running() -> None:
    """Kills every started command not waited for yet."""
    with _LIVE_LOCK:
        live = list(_LIVE)
    for running in live:
        running.kill()


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        proc.kill()


def status_of(ok: bool, ran: Ran, failed_before_kill: bool = False) -> str:
    """A step's status: "timeout" when it was killed at its time limit before anything had
    failed, else "pass" or "fail"."""
    if ran.timed_out and not failed_before_kill:
        return "timeout"
    return "pass" if ok else "fail"


#: A line of pytest's -q progress, which faulthandler's "Timeout (h:mm:ss)!" may end
#: (TEST_STACK_DUMP_S: the stack dump comes mid-line).
_PROGRESS = re.compile(r"^([.sxXFE]+)(?:\s+\[\s*\d+%\]|Timeout \(\d+:\d\d:\d\d\)!)?\s*$", re.M)
_SANITIZER_REPORT = re.compile(r"^=+ (?:Invalid|Error|Program hit|Race|Barrier|Malloc)", re.M)


def pytest_failed_so_far(text: str) -> bool:
    """Whether pytest's progress dots (``-q``) show a failure or an error."""
    return any(c in m[1] for m in _PROGRESS.finditer(text) for c in "FE")


def _failure_text(ran: Ran, timeout: float) -> str:
    if ran.timed_out:
        return f"killed at its time limit ({timeout:.0f} s)"
    return f"exit {ran.code}: {tail(ran.output, 1)}"


def tail(text: str, lines: int = 40) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])


# ---------------------------------------------------------------------------------------------
# The report
# ---------------------------------------------------------------------------------------------

#: Per step status: the console mark, the report's word, the plot's colour.
STATUS = {"pass": ("ok  ", "pass", "tab:green"), "fail": ("FAIL", "**FAIL**", "tab:red"),
          "timeout": ("TIME", "**timed out**", "tab:orange"),
          "skipped": ("skip", "skipped", "tab:gray")}


@dataclass
class Step:
    name: str
    status: str              # "pass", "fail", "timeout" (killed at its time limit) or "skipped"
    seconds: float
    summary: str
    command: str = ""
    details: str = ""
    #: What a step that ran left out for lack of time (a benchmark's image size, say).
    left_for_time: list[str] = field(default_factory=list)


@dataclass
class Report:
    argv: list[str]
    budget_s: float
    facts: dict[str, Any] = field(default_factory=dict)
    steps: list[Step] = field(default_factory=list)
    registers: list[tuple[str, str, int, int, int]] = field(default_factory=list)
    targets: list[dict[str, Any]] = field(default_factory=list)
    parity: list[dict[str, Any]] = field(default_factory=list)
    benchmark: dict[str, Any] | None = None
    gpu: bool = False
    #: False until every step has run: a report saved earlier (after each step) says so.
    finished: bool = True
    #: Called after each step is added (main() saves the report there).
    on_step: Any = None
    #: When the check began (time.perf_counter): the report says how long it has run.
    started: float = field(default_factory=time.perf_counter)

    @property
    def result(self) -> str:
        if any(s.status == "fail" for s in self.steps):
            return "FAIL"
        if not self.finished or any(s.status == "timeout" for s in self.steps) or \
                (self.gpu and any(_for_time(s) or s.left_for_time for s in self.steps)):
            return "INCOMPLETE"
        if not any(s.status == "pass" for s in self.steps if s.name != "environment"):
            return "SKIPPED"
        return "PASS"

    def add(self, step: Step) -> Step:
        self.steps.append(step)
        print(f"[gpu_check] {STATUS[step.status][0]} {step.name} ({step.seconds:.1f} s): "
              f"{step.summary}", file=sys.stderr, flush=True)
        if self.on_step is not None:
            try:
                self.on_step()
            except Exception as exc:  # saving is best effort until the final save
                print(f"[gpu_check] could not save the report so far: {type(exc).__name__}: "
                      f"{exc}", file=sys.stderr, flush=True)
        return step

    def skip(self, name: str, reason: str) -> Step:
        return self.add(Step(name, "skipped", 0.0, reason))


def _command_text(cmd: list[str]) -> str:
    return " ".join(Path(c).name if i == 0 and c == sys.executable else c
                    for i, c in enumerate(cmd))


#: The summary of a step left out with --skip.
SKIPPED_ON_REQUEST = "left out (--skip)"


def _for_time(step: Step) -> bool:
    return step.status == "skipped" and step.summary.startswith("time budget")


def _result_note(report: Report) -> str:
    if not report.finished:
        return (" (the check has not finished: these are the steps done so far; a run killed "
                "from outside stops here)")
    if not report.gpu:
        return " (no CUDA GPU visible: nothing was verified)"
    timed_out = [s.name for s in report.steps if s.status == "timeout"]
    for_time = [s.name for s in report.steps if _for_time(s)]
    parts = [f"{', '.join(s.left_for_time)} ({s.name})" for s in report.steps if s.left_for_time]
    notes = ([f"killed at their time limit: {', '.join(timed_out)}"] if timed_out else []) + \
        ([f"skipped for time: {', '.join(for_time)}"] if for_time else []) + \
        ([f"left out for time: {'; '.join(parts)}"] if parts else [])
    text = f"{'; '.join(notes)}; a larger --budget-s runs them" if notes else ""
    # steps this machine could not run (a tool missing, a device the sanitizer refuses): a
    # PASS says what it did not check
    cannot: dict[str, list[str]] = {}
    for s in report.steps:
        if s.status == "skipped" and not _for_time(s) and s.summary != SKIPPED_ON_REQUEST:
            cannot.setdefault(s.summary, []).append(s.name)
    if cannot:
        text += ("; " if text else "") + "not run: " + "; ".join(
            f"{', '.join(names)} ({reason})" for reason, names in cannot.items())
    return f" ({text})" if text else ""


def _cell(value: Any) -> str:
    """``value`` as one Markdown table cell (a probe's error may span lines)."""
    return " ".join(str(value).split()).replace("|", "\\|")


def render_markdown(report: Report) -> str:
    lines = ["# GPU check", "", f"**Result: {report.result}**" + _result_note(report), "",
        f"Command: `python3 tools/gpu_check.py {' '.join(report.argv)}` (time budget "
        f"{report.budget_s:g} s; this run took {time.perf_counter() - report.started:.0f} s)",
        "",
        "| fact | value |", "| --- | --- |"]
    lines += [f"| {k} | {_cell(v)} |" for k, v in report.facts.items()]
    lines += ["", "## Steps", "", "| step | result | time | summary |", "| --- | --- | --- | --- |"]
    for s in report.steps:
        result = STATUS[s.status][1]
        lines.append(f"| {s.name} | {result} | {s.seconds:.1f} s | {s.summary} |")
    if report.targets:
        lines += ["", "## Targets (benchmarks, not pass/fail)", "",
                  "| target | goal | measured | verdict | why (when missed) |",
                  "| --- | --- | --- | --- | --- |"]
        for t in report.targets:
            measured = t.get("measured_text", "-")
            if t.get("variants_text"):  # torch-cuda's variants that ran beside it
                measured += f" ({t['variants_text']})"
            verdict = f"**{t['verdict']}**" if t.get("met") is False else t["verdict"]
            lines.append(f"| {t['title']} | {t['relation']} {t['goal_text']} | {measured} | "
                         f"{verdict} | {t.get('why', '')} |")
        lines += ["", "Details, per-stage tables, parity and the profile: "
                  "[latency.md](latency.md)."]
    if report.parity:
        lines += ["", "## Parity with the CPU reference", "",
                  "| size | backend | result | detections (ref / test) | matched | min IoU | "
                  "max prob diff | missing | extra | why |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for r in report.parity:
            if "reference" not in r:
                lines.append(f"| {r['size']} | `{r['backend']}` | **FAIL** | | | | | | | "
                             f"{'; '.join(r.get('failures', []))} |")
                continue
            lines.append(
                f"| {r['size']} | `{r['backend']}` | {'pass' if r['passed'] else '**FAIL**'} | "
                f"{r['reference']} / {r['test']} | {r['matched']} | {r['min_iou']:.4f} | "
                f"{r['max_score_diff']:.2e} | {r['missing_firm']} | {r['extra_firm']} | "
                f"{'; '.join(r['failures'])} |")
        lines += _bench("bench_parity").examples_section(
            report.parity, lambda r: f"{r['size']} `{r['backend']}`")
    if report.registers:
        lines += ["", "## Registers and spills (`-Xptxas -v`)", "",
                  "| kernel | arch | registers | spill stores (B) | spill loads (B) |",
                  "| --- | --- | --- | --- | --- |"]
        lines += [f"| {k} | {a} | {r} | {ss} | {sl} |" for k, a, r, ss, sl in sorted(report.registers)]
    lines += ["", "## Details", ""]
    for s in report.steps:
        if not (s.command or s.details):
            continue
        lines += [f"### {s.name}", ""]
        if s.command:
            lines += [f"`{s.command}`", ""]
        if s.details:
            lines += ["```", s.details, "```", ""]
    return "\n".join(lines).rstrip() + "\n"


def report_json(report: Report) -> dict[str, Any]:
    return {
        "schema": "tinyfaces-trt-gpu-check/1",
        "result": report.result.lower(),
        "gpu": report.gpu,
        "command": ["python3", "tools/gpu_check.py", *report.argv],
        "budget_s": report.budget_s,
        "seconds": round(time.perf_counter() - report.started, 1),
        "facts": report.facts,
        "steps": [asdict(s) for s in report.steps],
        "registers": [dict(zip(("kernel", "arch", "registers", "spill_stores", "spill_loads"), r))
                      for r in report.registers],
        "targets": report.targets,
        "parity": report.parity,
        "benchmark": report.benchmark,
    }


def write_plot(report: Report, path: Path) -> str | None:
    """Targets as measured / goal (log scale, 1 = the goal) and the time of each step."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed"
    from tinyfaces_trt.core.files import atomic_output

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(14, 4.5))
    names = [s.name for s in report.steps]
    ax1.barh(names, [s.seconds for s in report.steps],
             color=[STATUS[s.status][2] for s in report.steps])
    ax1.invert_yaxis()
    ax1.set_xlabel(f"seconds (budget {report.budget_s:g} s)")
    ax1.set_title(f"GPU check: {report.result}")
    rows = [t for t in report.targets if t.get("measured") is not None]
    if rows:
        scores = [(t["measured"] / t["goal"]) if t["relation"] == ">=" else
                  (t["goal"] / t["measured"] if t["measured"] > 0 else float("inf"))
                  for t in rows]
        ax2.barh([t["title"] for t in rows], scores,
                 color=["tab:green" if t["met"] else "tab:red" for t in rows])
        for i, (t, sc) in enumerate(zip(rows, scores)):
            ax2.text(sc, i, f" {t['measured_text']}", va="center", fontsize=8)
        ax2.axvline(1.0, color="black", lw=1)
        ax2.set_xscale("log")
        ax2.invert_yaxis()
        ax2.set_xlabel("measured / goal (>= 1: met; log scale)")
        ax2.set_title("speed targets")
    else:
        ax2.text(0.5, 0.5, "no target measured", ha="center", va="center")
        ax2.set_axis_off()
    fig.tight_layout()
    with atomic_output(path) as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)
    return None


# ---------------------------------------------------------------------------------------------
# Steps
# ---------------------------------------------------------------------------------------------

_PROBE = r"""
import json, sys
from importlib import metadata
facts = {}
missing = []
for module in ("numpy", "PIL", "scipy", "tqdm"):  # the runtime's own dependencies
    try:
        __import__(module)
    except Exception as exc:
        missing.append(f"{module} ({type(exc).__name__}: {exc})")
if missing:
    facts["runtime dependencies missing"] = ", ".join(missing)
try:
    import torch
    facts["torch"] = torch.__version__
    facts["torch CUDA"] = torch.version.cuda
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        facts["torch device"] = (f"{p.name}, compute capability {p.major}.{p.minor}, "
                                 f"{p.total_memory / 2**30:.1f} GiB, {p.multi_processor_count} SMs")
        facts["_cc"] = f"{p.major}{p.minor}"
    else:
        facts["torch device"] = "none visible"
except Exception as exc:
    facts["torch"] = f"not importable: {type(exc).__name__}: {exc}"
versions = []
for dist in ("cuda-python", "cuda-bindings", "cupy-cuda13x", "cupy-cuda12x", "cupy", "numpy",
             "pillow", "scipy", "triton", "onnxruntime", "onnxruntime-gpu", "tensorrt",
             "matplotlib"):
    try:
        versions.append(f"{dist} {metadata.version(dist)}")
    except metadata.PackageNotFoundError:
        pass
facts["packages"] = ", ".join(versions)
try:
    from tinyfaces_trt.runtime.backends import cuda_device
    facts["cuda-python device"] = (cuda_device.device_name(0) if cuda_device.gpu_available()
                                   else "none visible")
except Exception as exc:
    facts["cuda-python device"] = f"unavailable: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
print("GPU_CHECK_FACTS " + json.dumps(facts))
"""


def smi_compute_capability(line: str) -> str | None:
    """"90" from nvidia-smi's ``name,driver_version,compute_cap,...`` line, else None."""
    fields = [f.strip() for f in line.split(",")]
    m = re.fullmatch(r"(\d+)\.(\d+)", fields[2]) if len(fields) > 2 else None
    return f"{m[1]}{m[2]}" if m else None


def environment_step(report: Report, env: dict[str, str], log: Any) -> str | None:
    """Fills ``report.facts``; returns this GPU's architecture for nvcc ("90"), or None."""
    start = time.perf_counter()
    facts: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "host": f"{platform.node()} ({platform.machine()}, {os.cpu_count()} CPUs)",
        "python": f"{sys.executable} {sys.version.split()[0]}", "checkout": str(REPO)}
    smi = run(["nvidia-smi", "--query-gpu=name,driver_version,compute_cap,memory.total",
               "--format=csv,noheader"], env, 30, log=log)
    smi_line = smi.output.strip().splitlines()[0] if smi.code == 0 and smi.output.strip() else ""
    facts["nvidia-smi"] = smi_line or f"unavailable ({tail(smi.output, 1) or smi.code})"
    probe = run([sys.executable, "-c", _PROBE], env, 120, log=log)
    found = re.search(r"^GPU_CHECK_FACTS (.*)$", probe.output, flags=re.M)
    probed = json.loads(found[1]) if found else {"probe": f"failed: {tail(probe.output, 3)}"}
    cc = probed.pop("_cc", None)
    if cc is None and smi_line:
        cc = smi_compute_capability(smi_line)
    facts.update(probed)
    # What the GPU is, settled before the tool probes: a failing probe must not hide it.
    report.facts = facts
    report.gpu = bool(smi_line) or "compute capability" in str(facts.get("torch device")) or \
        not str(facts.get("cuda-python device", "none")).startswith(("none", "unavailable"))
    for tool, args in (("nvcc", ["--version"]), ("compute-sanitizer", ["--version"]),
                       ("ncu", ["--version"])):
        try:
            path = find_tool(tool)
            if path is None:
                facts[tool] = "not found"
                continue
            out = run([path, *args], env, 30, log=log).output
        except Exception as exc:  # noqa: BLE001 - a fact, not a reason to lose the run
            facts[tool] = f"probe failed: {type(exc).__name__}: {exc}"
            continue
        version = [ln.strip() for ln in out.splitlines() if re.search(r"release|[Vv]ersion", ln)]
        facts[tool] = version[-1] if version else path
    facts["make"] = shutil.which("make") or "not found (the kernels' build needs it)"
    report.add(Step("environment", "pass", time.perf_counter() - start,
                    f"GPU: {smi_line or facts.get('torch device') or 'none'}"))
    return cc if report.gpu else None


def build_step(report: Report, env: dict[str, str], build_dir: Path, arch: str | None,
               timeout: float, log: Any) -> Path | None:
    """Builds the kernels; fills ``report.registers`` from the compile's ``-Xptxas -v``
    (nothing where make found the library up to date)."""
    cmd = [sys.executable, "-m", "tinyfaces_trt.kernels.build", "--out", str(build_dir)]
    if arch:
        cmd += ["--arch", arch]
    ran = run(cmd, dict(env, EXTRA_NVCCFLAGS="-Xptxas -v"), timeout, log=log)
    lib = build_dir / "libtinyfaces_kernels.so"
    ok = ran.code == 0 and lib.is_file() and (build_dir / "decode_nms_demo").is_file()
    report.registers = parse_ptxas(ran.output) if ok else []
    report.add(Step("build", status_of(ok, ran), ran.seconds,
                    f"built {lib.relative_to(REPO) if lib.is_relative_to(REPO) else lib}"
                    + (f" for sm_{arch}" if arch else "") if ok else
                    _failure_text(ran, timeout), _command_text(cmd),
                    "" if ok else tail(ran.output, 60)))
    return lib if ok else None


def ptxas_step(report: Report, env: dict[str, str], build_dir: Path, arch: str | None,
               timeout: float, log: Any) -> None:
    cmd = ["make", "-f", str(REPO / "kernels" / "Makefile"), f"BUILD={build_dir / 'ptxas'}"]
    if arch:
        from tinyfaces_trt.kernels.build import gencode_for

        cmd.append(f"GENCODE={gencode_for(arch)}")
    cmd.append("ptxas")
    ran = run(cmd, env, timeout, log=log)
    report.registers = parse_ptxas(ran.output)
    ok = ran.code == 0 and bool(report.registers)
    summary = (registers_summary(report.registers) if ok else
               f"{_failure_text(ran, timeout)}; {len(report.registers)} entries parsed")
    report.add(Step("ptxas -v", status_of(ok, ran), ran.seconds, summary,
                    _command_text(cmd), "" if ok else tail(ran.output, 40)))


def source_kernels() -> set[str]:
    """The ``__global__`` functions of kernels/src (what ``-Xptxas -v`` must list)."""
    text = "".join(p.read_text() for p in sorted((REPO / "kernels" / "src").glob("*.cu*")))
    return set(re.findall(r"__global__\s+void\s+(?:__launch_bounds__\([^)]*\)\s+)?(\w+)\s*\(",
                          text))


def registers_summary(rows: list[tuple[str, str, int, int, int]]) -> str:
    spills = sorted({r[0] for r in rows if r[3] or r[4]})
    missing = sorted(source_kernels() - {r[0].split("<")[0] for r in rows})
    return (f"{len(rows)} kernel/arch entries, "
            + (f"SPILLS in {', '.join(spills)}" if spills else "no spills")
            + (f"; NOT IN THE TABLE (spills unknown): {', '.join(missing)}" if missing else ""))


def gpu_test_files() -> list[str]:
    """tests/*_gpu.py and every test file that marks tests with ``pytest.mark.gpu``."""
    files = []
    for path in sorted((REPO / "tests").glob("test_*.py")):
        text = path.read_text(encoding="utf-8", errors="replace")
        if path.name.endswith("_gpu.py") or GPU_MARK.search(text):
            files.append(str(path.relative_to(REPO)))
    return files


def parallel_pytest_args() -> list[str]:
    """pytest-xdist's options for the GPU tests where it is installed (the lent machines have
    it): the numpy oracles of the kernel tests are CPU-bound and most of them are in one
    file, so tests, not files, are spread over the workers (their fixtures are cheap)."""
    if importlib.util.find_spec("xdist") is None:
        return []
    return ["-n", str(max(1, min(XDIST_WORKERS, os.cpu_count() or 1))), "--dist", "load"]


def tests_step(report: Report, env: dict[str, str], timeout: float, log: Any) -> None:
    files = gpu_test_files()
    cmd = [sys.executable, "-m", "pytest", "-q", "-rsx", "-p", "no:cacheprovider", "-m", "gpu",
           f"--durations={SLOWEST_TESTS}", "-o", f"faulthandler_timeout={TEST_STACK_DUMP_S}",
           *parallel_pytest_args(), *files]
    ran = run(cmd, env, timeout, log=log)
    summary = parse_pytest(ran.output)
    must_run = sum(n for n, where in summary.skips if MUST_RUN.match(where))
    ok = ran.code == 0 and summary.ran > 0 and not must_run
    text = f"exit {ran.code}; {summary.line or 'no pytest summary'} ({len(files)} files)"
    if ran.timed_out:
        text = (f"killed at its time limit ({timeout:.0f} s)"
                + ("; tests had FAILED before" if pytest_failed_so_far(ran.output) else "")
                + f" ({len(files)} files)")
    if must_run:
        text += f"; {must_run} skipped in GPU-only files (tests/*_gpu.py), which must run here"
    if summary.skips:
        reasons = sorted({where.split(": ", 1)[-1] for _, where in summary.skips})
        text += f"; skip reasons: {'; '.join(reasons)}"
    if summary.xfails:  # a test naming what this machine lacks or breaks (its docstring says)
        text += f"; expected failures: {'; '.join(summary.xfails)}"
    report.add(Step("GPU tests", status_of(ok, ran, pytest_failed_so_far(ran.output)),
                    ran.seconds, text, _command_text(cmd),
                    tail(ran.output, SLOWEST_TESTS + 20 if ok else 80)))


def sanitizer_step(report: Report, env: dict[str, str], sanitizer: str, tool: str,
                   target: list[str], name: str, timeout: float, log: Any,
                   pytest_run: bool = False) -> None:
    cmd = [sanitizer, "--tool", tool, "--error-exitcode", "3", *target]
    ran = run(cmd, env, timeout, log=log)
    s = parse_sanitizer_summary(ran.output)
    if "Device not supported" in ran.output:
        report.add(Step(name, "skipped", ran.seconds, "compute-sanitizer: \"Device not "
                        "supported\" on this machine (seen under gVisor)", _command_text(cmd),
                        tail(ran.output, 10)))
        return
    text = f"exit {ran.code}; {s.describe()}"
    ok = ran.code == 0 and s.found and s.errors == 0
    found_errors = s.errors > 0 or bool(_SANITIZER_REPORT.search(ran.output)) or \
        (pytest_run and pytest_failed_so_far(ran.output))
    if pytest_run and not ran.timed_out:
        p = parse_pytest(ran.output)
        if ran.code == 5:  # pytest: no test collected
            report.add(Step(name, "skipped", ran.seconds, "no GPU test matches the subset "
                            f"({target[-1]})", _command_text(cmd), tail(ran.output, 10)))
            return
        if p.counts.get("passed", 0) == 0:
            ok = False  # every matching test skipped (or none ran) under the sanitizer
            text += "; no test of the subset ran under the sanitizer"
        text += f"; {p.line or 'no pytest summary'}"
    if ran.timed_out:
        text = f"killed at its time limit ({timeout:.0f} s); {s.describe() if s.found else 'no summary yet'}" \
            + ("; errors had been reported" if found_errors else "")
    report.add(Step(name, status_of(ok, ran, found_errors), ran.seconds, text, _command_text(cmd),
                    tail(ran.output, 25 if ok else 80)))


def sanitizer_steps(report: Report, env: dict[str, str], sanitizer: str | None,
                    build_dir: Path, lib: Path | None, refuse: Callable[[str, float], str | None],
                    left_before_bench: Callable[[], float], log: Any) -> None:
    """compute-sanitizer on the C example (memcheck, racecheck, synccheck) and on subsets
    of the GPU tests (:data:`SANITIZER_TESTS`), one after another."""
    demo = [str(build_dir / "decode_nms_demo")]
    sanitized = [(f"{tool}: C example", tool, demo, MIN_SANITIZER_EXAMPLE_S, 90.0, False)
                 for tool in ("memcheck", "racecheck", "synccheck")]
    sanitized += [(f"{tool}: GPU tests subset", tool,
                   [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                    "--noconftest", "tests/test_kernels_gpu.py", "-k", subset],
                   MIN_SANITIZER_TESTS_S, 180.0, True) for tool, subset in SANITIZER_TESTS.items()]
    for what, tool, target, needs, limit, pytest_run in sanitized:
        name = f"compute-sanitizer {what}"
        reason = refuse("sanitizers", needs) or (
            None if sanitizer else "compute-sanitizer not found") or (
            None if lib else "the kernels were not built")
        if reason:
            report.skip(name, reason)
        else:
            guarded(report, name, sanitizer_step, report, env, sanitizer, tool, target, name,
                    min(limit, left_before_bench()), log, pytest_run)


def compiling_backends(args: argparse.Namespace) -> list[str]:
    """The requested benchmark backends that compile their network per input shape (those
    with a precompile: ``torch-cuda-compile``)."""
    names = [n.strip() for n in args.backends.split(",")]
    return [spec.name for spec in _bench("bench_precompile").compiling_backends(names)]


def precompile_start(report: Report, compiling: list[str], args: argparse.Namespace,
                     skip: set[str], env: dict[str, str]) -> list["Running | Ran"]:
    """Starts compiling the benchmark's torch-cuda input shapes into the compile cache
    (``latency.py --precompile``, :data:`PRECOMPILE_PROCESSES` processes splitting the
    shapes) to run beside the build, the GPU tests and the sanitizers; [] where the
    benchmark will not run or none of its backends compiles."""
    if "benchmark" in skip or not report.gpu or not compiling:
        return []
    cpus = os.cpu_count() or 1
    parts = PRECOMPILE_PROCESSES if cpus >= PRECOMPILE_MIN_CPUS else 1
    # Inductor's compile workers (one per CPU by default in each process) are held to a
    # share of the CPUs: the GPU tests' numpy oracles run beside them
    env = dict(env, TORCHINDUCTOR_COMPILE_THREADS=str(max(1, cpus // (2 * parts))))
    return [start([sys.executable, str(REPO / "benchmarks" / "latency.py"), "--precompile",
                   "--precompile-part", f"{k}/{parts}", "--backend", args.backends,
                   "--image-size", args.image_sizes, "--batch", str(args.batch)], env)
            for k in range(1, parts + 1)]


#: The precompile's lines: a shape compiled (TorchCudaRunner's progress), the end, and where
#: torch-cuda cannot run here (torch sees no GPU where nvidia-smi does).
_SHAPE_COMPILED = re.compile(r"^torch-cuda: input shape \S+ compiled into the cache in ", re.M)
_PRECOMPILED = re.compile(r"^precompile: done in [\d.]+ s: (\d+) compiled, (\d+) already in the "
                          r"cache$", re.M)
_NOTHING_COMPILED = re.compile(r"^precompile: nothing compiled: (.*)$", re.M)


def precompile_finish(report: Report, runs: list["Running | Ran"], wait_s: float,
                      log: Any) -> None:
    """Waits up to ``wait_s`` for the precompile processes, kills what still runs (the
    benchmark compiles the rest itself), adds their step and writes their output to the log.
    The step fails only where a process failed by itself (a compile error: the benchmark's
    torch-cuda would fall back)."""
    if not runs:
        return
    deadline = time.perf_counter() + wait_s
    ended = [r if isinstance(r, Ran) else r.wait(deadline - time.perf_counter()) for r in runs]
    for run_, ran in zip(runs, ended):
        if log is not None:
            cmd = run_.cmd if isinstance(run_, Running) else ["latency.py --precompile"]
            log.write(f"\n$ {' '.join(cmd)}    # beside the steps above\n{ran.output}")
            log.flush()
    nothing = [m[1] for ran in ended for m in [_NOTHING_COMPILED.search(ran.output)] if m]
    if nothing and len(nothing) == len(ended):  # not a failure: the benchmark says it too
        report.skip("benchmark precompile", f"nothing to compile here: {nothing[0]}")
        return
    # a process stopped early never prints its last line: its shapes are counted one by one
    compiled = sum(len(_SHAPE_COMPILED.findall(ran.output)) for ran in ended)
    cached = sum(int(c) for ran in ended for _, c in _PRECOMPILED.findall(ran.output))
    failed = [ran for ran in ended if ran.code != 0 and not ran.timed_out]
    text = (f"{len(runs)} process{'es' if len(runs) > 1 else ''} beside the steps above: "
            f"{compiled} input shapes compiled into the cache, {cached} already there")
    if any(ran.timed_out for ran in ended):
        text += (f"; stopped when the benchmark had to start ({wait_s:.0f} s after the tests): "
                 "the benchmark compiles the rest itself")
    if failed:
        text += f"; FAILED: {tail(failed[0].output, 1)}"
    cmd = runs[0].cmd if isinstance(runs[0], Running) else []
    report.add(Step("benchmark precompile", "fail" if failed else "pass",
                    max(ran.seconds for ran in ended), text, _command_text(cmd),
                    "\n".join(tail(ran.output, 12 if not failed else 40) for ran in ended)))


def benchmark_step(report: Report, env: dict[str, str], args: argparse.Namespace, out: Path,
                   budget: Budget, log: Any) -> None:
    bench_budget = max(30.0, budget.left() - 15.0)
    cmd = [sys.executable, str(REPO / "benchmarks" / "latency.py"),
           "--backend", args.backends, "--image-size", args.image_sizes,
           "--batch", str(args.batch), "--parity", "--profile",
           "--candidates", "10000,50000", "--warmup", str(args.warmup),
           "--repeat", str(args.repeat), "--budget-s", f"{bench_budget:.0f}",
           "--out", str(out), "--name", "latency"]
    ran = run(cmd, env, bench_budget + 25.0, echo=True, log=log)
    path = out / "latency.json"
    died = None if ran.code == 0 else ("timed out" if ran.timed_out else f"exit {ran.code}")
    if not path.is_file():
        status = "timeout" if ran.timed_out else "fail"
        report.add(Step("benchmark", status, ran.seconds,
                        f"{died or 'no latency.json written'}: {tail(ran.output, 1)}",
                        _command_text(cmd), tail(ran.output, 80)))
        report.add(Step("parity", "fail" if status == "fail" else "skipped", 0.0,
                        "not checked: the benchmark wrote no results"))
        return
    result = json.loads(path.read_text())
    summarize_benchmark(report, result, ran.seconds, _command_text(cmd),
                        tail(ran.output, 80), died)


def summarize_benchmark(report: Report, result: dict[str, Any], seconds: float, command: str,
                        output_tail: str, died: str | None = None) -> None:
    """Adds the "benchmark" and "parity" steps from a latency.py result (its JSON): the
    benchmark fails when a backend, a batch row or a CUDA decode/NMS row failed (or kept
    other boxes than numpy), torch-cuda fell back from the mode asked for (its numbers are
    another mode's), a backend's pass from a page-locked image failed or was staged, the
    image upload micro-benchmark failed, or the run stopped early; parity fails when a GPU backend's
    detections do not match the CPU reference (or the comparison could not run) at some size."""
    report.benchmark = {"json": "latency.json", "markdown": "latency.md",
                        "png": result.get("plot"), "seconds": result.get("seconds"),
                        "complete": result.get("complete")}
    report.targets = _target_rows(result)
    problems, ran_names, absent = [], set(), set()
    stopped = None
    sizes = result["sizes"]
    profile = (sizes[0].get("profile") or {}) if sizes else {}
    decode_profile = (result.get("decode_nms") or {}).get("profile") or []
    if result.get("complete") and (profile.get("status") == "running" or any(
            p.get("status") == "running" for p in decode_profile)):
        # saved complete just before a profile (the detect's, then decode + NMS'), which
        # then hung or crashed
        which = "the profile" if profile.get("status") == "running" else "the decode/NMS profile"
        absent.add(f"{which}: did not finish ({died or 'the run ended during it'}); "
                   "everything else was saved before it")
        died = None
    elif profile.get("status") == "skipped":
        absent.add(f"the profile: {profile.get('reason')}")
    for p in decode_profile:
        if p.get("status") in ("skipped", "failed"):
            absent.add(f"decode/NMS profile {p.get('target')}: "
                       + ("failed: " if p["status"] == "failed" else "") + str(p.get("reason")))
    if died or not result.get("complete"):
        last = output_tail.strip().splitlines()[-1] if output_tail.strip() else ""
        stopped = (f"the benchmark stopped early ({died or 'incomplete results'}: {last}); "
                   "the numbers below are what it had written")
    for size in result["sizes"]:
        label = f"{size['image_size'][0]}x{size['image_size'][1]}"
        if size.get("status") != "ok":
            absent.add(f"{label}: {size.get('reason')}")
            continue
        for b in size["backends"]:
            if b["status"] == "ok":
                ran_names.add(b["name"])
                if b.get("fell_back"):
                    problems.append(f"{label} {b['name']}: measured after falling back from "
                                    f"the mode asked for ({b['fell_back']}; gpu_check.log says "
                                    "why)")
                if b.get("end_to_end_page_locked_note"):  # failed, or staged after all
                    problems.append(f"{label} {b['name']}: from a page-locked image: "
                                    f"{b['end_to_end_page_locked_note']}")
            elif b["status"] == "failed":
                problems.append(f"{label} {b['name']}: {b['reason']}")
            else:
                absent.add(f"{b['name']}: {b['reason']}")
        for r in (size.get("batch") or {}).get("rows", []):
            if r.get("status") == "failed":
                problems.append(f"{label} batch {r['backend']}: {r['reason']}")
            elif r.get("status") == "skipped":
                absent.add(f"{label} batch {r['backend']}: {r['reason']}")
    upload = result.get("upload") or {}
    if upload.get("status") == "failed":  # its landing check is the staging copy's
        problems.append(f"image upload: {upload.get('reason')}")
    gpu_ran = any(b["status"] == "ok" and b.get("uses_gpu") and b["name"] != "reference"
                  for size in result["sizes"] for b in size.get("backends", []))
    if report.gpu and not gpu_ran and died != "timed out":
        problems.append("no GPU backend ran on this GPU machine (reasons under not measured)")
    for row in (result.get("decode_nms") or {}).get("rows", []):
        for impl in row["implementations"]:
            vs = impl.get("vs_numpy") or {"passed": True}
            if impl["status"] == "failed":
                problems.append(f"decode/NMS {row['target']} {impl['name']}: {impl['reason']}")
            elif not vs["passed"]:
                failure = _bench("bench_parity").comparison_failure(vs)
                problems.append(f"decode/NMS {row['target']} {impl['name']}: kept boxes are not "
                                f"the numpy path's ({failure})")
    if died == "timed out" and not problems:
        status = "timeout"  # killed at its time limit with nothing failed so far
        problems.append(stopped)
    else:
        status = "fail" if problems or stopped else "pass"
        problems += [stopped] if stopped else []
    summary = (f"ran {', '.join(sorted(ran_names)) or 'nothing'}"
               + (f"; {'STOPPED' if status == 'timeout' else 'FAILED'}: {'; '.join(problems)}"
                  if problems else "")
               + (f"; not measured: {'; '.join(sorted(absent))}" if absent else "")
               + "; see latency.md")
    report.add(Step("benchmark", status, seconds, summary, command,
                    output_tail if problems else tail(output_tail, 30),
                    left_for_time=left_for_time(absent)))
    _parity_step(report, result)


def left_for_time(notes: Iterable[str]) -> list[str]:
    """What of ``notes`` ("what: [status: ]reason") was left out for time (latency.py's
    reason starts "time budget:"), named by its "what"."""
    return sorted(n.split(":")[0] for n in notes if ": time budget:" in n)


def _bench(name: str) -> Any:
    """A module of benchmarks/ (latency.py's helpers), imported from this checkout."""
    folder = str(REPO / "benchmarks")
    if folder not in sys.path:
        sys.path.insert(0, folder)
    return importlib.import_module(name)


def _target_rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    format_value = _bench("bench_targets").format_value
    rows = []
    for t in result.get("targets", []):
        row = dict(t)
        row["goal_text"] = format_value(t["goal"], t["unit"])
        if t.get("measured") is not None:
            row["measured_text"] = format_value(t["measured"], t["unit"])
        if t.get("variants"):
            row["variants_text"] = ", ".join(f"`{name}` {format_value(v, t['unit'])}"
                                             for name, v in t["variants"].items())
        rows.append(row)
    return rows


def _parity_step(report: Report, result: dict[str, Any]) -> None:
    rows, notes, gpu_ran = [], [], False
    for size in result["sizes"]:
        label = f"{size['image_size'][0]}x{size['image_size'][1]}"
        gpu = {b["name"] for b in size.get("backends", [])
               if b["status"] == "ok" and b.get("uses_gpu") and b["name"] != "reference"}
        parity = size.get("parity") or {}
        if not gpu:
            continue
        gpu_ran = True
        if parity.get("status") != "ok":
            notes.append(f"{label}: {parity.get('status', 'not run')}"
                         + (f": {parity['reason']}" if parity.get("reason") else
                            " (the benchmark stopped before it)" if size.get("partial") else ""))
            continue
        for r in parity["rows"]:
            if r["backend"] in gpu:
                rows.append({"size": label, **r})
    report.parity = rows
    failed = [f"{r['size']} {r['backend']}" for r in rows if not r.get("passed")]
    broken = [n for n in notes if ": failed:" in n]
    if failed or broken:
        status = "fail"
    elif rows:
        status = "pass"
    else:
        status = "skipped"
    text = (f"{len(rows) - len(failed)} of {len(rows)} backend/size pairs match the CPU "
            "reference" if rows else "no comparison finished" if gpu_ran else
            "no GPU backend ran")
    if failed:
        text += f"; FAILED: {', '.join(failed)}"
    if notes:
        text += f"; {'; '.join(notes)}"
    report.add(Step("parity", status, 0.0, text + " (computed in the benchmark step)",
                    left_for_time=[f"parity at {n}" for n in left_for_time(notes)]))


# ---------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="gpu_check.py", description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, metavar="DIR",
                   help="folder for gpu_check.{md,json,png,log} and latency.{md,json,png}")
    p.add_argument("--budget-s", type=float, default=DEFAULT_BUDGET_S, metavar="SECONDS",
                   help=f"time budget of the whole check (default {DEFAULT_BUDGET_S:g}); the "
                        "benchmark gets what the earlier steps leave")
    p.add_argument("--build-dir", default=str(REPO / "kernels" / "build"), metavar="DIR",
                   help="where to build the kernel library (default kernels/build, where the "
                        "binding looks)")
    p.add_argument("--skip", default="", metavar="STEP[,STEP]",
                   help=f"steps to leave out: {', '.join(STEP_KEYS)}")
    p.add_argument("--backends", default=DEFAULT_BACKENDS,
                   help=f"benchmark backends (default {DEFAULT_BACKENDS}; absent ones are "
                        "listed as skipped)")
    p.add_argument("--image-sizes", default=DEFAULT_SIZES, metavar="WxH[,WxH]",
                   help=f"benchmark image sizes, in this order (default {DEFAULT_SIZES})")
    p.add_argument("--batch", type=int, default=8, help="frames per batch (default 8)")
    p.add_argument("--repeat", type=int, default=5, help="timed benchmark runs (default 5)")
    p.add_argument("--warmup", type=int, default=2,
                   help="benchmark warm-up runs (default 2: a GPU backend's NMS is captured into "
                        "a CUDA graph at its second run)")
    return p


def find_tool(name: str) -> str | None:
    """``name`` on the PATH, else in the CUDA toolkit's bin folder: beside nvcc, beside the
    nvcc it links to, or in its :func:`cuda_home` (nvcc a wrapper script elsewhere; else
    /usr/local/cuda)."""
    from tinyfaces_trt.core.errors import TinyFacesError
    from tinyfaces_trt.kernels.build import find_nvcc

    try:
        nvcc = find_nvcc()  # $NVCC, the PATH, $CUDA_HOME/bin, /usr/local/cuda/bin
    except TinyFacesError:
        return None if name == "nvcc" else shutil.which(name)
    if name == "nvcc":
        return str(nvcc)
    on_path = shutil.which(name)
    if on_path:
        return on_path

    def toolkit_bins():  # lazily: cuda_home runs nvcc
        yield nvcc.parent
        yield nvcc.resolve().parent
        home = cuda_home(str(nvcc))
        if home:
            yield Path(home) / "bin"

    for folder in toolkit_bins():
        tool = folder / name
        if tool.is_file() and os.access(tool, os.X_OK):
            return str(tool)
    return None


def cuda_home(nvcc: str) -> str | None:
    """The CUDA toolkit folder of ``nvcc`` (the one holding include/cuda.h): its folder's parent,
    through symbolic links, or, for a wrapper script (/usr/local/bin/nvcc running
    /usr/local/cuda-13.0/bin/nvcc), the folder nvcc itself reports (``_HERE_`` of
    ``--dryrun``); None where none holds cuda.h. torch takes the parent of ``which nvcc``,
    which for a wrapper names /usr/local, where AOTInductor then finds no headers or stubs."""
    candidates = [Path(nvcc).parent.parent, Path(nvcc).resolve().parent.parent]
    try:
        dry = subprocess.run([nvcc, "--dryrun", "-c", "x.cu"], capture_output=True,
                             text=True, timeout=30)
        for line in (dry.stdout + dry.stderr).splitlines():
            if line.startswith("#$ _HERE_="):
                candidates.append(Path(line.split("=", 1)[1].strip()).parent)
    except (OSError, subprocess.SubprocessError):
        pass
    candidates.append(Path("/usr/local/cuda"))
    return next((str(c) for c in candidates if (c / "include" / "cuda.h").is_file()), None)


def save_report(report: Report, out: Path, plot: bool = False) -> None:
    """Writes gpu_check.json and .md (and, at the end, the plot): after every step, so that a
    run killed from outside still leaves the steps it finished."""
    from tinyfaces_trt.core.files import write_text_atomic

    markdown = render_markdown(report)
    if plot:
        try:
            reason = write_plot(report, out / "gpu_check.png")
        except Exception as exc:  # a plotting failure must not cost the report
            reason = f"{type(exc).__name__}: {exc}"
        markdown += (f"\nPlot skipped: {reason}\n" if reason else
                     "\n![steps and targets](gpu_check.png)\n")
    write_text_atomic(out / "gpu_check.json", json.dumps(report_json(report), indent=1) + "\n")
    write_text_atomic(out / "gpu_check.md", markdown)


def guarded(report: Report, name: str, step: Any, *args: Any) -> Any:
    """Runs one step; an error of this script becomes a failed step and the check goes on."""
    start, rows = time.perf_counter(), len(report.steps)
    try:
        return step(*args)
    except Exception as exc:
        import traceback

        if any(s.name == name for s in report.steps[rows:]):
            name += " (gpu_check error after it)"
        report.add(Step(name, "fail", time.perf_counter() - start,
                        f"gpu_check error: {type(exc).__name__}: {exc}",
                        details=traceback.format_exc()))
        return None


def run_steps(report: Report, args: argparse.Namespace, skip: set[str], out: Path,
              budget: Budget, env: dict[str, str], log: Any) -> None:
    """Every step after the environment, each given what the budget leaves."""
    arch = guarded(report, "environment", environment_step, report, env, log)
    no_gpu = None if report.gpu else "no CUDA GPU visible (nvidia-smi, torch and cuda-python see none)"
    nvcc, sanitizer = guarded(report, "finding nvcc", lambda: (
        find_tool("nvcc"), find_tool("compute-sanitizer"))) or (None, None)
    if nvcc:  # the Makefile and the build find nvcc (and its neighbours) on the PATH
        env["PATH"] = os.pathsep.join([str(Path(nvcc).parent), env.get("PATH", "")])
        # AOTInductor links -lcuda from the toolkit's lib64/stubs only where $CUDA_HOME is set
        home = cuda_home(nvcc)
        if home:
            env.setdefault("CUDA_HOME", home)
    build_dir = Path(args.build_dir).resolve()
    try:
        compiling = guarded(report, "benchmark precompile", compiling_backends, args) or []
        precompiling = guarded(report, "benchmark precompile", precompile_start, report,
                               compiling, args, skip, env) or []
        reserve = BENCHMARK_RESERVE_S + (COMPILE_RESERVE_S if compiling else 0)

        def left_before_bench() -> float:
            return budget.left() - (0 if "benchmark" in skip else reserve)

        def refuse(key: str, needs: float) -> str | None:
            if key in skip:
                return SKIPPED_ON_REQUEST
            if no_gpu:
                return no_gpu
            if left_before_bench() < needs:
                return (f"time budget: {budget.left():.0f} s left of {args.budget_s:g}, "
                        f"{reserve:.0f} s kept for the benchmark")
            return None

        lib = None
        reason = refuse("build", 20) or (None if nvcc else "nvcc not found (PATH, $NVCC, "
                                         "$CUDA_HOME/bin, /usr/local/cuda/bin)")
        if reason:
            report.skip("build", reason)
        else:
            lib = guarded(report, "build", build_step, report, env, build_dir, arch,
                          min(300, left_before_bench()), log)
        if lib is not None:
            env["TINYFACES_KERNELS_LIB"] = str(lib)
        if "ptxas" in skip:
            report.registers = []
            report.skip("ptxas -v", SKIPPED_ON_REQUEST)
        elif report.registers:
            report.add(Step("ptxas -v", "pass", 0.0, registers_summary(report.registers)
                            + " (read off the build's compile)"))
        else:
            reason = refuse("ptxas", 15) or (None if lib else "the build did not run or failed")
            if reason:
                report.skip("ptxas -v", reason)
            else:  # the library was up to date: compiled again for -Xptxas -v alone
                guarded(report, "ptxas -v", ptxas_step, report, env, build_dir, arch,
                        min(120, left_before_bench()), log)
        reason = refuse("tests", MIN_TESTS_S)
        if reason:
            report.skip("GPU tests", reason)
        else:
            guarded(report, "GPU tests", tests_step, report, env, min(240, left_before_bench()),
                    log)
        sanitizer_steps(report, env, sanitizer, build_dir, lib, refuse, left_before_bench, log)
        guarded(report, "benchmark precompile", precompile_finish, report, precompiling,
                left_before_bench(), log)
        reason = (SKIPPED_ON_REQUEST if "benchmark" in skip else no_gpu) or (
            None if budget.left() > 45 else f"time budget: {budget.left():.0f} s left")
        if reason:
            report.skip("benchmark", reason)
            report.skip("parity", reason)
        else:
            guarded(report, "benchmark", benchmark_step, report, env, args, out, budget, log)
    finally:  # also after Ctrl-C, a SIGTERM or an error: nothing is left running on the GPU
        kill_running()


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    unknown = skip - set(STEP_KEYS)
    if unknown:
        build_parser().error(f"--skip: unknown step(s) {sorted(unknown)}; known: {STEP_KEYS}")
    from tinyfaces_trt.core.errors import TinyFacesError
    from tinyfaces_trt.core.files import prepare_output_dir

    try:
        out = prepare_output_dir(args.out, f"--out {args.out}").resolve()
    except TinyFacesError as exc:
        print(f"gpu_check.py: error: {exc}", file=sys.stderr)
        return 1
    budget = Budget(args.budget_s)
    report = Report(argv, args.budget_s, finished=False)
    report.on_step = lambda: save_report(report, out)
    # the steps' processes import tinyfaces_trt from this checkout, not from an install
    env = dict(os.environ, PYTHONUNBUFFERED="1",
               PYTHONPATH=os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH"))
                                          if p))
    # a SIGTERM from outside (a time limit) ends like Ctrl-C: the running step's processes
    # are killed and the report is saved
    on_sigterm = None
    # the log is written line by line as the steps run: a run killed from outside leaves
    # what it had done
    try:
        if threading.current_thread() is threading.main_thread():  # where Python allows it
            on_sigterm = signal.signal(signal.SIGTERM, _terminated)
        with open(out / "gpu_check.log", "w", encoding="utf-8", buffering=1) as log:
            run_steps(report, args, skip, out, budget, env, log)
        report.finished = True
    finally:  # Ctrl-C, a SIGTERM or an error outside the steps: what was done is still reported
        try:
            if on_sigterm is not None:  # a (second) SIGTERM does not cut the final save short
                signal.signal(signal.SIGTERM, signal.SIG_IGN)
            save_report(report, out, plot=True)
            print_summary(report, budget, out)
        finally:
            if on_sigterm is not None:
                signal.signal(signal.SIGTERM, on_sigterm)
    return 0 if report.result in ("PASS", "SKIPPED") else 1


class Terminated(KeyboardInterrupt):
    """A SIGTERM, raised where the main thread is (as Ctrl-C would be)."""


def _terminated(signum: int, frame: Any) -> None:
    signal.signal(signum, signal.SIG_IGN)  # once: the unwinding that follows is not interrupted
    raise Terminated(f"signal {signum}")


def print_summary(report: Report, budget: Budget, out: Path) -> None:
    """Every step in one line each, then the result, at the end of stderr (what a console
    tail keeps)."""
    lines = [f"  {STATUS[s.status][0]} {s.name} ({s.seconds:.1f} s): {s.summary}"
             for s in report.steps]
    print("\n".join(["gpu_check: steps", *lines,
                     f"gpu_check: {report.result}{_result_note(report)} in "
                     f"{budget.elapsed():.0f} s -> {out / 'gpu_check.md'}"]),
          file=sys.stderr, flush=True)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except Terminated:  # the report is saved; the conventional status of a SIGTERM
        sys.exit(128 + signal.SIGTERM)
    except KeyboardInterrupt:
        sys.exit(128 + signal.SIGINT)

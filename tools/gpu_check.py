"""GPU parity report for the CUDA kernels: build, parity tests, sanitizers -> Markdown.

Run on a machine with an NVIDIA GPU, nvcc and cuda-python, from the repository root:

    python3 kernels/gpu_parity_report.py --out gpu_parity_report.md

Steps (each recorded with its command, duration and outcome):
  1. tf-build-kernels into kernels/build/ (library + C example), and ``-Xptxas -v`` for the
     register / spill table;
  2. pytest tests/test_kernels_gpu.py tests/test_kernels_build.py (numpy runtime = oracle);
  3. compute-sanitizer memcheck, racecheck and synccheck on the C example, and memcheck on a
     subset of the GPU tests (skip with --quick).
Works without installing the package: if ``tinyfaces_trt`` does not import, a temporary
folder of symlinks to the repository's packages is put on the path. Exit code 0 only when
every step passed.
"""

from __future__ import annotations

import argparse
import atexit
import datetime
import importlib.util
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACKAGES = {"runtime": "runtime", "export": "export", "kernels": "kernels"}
MEMCHECK_TESTS = "random_score_maps or overflow or resize_pitched or detector_with_cuda_stages"


@dataclass
class Step:
    name: str
    command: str
    ok: bool
    seconds: float
    summary: str
    details: str = ""
    skipped: bool = False


@dataclass
class Report:
    steps: list[Step] = field(default_factory=list)
    facts: dict[str, str] = field(default_factory=dict)
    registers: list[tuple[str, str, int, int, int]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(s.ok or s.skipped for s in self.steps)


def ensure_importable() -> dict[str, str]:
    """Environment in which ``import tinyfaces_trt`` works (a symlink shim if not installed)."""
    env = dict(os.environ)
    try:
        if importlib.util.find_spec("tinyfaces_trt.kernels") is not None:
            return env
    except ImportError:
        pass
    shim = Path(tempfile.mkdtemp(prefix="tinyfaces_shim_")) / "tinyfaces_trt"
    atexit.register(shutil.rmtree, shim.parent, True)
    shim.mkdir()
    for name, folder in PACKAGES.items():
        (shim / name).symlink_to(REPO / folder, target_is_directory=True)
    sys.path.insert(0, str(shim.parent))
    env["PYTHONPATH"] = os.pathsep.join([str(shim.parent)] + [p for p in [env.get("PYTHONPATH")] if p])
    return env


def run(cmd: list[str], env: dict[str, str] | None = None, timeout: int = 1800) -> tuple[int, str, float]:
    """Runs ``cmd`` from the repository root; returns (exit code, combined output, seconds)."""
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
        code, out = proc.returncode, proc.stdout + proc.stderr
    except FileNotFoundError as exc:
        code, out = 127, str(exc)
    except subprocess.TimeoutExpired as exc:
        code, out = 124, f"timed out after {timeout} s\n{exc.stdout or ''}{exc.stderr or ''}"
    return code, out, time.perf_counter() - start


def tail(text: str, lines: int = 40) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])


def device_facts(env: dict[str, str]) -> dict[str, str]:
    facts = {"host": platform.node(), "python": sys.version.split()[0],
             "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}
    code, out, _ = run(["nvidia-smi", "--query-gpu=name,driver_version,compute_cap,memory.total",
                        "--format=csv,noheader"], env)
    facts["gpu"] = out.strip().splitlines()[0] if code == 0 and out.strip() else f"nvidia-smi failed: {out.strip()[:200]}"
    code, out, _ = run(["nvcc", "--version"], env)
    facts["nvcc"] = next((line.strip() for line in out.splitlines() if "release" in line), "not found")
    try:
        from tinyfaces_trt.runtime.backends import cuda_device

        facts["cuda-python device"] = cuda_device.device_name(0) if cuda_device.gpu_available() else "none visible"
    except Exception as exc:  # report, do not fail here
        facts["cuda-python device"] = f"error: {exc}"
    return facts


def parse_ptxas(text: str) -> list[tuple[str, str, int, int, int]]:
    """(kernel, arch, registers, spill stores, spill loads) of our kernels from ``-Xptxas -v``."""
    rows = []
    current = None
    for line in text.splitlines():
        entry = re.search(r"Compiling entry function '(\S+)' for '(sm_\d+)'", line)
        if entry:
            name = re.search(r"([a-z]+(?:_[a-z]+)*_kernel)", entry[1])  # inside the mangled name
            current = (name[1], entry[2]) if name and "cub" not in entry[1].lower() else None
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
    return rows


def build_step(report: Report, env: dict[str, str], build_dir: Path) -> Path | None:
    cmd = [sys.executable, "-m", "tinyfaces_trt.kernels.build", "--out", str(build_dir)]
    code, out, secs = run(cmd, env)
    lib = build_dir / "libtinyfaces_kernels.so"
    ok = code == 0 and lib.is_file()
    report.steps.append(Step("build (tf-build-kernels)", " ".join(cmd), ok, secs,
                             f"exit {code}; {'built ' + str(lib) if ok else 'FAILED'}", "" if ok else tail(out)))
    if ok:
        cmd = ["make", "-C", "kernels", f"BUILD={build_dir / 'ptxas'}", "ptxas"]
        code, out, secs = run(cmd, env)
        report.registers = parse_ptxas(out)
        report.steps.append(Step("ptxas -v", " ".join(cmd), code == 0, secs,
                                 f"exit {code}; {len(report.registers)} kernel/arch entries",
                                 "" if code == 0 else tail(out)))
    return lib if ok else None


def pytest_step(report: Report, env: dict[str, str], name: str, args: list[str],
                prefix: list[str] | None = None, timeout: int = 1800, allow_skips: bool = False) -> None:
    # --noconftest: these files need none of tests/conftest.py's torch fixtures (nor torch).
    cmd = (prefix or []) + [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider",
                            "--noconftest"] + args
    code, out, secs = run(cmd, env, timeout)
    counts = re.findall(r"^=*\s*(\d+ (?:passed|failed|skipped|errors?|deselected)\b.*? in [\d.]+s)", out,
                        flags=re.M)
    summary = f"exit {code}; {counts[-1] if counts else 'no pytest summary'}"
    skipped = bool(counts) and re.search(r"\d+ skipped", counts[-1]) is not None
    bad_skips = (skipped and not allow_skips) or (bool(counts) and "passed" not in counts[-1])
    sanitizer = re.findall(r"ERROR SUMMARY: (\d+) errors?", out)
    if sanitizer:
        summary += f"; compute-sanitizer: {sum(map(int, sanitizer))} errors"
    ok = code == 0 and bool(counts) and not bad_skips and not any(int(n) for n in sanitizer)
    report.steps.append(Step(name, " ".join(cmd), ok, secs, summary, tail(out, 60 if not ok else 15)))


def sanitizer_step(report: Report, env: dict[str, str], tool: str, target: list[str]) -> None:
    sanitizer = shutil.which("compute-sanitizer")
    cmd = ["compute-sanitizer", "--tool", tool, "--error-exitcode", "3"] + target
    if sanitizer is None:
        report.steps.append(Step(f"compute-sanitizer {tool}", " ".join(cmd), False, 0.0,
                                 "compute-sanitizer not found on the PATH"))
        return
    code, out, secs = run([sanitizer] + cmd[1:], env, timeout=1200)
    found = re.findall(r"ERROR SUMMARY: (\d+) errors?", out)
    errors = sum(map(int, found)) if found else None
    ok = code == 0 and errors == 0
    report.steps.append(Step(f"compute-sanitizer {tool}", " ".join(cmd), ok, secs,
                             f"exit {code}; {'ERROR SUMMARY: %d errors' % errors if found else 'no error summary'}",
                             tail(out, 25)))


def render(report: Report, argv: list[str]) -> str:
    lines = ["# CUDA kernels: GPU parity report", "",
             f"**Result: {'PASS' if report.ok else 'FAIL'}**", "",
             f"Command: `{' '.join([Path(sys.executable).name] + argv)}` (from `{REPO}`)", ""]
    lines += ["| fact | value |", "| --- | --- |"] + [f"| {k} | {v} |" for k, v in report.facts.items()]
    lines += ["", "## Steps", "", "| step | result | seconds | summary |", "| --- | --- | --- | --- |"]
    for s in report.steps:
        result = "skipped" if s.skipped else ("pass" if s.ok else "**FAIL**")
        lines.append(f"| {s.name} | {result} | {s.seconds:.1f} | {s.summary} |")
    if report.registers:
        lines += ["", "## Registers and spills (`-Xptxas -v`)", "",
                  "| kernel | arch | registers | spill stores (B) | spill loads (B) |", "| --- | --- | --- | --- | --- |"]
        lines += [f"| {k} | {a} | {r} | {ss} | {sl} |" for k, a, r, ss, sl in sorted(report.registers)]
    lines += ["", "## Details", ""]
    for s in report.steps:
        lines += [f"### {s.name}", "", f"`{s.command}`", ""]
        if s.details:
            lines += ["```", s.details, "```", ""]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="Markdown report to write")
    parser.add_argument("--build-dir", default=str(REPO / "kernels" / "build"),
                        help="where to build the library (default: kernels/build)")
    parser.add_argument("--quick", action="store_true", help="skip memcheck of the Python GPU tests")
    args = parser.parse_args(argv)

    env = ensure_importable()
    env["PYTHONUNBUFFERED"] = "1"
    report = Report()
    report.facts = device_facts(env)
    build_dir = Path(args.build_dir).resolve()
    lib = build_step(report, env, build_dir)
    if lib is not None:
        env["TINYFACES_KERNELS_LIB"] = str(lib)
        pytest_step(report, env, "GPU parity tests (none may skip)", ["tests/test_kernels_gpu.py"])
        pytest_step(report, env, "build / host-side tests", ["tests/test_kernels_build.py"],
                    allow_skips=True)
        demo = str(build_dir / "decode_nms_demo")
        for tool in ("memcheck", "racecheck", "synccheck"):
            sanitizer_step(report, env, tool, [demo])
        if args.quick:
            report.steps.append(Step("memcheck of GPU tests", "", True, 0.0, "skipped (--quick)", skipped=True))
        elif shutil.which("compute-sanitizer"):
            pytest_step(report, env, "memcheck of GPU tests",
                        ["tests/test_kernels_gpu.py", "-k", MEMCHECK_TESTS],
                        prefix=["compute-sanitizer", "--tool", "memcheck", "--error-exitcode", "3"],
                        timeout=1500)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render(report, ["kernels/gpu_parity_report.py"] + argv))
    print(f"gpu_parity_report: {'PASS' if report.ok else 'FAIL'} -> {out}")
    for s in report.steps:
        print(f"  {'ok  ' if s.ok or s.skipped else 'FAIL'} {s.name}: {s.summary}")
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())

"""tools/gpu_check.py on a machine without a GPU, and its parsers on real tool output.

The sanitizer and ptxas lines below are copied from a run on an H200 (2026-11-30) and from
nvcc 13.0's ``-Xptxas -v``; nothing here pretends a GPU exists.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from helpers_run import load_script

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "tools" / "gpu_check.py"


def _gpu_check():
    return load_script("tools/gpu_check.py", "tinyfaces_gpu_check")


g = _gpu_check()

# compute-sanitizer's closing lines as printed on the H200 (memcheck / synccheck, racecheck)
MEMCHECK_OK = "========= COMPUTE-SANITIZER\n32 candidates, 16 kept\n========= ERROR SUMMARY: 0 errors\n"
RACECHECK_OK = ("========= COMPUTE-SANITIZER\n32 candidates, 16 kept\n"
                "========= RACECHECK SUMMARY: 0 hazards displayed (0 errors, 0 warnings)\n")


def test_racecheck_summary_is_parsed():
    # the bug of the old report: racecheck has no "ERROR SUMMARY" line, so it read as FAIL
    s = g.parse_sanitizer_summary(RACECHECK_OK)
    assert (s.found, s.errors, s.warnings) == (True, 0, 0)
    assert s.describe() == "0 errors"


def test_sanitizer_errors_and_warnings_are_counted():
    s = g.parse_sanitizer_summary(MEMCHECK_OK)
    assert (s.found, s.errors, s.warnings) == (True, 0, 0)
    hazards = ("========= RACECHECK SUMMARY: 3 hazards displayed (1 error, 2 warnings)\n"
               "========= RACECHECK SUMMARY: 1 hazard displayed (1 error, 0 warnings)\n")
    s = g.parse_sanitizer_summary(hazards)
    assert (s.found, s.errors, s.warnings) == (True, 2, 2)
    assert s.describe() == "2 errors, 2 warnings"
    assert g.parse_sanitizer_summary("========= ERROR SUMMARY: 1 error").errors == 1
    # past the print limit, a second line counts the errors of the first that were not printed
    over_limit = ("========= ERROR SUMMARY: 133 errors\n"
                  "========= ERROR SUMMARY: 33 errors were not printed. Use --print-limit option "
                  "to adjust the number of printed errors\n")
    assert g.parse_sanitizer_summary(over_limit).errors == 133
    missing = g.parse_sanitizer_summary("Segmentation fault")
    assert not missing.found and missing.describe() == "no sanitizer summary in the output"


PTXAS = """\
ptxas info    : 0 bytes gmem
ptxas info    : Compiling entry function '_ZN41_GLOBAL__N__a56f84e9_9_decode_cu_0201ba7c19decode_level_kernelEPKfii16tf_decode_paramsjN2tf13CandidateViewEj' for 'sm_90'
ptxas info    : Function properties for _ZN41_GLOBAL__N__a56f84e9_9_decode_cu_0201ba7c19decode_level_kernelEPKfii16tf_decode_paramsjN2tf13CandidateViewEj
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 25 registers, used 0 barriers
ptxas info    : Compiling entry function '_ZN3cub21CUB_300001_SM_800_9006detail10radix_sort33DeviceRadixSortExclusiveSumKernelINS1_5radix10policy_hubIyjjE10Policy1000EjEEvPT0_' for 'sm_80'
ptxas info    : Used 40 registers, used 1 barriers
ptxas info    : Compiling entry function '_ZN41_GLOBAL__N__14e2e922_9_resize_cu_99bfdd7a22resize_vertical_kernelEPKfNS_4AxisEiNS_9NormaliseEPf' for 'sm_80'
    16 bytes stack frame, 8 bytes spill stores, 12 bytes spill loads
ptxas info    : Used 32 registers, used 0 barriers, 432 bytes cmem[0]
"""


def test_ptxas_rows_name_our_kernels_and_their_spills():
    assert g.parse_ptxas(PTXAS) == [("decode_level_kernel", "sm_90", 25, 0, 0),
                                    ("resize_vertical_kernel", "sm_80", 32, 8, 12)]
    assert g.parse_ptxas(PTXAS + PTXAS) == g.parse_ptxas(PTXAS)  # one row per kernel alike
    assert g.kernel_name("plain_c_kernel") == "plain_c_kernel"
    # nvcc 13.0's names of both instances of a template kernel, and an integer argument
    assert [g.kernel_name(f"_ZN38_GLOBAL__N__114953e1_6_nms_cu_1c59b73f18nms_resolve_kernelILb{b}"
                          "EEEvPNS_7ControlEPKjS4_PK6float4S7_NS_9NmsConfigEPVhPj")
            for b in (0, 1)] == ["nms_resolve_kernel<false>", "nms_resolve_kernel<true>"]
    assert g.kernel_name("_Z8a_kernelILi4ELin2EEvPf") == "a_kernel<4, -2>"
    # type arguments (the one-block sort's two instances, as nvcc 13.0 names them: both took
    # 126 registers, so they were one row), and types beside literals
    assert [g.kernel_name(f"_ZN2tf17block_sort_kernelI{t}EEvPKjPT_Pji") for t in "yj"] == [
        "block_sort_kernel<unsigned long long>", "block_sort_kernel<unsigned int>"]
    assert g.kernel_name("_Z8b_kernelIfLb1ELi8EEvPf") == "b_kernel<float, true, 8>"
    assert g.kernel_name("_ZN3cub6detail4scan10ScanKernelEv") is None
    # nvcc's hash of an anonymous namespace may end in a digit, which runs into the next length
    for hash_ in ("0201ba7c", "0201ba72", "00000000"):
        assert g.kernel_name(f"_ZN41_GLOBAL__N__a56f84e9_9_decode_cu_{hash_}19decode_level_kernel"
                             "EPKfii16tf_decode_paramsjN2tf13CandidateViewEj") == "decode_level_kernel"
    assert g.kernel_name("_ZN2tf6detail6helperEv") is None


def test_pytest_summary_and_skip_reasons():
    text = ("SKIPPED [54] tests/test_kernels_gpu.py:44: no CUDA GPU visible\n"
            "SKIPPED [1] tests/test_trt_build.py:49: TensorRT is not installed\n"
            "==== 3 passed, 55 skipped, 12 deselected in 1.20s ====\n")
    s = g.parse_pytest(text)
    assert s.line == "3 passed, 55 skipped, 12 deselected in 1.20s"
    assert s.counts == {"passed": 3, "skipped": 55, "deselected": 12} and s.ran == 3
    assert s.skips == [(54, "tests/test_kernels_gpu.py:44: no CUDA GPU visible"),
                       (1, "tests/test_trt_build.py:49: TensorRT is not installed")]
    assert g.parse_pytest("no tests ran in 0.01s").line == "no tests ran in 0.01s"


def test_gpu_test_files_include_the_kernel_tests():
    files = g.gpu_test_files()
    assert "tests/test_kernels_gpu.py" in files
    assert all(g.GPU_MARK.search((ROOT / f).read_text()) or f.endswith("_gpu.py") for f in files)
    assert "tests/test_gpu_check.py" not in files


def _gpu_visible() -> bool:
    if shutil.which("nvidia-smi"):
        return True
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


@pytest.mark.skipif(_gpu_visible(), reason="a GPU is present: the check would run for minutes")
def test_without_a_gpu_every_step_is_skipped_with_its_reason(tmp_path):
    out = tmp_path / "gpu_out"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--out", str(out)], cwd=tmp_path,
                          capture_output=True, text=True, timeout=180,
                          env={**os.environ, "PYTHONPATH": ""})
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "gpu_check: SKIPPED" in proc.stderr
    report = json.loads((out / "gpu_check.json").read_text())
    assert report["schema"] == "tinyfaces-trt-gpu-check/1"
    assert report["result"] == "skipped" and report["gpu"] is False
    steps = {s["name"]: s for s in report["steps"]}
    assert steps["environment"]["status"] == "pass"
    assert [n for n in steps if n != "environment"] == [
        "build", "ptxas -v", "GPU tests",
        "compute-sanitizer memcheck: C example", "compute-sanitizer racecheck: C example",
        "compute-sanitizer synccheck: C example", "compute-sanitizer memcheck: GPU tests subset",
        "compute-sanitizer racecheck: GPU tests subset", "benchmark", "parity"]
    for name, step in steps.items():
        if name != "environment":
            assert step["status"] == "skipped"
            assert step["summary"].startswith("no CUDA GPU visible"), step
    md = (out / "gpu_check.md").read_text()
    assert "**Result: SKIPPED** (no CUDA GPU visible: nothing was verified)" in md
    assert "| benchmark | skipped | 0.0 s | no CUDA GPU visible" in md
    assert (out / "gpu_check.log").is_file()
    if "Plot skipped" not in md:
        assert (out / "gpu_check.png").stat().st_size > 0


def test_usage_errors(tmp_path):
    proc = subprocess.run([sys.executable, str(SCRIPT), "--out", str(tmp_path), "--skip", "lint"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "--skip: unknown step(s) ['lint']" in proc.stderr
    a_file = tmp_path / "file"
    a_file.write_text("x")
    proc = subprocess.run([sys.executable, str(SCRIPT), "--out", str(a_file)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "exists and is not a folder" in proc.stderr


def test_help_gives_the_command_and_the_step_durations(capsys):
    with pytest.raises(SystemExit) as info:
        g.build_parser().parse_args(["--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    assert "python3 tools/gpu_check.py --out gpu_out/" in text
    for step in ("environment", "build", "ptxas", "GPU tests", "sanitizers", "benchmark",
                 "parity"):
        assert f"\n  {step}" in text


def _bench_result(parity_passed=True, backend_status="ok", complete=True):
    """A latency.py result (schema 2) as a GPU run writes it, reduced to what is read."""
    gpu = {"name": "torch-cuda", "status": backend_status, "uses_gpu": True,
           "reason": "failed to start: RuntimeError: boom",
           "stages": {"total": {"median_ms": 40.0}, "network": {"median_ms": 35.0}}}
    ref = {"name": "reference", "status": "ok", "uses_gpu": True,
           "stages": {"total": {"median_ms": 950.0}, "network": {"median_ms": 120.0}}}
    row = {"backend": "torch-cuda", "passed": parity_passed, "precision": "fp16",
           "reference": 10, "test": 10, "matched": 9 if not parity_passed else 10,
           "missing_firm": 0 if parity_passed else 1, "extra_firm": 0, "nms_ambiguous": 0,
           "max_score_diff": 0.01, "min_iou": 0.95, "failures": [] if parity_passed else
           ["missing 1 > 0 (firm reference detections without a test match at IoU >= 0.8)"],
           "missing_examples": [] if parity_passed else [[100.0, 40.0, 112.5, 55.0, 0.9, 0.62]],
           "extra_examples": []}
    sizes = [{"image_size": [1920, 1080], "status": "ok", "levels": [], "flop_per_image": None,
              "backends": [ref, gpu],
              "parity": {"status": "ok", "reference": "cpu", "reference_detections": 10,
                         "rows": [row] if backend_status == "ok" else []}},
             {"image_size": [1280, 720], "status": "skipped", "backends": [],
              "reason": "time budget: about 66 s needed, 40 s left of --budget-s 195 "
                        "before image size 1280x720"}]
    return {"complete": complete, "sizes": sizes, "decode_nms": None, "seconds": 190.0,
            "targets": []}


def test_benchmark_and_parity_steps_from_a_gpu_run():
    report = g.Report([], 270.0, gpu=True)
    g.summarize_benchmark(report, _bench_result(), 190.0, "python3 latency.py", "done")
    bench, parity = report.steps
    assert (bench.name, bench.status) == ("benchmark", "pass")
    assert "ran reference, torch-cuda" in bench.summary
    assert "1280x720: time budget: about 66 s needed" in bench.summary
    # a size left out for time: what ran passed, the check is not complete
    assert report.result == "INCOMPLETE"
    assert ("**Result: INCOMPLETE** (left out for time: 1280x720 (benchmark); a larger "
            "--budget-s runs them)") in g.render_markdown(report)
    assert (parity.name, parity.status) == ("parity", "pass")
    assert parity.summary.startswith("1 of 1 backend/size pairs match the CPU reference")
    assert report.parity[0]["size"] == "1920x1080"
    assert g.render_markdown(report).count("| 1920x1080 | `torch-cuda` | pass | 10 / 10 |") == 1


@pytest.mark.parametrize("died", ["timed out", "exit -11", "exit 4"])
def test_a_profile_that_hangs_or_crashes_costs_only_itself(died):
    """latency.py saves its result complete, the profile marked running, just before the
    profile (last in the run): a run killed or crashed in it still passes, with a note."""
    result = _bench_result()
    result["sizes"][0]["profile"] = {"backend": "torch-cuda", "status": "running",
                                     "reason": "the run ended while the profile was under way"}
    report = g.Report([], 270.0, gpu=True)
    g.summarize_benchmark(report, result, 190.0, "c", "[torch-cuda] the profile, last ...",
                          died=died)
    bench, parity = report.steps
    assert (bench.status, parity.status) == ("pass", "pass")
    assert f"the profile: did not finish ({died}); everything else was saved before it" \
        in bench.summary
    incomplete = _bench_result(complete=False)  # killed before that save: still stopped
    incomplete["sizes"][0]["profile"] = result["sizes"][0]["profile"]
    report = g.Report([], 270.0, gpu=True)
    g.summarize_benchmark(report, incomplete, 190.0, "c", "x", died="timed out")
    assert report.steps[0].status == "timeout"


@pytest.mark.parametrize("died", ["exit 4", "killed by signal 11 (SIGSEGV)"])
def test_the_decode_nms_profile_costs_only_itself_and_says_what_it_left_out(died):
    """The decode + NMS profile (after the detect's) is saved as running too: a run ending in
    it passes with a note; one the budget skipped is left out for time (INCOMPLETE), one
    that failed is said."""
    result = _bench_result()
    result["sizes"][0]["profile"] = {"backend": "torch-cuda", "status": "ok", "top": [],
                                     "stages": [], "wall_ms": 1.0, "gpu_kernel_ms": 1.0}
    result["decode_nms"] = {"rows": [], "profile": [
        {"target": 10000, "status": "running", "reason": "the run ended"}]}
    report = g.Report([], 270.0, gpu=True)
    g.summarize_benchmark(report, result, 190.0, "c", "decode/NMS profile ...", died=died)
    assert report.steps[0].status == "pass"
    assert (f"the decode/NMS profile: did not finish ({died}); everything else was saved "
            "before it") in report.steps[0].summary
    result["decode_nms"]["profile"] = [
        {"target": 10000, "status": "skipped", "reason": "time budget: about 10 s needed, 3 s "
                                                         "left of --budget-s 200 before x"},
        {"target": 50000, "status": "failed", "reason": "RuntimeError: CUPTI"}]
    report = g.Report([], 270.0, gpu=True)
    g.summarize_benchmark(report, result, 190.0, "c", "done")
    bench = report.steps[0]
    assert bench.status == "pass" and "decode/NMS profile 10000" in bench.left_for_time
    assert "decode/NMS profile 50000: failed: RuntimeError: CUPTI" in bench.summary


def _passed_report():
    report = g.Report([], 270.0)
    g.summarize_benchmark(report, _bench_result(), 1.0, "c", "")
    return report


def test_the_targets_table_gives_torch_cudas_variants_beside_its_value():
    result = _bench_result()
    result["targets"] = [
        {"key": "speedup", "title": "end to end vs the reference", "unit": "x", "goal": 40.0,
         "relation": ">=", "measured": 28.5, "met": False, "verdict": "missed by 1.40x",
         "why": "the network", "variants": {"torch-cuda-in-turn": 32.9}},
        {"key": "batch_gain", "title": "batch gain", "unit": "x", "goal": 1.3,
         "relation": ">=", "measured": 1.39, "met": True, "verdict": "met", "why": ""}]
    report = g.Report([], 270.0, gpu=True)
    g.summarize_benchmark(report, result, 190.0, "c", "done")
    md = g.render_markdown(report)
    assert ("| end to end vs the reference | >= 40x | 28.5x (`torch-cuda-in-turn` 32.9x) | "
            "**missed by 1.40x** | the network |") in md
    assert "| batch gain | >= 1.3x | 1.39x | met |  |" in md


def test_a_parity_mismatch_or_a_failed_backend_fails_the_check():
    report = g.Report([], 270.0)
    g.summarize_benchmark(report, _bench_result(parity_passed=False), 1.0, "c", "")
    assert [s.status for s in report.steps] == ["pass", "fail"]
    assert "FAILED: 1920x1080 torch-cuda" in report.steps[1].summary
    assert report.result == "FAIL"
    md = g.render_markdown(report)
    assert "| 1920x1080 | `torch-cuda` | **FAIL** |" in md and "missing 1 > 0" in md
    assert ("- 1920x1080 `torch-cuda`: missing: 12x15 px at (100, 40) prob 0.90 (best IoU 0.62)"
            in md)
    assert "Missing and extra" not in g.render_markdown(_passed_report())

    report = g.Report([], 270.0, gpu=True)
    g.summarize_benchmark(report, _bench_result(backend_status="failed"), 1.0, "c", "")
    bench, parity = report.steps
    assert bench.status == "fail"
    assert "FAILED: 1920x1080 torch-cuda: failed to start: RuntimeError: boom" in bench.summary
    assert "no GPU backend ran on this GPU machine" in bench.summary
    assert parity.status == "skipped" and parity.summary.startswith("no GPU backend ran")


@pytest.mark.parametrize("fault", ["page-locked pass", "upload"])
def test_a_failed_page_locked_pass_or_image_upload_fails_the_benchmark(fault):
    """Both were in latency.md only: a page-locked pass that failed or was staged after all
    (the direct upload broken on that GPU), and the image upload micro-benchmark's failure
    (its landing check is the staging copy's, which every detect uses)."""
    result = _bench_result()
    if fault == "upload":
        result["upload"] = {"status": "failed", "reason": "RuntimeError: chunk 3 not copied",
                            "rows": []}
        want = "FAILED: image upload: RuntimeError: chunk 3 not copied"
    else:
        result["sizes"][0]["backends"][1]["end_to_end_page_locked_note"] = (
            "not measured: the page-locked image was staged")
        want = ("FAILED: 1920x1080 torch-cuda: from a page-locked image: not measured: the "
                "page-locked image was staged")
    report = g.Report([], 270.0, gpu=True)
    g.summarize_benchmark(report, result, 190.0, "c", "done")
    bench = report.steps[0]
    assert bench.status == "fail" and report.result == "FAIL"
    assert want in bench.summary
    result = _bench_result()
    result["upload"] = {"status": "skipped", "reason": "no CUDA GPU visible"}
    report = g.Report([], 270.0, gpu=True)
    g.summarize_benchmark(report, result, 190.0, "c", "done")
    assert report.steps[0].status == "pass"


def test_torch_cuda_measured_after_a_fallback_fails_the_benchmark():
    """TorchCudaRunner falls back to CUDA graphs where torch.compile fails at a shape: its
    latency is then another mode's, which the targets are not about."""
    result = _bench_result()
    result["sizes"][0]["backends"][1]["fell_back"] = "1x3x2160x3840: graphs"
    report = g.Report([], 270.0, gpu=True)
    g.summarize_benchmark(report, result, 1.0, "c", "")
    bench = report.steps[0]
    assert bench.status == "fail" and report.result == "FAIL"
    assert ("FAILED: 1920x1080 torch-cuda: measured after falling back from the mode asked for "
            "(1x3x2160x3840: graphs; gpu_check.log says why)") in bench.summary


def test_cuda_decode_nms_keeping_other_boxes_than_numpy_fails_the_benchmark():
    result = _bench_result()
    cuda = {"name": "cuda (CudaPostprocessor, warp NMS rule)", "status": "ok", "kept": 12,
            "vs_numpy": {"passed": True, "reference": 12, "missing_firm": 0, "extra_firm": 0}}
    walk = {**cuda, "name": "cuda, walk-order NMS rule",
            "vs_numpy": {"passed": False, "reference": 12, "missing_firm": 2, "extra_firm": 1}}
    result["decode_nms"] = {"rows": [{"target": 10000, "implementations": [cuda, walk]}]}
    report = g.Report([], 270.0, gpu=True)
    g.summarize_benchmark(report, result, 1.0, "c", "")
    bench = report.steps[0]
    assert bench.status == "fail" and report.result == "FAIL"
    assert ("FAILED: decode/NMS 10000 cuda, walk-order NMS rule: kept boxes are not the numpy "
            "path's (2 missing, 1 extra of 12)") in bench.summary
    # a failure the counts do not show: the parity comparison's own words
    walk["vs_numpy"].update(missing_firm=0, extra_firm=0,
                                 failures=["max probability difference 0.2 > 1e-05"])
    report = g.Report([], 270.0, gpu=True)
    g.summarize_benchmark(report, result, 1.0, "c", "")
    assert ("kept boxes are not the numpy path's (max probability difference 0.2 > 1e-05)"
            in report.steps[0].summary)
    walk["vs_numpy"]["passed"] = True
    report = g.Report([], 270.0, gpu=True)
    g.summarize_benchmark(report, result, 1.0, "c", "")
    assert report.steps[0].status == "pass"


def test_a_benchmark_that_died_keeps_its_partial_numbers():
    report = g.Report([], 270.0)
    g.summarize_benchmark(report, _bench_result(complete=False), 1.0, "c",
                          "Segmentation fault", died="exit -11")
    bench, parity = report.steps
    assert bench.status == "fail"
    assert "the benchmark stopped early (exit -11: Segmentation fault)" in bench.summary
    assert parity.status == "pass"  # what it had measured still counts


def test_skips_in_gpu_only_files_and_their_case_files_must_run():
    for where in ("tests/test_kernels_gpu.py:44: no CUDA GPU visible",
                  "tests/kernel_abi_cases.py:210: CPU build: ...",
                  "tests/kernel_stage_cases.py:77: x"):
        assert g.MUST_RUN.match(where), where
    for where in ("tests/test_torch_cuda.py:12: no torch", "tests/test_kernels_cpu.py:40: no make"):
        assert not g.MUST_RUN.match(where), where


# --- one run on a lent GPU must come back with a report, whatever happens -----------------

def _ran(code=0, output="", timed_out=False):
    return g.Ran(124 if timed_out else code, output, 1.0, timed_out)


def test_a_step_killed_at_its_limit_is_incomplete_unless_something_failed_first(monkeypatch):
    progress = "........s.....................s.s..................................... [ 40%]\n..."
    monkeypatch.setattr(g, "run", lambda *a, **k: _ran(output=progress, timed_out=True))
    report = g.Report([], 270.0, gpu=True)
    g.tests_step(report, {}, 100.0, None)
    (step,) = report.steps
    assert step.status == "timeout" and step.summary.startswith("killed at its time limit (100 s)")
    assert report.result == "INCOMPLETE"
    assert "killed at their time limit: GPU tests" in g.render_markdown(report)

    monkeypatch.setattr(g, "run", lambda *a, **k: _ran(output=progress + "..F.",
                                                        timed_out=True))
    report = g.Report([], 270.0, gpu=True)
    g.tests_step(report, {}, 100.0, None)
    assert report.steps[0].status == "fail" and "tests had FAILED before" in report.steps[0].summary
    assert report.result == "FAIL"
    # a test past TEST_STACK_DUMP_S: faulthandler's dump starts on the progress line
    dump = "Timeout (0:01:30)!\nThread 0x1 (most recent call first):\n  File \"t.py\", line 3 in test_x\n"
    for dots, status in (("..F.", "fail"), ("....", "timeout")):
        monkeypatch.setattr(g, "run", lambda *a, **k: _ran(output=progress + dots + dump,
                                                            timed_out=True))
        report = g.Report([], 270.0, gpu=True)
        g.tests_step(report, {}, 100.0, None)
        assert report.steps[0].status == status
    assert f"faulthandler_timeout={g.TEST_STACK_DUMP_S}" in report.steps[0].command


def test_an_expected_failure_passes_the_tests_step_and_is_named(monkeypatch):
    """A GPU test that meets a known breakage of the machine's torch xfails with the cause
    (test_torch_cuda_gpu.py's AOTInductor test): the step passes and its summary names it."""
    reason = ("torch 2.11.0+cu130's AOTInductor loader crashed a child process (SIGSEGV) on "
              "1x3x64x96.pt2: not loaded into this process")
    test = "tests/test_torch_cuda_gpu.py::test_aoti_package_on_the_given_stream"
    output = (f"x.\n=== short test summary info ===\nXFAIL {test} - {reason}\n"
              "1 passed, 1 xfailed in 9.00s\n")
    monkeypatch.setattr(g, "run", lambda *a, **k: _ran(output=output))
    report = g.Report([], 270.0, gpu=True)
    g.tests_step(report, {}, 100.0, None)
    (step,) = report.steps
    assert step.status == "pass" and report.result == "PASS"
    assert step.summary.endswith(f"; expected failures: {test} - {reason}")
    assert g.parse_pytest(output).xfails == [f"{test} - {reason}"]


def test_a_sanitizer_subset_whose_tests_all_skip_fails(monkeypatch):
    skipped = MEMCHECK_OK + "sssss\n5 skipped in 3.00s\n"
    monkeypatch.setattr(g, "run", lambda *a, **k: _ran(output=skipped))
    report = g.Report([], 270.0, gpu=True)
    g.sanitizer_step(report, {}, "compute-sanitizer", "memcheck", ["pytest", "-k", "x"], "m",
                     60.0, None, pytest_run=True)
    assert report.steps[0].status == "fail"
    assert "no test of the subset ran under the sanitizer" in report.steps[0].summary
    monkeypatch.setattr(g, "run", lambda *a, **k: _ran(5, MEMCHECK_OK + "no tests ran in 0.1s"))
    g.sanitizer_step(report, {}, "compute-sanitizer", "memcheck", ["pytest", "-k", "x"], "m",
                     60.0, None, pytest_run=True)
    assert report.steps[1].status == "skipped"
    assert report.steps[1].summary == "no GPU test matches the subset (x)"
    hit = "========= Invalid __global__ write of size 4 bytes\n"
    monkeypatch.setattr(g, "run", lambda *a, **k: _ran(output=hit, timed_out=True))
    g.sanitizer_step(report, {}, "compute-sanitizer", "memcheck", ["demo"], "d", 60.0, None)
    assert report.steps[2].status == "fail"
    assert "errors had been reported" in report.steps[2].summary


def test_a_benchmark_killed_at_its_limit_is_incomplete_not_failed():
    report = g.Report([], 270.0, gpu=True)
    g.summarize_benchmark(report, _bench_result(complete=False), 1.0, "c", "measuring",
                          died="timed out")
    assert report.steps[0].status == "timeout"
    assert "STOPPED: the benchmark stopped early (timed out: measuring)" in report.steps[0].summary
    assert report.result == "INCOMPLETE"


def test_an_error_in_a_step_is_reported_and_the_report_is_saved_after_every_step(
        monkeypatch, tmp_path):
    """As on a GPU machine (environment and tools stand in): the build step raises, the
    check goes on, and gpu_check.json is rewritten after each step."""
    def environment(report, env, log):
        report.gpu = True
        report.add(g.Step("environment", "pass", 0.0, "GPU: stand-in"))
        return "90"

    def broken_build(*args):
        raise KeyError("arch")

    seen = []
    monkeypatch.setattr(g, "environment_step", environment)
    monkeypatch.setattr(g, "find_tool", lambda name: f"/opt/cuda/bin/{name}")
    monkeypatch.setattr(g, "precompile_start", lambda *a: [])
    monkeypatch.setattr(g, "build_step", broken_build)
    monkeypatch.setattr(g, "tests_step", lambda report, *a: report.add(
        g.Step("GPU tests", "pass", 1.0, "1 passed")))
    monkeypatch.setattr(g, "benchmark_step", lambda report, *a: seen.append(
        json.loads((tmp_path / "out" / "gpu_check.json").read_text())) or report.add(
        g.Step("benchmark", "pass", 1.0, "ran")))
    code = g.main(["--out", str(tmp_path / "out"), "--budget-s", "400"])
    assert code == 1
    report = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    steps = {s["name"]: s for s in report["steps"]}
    assert steps["build"]["status"] == "fail"
    assert steps["build"]["summary"] == "gpu_check error: KeyError: 'arch'"
    assert "Traceback" in steps["build"]["details"]
    assert steps["GPU tests"]["status"] == "pass" and steps["benchmark"]["status"] == "pass"
    assert steps["compute-sanitizer memcheck: C example"]["summary"] == \
        "the kernels were not built"
    (before_benchmark,) = seen  # saved while the check was still running
    assert before_benchmark["result"] == "fail"
    assert [s["name"] for s in before_benchmark["steps"]][-1] == \
        "compute-sanitizer racecheck: GPU tests subset"
    assert report["result"] == "fail"
    assert (tmp_path / "out" / "gpu_check.log").is_file()


def test_a_pass_names_the_steps_this_machine_could_not_run():
    report = g.Report([], 270.0, gpu=True)
    report.add(g.Step("build", "pass", 1.0, "built"))
    for name in ("compute-sanitizer memcheck: C example", "compute-sanitizer racecheck: C example"):
        report.skip(name, "compute-sanitizer not found")
    report.skip("ptxas -v", g.SKIPPED_ON_REQUEST)
    report.skip("compute-sanitizer synccheck: C example", "compute-sanitizer: \"Device not "
                "supported\" on this machine (seen under gVisor)")
    assert report.result == "PASS"
    assert g.render_markdown(report).splitlines()[2] == (
        "**Result: PASS** (not run: compute-sanitizer memcheck: C example, compute-sanitizer "
        "racecheck: C example (compute-sanitizer not found); compute-sanitizer synccheck: C "
        "example (compute-sanitizer: \"Device not supported\" on this machine (seen under "
        "gVisor)))")


def test_a_report_saved_before_the_end_says_the_check_has_not_finished():
    report = g.Report([], 270.0, gpu=True, finished=False)
    report.add(g.Step("build", "pass", 1.0, "built"))
    assert report.result == "INCOMPLETE"
    assert "**Result: INCOMPLETE** (the check has not finished" in g.render_markdown(report)
    report.finished = True
    assert report.result == "PASS"


def test_gpu_tests_run_in_parallel_where_xdist_is_installed(monkeypatch):
    monkeypatch.setattr(g.importlib.util, "find_spec", lambda name: None)
    assert g.parallel_pytest_args() == []
    monkeypatch.setattr(g.importlib.util, "find_spec", lambda name: object())
    monkeypatch.setattr(g.os, "cpu_count", lambda: 16)
    assert g.parallel_pytest_args() == ["-n", "4", "--dist", "load"]
    monkeypatch.setattr(g.os, "cpu_count", lambda: 2)
    assert g.parallel_pytest_args()[:2] == ["-n", "2"]


def test_a_sanitizer_subset_killed_after_a_failed_test_fails(monkeypatch):
    monkeypatch.setattr(g, "run", lambda *a, **k: _ran(output="=== COMPUTE-SANITIZER\n..F",
                                                        timed_out=True))
    report = g.Report([], 270.0, gpu=True)
    g.sanitizer_step(report, {}, "compute-sanitizer", "memcheck", ["pytest", "-k", "x"], "m",
                     60.0, None, pytest_run=True)
    assert report.steps[0].status == "fail"


def test_batch_rows_the_profile_or_parity_left_out_for_time_make_the_check_incomplete():
    result = _bench_result()
    del result["sizes"][1]  # every size measured
    size = result["sizes"][0]
    report = g.Report([], 270.0, gpu=True)
    g.summarize_benchmark(report, result, 1.0, "c", "done")
    assert report.result == "PASS"
    budget = "time budget: 3 s left of --budget-s 195 before "
    size["batch"] = {"batch": 8, "rows": [{"backend": "torch-cuda", "batch": 8,
                                           "status": "skipped",
                                           "reason": budget + "the batch rows of torch-cuda"}]}
    size["profile"] = {"backend": "torch-cuda", "status": "skipped", "reason": budget + "the profile"}
    report = g.Report([], 270.0, gpu=True)
    g.summarize_benchmark(report, result, 1.0, "c", "done")
    bench = report.steps[0]
    assert bench.status == "pass" and report.result == "INCOMPLETE"
    assert bench.left_for_time == ["1920x1080 batch torch-cuda", "the profile"]
    assert f"not measured: 1920x1080 batch torch-cuda: {budget}" in bench.summary
    assert f"the profile: {budget}the profile" in bench.summary
    del size["batch"], size["profile"]
    size["parity"] = {"status": "skipped", "reason": budget + "the parity check", "rows": []}
    report = g.Report([], 270.0, gpu=True)
    g.summarize_benchmark(report, result, 1.0, "c", "done")
    assert report.steps[1].left_for_time == ["parity at 1920x1080"]
    assert report.result == "INCOMPLETE"
    size["profile"] = {"status": "skipped", "reason": "torch profiler: RuntimeError: x"}
    del size["parity"]
    report = g.Report([], 270.0, gpu=True)
    g.summarize_benchmark(report, result, 1.0, "c", "done")
    assert "not measured: the profile: torch profiler: RuntimeError: x" in report.steps[0].summary
    assert report.result == "PASS"  # a profiler that cannot run is no lack of time


def test_the_compute_capability_is_nvidia_smis_third_field():
    assert g.smi_compute_capability("NVIDIA H200, 580.159.04, 9.0, 143771 MiB") == "90"
    assert g.smi_compute_capability("NVIDIA H100 80GB HBM3, 580.95, 9.0, 81559 MiB") == "90"
    assert g.smi_compute_capability("NVIDIA H200, 580.95, [N/A], 143771 MiB") is None
    assert g.smi_compute_capability("garbled") is None


def test_the_registers_come_from_the_builds_compile(monkeypatch, tmp_path):
    """The build compiles with -Xptxas -v (the Makefile's EXTRA_NVCCFLAGS): its output gives
    the registers table, and no second compile is needed."""
    (tmp_path / "libtinyfaces_kernels.so").write_bytes(b"")
    (tmp_path / "decode_nms_demo").write_bytes(b"")
    seen = {}

    def build(cmd, env, timeout, log=None):
        seen.update(cmd=cmd, env=env)
        return _ran(output="tf-build-kernels: building ...\n" + PTXAS)

    monkeypatch.setattr(g, "run", build)
    report = g.Report([], 270.0, gpu=True)
    assert g.build_step(report, {"PATH": "/bin"}, tmp_path, "90", 100.0, None) == \
        tmp_path / "libtinyfaces_kernels.so"
    assert seen["env"] == {"PATH": "/bin", "EXTRA_NVCCFLAGS": "-Xptxas -v"}
    assert seen["cmd"][-2:] == ["--arch", "90"]
    assert len(report.registers) == 2
    assert report.steps[0].status == "pass"
    makefile = (ROOT / "kernels" / "Makefile").read_text()
    assert "$(NVCC) $(NVCCFLAGS) $(EXTRA_NVCCFLAGS) $(GENCODE) $(LIB_FLAGS) $(SOURCES) -o $@" \
        in makefile


def test_a_gpu_run_with_steps_skipped_for_time_is_incomplete():
    report = g.Report([], 100.0, gpu=True)
    report.add(g.Step("build", "pass", 1.0, "built"))
    report.skip("GPU tests", "time budget: 10 s left of 100, 120 s kept for the benchmark")
    assert report.result == "INCOMPLETE"
    assert "skipped for time: GPU tests; a larger --budget-s runs them" in \
        g.render_markdown(report)
    report.gpu = False  # without a GPU nothing could run anyway
    assert report.result == "PASS"


def test_saving_failures_and_errors_after_a_step_keep_the_check_going(monkeypatch, tmp_path):
    report = g.Report([], 270.0, gpu=True)

    def failing_save():
        raise OSError("disk full")

    report.on_step = failing_save
    report.add(g.Step("build", "pass", 1.0, "built"))  # printed, not raised

    def half_done():
        report.add(g.Step("benchmark", "pass", 1.0, "ran"))
        raise KeyError("rows")

    g.guarded(report, "benchmark", half_done)
    assert [(s.name, s.status) for s in report.steps] == [
        ("build", "pass"), ("benchmark", "pass"),
        ("benchmark (gpu_check error after it)", "fail")]
    assert report.result == "FAIL"


def test_the_final_report_is_written_when_the_steps_are_interrupted(monkeypatch, tmp_path):
    def interrupted(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(g, "run_steps", interrupted)
    with pytest.raises(KeyboardInterrupt):
        g.main(["--out", str(tmp_path)])
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert report["result"] == "incomplete" and report["steps"] == []


def test_a_sigterm_ends_the_running_step_and_saves_the_report(monkeypatch, tmp_path, capsys):
    """A time limit from outside (SIGTERM): the running step's process group is killed, the
    report and the log are written, the steps are summed up at the end of stderr, and the
    steps' processes import this checkout (PYTHONPATH)."""
    import signal

    seen = {}

    def steps(report, args, skip, out, budget, env, log):
        seen["pythonpath"] = env["PYTHONPATH"].split(os.pathsep)[0]
        report.add(g.Step("build", "pass", 1.0, "built"))
        code = ("import os, signal, time; print('child', os.getpid(), flush=True); "
                "os.kill(os.getppid(), signal.SIGTERM); time.sleep(60)")
        g.run([sys.executable, "-c", code], env, 120, log=log)

    before = signal.getsignal(signal.SIGTERM)
    monkeypatch.setattr(g, "run_steps", steps)
    handlers = []
    save = g.save_report
    monkeypatch.setattr(g, "save_report", lambda *a, **k: handlers.append(
        signal.getsignal(signal.SIGTERM)) or save(*a, **k))
    with pytest.raises(g.Terminated):
        g.main(["--out", str(tmp_path)])
    assert handlers[-1] == signal.SIG_IGN  # the final save is not cut short by another SIGTERM
    assert signal.getsignal(signal.SIGTERM) is before  # put back
    assert seen["pythonpath"] == str(ROOT)
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert report["result"] == "incomplete" and [s["name"] for s in report["steps"]] == ["build"]
    child = int(re.search(r"^child (\d+)$", (tmp_path / "gpu_check.log").read_text(), re.M)[1])
    status = Path(f"/proc/{child}/status")
    assert not status.exists() or "\nState:\tZ" in status.read_text()  # killed
    err = capsys.readouterr().err
    assert "gpu_check: steps\n  ok   build (1.0 s): built\ngpu_check: INCOMPLETE (the check has " \
        "not finished" in err


def test_nvcc_is_found_where_the_build_finds_it(monkeypatch, tmp_path):
    nvcc = tmp_path / "nvcc-13.0"
    nvcc.write_text("#!/bin/sh\n")
    nvcc.chmod(0o755)
    (tmp_path / "compute-sanitizer").write_text("#!/bin/sh\n")
    (tmp_path / "compute-sanitizer").chmod(0o755)
    monkeypatch.setenv("NVCC", str(nvcc))
    monkeypatch.setenv("PATH", "/nonexistent")
    assert g.find_tool("nvcc") == str(nvcc)
    assert g.find_tool("compute-sanitizer") == str(tmp_path / "compute-sanitizer")
    monkeypatch.setattr(g, "cuda_home", lambda nvcc: None)
    assert g.find_tool("ncu") is None


def test_the_sanitizer_is_found_in_the_toolkit_of_a_linked_or_wrapped_nvcc(monkeypatch, tmp_path):
    toolkit = tmp_path / "cuda-13.0"
    (toolkit / "bin").mkdir(parents=True)
    for tool in ("nvcc", "compute-sanitizer"):
        (toolkit / "bin" / tool).write_text("#!/bin/sh\n")
        (toolkit / "bin" / tool).chmod(0o755)
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.setattr(g, "cuda_home", lambda nvcc: None)
    linked = tmp_path / "links" / "nvcc"
    linked.parent.mkdir()
    linked.symlink_to(toolkit / "bin" / "nvcc")
    monkeypatch.setenv("NVCC", str(linked))
    assert g.find_tool("compute-sanitizer") == str(toolkit / "bin" / "compute-sanitizer")
    wrapper = tmp_path / "wrapper" / "nvcc"  # /usr/local/bin/nvcc running the toolkit's
    wrapper.parent.mkdir()
    wrapper.write_text(f"#!/bin/sh\nexec {toolkit}/bin/nvcc \"$@\"\n")
    wrapper.chmod(0o755)
    monkeypatch.setenv("NVCC", str(wrapper))
    assert g.find_tool("compute-sanitizer") is None
    monkeypatch.setattr(g, "cuda_home", lambda nvcc: str(toolkit) if nvcc == str(wrapper) else None)
    assert g.find_tool("compute-sanitizer") == str(toolkit / "bin" / "compute-sanitizer")


def test_the_sigterm_handler_fires_once():
    import signal

    before = signal.getsignal(signal.SIGTERM)
    try:
        with pytest.raises(g.Terminated):
            g._terminated(signal.SIGTERM, None)
        assert signal.getsignal(signal.SIGTERM) == signal.SIG_IGN  # unwinding, not again
    finally:
        signal.signal(signal.SIGTERM, before)


def test_main_runs_outside_the_main_thread_without_its_sigterm_handler(monkeypatch, tmp_path):
    import threading

    monkeypatch.setattr(g, "run_steps", lambda *a: None)
    codes = []
    thread = threading.Thread(target=lambda: codes.append(g.main(["--out", str(tmp_path)])))
    thread.start()
    thread.join(60)
    assert codes == [0]  # SKIPPED: no step ran; no "signal only works in main thread"
    assert json.loads((tmp_path / "gpu_check.json").read_text())["result"] == "skipped"


def _gpu_run_steps(monkeypatch, tmp_path, skip, build_output, code=0):
    """run_steps on a stand-in GPU machine whose build prints ``build_output``; the steps
    after the build are left out."""
    def environment(report, env, log):
        report.gpu = True
        return "90"

    def fake_run(cmd, env, timeout, echo=False, log=None):
        # nvcc's folder first on the PATH, and CUDA_HOME above it (AOTInductor's -lcuda stubs)
        assert env["PATH"].startswith("/usr/local/cuda/bin" + os.pathsep)
        assert env["CUDA_HOME"] == "/usr/local/cuda"
        (tmp_path / "libtinyfaces_kernels.so").write_bytes(b"")
        (tmp_path / "decode_nms_demo").write_bytes(b"")
        return _ran(code, output=build_output)

    compiled = []
    monkeypatch.setattr(g, "environment_step", environment)
    monkeypatch.setattr(g, "find_tool", lambda name: f"/usr/local/cuda/bin/{name}")
    monkeypatch.setattr(g, "run", fake_run)
    monkeypatch.setattr(g, "ptxas_step", lambda report, *a: compiled.append(a) or
                        report.add(g.Step("ptxas -v", "pass", 6.0, "compiled again")))
    report = g.Report([], 450.0)
    args = g.build_parser().parse_args(["--out", str(tmp_path), "--build-dir", str(tmp_path)])
    g.run_steps(report, args, {"tests", "sanitizers", "benchmark", *skip}, tmp_path,
                g.Budget(450.0), {"PATH": "/bin"}, None)
    steps = {s.name: s for s in report.steps}
    return report, steps["ptxas -v"], compiled


def test_the_ptxas_step_reads_the_build_and_compiles_again_only_when_it_must(monkeypatch,
                                                                             tmp_path):
    # a kernel of the sources that the table lacks is named (its spills are unknown)
    assert g.registers_summary(g.parse_ptxas(PTXAS)).startswith(
        "2 kernel/arch entries, SPILLS in resize_vertical_kernel; NOT IN THE TABLE (spills "
        "unknown): block_sort_kernel, nms_bin_kernel, nms_cell_gather_kernel, ")
    monkeypatch.setattr(g, "source_kernels", lambda: {"decode_level_kernel",
                                                      "resize_vertical_kernel"})
    report, step, compiled = _gpu_run_steps(monkeypatch, tmp_path, (), PTXAS)
    assert (step.status, step.seconds, compiled) == ("pass", 0.0, [])
    assert step.summary == "2 kernel/arch entries, SPILLS in resize_vertical_kernel (read off " \
        "the build's compile)"
    assert report.result == "PASS" and len(report.registers) == 2
    # make found the library up to date: nothing compiled, so make ptxas compiles it
    report, step, compiled = _gpu_run_steps(monkeypatch, tmp_path, (), "make: nothing to do\n")
    assert step.summary == "compiled again" and len(compiled) == 1
    report, step, compiled = _gpu_run_steps(monkeypatch, tmp_path, ("ptxas",), PTXAS)
    assert (step.status, step.summary) == ("skipped", "left out (--skip)")
    assert report.registers == [] and compiled == []
    report, step, compiled = _gpu_run_steps(monkeypatch, tmp_path, (), PTXAS + "error\n", code=2)
    assert report.registers == [] and compiled == []  # a failed build's rows are not reported
    assert (step.status, step.summary) == ("skipped", "the build did not run or failed")


def test_a_timed_out_benchmark_that_measured_a_size_says_parity_did_not_finish():
    result = _bench_result(complete=False)
    size = result["sizes"][0]
    size["partial"] = "the backends are measured; batch and parity were still to come"
    del size["parity"]
    report = g.Report([], 270.0, gpu=True)
    g.summarize_benchmark(report, result, 1.0, "c", "measuring", died="timed out")
    bench, parity = report.steps
    assert bench.status == "timeout" and "ran reference, torch-cuda" in bench.summary
    assert parity.status == "skipped"
    assert parity.summary.startswith("no comparison finished; 1920x1080: not run (the benchmark "
                                     "stopped before it)")


def test_a_failing_tool_probe_keeps_the_gpu_the_environment_found(monkeypatch):
    smi = "NVIDIA H200, 580.159.04, 9.0, 143771 MiB"

    def run(cmd, env, timeout, echo=False, log=None):
        if cmd[0] == "nvidia-smi":
            return g.Ran(0, smi + "\n", 0.1)
        return g.Ran(0, 'GPU_CHECK_FACTS {"torch device": "none"}\n', 0.1)

    def find_tool(name):
        raise ImportError("No module named 'numpy'")

    monkeypatch.setattr(g, "run", run)
    monkeypatch.setattr(g, "find_tool", find_tool)
    report = g.Report(["--out", "x"], 450.0)
    assert g.environment_step(report, {}, None) == "90"
    assert report.gpu
    assert report.facts["nvcc"] == "probe failed: ImportError: No module named 'numpy'"
    assert report.facts["nvidia-smi"] == smi


def test_cuda_home_of_a_wrapper_script_is_the_toolkit_it_runs(tmp_path):
    # /usr/local/bin/nvcc as a two-line wrapper: torch's guess (the parent of its folder) is
    # /usr/local, without cuda.h or the stubs AOTInductor links
    toolkit = tmp_path / "cuda-13.0"
    (toolkit / "bin").mkdir(parents=True)
    (toolkit / "include").mkdir()
    (toolkit / "include" / "cuda.h").write_text("")
    real = toolkit / "bin" / "nvcc"
    real.write_text(f"#!/bin/sh\necho '#$ _HERE_={toolkit / 'bin'}' >&2\n")
    wrapper = tmp_path / "local" / "bin" / "nvcc"
    wrapper.parent.mkdir(parents=True)
    wrapper.write_text(f'#!/bin/sh\nexec {real} "$@"\n')
    for script in (real, wrapper):
        script.chmod(0o755)
    gpu_check = _gpu_check()
    assert gpu_check.cuda_home(str(wrapper)) == str(toolkit)
    assert gpu_check.cuda_home(str(real)) == str(toolkit)
    link = tmp_path / "link" / "bin" / "nvcc"
    link.parent.mkdir(parents=True)
    link.symlink_to(real)
    assert gpu_check.cuda_home(str(link)) == str(toolkit)


def test_the_environment_probe_names_a_missing_runtime_dependency(tmp_path):
    """Without Pillow every runtime import fails; the facts say so first, rather than as the
    cuda-python device's "unavailable: No module named 'PIL'"."""
    (tmp_path / "PIL").mkdir()
    (tmp_path / "PIL" / "__init__.py").write_text("raise ImportError('hidden by the test')\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), str(ROOT)]))
    probe = subprocess.run([sys.executable, "-c", g._PROBE], env=env, capture_output=True,
                           text=True, timeout=120)
    facts = json.loads(re.search(r"^GPU_CHECK_FACTS (.*)$", probe.stdout, flags=re.M)[1])
    assert facts["runtime dependencies missing"] == "PIL (ImportError: hidden by the test)"
    assert "pillow " in facts["packages"] and "scipy " in facts["packages"]


def test_an_interrupt_that_breaks_the_readers_start_still_logs_the_steps_output(
        tmp_path, monkeypatch):
    """A SIGTERM landing in reader.start()'s wait: the thread ran all the same but was not
    alive yet, so it was not waited for; the log was closed under it (ValueError in the
    thread) and the step's last lines were lost (a flaky test under load)."""
    import threading
    import time

    real = threading.Thread

    class LateThread(real):
        def start(self):
            time.sleep(0.5)  # the step has printed its line
            threading.Timer(0.3, real.start, args=(self,)).start()  # runs later, after all
            raise KeyboardInterrupt  # the signal broke the wait

    code = "print('child', 'line', flush=True); import time; time.sleep(60)"  # (not echoed)
    with open(tmp_path / "log.txt", "w") as log:
        monkeypatch.setattr(threading, "Thread", LateThread)
        with pytest.raises(KeyboardInterrupt):
            g.run([sys.executable, "-c", code], dict(os.environ), 60, log=log)
        monkeypatch.setattr(threading, "Thread", real)
    assert "child line" in (tmp_path / "log.txt").read_text()


def _precompile_args(**over):
    args = g.build_parser().parse_args(["--out", "unused"])
    for key, value in over.items():
        setattr(args, key, value)
    return args


def test_the_benchmarks_shapes_are_compiled_beside_the_steps_before_it(monkeypatch, tmp_path):
    """On a GPU machine (stand-ins for the environment and the steps): as the check begins,
    processes splitting the benchmark's torch-cuda shapes start (latency.py --precompile, the
    benchmark's own arguments); before the benchmark they are waited for, their output goes
    to the log and their step says what they compiled."""
    started = []

    def environment(report, env, log):
        report.gpu = True
        report.add(g.Step("environment", "pass", 0.0, "GPU: stand-in"))
        return "90"

    real_start = g.start

    def start(cmd, env, echo=False, log=None):  # the real processes print what latency.py would
        started.append(cmd)
        part = cmd[cmd.index("--precompile-part") + 1]
        code = (f"print('precompile: torch-cuda (mode compile): part {part}'); "
                "[print(f'torch-cuda: input shape 1x3x{k}x9 compiled into the cache in 1.0 s') "
                "for k in range(5)]; "
                "print('precompile: done in 3.0 s: 5 compiled, 1 already in the cache')")
        return real_start([sys.executable, "-c", code], env, echo, log)

    order = []
    monkeypatch.setattr(g, "environment_step", environment)
    monkeypatch.setattr(g, "find_tool", lambda name: None)
    monkeypatch.setattr(g, "start", start)
    monkeypatch.setattr(g.os, "cpu_count", lambda: 16)
    monkeypatch.setattr(g, "tests_step", lambda report, *a: order.append("tests") or report.add(
        g.Step("GPU tests", "pass", 1.0, "1 passed")))
    monkeypatch.setattr(g, "benchmark_step", lambda report, *a: order.append(
        [s.name for s in report.steps][-1]) or report.add(g.Step("benchmark", "pass", 1.0, "ran")))
    backends = "reference,torch-cuda,torch-cuda-compile"
    g.main(["--out", str(tmp_path / "out"), "--budget-s", "400", "--batch", "4",
            "--backends", backends])
    assert [cmd[1:5] for cmd in started] == [
        [str(ROOT / "benchmarks" / "latency.py"), "--precompile", "--precompile-part", part]
        for part in ("1/2", "2/2")]
    assert started[0][5:] == ["--backend", backends, "--image-size", g.DEFAULT_SIZES,
                              "--batch", "4"]
    assert order == ["tests", "benchmark precompile"]  # finished just before the benchmark
    report = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    (step,) = [s for s in report["steps"] if s["name"] == "benchmark precompile"]
    assert step["status"] == "pass"
    assert step["summary"] == ("2 processes beside the steps above: 10 input shapes compiled "
                               "into the cache, 2 already there")
    log = (tmp_path / "out" / "gpu_check.log").read_text()
    assert "precompile: torch-cuda (mode compile): part 1/2" in log
    assert "precompile: torch-cuda (mode compile): part 2/2" in log


@pytest.mark.parametrize("over, skip, gpu", [
    ({"backends": "torch-cuda-compile"}, {"benchmark"}, True),
    ({"backends": "torch-cuda-compile"}, set(), False),
    ({}, set(), True),
], ids=["benchmark-skipped", "no-gpu", "default-backends"])
def test_nothing_is_precompiled_where_the_benchmark_compiles_nothing(monkeypatch, over, skip, gpu):
    monkeypatch.setattr(g, "start", lambda *a, **k: pytest.fail("started a precompile"))
    report = g.Report([], 300.0, gpu=gpu)
    args = _precompile_args(**over)
    assert g.precompile_start(report, g.compiling_backends(args), args, skip, {}) == []


_START = g.start  # (tests replace g.start)


def _python(code):
    return _START([sys.executable, "-c", code], dict(os.environ))


def test_a_precompile_still_running_when_the_benchmark_must_start_is_stopped(tmp_path):
    """Its shapes so far are in the cache: the benchmark compiles the rest itself, which is
    no failure; a process that failed by itself (a compile error) fails its step."""
    report = g.Report([], 300.0, gpu=True)
    slow = _python("print('precompile: torch-cuda (mode compile): part 1/1'); print('torch-cuda: "
                   "input shape 1x3x34x60 compiled into the cache in 6.1 s', flush=True); "
                   "import time; time.sleep(60)")
    with open(tmp_path / "log.txt", "w") as log:
        g.precompile_finish(report, [slow], 1.0, log)
    assert slow.proc.poll() is not None  # killed
    (step,) = report.steps
    assert step.status == "pass" and step.summary == (
        "1 process beside the steps above: 1 input shapes compiled into the cache, 0 already "
        "there; stopped when the benchmark had to start (1 s after the tests): the benchmark "
        "compiles the rest itself")
    assert "part 1/1" in (tmp_path / "log.txt").read_text()
    failed = _python("import sys; print('precompile: torch-cuda failed: RuntimeError: boom "
                     "(the shapes compiled before it are in the cache)'); sys.exit(1)")
    g.precompile_finish(report, [failed], 30.0, None)
    assert report.steps[-1].status == "fail"
    assert report.steps[-1].summary.endswith(
        "; FAILED: precompile: torch-cuda failed: RuntimeError: boom (the shapes compiled "
        "before it are in the cache)")


def test_an_interrupted_check_leaves_no_precompile_running(monkeypatch, tmp_path):
    running = []

    def environment(report, env, log):
        report.gpu = True
        return "90"

    def start(cmd, env, echo=False, log=None):
        running.append(_python("import time; time.sleep(60)"))
        return running[-1]

    def interrupted(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(g, "environment_step", environment)
    monkeypatch.setattr(g, "find_tool", lambda name: None)
    monkeypatch.setattr(g, "start", start)
    monkeypatch.setattr(g, "tests_step", interrupted)
    with pytest.raises(KeyboardInterrupt):
        g.main(["--out", str(tmp_path / "out"), "--budget-s", "400", "--backends",
                "reference,torch-cuda-compile"])
    assert running and all(r.proc.wait(timeout=10) is not None for r in running)


def test_a_precompile_that_finds_no_gpu_for_torch_is_skipped_not_failed():
    """nvidia-smi sees the GPU, torch does not (a CPU build): the benchmark lists torch-cuda
    as not measured; its precompile is no failure either."""
    report = g.Report([], 300.0, gpu=True)
    none = _python("import sys; print('precompile: nothing compiled: torch-cuda: torch 2.11 "
                   "sees no CUDA GPU'); sys.exit(1)")
    g.precompile_finish(report, [none], 30.0, None)
    (step,) = report.steps
    assert (step.status, step.summary) == (
        "skipped", "nothing to compile here: torch-cuda: torch 2.11 sees no CUDA GPU")

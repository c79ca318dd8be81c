"""benchmarks/latency.py with a device backend, end to end on the CPU.

The ``onnxruntime-cuda`` row is what ``create_detector("onnxruntime-cuda")`` builds (the
IOBinding runner between the CUDA stages, one stream), here over ONNX Runtime's CPU provider
(tests/helpers_ort_gpu.py), the CPU build of the kernels and ``cuda_device`` over host memory
(tests/host_cudart.py). So everything a GPU run of the benchmark does with a device backend
runs here: the synchronised and end-to-end passes, the device counters, the batch rows,
parity, the profile and the targets' choice of backend; and the CUDA rows of the decode/NMS
micro-benchmark. The timings mean nothing; what is checked is that each part ran, what it
reports, and that closing released every buffer, event and stream.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

import helpers_ort_gpu  # noqa: E402
from helpers_run import load_script  # noqa: E402
import host_cudart  # noqa: E402
from helpers_kernels import (cpu_build_missing, cpu_library_path,  # noqa: E402
                             use_cpu_build_for_cuda_stages)

_MISSING = cpu_build_missing() or host_cudart.missing()
pytestmark = pytest.mark.skipif(bool(_MISSING), reason=_MISSING)

LATENCY = Path(__file__).resolve().parents[1] / "benchmarks" / "latency.py"


@pytest.fixture(scope="module")
def run(tmp_path_factory, export_dir):
    out = tmp_path_factory.mktemp("bench_device")
    # the benchmark's model is conftest's (ResNet-50, seed 0): its export is the cached one
    (out / "export").mkdir()
    (out / "export" / "fp32").symlink_to(export_dir, target_is_directory=True)
    with pytest.MonkeyPatch.context() as mp:
        host = use_cpu_build_for_cuda_stages(mp, cpu_library_path(tmp_path_factory),
                                             finalizers=False)  # close() must release all
        helpers_ort_gpu.install(mp)
        latency = load_script("benchmarks/latency.py", "tinyfaces_bench_latency_device")
        on_disk_at_profile = []
        real_profile = latency.profile_detect

        def profile_detect(bench, image, log):
            on_disk_at_profile.append(json.loads((out / "dev.json").read_text()))
            return real_profile(bench, image, log)

        mp.setattr(latency, "profile_detect", profile_detect)
        # small sizes (3 and 2 pyramid levels): 96x72's 4 levels, up to 192x144, took 2.5x
        # the CPU time for the same checks; --threads 1: see tests/test_benchmarks_smoke.py
        argv = ["--image-size", "64x48,32x24", "--repeat", "2", "--warmup", "1", "--depth", "50",
                "--backend", "reference,onnxruntime-cuda", "--candidates", "none",
                "--batch", "2", "--parity", "--profile", "--no-plot", "--threads", "1",
                "--out", str(out), "--name", "dev", "--export-dir", str(out / "export")]
        import torch

        threads = torch.get_num_threads()
        try:
            assert latency.main(argv) == 0
        finally:
            torch.set_num_threads(threads)  # the benchmark sets it for the process
        live = host.live()
        host.release_all()
    return (json.loads((out / "dev.json").read_text()), (out / "dev.md").read_text(), live,
            on_disk_at_profile)


def _backend(result, name):
    return next(b for b in result["sizes"][0]["backends"] if b["name"] == name)


def test_the_device_backend_runs_every_pass(run):
    result, _, live, _ = run
    row = _backend(result, "onnxruntime-cuda")
    assert row["status"] == "ok", row.get("reason")
    assert row["uses_gpu"] is True and row["copies_note"] == "as create_detector('onnxruntime-cuda') builds it"
    assert len(row["stages"]["total"]["samples_ms"]) == len(row["end_to_end"]["samples_ms"]) == 2
    # the same image from page-locked memory, uploaded without staging, alternating with those
    assert len(row["end_to_end_page_locked"]["samples_ms"]) == 2
    assert "end_to_end_page_locked_note" not in row  # neither failed nor staged
    assert "end_to_end_page_locked" not in _backend(result, "reference")
    assert set(row["stages"]) >= {"total", "preprocess", "network", "decode", "nms"}
    stats = row["device_stats"]
    assert stats["num_candidates"] >= row["detections"] > 0
    ref = _backend(result, "reference")
    assert row["speedup_vs_reference"] == pytest.approx(
        ref["stages"]["total"]["median_ms"] / row["stages"]["total"]["median_ms"])
    assert live == {"device": 0, "pinned": 0, "streams": 0, "events": 0}  # all closed


def test_batch_parity_and_profile_cover_the_device_backend(run):
    result, md, _, _ = run
    size = result["sizes"][0]
    (batch,) = [r for r in size["batch"]["rows"] if r["backend"] == "onnxruntime-cuda"]
    assert batch["status"] == "ok" and batch["batch"] == 2 and batch["gain"] > 0
    (parity,) = [r for r in size["parity"]["rows"] if r["backend"] == "onnxruntime-cuda"]
    assert parity["passed"], parity.get("failures")
    assert parity["test"] == parity["reference"] == parity["matched"] > 0
    profile = size["profile"]
    assert profile["backend"] == "onnxruntime-cuda" and profile["status"] == "ok"
    assert "`onnxruntime-cuda`" in md
    assert "; from a page-locked image (`Detector.image_buffer`: no staging copy) " in md
    assert "profile" not in result["sizes"][1]


def test_the_image_upload_is_timed_each_way_and_lands_whole(run):
    """bench_upload.py over host memory: every way at every size, in the Markdown too (the
    run fails where a way's upload does not land as the host image)."""
    result, md, _, _ = run
    upload = result["upload"]
    assert upload["status"] == "ok", upload.get("reason")
    assert [r["image_size"] for r in upload["rows"]] == [[64, 48], [32, 24]]
    for row in upload["rows"]:
        *staged, direct = row["ways"]
        names = [w["name"] for w in staged]
        assert names[0].endswith("(runtime default)") and names[-1].startswith("one piece")
        assert staged[-1]["chunks"] == 1
        for way in staged:
            assert len(way["copy"]["samples_ms"]) == len(way["copy_upload"]["samples_ms"]) \
                == upload["rounds"] >= 20
        assert direct["name"] == "page-locked image (Detector.image_buffer): no staging copy"
        assert direct["copy"] is None and direct["chunks"] == 1
        assert len(direct["copy_upload"]["samples_ms"]) == upload["rounds"]
    assert "## Image upload: staging copy and host-to-device transfer" in md
    assert "| 64x48 (0.0 MB) | one piece, 1 thread (the runtime before 2026-12-04) | 1 |" in md
    assert "| 64x48 (0.0 MB) | page-locked image (Detector.image_buffer): no staging copy | 1 | " \
           "- | " in md


@pytest.mark.parametrize("fault", ["not sent", "not copied", "page-locked not sent"])
def test_the_image_upload_benchmark_refuses_a_wrong_landing(monkeypatch, tmp_path_factory,
                                                            fault):
    """A chunk not uploaded, or (in the check only, after the timed rounds left the whole
    image in the page-locked buffer) not copied into it, or the page-locked image's transfer
    only half sent: the run fails, naming the way."""
    host = use_cpu_build_for_cuda_stages(monkeypatch, cpu_library_path(tmp_path_factory))
    monkeypatch.syspath_prepend(str(LATENCY.parent))
    bench_upload = importlib.import_module("bench_upload")
    from tinyfaces_trt.runtime.backends import staging

    if fault == "page-locked not sent":
        monkeypatch.setattr(bench_upload, "upload_page_locked", lambda device, frame, stream:
                            device.upload(frame[:frame.size // 2], stream))
        monkeypatch.setattr(bench_upload, "MIN_ROUNDS", 1)
        got = bench_upload.run_upload([(640, 600)], repeat=1, warmup=0, log=lambda _: None)
        assert got["status"] == "failed"
        assert got["reason"] == ("RuntimeError: page-locked image (Detector.image_buffer): no "
                                 "staging copy: the uploaded image differs from the host image")
        assert host.live() == {"device": 0, "pinned": 0, "streams": 0, "events": 0}
        return

    real, real_copy = staging.stage_and_upload, staging._copy_range
    timing_calls = 2 * len(bench_upload.ways())  # one round (MIN_ROUNDS 1, repeat 1)
    calls = []

    def first_chunk_only(images, pinned, upload, threads, chunk):
        calls.append(1)
        if fault == "not sent":
            real(images, pinned, lambda s, e: upload(s, e) if s == 0 else None, threads, chunk)
            return
        checking = len(calls) > timing_calls
        monkeypatch.setattr(staging, "_copy_range", lambda staged, sources, s, e: (
            None if checking and s > 0 else real_copy(staged, sources, s, e)))
        real(images, pinned, upload, threads, chunk)

    monkeypatch.setattr(staging, "stage_and_upload", first_chunk_only)
    monkeypatch.setattr(bench_upload, "MIN_ROUNDS", 1)
    # 1.15 MB: two chunks for the chunked ways, one piece for the last (which lands whole,
    # so only a check of each way catches the chunked ones)
    got = bench_upload.run_upload([(640, 600)], repeat=1, warmup=0, log=lambda _: None)
    assert got["status"] == "failed"
    assert got["reason"].startswith("RuntimeError: 1 MiB chunks, ")
    assert got["reason"].endswith(": the uploaded image differs from the host image")
    assert host.live() == {"device": 0, "pinned": 0, "streams": 0, "events": 0}


def test_the_profile_comes_last_with_everything_else_saved(run):
    """The profiler over CUDA graphs may hang or crash the process: by then every size,
    the first one's batch and parity included, is on disk (its backend was kept open)."""
    result, _, live, (saved,) = run
    assert [s["image_size"] for s in saved["sizes"]] == [[64, 48], [32, 24]]
    assert all("partial" not in s for s in saved["sizes"]) and saved["complete"]
    first = saved["sizes"][0]
    assert "batch" in first and first["parity"]["status"] == "ok"
    assert first["profile"]["status"] == "running"  # what a hang or crash would leave
    assert result["sizes"][0]["profile"]["status"] == "ok"
    assert live["device"] == 0  # and the kept backend was closed after it




def test_cuda_decode_nms_rows_run_on_the_kernels(monkeypatch, tmp_path_factory):
    """The decode/NMS micro-benchmark's CUDA rows (on a smaller map than the benchmark's
    270x480: the CPU build takes seconds per decode of that one)."""
    from tinyfaces_trt.core.config import DetectorConfig

    host = use_cpu_build_for_cuda_stages(monkeypatch, cpu_library_path(tmp_path_factory))
    monkeypatch.syspath_prepend(str(LATENCY.parent))
    bench_scores = importlib.import_module("bench_scores")
    (row,) = bench_scores.run_decode_nms([300], DetectorConfig(), repeat=1, warmup=0,
                                         map_hw=(48, 64), with_reference=False,
                                         log=lambda _: None)
    assert host.live() == {"device": 0, "pinned": 0, "streams": 0, "events": 0}
    impls = {r["name"]: r for r in row["implementations"]}
    assert impls["numpy (runtime)"]["candidates"] == row["candidates"] > 300
    # the CPU build's default rule first (the lookahead rule: warp lanes are slow fibers there)
    CUDA_NAMES = ("cuda (CudaPostprocessor, lookahead NMS rule)", "cuda, warp NMS rule",
                  "cuda, walk-order NMS rule")
    assert tuple(bench_scores.cuda_rows().values()) == CUDA_NAMES
    for name in CUDA_NAMES:
        assert impls[name]["status"] == "ok", impls[name].get("reason")
        assert impls[name]["candidates"] == row["candidates"]
        assert impls[name]["kept"] == impls["numpy (runtime)"]["kept"] > 0
        # decode + NMS also timed without the wait between them (the same boxes: checked)
        assert impls[name]["together"]["median_ms"] > 0
        vs = impls[name]["vs_numpy"]
        assert vs["passed"] and vs["reference"] == vs["test"] == vs["matched"] > 0, vs
    assert "together" not in impls["numpy (runtime)"]
    # where the default sorts in one block (here: the CPU build), a row with CUB's sorts
    cub = impls["cuda, CUB's device-wide sorts (NMS size 32768)"]
    assert cub["status"] == "ok" and cub["kept"] == impls["numpy (runtime)"]["kept"], cub
    assert cub["vs_numpy"]["passed"] and cub["candidates"] == row["candidates"]
    assert [i["name"] for i in row["implementations"]][-1] == cub["name"]
    assert bench_scores.cuda_variants(16_385) == [(r, n, None) for r, n in
                                                  bench_scores.cuda_rows().items()]
    bench_report = importlib.import_module("bench_report")
    kept = impls["numpy (runtime)"]["kept"]
    def kept_cells() -> list[str]:
        lines = bench_report._decode_nms_table([row])
        return [next(line for line in lines if f"| {name} |" in line).split("|")[-2].strip()
                for name in CUDA_NAMES]

    assert kept_cells() == [f"{kept}, numpy's ({kept} matched, probability within "
                            f"{impls[name]['vs_numpy']['max_score_diff']:.1g})" for name in CUDA_NAMES]
    impls[CUDA_NAMES[1]]["vs_numpy"].update(passed=False, missing_firm=2, extra_firm=1, failures=[])
    assert kept_cells()[1] == f"{kept}, **NOT numpy's**: 2 missing, 1 extra of {kept}"
    impls[CUDA_NAMES[1]]["vs_numpy"]["failures"] = ["max probability difference 0.2 > 1e-05"]
    assert kept_cells()[1] == f"{kept}, **NOT numpy's**: max probability difference 0.2 > 1e-05"
    # --profile: one decode + NMS of the default rule under the profiler, on the same map (no
    # CUDA activity on the CPU build: no kernel, only the wall time)
    (profiled,) = bench_scores.profile_decode_nms([300], DetectorConfig(), map_hw=(48, 64),
                                                  log=lambda _: None)
    assert host.live() == {"device": 0, "pinned": 0, "streams": 0, "events": 0}
    assert profiled["status"] == "ok", profiled
    assert (profiled["name"], profiled["candidates"]) == (CUDA_NAMES[0], row["candidates"])
    assert profiled["wall_ms"] > 0 and profiled["groups"] == {} and profiled["kernels"] == []


def test_targets_are_about_the_device_backend(run):
    """Without torch-cuda, the targets take the GPU backend that ran (at the largest size)."""
    result, md, _, _ = run
    targets = {t["key"]: t for t in result["targets"]}
    ref, row = _backend(result, "reference"), _backend(result, "onnxruntime-cuda")
    speed = targets["speedup"]
    assert speed["where"] == "`onnxruntime-cuda` at 64x48"
    if ref["uses_gpu"]:
        assert speed["measured"] == pytest.approx(ref["stages"]["total"]["median_ms"]
                                                  / row["end_to_end"]["median_ms"])
    else:  # torch sees no GPU here: the reference ran on the CPU, no "same GPU" speed-up
        assert speed["measured"] is None and speed["verdict"] == (
            "not measured: the reference ran on the CPU here, not on the GPU (same GPU, same run)")
    for key in ("overhead", "network_tflops", "batch_gain"):
        assert targets[key]["where"] == "`onnxruntime-cuda` at 64x48"
        assert targets[key]["measured"] > 0 and targets[key]["verdict"]
    assert targets["batch_gain"]["detail"].endswith("(batch 2)")
    assert targets["decode_nms_10k"]["verdict"] == "not measured: no 10000-candidate row (--candidates)"
    assert "## Targets" in md and "`onnxruntime-cuda` at 64x48" in md


def test_the_decode_nms_profile_comes_last_with_everything_saved_before_it(monkeypatch,
                                                                            tmp_path_factory,
                                                                            tmp_path):
    """--profile --candidates on the CPU build (a 48x64 map: the benchmark's 270x480 takes
    seconds per decode there): the result is saved complete, the decode/NMS profile marked
    running, before that profile runs last; then it is in the report."""
    use_cpu_build_for_cuda_stages(monkeypatch, cpu_library_path(tmp_path_factory))
    latency = load_script("benchmarks/latency.py", "tinyfaces_bench_latency_decode_profile")
    bench_scores = importlib.import_module("bench_scores")
    real_rows, real_profile = bench_scores.run_decode_nms, bench_scores.profile_decode_nms
    monkeypatch.setattr(bench_scores, "run_decode_nms",
                        lambda *args, **kw: real_rows(*args, map_hw=(48, 64), **kw))
    on_disk = []

    def profile(counts, config, log):
        on_disk.append(json.loads((tmp_path / "d.json").read_text()))
        return real_profile(counts, config, map_hw=(48, 64), log=log)

    monkeypatch.setattr(bench_scores, "profile_decode_nms", profile)
    import torch

    threads = torch.get_num_threads()
    try:
        assert latency.main(["--image-size", "32x24", "--repeat", "1", "--warmup", "0",
                             "--depth", "50", "--backend", "reference", "--candidates", "300",
                             "--profile", "--no-plot", "--threads", "1", "--out", str(tmp_path),
                             "--name", "d"]) == 0
    finally:
        torch.set_num_threads(threads)
    (saved,) = on_disk
    assert saved["complete"] and saved["decode_nms"]["profile"] == [
        {"target": 300, "status": "running", "reason": latency.PROFILE_CUT}]
    result = json.loads((tmp_path / "d.json").read_text())
    (entry,) = result["decode_nms"]["profile"]
    assert entry["status"] == "ok" and entry["target"] == 300, entry
    assert "### Where decode + NMS spend their time" in (tmp_path / "d.md").read_text()

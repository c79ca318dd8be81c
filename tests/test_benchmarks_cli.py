"""The benchmark scripts' arguments and errors: bad arguments are argparse's usage error (exit
2), unusable files and backends that cannot run here one line and exit 1, before any work and
without writing anything; result names never replace another run's files silently."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from helpers_run import load_script

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def latency():
    return load_script("benchmarks/latency.py", "tinyfaces_bench_latency_cli")


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@pytest.mark.parametrize("argv, message", [
    (["--threads", "-1"], "argument --threads: -1 must be >= 1"),
    (["--candidates", "-5"], "--candidates must be positive integers (or 'none'), got '-5'"),
    (["--candidates", "1000,0"], "--candidates must be positive integers (or 'none'), got "
                                 "'1000,0'"),
    (["--max-contention", "-0.5"], "argument --max-contention: -0.5 must be between 0 and 1"),
    (["--max-contention", "1.5"], "argument --max-contention: 1.5 must be between 0 and 1"),
    (["--budget-s", "0"], "argument --budget-s: 0.0 must be > 0 and finite"),
    (["--retries", "-1"], "argument --retries: -1 must be >= 0"),
    (["--candidates-repeat", "0"], "argument --candidates-repeat: 0 must be >= 1"),
    (["--name", "a/b"], "--name is a file name stem without a folder, got 'a/b'"),
    (["--save-json", "x.json"], "--save-json goes with --report-only (a measuring run writes "
                                "its JSON in --out)"),
    (["--precompile-part", "1/2"], "--precompile-part goes with --precompile"),
    (["--precompile", "--precompile-part", "3/2"],
     "--precompile-part: K/N needs 1 <= K <= N, got '3/2'"),
    (["--precompile", "--precompile-part", "half"],
     "--precompile-part: expected K/N, e.g. 1/2, got 'half'"),
    (["--precompile", "--report-only", "r.json"],
     "--precompile measures nothing and --report-only rewrites a result: choose one"),
])
def test_latency_bad_arguments_are_usage_errors(latency, capsys, argv, message):
    with pytest.raises(SystemExit) as info:
        latency.parse_args(argv)
    assert info.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1] == f"latency.py: error: {message}"


def test_latency_bad_files_are_one_line_before_any_work(latency, tmp_path, capsys):
    text = tmp_path / "notes.txt"
    text.write_text("not an image\n")
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    before = _files(tmp_path)
    cases = [
        (["--image", str(tmp_path / "none.jpg")], f"--image {tmp_path / 'none.jpg'}: "
                                                  "No such file or directory"),
        (["--image", str(text)], f"--image {text}: UnidentifiedImageError: cannot identify "
                                 f"image file '{text}'"),
        (["--report-only", str(tmp_path / "none.json")],
         f"--report-only {tmp_path / 'none.json'}: No such file or directory"),
        (["--report-only", str(text)], f"--report-only {text}: JSONDecodeError: Expecting "
                                       "value: line 1 column 1 (char 0)"),
        (["--weights", str(tmp_path / "none.pth")], f"--weights {tmp_path / 'none.pth'}: "
                                                    "no such file"),
        (["--out", str(a_file)], f"--out {a_file} exists and is not a folder; give a folder"),
        (["--out", str(a_file / "sub")], f"cannot create --out {a_file / 'sub'}: Not a "
                                         "directory; give a writable folder"),
    ]
    unused = ["--out", str(tmp_path / "unused"), "--candidates", "none", "--depth", "50",
              "--image-size", "40x30", "--repeat", "1", "--warmup", "0"]  # cheap, if it ran
    for argv, message in cases:
        assert latency.main(["--backend", "torch", *unused, *argv]) == 1, argv
        assert capsys.readouterr().err == f"latency.py: error: {message}\n"
    assert _files(tmp_path) == before


def test_latency_report_only_never_writes_the_json_it_reads(latency, tmp_path, capsys):
    """--report-only rewrote the JSON it read; --save-json naming that file (also through a
    link or another spelling) is refused before any work, nothing written."""
    source = ROOT / "benchmarks" / "results" / "cpu-2026-11-24.json"
    run = tmp_path / "run.json"
    run.write_bytes(source.read_bytes())
    (tmp_path / "link.json").symlink_to(run)
    before = _files(tmp_path)
    for same in (run, tmp_path / "link.json", tmp_path / "sub" / ".." / "run.json"):
        with pytest.raises(SystemExit) as info:
            latency.main(["--report-only", str(run), "--save-json", str(same)])
        assert info.value.code == 2
        assert capsys.readouterr().err.splitlines()[-1] == (
            f"latency.py: error: --save-json {same} is the JSON --report-only reads, which it "
            "leaves as it is; give another file")
    assert _files(tmp_path) == before


def test_latency_bad_image_ends_without_a_traceback(tmp_path):
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "latency.py"),
                           "--image", str(tmp_path / "none.jpg"), "--out", str(tmp_path / "o")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert done.stderr == (f"latency.py: error: --image {tmp_path / 'none.jpg'}: No such file "
                           "or directory\n")
    assert not (tmp_path / "o").exists()


def test_latency_without_a_backend_that_can_run_writes_nothing(latency, tmp_path, capsys,
                                                               monkeypatch):
    """Only GPU backends asked for, on a machine without a GPU: exit 1, why each cannot run,
    and that day's result is left alone (it was replaced by an empty one marked complete)."""
    import bench_backends

    reasons = {"torch-cuda": "torch sees no CUDA GPU", "tensorrt-fp16-cuda": "no CUDA GPU visible"}
    monkeypatch.setattr(bench_backends, "BACKENDS", tuple(
        dataclasses.replace(b, probe=lambda r=reasons[b.name]: r) if b.name in reasons else b
        for b in bench_backends.BACKENDS))
    out = tmp_path / "results"
    out.mkdir()
    (out / "cpu-2026-01-01.json").write_text("{}")
    argv = ["--backend", "torch-cuda,tensorrt-fp16-cuda", "--out", str(out)]
    assert latency.main(argv) == 1
    assert capsys.readouterr().err == (
        "latency.py: error: no requested backend can run here: torch-cuda: torch sees no CUDA "
        "GPU; tensorrt-fp16-cuda: no CUDA GPU visible\n")
    assert _files(out) == {"cpu-2026-01-01.json": b"{}"}
    assert latency.main([*argv[:2], "--out", str(tmp_path / "new")]) == 1
    assert not (tmp_path / "new").exists()


@pytest.fixture
def fake_precompile(latency, monkeypatch):
    """latency.py --precompile over a stub model and a torch-cuda whose precompile is stood
    in: returns the calls it got ((context, shapes) each) and a setter of what it does."""
    pytest.importorskip("torch")
    import bench_backends
    from tinyfaces_trt.core.config import DetectorConfig
    from tinyfaces_trt.export.torch_cuda import ShapeRecord

    calls, behaviour = [], ["compile"]

    def precompile(ctx, shapes):
        calls.append((ctx, list(shapes)))
        if behaviour[0] == "skip":
            raise bench_backends.Skip("torch sees no CUDA GPU")
        if behaviour[0] == "fail":
            raise RuntimeError("boom")
        # the first shape was in the cache already
        return {s: ShapeRecord("compile", 1.0, cache_loaded=k == 0) for k, s in enumerate(shapes)}

    monkeypatch.setattr(bench_backends, "BACKENDS", tuple(
        dataclasses.replace(b, precompile=precompile) if b.name == "torch-cuda-compile" else b
        for b in bench_backends.BACKENDS))
    monkeypatch.setattr(latency, "_load_model",
                        lambda args: ("stub model", DetectorConfig(), "stub weights"))
    return calls, lambda value: behaviour.__setitem__(0, value)


def test_precompile_compiles_its_part_of_the_runs_shapes(latency, capsys, fake_precompile,
                                                         tmp_path):
    """Each of N processes takes every N-th of the shapes the run will prepare, in the run's
    order, into the run's cache folder; its last line is what gpu_check reads."""
    import bench_precompile
    from tinyfaces_trt.core.cli import ImageSize
    from tinyfaces_trt.core.config import DetectorConfig

    calls, _ = fake_precompile
    argv = ["--precompile", "--precompile-part", "2/2", "--backend", "reference,torch-cuda-compile",
            "--image-size", "1920x1080,1280x720", "--batch", "8", "--cache-dir", str(tmp_path)]
    assert latency.main(argv) == 0
    shapes = bench_precompile.run_shapes([ImageSize(1920, 1080), ImageSize(1280, 720)], 8,
                                         DetectorConfig())
    assert shapes[:2] == [(1, 3, 34, 60), (1, 3, 68, 120)] and len(shapes) == 8 + 8 + 7
    assert shapes[8:10] == [(8, 3, 34, 60), (8, 3, 68, 120)]  # the batch after its size
    assert shapes[-1] == (1, 3, 1440, 2560)
    ((ctx, got),) = calls
    assert got == shapes[1::2]
    assert (ctx.model, ctx.cache_dir) == ("stub model", tmp_path)
    err = capsys.readouterr().err.splitlines()
    assert err[0] == ("precompile: torch-cuda-compile: 11 of the run's 23 input shapes "
                      "(part 2/2)")
    gpu_check = load_script("tools/gpu_check.py", "tinyfaces_gpu_check_precompile")
    assert gpu_check._PRECOMPILED.findall(err[-1]) == [("10", "1")]
    assert latency.main(["--precompile", "--image-size", "640x480"]) == 0  # all backends
    assert calls[-1][1] == bench_precompile.run_shapes([ImageSize(640, 480)], 0,
                                                       DetectorConfig())


def test_precompile_failures_exit_1(latency, capsys, fake_precompile):
    _, behave = fake_precompile
    behave("fail")
    assert latency.main(["--precompile", "--backend", "torch-cuda-compile"]) == 1
    assert capsys.readouterr().err.splitlines()[-1] == (
        "precompile: torch-cuda-compile failed: RuntimeError: boom (the shapes compiled before "
        "it are in the cache)")
    behave("skip")
    assert latency.main(["--precompile", "--backend", "torch-cuda-compile"]) == 1
    assert capsys.readouterr().err.splitlines()[-1] == (
        "precompile: nothing compiled: torch-cuda-compile: torch sees no CUDA GPU")
    assert latency.main(["--precompile", "--backend", "reference,torch-cuda"]) == 1
    assert capsys.readouterr().err.splitlines()[-1] == (
        "precompile: none of reference, torch-cuda compiles its network into a cache "
        "(torch-cuda-compile does): nothing to do")


def test_the_torch_cuda_rows_run_create_detectors_torch_modes(latency, monkeypatch, tmp_path):
    """torch-cuda follows --torch-mode (default fused: CUDA graphs of the fused network),
    torch-cuda-compile compiles, and its precompile builds the same runner (same cache)."""
    pytest.importorskip("torch")
    import bench_backends
    from tinyfaces_trt.export import torch_cuda

    made = []

    class Recording:
        def __init__(self, model, **kwargs):
            made.append(kwargs)

    monkeypatch.setattr(torch_cuda, "TorchCudaRunner", Recording)
    ctx = bench_backends.BenchContext(model="m", config=None, levels=[], image_hw=(0, 0),
                                      threads=1, export_root=tmp_path, cache_dir=tmp_path)
    assert ctx.torch_mode == "fused"
    for torch_mode in ("fused", "compile"):
        bench_backends._device_runner(ctx, "float16", torch_mode, stream=5)
    assert [(k["mode"], k["fuse_epilogues"], k["stream"]) for k in made] == [
        ("graphs", True, 5), ("compile", False, 5)]
    monkeypatch.setattr(bench_backends, "_torch_cuda_reason", lambda: None)
    monkeypatch.setattr(Recording, "precompile", lambda self, shapes: {}, raising=False)
    monkeypatch.setattr(Recording, "close", lambda self: None, raising=False)
    spec = {b.name: b for b in bench_backends.BACKENDS}["torch-cuda-compile"]
    assert spec.precompile(ctx, [(1, 3, 8, 8)]) == {}
    assert (made[-1]["mode"], made[-1]["fuse_epilogues"], made[-1]["cache_dir"]) == (
        "compile", False, tmp_path)


def test_the_torch_cuda_row_takes_the_factorys_level_concurrency_and_the_in_turn_row_not(
        latency, monkeypatch, tmp_path):
    """torch-cuda runs levels side by side as create_detector does
    (detectors.TORCH_CUDA_CONCURRENT_LEVELS, in modes fused and graphs), torch-cuda-in-turn
    never."""
    pytest.importorskip("torch")
    import bench_backends
    from tinyfaces_trt import detectors
    from tinyfaces_trt.runtime.backends import cuda_device, cuda_stages

    closed = []
    part = SimpleNamespace(close=lambda: closed.append(1), handle=5)
    monkeypatch.setattr(cuda_device, "Stream", lambda: part)
    monkeypatch.setattr(cuda_stages, "cuda_stages", lambda config, stream: (part, part))
    asked = []

    class Stop(Exception):
        pass

    def device_runner(ctx, dtype_name, torch_mode, **options):
        asked.append((torch_mode, options["concurrent_levels"]))
        raise Stop

    monkeypatch.setattr(bench_backends, "_device_runner", device_runner)
    ctx = bench_backends.BenchContext(model="m", config=None, levels=[], image_hw=(0, 0),
                                      threads=1, export_root=tmp_path, cache_dir=tmp_path)
    specs = {b.name: b for b in bench_backends.BACKENDS}
    assert "torch-cuda-concurrent" not in specs  # torch-cuda itself since run 5
    for name in ("torch-cuda", "torch-cuda-in-turn"):
        with pytest.raises(Stop):
            specs[name].build(ctx)
    assert detectors.TORCH_CUDA_CONCURRENT_LEVELS is True
    assert asked == [("fused", True), ("fused", False)]
    assert len(closed) == 6  # the stream and both stages, each time
    for torch_mode in ("fused", "graphs"):
        ctx.torch_mode = torch_mode
        for name in ("torch-cuda", "torch-cuda-in-turn"):
            with pytest.raises(Stop):
                specs[name].build(ctx)
        assert asked[-2:] == [(torch_mode, True), (torch_mode, False)]
    # torch.compile's graphs may share cuBLAS's workspace: not side by side, so the in-turn
    # row would measure torch-cuda again
    for torch_mode in ("compile", "eager"):
        ctx.torch_mode = torch_mode
        with pytest.raises(Stop):
            specs["torch-cuda"].build(ctx)
        assert asked[-1] == (torch_mode, False)
        with pytest.raises(bench_backends.Skip, match=f"the torch-cuda row runs every level in "
                                                      f"turn in torch mode {torch_mode}"):
            specs["torch-cuda-in-turn"].build(ctx)
    assert len(closed) == 6 + 3 * 6  # nothing made for a skipped row
    monkeypatch.setattr(detectors, "TORCH_CUDA_CONCURRENT_LEVELS", False)  # switched off
    ctx.torch_mode = "fused"
    with pytest.raises(Stop):
        specs["torch-cuda"].build(ctx)
    assert asked[-1] == ("fused", False)
    with pytest.raises(bench_backends.Skip, match="runs every level in turn in torch mode fused"):
        specs["torch-cuda-in-turn"].build(ctx)


def _stat(ms):
    return {"median_ms": ms, "p90_ms": ms, "min_ms": ms, "samples_ms": [ms]}


def _fake_size(status="ok"):
    """What run_size returns for a 40x30 image: one backend, ok or skipped."""
    backend = {"name": "torch", "description": "fake", "precision": "fp32", "build_s": 0.0004}
    if status == "ok":
        backend.update(status="ok", detections=0, stages={
            k: _stat(1.0) for k in ("total", "network", "network[L0]", "other")})
    else:
        backend.update(status="skipped", reason="torch is not installed")
    return {"image_size": [40, 30], "image": "synthetic", "status": "ok", "seconds": 0.1,
            "levels": [{"index": 0, "exponent": 0, "scale": 1.0, "height": 30, "width": 40}],
            "backends": [backend]}


@pytest.fixture
def fake_run(latency, monkeypatch):
    """latency.main without measuring: a stub model, a fake size (saved partial first, as the
    real one is), no GPU in the machine description. Returns a setter of the size's status."""
    pytest.importorskip("torch")
    from tinyfaces_trt.core.config import DetectorConfig

    def load_model(args):
        args.depth, args.variant = 50, "pytorch"
        return None, DetectorConfig(), "stub weights"

    status = ["ok"]

    def run_size(size, first, args, model, config, threads, export_root, deadline, estimate_s,
                 log, checkpoint=None, to_profile=None):
        entry = _fake_size(status[0])
        checkpoint({**entry, "partial": "fake"})
        return entry

    real = latency.machine_description
    monkeypatch.setattr(latency, "_load_model", load_model)
    monkeypatch.setattr(latency, "run_size", run_size)
    monkeypatch.setattr(latency, "machine_description", lambda t: {**real(t), "gpu": None})
    return lambda value: status.__setitem__(0, value)


def test_latency_default_name_never_replaces_another_run(latency, tmp_path, capsys, fake_run):
    from bench_common import today

    out = tmp_path / "results"
    out.mkdir()
    stem = f"cpu-{today()}"
    old = {f"{stem}.json": b"{}", f"{stem}.md": b"old", f"{stem}.png": b"old png"}
    for name, data in old.items():
        (out / name).write_bytes(data)
    argv = ["--backend", "torch", "--candidates", "none", "--no-plot", "--out", str(out),
            "--export-dir", str(tmp_path / "export")]
    assert latency.main(argv) == 0
    err = capsys.readouterr().err
    assert (f"{out / stem}.* exist (another run): this run writes {stem}-2.* (--name NAME to "
            "choose, or to replace a result)") in err
    files = _files(out)
    assert {k: files[k] for k in old} == old
    assert sorted(set(files) - set(old)) == [f"{stem}-2.json", f"{stem}-2.md"]
    result = json.loads(files[f"{stem}-2.json"])
    assert result["name"] == f"{stem}-2" and result["complete"] is True
    assert "; built in 400 µs" in files[f"{stem}-2.md"].decode()

    # an explicit --name replaces all of its files: the old PNG does not stay beside them
    assert latency.main([*argv, "--name", stem]) == 0
    files = _files(out)
    assert f"{stem}.png" not in files and json.loads(files[f"{stem}.json"])["name"] == stem
    assert sorted(files) == [f"{stem}-2.json", f"{stem}-2.md", f"{stem}.json", f"{stem}.md"]


def test_latency_run_where_no_backend_ran_leaves_no_result(latency, tmp_path, capsys, fake_run):
    """The probes passed but nothing ran: exit 1 with why, and the run's partial files go."""
    from bench_common import today

    fake_run("skipped")
    out = tmp_path / "results"
    out.mkdir()
    (out / f"cpu-{today()}.json").write_text("{}")
    assert latency.main(["--backend", "torch", "--candidates", "none", "--out", str(out),
                         "--export-dir", str(tmp_path / "export")]) == 1
    assert capsys.readouterr().err.splitlines()[-1] == (
        "latency.py: error: no requested backend ran: torch: skipped: torch is not installed")
    assert _files(out) == {f"cpu-{today()}.json": b"{}"}


def test_latency_run_cut_by_its_budget_keeps_what_it_measured(latency, tmp_path, capsys,
                                                             monkeypatch, fake_run):
    """The decode/NMS rows ran, then the time budget left the image size out: the GPU check
    reads both (a size left out for time, CUDA decode/NMS against numpy), so the run keeps
    them (it deleted them and exited 1)."""
    out = tmp_path / "results"
    monkeypatch.setattr(latency, "run_size", lambda size, *a, **k: {
        "image_size": [size.width, size.height], "status": "skipped", "backends": [],
        "reason": "time budget: about 66 s needed, 4 s left"})
    assert latency.main(["--backend", "torch", "--candidates", "1000", "--candidates-repeat",
                         "1", "--warmup", "0", "--out", str(out), "--name", "latency", "--no-plot",
                         "--export-dir", str(tmp_path / "export")]) == 0
    result = json.loads((out / "latency.json").read_text())
    assert result["complete"] and [r["target"] for r in result["decode_nms"]["rows"]] == [1000]
    assert result["sizes"][0]["reason"].startswith("time budget")
    assert "no requested backend ran: image size" in capsys.readouterr().err


def test_anonymize_bad_arguments_and_backends(tmp_path, capsys):
    pytest.importorskip("torch")
    anonymize = load_script("benchmarks/anonymize_video.py", "anonymize_video_cli")
    with pytest.raises(SystemExit) as info:
        anonymize.main(["--sizes", "64x48,65x49"])
    assert info.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        "anonymize_video.py: error: argument --sizes: clip sizes need an even width and height "
        "(H.264 4:2:0), got 65x49")
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    assert anonymize.main(["--out", str(a_file)]) == 1
    assert capsys.readouterr().err == (f"anonymize_video.py: error: --out {a_file} exists and is "
                                       "not a folder; give a folder\n")
    import torch

    if torch.cuda.is_available():
        return
    assert anonymize.main(["--backend", "torch-cuda", "--out", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err.splitlines()
    assert err[-1].startswith("anonymize_video.py: error: torch-cuda needs a CUDA GPU visible to "
                              "torch") and "Traceback" not in "\n".join(err)
    assert not (tmp_path / "o").exists()


def test_anonymize_names_and_reports_where_the_detector_ran():
    anonymize = load_script("benchmarks/anonymize_video.py", "anonymize_video_cli")
    assert [anonymize.ran_on(b) for b in ("onnxruntime", "torch", "torch-cuda", "tensorrt",
                                          "onnxruntime-cuda")] == ["cpu", "cpu", "gpu", "gpu", "gpu"]
    assert [anonymize.batch_counts(f, 4) for f in (2, 4, 10)] == [[2], [4], [4, 2]]
    doc = {"backend": "auto", "backend_resolved": "tensorrt", "ran_on": "gpu", "fp16": True,
           "frames_per_clip": 2, "load_average_1min": {"before": 0.5, "after": 1.0}, "rows": [],
           "machine": {"cpu_model": "EPYC", "usable_cores": 16, "gpu": {"name": "NVIDIA H100"}}}
    lines = anonymize.markdown(doc).splitlines()
    assert lines[0] == "# tf-anonymize frames/s (auto (tensorrt) fp16, on the GPU)"
    assert lines[2].startswith("Machine: EPYC, 16 cores, GPU: NVIDIA H100; 2 frames per clip")
    doc.update(backend="torch", backend_resolved="torch", ran_on="cpu", fp16=False)
    lines = anonymize.markdown(doc).splitlines()
    assert lines[0] == "# tf-anonymize frames/s (torch, on the CPU)"
    assert lines[2].startswith("Machine: EPYC, 16 cores, no GPU used (NVIDIA H100 idle); ")


def test_scaleout_arguments_and_report_header(capsys):
    scaleout = load_script("benchmarks/scaleout.py", "scaleout_cli")
    for argv, message in [(["--size", "abc"], "argument --size: image size must be WIDTHxHEIGHT "
                                              "with positive integers, e.g. 1920x1080; got 'abc'"),
                          (["--repeat", "0"], "argument --repeat: 0 must be >= 1"),
                          (["--serve-size", "0x10"], "argument --serve-size: image size must be "
                                                     "WIDTHxHEIGHT with positive integers, e.g. "
                                                     "1920x1080; got '0x10'")]:
        with pytest.raises(SystemExit) as info:
            scaleout.parse_args(argv)
        assert info.value.code == 2
        assert capsys.readouterr().err.splitlines()[-1] == f"scaleout.py: error: {message}"
    args = scaleout.parse_args([])
    assert (str(args.size), str(args.serve_size), args.repeat) == ("128x96", "64x48", 3)
    report = {"machine": {"cpu_model": "EPYC", "usable_cores": 16, "memory_gib": 128.0,
                          "gpu": {"name": "NVIDIA H100"}}, "date": "2026-12-02",
              "ran_on": "cpu", "backend": "onnxruntime", "untrained": True, "model": "/x",
              "batch_images": 4, "batch_size": "32x24", "repeat": 1, "batch": [],
              "serve_requests": 6, "serve_size": "64x48", "serve_concurrency": 2,
              "serve_max_batch": 8, "serve": []}
    lines = scaleout._markdown(report).splitlines()
    assert lines[0] == ("# Scale-out on EPYC (16 cores, 128.0 GiB, no GPU used (NVIDIA H100 "
                        "idle)), 2026-12-02")
    assert lines[2] == ("Detector: onnxruntime on the CPU, the seeded UNTRAINED default network "
                        "(timings are the real network's, detections meaningless).")
    report.update(ran_on="gpu", backend="tensorrt", untrained=False)
    lines = scaleout._markdown(report).splitlines()
    assert lines[0] == "# Scale-out on EPYC (16 cores, 128.0 GiB, GPU NVIDIA H100), 2026-12-02"
    assert lines[2] == "Detector: tensorrt on the GPU, `/x`."


def test_a_size_where_no_backend_ran_has_no_empty_table_or_panel(latency, tmp_path):
    """Another size ran: this one says so instead of an empty table, and the plot leaves its
    panel out (matplotlib warned about an empty legend)."""
    import warnings

    import bench_report

    empty = _fake_size("skipped")
    lines = bench_report._size_lines(empty)
    assert "No backend ran at this size." in lines
    assert "- `torch`: skipped: torch is not installed" in lines
    assert not any(line.startswith("| backend | total median") for line in lines)
    pytest.importorskip("matplotlib")
    result = {"sizes": [_fake_size(), empty], "decode_nms": None, "settings": {"depth": 50}}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert bench_report.write_plot(result, tmp_path / "p.png") is None
    assert (tmp_path / "p.png").stat().st_size > 0
    assert bench_report.write_plot({**result, "sizes": [empty]}, tmp_path / "q.png") == \
        "nothing was measured"


def test_host_overhead_times_the_cuda_stages_host_work_without_a_gpu(tmp_path):
    """benchmarks/host_overhead.py: the CUDA stages over stand-ins for the runtime and the
    kernels (in a process of its own: it replaces cuda_device's runtime)."""
    out = tmp_path / "host.json"
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "host_overhead.py"),
                           "--image-size", "640x480", "--repeat", "5", "--rounds", "2",
                           "--json", str(out)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("host time per call, GPU calls stubbed, 640x480, NMS keeping "
                                  "128 boxes, medians of 5;")
    result = json.loads(out.read_text())
    assert result["image_size"] == [640, 480] and result["repeat"] == 5
    assert result["kept"] == 128  # the stand-in NMS's boxes, finished on the host
    assert len(result["rounds_us"]) == 2
    assert list(result["rounds_us"][0]) == ["prepare levels 1-5", "decode + NMS, one level",
                                            "decode + NMS, all 6 levels",
                                            "detect, network stubbed",
                                            "... without the staging copy",
                                            "detect, page-locked image"]
    assert all(v > 0 for r in result["rounds_us"] for v in r.values())
    bad = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "host_overhead.py"),
                          "--repeat", "0"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "--repeat and --rounds must be at least 1" in bad.stderr
    bad = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "host_overhead.py"),
                          "--kept", "4097"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "--kept must be in [0, 4096]" in bad.stderr

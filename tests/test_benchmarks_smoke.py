"""Smoke test of benchmarks/latency.py: a tiny run (two sizes, one timed run,
a batch of 2, parity) into a tmp dir, then the JSON/Markdown
structure and the numbers that must agree (no timed assertions); the targets table and the
duration format on fixed numbers."""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from helpers_run import load_script

pytest.importorskip("torch")

from tinyfaces_trt.core.config import DetectorConfig  # noqa: E402
from tinyfaces_trt.core.errors import WeightsError  # noqa: E402
from tinyfaces_trt.core.pyramid import plan_pyramid  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
STAGES = {"total", "preprocess", "network", "decode", "nms", "other"}
SIZES = [(40, 30), (32, 24)]  # 2 pyramid levels each (64x48 has 3, up to 128x96: 2x the CPU)
DURATION = r"-?\d+(?:\.\d+)? (?:ns|µs|ms|s)"


def _load_latency():
    # puts benchmarks/ on sys.path for the bench_* modules
    return load_script("benchmarks/latency.py", "tinyfaces_bench_latency")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    latency = _load_latency()
    written = latency.written = []  # every result saved on the way (a killed run keeps it)
    write_reports = latency.write_reports
    latency.write_reports = lambda result, *a: (written.append(json.loads(json.dumps(result))),
                                                write_reports(result, *a))
    # --threads 1: two threads per process of a parallel test run cost the CPU time of the
    # whole run up to three times over (spinning at the threads' barriers), to the same results
    argv = ["--image-size", ",".join(f"{w}x{h}" for w, h in SIZES), "--repeat", "1",
            "--warmup", "0", "--depth", "50", "--backend", "reference,torch,torch-cuda",
            "--candidates", "300", "--batch", "2", "--parity", "--threads", "1",
            "--out", str(out), "--name", "smoke", "--export-dir", str(out / "export")]
    import torch

    threads = torch.get_num_threads()
    try:
        assert latency.main(argv) == 0
    finally:
        torch.set_num_threads(threads)  # the benchmark sets it for the process
    result = json.loads((out / "smoke.json").read_text())
    _run_saves.extend(written)
    return out, result, (out / "smoke.md").read_text()


_run_saves: list[dict] = []


def test_a_size_is_saved_once_its_backends_are_measured(run):
    """Before the batch and parity of a size, its measured backends are on disk."""
    _, result, _ = run
    partial = [r for r in _run_saves if r["sizes"] and r["sizes"][-1].get("partial")]
    assert [len(r["sizes"]) for r in partial] == [1, 2]
    first = partial[0]
    assert not first["complete"] and "batch" not in first["sizes"][0]
    assert "parity" not in first["sizes"][0]
    assert [b["name"] for b in first["sizes"][0]["backends"]] == \
        [b["name"] for b in result["sizes"][0]["backends"]]
    assert first["sizes"][0]["backends"][0]["stages"]["total"]["median_ms"] > 0
    assert all("partial" not in s for s in result["sizes"]) and result["complete"]
    from bench_report import render_markdown
    assert "**Partial: the backends are measured; batch and parity were still to come**" \
        in render_markdown(first)


def test_settings_record_the_run(run):
    _, result, _ = run
    s = result["settings"]
    assert result["schema"] == "tinyfaces-trt-latency/2" and result["complete"] is True
    assert s["image_sizes"] == [list(x) for x in SIZES] and s["depth"] == 50 and s["repeat"] == 1
    assert [size["image_size"] for size in result["sizes"]] == [list(x) for x in SIZES]
    for size, (w, h) in zip(result["sizes"], SIZES):
        expected = plan_pyramid(h, w, DetectorConfig())
        assert [(lv["height"], lv["width"]) for lv in size["levels"]] == \
            [(lv.height, lv.width) for lv in expected]
        assert size["flop_per_image"] == pytest.approx(sum(lv["flop"] for lv in size["levels"]))
        assert all(lv["flop"] > 0 for lv in size["levels"])
    m = result["machine"]
    assert m["cpu_model"] and m["logical_cores"] >= 1 and "numpy" in m["versions"]
    assert result["command"].startswith("python benchmarks/latency.py --image-size 40x30,32x24")


def test_backends_in_order_with_stages_or_reason(run):
    _, result, _ = run
    for size in result["sizes"]:
        by_name = {b["name"]: b for b in size["backends"]}
        assert [b["name"] for b in size["backends"]] == ["reference", "torch", "torch-cuda"]
        n_levels = len(size["levels"])
        for name in ("reference", "torch"):
            b = by_name[name]
            assert b["status"] == "ok", b
            level_keys = {f"network[L{i}]" for i in range(n_levels)}
            assert STAGES | level_keys <= set(b["stages"])
            for stat in b["stages"].values():
                assert len(stat["samples_ms"]) == 1
                assert stat["min_ms"] <= stat["median_ms"] <= stat["p90_ms"]
            assert isinstance(b["detections"], int) and b["build_s"] >= 0
            assert b["contention"]["discarded_runs"] == 0  # --max-contention is off
        assert by_name["reference"]["speedup_vs_reference"] == 1.0
        gpu = by_name["torch-cuda"]
        assert gpu["status"] in ("ok", "skipped")
        if gpu["status"] == "skipped":
            assert gpu["reason"]


def test_batch_rows_at_the_first_size_only(run):
    _, result, _ = run
    first, second = result["sizes"]
    assert "batch" not in second
    rows = {r["backend"]: r for r in first["batch"]["rows"]}
    assert "reference" not in rows  # the port's pipeline has no batch mode
    row = rows["torch"]
    assert row["status"] == "ok" and row["batch"] == 2
    levels = len(first["levels"])
    # one runner call per level: the frames go through each level as one batch
    assert row["runner_calls"] == levels and row["levels"] == levels
    assert row["single_images_per_s"] == pytest.approx(1e3 / row["single"]["median_ms"])
    assert row["batched_images_per_s"] == pytest.approx(1e3 / row["batched"]["median_ms"])
    assert row["gain"] == pytest.approx(row["batched_images_per_s"] / row["single_images_per_s"])
    assert len(row["single"]["samples_ms"]) == len(row["batched"]["samples_ms"]) == 1


def test_parity_of_the_torch_backend_with_the_cpu_reference_is_exact(run):
    _, result, _ = run
    for size in result["sizes"]:
        parity = size["parity"]
        assert parity["status"] == "ok" and "CPU" in parity["reference"]
        assert parity["reference_detections"] > 0  # else every row below agrees trivially
        rows = {r["backend"]: r for r in parity["rows"]}
        assert "reference" not in rows
        torch_row = rows["torch"]
        torch_entry = next(b for b in size["backends"] if b["name"] == "torch")
        # the same fp32 network and numpy stages: identical detections
        assert torch_row["passed"] and torch_row["precision"] == "fp32"
        assert torch_row["reference"] == torch_row["test"] == torch_row["matched"] == \
            parity["reference_detections"] == torch_entry["detections"]
        assert torch_row["max_score_diff"] == 0.0 and torch_row["min_iou"] == 1.0
        assert torch_row["missing_firm"] == torch_row["extra_firm"] == 0


def test_decode_nms_numpy_matches_the_port(run):
    _, result, _ = run
    (row,) = result["decode_nms"]["rows"]
    assert row["candidates"] >= 300 and row["faces"] >= 1
    impls = {i["name"]: i for i in row["implementations"]}
    ours = impls["numpy (runtime)"]
    port = impls["reference (port get_bboxes + py_cpu_nms)"]
    assert ours["candidates"] == port["candidates"] == row["candidates"]
    assert ours["kept"] == port["kept"]
    assert 1 <= ours["kept"] < ours["candidates"]  # clusters: NMS suppresses most candidates
    cuda = impls["cuda (CudaPostprocessor, warp NMS rule)"]
    if cuda["status"] == "ok":
        assert cuda["kept"] == ours["kept"] and cuda["candidates"] == ours["candidates"]
        assert cuda["vs_numpy"]["passed"] and cuda["vs_numpy"]["matched"] == ours["kept"]
    else:
        assert cuda["status"] == "skipped" and cuda["reason"]
    # what the CUDA NMS does there, from its emulation
    work = row["emulated"]
    assert work["rounds"] >= work["rounds_lookahead"] >= 2 and work["overlap_pairs"] > 0
    assert 0 < work["reads_mean"] <= work["reads_p99"] <= work["reads_max"] and work["rows"] > 0
    # the lookahead rule reads each box's whole walk before it waits, and again from a blocker
    # after it: never fewer candidates than the walk-order rule, box by box
    assert work["reads_lookahead_mean"] >= work["reads_mean"]
    assert work["reads_lookahead_p99"] >= work["reads_p99"]
    assert work["reads_lookahead_max"] >= work["reads_max"]
    assert work["polls_lookahead_max"] == work["rounds_lookahead"] - 1  # all boxes sampled here


def test_markdown_has_every_section_with_adaptive_units(run):
    out, result, md = run
    assert md.index("## Targets") < md.index("## Machine") < md.index("## 40x30") \
        < md.index("## 32x24") < md.index("## Decode + NMS on synthetic clustered score maps")
    assert md.count("### End-to-end latency per image") == 2
    assert md.count("### Parity with the CPU reference") == 2
    assert md.count("### Batch throughput") == 1
    assert "| `reference` |" in md and "| `torch` |" in md
    gpu = next(b for b in result["sizes"][0]["backends"] if b["name"] == "torch-cuda")
    if gpu["status"] == "skipped":
        assert f"- `torch-cuda`: skipped: {gpu['reason']}" in md
    assert not re.search(r"(?<![\d.])0\.0+ ms", md)  # "0.0 ms" hid microseconds before
    # every timing cell of the decode/NMS table carries its unit
    table = md[md.index("## Decode + NMS"):].splitlines()
    numpy_row = next(line for line in table if "| numpy (runtime) |" in line)
    cells = [c.strip() for c in numpy_row.split("|")[3:6]]
    assert all(re.fullmatch(f"{DURATION}( / {DURATION})?", c) for c in cells), cells
    work = result["decode_nms"]["rows"][0]["emulated"]
    assert (f"{work['rounds']} rounds of boxes waiting on earlier ones "
            f"({work['rounds_lookahead']} with the lookahead rule), candidates read per box "
            f"(walk order / lookahead) mean {work['reads_mean']:g} / {work['reads_lookahead_mean']:g}, "
            f"p99 {work['reads_p99']:g} / {work['reads_lookahead_p99']:g}") in md
    if result.get("plot"):
        assert (out / "smoke.png").stat().st_size > 0
    else:
        assert "Plot skipped" in md


def test_targets_are_listed_unmeasured_without_a_gpu(run):
    _, result, md = run
    keys = [t["key"] for t in result["targets"]]
    assert keys == ["speedup", "overhead", "network_tflops", "decode_nms_10k",
                    "decode_nms_50k", "batch_gain"]
    gpu_ran = any(b["name"] == "torch-cuda" and b["status"] == "ok"
                  for s in result["sizes"] for b in s["backends"])
    if not gpu_ran:
        for t in result["targets"]:
            assert t["measured"] is None and t["verdict"].startswith("not measured: ")
        assert "| end to end vs the reference pipeline (same GPU, same run) | >= 40x | - | " \
               "not measured: no GPU backend ran |" in md


def _bench_module(name: str):
    _load_latency()
    return importlib.import_module(name)


def test_format_duration_picks_the_unit():
    fmt = _bench_module("bench_common").format_duration
    assert [fmt(v) for v in (None, 0.0, 0.0004, 0.0123, 0.1234, 0.9996, 1.0, 12.34, 932.04,
                             9999.6, 37200.0)] == \
        ["-", "0 µs", "400 ns", "12.3 µs", "123 µs", "1.00 ms", "1.00 ms", "12.3 ms", "932 ms",
         "10.0 s", "37.2 s"]


def test_emulated_work_text_puts_both_rules_side_by_side():
    text = _bench_module("bench_common").emulated_work_text
    work = {"rounds": 164, "rounds_lookahead": 6, "overlap_pairs": 3231404, "reads_mean": 41.4,
            "reads_p99": 291.0, "reads_max": 770, "rows": 12.7}
    assert text(work) == ("164 rounds of boxes waiting on earlier ones (6 with the lookahead "
                          "rule), candidates read per box mean 41.4 / p99 291 / max 770, 12.7 grid "
                          "rows per box")  # results made before the lookahead reads were counted
    work.update(reads_lookahead_mean=120.5, reads_lookahead_p99=700.0, reads_lookahead_max=1500,
                polls_lookahead_mean=2.1, polls_lookahead_max=5)
    assert text(work) == ("164 rounds of boxes waiting on earlier ones (6 with the lookahead "
                          "rule), candidates read per box (walk order / lookahead) mean 41.4 / "
                          "120.5, p99 291 / 700, max 770 / 1500, lookahead blocker polls per box "
                          "mean 2.1 / max 5, 12.7 grid rows per box")


def _size(backends, levels=None, batch=None, flop=4.32e12):
    return {"image_size": [1920, 1080], "status": "ok", "flop_per_image": flop,
            "levels": levels or [{"index": 0, "width": 1920, "height": 1080, "flop": flop}],
            "backends": backends, **({"batch": batch} if batch else {})}


def _backend(name, total, network, e2e=None, **stages):
    st = {"total": {"median_ms": total}, "network": {"median_ms": network},
          "network[L0]": {"median_ms": network}}
    st.update({k: {"median_ms": v} for k, v in stages.items()})
    b = {"name": name, "status": "ok", "stages": st, "uses_gpu": name != "torch"}
    if e2e is not None:
        b["end_to_end"] = {"median_ms": e2e}
    return b


def test_targets_say_met_or_missed_by_how_much_and_why():
    evaluate = _bench_module("bench_targets").evaluate_targets
    # the numbers of the 2026-11-30 H200 prototype wiring (README of the measurements)
    batch = {"batch": 8, "rows": [{"backend": "torch-cuda", "status": "ok", "batch": 8,
                                   "levels": 8, "runner_calls": 64,
                                   "single": {"median_ms": 40.0}, "batched": {"median_ms": 33.9},
                                   "single_images_per_s": 25.0,
                                   "batched_images_per_s": 29.5}]}
    result = {"sizes": [_size([
        _backend("reference", 950.0, 126.0, e2e=932.0),
        _backend("torch-cuda", 41.5, 35.5, e2e=40.9, preprocess=1.7, decode=1.1, nms=4.3),
    ], batch=batch)], "decode_nms": {"rows": [
        {"target": 10000, "candidates": 10056, "implementations": [
            {"name": "cuda (CudaPostprocessor, warp NMS rule)", "status": "ok",
             "decode": {"median_ms": 0.026}, "nms": {"median_ms": 0.20}}]},
        {"target": 50000, "candidates": 50089, "implementations": [
            {"name": "cuda (CudaPostprocessor, warp NMS rule)", "status": "ok",
             "decode": {"median_ms": 0.029}, "nms": {"median_ms": 5.19}},
            {"name": "cuda, walk-order NMS rule", "status": "ok",
             "decode": {"median_ms": 0.029}, "nms": {"median_ms": 1.5}}],
         "emulated": {"rounds": 164, "rounds_lookahead": 6, "overlap_pairs": 3231404,
                      "reads_mean": 41.4, "reads_p99": 291.0, "reads_max": 770, "rows": 12.7}}]}}
    rows = {t["key"]: t for t in evaluate(result)}
    assert all(t["where"] == "`torch-cuda` at 1920x1080" for k, t in rows.items()
               if not k.startswith("decode"))
    speed = rows["speedup"]
    assert speed["measured"] == pytest.approx(932.0 / 40.9) and speed["met"] is False
    assert speed["verdict"] == "missed by 1.76x (measured 22.8x, target >= 40x)"
    assert "network 35.5 ms of 40.9 ms" in speed["why"] and "NMS 4.30 ms" in speed["why"]
    assert speed["why"].endswith("; 40x of this reference (932 ms) needs 23.3 ms end to end, "
                                 "less than the network alone")
    del result["sizes"][0]["backends"][1]["end_to_end"]  # its no-sync pass ran out of time
    mixed = {t["key"]: t for t in evaluate(result)}["speedup"]
    assert mixed["measured"] == pytest.approx(950.0 / 41.5)  # both per-stage totals
    assert mixed["detail"].endswith("(both timed per stage)")
    result["sizes"][0]["backends"][1]["end_to_end"] = {"median_ms": 40.9}
    over = rows["overhead"]
    assert over["measured"] == pytest.approx(40.9 / 35.5) and over["met"] is False
    assert "stages and copies add 5.40 ms (15% of the network" in over["why"]
    assert over["detail"] == "40.9 ms / network 35.5 ms"
    # with the pass from a page-locked image: named beside, the target read as before
    result["sizes"][0]["backends"][1]["end_to_end_page_locked"] = {"median_ms": 39.05}
    locked = {t["key"]: t for t in evaluate(result)}["overhead"]
    assert locked["measured"] == pytest.approx(40.9 / 35.5)
    assert locked["detail"] == ("40.9 ms / network 35.5 ms; from a page-locked image (no staging "
                                "copy) 39.0 ms, 1.10x")
    tflops = rows["network_tflops"]
    assert tflops["measured"] == pytest.approx(4.32e12 / 0.0355 / 1e12)
    assert tflops["verdict"].startswith("missed by 2.05x") and "L0 1920x1080" in tflops["why"]
    small = rows["decode_nms_10k"]  # a result without the no-wait timing: the two apart
    assert small["met"] is True and small["measured"] == pytest.approx(0.226)
    assert small["verdict"] == "met (1.33x better)"
    assert small["detail"] == "10056 candidates: decode 26.0 µs + NMS 200 µs"
    # with it: the target reads decode + NMS as a detect runs them, without a wait between
    result["decode_nms"]["rows"][0]["implementations"][0]["together"] = {"median_ms": 0.31}
    small = {t["key"]: t for t in evaluate(result)}["decode_nms_10k"]
    assert small["met"] is False and small["measured"] == pytest.approx(0.31)
    assert small["detail"] == ("10056 candidates: 310 µs without a wait between "
                               "(decode 26.0 µs + NMS 200 µs timed apart)")
    big = rows["decode_nms_50k"]
    assert big["met"] is False and "NMS 5.19 ms (host clock around the calls" in big["why"]
    assert "(cuda, walk-order NMS rule: NMS 1.50 ms)" in big["why"]
    assert "164 rounds of boxes waiting on earlier ones (6 with the lookahead rule)" in big["why"]
    gain = rows["batch_gain"]
    assert gain["measured"] == pytest.approx(29.5 / 25.0) and gain["met"] is False
    assert "it does not batch the levels" in gain["why"]  # 64 calls = 8 frames x 8 levels


def test_targets_give_the_torch_cuda_variants_values_beside_its_own():
    """The levels-in-turn and compiled rows of torch-cuda: their speed-up, overhead and FLOP
    rate in the numbers column, the verdict still torch-cuda's; torch-cuda's levels ran side
    by side, so the FLOP rate's reason lists the in-turn row's per-level times."""
    evaluate = _bench_module("bench_targets").evaluate_targets
    torch_cuda = _backend("torch-cuda", 20.0, 19.0, e2e=19.0)
    del torch_cuda["stages"]["network[L0]"]  # the levels ran side by side: no level alone
    result = {"sizes": [_size([_backend("reference", 625.0, 115.0, e2e=625.0), torch_cuda,
                               _backend("torch-cuda-in-turn", 23.2, 19.2, e2e=21.9),
                               {"name": "torch-cuda-compile", "status": "skipped",
                                "reason": "not asked"}])]}
    rows = {t["key"]: t for t in evaluate(result)}
    speed = rows["speedup"]
    assert speed["measured"] == pytest.approx(625.0 / 19.0) and speed["met"] is False
    assert speed["detail"] == "625 ms / 19.0 ms; `torch-cuda-in-turn`: 28.5x"
    assert rows["speedup"]["variants"] == {"torch-cuda-in-turn": pytest.approx(625.0 / 21.9)}
    assert rows["overhead"]["detail"].endswith("; `torch-cuda-in-turn`: 1.14x")
    flops = rows["network_tflops"]
    assert flops["detail"].endswith("; `torch-cuda-in-turn`: 225 TFLOP/s")
    assert flops["why"] == ("per level (slowest first, in turn in `torch-cuda-in-turn`): "
                            "L0 1920x1080: 19.2 ms, 225 TFLOP/s")
    assert "variants" not in rows["batch_gain"] and "variants" not in rows["decode_nms_10k"]
    # without the in-turn row, a compiled network's level times explain nothing of torch-cuda's
    result["sizes"][0]["backends"][2:] = [_backend("torch-cuda-compile", 25.0, 20.0, e2e=23.0)]
    assert {t["key"]: t for t in evaluate(result)}["network_tflops"]["why"] == ""


def test_targets_fall_back_to_the_fastest_gpu_backend_and_explain_gaps():
    targets = _bench_module("bench_targets")
    result = {"sizes": [_size([_backend("torch", 900.0, 880.0),
                               _backend("tensorrt-fp16", 60.0, 50.0, e2e=58.0),
                               _backend("torch-cuda-graphs-host-fp16", 80.0, 70.0, e2e=79.0)])]}
    rows = {t["key"]: t for t in targets.evaluate_targets(result)}
    assert rows["speedup"]["verdict"] == "not measured: the reference did not run at this size"
    assert rows["overhead"]["where"] == "`tensorrt-fp16` at 1920x1080"
    assert rows["decode_nms_10k"]["verdict"].startswith("not measured: no 10000-candidate row")
    assert rows["batch_gain"]["verdict"] == "not measured: no batch rows in this run (--batch N)"


def test_targets_read_the_batch_where_it_ran_and_the_speedup_on_a_gpu_reference():
    """--batch measures the first image size; the targets are read at 1920x1080: the batch
    target is read where the batch ran (said), not "not measured, pass --batch". The
    speed-up ("same GPU, same run") is not measured against a reference that ran on the CPU."""
    evaluate = _bench_module("bench_targets").evaluate_targets
    row = {"backend": "torch-cuda", "status": "ok", "batch": 8, "levels": 6, "runner_calls": 6,
           "single": {"median_ms": 20.0}, "batched": {"median_ms": 10.0},
           "single_images_per_s": 50.0, "batched_images_per_s": 100.0}
    small = {**_size([_backend("reference", 500.0, 100.0, e2e=480.0),
                      _backend("torch-cuda", 21.0, 15.0, e2e=20.0)],
                     batch={"batch": 8, "rows": [row]}), "image_size": [1280, 720]}
    full = _size([_backend("reference", 950.0, 126.0, e2e=932.0),
                  _backend("torch-cuda", 41.5, 35.5, e2e=40.9)])
    rows = {t["key"]: t for t in evaluate({"sizes": [small, full]})}
    gain = rows["batch_gain"]
    assert gain["measured"] == pytest.approx(2.0) and gain["verdict"] == "met (1.54x better)"
    assert gain["where"] == ("`torch-cuda` at 1280x720 (where the batch ran: --batch measures "
                             "the first image size)")
    assert rows["speedup"]["where"] == "`torch-cuda` at 1920x1080"
    small["batch"]["rows"] = []
    assert {t["key"]: t for t in evaluate({"sizes": [small, full]})}["batch_gain"]["verdict"] == (
        "not measured: the batch rows at 1280x720 have none of `torch-cuda` (it takes no "
        "batches there)")
    full["backends"][0]["uses_gpu"] = False  # a CPU-only torch beside a GPU backend
    speed = {t["key"]: t for t in evaluate({"sizes": [full]})}["speedup"]
    assert speed["measured"] is None and speed["verdict"] == (
        "not measured: the reference ran on the CPU here, not on the GPU (same GPU, same run)")


def test_build_time_note_uses_the_duration_unit():
    note = _bench_module("bench_report")._backend_note
    assert note({"name": "torch", "description": "d", "build_s": 0.0123}) == \
        "- `torch`: d; built in 12.3 ms"
    assert note({"name": "torch", "description": "d", "build_s": 41.0}) == \
        "- `torch`: d; built in 41.0 s"


def test_report_only_renders_a_committed_run_and_leaves_its_json(tmp_path, capsys):
    """--report-only rewrote the JSON it read (schema 1 -> 2: a committed file changed);
    it writes the .md (and .png) only, the converted JSON only to --save-json."""
    source = ROOT / "benchmarks" / "results" / "cpu-2026-11-24-1080p.json"
    assert json.loads(source.read_text())["schema"] == "tinyfaces-trt-latency/1"  # converted here
    path = tmp_path / source.name
    shutil.copy(source, path)
    latency = _load_latency()
    assert latency.main(["--report-only", str(path), "--no-plot"]) == 0
    assert path.read_bytes() == source.read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name, path.stem + ".md"]
    assert capsys.readouterr().err == f"wrote {tmp_path / path.stem}.md\n"
    md = path.with_suffix(".md").read_text()
    assert "## 1920x1080" in md and "| `onnxruntime` |" in md and "## Targets" in md
    assert not re.search(r"(?<![\d.])0\.0+ ms", md)
    saved = tmp_path / "out" / "upgraded.json"
    saved.parent.mkdir()
    assert latency.main(["--report-only", str(path), "--no-plot", "--save-json", str(saved)]) == 0
    assert path.read_bytes() == source.read_bytes()
    assert path.with_suffix(".md").read_text() == md
    upgraded = json.loads(saved.read_text())
    assert upgraded["schema"] == "tinyfaces-trt-latency/2"
    assert [s["image_size"] for s in upgraded["sizes"]] == [[1920, 1080]]
    assert upgraded["settings"]["image_sizes"] == [[1920, 1080]]
    assert "image_size" not in upgraded["settings"]


def test_help_has_examples_and_defaults(capsys):
    latency = _load_latency()
    with pytest.raises(SystemExit) as info:
        latency.parse_args(["--help"])
    assert info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "Examples: python benchmarks/latency.py " in text
    assert "--image-size 1920x1080 --repeat 3" in text
    assert "--image-size 1920x1080,1280x720 \\ --batch 8 --parity --profile" in text
    assert "--depth {50,101} ResNet depth (default 101; with --weights: the checkpoint's)" in text
    assert "network variant (default pytorch; with --weights: the checkpoint's)" in text
    assert "seed of the random weights (default 0; unused with --weights)" in text


def test_bad_batch_is_a_usage_error(capsys):
    latency = _load_latency()
    with pytest.raises(SystemExit) as info:
        latency.parse_args(["--batch", "1"])
    assert info.value.code == 2
    assert "--batch must be 0 (off) or at least 2" in capsys.readouterr().err


def test_weights_decide_depth_and_variant_unless_given(tmp_path):
    from helpers_weights import write_fake_pytorch_checkpoint

    latency = _load_latency()
    path = tmp_path / "c50.pth"
    write_fake_pytorch_checkpoint(path, depth=50)
    args = latency.parse_args(["--weights", str(path)])
    model, config, what = latency._load_model(args)
    assert (model.depth, config.variant, args.depth, args.variant) == (50, "pytorch", 50, "pytorch")
    assert what == "weights c50.pth"
    with pytest.raises(WeightsError, match="ResNet-50 .* but depth=101"):
        latency._load_model(latency.parse_args(["--weights", str(path), "--depth", "101"]))


def test_batch_rows_say_how_the_batch_shapes_were_prepared():
    """torch-cuda prepares the batch shapes during the batch warm-up: whether they compiled
    or fell back is in the row, the report and the batch target's why."""
    from types import SimpleNamespace

    from tinyfaces_trt.core.runner import RunnerBase
    from tinyfaces_trt.runtime.pipeline import Detector

    backends = _bench_module("bench_backends")

    class Recorded(RunnerBase):
        def run(self, net_input):
            raise AssertionError("not run here")

    runner = Recorded()
    runner.records = {(1, 3, 8, 8): SimpleNamespace(mode="compile"),
                      (2, 3, 8, 8): SimpleNamespace(mode="compile"),
                      (2, 3, 4, 4): SimpleNamespace(mode="eager")}
    bench = backends.DetectorBench(Detector(runner, DetectorConfig()))
    assert bench.shape_modes(2) == "compile x1, eager x1"
    assert bench.shape_modes(1) == "compile x1" and bench.shape_modes(8) == ""
    assert backends.DetectorBench(Detector(RunnerBase(), DetectorConfig())).shape_modes(2) == ""
    fed = Recorded()  # a wrapper feeding it from the host (the copy-timed rows)
    fed.inner = runner
    assert backends.DetectorBench(Detector(fed, DetectorConfig())).shape_modes(2) == \
        "compile x1, eager x1"
    # the shapes prepared in another mode than asked, which the entry and gpu_check name
    assert bench.fallbacks() == ""  # no mode asked: not torch-cuda's bench
    asked = backends.DetectorBench(Detector(fed, DetectorConfig()), asked_mode="compile")
    assert asked.fallbacks() == "2x3x4x4: eager"
    entry = _load_latency()._Bench(SimpleNamespace(
        name="torch-cuda", description="", precision="fp16"))
    entry.pipe, entry.boxes = asked, np.zeros((0, 5), np.float32)
    entry.samples = [{"total": 0.04}]
    assert entry.finish()["fell_back"] == "2x3x4x4: eager"
    entry.entry.pop("status")
    entry.close()  # kept once the pipeline is closed
    assert entry.pipe is None and entry.finish()["fell_back"] == "2x3x4x4: eager"

    row = {"backend": "torch-cuda", "status": "ok", "batch": 2, "levels": 2, "runner_calls": 2,
           "single": {"median_ms": 40.0, "p90_ms": 41.0},
           "batched": {"median_ms": 38.0, "p90_ms": 39.0},
           "single_images_per_s": 25.0, "batched_images_per_s": 26.3, "gain": 1.05,
           "shape_modes": "compile x1, eager x1"}
    lines = _bench_module("bench_report")._batch_lines({"batch": 2, "rows": [row]})
    assert lines[-1] == ("The batch-of-2 input shapes ran as (mode after any fallback): "
                         "`torch-cuda` compile x1, eager x1.")
    assert _bench_module("bench_report")._batch_lines({"batch": 8, "rows": []}) == [
        "No backend that ran here takes batches (`detect_batch` of 8 frames in one network "
        "call per level): nothing measured."]  # not a table without rows
    result = {"sizes": [_size([_backend("reference", 950.0, 126.0, e2e=932.0),
                               _backend("torch-cuda", 41.5, 35.5, e2e=40.9)],
                              batch={"batch": 2, "rows": [row]})], "decode_nms": None}
    gain = {t["key"]: t for t in _bench_module("bench_targets").evaluate_targets(result)}
    assert gain["batch_gain"]["why"].endswith("; the batch shapes ran as compile x1, eager x1")

    class Pipe(backends.Pipeline):
        def detect(self, image, timings):
            return image

        def detect_batch(self, images):
            return list(images)

        def shape_modes(self, batch):
            return f"graphs x{batch}"

    latency = _load_latency()
    measured = SimpleNamespace(pipe=Pipe(), spec=SimpleNamespace(name="torch-cuda"))
    args = SimpleNamespace(warmup=0, repeat=1)
    row = latency.measure_batch(measured, [np.zeros((4, 4, 3))] * 3, args, lambda _: None)
    assert row["status"] == "ok" and row["shape_modes"] == "graphs x3"


def test_a_hung_profile_ends_the_run_rather_than_hold_the_machine(monkeypatch):
    """The profile comes last, its run's results already saved: one still running after
    PROFILE_HANG_S gives up (the process ends); a finished one cancels the watchdog."""
    import threading
    from types import SimpleNamespace

    latency = _load_latency()
    from bench_common import Deadline

    monkeypatch.setattr(latency, "PROFILE_HANG_S", 0.2)
    closed, gave_up = [], threading.Event()

    def bench():
        return SimpleNamespace(spec=SimpleNamespace(name="torch-cuda"), pipe=object(),
                               close=lambda: closed.append(True))

    def slow_profile(b, image, log):
        gave_up.wait(30)  # "hangs" until the watchdog gives up
        return {"status": "ok"}

    monkeypatch.setattr(latency, "profile_detect", slow_profile)
    entry, lines = {}, []
    latency.profile_last([(bench(), None)], entry, Deadline(None), lines.append,
                         give_up=gave_up.set)
    assert gave_up.is_set() and closed == [True]
    assert "the profile is still running after 0 s (a hang under the profiler)" in lines[0]
    monkeypatch.setattr(latency, "profile_detect", lambda b, image, log: {"status": "ok"})
    monkeypatch.setattr(latency, "PROFILE_HANG_S", 30.0)  # no stall of this machine fires it
    watchdogs = []

    class Recorded(threading.Timer):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            watchdogs.append(self)

    monkeypatch.setattr(latency.threading, "Timer", Recorded)
    again = threading.Event()
    latency.profile_last([(bench(), None)], entry, Deadline(None), lines.append,
                         give_up=again.set)
    monkeypatch.undo()
    assert len(watchdogs) == 1 and watchdogs[0].finished.is_set()  # cancelled
    assert not again.is_set() and entry["profile"] == {"status": "ok"}


class _Exported(Exception):
    """Stops the benchmark's export once its arguments are seen."""


def test_engines_take_the_batch_rows_batches(monkeypatch, tmp_path, export_dir):
    """With --batch N, the TensorRT rows' engine and the ONNX Runtime TensorRT row's profile
    take 1 to N images of the benchmark's size at once, so their batch rows run each level
    once per batch (an engine of batch 1 ran the frames one by one); both stay tuned for one
    image, as the latency rows run."""
    pytest.importorskip("onnxruntime")
    from helpers_ort_gpu import GpuListingOrt

    from tinyfaces_trt.core.manifest import load_export_folder
    from tinyfaces_trt.core.profiles import Profile, profile_for_image_sizes
    from tinyfaces_trt.export import export_pipeline
    from tinyfaces_trt.runtime.backends import onnxruntime_runner
    from tinyfaces_trt.runtime.backends.ort_tensorrt import TENSORRT_EP

    _load_latency()
    import bench_backends

    asked = []

    def export_model(model, config, path, **kwargs):
        asked.append((Path(path).name, kwargs))
        raise _Exported

    monkeypatch.setattr(export_pipeline, "export_model", export_model)
    config = load_export_folder(export_dir).config
    ctx = bench_backends.BenchContext(model=None, config=config, levels=[], image_hw=(72, 96),
                                      threads=1, export_root=tmp_path, log=lambda m: None,
                                      cache_dir=tmp_path / "cache", max_batch=8)
    with pytest.raises(_Exported):
        ctx.export_folder(fp16=True, engine=True)
    with pytest.raises(_Exported):
        ctx.export_folder()
    whole = profile_for_image_sizes([(72, 96)], config, 8)
    profile = Profile(whole.min, (1, *whole.opt[1:]), whole.max)
    assert [(name, kw["profile"]) for name, kw in asked] == [
        ("fp16-engine-72x96-b8", profile), ("fp32", None)]
    assert profile.max[0] == 8 and profile.min[0] == profile.opt[0] == 1
    ctx._folders["fp32"] = load_export_folder(export_dir)
    fake = GpuListingOrt(started=(TENSORRT_EP,))
    monkeypatch.setattr(onnxruntime_runner, "import_onnxruntime", lambda: fake)
    spec = next(b for b in bench_backends.BACKENDS if b.name == "onnxruntime-trt")
    bench = spec.build(ctx)
    try:
        options = fake.sessions[-1]["options"][TENSORRT_EP]
        assert options["trt_profile_max_shapes"] == "image:8x3x%dx%d" % profile.max[2:]
        assert options["trt_profile_opt_shapes"] == "image:1x3x%dx%d" % profile.opt[2:]
        assert options["trt_engine_cache_path"].startswith(str(tmp_path / "cache" / "ort_tensorrt"))
    finally:
        bench.close()


def test_onnx_runtime_gpu_rows_are_compared_at_the_precision_they_ran(monkeypatch, tmp_path,
                                                                    export_dir):
    """The CUDA EP runs the fp32 export in fp32 (``use_tf32`` "0"; onnxruntime < 1.18 refuses
    that option and runs its default TF32); ONNX Runtime's TensorRT EP runs it with TF32
    convolutions (TensorRT's default, no provider option to clear it). Each row's parity takes
    the tolerances of what ran: the tf32 ones are fp16's, where fp32's fail a TF32 run."""
    pytest.importorskip("onnxruntime")
    import onnxruntime as ort
    from helpers_ort_gpu import CPU_EP, GpuListingOrt
    from types import SimpleNamespace

    from tinyfaces_trt import detectors
    from tinyfaces_trt.core.manifest import load_export_folder
    from tinyfaces_trt.runtime.backends import onnxruntime_runner
    from tinyfaces_trt.runtime.backends.onnxruntime_runner import CUDA_EP
    from tinyfaces_trt.runtime.backends.ort_tensorrt import TENSORRT_EP

    _load_latency()
    import bench_backends

    monkeypatch.setattr(bench_backends, "_PRECISION_RAN", {})
    folder = load_export_folder(export_dir)
    ctx = bench_backends.BenchContext(model=None, config=folder.config, levels=[],
                                      image_hw=(72, 96), threads=1, export_root=tmp_path,
                                      log=lambda m: None, cache_dir=tmp_path / "cache")
    ctx._folders["fp32"] = folder
    specs = {b.name: b for b in bench_backends.BACKENDS}

    def build(name, fake):
        monkeypatch.setattr(onnxruntime_runner, "import_onnxruntime", lambda: fake)
        specs[name].build(ctx).close()
        return fake.sessions[-1]["options"]

    assert build("onnxruntime-cuda-host", GpuListingOrt())[CUDA_EP] == {"use_tf32": "0"}
    assert specs["onnxruntime-cuda-host"].precision == "fp32"
    options = build("onnxruntime-trt", GpuListingOrt(started=(TENSORRT_EP,)))
    assert not any("tf32" in key for key in options[TENSORRT_EP])
    assert specs["onnxruntime-trt"].precision == "tf32"
    old = GpuListingOrt()
    old.__version__ = "1.17.3"
    assert build("onnxruntime-cuda-host", old)[CUDA_EP] == {}
    assert specs["onnxruntime-cuda-host"].precision == "tf32"

    # create_detector('onnxruntime-cuda'): the TensorRT EP first where TensorRT is installed
    cuda = specs["onnxruntime-cuda"]
    monkeypatch.setattr(ort, "get_available_providers", lambda: [TENSORRT_EP, CUDA_EP, CPU_EP])
    assert cuda.precision == "fp32"  # no tensorrt package here
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: object() if name == "tensorrt" else find_spec(name, *a))
    assert cuda.precision == "tf32"
    # once built, what its runner ran at (its TensorRT EP did not start: the CUDA EP, fp32)
    made = SimpleNamespace(runner=SimpleNamespace(precision="fp32"), close=lambda: None)
    monkeypatch.setattr(detectors, "create_detector", lambda *a, **k: made)
    cuda.build(ctx).close()
    assert cuda.precision == "fp32"

    compare = _bench_module("bench_parity").compare_with_reference
    config = DetectorConfig(prob_thresh=0.5, nms_thresh=0.3)
    ref = np.array([[0, 0, 10, 10, 0.9], [40, 40, 50, 50, 0.8]])
    tf32 = ref + [0, 0, 0, 0, 0.004]  # within the tf32 (fp16) 0.05, beyond fp32's 1e-4
    assert not compare(ref, tf32, config, "fp32")["passed"]
    row = compare(ref, tf32, config, "tf32")
    assert row["passed"] and row["precision"] == "tf32" and row["tolerance"]["score"] == 0.05


def test_a_failed_parity_row_lists_the_boxes_that_moved():
    """latency.md under the parity table: which detections are missing or extra, with their
    size, place, prob and best IoU on the other side (the comparison's examples)."""
    compare = _bench_module("bench_parity").compare_with_reference
    config = DetectorConfig(prob_thresh=0.5, nms_thresh=0.3)
    ref = np.array([[0, 0, 10, 10, 0.9], [40, 40, 50, 50, 0.8]])
    row = {"backend": "torch-cuda", **compare(ref, ref + [7, 0, 7, 0, 0], config, "fp16")}
    assert not row["passed"]
    parity = {"status": "ok", "reference": "cpu", "reference_detections": 2,
              "reference_seconds": 0.1, "rows": [row]}
    lines = _bench_module("bench_report")._parity_lines(parity)
    assert lines[-1] == ("- `torch-cuda`: missing: 10x10 px at (0, 0) prob 0.90 (best IoU 0.18); "
                         "10x10 px at (40, 40) prob 0.80 (best IoU 0.18) | extra: 10x10 px at "
                         "(7, 0) prob 0.90 (best IoU 0.18); 10x10 px at (47, 40) prob 0.80 "
                         "(best IoU 0.18)")
    row = {"backend": "torch-cuda", **compare(ref, ref, config, "fp16")}
    assert "Missing and extra" not in "\n".join(
        _bench_module("bench_report")._parity_lines({**parity, "rows": [row]}))


def test_the_profile_lists_every_cuda_stage_kernel_apart_from_the_network():
    """Kernel names as the H200 profile of 2026-12-04 recorded them: the stages' kernels (and
    CUB's, inside the NMS) are listed in full below the top of the network's."""
    latency = _load_latency()
    stage = ["void (anonymous namespace)::nms_resolve_kernel<true>((anonymous namespace)::"
             "Control*, unsigned int const*, unsigned int ",
             "void cub::CUB_300000_SM_900::detail::radix_sort::DeviceRadixSortOnesweepKernel<",
             "(anonymous namespace)::resize_horizontal_kernel(unsigned char const*, int, long",
             "decode_level_kernel(float const*, int, int, tf_decode_params, unsigned int",
             "Memcpy DtoH (Device -> Pinned)"]
    network = ["triton_poi_fused_add_convolution_relu_13", "nvjet_sm90_hsh_128x256_64x4_2x1_v_bz",
               "sm90_xmma_fprop_implicit_gemm_f16f16_f16f32_f32_nhwckrsc_nhwc_tilesize128x128"]
    assert [latency.stage_kernel(n) for n in stage] == [True] * 5
    assert [latency.stage_kernel(n) for n in network] == [False] * 3
    rows = [{"name": n, "calls": 1, "gpu_ms": 0.25, "share": 0.01} for n in stage[:2]]
    lines = _bench_module("bench_report")._profile_lines(
        {"backend": "torch-cuda", "status": "ok", "wall_ms": 23.4, "gpu_kernel_ms": 20.0,
         "top": [{"name": network[0], "calls": 176, "gpu_ms": 2.31, "share": 0.12}],
         "stages": rows})
    assert lines[4] == "| `triton_poi_fused_add_convolution_relu_13` | 176 | 2.31 ms | 12% |"
    assert ("The CUDA stages' kernels and copies (every one: resize, decode, NMS with its CUB "
            "sorts and scan): 500 µs in all.") in lines
    assert lines[-1] == f"| `{stage[1]}` | 1 | 250 µs | 1% |"


def test_the_profile_leaves_out_the_named_spans_torch_books_on_the_gpu():
    """torch books a ``record_function`` span (the profiled work's, Inductor's) on the GPU's
    timeline too, with the device time it spans: neither a kernel row (it topped the table
    and swelled "GPU kernels") nor a GPU span (covering every gap between the kernels). The
    events as torch 2.13 gives them: ``key_averages`` keeps the host and GPU halves of a span
    apart (both ``is_user_annotation``), the GPU half with no CPU time."""
    from types import SimpleNamespace as NS

    common = _bench_module("bench_common")
    work = common.PROFILED_WORK

    def avg(key, device_us, cpu_us=0.0, annotation=False, count=1):
        return NS(key=key, count=count, self_device_time_total=device_us,
                  cpu_time_total=cpu_us, is_user_annotation=annotation)

    rows = common.kernel_rows([
        avg(work, 0.0, 900.0, True), avg(work, 880.0, 0.0, True),  # host half, GPU half
        avg("## Call CompiledFxGraph ##", 300.0, 0.0, True),  # Inductor's span on the GPU
        avg("aten::conv2d", 0.0, 50.0), avg("conv_kernel", 150.0, count=2),
        avg("nms_kernel", 50.0)])
    assert [(r["name"], r["calls"]) for r in rows] == [("conv_kernel", 2), ("nms_kernel", 1)]
    assert [r["share"] for r in rows] == [pytest.approx(0.75), pytest.approx(0.25)]

    def event(name, start, end, device, annotation=False):
        return NS(name=name, key=name, time_range=NS(start=start, end=end),
                  device_type=f"DeviceType.{device}", is_user_annotation=annotation)

    events = [event(work, 100.0, 1000.0, "CPU", True), event(work, 150.0, 990.0, "CUDA", True),
              event("conv_kernel", 200.0, 400.0, "CUDA"), event("nms_kernel", 700.0, 800.0, "CUDA"),
              event("aten::conv2d", 120.0, 180.0, "CPU")]
    t = common.timeline_of_events(events)
    assert t["window_ms"] == pytest.approx(0.9)  # the host's span
    assert t["busy_ms"] == pytest.approx(0.3) and t["gap_ms"] == pytest.approx(0.3)
    assert t["gaps"][0] == {"ms": pytest.approx(0.3), "after": "conv_kernel", "before": "nms_kernel"}
    assert common.timeline_of_events(events[1:]) is None  # no host span: no window


def test_the_gpu_timeline_takes_the_union_of_streams_and_names_the_largest_gaps():
    """gpu_timeline: kernels on several streams overlap (busy is their union, not their sum),
    spans are clipped to the profiled window, and each gap names the kernel that ended last
    before it and the one after it."""
    common = _bench_module("bench_common")
    spans = [(1000.0, 1100.0, "resize"), (1500.0, 4000.0, "conv_a"),  # us
             (1600.0, 4500.0, "conv_b"),  # another stream: ends last in this block
             (4450.0, 4600.0, "conv_c"), (4460.0, 4470.0, "tiny"),  # starts last, ends early
             (5600.0, 5700.0, "nms"), (5750.0, 7000.0, "copy"),
             (100.0, 200.0, "before the window")]
    t = common.gpu_timeline(spans, (500.0, 6500.0), gaps=2)
    assert t["window_ms"] == pytest.approx(6.0) and t["lead_ms"] == pytest.approx(0.5)
    assert t["tail_ms"] == pytest.approx(0.0)  # the copy runs past the window: clipped
    # busy: 1000-1100, 1500-4600, 5600-5700, 5750-6500
    assert t["busy_ms"] == pytest.approx((100 + 3100 + 100 + 750) / 1e3)
    assert t["gap_ms"] == pytest.approx((400 + 1000 + 50) / 1e3)
    assert t["gaps"] == [{"ms": pytest.approx(1.0), "after": "conv_c", "before": "nms"},
                         {"ms": pytest.approx(0.4), "after": "resize", "before": "conv_a"}]
    assert common.gpu_timeline(spans[-1:], (500.0, 6500.0)) is None  # nothing in the window
    assert common.timeline_text(None) == ""
    assert common.timeline_text(t, chars=4) == (
        "GPU busy 4.05 ms of the 6.00 ms profiled: 500 µs before its first kernel, 0 µs after "
        "its last, 1.45 ms idle between; largest gaps: 1.00 ms after `conv` before `nms`; "
        "400 µs after `resi` before `conv`")
    lines = _bench_module("bench_report")._profile_lines(
        {"backend": "torch-cuda", "status": "ok", "wall_ms": 6.2, "gpu_kernel_ms": 6.0,
         "timeline": t, "top": [], "stages": []})
    assert lines[0].endswith("read shares, not absolute times). GPU busy 4.05 ms of the "
                             "6.00 ms profiled: 500 µs before its first kernel, 0 µs after its "
                             "last, 1.45 ms idle between; largest gaps: 1.00 ms after `conv_c` "
                             "before `nms`; 400 µs after `resize` before `conv_a`.")
    entry = {"wall_ms": 0.45, "gpu_kernel_ms": 0.2, "groups": {"sorts": 0.1}, "timeline": t}
    assert common.decode_nms_profile_text(entry).endswith(
        "the host's waits; GPU busy 4.05 ms of the 6.00 ms profiled: 500 µs before its first "
        "kernel, 0 µs after its last, 1.45 ms idle between; largest gaps: 1.00 ms after "
        "`conv_c` before `nms`; 400 µs after `resize` before `conv_a`")


def test_the_decode_nms_profile_groups_its_kernels_into_the_report_and_the_target():
    """--profile with --candidates: one decode + NMS per count under the profiler; its kernels
    grouped (resolve, sorts, scan, decode, copies, other) in the report's table and in the
    10k target's reason, so a miss says where the time went."""
    scores = _bench_module("bench_scores")
    names = {"void (anonymous namespace)::nms_resolve_warp_kernel((anonymous namespace)::Control*": 0.25,
             "void cub::CUB_300001_SM_900::detail::radix_sort::DeviceRadixSortOnesweepKernel<": 0.05,
             "void cub::CUB_300001_SM_900::detail::scan::DeviceScanKernel<cub::": 0.002,
             "(anonymous namespace)::decode_level_kernel(float const*, int, int, tf_decode_params": 0.01,
             "Memset (Device)": 0.001, "(anonymous namespace)::nms_bin_kernel(": 0.0015}
    kernels = [{"name": n, "calls": 1, "gpu_ms": ms, "share": ms / sum(names.values())}
               for n, ms in names.items()]
    groups = scores.kernel_groups(kernels)
    assert list(groups) == ["NMS resolve", "sorts", "scan", "decode", "copies and memsets", "other"]
    assert groups["other"] == 0.0015 and groups["NMS resolve"] == 0.25
    entry = {"target": 10000, "candidates": 10056, "name": "cuda (CudaPostprocessor, warp NMS rule)",
             "status": "ok", "wall_ms": 0.45, "gpu_kernel_ms": sum(names.values()),
             "kernels": kernels, "groups": groups}
    result = {"decode_nms": {"rows": [{"target": 10000, "candidates": 10056, "faces": 128,
                                       "implementations": [{"name": entry["name"], "status": "ok",
                                                            "decode": {"median_ms": 0.08},
                                                            "nms": {"median_ms": 0.4}}]}],
                             "profile": [entry, {"target": 50000, "status": "failed",
                                                 "reason": "RuntimeError: boom"}]}}
    targets = _bench_module("bench_targets")
    measure = next(t for t in targets.TARGETS if t.key == "decode_nms_10k")
    value, _, why = targets._decode_nms(10000)(result, None)
    assert value == pytest.approx(0.48) and measure.goal == 0.3
    assert ("(profiled once: 450 µs wall, 314 µs of GPU kernels and copies (NMS resolve 250 µs, "
            "sorts 50.0 µs, scan 2.00 µs, decode 10.0 µs, copies and memsets 1.00 µs, other "
            "1.50 µs); the rest is launches, gaps between kernels and the host's waits)") in why
    lines = _bench_module("bench_report")._decode_nms_profile_lines(result["decode_nms"]["profile"])
    assert lines[0] == "### Where decode + NMS spend their time"
    assert f"| `{next(iter(names))}` | 1 | 250 µs | 79% |" in lines
    assert "- 50000 candidates: failed: RuntimeError: boom" in lines


def test_the_decode_nms_profile_runs_last_only_after_a_cuda_row_and_within_the_budget(monkeypatch):
    latency = _load_latency()
    import bench_scores
    from bench_common import Deadline

    calls = []
    monkeypatch.setattr(bench_scores, "profile_decode_nms",
                        lambda counts, config, log: calls.append(counts) or [{"status": "ok"}])
    cuda_ok = {"name": "cuda (CudaPostprocessor, warp NMS rule)", "status": "ok"}
    ran = {"decode_nms": {"rows": [{"implementations": [{"name": "numpy", "status": "ok"}, cuda_ok]}]}}
    skipped = {"decode_nms": {"rows": [{"implementations": [
        {"name": "numpy", "status": "ok"}, {**cuda_ok, "status": "skipped"}]}]}}
    assert latency.cuda_decode_nms_ran(ran) and not latency.cuda_decode_nms_ran(skipped)
    assert not latency.cuda_decode_nms_ran({"decode_nms": None})
    latency.profile_decode_nms_last(ran, [10000], DetectorConfig(), Deadline(None), print)
    assert calls == [[10000]] and ran["decode_nms"]["profile"] == [{"status": "ok"}]
    latency.profile_decode_nms_last(ran, [10000, 50000], DetectorConfig(), Deadline(0.0), print)
    assert calls == [[10000]]
    assert [p["status"] for p in ran["decode_nms"]["profile"]] == ["skipped", "skipped"]
    assert "time budget" in ran["decode_nms"]["profile"][0]["reason"]


def test_a_decode_nms_profile_that_hangs_ends_the_run_with_its_results_saved(monkeypatch):
    import threading

    latency = _load_latency()
    import bench_scores
    from bench_common import Deadline

    monkeypatch.setattr(latency, "PROFILE_HANG_S", 0.2)
    gave_up = threading.Event()
    monkeypatch.setattr(bench_scores, "profile_decode_nms",
                        lambda counts, config, log: gave_up.wait(30) and [{"status": "ok"}])
    ran = {"decode_nms": {"rows": [{"implementations": [
        {"name": "cuda (CudaPostprocessor, warp NMS rule)", "status": "ok"}]}]}}
    lines = []
    latency.profile_decode_nms_last(ran, [10000], DetectorConfig(), Deadline(None), lines.append,
                                    give_up=gave_up.set)
    assert gave_up.is_set()
    assert lines == ["the decode/NMS profile is still running after 0 s (a hang under the "
                     "profiler): ending here, exit 4; the results were saved before it"]



class _PageLockedPipe:
    """A device pipeline stand-in for latency's end-to-end pass: ``page_locked`` says what
    its page-locked copy does ("direct", "staged": uploaded through staging after all,
    "fails": its detect raises)."""

    def __init__(self, page_locked):
        self.page_locked, self.frame, self.order, self.uploads = page_locked, None, [], 0

    def page_locked_copy(self, image):
        self.frame = image.copy()
        return self.frame

    def page_locked_uploads(self):
        return self.uploads

    def detect(self, image, timings):
        locked = image is self.frame
        self.order.append("locked" if locked else "pageable")
        if locked and self.page_locked == "fails":
            raise RuntimeError("the upload failed")
        self.uploads += locked and self.page_locked == "direct"

    def synchronize(self):
        pass


def test_page_locked_memory_the_stages_would_stage_fails_the_page_locked_pass(monkeypatch):
    """DetectorBench.page_locked_copy on the CUDA stages: where the runtime does not see its
    cudaMallocHost memory as page-locked (every image would be staged: the feature broken on
    that GPU), an error the pass notes (and gpu_check fails on), not a silent None; the
    buffer is kept for close() to free."""
    from types import SimpleNamespace as NS

    from tinyfaces_trt.runtime.backends import cuda_device, cuda_stages

    backends = _bench_module("bench_backends")
    monkeypatch.setattr(cuda_device, "PinnedBuffer", lambda nbytes: NS(ptr=4096, nbytes=nbytes))
    monkeypatch.setattr(cuda_device, "is_page_locked", lambda ptr, nbytes: False)
    stages = NS(preprocessor=cuda_stages.CudaPreprocessor.__new__(cuda_stages.CudaPreprocessor))
    bench = NS(detector=stages, _page_locked=[])
    with pytest.raises(RuntimeError, match=r"^cudaMallocHost memory is not seen as page-locked"):
        backends.DetectorBench.page_locked_copy(bench, np.zeros((4, 4, 3), np.uint8))
    assert [b.nbytes for b in bench._page_locked] == [48]
    bench.detector = NS(preprocessor=object())  # host stages: no page-locked pass at all
    assert backends.DetectorBench.page_locked_copy(bench, np.zeros((4, 4, 3), np.uint8)) is None


@pytest.mark.parametrize("page_locked", ["direct", "staged", "fails"])
def test_the_end_to_end_pass_times_a_page_locked_image_beside_or_says_why_not(page_locked):
    """latency's no-sync pass: the page-locked image after one untimed run, alternating with
    the pageable one (ABBA); dropped with the reason where its image was staged after all or
    its detect failed, the pageable timings kept."""
    latency = _load_latency()
    bench = latency._Bench(type("Spec", (), {"name": "gpu", "description": "", "precision": ""}))
    bench.pipe = pipe = _PageLockedPipe(page_locked)
    bench.end_to_end(np.zeros((4, 4, 3), np.uint8), 3)
    assert len(bench.entry["end_to_end"]["samples_ms"]) == 3 and "status" not in bench.entry
    if page_locked == "direct":
        assert pipe.order == ["locked", "pageable", "locked", "locked", "pageable", "pageable",
                              "locked"]
        assert len(bench.entry["end_to_end_page_locked"]["samples_ms"]) == 3
        assert "end_to_end_page_locked_note" not in bench.entry
        return
    assert "end_to_end_page_locked" not in bench.entry
    assert bench.entry["end_to_end_page_locked_note"] == {
        "staged": "not measured: the page-locked image was staged",
        "fails": "failed: RuntimeError: the upload failed"}[page_locked]
    assert pipe.order.count("pageable") == 3

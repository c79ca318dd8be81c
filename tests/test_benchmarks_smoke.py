"""Smoke test of benchmarks/latency.py: a tiny run into a tmp dir, then the JSON/Markdown
structure and the numbers that must agree (no timed assertions)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

pytest.importorskip("torch")

from tinyfaces_trt.core.config import DetectorConfig  # noqa: E402
from tinyfaces_trt.core.errors import WeightsError  # noqa: E402
from tinyfaces_trt.core.pyramid import plan_pyramid  # noqa: E402

LATENCY = Path(__file__).resolve().parents[1] / "benchmarks" / "latency.py"
STAGES = {"total", "preprocess", "network", "decode", "nms", "other"}


def _load_latency():
    spec = importlib.util.spec_from_file_location("tinyfaces_bench_latency", LATENCY)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    latency = _load_latency()
    argv = ["--image-size", "64x48", "--repeat", "2", "--warmup", "0", "--depth", "50",
            "--backend", "reference,torch,torch-cuda", "--candidates", "300",
            "--out", str(out), "--name", "smoke", "--export-dir", str(out / "export")]
    assert latency.main(argv) == 0
    result = json.loads((out / "smoke.json").read_text())
    return out, result, (out / "smoke.md").read_text()


def test_settings_record_the_run(run):
    _, result, _ = run
    s = result["settings"]
    assert result["schema"] == "tinyfaces-trt-latency/1"
    assert s["image_size"] == [64, 48] and s["depth"] == 50 and s["repeat"] == 2
    expected = plan_pyramid(48, 64, DetectorConfig())
    assert [(lv["height"], lv["width"]) for lv in s["levels"]] == \
        [(lv.height, lv.width) for lv in expected]
    m = result["machine"]
    assert m["cpu_model"] and m["logical_cores"] >= 1 and "numpy" in m["versions"]
    assert result["command"].startswith("python benchmarks/latency.py --image-size 64x48")


def test_backends_in_order_with_stages_or_reason(run):
    _, result, _ = run
    by_name = {b["name"]: b for b in result["backends"]}
    assert [b["name"] for b in result["backends"]] == ["reference", "torch", "torch-cuda"]
    n_levels = len(result["settings"]["levels"])
    for name in ("reference", "torch"):
        b = by_name[name]
        assert b["status"] == "ok", b
        level_keys = {f"network[L{i}]" for i in range(n_levels)}
        assert STAGES | level_keys <= set(b["stages"])
        for stat in b["stages"].values():
            assert len(stat["samples_ms"]) == 2
            assert stat["min_ms"] <= stat["median_ms"] <= stat["p90_ms"]
        assert isinstance(b["detections"], int)
        assert b["contention"]["discarded_runs"] == 0  # --max-contention is off
    assert by_name["reference"]["speedup_vs_reference"] == 1.0
    gpu = by_name["torch-cuda"]
    assert gpu["status"] in ("ok", "skipped")
    if gpu["status"] == "skipped":
        assert gpu["reason"]


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
    cuda = impls["cuda (kernels library)"]
    assert cuda["status"] == "ok" or cuda["reason"]


def test_markdown_lists_every_backend(run):
    out, result, md = run
    assert "## End-to-end latency per image" in md
    assert "| `reference` |" in md and "| `torch` |" in md
    gpu = next(b for b in result["backends"] if b["name"] == "torch-cuda")
    if gpu["status"] == "skipped":
        assert f"- `torch-cuda`: skipped: {gpu['reason']}" in md
    assert "## Decode + NMS on synthetic clustered score maps" in md
    if result.get("plot"):
        assert (out / "smoke.png").stat().st_size > 0
    else:
        assert "Plot skipped" in md


def test_help_has_examples_and_defaults(capsys):
    latency = _load_latency()
    with pytest.raises(SystemExit) as info:
        latency.parse_args(["--help"])
    assert info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "Examples: python benchmarks/latency.py " in text
    assert "--image-size 1920x1080 --repeat 3" in text
    assert "--depth {50,101} ResNet depth (default 101; with --weights: the checkpoint's)" in text
    assert "network variant (default pytorch; with --weights: the checkpoint's)" in text
    assert "seed of the random weights (default 0; unused with --weights)" in text


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

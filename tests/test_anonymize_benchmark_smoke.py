"""benchmarks/anonymize_video.py runs end to end on a tiny clip and writes its tables."""

from __future__ import annotations

import json

import pytest

from helpers_run import load_script

pytest.importorskip("av")


def test_tiny_run_writes_json_and_markdown(tmp_path, export_dir, capsys):
    module = load_script("benchmarks/anonymize_video.py", "anonymize_video")
    assert module.main(["--sizes", "96x64", "--frames", "2", "--min-face", "none,60,50000",
                        "--model", str(export_dir), "--out", str(tmp_path), "--name", "t"]) == 0
    doc = json.loads((tmp_path / "t.json").read_text())
    rows = doc["rows"]
    # 50000 px faces: no level of a 96x64 frame runs, no row (it would read as a speed-up)
    assert [r["min_face"] for r in rows] == [None, 60.0]
    assert "96x64 min_face=50000.0: left out, no pyramid level" in capsys.readouterr().err
    assert all(r["frames"] == 2 and r["fps"] > 0 for r in rows)
    # min_face=60 keeps every level (the 2x level reaches 110 px with the 2x regression
    # range); only templates that top out below 60 px are skipped
    assert rows[0]["levels"] == rows[1]["levels"]
    assert "| 96x64 | 60.0 |" in (tmp_path / "t.md").read_text()


def test_default_name_says_where_it_ran_and_the_warmup_covers_the_timed_batches(
        tmp_path, export_dir, monkeypatch):
    """Named after where the detector ran (the backend ``auto`` resolved to); the untimed
    warm-up gives ``detect_batch`` the frame counts the timed file does (3 frames in
    batches of 2: 2, then 1), so shapes a backend prepares on first use are not timed."""
    from tinyfaces_trt import detectors

    module = load_script("benchmarks/anonymize_video.py", "anonymize_video")
    from bench_common import today  # benchmarks/ is on the path once the script is loaded
    calls = []
    real = detectors.create_detector

    def create_detector(*args, **kwargs):
        detector = real(*args, **kwargs)
        batch = detector.detect_batch
        detector.detect_batch = lambda images, *a, **k: (calls.append(len(images)),
                                                         batch(images, *a, **k))[1]
        return detector

    monkeypatch.setattr(detectors, "create_detector", create_detector)
    assert module.main(["--sizes", "64x48", "--frames", "3", "--batch", "2", "--min-face", "none",
                        "--backend", "auto", "--model", str(export_dir),
                        "--out", str(tmp_path)]) == 0
    assert calls == [2, 1, 2, 1]
    (path,) = tmp_path.glob("*.json")
    doc = json.loads(path.read_text())
    assert doc["ran_on"] == module.ran_on(doc["backend_resolved"])
    assert path.name == f"anonymize-{doc['ran_on']}-{today()}.json"
    assert (doc["backend"], doc["rows"][0]["frames"]) == ("auto", 3)
    md = path.with_suffix(".md").read_text()
    assert md.startswith(f"# tf-anonymize frames/s (auto ({doc['backend_resolved']}), on the "
                         f"{doc['ran_on'].upper()})\n")

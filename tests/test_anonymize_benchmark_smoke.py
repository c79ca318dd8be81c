"""benchmarks/anonymize_video.py runs end to end on a tiny clip and writes its tables."""

from __future__ import annotations

import json

import pytest

from helpers_run import load_script

pytest.importorskip("av")


def test_tiny_run_writes_json_and_markdown(tmp_path, export_dir, capsys):
    module = load_script("benchmarks/anonymize_video.py", "anonymize_video")
    assert module.main(["--sizes", "96x64", "--frames", "2", "--min-face", "none,60",
                        "--model", str(export_dir), "--out", str(tmp_path), "--name", "t"]) == 0
    doc = json.loads((tmp_path / "t.json").read_text())
    rows = doc["rows"]
    assert [r["min_face"] for r in rows] == [None, 60.0]
    assert all(r["frames"] == 2 and r["fps"] > 0 for r in rows)
    # min_face=60 keeps every level (the 2x level reaches 110 px with the 2x regression
    # range); only templates that top out below 60 px are skipped
    assert rows[0]["levels"] == rows[1]["levels"]
    assert "| 96x64 | 60.0 |" in (tmp_path / "t.md").read_text()

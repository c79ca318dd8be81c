"""tools/nms_walk_cost.py: what the GPU NMS walks read, counted on the emulation."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def _tool():
    spec = importlib.util.spec_from_file_location("nms_walk_cost", ROOT / "tools" / "nms_walk_cost.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_reads_stop_at_the_kept_suppressor_and_kept_boxes_read_their_whole_walk():
    E = _tool().E
    # three identical boxes: rank 0 is kept, ranks 1 and 2 meet it first in their walks; a
    # fourth, kept, box overlaps the first three only a little: its walk reads all three
    boxes = np.float32([[0, 0, 20, 20]] * 3 + [[14, 0, 34, 20], [500, 500, 520, 520]])
    logits = np.float32([4, 3, 2, 1, 0])
    keys = np.arange(5, dtype=np.uint32)
    em = E.emulate_nms(boxes, logits, keys, 0.3, 1.0)
    assert em.kept.tolist() == [0, 3, 4]
    cost = E.walk_reads(boxes, logits, keys, em.kept, 0.3, 1.0)
    assert cost.reads.tolist() == [0, 1, 1, 3, 0] and cost.rows > 0 and cost.sampled == 5
    assert cost.summary()["reads_max"] == 3


def test_cli_on_a_small_clustered_map(capsys):
    assert _tool().main(["--clustered", "2000", "--sample", "300"]) == 0
    out = capsys.readouterr().out
    assert "candidates read mean" in out and "per sampled box (300)" in out

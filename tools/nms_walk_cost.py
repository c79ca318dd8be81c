"""What the GPU NMS walks read, from the numpy emulation (no GPU needed).

For a sample of boxes, counts the candidates a box's walk reads before it decides: up to the
first overlapping box that greedy NMS keeps (the box is suppressed there), or the whole walk
when the box is kept. That is the resolve kernel's work per thread (kernels/README.md, "Cost on
dense maps"). Inputs: the benchmark's clustered score map (``--clustered N``) or a synthetic
image through the seeded untrained network on ONNX Runtime (``--image WxH``).

    python tools/nms_walk_cost.py --clustered 50000
    python tools/nms_walk_cost.py --image 640x480 --prob-thresh 0.03 --sample 2000
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

from kernels import nms_emulation as E  # noqa: E402
from tinyfaces_trt.core.cli import parse_image_size, positive_int, probability  # noqa: E402
from tinyfaces_trt.runtime.nms import nms  # noqa: E402


def candidates_read(boxes: np.ndarray, logits: np.ndarray, keys: np.ndarray, thresh: float,
                    offset: float, sample: int, seed: int = 0) -> tuple[np.ndarray, float]:
    """(candidates read per sampled box, grid rows per sampled box)."""
    order = E.nms_order(logits, keys)
    b = np.asarray(boxes, np.float32)[order]
    kept = nms(np.asarray(boxes, np.float64), np.asarray(logits, np.float32),
               np.asarray(keys).astype(np.int64), thresh, offset)
    rank = np.empty(len(order), np.int64)
    rank[order] = np.arange(len(order))
    is_kept = np.zeros(len(order), bool)
    is_kept[rank[kept]] = True
    w, h, area, iso = E.geometry(b, offset)
    codes = E.cell_codes(b, offset)
    perm = np.argsort(codes, kind="stable")
    walkers = np.flatnonzero(~iso)
    js = np.sort(np.random.default_rng(seed).choice(walkers, min(sample, walkers.size), replace=False))
    reads, rows = [], 0
    for start in range(0, js.size, 500):
        wk = E.walks(b, w, h, js[start:start + 500], codes[perm], perm.astype(np.uint32), thresh, offset)
        rows += wk.rows
        stop = E.overlaps(b[wk.i], area[wk.i], b[wk.j], area[wk.j], thresh, offset) & is_kept[wk.i]
        first = np.flatnonzero(np.r_[True, wk.j[1:] != wk.j[:-1]])
        length = np.diff(np.r_[first, wk.j.size])
        position = np.arange(wk.j.size) - np.repeat(first, length)
        at = np.minimum.reduceat(np.where(stop, position, np.iinfo(np.int64).max), first)
        read = np.where(at == np.iinfo(np.int64).max, length, at + 1)
        # boxes whose walk holds no earlier candidate at all read nothing
        counts = np.zeros(js[start:start + 500].size, np.int64)
        counts[np.searchsorted(js[start:start + 500], wk.j[first])] = read
        reads.append(counts)
    return np.concatenate(reads), rows / max(js.size, 1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--clustered", type=positive_int, metavar="N",
                        help="the latency benchmark's clustered score map of about N candidates")
    source.add_argument("--image", type=parse_image_size, metavar="WxH",
                        help="a synthetic image through the seeded untrained network (ONNX Runtime)")
    parser.add_argument("--prob-thresh", type=probability, default=None,
                        help="candidate threshold (default: the detector's)")
    parser.add_argument("--sample", type=positive_int, default=5000, help="boxes sampled (5000)")
    args = parser.parse_args(argv)

    from tinyfaces_trt.core.config import DetectorConfig
    from tinyfaces_trt.runtime.decode import Candidates, decode_level

    overrides = {} if args.prob_thresh is None else {"prob_thresh": args.prob_thresh}
    config = DetectorConfig(**overrides)
    if args.clustered:
        from bench_scores import clustered_score_map

        level = clustered_score_map(args.clustered, config)
        cands = decode_level(level.score_map, level.level, config)
        label = f"clustered map, {args.clustered} target"
    else:
        import tinyfaces_trt
        from tinyfaces_trt.parity.images import synthetic_image

        detector = tinyfaces_trt.create_detector(config_overrides=overrides)
        height, width = args.image.height, args.image.width
        image = synthetic_image(height, width)
        parts, base = [], 0
        for lvl in detector.plan(height, width):
            score_map = detector.runner.run(detector.preprocessor.prepare(image, lvl))
            parts.append(decode_level(score_map, lvl, config, base))
            base += int(np.prod(score_map.shape[-2:])) * 25
        cands = Candidates.concatenate(parts)
        label = f"{width}x{height} synthetic image, seeded untrained network"
    reads, rows = candidates_read(cands.boxes, cands.logits, cands.keys, config.nms_thresh,
                                  config.box_pixel_offset, args.sample)
    print(f"{label}: {len(cands)} candidates, NMS threshold {config.nms_thresh}; per sampled box "
          f"({reads.size}): candidates read mean {reads.mean():.1f}, p99 "
          f"{np.percentile(reads, 99):.0f}, max {reads.max()}; grid rows {rows:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

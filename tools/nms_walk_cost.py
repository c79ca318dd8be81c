"""What the GPU NMS walks read, from the numpy emulation (no GPU needed).

For a sample of boxes, counts the candidates a box's walk reads before it decides, under both
resolve rules (kernels/README.md, "Cost on dense maps"): the walk-order rule reads up to the
first overlapping box that greedy NMS keeps (the box is suppressed there), or the whole walk
when the box is kept; the lookahead rule reads every pass of its walk (the first one from the
start, each later one from the box it waited on), in the emulation's lock-step rounds, and
polls its blocker's status once per round of waiting. The lookahead figures need the whole
emulation (every box's overlaps, for the rounds); ``--no-lookahead`` skips it. Inputs: the
benchmark's clustered score map (``--clustered N``) or a synthetic image through the seeded
untrained network on ONNX Runtime (``--image WxH``).

    python tools/nms_walk_cost.py --clustered 50000
    python tools/nms_walk_cost.py --image 640x480 --prob-thresh 0.03 --sample 2000
    python tools/nms_walk_cost.py --image 1920x1080 --prob-thresh 0.03 --sample 2000 --no-lookahead
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


def reads_text(s: dict[str, float]) -> str:
    """The reads of a :meth:`WalkReads.summary` in words: both rules side by side when the
    lookahead rule was counted."""
    if "reads_lookahead_mean" not in s:
        return (f"candidates read (walk order) mean {s['reads_mean']:.1f}, p99 {s['reads_p99']:.0f}, "
                f"max {s['reads_max']}; grid rows {s['rows']:.1f}")
    return (f"candidates read (walk order / lookahead) mean {s['reads_mean']:.1f} / "
            f"{s['reads_lookahead_mean']:.1f}, p99 {s['reads_p99']:.0f} / "
            f"{s['reads_lookahead_p99']:.0f}, max {s['reads_max']} / {s['reads_lookahead_max']}; "
            f"lookahead blocker polls mean {s['polls_lookahead_mean']:.1f}, max "
            f"{s['polls_lookahead_max']}; grid rows {s['rows']:.1f}")


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
    parser.add_argument("--no-lookahead", action="store_true",
                        help="walk-order reads only (no whole emulation for the lookahead rounds)")
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
    thresh, offset = config.nms_thresh, config.box_pixel_offset
    rounds = ""
    if args.no_lookahead:
        kept = nms(cands.boxes, cands.logits, cands.keys, thresh, offset)
        decided = None
    else:
        em = E.emulate_nms(cands.boxes, cands.logits, cands.keys, thresh, offset)
        iso = E.geometry(np.asarray(cands.boxes, np.float32)[em.order], offset)[3]
        kept, decided = em.kept, E.lookahead_schedule(len(em.order), iso, em.edge_j, em.edge_i)[1]
        rounds = f"; rounds (walk order / lookahead) {em.rounds} / {int(decided.max(initial=0))}"
    cost = E.walk_reads(cands.boxes, cands.logits, cands.keys, kept, thresh, offset, args.sample,
                        decided=decided)
    print(f"{label}: {len(cands)} candidates, NMS threshold {thresh}; per sampled box "
          f"({cost.sampled}): {reads_text(cost.summary())}{rounds}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

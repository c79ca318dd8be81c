"""Frames per second of tf-anonymize on generated 720p and 1080p clips, with and without
``--min-face``.

    python benchmarks/anonymize_video.py                                 # CPU, 2 frames per clip
    python benchmarks/anonymize_video.py --frames 10 --min-face none,20,160
    python benchmarks/anonymize_video.py --backend tensorrt --fp16 --frames 60    # on a GPU

Each clip (seeded noise with moving bright squares, H.264, 25 fps, generated with PyAV) is
anonymised end to end by :func:`tinyfaces_trt.anonymize.jobs.process_file`: decode thread,
batched detection, masks, encode thread. frames/s = frames / wall time of the whole file
(model loading excluded, one untimed warm-up frame through the detector first). The network
is the seeded untrained default (timings are the real network's; detections meaningless) or
``--model``. Writes ``<out>/<name>.json`` and ``.md``; progress on stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # this checkout's package
from bench_common import machine_description, today  # noqa: E402

from tinyfaces_trt.core.cli import parse_image_sizes, positive_int  # noqa: E402


def make_clip(path: Path, width: int, height: int, frames: int) -> None:
    """A seeded H.264 clip: noise and three bright squares moving 4 px a frame."""
    import av

    rng = np.random.default_rng(0)
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for i in range(frames):
            img = rng.integers(0, 255, (height, width, 3), dtype=np.uint8)
            for k, size in enumerate((24, 60, 140)):
                x, y = 50 + 4 * i + 300 * k, 100 + 40 * k
                img[y:y + size, x:x + size] = 230
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            frame.pts, frame.time_base = i, Fraction(1, 25)
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)


def _min_faces(text: str) -> list[float | None]:
    return [None if v.strip() == "none" else float(v) for v in text.split(",") if v.strip()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=parse_image_sizes, default="1280x720,1920x1080",
                        help="clip sizes WxH (default: 1280x720,1920x1080)")
    parser.add_argument("--frames", type=positive_int, default=2,
                        help="frames per clip (default: 2; a 1080p frame takes ~20 s on 2 cores)")
    parser.add_argument("--min-face", type=_min_faces, default="none,20,160",
                        help="--min-face settings, 'none' for none (default: none,20,160)")
    parser.add_argument("--backend", default="onnxruntime", help="default: onnxruntime (CPU)")
    parser.add_argument("--model", help="export folder (default: the seeded untrained network)")
    parser.add_argument("--fp16", action="store_true")
    parser.add_argument("--batch", type=positive_int, default=4)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    parser.add_argument("--name", help="result stem (default: anonymize-cpu|gpu-<date>)")
    args = parser.parse_args(argv)
    if isinstance(args.sizes, str):
        args.sizes = parse_image_sizes(args.sizes)
    if isinstance(args.min_face, str):
        args.min_face = _min_faces(args.min_face)

    from tinyfaces_trt.anonymize.jobs import Options, Task, process_file
    from tinyfaces_trt.core.pyramid import plan_pyramid
    from tinyfaces_trt.detectors import create_detector
    from tinyfaces_trt.runtime.masks import MaskStyle

    def log(line: str) -> None:
        print(f"anonymize_video: {line}", file=sys.stderr, flush=True)

    rows = []
    load_before = os.getloadavg()
    options = Options(style=MaskStyle(mode="blur", scale=1.3), hold=5, batch=args.batch)
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes:
            clip = Path(tmp) / f"clip_{size}.mp4"
            make_clip(clip, size.width, size.height, args.frames)
            for min_face in args.min_face:
                detector = create_detector(args.backend, model_dir=args.model, fp16=args.fp16,
                                           config_overrides={"min_face": min_face},
                                           progress=log)
                levels = plan_pyramid(size.height, size.width, detector.config)
                detector.detect(np.zeros((size.height, size.width, 3), np.uint8))  # warm-up
                task = Task(str(clip), str(Path(tmp) / f"out_{size}_{min_face}.mp4"),
                            str(Path(tmp) / "side.json"), "video")
                start = time.perf_counter()
                result = process_file(detector, task, options)
                seconds = time.perf_counter() - start
                detector.close()
                if result.status != "done":
                    raise SystemExit(f"anonymize_video: {result.error}")
                row = {"size": str(size), "min_face": min_face, "frames": result.frames,
                       "seconds": round(seconds, 3), "fps": round(result.frames / seconds, 4),
                       "levels": [lv.exponent for lv in levels],
                       "pixels_run": int(sum(lv.height * lv.width for lv in levels))}
                rows.append(row)
                log(f"{size} min_face={min_face}: {row['fps']:.3f} frames/s "
                    f"({len(levels)} levels)")
    kind = "cpu" if args.backend == "onnxruntime" and not args.fp16 else "gpu"
    name = args.name or f"anonymize-{kind}-{today()}"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    doc = {"backend": args.backend, "fp16": args.fp16, "model": args.model or "seeded untrained "
           "ResNet-101 (default network)", "batch": args.batch, "frames_per_clip": args.frames,
           "machine": machine_description(threads=0),
           "load_average_1min": {"before": round(load_before[0], 2),
                                 "after": round(os.getloadavg()[0], 2)},
           "rows": rows}
    (out / f"{name}.json").write_text(json.dumps(doc, indent=2) + "\n")
    lines = [f"# tf-anonymize frames/s ({args.backend}{' fp16' if args.fp16 else ''})", "",
             f"Machine: {doc['machine']['cpu_model']}, {doc['machine']['usable_cores']} cores; "
             f"{args.frames} frames per clip, whole file (decode + detect + blur + encode); "
             f"1-minute load average {doc['load_average_1min']['before']} before, "
             f"{doc['load_average_1min']['after']} after (other jobs share the machine).", "",
             "| clip | --min-face | pyramid levels (exponents) | pixels run | frames/s |",
             "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['size']} | {r['min_face'] or 'none'} | {r['levels']} | "
                     f"{r['pixels_run']:,} | {r['fps']:.3f} |")
    (out / f"{name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Frames per second of tf-anonymize on generated 720p and 1080p clips, with and without
``--min-face``.

    python benchmarks/anonymize_video.py                                 # CPU, 2 frames per clip
    python benchmarks/anonymize_video.py --frames 10 --min-face none,20,160
    python benchmarks/anonymize_video.py --backend tensorrt --fp16 --frames 60    # on a GPU

Each clip (seeded noise with moving bright squares, H.264, 25 fps, generated with PyAV) is
anonymised end to end by :func:`tinyfaces_trt.anonymize.jobs.process_file`: decode thread,
batched detection, masks, encode thread. frames/s = frames / wall time of the whole file
(model loading excluded; untimed warm-up first: blank frames through ``detect_batch`` in each
batch size the clip's frames go in, so that what a backend prepares per input shape, such as
torch-cuda's compile, is not timed). The network is the seeded untrained default (timings
are the real network's; detections meaningless) or ``--model``. Writes ``<out>/<name>.json``
and ``.md`` (default name ``anonymize-gpu-<date>`` when the detector ran on a GPU, else
``anonymize-cpu-<date>``); progress on stderr. Exit 1 with one line when the backend cannot
run here, 2 on bad arguments (clip sizes must be even: H.264 in 4:2:0).
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
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # this checkout's package
from bench_common import machine_description, one_line, today  # noqa: E402

from tinyfaces_trt.core.cli import (EXIT_ERROR, ImageSize, parse_image_sizes,  # noqa: E402
                                    positive_int)

PROG = "anonymize_video.py"


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


def even_image_sizes(text: str) -> list[ImageSize]:
    """argparse type: :func:`parse_image_sizes` with even widths and heights (H.264 4:2:0)."""
    sizes = parse_image_sizes(text)
    odd = [str(s) for s in sizes if s.width % 2 or s.height % 2]
    if odd:
        raise argparse.ArgumentTypeError(
            f"clip sizes need an even width and height (H.264 4:2:0), got {', '.join(odd)}")
    return sizes


def batch_counts(frames: int, batch: int) -> list[int]:
    """How many frames at once ``process_file`` gives ``detect_batch`` for a clip of
    ``frames`` frames: full batches of ``batch``, then the rest."""
    counts = [batch] if frames >= batch else []
    if frames % batch:
        counts.append(frames % batch)
    return counts


def ran_on(backend: str) -> str:
    """``"gpu"`` when a detector of this (resolved) backend runs its network on a GPU, else
    ``"cpu"`` (the result's name and report say where it ran)."""
    from tinyfaces_trt.detectors import DetectorSpec
    from tinyfaces_trt.scaleout.cluster import spec_uses_gpu

    return "gpu" if spec_uses_gpu(DetectorSpec(backend=backend)) else "cpu"


def gpu_text(kind: str, machine: dict[str, Any]) -> str:
    """The report's GPU clause: the GPU the detector ran on, or that it used none."""
    gpu = machine.get("gpu")
    if kind == "gpu":
        return f"GPU: {gpu['name'] if gpu else 'unnamed (torch and CUDA did not say)'}"
    return "no GPU used" + (f" ({gpu['name']} idle)" if gpu else "")


def _measure(args: argparse.Namespace, backend: str, log) -> list[dict[str, Any]]:
    """frames/s per clip size and --min-face setting.

    Raises:
        TinyFacesError: the detector cannot be made here, or a clip failed.
    """
    from tinyfaces_trt.anonymize.jobs import Options, Task, process_file
    from tinyfaces_trt.core.errors import TinyFacesError
    from tinyfaces_trt.core.pyramid import plan_pyramid
    from tinyfaces_trt.detectors import create_detector
    from tinyfaces_trt.runtime.masks import MaskStyle

    rows = []
    options = Options(style=MaskStyle(mode="blur", scale=1.3), hold=5, batch=args.batch)
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes:
            clip = Path(tmp) / f"clip_{size}.mp4"
            for min_face in args.min_face:
                detector = create_detector(backend, model_dir=args.model, fp16=args.fp16,
                                           config_overrides={"min_face": min_face},
                                           progress=log)
                try:
                    levels = plan_pyramid(size.height, size.width, detector.config)
                    if not levels:  # nothing would run: no row that looks like a speed-up
                        log(f"{size} min_face={min_face}: left out, no pyramid level can "
                            f"produce faces that large in frames of that size")
                        continue
                    if not clip.exists():
                        make_clip(clip, size.width, size.height, args.frames)
                    blank = np.zeros((size.height, size.width, 3), np.uint8)
                    for n in batch_counts(args.frames, args.batch):  # process_file's calls
                        detector.detect_batch([blank] * n)
                    task = Task(str(clip), str(Path(tmp) / f"out_{size}_{min_face}.mp4"),
                                str(Path(tmp) / "side.json"), "video")
                    start = time.perf_counter()
                    result = process_file(detector, task, options)
                    seconds = time.perf_counter() - start
                finally:
                    detector.close()
                if result.status != "done":
                    raise TinyFacesError(f"{size} min_face={min_face}: {result.error}")
                row = {"size": str(size), "min_face": min_face, "frames": result.frames,
                       "seconds": round(seconds, 3), "fps": round(result.frames / seconds, 4),
                       "levels": [lv.exponent for lv in levels],
                       "pixels_run": int(sum(lv.height * lv.width for lv in levels))}
                rows.append(row)
                log(f"{size} min_face={min_face}: {row['fps']:.3f} frames/s "
                    f"({len(levels)} levels)")
    return rows


def markdown(doc: dict[str, Any]) -> str:
    """The report of one run (``doc`` as written to the JSON)."""
    m = doc["machine"]
    backend = doc["backend"] + (f" ({doc['backend_resolved']})"
                                if doc["backend_resolved"] != doc["backend"] else "")
    lines = [f"# tf-anonymize frames/s ({backend}{' fp16' if doc['fp16'] else ''}, "
             f"on the {doc['ran_on'].upper()})", "",
             f"Machine: {m['cpu_model']}, {m['usable_cores']} cores, "
             f"{gpu_text(doc['ran_on'], m)}; {doc['frames_per_clip']} frames per clip, whole "
             f"file (decode + detect + blur + encode); 1-minute load average "
             f"{doc['load_average_1min']['before']} before, "
             f"{doc['load_average_1min']['after']} after (other jobs share the machine).", "",
             "| clip | --min-face | pyramid levels (exponents) | pixels run | frames/s |",
             "|---|---|---|---|---|"]
    for r in doc["rows"]:
        lines.append(f"| {r['size']} | {r['min_face'] or 'none'} | {r['levels']} | "
                     f"{r['pixels_run']:,} | {r['fps']:.3f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Runs the benchmark: 0 when done, 1 (one line on stderr, nothing written) when the
    backend cannot run here or a clip fails, 2 on bad arguments."""
    from tinyfaces_trt.detectors import BACKENDS

    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=even_image_sizes, default="1280x720,1920x1080",
                        help="clip sizes WxH, even (default: 1280x720,1920x1080)")
    parser.add_argument("--frames", type=positive_int, default=2,
                        help="frames per clip (default: 2; a 1080p frame takes ~20 s on 2 cores)")
    parser.add_argument("--min-face", type=_min_faces, default="none,20,160",
                        help="--min-face settings, 'none' for none (default: none,20,160)")
    parser.add_argument("--backend", default="onnxruntime", choices=BACKENDS,
                        help="default: onnxruntime (CPU)")
    parser.add_argument("--model", help="export folder (default: the seeded untrained network)")
    parser.add_argument("--fp16", action="store_true")
    parser.add_argument("--batch", type=positive_int, default=4)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    parser.add_argument("--name", help="result stem (default: anonymize-cpu|gpu-<date>, where "
                                       "the detector ran)")
    args = parser.parse_args(argv)
    if isinstance(args.sizes, str):
        args.sizes = even_image_sizes(args.sizes)
    if isinstance(args.min_face, str):
        args.min_face = _min_faces(args.min_face)

    from tinyfaces_trt.core.errors import TinyFacesError
    from tinyfaces_trt.core.files import (prepare_output_dir, removed_if_left_empty,
                                          write_text_atomic)
    from tinyfaces_trt.detectors import resolve_backend

    def log(line: str) -> None:
        print(f"anonymize_video: {line}", file=sys.stderr, flush=True)

    load_before = os.getloadavg()
    with removed_if_left_empty(args.out):
        try:
            out = prepare_output_dir(args.out, f"--out {args.out}")
            backend = resolve_backend(args.backend, args.model, fp16=args.fp16)
            rows = _measure(args, backend, log)
        except TinyFacesError as exc:
            print(f"{PROG}: error: {one_line(exc)}", file=sys.stderr, flush=True)
            return EXIT_ERROR
        kind = ran_on(backend)
        name = args.name or f"anonymize-{kind}-{today()}"
        doc = {"backend": args.backend, "backend_resolved": backend, "ran_on": kind,
               "fp16": args.fp16,
               "model": args.model or "seeded untrained ResNet-101 (default network)",
               "batch": args.batch, "frames_per_clip": args.frames,
               "machine": machine_description(threads=0),
               "load_average_1min": {"before": round(load_before[0], 2),
                                     "after": round(os.getloadavg()[0], 2)},
               "rows": rows}
        write_text_atomic(out / f"{name}.json", json.dumps(doc, indent=2) + "\n")
        text = markdown(doc)
        write_text_atomic(out / f"{name}.md", text)
    print(text, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())

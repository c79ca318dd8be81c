"""Whether a GPU fp16 network should pass parity, estimated on the CPU (no GPU needed).

The GPU check compares each GPU backend's detections with the CPU fp32 reference at the fp16
tolerances (``tinyfaces_trt.parity.compare.TOLERANCES["fp16"]``), on the benchmark's seeded
network and synthetic image. This runs that comparison with the fp16 network emulated in
float32: BatchNorm folded (as torch-cuda's compile does), weights and the input rounded to
fp16, and every layer's output rounded to fp16, the storage rounding of fp16 kernels that
accumulate in fp32 (cuDNN, Inductor's fused kernels). The GPU's own accumulation order
differs, so this estimates the size of the differences, not their exact values.

    python tools/fp16_parity_estimate.py --image-size 1920x1080,1280x720   # ~6 min, 2 cores

prints the comparisons as JSON (the GPU check's parity rows, one per size) and exits 1 when
one fails. A manual estimate with the runtime's numpy stages; the GPU check does not run it.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

import torch  # noqa: E402
from torch import nn  # noqa: E402

from bench_parity import compare_with_reference, reference_detections  # noqa: E402
from tinyfaces_trt.core.cli import parse_image_sizes  # noqa: E402
from tinyfaces_trt.core.config import DetectorConfig  # noqa: E402
from tinyfaces_trt.export.batchnorm import fold_batchnorm  # noqa: E402
from tinyfaces_trt.export.model import build_model  # noqa: E402
from tinyfaces_trt.export.torch_runner import TorchRunner  # noqa: E402
from tinyfaces_trt.parity.images import synthetic_image  # noqa: E402
from tinyfaces_trt.runtime.pipeline import Detector  # noqa: E402


def _fp16(t: torch.Tensor) -> torch.Tensor:
    return t.half().float()


def fp16_emulation(model: nn.Module) -> nn.Module:
    """A copy of ``model`` (eval) computing in float32 with fp16 storage rounding: BatchNorm
    folded, parameters, the input and every leaf module's output rounded to fp16."""
    emulated = fold_batchnorm(copy.deepcopy(model).eval()).eval()
    with torch.no_grad():
        for p in emulated.parameters():
            p.copy_(_fp16(p))
    for m in emulated.modules():
        if next(m.children(), None) is None:
            m.register_forward_hook(lambda mod, inputs, out: _fp16(out))
    emulated.register_forward_pre_hook(lambda mod, inputs: (_fp16(inputs[0]), *inputs[1:]))
    emulated.register_forward_hook(lambda mod, inputs, out: _fp16(out))
    return emulated


def estimate(width: int, height: int, depth: int, variant: str, seed: int) -> dict[str, Any]:
    """The fp16 comparison of the emulated network against the fp32 reference on the
    benchmark's synthetic image (seed 0) of ``width`` x ``height``."""
    model = build_model(depth=depth, variant=variant, seed=seed).eval()
    config = DetectorConfig.for_variant(model.variant)
    image = synthetic_image(height, width, 0)
    start = time.perf_counter()
    reference = reference_detections(model, config, image)
    with Detector(TorchRunner(fp16_emulation(model), device="cpu"), config) as detector:
        boxes = detector.detect(image)
    result = compare_with_reference(reference, boxes, config, "fp16")
    return {"image_size": [width, height], "depth": depth, "variant": variant, "seed": seed,
            "seconds": round(time.perf_counter() - start, 1), **result}


def main(argv: list[str] | None = None) -> int:
    from latency import DEFAULT_DEPTH, DEFAULT_VARIANT

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--image-size", type=parse_image_sizes, default=parse_image_sizes("1920x1080"),
                   metavar="WxH[,WxH]", help="the synthetic image's sizes (default 1920x1080)")
    p.add_argument("--depth", type=int, choices=(50, 101), default=DEFAULT_DEPTH,
                   help=f"ResNet depth (default {DEFAULT_DEPTH}, the benchmark's)")
    p.add_argument("--variant", choices=("pytorch", "matconvnet"), default=DEFAULT_VARIANT,
                   help=f"network variant (default {DEFAULT_VARIANT}, the benchmark's)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights (default 0)")
    args = p.parse_args(argv)
    rows = []
    for width, height in args.image_size:
        rows.append(estimate(width, height, args.depth, args.variant, args.seed))
        print(f"{width}x{height}: {'passed' if rows[-1]['passed'] else 'FAILED'} in "
              f"{rows[-1]['seconds']:.0f} s", file=sys.stderr, flush=True)
    print(json.dumps(rows, indent=1))
    return 0 if all(r["passed"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())

"""Host time of the CUDA stages per image, without a GPU: every CUDA runtime call and every
kernel-library entry point is a stand-in that returns at once, so what is timed is the Python
and ctypes work around them (the work that decides how soon the GPU gets its next launch).

    python benchmarks/host_overhead.py                     # 1920x1080, medians of 2000
    python benchmarks/host_overhead.py --image-size 1280x720 --repeat 500 --json out.json

Rows (medians per round):
- ``prepare levels 1-N``: CudaPreprocessor.prepare of every level after the first (level 0
  also stages the image: a host copy, timed by bench_upload.py on a GPU);
- ``decode + NMS, one level``: reset, one level's add_level and finish (the decode/NMS
  micro-benchmark's calls);
- ``decode + NMS, all levels``: reset, every level's add_level and finish.
The GPU's own time is not in these numbers: see latency.py for that.
"""

from __future__ import annotations

import argparse
import ctypes
import itertools
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_common import machine_description, now_iso  # noqa: E402
from tinyfaces_trt.core.cli import parse_image_sizes  # noqa: E402


class _Success(int):
    name = "cudaSuccess"


_OK = _Success(0)


class StubRuntime:
    """The cuda-python runtime calls ``cuda_device`` makes, answering success at once."""

    class cudaMemcpyKind:  # noqa: N801 (cuda-python's names)
        cudaMemcpyHostToDevice, cudaMemcpyDeviceToHost, cudaMemcpyDeviceToDevice = 1, 2, 3

    class cudaStreamCaptureMode:  # noqa: N801
        cudaStreamCaptureModeThreadLocal = 1

    cudaStreamNonBlocking, cudaEventDisableTiming = 1, 2

    def __init__(self) -> None:
        self._handles = itertools.count(0x1000, 0x100)
        self._pinned: list[Any] = []

    def __getattr__(self, name: str) -> Callable[..., tuple[Any, ...]]:
        if name in ("cudaMalloc", "cudaStreamCreate", "cudaStreamCreateWithFlags",
                    "cudaEventCreateWithFlags", "cudaGraphInstantiate", "cudaStreamEndCapture"):
            return lambda *args: (_OK, next(self._handles))
        if name in ("cudaGetDeviceCount",):
            return lambda *args: (_OK, 1)
        if name in ("cudaGetDevice",):
            return lambda *args: (_OK, 0)
        if name.startswith("cuda"):
            return lambda *args: (_OK,)
        raise AttributeError(name)

    def cudaStream_t(self, handle: int) -> int:  # noqa: N802
        return handle

    def cudaMallocHost(self, nbytes: int) -> tuple[Any, int]:  # noqa: N802 (real memory)
        buffer = ctypes.create_string_buffer(int(nbytes))
        self._pinned.append(buffer)
        return _OK, ctypes.addressof(buffer)


class _StubEntryPoints:
    """The library's C entry points: size queries answer a size, everything else succeeds."""

    @staticmethod
    def _set(pointer: Any, value: int) -> None:
        pointer._obj.value = value

    def tf_resize_plan_size(self, *args: Any) -> int:
        self._set(args[4], 1 << 16)
        self._set(args[5], 1 << 20)
        return 0

    def tf_candidates_size(self, capacity: Any, size: Any) -> int:
        self._set(size, 1 << 20)
        return 0

    def tf_nms_workspace_size(self, m: Any, size: Any) -> int:
        self._set(size, 1 << 20)
        return 0

    def __getattr__(self, name: str) -> Callable[..., int]:
        return lambda *args: 0


def install_stubs() -> Any:
    """Points ``cuda_device`` at :class:`StubRuntime`; returns a stub kernel library."""
    from tinyfaces_trt.kernels import binding
    from tinyfaces_trt.runtime.backends import cuda_device

    cuda_device._runtime_module = StubRuntime()
    library = binding.KernelLibrary.__new__(binding.KernelLibrary)
    library.raw, library.path = _StubEntryPoints(), Path("stub")
    return library


def measure(width: int, height: int, repeat: int, rounds: int) -> list[dict[str, Any]]:
    """Medians in microseconds of each row, per round."""
    from tinyfaces_trt.core.config import DetectorConfig
    from tinyfaces_trt.core.pyramid import plan_pyramid
    from tinyfaces_trt.runtime.backends import cuda_device
    from tinyfaces_trt.runtime.backends.cuda_stages import CudaPostprocessor, CudaPreprocessor

    library = install_stubs()
    config = DetectorConfig()
    levels = plan_pyramid(height, width, config)
    post = CudaPostprocessor(config, library=library)
    pre = CudaPreprocessor(config, library=library, stream=post.stream)
    image = np.zeros((height, width, 3), np.uint8)
    holder = cuda_device.DeviceBuffer(4)
    maps = [cuda_device.DeviceArray(holder.ptr, (1, 125, -(-lv.height // config.stride),
                                                 -(-lv.width // config.stride)), np.float32)
            for lv in levels]

    def prepare() -> None:
        for level in levels[1:]:
            pre.prepare(image, level)

    def one_level() -> None:
        post.reset(height, width)
        post.add_level(maps[-1], levels[-1])
        post.finish()

    def all_levels() -> None:
        post.reset(height, width)
        for score_map, level in zip(maps, levels):
            post.add_level(score_map, level)
        post.finish()

    rows = [(f"prepare levels 1-{len(levels) - 1}", prepare),
            ("decode + NMS, one level", one_level),
            (f"decode + NMS, all {len(levels)} levels", all_levels)]
    pre.prepare(image, levels[0])  # uploads (stages) the image once
    results = []
    for _ in range(rounds):
        entry = {}
        for name, work in rows:
            for _ in range(max(1, repeat // 20)):
                work()
            samples = []
            for _ in range(repeat):
                start = time.perf_counter()
                work()
                samples.append(time.perf_counter() - start)
            entry[name] = statistics.median(samples) * 1e6
        results.append(entry)
    pre.close()
    post.close()
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image-size", default="1920x1080", type=parse_image_sizes,
                        help="W x H (default 1920x1080)")
    parser.add_argument("--repeat", type=int, default=2000, help="timed calls per row and round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds (default 3)")
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args(argv)
    if args.repeat < 1 or args.rounds < 1:
        parser.error("--repeat and --rounds must be at least 1")
    size = args.image_size[0]
    rounds = measure(size.width, size.height, args.repeat, args.rounds)
    machine = machine_description(1)
    print(f"host time per call, GPU calls stubbed, {size.width}x{size.height}, medians of "
          f"{args.repeat}; {machine['cpu_model']}, Python {machine['versions']['python']}")
    for name in rounds[0]:
        print(f"  {name:32s} " + "  ".join(f"{r[name]:8.1f} us" for r in rounds))
    if args.json:
        Path(args.json).write_text(json.dumps({
            "created": now_iso(), "image_size": [size.width, size.height],
            "repeat": args.repeat, "machine": machine, "rounds_us": rounds}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

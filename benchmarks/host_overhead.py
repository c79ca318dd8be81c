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
- ``decode + NMS, all levels``: reset, every level's add_level and finish;
- ``detect, network stubbed``: a whole ``Detector.detect`` over the CUDA stages and a
  stand-in runner (its levels side by side, each returning a device array at once), the
  staging copy included (a real host copy);
- ``... without the staging copy``: the same with the copy left out (the rest of the host
  work before and around the GPU's);
- ``detect, page-locked image``: the same for an image in ``Detector.image_buffer``'s
  page-locked memory: one transfer queued, no staging (neither the copy nor its chunked
  hand-off to helper threads), two pointer queries.
The stand-in NMS keeps ``--kept`` boxes (default 128; rows of zeros), so each finish also
copies that many rows out of the page-locked buffer. The GPU's own time is not in these numbers:
see latency.py for that.
"""

from __future__ import annotations

import argparse
import ctypes
import itertools
import json
import statistics
import struct
import sys
import time
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_common import machine_description, now_iso  # noqa: E402
from tinyfaces_trt.core.cli import parse_image_sizes  # noqa: E402


#: Boxes the stand-in NMS keeps (the 10k-candidate decode/NMS benchmark keeps 127).
DEFAULT_KEPT = 128


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

    def __init__(self, kept: int = 0) -> None:
        self._handles = itertools.count(0x1000, 0x100)
        self._pinned: list[Any] = []
        self.kept = kept

    def cudaMemcpyAsync(self, dst: int, src: int, nbytes: int, kind: int,  # noqa: N802
                        stream: Any) -> tuple[Any]:
        """A download of NMS's results (counters, then rows) says ``kept`` boxes were kept
        (their rows stay zeros: a box inside any image), so the host's finishing is timed."""
        if kind == self.cudaMemcpyKind.cudaMemcpyDeviceToHost and nbytes >= 16:
            ctypes.memmove(dst, struct.pack("4I", min(self.kept, (nbytes - 16) // 20),
                                            self.kept, 0, 0), 16)
        return (_OK,)

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

    def cudaPointerGetAttributes(self, ptr: int) -> tuple[Any, Any]:  # noqa: N802
        """Host (page-locked) inside memory from :meth:`cudaMallocHost`, else unregistered."""
        inside = any(ctypes.addressof(b) <= int(ptr) < ctypes.addressof(b) + len(b)
                     for b in self._pinned)
        kind = self.cudaMemoryType.cudaMemoryTypeHost if inside else 0
        return _OK, types.SimpleNamespace(type=kind)

    class cudaMemoryType:  # noqa: N801
        cudaMemoryTypeHost = 1


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


def install_stubs(kept: int = 0) -> Any:
    """Points ``cuda_device`` at :class:`StubRuntime` (its NMS keeping ``kept`` boxes);
    returns a stub kernel library."""
    from tinyfaces_trt.kernels import binding
    from tinyfaces_trt.runtime.backends import cuda_device

    cuda_device._runtime_module = StubRuntime(kept)
    library = binding.KernelLibrary.__new__(binding.KernelLibrary)
    library.raw, library.path = _StubEntryPoints(), Path("stub")
    return library


def measure(width: int, height: int, repeat: int, rounds: int,
            kept: int = DEFAULT_KEPT) -> list[dict[str, Any]]:
    """Medians in microseconds of each row, per round (NMS keeping ``kept`` boxes)."""
    from tinyfaces_trt.core.config import DetectorConfig
    from tinyfaces_trt.core.pyramid import plan_pyramid
    from tinyfaces_trt.runtime.backends import cuda_device, staging
    from tinyfaces_trt.runtime.backends.cuda_stages import CudaPostprocessor, CudaPreprocessor

    library = install_stubs(kept)
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

    detector = _stub_detector(config, library, holder)
    frame = detector.image_buffer(height, width)  # Detector.image_buffer: page-locked
    frame[:] = 0
    copy_range = staging._copy_range

    def detect_without_copy() -> None:
        staging._copy_range = lambda *args: None
        try:
            detector.detect(image)
        finally:
            staging._copy_range = copy_range

    rows = [(f"prepare levels 1-{len(levels) - 1}", prepare),
            ("decode + NMS, one level", one_level),
            (f"decode + NMS, all {len(levels)} levels", all_levels),
            ("detect, network stubbed", lambda: detector.detect(image)),
            ("... without the staging copy", detect_without_copy),
            ("detect, page-locked image", lambda: detector.detect(frame))]
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
    if detector.preprocessor.page_locked_uploads < 1:  # the row timed staging, not its name
        raise RuntimeError("the page-locked image was staged: the stand-in runtime did not "
                           "report its memory page-locked")
    detector.close()
    pre.close()
    post.close()
    return results


def _stub_detector(config: Any, library: Any, holder: Any) -> Any:
    """A Detector over the CUDA stages (stubbed library) and a runner returning score maps
    at once, its levels side by side."""
    from tinyfaces_trt.core.runner import RunnerBase, RunnerCapabilities
    from tinyfaces_trt.runtime.backends import cuda_device
    from tinyfaces_trt.runtime.backends.cuda_stages import cuda_stages
    from tinyfaces_trt.runtime.pipeline import Detector

    class Runner(RunnerBase):
        capabilities = RunnerCapabilities(device_io=True, batch=True, concurrent_levels=True)
        stream = 0x7000

        def run(self, x: Any) -> Any:
            n, _, h, w = x.shape
            return cuda_device.DeviceArray(holder.ptr, (n, 125, -(-h // config.stride),
                                                        -(-w // config.stride)), np.float32)

        def run_levels(self, xs: Any) -> list[Any]:
            return [self.run(x) for x in xs]

    runner = Runner()
    pre, post = cuda_stages(config, library=library, runner_stream=runner.stream)
    return Detector(runner, config, preprocessor=pre, postprocessor=post)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image-size", default="1920x1080", type=parse_image_sizes,
                        help="W x H (default 1920x1080)")
    parser.add_argument("--repeat", type=int, default=2000, help="timed calls per row and round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds (default 3)")
    parser.add_argument("--kept", type=int, default=DEFAULT_KEPT,
                        help=f"boxes the stand-in NMS keeps, at most 4096 (default {DEFAULT_KEPT})")
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args(argv)
    if args.repeat < 1 or args.rounds < 1:
        parser.error("--repeat and --rounds must be at least 1")
    if not 0 <= args.kept <= 4096:  # all of them come with the counters (PREFETCH_ROWS)
        parser.error("--kept must be in [0, 4096]")
    size = args.image_size[0]
    rounds = measure(size.width, size.height, args.repeat, args.rounds, args.kept)
    machine = machine_description(1)
    print(f"host time per call, GPU calls stubbed, {size.width}x{size.height}, NMS keeping "
          f"{args.kept} boxes, medians of {args.repeat}; {machine['cpu_model']}, "
          f"Python {machine['versions']['python']}")
    for name in rounds[0]:
        print(f"  {name:32s} " + "  ".join(f"{r[name]:8.1f} us" for r in rounds))
    if args.json:
        Path(args.json).write_text(json.dumps({
            "created": now_iso(), "image_size": [size.width, size.height],
            "repeat": args.repeat, "kept": args.kept, "machine": machine, "rounds_us": rounds}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

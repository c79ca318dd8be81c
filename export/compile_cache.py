"""On-disk cache of torch.compile (Inductor) artefacts, one file per network and input shape.

Compiling the Tiny Faces network with Inductor takes seconds to minutes per input shape
(53 s for the 8 shapes of a 1080p pyramid on an H200; about a minute for ResNet-50 at 32x48
on a 2-core CPU). This cache lets a second process skip that work.

Mechanism: torch's portable "mega-cache" (:func:`torch.compiler.save_cache_artifacts` /
:func:`torch.compiler.load_cache_artifacts`). After a shape is compiled, the artefacts that
this process's compilations produced (or hit) -- Inductor's FX-graph cache entries with their
bundled Triton kernels or C++ libraries, AOTAutograd cache entries, autotuning results -- are
serialised into ``<cache root>/torch_compile/<key>/<N>x<C>x<H>x<W>.bin`` (written atomically).
Before a shape is compiled in a later process, its file is hot-loaded into Inductor's local
caches, so ``torch.compile`` then finds every graph there: dynamo still traces the module (a
few seconds), but nothing is lowered, generated or compiled again.

A file holds everything the writing process had compiled up to that shape (the mega-cache is
process-wide), so a later shape's file also covers earlier ones; loading duplicates is
harmless.

``<key>`` names the compiled code, not the weights: parameters are inputs of the compiled
graph, so two checkpoints of one architecture share their artefacts. It hashes the module's
structure (generated code, module tree, parameter shapes and dtypes), the compute dtype and
memory format, the torch / Triton / Python versions and the device (GPU name and compute
capability, or the CPU's vector ISA). The files are code for this torch: trust the cache
folder as you trust the installed packages.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
import os
import platform
from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path

import torch
from torch import nn

from tinyfaces_trt.core.files import cache_root, write_bytes_atomic, write_text_atomic
from tinyfaces_trt.core.hashing import key_digest
from tinyfaces_trt.core.locks import LockOutcome, LockWords, waiting_lock

_logger = logging.getLogger(__name__)

#: Sub-folder of the cache root holding compiled artefacts.
CACHE_SUBDIR = "torch_compile"
#: How often a runner waiting for another process's compile of a shape says so, and how long
#: it waits at most before compiling itself (one shape of a 1080p pyramid: seconds on an H200,
#: about a minute for ResNet-50 on a 2-core CPU).
LOCK_WAIT_STEP_S = 30.0
LOCK_WAIT_LIMIT_S = 600.0


def device_description(device: torch.device) -> str:
    """What compiled code depends on about the device: GPU name and compute capability, or
    the CPU architecture and the vector ISA torch dispatches to."""
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        return (f"cuda:{torch.cuda.get_device_name(device)}:sm_{major}{minor}:"
                f"cuda-{torch.version.cuda}")
    return f"{device.type}:{platform.machine()}:{torch.backends.cpu.get_cpu_capability()}"


def _package_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def compile_key(module: nn.Module, device: torch.device, dtype: torch.dtype,
                channels_last: bool) -> dict[str, str]:
    """The fields naming a module's compiled artefacts (see the module docstring)."""
    structure = hashlib.sha256(str(module).encode())
    code = getattr(module, "code", None)  # an fx.GraphModule's generated forward
    if code is not None:
        structure.update(code.encode())
    for name, tensor in (*module.named_parameters(), *module.named_buffers()):
        structure.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
    return {
        "module": structure.hexdigest(),
        "dtype": str(dtype),
        "memory_format": "channels_last" if channels_last else "contiguous",
        "device": device_description(device),
        "torch": torch.__version__,
        "triton": str(_package_version("triton")),
        "python": platform.python_version(),
    }


def key_folder(parent: Path, key: dict[str, str]) -> Path:
    """The folder of one key under ``parent``: the first characters of its fields' sha256."""
    return parent / key_digest(key)


def shape_file(folder: Path, shape: Sequence[int], suffix: str) -> Path:
    """``<folder>/<N>x<C>x<H>x<W><suffix>``: the file of one input shape."""
    return folder / ("x".join(str(int(d)) for d in shape) + suffix)


def shape_lock(folder: Path, shape: Sequence[int],
               file: Path) -> AbstractContextManager[LockOutcome]:
    """Where ``file`` (that shape's cache file) is missing, holds
    ``<folder>/<N>x<C>x<H>x<W>.lock`` while it is loaded or compiled and written; yields
    whether it waited for another process (and holds the lock).

    Processes sharing the cache (the replicas of a service warming up on the GPUs of one
    machine) then compile each shape once: the others wait, then load what it wrote. A shape
    whose file is there takes no lock (the files are replaced atomically), so processes
    loading a warm cache, also a read-only one, never wait for each other. The wait is said in
    the log and bounded (:data:`LOCK_WAIT_LIMIT_S`); without the lock (a file system that
    refuses it, a read-only cache) each compiles, which the log says at INFO level.
    """
    if os.path.isfile(file):  # False too where the folder cannot be read: load says why
        return nullcontext(LockOutcome(waited=False, held=False))
    words = LockWords(doing=f"compiling input shape {tuple(int(d) for d in shape)} into {file}",
                      other="the other compile", alone="compiles itself", unlocked="compiling")
    # without the lock (a read-only cache: writing the file warns next) only work is duplicated
    return waiting_lock(shape_file(folder, shape, ".lock"), words, say=_logger.info,
                        warn=_logger.info, step_s=LOCK_WAIT_STEP_S, limit_s=LOCK_WAIT_LIMIT_S)


def write_key(folder: Path, key: dict[str, str] | None) -> None:
    """Writes ``key`` as ``key.json`` in the existing ``folder``, unless it is already there."""
    if key is not None and not (folder / "key.json").exists():
        write_text_atomic(folder / "key.json", json.dumps(key, indent=2, sort_keys=True) + "\n")


class CompileCache:
    """The compiled artefacts of one module (one :func:`compile_key`), a file per input shape.

    Args:
        folder: this module's folder, ``<cache root>/torch_compile/<key>``.
        key: the fields of its key (written beside the files as ``key.json``).
    """

    def __init__(self, folder: str | os.PathLike[str], key: dict[str, str] | None = None) -> None:
        self.folder = Path(folder)
        self.key = key

    @classmethod
    def for_module(cls, module: nn.Module, device: torch.device, dtype: torch.dtype,
                   channels_last: bool,
                   cache_dir: str | os.PathLike[str] | None = None) -> "CompileCache":
        """The cache of ``module`` under :func:`~tinyfaces_trt.core.files.cache_root`."""
        key = compile_key(module, device, dtype, channels_last)
        return cls(key_folder(cache_root(cache_dir) / CACHE_SUBDIR, key), key)

    def path(self, shape: Sequence[int]) -> Path:
        """The file of one input shape."""
        return shape_file(self.folder, shape, ".bin")

    def lock(self, shape: Sequence[int]) -> AbstractContextManager[LockOutcome]:
        """Held around loading, compiling and saving ``shape`` while its file is missing (see
        :func:`shape_lock`)."""
        return shape_lock(self.folder, shape, self.path(shape))

    def load(self, shape: Sequence[int]) -> bool:
        """Hot-loads the artefacts saved for ``shape`` into Inductor's local caches.

        Returns False when there is no file (or torch cannot read it: it then logs a
        warning and the shape is compiled again).
        """
        path = self.path(shape)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return False
        except OSError as exc:
            _logger.warning("cannot read compile cache %s: %s", path, exc.strerror or exc)
            return False
        if torch.compiler.load_cache_artifacts(data) is None:
            _logger.warning("compile cache %s is unreadable by torch %s; compiling again",
                            path, torch.__version__)
            return False
        _logger.debug("loaded compiled artefacts from %s", path)
        return True

    def save(self, shape: Sequence[int]) -> Path | None:
        """Writes this process's compiled artefacts as the file of ``shape``; returns it, or
        None when torch has none to save (e.g. the local caches are disabled)."""
        saved = torch.compiler.save_cache_artifacts()
        if saved is None:
            return None
        path = self.path(shape)
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            write_key(self.folder, self.key)
            write_bytes_atomic(path, saved[0])
        except OSError as exc:
            # a read-only or full cache only costs a recompile next time
            _logger.warning("cannot write compile cache %s: %s", path, exc.strerror or exc)
            return None
        _logger.debug("saved compiled artefacts to %s (%d bytes)", path, len(saved[0]))
        return path


def inductor_cache_counters() -> dict[str, int]:
    """Inductor's FX-graph cache hits and misses so far in this process."""
    from torch._dynamo.utils import counters

    inductor = counters["inductor"]
    return {"hits": int(inductor.get("fxgraph_cache_hit", 0)),
            "misses": int(inductor.get("fxgraph_cache_miss", 0))}


__all__ = ["CACHE_SUBDIR", "LOCK_WAIT_LIMIT_S", "LOCK_WAIT_STEP_S", "CompileCache", "compile_key",
           "device_description", "inductor_cache_counters", "shape_lock"]

"""AOTInductor packages: the compiled network for one input shape as a self-contained file.

``torch.export`` captures the network (BatchNorm folded, compute dtype and memory format
inside, float32 NCHW in and out) at one static input shape; AOTInductor compiles it ahead of
time into a ``.pt2`` package holding the generated kernels, a shared library and the weights.
Loading one traces and compiles nothing (it unpacks the package and copies the weights to the
device), in Python (``torch._inductor.aoti_load_package``) or in C++ without Python
(``torch::inductor::AOTIModelPackageLoader``, libtorch of the same version): the deployable form
of what ``torch.compile`` builds per shape.

The price of self-contained packages: each holds, on disk and once loaded on the device, its own
copy of the weights (about 56 MB per input shape for the ResNet-101 trunk in fp16, so about
0.45 GB for the 8 shapes of a 1080p pyramid), where ``torch.compile`` shares one.

:class:`PackageCache` keeps them under
``<cache root>/torch_aoti/<key>/<N>x<C>x<H>x<W>.pt2`` (written atomically, ``key.json``
beside them). Unlike the compile cache's key (:func:`.compile_cache.compile_key`, code only),
``<key>`` also hashes the weights, which a package embeds. Packages are code for this torch and
this device: trust the folder as you trust the installed packages.

A package is loaded into this process only after a child process has loaded it
(:func:`check_loads`): torch's loader can crash the process that calls it (on the lent H200,
torch 2.11.0+cu130 died with SIGSEGV loading any package, a two-convolution one too,
2026-12-04), and a crash there must be the runner's fallback, not the caller's death. A
``<package>.loads`` file beside the package records a passed check, ``<package>.crashed`` a
failed one (the runner then falls back at once, in every later process too, until it is
deleted), so each package is checked once per torch version.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from pathlib import Path

import torch
from torch import nn

from tinyfaces_trt.core.errors import TinyFacesError, first_line
from tinyfaces_trt.core.files import (cache_root, remove_stale_temporaries, staging_dir,
                                      write_text_atomic)
from tinyfaces_trt.core.locks import LockOutcome
from tinyfaces_trt.export.compile_cache import compile_key, key_folder, shape_file, shape_lock, write_key

_logger = logging.getLogger(__name__)

#: Sub-folder of the cache root holding AOTInductor packages.
PACKAGE_SUBDIR = "torch_aoti"

Compiled = Callable[[torch.Tensor], torch.Tensor]

#: Seconds a child process may take to load a package (:func:`check_loads`).
CHECK_TIMEOUT_S = 300.0

# What the child runs: the caller's state (a CUDA context on the device), then the load of
# _load. argv: package, device, device index.
_CHECK_CODE = ("import sys, torch\n"
               "device = torch.device(sys.argv[2])\n"
               "if device.type == 'cuda':\n"
               "    torch.zeros(1, device=device)\n"
               "torch._inductor.aoti_load_package(sys.argv[1], run_single_threaded=True, "
               "device_index=int(sys.argv[3]))\n")


# Deaths that are the loader's own doing (recorded); another signal (SIGTERM, SIGKILL) came
# from outside, and the next process checks again.
_CRASH_SIGNALS = {int(getattr(signal, name)) for name in
                  ("SIGSEGV", "SIGBUS", "SIGILL", "SIGFPE", "SIGABRT", "SIGSYS")
                  if hasattr(signal, name)}


class PackageLoadError(TinyFacesError):
    """This torch cannot load an AOTInductor package: its loader crashed (or hung) a child
    process (:func:`check_loads`)."""


def weights_digest(module: nn.Module) -> str:
    """sha256 of every parameter and buffer of ``module``: names, dtypes, shapes and bytes."""
    digest = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        flat = tensor.detach().reshape(-1).contiguous().cpu()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}:".encode())
        digest.update(flat.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


class PackageCache:
    """The AOTInductor packages of one module with its weights, a ``.pt2`` per input shape.

    Args:
        folder: ``<cache root>/torch_aoti/<key>``.
        device: where the packages run (their code is for this device).
        key: the fields of the key (written beside the files as ``key.json``).
    """

    def __init__(self, folder: str | os.PathLike[str], device: torch.device,
                 key: dict[str, str] | None = None) -> None:
        self.folder = Path(folder)
        self.device = torch.device(device)
        self.key = key

    @classmethod
    def for_module(cls, module: nn.Module, device: torch.device, dtype: torch.dtype,
                   channels_last: bool,
                   cache_dir: str | os.PathLike[str] | None = None) -> "PackageCache":
        """The packages of ``module`` (as converted for ``device`` and ``dtype``) under
        :func:`~tinyfaces_trt.core.files.cache_root`."""
        key = {**compile_key(module, device, dtype, channels_last),
               "weights": weights_digest(module), "form": "aotinductor"}
        return cls(key_folder(cache_root(cache_dir) / PACKAGE_SUBDIR, key), device, key)

    def path(self, shape: Sequence[int]) -> Path:
        """The package of one input shape."""
        return shape_file(self.folder, shape, ".pt2")

    def lock(self, shape: Sequence[int]) -> AbstractContextManager[LockOutcome]:
        """Held around loading or compiling the package of ``shape`` while it is missing (see
        :func:`~.compile_cache.shape_lock`)."""
        return shape_lock(self.folder, shape, self.path(shape))

    def load(self, shape: Sequence[int]) -> Compiled | None:
        """The package of ``shape``, loaded; None when there is none, or when this torch
        cannot load it (a warning then says it is compiled again)."""
        path = self.path(shape)
        if not path.is_file():
            return None
        try:
            return _load(path, self.device)
        except PackageLoadError:  # a package compiled again would not load either
            raise
        except Exception as exc:  # a truncated file, another torch's package, ...
            _logger.warning("cannot load AOTInductor package %s (%s: %s); compiling it again",
                            path, type(exc).__name__, first_line(exc))
            return None

    def compile(self, module: nn.Module, shape: Sequence[int]) -> Compiled:
        """Exports ``module`` at ``shape``, compiles it into the package of that shape
        (replacing any), and returns it loaded.

        Raises:
            Exception: whatever torch.export or AOTInductor raise (e.g. no C++ compiler);
                no partial package is left.
        """
        path = self.path(shape)
        # export traces with autograd state; the runner prepares shapes in inference mode
        with torch.inference_mode(False), torch.no_grad():
            example = torch.zeros(tuple(int(d) for d in shape), device=self.device,
                                  dtype=torch.float32)
            program = torch.export.export(module, (example,), strict=False)
            try:
                self.folder.mkdir(parents=True, exist_ok=True)
                write_key(self.folder, self.key)
                remove_stale_temporaries(self.folder)  # builds of killed processes
                # built under its final name (the archive's inner folder takes the file's
                # name) in a staging folder, then moved into place
                staging = staging_dir(self.folder, "aoti")
            except OSError as exc:  # a read-only or full cache costs a compile next time
                _logger.warning("cannot write AOTInductor package %s (%s); compiling it for this "
                                "process only", path, exc.strerror or exc)
                return self._compile_private(program, path.name)
            try:
                built = staging / path.name
                torch._inductor.aoti_compile_and_package(program, package_path=str(built))
                with open(built, "rb+") as f:
                    os.fsync(f.fileno())
                os.replace(built, path)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
        _logger.debug("wrote AOTInductor package %s (%d bytes)", path, path.stat().st_size)
        return _load(path, self.device)

    def _compile_private(self, program: torch.export.ExportedProgram, name: str) -> Compiled:
        """The package built in a temporary folder, loaded (which unpacks it), then deleted."""
        with tempfile.TemporaryDirectory(prefix="tinyfaces-aoti-") as tmp:
            built = Path(tmp) / name
            torch._inductor.aoti_compile_and_package(program, package_path=str(built))
            return _load(built, self.device)


def _device_index(device: torch.device) -> int:
    return device.index if device.type == "cuda" and device.index is not None else -1


def _check_stamp(path: Path) -> str:
    """What a check's record holds first: this torch, and the package file it loaded."""
    st = path.stat()
    return f"torch {torch.__version__}; {st.st_size} bytes; mtime_ns {st.st_mtime_ns}\n"


def check_marker(path: Path) -> Path:
    """The file recording that ``path`` loaded in a child process."""
    return path.with_name(path.name + ".loads")


def crash_marker(path: Path) -> Path:
    """The file recording that loading ``path`` killed (or hung) a child process."""
    return path.with_name(path.name + ".crashed")


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except (OSError, UnicodeDecodeError):
        return None


def check_loads(path: Path, device: torch.device) -> None:
    """Loads the package ``path`` in a child process (this Python, this torch, a CUDA
    context on ``device`` first) unless a record beside it says how that went for this torch
    and this file: :func:`check_marker` (it loaded) or :func:`crash_marker` (it killed or
    hung the child: refused at once, without another child). Where no child can check it (it
    cannot start, or fails with an exception: a truncated file, no CUDA context to be had),
    a warning says so and the caller loads it itself (an exception then is its own).

    Raises:
        PackageLoadError: the child crashed (SIGSEGV, SIGBUS, ...) or took longer than
            :data:`CHECK_TIMEOUT_S`, now or as recorded; or another signal (SIGTERM to the
            process group, the OOM killer) killed it, which is not recorded.
    """
    stamp = _check_stamp(path)
    if _read(check_marker(path)) == stamp:
        return
    crashed = crash_marker(path)
    record = _read(crashed)
    again = f" (recorded in {crashed.name}; delete it to check again)"
    if record is not None and record.startswith(stamp):
        raise PackageLoadError(record[len(stamp):].strip() + again)
    cmd = [sys.executable, "-P", "-c", _CHECK_CODE, str(path), str(device),
           str(_device_index(device))]
    prefix = f"torch {torch.__version__}'s AOTInductor loader"
    try:
        done = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, timeout=CHECK_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired:
        reason = (f"{prefix} took over {CHECK_TIMEOUT_S:g} s on {path.name} in a child "
                  "process: not loaded into this process")
    except OSError as exc:
        _logger.warning("cannot check AOTInductor package %s in a child process (%s); "
                        "loading it here", path, exc.strerror or exc)
        return
    else:
        if done.returncode > 0:
            lines = done.stderr.decode(errors="replace").strip().splitlines()
            _logger.warning("checking AOTInductor package %s in a child process failed (exit "
                            "%d%s); loading it here", path, done.returncode,
                            f": {lines[-1]}" if lines else "")
            return
        if done.returncode == 0:
            try:
                write_text_atomic(check_marker(path), stamp)
            except OSError as exc:  # a read-only cache: checked again by the next process
                _logger.debug("cannot record the check of %s (%s)", path, exc)
            return
        try:
            how = signal.Signals(-done.returncode).name
        except ValueError:
            how = f"signal {-done.returncode}"
        if -done.returncode not in _CRASH_SIGNALS:  # SIGTERM to the group, the OOM killer:
            raise PackageLoadError(f"a child process loading {path.name} was killed ({how}): "
                                   "not loaded into this process")  # not the loader's doing
        reason = (f"{prefix} crashed a child process ({how}) on {path.name}: not loaded "
                  "into this process")
    try:
        write_text_atomic(crashed, stamp + reason + "\n")
    except OSError:  # a read-only cache: the next process checks again
        again = ""
    raise PackageLoadError(reason + again)


def _load(path: Path, device: torch.device) -> Compiled:
    check_loads(path, device)
    # run_single_threaded: no per-run locking or events, so that a CUDA graph can capture it
    return torch._inductor.aoti_load_package(str(path), run_single_threaded=True,
                                             device_index=_device_index(device))


__all__ = ["CHECK_TIMEOUT_S", "PACKAGE_SUBDIR", "PackageCache", "PackageLoadError", "check_loads",
           "check_marker", "crash_marker", "weights_digest"]

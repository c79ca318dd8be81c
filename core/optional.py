"""Lazy imports of optional dependencies, with one clear error when they cannot be used.

Heavy backends (TensorRT, ONNX Runtime, cuda-python) are imported on first use through
:func:`import_optional`, which turns every way an import can fail into one
:class:`~.errors.BackendUnavailableError` line saying what needs the package, what went
wrong and how to install it:

* not installed (``ModuleNotFoundError`` for the package itself);
* installed but broken: an ``ImportError`` from inside the package, or an ``OSError`` from
  a missing or mismatched shared library (common with TensorRT and CUDA wheels);
* older than the minimum version the code is written for.

:func:`import_tensorrt` is the one TensorRT import of the toolkit, used by the engine build
(export) and the TensorRT runner (runtime) alike.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Sequence
from types import ModuleType

from tinyfaces_trt.core.errors import (BackendUnavailableError, TensorRTUnavailableError,
                                       first_line, reraise_interrupt)

#: The oldest TensorRT the toolkit supports (named-tensor API, ``execute_async_v3``).
MIN_TENSORRT_VERSION = "10"
#: The oldest ONNX Runtime the toolkit supports: the exporter writes ONNX IR version 10, which
#: ONNX Runtime loads from 1.18 on (1.16 and 1.17 refuse the model); pyproject's extras agree.
MIN_ONNXRUNTIME_VERSION = "1.18"

TENSORRT_HINT = "install it on a machine with a CUDA GPU: pip install tensorrt"

CUDA_PYTHON_HINT = 'install cuda-python (pip install "tinyfaces-trt[gpu]" or pip install cuda-python)'


def version_tuple(version: str) -> tuple[int, ...]:
    """The leading dotted integers of a version string: ``"10.3.0.post1"`` -> ``(10, 3, 0)``."""
    numbers: list[int] = []
    for part in str(version).split("."):
        digits = re.match(r"\d+", part)
        if digits is None:
            break
        numbers.append(int(digits.group()))
        if digits.end() != len(part):
            break
    return tuple(numbers)


def _not_installed(exc: ImportError, module: str) -> bool:
    """True when ``exc`` says that ``module`` (or its top package) itself is absent."""
    missing = getattr(exc, "name", None)
    return isinstance(exc, ModuleNotFoundError) and bool(missing) and (
        module == missing or module.startswith(missing + "."))


def import_optional(module: str | Sequence[str], *, purpose: str, extra_hint: str,
                    name: str | None = None, min_version: str | None = None,
                    error: type[BackendUnavailableError] = BackendUnavailableError) -> ModuleType:
    """Imports an optional dependency or raises ``error`` with one line saying why.

    Args:
        module: the module to import, or alternatives tried in order (e.g. a newer and an
            older location of the same API); the first that imports is returned.
        purpose: what needs it, the subject of the message ("the onnxruntime backend").
        extra_hint: how to install it ("pip install 'tinyfaces-trt[onnxruntime]'").
        name: how to call the package in the message (default: the first module name).
        min_version: the oldest supported version, compared with the imported module's
            ``__version__`` (or its top-level package's) by leading integers.
        error: the :class:`BackendUnavailableError` subclass to raise.

    Raises:
        error: the package is not installed, fails to import (``ImportError`` from inside
            it, ``OSError`` from its shared libraries), or is older than ``min_version``; its
            ``problem`` attribute says which in a few words.
    """
    candidates = [module] if isinstance(module, str) else list(module)
    label = name or candidates[0]
    wanted = f"{label} >= {min_version}" if min_version else label
    failure: tuple[str, BaseException] | None = None
    for candidate in candidates:
        try:
            imported = importlib.import_module(candidate)
        except ImportError as exc:
            # a pybind11 module (ONNX Runtime's, torch's) turns Ctrl-C during its
            # initialisation into ImportError("initialization failed") caused by it
            reraise_interrupt(exc)
            if _not_installed(exc, candidate):
                failure = failure or ("is not installed", exc)
            else:
                failure = ("is installed but does not import", exc)
            continue
        except OSError as exc:  # a shared library is missing or does not match
            failure = ("is installed but failed to load its libraries", exc)
            continue
        break
    else:
        assert failure is not None
        what, exc = failure
        raise _with_problem(error(f"{purpose} needs {wanted}, which {what} ({first_line(exc)}); "
                                  f"{extra_hint}"), f"{label} {what}") from exc
    if min_version is not None:
        found = getattr(imported, "__version__", None)
        if found is None:
            top = importlib.import_module(imported.__name__.split(".")[0])
            found = getattr(top, "__version__", None)
        if found is None or version_tuple(found) < version_tuple(min_version):
            raise _with_problem(
                error(f"{purpose} needs {wanted}, found {label} {found or '(no version)'}; "
                      f"{extra_hint}"),
                f"{label} {found} is older than {min_version}" if found is not None
                else f"{label} has no version to check against {min_version}")
    return imported


def _with_problem(exc: BackendUnavailableError, problem: str) -> BackendUnavailableError:
    """``exc`` with ``problem``: the failure in a few words, without purpose or hint
    ("NVIDIA TensorRT is not installed", "NVIDIA TensorRT 8.6.1 is older than 10")."""
    exc.problem = problem
    return exc


def import_tensorrt() -> ModuleType:
    """Imports ``tensorrt`` (>= :data:`MIN_TENSORRT_VERSION`).

    Raises:
        TensorRTUnavailableError: TensorRT is not installed, does not load, or is too old.
    """
    return import_optional("tensorrt", purpose="TensorRT support (engine builds, the tensorrt "
                           "backend)", name="NVIDIA TensorRT", min_version=MIN_TENSORRT_VERSION,
                           extra_hint=TENSORRT_HINT, error=TensorRTUnavailableError)


def import_cuda_runtime() -> ModuleType:
    """Imports cuda-python's runtime API module: ``cuda.bindings.runtime`` (cuda-python
    >= 12.3), else the older ``cuda.cudart``.

    Raises:
        BackendUnavailableError: cuda-python is not installed or does not load.
    """
    return import_optional(("cuda.bindings.runtime", "cuda.cudart"), purpose="CUDA device support",
                           name="cuda-python", extra_hint=CUDA_PYTHON_HINT)

"""Connecting to a Ray cluster and sizing a detector pool on it.

    with connect(address) as ray:            # None: RAY_ADDRESS / a `ray start` cluster / new local
        plan = plan_pool(cluster_resources(), spec, workers=None, num_gpus=None)

A cluster this module starts is shut down when the block ends; one it connected to is only
disconnected from (and a Ray session already open in this process is left open). While
connected, what Ray prints on the driver (its workers' output, the cluster's error messages
such as "A worker died") goes to stderr: the CLIs' stdout holds their results (``--json``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import threading
from collections.abc import Callable, Sequence
from collections.abc import Iterator
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from tinyfaces_trt.core.errors import BackendUnavailableError, TinyFacesError
from tinyfaces_trt.runtime.backends.onnxruntime_runner import (AUTO, GPU_PROVIDERS,
                                                               PROVIDER_ALIASES, parse_providers)

log = logging.getLogger("tinyfaces_trt.scaleout")

#: ``providers`` (full names, as :func:`parse_providers` gives them; "auto", whole or listed,
#: may pick a GPU) that run the network on a GPU (their actors ask Ray for one).
_GPU_PROVIDERS = (AUTO, *GPU_PROVIDERS)


def import_ray() -> ModuleType:
    """``import ray``, or a clear error naming the extra to install."""
    try:
        import ray
    except ImportError as exc:
        raise BackendUnavailableError(
            "Ray is not installed: pip install 'tinyfaces-trt[scale]' (ray[data,serve]) to run "
            f"on a cluster ({exc})") from None
    return ray


@contextlib.contextmanager
def connect(address: str | None = None, *, num_cpus: int | None = None,
            num_gpus: int | None = None) -> Iterator[ModuleType]:
    """Yields the ``ray`` module connected to a cluster.

    Args:
        address: ``None`` joins ``$RAY_ADDRESS`` or the cluster ``ray start`` runs on this
            machine, else starts a local one; ``"local"`` always starts a local one;
            ``"auto"``, ``"HOST:6379"`` or ``"ray://HOST:10001"`` join that cluster.
        num_cpus, num_gpus: resources of a local cluster this call starts (default: all).

    Raises:
        BackendUnavailableError: Ray is not installed.
        TinyFacesError: the cluster cannot be reached.
    """
    ray = import_ray()
    if ray.is_initialized():
        yield ray
        return
    where = address or os.environ.get("RAY_ADDRESS") or "auto"
    problem = _unreachable(where)
    if problem is not None:  # ray.init retries such an address for ever, printing warnings
        raise TinyFacesError(f"cannot connect to the Ray cluster at {where}: {problem}")
    kwargs: dict[str, Any] = {"logging_level": logging.WARNING, "log_to_driver": True}
    if _starts_local(address):
        kwargs.update(include_dashboard=False, num_cpus=num_cpus, num_gpus=num_gpus)
    sigterm = _python_sigterm_handler()
    restore_output = _ray_output_to_stderr()
    try:
        ray.init(address=address, **kwargs)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        restore_output()
        raise TinyFacesError(f"cannot connect to the Ray cluster at {where}: {exc}{_AUTH_HINT}"
                             ) from None
    except BaseException as exc:  # Ctrl-C during a long ray.init, or any other failure
        restore_output()
        with contextlib.suppress(Exception):  # what a half-started local cluster runs goes too
            ray.shutdown()
        if sigterm is not None:
            signal.signal(signal.SIGTERM, sigterm)
            if isinstance(exc, SystemExit) and exc.code == 15:  # a SIGTERM taken by the
                raise KeyboardInterrupt from None  # handler ray.init sets: the caller's way
        raise
    if sigterm is not None:  # ray.init sets sys.exit(15); the caller's choice stands (a CLI's
        signal.signal(signal.SIGTERM, sigterm)  # interrupt: exit 130, as without --ray)
    try:
        yield ray
    finally:
        ray.shutdown()
        restore_output()


#: Said with a failed connection: Ray 2.5x clusters may require its token authentication.
_AUTH_HINT = (" (a cluster with Ray's token authentication needs the same token here: "
              "RAY_AUTH_MODE=token and the cluster's ~/.ray/auth_token or RAY_AUTH_TOKEN)")


def _ray_output_to_stderr() -> Callable[[], None]:
    """Sends what Ray prints on the driver's stdout to stderr instead (Ray's private
    ``print_to_stdstream``; ``ray.init`` binds its log handler to it, so this must run before
    ``ray.init``; left as it is where a Ray version has none; Ray Client's ``ray://`` prints
    through its own stream, not covered); returns the function that puts it back."""
    try:
        from ray._private import worker as ray_worker
    except ImportError:
        return lambda: None
    original = getattr(ray_worker, "print_to_stdstream", None)
    if original is None:
        return lambda: None

    def to_stderr(data: dict[str, Any], ignore_prefix: bool) -> None:
        original({**data, "is_err": True}, ignore_prefix)

    ray_worker.print_to_stdstream = to_stderr
    return lambda: setattr(ray_worker, "print_to_stdstream", original)


#: Seconds :func:`_unreachable` waits for a cluster's address to answer.
REACH_TIMEOUT_S = 10.0


def _unreachable(address: str) -> str | None:
    """Why nothing answers at ``address`` where it is a ``HOST:PORT`` (or ``ray://HOST:PORT``)
    to join (a TCP connection within :data:`REACH_TIMEOUT_S`), else None ("auto", "local",
    anything else: :func:`ray.init` decides)."""
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not host or not port.isdigit():
        return None
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=REACH_TIMEOUT_S).close()
    except OSError as exc:
        return (f"nothing answers at {host}:{port} ({exc.strerror or exc}); is the cluster up "
                "(ray status on its head node), and is this the head's address?")
    return None


def _python_sigterm_handler() -> Any:
    """The SIGTERM handler when it is a Python function and this is the main thread (where
    ``ray.init`` replaces it), else None."""
    if threading.current_thread() is not threading.main_thread():
        return None
    handler = signal.getsignal(signal.SIGTERM)
    return handler if callable(handler) else None


def _starts_local(address: str | None) -> bool:
    """Whether ``ray.init(address)`` would start a new local cluster (it then accepts
    resource arguments, which joining an existing cluster refuses)."""
    if address == "local":
        return True
    if address and address.startswith("ray://"):
        return False
    try:
        from ray._private.services import canonicalize_bootstrap_address
    except ImportError:  # moved in a later Ray: assume an explicit address joins a cluster
        return address is None and not os.environ.get("RAY_ADDRESS")
    try:
        return canonicalize_bootstrap_address(address) is None
    except Exception:  # an unreachable or malformed address: ray.init reports it
        return False


@dataclass(frozen=True)
class Resources:
    """What a cluster holds (whole units)."""

    cpus: int
    gpus: int


def cluster_resources() -> Resources:
    """The connected cluster's CPUs and GPUs."""
    import ray

    total = ray.cluster_resources()
    return Resources(int(total.get("CPU", 0)), int(total.get("GPU", 0)))


@dataclass(frozen=True)
class PoolPlan:
    """How many detector actors to start and what each one asks Ray for.

    Attributes:
        workers: number of actors.
        num_cpus: CPUs reserved per actor (also its ONNX Runtime thread count when the
            detector spec leaves ``threads`` unset).
        num_gpus: GPUs per actor (0 or 1).
    """

    workers: int
    num_cpus: int
    num_gpus: int


#: Backends whose network always runs on a GPU.
GPU_BACKENDS = ("tensorrt", "onnxruntime-cuda", "torch-cuda")


def spec_uses_gpu(spec: Any) -> bool:
    """Whether a :class:`~tinyfaces_trt.detectors.DetectorSpec` runs its network on a GPU
    (``auto`` is resolved before a pool is planned: see :func:`resolve_spec`)."""
    if spec.backend in GPU_BACKENDS:
        return True
    providers = parse_providers(spec.providers)  # the names as the detector will read them
    if providers == AUTO:
        return True
    return any(p in _GPU_PROVIDERS for p in providers or ())


def gpu_use_text() -> str:
    """:func:`spec_uses_gpu`'s rule in words, from the same constants (tf-serve's
    ``--gpus-per-replica`` help, which once left a GPU backend out)."""
    aliases = [AUTO, *(alias for alias, name in PROVIDER_ALIASES.items() if name in GPU_PROVIDERS)]
    return (f"the backend is {_or_list(GPU_BACKENDS)} (auto: the one it picks) or "
            f"--providers lists {_or_list(aliases)} (or their full names)")


def _or_list(names: Sequence[str]) -> str:
    """``a, b or c``."""
    return f"{', '.join(names[:-1])} or {names[-1]}" if len(names) > 1 else "".join(names)


def plan_pool(resources: Resources, spec: Any, workers: int | None = None,
              num_gpus: int | None = None) -> PoolPlan:
    """Sizes the pool: one actor per GPU when the detector uses a GPU and the cluster has
    GPUs, else CPU actors sharing the cluster's CPUs.

    Args:
        resources: the cluster's (:func:`cluster_resources`).
        spec: the detector recipe (its backend/providers say whether it wants a GPU).
        workers: number of actors (default: one per GPU, or one per CPU).
        num_gpus: GPUs per actor, 0 or 1 (default: 1 when the spec wants a GPU and the
            cluster has one).

    Raises:
        TinyFacesError: the request cannot fit the cluster (GPU actors without GPUs).
    """
    if num_gpus is None:
        num_gpus = 1 if resources.gpus and spec_uses_gpu(spec) else 0
    if num_gpus not in (0, 1):
        raise TinyFacesError(f"num_gpus per worker must be 0 or 1, got {num_gpus}")
    if num_gpus:
        if resources.gpus < 1:
            raise TinyFacesError("GPU workers were asked for but the Ray cluster has no GPU")
        return PoolPlan(workers or resources.gpus, 1, 1)
    cpus = max(1, resources.cpus)
    if workers is None:
        return PoolPlan(cpus, 1, 0)
    return PoolPlan(workers, max(1, cpus // workers), 0)

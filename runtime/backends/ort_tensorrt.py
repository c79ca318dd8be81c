"""ONNX Runtime's TensorRT execution provider, set up to build one engine, once.

    settings = TensorrtEpSettings(folder.profile, folder.input_name)
    runner = OnnxRuntimeCudaRunner(folder.onnx_path(), tensorrt=settings)

Left to itself, the provider builds its engine at the first run for that input shape alone,
and builds it again for every later shape outside the range seen so far: a pyramid's levels
(several sizes, larger and smaller) rebuild it several times for the first image, minutes
each, and again for each new image size (read in ONNX Runtime's source,
``ApplyProfileShapesFromInputTensorValue``). With the export's input-shape profile
(:mod:`~tinyfaces_trt.core.profiles`, the one ``tf-export`` builds TensorRT engines for)
given as its explicit ``trt_profile_*_shapes``, it builds one engine for every level at
session creation. A shape outside that profile then fails in TensorRT, so runners check the
pyramid against it first (:meth:`TensorrtEpSettings.check`).

The built engine and TensorRT's timing cache are kept in
``<cache root>/ort_tensorrt/<key>/`` (:func:`~tinyfaces_trt.core.files.cache_root`), so a
later process loads the engine instead of building it. ``<key>`` hashes the ONNX file's bytes,
the profile and the input name: ONNX Runtime names its engine files after the model's file
and tensor names, its own and TensorRT's versions and the GPU's compute capability, not after
the weights, so two exports named ``model.onnx`` would otherwise share an engine. ONNX Runtime
writes the engine file in place, not atomically, so sessions over one folder are created one
at a time, under ``build.lock`` (several replicas starting together: the first builds, the
others wait, then load). Where the folder cannot be made, the provider builds without the
cache (said at INFO).

Precision comes from the ONNX file: without ``trt_fp16_enable`` ONNX Runtime builds a strongly
typed network on TensorRT 10, so an fp16 export runs its fp16 layers in fp16 and an fp32 one in
fp32 (read in ONNX Runtime's source; nothing of this runs here, where there is no TensorRT).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import logging
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tinyfaces_trt.core.files import cache_root
from tinyfaces_trt.core.hashing import file_sha256
from tinyfaces_trt.core.locks import LockWords, waiting_lock
from tinyfaces_trt.core.profiles import Profile, format_shape

log = logging.getLogger(__name__)

TENSORRT_EP = "TensorrtExecutionProvider"
#: Sub-folder of the cache root holding the provider's engines.
CACHE_SUBDIR = "ort_tensorrt"
_KEY_CHARS = 16
#: How often a process waiting for another one's engine build says so, and how long it waits
#: at most before building itself (a wide dynamic profile of ResNet-101 takes minutes).
LOCK_WAIT_STEP_S = 30.0
LOCK_WAIT_LIMIT_S = 1800.0


@dataclass(frozen=True)
class TensorrtEpSettings:
    """How ONNX Runtime's TensorRT provider builds the network's engine.

    Args:
        profile: the input shapes the engine takes (the export folder's ``profile``).
        input_name: the network's input tensor (the export folder's ``input_name``).
        cache_dir: the cache root (None: :func:`~tinyfaces_trt.core.files.cache_root`).
        engine_cache: keep the built engine for later processes.
    """

    profile: Profile
    input_name: str = "image"
    cache_dir: str | os.PathLike[str] | None = None
    engine_cache: bool = True

    def profile_options(self) -> dict[str, str]:
        """The explicit profile as the provider's ``trt_profile_{min,opt,max}_shapes``
        options (``"image:1x3x1x1"``, trtexec's notation)."""
        return {f"trt_profile_{k}_shapes": f"{self.input_name}:{format_shape(getattr(self.profile, k))}"
                for k in ("min", "opt", "max")}

    def cache_folder(self, onnx_path: str | os.PathLike[str]) -> Path | None:
        """This model's engine folder, made if missing; None (said at INFO) without the
        engine cache or where it cannot be made."""
        if not self.engine_cache:
            return None
        key = {"onnx_sha256": file_sha256(onnx_path, what="ONNX model"),
               "input_name": self.input_name, "profile": self.profile.to_dict()}
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()
        folder = cache_root(self.cache_dir) / CACHE_SUBDIR / digest[:_KEY_CHARS]
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            log.info("cannot make the TensorRT engine cache %s (%s); ONNX Runtime's TensorRT "
                     "provider builds its engine in every process", folder, exc.strerror or exc)
            return None
        return folder

    def provider_options(self, folder: Path | None) -> dict[str, str]:
        """The provider's options: the explicit profile and, with a cache ``folder``, the
        engine and timing caches in it (ONNX Runtime's Python API takes "True" for its
        boolean options, not "1")."""
        options = self.profile_options()
        if folder is not None:
            options.update(trt_engine_cache_enable="True", trt_engine_cache_path=str(folder),
                           trt_timing_cache_enable="True", trt_timing_cache_path=str(folder))
        return options

    def check(self, shapes: Iterable[Any]) -> None:
        """Raises :class:`~tinyfaces_trt.core.errors.ManifestError` for the first input shape
        (an (N, 3, h, w) tuple, or a pyramid level: ``height`` and ``width``, N = 1) outside
        the profile, which the engine cannot run."""
        for s in shapes:
            self.profile.check((1, 3, s.height, s.width) if hasattr(s, "height") else tuple(s))


@contextlib.contextmanager
def build_lock(folder: Path | None) -> Iterator[bool]:
    """Holds ``<folder>/build.lock`` while a session over that engine folder is created (it
    builds and writes the engine, or reads it); yields whether it waited for another
    process. No folder: nothing to hold."""
    if folder is None:
        yield False
        return
    if importlib.util.find_spec("filelock") is None:
        log.warning("no filelock package (pip install filelock): sessions of several processes "
                    "over the engine cache %s are not ordered, and one may read an engine "
                    "another is still writing", folder)
        yield False
        return
    words = LockWords(doing=f"building the TensorRT engine in {folder}",
                      other="the other engine build", alone="builds it itself",
                      unlocked="building the engine")
    with waiting_lock(folder / "build.lock", words, say=log.info, warn=log.warning,
                      step_s=LOCK_WAIT_STEP_S, limit_s=LOCK_WAIT_LIMIT_S) as waited:
        yield waited


__all__ = ["CACHE_SUBDIR", "LOCK_WAIT_LIMIT_S", "TENSORRT_EP", "TensorrtEpSettings", "build_lock"]

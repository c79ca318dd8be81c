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
the weights, so two exports named ``model.onnx`` would otherwise share an engine.

ONNX Runtime writes the engine file in place, not atomically, and does not check the write, so
(:func:`open_with_engine_cache`):

- sessions over one folder are made one at a time, under its ``build.lock`` (replicas
  starting together: the first builds, the others wait, then load);
- a process that cannot hold the lock (a file system refusing it, a wait that gave up, no
  filelock package) builds without the cache, unless the folder is read-only (an engine
  shipped in an image: nobody writes there, so it is read);
- a session that fails over a folder that held engines before it (one truncated by a killed
  process or a full disk, which ONNX Runtime cannot read, or a truncated timing cache, which it
  refuses) is made again once with those files set aside: removed when it then succeeds, put
  back when it fails again (the failure was not theirs: out of GPU memory, say), except
  where the second session wrote a file of that name (an engine it built before failing:
  the newer one stays); files the first failing session wrote itself are kept.

Where the folder cannot be made, the provider builds without the cache (said at INFO).

Precision comes from the ONNX file: without ``trt_fp16_enable`` ONNX Runtime builds a strongly
typed network on TensorRT 10, so an fp16 export runs its fp16 layers in fp16. An fp32 export is
NOT run in strict fp32 on Ampere and newer GPUs: TensorRT's builder allows TF32 for float32
convolutions and matrix products by default (``BuilderFlag.TF32``, "Enabled by default"), and
ONNX Runtime's TensorRT provider has no option to clear that flag (none in its library of
onnxruntime-gpu 1.18.0 or 1.31.1; onnxruntime issue #26029), unlike its CUDA provider
(``use_tf32``, which the runner turns off for fp32 exports). So such a runner reports precision
``"tf32"`` (:func:`~.onnxruntime_runner.session_precision`) and parity compares it at
fp16-like tolerances. Only ``NVIDIA_TF32_OVERRIDE=0`` in the environment, set before the first
session, turns TF32 off there, for every NVIDIA library of the process (onnxruntime issues
#6427, #26029); the ``tensorrt`` backend (``tf-export --engine``) builds its fp32 engine with
TF32 cleared. (Read in ONNX Runtime's source and issues and TensorRT's documentation; nothing
of this runs here, where there is no TensorRT.)
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from tinyfaces_trt.core.errors import ManifestError, TinyFacesError, first_line
from tinyfaces_trt.core.files import cache_root
from tinyfaces_trt.core.hashing import file_sha256, key_digest
from tinyfaces_trt.core.locks import LockWords, waiting_lock
from tinyfaces_trt.core.profiles import Profile, format_shape, input_shape

log = logging.getLogger(__name__)

TENSORRT_EP = "TensorrtExecutionProvider"
#: Sub-folder of the cache root holding the provider's engines.
CACHE_SUBDIR = "ort_tensorrt"
#: How often a process waiting for another one's engine build says so, and how long it waits
#: at most before building itself (a wide dynamic profile of ResNet-101 takes minutes).
LOCK_WAIT_STEP_S = 30.0
LOCK_WAIT_LIMIT_S = 1800.0
#: What ONNX Runtime writes in the folder: engines, their profiles, TensorRT's timing cache.
ENGINE_SUFFIXES = (".engine", ".profile", ".timing")
#: Appended to a cached file's name while a session is made again without it.
ASIDE_SUFFIX = ".aside"
_Session = TypeVar("_Session")


@dataclass(frozen=True)
class TensorrtEpSettings:
    """How ONNX Runtime's TensorRT provider builds the network's engine.

    Args:
        profile: the input shapes the engine takes (the export folder's ``profile``).
        input_name: the network's input tensor (the export folder's ``input_name``).
        cache_dir: the cache root (None: :func:`~tinyfaces_trt.core.files.cache_root`).
        engine_cache: keep the built engine for later processes.
        progress: takes a line of text before and after an engine build (minutes); the log
            (INFO) where None.
    """

    profile: Profile
    input_name: str = "image"
    cache_dir: str | os.PathLike[str] | None = None
    engine_cache: bool = True
    progress: Callable[[str], None] | None = field(default=None, compare=False, repr=False)

    def profile_options(self) -> dict[str, str]:
        """The explicit profile as the provider's ``trt_profile_{min,opt,max}_shapes``
        options (``"image:1x3x1x1"``, trtexec's notation)."""
        return {f"trt_profile_{k}_shapes": spec
                for k, spec in self.profile.shape_specs(self.input_name).items()}

    def cache_folder(self, onnx_path: str | os.PathLike[str]) -> Path | None:
        """This model's engine folder, made if missing; None with ``engine_cache`` off, or
        (said at INFO) where it cannot be made."""
        if not self.engine_cache:
            return None
        try:
            key = {"onnx_sha256": file_sha256(onnx_path, what="ONNX model"),
                   "input_name": self.input_name, "profile": self.profile.to_dict()}
            folder = cache_root(self.cache_dir) / CACHE_SUBDIR / key_digest(key)
            folder.mkdir(parents=True, exist_ok=True)
        except (OSError, RuntimeError, TinyFacesError) as exc:  # RuntimeError: no home folder
            what = f"{exc.strerror}: {exc.filename}" if isinstance(exc, OSError) and exc.strerror \
                else exc
            log.info("no TensorRT engine cache (%s); ONNX Runtime's TensorRT provider builds its "
                     "engine in every process", what)
            return None
        return folder

    def provider_options(self, folder: Path | None) -> dict[str, str]:
        """The provider's options: the explicit profile and, with a cache ``folder``, the
        engine and timing caches in it (ONNX Runtime's Python API takes "True" for its
        boolean options, not "1"; the timing cache goes where the engines go, as no
        ``trt_timing_cache_path``, which ONNX Runtime 1.16 refuses, is given)."""
        options = self.profile_options()
        if folder is not None:
            options.update(trt_engine_cache_enable="True", trt_engine_cache_path=str(folder),
                           trt_timing_cache_enable="True")
        return options

    def check(self, shapes: Iterable[Any]) -> None:
        """Raises :class:`~tinyfaces_trt.core.errors.ManifestError` for the first input shape
        (an (N, 3, h, w) tuple, or a pyramid level: ``height`` and ``width``, N = 1) outside
        the profile, which the engine cannot run."""
        p = self.profile
        for s in shapes:
            shape = input_shape(s)
            if not p.contains(shape):
                raise ManifestError(
                    f"input shape {format_shape(shape)} is outside the input-shape profile of "
                    f"ONNX Runtime's TensorRT engine (min {format_shape(p.min)}, max "
                    f"{format_shape(p.max)}); re-export with tf-export --image-size covering "
                    f"this image (--max-batch for more images a run), or run without the "
                    f"TensorRT provider (providers 'cuda', tf-detect --providers cuda)")

    @contextlib.contextmanager
    def engine_folder(self, onnx_path: str | os.PathLike[str]) -> Iterator[Path | None]:
        """The engine folder to give ONNX Runtime while the block makes its session, held
        under its ``build.lock``; a read-only folder unlocked; None where the session builds
        without the cache (none can be made, or the lock cannot be held: said)."""
        folder = self.cache_folder(onnx_path)
        if folder is None:
            yield None
            return
        if importlib.util.find_spec("filelock") is None:
            yield _unlocked(folder, "there is no filelock package (pip install filelock)")
            return
        words = LockWords(doing=f"building or loading the TensorRT engine in {folder}",
                          other="the other engine build", alone="builds without the cache",
                          unlocked="making the session")
        # where the lock cannot be taken (a read-only folder) the next lines say what follows;
        # a wait (as long as another process's build) is said where the build would be
        with waiting_lock(folder / "build.lock", words, say=self.progress or log.info, warn=log.info,
                          step_s=LOCK_WAIT_STEP_S, limit_s=LOCK_WAIT_LIMIT_S) as lock:
            yield folder if lock.held else _unlocked(folder, "its lock is not held")


def _unlocked(folder: Path, why: str) -> Path | None:
    """``folder`` where nobody can write in it (ONNX Runtime then only reads), else None."""
    if not os.access(folder, os.W_OK):
        log.info("reading the TensorRT engine cache %s without its lock (%s): it is read-only",
                 folder, why)
        return folder
    log.warning("ONNX Runtime's TensorRT provider builds its engine without the cache %s: %s, "
                "and ONNX Runtime writes engines in place, where another process may read them",
                folder, why)
    return None


def cached_files(folder: Path) -> list[Path]:
    """What ONNX Runtime wrote in ``folder`` (:data:`ENGINE_SUFFIXES`)."""
    try:
        return sorted(p for p in folder.iterdir() if p.suffix in ENGINE_SUFFIXES)
    except OSError:
        return []


def remove_files(paths: Iterable[Path]) -> int:
    """Removes ``paths``; how many went (one that cannot go is said at INFO)."""
    removed = 0
    for path in paths:
        try:
            path.unlink()
            removed += 1
        except OSError as exc:
            log.info("cannot remove %s: %s", path, exc.strerror or exc)
    return removed


def set_aside(paths: Iterable[Path]) -> dict[Path, Path]:
    """Renames ``paths`` with :data:`ASIDE_SUFFIX` (ONNX Runtime no longer finds them); the
    renamed ones, each to its new path (one that cannot be renamed is said at INFO)."""
    aside = {}
    for path in paths:
        target = path.with_name(path.name + ASIDE_SUFFIX)
        try:
            os.replace(path, target)
            aside[path] = target
        except OSError as exc:
            log.info("cannot rename %s: %s", path, exc.strerror or exc)
    return aside


def put_back(aside: dict[Path, Path]) -> None:
    """Undoes :func:`set_aside` where no file of the same name was written since (that one,
    newer, stays; the set-aside one is removed)."""
    for path, target in aside.items():
        try:
            if path.exists():
                target.unlink()
            else:
                os.replace(target, path)
        except OSError as exc:
            log.info("cannot put %s back: %s", path, exc.strerror or exc)


def open_with_engine_cache(settings: TensorrtEpSettings, onnx_path: str | os.PathLike[str],
                           options: dict[str, str],
                           make: Callable[[], _Session]) -> _Session:
    """``make()`` (an ONNX Runtime session whose TensorRT provider takes ``options``, which
    this completes with ``settings``' profile and engine cache) under the engine folder's
    lock. Where it fails over files cached before it, it is made again once without them
    (ONNX Runtime cannot read an engine or timing cache a killed process or a full disk left
    truncated): they are removed if it then succeeds, put back if it fails again."""
    say = settings.progress or log.info
    with settings.engine_folder(onnx_path) as folder:
        options.update(settings.provider_options(folder))
        if folder is not None:  # a process killed while retrying: those failed it
            remove_files(folder.glob(f"*{ASIDE_SUFFIX}"))
        before = [] if folder is None else cached_files(folder)
        building = not any(f.suffix == ".engine" for f in before)  # else it loads one
        if building:
            say(f"ONNX Runtime's TensorRT provider: building its engine for input shapes "
                f"{format_shape(settings.profile.min)} to {format_shape(settings.profile.max)}"
                + (f" into {folder} (one time; minutes) ..." if folder else " (minutes) ..."))
        else:
            log.info("ONNX Runtime's TensorRT provider: loading its engine from %s (built again "
                     "there if it was made for another GPU or version)", folder)
        start = time.perf_counter()
        try:
            session = make()
        except Exception as exc:
            aside = set_aside(before)
            if not aside:
                raise
            log.warning("ONNX Runtime's TensorRT provider failed over the engines cached in %s "
                        "(%s); building the engine again without them", folder, first_line(exc))
            building, start = True, time.perf_counter()
            try:
                session = make()
            except Exception:
                put_back(aside)
                log.warning("ONNX Runtime's TensorRT provider failed without the cached engines "
                            "too; they are kept in %s (but for any it built again)", folder)
                raise
            remove_files(aside.values())
            log.warning("removed the cached engines ONNX Runtime's TensorRT provider could not "
                        "use from %s", folder)
        if building:
            say(f"ONNX Runtime's TensorRT provider: engine ready in {time.perf_counter() - start:.1f} s")
        return session


__all__ = ["ASIDE_SUFFIX", "CACHE_SUBDIR", "ENGINE_SUFFIXES", "LOCK_WAIT_LIMIT_S", "TENSORRT_EP",
           "TensorrtEpSettings", "cached_files", "open_with_engine_cache", "put_back",
           "remove_files", "set_aside"]

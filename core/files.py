"""Files and folders: output folders checked before long work, atomic outputs, the cache root.

Every output the toolkit writes goes through :func:`atomic_output`: it is written to a hidden
temporary name in the destination folder and renamed over the final name only once complete,
so an interrupted run or a full disk never leaves a truncated file under a final name.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from tinyfaces_trt.core.errors import TinyFacesError


def prepare_output_dir(folder: str | os.PathLike[str], what: str) -> Path:
    """Creates ``folder`` if needed and checks that it is a writable folder.

    Args:
        folder: the folder.
        what: how messages name it, e.g. ``"--out detections/"``.

    Raises:
        TinyFacesError: one line naming ``what``, when it is a file, cannot be created, or
            is not writable.
    """
    path = Path(folder).expanduser()
    if path.exists() and not path.is_dir():
        raise TinyFacesError(f"{what} exists and is not a folder; give a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise TinyFacesError(f"cannot create {what}: {exc.strerror or exc}; "
                             "give a writable folder") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise TinyFacesError(f"{what} is not writable; give a writable folder")
    return path


#: Environment variable naming the cache root (export cache, built kernels, compiled models).
CACHE_ENV = "TINYFACES_CACHE"


def cache_root(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """The cache folder: ``cache_dir``, else ``$TINYFACES_CACHE``, else
    ``$XDG_CACHE_HOME/tinyfaces_trt``, else ``~/.cache/tinyfaces_trt``."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg).expanduser() / "tinyfaces_trt"


TEMP_PREFIX = ".tf-tmp-"


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yields a temporary path beside ``path``; renames it to ``path`` when the block succeeds.

    Write the whole file to the yielded path (any writer that takes a path or a file name).
    On success it is flushed to disk and atomically renamed over ``path``; on any exception
    (KeyboardInterrupt included) it is removed and the exception propagates, so ``path`` is
    either the complete new file or whatever was there before.

    The temporary name keeps the final suffix (``.tf-tmp-XXXX-name.jpg``) so that writers
    choosing a format by extension still do.
    """
    final = Path(path)
    fd, tmp_name = tempfile.mkstemp(prefix=f"{TEMP_PREFIX}", suffix=f"-{final.name}",
                                    dir=final.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, final)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes) -> None:
    """Writes ``data`` to ``path`` through :func:`atomic_output`."""
    with atomic_output(path) as tmp:
        tmp.write_bytes(data)


def write_text_atomic(path: str | os.PathLike[str], text: str) -> None:
    """Writes UTF-8 ``text`` to ``path`` through :func:`atomic_output`."""
    write_bytes_atomic(path, text.encode("utf-8"))

"""Files and folders: output folders checked before long work, the cache root."""

from __future__ import annotations

import os
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

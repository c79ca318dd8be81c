"""SHA-256 of files (weights identity, export-cache keys, manifest file checks) and of cache
keys (the folder names of compiled models and TensorRT engines)."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path

from tinyfaces_trt.core.errors import TinyFacesError


#: Hex characters of a key's sha256 that name its cache folder (64 bits: no collision).
KEY_CHARS = 16


def key_digest(key: Mapping[str, object]) -> str:
    """The first :data:`KEY_CHARS` hex characters of the sha256 of ``key`` as sorted JSON:
    the name of the cache folder of what ``key`` describes."""
    text = json.dumps(dict(key), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:KEY_CHARS]


def file_digest(path: str | os.PathLike[str]) -> tuple[int, str]:
    """``(size in bytes, hex sha256)`` of a file's bytes, from one read of it.

    Raises:
        OSError: the file cannot be opened or read.
    """
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return size, digest.hexdigest()


def file_sha256(path: str | os.PathLike[str], *, what: str = "file",
                error: type[TinyFacesError] = TinyFacesError) -> str:
    """Hex sha256 of a file's bytes.

    Args:
        path: the file.
        what: how messages name it, e.g. ``"weights file"``.
        error: the exception raised when it is missing, a folder or unreadable.
    """
    p = Path(path)
    if p.is_dir():
        raise error(f"{what} {p} is a folder, not a file")
    if not p.is_file():
        raise error(f"{what} not found: {p}")
    try:
        return file_digest(p)[1]
    except OSError as exc:
        raise error(f"cannot read {what} {p}: {exc.strerror or exc}") from exc

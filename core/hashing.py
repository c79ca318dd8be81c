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


def not_a_file(path: str | os.PathLike[str], what: str = "file") -> str | None:
    """Why ``path`` is no regular file to read (``what`` names it: "weights file"): missing,
    a folder, or a named pipe (a ``<(...)`` substitution), device or socket; else None."""
    p = Path(path)
    if p.is_file():
        return None
    if p.is_dir():
        return f"{what} {p} is a folder, not a file"
    if os.path.exists(p):
        return f"{what} {p} is not a regular file (a pipe, device or socket); give the file itself"
    return f"{what} not found: {p}"


def file_sha256(path: str | os.PathLike[str], *, what: str = "file",
                error: type[TinyFacesError] = TinyFacesError) -> str:
    """Hex sha256 of a file's bytes.

    Args:
        path: the file.
        what: how messages name it, e.g. ``"weights file"``.
        error: the exception raised when it is missing, a folder or unreadable.
    """
    p = Path(path)
    problem = not_a_file(p, what)
    if problem:
        raise error(problem)
    try:
        return file_digest(p)[1]
    except OSError as exc:
        raise error(f"cannot read {what} {p}: {exc.strerror or exc}") from exc

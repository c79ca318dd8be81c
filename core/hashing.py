"""SHA-256 of files: weights identity, export-cache keys, manifest file checks."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from tinyfaces_trt.core.errors import TinyFacesError


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

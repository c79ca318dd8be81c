"""Fault injection shared by the reliability tests: writers that fail half-way, checks that
no final file is truncated."""

from __future__ import annotations

import errno
import json
from pathlib import Path

from PIL import Image

from tinyfaces_trt.core.files import TEMP_PREFIX


def failing_save(fail_on: str, exc: BaseException):
    """A replacement for ``PIL.Image.Image.save`` that, for a file whose name contains
    ``fail_on``, writes the first half of the encoded bytes to the target and then raises
    ``exc`` (a full disk, an interrupt); other files are saved normally."""
    real_save = Image.Image.save

    def save(self, fp, format=None, **params):  # noqa: A002 - Pillow's name
        if fail_on not in str(fp):
            return real_save(self, fp, format, **params)
        import io

        buf = io.BytesIO()
        fmt = format or Image.registered_extensions()[Path(str(fp)).suffix.lower()]
        real_save(self, buf, fmt, **params)
        data = buf.getvalue()
        with open(fp, "wb") as f:
            f.write(data[: len(data) // 2])
        raise exc

    return save


def enospc() -> OSError:
    return OSError(errno.ENOSPC, "No space left on device")


def assert_no_truncated_outputs(folder: Path) -> list[Path]:
    """Every image under ``folder`` decodes completely and every JSON parses; returns the
    final (non-temporary) files."""
    finals = [p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(TEMP_PREFIX)]
    for path in finals:
        if path.suffix == ".json":
            json.loads(path.read_text())
        elif path.suffix in (".png", ".jpg"):
            with Image.open(path) as im:
                im.load()  # raises on a truncated file (LOAD_TRUNCATED_IMAGES is off)
        elif path.suffix == ".txt":
            lines = path.read_text().splitlines()
            assert len(lines) == 2 + int(lines[1]), path
    return finals


def temporaries(folder: Path) -> list[Path]:
    """Temporary files and staging folders left under ``folder``."""
    return [p for p in folder.rglob(f"{TEMP_PREFIX}*")]

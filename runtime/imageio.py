"""Reading and writing images as (H, W, 3) uint8 RGB arrays (Pillow), with clear errors."""

from __future__ import annotations

import io
import os
import struct
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from tinyfaces_trt.core.errors import ImageError, ImageTooLargeError

#: Largest image (pixels) :func:`load_image` decodes by default: Pillow's own
#: decompression-bomb error limit (twice ``Image.MAX_IMAGE_PIXELS``).
DEFAULT_MAX_PIXELS = 2 * 89_478_485

_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def _check_file(path: Path) -> None:
    if not path.exists():
        raise ImageError(f"{path}: image file not found")
    if path.is_dir():
        raise ImageError(f"{path}: is a directory, not an image file")
    if path.stat().st_size == 0:
        raise ImageError(f"{path}: image file is empty (0 bytes)")


def _to_rgb_array(im: Image.Image) -> np.ndarray:
    """Any Pillow mode -> (H, W, 3) uint8 RGB (alpha is dropped, 16-bit scaled to 8-bit,
    32-bit float read as 0..1 when no value exceeds 1, else as 0..255)."""
    if im.mode in _SIXTEEN_BIT_MODES:
        gray = np.rint(np.clip(np.asarray(im, dtype=np.float64), 0, 65535) / 257.0)
    elif im.mode == "F":
        values = np.nan_to_num(np.asarray(im, dtype=np.float64), nan=0.0, posinf=255.0, neginf=0.0)
        if values.size and values.max() <= 1.0:  # float images are conventionally 0..1
            values = values * 255.0
        gray = np.rint(np.clip(values, 0, 255))
    else:
        if im.mode == "P":
            im = im.convert("RGBA")  # palette transparency is only kept through RGBA
        return np.array(im.convert("RGB"), dtype=np.uint8)
    return np.repeat(gray.astype(np.uint8)[:, :, None], 3, axis=2)


def load_image(path: str | os.PathLike, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Loads an image file as (H, W, 3) uint8 RGB.

    EXIF orientation is applied; grayscale, palette, CMYK and alpha images are converted to
    RGB (alpha dropped); 16-bit grayscale is scaled to 8 bits; 32-bit float grayscale whose
    values are all <= 1 is read as 0..1 (else as 0..255). Multi-frame files give their first
    frame.

    Raises:
        ImageError: naming the path and the reason: missing file, directory, empty file,
            not an image, truncated or corrupt data, or more than ``max_pixels`` pixels
            (:class:`ImageTooLargeError`).
    """
    path = Path(path)
    _check_file(path)
    return _decode(path, str(path), max_pixels)


def decode_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS,
                 name: str = "image data") -> np.ndarray:
    """Decodes an encoded image held in memory (an HTTP request body) like :func:`load_image`.

    The pixel count is checked from the header before any pixel is decoded, so a
    decompression bomb costs nothing.

    Args:
        data: the encoded file (JPEG, PNG, ...).
        max_pixels: the largest width x height accepted.
        name: how error messages name the data.

    Raises:
        ImageError: empty, not an image, truncated or corrupt;
            :class:`ImageTooLargeError` when it has more than ``max_pixels`` pixels.
    """
    if not data:
        raise ImageError(f"{name}: image data is empty (0 bytes)")
    return _decode(io.BytesIO(data), name, max_pixels)


def _decode(source: Path | io.BytesIO, name: str, max_pixels: int) -> np.ndarray:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(source) as im:
                width, height = im.size
                if width * height > max_pixels:
                    raise ImageTooLargeError(
                        f"{name}: image is too large ({width}x{height} = {width * height} "
                        f"pixels, limit {max_pixels}); refusing to decode a possible "
                        "decompression bomb")
                im.load()
                im = ImageOps.exif_transpose(im)
                return _to_rgb_array(im)
    except Image.DecompressionBombError as exc:
        raise ImageTooLargeError(f"{name}: image is too large, refusing to decode a possible "
                                 f"decompression bomb ({exc})") from exc
    except UnidentifiedImageError as exc:
        raise ImageError(f"{name}: not a recognised image file") from exc
    except PermissionError as exc:
        raise ImageError(f"{name}: cannot read the file ({exc.strerror})") from exc
    except (OSError, SyntaxError, ValueError, EOFError, struct.error, IndexError, KeyError) as exc:
        raise ImageError(f"{name}: image data is truncated or corrupt ({exc})") from exc


def encode_image(image: np.ndarray, format: str = "PNG", quality: int = 95) -> bytes:
    """Encodes an (H, W, 3) or (H, W) uint8 array as ``format`` (``"PNG"``, ``"JPEG"``, ...).

    Raises:
        ImageError: a bad array or a format Pillow cannot write.
    """
    arr = _check_savable(image, "image")
    buffer = io.BytesIO()
    options = {"quality": quality} if format.upper() in ("JPEG", "JPG", "WEBP") else {}
    try:
        Image.fromarray(np.ascontiguousarray(arr)).save(buffer, format=format, **options)
    except (KeyError, ValueError, OSError) as exc:
        raise ImageError(f"cannot encode the image as {format} ({exc})") from exc
    return buffer.getvalue()


def _check_savable(image: np.ndarray, name: str) -> np.ndarray:
    arr = np.asarray(image)
    if arr.dtype != np.uint8 or arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] != 3):
        raise ImageError(f"{name}: can only save (H, W, 3) or (H, W) uint8 images, "
                         f"got shape {arr.shape} dtype {arr.dtype}")
    return arr


def save_image(path: str | os.PathLike, image: np.ndarray) -> None:
    """Writes an (H, W, 3) or (H, W) uint8 array; the format follows the file extension.

    Raises:
        ImageError: bad array, missing folder, unknown extension or a write failure.
    """
    path = Path(path)
    arr = _check_savable(image, str(path))
    if not path.parent.is_dir():
        raise ImageError(f"{path}: folder {path.parent} does not exist")
    try:
        Image.fromarray(np.ascontiguousarray(arr)).save(path)
    except ValueError as exc:  # Pillow: unknown file extension
        raise ImageError(f"{path}: cannot save ({exc}); use an extension such as .png or .jpg") from exc
    except OSError as exc:
        raise ImageError(f"{path}: cannot save ({exc})") from exc

"""Reading and writing images as (H, W, 3) uint8 RGB arrays (Pillow), with clear errors.

Reading never lets a decoder's exception escape: any failure on a file's bytes is an
:class:`ImageError` naming the file (``tests/test_fuzz_images.py`` feeds mutated and random
bytes). Writing goes through :func:`~tinyfaces_trt.core.files.atomic_output`: a file is
complete under its final name or not there.
"""

from __future__ import annotations

import contextvars
import io
import logging
import os
import re
import stat
import warnings
from pathlib import Path
from typing import IO, Any, NamedTuple

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from tinyfaces_trt.core.config import is_integer
from tinyfaces_trt.core.errors import ConfigError, ImageError, ImageTooLargeError
from tinyfaces_trt.core.files import (NotRegularFileError, atomic_output, dangling_link_note,
                                      is_text_path, open_regular)

log = logging.getLogger(__name__)

#: Largest image (pixels) :func:`load_image` decodes by default: Pillow's own
#: decompression-bomb error limit (twice ``Image.MAX_IMAGE_PIXELS``).
DEFAULT_MAX_PIXELS = 2 * 89_478_485

_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")
#: Pillow modes of grey-level images (read as RGB of equal channels).
_GRAY_MODES = ("1", "L", "LA", "La", "I", "F", *_SIXTEEN_BIT_MODES)
#: Formats (by Pillow name) a copy keeps an alpha channel in (:func:`as_stored`), and those
#: it keeps grey levels in (WebP and GIF store colour; a GIF's palette is Pillow's choice).
ALPHA_FORMATS = ("PNG", "TIFF", "WEBP", "GIF")
GRAY_FORMATS = ("PNG", "TIFF", "JPEG", "BMP", "PPM")
#: The first bytes of every JPEG file (its SOI marker and the next marker's 0xFF): how the
#: format of image bytes without a file name (standard input, a request body) is told.
JPEG_MAGIC = b"\xff\xd8\xff"
#: JPEG quality :func:`save_image` uses unless told otherwise (Pillow's own default is 75).
DEFAULT_JPEG_QUALITY = 95
#: Pillow formats written with the quality setting (:func:`encode_image`'s ``quality``,
#: :func:`save_image`'s ``jpeg_quality``); other formats take none.
QUALITY_FORMATS = ("JPEG", "WEBP")
#: Most scans (start-of-scan markers) a JPEG may hold to be decoded. Each scan costs a pass
#: over the whole image, so a small file repeating one scan thousands of times takes minutes
#: to hours of CPU within the pixel limit; a progressive JPEG has about 10 (Pillow and
#: libjpeg's default script: 6 grey, 10 colour), a baseline one 1 per component at most.
MAX_JPEG_SCANS = 100
#: Most bytes read from a stream (standard input, :func:`load_image_stream`): an endless
#: one (``/dev/zero``) ends with an error instead of filling the memory.
MAX_STREAM_BYTES = 1 << 30

#: (how messages name the image, its pixel limit or None) of the decode running in this
#: context (thread); unset outside one.
_PIXEL_LIMIT: contextvars.ContextVar[tuple[str, int | None]] = contextvars.ContextVar(
    "tinyfaces_pixel_limit")


def _install_pixel_limit() -> None:
    """Makes Pillow's decompression-bomb check (``Image.MAX_IMAGE_PIXELS``, applied at open
    and by some decoders while loading) apply our ``max_pixels`` instead during a decode here.

    Pillow has no per-call limit, and changing ``MAX_IMAGE_PIXELS`` would change every other
    thread's decodes; its check is wrapped once instead, per context (so per thread): outside
    :func:`_decode` it is Pillow's own, unchanged. Where a Pillow lacks the function, its own
    limit stays in force above ours.
    """
    original = getattr(Image, "_decompression_bomb_check", None)
    if original is None or getattr(original, "_tinyfaces_pixel_limit", False):
        return

    def check(size: tuple[int, int], *args: Any, **kwargs: Any) -> None:
        current = _PIXEL_LIMIT.get(None)
        if current is None:
            return original(size, *args, **kwargs)
        name, limit = current
        _check_pixels(name, size[0], size[1], limit)
        return None

    check._tinyfaces_pixel_limit = True  # type: ignore[attr-defined]
    Image._decompression_bomb_check = check  # type: ignore[attr-defined]


def _check_pixels(name: str, width: int, height: int, limit: int | None) -> None:
    """Raises :class:`ImageTooLargeError` for more than ``limit`` pixels (None: any)."""
    if limit is not None and width * height > limit:
        raise ImageTooLargeError(
            f"{name}: image is too large ({width}x{height} = {width * height} pixels, limit "
            f"{limit}); refusing to decode a possible decompression bomb")


_install_pixel_limit()

# Pillow warns (UserWarning) about damaged metadata, after which the decode succeeds or raises:
# not for the user's stderr. One filter for Pillow's own modules, set once: a per-call
# warnings.catch_warnings() changes the process-wide filter list, unsafely across threads
# (tf-serve decodes requests on several), and could leave everything ignored.
PILLOW_WARNINGS = dict(action="ignore", category=UserWarning, module=r"PIL(\.|$)")
warnings.filterwarnings(**PILLOW_WARNINGS)


def _open_input(path: Path) -> tuple[IO[bytes], bool]:
    """:func:`~tinyfaces_trt.core.files.open_regular` of an image: ``(file, True)`` for a
    non-empty regular file, ``(file, False)`` for this process's standard input where it is a
    pipe, terminal or device (``/dev/stdin``: read as a stream, up to
    :data:`MAX_STREAM_BYTES`); anything else is an :class:`ImageError`."""
    try:
        f, info = open_regular(path, allow_stdin=True)
    except FileNotFoundError:
        raise ImageError(f"{path}: image file not found{dangling_link_note(path)}") from None
    except IsADirectoryError:
        raise ImageError(f"{path}: is a directory, not an image file") from None
    except NotRegularFileError:
        raise ImageError(f"{path}: is not a regular file (a named pipe, device or socket); "
                         "refusing to read it") from None
    except OSError as exc:
        raise ImageError(f"{path}: cannot read the file ({exc.strerror or exc})") from None
    regular = stat.S_ISREG(info.st_mode)
    if regular and info.st_size == 0:
        f.close()
        raise ImageError(f"{path}: image file is empty (0 bytes)")
    return f, regular


def read_stream(stream: IO[bytes], name: str = "<stdin>") -> bytes:
    """All of a binary stream's bytes (standard input: ``sys.stdin.buffer``), read in chunks up
    to :data:`MAX_STREAM_BYTES`; ``name`` is how the message calls it.

    Raises:
        ImageError: the stream sends more than :data:`MAX_STREAM_BYTES` bytes (an endless one,
            such as ``/dev/zero``): no more is read.
        OSError: the stream cannot be read.
    """
    chunks: list[bytes] = []
    total = 0
    while total <= MAX_STREAM_BYTES:
        chunk = stream.read(min(1 << 20, MAX_STREAM_BYTES + 1 - total))
        if not chunk:
            break
        chunks.append(chunk)
        total += len(chunk)
    if total > MAX_STREAM_BYTES:
        raise ImageError(f"{name}: more than {MAX_STREAM_BYTES} bytes of image data on the "
                         f"stream (the limit, MAX_STREAM_BYTES); refusing to read further")
    return b"".join(chunks)


def _int32_gray(im: Image.Image) -> np.ndarray:
    """Mode "I" (32-bit integers) -> 0..255 floats. PNG stores 16 bits there; other files'
    values are read by their range: up to 255 as 8-bit, up to 65535 as 16-bit, larger ones
    scaled to the image's maximum."""
    values = np.clip(np.asarray(im, dtype=np.float64), 0, None)
    peak = float(values.max()) if values.size else 0.0
    if im.format == "PNG" or 255 < peak <= 65535:
        return values / 257.0
    if peak <= 255:
        return values
    return values * (255.0 / peak)


def _alpha(im: Image.Image) -> np.ndarray | None:
    """(H, W) uint8 opacity of an image with an alpha channel or a transparent colour
    (palette or colour key), else None."""
    if "A" not in im.mode and "a" not in im.mode and "transparency" not in im.info:
        return None
    if im.mode in _SIXTEEN_BIT_MODES or im.mode in ("I", "F"):  # (Pillow keys no alpha there)
        return None
    return np.array(im.convert("RGBA"), dtype=np.uint8)[..., 3]


def _to_rgb_array(im: Image.Image) -> np.ndarray:
    """Any Pillow mode -> (H, W, 3) uint8 RGB (alpha is dropped, 16-bit scaled to 8-bit,
    32-bit integers by their range, 32-bit float read as 0..1 when no value exceeds 1, else
    as 0..255)."""
    if im.mode in _SIXTEEN_BIT_MODES:
        gray = np.rint(np.clip(np.asarray(im, dtype=np.float64), 0, 65535) / 257.0)
    elif im.mode == "I":
        gray = np.rint(np.clip(_int32_gray(im), 0, 255))
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


def load_image(path: str | os.PathLike,
               max_pixels: int | None = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Loads an image file as (H, W, 3) uint8 RGB.

    EXIF orientation is applied; grayscale, palette, CMYK and alpha images are converted to
    RGB (alpha dropped); 16-bit grayscale is scaled to 8 bits; 32-bit integer grayscale is
    read by its range (values up to 255 as 8-bit, up to 65535 as 16-bit); 32-bit float
    grayscale whose values are all <= 1 is read as 0..1 (else as 0..255). Multi-frame files
    (animated GIF/PNG/WebP, multi-page TIFF) give their first frame, with a logged warning.
    Only a regular file is read, and this process's standard input (``/dev/stdin``: read as a
    stream, up to :data:`MAX_STREAM_BYTES`); a named pipe, a device (``/dev/zero``) or a socket
    is refused. A JPEG of more than :data:`MAX_JPEG_SCANS` scans is refused before decoding.

    ``max_pixels`` (width x height, checked from the header before any pixel is decoded; None:
    no limit) is the only size limit: Pillow's own (``Image.MAX_IMAGE_PIXELS``) does not apply
    here, above or below it.

    Raises:
        ImageError: naming the path and the reason: missing file, directory, empty file,
            not a regular file, not an image, truncated or corrupt data, a JPEG of too many
            scans, or more than ``max_pixels`` pixels (:class:`ImageTooLargeError`); or
            ``path`` is no path (e.g. bytes or a file object: :func:`decode_image` and
            :func:`load_image_stream` take those).
        ConfigError: ``max_pixels`` is neither None nor an integer >= 1.
    """
    return _load(path, max_pixels, None)


class StoredImage(NamedTuple):
    """An image file as :func:`load_image_stored` reads it: the RGB pixels the detector sees,
    and what the file holds beyond them, so that an edited copy can be written as the file
    was (:func:`as_stored`).

    Attributes:
        rgb: (H, W, 3) uint8, :func:`load_image`'s array.
        pictures: frames or pages in the file (:func:`load_image_frames`).
        alpha: (H, W) uint8 opacity, upright as ``rgb``, where the file has an alpha channel
            or a transparent colour (palette or colour key); None for an opaque image.
        gray: the file holds grey levels (``rgb``'s three channels are equal).
    """

    rgb: np.ndarray
    pictures: int
    alpha: np.ndarray | None
    gray: bool


def load_image_stored(path: str | os.PathLike,
                      max_pixels: int | None = DEFAULT_MAX_PIXELS, *,
                      log_others: bool = False) -> StoredImage:
    """:func:`load_image_frames`' image and picture count, with the file's alpha channel and
    whether it holds grey levels (:class:`StoredImage`). ``log_others``: the other frames of
    a multi-frame file are also logged, as :func:`load_image` logs them (for a caller that
    does not report the count itself).

    Raises:
        ImageError, ConfigError: as :func:`load_image`.
    """
    found: dict[str, Any] = {"log_others": log_others}
    return _stored_image(_load(path, max_pixels, found), found)


def _stored_image(rgb: np.ndarray, found: dict[str, Any]) -> StoredImage:
    """The :class:`StoredImage` of a decode that filled ``found`` (:func:`_decode`)."""
    return StoredImage(rgb, found["pictures"], found["alpha"], found["gray"])


def as_stored(rgb: np.ndarray, stored: StoredImage | None, suffix: str, *,
              colour: bool = False) -> np.ndarray:
    """``rgb``, an edited (H, W, 3) uint8 copy of ``stored.rgb``, with the layers of
    ``stored``'s file that a file of ``suffix`` holds (:data:`ALPHA_FORMATS`,
    :data:`GRAY_FORMATS`): (H, W) grey levels (ITU-R 601 luma, exact for a grey image's
    pixels) for a grey image unless ``colour`` (drawn boxes keep their colours), and its alpha
    channel as a last channel ((H, W, 2) or (H, W, 4)); else ``rgb``. A PGM file is grey
    whatever the image (an RGB array would be written as a PPM under its name). Without
    ``stored`` (None: nothing known of the file), ``rgb`` as it is."""
    if stored is None:
        return rgb
    image_format = Image.registered_extensions().get(suffix.lower())
    gray = suffix.lower() == ".pgm" or (
        stored.gray and not colour and image_format in GRAY_FORMATS
        and (stored.alpha is None or image_format != "WEBP"))
    out = _luma(rgb) if gray else rgb
    if stored.alpha is None or image_format not in ALPHA_FORMATS:
        return out
    return np.dstack([out, stored.alpha])


def _luma(image: np.ndarray) -> np.ndarray:
    """(H, W) luma of an (H, W, 3) uint8 RGB image (ITU-R 601, Pillow's ``convert("L")``);
    equal channels v give v exactly."""
    rgb = image.astype(np.uint32)
    return ((rgb[..., 0] * 19595 + rgb[..., 1] * 38470 + rgb[..., 2] * 7471 + 0x8000) >> 16
            ).astype(np.uint8)


def load_image_frames(path: str | os.PathLike,
                      max_pixels: int | None = DEFAULT_MAX_PIXELS) -> tuple[np.ndarray, int]:
    """:func:`load_image`'s image, and how many pictures the file holds: the frames of an
    animation or the pages of a multi-page file, of which the image is the first (1 for a
    single picture, and for a camera's MPO JPEG, whose other frames are a preview or a depth
    map). Nothing is logged about the others: the caller reports them (tf-anonymize counts a
    warning and records them in its audit sidecar).

    Raises:
        ImageError, ConfigError: as :func:`load_image`.
    """
    stored = load_image_stored(path, max_pixels)
    return stored.rgb, stored.pictures


def _load(path: object, max_pixels: int | None, stored: dict[str, Any] | None) -> np.ndarray:
    """:func:`load_image`; with ``stored``, the file's picture count, alpha and grey levels
    go into it (:func:`_decode`) instead of a logged warning about other pictures."""
    _check_max_pixels(max_pixels)
    path = Path(_check_path_argument(path))
    f, regular = _open_input(path)
    with f:
        if regular:
            return _decode(f, str(path), max_pixels, stored)
        try:
            data = read_stream(f, str(path))
        except OSError as exc:
            raise ImageError(f"{path}: cannot read the file ({exc.strerror or exc})") from exc
    if not data:
        raise ImageError(f"{path}: no image data (0 bytes read)")
    return _decode(io.BytesIO(data), str(path), max_pixels, stored)


def _check_path_argument(path: object) -> str | os.PathLike:
    """``path`` if it is a str or an os.PathLike of str, else an :class:`ImageError` saying
    what :func:`load_image` takes (and what takes the object given)."""
    if is_text_path(path):
        return path
    if isinstance(path, (bytes, bytearray, memoryview)):
        hint = "; for encoded image bytes in memory use tinyfaces_trt.runtime.imageio.decode_image"
    elif hasattr(path, "read"):
        hint = "; for an open binary file use tinyfaces_trt.runtime.imageio.load_image_stream"
    elif isinstance(path, Image.Image):
        hint = "; a Pillow image needs no loading: np.asarray(image.convert('RGB'))"
    elif isinstance(path, np.ndarray):
        hint = "; an (H, W, 3) uint8 RGB array needs no loading"
    else:
        hint = ""
    raise ImageError(f"load_image takes a file path (str or os.PathLike), got "
                     f"{type(path).__name__}{hint}")


def load_image_stream(stream: IO[bytes], name: str = "<stdin>",
                      max_pixels: int | None = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Reads a whole binary stream (standard input, a pipe) and decodes it like
    :func:`load_image`; ``name`` is how messages call it.

    Raises:
        ImageError: as :func:`decode_image`, or the stream sends more than
            :data:`MAX_STREAM_BYTES` bytes (read no further).
        ConfigError: as :func:`load_image`.
    """
    _check_max_pixels(max_pixels)
    data = read_stream(stream, name)
    if not data:
        raise ImageError(f"{name}: no image data (0 bytes read)")
    return decode_image(data, max_pixels, name)


def decode_image(data: bytes, max_pixels: int | None = DEFAULT_MAX_PIXELS,
                 name: str = "image data") -> np.ndarray:
    """Decodes an encoded image held in memory (an HTTP request body) like :func:`load_image`.

    The pixel count is checked from the header before any pixel is decoded, so a
    decompression bomb costs nothing; so is a JPEG's count of scans (at most
    :data:`MAX_JPEG_SCANS`: each costs a pass over the image).

    Args:
        data: the encoded file (JPEG, PNG, ...).
        max_pixels: the largest width x height accepted (None: any); the only limit, as
            in :func:`load_image`.
        name: how error messages name the data.

    Raises:
        ImageError: empty, not an image, truncated or corrupt, a JPEG of more than
            :data:`MAX_JPEG_SCANS` scans, or ``data`` is no bytes (a path: :func:`load_image`
            reads files);
            :class:`ImageTooLargeError` when it has more than ``max_pixels`` pixels.
        ConfigError: ``max_pixels`` is neither None nor an integer >= 1.
    """
    return _decode_data(data, max_pixels, name, None)


def decode_image_stored(data: bytes, max_pixels: int | None = DEFAULT_MAX_PIXELS,
                        name: str = "image data") -> StoredImage:
    """:func:`decode_image`'s image with what the encoded file holds beyond it
    (:class:`StoredImage`: alpha, grey levels), as :func:`load_image_stored` reads a file.

    Raises:
        ImageError, ConfigError: as :func:`decode_image`.
    """
    found: dict[str, Any] = {"log_others": True}  # (as decode_image logs them)
    return _stored_image(_decode_data(data, max_pixels, name, found), found)


def _decode_data(data: bytes, max_pixels: int | None, name: str,
                 stored: dict[str, Any] | None) -> np.ndarray:
    _check_max_pixels(max_pixels)
    try:
        size = memoryview(data).nbytes  # bytes, bytearray, memoryview, a uint8 array
    except TypeError:
        hint = "; for a file path use load_image" if is_text_path(data) else ""
        raise ImageError(f"decode_image takes the encoded image's bytes, got "
                         f"{type(data).__name__}{hint}") from None
    if not size:
        raise ImageError(f"{name}: image data is empty (0 bytes)")
    return _decode(io.BytesIO(data), name, max_pixels, stored)


def _check_max_pixels(max_pixels: object) -> None:
    if max_pixels is not None and not (is_integer(max_pixels) and max_pixels >= 1):
        raise ConfigError(f"max_pixels must be an integer >= 1 or None (no limit), "
                          f"got {max_pixels!r}")


#: A marker in a JPEG's entropy-coded data: 0xFF then neither a stuffed 0x00, a restart
#: marker (RST0-7, part of the data) nor a fill 0xFF (the marker follows it).
_JPEG_MARKER = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")


def _jpeg_scans(f: IO[bytes]) -> int:
    """The start-of-scan (SOS, 0xFF 0xDA) markers of the JPEG image ``f`` holds from its start
    to its first end-of-image marker (an MPO's first picture, the one decoded); ``f``'s
    position is kept.

    The file is walked as libjpeg reads it, a chunk at a time: a marker segment is skipped by
    its length (so bytes of metadata are never taken for a marker) and a scan's entropy-coded
    data up to the next marker (0xFF there is stuffed as 0xFF 0x00, so never looks like one).
    Malformed data ends the count where the decoder will fail."""
    start = f.tell()
    f.seek(0)
    try:
        buf, pos, scans = f.read(1 << 16), 2, 0
        if buf[:2] != b"\xff\xd8":
            return 0
        while True:
            match = _JPEG_MARKER.search(buf, pos)
            if match is None:  # read on; keep a last 0xFF, the start of a marker split here
                keep = 1 if pos < len(buf) and buf[-1] == 0xFF else 0
                more = f.read(1 << 20)
                if not more:
                    return scans
                buf, pos = buf[len(buf) - keep:] + more, 0
                continue
            marker, pos = buf[match.end() - 1], match.end()
            if marker == 0xD9:  # EOI
                return scans
            if marker in (0x01, 0xD8):  # TEM, SOI: no length
                continue
            while len(buf) - pos < 2:
                more = f.read(1 << 20)
                if not more:
                    return scans
                buf, pos = buf[pos:] + more, 0
            length = int.from_bytes(buf[pos:pos + 2], "big")
            if length < 2:
                return scans
            if marker == 0xDA:
                scans += 1
            pos += length  # skip the segment (an SOS's header: its data is searched)
            if pos > len(buf):
                f.seek(pos - len(buf), os.SEEK_CUR)
                buf, pos = b"", 0
    finally:
        f.seek(start)


def _check_jpeg_scans(f: IO[bytes], name: str) -> None:
    """Raises :class:`ImageError` for a JPEG of more than :data:`MAX_JPEG_SCANS` scans."""
    scans = _jpeg_scans(f)
    if scans > MAX_JPEG_SCANS:
        raise ImageError(f"{name}: JPEG has {scans} scans, more than the limit of "
                         f"{MAX_JPEG_SCANS}; refusing to decode a possible scan bomb (each scan "
                         "is a pass over the whole image)")


def _decode(source: IO[bytes], name: str, max_pixels: int | None,
            stored: dict[str, Any] | None = None) -> np.ndarray:
    """Decodes one image; a multi-frame file's count of pictures goes to ``stored`` where
    given (``"pictures"``; an MPO counts 1: see :func:`load_image_frames`), with its
    ``"alpha"`` and ``"gray"`` (:class:`StoredImage`); its other frames are logged where
    ``stored`` is None or holds ``"log_others"``."""
    # our limit replaces Pillow's bomb check, for this context (thread) only
    token = _PIXEL_LIMIT.set((name, max_pixels))
    try:
        with Image.open(source) as im:
            _check_pixels(name, *im.size, max_pixels)  # (where Pillow has not already)
            frames = getattr(im, "n_frames", 1)
            if stored is not None:
                stored["pictures"] = 1 if im.format == "MPO" else int(frames)
            if frames > 1 and (stored is None or stored.get("log_others")):
                # a camera's JPEG stored as MPO: the photo, then a preview or depth frame
                level = logging.DEBUG if im.format == "MPO" else logging.WARNING
                log.log(level, "%s: has %d frames (animated or multi-page %s); using the "
                        "first frame only", name, frames, im.format)
            if im.format in ("JPEG", "MPO"):
                _check_jpeg_scans(source, name)
            im.load()
            im = ImageOps.exif_transpose(im)
            if stored is not None:
                stored["alpha"], stored["gray"] = _alpha(im), im.mode in _GRAY_MODES
            return _to_rgb_array(im)
    except ImageError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageTooLargeError(f"{name}: image is too large, refusing to decode a possible "
                                 f"decompression bomb ({exc})") from exc
    except UnidentifiedImageError as exc:
        raise ImageError(f"{name}: not a recognised image file") from exc
    except PermissionError as exc:
        raise ImageError(f"{name}: cannot read the file ({exc.strerror})") from exc
    except MemoryError as exc:
        raise ImageError(f"{name}: not enough memory to decode the image") from exc
    except Exception as exc:  # decoders raise many types on malformed data (fuzz-tested)
        raise ImageError(f"{name}: image data is truncated or corrupt "
                         f"({type(exc).__name__}: {exc})") from exc
    finally:
        _PIXEL_LIMIT.reset(token)


def encode_image(image: np.ndarray, format: str = "PNG", quality: int = 95) -> bytes:
    """Encodes an (H, W, 3) or (H, W) uint8 array (with alpha: (H, W, 4), (H, W, 2)) as
    ``format`` (``"PNG"``, ``"JPEG"``, ...).

    Args:
        quality: 1..100, for JPEG and WebP (:data:`QUALITY_FORMATS`; as :func:`save_image`'s
            ``jpeg_quality``: the same format and quality give the same bytes).

    Raises:
        ImageError: a bad array, a quality outside 1..100 or a format Pillow cannot write.
    """
    arr = _check_savable(image, "image")
    _check_quality(quality, "quality")
    buffer = io.BytesIO()
    try:
        Image.fromarray(np.ascontiguousarray(arr)).save(buffer, format=format,
                                                        **_quality_options(format, quality))
    except (KeyError, ValueError, OSError) as exc:
        raise ImageError(f"cannot encode the image as {format} ({exc})") from exc
    return buffer.getvalue()


def _quality_options(image_format: str, quality: int) -> dict[str, int]:
    """Pillow's save options that set ``quality`` for ``image_format`` (a Pillow format name):
    ``{"quality": quality}`` for :data:`QUALITY_FORMATS`, none for the others."""
    return {"quality": int(quality)} if image_format.upper() in QUALITY_FORMATS else {}


def _check_quality(quality: object, name: str) -> None:
    """JPEG/WebP quality: an integer 1..100 (Pillow takes more, but libjpeg reads 0 as 1 and
    clamps above 100, and WebP refuses anything outside 0..100)."""
    if not (is_integer(quality) and 1 <= quality <= 100):
        raise ImageError(f"{name} must be an integer 1..100, got {quality!r}")


def _check_savable(image: np.ndarray, name: str) -> np.ndarray:
    arr = np.asarray(image)
    if arr.dtype != np.uint8 or arr.ndim not in (2, 3) or (arr.ndim == 3
                                                           and arr.shape[2] not in (2, 3, 4)):
        raise ImageError(f"{name}: can only save (H, W, 3) or (H, W) uint8 images (with alpha: "
                         f"(H, W, 4) or (H, W, 2)), got shape {arr.shape} dtype {arr.dtype}")
    return arr


def save_image(path: str | os.PathLike, image: np.ndarray,
               jpeg_quality: int = DEFAULT_JPEG_QUALITY) -> None:
    """Writes an (H, W, 3) or (H, W) uint8 array, or one with alpha ((H, W, 4) RGBA, (H, W, 2)
    grey + alpha, for formats that hold it); the format follows the file extension.

    The file is written atomically (complete under its name, or not there and any earlier
    file kept).

    Args:
        path: the file; its extension picks the format.
        image: the pixels.
        jpeg_quality: 1..100, for the formats that take a quality (:data:`QUALITY_FORMATS`:
            JPEG, whatever its suffix, ``.jpg``, ``.jpeg``, ``.jfif``, ``.jpe``; and WebP),
            as :func:`encode_image`'s ``quality`` (default 95; Pillow's own is 75 for JPEG,
            80 for WebP).

    Raises:
        ImageError: bad array, bad ``jpeg_quality``, missing folder, missing or unknown
            extension, or a write failure (a full disk included).
    """
    path = Path(path)
    arr = _check_savable(image, str(path))
    _check_quality(jpeg_quality, "JPEG quality (jpeg_quality)")
    if not path.parent.is_dir():
        raise ImageError(f"{path}: folder {path.parent} does not exist")
    suffix = path.suffix.lower()
    # the format comes from the user's name: the temporary file's name ends otherwise
    image_format = Image.registered_extensions().get(suffix) if suffix else None
    if image_format is None:
        what = f"unknown file extension {path.suffix!r}" if suffix else "no file extension"
        raise ImageError(f"{path}: cannot save: {what} to choose the image format from; use an "
                         "extension such as .png or .jpg")
    options = _quality_options(image_format, jpeg_quality)
    try:
        with atomic_output(path) as tmp:
            Image.fromarray(np.ascontiguousarray(arr)).save(tmp, format=image_format, **options)
    except KeyError as exc:  # a format Pillow reads but cannot write
        raise ImageError(f"{path}: cannot save: Pillow does not write {image_format} files; use "
                         "an extension such as .png or .jpg") from exc
    except ValueError as exc:
        raise ImageError(f"{path}: cannot save as {image_format} ({exc})") from exc
    except OSError as exc:
        raise ImageError(f"{path}: cannot save ({exc.strerror or exc})") from exc

"""What the anonymised video is encoded as: encoder defaults, pixel format, time base and the
colour conversions between the frames (8-bit RGB) and the streams' YUV.

Decisions only: :mod:`~tinyfaces_trt.anonymize.video` does the reading and writing with
PyAV (this module never imports it; :func:`convert` calls a frame's own ``reformat``).
"""

from __future__ import annotations

from fractions import Fraction
from typing import Any

#: Encoder used when ``--codec`` is not given, by output suffix.
DEFAULT_CODECS = {".webm": "libvpx-vp9"}
DEFAULT_CODEC = "libx264"
#: Constant rate factor when ``--crf`` is not given (visually lossless for x264/x265).
DEFAULT_CRF = {"libx264": 18, "libx265": 20, "libvpx-vp9": 24, "libvpx": 10, "libsvtav1": 28}
#: Encoders with a constant rate factor option (``--crf``); others refuse ``--crf``.
CRF_ENCODERS = ("libx264", "libx264rgb", "libx265", "libvpx", "libvpx-vp9", "libsvtav1",
                "libaom-av1")
#: Largest constant rate factor of the encoders whose scale stops short of 63 (8-bit x264 and
#: x265; the VP8/VP9/AV1 encoders take 0 to 63).
CRF_MAX = {"libx264": 51, "libx264rgb": 51, "libx265": 51}
#: Largest time base denominator an encoder accepts (MPEG-4 Part 2: 16 bits).
_TIME_BASE_LIMITS = {"mpeg4": 65535}
#: Coarsest time base kept from dividing the input's: 1 ms (else 1/limit, pts rounded).
_FINEST_TICKS = 1000

#: libx264 into AVI (which stores no pts): an HRD, with which x264 writes buffering-period and
#: picture-timing SEI, from which FFmpeg reads each frame at its own time (without them it reads
#: an H.264 frame in AVI one frame late, at the next packet's dts). The VBV (kbit/s, kbit) is
#: sized not to limit a crf encode: H.264 level 4.1's High-profile limits up to that level's pixel
#: rate (1080p30), level 5.1's above; x264 declares at least that level.
_AVI_HRD_PIXEL_RATE = 245760 * 256
_AVI_HRD_VBV = ((62500, 78125), (300000, 300000))

#: Encoders that refuse an odd width (height) in a pixel format with one colour sample per
#: 2 pixels across (down); libvpx-vp9 and mpeg4 encode those.
_EVEN_CHROMA_ENCODERS = ("libx264", "libx265")
_HALF_ACROSS = ("420", "422", "411", "410", "nv12", "nv21", "nv16")
_HALF_DOWN = ("420", "440", "410", "nv12", "nv21")
#: Source formats kept at an odd size where they fit: 8-bit planar YUV (the frames come as
#: RGB24; grey would keep no colour, 10-bit formats no more precision than 8-bit).
_KEPT_AT_ODD_SIZES = ("yuv422p", "yuvj422p", "yuv440p", "yuvj440p", "yuv444p", "yuvj444p")

#: Encoders whose bitstream carries the colour tags (matrix, range, ...) that players read;
#: the others' frames are converted as an untagged stream is decoded.
TAGGING_ENCODERS = ("libx264", "libx264rgb", "libx265", "libvpx-vp9", "libsvtav1",
                    "libaom-av1")
#: FFmpeg colour matrix (AVColorSpace) -> swscale's (SWS_CS_*); others: swscale's default
#: (BT.601), which is also what an untagged stream is decoded with.
_SWS_MATRIX = {1: 1, 4: 4, 5: 5, 6: 5, 7: 7, 9: 9, 10: 9}
_SWS_DEFAULT = 5
RGB_MATRIX, UNSPECIFIED = 0, 2
FULL_RANGE = 2


def default_codec(suffix: str) -> str:
    """The encoder for an output file suffix."""
    return DEFAULT_CODECS.get(suffix.lower(), DEFAULT_CODEC)


def crf_problem(codec: str, crf: int | None = None) -> str | None:
    """Why ``--crf`` (``crf``, where given) cannot be given with ``codec``: it has no constant
    rate factor, or ``crf`` is past its largest (:data:`CRF_MAX`: x264 and x265 would take
    51 in silence); else None."""
    if codec not in CRF_ENCODERS:
        return (f"encoder {codec!r} has no constant rate factor: leave out --crf, or use one of "
                f"{', '.join(CRF_ENCODERS)}")
    largest = CRF_MAX.get(codec, 63)
    if crf is not None and crf > largest:
        return f"encoder {codec!r} takes a constant rate factor of 0 to {largest}"
    return None


def output_pixel_format(source: str | None, width: int, height: int, formats: list[str],
                        codec: str = "libx264") -> str:
    """The encoder's pixel format: 8-bit 4:2:0 (yuvj420p for a full-range ``yuvj`` source or
    a JPEG encoder, else yuv420p) where the encoder takes it, as players expect and as the
    frames, 8-bit RGB here, can fill; else the source's, else the encoder's first. For
    libx264/libx265 at an odd width or height 4:2:0 cannot hold (it refused with "Generic
    error in an external library"), the source's format where it can and the encoder takes
    it, else yuv444p."""
    full = str(source).startswith("yuvj") or formats[:1] == ["yuvj420p"]  # (mjpeg's)
    preferred = ("yuvj420p", "yuv420p") if full else ("yuv420p", "yuvj420p")
    choice = next((f for f in preferred if f in formats), None) or (
        source if source in formats else formats[0] if formats else "yuv420p")
    if codec not in _EVEN_CHROMA_ENCODERS or _holds(choice, width, height):
        return choice
    if source in _KEPT_AT_ODD_SIZES and source in formats and _holds(str(source), width, height):
        return str(source)
    return "yuv444p" if "yuv444p" in formats else choice


def _holds(pix_fmt: str, width: int, height: int) -> bool:
    """The format's chroma subsampling fits the size (an odd size: none that way)."""
    return not ((width % 2 and any(s in pix_fmt for s in _HALF_ACROSS))
                or (height % 2 and any(s in pix_fmt for s in _HALF_DOWN)))


def encoder_time_base(time_base: Fraction, codec: str) -> Fraction:
    """A time base ``codec`` accepts: the input's, or for an encoder that limits the
    denominator (mpeg4: 65535; 1/90000 is common) the finest whole multiple of it within,
    else ``1/limit``; the pts are rescaled (rounded where a frame step does not divide)."""
    limit = _TIME_BASE_LIMITS.get(codec)
    if limit is None or time_base.denominator <= limit:
        return time_base
    den = time_base.denominator
    # only factors leaving at least _FINEST_TICKS ticks a second: a bounded search
    factor = next((k for k in range(2, den // _FINEST_TICKS + 1)
                   if den % k == 0 and den // k <= limit), None)
    if factor is None:
        return Fraction(1, limit)
    return Fraction(time_base.numerator, den // factor)


def avi_timing_params(width: int, height: int, rate: Fraction | None) -> str:
    """libx264's ``x264-params`` for AVI: an HRD (VBV) that does not limit a crf encode, so
    that x264 writes the timing SEI from which FFmpeg reads each frame at its own time (see
    :data:`_AVI_HRD_VBV`). Lossless x264 (crf 0) writes none."""
    pixel_rate = width * height * float(rate or 25)
    maxrate, bufsize = _AVI_HRD_VBV[pixel_rate > _AVI_HRD_PIXEL_RATE]
    return f"nal-hrd=vbr:vbv-maxrate={maxrate}:vbv-bufsize={bufsize}"


def is_yuv(pix_fmt: str | None) -> bool:
    """A luma (and chroma) format, where a colour matrix and range apply; grey included."""
    return str(pix_fmt).startswith(("yuv", "nv", "p0", "p2", "y2", "uyvy", "gray", "ya"))


def full_range(colour: dict[str, int], pix_fmt: str | None) -> bool:
    """Full-range (JPEG) YUV: tagged so, or a ``yuvj`` format."""
    return colour.get("color_range") == FULL_RANGE or str(pix_fmt).startswith("yuvj")


def stream_colour(source: Any) -> dict[str, int]:
    """The specified colour tags of a decoded frame or codec context (``colorspace``,
    ``color_primaries``, ``color_trc``, ``color_range``: FFmpeg's enum values); those this
    PyAV does not expose are left out."""
    tags = {}
    for name in ("colorspace", "color_primaries", "color_trc", "color_range"):
        value = int(getattr(source, name, 0) or 0)
        if value and (value != UNSPECIFIED or name == "color_range"):  # range: 0 is
            tags[name] = value
    return tags


def output_colour(colour: dict[str, int], source_pix_fmt: str | None, pix_fmt: str,
                  codec: str) -> dict[str, int]:
    """The output's colour tags, which its frames are converted with: the input's ``colour``;
    full range for a full-range input or a ``yuvj`` output; no RGB matrix (nor any matrix on
    a non-YUV output). None (empty) for an encoder whose stream cannot carry them (mpeg4, VP8, ...):
    its frames are converted as an untagged stream is read (BT.601, range by format)."""
    if codec not in TAGGING_ENCODERS:
        return {}
    tags = dict(colour)
    if full_range(colour, source_pix_fmt) or pix_fmt.startswith("yuvj"):
        tags["color_range"] = FULL_RANGE
    if tags.get("colorspace") == RGB_MATRIX or not is_yuv(pix_fmt):
        tags.pop("colorspace", None)
    return tags


def convert(frame: Any, pix_fmt: str, colour: dict[str, int], yuv_format: str | None,
            side: str) -> Any:
    """``frame`` converted to ``pix_fmt`` with the matrix and range of ``colour``, which
    describe the YUV side (``side``: ``"src"`` when reading from YUV ``yuv_format``,
    ``"dst"`` when writing to it). The range is passed only where known (swscale treats grey
    formats and an unspecified range by their format); PyAV before the range arguments (13)
    is asked without them (it then converts YUV as limited range, JPEG formats as full)."""
    options: dict[str, Any] = {
        f"{side}_colorspace": _SWS_MATRIX.get(colour.get("colorspace", 0), _SWS_DEFAULT)}
    if full_range(colour, yuv_format):
        options[f"{side}_color_range"] = "JPEG"
    elif colour.get("color_range") == 1:
        options[f"{side}_color_range"] = "MPEG"
    try:
        return frame.reformat(format=pix_fmt, **options)
    except TypeError:
        return frame.reformat(format=pix_fmt, **{k: v for k, v in options.items()
                                                 if not k.endswith("color_range")})

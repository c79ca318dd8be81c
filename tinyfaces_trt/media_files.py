"""The image files of a folder, found the same way by tf-detect and tf-anonymize.

One walk (:func:`walk_files`) and one set of image suffixes (:data:`IMAGE_SUFFIXES`, with
:data:`IMAGE_ALIASES`), so that ``tf-detect --blur DIR`` and ``tf-anonymize DIR`` read the
same images: a face one anonymises the other does not leave visible for want of a suffix or
of a link followed. What each CLI does with the files (tf-anonymize also takes videos and
refuses formats it cannot write) and how it words what was left out stays its own.

The walk's rules:

- **Symbolic links to folders are followed, each real folder searched once.** A folder is
  told by its device and inode, so a link back up the tree (a loop) or a second link to a
  folder already searched ends there, and is said (:data:`LINK_TO_SEARCHED`,
  :data:`SEARCHED_THROUGH_LINK`). Why follow them: a folder given is anonymised whole, as
  its user sees it (a photo library or a dataset whose folders link into a shared store);
  not following left the linked images out of tf-anonymize while ``tf-detect --blur``
  blurred them, and a privacy tool errs towards masking more. Following costs nothing
  unsafe: loops end at the first repeat, and a folder reached twice is read once, under the
  first name the sorted walk meets (outputs are named after it). Links to files are files:
  each CLI decides what a second name of one file is.
- **What is not read is said**, as (path, kind) entries (:class:`LeftOut`): hidden files and
  folders (names starting with ``.``: often a system's own, .DS_Store, .Trash, .git; a hidden
  one given by name is read), folders that cannot be read, named pipes, sockets and devices
  (reading one blocks or never ends; through a link too). The CLIs' temporary files and
  staging folders (:data:`~tinyfaces_trt.core.files.TEMP_PREFIX`) are their own and passed
  over silently, as are whatever ``skip_folder`` / ``skip_file`` refuse (an output folder).
- Entries are sorted by name within each folder, a folder's files before its sub-folders'.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from tinyfaces_trt.core.files import TEMP_PREFIX

#: Suffixes of the image files read in folders (lower case; a file's is compared lower-cased):
#: formats Pillow both reads and writes, so tf-anonymize writes its copy in the input's format.
#: A file of several pictures (animated GIF, PNG or WebP, multi-page TIFF) is read as its first
#: one, the others said (tf-detect logs them; tf-anonymize writes that one picture and counts a
#: warning: an anonymised copy never holds a frame it did not mask).
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm",
                  ".pgm")
#: Other suffixes of those formats, read too (-> the suffix of their format): .jfif and .jpe
#: (JPEG), a GoPro's .THM thumbnail (JPEG).
IMAGE_ALIASES = {".jfif": ".jpg", ".jpe": ".jpg", ".thm": ".jpg"}
#: Images of formats neither CLI reads in folders: each is an error there, never passed over in
#: silence (an image left unread is a face left visible under ``--blur``; PBM: 1 bit a pixel,
#: which would dither a blurred face back to its outline; PNM: any of the three; the others:
#: no writer in Pillow).
OTHER_IMAGE_SUFFIXES = (".pbm", ".pnm", ".heic", ".heif", ".avif", ".jp2", ".jxl", ".tga",
                        ".ico", ".dng",
                        # cameras' raw files (TIFF-like or their own): to convert, not rename
                        ".cr2", ".cr3", ".nef", ".arw", ".raf", ".orf", ".rw2", ".srw", ".pef")
#: Suffixes of the videos tf-anonymize reads and writes (tf-detect reads images only).
VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v")
#: Every suffix of a JPEG file.
JPEG_SUFFIXES = (".jpg", ".jpeg", *(s for s, to in IMAGE_ALIASES.items() if to == ".jpg"))

#: Kinds of :class:`LeftOut`: a hidden file or folder, a link to a folder already searched (a
#: loop, or a second link), a folder already searched through a link to it (the link came
#: first in the walk), a folder that cannot be read, a named pipe, socket or device.
HIDDEN_FILE = "hidden file"
HIDDEN_FOLDER = "hidden folder"
LINK_TO_SEARCHED = "link to a folder already searched"
SEARCHED_THROUGH_LINK = "folder already searched through a link"
UNREADABLE = "folder that cannot be read"
SPECIAL = "named pipe, socket or device"
#: How both CLIs word the kinds that concern any file alike: (one, many), for
#: :func:`left_out_lines`; hidden files and folders are worded by each (what giving one by name
#: does differs).
WHY = {
    LINK_TO_SEARCHED: ("links to a folder already searched (a symbolic-link loop or a second "
                       "link to it), not searched again",
                       "links to folders already searched (symbolic-link loops or second "
                       "links), not searched again"),
    SEARCHED_THROUGH_LINK: ("folder already searched through a symbolic link to it, not "
                            "searched again",
                            "folders already searched through symbolic links to them, not "
                            "searched again"),
    UNREADABLE: ("folder that cannot be read, not searched",
                 "folders that cannot be read, not searched"),
    SPECIAL: ("named pipe, socket or device, not a file: left as it is",
              "named pipes, sockets or devices, not files: left as they are")}
#: What a walk's left-out entries are, in one phrase (counts of them in summaries and errors).
LEFT_OUT_TEXT = "hidden, already searched, unreadable or special"
#: Names listed of one kind of left-out entry before the rest are counted.
NAMES_LISTED = 10


@dataclass(frozen=True)
class LeftOut:
    """An entry a folder's walk did not read: ``path`` and its ``kind`` (:data:`HIDDEN_FILE`,
    :data:`HIDDEN_FOLDER`, :data:`LINK_TO_SEARCHED`, :data:`SEARCHED_THROUGH_LINK`,
    :data:`UNREADABLE`, :data:`SPECIAL`)."""

    path: Path
    kind: str


def image_format(path: str | os.PathLike[str]) -> str | None:
    """The suffix of the image format ``path``'s name says (one of :data:`IMAGE_SUFFIXES`,
    :data:`IMAGE_ALIASES` resolved, lower case), or None: not an image both CLIs read."""
    suffix = Path(path).suffix.lower()
    suffix = IMAGE_ALIASES.get(suffix, suffix)
    return suffix if suffix in IMAGE_SUFFIXES else None


def is_image_name(path: str | os.PathLike[str]) -> bool:
    """Whether ``path``'s suffix is that of an image both CLIs read (:func:`image_format`)."""
    return image_format(path) is not None


def unsupported_image(path: str | os.PathLike[str], not_done: str) -> str:
    """The error for an image of one of :data:`OTHER_IMAGE_SUFFIXES`, saying what to do with
    it: ``"<path>: <not_done>: .heic files are not supported; convert it to one of ..."``."""
    return (f"{path}: {not_done}: {Path(path).suffix.lower()} files are not supported; convert "
            f"it to one of {', '.join(IMAGE_SUFFIXES)}")


def unknown_suffix(path: Path, what: str, kind: str, not_done: str, reader: str) -> str:
    """The error for a file whose suffix is none ``reader`` (a CLI's name) reads but whose first
    bytes are those of ``what`` (:func:`media_in`: ``kind`` ``"image"`` or ``"video"``):
    ``"<path>: <not_done>: the file holds a JPEG image but its suffix .bak is not one <reader>
    reads; rename or convert it to one of ..."``."""
    name = f"its suffix {path.suffix} is not one {reader} reads" if path.suffix else \
        "its name has no suffix"
    suffixes = IMAGE_SUFFIXES if kind == "image" else VIDEO_SUFFIXES
    return (f"{path}: {not_done}: the file holds {what} but {name}; rename or convert it to one "
            f"of {', '.join(suffixes)}")


def is_special(path: Path) -> bool:
    """A named pipe, socket or device (through a link too), not a file with data."""
    return path.is_fifo() or path.is_socket() or path.is_block_device() or path.is_char_device()


def walk_files(folder: Path, left_out: list[LeftOut],
               skip_folder: Callable[[Path], bool] | None = None,
               skip_file: Callable[[Path], bool] | None = None) -> Iterator[Path]:
    """The files below ``folder`` (any name: the caller picks by suffix), by the rules of the
    module docstring; what is not read is appended to ``left_out``. ``folder`` itself is read
    whatever its name; where it cannot be read, ``LeftOut(folder, UNREADABLE)`` is the only
    entry (the caller's error). ``skip_folder`` / ``skip_file`` (given the path under
    ``folder``) pass entries over without a word."""
    seen: set[tuple[int, int]] = set()
    real_top = os.path.realpath(folder)

    def unreadable(exc: OSError) -> None:
        left_out.append(LeftOut(Path(exc.filename), UNREADABLE))

    for root, dirs, files in os.walk(folder, followlinks=True, onerror=unreadable):
        here = Path(root)
        try:
            info = os.stat(here)
        except OSError:
            left_out.append(LeftOut(here, UNREADABLE))
            dirs[:] = []
            continue
        if (info.st_dev, info.st_ino) in seen:
            # reached again through a link (a link here or above: a loop), or the real
            # folder after a link to it came first
            through_link = os.path.realpath(here) != os.path.join(real_top, os.path.relpath(
                here, folder))
            left_out.append(LeftOut(here, LINK_TO_SEARCHED if through_link
                                    else SEARCHED_THROUGH_LINK))
            dirs[:] = []
            continue
        seen.add((info.st_dev, info.st_ino))
        searched = []
        for name in sorted(dirs):
            path = here / name
            if name.startswith(TEMP_PREFIX) or skip_folder is not None and skip_folder(path):
                continue
            if name.startswith("."):
                left_out.append(LeftOut(path, HIDDEN_FOLDER))
            else:
                searched.append(name)
        # real sub-folders before links: a folder also linked to is named as it is
        dirs[:] = sorted(searched, key=lambda name: ((here / name).is_symlink(), name))
        for name in sorted(files):
            path = here / name
            if name.startswith(TEMP_PREFIX) or skip_file is not None and skip_file(path):
                continue
            if name.startswith("."):  # before is_special: a hidden pipe is not even looked at
                left_out.append(LeftOut(path, HIDDEN_FILE))
            elif is_special(path):
                left_out.append(LeftOut(path, SPECIAL))
            else:
                yield path


def within(path: Path, folder: Path) -> bool:
    """Whether ``path`` is ``folder`` or lies below it (both resolved)."""
    return path == folder or folder in path.parents


def outside_out(folder: str | os.PathLike[str], root: str | os.PathLike[str]) -> Path | None:
    """Where the output folder ``folder`` leads when that is outside ``root`` (a resolved
    output folder, ``--out``: a symbolic link to a folder elsewhere placed in it), else None:
    the real path of its nearest existing folder with the folders still to be made (plain
    names, made there) after it. tf-detect and tf-anonymize write nothing through such a link."""
    path, rest = Path(os.path.abspath(folder)), Path()
    while not os.path.lexists(path) and path.parent != path:
        path, rest = path.parent, Path(path.name) / rest
    try:
        real = path.resolve() / rest  # (the missing folders are made there)
    except (OSError, RuntimeError):  # a link loop: not a folder inside root either
        return path / rest
    return None if within(real, Path(root)) else real


def named(names: Sequence[str]) -> str:
    """The first :data:`NAMES_LISTED` of ``names``, comma separated, then ``and <k> more``
    where there are more."""
    more = len(names) - NAMES_LISTED
    return ", ".join(names[:NAMES_LISTED]) + (f" and {more} more" if more > 0 else "")


def left_out_lines(entries: Sequence[tuple[str, str]], many: Mapping[str, str]) -> list[str]:
    """What walks left out, in lines to show: ``<path>: <why>`` for each (path, why) of
    ``entries``, or, for a why of more than :data:`NAMES_LISTED`, one line counting them
    (``many[why]``, the plural wording; ``why`` where it has none) and naming the first."""
    paths: dict[str, list[str]] = {}
    for path, why in entries:
        paths.setdefault(why, []).append(path)
    lines = []
    for why, names in paths.items():
        if len(names) <= NAMES_LISTED:
            lines.extend(f"{name}: {why}" for name in names)
        else:
            lines.append(f"{len(names)} {many.get(why, why)}: {named(names)}")
    return lines


# ---------------------------------------------------------------------------------------------
# What a file holds, by its first bytes (a file whose suffix says nothing)
# ---------------------------------------------------------------------------------------------

#: How much of a file's head :func:`read_head` reads (an M2TS packet's third sync byte).
HEAD_BYTES = 512
#: ASF header object (WMV video, but also WMA audio).
_ASF_MAGIC = bytes.fromhex("3026b2758e66cf11a6d900aa0062ce6c")
#: Signatures at offset 0: MPEG-PS pack header, RealMedia, Dahua DVR, ASF header object.
_VIDEO_MAGIC = (b"\x00\x00\x01\xba", b".RMF", b"DHAV", b"DAHUA", _ASF_MAGIC)
#: Image and video signatures at offset 0 of a file whose suffix says nothing
#: (:func:`media_in`), with what they are; those of :data:`_VIDEO_MAGIC` too.
_MEDIA_MAGIC = ((b"\xff\xd8\xff", "a JPEG image"), (b"\x89PNG\r\n\x1a\n", "a PNG image"),
                (b"GIF87a", "a GIF image"), (b"GIF89a", "a GIF image"),
                (b"II*\x00", "a TIFF image"), (b"MM\x00*", "a TIFF image"),
                (b"\x00\x00\x00\x0cjP  \r\n", "a JPEG 2000 image"),
                (b"\xff\x4f\xff\x51", "a JPEG 2000 image"),
                (b"\xff\x0a", "a JPEG XL image"), (b"\x00\x00\x00\x0cJXL ", "a JPEG XL image"),
                (b"\x1a\x45\xdf\xa3", "a Matroska or WebM video"), (b"FLV\x01", "an FLV video"),
                (b"\x00\x00\x01\xb3", "an MPEG video"), (b"\x00\x00\x01\xb0", "an MPEG-4 video"))
#: ISO media (``ftyp``) brands of audio files and of still images, at offset 8.
_AUDIO_BRANDS = (b"M4A ", b"M4B ", b"M4P ", b"F4A ", b"F4B ")
_IMAGE_BRANDS = (b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"mif1", b"msf1",
                 b"avif", b"avis")
#: Sizes of a BMP's info header (offset 14), which tell "BM" files from text starting so.
_BMP_HEADERS = (12, 40, 52, 56, 64, 108, 124)


def read_head(path: Path) -> bytes:
    """The first :data:`HEAD_BYTES` of the file; none for a file that cannot be read."""
    try:
        with open(path, "rb") as f:
            return f.read(HEAD_BYTES)
    except OSError:
        return b""


def video_head(head: bytes) -> bool:
    """Whether ``head`` starts as a video container does (:data:`_VIDEO_MAGIC`, or MPEG-TS
    sync bytes 0x47 every 188 bytes, or every 192 after a 4-byte M2TS timestamp)."""
    if head.startswith(_VIDEO_MAGIC):
        return True
    return any(len(head) > start + 2 * step and
               all(head[start + k * step] == 0x47 for k in range(3))
               for start, step in ((0, 188), (4, 192)))


def media_in(head: bytes) -> tuple[str, str] | None:
    """(what it is, ``"image"`` or ``"video"``) where ``head``, the start of a file whose suffix
    is none the CLIs know, is that of an image or video format, else None (text, audio, ASF:
    WMA audio shares its header)."""
    if head.startswith(_ASF_MAGIC):
        return None
    for magic, what in _MEDIA_MAGIC:
        if head.startswith(magic):
            return what, "video" if what.endswith("video") else "image"
    if head[4:8] == b"ftyp" and head[8:12] not in _AUDIO_BRANDS:
        return ("a HEIF or AVIF image", "image") if head[8:12] in _IMAGE_BRANDS else \
            ("an MP4 or QuickTime video", "video")
    if head[4:8] in (b"moov", b"mdat", b"wide"):
        return "a QuickTime video", "video"
    if head[:4] == b"RIFF" and head[8:12] in (b"WEBP", b"AVI "):
        return ("a WebP image", "image") if head[8:12] == b"WEBP" else ("an AVI video", "video")
    if head[:2] == b"BM" and int.from_bytes(head[14:18], "little") in _BMP_HEADERS:
        return "a BMP image", "image"
    if video_head(head):
        return "a video", "video"
    return None


__all__ = ["HIDDEN_FILE", "HIDDEN_FOLDER", "IMAGE_ALIASES", "IMAGE_SUFFIXES", "JPEG_SUFFIXES",
           "LINK_TO_SEARCHED", "LeftOut", "SEARCHED_THROUGH_LINK", "SPECIAL", "UNREADABLE",
           "WHY", "HEAD_BYTES", "image_format", "is_image_name", "is_special",
           "left_out_lines", "media_in", "read_head", "unknown_suffix", "video_head",
           "walk_files", "within"]

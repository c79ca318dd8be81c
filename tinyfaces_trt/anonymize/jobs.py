"""Anonymisation jobs: inputs planned into tasks, and one task processed.

:func:`plan_tasks` expands files and folders into :class:`Task` objects with their output
and sidecar paths (existing outputs made of the same input with the same options skipped
unless ``overwrite``; one whose sidecar records only another review band keeps its output,
:func:`update_review` rewriting the sidecar's review list; a file at an output path that
tf-anonymize did not write, and an output that would replace an input, are refused).
:func:`process_file` runs
one task and returns a :class:`Result`; it is a pure function of (detector, task, options),
all three picklable but the detector, so tasks can be spread over processes or a Ray cluster
where each worker builds its own detector (:class:`tinyfaces_trt.detectors.DetectorSpec`).

Every output is written to a temporary name and renamed when complete
(:func:`tinyfaces_trt.core.files.atomic_output`): a failed or interrupted file leaves nothing
under its final name. A provisional sidecar claims it just before that rename
(:func:`~.sidecar.write_claim`), so that every output under its final name has a sidecar. A
file that fails leaves no earlier output of its own that the run did not trust (made again:
:func:`process_file` removes it and says so); an interrupted run removes nothing.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import shlex
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from tinyfaces_trt.anonymize.reruns import redo_reason, review_rerun, same_file_elsewhere
from tinyfaces_trt.detector_record import DetectorRecord
from tinyfaces_trt.anonymize.sidecar import (FORMAT, MASKS_REVISION, AuditLog,
                                             ReviewNotRecomputable, input_identity,
                                             model_identity, output_record, pyramid_record,
                                             software_version, utc_now, with_review_band,
                                             write_claim)
from tinyfaces_trt.anonymize.tracking import DETECTED, FILLED, HELD, FrameMasks, TemporalMasker
from tinyfaces_trt.core.cli import printable
from tinyfaces_trt.core.errors import OutOfMemoryError, TinyFacesError, memory_message
from tinyfaces_trt.core.files import (atomic_output, dangling_link_note, inputs_replaced_by,
                                      temporary_folder, write_text_atomic, written_for_another)
from tinyfaces_trt.core.progress import TimedLines, bar_size, detect_with_progress, duration_text
from tinyfaces_trt.media_files import (HIDDEN_FILE, HIDDEN_FOLDER, IMAGE_ALIASES, IMAGE_SUFFIXES,
                                       LEFT_OUT_TEXT, OTHER_IMAGE_SUFFIXES,
                                       UNREADABLE, VIDEO_SUFFIXES, WHY, LeftOut, image_format,
                                       is_special, media_in, named, outside_out, read_head,
                                       unknown_suffix, unsupported_image, video_head,
                                       walk_files, within)
from tinyfaces_trt.media_files import left_out_lines as _left_out_lines
from tinyfaces_trt.runtime.masks import (ANONYMIZE_STYLE, MaskStyle, apply_masks, pixel_boxes,
                                         scale_boxes)

if TYPE_CHECKING:
    from tinyfaces_trt.core.config import DetectorConfig
    from tinyfaces_trt.runtime.pipeline import Detector

log = logging.getLogger("tinyfaces_trt.anonymize")

# IMAGE_SUFFIXES (images picked up in folders, tf-detect's too) and their aliases:
# tinyfaces_trt.media_files. An animated GIF, like a multi-page TIFF, gives its first frame,
# the only one its copy holds (a counted warning: _process_image); a PGM's copy is gray.
#: Other suffixes of those formats, picked up too; the output keeps its name and is written in
#: the format of the suffix given here: .jfif and .jpe (JPEG), a GoPro's .THM thumbnail (JPEG)
#: (:data:`~tinyfaces_trt.media_files.IMAGE_ALIASES`) and .LRV low-resolution copy (MP4),
#: QuickTime's .qt, MPEG-4's .mp4v.
WRITTEN_AS = {**IMAGE_ALIASES, ".lrv": ".mp4", ".mp4v": ".mp4", ".qt": ".mov"}
# Images of other formats (OTHER_IMAGE_SUFFIXES, tinyfaces_trt.media_files): one in a folder
# is an error (it would be left with its faces visible), not ignored as other files are.
#: Videos in containers it does not write: an error too, given or in a folder (dashcam .ts,
#: camcorder .MTS, phone .3gp, DVR .dav...); their streams usually remux into .mkv as they are.
OTHER_VIDEO_SUFFIXES = (".ts", ".mts", ".m2ts", ".m2t", ".mpg", ".mpeg", ".m1v", ".m2v", ".vob",
                        ".3gp", ".3g2", ".flv", ".f4v", ".wmv", ".asf", ".ogv", ".mxf", ".dv",
                        ".dav", ".mod", ".tod", ".rm", ".rmvb", ".divx", ".264", ".h264", ".265",
                        ".h265", ".hevc")
#: Of those, the suffixes other common files share (TypeScript and Qt .ts, Go's go.mod and
#: tracker .mod music, ...): such a file is a video only when its first bytes say so
#: (:func:`_looks_like_video`), else it is left alone as any unknown file.
SHARED_VIDEO_SUFFIXES = (".ts", ".mod", ".rm", ".dav", ".asf")
#: Overlay colours of ``--draw``: detected, held, back-filled.
DRAW_COLORS = {DETECTED: (0, 255, 0), HELD: (255, 160, 0), FILLED: (0, 200, 255)}


@dataclass(frozen=True)
class Options:
    """How files are anonymised (everything but the detector).

    Attributes:
        style: the mask (mode, shape, scale, strength, grid).
        draw: draw the masked regions with their scores and kinds (debug overlay).
        hold: frames a mask is held after a face's last detection and back-filled before
            its first (video only).
        iou: smallest IoU that continues a face track.
        batch: frames detected per :meth:`Detector.detect_batch` call.
        codec, crf: video encoder and quality (None: per-container defaults).
        keep_audio: copy a video's audio streams (default: left out, voices are personal
            data).
        keep_metadata: copy a video's metadata tags, chapter titles, subtitle and data
            streams (default: left out but for what playback needs: rotation, a stream's
            language).
        review_band: detections scoring within this band above the threshold are listed
            for human review in the sidecar.
        progress: show a progress bar on stderr.
        backend, command: the backend the detector runs on (``--backend``, ``auto``
            resolved; None: unknown) and the command line (``sys.argv``), recorded in the
            sidecar's ``run`` for audit only (:data:`AUDIT_ONLY`: not in its ``options``,
            never compared).
    """

    style: MaskStyle = ANONYMIZE_STYLE
    draw: bool = False
    hold: int = 5
    iou: float = 0.3
    batch: int = 4
    codec: str | None = None
    crf: int | None = None
    keep_audio: bool = False
    keep_metadata: bool = False
    review_band: float = 0.1
    progress: bool = False
    backend: str | None = None
    command: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.hold < 0 or self.batch < 1 or not 0 < self.iou <= 1 or self.review_band < 0:
            raise TinyFacesError(f"invalid options: hold={self.hold} (>= 0), batch={self.batch} "
                                 f"(>= 1), iou={self.iou} (0..1], review_band="
                                 f"{self.review_band} (>= 0)")


@dataclass(frozen=True)
class Task:
    """One input file and where its outputs go.

    Attributes:
        source: the input file.
        output: the anonymised copy (same format as the input).
        sidecar: the audit JSON.
        kind: ``"image"`` or ``"video"``.
        redo: why an existing output with its sidecar is made again (it was made with other
            options), else None; where making it again fails, that output and its sidecar are
            removed (:func:`process_file`).
        moved_from: the input path the existing output's sidecar records where that is
            another path holding the same file (:func:`~.reruns.same_file_elsewhere`: a folder
            moved or remounted), else None.
        review: where the existing output is done but its sidecar records another review band
            (:func:`~.reruns.review_rerun`), how (``review_band 0.1 (now 0.3)``): the output is
            kept and :func:`update_review` recomputes the sidecar's review list; else None.
        out_root: the output folder, resolved once when the run is planned (``--out``, or
            the folder a link at ``--out`` points to): the output and its sidecar are written
            only into a folder that resolves inside it (:func:`outside_out`: a link to a
            folder placed in ``--out`` is not followed out of it); None: not checked.
    """

    source: str
    output: str
    sidecar: str
    kind: str
    redo: str | None = None
    moved_from: str | None = None
    review: str | None = None
    out_root: str | None = field(default=None, compare=False)


class InputOverwriteError(TinyFacesError):
    """An output would replace an input file of the same run (the output folder holds it)."""


def _outside_error(task: Task, folder: str | os.PathLike[str]) -> str | None:
    """Why ``task`` may not write into ``folder`` (its output's or sidecar's): it leads
    outside ``task.out_root`` (:func:`outside_out`); None when it may, or nothing is checked."""
    real = None if task.out_root is None else outside_out(folder, task.out_root)
    if real is None:
        return None
    return (f"not anonymised: the folder of its output {task.output} leads to {real}, outside "
            f"the output folder {task.out_root} (a symbolic link in it); nothing is written "
            f"through it: remove the link, or give that folder as --out")


@dataclass(frozen=True)
class Result:
    """What happened to one task.

    Attributes:
        status: ``"done"``, ``"skipped"`` (output exists), :data:`REVIEW_UPDATED` (output
            kept, its sidecar's review list recomputed for another band) or ``"failed"``.
        error: the reason, for a failure.
        frames: frames written; detections, held, filled: mask counts; review_frames:
            frames listed for review.
        seconds: wall time; warnings: e.g. streams the output container could not hold,
            undecodable packets of the input skipped, an image's pages or frames after the
            first left out; notes: what the privacy defaults left out (audio, metadata), as
            asked, an image too small to search.
        anonymised: False for an output of ``--mode none`` (its faces stay visible).
    """

    task: Task
    status: str
    error: str | None = None
    frames: int = 0
    detections: int = 0
    held: int = 0
    filled: int = 0
    review_frames: int = 0
    seconds: float = 0.0
    warnings: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()
    anonymised: bool = True

    @property
    def fps(self) -> float:
        """Frames per second over the whole file (decode, detect, encode)."""
        return self.frames / self.seconds if self.seconds > 0 else 0.0


# ---------------------------------------------------------------------------------------------
# Planning
# ---------------------------------------------------------------------------------------------

def media_kind(path: Path) -> str | None:
    """``"image"``, ``"video"`` or None, from the suffix (:data:`WRITTEN_AS` included; images:
    :func:`~tinyfaces_trt.media_files.image_format`, tf-detect's rule)."""
    if image_format(path) is not None:
        return "image"
    suffix = path.suffix.lower()
    suffix = WRITTEN_AS.get(suffix, suffix)
    if suffix in VIDEO_SUFFIXES:
        return "video"
    return None


def _other_format(path: Path) -> bool:
    """An image or video of a format it does not write (:data:`OTHER_IMAGE_SUFFIXES`,
    :data:`OTHER_VIDEO_SUFFIXES`; one of :data:`SHARED_VIDEO_SUFFIXES` only when its head
    looks like a video)."""
    suffix = path.suffix.lower()
    if suffix in SHARED_VIDEO_SUFFIXES:
        return _looks_like_video(path)
    return suffix in OTHER_IMAGE_SUFFIXES + OTHER_VIDEO_SUFFIXES


def _looks_like_video(path: Path) -> bool:
    """Whether the file starts as a video container does
    (:func:`~tinyfaces_trt.media_files.video_head`)."""
    return video_head(read_head(path))


def _is_sidecar(path: Path) -> bool:
    """Whether ``path`` is named as tf-anonymize names a sidecar (``<output>.json``)."""
    return path.suffix.lower() == ".json" and media_kind(Path(path.stem)) is not None


#: The status of a :class:`Result` of :func:`update_review`: the output kept, its sidecar's
#: review list recomputed for the run's review band.
REVIEW_UPDATED = "review list updated"
#: The status of a :class:`Result` of :func:`plan_tasks` for a file or folder a folder's walk
#: left out (:func:`_walk`); its ``notes`` hold why, one of :data:`LEFT_OUT_WHY`'s keys.
LEFT_OUT = "left out"
_HIDDEN_MEDIA = ('hidden image or video (its name starts with "."), not anonymised; give it by '
                 'name to anonymise it')
_HIDDEN_FILE = 'hidden file (its name starts with "."), left as it is'
_HIDDEN_FOLDER = ('hidden folder (its name starts with "."), not searched; give it by name to '
                  'anonymise its files')
_UNREADABLE = WHY[UNREADABLE][0]
#: Why a walk left something out: what one is (a line each), what many are (a count); the
#: kinds that concern any file are worded as tf-detect words them (media_files.WHY).
LEFT_OUT_WHY = {
    _HIDDEN_MEDIA: ('hidden images or videos (names starting with "."), not anonymised; give '
                    'one by name to anonymise it'),
    _HIDDEN_FILE: 'hidden files (names starting with "."), left as they are',
    _HIDDEN_FOLDER: ('hidden folders (names starting with "."), not searched; give one by name '
                     'to anonymise its files'),
    **dict(WHY.values())}


def _walk(folder: Path, exclude: Path, left_out: list[tuple[Path, str]]) -> Iterator[Path]:
    """The folder's files (:func:`~tinyfaces_trt.media_files.walk_files`, tf-detect's walk:
    links to folders followed, each real folder searched once). ``exclude`` (the output
    folder, also through a link, unless it holds ``folder``: then only what lies outside
    ``folder``), tf-anonymize's temporary files and folders and its hidden sidecars are passed
    over; added to ``left_out`` as (path, why: a key of :data:`LEFT_OUT_WHY`) are hidden files
    and folders (often a system's own: .DS_Store, .Trash), links to folders already searched
    (a loop, or a second link), folders that cannot be read, and named pipes, sockets and
    devices (reading their first bytes would block or never end)."""
    root = folder.resolve()

    def excluded(path: Path) -> bool:
        try:
            resolved = path.resolve()
        except (OSError, RuntimeError):  # a link loop: the walk reports it
            return False
        return within(resolved, exclude) and not (exclude in root.parents and
                                                  within(resolved, root))

    def silent(path: Path) -> bool:
        return path.name.startswith(".") and _is_sidecar(path)

    walked: list[LeftOut] = []
    yield from walk_files(folder, walked, skip_folder=excluded, skip_file=silent)
    left_out.extend(_left_out_why(entry) for entry in walked)


def _left_out_why(entry: LeftOut) -> tuple[Path, str]:
    """(path, why: a key of :data:`LEFT_OUT_WHY`) of what :func:`_walk` left out."""
    if entry.kind == HIDDEN_FOLDER:
        return entry.path, _HIDDEN_FOLDER
    if entry.kind == HIDDEN_FILE:
        path = entry.path
        media = media_kind(path) is not None or not is_special(path) and \
            _other_format(path)  # a pipe's head is never read
        return path, _HIDDEN_MEDIA if media else _HIDDEN_FILE
    return entry.path, WHY[entry.kind][0]


def _plan_folder(folder: Path, exclude: Path, left_out: list[tuple[Path, str]]
                 ) -> tuple[list[tuple[Path, Path]], list[tuple[str, str]]]:
    """The folder's inputs ([(file, its path relative to ``folder``)]) and [(file, error)] for
    its images and videos of other formats (:func:`_other_format`), its files of unknown
    suffixes that hold one (:func:`~tinyfaces_trt.media_files.media_in`) and the folder itself
    where it cannot be read; what its walk leaves out is added to ``left_out`` (:func:`_walk`);
    its other files, sidecars aside, are named in one warning: each file is anonymised or
    mentioned."""
    found: list[tuple[Path, Path]] = []
    errors: list[tuple[str, str]] = []
    others: list[str] = []
    walked = len(left_out)
    for path in _walk(folder, exclude, left_out):
        if media_kind(path):
            found.append((path, path.relative_to(folder)))
        elif _other_format(path):
            errors.append((str(path), _unsupported(path)))
        elif (media := media_in(read_head(path))) is not None:
            errors.append((str(path), unknown_suffix(path, *media, "not anonymised",
                                                     "tf-anonymize")))
        elif not _is_sidecar(path):
            others.append(path.relative_to(folder).as_posix())
    if (folder, _UNREADABLE) in left_out[walked:]:  # the folder given itself: an error
        left_out.remove((folder, _UNREADABLE))
        errors.append((str(folder), f"{folder}: cannot read the folder"))
    if not found and not errors:
        passed = len(left_out) - walked
        errors.append((str(folder), f"{folder}: folder holds no image or video files" +
                       (f" ({passed} left out: {LEFT_OUT_TEXT})" if passed else "")))
    if others:
        log.warning("%s: %d other file(s) left as they are (not images or videos): %s",
                    folder, len(others), named(others))
    return found, errors


def left_out_lines(results: Sequence[Result]) -> list[str]:
    """What folder walks left out (the results of status :data:`LEFT_OUT` among ``results``)
    in lines to show: ``<path>: <why>`` for each, or, for a kind of more than
    :data:`~tinyfaces_trt.media_files.NAMES_LISTED`, one line counting them and naming the
    first."""
    return _left_out_lines([(result.task.source, result.notes[0]) for result in results
                            if result.status == LEFT_OUT], LEFT_OUT_WHY)


def _unsupported(path: Path) -> str:
    """The error for a file of another format, saying what to do with it."""
    suffix = path.suffix.lower()
    if suffix in OTHER_VIDEO_SUFFIXES:
        remux = f"ffmpeg -i {shlex.quote(path.name)} -c copy {shlex.quote(path.stem + '.mkv')}"
        return (f"{path}: not anonymised: {suffix} videos are not supported; remux it to .mkv "
                f"({remux}) or convert it to one of {', '.join(VIDEO_SUFFIXES)}")
    return unsupported_image(path, "not anonymised")


def plan_tasks(inputs: Sequence[str | os.PathLike[str]], out_dir: str | os.PathLike[str],
               overwrite: bool = False, options: Options | None = None,
               detector: DetectorRecord | None = None
               ) -> tuple[list[Task], list[Result], list[tuple[str, str]]]:
    """Expands INPUT arguments into tasks.

    A folder is walked recursively (sorted, ``out_dir`` skipped; links to folders followed,
    each real folder searched once, as tf-detect walks it) for image and video suffixes
    (images: tf-detect's, :data:`~tinyfaces_trt.media_files.IMAGE_SUFFIXES`); outputs keep
    the path relative to it. Its hidden files and folders, links to folders already searched,
    folders that cannot be read and named pipes are left out, each said so (:func:`_walk`);
    a hidden file or folder given by name is taken. A file argument
    keeps its name. A file found more than once (by its real path: named twice, through a
    link, or in a folder also given) is planned once, where first found (one warning counts
    the others). Two inputs that would write the same output get ``_2``, ``_3``, ...
    suffixes, in one run or across runs (the sidecar names its input), never a name another
    input keeps, and the same in every run of the same inputs whatever their order
    (:func:`_output_names`); an output whose sidecar records another path but the identity
    of the file given is its output (:func:`_output_name`).

    Returns:
        (tasks to run (those whose output is done but whose sidecar records another review
        band than ``options``' with :attr:`Task.review` set: :func:`update_review`'s; where
        the sidecar cannot give the new list exactly, with :attr:`Task.redo` set instead),
        skipped results for inputs whose output and sidecar both exist when not
        ``overwrite`` and the sidecar records the input file as it is now, ``options``'
        pixel-changing options and ``detector``'s network and settings (:func:`is_done`;
        None: not compared) and ``options``' review band, first the results of status
        :data:`LEFT_OUT` of what folder walks left out (the path as ``task.source``, no
        output, why as the only note: :func:`left_out_lines` words them),
        [(argument, error)] for missing paths, unknown suffixes, images and videos of other
        formats and files of unknown suffixes holding one in folders (:func:`_plan_folder`),
        empty folders, outputs whose folder leads outside ``out_dir`` (a symbolic link to a
        folder elsewhere placed in it: :func:`outside_out`), output or sidecar paths that
        hold a folder (:func:`_not_a_file`), own names passed over for an audit JSON that
        cannot be read (:func:`_unreadable_record`), and, unless ``overwrite``, outputs that
        exist without a sidecar (not written by tf-anonymize: left as they are)).

    Raises:
        InputOverwriteError: an output would replace an input file (the first named).
    """
    out = Path(out_dir)
    exclude = out.resolve()
    found: list[tuple[Path, Path]] = []
    errors: list[tuple[str, str]] = []
    left_out: list[tuple[Path, str]] = []
    for arg in inputs:
        path = Path(arg)
        if path.is_dir():
            in_folder, refused = _plan_folder(path, exclude, left_out)
            found.extend(in_folder)
            errors.extend(refused)
        elif not path.exists():
            errors.append((str(path), f"{path}: no such file or folder{dangling_link_note(path)}"))
        elif _other_format(path):
            errors.append((str(path), _unsupported(path)))
        elif media_kind(path) is None:
            errors.append((str(path), f"{path}: unknown file type {path.suffix or '(none)'}; "
                           f"expected {', '.join(IMAGE_SUFFIXES + VIDEO_SUFFIXES)}"))
        else:
            found.append((path, Path(path.name)))
    found = _once_each(found)
    real = {os.path.realpath(source) for source, _ in found}
    tasks, foreign, outside = [], [], []
    skipped = [Result(Task(str(path), "", "", ""), LEFT_OUT, notes=(why,))
               for path, why in left_out]
    for (source, rel), (target, moved_from) in zip(found, _output_names(out, found, real)):
        if target != rel and (problem := _unreadable_record(source, out / rel)) is not None:
            errors.append((str(source), problem))  # not made as _2 beside it, unsaid
            continue
        output = out / target
        task = Task(str(source), str(output), str(output) + ".json", media_kind(source) or "",
                    moved_from=moved_from, out_root=str(exclude))
        if (problem := _outside_error(task, output.parent)) is not None:
            outside.append(task)  # nothing read there (a sidecar) nor written
            errors.append((task.source, naming(task.source, problem)))
            continue
        if (problem := _not_a_file(task)) is not None:  # --overwrite replaces files only
            foreign.append(task)
            errors.append((task.source, problem))
            continue
        verdict, why = (NEW, None) if overwrite else rerun_verdict(task, options, detector)
        if verdict == NEW:
            tasks.append(task)
        elif verdict == FOREIGN:
            foreign.append(task)
            errors.append((task.source, _not_ours(task)))
        elif verdict == SKIP:
            skipped.append(Result(task, "skipped"))
        elif verdict == REVIEW:
            tasks.append(dataclasses.replace(task, review=why))
        else:
            tasks.append(dataclasses.replace(task, redo=why))
    # an --out holding the inputs is refused as such, before its files are taken for foreign ones
    _refuse_replacing_inputs(tasks + foreign + outside, [source for source, _ in found], out)
    return tasks, skipped, errors


def _once_each(found: list[tuple[Path, Path]]) -> list[tuple[Path, Path]]:
    """``found`` with each file once, by its real path (a file named twice, through a link or
    as ./a.mp4, or in a folder also given), where it comes first; a warning counts and names
    those left out."""
    kept: list[tuple[Path, Path]] = []
    seen: set[str] = set()
    dropped: list[str] = []
    for source, rel in found:
        real = os.path.realpath(source)
        if real in seen:
            dropped.append(str(source))
            continue
        seen.add(real)
        kept.append((source, rel))
    if dropped:
        names = list(dict.fromkeys(dropped))  # each name once
        log.warning("%d duplicate input(s) left out, the same file as an earlier input (by its "
                    "real path): %s", len(dropped), named(names))
    return kept


def _output_names(out: Path, found: Sequence[tuple[Path, Path]], inputs: set[str]
                  ) -> list[tuple[Path, str | None]]:
    """:func:`_output_name` of each (file, path relative to ``out``) of ``found``, in its
    order, chosen in the order of the relative paths (the first found first where two are
    the same: the first argument keeps the name), not that of a walk, and with the names
    inputs keep passed over by the others' suffixes: the same inputs get the same names in
    every run, and a rerun finds its outputs. ``inputs``: the real paths of the run's
    inputs."""
    keep = {rel.as_posix().lower() for _, rel in found}
    used: set[str] = set()
    names: dict[int, tuple[Path, str | None]] = {}
    for i in sorted(range(len(found)), key=lambda i: (found[i][1].as_posix(), i)):
        source, rel = found[i]
        names[i] = _output_name(out, rel, source, used, inputs, keep)
        used.add(names[i][0].as_posix().lower())
    return [names[i] for i in range(len(found))]


def _output_name(out: Path, rel: Path, source: Path, used: set[str],
                 inputs: set[str], keep: set[str]) -> tuple[Path, str | None]:
    """Where ``source``'s output goes (relative to ``out``: ``rel``, else ``rel`` with ``_2``,
    ``_3``, ...), and the input path its existing sidecar records where that is another path
    of the same file (else None).

    Names another input of this run took (``used``, lower case) are passed over, and so are
    the names inputs of the run keep (``keep``, lower case: ``x_2.jpg`` is not ``x.jpg``'s
    where ``x_2.jpg`` is an input too) unless an earlier run gave it to ``source`` (its
    sidecar says so), and names whose sidecar an earlier run wrote for another input; the
    first name free, or whose sidecar names ``source``'s real path, ends the search. An
    output passed over whose sidecar records the identity of the file ``source`` is
    (:func:`~.reruns.same_file_elsewhere`: a folder moved or remounted; not for a path among
    ``inputs``, the real paths of the run's inputs, which take their own) is taken instead of
    a free name: skipped as done, not made again as ``_2``. Only such a sidecar recording
    ``source``'s size has ``source`` read.
    """
    own = rel.as_posix().lower()
    target, k = rel, 1
    same_file: tuple[Path, str] | None = None
    while True:
        if (name := target.as_posix().lower()) not in used:
            record = out / f"{target.as_posix()}.json"
            if not written_for_another(record, "input", source):
                if name == own or name not in keep or record.exists():
                    break
            elif same_file is None and \
                    (recorded := same_file_elsewhere(record, source, inputs)) is not None:
                same_file = (target, recorded)
        k += 1
        target = rel.with_name(f"{rel.stem}_{k}{rel.suffix}")
    if same_file is not None and not record.exists():  # a free name: the same file's instead
        return same_file
    return target, None


def _unreadable_record(source: Path, output: Path) -> str | None:
    """The error for an input whose own output name is passed over because the audit JSON
    there cannot be read (damaged, a folder, no permission): whose copy ``output`` is cannot
    be told, and a numbered copy beside it would leave two; else None."""
    record = Path(f"{output}.json")
    if not record.exists():
        return None
    try:
        data = json.loads(record.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
    else:
        if isinstance(data, dict):
            return None
        why = "not a JSON object"
    if not output.exists():
        return (f"{source}: not anonymised: {record} cannot be read as an audit JSON ({why}) "
                "and may be another input's; repair it or move it away")
    return (f"{source}: not anonymised: {record} cannot be read as an audit JSON ({why}), so "
            f"whether {output} is this input's copy cannot be told; repair that file, or move "
            f"it away with {output.name}")


def _not_a_file(task: Task) -> str | None:
    """The error for an output or sidecar path that holds a folder (or a pipe, a device...),
    not a file: neither an earlier output nor something ``--overwrite`` replaces; else None."""
    for path in (Path(task.output), Path(task.sidecar)):
        if path.exists() and not path.is_file():
            what = "a folder" if path.is_dir() else "not a regular file"
            return (f"{task.source}: not anonymised: {path} is {what}, where its "
                    f"{'copy' if path == Path(task.output) else 'audit JSON'} would go; move "
                    "it away or give another --out")
    return None


def _not_ours(task: Task) -> str:
    """The error for an output path holding a file without a sidecar: not tf-anonymize's
    (every output of its own gets a sidecar before its final name: :func:`_output_file`)."""
    return (f"{task.source}: not anonymised: {task.output} exists and was not written by "
            f"tf-anonymize (no sidecar {Path(task.sidecar).name}); move it away, or --overwrite "
            "replaces it (and redoes every output)")


#: :func:`rerun_verdict`'s verdicts: no output at the task's path; a file there without a
#: sidecar (not tf-anonymize's); an output that is done; one done but for its sidecar's review
#: list, which the sidecar gives; one to make again.
NEW, FOREIGN, SKIP, REVIEW, REDO = "new", "foreign", "skip", "review", "redo"


def rerun_verdict(task: Task, options: Options | None = None,
                  detector: DetectorRecord | None = None) -> tuple[str, str | None]:
    """What a run without ``--overwrite`` does with ``task``'s existing output, the rule of
    both :func:`plan_tasks` and :func:`is_done` (``--ray``'s resume check): ``(NEW, None)``
    where nothing is at its path, ``(FOREIGN, None)`` where a file is there without its sidecar
    (left as it is, an error), ``(SKIP, None)`` where the sidecar records the input file as it
    is now, this version's masking revision, the output file as it is now (its size and
    sha256), ``options``' pixel-changing options and ``detector``'s network and settings
    (:func:`~.reruns.redo_reason`; None: not compared) and ``options``' review band (None:
    nothing compared), ``(REVIEW, change)`` where only the review band differs and the sidecar
    gives the new list (:func:`~.reruns.review_rerun`, :func:`update_review`), else ``(REDO,
    why)``: it is made again."""
    if not Path(task.output).exists():
        return NEW, None
    if not Path(task.sidecar).exists():
        return FOREIGN, None
    redo = _redo_reason(task, options, detector)
    if redo is not None:
        return REDO, redo
    review = None if options is None else review_rerun(task.sidecar, options.review_band)
    if review is None:
        return SKIP, None
    change, why_not = review  # only the review band differs: the sidecar's list, or all
    return (REDO, why_not) if why_not else (REVIEW, change)


def is_done(task: Task, options: Options | None = None,
            detector: DetectorRecord | None = None) -> bool:
    """Whether a rerun skips ``task`` as done (:func:`rerun_verdict`: its output and sidecar
    exist, and the sidecar records the input file and the output file as they are now, this
    version's masking revision, ``options``' pixel-changing options and review band (None:
    nothing compared) and ``detector``'s network and settings (None: not compared))."""
    return rerun_verdict(task, options, detector)[0] == SKIP


def _redo_reason(task: Task, options: Options | None,
                 detector: DetectorRecord | None) -> str | None:
    if options is None:
        return None
    return redo_reason(task.sidecar, task.kind, _options_record(options), detector,
                       task.source, task.output)


def _refuse_replacing_inputs(tasks: Sequence[Task], sources: Sequence[Path], out: Path) -> None:
    """Raises :class:`InputOverwriteError` where a task's output would replace an input file's
    data (itself, another input of the run, or the file a linked input points to)."""
    victims = inputs_replaced_by([task.output for task in tasks], sources)
    clashes = [(task, victims[task.output]) for task in tasks if task.output in victims]
    if not clashes:
        return
    task, victim = clashes[0]
    by = "its anonymised copy" if Path(victim) == Path(task.source) else \
        f"the anonymised copy of {task.source}"
    what = f"{victim} links to {task.output}, which" if Path(victim).is_symlink() else f"{victim}"
    more = f" (and {len(clashes) - 1} more input(s))" if len(clashes) > 1 else ""
    raise InputOverwriteError(f"{what} would be replaced by {by} in {out}{more}")


# ---------------------------------------------------------------------------------------------
# Processing
# ---------------------------------------------------------------------------------------------

def process_file(detector: Detector, task: Task, options: Options) -> Result:
    """Anonymises one file and writes its sidecar; never raises for a bad file.

    Returns a ``"failed"`` :class:`Result` naming the problem for unreadable, corrupt or
    unwritable files, for an image (a video's frames) large enough to hold a face on which
    no pyramid level runs (:func:`_search_plan`: nothing written), for a file this process
    runs out of memory on (:class:`OutOfMemoryError`, :func:`memory_message`: nothing written)
    and for an output folder that leads outside ``task.out_root`` (:func:`outside_out`: a link
    to a folder elsewhere placed in the output folder; nothing read or written); the other
    files of a batch go on. Where such a file's earlier output is tf-anonymize's but not what
    this run makes (:func:`_remove_earlier`: e.g. an older version's unmasked copy), that
    output and its sidecar are removed, and the error says so (not through such a link).
    KeyboardInterrupt propagates (nothing removed).
    """
    start = time.perf_counter()
    started = utc_now()
    if (outside := _outside_error(task, Path(task.output).parent)) is not None:
        # before any read: nothing is written, nor an earlier output removed, through the link
        return Result(task, "failed", error=naming(task.source, outside),
                      seconds=time.perf_counter() - start)
    earlier = _file_key(task.output)  # the output this run is to replace, if any
    try:
        identity = input_identity(task.source)  # before reading: a file changed meanwhile is redone
        process = _process_video if task.kind == "video" else _process_image
        audit, header, warnings, notes = process(detector, task, options, identity)
        header["run"] = {**header["run"], "started": started, "finished": utc_now()}
        audit.write(task.sidecar, **header)
    except TinyFacesError as exc:
        message = str(exc) + _remove_earlier(task, options, earlier)
        return Result(task, "failed", error=naming(task.source, message),
                      seconds=time.perf_counter() - start)
    except OSError as exc:
        if isinstance(exc, FileNotFoundError) and exc.filename == task.source:
            why = f"no such file{dangling_link_note(task.source)}"  # gone since the plan
        elif (folder := temporary_folder(exc)) is not None:  # an output's or sidecar's
            why = f"cannot write into {folder} ({exc.strerror or exc})"
        else:
            why = f"{exc.strerror or exc}" + (f" ({exc.filename})" if exc.filename else "")
        message = why + _remove_earlier(task, options, earlier)
        return Result(task, "failed", error=naming(task.source, message),
                      seconds=time.perf_counter() - start)
    except MemoryError as exc:  # while it was read, its size not known yet (OutOfMemoryError)
        message = memory_message(exc, nothing_written=True) + _remove_earlier(task, options, earlier)
        return Result(task, "failed", error=naming(task.source, message),
                      seconds=time.perf_counter() - start)
    counts = audit.summary()
    return Result(task, "done", frames=counts["frames"], detections=counts["detections"],
                  held=counts["held"], filled=counts["filled"],
                  review_frames=counts["review_frames"], seconds=time.perf_counter() - start,
                  warnings=tuple(warnings), notes=tuple(notes),
                  anonymised=bool(header["anonymised"]))


def _file_key(path: str | os.PathLike[str]) -> tuple[int, int, int, int] | None:
    """What tells the file at ``path`` (a link itself, not followed) from one renamed into its
    place: device, inode, size, modification time; None where there is none."""
    try:
        st = os.lstat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


def _sidecar_format(path: str | os.PathLike[str]) -> Any:
    """The ``format`` a JSON file records (None: none, or not JSON that can be read)."""
    try:
        recorded = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return recorded.get("format") if isinstance(recorded, dict) else None


def _remove_earlier(task: Task, options: Options, earlier: tuple[int, int, int, int] | None
                    ) -> str:
    """Removes the earlier output of ``task``, which this run failed to make again, with its
    sidecar, where it is still the file ``earlier`` (:func:`_file_key`, taken before: not this
    run's own, renamed into place), its sidecar is tf-anonymize's (records its ``format``) and
    this run does not trust it: the planner made it again (:attr:`Task.redo`), or, with
    ``--overwrite``, :func:`~.reruns.redo_reason` gives why (another masking revision, input,
    output file or options); an output it would have skipped is kept. The output goes first:
    a sidecar left alone vouches for no file, and a rerun makes it; an output left without its
    sidecar would be taken for a user's file and kept.

    Returns what the failure adds (``"; removed the earlier output ..."``), or ``""``.
    """
    if earlier is None or _file_key(task.output) != earlier or \
            _sidecar_format(task.sidecar) != FORMAT:
        return ""
    if task.redo is None and redo_reason(task.sidecar, task.kind, _options_record(options),
                                         None, task.source, task.output) is None:
        return ""
    why = "it could not be made again and may not hide every face"
    try:
        os.unlink(task.output)
        Path(task.sidecar).unlink(missing_ok=True)
    except OSError as exc:
        return (f"; the earlier output {task.output} and its sidecar {task.sidecar} could not be "
                f"removed ({exc.strerror or exc}): {why}; remove them")
    return f"; removed the earlier output {task.output} and its sidecar {task.sidecar}: {why}"


def update_review(task: Task, options: Options, command: Sequence[str] = ()) -> Result:
    """Rewrites ``task``'s sidecar (atomically) with the review list of ``options.review_band``
    recomputed from the masks and scores it records (:func:`~.sidecar.with_review_band`:
    every other field kept, the change noted in ``review_updates`` with ``command``), for a
    task :func:`plan_tasks` found done but for its review band (:attr:`Task.review`). The
    output is neither read nor written. Never raises for a bad sidecar.

    Returns:
        a :data:`REVIEW_UPDATED` :class:`Result` (the sidecar's counts), or a ``"failed"`` one
        where the sidecar cannot be read or written, or no longer gives the list exactly.
    """
    start = time.perf_counter()
    if (outside := _outside_error(task, Path(task.sidecar).parent)) is not None:
        return Result(task, "failed", error=naming(task.source, outside),
                      seconds=time.perf_counter() - start)
    try:
        recorded = json.loads(Path(task.sidecar).read_text(encoding="utf-8"))
        document = with_review_band(recorded, options.review_band, command=list(command),
                                    version=software_version())
        write_text_atomic(task.sidecar, json.dumps(document, indent=1) + "\n")
    except ReviewNotRecomputable as exc:
        return Result(task, "failed", seconds=time.perf_counter() - start, error=naming(
            task.source, f"review list of {task.sidecar} not updated: {exc}; run again"))
    except (OSError, ValueError, AttributeError) as exc:
        message = f"{exc.strerror or exc}" if isinstance(exc, OSError) else f"{exc}"
        return Result(task, "failed", seconds=time.perf_counter() - start, error=naming(
            task.source, f"review list of {task.sidecar} not updated: {message}"))
    summary = document["summary"]
    counts = {key: summary.get(key) for key in ("frames", "detections", "held", "filled")}
    return Result(task, REVIEW_UPDATED, review_frames=len(document["review"]["frames"]),
                  seconds=time.perf_counter() - start,
                  anonymised=document.get("anonymised") is not False,
                  **{k: v for k, v in counts.items() if isinstance(v, int)})


def naming(source: str, message: str) -> str:
    """``message`` about the input ``source``, prefixed with it unless it starts with it."""
    if message.startswith((f"{source}:", f"{Path(source)}:")):
        return message
    return f"{source}: {message}"


def detect_frames(detector: Detector, images: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Detections of same-size images (:meth:`Detector.detect_batch`: batched where its
    runner takes batches)."""
    return list(detector.detect_batch(list(images)))


def render(image: np.ndarray, frame: FrameMasks, options: Options, base: float = 0.0
           ) -> np.ndarray:
    """``image`` with ``frame``'s masks applied (and the ``--draw`` overlay); ``base``: the
    first pixel's coordinate in the boxes (1.0 for the matconvnet variant's)."""
    out = apply_masks(image, frame.boxes(), options.style, base=base)
    if options.draw and frame.masks:
        from tinyfaces_trt.runtime.draw import draw_boxes

        for kind, color in DRAW_COLORS.items():
            rows = [(*m.box, m.score if m.score is not None else np.nan)
                    for m in frame.masks if m.kind == kind]
            if rows:
                boxes = scale_boxes(pixel_boxes(np.array(rows), base), options.style.scale)
                out = draw_boxes(out, boxes if kind == DETECTED else boxes[:, :4], color=color)
    return out


def _header(detector: Detector, task: Task, options: Options,
            identity: dict[str, Any]) -> dict[str, Any]:
    """The sidecar's fields but the frames' (the :mod:`~.sidecar` docstring's layout); the
    output's ``output_file`` comes with its rename (:func:`_output_file`), ``run``'s times
    from :func:`process_file`."""
    config = detector.config
    mode = options.style.mode
    return {"anonymised": mode != "none", "mode": mode, "masks_revision": MASKS_REVISION,
            "version": software_version(),
            "input": task.source, "resolved": os.path.realpath(task.source),
            "input_identity": identity, "output": task.output, "kind": task.kind,
            "model": model_identity(detector),
            "config": {"variant": config.variant, "prob_thresh": config.prob_thresh,
                       "nms_thresh": config.nms_thresh, "min_face": config.min_face,
                       "max_face": config.max_face, "pyramid": config.pyramid,
                       "size_refinement": config.size_refinement},
            "options": _options_record(options),
            "run": {"backend": options.backend, "providers": _providers(detector),
                    "command": list(options.command)}}


def _providers(detector: Detector) -> list[str] | None:
    """The ONNX Runtime execution providers the detector's runner uses; None for a runner
    that names none (TensorRT, torch, a test's fake)."""
    providers = getattr(getattr(detector, "runner", None), "providers", None)
    if isinstance(providers, (list, tuple)) and all(isinstance(p, str) for p in providers):
        return list(providers)
    return None


#: :class:`Options` fields the sidecar records in ``run``, not in ``options``.
AUDIT_ONLY = ("backend", "command")


def _options_record(options: Options) -> dict[str, Any]:
    """``options`` as the sidecar records them (JSON types; :data:`AUDIT_ONLY` left out)."""
    record = dataclasses.asdict(options)
    for key in AUDIT_ONLY:
        record.pop(key, None)
    return _jsonable(record)


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def _audit(detector: Detector, options: Options) -> AuditLog:
    return AuditLog(detector.config.prob_thresh, options.review_band)


@contextlib.contextmanager
def _output_file(task: Task, header: dict[str, Any]) -> Iterator[Path]:
    """A temporary path to write ``task``'s output to (its folder made), renamed to
    ``task.output`` when the block succeeds, after ``header["output_file"]`` has recorded the
    finished file's size and sha256 (:func:`~.sidecar.output_record`, one read of it) and a
    provisional sidecar of ``header`` (:func:`~.sidecar.write_claim`) has claimed it; removed
    when the block fails. Its suffix is that of the output's format (:data:`WRITTEN_AS`:
    ``.mp4`` for a ``.LRV`` output), as the writers pick formats by it.

    Raises:
        TinyFacesError: the output's folder leads outside ``task.out_root``
            (:func:`outside_out`), before it is made and after.
    """
    folder = Path(task.output).parent
    if (outside := _outside_error(task, folder)) is not None:  # made through no link
        raise TinyFacesError(outside)
    folder.mkdir(parents=True, exist_ok=True)
    if (outside := _outside_error(task, folder)) is not None:  # a link put there meanwhile
        raise TinyFacesError(outside)
    with atomic_output(task.output) as tmp:
        alias = WRITTEN_AS.get(tmp.suffix.lower())
        staged = tmp.with_name(tmp.name + alias) if alias else tmp  # hidden and temporary too
        try:
            yield staged
            if staged != tmp:
                os.replace(staged, tmp)
        finally:
            if staged != tmp:
                staged.unlink(missing_ok=True)
        header["output_file"] = output_record(tmp)
        write_claim(task.sidecar, **header)


#: What processing one input gives: its audit log, its sidecar header, its warnings and notes.
Processed = tuple[AuditLog, dict[str, Any], list[str], list[str]]


def _search_plan(config: DetectorConfig, height: int, width: int, what: str
                 ) -> tuple[dict[str, Any], list[str]]:
    """The sidecar's ``pyramid`` record of a ``height`` x ``width`` ``what`` (an image, a
    video's upright frames) and the notes about it.

    Where no pyramid level runs on it (:func:`~tinyfaces_trt.core.pyramid.no_level_reason`),
    the detector would return no boxes without looking: that is a note only when it is too
    small to hold a face the detector can find (its shorter side below
    :func:`~tinyfaces_trt.core.pyramid.face_size_bounds`' smallest, or ``min_face`` where
    larger: a 1x1 image); else a :class:`TinyFacesError` (a 21000 px strip with
    ``--pyramid fixed``: its faces would be written unmasked).
    """
    from tinyfaces_trt.core.pyramid import face_size_bounds

    record = pyramid_record(height, width, config)
    reason = record["no_level"]
    if reason is None:
        return record, []
    smallest = face_size_bounds(config)[0]
    if config.min_face is not None:
        smallest = max(smallest, float(config.min_face))
    why = reason.split(": it has no faces")[0]
    if min(height, width) < smallest:
        return record, [f"not searched for faces: {why}; the {what} is too small to hold a "
                        f"face the detector can find ({smallest:.1f} px and up)"]
    if "can produce faces of" in why:
        hint = "; give a --min-face/--max-face range its levels can find"
    elif config.pyramid == "fixed":
        hint = "; --pyramid adaptive (the default) downscales it as far as it takes"
    else:
        hint = ""
    raise TinyFacesError(f"not anonymised: {why}, so the detector cannot search the {what}, "
                         f"which can hold faces of {smallest:.1f} px and up{hint}")


def _process_image(detector: Detector, task: Task, options: Options, identity: dict[str, Any]
                   ) -> Processed:
    from tinyfaces_trt.runtime.imageio import as_stored, load_image_stored, save_image

    # EXIF orientation applied: the output is upright; a multi-page file's first page only
    stored = load_image_stored(task.source)
    image, pictures = stored.rgb, stored.pictures
    height, width = int(image.shape[0]), int(image.shape[1])
    pyramid, notes = _search_plan(detector.config, height, width, "image")
    with _memory_named(width, height):
        boxes = detect_with_progress(detector, image, Path(task.source).name, options.progress)
        frames = TemporalMasker(hold=0, iou=options.iou).push(0, boxes)
        audit = _audit(detector, options)
        header = _header(detector, task, options, identity)
        header["pyramid"] = pyramid
        header["image"] = {"width": width, "height": height}
        header["image_frames"] = {"in_file": pictures, "kept": 1}
        # an animated GIF or WebP, a multi-page TIFF: the copy holds the first picture alone,
        # never one of the others unmasked
        warnings = [] if pictures == 1 else [
            f"holds {pictures} frames or pages; only the first is anonymised and written to "
            f"{task.output} ({pictures - 1} left out)"]
        rendered = render(image, frames[0], options, detector.config.coordinate_base)
        # grey levels and alpha kept where the format holds them (--draw's boxes in colour)
        rendered = as_stored(rendered, stored, Path(task.output).suffix, colour=options.draw)
        with _output_file(task, header) as tmp:
            save_image(tmp, rendered)
        audit.add(frames[0], None)
    return audit, header, warnings, notes


@contextlib.contextmanager
def _memory_named(width: int, height: int) -> Iterator[None]:
    """Turns a :class:`MemoryError` in the block, processing a ``width`` x ``height`` image or
    video, into an :class:`OutOfMemoryError` naming that size (:func:`memory_message`)."""
    try:
        yield
    except MemoryError as exc:
        raise OutOfMemoryError(memory_message(exc, (width, height), nothing_written=True)) from None


#: The share of the available memory (:func:`~tinyfaces_trt.core.memory.available_bytes`) a
#: video's held frames may take; the rest is the detector's, the encoder's and the copies'.
HELD_FRAMES_SHARE = 0.5


def _check_held_frames(width: int, height: int, options: Options) -> None:
    """Refuses a video before any frame is decoded where the frames it holds at once (up to
    ``--hold`` + ``--batch`` + 1: a frame waits for the next ``--hold`` ones, which may
    back-fill its masks, and for its batch) would take more than :data:`HELD_FRAMES_SHARE`
    of the memory available; the kernel would end the run without a word, or the machine
    swap, long into the video.

    Raises:
        OutOfMemoryError: naming the options, the frames' size and both amounts.
    """
    from tinyfaces_trt.core.memory import available_bytes

    frames = options.hold + options.batch + 1
    needed = frames * width * height * 3
    available = available_bytes()
    if available is None or needed <= available * HELD_FRAMES_SHARE:
        return
    raise OutOfMemoryError(
        f"--hold {options.hold} and --batch {options.batch} keep up to {frames} decoded "
        f"{width}x{height} frames in memory ({_mib(needed)}), more than half of the "
        f"{_mib(available)} available: lower --hold or --batch, or downscale the video; nothing "
        f"was written for it")


def _mib(count: int) -> str:
    """``count`` bytes in MiB (a decimal below 10), from 1 GiB on in GiB."""
    mib = count / 2**20
    if mib >= 1024:
        return f"{mib / 1024:.1f} GiB"
    return f"{mib:.1f} MiB" if mib < 10 else f"{mib:.0f} MiB"


def _progress_bar(task: Task, total: int, options: Options, stream: Any = None,
                  clock: Callable[[], float] | None = None,
                  interval: float | None = None) -> Any:
    """A video's frame progress on ``stream`` (None: stderr), with ``update(n)`` and
    ``close()``: a tqdm bar on a terminal (80 columns where it reports none); elsewhere (a log
    file, nohup) a plain line at most every ``interval`` seconds (None:
    :data:`PROGRESS_LINE_INTERVAL_S`) of ``clock`` (None: :func:`time.monotonic`)
    (:class:`ProgressLines`); nothing without ``options.progress`` (``--quiet``)."""
    from tqdm import tqdm

    stream = sys.stderr if stream is None else stream
    name = printable(Path(task.source).name)  # tqdm and the lines write it as it is
    if not options.progress:
        return tqdm(total=total or None, disable=True)
    if not stream.isatty():
        return ProgressLines(name, total, stream, clock or time.monotonic,
                             PROGRESS_LINE_INTERVAL_S if interval is None else interval)
    return tqdm(total=total or None, unit="frame", desc=name, leave=False, file=stream,
                **bar_size(stream))


#: Seconds between two progress lines of a video off a terminal (:class:`ProgressLines`).
PROGRESS_LINE_INTERVAL_S = 30.0


class ProgressLines(TimedLines):
    """Frame progress for a log file: a plain line (no carriage return) at most every
    ``interval`` seconds, e.g. ``tf-anonymize: a.mp4: 1200/4500 frames, 25.1 frames/s, ETA
    2m11s`` (the rate over the whole file so far; without a frame count, frames and rate).

    Args:
        name: the file's name in the lines.
        total: its frames (0: unknown).
        stream: where lines go.
        clock: seconds, monotonic.
        interval: seconds between two lines.
    """

    def __init__(self, name: str, total: int, stream: Any, clock: Callable[[], float],
                 interval: float) -> None:
        super().__init__(stream, clock, interval)
        self.name, self.total = name, total

    def line(self, now: float) -> str:
        """The progress line at ``now``."""
        elapsed = now - self.start
        rate = self.n / elapsed if elapsed > 0 else 0.0
        done = f"{self.n}/{self.total}" if self.total else f"{self.n}"
        eta = f", ETA {duration_text((self.total - self.n) / rate)}" \
            if self.total > self.n and rate > 0 else ""
        return f"tf-anonymize: {self.name}: {done} frames, {rate:.1f} frames/s{eta}"


def _process_video(detector: Detector, task: Task, options: Options, identity: dict[str, Any]
                   ) -> Processed:
    from tinyfaces_trt.anonymize.video import VideoReader, VideoWriter
    from tinyfaces_trt.runtime.imageio import DEFAULT_MAX_PIXELS

    audit = _audit(detector, options)
    header = _header(detector, task, options, identity)
    # the frames' size is refused from the header, before a frame is decoded, as an image's is
    limit = getattr(detector, "max_pixels", DEFAULT_MAX_PIXELS)
    with VideoReader(task.source, max_pixels=limit) as reader:
        frame = reader.info.to_dict()  # detection runs on the upright frame
        header["pyramid"], notes = _search_plan(detector.config, frame["upright_height"],
                                                frame["upright_width"], "video's frames")
        _check_held_frames(frame["upright_width"], frame["upright_height"], options)
        with _memory_named(frame["upright_width"], frame["upright_height"]), \
                _output_file(task, header) as tmp:
            writer = VideoWriter(tmp, reader, options.codec, options.crf, name=task.output,
                                 keep_audio=options.keep_audio,
                                 keep_metadata=options.keep_metadata)
            bar = None
            try:
                bar = _progress_bar(task, reader.info.frames, options)
                _anonymise_frames(detector, reader, writer, audit, options, bar)
                writer.finish()
            except BaseException:
                writer.abort()
                raise
            finally:
                if bar is not None:
                    bar.close()
    problems = list(reader.problems)  # complete once the frames are read
    header["video"] = reader.info.to_dict()
    withheld = [writer.withheld] if writer.withheld else []
    header["dropped_streams"] = writer.dropped + withheld
    header["input_problems"] = problems
    return audit, header, writer.dropped + problems, withheld + notes


def _anonymise_frames(detector: Detector, reader: Any, writer: Any, audit: AuditLog,
                      options: Options, bar: Any) -> None:
    """Detect in batches, track, mask, hand to the encoder, in frame order."""
    masker = TemporalMasker(options.hold, options.iou)
    pending: dict[int, Any] = {}
    batch: list[Any] = []

    def emit(ready: list[FrameMasks]) -> None:
        for masks in ready:
            frame = pending.pop(masks.index)
            writer.write(render(frame.image, masks, options, detector.config.coordinate_base),
                         frame.pts)
            audit.add(masks, frame.time)
            bar.update(1)

    def run_batch() -> None:
        for frame, boxes in zip(batch, detect_frames(detector, [f.image for f in batch])):
            emit(masker.push(frame.index, boxes))
        batch.clear()

    for frame in reader.frames():
        pending[frame.index] = frame
        batch.append(frame)
        if len(batch) == options.batch:
            run_batch()
    if batch:
        run_batch()
    emit(masker.flush())


__all__ = ["IMAGE_SUFFIXES", "REVIEW_UPDATED", "InputOverwriteError", "Options", "OutOfMemoryError",
           "Result", "Task", "detect_frames", "is_done", "memory_message", "naming",
           "outside_out", "plan_tasks", "process_file", "render", "rerun_verdict",
           "update_review"]

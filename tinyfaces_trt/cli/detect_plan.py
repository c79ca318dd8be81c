"""What a tf-detect run reads and writes: the images its arguments name, the outputs each
gets, and the checks of that plan before any work.

:func:`find_inputs` walks the IMAGE arguments (output folders are never read as inputs);
:func:`plan_outputs` names an image's outputs under ``--out`` and :func:`write_outputs`
writes them atomically, never into a folder that leads outside ``--out`` (:func:`outside_out`);
:func:`plan_tasks` pairs each image with its outputs (WIDER results too) and refuses a WIDER
file that is not the image's own result, :func:`refuse_unwritable` an ``--out`` folder that
leads outside ``--out`` and an ``--out`` file without the detections JSON that shows tf-detect
wrote it, and
:func:`refuse_replacing_inputs` refuses outputs at the path of an input file;
:func:`resume_state` decides what a rerun keeps (outputs whose records name this run's network
and detection settings, and for an anonymised copy its masks: :func:`mask_record`). The
single-process run and ``--ray`` share all of it.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from tinyfaces_trt.core.errors import OutOfMemoryError, TinyFacesError, memory_message
from tinyfaces_trt.core.files import inputs_replaced_by, write_text_atomic, written_for_another
from tinyfaces_trt.detector_record import DetectorRecord
from tinyfaces_trt.media_files import (HIDDEN_FILE, HIDDEN_FOLDER, IMAGE_SUFFIXES, JPEG_SUFFIXES,
                                       LEFT_OUT_TEXT, OTHER_IMAGE_SUFFIXES,
                                       SPECIAL, UNREADABLE, VIDEO_SUFFIXES, WHY, LeftOut,
                                       is_image_name, left_out_lines, media_in, named,
                                       outside_out, read_head, unknown_suffix, unsupported_image,
                                       walk_files, within)
from tinyfaces_trt.runtime.imageio import DEFAULT_JPEG_QUALITY, JPEG_MAGIC
from tinyfaces_trt.wider.records import record_path

if TYPE_CHECKING:
    from tinyfaces_trt.runtime.masks import MaskStyle

log = logging.getLogger("tinyfaces_trt.cli.detect")

#: The IMAGE arguments the help names for "read one image from standard input"; any other
#: name of this process's file descriptor 0 is the same (:func:`is_stdin_argument`).
STDIN_ARGUMENTS = ("-", "/dev/stdin")
#: Names of file descriptor 0 where they are devices, not links (macOS, the BSDs).
_STDIN_DEVICES = ("/dev/stdin", "/dev/fd/0")
# IMAGE_SUFFIXES (picked up when an IMAGE argument is a folder, with their aliases): the
# shared rule of tinyfaces_trt.media_files, as tf-anonymize's
_JPEG = JPEG_SUFFIXES
#: How tf-detect words what a folder's walk left out (one, many): the shared
#: :data:`~tinyfaces_trt.media_files.WHY` and its own words for hidden images and folders.
LEFT_OUT_WHY = {
    **dict(WHY.values()),
    'hidden image (its name starts with "."), not read; give it by name to detect its faces':
        'hidden images (names starting with "."), not read; give one by name to detect its '
        'faces',
    'hidden folder (its name starts with "."), not searched; give it by name to search it':
        'hidden folders (names starting with "."), not searched; give one by name to search it'}
_HIDDEN_WHY = {HIDDEN_FILE: 'hidden image (its name starts with "."), not read; give it by name '
                            'to detect its faces',
               HIDDEN_FOLDER: 'hidden folder (its name starts with "."), not searched; give it '
                              'by name to search it'}
#: The key of an image's detections JSON that records how its anonymised copy was made
#: (:func:`mask_record`; only with ``--blur``/``--pixelate``).
MASK_RECORD = "anonymised"


@dataclass(frozen=True)
class ImageJob:
    """One image to process.

    Attributes:
        path: the image file.
        rel: its path relative to the folder argument it was found in (for a file argument:
            just its name); output names and WIDER event folders follow it.
        event: the WIDER event folder its detections go to.
        data: the bytes of an image on standard input, read when the run is planned (its
            format picks the outputs' suffix: :func:`image_suffix`); None for a file, and
            for standard input not read yet.
        stdin: the image comes from standard input (:func:`is_stdin_argument`: ``-``,
            ``/dev/stdin`` or another name of it); ``path`` is the argument as given.
    """

    path: Path
    rel: Path
    event: str
    data: bytes | None = field(default=None, compare=False, repr=False)
    stdin: bool = False

    @property
    def is_stdin(self) -> bool:
        """The image comes from standard input (:attr:`stdin`)."""
        return self.stdin


def is_stdin_argument(argument: str) -> bool:
    """Whether the IMAGE argument ``argument`` means standard input: ``-``, or a name of this
    process's file descriptor 0 (``/dev/stdin``, ``/dev/fd/0``, ``/proc/self/fd/0``, or a
    symbolic link to one of them). Links are followed up to that name only, never through
    it: where standard input is a redirected file (``< p.jpg``), ``p.jpg`` stays a file."""
    if argument == "-":
        return True
    fd0 = os.path.join(os.path.realpath("/proc/self/fd"), "0")  # /proc/<pid>/fd/0 on Linux
    path = os.path.abspath(argument)
    for _ in range(40):  # as many links as the kernel follows
        path = os.path.join(os.path.realpath(os.path.dirname(path)), os.path.basename(path))
        if path == fd0 or path in _STDIN_DEVICES:
            return True
        try:
            target = os.readlink(path)
        except OSError:  # not a link (or unreadable): another file
            return False
        path = os.path.join(os.path.dirname(path), target)
    return False



# ---------------------------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------------------------

def _output_holding(path: Path, root: Path, outputs: Sequence[Path]) -> Path | None:
    """The output folder that holds the walked file ``path`` (its real path, so also through a
    symbolic link in the input folder ``root``), which then is no input; None: an input. An
    output folder around ``root`` holds the inputs themselves: only what lies outside ``root``
    is left out there."""
    try:
        resolved = path.resolve()
    except (OSError, RuntimeError):  # a symbolic link loop: its read reports it
        return None
    return next((folder for folder in outputs if within(resolved, folder)
                 and not (folder in root.parents and within(resolved, root))), None)


@dataclass
class Inputs:
    """The IMAGE arguments expanded.

    Attributes:
        jobs: the images, in order.
        errors: (argument, error message) for each argument that gave none.
        left_out: output folder (resolved) -> how many image files walked there were left out.
        repeated: the image paths found again after their first time (same absolute path:
            named twice, as ./a.jpg, or in a folder also given), each left out.
        walk_left_out: what folder walks did not read that could hold images (hidden images
            and folders, links to folders already searched, folders that cannot be read,
            named pipes named as images: :func:`_walk`), each logged as a warning by
            :func:`find_inputs` (:func:`walk_lines`).
    """

    jobs: list[ImageJob] = field(default_factory=list)
    errors: list[tuple[str, str]] = field(default_factory=list)
    left_out: dict[Path, int] = field(default_factory=dict)
    repeated: list[str] = field(default_factory=list)
    walk_left_out: list[LeftOut] = field(default_factory=list)


def find_inputs(arguments: Sequence[str], exclude: Sequence[Path] = ()) -> Inputs:
    """Expands IMAGE arguments into jobs.

    A folder is walked recursively for image suffixes by tf-anonymize's rules
    (:func:`~tinyfaces_trt.media_files.walk_files`: links to folders followed, each real
    folder searched once; hidden entries, unreadable folders and named pipes left out, each
    logged as a warning: :func:`walk_lines`), leaving out the files inside those ``exclude``
    folders (the output folders, also reached through a symbolic link), so a run never reads
    its own outputs. An image of another format there (.heic, .avif, ...:
    :data:`~tinyfaces_trt.media_files.OTHER_IMAGE_SUFFIXES`) is an error saying to convert it,
    and its videos are named in a warning (tf-anonymize's), not passed over in silence. A file
    is taken as is, so a non-image file gives a clear error when it is loaded. A missing
    path, a folder that cannot be read or a folder without images is an error. An image
    path found again (the same absolute path) is taken once, where it comes first; another
    name of the same file (a link) is another image, as the names of a dataset whose files
    link into a store shared by identical ones.
    """
    excluded = [Path(e).resolve() for e in exclude]
    found = Inputs()
    for arg in arguments:
        path = Path(arg)
        if is_stdin_argument(arg):
            found.jobs.append(ImageJob(path, Path("stdin"), "stdin", stdin=True))
        elif path.is_dir():
            _add_folder(found, path, excluded)
        else:
            # the event is the folder named in the path, not a link target's (git-annex, a
            # WIDER layout of links into a flat store)
            found.jobs.append(ImageJob(path, Path(path.name),
                                       Path(os.path.abspath(path)).parent.name or "images"))
    for line in walk_lines(found.walk_left_out):
        log.warning("%s", line)
    return _once_each(found)


def walk_lines(left_out: Sequence[LeftOut]) -> list[str]:
    """What folder walks left out, in lines to show (:data:`LEFT_OUT_WHY`'s words; over
    ten of a kind counted: :func:`~tinyfaces_trt.media_files.left_out_lines`)."""
    entries = [(str(entry.path), _HIDDEN_WHY.get(entry.kind) or WHY[entry.kind][0])
               for entry in left_out]
    return left_out_lines(entries, LEFT_OUT_WHY)


def _once_each(found: Inputs) -> Inputs:
    """``found`` with each image path once, where it comes first; the others are listed in
    ``repeated``. Two paths are the same where their folders are the same folder and their
    names equal (``a.jpg`` and ``./a.jpg``; ``L/../a.jpg`` is the file beside ``L``'s target
    where ``L`` links elsewhere); a link to a file is another name."""
    seen: set[str] = set()
    jobs = []
    for job in found.jobs:
        key = os.path.join(os.path.realpath(os.path.dirname(job.path) or "."), job.path.name)
        if not job.is_stdin and key in seen:
            found.repeated.append(str(job.path))
            continue
        seen.add(key)
        jobs.append(job)
    found.jobs = jobs
    return found


def _add_folder(found: Inputs, path: Path, excluded: Sequence[Path]) -> None:
    """Adds the images of the folder argument ``path`` to ``found``, and what its walk left
    out to ``found.walk_left_out`` (:func:`_walk`)."""
    root = path.resolve()
    images = []
    walked: list[LeftOut] = []
    unsupported: list[tuple[str, str]] = []  # images of other formats: (path, error)
    videos: list[str] = []
    for p in _walk(path, walked):
        holder = _output_holding(p, root, excluded)
        suffix = p.suffix.lower()
        if holder is not None:
            if is_image_name(p):
                found.left_out[holder] = found.left_out.get(holder, 0) + 1
        elif is_image_name(p):
            images.append(p)
        elif suffix in OTHER_IMAGE_SUFFIXES:
            unsupported.append((str(p), unsupported_image(p, "not read")))
        elif suffix in VIDEO_SUFFIXES:
            videos.append(p.relative_to(path).as_posix())
        elif (media := media_in(read_head(p))) is not None and media[1] == "image":
            # an exiftool .jpg_original, a .bak: tf-anonymize names them too
            unsupported.append((str(p), unknown_suffix(p, media[0], "image", "not read",
                                                       "tf-detect")))
    if videos:
        log.warning("%s: %d video(s) not read (tf-detect reads images; tf-anonymize anonymises "
                    "videos): %s", path, len(videos), named(videos))
    found.errors.extend(unsupported)
    if LeftOut(path, UNREADABLE) in walked:  # the folder given itself: an error
        walked.remove(LeftOut(path, UNREADABLE))
        found.errors.append((str(path), f"{path}: cannot read the folder"))
    elif not images and not unsupported:
        passed = f"; {len(walked)} left out: {LEFT_OUT_TEXT}" if walked else ""
        found.errors.append((str(path), f"{path}: folder holds no image files "
                                        f"({', '.join(IMAGE_SUFFIXES)}{passed})"))
    found.walk_left_out.extend(walked)
    for p in sorted(images):
        rel = p.relative_to(path)
        event = rel.parent.as_posix() if rel.parent != Path(".") else root.name
        found.jobs.append(ImageJob(p, rel, event))


def collect_images(arguments: Sequence[str], exclude: Sequence[Path] = ()
                   ) -> tuple[list[ImageJob], list[tuple[str, str]]]:
    """:func:`find_inputs`' (jobs, [(argument, error message)])."""
    found = find_inputs(arguments, exclude)
    return found.jobs, found.errors


def _walk(folder: Path, left_out: list[LeftOut]) -> Iterator[Path]:
    """The files below ``folder`` (:func:`~tinyfaces_trt.media_files.walk_files`, the walk
    tf-anonymize takes), which the caller sorts: images by their suffixes
    (:func:`~tinyfaces_trt.media_files.is_image_name`), images of other formats and videos,
    which it names, other files by their first bytes; added to ``left_out`` is what it did not
    read that could hold images: hidden images and named pipes named as images (a file of
    another suffix is no input, hidden or not), hidden folders, links to folders already
    searched, folders that cannot be read."""
    walked: list[LeftOut] = []
    yield from walk_files(folder, walked)
    left_out.extend(entry for entry in walked
                    if entry.kind not in (HIDDEN_FILE, SPECIAL) or is_image_name(entry.path))


# ---------------------------------------------------------------------------------------------
# Outputs
# ---------------------------------------------------------------------------------------------

class OutputNames:
    """Unique output stems under ``--out``: the image's relative path without its suffix,
    with ``_2``, ``_3``, ... appended when two inputs would write the same files."""

    def __init__(self) -> None:
        self._used: set[str] = set()

    def stem(self, job: ImageJob, taken: Callable[[Path], bool] = lambda stem: False) -> Path:
        """The first stem no other input of this run has and ``taken`` does not refuse
        (reserved: only that one)."""
        base = job.rel.with_suffix("")
        candidate, k = base, 1
        while candidate.as_posix().lower() in self._used or taken(candidate):
            k += 1
            candidate = base.with_name(f"{base.name}_{k}")
        self._used.add(candidate.as_posix().lower())
        return candidate


def output_stem(names: OutputNames, out_dir: Path, job: ImageJob) -> Path:
    """``job``'s output stem: the next one of :class:`OutputNames` whose detections JSON, where
    an earlier run wrote one, is this image's (``a.jpg`` then ``a.png``, or two folders'
    ``p.jpg``, must neither skip nor overwrite each other's files)."""
    source = None if job.is_stdin else job.path  # a piped image is never recognised
    return names.stem(job, lambda stem: written_for_another(
        out_dir / stem.parent / f"{stem.name}.json", "image", source))


@dataclass(frozen=True)
class OutputPlan:
    """The files ``--out`` gets for one image (None: not written)."""

    drawn: Path | None
    anonymised: Path | None
    detections: Path

    def paths(self) -> list[Path]:
        return [p for p in (self.anonymised, self.detections, self.drawn) if p is not None]


def image_suffix(job: ImageJob) -> str:
    """The suffix of the images written for ``job`` (drawn and anonymised copies): ``.jpg``
    for a JPEG input, else ``.png``. A file's format is told by its name's suffix, an image
    on standard input's by its first bytes (:data:`JPEG_MAGIC`; ``job.data``)."""
    if job.is_stdin:
        jpeg = job.data is not None and job.data.startswith(JPEG_MAGIC)
    else:
        jpeg = job.path.suffix.lower() in _JPEG
    return ".jpg" if jpeg else ".png"


#: What an anonymised copy is called, by ``--blur``/``--pixelate`` mode: its name is
#: ``<name>_<this>.jpg|png``.
ANONYMISED = {"blur": "blurred", "pixelate": "pixelated"}


def plan_outputs(out_dir: Path, stem: Path, job: ImageJob, anonymise: str | None,
                 draw: bool) -> OutputPlan:
    """Where the outputs of ``job`` go: the drawn copy only when ``draw`` (an anonymised
    folder must not hold the faces), the anonymised copy when ``anonymise``; images as JPEG
    for a JPEG input, else PNG (:func:`image_suffix`)."""
    ext = image_suffix(job)
    base = out_dir / stem
    called = ANONYMISED.get(anonymise or "")
    return OutputPlan(drawn=base.with_name(base.name + "_boxes" + ext) if draw else None,
                      anonymised=base.with_name(f"{base.name}_{called}{ext}") if called else None,
                      detections=base.with_name(base.name + ".json"))


def mask_style(anonymise: str) -> MaskStyle:
    """How tf-detect's anonymised copy hides each face (``anonymise``: ``"blur"`` or
    ``"pixelate"``): tf-anonymize's and tf-serve ``/anonymize``'s default masks
    (:data:`~tinyfaces_trt.runtime.masks.ANONYMIZE_STYLE`) with that mode, so the three give
    the same pixels for the same boxes: every box enlarged 1.3x about its centre (a detected
    box is tight around the face), blur of strength 0.25 or a 5 x 5 pixelate grid."""
    from dataclasses import replace

    from tinyfaces_trt.runtime.masks import ANONYMIZE_STYLE

    return replace(ANONYMIZE_STYLE, mode=anonymise)


def mask_record(anonymise: str) -> dict[str, Any]:
    """What an image's detections JSON records (under :data:`MASK_RECORD`) of the
    anonymised copy written with it: the :func:`mask_style` settings that shape its masks and
    the masking revision (tf-anonymize's ``MASKS_REVISION``, bumped whenever masks of the same
    boxes change). A rerun makes again a copy recorded otherwise, or not at all (an older
    tf-detect, which masked the bare or the clipped box)."""
    from tinyfaces_trt.anonymize.sidecar import MASKS_REVISION

    style = mask_style(anonymise)
    fields = ({"blur_strength": style.blur_strength} if style.mode == "blur"
              else {"cells": style.cells, "block": style.block})
    return {"mode": style.mode, "shape": style.shape, "scale": style.scale, **fields,
            "masks_revision": MASKS_REVISION}


def mask_changes(recorded: Any, anonymise: str) -> list[str]:
    """How the anonymised copy that an image's detections JSON ``recorded`` describes
    differs from what this run's ``anonymise`` makes, one phrase per difference (empty: the
    same)."""
    from tinyfaces_trt.detector_record import shown

    masks = recorded.get(MASK_RECORD) if isinstance(recorded, dict) else None
    if not isinstance(masks, dict):
        return ["no recorded mask settings (an older version made the anonymised copy)"]
    expected = mask_record(anonymise)
    if masks.get("mode") != expected["mode"]:  # (the other mode's settings are not compared)
        return [f"mask mode {shown(masks.get('mode'))} (now {expected['mode']})"]
    return [f"{'' if key == 'masks_revision' else 'mask '}{key.replace('_', ' ')} "
            f"{shown(masks.get(key))} (now {shown(value)})"
            for key, value in expected.items() if masks.get(key) != value]


def memory_failure(job: ImageJob, exc: MemoryError, image: np.ndarray | None = None
                   ) -> OutOfMemoryError:
    """The error of ``job``, which this process ran out of memory on (``image``: the pixels,
    whose size it names; None: it ran out while reading them)."""
    size = (image.shape[1], image.shape[0]) if image is not None else None
    return OutOfMemoryError(f"{job.path}: {memory_message(exc, size)}")


def refuse_outside_out(plan: OutputPlan, root: Path | None, image: Path | None = None
                       ) -> None:
    """Raises :class:`TinyFacesError` where the folder of ``plan``'s files leads outside
    ``root`` (``--out`` resolved when the run started; None: not checked): nothing is read
    or written through such a link. ``image``: the input, named first in the message."""
    folder = plan.detections.parent  # (every file of the plan is beside the JSON)
    real = None if root is None else outside_out(folder, root)
    if real is not None:
        raise TinyFacesError(f"{f'{image}: ' if image is not None else ''}output folder "
                             f"{folder} leads to {real}, outside --out {root} (a symbolic link "
                             f"in it); nothing is written through it: remove the link, or "
                             f"give that folder as --out")


def write_outputs(plan: OutputPlan, image: np.ndarray, boxes: np.ndarray,
                  record: dict[str, Any], anonymise: str | None, *,
                  jpeg_quality: int = DEFAULT_JPEG_QUALITY,
                  keep: Sequence[Path] = (), base: float = 0.0,
                  masked: np.ndarray | None = None, root: Path | None = None,
                  stored: Any = None) -> list[Path]:
    """Writes the planned files (each atomically), except those in ``keep``; returns the
    paths written. ``base``: the first pixel's coordinate in ``boxes`` (1.0 for the
    matconvnet variant's 1-based boxes; masks and drawings are placed in 0-based pixels).
    The JSON holds ``record``, the drawn copy ``boxes``; the anonymised copy hides ``masked``
    (default ``boxes``; tf-detect gives the detector's unclipped boxes, as tf-anonymize
    masks them, so that the enlarged mask of a face cut by the border is the same) as
    :func:`mask_style` says, keeping ``stored``'s alpha channel and grey levels where its
    format holds them (a :class:`~tinyfaces_trt.runtime.imageio.StoredImage`; None: RGB, as
    the drawn copy always is), as tf-anonymize's copy does.

    A copy that replaces one on disk is written before ``record``'s :data:`MASK_RECORD`:
    the JSON is written without it first (it names the input, claiming the file names), then
    with it once the copy is complete, so a run stopped between the two never leaves a record
    that vouches for the old copy.

    ``root``: ``--out`` resolved when the run started (None: not checked); where the files'
    folder leads outside it (:func:`outside_out`: a link to a folder elsewhere placed in
    ``--out``) nothing is written, before the folder is made and after.

    Raises:
        TinyFacesError: naming every file that could not be written (the others are
            written; none is left truncated), or the folder that leads outside ``root``
            (none is written).
    """
    from tinyfaces_trt.runtime.draw import draw_boxes
    from tinyfaces_trt.runtime.imageio import as_stored, save_image
    from tinyfaces_trt.runtime.masks import apply_masks

    refuse_outside_out(plan, root)  # the folders made below are made through no link
    try:
        plan.detections.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise TinyFacesError(f"cannot create output folder {plan.detections.parent}: "
                             f"{exc.strerror or exc}") from exc
    refuse_outside_out(plan, root)  # a link put there meanwhile
    replaced = plan.anonymised is not None and plan.anonymised not in keep \
        and MASK_RECORD in record and os.path.lexists(plan.anonymised)
    claim = {k: v for k, v in record.items() if k != MASK_RECORD} if replaced else record
    hidden = boxes if masked is None else masked

    def json_of(content: dict[str, Any]) -> Callable[[Path], None]:
        return lambda path: write_text_atomic(path, json.dumps(content, indent=2) + "\n")

    # the JSON first: it names the input, claiming the file names for it in later runs
    makers: list[tuple[Path | None, Callable[[Path], None]]] = [
        (plan.detections, json_of(claim)),
        (plan.anonymised, lambda path: save_image(path, as_stored(
            apply_masks(image, hidden, mask_style(anonymise or ""), base=base), stored,
            path.suffix), jpeg_quality=jpeg_quality)),
        (plan.drawn, lambda path: save_image(path, draw_boxes(image, boxes, base=base),
                                             jpeg_quality=jpeg_quality)),
    ]
    written: list[Path] = []
    failed: list[str] = []

    def make(path: Path, maker: Callable[[Path], None]) -> None:
        try:
            maker(path)
        except TinyFacesError as exc:
            failed.append(str(exc))
        except OSError as exc:
            failed.append(f"{path}: cannot write ({exc.strerror or exc})")
        else:
            if path not in written:
                written.append(path)

    for path, maker in makers:
        if path is not None and path not in keep:
            make(path, maker)
    if replaced and {plan.detections, plan.anonymised} <= set(written):
        make(plan.detections, json_of(record))  # the copy is complete: the JSON records it
    if failed:
        raise TinyFacesError("; ".join(failed))
    return written


def resolved_of(job: ImageJob) -> dict[str, str]:
    """``{"resolved": the image's real path}`` for its records (none for standard input): the
    input a later run's :func:`output_stem` and :func:`plan_tasks` recognise, from any
    working folder."""
    return {} if job.is_stdin else {"resolved": os.path.realpath(job.path)}


def wider_name(job: ImageJob) -> str:
    """Line 1 of ``job``'s WIDER result file: ``<event>/<image file name>``."""
    return f"{job.event}/{job.rel.name}"


def is_wider_result_of(path: Path, job: ImageJob) -> bool:
    """Whether the existing file ``path`` is ``job``'s WIDER result (its first line is
    :func:`wider_name`)."""
    try:
        with open(path, encoding="utf-8", errors="surrogateescape") as file:
            first = file.readline(4096)
    except OSError:
        return False
    return first.strip() == wider_name(job)


def write_wider_result(path: Path, job: ImageJob, boxes: np.ndarray,
                       options: DetectOptions, logits: np.ndarray | None = None) -> None:
    """Writes ``job``'s WIDER result file ``path`` (atomically, creating its folder), then the
    record of the detector that made it (:func:`~tinyfaces_trt.wider.records.record_path`;
    after the result: a run stopped between the two leaves a result without a record, made
    again by the next run).

    The score written is the logit ``score_cls``, as the authors' ``cnn_widerface_test_AB.m``
    writes it: ``logits``, the detector's own float32 logits of ``boxes``' rows (a detector
    run with ``score="logit"``, :func:`tinyfaces_trt.cli.detect.split_scores`), written
    unchanged; without them (None) taken back from ``boxes``' float32 probabilities
    (:func:`~tinyfaces_trt.wider.format.logits_of`: within about ``3e-8 * e**logit``, and
    16.635532 for any logit above 16.6)."""
    from tinyfaces_trt.wider.format import logits_of, write_detection_file

    scored = np.array(boxes, dtype=np.float64).reshape(-1, 5)
    if logits is None:
        scored[:, 4] = logits_of(scored[:, 4])
    else:
        logits = np.asarray(logits, dtype=np.float32).reshape(-1)
        if logits.shape != (len(scored),):
            raise ValueError(f"{len(logits)} logits for {len(scored)} boxes")
        scored[:, 4] = logits  # float32 -> float64: exact
    try:
        write_detection_file(path, wider_name(job), scored)
        if options.wider_dir is not None:
            record = record_path(options.wider_dir, path)
            record.parent.mkdir(parents=True, exist_ok=True)
            write_text_atomic(record, json.dumps(
                {"image": str(job.path), **resolved_of(job), "model": options.model,
                 "config": options.detector.config if options.detector else None,
                 "scores": WIDER_EXACT_SCORES if logits is not None else "probability"}) + "\n")
    except OSError as exc:
        raise TinyFacesError(f"cannot write WIDER result {path} for {job.path}: "
                             f"{exc.strerror or exc}") from exc


@dataclass(frozen=True)
class Resume:
    """What a rerun keeps of an image's outputs.

    Attributes:
        keep: the outputs that exist and are kept as they are.
        done: every output is kept (the image is skipped).
        reason: why outputs that exist are made again (another network or other detection
            settings made them, or nothing records which); None when none is.
    """

    keep: list[Path]
    done: bool
    reason: str | None = None


def resume_state(task: DetectTask, options: DetectOptions) -> Resume:
    """What this run keeps of ``task``'s existing outputs: nothing with ``--overwrite`` or for
    standard input; nothing either when its detections JSON (``--out``) or its WIDER record
    (``--wider-dir``) records another network or other detection settings than
    ``options.detector``, or is missing while outputs exist (an ``--out`` copy without its
    JSON is refused before, by :func:`refuse_unwritable`: this is a JSON removed since, or a
    WIDER result without its record), or when the JSON records other masks than this run's
    for the anonymised copy that exists (:func:`mask_changes`: none
    recorded, by an older tf-detect, included); else every output that exists, but the JSON
    where the anonymised copy is written (the JSON records it)."""
    targets = expected_outputs(task, options)
    if options.overwrite or task.job.is_stdin:
        return Resume([], False)
    present = [path for path in targets if path.is_file()]
    if not present:
        return Resume([], False)
    reason = _made_by_another(task, options)
    if reason is not None:
        return Resume([], False, reason)
    plan = task_plan(task, options)
    if plan is not None and plan.anonymised is not None and plan.anonymised not in present:
        present = [path for path in present if path != plan.detections]  # written with it
    return Resume(present, len(present) == len(targets))


#: What a WIDER record says of result files holding the network's exact logits (an earlier
#: tf-detect took them back from float32 probabilities: a logit above 16.6 became 16.635532,
#: which shifts the official evaluation's min-max normalised AP; such files are made again).
WIDER_EXACT_SCORES = "logit"


def _made_by_another(task: DetectTask, options: DetectOptions) -> str | None:
    """Why ``task``'s existing outputs may not be this run's detector's, or its anonymised
    copy not made with this run's masks (None: they are)."""
    plan = task_plan(task, options)
    records = ([plan.detections] if plan is not None and any(
        path.is_file() for path in plan.paths()) else [])
    wider_record = None
    if task.wider_file is not None and options.wider_dir is not None and task.wider_file.is_file():
        wider_record = record_path(options.wider_dir, task.wider_file)
        records.append(wider_record)
    changed: list[str] = []
    inexact = False
    for record in records:
        try:
            recorded = json.loads(record.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return f"{record}, which records the detector that made them, is missing or unreadable"
        if options.detector is None:
            return "the detector of this run is not known"
        changed += [c for c in options.detector.changes(recorded) if c not in changed]
        if plan is not None and record == plan.detections and plan.anonymised is not None \
                and plan.anonymised.is_file():  # the masks of the copy that is there
            changed += mask_changes(recorded, options.anonymise or "")
        inexact |= record == wider_record and isinstance(recorded, dict) and \
            recorded.get("scores") != WIDER_EXACT_SCORES
    if inexact and not changed:
        changed.append("scores taken back from float32 probabilities (an earlier tf-detect), "
                       "not the network's exact logits")
    return f"they were made with {', '.join(changed)}" if changed else None


# ---------------------------------------------------------------------------------------------
# The plan of a run
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class DetectOptions:
    """What every image of a tf-detect run shares (picklable, sent to each --ray worker once)."""

    backend: str
    out_dir: Path | None = None
    wider_dir: Path | None = None
    anonymise: str | None = None  # "blur", "pixelate" or None
    draw: bool = False  # with anonymise: also the copy with the faces visible (--draw)
    jpeg_quality: int = DEFAULT_JPEG_QUALITY
    overwrite: bool = False
    model: dict[str, Any] | None = None  # the detector's identity, recorded in every JSON
    # the run's network and detection settings: outputs recorded with others are made again
    detector: DetectorRecord | None = None
    # out_dir resolved once when the run is planned (a link at --out followed then): no output
    # is written into a folder that leads outside it (None: out_dir resolved when writing)
    out_root: Path | None = None

    def resolved_out(self) -> Path | None:
        """``--out`` resolved: :attr:`out_root`, else :attr:`out_dir` resolved now (None
        without ``--out``)."""
        if self.out_root is not None:
            return self.out_root
        return None if self.out_dir is None else self.out_dir.resolve()


@dataclass(frozen=True)
class DetectTask:
    """One image and the output names the plan gave it.

    Attributes:
        job: the image job.
        stem: its output name under ``--out`` (None without ``--out``).
        wider_file: its WIDER result file (None without ``--wider-dir``).
    """

    job: ImageJob
    stem: Path | None = None
    wider_file: Path | None = None


class InputOverwriteError(TinyFacesError):
    """A planned output would replace an input file of the run (a usage error)."""


def plan_tasks(jobs: Sequence[ImageJob], options: DetectOptions
               ) -> tuple[list[DetectTask], list[tuple[ImageJob, str]]]:
    """Fixes every image's output names, in input order.

    Returns:
        (tasks, refused): refused images would overwrite the WIDER result of an earlier
        image of the run (same event and name), or a file under ``--wider-dir`` that is not
        their own WIDER result (another image's, a label file), with the message saying so.
    """
    from tinyfaces_trt.wider.format import detection_path

    names = OutputNames()
    wider_owner: dict[Path, Path] = {}
    tasks: list[DetectTask] = []
    refused: list[tuple[ImageJob, str]] = []
    for job in jobs:
        wider_file = None
        if options.wider_dir is not None:
            wider_file = detection_path(options.wider_dir, job.event, Path(job.rel.name).stem)
            problem = _wider_problem(wider_file, job, wider_owner.setdefault(wider_file, job.path),
                                     options)
            if problem:
                refused.append((job, problem))
                continue
        stem = output_stem(names, options.out_dir, job) if options.out_dir is not None else None
        tasks.append(DetectTask(job, stem, wider_file))
    return tasks, refused


def refuse_unwritable(tasks: Sequence[DetectTask], options: DetectOptions
                      ) -> tuple[list[DetectTask], list[tuple[ImageJob, str]]]:
    """``tasks`` split into those to run and the images refused, with the message saying why:
    their ``--out`` folder leads outside ``--out`` (:func:`refuse_outside_out`: a link to a
    folder elsewhere placed in it), or, unless ``--overwrite``, a file is at the path of one
    of their ``--out`` copies that no detections JSON shows tf-detect wrote
    (:func:`_unclaimed_output`: left as it is, as tf-anonymize leaves a file without its
    sidecar), or, ``--overwrite`` or not, an anonymised copy would be written beside a copy
    with the faces drawn that this run does not make again (:func:`_faces_beside_the_copy`).
    Called after :func:`refuse_replacing_inputs`: an ``--out`` holding the inputs is refused as
    such, its files not taken for someone else's outputs."""
    kept: list[DetectTask] = []
    refused: list[tuple[ImageJob, str]] = []
    for task in tasks:
        plan = task_plan(task, options)
        try:
            if plan is not None:
                refuse_outside_out(plan, options.resolved_out(), task.job.path)
        except TinyFacesError as exc:
            problem: str | None = str(exc)
        else:
            problem = (None if options.overwrite else _unclaimed_output(task, options)) or \
                _faces_beside_the_copy(task, options)
        if problem:
            refused.append((task.job, problem))
        else:
            kept.append(task)
    return kept, refused


def _unclaimed_output(task: DetectTask, options: DetectOptions) -> str | None:
    """Why ``task`` may not write its ``--out`` copies without ``--overwrite``: one is there
    already (a file, a link) while its detections JSON, which tf-detect writes first and which
    names the image, is not (:func:`output_stem` passed over JSONs of other images): nothing
    shows tf-detect wrote it, so it is neither kept as done nor replaced. None when it may."""
    plan = task_plan(task, options)
    if plan is None or os.path.lexists(plan.detections):
        return None
    found = next((path for path in (plan.anonymised, plan.drawn)
                  if path is not None and os.path.lexists(path)), None)
    if found is None:
        return None
    return (f"{task.job.path}: {found} exists and was not written by tf-detect (no detections "
            f"JSON {plan.detections.name} beside it); it is neither skipped nor replaced: move "
            f"it away, or --overwrite replaces it (and makes every output again)")


def _faces_beside_the_copy(task: DetectTask, options: DetectOptions) -> str | None:
    """Why ``task`` may not write its anonymised copy: the copy with the faces and boxes
    drawn (an earlier run's, without --blur/--pixelate or with --draw) is at its path in
    ``--out``, and this run, without --draw, would leave it there, beside the copy that hides
    them and a JSON of other detections maybe. Neither removed (a file of the user's by that
    name) nor kept silently: a folder of anonymised copies must not show the faces. None
    when it may, and for an image this run skips (:func:`resume_state`: its outputs exist,
    made with these settings, the drawn copy with them by an earlier ``--draw``)."""
    if options.anonymise is None or options.draw or options.out_dir is None or task.stem is None:
        return None
    drawn = plan_outputs(options.out_dir, task.stem, task.job, options.anonymise, draw=True).drawn
    if drawn is None or not os.path.lexists(drawn) or resume_state(task, options).done:
        return None
    return (f"{task.job.path}: {drawn} (a copy with the faces visible and boxes drawn) would "
            f"stay beside the {ANONYMISED[options.anonymise]} copy this run writes; a folder "
            f"of anonymised copies must not show the faces: remove it, or pass --draw to make "
            f"it again with this run's boxes")


def _wider_problem(wider_file: Path, job: ImageJob, owner: Path,
                   options: DetectOptions) -> str | None:
    """Why ``job`` may not write ``wider_file`` (``owner``: the image of this run that has
    it): another image of the run has it; or a file is there that is not ``job``'s result:
    its first line is not ``job``'s name, or, unless ``--overwrite``, its record (under
    ``--wider-dir``'s ``.tf-detect``) names another image file of that event and name (a
    dataset moved since counts as another), or any image where ``job`` is standard input
    (one piped image cannot be told from the next). None when it may."""
    if owner != job.path:
        return (f"{job.path}: its WIDER result {wider_file} was already written for {owner} "
                "(same event and name); rename one of the two images")
    if not os.path.lexists(wider_file):
        return None
    if not is_wider_result_of(wider_file, job):
        return (f"{wider_file} exists and is not the WIDER result of {job.path} (its first "
                f"line is not {wider_name(job)}); it is neither skipped nor replaced: move it "
                "away or give another --wider-dir")
    record = record_path(options.wider_dir, wider_file) if options.wider_dir else None
    if job.is_stdin:
        if options.overwrite:
            return None
        return (f"{wider_file} exists, the WIDER result of an earlier image from standard "
                "input, which cannot be told from this one; it is neither skipped nor "
                "replaced: --overwrite replaces it, or give another --wider-dir")
    if record is not None and not options.overwrite and _recorded_for_another(record, job):
        return (f"{wider_file} exists and is the WIDER result of another image of the same "
                f"event and name (its record {record} does not name {job.path}); it is "
                "neither skipped nor replaced: move it away or give another --wider-dir")
    return None


def _recorded_for_another(record: Path, job: ImageJob) -> bool:
    """Whether the WIDER record ``record`` names another image file than ``job``'s by its
    ``resolved`` real path; a record that is missing, unreadable or of an earlier tf-detect
    (no ``resolved``: its ``image`` path is relative to a working folder not recorded) leaves
    the result to :func:`resume_state`."""
    try:
        data = json.loads(record.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    if not isinstance(data, dict):
        return False
    resolved = data.get("resolved")
    return isinstance(resolved, str) and resolved != os.path.realpath(job.path)


def task_plan(task: DetectTask, options: DetectOptions) -> OutputPlan | None:
    """The ``--out`` files of one task (None without ``--out``)."""
    if options.out_dir is None or task.stem is None:
        return None
    return plan_outputs(options.out_dir, task.stem, task.job, options.anonymise,
                        draw=options.draw or options.anonymise is None)


def expected_outputs(task: DetectTask, options: DetectOptions) -> list[Path]:
    """The final files of one image, exactly as they are written, then its WIDER file."""
    plan = task_plan(task, options)
    return (plan.paths() if plan else []) + ([task.wider_file] if task.wider_file else [])


def _described_outputs(task: DetectTask, options: DetectOptions) -> list[tuple[Path, str, str]]:
    """(file, option that places it, what it is) for each output of ``task``."""
    plan = task_plan(task, options)
    found = []
    if plan is not None:
        hidden = f"{ANONYMISED.get(options.anonymise or '', 'anonymised')} copy"
        found = [(path, "--out", what) for path, what in (
            (plan.detections, "detections JSON"), (plan.anonymised, hidden),
            (plan.drawn, "copy with boxes drawn")) if path is not None]
    if task.wider_file is not None:
        found.append((task.wider_file, "--wider-dir", "WIDER result"))
    return found


def refuse_replacing_inputs(tasks: Sequence[DetectTask], options: DetectOptions,
                            jobs: Sequence[ImageJob]) -> None:
    """Raises :class:`InputOverwriteError` where an output of ``tasks`` would replace the
    data of an input file of the run (``jobs``: itself, another input, or the file a linked
    input points to), ``--overwrite`` or not: kept, it would be taken for that output."""
    owners = {str(path): (task.job, option, what)
              for task in tasks for path, option, what in _described_outputs(task, options)}
    victims = inputs_replaced_by(owners, [str(job.path) for job in jobs if not job.is_stdin])
    if not victims:
        return
    output, victim = next(iter(victims.items()))
    job, option, what = owners[output]
    by = f"its {what}" if Path(victim) == job.path else f"the {what} of {job.path}"
    if Path(victim).is_symlink():
        subject, written = f"{victim} links to {output}, which", ""  # (is ... the path)
    else:
        subject, written = victim, "" if output == victim else f" written to {output}"
    more = f" (and {len(victims) - 1} more)" if len(victims) > 1 else ""
    # (without --overwrite a done image's output is kept, and would then be read as an input)
    raise InputOverwriteError(f"{subject} is an input of this run and the path of {by}"
                              f"{written}{more}; choose another {option}")

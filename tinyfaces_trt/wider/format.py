"""The official WIDER FACE detection text format: one ``<event>/<image>.txt`` file per image.

A file holds::

    <image name>            line 1, free text (the official reader ignores it)
    <N>                     line 2, number of boxes
    x y w h score           N lines, one box each

Writing follows the authors' ``cnn_widerface_test_AB.m``: the corners ``x1 y1 x2 y2`` are
rounded first (MATLAB ``round``, half away from zero), then written as
``x1 y1 (x2-x1+1) (y2-y1+1)`` with the score as ``%f`` (tf-detect gives the logit, as the
authors do: its detector's own float32 ``score_cls``, run with ``DetectorConfig.score =
"logit"``; :func:`logits_of` takes a logit back from a probability). The PyTorch port's
``write_results`` instead rounds ``x2-x1+1`` itself with numpy's half-to-even rule, which
can differ by one pixel; we follow the authors. Coordinates are written as given (no
0-/1-based shift). Line 1 is the image's path relative to the images folder
(``event/name.jpg``), as the authors write it.

Reading follows the official ``read_pred.m``: each box line yields its first four numbers
and its *last* number as the score (so the older 6-column files read too). Numbers are
decimal literals as MATLAB's ``str2num`` reads them, so the box count may be written ``1.0``
or ``2e0`` (a whole number); a count like ``1.5`` and any token with ``_`` (which Python's
``float`` would accept, ``1_0`` as 10, and ``str2num`` rejects) are malformed. Blank lines
after the count line are skipped.

As ``read_pred.m``, only the first ``N`` box lines are read: with a count of 0 no box line is
read, and lines after the ``N``-th are ignored unread (a writer that puts a ``0 0 0 0 0`` line
under a count of 0, or more lines than it counts, is read as the official tool reads it);
:attr:`DetectionFile.extra_lines` counts them, and :func:`~.evaluate.read_predictions` warns
once for all such files. Where the official reader prints "Invalid format" and silently
drops the whole image (fewer box lines than the count, a box line that is not numbers), and
for a read box line of fewer than 5 numbers (which it drops, or with 4 numbers misreads the
height as the score), a file here raises :class:`PredictionFormatError` naming the file and
line. Deviation (documented): ``str2num`` also evaluates MATLAB expressions (``1+1``,
``pi``); those are malformed here.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tinyfaces_trt.core.errors import TinyFacesError
from tinyfaces_trt.core.files import write_bytes_atomic

_SEPARATORS = re.compile(r"[\s,]+")


class PredictionFormatError(TinyFacesError):
    """A detection text file does not follow the official WIDER FACE format."""


@dataclass(frozen=True)
class DetectionFile:
    """One parsed detection file.

    Attributes:
        image_name: line 1, stripped.
        boxes: (N, 5) float64 ``[x, y, w, h, score]`` in file order.
        extra_lines: non-blank lines after the ``N`` declared box lines, ignored unread as
            ``read_pred.m`` ignores them.
    """

    image_name: str
    boxes: np.ndarray
    extra_lines: int = 0


def matlab_round(values: np.ndarray) -> np.ndarray:
    """MATLAB ``round``: to nearest, halves away from zero (numpy rounds halves to even)."""
    v = np.asarray(values, dtype=np.float64)
    mag = np.abs(v)
    floor = np.floor(mag)
    # mag - floor is exact in float64, so the half test has no rounding error.
    return np.copysign(floor + (mag - floor >= 0.5), v)


def to_official_boxes(boxes: np.ndarray) -> np.ndarray:
    """(N, 5) ``[x1, y1, x2, y2, score]`` -> (N, 5) float64 ``[x, y, w, h, score]``, the
    authors' rounding (corners rounded, then ``w = x2 - x1 + 1``)."""
    b = np.asarray(boxes, dtype=np.float64)
    if b.ndim != 2 or b.shape[1] != 5:
        raise PredictionFormatError(f"boxes must have shape (N, 5), got {b.shape}")
    if not np.all(np.isfinite(b)):
        raise PredictionFormatError("boxes contain a non-finite value (NaN or inf)")
    corners = matlab_round(b[:, :4])
    out = np.empty_like(b)
    out[:, 0:2] = corners[:, 0:2]
    out[:, 2:4] = corners[:, 2:4] - corners[:, 0:2] + 1.0
    out[:, 4] = b[:, 4]
    return out


def format_detections(image_name: str, boxes: np.ndarray) -> str:
    """The file text for one image; ``boxes`` is (N, 5) ``[x1, y1, x2, y2, score]``."""
    if "\n" in image_name or "\r" in image_name:
        raise PredictionFormatError(f"image name must be one line, got {image_name!r}")
    official = to_official_boxes(boxes)
    lines = [image_name, str(len(official))]
    lines += ["%d %d %d %d %f" % (x, y, w, h, s) for x, y, w, h, s in official]
    return "\n".join(lines) + "\n"


#: The largest logit a float32 probability below 1 gives back: a probability that rounded to
#: exactly 1 (logit above about 16.6) is written as this.
MAX_FLOAT32_LOGIT = float(np.log(np.float64(np.nextafter(np.float32(1), np.float32(0))))
                          - np.log1p(-np.float64(np.nextafter(np.float32(1), np.float32(0)))))


def logits_of(probabilities: np.ndarray) -> np.ndarray:
    """The logits ``score_cls`` behind the detector's float32 ``sigmoid`` probabilities,
    computed in float64, for result files that carry the score as the authors'
    ``cnn_widerface_test_AB.m`` does (the logit: the official evaluation's min-max
    normalisation, hence the AP, depends on the scores' spread, not only their order), where
    the logits themselves are not at hand (a detector with ``DetectorConfig.score =
    "logit"`` gives them exactly; tf-detect ``--wider-dir`` runs one). Within
    float32's resolution of ``p``: about ``3e-8 * e**logit`` (the printed six decimals up to a
    logit of about 3; 5e-6 at 5, 1e-4 at 8, 5e-3 at 12); a probability that rounded to 1
    gives :data:`MAX_FLOAT32_LOGIT`."""
    p = np.asarray(probabilities, dtype=np.float64)
    with np.errstate(divide="ignore"):
        logits = np.log(p) - np.log1p(-p)
    return np.minimum(logits, MAX_FLOAT32_LOGIT)


def detection_path(root: str | Path, event: str, image_stem: str) -> Path:
    """``<root>/<event>/<image_stem>.txt``, where the official reader looks."""
    return Path(root) / event / f"{image_stem}.txt"


def write_detection_file(path: str | Path, image_name: str, boxes: np.ndarray) -> Path:
    """Writes one detection file atomically (creating parent folders); returns its path."""
    path = Path(path)
    text = format_detections(image_name, boxes)
    path.parent.mkdir(parents=True, exist_ok=True)
    # a file name that is not UTF-8 (surrogate escapes) is written back as its own bytes
    write_bytes_atomic(path, text.encode("utf-8", "surrogateescape"))
    return path


def write_image_detections(root: str | Path, image_relpath: str, boxes: np.ndarray) -> Path:
    """Writes the detections of the image at ``<images>/<event>/<name>.<ext>``.

    ``image_relpath`` is ``"<event>/<name>.<ext>"`` (the WIDER images layout); the file goes
    to ``<root>/<event>/<name>.txt`` with line 1 = ``image_relpath``.
    """
    rel = Path(image_relpath)
    if len(rel.parts) != 2:
        raise PredictionFormatError(
            f"image path must be '<event>/<image file>', got {image_relpath!r}")
    return write_detection_file(detection_path(root, rel.parts[0], rel.stem),
                                rel.as_posix(), boxes)


def _number(token: str) -> float:
    """``float(token)`` for a plain decimal literal; ValueError also for what ``float`` reads
    and MATLAB's ``str2num`` does not: ``_`` digit separators and non-ASCII digits."""
    if "_" in token or not token.isascii():
        raise ValueError(f"not a number: {token!r}")
    return float(token)


def _numbers(text: str, where: str) -> list[float]:
    try:
        values = [_number(tok) for tok in _SEPARATORS.split(text.strip()) if tok]
    except ValueError:
        raise PredictionFormatError(f"{where}: expected numbers, got {text.strip()!r}") from None
    if not all(math.isfinite(v) for v in values):
        raise PredictionFormatError(f"{where}: non-finite value in {text.strip()!r}")
    return values


def parse_detections(text: str, source: str = "<text>") -> DetectionFile:
    """Parses the text of one detection file; errors name ``source`` and the 1-based line."""
    lines = text.splitlines()
    if len(lines) < 2:
        raise PredictionFormatError(
            f"{source}: expected the image name on line 1 and the box count on line 2, "
            f"got {len(lines)} line(s)")
    count_text = lines[1].strip()
    try:  # str2num: "1.0" and "2e0" are counts too
        count_value = _number(count_text)
    except ValueError:
        raise PredictionFormatError(
            f"{source}:2: expected the number of boxes, got {count_text!r}") from None
    if not count_value.is_integer():  # "1.5", "inf", "nan"
        raise PredictionFormatError(
            f"{source}:2: expected a whole number of boxes, got {count_text!r}")
    count = int(count_value)
    if count < 0:
        raise PredictionFormatError(f"{source}:2: negative box count {count}")
    rows = [(no, line) for no, line in enumerate(lines[2:], start=3) if line.strip()]
    if len(rows) < count:  # read_pred.m: an index error, "Invalid format", the image dropped
        raise PredictionFormatError(
            f"{source}: line 2 declares {count} box(es) but only {len(rows)} box line(s) "
            f"follow (the official read_pred.m would drop the whole image as 'Invalid format')")
    boxes = np.zeros((count, 5), dtype=np.float64)
    for k, (no, line) in enumerate(rows[:count]):  # read_pred.m reads lines 3..count+2 only
        values = _numbers(line, f"{source}:{no}")
        if len(values) < 5:
            raise PredictionFormatError(
                f"{source}:{no}: expected 'x y w h score', got {line.strip()!r}")
        with np.errstate(over="ignore"):  # the evaluation normalises it in float32
            single = np.float32(values[-1])
        if not np.isfinite(single):
            raise PredictionFormatError(
                f"{source}:{no}: score {_SEPARATORS.split(line.strip())[-1]} is beyond "
                "single precision (the official evaluation's norm_score works in single: it "
                f"would be infinite); got {line.strip()!r}")
        boxes[k, :4] = values[:4]
        boxes[k, 4] = values[-1]
    return DetectionFile(lines[0].strip(), boxes, len(rows) - count)


def read_detection_file(path: str | Path) -> DetectionFile:
    """Reads and parses one detection file."""
    path = Path(path)
    try:
        # line 1 names the image: its bytes as they are (the official reader ignores it)
        text = path.read_bytes().decode("utf-8", "surrogateescape")
    except OSError as exc:
        raise PredictionFormatError(f"{path}: cannot read detection file ({exc})") from None
    return parse_detections(text, str(path))

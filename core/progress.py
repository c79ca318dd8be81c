"""A progress bar over one image's pyramid levels, for the command-line tools.

On a CPU one photo takes seconds to minutes (a 1080p photo's adaptive pyramid is 15 million
pixels: about 15-50 s for ResNet-101 in ONNX Runtime on 2 cores), most of it in the last,
largest levels. :func:`detect_with_progress` shows how far the image is, in pixels of its
pyramid, on a terminal's stderr once an image has taken a second; it shows nothing for quick
images, off a terminal (logs), or on a GPU (where a compile or engine build prints its own lines).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any

import numpy as np

#: Seconds an image runs before its bar shows (tqdm's ``delay``).
LEVEL_BAR_DELAY_S = 1.0


def on_terminal() -> bool:
    """Whether stderr is a terminal: progress bars are drawn there only (a log file gets no
    carriage-return frames)."""
    return sys.stderr.isatty()


def bar_size(stream: Any = None) -> dict[str, Any]:
    """tqdm's size arguments for a bar on ``stream`` (None: stderr): the terminal's, followed
    as it changes, or 80 x 24 where the terminal reports none (0 x 0: a pseudo-terminal never
    sized, as some container and CI runners give; tqdm's own size would then hide the bar)."""
    stream = sys.stderr if stream is None else stream
    try:
        size = os.get_terminal_size(stream.fileno())
    except (AttributeError, OSError, ValueError):
        return {"dynamic_ncols": True}
    if size.columns > 0 and size.lines > 0:
        return {"dynamic_ncols": True}
    return {"ncols": 80, "nrows": 24}


def duration_text(seconds: float) -> str:
    """A duration for a progress line: ``45s``, ``2m11s``, ``1h05m``."""
    whole = round(seconds)
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    return f"{whole // 3600}h{whole % 3600 // 60:02d}m"


class TimedLines:
    """Progress for a log file (stderr that is not a terminal): a plain line, no carriage
    return, at most every ``interval`` seconds; a subclass says what the line is
    (:meth:`line`).

    Args:
        stream: where lines go.
        clock: seconds, monotonic.
        interval: seconds between two lines.
        initial: the count it starts at.
    """

    def __init__(self, stream: Any, clock: Callable[[], float], interval: float,
                 initial: int = 0) -> None:
        self.stream, self.clock, self.interval = stream, clock, interval
        self.n = initial
        self.start = self.last = clock()

    def update(self, n: int = 1) -> None:
        """Counts ``n`` more done, and writes a line if one is due (:meth:`tick`)."""
        self.n += n
        self.tick()

    def tick(self) -> None:
        """Writes a line when ``interval`` has passed since the last (or the start)."""
        now = self.clock()
        if now - self.last >= self.interval:
            self.last = now
            self.stream.write(self.line(now) + "\n")
            self.stream.flush()

    def line(self, now: float) -> str:
        """The progress line at ``now``."""
        raise NotImplementedError

    def close(self) -> None:
        """Nothing to clear (the run's own line follows)."""


def _runs_on_the_cpu(detector: Any) -> bool:
    from tinyfaces_trt.core.runner import capabilities_of

    return not capabilities_of(detector.runner).on_gpu


def detect_with_progress(detector: Any, image: np.ndarray, label: str,
                         enabled: bool = True) -> np.ndarray:
    """``detector.detect(image)``, with a bar of its pyramid levels on stderr where it helps:
    ``enabled``, stderr a terminal, a detector on the CPU, and the image still running after
    :data:`LEVEL_BAR_DELAY_S`. The bar is cleared when the image is done."""
    if not (enabled and on_terminal() and _runs_on_the_cpu(detector)):
        return detector.detect(image)
    from tqdm import tqdm

    levels = detector.plan(*image.shape[:2])
    with tqdm(total=sum(level.height * level.width for level in levels), desc=label,
              unit="px", unit_scale=True, leave=False, delay=LEVEL_BAR_DELAY_S,
              file=sys.stderr, **bar_size()) as bar:
        return detector.detect(image,
                               on_level=lambda level: bar.update(level.height * level.width))

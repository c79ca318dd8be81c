"""Helpers shared by the command-line tools: argument types, logging to stderr, exit codes.

Libraries report through :mod:`logging` (logger ``tinyfaces_trt``); a CLI routes those
records to stderr with :func:`logging_to_stderr`, prefixed by its own name.
"""

from __future__ import annotations

import _thread
import argparse
import contextlib
import logging
import math
import os
import signal
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple, TypeVar

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2

_N = TypeVar("_N", int, float)


class ImageSize(NamedTuple):
    """An image size as the command line writes it, ``WIDTHxHEIGHT``."""

    width: int
    height: int

    def __str__(self) -> str:
        return f"{self.width}x{self.height}"


def parse_image_size(text: str) -> ImageSize:
    """``"1920x1080"`` -> ``ImageSize(width=1920, height=1080)``; argparse's usage error else."""
    try:
        w, h = (int(v) for v in text.strip().lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"image size must be WIDTHxHEIGHT with positive integers, e.g. 1920x1080; got {text!r}"
        ) from None
    if w < 1 or h < 1:
        raise argparse.ArgumentTypeError(
            f"image size must be WIDTHxHEIGHT with positive integers, e.g. 1920x1080; got {text!r}")
    return ImageSize(w, h)


def parse_image_sizes(text: str) -> list[ImageSize]:
    """``"33x47,64x64"`` -> a list of :class:`ImageSize` (at least one)."""
    sizes = [parse_image_size(part) for part in text.split(",") if part.strip()]
    if not sizes:
        raise argparse.ArgumentTypeError("no image sizes given; expected e.g. 640x480,1920x1080")
    return sizes


def checked(text: str, convert: Callable[[str], _N], ok: Callable[[_N], bool],
            kind: str, expected: str) -> _N:
    """``convert(text)`` when it succeeds and passes ``ok``; else argparse's usage error."""
    try:
        value = convert(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not {kind}") from None
    if not ok(value):
        raise argparse.ArgumentTypeError(f"{value} must be {expected}")
    return value


def probability(text: str) -> float:
    """argparse type: a number strictly between 0 and 1."""
    return checked(text, float, lambda v: 0.0 < v < 1.0, "a number", "between 0 and 1 (exclusive)")


def fraction(text: str) -> float:
    """argparse type: a number in [0, 1]."""
    return checked(text, float, lambda v: 0.0 <= v <= 1.0, "a number", "between 0 and 1")


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    return checked(text, int, lambda v: v >= 1, "an integer", ">= 1")


def positive_float(text: str) -> float:
    """argparse type: a finite number > 0 (``inf`` reached the code as a size or a count)."""
    return checked(text, float, lambda v: 0 < v < math.inf, "a number", "> 0 and finite")


def seed_argument(text: str) -> int:
    """argparse type of a ``--seed``: a non-negative integer."""
    return checked(text, int, lambda v: v >= 0, "an integer", ">= 0")


#: What :func:`printable` escapes: the characters a terminal acts on instead of showing them
#: (ESC and CSI start escape sequences; carriage return, backspace, bell...): the C0 controls
#: but tab and newline, DEL and the C1 controls.
_CONTROL_ESCAPES = {code: f"\\x{code:02x}" for code in (*range(0x20), 0x7F, *range(0x80, 0xA0))
                    if code not in (0x09, 0x0A)}


def printable(text: str) -> str:
    """``text`` with each control character a terminal would act on written as ``\\xNN``
    (:data:`_CONTROL_ESCAPES`), so that a file or folder name in a message cannot move the
    cursor, recolour, retitle, rewrite or hide what a CLI prints."""
    return text.translate(_CONTROL_ESCAPES)


def stderr_line(message: str) -> None:
    """One line to stderr, flushed (progress and errors of a CLI), its control characters
    escaped (:func:`printable`)."""
    print(printable(message), file=sys.stderr, flush=True)


def stdout_line(message: str) -> None:
    """One line to stdout, flushed (a CLI's per-file results), as :func:`shown` there, through
    :func:`write_stdout`."""
    write_stdout(shown(message, sys.stdout) + "\n")


class _StdoutState:
    """Standard output in this CLI run: ``lost`` is the OSError that ended its writes, else
    None (reset by :func:`run_interruptible`)."""

    lost: OSError | None = None


def write_stdout(text: str) -> None:
    """Writes ``text`` to standard output and flushes it. Where it cannot take it (its reader
    closed the pipe: ``| head``; a full disk) the run goes on without writing there, said once
    on stderr (a log warning, so with the CLI's name), and a CLI run by
    :func:`run_interruptible` then exits 1 unless only the pipe was closed."""
    if _StdoutState.lost is not None or sys.stdout is None:  # (None: closed at start, >&-)
        return
    try:
        sys.stdout.write(text)
        sys.stdout.flush()
    except OSError as exc:
        _StdoutState.lost = exc
        _silence_stdout()
        logging.getLogger("tinyfaces_trt.cli").warning(
            "standard output cannot be written (%s): the run goes on without printing there%s",
            exc.strerror or exc, "" if isinstance(exc, BrokenPipeError) else ", then fails")


def _silence_stdout() -> None:
    """Points the standard output's file descriptor at /dev/null: what its buffer still holds
    is dropped there at exit, not raised again (Python's "Exception ignored ... BrokenPipe")."""
    try:
        fd = sys.stdout.fileno()
        null = os.open(os.devnull, os.O_WRONLY)
    except (AttributeError, OSError, ValueError):  # no descriptor (a test's capture)
        return
    try:
        os.dup2(null, fd)
    finally:
        os.close(null)


def shown(line: str, stream: Any) -> str:
    """``line`` as a CLI writes it to ``stream``: :func:`printable` on stderr and on a
    terminal; into a pipe or file stdout gets its characters as they are (as ``ls``)."""
    if stream is sys.stderr:
        return printable(line)
    try:
        terminal = bool(stream.isatty())
    except (AttributeError, ValueError):  # no such method; closed
        terminal = False
    return printable(line) if terminal else line


class _PrintableFormatter(logging.Formatter):
    """A formatter whose lines are :func:`printable`."""

    def format(self, record: logging.LogRecord) -> str:
        return printable(super().format(record))


@contextlib.contextmanager
def logging_to_stderr(prog: str, verbose: bool = False) -> Iterator[None]:
    """Routes the toolkit's log records (INFO with ``verbose``, else WARNING and up) to stderr
    as ``<prog>: message`` lines for a CLI run; restores the logger after."""
    logger = logging.getLogger("tinyfaces_trt")
    saved = (logger.handlers[:], logger.level, logger.propagate)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_PrintableFormatter(f"{prog}: %(message)s"))
    logger.handlers[:] = [handler]
    logger.setLevel(logging.INFO if verbose else logging.WARNING)
    logger.propagate = False
    try:
        yield
    finally:
        logger.handlers[:], logger.propagate = saved[0], saved[2]
        logger.setLevel(saved[1])


def add_version_argument(parser: argparse.ArgumentParser) -> None:
    """``--version``: prints ``<prog> <tinyfaces_trt.__version__>`` and exits 0."""
    from tinyfaces_trt import __version__  # the root package (always imported before core)

    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")


def interrupt_on_sigterm(signum: int, frame: object) -> None:
    """The SIGTERM handler of :func:`cli_interrupts`: a KeyboardInterrupt, like Ctrl-C."""
    raise KeyboardInterrupt(f"signal {signum}")


@contextlib.contextmanager
def cli_interrupts() -> Iterator[None]:
    """Ctrl-C and SIGTERM (``kill``, a container stop) end a CLI run as
    :class:`KeyboardInterrupt`, so that it ends the same way for both: temporary files
    removed, nothing half-written under a final name, exit 130 (catch it around this
    context and return :func:`interrupt_handled`).

    An interrupt that lands in a finalizer or a weakref callback (e.g. importlib's, while a
    plugin imports lazily) is one Python can only print and drop; inside, it is sent again to
    the main thread as a real signal, so the run still stops. A no-op outside the main thread.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, interrupt_on_sigterm)
    redelivery = _Redelivery(sys.unraisablehook, threading.main_thread().ident)
    sys.unraisablehook = redelivery
    try:
        yield
    finally:  # in this order: an interrupt raised meanwhile must not skip the restores
        sys.unraisablehook = redelivery.previous
        try:
            redelivery.close()
        finally:
            signal.signal(signal.SIGTERM, previous)


REDELIVERY_DELAY_S = 0.005


class _Redelivery:
    """``sys.unraisablehook`` during a CLI run: a dropped KeyboardInterrupt is sent again to
    the main thread as a real signal a moment later, once it is back in ordinary code (raised
    from the hook itself, it would be dropped again; a real signal also wakes a blocked
    wait); anything else goes on to the previous hook. Nothing is sent once :meth:`close`
    has begun."""

    def __init__(self, previous: Callable[[Any], object], main_thread: int | None) -> None:
        self.previous = previous
        self._main_thread = main_thread
        self._lock = threading.Lock()
        self._open = True

    def __call__(self, unraisable: Any) -> None:
        if issubclass(unraisable.exc_type, KeyboardInterrupt) and _signal_to_resend():
            _thread.start_new_thread(self._deliver, ())
        else:
            self.previous(unraisable)

    def _deliver(self) -> None:
        time.sleep(REDELIVERY_DELAY_S)
        with self._lock:
            sig = _signal_to_resend()
            if self._open and sig and self._main_thread is not None:
                signal.pthread_kill(self._main_thread, sig)

    def close(self) -> None:
        self._open = False  # first: a close interrupted while it waits still stops sending
        with self._lock:  # a send under way has finished
            pass


def _signal_to_resend() -> int | None:
    """SIGINT where Python handles it (a late one can only raise); else SIGTERM while
    :func:`cli_interrupts` handles it (SIGINT is ignored in a background job); else None."""
    if callable(signal.getsignal(signal.SIGINT)):
        return signal.SIGINT
    if signal.getsignal(signal.SIGTERM) is interrupt_on_sigterm:
        return signal.SIGTERM
    return None


def run_interruptible(prog: str, run: Callable[[], int], *, interrupted: str,
                      status: int = 130, verbose: bool = False) -> int:
    """A CLI's ``main`` around its work: ``run()``'s exit status, with the toolkit's log records
    on stderr (:func:`logging_to_stderr`) and Ctrl-C or SIGTERM ending it as a
    KeyboardInterrupt (:func:`cli_interrupts`). An interrupt prints ``<prog>: <interrupted>``
    and gives ``status`` (:func:`interrupt_handled`), also one that lands while the context
    closes. A run whose standard output could not take what it printed (:func:`write_stdout`;
    a full disk, not a closed pipe) exits 1 where it would have exited 0."""
    _StdoutState.lost = None
    try:
        with logging_to_stderr(prog, verbose), cli_interrupts(), file_names_printable():
            code = run()
        lost = _StdoutState.lost  # what was to be printed is gone: not done, but for | head
        return 1 if code == EXIT_OK and lost is not None and \
            not isinstance(lost, BrokenPipeError) else code
    except KeyboardInterrupt:
        stderr_line(f"{prog}: {interrupted}")
        return interrupt_handled(status)


@contextlib.contextmanager
def file_names_printable() -> Iterator[None]:
    """While a CLI runs, a file name that the output encoding cannot hold (the bytes of a
    Latin-1 name under a UTF-8 locale, which Python reads as surrogate escapes) is written to
    standard output as those bytes, as ``ls`` does, and to standard error escaped (Python's own
    stderr default), instead of failing mid-run with UnicodeEncodeError."""
    with contextlib.ExitStack() as stack:
        for stream, errors in ((sys.stdout, "surrogateescape"), (sys.stderr, "backslashreplace")):
            if getattr(stream, "errors", None) == "strict" and \
                    callable(getattr(stream, "reconfigure", None)):
                stream.reconfigure(errors=errors)
                stack.callback(_reconfigured, stream, "strict")
        yield


def _reconfigured(stream: Any, errors: str) -> None:
    with contextlib.suppress(ValueError):  # (closed meanwhile)
        stream.reconfigure(errors=errors)


def interrupt_handled(status: int) -> int:
    """``status``, for a CLI to return once it has handled a :class:`KeyboardInterrupt`.

    CPython (3.10-3.13 at least) marks a KeyboardInterrupt that left a string ``exec`` or
    ``eval`` as unhandled even when a caller catches it; under ``python -m`` the process
    then ends by SIGINT (exit -2) instead of with ``status``. Such evaluations run whenever
    a dataclass or namedtuple is made, e.g. while a module imports lazily mid-run. Each one
    clears the mark first, so an empty one here does.
    """
    exec("pass", {})  # noqa: S102 - a constant; see the docstring
    return status


_BANNER_WIDTH = 72


def is_untrained(model: str | None, weights: str | None) -> bool:
    """Whether a CLI's ``--model`` / ``--weights`` run the untrained network: neither given
    (the seeded default), or an export folder whose manifest says so."""
    if weights:
        return False
    if not model:
        return True
    from tinyfaces_trt.core.manifest import load_export_folder

    return load_export_folder(model, verify=False).untrained


def untrained_banner(prog: str, model: str | None = None) -> str:
    """The loud warning a CLI prints on every run of an untrained network.

    Args:
        prog: the command (``tf-detect``, ``tf-anonymize``).
        model: the ``--model`` folder when it holds an untrained export, else None (the
            seeded default network, no ``--weights``/``--model`` given). Not printed: a
            long path would break the box.
    """
    if model:
        why = ("The --model export folder holds the seeded RANDOM-weight network (its "
               "manifest says \"untrained\": true).")
    else:
        why = (f"No --weights or --model was given, so {prog} runs the seeded RANDOM-weight "
               "default network.")
    text = (f"WARNING: UNTRAINED NETWORK. {why} Its detections are MEANINGLESS (plumbing tests "
            "only): an anonymised output hides NO faces reliably. Pass --weights F (a trained "
            "checkpoint) or --model DIR (a tf-export folder of trained weights).")
    inner = _BANNER_WIDTH - 4
    rows = textwrap.wrap(text, inner)
    border = "*" * _BANNER_WIDTH
    return "\n".join([border, *(f"* {row:<{inner}} *" for row in rows), border])

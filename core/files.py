"""Files and folders: output folders checked before long work, atomic outputs, the cache root.

Every output the toolkit writes goes through :func:`atomic_output`: it is written to a hidden
temporary name in the destination folder and renamed over the final name only once complete,
so an interrupted run or a full disk never leaves a truncated file under a final name.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import secrets
import shutil
import socket
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from tinyfaces_trt.core.errors import TinyFacesError

log = logging.getLogger(__name__)


def prepare_output_dir(folder: str | os.PathLike[str], what: str) -> Path:
    """Creates ``folder`` if needed, checks that it is a writable folder, and removes what
    runs killed mid-write left in it (:func:`remove_stale_temporaries_under`).

    Args:
        folder: the folder.
        what: how messages name it, e.g. ``"--out detections/"``.

    Raises:
        TinyFacesError: one line naming ``what``, when it is a file, cannot be created, or
            is not writable.
    """
    path = Path(folder).expanduser()
    if path.exists() and not path.is_dir():
        raise TinyFacesError(f"{what} exists and is not a folder; give a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise TinyFacesError(f"cannot create {what}: {exc.strerror or exc}; "
                             "give a writable folder") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise TinyFacesError(f"{what} is not writable; give a writable folder")
    remove_stale_temporaries_under(path)
    return path


#: Environment variable naming the cache root (export cache, built kernels, compiled models).
CACHE_ENV = "TINYFACES_CACHE"


def is_text_path(value: object) -> bool:
    """Whether ``value`` is a path the toolkit takes: a str or an os.PathLike of str (bytes
    paths are not: names, cache keys and messages are text)."""
    return isinstance(value, str) or (isinstance(value, os.PathLike)
                                      and isinstance(os.fspath(value), str))


def cache_root(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """The cache folder: ``cache_dir``, else ``$TINYFACES_CACHE``, else
    ``$XDG_CACHE_HOME/tinyfaces_trt``, else ``~/.cache/tinyfaces_trt``."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg).expanduser() / "tinyfaces_trt"


#: Prefix of every temporary file and staging folder; hidden, so folder walks skip them.
#: The writing process's id and host follow (``.tf-tmp-<pid>.<host>-...``), so that leftovers
#: of a killed run can be told from the work of a live one (:func:`remove_stale_temporaries`),
#: and the work of another machine sharing the folder is left alone.
TEMP_PREFIX = ".tf-tmp-"
#: This machine in temporary names: the first 8 hex digits of its host name's sha1.
HOST_TAG = hashlib.sha1(socket.gethostname().encode()).hexdigest()[:8]
#: ``.tf-tmp-<pid>[.<host>]-`` (groups: pid, host): names written before the host was
#: recorded have none.
_OWNER = re.escape(TEMP_PREFIX) + r"(\d+)(?:\.([0-9a-f]{8}))?-"
_TEMP_OWNER = re.compile(_OWNER)


def _owner_prefix() -> str:
    """``.tf-tmp-<pid>.<host>-``: how this process's temporary names start."""
    return f"{TEMP_PREFIX}{os.getpid()}.{HOST_TAG}-"


#: Characters of the 8 random ones in a temporary name (those :func:`tempfile.mkstemp` uses).
_NAME_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789_"


def _create_unique(parent: Path, prefix: str, suffix: str, create: Callable[[Path], None]) -> Path:
    """``parent/<prefix><8 random characters><suffix>``, made by ``create`` (which raises
    FileExistsError when the name is taken: another name is then tried)."""
    for _ in range(tempfile.TMP_MAX):
        random = "".join(secrets.choice(_NAME_CHARS) for _ in range(8))
        path = parent / f"{prefix}{random}{suffix}"
        try:
            create(path)
        except FileExistsError:
            continue
        return path
    raise FileExistsError(f"no free temporary name in {parent}")


def _new_file(path: Path) -> None:
    # mode 0666: the kernel applies the process's umask (or the folder's default ACL) as it
    # does for any new file, at the moment of writing
    os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY | getattr(os, "O_CLOEXEC", 0),
                     0o666))


def _new_folder(path: Path) -> None:
    os.mkdir(path, 0o777)  # the umask applies; a setgid parent passes its group and bit on


def inputs_replaced_by(outputs: Iterable[str | os.PathLike[str]],
                       inputs: Iterable[str | os.PathLike[str]]) -> dict[str, str]:
    """{output: input} for each of ``outputs`` whose writing (a rename over its name, as
    :func:`atomic_output` does) would destroy the data of one of ``inputs``: the output's
    entry is the input file, or the file a linked input points to.

    Inputs are identified by the file they resolve to (a symbolic link followed: the data a
    replaced entry loses); outputs by their own entry, which :func:`os.replace` replaces (a
    symbolic link there is swapped, not followed). A hard-linked output is repointed while the
    input's own entry keeps the data, unless the output's entry is that one.
    """
    by_file: dict[tuple[int, int], list[str]] = {}
    for source in inputs:
        if (found := _file_identity(source, follow=True)) is not None:
            by_file.setdefault(found[0], []).append(str(source))
    replaced = {}
    for output in outputs:
        found = _file_identity(output, follow=False)
        if found is None:
            continue
        key, links = found
        victim = next((source for source in by_file.get(key, ())
                       if links == 1 or _is_entry_of(str(output), source)), None)
        if victim is not None:
            replaced[str(output)] = victim
    return replaced


def _file_identity(path: str | os.PathLike[str],
                   follow: bool) -> tuple[tuple[int, int], int] | None:
    """((device, inode), link count) of ``path``, a symbolic link followed or not; None where
    there is none."""
    try:
        stat = os.stat(path, follow_symlinks=follow)
    except (OSError, ValueError):
        return None
    return (stat.st_dev, stat.st_ino), stat.st_nlink


def _is_entry_of(output: str, source: str) -> bool:
    """Whether ``output`` names the directory entry that ``source`` resolves to."""
    parent = os.path.realpath(os.path.dirname(os.path.abspath(output)))
    return os.path.realpath(source) == os.path.join(parent, os.path.basename(output))


def temporaries_of(path: str | os.PathLike[str]) -> list[Path]:
    """The temporary files :func:`atomic_output` makes for ``path`` (``.tf-tmp-<pid>.<host>-<8
    random characters>-<name>`` beside it), e.g. left by a process killed while writing it, on
    any machine. Exactly those of this name: another output whose name merely ends the same
    way is not matched."""
    final = Path(path)
    pattern = re.compile(_OWNER + r"[a-z0-9_]{8}-" + re.escape(final.name) + "$")
    try:
        return [p for p in final.parent.iterdir() if pattern.match(p.name)]
    except OSError:
        return []


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yields a temporary path beside ``path``; renames it to ``path`` when the block succeeds.

    Write the whole file to the yielded path (any writer that takes a path or a file name).
    On success it is flushed to disk and atomically renamed over ``path``; on any exception
    (KeyboardInterrupt included) it is removed and the exception propagates, so ``path`` is
    either the complete new file or whatever was there before.

    The temporary name keeps the final suffix (``.tf-tmp-XXXX-name.jpg``) so that writers
    choosing a format by extension still do. The file gets the mode a plain ``open()`` would
    give a new file now (0666 less the process's current umask), also when it replaces one.
    """
    final = Path(path)
    tmp = _create_unique(final.parent, _owner_prefix(), f"-{final.name}", _new_file)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, final)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes) -> None:
    """Writes ``data`` to ``path`` through :func:`atomic_output`."""
    with atomic_output(path) as tmp:
        tmp.write_bytes(data)


def write_text_atomic(path: str | os.PathLike[str], text: str) -> None:
    """Writes UTF-8 ``text`` to ``path`` through :func:`atomic_output`."""
    write_bytes_atomic(path, text.encode("utf-8"))


def staging_dir(parent: str | os.PathLike[str], tag: str) -> Path:
    """Creates and returns a new hidden staging folder ``<parent>/.tf-tmp-<pid>.<host>-<tag>-XXXX``.

    Build a folder's content there, then move it into place with :func:`replace_folder`;
    remove it (``shutil.rmtree``) when the work fails. It gets a new folder's usual mode, the
    process's umask applied when it is made (not mkdtemp's 0700: an export folder others on
    shared storage, or a service's account, could not read).
    """
    return _create_unique(Path(parent), f"{_owner_prefix()}{tag}-", "", _new_folder)


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def remove_stale_temporaries(folder: str | os.PathLike[str]) -> list[Path]:
    """Removes the temporary files and staging folders that runs killed before they could
    clean up left directly in ``folder`` (their writer process is gone); returns them.

    Entries of live processes (this one included) are kept, so concurrent runs are safe on
    one machine; entries of other machines (another host in the name) are kept too, since
    this one cannot tell whether their writer lives. Nothing else is touched; a missing
    folder is no error.
    """
    removed: list[Path] = []
    try:
        entries = list(Path(folder).iterdir())
    except OSError:
        return removed
    for entry in entries:
        m = _TEMP_OWNER.match(entry.name)
        if m is None or m.group(2) not in (None, HOST_TAG) or _pid_alive(int(m.group(1))):
            continue
        try:
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
        except OSError as exc:
            log.debug("cannot remove stale temporary %s: %s", entry, exc)
            continue
        removed.append(entry)
    return removed


def remove_stale_temporaries_under(root: str | os.PathLike[str]) -> list[Path]:
    """:func:`remove_stale_temporaries` in ``root`` and every folder below it (an output
    folder a killed run wrote into: once at the start of the next run, not per file)."""
    removed: list[Path] = []
    for folder, dirs, _ in os.walk(root):
        dirs[:] = [d for d in dirs if not _TEMP_OWNER.match(d)]  # staging folders go whole
        removed += remove_stale_temporaries(folder)
    return removed


def replace_folder(staging: str | os.PathLike[str], target: str | os.PathLike[str]) -> None:
    """Moves the complete folder ``staging`` to ``target``, replacing what was there.

    ``target`` missing: one atomic rename. ``target`` present: it is first renamed aside
    (a hidden name beside it), then ``staging`` is renamed into place and the old folder is
    deleted; if the second rename fails the old folder is put back. At every instant
    ``target`` is the old folder, the new one, or (for the moment between two renames)
    absent: never a mix of both. Both must be on one file system (stage beside the target).
    A symbolic link at ``target`` is replaced itself (the folder it points to is kept); to
    replace that folder, pass its real path.
    """
    staging, target = Path(staging), Path(target)
    if not target.exists() and not target.is_symlink():
        os.replace(staging, target)
        return
    aside = Path(tempfile.mkdtemp(prefix=f"{_owner_prefix()}old-", dir=target.parent))
    aside.rmdir()  # only its unique name is wanted
    os.replace(target, aside)
    try:
        os.replace(staging, target)
    except BaseException:
        os.replace(aside, target)
        raise
    if aside.is_symlink():  # rmtree refuses a link (and ignore_errors left it behind)
        aside.unlink()
    else:
        shutil.rmtree(aside, ignore_errors=True)


def written_for_another(record: str | os.PathLike[str], key: str,
                        source: str | os.PathLike[str] | None) -> bool:
    """Whether the output JSON ``record`` exists and names another input than ``source``, or
    cannot be read: outputs named after a file (``a.jpg`` and ``a.png``, or two folders'
    ``p.jpg``) must neither be skipped as done nor overwritten for another input in a later
    run. The input is the one its ``"resolved"`` path names (:func:`os.path.realpath` when
    written: another working folder, a symbolic link), else the one ``key`` names. A
    ``source`` of None is an input nothing identifies (standard input: one piped image cannot
    be told from the next): every existing record is another's."""
    path = Path(record)
    if not path.exists():
        return False
    if source is None:
        return True
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        recorded, resolved = data.get(key), data.get("resolved")
    except (OSError, ValueError, AttributeError):
        return True
    if isinstance(resolved, str):
        return resolved != os.path.realpath(source)
    if not isinstance(recorded, str):
        return True
    return recorded != str(source) and os.path.abspath(recorded) != os.path.abspath(source)


@contextlib.contextmanager
def removed_if_left_empty(*folders: str | os.PathLike[str] | None) -> Iterator[None]:
    """Those of ``folders`` (None: none) that do not exist yet are removed after the block,
    also when it fails, where nothing was written into them (:func:`remove_empty_dirs`), with
    the folders above them that the block created (``--out a/b/c`` where ``a`` is new)."""
    paths = [Path(f).expanduser() for f in folders if f]
    new = [(path, nearest_existing(path)) for path in paths if not os.path.lexists(path)]
    try:
        yield
    finally:
        for folder, existed in new:
            if remove_empty_dirs(folder):
                log.info("removed %s: nothing was written into it", folder)
                _remove_empty_parents(folder, existed)


def nearest_existing(path: Path) -> Path:
    """``path`` if it exists, else its nearest ancestor that does (where creating it starts)."""
    while not os.path.lexists(path) and path.parent != path:
        path = path.parent
    return path


def _remove_empty_parents(folder: Path, existed: Path) -> None:
    """Removes the now empty folders above ``folder`` below ``existed`` (those the run
    created); stops at the first that holds anything (another run's folder, a file)."""
    for parent in folder.parents:
        if parent == existed:
            return
        try:
            parent.rmdir()
        except OSError:
            return


def remove_empty_dirs(root: str | os.PathLike[str]) -> bool:
    """Removes ``root`` and its sub-folders when they hold no file at all; returns True when
    ``root`` is gone. Folders holding anything (a file, a link) are kept."""
    root = Path(root)
    if not root.is_dir() or root.is_symlink():
        return False
    for path in sorted((p for p in root.rglob("*") if p.is_dir() and not p.is_symlink()),
                       key=lambda p: len(p.parts), reverse=True):
        with contextlib.suppress(OSError):
            path.rmdir()
    try:
        root.rmdir()
    except OSError:
        return False
    return True


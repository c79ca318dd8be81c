"""Files and folders: output folders checked before long work, atomic outputs, the cache root.

Every output the toolkit writes goes through :func:`atomic_output`: it is written to a hidden
temporary name in the destination folder and renamed over the final name only once complete,
so an interrupted run or a full disk never leaves a truncated file under a final name.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import re
import secrets
import shutil
import socket
import stat
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import IO

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


class NotRegularFileError(OSError):
    """An input opened by :func:`open_regular` is a named pipe, device or socket."""


def open_regular(path: str | os.PathLike[str], *, allow_stdin: bool = False
                 ) -> tuple[IO[bytes], os.stat_result]:
    """Opens the input ``path`` once for reading and checks what was opened (no race between
    a check and the open): ``(binary file, its fstat)``.

    The open does not wait for a named pipe's writer (O_NONBLOCK, cleared once it is known
    what was opened). Only a regular file is taken, or with ``allow_stdin`` this process's
    standard input (``/dev/stdin`` where it is a pipe, terminal or device; read it with a
    bound). Anything else would block for ever (a named pipe) or never end (``/dev/zero``).

    Raises:
        FileNotFoundError, IsADirectoryError: as their names say.
        NotRegularFileError: a named pipe, device or socket (errno EINVAL).
        OSError: it cannot be opened.
    """
    flags = os.O_RDONLY | getattr(os, "O_BINARY", 0) | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(path, flags | getattr(os, "O_NONBLOCK", 0))
    try:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(path))
        if not stat.S_ISREG(info.st_mode) and not (allow_stdin and _is_standard_input(fd, info)):
            raise NotRegularFileError(errno.EINVAL, "is not a regular file (a named pipe, device "
                                      "or socket)", str(path))
        if getattr(os, "O_NONBLOCK", 0):
            os.set_blocking(fd, True)  # a stream is then read as usual: waiting for its data
        return os.fdopen(fd, "rb"), info
    except BaseException:
        os.close(fd)
        raise


def dangling_link_note(path: str | os.PathLike[str]) -> str:
    """`` (a link to the missing TARGET)`` where ``path`` is a symbolic link to nothing (a
    dataset tree of links whose targets moved), else ``""``: what a "not found" message adds."""
    try:
        if os.path.islink(path) and not os.path.exists(path):
            return f" (a link to the missing {os.readlink(path)})"
    except OSError:
        pass
    return ""


def _is_standard_input(fd: int, info: os.stat_result) -> bool:
    """Whether ``fd`` (``info``: its fstat), just opened, is this process's standard input:
    the file of descriptor 0 (none where 0 was closed: the open may have taken it)."""
    if fd == 0:
        return False
    try:
        fd0 = os.fstat(0)
    except OSError:  # closed
        return False
    return (fd0.st_dev, fd0.st_ino, fd0.st_rdev) == (info.st_dev, info.st_ino, info.st_rdev)


def check_future_folder(folder: str | os.PathLike[str], what: str) -> None:
    """Fails early, before any work, when ``folder`` cannot become a folder this process
    creates and writes into (it is not created here).

    Args:
        folder: the folder, existing or not.
        what: how messages name it, e.g. ``"--out export/"``.

    Raises:
        TinyFacesError: one line naming ``what``: it is a file, a file stands where one of
            its parents should be, or the folder (else its nearest existing parent) is not
            writable.
    """
    path = Path(folder)  # as given: the caller writes there (no ~ expanded)
    if path.exists():
        if not path.is_dir():
            raise TinyFacesError(f"{what} exists and is not a folder; give a folder")
        probe = path
    else:
        probe = next(p for p in path.absolute().parents if p.exists())
        if not probe.is_dir():
            raise TinyFacesError(f"cannot create {what}: {probe} is a file, not a folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise TinyFacesError(f"cannot write into {probe} ({what}); give a writable folder")


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
#: and the recent work of another machine sharing the folder is left alone.
TEMP_PREFIX = ".tf-tmp-"
#: Age in seconds (24 h) after which a temporary of another host (``<host>`` not this
#: machine's) is removed as stale: whether its writer lives cannot be checked from here, and a
#: container gets a new host name each time it starts, so the leftovers of a killed run in a
#: volume would otherwise stay for ever. The age is that of the newest modification of the
#: entry (of a staging folder: of the folder or of a file directly in it); no export, build or
#: output write leaves its temporary unmodified for that long.
FOREIGN_TEMPORARY_AGE_S = 24 * 3600
#: This machine in temporary names: the first 8 hex digits of its host name's sha1.
HOST_TAG = hashlib.sha1(socket.gethostname().encode()).hexdigest()[:8]
#: ``.tf-tmp-<pid>[.<host>]-`` (groups: pid, host): names written before the host was
#: recorded have none.
_OWNER = re.escape(TEMP_PREFIX) + r"(\d+)(?:\.([0-9a-f]{8}))?-"
_TEMP_OWNER = re.compile(_OWNER)
#: What :func:`replace_folder` moves a folder aside to: ``.tf-tmp-<pid>.<host>-old-<8 random
#: characters>-<the folder's name>`` (group 3: that name), so that the cleanup can put a folder
#: back where a killed run left it aside (:func:`remove_stale_temporaries`).
_ASIDE_TAG = "old-"
_TEMP_ASIDE = re.compile(_OWNER + re.escape(_ASIDE_TAG) + r"[a-z0-9_]{8}-(.+)\Z", re.DOTALL)

#: Names of the temporaries this process made (:func:`_create_unique`) and has not yet renamed
#: or removed: an entry with this process's id is its work only if listed here (a restarted
#: container's process often has the id of the killed one, e.g. 1).
_MINE: dict[str, Path] = {}
_MINE_LOCK = threading.Lock()


def temporary_folder(exc: OSError) -> Path | None:
    """The folder of the file ``exc`` names where that is one of these hidden temporaries (an
    output or export being written), else None: a message then names the folder, which the
    user knows, not the temporary name."""
    if not isinstance(exc.filename, (str, bytes, os.PathLike)):  # None, or a descriptor
        return None
    name = Path(os.fsdecode(exc.filename))
    return name.parent if name.name.startswith(TEMP_PREFIX) else None


def _forget(path: Path) -> None:
    """Drops ``path`` from this process's temporaries (renamed or removed)."""
    with _MINE_LOCK:
        _MINE.pop(path.name, None)


def _is_mine(name: str) -> bool:
    """Whether this process made the temporary ``name`` and it still exists (entries whose
    folder removed them without :func:`discard_temporary` are dropped here)."""
    with _MINE_LOCK:
        for known, path in list(_MINE.items()):
            if not os.path.lexists(path):
                del _MINE[known]
        return name in _MINE


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
        with _MINE_LOCK:
            _MINE[path.name] = path
        return path
    raise FileExistsError(f"no free temporary name in {parent}")


def _new_file(path: Path) -> None:
    # mode 0666: the kernel applies the process's umask (or the folder's default ACL) as it
    # does for any new file, at the moment of writing
    os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY | getattr(os, "O_CLOEXEC", 0),
                     0o666))


def _new_folder(path: Path) -> None:
    os.mkdir(path, 0o777)  # the umask applies; a setgid parent passes its group and bit on


def replaced_entry(path: str | os.PathLike[str]) -> Path:
    """The directory entry that writing ``path`` (a rename over its name) replaces, its folder
    resolved as the system does (symbolic links, then ``..``); a link at ``path`` itself is
    the entry, not followed."""
    folder, name = os.path.split(path)
    if name in ("", ".", ".."):
        return Path(os.path.realpath(path))
    return Path(os.path.realpath(folder or ".")) / name


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
    finally:
        _forget(tmp)


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
    remove it (:func:`discard_temporary`) when the work fails. It gets a new folder's usual
    mode, the process's umask applied when it is made (not mkdtemp's 0700: an export folder
    others on shared storage, or a service's account, could not read).
    """
    return _create_unique(Path(parent), f"{_owner_prefix()}{tag}-", "", _new_folder)


def discard_temporary(path: str | os.PathLike[str]) -> None:
    """Removes a staging folder (:func:`staging_dir`) or temporary file of this process, if
    it is still there, and forgets it; errors are ignored."""
    path = Path(path)
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            path.unlink()
    _forget(path)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def _newest_change(entry: Path) -> float:
    """The newest modification time of ``entry`` and, for a folder, of what is directly in
    it (a staging folder being written); +inf where it cannot be read (judged recent)."""
    try:
        newest = entry.lstat().st_mtime
        if entry.is_dir() and not entry.is_symlink():
            with os.scandir(entry) as inside:
                for item in inside:
                    newest = max(newest, item.stat(follow_symlinks=False).st_mtime)
    except OSError:
        return float("inf")
    return newest


def _writer_gone(entry: Path, pid: int, host: str | None) -> bool:
    """Whether the process that made the temporary ``entry`` is gone (or cannot be told from
    here and the entry is older than :data:`FOREIGN_TEMPORARY_AGE_S`)."""
    if host not in (None, HOST_TAG):  # another machine, or this container before a restart
        return time.time() - _newest_change(entry) > FOREIGN_TEMPORARY_AGE_S
    if pid == os.getpid():  # this process's only if it made it: an earlier one had this id
        return not _is_mine(entry.name)
    return not _pid_alive(pid)


def remove_stale_temporaries(folder: str | os.PathLike[str]) -> list[Path]:
    """Removes the temporary files and staging folders that runs killed before they could
    clean up left directly in ``folder`` (their writer process is gone); returns them.

    Entries of live processes are kept, so concurrent runs are safe on one machine; an entry
    with this process's id is kept only if this process made it (a restarted container's
    process often gets the id of the killed one). Entries of other machines (another host in
    the name: a machine sharing the folder, or this container before it restarted with a new
    host name) are kept while recent, as this one cannot tell whether their writer lives, and
    removed once unmodified for :data:`FOREIGN_TEMPORARY_AGE_S` (24 h).

    A folder that :func:`replace_folder` had moved aside when its run was killed is put back
    under its name (with a logged warning) where that name is free, not removed: the kill fell
    between moving the old folder aside and the new one in. Nothing else is touched; a missing
    folder is no error.
    """
    removed: list[Path] = []
    try:
        entries = list(Path(folder).iterdir())
    except OSError:
        return removed
    for entry in entries:
        m = _TEMP_OWNER.match(entry.name)
        if m is None:
            continue
        pid, host = int(m.group(1)), m.group(2)
        # another machine's folder left aside is put back at once where its name is free: a
        # live writer is between two renames for an instant only
        if host not in (None, HOST_TAG) and _restored(entry):
            continue
        if not _writer_gone(entry, pid, host) or _restored(entry):
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


def _restored(entry: Path) -> bool:
    """Puts a folder that :func:`replace_folder` moved aside back under its name when that
    name is free; whether it is to stay out of the removal (put back, or kept as putting it
    back failed)."""
    m = _TEMP_ASIDE.match(entry.name)
    if m is None:
        return False
    target = entry.with_name(m.group(3))
    if os.path.lexists(target):  # the new folder is in place: the old one is what to remove
        return False
    try:
        os.rename(entry, target)
    except OSError as exc:
        log.warning("cannot put %s back to %s, where an interrupted run had moved it aside: %s",
                    entry, target, exc.strerror or exc)
        return True  # kept: it may be the only copy of that folder
    log.warning("restored %s: an interrupted run had moved it aside (to %s) to replace it",
                target, entry.name)
    return True


def _mount_points() -> set[str]:
    """The mount points of this process (Linux: ``/proc/self/mountinfo``, which also lists
    the bind mounts :func:`os.path.ismount` cannot see); empty where it cannot be read."""
    try:
        with open("/proc/self/mountinfo", "rb") as f:
            lines = f.read().splitlines()
    except OSError:
        return set()
    points = set()
    for line in lines:
        fields = line.split()
        if len(fields) > 4:  # octal escapes: \040 is a space
            raw = re.sub(rb"\\([0-7]{3})", lambda m: bytes([int(m.group(1), 8)]), fields[4])
            points.add(os.fsdecode(raw))
    return points


def staging_inside_reason(target: str | os.PathLike[str]) -> str | None:
    """Why a new content for the existing folder ``target`` cannot be built beside it and
    swapped in (:func:`staging_dir` in its parent, then :func:`replace_folder`); None where it
    can (also when ``target`` is no folder).

    The reasons: ``target`` is a mount point (a Docker or Kubernetes volume: renaming it fails
    with EBUSY), it is on another file system than its parent (a rename across them fails
    with EXDEV), or its parent is not writable (a read-only root file system around a
    volume). Such a folder's new content is built in a staging folder inside it and its files
    are moved in one by one.
    """
    if not Path(target).is_dir():
        return None
    real = Path(os.path.realpath(target))
    parent = real.parent
    if real == parent or os.path.ismount(real) or str(real) in _mount_points():
        return "it is a mount point"
    try:
        if real.stat().st_dev != parent.stat().st_dev:
            return f"it is on another file system than {parent}"
    except OSError:
        pass
    if not os.access(parent, os.W_OK | os.X_OK):
        return f"{parent} is not writable"
    return None


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
    (a hidden name beside it, ``.tf-tmp-<pid>.<host>-old-XXXXXXXX-<target's name>``), then
    ``staging`` is renamed into place and the old folder is deleted; if the second rename
    fails the old folder is put back. At every instant ``target`` is the old folder, the new
    one, or (for the moment between two renames) absent: never a mix of both. A run killed in
    that moment leaves ``target`` missing; the next :func:`remove_stale_temporaries` of its
    folder puts the old one back. Both must be on one file system (stage beside the target),
    and ``target`` must not be a mount point (it cannot be renamed). A symbolic link at
    ``target`` is replaced itself (the folder it points to is kept); to replace that folder,
    pass its real path.
    """
    staging, target = Path(staging), Path(target)
    if not target.exists() and not target.is_symlink():
        os.replace(staging, target)
        _forget(staging)
        return
    prefix = f"{_owner_prefix()}{_ASIDE_TAG}"
    try:
        aside = _create_unique(target.parent, prefix, f"-{target.name}", _new_folder)
    except OSError as exc:  # a name near the length limit: an aside that is not restored
        if exc.errno != errno.ENAMETOOLONG:
            raise
        aside = _create_unique(target.parent, prefix, "", _new_folder)
    try:
        aside.rmdir()  # only its unique name is wanted
        os.replace(target, aside)
        try:
            os.replace(staging, target)
        except BaseException:
            os.replace(aside, target)
            raise
        _forget(staging)
        if aside.is_symlink():  # rmtree refuses a link (and ignore_errors left it behind)
            aside.unlink()
        else:
            shutil.rmtree(aside, ignore_errors=True)
    finally:  # what is left of it (a failed put-back) is the cleanup's to restore
        _forget(aside)


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
            elif not os.path.lexists(folder):  # never made, but folders above it were
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


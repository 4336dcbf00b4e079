"""Writing the store safely: atomic files and transactions, locks, and interruptions.

Every file is written under a temporary name in its final directory and renamed into place, so a
crash or a full disk leaves no half-written file.

Interruptions and other processes:

- A temporary name is ``.<final name>.<pid>.<random>.tmp``. It is removed when the write fails or
  is interrupted; one left by a process that was killed outright (its pid no longer runs) is
  removed the next time that directory, or the store, is written (:func:`remove_stale`).
- The rename that commits a write runs :func:`uninterrupted`: Ctrl-C or SIGTERM arriving then is
  held back until the rename is done, so the store is always as it was before or as after.
  :func:`transaction` commits several files together (all 20 vectors of ``export-vector --all``).
- :func:`lock` makes a write exclusive (one model's pull, one export): a second process waits for
  the first and then finds its finished result.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import signal
import tempfile
import threading
import time
from pathlib import Path

from .errors import StoreError
from .store import home, in_store, locks_dir

def describe_os_error(exc: OSError, path: Path | str) -> str:
    """One line that says why the store could not be written and what to do (for a path outside
    the store, such as an ``-o`` target, what to do about that path instead)."""
    if not in_store(Path(path)):
        fix = {errno.ENOSPC: "free some space", errno.EDQUOT: "free some space",
               errno.EROFS: "choose a writable place", errno.EACCES: "choose a writable place",
               errno.EPERM: "choose a writable place"}.get(exc.errno, "check the path")
        return f"cannot write {path} ({exc.strerror or exc}); {fix} or give another output path"
    if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return (f"the store is full: could not write {path} ({exc.strerror}); "
                f"free some space or set EDGEEMO_HOME to a directory with room")
    if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return (f"the store is read-only: cannot write {path} ({exc.strerror}); "
                f"set EDGEEMO_HOME to a writable directory")
    if exc.errno in (errno.ENOTDIR, errno.EEXIST, errno.ENOENT):
        return (f"the store path is not usable: {path} ({exc.strerror}); "
                f"set EDGEEMO_HOME to a directory")
    return f"cannot write to the store at {path}: {exc.strerror or exc}"


@contextlib.contextmanager
def store_errors(path: Path | str):
    """Turn OS errors raised while writing to the store into a one-line StoreError."""
    try:
        yield
    except OSError as exc:
        raise StoreError(describe_os_error(exc, path)) from exc


# --- interruptions: Ctrl-C and SIGTERM wait for a commit to finish ------------------------------

class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so that every ``finally`` (and temporary-file cleanup) runs."""


_held = 0                 # how many uninterrupted() blocks the main thread is in
_pending: int | None = None   # a signal that arrived inside one, raised when the last one ends


def interrupt(signum: int) -> None:
    """Raise what ``signum`` means here: KeyboardInterrupt for SIGINT, Terminated for SIGTERM."""
    if signum == signal.SIGTERM:
        raise Terminated()
    raise KeyboardInterrupt()


def on_signal(signum, frame) -> None:
    """The SIGINT/SIGTERM handler: raise at once, or after the commit in progress."""
    global _pending
    if _held:
        _pending = signum
        return
    interrupt(signum)


@contextlib.contextmanager
def signals_handled():
    """Within the block, SIGINT and SIGTERM raise KeyboardInterrupt / :class:`Terminated` (held
    back during a commit); the previous handlers come back afterwards. The CLI runs in one."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


@contextlib.contextmanager
def uninterrupted():
    """Hold Ctrl-C and SIGTERM back until the block ends (a few renames, never slow work).

    Works when :func:`signals_handled` is active (the CLI); in a library caller's main thread,
    Ctrl-C under Python's default handler is held back too.
    """
    global _held, _pending
    main = threading.current_thread() is threading.main_thread()
    swapped = main and signal.getsignal(signal.SIGINT) is signal.default_int_handler
    if swapped:
        signal.signal(signal.SIGINT, on_signal)
    _held += main
    try:
        yield
    finally:
        _held -= main
        if swapped:
            signal.signal(signal.SIGINT, signal.default_int_handler)
        if main and not _held and _pending is not None:
            signum, _pending = _pending, None
            interrupt(signum)


# --- temporary names, and removing those a killed process left -----------------------------------

TEMP = re.compile(r"^\..+?\.(?:(\d+)\.)?[a-z0-9_]{8}\.tmp$")   # .<name>.<pid>.<random>.tmp
LEGACY_AGE = 3600         # seconds: a temporary name without a pid is stale after this long
_swept: set[Path] = set()  # stores swept by this process


def is_temporary(name: str) -> bool:
    """Whether a file or directory name is one of the store's temporary names."""
    return TEMP.match(name) is not None


def temp_prefix(final: Path) -> str:
    return f".{final.name}.{os.getpid()}."


def running(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:           # exists, owned by someone else
        return True
    return True


def remove_stale(directory: Path) -> None:
    """Remove the temporary files and directories in ``directory`` whose process is gone."""
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return
    for entry in entries:
        found = TEMP.match(entry.name)
        if not found:
            continue
        try:
            if found.group(1):
                stale = not running(int(found.group(1)))
            else:
                stale = time.time() - entry.stat(follow_symlinks=False).st_mtime > LEGACY_AGE
            if not stale:
                continue
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path, ignore_errors=True)
            else:
                os.unlink(entry.path)
        except OSError:
            pass              # another process removed it first, or it is not ours to remove


def sweep(depth: int = 3) -> None:
    """Remove stale temporary names anywhere in the store (once per process)."""
    root = home()
    if root in _swept:
        return
    _swept.add(root)
    level = [root]
    for _ in range(depth + 1):
        below = []
        for directory in level:
            remove_stale(directory)
            try:
                below += [Path(e.path) for e in os.scandir(directory)
                          if e.is_dir(follow_symlinks=False) and not is_temporary(e.name)]
            except OSError:
                pass
        level = below


def _make_temp(final: Path, directory: bool) -> Path:
    prefix = temp_prefix(final)
    if directory:
        tmp = Path(tempfile.mkdtemp(prefix=prefix, suffix=".tmp", dir=final.parent))
        os.chmod(tmp, 0o777 & ~current_umask())
    else:
        fd, name = tempfile.mkstemp(prefix=prefix, suffix=".tmp", dir=final.parent)
        os.close(fd)
        tmp = Path(name)
        os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp makes 0600; files here are shared
    return tmp


def _remove(tmp: Path | None) -> None:
    if tmp is None:
        return
    if tmp.is_dir() and not tmp.is_symlink():
        shutil.rmtree(tmp, ignore_errors=True)
    elif tmp.exists() or tmp.is_symlink():
        tmp.unlink()


def _commit(tmp: Path, final: Path, directory: bool) -> None:
    """Rename ``tmp`` onto ``final`` (a directory: the old one is moved aside, then removed)."""
    old = None
    if directory and final.exists():
        old = Path(tempfile.mkdtemp(prefix=temp_prefix(final), suffix=".tmp", dir=final.parent))
        os.replace(final, old / final.name)
    os.replace(tmp, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def temporary_dir(beside: Path | str):
    """A scratch directory with a temporary name beside ``beside`` (a download's wheels), removed
    when the block ends, however it ends."""
    beside = Path(beside)
    tmp = None
    try:
        with store_errors(beside), uninterrupted():
            beside.parent.mkdir(parents=True, exist_ok=True)
            remove_stale(beside.parent)
            tmp = _make_temp(beside, directory=True)
        yield tmp
    finally:
        with uninterrupted():
            _remove(tmp)


_local = threading.local()   # .writes: the open transaction's pending renames, or None


@contextlib.contextmanager
def atomic_path(final: Path | str, *, directory: bool = False):
    """Yield a temporary path beside ``final``; rename it onto ``final`` if the block succeeds.

    On any error or interruption the temporary file or directory is removed, so ``final`` is
    either the complete old content or the complete new one. ``directory=True`` yields a fresh
    empty directory. Inside :func:`transaction` the rename waits for the transaction's end.
    """
    final = Path(final)
    tmp = None
    try:
        with store_errors(final), uninterrupted():
            final.parent.mkdir(parents=True, exist_ok=True)
            if in_store(final):
                sweep()
            remove_stale(final.parent)
            tmp = _make_temp(final, directory)
        with store_errors(final):
            yield tmp
            writes = getattr(_local, "writes", None)
            with uninterrupted():
                if writes is not None:
                    writes.append((tmp, final, directory))
                    tmp = None           # the transaction owns it now
                else:
                    _commit(tmp, final, directory)
    finally:
        with uninterrupted():
            _remove(tmp)


@contextlib.contextmanager
def transaction():
    """Commit every :func:`atomic_path` write in the block together, or none of them.

    The files are written under temporary names as usual; when the block succeeds they are all
    renamed into place at once (Ctrl-C and SIGTERM held back meanwhile), under the store's commit
    lock if any is in the store, so two processes' sets are never mixed.
    """
    if getattr(_local, "writes", None) is not None:     # nested: the outer one commits
        yield
        return
    writes = []
    try:
        _local.writes = writes
        yield
        guard = lock("commit") if any(in_store(final) for _, final, _ in writes) \
            else contextlib.nullcontext()
        with guard, store_errors(writes[0][1] if writes else home()), uninterrupted():
            while writes:
                tmp, final, directory = writes[0]
                _commit(tmp, final, directory)
                writes.pop(0)
    finally:                             # interrupted or failed: nothing of the set is kept
        _local.writes = None
        with uninterrupted():
            for tmp, _, _ in writes:
                _remove(tmp)


# --- locks: one process at a time writes one thing -----------------------------------------------

@contextlib.contextmanager
def lock(name: str, *, what: str | None = None, say=None):
    """Hold the store-wide lock ``name`` (``model-<card>``, ``export-<key>-<precision>``).

    If another edgeemo process holds it, say so (``say(message)``) and wait until it is done;
    the caller then checks again for the result that process made.
    """
    from filelock import FileLock, Timeout

    path = locks_dir() / f"{name}.lock"
    with store_errors(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        held = FileLock(path)
        try:
            held.acquire(timeout=0)
        except Timeout:
            if say is not None:
                say(f"waiting for another edgeemo process to finish {what or name}")
            held.acquire()
    try:
        yield
    finally:
        held.release()


def require_free(directory: Path, nbytes: int) -> None:
    """Fail early, with one line, when the store's disk cannot hold ``nbytes`` more."""
    with store_errors(directory):
        directory.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(directory).free
    if free < nbytes:
        raise StoreError(f"the store is full: {directory} has {free / 1e6:.0f} MB free and this "
                         f"needs {nbytes / 1e6:.0f} MB; free some space or set EDGEEMO_HOME to a "
                         f"directory with room")


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_bytes(final: Path | str, data: bytes) -> Path:
    with atomic_path(final) as tmp:
        tmp.write_bytes(data)
    return Path(final)


def write_text(final: Path | str, text: str) -> Path:
    return write_bytes(final, text.encode("utf-8"))

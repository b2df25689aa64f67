"""Outputs a team can share: atomic, umask-respecting, exclusive unless asked, locked when replaced.

One module for every file and folder the product writes (Parquet files, run folders, index
folders, reports, models):

* **Atomic.** A file is written under a temporary name in the same folder, fsynced and renamed
  into place; a folder is filled under a temporary name and renamed into place. A crash leaves
  the old output or the new one, never half of one. Temporary names are hidden
  (``.<name>.<pid>-<token>.tmp``) and swept away by the next writer of the same output once
  their process is gone.
* **Modes follow the umask.** Temporary files are created with mode 0666 and folders with 0777
  minus the umask (0644 / 0755 under umask 022, 0600 / 0700 under 077), never the 0600 / 0700
  of ``mkstemp`` / ``mkdtemp``.
* **Exclusive unless asked.** ``overwrite=False`` refuses an existing output with a one-line
  ``OutputExistsError``; the final step is itself exclusive (a hard link for files, a check
  under the output's lock for folders), so two writers racing for one name cannot both win.
* **Locked when replaced.** ``output_lock(path)`` is an advisory ``fcntl.flock`` on a hidden
  lock file beside the output (``.<name>.lock``, removed on release). Replacing a folder,
  rewriting a file in place (``tune`` updating a manifest) and long writers (``train --out``)
  hold it, so that check-then-write sequences of two processes never interleave.

An empty folder at the target counts as no output (``mkdir out && retrieve evaluate --out out``).
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import secrets
import shutil
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

from retrieval.common.errors import OutputError, OutputExistsError, OutputLockedError

FILE_MODE = 0o666  # minus the umask
DIR_MODE = 0o777  # minus the umask
LOCK_WAIT_SECONDS = 120.0  # how long a writer waits for another one to finish with the same output
_POLL_SECONDS = 0.02


# ------------------------------------------------------------------------------------- names


def _token() -> str:
    return f"{os.getpid()}-{secrets.token_hex(4)}"


def temporary_name(target: Path, suffix: str = "tmp") -> Path:
    """A fresh hidden name beside ``target`` that records the writing process: ``.<name>.<pid>-<hex>.<suffix>``."""
    return target.with_name(f".{target.name}.{_token()}.{suffix}")


def lock_path(target: Path | str) -> Path:
    target = Path(target)
    return target.with_name(f".{target.name}.lock")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    return True


def sweep_stale(target: Path) -> list[Path]:
    """Remove the temporary and old copies of ``target`` left by processes that no longer run."""
    removed = []
    prefix = f".{target.name}."
    if not target.parent.is_dir():
        return removed
    for entry in target.parent.iterdir():
        name = entry.name
        if not name.startswith(prefix) or not name.endswith((".tmp", ".old")):
            continue
        token = name[len(prefix):].rsplit(".", 1)[0]
        pid_text = token.split("-", 1)[0]
        if not pid_text.isdigit() or "." in token or _pid_alive(int(pid_text)):
            continue
        _remove(entry)
        removed.append(entry)
    return removed


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        try:
            path.unlink()
        except FileNotFoundError:
            pass


# ------------------------------------------------------------------------------------- syncing


def _fsync_path(path: Path, directory: bool = False) -> None:
    flags = os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if directory else 0)
    try:
        fd = os.open(path, flags)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems cannot fsync a folder; the rename is still atomic
    finally:
        os.close(fd)


def _fsync_tree(folder: Path) -> None:
    for root, _dirs, files in os.walk(folder):
        for name in files:
            _fsync_path(Path(root) / name)
        _fsync_path(Path(root), directory=True)


# ------------------------------------------------------------------------------------- checks


def is_empty_folder(path: Path) -> bool:
    return path.is_dir() and not path.is_symlink() and not any(path.iterdir())


def check_output(target: Path | str, *, overwrite: bool, folder: bool = False,
                 replaceable: Callable[[Path], str | None] | None = None) -> Path:
    """Fail early, before any work, when ``target`` cannot be written as asked.

    ``folder``: the output is a folder (else a file). ``replaceable(target)`` returns why an
    existing output must not be replaced even with ``overwrite`` (e.g. "is not a run folder").
    A folder is checked under its lock: another writer replacing it moves the old one aside and
    renames the new one in, and a check between those two renames must not see a half state.
    """
    target = Path(target)
    if folder and (target.exists() or target.is_symlink()):
        with output_lock(target):
            return _check_output(target, overwrite=overwrite, folder=True, replaceable=replaceable)
    return _check_output(target, overwrite=overwrite, folder=folder, replaceable=replaceable)


def _check_output(target: Path, *, overwrite: bool, folder: bool,
                  replaceable: Callable[[Path], str | None] | None) -> Path:
    if not (target.exists() or target.is_symlink()):
        return target
    if folder and not target.is_dir():
        raise OutputError(f"{target}: exists and is not a folder; choose another output")
    if not folder and target.is_dir():
        raise OutputError(f"{target}: is a folder; choose a file name")
    if folder and is_empty_folder(target):
        return target
    reason = replaceable(target) if replaceable is not None else None
    if reason:
        raise OutputError(f"{target}: {reason}; choose another output")
    if not overwrite:
        raise OutputExistsError(f"{target}: already exists; choose another output or pass --overwrite to replace it")
    return target


# ------------------------------------------------------------------------------------- the lock


@contextmanager
def output_lock(target: Path | str, *, wait: float | None = LOCK_WAIT_SECONDS) -> Iterator[Path]:
    """Hold the advisory lock of ``target`` (``.<name>.lock`` beside it) for the ``with`` block.

    ``wait``: seconds to wait for another holder (0: fail at once; None: wait for ever). Fails
    with ``OutputLockedError`` naming the output. The lock file is removed on release; a holder
    checks after locking that the file it locked is still the one at the path, so removal
    never lets two processes in.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    path = lock_path(target)
    deadline = None if wait is None else time.monotonic() + wait
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, FILE_MODE)
        if _try_lock(fd, deadline):
            if _same_file(fd, path):
                break
            os.close(fd)  # the holder before us removed it: lock the new one
            continue
        os.close(fd)
        raise OutputLockedError(
            f"{target}: another process is writing it (lock {path.name}); try again when it has finished"
        )
    try:
        os.write(fd, f"{os.getpid()}\n".encode())
        yield path
    finally:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        os.close(fd)  # releases the lock


def _try_lock(fd: int, deadline: float | None) -> bool:
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
        if deadline is not None and time.monotonic() >= deadline:
            return False
        time.sleep(_POLL_SECONDS)


def _same_file(fd: int, path: Path) -> bool:
    try:
        on_disk = os.stat(path)
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (held.st_dev, held.st_ino) == (on_disk.st_dev, on_disk.st_ino)


# ------------------------------------------------------------------------------------- files


def new_temporary_file(target: Path) -> Path:
    """Create an empty temporary file beside ``target`` with the umask's mode; returns its path."""
    target.parent.mkdir(parents=True, exist_ok=True)
    while True:
        path = temporary_name(target)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
        except FileExistsError:
            continue
        os.close(fd)
        return path


@contextmanager
def atomic_file(target: Path | str, *, overwrite: bool) -> Iterator[Path]:
    """Yield a temporary path beside ``target`` to write; on success it is fsynced and published.

    The temporary file exists (empty, umask mode) so that writers which open a path keep its
    mode. On an exception it is removed and ``target`` is untouched.
    """
    target = Path(target)
    check_output(target, overwrite=overwrite)
    sweep_stale(target)
    temporary = new_temporary_file(target)
    try:
        yield temporary
        publish_file(temporary, target, overwrite=overwrite)
    except BaseException:
        _remove(temporary)
        raise


def publish_file(temporary: Path, target: Path, *, overwrite: bool) -> Path:
    """Fsync a complete temporary file and rename it onto ``target`` (exclusively unless ``overwrite``)."""
    _fsync_path(temporary)
    if overwrite:
        if target.is_dir():
            raise OutputError(f"{target}: is a folder; choose a file name")
        os.replace(temporary, target)
    else:
        _link_exclusively(temporary, target)
    _fsync_path(target.parent, directory=True)
    return target


def _link_exclusively(temporary: Path, target: Path) -> None:
    try:
        os.link(temporary, target)
    except FileExistsError:
        raise OutputExistsError(
            f"{target}: already exists; choose another output or pass --overwrite to replace it"
        ) from None
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK):
            raise
        with output_lock(target):  # a file system without hard links: check and rename under the lock
            check_output(target, overwrite=False)
            os.replace(temporary, target)
        return
    os.unlink(temporary)


def write_bytes(target: Path | str, data: bytes, *, overwrite: bool) -> Path:
    target = Path(target)
    with atomic_file(target, overwrite=overwrite) as temporary:
        with open(temporary, "wb") as stream:
            stream.write(data)
    return target


def write_text(target: Path | str, text: str, *, overwrite: bool) -> Path:
    return write_bytes(target, text.encode("utf-8"), overwrite=overwrite)


def write_json(target: Path | str, obj: Any, *, overwrite: bool) -> Path:
    """``obj`` as indented JSON (strict: NaN is an error; make it JSON-safe first)."""
    return write_text(target, json.dumps(obj, indent=2, allow_nan=False) + "\n", overwrite=overwrite)


# ------------------------------------------------------------------------------------- folders


def new_staging_folder(target: Path) -> Path:
    """Create an empty hidden folder beside ``target`` with the umask's mode."""
    target.parent.mkdir(parents=True, exist_ok=True)
    while True:
        path = temporary_name(target)
        try:
            os.mkdir(path, DIR_MODE)
        except FileExistsError:
            continue
        return path


@contextmanager
def staging_folder(target: Path | str, *, overwrite: bool,
                   replaceable: Callable[[Path], str | None] | None = None, durable: bool = True) -> Iterator[Path]:
    """Yield a new empty folder to fill; on success its files are fsynced and it becomes ``target``.

    ``replaceable``: see ``check_output`` (checked again under the lock when publishing).
    ``durable=False`` skips the fsync of every file (still all-or-nothing when renamed): for many
    small files derived from others and written again on demand (the sample's images).
    On an exception the staging folder is removed and ``target`` is untouched.
    """
    target = Path(target)
    check_output(target, overwrite=overwrite, folder=True, replaceable=replaceable)
    staging = new_staging_folder(target)
    try:
        yield staging
        if durable:
            _fsync_tree(staging)
        publish_folder(staging, target, overwrite=overwrite, replaceable=replaceable)
    except BaseException:
        _remove(staging)
        raise


def publish_folder(staging: Path, target: Path, *, overwrite: bool,
                   replaceable: Callable[[Path], str | None] | None = None) -> Path:
    """Rename a complete staging folder onto ``target`` under the output's lock.

    An existing output is moved aside (``.<name>.<pid>-<hex>.old``), the new one renamed in and
    the old one removed, all under the lock, so concurrent writers replace it one at a time.
    """
    with output_lock(target):
        sweep_stale(target)
        _check_output(target, overwrite=overwrite, folder=True, replaceable=replaceable)
        if is_empty_folder(target):
            os.rmdir(target)
        if target.exists():
            old = temporary_name(target, "old")
            os.rename(target, old)
            os.rename(staging, target)
            _remove(old)
        else:
            os.rename(staging, target)
    _fsync_path(target.parent, directory=True)
    return target



def move_folder(source: Path | str, target: Path | str) -> Path:
    """Rename a complete folder to ``target`` (same file system), under both paths' locks.

    For outputs that change place, not content (a run moved to the trash and back): a writer
    replacing either folder holds the same lock, and an existing ``target`` is refused.
    """
    source, target = Path(source), Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    with output_lock(source), output_lock(target):
        if not source.is_dir():
            raise OutputError(f"{source}: no such folder")
        if target.exists() or target.is_symlink():
            raise OutputExistsError(f"{target}: already exists; move or remove it first")
        os.rename(source, target)
    _fsync_path(target.parent, directory=True)
    return target

"""Atomic file writes: a crash, kill or Ctrl-C mid-write leaves the previous file whole.

    write_atomic(path, lambda f: np.savez(f, **arrays))     # f: a binary file to write

The bytes go to a new file ``.<name>.<random>.tmp`` beside ``path`` (the same directory, so
the rename stays within one file system), which is flushed and fsynced, then renamed over
``path``; the directory is fsynced last, so the rename itself survives a power cut. On any
error, KeyboardInterrupt included, the temporary file is removed and the error propagates:
``path`` keeps what it held before, or stays absent. Only SIGKILL or a power cut mid-write
can leave a temporary file behind, never a half file under the real name.

``cannot_save`` words the OSError for users, naming the file, the cause and the fix.
"""
from __future__ import annotations

import errno
import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO


class NoTempFile(OSError):
    """The temporary file could not be created beside the target, so nothing was written."""


def write_atomic(path: str | os.PathLike, write: Callable[[BinaryIO], None]) -> None:
    """Replace ``path`` with what ``write(f)`` writes to ``f``, all or nothing.

    Raises IsADirectoryError if ``path`` is a directory and NoTempFile if its directory
    refuses a new file (both before ``write`` runs), else whatever ``write``, the flush or
    the rename raises."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(path))
    tmp, fd = _create_temp(path)
    try:
        with open(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _sync_directory(path.parent)


def _create_temp(path: Path) -> tuple[Path, int]:
    """A new, empty file beside ``path`` and its descriptor. ``os.open`` with mode 0o666 gives
    it the permissions a plain ``open`` would (mkstemp's are 0o600, which would hide the saved
    file from everyone else)."""
    while True:
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        try:
            return tmp, os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            continue
        except OSError as e:
            raise NoTempFile(e.errno, e.strerror, str(path.parent)) from e


def _sync_directory(folder: Path) -> None:
    """fsync ``folder`` so the rename in it is durable; best effort, as some file systems
    refuse to open or sync a directory and the file itself is already whole."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def cannot_save(what: str, path: str | os.PathLike, error: OSError, example: str) -> str:
    """The message for a failed ``write_atomic`` of ``what`` (say "weights") to ``path``.

    ``example`` is the file name suggested when ``path`` is a directory."""
    path = Path(path)
    return f"cannot save {what} to '{path}': {_why(path, error, example)}"


def _why(path: Path, error: OSError, example: str) -> str:
    if path.is_dir():
        return f"it is a directory; expected a file path such as '{path / example}'."
    if isinstance(error, NoTempFile) and error.errno == errno.ENOENT:
        return f"its directory '{path.parent}' does not exist. Create it first."
    if isinstance(error, NoTempFile) and error.errno == errno.ENOTDIR:
        return f"'{path.parent}' is not a directory (it, or a folder above it, is a file)."
    if isinstance(error, NoTempFile):
        return f"cannot create a file in '{path.parent}': {error.strerror or error}."
    return f"{error.strerror or error}; the file there before, if any, is unchanged."

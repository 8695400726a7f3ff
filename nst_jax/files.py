"""The one atomic file writer: every file the package writes goes through :func:`atomic_write`.

A write goes to a new hidden file in the destination's folder, is flushed and synced, and only then
renamed over the destination (a rename within one folder is atomic on POSIX and Windows). Readers
never see a partial file, and a failed or interrupted write leaves whatever was at the destination
byte for byte as it was, with no temporary file behind. This module is the only place in the
package that renames files.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from nst_jax.errors import OutputPathError

__all__ = ["atomic_write", "atomic_write_bytes", "atomic_write_text", "move_aside", "probe_write"]

_MODES = ("wb", "w")


def _create_temp(path: Path) -> tuple[int, Path]:
    """Creates a new hidden file next to ``path``; returns its descriptor and path.

    Like ``tempfile.mkstemp`` (O_EXCL: the name is ours alone, retried on a clash) but created with
    mode 0o666 so that the umask decides, as for any new file: mkstemp's 0600 would make every
    output image unreadable to other users once renamed into place.
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    while True:
        temp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
        try:
            return os.open(temp, flags, 0o666), temp
        except FileExistsError:
            continue


def probe_write(path: str | os.PathLike) -> None:
    """Creates and removes a temporary file next to ``path``: the only reliable test of write access.

    Permission bits say nothing about read-only mounts or ACLs, so long jobs call this before
    starting, to fail in seconds rather than after the work.

    Raises:
      OSError: the folder refuses new files (the caller words the message for its context).
    """
    fd, temp = _create_temp(Path(path))
    os.close(fd)
    temp.unlink(missing_ok=True)


def _reason(err: OSError) -> str:
    text = err.strerror or " ".join(str(err).split()) or type(err).__name__
    return text[:200]


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO]:
    """Opens a temporary file next to ``path`` and renames it over ``path`` when the block succeeds.

    Usage::

        with atomic_write("out.png") as f:
            image.save(f, format="PNG")

    On any exception inside the block (including KeyboardInterrupt) the temporary file is removed
    and the exception propagates; ``path`` is untouched.

    Args:
      path: the destination file; its folder must exist.
      mode: ``"wb"`` (binary) or ``"w"`` (text, UTF-8).

    Raises:
      OutputPathError: creating, writing, syncing or renaming failed with an OSError (disk full,
        permission denied, a folder at ``path``...); the message names ``path`` and the reason.
      ValueError: ``mode`` is not ``"wb"`` or ``"w"``.
    """
    if mode not in _MODES:
        raise ValueError(f"atomic_write mode must be one of {', '.join(_MODES)}, got {mode!r}")
    path = Path(path)
    temp = None
    try:
        fd, temp = _create_temp(path)
        text = {"encoding": "utf-8"} if mode == "w" else {}
        with os.fdopen(fd, mode, **text) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(temp, path)
        temp = None
    except OSError as err:
        raise OutputPathError(f"could not write {path} ({_reason(err)}); check free disk space and "
                              "permissions, or choose another path") from None
    finally:
        if temp is not None:
            temp.unlink(missing_ok=True)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Writes ``data`` to ``path`` atomically (see :func:`atomic_write`); returns ``path`` as a Path."""
    with atomic_write(path, "wb") as f:
        f.write(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Writes ``text`` as UTF-8 to ``path`` atomically (see :func:`atomic_write`); returns ``path``."""
    with atomic_write(path, "w") as f:
        f.write(text)
    return Path(path)


def move_aside(source: str | os.PathLike, dest: str | os.PathLike) -> Path:
    """Renames a file or folder to ``dest`` in the same file system, replacing what was there.

    For keeping damaged files as evidence under another name; returns ``dest`` as a Path.

    Raises:
      OSError: the rename failed (``source`` missing, another file system...).
    """
    dest = Path(dest)
    if dest.is_dir() and not dest.is_symlink():
        shutil.rmtree(dest)
    os.replace(source, dest)
    return dest

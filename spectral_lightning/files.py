"""Every file the project writes goes through :func:`atomic_write`: a temporary file in the destination
folder, flushed and fsynced, then renamed over the target. The path holds either the old or the new content,
never a partial file, and a failed write leaves no temporary file behind."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO


class PendingFile:
    """A binary file written under a temporary name in its destination folder: :meth:`commit` flushes, fsyncs and
    renames it into place, :meth:`discard` removes it. For files written bit by bit (token shards) or several that
    must appear together; :func:`atomic_write` is the one-call form."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, self.tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.", suffix=".tmp")
        os.chmod(self.tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; give the usual permissions of a new file
        self.file: BinaryIO = os.fdopen(fd, "wb")

    def commit(self) -> None:
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()
        os.replace(self.tmp, self.path)

    def discard(self) -> None:
        self.file.close()
        Path(self.tmp).unlink(missing_ok=True)


def atomic_write(path: str | Path, write: Callable[[BinaryIO], object]) -> None:
    """Call ``write(f)`` on a temporary binary file next to ``path``, then rename it to ``path``."""
    pending = PendingFile(path)
    try:
        write(pending.file)
        pending.commit()
    except BaseException:
        pending.discard()
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_write`)."""
    atomic_write(path, lambda f: f.write(data))

"""One writer per output: an exclusive, non-blocking ``flock`` on the output itself.

Two runs into one output would interleave their lines (duplicate plan ids, manifest lines
written twice) or, with ``--force``, clear what the other is still writing. Each command that
writes an output takes this lock *before* it reads, clears or writes anything there, and
holds it to the end. The lock is taken on the output folder (or file) itself, so it leaves no
lock file behind, and the kernel releases it when the process dies, SIGKILL included: a
killed run never blocks its rerun.
"""

from __future__ import annotations

import os
from pathlib import Path

from acp.errors import OutputMismatchError

__all__ = ["OutputLock"]


class OutputLock:
    """``with OutputLock(path): ...`` holds ``path`` (an existing folder, or a file, created
    empty if missing) against every other ``OutputLock`` on it; a second holder gets
    ``OutputMismatchError`` at once instead of waiting."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._fd = -1

    @property
    def held(self) -> bool:
        return self._fd >= 0

    def acquire(self) -> OutputLock:
        if self.held:
            return self
        try:
            import fcntl
        except ImportError:  # pragma: no cover - no flock on Windows: one writer is assumed
            return self
        if self.path.is_dir():
            fd = os.open(self.path, os.O_RDONLY)
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise OutputMismatchError(
                f"{self.path}: another acp process is writing it; wait for that run to end "
                "(or stop it), then rerun"
            ) from None
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)  # closing the descriptor releases the lock
            self._fd = -1

    def __enter__(self) -> OutputLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()

"""Atomic file writes: readers see the old file or the new one, never a partial one.

Every whole-file output of acp (COCO json, images, settings, reports) goes through here: the
content is written to a temporary sibling, flushed to disk and renamed over the target.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TextIO

# mkstemp creates files readable by their owner only; a dataset must be readable by whoever
# the umask allows (a data loader in a container often runs as another user).
_UMASK = os.umask(0)
os.umask(_UMASK)


def _temporary(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)
    finally:
        os.close(fd)
    return Path(tmp)


@contextmanager
def atomic_text_file(path: Path) -> Iterator[TextIO]:
    """Write text to ``path`` through a temporary sibling, fsync it, then rename it over ``path``."""
    path = Path(path)
    tmp = _temporary(path)
    try:
        with open(tmp, "w", encoding="utf-8", newline="\n") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temporary path to write ``path``'s content to; renamed over ``path`` on success."""
    path = Path(path)
    tmp = _temporary(path)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_atomic(path: Path, data: bytes | str) -> None:
    """Write ``data`` (text is encoded as UTF-8) to ``path`` atomically, flushed to disk."""
    payload = data.encode("utf-8") if isinstance(data, str) else data
    with atomic_path(Path(path)) as tmp, open(tmp, "wb") as handle:
        handle.write(payload)
        handle.flush()
        os.fsync(handle.fileno())


def copy_atomic(source: Path, target: Path) -> None:
    with atomic_path(target) as tmp:
        shutil.copyfile(source, tmp)


def compact_json(value: Any) -> str:
    """One-line JSON, UTF-8 kept readable; NaN and infinity raise ``ValueError`` (not JSON)."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)

"""JSON Lines files that survive being killed: whole-line appends, atomic rewrites, resume.

A record is appended with one ``write`` on a file opened with ``O_APPEND``, so a line is either
there whole or, at worst after a kill mid-write, a torn tail without its newline.
``JsonlWriter`` cuts such a tail off before appending, so a resumed run never leaves a torn or
duplicated line behind.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pydantic import BaseModel


def dumps(record: BaseModel | dict[str, Any]) -> str:
    if isinstance(record, BaseModel):
        return record.model_dump_json(exclude_none=False)
    return json.dumps(record, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def write_atomic(path: Path, data: bytes | str) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = data.encode("utf-8") if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def iter_lines(path: Path) -> Iterator[tuple[int, str]]:
    """``(line_number, text)`` of every non-blank, newline-terminated line (1-based numbers).

    A final line without its newline is a torn write and is skipped.
    """
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            if not raw.endswith(b"\n"):
                return
            text = raw.decode("utf-8", errors="replace").strip()
            if text:
                yield number, text


def read_records(path: Path) -> Iterator[tuple[int, dict[str, Any] | None, str]]:
    """``(line_number, record or None, text)``; ``None`` where the line is not a JSON object."""
    for number, text in iter_lines(path):
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            yield number, None, text
            continue
        yield number, (value if isinstance(value, dict) else None), text


def drop_torn_tail(path: Path) -> None:
    """Truncate ``path`` after its last newline (removes a line torn by a kill)."""
    if not path.exists():
        return
    with open(path, "rb+") as handle:
        handle.seek(0, os.SEEK_END)
        size = handle.tell()
        if size == 0:
            return
        handle.seek(size - 1)
        if handle.read(1) == b"\n":
            return
        # Walk back to the previous newline in blocks.
        end = size
        while end > 0:
            start = max(0, end - 65536)
            handle.seek(start)
            block = handle.read(end - start)
            cut = block.rfind(b"\n")
            if cut >= 0:
                handle.truncate(start + cut + 1)
                return
            end = start
        handle.truncate(0)


class JsonlWriter:
    """Append records to a JSON Lines file, one whole line per ``write`` call."""

    def __init__(self, path: Path, *, fsync: bool = False):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        drop_torn_tail(self.path)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self._fsync = fsync

    def write(self, record: BaseModel | dict[str, Any]) -> None:
        line = (dumps(record) + "\n").encode("utf-8")
        written = os.write(self._fd, line)
        if written != len(line):  # a short write only happens on a full disk
            raise OSError(f"short write to {self.path}: {written} of {len(line)} bytes")
        if self._fsync:
            os.fsync(self._fd)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> JsonlWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

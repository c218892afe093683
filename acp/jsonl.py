"""JSON Lines files that survive being killed: whole-line appends, atomic rewrites, resume.

A record is appended with one ``write`` on a file opened with ``O_APPEND``, so a line is either
there whole or, at worst after a kill mid-write, a torn tail without its newline.

Readers and writers agree on what such a tail is: a final line without its newline counts when
it parses as JSON (a complete record, or a file written by hand or another tool that just lacks
the last newline), and is a torn write otherwise. ``JsonlWriter`` completes the first kind with
its newline and cuts the second off before appending, so a resumed run never leaves a torn or
duplicated line behind, and never drops a record that a reader has already counted.

Input can be hostile: only a regular file is read (``acp.paths.open_regular``), a line longer
than ``MAX_LINE_BYTES`` is read past in blocks and given as a bad line (never held whole), and
``loads`` turns JSON that Python's decoder cannot take (nested thousands deep, an integer of
thousands of digits) into a ``JSONDecodeError`` like any other malformed JSON.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

from pydantic import BaseModel

from acp.atomic import write_atomic
from acp.paths import open_regular, size_text

__all__ = [
    "MAX_LINE_BYTES", "JsonlWriter", "NestingError", "NumberTooLongError", "drop_torn_tail", "dumps",
    "iter_lines", "loads", "read_records", "write_atomic",
]

# A line of a JSON Lines file: a plan is a few KB, a COCO writer's image record with its masks
# rarely 1 MB. A longer line is a bad line, so a file with no newline costs no more memory.
MAX_LINE_BYTES = 64 << 20


class NestingError(json.JSONDecodeError):
    """JSON nested deeper than Python's decoder can follow (it raises ``RecursionError``)."""

    def __init__(self, doc: str):
        super().__init__("nested too deeply", doc, 0)
        self.args = (self.msg,)  # no "line 1 column 1": the depth, not a position, is the fault


class NumberTooLongError(json.JSONDecodeError):
    """An integer with more digits than Python converts (``sys.get_int_max_str_digits``)."""

    def __init__(self) -> None:
        super().__init__(TOO_LONG, "", 0)
        self.args = (self.msg,)


TOO_LONG = f"an integer of more than {sys.get_int_max_str_digits() or 4300} digits"


def loads(text: str | bytes) -> Any:
    """``json.loads`` for input acp did not write: JSON nested too deeply (``NestingError``)
    or holding an integer of thousands of digits (``NumberTooLongError``) is a
    ``JSONDecodeError``, so every reader that reports malformed JSON as a one-line error or a
    bad line reports these the same way, instead of a ``RecursionError`` or ``ValueError``."""
    try:
        return json.loads(text)
    except RecursionError:
        raise NestingError(text if isinstance(text, str) else "") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise
    except ValueError:  # "Exceeds the limit (4300 digits) for integer string conversion"
        raise NumberTooLongError() from None


def dumps(record: BaseModel | dict[str, Any]) -> str:
    if isinstance(record, BaseModel):
        return record.model_dump_json(exclude_none=False)
    return json.dumps(record, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def _is_json(text: bytes) -> bool:
    try:
        loads(text)
    except ValueError:  # JSONDecodeError and undecodable bytes alike
        return False
    return True


LONG_LINE = f"(a line longer than {size_text(MAX_LINE_BYTES)}, not read)"


def iter_lines(path: Path) -> Iterator[tuple[int, str]]:
    """``(line_number, text)`` of every non-blank line (1-based numbers).

    A final line without its newline is yielded only when it parses as JSON (see above). A line
    over ``MAX_LINE_BYTES`` is yielded as ``LONG_LINE`` (not JSON), or dropped as torn when it
    is the last one and has no newline.
    """
    with open_regular(path) as handle:
        number = 0
        while raw := handle.readline(MAX_LINE_BYTES + 1):
            number += 1
            if len(raw) > MAX_LINE_BYTES and not raw.endswith(b"\n"):
                if not _read_past_line(handle):
                    return
                yield number, LONG_LINE
                continue
            if not raw.endswith(b"\n") and not _is_json(raw):
                return
            text = raw.decode("utf-8", errors="replace").strip()
            if text:
                yield number, text


def _read_past_line(handle: BinaryIO) -> bool:
    """Read on to the end of the current line in blocks; whether it ended with a newline."""
    while block := handle.readline(1 << 20):
        if block.endswith(b"\n"):
            return True
    return False


def read_records(path: Path) -> Iterator[tuple[int, dict[str, Any] | None, str]]:
    """``(line_number, record or None, text)``; ``None`` where the line is not a JSON object."""
    for number, text in iter_lines(path):
        try:
            value = loads(text)
        except ValueError:  # not JSON, or an integer past Python's 4300 digits
            yield number, None, text
            continue
        yield number, (value if isinstance(value, dict) else None), text


def drop_torn_tail(path: Path) -> None:
    """End ``path`` with a newline: a final line that parses as JSON gets its newline, a torn
    one is cut off."""
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
        cut_at = 0
        while end > 0:
            start = max(0, end - 65536)
            handle.seek(start)
            block = handle.read(end - start)
            cut = block.rfind(b"\n")
            if cut >= 0:
                cut_at = start + cut + 1
                break
            end = start
        handle.seek(cut_at)
        if size - cut_at <= MAX_LINE_BYTES and _is_json(handle.read(size - cut_at)):
            handle.seek(size)
            handle.write(b"\n")
        else:
            handle.truncate(cut_at)


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

"""Reading a large COCO-format file in one pass, one array element at a time.

An LVIS or Objects365 instances file is a gigabyte of JSON whose Python objects take many
times that; counting its classes or reading its categories needs none of it at once.
``scan_object(path, visit=..., keep=...)`` walks the top-level object: each element of an
array named in ``visit`` is decoded on its own and handed to its callback, the values named
in ``keep`` are returned, everything else is decoded element by element and dropped. Memory
is the read buffer (a few MB) plus what the callbacks keep: a single value (an annotation, an
image record, the whole of a key that is no array) longer than ``MAX_VALUE_CHARS`` is refused,
so a file that is one huge string or has no "}" for a gigabyte costs no more, and so are kept
values longer than ``MAX_KEPT_CHARS`` together. Only a regular file is read
(``acp.paths.open_regular``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Collection, Mapping
from pathlib import Path
from typing import Any, TextIO

from acp.errors import InputError, quoted
from acp.jsonl import TOO_LONG
from acp.paths import open_regular_text

CHUNK = 1 << 22  # characters read at a time
# The longest value decoded at once: an LVIS annotation is a few KB once its polygons are
# nulled, a COCO RLE mask of a large image rarely 100 KB. The reader holds at most about twice
# this while it looks for the value's end: as Python strings of up to 4 bytes a character and
# their copies, about 150 MB at worst (bench/bench_balance.py --shape one-value).
MAX_VALUE_CHARS = 4 << 20
# What ``keep`` holds, all values together: a categories list (LVIS's is 0.4 MB; 100,000
# categories with synonyms about 10 MB), never an annotations list held by mistake; and at most
# this many elements of a kept array (100,000 small categories are about 30 MB as Python objects).
MAX_KEPT_CHARS = 16 << 20
MAX_KEPT_ITEMS = 100_000
_SPACE = re.compile(r"[ \t\n\r]*")
_DECODER = json.JSONDecoder()
_EXPECTED = "expected a COCO-format JSON object"


# "segmentation": a polygon list [[x, y, ...], ...] (``acp.score.bank`` uses it on bytes). A match
# cannot start inside a JSON string (its quotes would be escaped there) and holds no "}", so no
# match spans a cut after a "}".
POLYGON_PATTERN = r'"segmentation"\s*:\s*\[\s*(?:\[[-+0-9.eE,\s]*\](?:\s*,\s*\[[-+0-9.eE,\s]*\])*)?\s*\]'
_POLYGONS = re.compile(POLYGON_PATTERN)
_NO_POLYGONS = '"segmentation":null'


class _Reader:
    """A text buffer over a file, refilled as decoding needs more of it. Without
    ``polygons``, every polygon ``segmentation`` is null before it is decoded: on LVIS the
    polygons are most of the text and of the decoding time, and nothing here reads them."""

    def __init__(self, handle: TextIO, path: Path, polygons: bool = True):
        self.handle, self.path, self.polygons = handle, path, polygons
        self.buffer = ""
        self.pos = 0
        self.dropped = 0  # characters before ``buffer`` (for positions in messages)
        self.eof = False
        self._pending = ""  # read, not yet past a "}" (polygons are cut after one)

    def _read(self, size: int) -> str:
        if len(self.buffer) - self.pos + len(self._pending) > MAX_VALUE_CHARS:
            raise self.too_long()  # one value (or no "}" in all that): more than is read at once
        chunk = self.handle.read(size)
        if self.polygons:
            return chunk
        text = self._pending + chunk
        cut = text.rfind("}") + 1 if chunk else len(text)
        self._pending = text[cut:]
        return _POLYGONS.sub(_NO_POLYGONS, text[:cut]) if cut else ("" if chunk else text)

    def _fill(self) -> bool:
        if self.eof:
            return False
        # Read at least as much as is buffered: a value larger than CHUNK costs linear time.
        chunk = self._read(max(CHUNK, len(self.buffer) - self.pos))
        while not chunk and self._pending:  # no "}" yet in what was read: read on
            chunk = self._read(max(CHUNK, len(self._pending)))
        if not chunk:
            self.eof = True
            return False
        self.dropped += self.pos
        self.buffer = self.buffer[self.pos:] + chunk
        self.pos = 0
        return True

    def too_long(self) -> InputError:
        return self.fail(f"a value longer than {MAX_VALUE_CHARS} characters, more than is read at once")

    def offset(self) -> int:
        """Characters read up to the current position."""
        return self.dropped + self.pos

    def fail(self, what: str) -> InputError:
        return InputError(f"{self.path}: not valid JSON at character {self.dropped + self.pos} "
                          f"({what}); {_EXPECTED}")

    def peek(self) -> str:
        """The next character that is not white space ('' at the end of the file)."""
        while True:
            self.pos = _SPACE.match(self.buffer, self.pos).end()  # type: ignore[union-attr]
            if self.pos < len(self.buffer):
                return self.buffer[self.pos]
            if not self._fill():
                return ""

    def take(self, expected: str) -> None:
        found = self.peek()
        if found != expected:
            raise self.fail(f"expected {expected!r}, found {quoted(found) if found else 'the end'}")
        self.pos += 1

    def value(self) -> Any:
        self.peek()
        while True:
            try:
                value, end = _DECODER.raw_decode(self.buffer, self.pos)
            except json.JSONDecodeError as error:
                if self._fill():
                    continue
                self.pos = error.pos
                raise self.fail(error.msg) from None
            except RecursionError:
                raise self.fail("nested too deeply") from None
            except ValueError:  # an integer of more digits than Python converts
                raise self.fail(TOO_LONG) from None
            if end == len(self.buffer) and self._fill():
                continue  # a number may go on in the next chunk: decode it again, whole
            self.pos = end
            return value

    def elements(self, each: Callable[[Any], None]) -> None:
        """Each element of the array that starts here, to ``each``."""
        self.take("[")
        if self.peek() == "]":
            self.pos += 1
            return
        while True:
            each(self.value())
            following = self.peek()
            self.pos += 1
            if following == "]":
                return
            if following != ",":
                self.pos -= 1
                raise self.fail("expected ',' or ']' in an array")


def scan_object(
    path: Path,
    *,
    visit: Mapping[str, Callable[[Any], None]] | None = None,
    keep: Collection[str] = (),
    polygons: bool = True,
) -> dict[str, Any]:
    """Walk the JSON object in ``path``: elements of the ``visit`` arrays go to their callbacks,
    the ``keep`` values are returned (a key missing from the file is missing from the result),
    and the rest is read and dropped. A ``visit`` key whose value is not an array is an
    ``InputError``. ``polygons=False`` reads every polygon ``segmentation`` as null. Every
    problem of the file is one ``InputError`` line."""
    path = Path(path)
    visit = visit or {}
    try:
        with open_regular_text(path, encoding="utf-8-sig") as handle:
            reader = _Reader(handle, path, polygons)
            kept = _Kept(reader)
            reader.take("{")
            closed = reader.peek() == "}"
            reader.pos += closed
            while not closed:
                key = reader.value()
                if not isinstance(key, str):
                    raise reader.fail("expected a key")
                reader.take(":")
                if key in visit:
                    if reader.peek() != "[":
                        raise InputError(f"{path}: {key!r} is not a list; {_EXPECTED}")
                    reader.elements(visit[key])
                elif key in keep:
                    kept.read(key)
                elif reader.peek() == "[":  # element by element
                    reader.elements(_drop)
                else:
                    reader.value()
                following = reader.peek()
                reader.pos += 1
                closed = following == "}"
                if not closed and following != ",":
                    reader.pos -= 1
                    raise reader.fail("expected ',' or '}' after a value")
            if reader.peek():
                raise reader.fail("extra data after the object")
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except UnicodeDecodeError as error:
        raise InputError(f"{path}: not UTF-8 text ({error.reason}); {_EXPECTED}") from None
    except IsADirectoryError:
        raise InputError(f"{path}: is a folder, not a file") from None
    except OSError as error:
        raise InputError(f"{path}: cannot read ({error.strerror or error})") from None
    return kept.values


class _Kept:
    """The values of the ``keep`` keys, at most ``MAX_KEPT_CHARS`` of the file together."""

    def __init__(self, reader: _Reader):
        self.reader = reader
        self.values: dict[str, Any] = {}
        self.left = MAX_KEPT_CHARS

    def read(self, key: str) -> None:
        reader, start = self.reader, self.reader.offset()
        if reader.peek() == "[":  # element by element, the budget checked as it goes
            items: list[Any] = []

            def append(item: Any) -> None:
                self._check(key, reader.offset() - start)
                if len(items) == MAX_KEPT_ITEMS:
                    raise InputError(f"{reader.path}: {key!r} has more than {MAX_KEPT_ITEMS} elements, "
                                     f"more than is read of it; {_EXPECTED}")
                items.append(item)

            reader.elements(append)
            self.values[key] = items
        else:
            self.values[key] = reader.value()
        self._check(key, reader.offset() - start)
        self.left -= reader.offset() - start

    def _check(self, key: str, used: int) -> None:
        if used > self.left:
            raise InputError(f"{self.reader.path}: {key!r} is longer than {MAX_KEPT_CHARS} characters, "
                             f"more than is read of it; {_EXPECTED}")


def _drop(_value: Any) -> None:
    pass

"""Typed exceptions of the library, and the shortening of their messages. Only ``acp.cli`` turns
them into output and exit codes."""

import reprlib
from typing import Any

_QUOTE = reprlib.Repr()
_QUOTE.maxstring = _QUOTE.maxother = 80


def quoted(value: Any, limit: int = 80) -> str:
    """``repr(value)`` for a one-line message, at most ``limit`` characters. Bounded in time
    too: a value from a hostile file can be a list of millions (reprlib stops early)."""
    text = _QUOTE.repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class AcpError(Exception):
    """Base class: the message is one line meant for the user."""


class InputError(AcpError):
    """A file or argument given by the user is unreadable or malformed."""


class PlanValidationError(AcpError):
    """A plan failed validation; ``problems`` lists (field, reason) pairs."""

    def __init__(self, message: str, problems: list[tuple[str, str]] | None = None):
        super().__init__(message)
        self.problems = problems or []


class LLMError(AcpError):
    """The LLM endpoint could not produce a valid plan (transport or content)."""


class OutputMismatchError(AcpError):
    """An existing output was made from other inputs or settings; refuse to mix them."""


class MissingDependencyError(AcpError):
    """An optional heavy dependency is not installed."""


def first_line(text: object, limit: int = 300, default: str = "") -> str:
    """The first non-blank line of ``text``, at most ``limit`` characters: the reason of a
    failure as a run's last message quotes it."""
    stripped = str(text or "").strip()
    return stripped.splitlines()[0][:limit] if stripped else default


def one_line(text: str, head: int = 150, tail: int = 120) -> str:
    """``text`` on one line; beyond ``head + tail`` characters, its start and its end around
    " … ", each cut between words. A library's error says what failed first and, often, what
    to do last ("... pass `trust_remote_code=True`"), so both ends are kept."""
    text = " ".join(str(text).split())
    if len(text) <= head + tail + 3:
        return text
    start, end = text[:head], text[-tail:]
    if text[head] != " " and " " in start:  # do not end inside a word
        start = start.rsplit(" ", 1)[0]
    if text[-tail - 1] != " " and " " in end:  # nor begin inside one
        end = end.split(" ", 1)[1]
    return f"{start.rstrip(' ,;:')} … {end.lstrip()}"

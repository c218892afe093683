"""Typed exceptions of the library. Only ``acp.cli`` turns them into messages and exit codes."""

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

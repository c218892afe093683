"""What every command shares: turning library errors into one line and an exit code."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import typer

from acp.errors import AcpError

F = TypeVar("F", bound=Callable[..., Any])


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print ``message`` as one line on stderr and return the Exit to raise."""
    print(f"acp: error: {message}", file=sys.stderr)
    return typer.Exit(code=code)


def notice(message: str) -> None:
    print(f"acp: {message}", file=sys.stderr)


def handle_errors(function: F) -> F:
    """Library errors become ``acp: error: ...`` and exit 1; Ctrl-C exits 130. Locals (an API
    key is a local) are never printed."""

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return function(*args, **kwargs)
        except AcpError as error:
            raise fail(str(error)) from None
        except OSError as error:  # a path that is a folder, a full disk, no permission, ...
            where = f"{error.filename}: " if error.filename else ""
            raise fail(f"{where}{error.strerror or error}") from None
        except KeyboardInterrupt:
            raise fail("interrupted; rerun the same command to resume", code=130) from None

    return wrapper  # type: ignore[return-value]

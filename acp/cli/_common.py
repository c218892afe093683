"""What every command shares: turning library errors into one line and an exit code."""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from acp.errors import AcpError

F = TypeVar("F", bound=Callable[..., Any])

# The key of an OpenAI-compatible endpoint, read from the environment by the option itself (a
# flag would show in the process list, so the variable is the way to give it). Never printed.
ApiKeyOption = Annotated[
    str | None,
    typer.Option("--api-key", envvar="OPENAI_API_KEY", show_default=False,
                 help="Key of the LLM endpoint; set OPENAI_API_KEY instead of passing it here."),
]

# Every command that loads a model takes the same --device and --dtype (acp.device).
DeviceOption = Annotated[
    str,
    typer.Option("--device", help="auto, cpu, cuda, cuda:N or mps; auto: cuda, else mps, else cpu."),
]
DtypeOption = Annotated[
    str,
    typer.Option("--dtype", help="Precision of every model: auto, float32, float16 or bfloat16. auto: "
                 "float16 on cuda (SAM float32), float32 elsewhere. float32 on a GPU whose float16 "
                 "renders black or NaN images; float16 or bfloat16 to halve the memory."),
]


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print ``message`` as one line on stderr and return the Exit to raise."""
    print(f"acp: error: {message}", file=sys.stderr)
    return typer.Exit(code=code)


def notice(message: str) -> None:
    print(f"acp: {message}", file=sys.stderr)


def _terminal() -> bool:
    return sys.stderr.isatty()


def status_printer(progress: bool = True) -> Callable[[str], None] | None:
    """``notice`` for the steps of a long command that has no bar (loading, parsing, drawing)
    while a person watches stderr; None in a pipe or a log, which want results, not chatter."""
    return notice if progress and _terminal() else None


def write_report_after(output: Path) -> None:
    """The HTML report at the end of a run (``generate``, ``score dataset``); a failure here is a
    notice and leaves the run's own files as they are."""
    from acp.errors import first_line
    from acp.report import write_report

    try:
        page = write_report(output)
    except (AcpError, OSError) as error:
        notice(f"report not written: {first_line(str(error))}; retry with `acp report {output}`")
        return
    print(f"{page.path}: report, {page.thumbnails} thumbnails")


def _reader_left() -> typer.Exit:
    """stdout's reader has gone (``acp validate ... | head``): stop quietly with 141, the status
    of a process ended by SIGPIPE, as ``cat`` would. stdout now points at /dev/null, so that
    the interpreter's final flush does not fail again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # a stdout without a file descriptor (a test's buffer)
        pass
    finally:
        os.close(devnull)
    return typer.Exit(code=141)


def handle_errors(function: F) -> F:
    """Library errors become ``acp: error: ...`` and exit 1; Ctrl-C exits 130; a closed stdout
    pipe exits 141 without a message. Locals (an API key is a local) are never printed."""

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            try:
                return function(*args, **kwargs)
            finally:
                sys.stdout.flush()  # a reader that left shows here, not at the interpreter's exit
        except BrokenPipeError:
            raise _reader_left() from None
        except AcpError as error:
            raise fail(str(error)) from None
        except OSError as error:  # a path that is a folder, a full disk, no permission, ...
            where = f"{error.filename}: " if error.filename else ""
            raise fail(f"{where}{error.strerror or error}") from None
        except KeyboardInterrupt:
            raise fail("interrupted; rerun the same command to resume", code=130) from None

    return wrapper  # type: ignore[return-value]

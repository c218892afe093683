"""Paths read from input files (a render manifest, a COCO file) stay inside their root, and
every file acp reads is a regular file, read within a bound.

A manifest line or a COCO ``file_name`` is data, and data can be hostile: ``../victim.txt``,
``/etc/passwd`` or a symbolic link planted in the root that points elsewhere would make acp
read, or worse delete, a file the user never gave it. Every such path goes through
``inside(root, name)`` before it is opened or removed. The check is made on the text and on the
resolved path alike, and it is made *before* any existence test, so that the answer for a
hostile path is the same whether its target exists or not (no message tells which files exist).

A file named on the command line or in an input file can also be a FIFO, a device or a socket:
opening a FIFO blocks until some other process writes to it, and ``/dev/zero`` never ends.
``open_regular`` opens without blocking and refuses anything but a regular file (links are
followed, as ``open`` does); ``read_regular`` reads a whole file only up to a size cap. Every
reader of user files goes through them: files read whole are capped (the caps below), the
others are streamed (``acp.jsonl`` caps a line, ``acp.cocostream`` a value).
"""

from __future__ import annotations

import errno
import io
import os
import stat
from pathlib import Path, PureWindowsPath
from typing import BinaryIO, TextIO

from acp.errors import InputError

__all__ = [
    "COCO_FILE_BYTES",
    "SMALL_FILE_BYTES",
    "FileTooLargeError",
    "NotRegularFileError",
    "UnsafePathError",
    "check_regular",
    "file_problem",
    "inside",
    "open_regular",
    "open_regular_text",
    "path_problem",
    "read_regular",
    "read_regular_text",
    "size_text",
]

# Files read whole: settings, summaries, category lists, concept lists, a bank's index. 64 MiB
# is far above any of them (100,000 categories with synonyms are about 10 MB) and its parse
# stays within about half a GB of Python objects.
SMALL_FILE_BYTES = 64 << 20
# COCO files that a command reads whole (score dataset, export merge, bank build): LVIS's
# training file is 1.1 GB; parsed, a file takes five to ten times its size in memory.
COCO_FILE_BYTES = 4 << 30


class UnsafePathError(InputError):
    """A path read from an input file leaves the folder it must stay in."""


def path_problem(name: object) -> str | None:
    """Why ``name`` cannot be a relative path inside a root, judged on the text alone (no file
    system access); ``None`` when it can."""
    if not isinstance(name, str) or not name.strip():
        return f"expected a non-empty relative path, got {name!r}"
    if "\x00" in name:
        return "the path holds a NUL character"
    # Judged on the string (a million manifest or COCO paths are read): a Windows drive starts
    # "X:" or "//", so only such a name is parsed; POSIX parts are what lies between slashes.
    if "\\" in name or ((name[1:2] == ":" or name.startswith("//")) and PureWindowsPath(name).drive):
        return f"{name!r} is not a relative POSIX path (no backslashes or drive letters)"
    if name.startswith("/"):
        return f"{name!r} is an absolute path; expected a path relative to its folder"
    if ".." in name.split("/"):
        return f"{name!r} climbs out of its folder with '..'"
    return None


def inside(root: Path, name: object, *, what: str = "path") -> Path:
    """``root / name``, refusing a ``name`` that leaves ``root``: absolute, with a ``..`` part,
    or reaching outside through a symbolic link. Raises ``UnsafePathError`` naming ``what``."""
    problem = path_problem(name)
    if problem is not None:
        raise UnsafePathError(f"{what}: {problem}")
    assert isinstance(name, str)
    root = Path(root)
    target = root / name
    # resolve() follows every link that exists on the way; a missing tail is taken as written.
    real_root = Path(os.path.realpath(root))
    real_target = Path(os.path.realpath(target))
    if real_target != real_root and real_root not in real_target.parents:
        raise UnsafePathError(f"{what}: {name!r} leads out of {root} through a symbolic link")
    return target


class _FileError(OSError):
    """An ``OSError`` with a reason and the file's name; ``str`` is the reason alone, as a
    caller's message puts its own path in front."""

    def __init__(self, reason: str, path: Path | str):
        super().__init__(errno.EINVAL, reason, str(path))

    def __str__(self) -> str:
        return str(self.strerror)


class NotRegularFileError(_FileError):
    """The path names a FIFO, a device or a socket: not a file acp reads."""


class FileTooLargeError(_FileError):
    """A file read whole is larger than its cap."""


_KINDS = ((stat.S_ISFIFO, "a named pipe (FIFO)"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def _refuse(mode: int, path: Path) -> None:
    if stat.S_ISREG(mode):
        return
    if stat.S_ISDIR(mode):
        raise IsADirectoryError(errno.EISDIR, "is a folder, not a file", str(path))
    kind = next((name for test, name in _KINDS if test(mode)), "not a file")
    raise NotRegularFileError(f"is {kind}, not a regular file", path)


def file_problem(path: Path | str) -> str | None:
    """Why ``path`` is no file to read, in a few words ("no such file", "is a folder, not a
    file", "is a named pipe (FIFO), not a regular file"); ``None`` for a regular file."""
    try:
        check_regular(path)
    except FileNotFoundError:
        return "no such file"
    except OSError as error:
        return str(error.strerror or error)
    return None


def check_regular(path: Path | str) -> None:
    """Raise as ``open_regular`` would when ``path`` is not a regular file (for a file that is
    linked or copied rather than read here)."""
    _refuse(os.stat(path).st_mode, Path(path))


def open_regular(path: Path | str) -> BinaryIO:
    """``open(path, "rb")`` for a regular file only (symbolic links followed). A FIFO, device,
    socket or folder is a ``NotRegularFileError`` (``IsADirectoryError`` for a folder), raised
    at once: the file is opened non-blocking and checked before anything is read. Both are
    ``OSError``s, so a caller's handler for unreadable files words them as well."""
    path = Path(path)
    _refuse(os.stat(path).st_mode, path)  # before opening: opening a device can act on it
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0)
    fd = os.open(path, flags | getattr(os, "O_BINARY", 0) | getattr(os, "O_CLOEXEC", 0))
    try:
        _refuse(os.fstat(fd).st_mode, path)  # replaced by a FIFO since the stat
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def open_regular_text(path: Path | str, *, encoding: str = "utf-8", errors: str = "strict") -> TextIO:
    """``open_regular`` as text, like ``open(path, encoding=..., errors=...)``."""
    return io.TextIOWrapper(open_regular(path), encoding=encoding, errors=errors)


def size_text(size: int) -> str:
    """``size`` bytes in the unit a person reads: 512 bytes, 3.1 MiB, 4 GiB, 1 TiB."""
    for unit, shift in (("TiB", 40), ("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if size >= 1 << shift:
            return f"{size / (1 << shift):.3g} {unit}"
    return f"{size} bytes"


def read_regular(path: Path | str, limit: int) -> bytes:
    """The bytes of the regular file ``path``; more than ``limit`` of them is a
    ``FileTooLargeError`` (judged on the size before reading, and on what is read, in case
    the file grows meanwhile)."""
    with open_regular(path) as handle:
        size = os.fstat(handle.fileno()).st_size
        data = handle.read(limit + 1) if size <= limit else b""
        if size > limit or len(data) > limit:
            raise FileTooLargeError(f"{size_text(max(size, len(data)))} is over the "
                                    f"{size_text(limit)} cap of such a file", path)
        return data


def read_regular_text(path: Path | str, limit: int, *, encoding: str = "utf-8") -> str:
    """``read_regular`` decoded strictly (a ``UnicodeDecodeError`` on bad bytes)."""
    return read_regular(path, limit).decode(encoding)

"""Atomic file writes: readers see the old file or the new one, never a partial one.

Every whole-file output of acp (COCO json, images, settings, reports) goes through here: the
content is written to a temporary sibling, flushed to disk and renamed over the target.

A writer killed mid-write (SIGKILL, out of memory, power) leaves its temporary behind. Its name
says who made it, ``.{name}.acp-{host}-{pid}-{random}.tmp``, and the first write of an acp
process into a folder removes the temporaries there whose process on this host no longer runs
(``sweep_stale_temps``). A live writer's temporary is never touched, nor one made on another
host sharing the folder, nor any file whose name acp would not make.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TextIO

# mkstemp creates files readable by their owner only; a dataset must be readable by whoever
# the umask allows (a data loader in a container often runs as another user).
UMASK = os.umask(0)
os.umask(UMASK)

_HOST = re.sub(r"[^A-Za-z0-9]", "", socket.gethostname())[:16] or "host"
# tempfile's random part is 8 of [a-z0-9_]; the name before it may hold anything.
_TEMP_NAME = re.compile(r"\..+\.acp-(?P<host>[A-Za-z0-9]+)-(?P<pid>\d+)-[a-z0-9_]+\.tmp")
_swept: set[str] = set()
_swept_lock = threading.Lock()


def temp_prefix(name: str) -> str:
    """The start of the name of a temporary sibling of ``name`` made by this process."""
    return f".{name}.acp-{_HOST}-{os.getpid()}-"


def is_temporary(name: str) -> bool:
    """Whether ``name`` is that of a temporary an acp process makes (live or left by a kill)."""
    return _TEMP_NAME.fullmatch(name) is not None


def sweep_stale_temps(folder: Path) -> None:
    """Remove the temporaries (files or folders) in ``folder`` that acp processes of this host
    left when they were killed; once per folder and process, so that writing many files into
    one folder lists it once."""
    key = os.path.abspath(folder)
    with _swept_lock:
        if key in _swept:
            return
        _swept.add(key)
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return
    for entry in entries:
        match = _TEMP_NAME.fullmatch(entry.name)
        if match is None or match["host"] != _HOST or _running(int(match["pid"])):
            continue
        try:
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path)
            else:
                os.unlink(entry.path)
        except OSError:
            pass  # removed by another process meanwhile, or not ours to remove


def _running(pid: int) -> bool:
    if os.name != "posix":
        return True  # Windows' os.kill would end the process: never sweep there
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):  # another user's process; or no valid pid
        return True
    return True


def _temporary(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sweep_stale_temps(path.parent)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=temp_prefix(path.name), suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~UMASK)
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
    """Copy the regular file ``source`` to ``target`` atomically; a FIFO or a device (which
    would block or never end) is an ``OSError`` before anything is written."""
    from acp.paths import open_regular

    with open_regular(source) as reader, atomic_path(target) as tmp, open(tmp, "wb") as writer:
        shutil.copyfileobj(reader, writer, 1 << 20)


def compact_json(value: Any) -> str:
    """One-line JSON, UTF-8 kept readable; NaN and infinity raise ``ValueError`` (not JSON)."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)

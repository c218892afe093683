"""Folders acp owns, and the proof of it: ``acp-owned.json``, the list of every file acp wrote there.

acp replaces or removes a file only when it can prove that it wrote it. A command that writes a
whole folder (``acp export yolo``, ``acp score dataset``) leaves in it ``acp-owned.json``::

    {"format": 1, "written_by": "acp export yolo", "files": ["data.yaml", "images/train/a.jpg", ...]}

``files`` are paths relative to the folder, every file (or symbolic link) the command wrote,
sorted. A rerun replaces those files and nothing else: a file the user put beside them (a
``notes.txt``, a ``src/`` folder) stays. A folder with content and no manifest of the same
command (the user's project, an export made before manifests existed) is refused, whatever file
names it holds: names prove nothing. A file that is not listed but sits inside a folder the
command wrote (``labels/train.cache``, an image dropped into ``images/train/``) is refused too,
with its name: it would silently join the new output, and it is not acp's to delete.

Replacing is crash-safe: the new files are made in a temporary sibling folder first
(``temp_folder``); then the manifest is rewritten to list the old files *and* the new ones, the
old entries are moved into a temporary sibling, the new ones moved in (``commit``, the file
readers start from, out first and in last), the manifest rewritten to list the new files, and
the old entries deleted. A kill at any moment leaves a manifest that covers every file of acp's
there, so the rerun replaces them all; temporaries are swept by the next run
(``acp.atomic.sweep_stale_temps``) and hold only acp's files.

Cost: one walk of the old and the new files, string operations on their names, and a
manifest of about 30 bytes a file (5.6 MB for the 200k files of a 100k-image YOLO export,
whose replacement took 15 s on a slow disk, 8 of them deleting the old files); the moves are
a handful of renames whatever the size.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path, PurePosixPath

from acp.atomic import is_temporary, sweep_stale_temps, temp_prefix, write_atomic
from acp.errors import InputError, quoted
from acp.paths import SMALL_FILE_BYTES, UnsafePathError, inside, path_problem, read_regular_text

__all__ = ["OWNED_NAME", "check_owned", "read_owned", "remove_files", "remove_owned", "replace_owned",
           "temp_folder", "write_owned"]

OWNED_NAME = "acp-owned.json"
FORMAT = 1
_SHOWN = 3  # foreign files named in a refusal


def read_owned(folder: Path, written_by: str) -> frozenset[str] | None:
    """The files ``written_by`` (e.g. ``"acp export yolo"``) lists as its own in ``folder``;
    ``None`` when ``folder`` is missing or empty (but for acp's temporaries). ``InputError``
    when it holds anything without such a list: it is not acp's to replace."""
    folder = Path(folder)
    if folder.is_symlink() or (folder.exists() and not folder.is_dir()):
        raise InputError(f"{folder}: exists and is not a folder; give another output")
    if not folder.exists() or all(is_temporary(p.name) for p in folder.iterdir()):
        return None
    path = folder / OWNED_NAME
    try:
        record = json.loads(read_regular_text(path, SMALL_FILE_BYTES))
    except FileNotFoundError:
        raise InputError(
            f"{folder}: a folder that {written_by} did not write (no {OWNED_NAME} listing its files), "
            "which this would replace; give a new or empty folder"
        ) from None
    except (OSError, ValueError) as error:
        raise InputError(f"{path}: unreadable ({error}); give a new or empty folder") from None
    files = record.get("files") if isinstance(record, dict) else None
    if not isinstance(record, dict) or record.get("format") != FORMAT or not isinstance(files, list):
        raise InputError(f"{path}: not a list of files acp wrote (format {FORMAT}); "
                         "give a new or empty folder")
    if record.get("written_by") != written_by:
        raise InputError(f"{folder}: written by {record.get('written_by')!r}, not {written_by}; "
                         "give another folder")
    for name in files:
        if not _plain(name) or name == OWNED_NAME:
            problem = path_problem(name) or f"{quoted(name)} is not a path acp writes"
            raise UnsafePathError(f"{path}: {problem}; give a new or empty folder")
    return frozenset(files)


def write_owned(folder: Path, written_by: str, files: Iterable[str]) -> None:
    """Write (atomically) ``folder``'s list of the files ``written_by`` wrote there."""
    record = {"format": FORMAT, "written_by": written_by, "files": sorted(set(files))}
    write_atomic(Path(folder) / OWNED_NAME, json.dumps(record, ensure_ascii=False, indent=0) + "\n")


def temp_folder(output: Path) -> Path:
    """A new, empty temporary sibling of ``output`` to build its next content in; removed by the
    next run's sweep if this process is killed."""
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    sweep_stale_temps(output.parent)
    work = Path(tempfile.mkdtemp(dir=output.parent, prefix=temp_prefix(output.name), suffix=".tmp"))
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(work, 0o777 & ~mask)  # mkdtemp makes it 0700: unreadable to a loader run as another user
    return work


def check_owned(output: Path, written_by: str, entries: Iterable[str]) -> None:
    """``InputError`` unless ``output`` is new, empty, or ``written_by``'s with nothing foreign
    in its top-level ``entries`` (the names the next output will have): what ``replace_owned``
    will check, cheap enough to call before the work."""
    old = read_owned(output, written_by)
    if old is not None:
        tops = {name.partition("/")[0] for name in old}
        _refuse_foreign(Path(output), written_by, sorted(set(entries) | tops), old)


def replace_owned(work: Path, output: Path, written_by: str, *, commit: str | None = None) -> None:
    """Make ``output`` hold the files of ``work`` (a finished ``temp_folder(output)``) in place
    of the ones ``written_by`` wrote there before, and nothing else. ``commit``, if any, is the
    top-level entry readers start from: it leaves first and arrives last. ``work`` is gone
    afterwards, unless an ``InputError`` (a foreign file) left ``output`` untouched."""
    work, output = Path(work), Path(output)
    new = frozenset(_files(work))
    old = read_owned(output, written_by)
    if old is None:  # new or empty: one rename, with the list already inside
        write_owned(work, written_by, new)
        if output.exists():  # empty, but for temporaries of acp writes (read_owned checked)
            for entry in output.iterdir():
                if not is_temporary(entry.name):
                    continue  # come since: rmdir refuses, and it stays
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry)
                else:
                    entry.unlink()
            output.rmdir()
        os.replace(work, output)
        return
    entries = sorted({name.partition("/")[0] for name in old | new}, key=lambda e: e != commit)
    _refuse_foreign(output, written_by, entries, old)
    write_owned(output, written_by, old | new)  # a kill from here on leaves every file listed
    trash = temp_folder(output)
    for name in entries:
        if os.path.lexists(output / name):
            os.replace(output / name, trash / name)
    for name in reversed(entries):
        if os.path.lexists(work / name):
            os.replace(work / name, output / name)
    write_owned(output, written_by, new)
    shutil.rmtree(trash, ignore_errors=True)
    shutil.rmtree(work, ignore_errors=True)


def remove_owned(folder: Path, written_by: str) -> int:
    """Delete the files ``written_by`` lists in ``folder`` (``remove_files``), then the list;
    every other file stays. Returns how many files went."""
    folder = Path(folder)
    owned = read_owned(folder, written_by)
    if owned is None:
        return 0
    removed = remove_files(folder, owned)
    (folder / OWNED_NAME).unlink(missing_ok=True)
    return removed


def remove_files(folder: Path, names: Iterable[str]) -> int:
    """Delete the files ``names`` (relative to ``folder``) that acp knows it wrote, then the
    folders on their way that this leaves empty; nothing else. A name that leaves ``folder``
    (absolute, ``..``, through a symbolic link) or that is now a folder is passed over: what
    lies there is not acp's. Returns how many files went."""
    folder = Path(folder)
    removed = 0
    parents: set[PurePosixPath] = set()
    for name in sorted(set(names)):
        if path_problem(name) is not None:
            continue
        pure = PurePosixPath(name)
        try:  # the folders on the way stay inside; the file itself may be a link acp made
            parent = folder if len(pure.parts) == 1 else inside(folder, pure.parent.as_posix())
        except UnsafePathError:
            continue
        path = parent / pure.name
        if path.is_dir() and not path.is_symlink():
            continue
        try:
            path.unlink()
            removed += 1
        except FileNotFoundError:
            pass
        parents.update(p for p in pure.parents if p != PurePosixPath("."))
    for emptied in sorted(parents, key=lambda p: len(p.parts), reverse=True):
        with contextlib.suppress(OSError):  # not empty: what is left is someone else's
            (folder / emptied).rmdir()
    return removed


def _plain(name: object) -> bool:
    """Whether ``name`` is a relative path as ``_files`` writes it: parts joined by "/", none
    empty, "." or "..", no backslash, NUL or drive. String operations only: a manifest lists
    millions of names, and pathlib per name (``path_problem``) cost more than the walk itself."""
    if not isinstance(name, str) or not name or "\\" in name or "\x00" in name:
        return False
    parts = name.split("/")
    return ":" not in parts[0] and all(part not in ("", ".", "..") for part in parts)


def _files(folder: Path) -> Iterator[str]:
    """Every file and symbolic link under ``folder``, relative, in POSIX form (links not followed)."""
    for top, folders, files in os.walk(folder):
        relative = os.path.relpath(top, folder).replace(os.sep, "/")
        prefix = "" if relative == "." else relative + "/"
        for name in files + [f for f in folders if os.path.islink(os.path.join(top, f))]:
            if prefix or name != OWNED_NAME:
                yield prefix + name


def _folders(files: Iterable[str]) -> set[str]:
    """The folders on the way to ``files`` (``a``, ``a/b`` for ``a/b/c``)."""
    found: set[str] = set()
    for name in files:
        parent = name.rpartition("/")[0]
        while parent and parent not in found:  # a folder seen had its own parents added then
            found.add(parent)
            parent = parent.rpartition("/")[0]
    return found


def _refuse_foreign(output: Path, written_by: str, entries: list[str], owned: frozenset[str]) -> None:
    foreign = _foreign(output, entries, owned)
    if foreign:
        more = len(foreign) - _SHOWN
        shown = ", ".join(foreign[:_SHOWN]) + (f" and {more} more" if more > 0 else "")
        raise InputError(f"{output}: holds files that {written_by} did not write among its own ({shown}); "
                         "acp deletes only what it wrote: move them away, then rerun")


def _foreign(output: Path, entries: list[str], owned: frozenset[str]) -> list[str]:
    """What lies under ``output``'s ``entries`` that ``owned`` does not account for: an unlisted
    file or link, or a folder holding no listed file."""
    folders = _folders(owned)
    found = []
    for entry in entries:
        path = output / entry
        if not os.path.lexists(path):
            continue
        if path.is_symlink() or not path.is_dir():
            if entry not in owned:
                found.append(entry)
            continue
        if entry not in folders:
            found.append(entry + "/")
            continue
        for top, subfolders, files in os.walk(path):
            relative = Path(top).relative_to(output).as_posix()
            for name in files:
                if f"{relative}/{name}" not in owned:
                    found.append(f"{relative}/{name}")
            for name in list(subfolders):
                sub = f"{relative}/{name}"
                if os.path.islink(os.path.join(top, name)):
                    if sub not in owned:
                        found.append(sub)
                elif sub not in folders:
                    found.append(sub + "/")
                    subfolders.remove(name)  # its content is foreign with it
    return sorted(found)

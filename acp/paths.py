"""Paths read from input files (a render manifest, a COCO file) stay inside their root.

A manifest line or a COCO ``file_name`` is data, and data can be hostile: ``../victim.txt``,
``/etc/passwd`` or a symbolic link planted in the root that points elsewhere would make acp
read, or worse delete, a file the user never gave it. Every such path goes through
``inside(root, name)`` before it is opened or removed. The check is made on the text and on the
resolved path alike, and it is made *before* any existence test, so that the answer for a
hostile path is the same whether its target exists or not (no message tells which files exist).
"""

from __future__ import annotations

import os
from pathlib import Path, PureWindowsPath

from acp.errors import InputError

__all__ = ["UnsafePathError", "inside", "path_problem"]


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

"""Locate the ``prompts/`` and ``schemas/`` folders.

In a wheel they are copied into the package (``acp/prompts``); in a source checkout or an
editable install they sit at the repository's top level, next to ``acp/``.
"""

from __future__ import annotations

from pathlib import Path

_PACKAGE_DIR = Path(__file__).resolve().parent


def resource_dir(name: str) -> Path:
    for candidate in (_PACKAGE_DIR / name, _PACKAGE_DIR.parent / name):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"acp resource folder {name!r} not found next to {_PACKAGE_DIR}")


def read_prompt(filename: str) -> str:
    return (resource_dir("prompts") / filename).read_text(encoding="utf-8")

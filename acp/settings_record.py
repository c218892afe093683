"""How a run's settings are written to ``settings.json``: derived from the settings dataclasses
themselves, each field saying on its declaration how it is recorded.

A rerun compares its record with the stored one and refuses other settings, so the record must
stay the same for the same settings across acp versions. A field added later is therefore
recorded only when it is used (``omit="default"`` or ``omit="empty"``): a ``settings.json``
written before the field existed still matches. Fields that change how a run goes but not what
it makes (concurrency, timeouts, the API key) are not recorded at all (``skip``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

RECORD = "acp.record"


_UNSET = object()


def recorded(*, omit: Literal["default", "empty"] | None = None, omit_value: Any = _UNSET,
             skip: bool = False, flatten: str | None = None, flag: str | None = None, model: bool = False,
             convert: Callable[[Any], Any] | None = None) -> dict[str, Any]:
    """Field metadata for ``record_of``:

    - ``skip``: never recorded;
    - ``omit="default"`` / ``"empty"``: left out when equal to the default / falsy;
    - ``omit_value``: left out when equal to this value: what a record from before the field
      existed meant, when the default has changed since;
    - ``flatten=PREFIX``: a nested settings object whose fields are recorded at this level,
      each name prefixed; ``None`` records nothing (``flag=NAME`` records whether it is set);
    - ``model``: a hub id or folder: a folder is recorded as its absolute path;
    - ``convert``: the value as recorded (e.g. a digest of a long input).
    """
    return {RECORD: {"omit": omit, "omit_value": omit_value, "skip": skip, "flatten": flatten,
                     "flag": flag, "model": model, "convert": convert}}


def record_of(settings: Any) -> dict[str, Any]:
    """The JSON-ready record of a settings dataclass (see the module docstring)."""
    out: dict[str, Any] = {}
    for field in dataclasses.fields(settings):
        how = field.metadata.get(RECORD) or recorded()[RECORD]
        value = getattr(settings, field.name)
        if how["skip"]:
            continue
        if how["omit"] == "default" and value == field.default:
            continue
        if how["omit"] == "empty" and not value:
            continue
        if how["omit_value"] is not _UNSET and value == how["omit_value"]:
            continue
        if how["flatten"] is not None:
            if how["flag"]:
                out[how["flag"]] = value is not None
            if value is not None:
                out.update({how["flatten"] + key: item for key, item in record_of(value).items()})
            continue
        if how["convert"] is not None:
            value = how["convert"](value)
        elif how["model"] and value is not None and Path(value).is_dir():
            value = str(Path(value).resolve())
        out[field.name] = _plain(value)
    return out


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return record_of(value)
    if hasattr(value, "model_dump"):  # a pydantic model
        return value.model_dump(mode="json")
    if isinstance(value, Path):
        return str(value.resolve())
    if isinstance(value, tuple | list):
        return [_plain(item) for item in value]
    return value

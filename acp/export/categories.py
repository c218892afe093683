"""COCO categories of an exported dataset: from the concept list, or from a COCO/LVIS file.

From concepts (``CategorySet.from_concepts``): one category per distinct ``category_key``
("Dogs" and "dog" are one), named by its first spelling, ids 1, 2, ... in first-seen order of the
concept list. First-seen rather than alphabetical so that appending a concept to a list keeps
every existing id; a resumed run checks the ids against the ones it started with.

From a file (``CategorySet.from_file``): every category of the file, with the file's ids, names
and supercategories, so the output drops into a training set built on that file. Each concept
is matched by name, trying in order (the first rule that matches decides; a rule that matches
several categories is an ambiguity and reported as such):

1. the category's name (case, ``_``/``-``/space and plural are ignored: ``category_key``);
2. a name in the category's ``synonyms`` list (LVIS has one per category);
3. acp's synonym table (``canonical_key``: "puppy" is a dog, "sofa" a couch) on both sides;
4. the name without LVIS's parenthesised qualifier ("bat" for ``bat_(animal)``).

A concept that matches nothing (or is ambiguous) is an ``InputError`` naming every such
concept at once; ``load_categories`` raises it before a single image is rendered.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from acp.errors import InputError, quoted
from acp.jsonl import loads
from acp.names import canonical_key, category_key, name_problem
from acp.paths import SMALL_FILE_BYTES, open_regular_text, read_regular_text

_QUALIFIER = re.compile(r"\s*\([^)]*\)\s*$")


def _unqualified(name: str) -> str:
    """LVIS's ``bat_(animal)`` without its qualifier: ``bat``."""
    return _QUALIFIER.sub("", name.replace("_", " "))


@dataclass(frozen=True)
class Category:
    id: int
    name: str
    supercategory: str = "object"
    synonyms: tuple[str, ...] = ()

    def to_coco(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "supercategory": self.supercategory}


class CategoryMatcher:
    """Finds the category a name stands for, by the rules of the module docstring."""

    def __init__(self, categories: Iterable[Category]):
        self._by_id = {c.id: c for c in categories}
        self._tiers: list[tuple[bool, dict[str, set[int]]]] = []
        rules: list[tuple[bool, Any]] = [
            (False, lambda c: [category_key(c.name)]),
            (False, lambda c: [category_key(s) for s in c.synonyms]),
            (True, lambda c: [canonical_key(n) for n in (c.name, *c.synonyms)]),
            (False, lambda c: [category_key(_unqualified(n)) for n in (c.name, *c.synonyms)]),
        ]
        for canonical, keys_of in rules:
            table: dict[str, set[int]] = {}
            for category in self._by_id.values():
                for key in keys_of(category):
                    if key:
                        table.setdefault(key, set()).add(category.id)
            self._tiers.append((canonical, table))

    def candidates(self, name: str) -> list[Category]:
        """The categories ``name`` stands for by the first rule that matches: one when it is
        mapped, several when it is ambiguous, none when it is unknown."""
        plain, canonical = category_key(name), canonical_key(name)
        for uses_canonical, table in self._tiers:
            ids = table.get(canonical if uses_canonical else plain)
            if ids:
                return [self._by_id[i] for i in sorted(ids)]
        return []

    def match(self, name: str) -> Category | None:
        found = self.candidates(name)
        return found[0] if len(found) == 1 else None


class CategorySet:
    """The ``categories`` of a COCO file plus the lookup from concept names to their ids."""

    def __init__(self, categories: Sequence[Category], concepts: Sequence[str] = ()):
        ids = [c.id for c in categories]
        if len(set(ids)) != len(ids):
            raise ValueError(f"category ids must be unique, got {ids}")
        self.categories: tuple[Category, ...] = tuple(sorted(categories, key=lambda c: c.id))
        self._matcher = CategoryMatcher(self.categories)
        # Concepts are resolved once, so a plan object named exactly like a concept never
        # depends on the fuzzier rules.
        self._resolved: dict[str, int] = {}
        for concept in concepts:
            category = self._matcher.match(concept)
            if category is not None:
                self._resolved[category_key(concept)] = category.id

    @classmethod
    def from_concepts(cls, concepts: Iterable[str]) -> CategorySet:
        names: dict[str, str] = {}
        for concept in concepts:
            key = category_key(concept)
            if key and key not in names:
                names[key] = " ".join(concept.split())
        if not names:
            raise InputError("the concept list is empty: expected at least one concept name")
        categories = [Category(id=i, name=name) for i, name in enumerate(names.values(), start=1)]
        return cls(categories, list(names.values()))

    @classmethod
    def from_file(cls, path: Path, concepts: Iterable[str]) -> CategorySet:
        """Categories of a COCO or LVIS file; every concept must map onto one of them."""
        path = Path(path)
        categories = read_category_file(path)
        concepts = list(concepts)
        matcher = CategoryMatcher(categories)
        unmapped: list[str] = []
        for concept in dict.fromkeys(concepts):
            found = matcher.candidates(concept)
            if len(found) > 1:
                unmapped.append(f"{concept!r} is ambiguous ({', '.join(repr(c.name) for c in found)})")
            elif not found:
                unmapped.append(repr(concept))
        if unmapped:
            raise InputError(
                f"{path}: no category for concept(s) {', '.join(unmapped)} "
                "(matched by name, plural and synonyms; fix the spelling or pick another category file)"
            )
        return cls(categories, concepts)

    def get(self, name: str) -> int | None:
        """The category id ``name`` (a concept or plan category) stands for, or None."""
        found = self._resolved.get(category_key(name))
        if found is not None:
            return found
        category = self._matcher.match(name)
        return None if category is None else category.id

    def id_for(self, name: str) -> int:
        found = self.get(name)
        if found is None:
            known = ", ".join(repr(c.name) for c in self.categories[:10])
            more = ", ..." if len(self.categories) > 10 else ""
            raise KeyError(f"no category for {name!r} (categories: {known}{more})")
        return found

    def ids(self) -> set[int]:
        return {c.id for c in self.categories}

    def to_coco(self) -> list[dict[str, Any]]:
        return [c.to_coco() for c in self.categories]

    def __len__(self) -> int:
        return len(self.categories)


def load_categories(concepts: Sequence[str], category_file: Path | None = None) -> CategorySet:
    """The categories of a run; call before any GPU work so a bad mapping fails fast."""
    if category_file is None:
        return CategorySet.from_concepts(concepts)
    return CategorySet.from_file(category_file, concepts)


def parse_categories(value: Any, source: str) -> list[Category]:
    """Validate a COCO ``categories`` list (as loaded from JSON) into ``Category`` objects."""
    if not isinstance(value, list) or not value:
        raise InputError(f"{source}: expected a non-empty 'categories' list")
    categories = []
    seen: set[int] = set()
    for index, item in enumerate(value):
        if not isinstance(item, dict):
            raise InputError(f"{source}: categories[{index}] is not an object")
        cid, name = item.get("id"), item.get("name")
        if not isinstance(cid, int) or isinstance(cid, bool) or not isinstance(name, str) or not name.strip():
            raise InputError(f"{source}: categories[{index}] needs an integer 'id' and a non-empty 'name'")
        if not -2**63 < cid < 2**63:  # COCO tools hold ids as 64-bit integers
            raise InputError(f"{source}: categories[{index}] has id {quoted(cid, 40)}; "
                             "expected a 64-bit integer")
        if cid in seen:
            raise InputError(f"{source}: category id {cid} appears twice")
        seen.add(cid)
        for key in ("name", "supercategory"):
            problem = name_problem(item[key]) if isinstance(item.get(key), str) else None
            if problem:
                raise InputError(f"{source}: categories[{index}].{key} {problem}")
        synonyms = item.get("synonyms") or []
        if not isinstance(synonyms, list) or not all(isinstance(s, str) for s in synonyms):
            raise InputError(f"{source}: categories[{index}].synonyms must be a list of names")
        supercategory = item.get("supercategory")
        categories.append(
            Category(
                id=cid,
                name=name,
                supercategory=supercategory if isinstance(supercategory, str) else "object",
                synonyms=tuple(synonyms),
            )
        )
    return categories


def load_json_file(path: Path, *, what: str = "file", limit: int = SMALL_FILE_BYTES) -> Any:
    """The JSON value in ``path``, a regular file of at most ``limit`` bytes; a missing or
    unreadable file is one ``InputError`` line."""
    try:
        return loads(read_regular_text(path, limit))
    except FileNotFoundError:
        raise InputError(f"{path}: no such {what}") from None
    except OSError as error:
        raise InputError(f"{path}: not a readable JSON file ({error.strerror or error})") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InputError(f"{path}: not a readable JSON file ({error})") from None


def read_category_file(path: Path) -> list[Category]:
    """Categories of a COCO/LVIS annotation file, or of a file holding just the categories list.
    An instances file is streamed (``acp.cocostream``): LVIS's gigabyte of annotations is read
    past, never held."""
    from acp.cocostream import scan_object

    try:
        with open_regular_text(path, errors="replace") as handle:
            is_object = handle.read(64).lstrip("\ufeff \t\r\n").startswith("{")
    except OSError:
        is_object = False  # load_json_file says what is wrong with it
    if not is_object:
        return parse_categories(load_json_file(path, what="category file"), str(path))
    try:
        found = scan_object(path, keep=("categories",), polygons=False)
    except InputError as error:  # said as every category file's JSON problem is said
        detail = str(error).removeprefix(f"{path}: ")
        raise InputError(f"{path}: not a readable JSON file ({detail})") from None
    if "categories" not in found:
        raise InputError(f"{path}: expected a COCO/LVIS file with a 'categories' list")
    return parse_categories(found["categories"], str(path))


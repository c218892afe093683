"""Reading concept lists and turning a vocabulary into scenes.

Input forms (``load_concepts``):

- text file: one concept per line; ``#`` starts a comment; blank lines are ignored. A line
  ``name: N`` gives that concept a quota of N scenes.
- JSON or YAML: a list of names (a vocabulary), a mapping ``{name: N}`` (quotas), or a list of
  scenes ``[{"concepts": [...]}, ...]``.
- JSON Lines (``.jsonl``): one explicit scene per line, ``{"concepts": ["dog", "frisbee"]}``;
  a name repeated within a scene asks for that many objects of it.

A vocabulary becomes scenes with ``sample_scenes``: each scene draws between ``min_objects``
and ``max_objects`` distinct concepts, always among the least used so far, so every concept
appears about equally often. With quotas, each concept appears in exactly its quota of scenes
(the number of scenes follows from the quotas).
"""

from __future__ import annotations

import functools
import hashlib
import json
import random
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from acp.errors import InputError, quoted
from acp.jsonl import dumps, loads
from acp.names import category_key, name_problem
from acp.paths import SMALL_FILE_BYTES, read_regular_text

MAX_SCENES = 10_000_000
MAX_QUOTA = 10_000_000
MAX_OBJECTS_PER_SCENE = 30
MAX_NAME_LENGTH = 200


@dataclass(frozen=True)
class ConceptInput:
    """A parsed concept input: exactly one of ``vocabulary``, ``quotas`` and ``scenes`` is set.

    ``companions`` goes with ``scenes`` made by ``acp.balance``: for each scene, which of its
    concepts are companions drawn from a real dataset's co-occurrences (the first concept is
    the scene's subject). The planners are told so, and place exactly those objects."""

    vocabulary: tuple[str, ...] = ()
    quotas: tuple[tuple[str, int], ...] = ()
    scenes: tuple[tuple[str, ...], ...] = ()
    companions: tuple[tuple[str, ...], ...] = ()

    def __post_init__(self) -> None:
        if self.companions and len(self.companions) != len(self.scenes):
            raise ValueError(f"{len(self.companions)} companion sets for {len(self.scenes)} scenes")

    def fingerprint(self) -> str:
        """A digest of the input, as a run's settings record it. ``companions`` counts only
        when set, so inputs from before it keep their digest."""
        data = asdict(self)
        if not self.companions:
            del data["companions"]
        return hashlib.sha256(dumps(data).encode()).hexdigest()


def _check_name(name: Any, where: str) -> str:
    if not isinstance(name, str):
        raise InputError(f"{where}: expected a concept name (string), got {type(name).__name__}")
    name = " ".join(name.split())
    if not name:
        raise InputError(f"{where}: blank concept name")
    if len(name) > MAX_NAME_LENGTH:
        raise InputError(f"{where}: concept name longer than {MAX_NAME_LENGTH} characters")
    problem = name_problem(name)
    if problem:
        raise InputError(f"{where}: concept name {problem}")
    return name


def _check_quota(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_QUOTA:
        raise InputError(f"{where}: quota must be an integer in 1..{MAX_QUOTA}, got {quoted(value)}")
    return value


def _unique(names: list[tuple[str, str]]) -> None:
    """``names`` holds (name, where); two names with the same category key are an error."""
    seen: dict[str, str] = {}
    for name, where in names:
        key = category_key(name)
        if key in seen:
            raise InputError(f"{where}: duplicate concept {quoted(name)} (already at {seen[key]})")
        seen[key] = where


def _scene(value: Any, where: str) -> tuple[str, ...]:
    if isinstance(value, dict):
        extra = set(value) - {"concepts"}
        if extra:
            shown = quoted(sorted(map(str, extra)))
            raise InputError(f"{where}: unknown keys {shown}; expected only 'concepts'")
        value = value.get("concepts")
    if not isinstance(value, list) or not value:
        raise InputError(f"{where}: expected a non-empty list of concepts")
    if len(value) > MAX_OBJECTS_PER_SCENE:
        raise InputError(
            f"{where}: {len(value)} concepts in one scene; at most {MAX_OBJECTS_PER_SCENE}"
        )
    return tuple(_check_name(v, where) for v in value)


def parse_text(text: str, source: str) -> ConceptInput:
    names: list[tuple[str, str]] = []
    quotas: list[tuple[str, int]] = []
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        where = f"{source}:{number}"
        name, sep, count = line.rpartition(":")
        if sep and count.strip().lstrip("-").isdigit():
            quotas.append((_check_name(name, where), _check_quota(int(count), where)))
            names.append((quotas[-1][0], where))
        else:
            names.append((_check_name(line, where), where))
    if not names:
        raise InputError(f"{source}: no concepts found (one per line expected)")
    if quotas and len(quotas) != len(names):
        raise InputError(f"{source}: give a quota ('name: N') on every line or on none")
    _unique(names)
    if quotas:
        return ConceptInput(quotas=tuple(quotas))
    return ConceptInput(vocabulary=tuple(n for n, _ in names))


def parse_structured(value: Any, source: str) -> ConceptInput:
    if isinstance(value, dict):
        if not value:
            raise InputError(f"{source}: empty mapping; expected {{concept: quota}}")
        quotas = tuple(
            (_check_name(k, f"{source}: {quoted(k)}"), _check_quota(v, f"{source}: {quoted(k)}"))
            for k, v in value.items()
        )
        _unique([(n, f"{source}: {quoted(n)}") for n, _ in quotas])
        return ConceptInput(quotas=quotas)
    if isinstance(value, list):
        if not value:
            raise InputError(f"{source}: empty list; expected concept names or scenes")
        if all(isinstance(v, dict | list) for v in value):
            return ConceptInput(
                scenes=tuple(_scene(v, f"{source}: item {i + 1}") for i, v in enumerate(value))
            )
        names = [(_check_name(v, f"{source}: item {i + 1}"), f"item {i + 1}")
                 for i, v in enumerate(value)]
        _unique(names)
        return ConceptInput(vocabulary=tuple(n for n, _ in names))
    raise InputError(f"{source}: expected a list of concepts, a {{concept: quota}} mapping or scenes")


def parse_jsonl(text: str, source: str) -> ConceptInput:
    scenes = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{source}:{number}"
        try:
            value = loads(line)
        except json.JSONDecodeError as error:
            raise InputError(f"{where}: not valid JSON ({error.msg})") from None
        scenes.append(_scene(value, where))
    if not scenes:
        raise InputError(f"{source}: no scenes found (one JSON object per line expected)")
    return ConceptInput(scenes=tuple(scenes))


def load_concepts(path: Path) -> ConceptInput:
    path = Path(path)
    try:
        # A BOM from Windows editors is not a name.
        text = read_regular_text(path, SMALL_FILE_BYTES, encoding="utf-8-sig")
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except OSError as error:
        raise InputError(f"{path}: cannot read ({error.strerror or error})") from None
    except UnicodeDecodeError as error:
        raise InputError(f"{path}: cannot read ({error})") from None
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        return parse_jsonl(text, str(path))
    if suffix == ".json":
        try:
            value = loads(text)
        except json.JSONDecodeError as error:
            raise InputError(f"{path}:{error.lineno}: not valid JSON ({error.msg})") from None
        return parse_structured(value, str(path))
    if suffix in (".yaml", ".yml"):
        return parse_structured(_load_yaml(text, path), str(path))
    return parse_text(text, str(path))


_NO_ALIASES = "YAML anchors and aliases (& and *) are not allowed in a concept list"


@functools.cache
def _yaml_loader() -> type:
    import yaml

    class ConceptLoader(yaml.SafeLoader):
        """A safe loader that refuses anchors and aliases as it meets them, before anything is
        built: a concept list never needs them, and a few hundred bytes of nested aliases
        expand to hundreds of millions of items (an alias bomb)."""

        def compose_node(self, parent: Any, index: Any) -> Any:
            event = self.peek_event()
            if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
                raise yaml.composer.ComposerError(problem=_NO_ALIASES, problem_mark=event.start_mark)
            return super().compose_node(parent, index)

    return ConceptLoader


def _load_yaml(text: str, path: Path) -> Any:
    import yaml

    try:
        return yaml.load(text, Loader=_yaml_loader())
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        problem = getattr(error, "problem", None)
        if problem == _NO_ALIASES:
            raise InputError(f"{path}{line}: {_NO_ALIASES}") from None
        detail = f" ({' '.join(str(problem).split())[:120]})" if problem else ""
        raise InputError(f"{path}{line}: not valid YAML{detail}") from None
    except RecursionError:  # PyYAML composes nested values recursively
        raise InputError(f"{path}: not valid YAML (nested too deeply)") from None


def parse_inline(concepts: str) -> ConceptInput:
    """``--concepts "dog,frisbee"``: a comma-separated vocabulary."""
    names = [(_check_name(n, "--concepts"), "--concepts") for n in concepts.split(",")]
    _unique(names)
    return ConceptInput(vocabulary=tuple(n for n, _ in names))


def parse_object_range(text: str) -> tuple[int, int]:
    """``"2"`` or ``"1-4"`` to ``(min, max)``, each in 1..30."""
    lo, _, hi = text.partition("-")
    try:
        low, high = int(lo), int(hi or lo)
    except ValueError:
        raise InputError(f"--objects-per-scene: expected N or MIN-MAX, got {quoted(text)}") from None
    if not 1 <= low <= high <= MAX_OBJECTS_PER_SCENE:
        raise InputError(
            f"--objects-per-scene: expected 1 <= MIN <= MAX <= {MAX_OBJECTS_PER_SCENE}, got {quoted(text)}"
        )
    return low, high


def sample_scenes(
    vocabulary: Sequence[str], scenes: int, objects: tuple[int, int], seed: int
) -> Iterable[tuple[str, ...]]:
    """Yield ``scenes`` concept sets drawn evenly from ``vocabulary`` (deterministic per seed).

    Each scene takes concepts among the least used so far (ties broken at random), so after
    any number of scenes the usage counts differ by at most one object per concept at most,
    up to the range of scene sizes.
    """
    if not 1 <= scenes <= MAX_SCENES:
        raise InputError(f"--scenes: expected 1..{MAX_SCENES}, got {scenes}")
    if not vocabulary:
        raise InputError("concept list is empty")
    rng = random.Random(seed)
    names = list(vocabulary)
    usage = dict.fromkeys(names, 0)
    low, high = objects
    for _ in range(scenes):
        k = min(rng.randint(low, high), len(names))
        rng.shuffle(names)
        chosen = sorted(names, key=usage.__getitem__)[:k]  # stable sort keeps the shuffle
        for name in chosen:
            usage[name] += 1
        yield tuple(chosen)


def quota_scenes(
    quotas: Sequence[tuple[str, int]], objects: tuple[int, int], seed: int
) -> Iterable[tuple[str, ...]]:
    """Yield scenes until every concept has appeared in exactly its quota of scenes.

    Each scene takes the concepts with the most remaining quota (ties at random), which packs
    the quotas into as few scenes as the object range allows.
    """
    rng = random.Random(seed)
    remaining = {name: count for name, count in quotas}
    low, high = objects
    while remaining:
        names = list(remaining)
        rng.shuffle(names)
        k = min(rng.randint(low, high), len(names))
        chosen = sorted(names, key=lambda n: -remaining[n])[:k]
        for name in chosen:
            remaining[name] -= 1
            if remaining[name] == 0:
                del remaining[name]
        yield tuple(chosen)


def scene_concepts(
    source: ConceptInput, scenes: int | None, objects: tuple[int, int], seed: int
) -> Iterable[tuple[str, ...]]:
    """The concept sets to plan, in order, for any input form. Checks run before the first set."""
    if scenes is not None and not 1 <= scenes <= MAX_SCENES:
        raise InputError(f"--scenes: expected 1..{MAX_SCENES}, got {scenes}")
    if source.scenes:
        if scenes is not None and scenes != len(source.scenes):
            raise InputError(
                f"--scenes {scenes} given, but the input lists {len(source.scenes)} explicit scenes"
            )
        return source.scenes
    if source.quotas:
        if scenes is not None:
            raise InputError("--scenes cannot be combined with per-concept quotas")
        return quota_scenes(source.quotas, objects, seed)
    count = len(source.vocabulary) if scenes is None else scenes  # default: one scene a concept
    return sample_scenes(source.vocabulary, count, objects, seed)


def scene_total(source: ConceptInput, scenes: int | None, sets: Iterable[tuple[str, ...]]) -> int | None:
    """How many scenes ``sets`` (``scene_concepts``' answer) holds, when known without drawing
    them: explicit scenes and a vocabulary's count; ``None`` for quotas (their scene count
    depends on how the draws pack objects)."""
    if isinstance(sets, tuple):
        return len(sets)
    if source.quotas:
        return None
    return scenes if scenes is not None else len(source.vocabulary)


def all_concepts(source: ConceptInput) -> list[str]:
    """Every concept named anywhere in the input, first-seen order, each once."""
    names = list(source.vocabulary) + [n for n, _ in source.quotas]
    names += [n for scene in source.scenes for n in scene]
    return list(dict.fromkeys(names))

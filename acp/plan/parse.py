"""LLM reply text -> ``ScenePlan``: lenient extraction, unambiguous repairs, strict validation.

Extraction (no repair is recorded for these, they change no value):
- the reply may wrap the JSON in a code fence or in prose; the first JSON object is taken;
- trailing commas before ``}`` or ``]`` are dropped;
- common wrappers are unwrapped (``{"scene": {...}}``, ``{"plan": {...}}``, ...);
- an object's box may be named ``box``, ``bounding_box``, ``xywh``, ... instead of ``bbox``;
- numbers written as strings (``"0.25"``) are read as numbers (pydantic's lax mode): a string that
  parses as a number can only mean that number.

Truncated JSON (the model ran out of tokens) is closed: an open string, array or object is
ended and the element being written when the text stopped is dropped whole, at the outermost
array holding it (a half-written object of ``objects`` or ``relations`` disappears, never a
half-written box). This is recorded as a repair; if a requested object was lost, the concept
check fails and the model is asked again.

Coordinate repairs (recorded in ``ScenePlan.repairs``), applied in this order, each only where
the reading is unambiguous:
1. **Pixels**: every box has a value above ``1 + CLIP_TOLERANCE``, no value exceeds the image
   size, and every box divided by ``(width, height, width, height)`` is a usable box (as
   ``[x, y, w, h]`` or as ``[x1, y1, x2, y2]``). All boxes are divided; a plan mixing
   pixel and normalised boxes is left alone (and fails validation).
2. **Corners instead of size**: the model was told ``[x, y, w, h]``; the plan is read as
   ``[x1, y1, x2, y2]`` when at least one box does not fit the frame as ``[x, y, w, h]``
   (``x + w`` or ``y + h`` above ``1 + CLIP_TOLERANCE``) while every box is a usable
   ``[x1, y1, x2, y2]`` (``x2 > x1``, ``y2 > y1``, inside the frame, sides at least
   ``MIN_BOX_SIDE``). All boxes are converted, since a model uses one convention per reply.
3. **Slight overshoot**: a box that leaves the frame by at most ``CLIP_TOLERANCE`` (0.02 of the
   frame, about 10 px at 512) is clipped to it.

Control and formatting characters (NUL, bidirectional controls, zero-width spaces:
``acp.names.is_hidden``) are removed from the caption, background, categories, descriptions
and predicates, also recorded as a repair: they mean nothing there, and a category must read
as the concept it names.

Then ``SceneDraft`` validates the result, ``layout_problems`` checks overlaps (rejected or
flagged as ``LayoutRules.on_overlap`` says; flagged ones become ``ScenePlan.warnings``), and
``ScenePlan`` checks that every requested concept is present with its count. When the caller
gives the run's ``categories``, every object's category must be one of them (or of the scene's
concepts), compared by ``acp.names.canonical_key`` ("Dogs" and "puppy" are a dog): an object of
another category would have no category to be exported under. Any failure raises
``PlanValidationError`` whose ``problems`` are ``(field, reason)`` pairs, the text the model is
shown when it is asked again.

A reply that cannot be read at all is a ``PlanValidationError`` too, never another exception: an
integer of more than ``MAX_INT_DIGITS`` digits (Python refuses to convert 4300 and more, and
no float holds 309 and more) and JSON nested deeper than the decoder's recursion limit. At most
``MAX_PROBLEMS`` problems are kept, each at most ``MAX_REASON`` characters, so the message sent
back to the model stays small whatever the reply.

Cost: linear in the reply, whatever it holds. Each candidate ``{`` (at most ``_MAX_STARTS``) is
first decoded as strict JSON (C speed, stopping at the first error), then, if that fails, scanned
leniently token by token (a regular expression finds strings, punctuation, blanks and other runs
at C speed), at most ``_MAX_NESTING`` levels deep. Every start of a reply draws on one budget:
``_DECODE_PASSES`` passes over the reply for the decoder and ``_SCAN_PASSES`` for the scan (plus
``_BUDGET_FLOOR`` characters each, so that a short reply is never cut short): a reply of brace or
quote soup costs a few passes over it, not one pass per ``{`` (``bench/bench_llm_parse.py``
measures it). A start past the budget is not tried.
"""

from __future__ import annotations

import itertools
import json
import math
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from acp.boxes import pixels_to_normalized, xyxy_to_xywh
from acp.errors import PlanValidationError
from acp.names import canonical_key, is_hidden
from acp.plan.base import SceneRequest
from acp.schema import (
    MAX_OBJECTS,
    MIN_BOX_SIDE,
    LayoutRules,
    SceneDraft,
    ScenePlan,
    error_problems,
    layout_problems,
)

CLIP_TOLERANCE = 0.02
_CLIP_EPSILON = 1e-9  # overshoots below this are float noise the schema accepts anyway

_WRAPPERS = ("scene", "plan", "layout", "scene_plan", "result", "output", "response", "data")
_BBOX_ALIASES = ("box", "bounding_box", "boundingBox", "bbox_xywh", "xywh", "rect")
_FENCE = re.compile(r"```[ \t]*[A-Za-z0-9_-]*[ \t]*\n?(.*?)(?:```|\Z)", re.DOTALL)
_MAX_STARTS = 50  # candidate "{" positions tried before giving up on a prose reply
# Characters the JSON decoder (C speed) and the lenient scan (a Python step per token) may read
# per character of the reply, over every start tried; the floor keeps a short reply from being
# cut short. A valid reply needs one decoding pass, a truncated one a scan and a decoding.
_DECODE_PASSES = 4
_SCAN_PASSES = 2
_BUDGET_FLOOR = 100_000
_MAX_NESTING = 100  # a plan nests 4 deep; past this a candidate is soup, not a plan
_MAX_KEYS = 64  # keys of one object validated; a plan's objects have 6, the rest are errors anyway
MAX_PROBLEMS = 20  # problems kept per reply (the rest are counted)
MAX_REASON = 500  # characters kept of one problem's reason
# One token of JSON-ish text: a string (an unterminated one runs to the end), one punctuation
# character, a run of blanks, or a run of anything else (numbers, words). Tokens cover the text
# without gaps. No part can backtrack far: each loop stops at a character its tail then takes.
_TOKEN = re.compile(
    r'"[^"\\]*(?:\\[\s\S][^"\\]*)*(?:"|\\?\Z)'
    r"|[{}\[\]:,]"
    r"|\s+"
    r'|[^\s"{}\[\]:,]+'
)
_FIRST_CHUNK, _LARGEST_CHUNK = 256, 65536  # characters tokenised at a time by the scan
# Longest integer read from a reply. No value of a plan needs more than a handful of digits; a
# longer one is a runaway reply, refused with a clear problem instead of Python's own errors.
MAX_INT_DIGITS = 100
_LONG_DIGITS = re.compile(rf"(?<![0-9])[0-9]{{{MAX_INT_DIGITS + 1}}}")


class _NumberTooLong(ValueError):
    def __init__(self, digits: int):
        super().__init__(f"integer of {digits} digits")
        self.digits = digits


def _parse_int(text: str) -> int:
    digits = len(text) - text.startswith("-")
    if digits > MAX_INT_DIGITS:
        raise _NumberTooLong(digits)
    return int(text)


@dataclass
class ExtractedJSON:
    value: dict[str, Any]
    repairs: list[str] = field(default_factory=list)


def extract_json(text: str) -> ExtractedJSON:
    """The first JSON object in ``text``, tolerating fences, prose, trailing commas, truncation.

    Raises ``PlanValidationError`` with a ``("(reply)", reason)`` problem when there is none.
    Linear in ``len(text)`` (see the module docstring).
    """
    if not text or not text.strip():
        raise PlanValidationError("empty reply", [("(reply)", "the reply is empty")])
    budget = _Budget(decoding=_DECODE_PASSES * len(text) + _BUDGET_FLOOR,
                     scanning=_SCAN_PASSES * len(text) + _BUDGET_FLOOR)
    # A Python call per integer costs more than all the rest of the decoding: the integers'
    # lengths are checked that way only when the text holds a digit run long enough to matter.
    decoder = _CHECKED_DECODER if _LONG_DIGITS.search(text) else _DECODER
    for body in _fenced_first(text):
        found = _first_object(body, budget, decoder)
        if found is not None:
            return found
    raise PlanValidationError(
        "no JSON object in the reply", [("(reply)", "no JSON object found in the reply")]
    )


def _fenced_first(text: str) -> Iterator[str]:
    """Fenced blocks holding a ``{`` first (an unclosed fence runs to the end), then the text."""
    for match in _FENCE.finditer(text):
        if "{" in match.group(1):
            yield match.group(1)
    yield text


@dataclass
class _Budget:
    """Characters left to read, shared by every start tried in one reply."""

    decoding: int
    scanning: int


_DECODER = json.JSONDecoder()
_CHECKED_DECODER = json.JSONDecoder(parse_int=_parse_int)


def _first_object(text: str, budget: _Budget, decoder: json.JSONDecoder) -> ExtractedJSON | None:
    start = text.find("{")
    tried = 0
    while start >= 0 and tried < _MAX_STARTS:
        tried += 1
        value = _decode(decoder, text, start, budget)
        truncated = False
        if value is None:  # not strict JSON from here: close it leniently, then decode that
            closed = _close(text, start, budget)
            if closed is not None:
                candidate, truncated = closed
                value = _decode(decoder, candidate, 0, budget)
        if isinstance(value, dict):
            repairs = ["closed truncated JSON, dropping its incomplete last element"] if truncated else []
            return ExtractedJSON(value, repairs)
        start = text.find("{", start + 1)
    return None


def _decode(decoder: json.JSONDecoder, text: str, start: int, budget: _Budget) -> Any:
    """The JSON value at ``text[start]``, or None where there is none or the budget is spent.
    A number too long or nesting too deep to be read fails the whole reply."""
    if budget.decoding <= 0:
        return None
    try:
        value, end = decoder.raw_decode(text, start)
    except _NumberTooLong as error:
        reason = (f"a number has {error.digits} digits, more than can be read; write every "
                  "value as a short number, e.g. 0.25 for a coordinate")
        raise PlanValidationError(reason, [("(reply)", reason)]) from None
    except RecursionError:
        raise _too_deep() from None
    except json.JSONDecodeError as error:  # it stopped at the error
        budget.decoding -= error.pos - start + 1
        return None
    except ValueError:  # an unreadable value
        budget.decoding -= len(text) - start
        return None
    budget.decoding -= end - start
    if _nests_deeper(value, _MAX_NESTING):  # what reads it next (redaction, pydantic) recurses
        raise _too_deep()
    return value


def _too_deep() -> PlanValidationError:
    reason = "the JSON is nested too deeply to be read; reply with the flat plan object"
    return PlanValidationError(reason, [("(reply)", reason)])


def _nests_deeper(value: Any, limit: int) -> bool:
    """Whether ``value`` has lists or dicts nested more than ``limit`` deep (walked without
    recursion, once over its containers' items)."""
    level: list[Iterator[Any]] = [iter((value,))]
    while level:
        item = next(level[-1], _END)
        if item is _END:
            level.pop()
        elif isinstance(item, dict | list):
            if len(level) > limit:
                return True
            level.append(iter(item.values() if isinstance(item, dict) else item))
    return False


_END = object()


@dataclass(slots=True)
class _Frame:
    closer: str  # "}" or "]"
    mark: int  # length of the output after the last complete element
    expects_value: bool  # in an object: a ":" was seen, the next token is a value


def close_json(text: str) -> tuple[str, bool]:
    """Cut ``text`` (starting at ``{`` or ``[``) after its first complete JSON value.

    Trailing commas are removed on the way. If the text ends first, the value is closed: the
    element being written is dropped at the outermost open array (see the module docstring),
    or, with no array open, at the innermost object, and the open brackets are closed.
    Returns ``(json_text, truncated)``; the result is not guaranteed to parse.
    """
    closed = _close(text, 0, _Budget(0, len(text) + 1), max_nesting=None)
    assert closed is not None  # a scan with budget for the whole text and no nesting limit ends
    return closed


def _close(text: str, start: int, budget: _Budget,
           max_nesting: int | None = _MAX_NESTING) -> tuple[str, bool] | None:
    """``close_json(text[start:])`` without the copy, or None when the value nests deeper than
    ``max_nesting`` or the scan would read past ``budget.scanning`` (which it draws from)."""
    out: list[str] = []
    stack: list[_Frame] = []
    pending_scalar = False  # a number or word was written: complete once a separator follows
    stop = min(len(text), start + max(budget.scanning, 0))
    for token in _tokens(text, start, stop, budget):
        first = token[0]
        if pending_scalar and (first in ",}]:" or first.isspace()):
            pending_scalar = False
            if stack:
                stack[-1].mark = len(out)
        if first == '"':
            top = stack[-1] if stack else None
            is_value = top is None or top.closer == "]" or top.expects_value
            out.append(token)
            if not _closed_string(token):
                break  # the text ended inside this string
            if is_value and stack:
                stack[-1].mark = len(out)
        elif first == "{" or first == "[":
            out.append(first)
            stack.append(_Frame("}" if first == "{" else "]", len(out), False))
            if max_nesting is not None and len(stack) > max_nesting:
                return None
        elif first == "}" or first == "]":
            while out and out[-1].isspace():
                out.pop()
            if out and out[-1] == ",":
                out.pop()
            out.append(first)
            if stack:
                stack.pop()
            if not stack:
                return "".join(out), False
            stack[-1].expects_value = False
            stack[-1].mark = len(out)
        elif first == ":":
            if stack:
                stack[-1].expects_value = True
            out.append(first)
        elif first == ",":
            if stack and stack[-1].closer == "}":
                stack[-1].expects_value = False
            out.append(first)
        else:
            pending_scalar = not first.isspace()
            out.append(token)
    if stop < len(text) or not stack:  # out of budget (or the text held no bracket at all)
        return None if stop < len(text) else ("".join(out), False)
    # The text ended inside the value: a scalar at the very end may be cut short (0.2 of 0.25),
    # so it counts as incomplete like an open string.
    arrays = [k for k, frame in enumerate(stack) if frame.closer == "]"]
    level = arrays[0] if arrays else len(stack) - 1
    kept = "".join(out[: stack[level].mark])
    return kept + "".join(frame.closer for frame in reversed(stack[: level + 1])), True


def _tokens(text: str, start: int, stop: int, budget: _Budget) -> Iterator[str]:
    """The ``_TOKEN``s of ``text[start:stop]``, found by ``findall`` in chunks that grow from
    ``_FIRST_CHUNK`` (a value that closes soon costs little) to ``_LARGEST_CHUNK`` (a long scan
    runs at ``findall``'s speed). The last token of a chunk may have been cut by its end, so it
    is read again with the next chunk. Each chunk is drawn from ``budget.scanning``."""
    size = _FIRST_CHUNK
    while start < stop:
        end = min(stop, start + size)
        found = _TOKEN.findall(text, start, end)
        if end < stop:
            end -= len(found.pop())
            if end == start:  # one token longer than the chunk: read a larger one
                size *= 2
                continue
        budget.scanning -= end - start
        yield from found
        start = end
        size = min(size * 2, _LARGEST_CHUNK)


def _closed_string(token: str) -> bool:
    """Whether a string token ends with its closing quote (not one escaped by a backslash)."""
    if len(token) < 2 or token[-1] != '"':
        return False
    body = token[:-1]
    return (len(body) - len(body.rstrip("\\"))) % 2 == 0


def _unwrap(value: dict[str, Any]) -> dict[str, Any]:
    while len(value) == 1:
        (key, inner), = value.items()
        if key.lower() not in _WRAPPERS or not isinstance(inner, dict):
            break
        value = inner
    return value


def _few_keys(value: dict[str, Any]) -> dict[str, Any]:
    """``value`` with the plan, each object and each relation cut to their first ``_MAX_KEYS``
    keys: each unknown key is a validation error of its own, and no valid plan has that many,
    so a reply of 100,000 keys fails as it would whole, at the cost of ``_MAX_KEYS``."""

    def cut(item: Any) -> Any:
        return dict(itertools.islice(item.items(), _MAX_KEYS)) if isinstance(item, dict) else item

    value = cut(value)
    for key in ("objects", "relations"):
        if isinstance(value.get(key), list):
            value[key] = [cut(item) for item in value[key]]
    return value


def _rename_bbox_aliases(value: dict[str, Any]) -> None:
    objects = value.get("objects")
    if not isinstance(objects, list):
        return
    for item in objects:
        if not isinstance(item, dict) or "bbox" in item:
            continue
        aliases = [a for a in _BBOX_ALIASES if a in item]
        if len(aliases) == 1:
            item["bbox"] = item.pop(aliases[0])


def _strip_hidden(value: dict[str, Any]) -> int:
    """Remove control and formatting characters (``acp.names.is_hidden``) from the texts of a
    reply in place; returns how many. They carry no meaning in a caption or a category, and a
    bidirectional control would make a category differ from the concept it looks like."""
    removed = 0

    def clean(holder: Any, key: str) -> None:
        nonlocal removed
        text = holder.get(key) if isinstance(holder, dict) else None
        if isinstance(text, str):
            kept = "".join(c for c in text if not is_hidden(c))
            removed += len(text) - len(kept)
            holder[key] = kept

    for key in ("caption", "background"):
        clean(value, key)
    objects, relations = value.get("objects"), value.get("relations")
    for item in objects if isinstance(objects, list) else []:
        clean(item, "category")
        clean(item, "description")
    for item in relations if isinstance(relations, list) else []:
        clean(item, "predicate")
    return removed


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    try:
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            return float(value.strip())
    except (ValueError, OverflowError):  # not a number, or an int beyond any float
        return None
    return None


def _numeric_boxes(value: dict[str, Any]) -> list[list[float]] | None:
    """Every object's box as 4 finite floats, or ``None`` when any box is not one (or there are
    more objects than a plan may hold: validation refuses those, repaired or not)."""
    objects = value.get("objects")
    if not isinstance(objects, list) or not objects or len(objects) > MAX_OBJECTS:
        return None
    boxes = []
    for item in objects:
        box = item.get("bbox") if isinstance(item, dict) else None
        if not isinstance(box, (list, tuple)) or len(box) != 4:
            return None
        numbers = [_number(v) for v in box]
        if any(n is None or not math.isfinite(n) for n in numbers):
            return None
        boxes.append([n for n in numbers if n is not None])
    return boxes


def _fits_xywh(box: list[float], tolerance: float = CLIP_TOLERANCE) -> bool:
    x, y, w, h = box
    return (
        x >= -tolerance and y >= -tolerance and x + w <= 1 + tolerance and y + h <= 1 + tolerance
        and w >= MIN_BOX_SIDE and h >= MIN_BOX_SIDE
    )


def _fits_xyxy(box: list[float]) -> bool:
    x1, y1, x2, y2 = box
    return _fits_xywh([x1, y1, x2 - x1, y2 - y1])


def _clip_span(start: float, size: float) -> tuple[float, float]:
    """``(start, size)`` of a span cut to [0, 1]; a span already inside is returned untouched."""
    if start >= 0 and start + size <= 1:
        return start, size
    begin, end = max(start, 0.0), min(start + size, 1.0)
    return begin, end - begin


def repair_boxes(boxes: list[list[float]], width: int, height: int) -> tuple[list[list[float]], list[str]]:
    """Apply the coordinate repairs of the module docstring; returns the boxes and the repairs."""
    repairs: list[str] = []
    if all(max(b) > 1 + CLIP_TOLERANCE for b in boxes) and all(
        min(b) >= 0 and max(b[0], b[2]) <= width * (1 + CLIP_TOLERANCE)
        and max(b[1], b[3]) <= height * (1 + CLIP_TOLERANCE) for b in boxes
    ):
        scaled = pixels_to_normalized(boxes, width, height).tolist()
        if all(_fits_xywh(b) or _fits_xyxy(b) for b in scaled):
            boxes = scaled
            repairs.append(f"bbox in pixels: divided by the image size {width}x{height}")
    if not all(_fits_xywh(b) for b in boxes) and all(_fits_xyxy(b) for b in boxes):
        boxes = xyxy_to_xywh(boxes).tolist()
        repairs.append("bbox given as [x1, y1, x2, y2]: converted to [x, y, w, h]")
    clipped = []
    for index, box in enumerate(boxes):
        x, y, w, h = box
        overshoot = max(-x, -y, x + w - 1, y + h - 1)
        if _CLIP_EPSILON < overshoot <= CLIP_TOLERANCE:
            (x, w), (y, h) = _clip_span(x, w), _clip_span(y, h)
            box = [x, y, w, h]
            repairs.append(f"objects[{index}].bbox clipped to the frame (overshoot {overshoot:.3f})")
        clipped.append(box)
    return clipped, repairs


def allowed_names(categories: Iterable[str], concepts: Iterable[str] = ()) -> list[str]:
    """``categories`` then ``concepts``, one name per ``canonical_key`` (the first spelling)."""
    names: dict[str, str] = {}
    for name in (*categories, *concepts):
        key = canonical_key(name)
        if key and key not in names:
            names[key] = " ".join(name.split())
    return list(names.values())


def category_problems(draft: SceneDraft, categories: Sequence[str]) -> list[tuple[str, str]]:
    """Objects whose category is none of ``categories`` (by ``canonical_key``), as problems."""
    names = allowed_names(categories)
    allowed = {canonical_key(name) for name in names}
    listed = ", ".join(names)
    return [
        (f"objects[{i}].category",
         f"{obj.category!r} is not one of the requested categories: {listed}; use only these")
        for i, obj in enumerate(draft.objects)
        if canonical_key(obj.category) not in allowed
    ]


def parse_draft(
    text: str,
    width: int,
    height: int,
    rules: LayoutRules | None = None,
    *,
    categories: Sequence[str] | None = None,
    clean: Callable[[Any], Any] | None = None,
) -> tuple[SceneDraft, list[str], list[str]]:
    """Reply text -> ``(draft, repairs, warnings)``; raises ``PlanValidationError``.

    Checks everything a draft alone can be checked for: schema, geometry, overlaps and, when
    ``categories`` is given, that every object is of one of those categories. ``clean`` is
    applied to the decoded JSON before anything reads it (the LLM planner redacts the API key
    there: JSON escapes can hide it from a redaction of the raw text).
    """
    rules = rules or LayoutRules()
    extracted = extract_json(text)
    value = _few_keys(_unwrap(clean(extracted.value) if clean is not None else extracted.value))
    repairs = list(extracted.repairs)
    hidden = _strip_hidden(value)
    if hidden:
        repairs.append(f"removed {hidden} control or formatting characters from the texts")
    _rename_bbox_aliases(value)
    boxes = _numeric_boxes(value)
    if boxes is not None:
        fixed, box_repairs = repair_boxes(boxes, width, height)
        if box_repairs:
            for item, box in zip(value["objects"], fixed, strict=True):
                item["bbox"] = box
            repairs.extend(box_repairs)
    try:
        draft = SceneDraft.model_validate(value)
    except ValidationError as error:
        raise _invalid(error_problems(error)) from None
    problems = category_problems(draft, categories) if categories is not None else []
    overlaps = layout_problems(draft, rules)
    if overlaps and rules.on_overlap == "reject":
        problems.extend(overlaps)
        overlaps = []
    if problems:
        raise _invalid(problems)
    return draft, repairs, [f"{f}: {r}" for f, r in overlaps]


def parse_plan(
    text: str,
    request: SceneRequest,
    rules: LayoutRules | None = None,
    *,
    planner: str = "openai",
    model: str | None = None,
    attempts: int = 1,
    categories: Sequence[str] | None = None,
    clean: Callable[[Any], Any] | None = None,
) -> ScenePlan:
    """Reply text -> the stored ``ScenePlan`` for ``request``; raises ``PlanValidationError``.

    ``categories`` (the run's concept names; None allows any) limits the objects' categories;
    the request's own concepts are always allowed.
    """
    if categories is not None:
        categories = allowed_names(categories, request.concepts)
    draft, repairs, warnings = parse_draft(text, request.width, request.height, rules,
                                           categories=categories, clean=clean)
    try:
        return ScenePlan(
            **draft.model_dump(),
            id=request.id,
            concepts=list(request.concepts),
            width=request.width,
            height=request.height,
            planner=planner,
            model=model,
            seed=request.seed,
            repairs=repairs,
            warnings=warnings,
            attempts=attempts,
        )
    except ValidationError as error:
        raise _invalid(error_problems(error)) from None


def _invalid(problems: list[tuple[str, str]]) -> PlanValidationError:
    """The error for ``problems``, at most ``MAX_PROBLEMS`` of them and ``MAX_REASON``
    characters each: a reply with thousands of unknown keys or a huge category name must not
    make a huge re-ask, failure reason or log line."""
    kept = [(field[:MAX_REASON], _cut(reason, MAX_REASON)) for field, reason in problems[:MAX_PROBLEMS]]
    if len(problems) > MAX_PROBLEMS:
        kept.append(("(reply)", f"and {len(problems) - MAX_PROBLEMS} more problems like these"))
    return PlanValidationError("; ".join(f"{f}: {r}" for f, r in kept), kept)


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"

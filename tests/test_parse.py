"""Lenient extraction, coordinate repairs and strict validation of LLM replies (acp.plan.parse)."""

from __future__ import annotations

import asyncio
import json
import math
import time
from dataclasses import dataclass

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from acp.boxes import normalized_to_pixels, xywh_to_xyxy
from acp.errors import PlanValidationError
from acp.llm import ChatClient, ChatSettings
from acp.plan.base import SceneRequest
from acp.plan.parse import (
    CLIP_TOLERANCE,
    MAX_INT_DIGITS,
    close_json,
    extract_json,
    parse_draft,
    parse_plan,
    repair_boxes,
)
from acp.schema import MIN_BOX_SIDE, LayoutRules, ScenePlan

DOG = [0.1, 0.5, 0.3, 0.4]
DISC = [0.6, 0.2, 0.1, 0.08]


def draft(*boxes: list[float] | list[str], relations: bool = True, **extra: object) -> dict[str, object]:
    boxes = boxes or (DOG, DISC)
    names = ["dog", "frisbee", "person", "chair"]
    objects = [{"id": i, "category": names[i], "description": f"a red {names[i]}", "bbox": list(b)}
               for i, b in enumerate(boxes)]
    rel = [{"subject": 0, "predicate": "below", "object": 1}] if relations and len(boxes) > 1 else []
    return {"caption": "A dog jumps for a frisbee.", "background": "a park", "objects": objects,
            "relations": rel, **extra}


def text(value: object) -> str:
    return json.dumps(value)


@dataclass
class Ok:
    boxes: list[list[float]]
    repairs: tuple[str, ...] = ()  # substrings, one per expected repair, in order
    warnings: int = 0


@dataclass
class Fail:
    field: str
    reason: str  # substring of the reason


VALID = text(draft())
PIXEL_640 = draft([64.0, 240.0, 192.0, 192.0], [384.0, 96.0, 64.0, 38.4])
XYXY = draft([0.1, 0.5, 0.4, 0.9], [0.6, 0.2, 0.7, 0.28])
TRUNCATED_REL = VALID[: VALID.index('"predicate"') + 5]
TRUNCATED_OBJ = VALID[: VALID.rindex('"bbox"') + 14]

ROWS: list[tuple[str, str, tuple[int, int], Ok | Fail]] = [
    ("plain json", VALID, (512, 512), Ok([DOG, DISC])),
    ("fenced", f"```json\n{VALID}\n```", (512, 512), Ok([DOG, DISC])),
    ("fence without language", f"```\n{VALID}\n```\n", (512, 512), Ok([DOG, DISC])),
    ("prose with braces around", f"Here {{is}} your plan:\n{VALID}\nHope it helps {{:}}", (512, 512),
     Ok([DOG, DISC])),
    ("trailing commas", VALID.replace("}", ",}").replace("]", " ,\n]"), (512, 512), Ok([DOG, DISC])),
    ("scene wrapper", text({"scene": draft()}), (512, 512), Ok([DOG, DISC])),
    ("nested wrappers", text({"result": {"plan": draft()}}), (512, 512), Ok([DOG, DISC])),
    ("list around the object", text([draft()]), (512, 512), Ok([DOG, DISC])),
    ("box alias", VALID.replace('"bbox"', '"box"'), (512, 512), Ok([DOG, DISC])),
    ("bounding_box alias", VALID.replace('"bbox"', '"bounding_box"'), (512, 512), Ok([DOG, DISC])),
    ("string numbers", text(draft([str(v) for v in DOG], [str(v) for v in DISC])), (512, 512),
     Ok([DOG, DISC])),
    ("pixels", text(PIXEL_640), (640, 480), Ok([DOG, DISC], ("pixels",))),
    ("corners", text(XYXY), (512, 512), Ok([DOG, DISC], ("[x1, y1, x2, y2]",))),
    ("pixel corners", text(draft([64, 240, 256, 432], [384, 96, 448, 134.4])), (640, 480),
     Ok([DOG, DISC], ("pixels", "[x1, y1, x2, y2]"))),
    ("overshoot right", text(draft(DOG, [0.6, 0.2, 0.41, 0.08])), (512, 512),
     Ok([DOG, [0.6, 0.2, 0.4, 0.08]], ("objects[1].bbox clipped",))),
    ("overshoot left", text(draft([-0.01, 0.5, 0.31, 0.4], DISC)), (512, 512),
     Ok([[0.0, 0.5, 0.3, 0.4], DISC], ("objects[0].bbox clipped",))),
    ("truncated relation", TRUNCATED_REL, (512, 512), Ok([DOG, DISC], ("truncated",))),
    ("truncated in fence", "```json\n" + TRUNCATED_REL, (512, 512), Ok([DOG, DISC], ("truncated",))),
    ("overlap flagged", text(draft(DOG, [0.1, 0.5, 0.3, 0.41])), (512, 512),
     Ok([DOG, [0.1, 0.5, 0.3, 0.41]], warnings=1)),
    # failures
    ("empty", "  \n", (512, 512), Fail("(reply)", "empty")),
    ("refusal", "I can't help with that.", (512, 512), Fail("(reply)", "no JSON object")),
    ("truncated object loses a concept", TRUNCATED_OBJ, (512, 512),
     Fail("(record)", "requested concepts missing")),
    ("large overshoot", text(draft(DOG, [0.6, 0.2, 0.45, 0.08])), (512, 512),
     Fail("objects[1].bbox", "leaves the frame")),
    ("mixed pixels and fractions", text(draft([64.0, 240.0, 192.0, 192.0], DISC)), (640, 480),
     Fail("objects[0].bbox", "leaves the frame")),
    ("negative width", text(draft([0.1, 0.5, -0.3, 0.4], DISC)), (512, 512),
     Fail("objects[0].bbox", "must be > 0")),
    ("box too small", text(draft([0.1, 0.5, 0.01, 0.4], DISC)), (512, 512),
     Fail("objects[0].bbox", "too small")),
    ("NaN", VALID.replace("0.3", "NaN", 1), (512, 512), Fail("objects[0].bbox", "finite")),
    ("three numbers", VALID.replace("0.1, 0.5, 0.3, 0.4", "0.1, 0.5, 0.3"), (512, 512),
     Fail("objects[0].bbox[3]", "Field required")),
    ("unknown key", text(draft(colour="red")), (512, 512), Fail("colour", "Extra inputs")),
    ("bbox and alias both", VALID.replace('"bbox": [0.6', '"box": [0.6, 0.2, 0.1, 0.08], "bbox": [0.6'),
     (512, 512), Fail("objects[1].box", "Extra inputs")),
    ("missing caption", text({k: v for k, v in draft().items() if k != "caption"}), (512, 512),
     Fail("caption", "Field required")),
    ("duplicate ids", VALID.replace('"id": 1', '"id": 0'), (512, 512), Fail("(record)", "unique")),
    ("relation to unknown id", VALID.replace('"object": 1', '"object": 7'), (512, 512),
     Fail("(record)", "unknown object ids [7]")),
    ("missing concept", VALID.replace('"frisbee"', '"ball"'), (512, 512),
     Fail("(record)", "missing from objects: ['frisbee']")),
    ("too many objects", text({**draft(), "objects": [
        {"id": i, "category": "dog" if i == 0 else "frisbee" if i == 1 else "cup", "description": "a cup",
         "bbox": [(i % 6) / 6, (i // 6) / 6, 0.1, 0.1]} for i in range(31)]}), (512, 512),
     Fail("objects", "at most 30")),
]


@pytest.mark.parametrize(("text_in", "size", "expected"), [r[1:] for r in ROWS], ids=[r[0] for r in ROWS])
def test_parse_rows(text_in: str, size: tuple[int, int], expected: Ok | Fail) -> None:
    request = SceneRequest(id="scene-1", concepts=("dog", "frisbee"), seed=7, width=size[0], height=size[1])
    rules = LayoutRules(max_overlap=0.7, on_overlap="flag")
    if isinstance(expected, Fail):
        with pytest.raises(PlanValidationError) as caught:
            parse_plan(text_in, request, rules)
        assert any(field == expected.field and expected.reason in reason
                   for field, reason in caught.value.problems), caught.value.problems
        return
    plan = parse_plan(text_in, request, rules, model="m", attempts=2)
    assert [list(o.bbox) for o in plan.objects] == [pytest.approx(b) for b in expected.boxes]
    assert len(plan.repairs) == len(expected.repairs), plan.repairs
    for repair, wanted in zip(plan.repairs, expected.repairs, strict=True):
        assert wanted in repair
    assert len(plan.warnings) == expected.warnings
    assert (plan.id, plan.seed, plan.model, plan.attempts, plan.planner) == ("scene-1", 7, "m", 2, "openai")
    assert (plan.width, plan.height) == size
    ScenePlan.model_validate_json(plan.model_dump_json())  # the stored record reads back


def test_overlap_rejected_by_default() -> None:
    request = SceneRequest(id="s", concepts=("dog", "frisbee"), seed=1)
    with pytest.raises(PlanValidationError) as caught:
        parse_plan(text(draft(DOG, [0.1, 0.5, 0.3, 0.41])), request)
    assert caught.value.problems[0][0] == "objects[0].bbox"
    assert "IoU" in caught.value.problems[0][1]


def test_extract_takes_first_object_and_ignores_prose_braces() -> None:
    found = extract_json('Note {this} and {"a": {"b": [1, 2,]},} then {"c": 3}')
    assert found.value == {"a": {"b": [1, 2]}}
    assert found.repairs == []


@pytest.mark.parametrize(("prefix", "expected"), [
    ('{"a": 1, "b": [1, 2', {"a": 1, "b": [1]}),  # a number at the very end may be cut short
    ('{"a": [{"x": 1}, {"x": 2, "y"', {"a": [{"x": 1}]}),  # half object dropped at the array
    ('{"a": [{"x": 1}, {"x": [0.1, 0.2', {"a": [{"x": 1}]}),  # never a half box
    ('{"a": "text with \\"quote', {}),
    ('{"a": {"b": 1, "c": "x', {"a": {"b": 1}}),
    ('{"a": 1, "b"', {"a": 1}),
    ('{', {}),
])
def test_close_json_drops_the_incomplete_element(prefix: str, expected: dict[str, object]) -> None:
    closed, truncated = close_json(prefix)
    assert truncated
    assert json.loads(closed) == expected


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4),
    max_leaves=20,
)


@settings(max_examples=150, deadline=None)
@given(st.dictionaries(st.text(max_size=5), json_values, min_size=1, max_size=4), st.booleans())
def test_close_json_always_yields_an_object_for_any_prefix(value: dict[str, object], indent: bool) -> None:
    whole = json.dumps(value, indent=2 if indent else None)
    closed, truncated = close_json(whole + " trailing prose")
    assert not truncated and json.loads(closed) == value
    for cut in range(1, len(whole)):
        closed, truncated = close_json(whole[:cut])
        assert isinstance(json.loads(closed), dict), (whole[:cut], closed)


@st.composite
def plan_boxes(draw: st.DrawFn, max_boxes: int = 5) -> list[list[float]]:
    """Valid normalised xywh boxes, kept clear of the minimum-size and frame edges."""
    side = MIN_BOX_SIDE * 1.01
    boxes = []
    for _ in range(draw(st.integers(1, max_boxes))):
        x = draw(st.floats(0.0, 1 - 2 * side))
        y = draw(st.floats(0.0, 1 - 2 * side))
        w = draw(st.floats(side, 1 - x))
        h = draw(st.floats(side, 1 - y))
        assume(x + w <= 1 and y + h <= 1)
        boxes.append([x, y, w, h])
    return boxes


sizes = st.integers(32, 256).map(lambda k: k * 8)


@settings(max_examples=200, deadline=None)
@given(plan_boxes(), sizes, sizes)
def test_pixel_repair_inverts_normalized_to_pixels(boxes: list[list[float]], width: int, height: int) -> None:
    pixels = normalized_to_pixels(boxes, width, height).tolist()
    repaired, repairs = repair_boxes(pixels, width, height)
    assert repairs == [f"bbox in pixels: divided by the image size {width}x{height}"]
    assert repaired == [pytest.approx(b, abs=1e-12) for b in boxes]


@settings(max_examples=200, deadline=None)
@given(plan_boxes())
def test_corner_repair_inverts_xywh_to_xyxy(boxes: list[list[float]]) -> None:
    corners = xywh_to_xyxy(boxes).tolist()
    # The rule fires only when some box cannot be [x, y, w, h]; otherwise the reply is ambiguous.
    assume(any(x + w > 1 + CLIP_TOLERANCE or y + h > 1 + CLIP_TOLERANCE for x, y, w, h in corners))
    repaired, repairs = repair_boxes(corners, 512, 512)
    assert repairs == ["bbox given as [x1, y1, x2, y2]: converted to [x, y, w, h]"]
    assert repaired == [pytest.approx(b, abs=1e-12) for b in boxes]


@settings(max_examples=200, deadline=None)
@given(plan_boxes(), sizes, sizes)
def test_valid_boxes_are_never_repaired(boxes: list[list[float]], width: int, height: int) -> None:
    repaired, repairs = repair_boxes(boxes, width, height)
    assert repairs == []
    assert repaired == boxes


@settings(max_examples=100, deadline=None)
@given(plan_boxes(max_boxes=1), st.floats(1e-6, CLIP_TOLERANCE * 0.99))
def test_clip_keeps_small_overshoot_inside_the_frame(boxes: list[list[float]], overshoot: float) -> None:
    x, y, w, h = boxes[0]
    assume(w > 2 * CLIP_TOLERANCE and x + w > 0.5)
    shifted = [x, y, 1 - x + overshoot, h]
    repaired, repairs = repair_boxes([shifted], 512, 512)
    assert len(repairs) == 1 and "clipped" in repairs[0]
    rx, ry, rw, rh = repaired[0]
    assert math.isclose(rx + rw, 1.0) and (rx, ry, rh) == (x, y, h)


# --- categories --------------------------------------------------------------------------------

def with_extra(category: str) -> str:
    value = draft()
    value["objects"].append(  # type: ignore[attr-defined]
        {"id": 2, "category": category, "description": f"a {category}", "bbox": [0.02, 0.02, 0.1, 0.1]})
    return text(value)


@pytest.mark.parametrize("extra", ["person", "Person", "people", "woman", "dog", "Dogs", "puppy", "frisbees"])
def test_extra_object_of_an_allowed_category_is_accepted(extra: str) -> None:
    request = SceneRequest(id="s", concepts=("dog", "frisbee"), seed=1)
    plan = parse_plan(with_extra(extra), request, categories=("dog", "frisbee", "person"))
    assert [o.category for o in plan.objects] == ["dog", "frisbee", extra]


@pytest.mark.parametrize("extra", ["person", "lamp", "tree"])
def test_object_of_another_category_is_a_problem(extra: str) -> None:
    request = SceneRequest(id="s", concepts=("dog", "frisbee"), seed=1)
    with pytest.raises(PlanValidationError) as caught:
        parse_plan(with_extra(extra), request, categories=("dog", "Dogs", "frisbee"))
    assert caught.value.problems == [(
        "objects[2].category",
        f"{extra!r} is not one of the requested categories: dog, frisbee; use only these",
    )]


def test_without_categories_any_category_is_accepted() -> None:
    request = SceneRequest(id="s", concepts=("dog", "frisbee"), seed=1)
    assert parse_plan(with_extra("lamp"), request).objects[2].category == "lamp"
    assert parse_plan(with_extra("lamp"), request, categories=None).objects[2].category == "lamp"
    draft_only, _, _ = parse_draft(with_extra("lamp"), 512, 512)
    assert draft_only.objects[2].category == "lamp"


def test_request_concepts_are_always_allowed() -> None:
    # a caller whose run categories miss a scene concept must not make that concept impossible
    request = SceneRequest(id="s", concepts=("dog", "frisbee"), seed=1)
    plan = parse_plan(VALID, request, categories=("dog",))
    assert [o.category for o in plan.objects] == ["dog", "frisbee"]
    with pytest.raises(PlanValidationError, match="requested categories: dog, frisbee;"):
        parse_plan(with_extra("cat"), request, categories=("dog",))


def test_category_and_overlap_problems_are_reported_together() -> None:
    value = json.loads(with_extra("lamp"))
    value["objects"][1]["bbox"] = DOG
    with pytest.raises(PlanValidationError) as caught:
        parse_draft(text(value), 512, 512, LayoutRules(), categories=("dog", "frisbee"))
    fields = [f for f, _ in caught.value.problems]
    assert fields == ["objects[2].category", "objects[0].bbox"]


# --- replies Python cannot read as they stand ---------------------------------------------------

@pytest.mark.parametrize("digits", [MAX_INT_DIGITS + 1, 400, 4300, 5000, 100_000])
@pytest.mark.parametrize("where", ["bbox", "id", "negative depth"])
def test_huge_integer_is_a_validation_problem(digits: int, where: str) -> None:
    value = draft()
    target = value["objects"][0]  # type: ignore[index]
    if where == "bbox":
        target["bbox"][2] = "@N@"
    elif where == "id":
        target["id"] = "@N@"
    else:
        target["depth"] = "-@N@"
    reply = text(value).replace('"@N@"', "7" * digits).replace('"-@N@"', "-" + "7" * digits)
    request = SceneRequest(id="s", concepts=("dog", "frisbee"), seed=1)
    with pytest.raises(PlanValidationError) as caught:
        parse_plan(reply, request)
    assert caught.value.problems == [(
        "(reply)", f"a number has {digits} digits, more than can be read; write every value as a "
        "short number, e.g. 0.25 for a coordinate")]


def test_integer_of_max_digits_is_read_and_validated() -> None:
    reply = VALID.replace("0.3", "9" * MAX_INT_DIGITS, 1)
    request = SceneRequest(id="s", concepts=("dog", "frisbee"), seed=1)
    with pytest.raises(PlanValidationError) as caught:
        parse_plan(reply, request)
    assert caught.value.problems[0][0] == "objects[0].bbox"


def test_deeply_nested_json_is_a_validation_problem() -> None:
    depth = 200_000
    reply = '{"caption": "x", "objects": ' + "[" * depth + "]" * depth + "}"
    with pytest.raises(PlanValidationError) as caught:
        parse_plan(reply, SceneRequest(id="s", concepts=("dog",), seed=1))
    assert caught.value.problems[0][0] == "(reply)" and "nested too deeply" in caught.value.problems[0][1]


# --- the cost of reading a reply: linear, whatever it holds -------------------------------------

SOUPS = {
    "brace soup": lambda n: "{" * n,
    "quote soup": lambda n: '{"' * (n // 2),
    "escaped quote soup": lambda n: '{"{' + '\\"{' * (n // 3),
    "many fences": lambda n: '```json\n{"objects": [1, 2, x\n```\n' * (n // 33),
    "prose braces": lambda n: "{as requested} " * (n // 15),
    "nested starts, junk": lambda n: "{x," * 40 + "x," * (n // 2),
    "nested starts, long prefix": lambda n: '{"a":[' * 40 + "1," * (n // 2),
    "truncated object list": lambda n: '{"objects":[' + '{"bbox":[0,0,0,0]},' * (n // 19),
}


class _Counting:
    """Counts the characters a tokeniser or decoder of ``acp.plan.parse`` is asked to read."""

    def __init__(self, inner: object):
        self.inner, self.read = inner, 0

    def findall(self, text: str, start: int, end: int) -> list[str]:
        self.read += end - start
        return self.inner.findall(text, start, end)  # type: ignore[attr-defined]

    def raw_decode(self, text: str, start: int) -> tuple[object, int]:
        try:
            value, end = self.inner.raw_decode(text, start)  # type: ignore[attr-defined]
        except json.JSONDecodeError as error:
            self.read += error.pos - start + 1
            raise
        self.read += end - start
        return value, end


@pytest.mark.parametrize("shape", list(SOUPS))
def test_reading_a_reply_costs_a_few_passes_over_it(shape: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # "Soup" replies cost super-linear time (0.8 MB: 11 s, 3.2 MB: 75 s): every "{" was a new
    # start scanned to the end in Python. Now every start draws on one budget per reply.
    from acp.plan import parse

    counts = {}
    for n in (100_000, 400_000):
        text = SOUPS[shape](n)
        tokens = _Counting(parse._TOKEN)
        decoders = [_Counting(parse._DECODER), _Counting(parse._CHECKED_DECODER)]
        monkeypatch.setattr(parse, "_TOKEN", tokens)
        monkeypatch.setattr(parse, "_DECODER", decoders[0])
        monkeypatch.setattr(parse, "_CHECKED_DECODER", decoders[1])
        started = time.monotonic()
        with pytest.raises(PlanValidationError):
            parse_draft(text, 512, 512)
        assert time.monotonic() - started < 120  # backstop only: the old parser took minutes
        monkeypatch.undo()
        decoded = sum(d.read for d in decoders)
        counts[n] = (tokens.read, decoded)
        # the scan's budget is two passes (plus a floor for short replies), and a token longer
        # than a chunk is read again in one twice as large, so at most twice that is tokenised;
        # the decoder's budget is four passes
        assert tokens.read <= 2 * (2 * len(text) + 100_000) + 50 * 256, (tokens.read, len(text))
        assert decoded <= 4 * len(text) + 100_000 + 4096, (decoded, len(text))
    (small_tokens, small_decoded), (large_tokens, large_decoded) = counts[100_000], counts[400_000]
    assert large_tokens <= 4 * small_tokens + 400_000 and large_decoded <= 4 * small_decoded + 400_000


def test_a_truncated_plan_after_a_stray_brace_and_long_prose_is_found() -> None:
    cut = text(draft())[: text(draft()).index('"predicate"') + 5]  # truncated inside the relation
    reply = "Sure {here it is " + "blah " * 100_000 + cut
    draft_, repairs, _ = parse_draft(reply, 512, 512)
    assert [o.category for o in draft_.objects] == ["dog", "frisbee"] and "truncated" in repairs[0]


def test_a_reply_with_thousands_of_problems_keeps_twenty_short_ones() -> None:
    reply = text({**draft(), **{f"unknown_{k}": k for k in range(5000)}})
    with pytest.raises(PlanValidationError) as caught:
        parse_draft(reply, 512, 512)
    problems = caught.value.problems
    assert len(problems) == 21 and problems[-1][1].startswith("and ") and "more problems" in problems[-1][1]
    huge = draft()
    huge["objects"][0]["category"] = "x" * 1999  # type: ignore[index]
    with pytest.raises(PlanValidationError) as caught:
        parse_plan(text(huge), SceneRequest(id="s", concepts=("dog", "frisbee"), seed=1),
                   categories=[f"category number {k}" for k in range(500)])
    assert all(len(reason) <= 500 for _, reason in caught.value.problems)
    assert len(str(caught.value)) < 25 * 600


@pytest.mark.parametrize("depth", [101, 500, 950])
def test_json_nested_deeper_than_a_plan_can_is_a_validation_problem(depth: int) -> None:
    # 500 levels decode, then the key's redaction (and pydantic) recursed past Python's limit
    reply = '{"caption": "x", "objects": [], "extra": ' + "[" * depth + "]" * depth + "}"

    async def parse() -> None:
        settings = ChatSettings(model="m", base_url="http://127.0.0.1:9/v1", api_key="sk-secret-1234")
        async with ChatClient(settings) as client:
            parse_plan(reply, SceneRequest(id="s", concepts=("dog",), seed=1), clean=client.redact_value)

    with pytest.raises(PlanValidationError) as caught:
        asyncio.run(parse())
    assert "nested too deeply" in caught.value.problems[0][1]

"""The offline planner: plausible layouts from size and placement priors, no LLM.

Deterministic per request seed. For each object it draws a size around its category's prior
(smaller when the scene is crowded), places it according to its zone (ground objects low in
the frame, flying ones high) and retries placements until the box overlaps the boxes already
placed by at most ``TARGET_IOU``; after enough failures it shrinks the box. Captions and
descriptions come from templates, relations from the geometry.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

from pydantic import ValidationError

from acp.boxes import iou_matrix
from acp.english import count_phrase, listing, with_article
from acp.names import category_key
from acp.plan.base import PlanOutcome, PlanSettings, SceneRequest
from acp.plan.priors import Prior, prior_for
from acp.schema import MIN_BOX_SIDE, ScenePlan, error_problems, layout_problems

if TYPE_CHECKING:
    from acp.score.bank import Bank

BANK_TRIES = 20
TARGET_IOU = 0.1
PLACEMENT_TRIES = 40
SHRINK = 0.85

_COLOURS = ("red", "blue", "green", "yellow", "white", "black", "orange", "grey", "brown",
            "pink", "purple", "silver")
_COATS = ("brown", "black", "white", "grey", "spotted", "golden", "tan")
_ANIMALS = {"bird", "cat", "dog", "horse", "sheep", "cow", "elephant", "bear", "zebra",
            "giraffe", "teddy bear"}
_PLAIN = {"elephant", "zebra", "giraffe", "broccoli", "banana", "orange", "apple", "carrot",
          "pizza", "hot dog", "sandwich", "donut", "cake"}


def describe(category: str, rng: random.Random) -> str:
    """A short visual phrase for GLIGEN, e.g. "a brown dog"."""
    key = category_key(category)  # "Dogs" is a dog too
    if key == "person":
        return f"a person wearing {with_article(rng.choice(_COLOURS) + ' jacket')}"
    if key in _PLAIN:
        return count_phrase(category, 1)
    if key in _ANIMALS:
        return count_phrase(f"{rng.choice(_COATS)} {category}", 1)
    return count_phrase(f"{rng.choice(_COLOURS)} {category}", 1)


def caption_for(categories: list[str], place: str, companions: list[str] | None = None) -> str:
    """ "A photo of a dog and two people in a park." (``place``: ``Prior.place``). With
    ``companions`` (a top-up scene), the first category is the subject: "A photo of an aerosol
    can with a person and a shelf in a kitchen."."""
    if companions is not None:
        others = [count_phrase(name, n) for name, n in Counter(companions).items()]
        with_them = f" with {listing(others)}" if others else ""
        return f"A photo of {count_phrase(categories[0], 1)}{with_them} {place}."
    counts = Counter(categories)
    return f"A photo of {listing([count_phrase(name, n) for name, n in counts.items()])} {place}."


def _box_size(
    prior: Prior, crowd: int, frame_aspect: float, rng: random.Random
) -> tuple[float, float]:
    side = prior.side * rng.lognormvariate(0.0, 0.25) / crowd**0.35
    # A pixel aspect of ``prior.aspect`` on a frame of width/height ``frame_aspect``.
    ratio = (prior.aspect * rng.lognormvariate(0.0, 0.15)) / frame_aspect
    w, h = side * ratio**0.5, side / ratio**0.5
    floor = 2 * MIN_BOX_SIDE
    return min(max(w, floor), 0.95), min(max(h, floor), 0.95)


def _place(zone: str, w: float, h: float, rng: random.Random) -> tuple[float, float]:
    x = rng.uniform(0.0, 1.0 - w)
    if zone == "ground":
        bottom = rng.uniform(0.68, 0.98)
    elif zone == "surface":
        bottom = rng.uniform(0.55, 0.95)
    elif zone in ("high", "air"):
        bottom = rng.uniform(0.05, 0.45) + h
    else:
        bottom = rng.uniform(h, 1.0)
    y = min(max(bottom - h, 0.0), 1.0 - h)
    return x, y


def layout_boxes(
    categories: list[str], frame_aspect: float, rng: random.Random, subject: int | None = None
) -> list[tuple[float, float, float, float]]:
    """One box per category, larger objects placed first, overlaps kept low. A ``subject``
    (a top-up scene's) keeps its full size however crowded the scene and is placed first."""
    priors = [prior_for(c) for c in categories]
    sizes = [_box_size(p, 1 if i == subject else len(categories), frame_aspect, rng)
             for i, p in enumerate(priors)]
    order = sorted(range(len(categories)), key=lambda i: (i != subject, -sizes[i][0] * sizes[i][1]))
    boxes: dict[int, tuple[float, float, float, float]] = {}
    for i in order:
        w, h = sizes[i]
        best: tuple[float, tuple[float, float, float, float]] | None = None
        for attempt in range(PLACEMENT_TRIES * 3):
            if attempt and attempt % PLACEMENT_TRIES == 0:  # crowded: shrink and retry
                w, h = max(w * SHRINK, MIN_BOX_SIDE * 1.5), max(h * SHRINK, MIN_BOX_SIDE * 1.5)
            x, y = _place(priors[i].zone, w, h, rng)
            box = (x, y, w, h)
            worst = float(iou_matrix([box], list(boxes.values())).max()) if boxes else 0.0
            if best is None or worst < best[0]:
                best = (worst, box)
            if worst <= TARGET_IOU:
                break
        assert best is not None
        boxes[i] = best[1]
    return [boxes[i] for i in range(len(categories))]


def _relation(a: tuple[float, ...], b: tuple[float, ...]) -> str:
    dx = (a[0] + a[2] / 2) - (b[0] + b[2] / 2)
    dy = (a[1] + a[3] / 2) - (b[1] + b[3] / 2)
    if abs(dx) >= abs(dy):
        return "left of" if dx < 0 else "right of"
    return "above" if dy < 0 else "below"


class HeuristicPlanner:
    """Offline planner; ``plan`` is deterministic for a request (its seed included).

    With a ``bank`` (``acp.score.bank.Bank``) each layout is drawn from the bank's real layouts
    of the scene's categories (``acp.plan.examples.BankLayouts.sample``: a retrieved image's
    boxes, jittered; categories it lacks from their own real boxes); objects of categories the
    bank does not know keep the priors. A draw that breaks the layout rules is drawn again, up
    to ``BANK_TRIES`` times, then the priors plan the scene alone. The bank image is recorded in
    the plan's ``examples``."""

    name = "heuristic"

    def __init__(self, settings: PlanSettings | None = None, *, bank: Bank | None = None):
        from acp.plan.examples import BankLayouts

        self.settings = settings or PlanSettings()
        self.layouts = BankLayouts(bank) if bank is not None else None

    def plan(self, request: SceneRequest) -> ScenePlan:
        rng = random.Random(request.seed)
        if self.layouts is not None:
            for _ in range(BANK_TRIES):
                try:
                    plan = self._plan(request, rng, bank=True)
                except ValidationError:
                    continue
                if not layout_problems(plan, self.settings.rules):
                    return plan
        return self._plan(request, rng, bank=False)

    def _plan(self, request: SceneRequest, rng: random.Random, *, bank: bool) -> ScenePlan:
        categories = list(request.concepts)
        # A top-up scene is made for its subject (the first concept): it sets the place.
        subject = 0 if request.companions is not None and categories else None
        boxes = layout_boxes(categories, request.width / request.height, rng, subject)
        examples: list[str] = []
        if bank and self.layouts is not None:
            drawn, source = self.layouts.sample(categories, rng)
            boxes = [b if b is not None else prior for b, prior in zip(drawn, boxes, strict=True)]
            examples = [source] if source is not None else []
        objects = []
        for i, (category, box) in enumerate(zip(categories, boxes, strict=True)):
            zone = prior_for(category).zone
            # Lower bottom edge reads as nearer for things standing on the ground.
            depth = 1.0 - (box[1] + box[3]) if zone in ("ground", "surface") else 0.5
            x, y, w, h = (round(v, 4) for v in box)
            # Rounding can push a box a hair past the frame edge; pull it back inside.
            bbox = (min(x, round(1 - w, 4)), min(y, round(1 - h, 4)), w, h)
            objects.append({
                "id": i, "category": category, "description": describe(category, rng),
                "bbox": bbox, "depth": round(min(max(depth, 0), 1), 3),
            })
        relations = [
            {"subject": i, "predicate": _relation(boxes[i], boxes[0]), "object": 0}
            for i in range(1, len(objects))
        ]
        anchor = subject if subject is not None else max(
            range(len(categories)), key=lambda i: boxes[i][2] * boxes[i][3], default=None)
        prior = prior_for(categories[anchor]) if anchor is not None else None
        setting = prior.setting if prior else "an empty room"
        companions = categories[1:] if subject is not None else None
        plan = ScenePlan(
            id=request.id, concepts=list(request.concepts),
            caption=caption_for(categories, prior.place, companions) if prior else f"A photo of {setting}.",
            background=setting, width=request.width, height=request.height,
            objects=objects, relations=relations,  # type: ignore[arg-type]
            planner=self.name, model=None, seed=request.seed, examples=examples,
        )
        if bank:
            return plan  # checked by ``plan``, which draws again
        problems = layout_problems(plan, self.settings.rules)
        if problems and self.settings.rules.on_overlap == "flag":
            plan.warnings = [f"{field}: {reason}" for field, reason in problems]
        elif problems:
            raise ValueError("; ".join(f"{field}: {reason}" for field, reason in problems))
        return plan

    def plan_many(self, requests: Iterable[SceneRequest]) -> Iterator[PlanOutcome]:
        for request in requests:
            try:
                yield PlanOutcome(request, plan=self.plan(request))
            except ValidationError as error:
                reason = "; ".join(f"{f}: {r}" for f, r in error_problems(error))
                yield PlanOutcome(request, error=reason)
            except ValueError as error:
                yield PlanOutcome(request, error=str(error))

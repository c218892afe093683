"""Records passed between stages: the single source of truth.

Every record is a pydantic model that forbids unknown keys. ``SceneDraft`` is what the LLM is
asked to produce; ``ScenePlan`` is the stored record (a draft plus its id, concepts, image
size and provenance). ``Candidate`` describes one rendered image, ``CandidateScore`` its CLIS
scores. ``python -m acp.schema`` regenerates ``schemas/*.json`` from these models.

Geometry rules of a plan box (normalised ``[x, y, w, h]``, top-left origin):
- every value finite, ``x, y >= 0``, ``w, h > 0``, ``x + w <= 1``, ``y + h <= 1``
  (within ``FRAME_TOLERANCE``);
- each side at least ``MIN_BOX_SIDE`` of the frame (1/64: one latent cell of Stable Diffusion's
  VAE at 512 px; a smaller box cannot be drawn by GLIGEN);
- at most ``MAX_OBJECTS`` objects (GLIGEN's limit);
- two objects overlapping by more than ``LayoutRules.max_overlap`` (IoU) are rejected or
  flagged, as ``LayoutRules.on_overlap`` says (see ``layout_problems``).
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Container, Iterator
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    ValidationError,
    field_validator,
    model_serializer,
    model_validator,
)

from acp import defaults
from acp.names import category_key
from acp.paths import path_problem

MAX_OBJECTS = 30
MIN_BOX_SIDE = 1 / 64
FRAME_TOLERANCE = 1e-6
ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"

NonBlank = Annotated[str, Field(min_length=1, max_length=2000, pattern=r"\S")]


def _relative_path(value: str) -> str:
    problem = path_problem(value)
    if problem is not None:
        raise ValueError(problem)
    return value


# A path a record names relative to its folder: never absolute, never climbing out with "..".
RelativePath = Annotated[str, AfterValidator(_relative_path)]


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=False, validate_assignment=False)
    # Fields added after records were first written, left out of the JSON while unused (None or
    # empty): a record of a run that does not use them reads as records always have.
    _unused_omitted: ClassVar[frozenset[str]] = frozenset()

    @model_serializer(mode="wrap")
    def _omit_unused(self, handler: SerializerFunctionWrapHandler) -> Any:
        data = handler(self)
        if self._unused_omitted and isinstance(data, dict):
            for key in self._unused_omitted:
                if key in data and data[key] in (None, []):
                    del data[key]
        return data


class PlanObject(_Record):
    """One object of a scene: what it is, how it looks, where it goes."""

    id: int = Field(ge=0, description="Unique within the plan; relations refer to it.")
    category: NonBlank = Field(description="Class name, as in the concept list.")
    description: NonBlank = Field(description="Short visual description used as GLIGEN phrase.")
    bbox: tuple[float, float, float, float] = Field(
        description="Normalised [x, y, w, h], top-left origin, fractions of width and height."
    )
    depth: float | None = Field(
        default=None, ge=0.0, le=1.0, description="Relative distance: 0 nearest, 1 farthest."
    )

    @field_validator("bbox")
    @classmethod
    def _check_bbox(cls, bbox: tuple[float, float, float, float]) -> tuple[float, float, float, float]:
        x, y, w, h = bbox
        if not all(math.isfinite(v) for v in bbox):
            raise ValueError(f"bbox values must be finite, got {list(bbox)}")
        if w <= 0 or h <= 0:
            raise ValueError(f"bbox width and height must be > 0, got w={w:g}, h={h:g}")
        if x < -FRAME_TOLERANCE or y < -FRAME_TOLERANCE:
            raise ValueError(f"bbox starts outside the frame: x={x:g}, y={y:g} (expected >= 0)")
        if x + w > 1 + FRAME_TOLERANCE or y + h > 1 + FRAME_TOLERANCE:
            raise ValueError(
                f"bbox leaves the frame: x+w={x + w:g}, y+h={y + h:g} (expected <= 1)"
            )
        if w < MIN_BOX_SIDE or h < MIN_BOX_SIDE:
            raise ValueError(
                f"bbox is too small: w={w:g}, h={h:g} (each side must be >= {MIN_BOX_SIDE:g})"
            )
        return bbox


class Relation(_Record):
    subject: int = Field(ge=0, description="Object id of the subject.")
    predicate: NonBlank = Field(description='Spatial or semantic relation, e.g. "left of".')
    object: int = Field(ge=0, description="Object id of the object.")

    @model_validator(mode="after")
    def _distinct(self) -> Relation:
        if self.subject == self.object:
            raise ValueError(f"relation links object {self.subject} to itself")
        return self


class SceneDraft(_Record):
    """What the LLM writes: the scene text and its layout."""

    caption: NonBlank = Field(description="One-sentence description of the whole image.")
    background: str = Field(default="", max_length=2000, description="The setting, e.g. 'a park'.")
    objects: list[PlanObject] = Field(default_factory=list, max_length=MAX_OBJECTS)
    relations: list[Relation] = Field(default_factory=list)

    @model_validator(mode="after")
    def _check_ids(self) -> SceneDraft:
        ids = [o.id for o in self.objects]
        duplicates = sorted({i for i in ids if ids.count(i) > 1})
        if duplicates:
            raise ValueError(f"object ids must be unique, repeated: {duplicates}")
        known = set(ids)
        for k, rel in enumerate(self.relations):
            missing = [i for i in (rel.subject, rel.object) if i not in known]
            if missing:
                raise ValueError(f"relations[{k}] names unknown object ids {missing}")
        return self


class ScenePlan(SceneDraft):
    """The stored plan record (one line of ``plans.jsonl``)."""

    id: str = Field(pattern=ID_PATTERN, description="Scene id; also the render folder name.")
    concepts: list[NonBlank] = Field(
        default_factory=list,
        description="Requested categories, repeated for a count > 1; each must be among objects.",
    )
    width: int = Field(default=512, ge=64, le=4096, multiple_of=8)
    height: int = Field(default=512, ge=64, le=4096, multiple_of=8)
    planner: NonBlank = Field(description='"openai" or "heuristic".')
    model: str | None = Field(default=None, description="LLM model id, when an LLM planned it.")
    seed: int | None = Field(default=None, description="Seed of the sampler or planner.")
    repairs: list[str] = Field(default_factory=list, description="Fixes applied to the LLM reply.")
    warnings: list[str] = Field(default_factory=list, description="Flagged, accepted problems.")
    attempts: int = Field(default=1, ge=1, description="LLM requests that produced this plan.")
    examples: list[str] = Field(
        default_factory=list, max_length=16,
        description="Bank images (ids) the layout was drawn from (offline planner) or shown to the LLM "
                    "as examples (--bank).",
    )

    @model_validator(mode="after")
    def _check_concepts(self) -> ScenePlan:
        missing = missing_concepts(self.concepts, [o.category for o in self.objects])
        if missing:
            raise ValueError(f"requested concepts missing from objects: {missing}")
        return self


def missing_concepts(concepts: list[str], categories: list[str]) -> list[str]:
    """Concepts (with multiplicity) not covered by ``categories``, compared by ``category_key``."""
    have = Counter(category_key(c) for c in categories)
    want = Counter(category_key(c) for c in concepts)
    names = {category_key(c): c for c in concepts}
    missing: list[str] = []
    for key, count in want.items():
        missing.extend([names[key]] * max(0, count - have[key]))
    return missing


class LayoutRules(BaseModel):
    """Geometry rules applied on top of the per-box checks (shapely)."""

    max_overlap: float = Field(default=defaults.MAX_OVERLAP, ge=0.0, le=1.0,
                               description="Maximum pairwise IoU.")
    on_overlap: Literal["reject", "flag"] = "reject"


def layout_problems(draft: SceneDraft, rules: LayoutRules) -> list[tuple[str, str]]:
    """Pairwise overlap problems as ``(field, reason)``; empty when the layout is acceptable."""
    from acp.boxes import overlapping_pairs

    objects = draft.objects
    return [
        (
            f"objects[{i}].bbox",
            f"overlaps object {objects[j].id} ({objects[j].category}) with IoU {iou:.2f} "
            f"> {rules.max_overlap:g}",
        )
        for i, j, iou in overlapping_pairs([o.bbox for o in objects], rules.max_overlap)
    ]


class Candidate(_Record):
    """One rendered image (one line of the render manifest)."""

    plan_id: str = Field(pattern=ID_PATTERN)
    index: int = Field(ge=0, description="Candidate number within the plan.")
    seed: int = Field(ge=0, description="Seed of this candidate's generator.")
    path: RelativePath = Field(description="Image path relative to the render folder.")
    model: str = Field(description="Hub id or folder of the GLIGEN pipeline.")
    steps: int = Field(ge=1)
    guidance: float = Field(ge=0.0)
    beta: float = Field(ge=0.0, le=1.0, description="GLIGEN scheduled-sampling fraction.")
    width: int = Field(ge=8)
    height: int = Field(ge=8)
    prompt: str = Field(description="Global prompt given to the pipeline.")
    negative_prompt: str = ""
    phrases: list[str] = Field(default_factory=list, description="Per-box phrases, in object order.")


class ObjectScore(_Record):
    id: int = Field(ge=0, description="Object id in the plan.")
    category: str
    clis_i: float = Field(description="Instance image score, 0-100.")
    text_similarity: float | None = Field(default=None, description="Crop vs description, 0-100.")
    category_confidence: float | None = Field(
        default=None, description="How clearly the crop reads as its own category, 0-100."
    )
    judge: float | None = Field(default=None, description="VLM judge score, 0-100, if asked.")
    kept: bool = True
    # Set when a detector verified the candidate (``acp.score.verify``); absent otherwise.
    _unused_omitted = frozenset({"verification", "detection_iou", "detection_score", "detection_bbox"})
    verification: Literal["verified", "refined", "missing"] | None = Field(
        default=None, description="The detector's verdict on the box: a detection of its category "
        "overlaps it (verified; refined when the detection's box is exported), or none does (missing).")
    detection_iou: float | None = Field(
        default=None, ge=0.0, le=1.0, description="IoU of the box with its best detection of its category.")
    detection_score: float | None = Field(
        default=None, ge=0.0, le=1.0, description="That detection's confidence.")
    detection_bbox: list[float] | None = Field(
        default=None, min_length=4, max_length=4, description="That detection's box, pixel [x, y, w, h].")


class DetectedBox(_Record):
    """One detection of a scene category by the verifier (``acp.score.verify``)."""

    category: str
    score: float = Field(ge=0.0, le=1.0, description="The detector's confidence.")
    bbox: list[float] = Field(min_length=4, max_length=4, description="Pixel [x, y, w, h].")
    role: Literal["match", "part", "unplanned", "weak"] = Field(description=(
        "match: it verifies the planned object `object`; part: it lies inside a verified box of its "
        "category (a part of that object); unplanned: confident, and no planned box of its category "
        "overlaps it enough; weak: under the confidence of an unplanned instance."))
    object: int | None = Field(default=None, ge=0, description="The planned object it verifies.")
    confident: bool = Field(default=False, description="At or above the unplanned-instance threshold.")


class CandidateScore(_Record):
    """CLIS scores of one candidate (one line of ``scores.jsonl``)."""

    plan_id: str = Field(pattern=ID_PATTERN)
    index: int = Field(ge=0)
    path: RelativePath | None = None
    clis: float = Field(description="Composite score, 0-100.")
    clis_l: float | None = Field(
        default=None,
        description="Layout score (CLIS-L), 0-100; null when no bank was given (the "
        "reference-free sanity score is then in detail.clis_l_sanity).",
    )
    clis_i: float = Field(description="Image score, 0-100.")
    clis_i_global: float | None = None
    clis_i_local: float | None = None
    objects: list[ObjectScore] = Field(default_factory=list)
    best: bool = Field(default=False, description="Chosen as the plan's best candidate.")
    kept: bool = Field(default=True, description="Passes the CLIS thresholds.")
    reason: str | None = Field(default=None, description="Why it was dropped, if it was.")
    detail: dict[str, Any] = Field(default_factory=dict, description="Scorer-specific detail.")
    _unused_omitted = frozenset({"verification", "detections"})
    verification: float | None = Field(
        default=None, ge=0.0, le=100.0, description="The detector's term of clis, 0-100: the mean IoU "
        "of the planned boxes with their detections, each unplanned instance counting as a box with "
        "IoU 0 (acp.score.verify); null without a detector or objects.")
    detections: list[DetectedBox] = Field(
        default_factory=list, description="What the verifier detected, at most 100, best first.")

    def unlabeled(self) -> list[DetectedBox]:
        """The candidate's unlabeled objects (``acp.score.verify``): its unplanned instances, and
        each confident detection that verified an instance which is not exported."""
        exported = {o.id for o in self.objects if o.kept}
        return [d for d in self.detections
                if d.role == "unplanned" or (d.role == "match" and d.confident and d.object not in exported)]


class PlanResult(_Record):
    """What became of one plan in ``acp generate`` (one line of ``progress.jsonl``, written
    last for its plan: a plan is finished exactly when its line is there)."""

    plan_id: str = Field(pattern=ID_PATTERN)
    status: Literal["kept", "dropped", "failed"]
    reason: str | None = Field(default=None, description="Why the plan was dropped or failed.")
    reason_kind: str | None = Field(default=None, description="The reason's kind, for counting.")
    clis: float | None = Field(default=None, description="The kept candidate's composite score.")
    clis_l: float | None = Field(default=None, description="Layout score; null without a bank.")
    clis_l_sanity: float | None = Field(default=None, description="Reference-free layout check.")
    clis_l_method: str | None = None
    clis_i: float | None = Field(default=None, description="The kept (or best) candidate's CLIS-I.")
    candidate: int | None = Field(default=None, ge=0, description="Index of the kept candidate.")
    kept_categories: list[str] = Field(default_factory=list, description="Categories exported.")
    dropped_categories: list[str] = Field(default_factory=list, description="Categories not exported.")
    mask_problems: list[str] = Field(default_factory=list, description="Masks dropped or flagged.")
    flagged: int = Field(default=0, ge=0, description="Candidates the safety checker flagged (dropped).")
    # The kept candidate's verification, when a detector verified it (``acp.score.verify``).
    _unused_omitted = frozenset({"verification", "verified_categories", "missing_categories",
                                 "unplanned_categories"})
    verification: float | None = Field(default=None, ge=0.0, le=100.0,
                                       description="The kept candidate's verification term.")
    verified_categories: list[str] = Field(default_factory=list,
                                           description="Categories of its boxes a detection verified.")
    missing_categories: list[str] = Field(default_factory=list,
                                          description="Categories of its boxes no detection matched.")
    unplanned_categories: list[str] = Field(default_factory=list,
                                            description="Categories of its unplanned instances.")


SCHEMA_MODELS: dict[str, type[BaseModel]] = {
    "scene_draft": SceneDraft,
    "scene_plan": ScenePlan,
    "candidate": Candidate,
    "candidate_score": CandidateScore,
    "plan_result": PlanResult,
}


def json_schemas() -> dict[str, dict[str, Any]]:
    return {name: model.model_json_schema() for name, model in SCHEMA_MODELS.items()}


def schema_text(schema: dict[str, Any]) -> str:
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"


def write_schemas(directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, schema in json_schemas().items():
        path = directory / f"{name}.schema.json"
        path.write_text(schema_text(schema), encoding="utf-8")
        written.append(path)
    return written


def error_problems(error: ValidationError) -> list[tuple[str, str]]:
    """Flatten a pydantic error into ``(field, reason)`` pairs such as ``("objects[1].bbox", ...)``."""
    problems = []
    for item in error.errors(include_url=False):
        field = ""
        for part in item["loc"]:
            field += f"[{part}]" if isinstance(part, int) else (f".{part}" if field else str(part))
        message = item["msg"].removeprefix("Value error, ")
        problems.append((field or "(record)", message))
    return problems


def read_plans(path: Path) -> Iterator[tuple[int, ScenePlan | None, str | None]]:
    """``(line_number, plan, None)`` for each valid line, ``(line_number, None, reason)`` otherwise."""
    for number, _id, plan, reason in read_plan_lines(path):
        yield number, plan, reason


def parse_plan_line(text: str) -> tuple[ScenePlan | None, str | None]:
    """One plans-file line as ``(plan, None)`` or ``(None, reason)``: parsed and validated in one
    call of pydantic's compiled parser; a line it refuses goes the way ``read_plans`` reads it,
    so that the reasons are the same."""
    from acp.jsonl import loads

    try:
        return ScenePlan.model_validate_json(text), None
    except ValidationError:
        pass
    try:
        record = loads(text)
    except ValueError:
        record = None
    if not isinstance(record, dict):
        return None, "not a JSON object"
    try:
        return ScenePlan.model_validate(record), None
    except ValidationError as error:
        return None, "; ".join(f"{f}: {r}" for f, r in error_problems(error))


def read_plan_lines(path: Path, skip: Container[str] = ()
                    ) -> Iterator[tuple[int, str | None, ScenePlan | None, str | None]]:
    """``(line_number, id, plan, reason)`` per line: ``reason`` says why ``plan`` is ``None``;
    ``id`` is the line's ``id`` when it has a string one. Lines whose id is in ``skip`` are not
    even validated (a resumed run passes the finished ones)."""
    from acp.jsonl import read_records

    for number, record, _text in read_records(Path(path)):
        if record is None:
            yield number, None, None, "not a JSON object"
            continue
        plan_id = record.get("id")
        plan_id = plan_id if isinstance(plan_id, str) else None
        if plan_id is not None and plan_id in skip:
            continue
        try:
            yield number, plan_id, ScenePlan.model_validate(record), None
        except ValidationError as error:
            yield number, plan_id, None, "; ".join(f"{f}: {r}" for f, r in error_problems(error))


if __name__ == "__main__":
    import sys

    target = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent.parent / "schemas"
    for path in write_schemas(target):
        print(path)

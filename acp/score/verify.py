"""Verified labels: an open-vocabulary detector checks every box acp writes.

GLIGEN places an instance where its box says about 30 % of the time (COCO-MIG instance success
0.30); CLIS-I's CLIP check of a crop says whether the crop looks like a dog, not whether the dog
fills the box, and nothing else finds the second dog drawn without a box. The verifier runs a
zero-shot detector (``acp.score.detector``: OWLv2 or Grounding DINO) on each candidate, queried
with the scene's categories, and reads its detections against the planned boxes here, in pure
functions (no model, no I/O), so that every rule below is tested with known boxes.

Per candidate (``check``), in pixel ``[x, y, w, h]``:

1. Detections under ``min_score`` (``--detection-threshold``; the family's default: OWLv2 0.1,
   Grounding DINO 0.35, the thresholds their authors' examples use), or less than a pixel wide
   or high, are not detections; the rest go through class-wise non-maximum suppression at IoU ``NMS_IOU``
   (0.5: neither detector suppresses duplicates itself), and the best ``MAX_DETECTIONS`` (100,
   COCO's maxDets) are kept.
2. Planned boxes and detections of the same category are matched one to one, the pair with the
   largest IoU first (ties: the earlier box, then the better detection). A box matched with IoU
   at least ``match_iou`` (``--verify-iou``, 0.5: COCO's match, and COCO-MIG's instance
   success) is **verified**; the others are **missing**. Each box records its best detection
   of its category (IoU, score, box), matched or not.
3. A detection that verifies no box is **unplanned** when it reaches ``confident_score``
   (``--unplanned-threshold``; OWL 0.3, Grounding DINO 0.5: higher than the detection threshold,
   because an unplanned instance costs the candidate while a missed one only fails a box),
   unless it lies inside a verified box of its category (at least ``PART_OF`` = 80 % of its
   area): detectors fire on parts (a dog's head), which are not a second dog. Others are
   ``weak`` and count for nothing but the label-fidelity AP.
4. The **verification term** is ``100 x`` the mean, over the planned boxes and the unplanned
   instances, of each one's IoU with its best detection (an unplanned instance has no box:
   0). It is 100 when every object fills its box exactly and nothing else of the scene's
   categories is there; ``None`` for a plan without objects.

Selection (``acp.score.candidates``): with a detector, ``clis`` is the mean of the terms there
are, CLIS-L (a bank's), CLIS-I and the verification term, each 0-100, with equal weights (a
hand choice: they measure different things, the layout, the content and the placement, and
there is no ground truth to fit weights to). Within a plan CLIS-L is shared, so the kept
candidate is the one whose instances look right and really are where the labels say.

An instance is exported when the cheap checks agree that it is there: CLIS-I at least
``--min-clis-i`` and verified. Where they disagree (CLIP sees the description but the detector
finds no box, or the reverse), the VLM judge, when there is one, decides with its rating (the
cascade: cheap checks first, the expensive judge only where they disagree); without a judge,
or past its call budget, a disagreement is not exported.

**Unlabeled objects** are what the detector is sure of (``confident``) that no exported label
covers: the unplanned instances, and the detection that verified an instance which was then
not exported (``CandidateScore.unlabeled``). ``unplanned`` (``--unplanned``) decides
their fate:

- ``drop`` (the default): the candidate is dropped (another candidate of the plan may be kept).
  No image then carries an object its labels call background, whatever trains on it: an
  ignore region helps only trainers that honour ``iscrowd`` (``acp export yolo`` leaves them
  out, and ultralytics has none), and a pseudo-label is the detector's word, unchecked;
- ``ignore``: the candidate stays; each unlabeled object becomes an ignore region (the
  detection's box, ``iscrowd: 1``), which COCO-style trainers skip in matching and evaluation;
- ``pseudo-label``: each becomes a label with the detection's box and category.

``refine_boxes`` (``--refine-boxes``, off by default) exports a verified box as its detection's
box (a verified box is then ``refined``). Off, because the label is then the detector's box
regression rather than the checked plan: the detector's biases enter the labels, and the
label-fidelity AP measured with the same detector becomes circular. Turn it on when the
detector is known to box the categories more tightly than GLIGEN fills its boxes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol

import numpy as np

from acp import defaults
from acp.boxes import iou_matrix
from acp.errors import InputError
from acp.schema import DetectedBox
from acp.settings_record import recorded

if TYPE_CHECKING:
    from acp.schema import ScenePlan
    from acp.score.pixels import Picture

# OWLv2 (base, patch 16, ensemble weights): see acp.score.detector for why it is the default.
DETECTOR_MODEL = defaults.DETECTOR_MODEL
# Families of transformers' zero-shot detectors acp reads, by config model_type.
FAMILIES = {"owlv2": "owl", "grounding-dino": "grounding-dino", "mm-grounding-dino": "grounding-dino"}
# Per family: the score over which a detection counts, and the one over which a detection
# matching no box is an unplanned instance (see the module notes).
MIN_SCORE = {"owl": 0.1, "grounding-dino": 0.35}
CONFIDENT_SCORE = {"owl": 0.3, "grounding-dino": 0.5}
MATCH_IOU = defaults.VERIFY_IOU
NMS_IOU = 0.5
PART_OF = 0.8
MIN_SIDE = 1.0  # pixels: a narrower detection boxes nothing
MAX_DETECTIONS = 100
UNPLANNED_POLICIES = ("drop", "ignore", "pseudo-label")
Unplanned = Literal["drop", "ignore", "pseudo-label"]
Role = Literal["match", "part", "unplanned", "weak"]


@dataclass(frozen=True)
class VerifySettings:
    """The verifier of ``acp generate --verify`` (``--detector-model`` and the options of the
    module notes). ``None`` thresholds are the detector family's defaults. A run records these
    only when it verifies (``GenerateConfig.verify`` is ``None`` otherwise)."""

    detector_model: str = field(default=DETECTOR_MODEL, metadata=recorded(model=True))
    detection_threshold: float | None = None
    unplanned_threshold: float | None = None
    verify_iou: float = MATCH_IOU
    unplanned: str = defaults.UNPLANNED
    refine_boxes: bool = False

    def __post_init__(self) -> None:
        for name in ("detection_threshold", "unplanned_threshold"):
            value = getattr(self, name)
            if value is not None and not 0.0 <= value <= 1.0:
                raise InputError(f"--{name.replace('_', '-')}: expected 0-1, got {value:g}")
        if not 0.0 < self.verify_iou <= 1.0:
            raise InputError(f"--verify-iou: expected more than 0 and at most 1, got {self.verify_iou:g}")
        if self.unplanned not in UNPLANNED_POLICIES:
            raise InputError(f"--unplanned: expected {', '.join(UNPLANNED_POLICIES)}, got {self.unplanned!r}")

    def thresholds(self, family: str) -> Thresholds:
        """The thresholds for a detector of ``family`` (``FAMILIES``' values)."""
        return Thresholds(
            min_score=self.detection_threshold if self.detection_threshold is not None else MIN_SCORE[family],
            confident_score=(self.unplanned_threshold if self.unplanned_threshold is not None
                             else CONFIDENT_SCORE[family]),
            match_iou=self.verify_iou)


@dataclass(frozen=True)
class Thresholds:
    min_score: float = MIN_SCORE["owl"]
    confident_score: float = CONFIDENT_SCORE["owl"]
    match_iou: float = MATCH_IOU


@dataclass(frozen=True)
class Detection:
    """One box a detector found: ``category`` is the query it answers (a scene category),
    ``box`` pixel ``[x, y, w, h]``, ``score`` its confidence in 0-1."""

    category: str
    score: float
    box: tuple[float, float, float, float]


class Detector(Protocol):
    """A loaded zero-shot detector: ``detect`` finds, in each image, boxes of the categories
    asked for it (one list of category names per image), every detection with a score at least
    ``min_score``. ``family`` is one of ``FAMILIES``' values (it chooses the default
    thresholds); ``name`` is the model as given."""

    name: str
    family: str

    def detect(self, images: Sequence[Picture], queries: Sequence[Sequence[str]], min_score: float
               ) -> list[list[Detection]]: ...


@dataclass(frozen=True)
class PlannedBox:
    """A box a label claims: ``id`` (the plan's object id, or the annotation's row), its
    category and pixel ``[x, y, w, h]``."""

    id: int
    category: str
    box: tuple[float, float, float, float]


@dataclass(frozen=True)
class BoxCheck:
    """The verdict on one planned box and its best detection of its category (none: ``iou``
    0 and no ``detection``)."""

    id: int
    verified: bool
    iou: float
    detection: Detection | None


@dataclass(frozen=True)
class CandidateCheck:
    """What the verifier found in one image: a verdict per planned box (in their order), and
    every detection kept (best first) with its role (``DetectedBox``)."""

    boxes: tuple[BoxCheck, ...]
    detections: tuple[DetectedBox, ...] = field(default=())

    @property
    def unplanned(self) -> tuple[DetectedBox, ...]:
        return tuple(d for d in self.detections if d.role == "unplanned")

    @property
    def verification(self) -> float | None:
        """The verification term (module notes), ``None`` without planned boxes."""
        if not self.boxes:
            return None
        return 100.0 * sum(b.iou for b in self.boxes) / (len(self.boxes) + len(self.unplanned))


def suppress(detections: Sequence[Detection], iou: float = NMS_IOU) -> list[Detection]:
    """Class-wise greedy non-maximum suppression: best first (ties: the earlier), a detection
    overlapping a kept one of its category by more than ``iou`` is dropped."""
    if not detections:
        return []
    order = sorted(range(len(detections)), key=lambda k: (-detections[k].score, k))
    overlaps = iou_matrix([d.box for d in detections], [d.box for d in detections]).tolist()
    kept: list[int] = []
    by_category: dict[str, list[int]] = {}
    for k in order:
        same = by_category.setdefault(detections[k].category, [])
        row = overlaps[k]
        if any(row[j] > iou for j in same):
            continue
        same.append(k)
        kept.append(k)
    return [detections[k] for k in kept]


def covers(outer: Sequence[float], inner: Sequence[float]) -> bool:
    """Whether ``outer`` holds at least ``PART_OF`` of ``inner``'s area (both pixel xywh)."""
    return _inside(inner, outer) >= PART_OF


def _inside(inner: Sequence[float], outer: Sequence[float]) -> float:
    """Share of ``inner``'s area inside ``outer`` (both pixel xywh)."""
    x0, y0 = max(inner[0], outer[0]), max(inner[1], outer[1])
    x1 = min(inner[0] + inner[2], outer[0] + outer[2])
    y1 = min(inner[1] + inner[3], outer[1] + outer[3])
    area = inner[2] * inner[3]
    return max(0.0, x1 - x0) * max(0.0, y1 - y0) / area if area > 0 else 0.0


def check(planned: Sequence[PlannedBox], detections: Sequence[Detection],
          thresholds: Thresholds = Thresholds()) -> CandidateCheck:
    """The verdicts of the module notes (steps 1-3) for one image."""
    found = suppress([d for d in detections if d.score >= thresholds.min_score and d.box[2] >= MIN_SIDE
                      and d.box[3] >= MIN_SIDE])[:MAX_DETECTIONS]
    match: dict[int, int] = {}  # planned row -> detection row
    best: dict[int, tuple[float, int]] = {}  # planned row -> (IoU, detection row) of its best
    for category in dict.fromkeys(p.category for p in planned):
        rows = [k for k, p in enumerate(planned) if p.category == category]
        columns = [k for k, d in enumerate(found) if d.category == category]
        if not columns:
            continue
        ious = iou_matrix([planned[k].box for k in rows], [found[k].box for k in columns])
        for i, row in enumerate(rows):
            j = int(np.argmax(ious[i]))  # the first of equals: the better detection
            best[row] = (float(ious[i, j]), columns[j])
        pairs = sorted((-float(ious[i, j]), i, j) for i in range(len(rows)) for j in range(len(columns))
                       if ious[i, j] >= thresholds.match_iou)
        used_rows: set[int] = set()
        used_columns: set[int] = set()
        for _, i, j in pairs:
            if i not in used_rows and j not in used_columns:
                used_rows.add(i)
                used_columns.add(j)
                match[rows[i]] = columns[j]
                best[rows[i]] = (float(ious[i, j]), columns[j])
    boxes = []
    for row, box in enumerate(planned):
        iou, column = best.get(row, (0.0, -1))
        boxes.append(BoxCheck(box.id, row in match, iou if column >= 0 else 0.0,
                              found[column] if column >= 0 else None))
    matched_by = {column: planned[row].id for row, column in match.items()}
    verified = [(planned[row].category, planned[row].box) for row in match]
    records = []
    for column, detection in enumerate(found):
        confident = detection.score >= thresholds.confident_score
        role: Role
        if column in matched_by:
            role = "match"
        elif any(c == detection.category and _inside(detection.box, b) >= PART_OF for c, b in verified):
            role = "part"
        else:
            role = "unplanned" if confident else "weak"
        records.append(DetectedBox(category=detection.category, score=round(detection.score, 4),
                                   bbox=[round(v, 2) for v in detection.box], role=role,
                                   object=matched_by.get(column), confident=confident))
    return CandidateCheck(tuple(boxes), tuple(records))


def object_fields(box: BoxCheck, refine: bool) -> dict[str, Any]:
    """An ``ObjectScore``'s verification fields for ``box``'s verdict."""
    detection = box.detection
    return {
        "verification": ("refined" if refine else "verified") if box.verified else "missing",
        "detection_iou": round(box.iou, 4) if detection is not None else None,
        "detection_score": round(detection.score, 4) if detection is not None else None,
        "detection_bbox": [round(v, 2) for v in detection.box] if detection is not None else None,
    }


def check_family(model_type: str, name: str) -> str:
    """The family of a detector whose config says ``model_type``; an ``InputError`` for any
    other model."""
    family = FAMILIES.get(model_type)
    if family is None:
        raise InputError(f"--detector-model {name}: a {model_type or 'unknown'} model, not a zero-shot "
                         f"detector acp reads (expected one of {', '.join(sorted(FAMILIES))})")
    return family


def as_xywh(box: Sequence[float]) -> tuple[float, float, float, float]:
    """Pixel ``[x0, y0, x1, y1]`` to ``[x, y, w, h]``."""
    x0, y0, x1, y1 = (float(v) for v in box)
    return x0, y0, x1 - x0, y1 - y0


class Verifier:
    """A loaded detector with its settings: ``check_plans`` verifies candidates of plans, all
    images of a call in one ``detect`` (one pass per batch on an accelerator)."""

    def __init__(self, detector: Detector, settings: VerifySettings | None = None):
        self.detector = detector
        self.settings = settings or VerifySettings(detector_model=detector.name or DETECTOR_MODEL)
        self.thresholds = self.settings.thresholds(detector.family)

    def check(self, items: Sequence[tuple[Picture, Sequence[PlannedBox], Sequence[str]]]
              ) -> list[CandidateCheck]:
        """``(image, planned boxes, categories asked)`` each, checked (module notes)."""
        found = self.detector.detect([image for image, _, _ in items], [list(q) for _, _, q in items],
                                     self.thresholds.min_score)
        return [check(planned, detections, self.thresholds)
                for (_, planned, _), detections in zip(items, found, strict=True)]

    def check_plans(self, items: Sequence[tuple[ScenePlan, Picture]]) -> list[CandidateCheck]:
        """Each ``(plan, candidate image)``, asked for the plan's categories."""
        from acp.boxes import plan_to_coco
        from acp.score.pixels import image_size

        prepared = []
        for plan, image in items:
            boxes = plan_to_coco([o.bbox for o in plan.objects], *image_size(image)).reshape(-1, 4).tolist()
            planned = [PlannedBox(o.id, o.category, (b[0], b[1], b[2], b[3]))
                       for o, b in zip(plan.objects, boxes, strict=True)]
            prepared.append((image, planned, list(dict.fromkeys(o.category for o in plan.objects))))
        return self.check(prepared)


def verify_settings(verify: bool = False, detector_model: str | None = None, *,
                    detection_threshold: float | None = None, unplanned_threshold: float | None = None,
                    verify_iou: float = MATCH_IOU, unplanned: str = defaults.UNPLANNED,
                    refine_boxes: bool = False
                    ) -> VerifySettings | None:
    """The verifier the command line's options ask for: on with ``--verify`` or a
    ``--detector-model``; ``None`` when off, and an ``InputError`` naming an option of the
    verifier given without it."""
    if verify or detector_model:
        return VerifySettings(detector_model=detector_model or DETECTOR_MODEL,
                              detection_threshold=detection_threshold,
                              unplanned_threshold=unplanned_threshold, verify_iou=verify_iou,
                              unplanned=unplanned, refine_boxes=refine_boxes)
    options = (("--detection-threshold", detection_threshold, None),
               ("--unplanned-threshold", unplanned_threshold, None), ("--verify-iou", verify_iou, MATCH_IOU),
               ("--unplanned", unplanned, defaults.UNPLANNED), ("--refine-boxes", refine_boxes, False))
    given = [name for name, value, default in options if value != default]
    if given:
        raise InputError(f"{', '.join(given)}: only with --verify or --detector-model (a detector checks "
                         "the boxes)")
    return None

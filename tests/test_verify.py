"""The verifier's rules (acp.score.verify) with a detector stand-in that returns known boxes
behind the ``Detector`` protocol: matching, parts, unplanned instances, the verification term,
refinement, the cascade with CLIS-I and what is exported for each ``--unplanned`` policy."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pytest
from PIL import Image

from acp.boxes import iou_matrix
from acp.errors import InputError
from acp.schema import PlanObject, ScenePlan
from acp.score.verify import (
    Detection,
    PlannedBox,
    Thresholds,
    Verifier,
    VerifySettings,
    check,
    suppress,
    verify_settings,
)

DOG = (10.0, 10.0, 40.0, 40.0)  # pixel xywh
THRESHOLDS = Thresholds(min_score=0.1, confident_score=0.3, match_iou=0.5)


def dog(box=DOG, score=0.9, category="dog") -> Detection:
    return Detection(category, score, box)


@dataclass
class StandIn:
    """A detector returning ``found[k]`` for the k-th image of each call, as the protocol says:
    only the categories asked and scores at least ``min_score``; it counts its calls."""

    found: list[list[Detection]]
    name: str = "stand-in"
    family: str = "owl"
    calls: list[tuple[int, list[list[str]], float]] = field(default_factory=list)

    def detect(self, images: Sequence[Image.Image], queries: Sequence[Sequence[str]], min_score: float
               ) -> list[list[Detection]]:
        self.calls.append((len(images), [list(q) for q in queries], min_score))
        return [[d for d in self.found[k] if d.category in queries[k] and d.score >= min_score]
                for k in range(len(images))]


# (planned boxes, detections, verified per box, IoU per box, roles of the kept detections best
# first, verification term)
CASES = {
    "a box the object fills": (
        [PlannedBox(0, "dog", DOG)], [dog()], [True], [1.0], ["match"], 100.0),
    "a box it misses": (
        [PlannedBox(0, "dog", DOG)], [dog((60.0, 60.0, 30.0, 30.0))], [False], [0.0], ["unplanned"], 0.0),
    "a box half filled is missing at IoU 0.5": (
        [PlannedBox(0, "dog", DOG)], [dog((10.0, 10.0, 40.0, 16.0))], [False], [0.4], ["unplanned"], 20.0),
    "two detections of one object: the duplicate suppressed": (
        [PlannedBox(0, "dog", DOG)], [dog(), dog((11.0, 11.0, 39.0, 39.0), 0.8)], [True], [1.0], ["match"],
        100.0),
    "a part of the object is not a second one": (
        [PlannedBox(0, "dog", DOG)], [dog(), dog((12.0, 12.0, 15.0, 15.0), 0.8)], [True], [1.0],
        ["match", "part"], 100.0),
    "a second dog no box plans": (
        [PlannedBox(0, "dog", DOG)], [dog(), dog((60.0, 10.0, 30.0, 30.0), 0.8)], [True], [1.0],
        ["match", "unplanned"], 50.0),
    "two planned dogs matched one to one, best pair first": (
        [PlannedBox(0, "dog", (0.0, 0.0, 40.0, 40.0)), PlannedBox(1, "dog", (30.0, 0.0, 40.0, 40.0))],
        [dog((28.0, 0.0, 40.0, 40.0), 0.9), dog((0.0, 0.0, 38.0, 40.0), 0.5)],
        [True, True], [0.95, 0.9048], ["match", "match"], 92.74),
    "one detection between two planned boxes verifies one": (
        [PlannedBox(0, "dog", (0.0, 0.0, 40.0, 40.0)), PlannedBox(1, "dog", (10.0, 0.0, 40.0, 40.0))],
        [dog((10.0, 0.0, 40.0, 40.0))], [False, True], [0.6, 1.0], ["match"], 80.0),
    "a detection of another category verifies nothing": (
        [PlannedBox(0, "dog", DOG), PlannedBox(1, "cat", (60.0, 60.0, 30.0, 30.0))],
        [dog(category="cat")], [False, False], [0.0, 0.0], ["unplanned"], 0.0),
    "an empty image": (
        [PlannedBox(0, "dog", DOG), PlannedBox(1, "cat", (60.0, 60.0, 30.0, 30.0))], [], [False, False],
        [0.0, 0.0], [], 0.0),
    "under the detection threshold is no detection": (
        [PlannedBox(0, "dog", DOG)], [dog(score=0.05)], [False], [0.0], [], 0.0),
    "a match under the confident score still verifies": (
        [PlannedBox(0, "dog", DOG)], [dog(score=0.2)], [True], [1.0], ["match"], 100.0),
    "an unmatched weak detection costs nothing": (
        [PlannedBox(0, "dog", DOG)], [dog(), dog((60.0, 60.0, 30.0, 30.0), 0.2)], [True], [1.0],
        ["match", "weak"], 100.0),
    "a detection under a pixel wide is none": (
        [PlannedBox(0, "dog", DOG)], [dog((70.0, 70.0, 0.5, 20.0))], [False], [0.0], [], 0.0),
    "a plan without objects": ([], [dog()], [], [], ["unplanned"], None),
}


@pytest.mark.parametrize("case", list(CASES))
def test_the_verdicts(case: str) -> None:
    planned, detections, verified, ious, roles, term = CASES[case]
    result = check(planned, detections, THRESHOLDS)
    assert [b.verified for b in result.boxes] == verified
    assert [b.iou for b in result.boxes] == pytest.approx(ious, abs=1e-3)
    assert [d.role for d in result.detections] == roles
    if term is None:
        assert result.verification is None
    else:
        assert result.verification == pytest.approx(term, abs=0.01)
    for detection in result.detections:
        assert (detection.object is not None) is (detection.role == "match")


def test_a_match_names_its_box_and_a_box_its_best_detection_even_unmatched() -> None:
    planned = [PlannedBox(7, "dog", DOG)]
    result = check(planned, [dog((10.0, 10.0, 40.0, 16.0), 0.7)], THRESHOLDS)
    (box,) = result.boxes
    assert not box.verified and box.detection is not None and box.detection.score == 0.7
    result = check(planned, [dog()], THRESHOLDS)
    assert result.detections[0].object == 7 and result.detections[0].confident


@pytest.mark.parametrize(("settings", "expected"), [
    (VerifySettings(), (0.1, 0.3, 0.5)),
    (VerifySettings(detection_threshold=0.2, unplanned_threshold=0.6, verify_iou=0.7), (0.2, 0.6, 0.7)),
])
def test_thresholds_follow_the_family_unless_given(settings: VerifySettings, expected: tuple) -> None:
    owl = settings.thresholds("owl")
    assert (owl.min_score, owl.confident_score, owl.match_iou) == expected
    dino = settings.thresholds("grounding-dino")
    if settings.detection_threshold is None:
        assert (dino.min_score, dino.confident_score) == (0.35, 0.5)


def test_the_thresholds_decide_the_verdicts() -> None:
    """The same detections under a stricter IoU and a lower unplanned score."""
    planned = [PlannedBox(0, "dog", DOG)]
    found = [dog((12.0, 12.0, 40.0, 40.0)), dog((60.0, 60.0, 30.0, 30.0), 0.2)]
    assert [d.role for d in check(planned, found, THRESHOLDS).detections] == ["match", "weak"]
    strict = Thresholds(min_score=0.1, confident_score=0.15, match_iou=0.95)
    result = check(planned, found, strict)
    assert not result.boxes[0].verified
    assert [d.role for d in result.detections] == ["unplanned", "unplanned"]


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"unplanned": "keep"}, "--unplanned"),
    ({"verify_iou": 0.0}, "--verify-iou"),
    ({"detection_threshold": 1.5}, "--detection-threshold"),
])
def test_bad_settings_name_their_option(kwargs: dict, message: str) -> None:
    with pytest.raises(InputError, match=message):
        VerifySettings(**kwargs)


def test_a_verifier_option_without_verify_is_refused() -> None:
    assert verify_settings() is None
    with pytest.raises(InputError, match="--unplanned, --refine-boxes: only with --verify"):
        verify_settings(refine_boxes=True, unplanned="ignore")
    settings = verify_settings(detector_model="folder", refine_boxes=True)
    assert settings is not None and settings.refine_boxes and settings.detector_model == "folder"


def plan(*objects: tuple[str, tuple[float, float, float, float]], size: int = 100) -> ScenePlan:
    """A plan whose boxes are these pixel boxes in an image of ``size`` (its own size is 512)."""
    return ScenePlan(id="000001", caption="a scene", planner="heuristic",
                     concepts=sorted({c for c, _ in objects}),
                     objects=[PlanObject(id=k, category=c, description=f"a {c}",
                                         bbox=tuple(v / size for v in box))  # type: ignore[arg-type]
                              for k, (c, box) in enumerate(objects)])


def test_check_plans_asks_each_image_for_its_plans_categories_in_one_call() -> None:
    images = [Image.new("RGB", (100, 100)), Image.new("RGB", (200, 200))]
    plans = [plan(("dog", DOG), ("cat", (60.0, 60.0, 30.0, 30.0)), ("dog", (50.0, 0.0, 20.0, 20.0))),
             plan(("bus", DOG))]
    # The second image is twice the plan's size: its planned box is too.
    stand_in = StandIn([[dog(), dog(category="cat")], [dog((20.0, 20.0, 80.0, 80.0), category="bus")]])
    verifier = Verifier(stand_in, VerifySettings(detector_model="stand-in"))
    results = verifier.check_plans(list(zip(plans, images, strict=True)))
    assert stand_in.calls == [(2, [["dog", "cat"], ["bus"]], 0.1)]
    assert [b.verified for b in results[0].boxes] == [True, False, False]
    assert [b.verified for b in results[1].boxes] == [True]


# -- selection and export ------------------------------------------------------------------------


def scores_of(checks, clis_i: Sequence[Sequence[float]], *, unplanned: str = "drop", refine: bool = False,
              min_clis_i: float = 60.0):
    """``combine`` over one candidate per check, with these CLIS-I per instance."""
    from acp.schema import Candidate
    from acp.score.candidates import Thresholds as ClisThresholds
    from acp.score.candidates import combine
    from acp.score.image import ImageScore, InstanceScore

    candidates = [Candidate(plan_id="000001", index=k, seed=k, path=f"000001/{k}.png", model="m", steps=1,
                            guidance=1.0, beta=0.3, width=100, height=100, prompt="p")
                  for k in range(len(checks))]
    images = [ImageScore(clis_i=sum(values) / len(values), global_score=50.0, local_score=None,
                         global_cosine=0.3,
                         objects=[InstanceScore(id=k, category="dog", clis_i=v, text_similarity=v,
                                                category_confidence=v, cosine=0.3)
                                  for k, v in enumerate(values)])
              for values in clis_i]
    return combine("000001", candidates, images, None, ClisThresholds(min_clis_l=None, min_clis_i=min_clis_i),
                   checks=checks, verify=VerifySettings(unplanned=unplanned, refine_boxes=refine))


def test_the_verification_term_joins_clis_i_and_picks_the_candidate_whose_boxes_are_filled() -> None:
    planned = [PlannedBox(0, "dog", DOG)]
    loose = check(planned, [dog((14.0, 14.0, 40.0, 40.0))], THRESHOLDS)  # IoU 0.6
    tight = check(planned, [dog()], THRESHOLDS)
    records = scores_of([loose, tight], [[80.0], [70.0]])
    assert [r.verification for r in records] == pytest.approx([100 * loose.boxes[0].iou, 100.0], abs=1e-3)
    assert [r.clis for r in records] == pytest.approx([(80 + records[0].verification) / 2, 85.0], abs=1e-3)
    assert [r.best for r in records] == [False, True]  # CLIS-I alone would pick the first


@pytest.mark.parametrize(("clis_i", "detections", "kept", "reason"), [
    (70.0, [dog()], True, None),
    # The detector says no, then CLIP says no.
    (70.0, [], False, "no instance reaches CLIS-I 60 and a detection of its category"),
    (50.0, [dog()], False, "no instance reaches CLIS-I 60"),
])
def test_an_instance_is_exported_where_clip_and_the_detector_agree(clis_i, detections, kept, reason) -> None:
    (record,) = scores_of([check([PlannedBox(0, "dog", DOG)], detections, THRESHOLDS)], [[clis_i]])
    assert record.objects[0].kept is kept and record.kept is kept
    assert (record.reason or "").startswith(reason or "")
    assert record.objects[0].verification == ("verified" if detections else "missing")


@pytest.mark.parametrize(("policy", "kept"), [("drop", False), ("ignore", True), ("pseudo-label", True)])
def test_an_unlabeled_object_drops_its_candidate_only_under_drop(policy: str, kept: bool) -> None:
    found = check([PlannedBox(0, "dog", DOG)], [dog(), dog((60.0, 10.0, 30.0, 30.0), 0.8)], THRESHOLDS)
    (record,) = scores_of([found], [[70.0]], unplanned=policy)
    assert record.kept is kept
    if not kept:
        assert record.reason == "1 unlabeled objects the detector is sure of (dog)"
    assert [d.bbox for d in record.unlabeled()] == [[60.0, 10.0, 30.0, 30.0]]


def test_a_verified_instance_left_out_by_clip_is_unlabeled() -> None:
    """Two planned dogs, both found; CLIP rejects one: its detection is an object no label covers."""
    planned = [PlannedBox(0, "dog", DOG), PlannedBox(1, "dog", (60.0, 60.0, 30.0, 30.0))]
    found = check(planned, [dog(), dog((60.0, 60.0, 30.0, 30.0), 0.8)], THRESHOLDS)
    drop, ignore = (scores_of([found], [[70.0, 40.0]], unplanned=p)[0] for p in ("drop", "ignore"))
    assert [o.kept for o in ignore.objects] == [True, False]
    assert [d.bbox for d in ignore.unlabeled()] == [[60.0, 60.0, 30.0, 30.0]]
    assert not drop.kept


@pytest.mark.parametrize("policy", ["ignore", "pseudo-label", None])
@pytest.mark.parametrize("refine", [False, True])
def test_what_is_exported(policy: str | None, refine: bool) -> None:
    from acp.export.categories import CategorySet
    from acp.export.coco import plan_instances

    scene = plan(("dog", DOG))
    found = check([PlannedBox(0, "dog", DOG)],
                  [dog((12.0, 11.0, 36.0, 38.0)), dog((60.0, 10.0, 30.0, 30.0), 0.8)], THRESHOLDS)
    (record,) = scores_of([found], [[70.0]], unplanned=policy or "ignore", refine=refine)
    instances = plan_instances(scene, CategorySet.from_concepts(["dog"]), score=record, size=(100, 100),
                               unlabeled=policy)  # type: ignore[arg-type]
    first = instances[0]
    assert first.bbox == ((12.0, 11.0, 36.0, 38.0) if refine else DOG)
    assert first.provenance is not None
    assert first.provenance.verification == ("refined" if refine else "verified")
    assert first.provenance.planned_bbox == ([10.0, 10.0, 40.0, 40.0] if refine else None)
    assert not first.crowd
    if policy is None:
        assert len(instances) == 1
        return
    (extra,) = instances[1:]
    assert extra.bbox == (60.0, 10.0, 30.0, 30.0) and extra.crowd is (policy == "ignore")
    assert extra.provenance is not None and extra.provenance.object_id is None
    assert extra.provenance.verification == policy and extra.provenance.detection_score == 0.8


class StandInJudge:
    """A judge rating every instance it is asked about 90, within ``max_calls``."""

    def __init__(self, max_calls: int = 10):
        self.max_calls, self.calls = max_calls, 0
        self.asked: list[str] = []

    def rate(self, requests: Sequence) -> list[float | None]:
        self.calls += len(requests)
        self.asked += [r.description for r in requests]
        return [90.0] * len(requests)


@pytest.mark.parametrize("budget", [10, 1])
def test_the_judge_is_asked_only_where_clip_and_the_detector_disagree(budget: int) -> None:
    from acp.score.candidates import Thresholds as ClisThresholds
    from acp.score.candidates import combine, judge_disagreements
    from acp.score.image import ImageScore, InstanceScore, Scene

    boxes = [(10.0, 10.0, 20.0, 20.0), (40.0, 10.0, 20.0, 20.0), (10.0, 50.0, 20.0, 20.0),
             (60.0, 60.0, 20.0, 20.0)]
    scene = Scene.from_plan(plan(*(("dog", box) for box in boxes)))
    planned = [PlannedBox(k, "dog", box) for k, box in enumerate(boxes)]
    # Found: the first (CLIP agrees) and the fourth (CLIP does not); not the second (CLIP sees
    # it) nor the third (nor does CLIP).
    found = check(planned, [dog(boxes[0]), dog(boxes[3])], THRESHOLDS)
    clip = [70.0, 70.0, 40.0, 40.0]
    image = ImageScore(clis_i=50.0, global_score=50.0, local_score=55.0, global_cosine=0.3, objects=[
        InstanceScore(id=k, category="dog", clis_i=v, text_similarity=v, category_confidence=v, cosine=0.3)
        for k, v in enumerate(clip)])
    judge = StandInJudge(budget)
    asked = judge_disagreements(judge, [(scene, Image.new("RGB", (100, 100)), image, found)],  # type: ignore[arg-type]
                                60.0)
    assert judge.asked == ["a dog", "a dog"][:budget] and asked == min(budget, 2)
    rated = [o.judge for o in image.objects]
    assert rated == ([None, 90.0, None, 90.0] if budget > 1 else [None, 90.0, None, None])
    from acp.schema import Candidate

    candidate = Candidate(plan_id="000001", index=0, seed=0, path="000001/0.png", model="m", steps=1,
                          guidance=1.0, beta=0.3, width=100, height=100, prompt="p")
    (record,) = combine("000001", [candidate], [image], None, ClisThresholds(None, 60.0), checks=[found],
                        verify=VerifySettings(unplanned="ignore"))
    # Where the judge rated, its rating decides alone; elsewhere both cheap checks must agree.
    assert [o.kept for o in record.objects] == ([True, True, False, True] if budget > 1
                                                else [True, True, False, False])


def _suppress_one_by_one(detections: list[Detection], iou: float) -> list[Detection]:
    """Greedy NMS as first written: each detection's IoU with the kept ones of its category."""
    order = sorted(range(len(detections)), key=lambda k: (-detections[k].score, k))
    kept: list[Detection] = []
    by_category: dict[str, list[tuple[float, float, float, float]]] = {}
    for k in order:
        same = by_category.setdefault(detections[k].category, [])
        if same and float(iou_matrix([detections[k].box], same).max()) > iou:
            continue
        same.append(detections[k].box)
        kept.append(detections[k])
    return kept


@pytest.mark.parametrize("seed", range(20))
def test_suppression_from_one_iou_matrix_keeps_what_pairwise_checks_keep(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(0, 60))
    # clustered boxes, tied scores and exact duplicates: every branch of the greedy order
    centres = rng.uniform(0, 400, (4, 2))
    detections = []
    for k in range(n):
        x, y = centres[k % 4] + rng.normal(0, 15, 2)
        w, h = rng.uniform(5, 80, 2)
        score = float(rng.choice([0.5, 0.7, rng.uniform(0, 1)]))
        category = str(rng.choice(["dog", "cat"]))
        detections.append(Detection(category, score, (float(x), float(y), float(w), float(h))))
    if n > 3:
        detections.append(detections[2])
    for iou in (0.0, 0.3, 0.5, 0.9):
        assert suppress(detections, iou) == _suppress_one_by_one(detections, iou)

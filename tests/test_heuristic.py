"""The offline planner: valid, deterministic, plausible layouts for any concept set."""

from __future__ import annotations

import random

import pytest

from acp.boxes import iou_matrix
from acp.english import with_article
from acp.plan.base import PlanSettings, SceneRequest
from acp.plan.heuristic import HeuristicPlanner, caption_for, describe
from acp.plan.priors import DEFAULT_PRIOR, PRIORS, prior_for
from acp.schema import LayoutRules, ScenePlan


def test_priors_cover_coco():
    assert len(PRIORS) >= 80
    assert prior_for("Dogs") is PRIORS["dog"]
    assert prior_for("puppy") is PRIORS["dog"]
    assert prior_for("quokka") is DEFAULT_PRIOR


def test_deterministic_per_seed():
    planner = HeuristicPlanner()
    request = SceneRequest("000001", ("dog", "frisbee", "person"), seed=5)
    assert planner.plan(request) == planner.plan(request)
    other = planner.plan(SceneRequest("000001", ("dog", "frisbee", "person"), seed=6))
    assert other.objects != planner.plan(request).objects


@pytest.mark.parametrize("size", [(512, 512), (768, 512), (512, 1024)])
def test_many_random_scenes_are_valid(size):
    rng = random.Random(0)
    names = [*PRIORS, "quokka", "spaceship"]
    planner = HeuristicPlanner(PlanSettings(*size))
    for i in range(300):
        concepts = tuple(rng.choice(names) for _ in range(rng.randint(1, 8)))
        plan = planner.plan(SceneRequest(f"{i:06d}", concepts, seed=i, width=size[0], height=size[1]))
        ScenePlan.model_validate(plan.model_dump())  # round trip through the strict schema
        assert [o.category for o in plan.objects] == list(concepts)
        assert (plan.width, plan.height) == size


def test_crowded_scene_stays_within_rules():
    planner = HeuristicPlanner()
    plan = planner.plan(SceneRequest("000001", ("person",) * 30, seed=1))
    boxes = [o.bbox for o in plan.objects]
    iou = iou_matrix(boxes, boxes)
    assert len(boxes) == 30 and iou[~__import__("numpy").eye(30, dtype=bool)].max() <= 0.7


def test_ground_objects_sit_lower_than_flying_ones():
    planner = HeuristicPlanner()
    lows, highs = [], []
    for seed in range(50):
        plan = planner.plan(SceneRequest("000001", ("car", "airplane"), seed=seed))
        car, plane = plan.objects
        lows.append(car.bbox[1] + car.bbox[3])
        highs.append(plane.bbox[1] + plane.bbox[3])
    assert sum(lows) / 50 > sum(highs) / 50 + 0.2


def test_overlap_rule_rejects_or_flags():
    request = SceneRequest("000001", ("person",) * 30, seed=3)
    strict = HeuristicPlanner(PlanSettings(rules=LayoutRules(max_overlap=0.0)))
    outcome = next(strict.plan_many([request]))
    assert not outcome.ok and "IoU" in outcome.error
    lenient = HeuristicPlanner(PlanSettings(rules=LayoutRules(max_overlap=0.0, on_overlap="flag")))
    flagged = next(lenient.plan_many([request]))
    assert flagged.ok and flagged.plan.warnings


@pytest.mark.parametrize(
    ("concepts", "caption"),
    [
        (["dog", "person", "person"], "A photo of a dog and two people in a city park."),
        (["bus", "apple"], "A photo of a bus and an apple on a city street."),
        (["fire hydrant"], "A photo of a fire hydrant on a sidewalk."),
        (["fire hydrant", "fire hydrant"], "A photo of two fire hydrants on a sidewalk."),
        (["frisbees"], "A photo of a frisbee in a park."),
        (["frisbee", "frisbee", "dog"], "A photo of two frisbees and a dog in a park."),
        (["train"], "A photo of a train at a railway station."),
        (["skis"], "A photo of a pair of skis on a snowy slope."),
        (["cup", "laptop"], "A photo of a cup and a laptop on an office desk."),  # the larger one's place
        (["umbrella"], "A photo of an umbrella on a rainy street."),
        (["airplane"], "A photo of an airplane in a clear sky above an airport."),
        (["zorblax"], "A photo of a zorblax in an indoor scene."),  # no prior: the default
    ],
)
def test_captions(concepts, caption):
    anchor = max(concepts, key=lambda c: prior_for(c).side)
    assert caption_for(concepts, prior_for(anchor).place) == caption


def test_planned_captions_read_well():
    plan = HeuristicPlanner().plan(SceneRequest("000001", ("fire hydrant", "fire hydrant"), seed=1))
    assert plan.caption == "A photo of two fire hydrants on a sidewalk."
    assert plan.background == "a sidewalk"


def test_every_setting_has_its_article_and_a_preposition():
    for prior in [*PRIORS.values(), DEFAULT_PRIOR]:
        assert prior.preposition in ("in", "on", "at")
        rest = prior.setting.split(" ", 1)[1]
        assert with_article(rest) == prior.setting, prior.setting


class _Pick(random.Random):
    """Always picks ``value`` (a colour or coat)."""

    def __init__(self, value):
        super().__init__(0)
        self.value = value

    def choice(self, seq):
        assert self.value in seq
        return self.value


@pytest.mark.parametrize(
    ("category", "pick", "description"),
    [
        ("person", "orange", "a person wearing an orange jacket"),
        ("person", "red", "a person wearing a red jacket"),
        ("umbrella", "orange", "an orange umbrella"),
        ("dog", "spotted", "a spotted dog"),
        ("Dogs", "golden", "a golden Dog"),
        ("frisbees", "orange", "an orange frisbee"),
        ("skis", "silver", "a pair of silver skis"),
        ("apple", None, "an apple"),
        ("orange", None, "an orange"),
    ],
)
def test_descriptions(category, pick, description):
    rng = _Pick(pick) if pick else random.Random(0)
    assert describe(category, rng) == description

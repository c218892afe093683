"""Planning from a bank (`--bank` on `acp plan`): offline layouts drawn from real ones, valid and
not copies; the LLM's prompt shows retrieved real layouts, recorded in the plan."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from acp.cli import app
from acp.plan.base import PlanSettings, SceneRequest
from acp.plan.examples import MAX_EXAMPLE_OBJECTS, MAX_EXAMPLES
from acp.plan.heuristic import HeuristicPlanner
from acp.plan.llm import LLMPlanner
from acp.schema import ScenePlan, layout_problems
from acp.score.bank import Bank
from acp.score.layout import LayoutScorer
from tests.chat_server import ChatServer, chat_server_fixture, ok, valid_text  # noqa: F401
from tests.test_bank import write_coco
from tests.test_clis_v2 import cat_on_bed
from tests.test_llm_planner import settings_for


@pytest.fixture(scope="module")
def bank(tmp_path_factory: pytest.TempPathFactory) -> Bank:
    rng = np.random.default_rng(0)
    return Bank.from_coco([write_coco(tmp_path_factory.mktemp("plan-bank") / "world.json",
                                      [cat_on_bed(rng) for _ in range(60)])])


def request(seed: int, concepts: tuple[str, ...] = ("cat", "bed")) -> SceneRequest:
    return SceneRequest(f"{seed:06d}", concepts, seed)


def test_a_bank_plan_is_valid_drawn_from_a_real_layout_and_not_a_copy(bank: Bank) -> None:
    planner = HeuristicPlanner(PlanSettings(), bank=bank)
    plans = [planner.plan(request(seed)) for seed in range(25)]
    real = bank.boxes.astype(np.float64)
    for plan in plans:
        assert ScenePlan.model_validate(plan.model_dump()) == plan
        assert not layout_problems(plan, PlanSettings().rules)
        assert len(plan.examples) == 1 and plan.examples[0] in set(bank.image_ids.tolist())
        boxes = np.array([o.bbox for o in plan.objects])
        assert np.abs(boxes[:, None, :] - real[None, :, :]).max(axis=2).min() > 1e-3  # no box copied
    assert planner.plan(request(3)) == plans[3]  # deterministic per request
    assert len({tuple(o.bbox for o in p.objects) for p in plans}) == len(plans)
    # Real-looking: the cat sits above the bed in most plans, and they score above priors' plans.
    above = [p.objects[0].bbox[1] + p.objects[0].bbox[3] / 2 < p.objects[1].bbox[1] + p.objects[1].bbox[3] / 2
             for p in plans]
    assert np.mean(above) > 0.8
    scorer = LayoutScorer(bank)
    priors = [HeuristicPlanner(PlanSettings()).plan(request(seed)) for seed in range(25)]
    drawn = np.median([r.score for r in scorer.score_many(plans)])
    assert drawn > np.median([r.score for r in scorer.score_many(priors)]) + 10


def test_categories_the_bank_lacks_keep_the_priors(bank: Bank) -> None:
    planner = HeuristicPlanner(PlanSettings(), bank=bank)
    plan = planner.plan(request(1, ("cat", "zebra", "bed")))
    assert [o.category for o in plan.objects] == ["cat", "zebra", "bed"] and plan.examples
    assert not layout_problems(plan, PlanSettings().rules)
    unknown = planner.plan(request(1, ("zebra", "giraffe")))
    assert unknown.examples == []
    assert unknown == HeuristicPlanner(PlanSettings()).plan(request(1, ("zebra", "giraffe")))


def test_the_llm_sees_retrieved_real_layouts_of_the_scene_and_the_plan_records_them(
    bank: Bank, chat_server: ChatServer,
) -> None:
    chat_server.responder = lambda body: ok(valid_text(["cat", "bed"]))
    planner = LLMPlanner(settings_for(chat_server.url), PlanSettings(), bank=bank)
    outcome = next(iter(planner.plan_many([request(7)])))
    assert outcome.plan is not None
    prompt = chat_server.requests[-1].messages[-1]["content"]
    block = prompt[prompt.index("Real photographs"):prompt.index("Image size")]
    lines = [line for line in block.splitlines() if re.match(r"\d+\. ", line)]
    assert len(lines) == MAX_EXAMPLES == len(outcome.plan.examples)
    real = bank.boxes.astype(np.float64)
    for line in lines:
        objects = re.findall(r"(\w+) \[([^\]]+)\]", line)
        assert {"cat", "bed"} <= {name for name, _ in objects} and len(objects) <= MAX_EXAMPLE_OBJECTS
        for _, numbers in objects:  # every box shown is a real box of the bank, rounded
            box = np.array([float(v) for v in numbers.split(",")])
            assert np.abs(real - box).max(axis=1).min() < 1e-3
    assert set(outcome.plan.examples) <= set(bank.image_ids.tolist())
    assert len(prompt) < 2000  # bounded
    chat_server.requests.clear()
    plain = next(iter(LLMPlanner(settings_for(chat_server.url), PlanSettings()).plan_many([request(7)])))
    assert plain.plan is not None and plain.plan.examples == []
    assert "Real photographs" not in chat_server.requests[-1].messages[-1]["content"]


def test_acp_plan_takes_a_bank(bank: Bank, tmp_path: Path) -> None:
    bank.save(tmp_path / "bank")
    out = tmp_path / "plans.jsonl"
    run = CliRunner().invoke(app, ["plan", "--concepts", "cat,bed", "--objects-per-scene", "2", "--scenes",
                                   "4", "--planner", "heuristic", "--bank", str(tmp_path / "bank"), "-o",
                                   str(out)])
    assert run.exit_code == 0, run.output
    plans = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(plans) == 4 and all(p["examples"] for p in plans)
    missing = CliRunner().invoke(app, ["plan", "--concepts", "cat", "--planner", "heuristic", "--bank",
                                       str(tmp_path / "nope"), "-o", str(tmp_path / "x.jsonl")])
    assert missing.exit_code == 1 and missing.stderr.count("\n") == 1 and "nope" in missing.stderr
    assert not (tmp_path / "x.jsonl").exists()

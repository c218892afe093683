"""CLIS-L v2 (acp.score.density): properties on a small synthetic bank, degenerate inputs,
batch == per-layout, the CDF's shape, and the --clis-l-method option."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from acp.cli import app
from acp.score import density
from acp.score.bank import Bank
from acp.score.layout import LayoutScorer
from tests.test_bank import write_coco

Box = list[float]
World = tuple[Bank, list[list[tuple[str, Box]]]]


def cat_on_bed(rng: np.random.Generator) -> list[tuple[str, Box]]:
    """A real-looking image of the synthetic world: a small squarish cat above a wide bed,
    sometimes a tall lamp to the right of the bed."""
    bw, bh = rng.uniform(0.5, 0.7), rng.uniform(0.25, 0.35)
    bx, by = rng.uniform(0.05, 0.95 - bw), rng.uniform(0.55, 0.95 - bh)
    cw = rng.uniform(0.12, 0.2)
    ch = cw * rng.uniform(0.8, 1.2)
    cx = bx + rng.uniform(0.1, 0.6) * bw
    cy = by - ch + rng.uniform(0.0, 0.05)
    objects: list[tuple[str, Box]] = [("cat", [cx, cy, cw, ch]), ("bed", [bx, by, bw, bh])]
    if rng.uniform() < 0.5:
        lw, lh = rng.uniform(0.05, 0.08), rng.uniform(0.3, 0.4)
        lx = min(bx + bw + rng.uniform(0.0, 0.02), 0.99 - lw)
        objects.append(("lamp", [lx, by + bh - lh, lw, lh]))
    return [(name, [float(v) for v in box]) for name, box in objects]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    rng = np.random.default_rng(0)
    images = [cat_on_bed(rng) for _ in range(80)]
    path = write_coco(tmp_path_factory.mktemp("v2") / "world.json", images)
    held_out = [cat_on_bed(rng) for _ in range(30)]
    return Bank.from_coco([path]), held_out


def score(scorer: LayoutScorer, objects: list[tuple[str, Box]],
          relations: Sequence[tuple[int, int, str]] = ()) -> float:
    return scorer.score_layout([n for n, _ in objects], [b for _, b in objects], relations).score


def scaled(box: Box, sx: float, sy: float) -> Box:
    x, y, w, h = box
    cx, cy = x + w / 2, y + h / 2
    return [cx - w * sx / 2, cy - h * sy / 2, w * sx, h * sy]


def test_real_layouts_average_about_half_and_corrupted_ones_score_lower(world: World) -> None:
    bank, held_out = world
    scorer = LayoutScorer(bank)
    real = np.array([score(scorer, objects[:2], [(0, 1, "above")]) for objects in held_out])
    assert 25 < real.mean() < 75
    stretched = np.array([
        score(scorer, [("cat", scaled(objects[0][1], 3, 0.3)), objects[1]], [(0, 1, "above")])
        for objects in held_out
    ])
    swapped = np.array([
        score(scorer, [("cat", objects[1][1]), ("bed", objects[0][1])], [(0, 1, "above")])
        for objects in held_out
    ])
    for corrupted in (stretched, swapped):
        assert corrupted.mean() < real.mean() / 2
        assert (corrupted < real).mean() > 0.8


def test_an_object_off_its_usual_size_or_aspect_lowers_its_term_and_the_score(world: World) -> None:
    bank, held_out = world
    scorer = LayoutScorer(bank)
    objects = held_out[0][:2]
    base = scorer.score_layout(["cat", "bed"], [objects[0][1], objects[1][1]])
    for sx, sy in ((3.0, 0.3), (0.3, 3.0), (0.25, 0.25), (2.5, 2.5)):
        changed = scorer.score_layout(["cat", "bed"], [scaled(objects[0][1], sx, sy), objects[1][1]])
        assert changed.score < base.score
        assert changed.pairs[0].terms["objects"] < base.pairs[0].terms["objects"]


def test_swapping_the_boxes_of_a_directional_relation_lowers_the_score(world: World) -> None:
    bank, held_out = world
    scorer = LayoutScorer(bank)
    worse = 0
    for objects in held_out:
        cat, bed = objects[0][1], objects[1][1]
        given = scorer.score_layout(["cat", "bed"], [cat, bed], [(0, 1, "above")])
        swapped = scorer.score_layout(["cat", "bed"], [bed, cat], [(0, 1, "above")])
        assert swapped.pairs[0].terms["relation"] < given.pairs[0].terms["relation"]
        assert swapped.pairs[0].terms["assignment"] < given.pairs[0].terms["assignment"]
        worse += swapped.score < given.score
    assert worse == len(held_out)


def test_the_relation_term_grows_with_the_margin_and_follows_the_predicate() -> None:
    subject = np.array([[0.1, 0.4, 0.2, 0.2]] * 9)
    obj = subject.copy()
    obj[:, 0] = np.linspace(0.0, 0.8, 9)  # the object moves rightwards
    left = density.log_sigmoid(8 * density.relation_margins(subject, obj, np.full(9, density.LEFT)))
    right = density.log_sigmoid(8 * density.relation_margins(subject, obj, np.full(9, density.RIGHT)))
    assert np.all(np.diff(left) > 0) and np.all(np.diff(right) < 0) and np.all(left <= 0)


@pytest.mark.parametrize(
    ("predicate", "axis"),
    [("left of", density.LEFT), ("to the right of", density.RIGHT), ("on top of", density.ABOVE),
     ("above", density.ABOVE), ("under", density.BELOW), ("bottom", density.BELOW),
     ("next to", density.NEXT_TO), ("beside", density.NEXT_TO), ("holding", None), ("", None)],
)
def test_predicates_name_their_axis(predicate: str, axis: int | None) -> None:
    assert density.relation_axis(predicate) == axis


def test_the_score_is_a_monotone_cdf_within_0_and_100(world: World) -> None:
    bank, _ = world
    calibration = density.Calibration(bank.model.cdf_offsets, bank.model.cdf_values)
    totals = np.linspace(-200, 50, 2001)
    for bucket in range(density.CDF_BUCKETS):
        values = calibration.score(totals, np.full(totals.size, bucket))
        assert np.all(np.diff(values) >= 0) and values[0] >= 0 and values[-1] <= 100
        assert values[0] < 1e-6 and values[-1] > 99.9
    # Real layouts of the bank's own two-object bucket sit around the middle of their CDF.
    table = bank.model.cdf_values[bank.model.cdf_offsets[1]:bank.model.cdf_offsets[2]]
    assert calibration.score(np.array([np.median(table)]), np.array([1]))[0] == pytest.approx(50, abs=2)


@pytest.mark.parametrize(
    "bad", [[0.1, 0.1, 0.0, 0.2], [0.1, 0.1, 0.2, -0.1], [math.nan, 0.1, 0.2, 0.2], [0.1, math.inf, 0.2, 0.2]]
)
def test_degenerate_boxes_score_zero_without_raising(world: World, bad: Box) -> None:
    bank, held_out = world
    scorer = LayoutScorer(bank)
    result = scorer.score_layout(["cat", "bed"], [bad, held_out[0][1][1]])
    assert result.score == 0 and result.method == "degenerate" and not result.reference_free
    assert scorer.score_layout(["cat"], [bad]).score == 0


def test_one_object_same_category_unknown_names_and_tiny_boxes_get_finite_scores(
    world: World,
) -> None:
    bank, held_out = world
    scorer = LayoutScorer(bank)
    cat, bed = held_out[0][0][1], held_out[0][1][1]
    lone = scorer.score_layout(["cat"], [cat])
    assert lone.method == "density" and 0 < lone.score <= 100 and lone.pairs[0].object is None
    assert scorer.score_layout(["cat"], [scaled(cat, 3, 0.3)]).score < lone.score
    two_cats = scorer.score_layout(["cat", "cat"], [cat, [0.7, 0.2, 0.15, 0.15]])
    assert 0 <= two_cats.score <= 100
    assert two_cats.pairs[0].terms["assignment"] == pytest.approx(math.log(0.5))
    unknown = scorer.score_layout(["zebra", "bed"], [cat, bed])
    assert unknown.method == "density" and 0 <= unknown.score <= 100
    assert unknown.pairs[0].match == ("none", "exact")
    assert scorer.score_layout(["zebra", "giraffe"], [cat, bed]).reference_free  # nothing known: sanity
    tiny = scorer.score_layout(["cat", "bed"], [[0.5, 0.5, 0.001, 0.002], bed])  # under the planner's minimum
    assert math.isfinite(tiny.score) and tiny.score < 5


def test_batch_scores_equal_per_layout_scores_exactly(world: World) -> None:
    bank, held_out = world
    scorer = LayoutScorer(bank)
    rng = np.random.default_rng(1)
    layouts = []
    for objects in held_out:
        names = [n for n, _ in objects]
        boxes = [b for _, b in objects]
        if rng.uniform() < 0.3:
            boxes[0] = scaled(boxes[0], 2, 0.5)
        layouts.append((names, boxes, [(0, 1, "above")], None))
    layouts += [(["cat"], [[0.1, 0.1, 0.2, 0.2]], [], None), ([], [], [], None),
                (["cat", "dog"], [[0.1, 0.1, 0.0, 0.2], [0.5, 0.5, 0.1, 0.1]], [], None)]
    many = [
        (["lamp" if k % 3 else "cat" for k in range(n)],
         [[*map(float, rng.uniform(0, 0.7, 2)), *map(float, rng.uniform(0.05, 0.3, 2))] for _ in range(n)],
         [(0, n - 1, "left of")], None)
        for n in (4, 6, 9)
    ]
    layouts += many
    batch = scorer.score_layouts(layouts)
    one_by_one = [scorer.score_layouts([layout])[0] for layout in layouts]
    assert [r.to_dict() for r in batch] == [r.to_dict() for r in one_by_one]
    assert [r.score for r in batch] == [r.score for r in one_by_one]
    assert {r.method for r in batch} == {"density", "empty", "degenerate"}


def test_past_three_objects_only_related_and_nearest_pairs_are_scored() -> None:
    boxes = np.array([[0.05 + 0.1 * k, 0.4, 0.05, 0.05] for k in range(8)])  # a row of boxes
    pairs = density.scored_pairs(boxes, {(0, 7)})
    assert (0, 7) in pairs and len(pairs) < 8 * 7 / 2
    assert all((k, k + 1) in pairs for k in range(7))  # each box's neighbours
    assert len(density.scored_pairs(boxes[:3], set())) == 3


def test_a_bank_without_any_pair_still_scores(tmp_path: Path) -> None:
    bank = Bank.from_coco([write_coco(tmp_path / "a.json", [[("cat", [0.1, 0.1, 0.2, 0.2])]] * 12)])
    result = LayoutScorer(bank).score_layout(["cat", "cat"], [[0.1, 0.1, 0.2, 0.2], [0.5, 0.5, 0.2, 0.2]])
    assert 0 <= result.score <= 100 and result.method == "density"


def test_clis_l_method_option_scores_with_the_chosen_formula(tmp_path: Path, world: World) -> None:
    bank, held_out = world
    bank.save(tmp_path / "bank")
    objects = held_out[0][:2]
    plan = {
        "id": "p1", "concepts": ["cat", "bed"], "caption": "a cat on a bed", "planner": "heuristic",
        "objects": [{"id": k, "category": n, "description": f"a {n}", "bbox": b}
                    for k, (n, b) in enumerate(objects)],
        "relations": [{"subject": 0, "predicate": "above", "object": 1}],
    }
    plans = tmp_path / "plans.jsonl"
    plans.write_text(json.dumps(plan) + "\n")
    results = {}
    for method in ("v2", "paper"):
        out = tmp_path / f"{method}.jsonl"
        run = CliRunner().invoke(app, ["score", "layouts", str(plans), "--bank", str(tmp_path / "bank"),
                                       "--clis-l-method", method, "-o", str(out)])
        assert run.exit_code == 0, run.output
        results[method] = json.loads(out.read_text())
    assert results["v2"]["clis_l_method"] == "density" and results["paper"]["clis_l_method"] == "pairs"
    expected = LayoutScorer(bank, method="paper").score_layout(
        [n for n, _ in objects], [b for _, b in objects], [(0, 1, "above")]
    )
    assert results["paper"]["clis_l"] == pytest.approx(expected.score, abs=1e-3)
    bad = CliRunner().invoke(app, ["score", "layouts", str(plans), "--clis-l-method", "v9", "-o",
                                   str(tmp_path / "x.jsonl")])
    assert bad.exit_code == 2 and "--clis-l-method" in bad.stderr and bad.stderr.count("\n") == 1


def test_a_run_records_the_clis_l_method_unless_it_is_v2() -> None:
    """So that settings.json of runs from before the option (v2, the default then) still match
    (and resume); v3, today's default, is recorded, so such a run is not continued with it."""
    from acp.concepts import ConceptInput
    from acp.generate import GenerateConfig
    from acp.score.candidates import ScoreSettings

    concepts = ConceptInput(vocabulary=("cat", "dog"))
    v2 = GenerateConfig(concepts=concepts, score=ScoreSettings(clis_l_method="v2"))
    assert "clis_l_method" not in v2.record()
    assert GenerateConfig(concepts=concepts).record()["clis_l_method"] == "v3"
    paper = GenerateConfig(concepts=concepts, score=ScoreSettings(clis_l_method="paper"))
    assert paper.record()["clis_l_method"] == "paper"

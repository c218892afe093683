"""CLIS-L v3 (acp.score.likelihood) and the speed work of `acp score layouts`: the kernel's two
paths agree bit for bit, the fit's weights, the statistics, the fast reader and writer, workers."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from acp.cli import app
from acp.schema import ScenePlan, parse_plan_line, read_plans
from acp.score import kernel, likelihood
from acp.score.bank import Bank
from acp.score.layout import LayoutScore, LayoutScorer, PairScore
from acp.score.plan_files import score_chunk
from tests.test_bank import write_coco
from tests.test_clis_v2 import cat_on_bed, scaled

Box = list[float]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> tuple[Bank, list[list[tuple[str, Box]]]]:
    rng = np.random.default_rng(0)
    images = [cat_on_bed(rng) for _ in range(80)]
    path = write_coco(tmp_path_factory.mktemp("v3") / "world.json", images)
    return Bank.from_coco([path]), [cat_on_bed(rng) for _ in range(30)]


def kernel_inputs(seed: int) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(seed)
    refs = rng.normal(size=(700, 4))
    offsets = np.array([0, 256, 300, 300, 700])  # one group without references
    z = rng.normal(size=(900, 4)) * 3
    group = rng.integers(-1, 4, 900)
    return z, group, offsets, refs


@pytest.mark.parametrize("masked", [False, True])
def test_the_compiled_kernel_equals_numpy_bit_for_bit(masked: bool) -> None:
    pytest.importorskip("numba")
    z, group, offsets, refs = kernel_inputs(1)
    images = (np.arange(900) % 13, np.arange(700) % 13) if masked else (None, None)
    compiled = kernel.kernel_sums(z, group, offsets, refs, *images, compiled=True)
    plain = kernel.kernel_sums(z, group, offsets, refs, *images, compiled=False)
    assert np.array_equal(compiled[0], plain[0]) and np.array_equal(compiled[1], plain[1])
    # Each sum is of its own group's references only, left out by image when asked.
    q = int(np.flatnonzero(group == 0)[0])
    kept = [r for r in range(256) if not masked or r % 13 != q % 13]
    u = 1 + ((refs[kept] - z[q]) ** 2).sum(axis=1)
    assert plain[0][q] == pytest.approx((1 / u**4).sum(), rel=1e-12) and plain[1][q] == len(kept)
    assert np.all(plain[0][group == 2] == 0) and np.all(plain[0][group < 0] == 0)


def test_scores_are_the_same_with_and_without_numba(
    world: tuple[Bank, list[list[tuple[str, Box]]]], monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("numba")
    bank, held_out = world
    layouts = [([n for n, _ in objs], [b for _, b in objs], [(0, 1, "above")], None) for objs in held_out]
    compiled = [r.to_json() for r in LayoutScorer(bank).score_layouts(layouts)]
    monkeypatch.setattr(kernel, "compiled_kernel", lambda: None)
    assert [r.to_json() for r in LayoutScorer(bank).score_layouts(layouts)] == compiled


def test_weights_are_non_negative_and_follow_the_evidence() -> None:
    rng = np.random.default_rng(0)
    real = np.arange(4000) < 2000
    x = rng.normal(size=(4000, 3))
    x[:, 0] += np.where(real, 1.5, -1.5)  # informative: higher on real layouts
    x[:, 1] += np.where(real, -0.5, 0.5)  # higher on perturbed ones: must not count for them
    weights = likelihood.fit_weights(x, real)
    assert weights[0] > 1 and weights[1] == 0 and weights[2] >= 0 and abs(weights[2]) < 0.2


def test_the_bank_holds_fitted_weights_and_calibrated_real_layouts(
    world: tuple[Bank, list[list[tuple[str, Box]]]],
) -> None:
    bank, held_out = world
    model = bank.likelihood
    assert model.weights.shape == (len(likelihood.FEATURES),) and np.all(model.weights >= 0)
    assert model.weights.sum() > 0 and model.margins.size > 0 and np.all(np.diff(model.margins) >= 0)
    scorer = LayoutScorer(bank)
    real = np.array([scorer.score_layout([n for n, _ in o], [b for _, b in o], [(0, 1, "above")]).score
                     for o in held_out])
    assert 25 < np.median(real) < 80


@pytest.mark.parametrize(
    "change",
    [lambda c, b: (scaled(c, 3, 1 / 3), b), lambda c, b: (scaled(c, 1 / 3, 3), b),
     lambda c, b: (scaled(c, 4, 4), b), lambda c, b: ([c[0], 0.02, c[2], c[3]], b),
     lambda c, b: (b, c),
     lambda c, b: ([b[0] + b[2] / 2 - c[2] / 2, b[1] + b[3] / 2 - c[3] / 2, c[2], c[3]], b)],
    ids=["wide", "tall", "big", "moved up", "swapped", "stacked"],
)
def test_a_layout_wrong_in_any_way_scores_below_the_real_one(
    world: tuple[Bank, list[list[tuple[str, Box]]]], change: object,
) -> None:
    bank, held_out = world
    scorer = LayoutScorer(bank)
    lower = 0
    for objects in held_out:
        cat, bed = objects[0][1], objects[1][1]
        real = scorer.score_layout(["cat", "bed"], [cat, bed], [(0, 1, "above")]).score
        wrong = scorer.score_layout(["cat", "bed"], list(change(cat, bed)), [(0, 1, "above")]).score  # type: ignore[operator]
        lower += wrong < real
    assert lower >= 0.8 * len(held_out)


def test_statistics_are_the_means_and_minima_of_their_terms(
    world: tuple[Bank, list[list[tuple[str, Box]]]],
) -> None:
    bank, held_out = world
    from acp.score.density import make_batch

    objects = held_out[0] if len(held_out[0]) == 3 else next(o for o in held_out if len(o) == 3)
    cats = [bank.category_by_key(n) for n, _ in objects]
    batch = make_batch([(cats, [b for _, b in objects], [(0, 1, 2)])])
    stats = likelihood.statistics(bank.likelihood, batch)
    row = dict(zip(likelihood.FEATURES, stats.layouts[0], strict=True))
    assert row["objects"] == pytest.approx(stats.object_terms.mean())
    assert row["weakest_object"] == pytest.approx(stats.object_terms.min())
    assert row["pairs"] == pytest.approx(stats.pair_terms.mean()) and batch.pair_i.size == 3
    assert row["weakest_pair"] == pytest.approx(stats.pair_terms.min())
    assert row["relations"] == row["weakest_relation"] == pytest.approx(stats.pair_relation.sum())
    element = stats.object_terms.copy()
    for k, (i, j) in enumerate(zip(batch.pair_i, batch.pair_j, strict=True)):
        element[i] += stats.pair_terms[k] + stats.pair_relation[k]
        element[j] += stats.pair_terms[k] + stats.pair_relation[k]
    assert row["weakest_element"] == pytest.approx(element.min())
    assert likelihood.logit(stats.layouts, bank.likelihood.weights)[0] == pytest.approx(
        float(stats.layouts[0] @ bank.likelihood.weights))


@pytest.mark.parametrize("family", likelihood.FAMILIES)
def test_each_perturbation_family_changes_a_layout_and_keeps_it_in_frame(family: str) -> None:
    rng = np.random.default_rng(3)
    boxes = np.array([[0.1, 0.5, 0.3, 0.2], [0.5, 0.4, 0.2, 0.3], [0.2, 0.1, 0.1, 0.1]])
    changed = 0
    for _ in range(20):
        out = likelihood.perturb(boxes, family, rng)
        assert out is not None and out.shape == boxes.shape
        assert np.all(out[:, 2:] > 0) and np.all(out[:, :2] >= -1e-9)
        assert np.all(out[:, :2] + out[:, 2:] <= 1 + 1e-9)
        changed += not np.allclose(out, boxes)
    assert changed >= 18
    assert likelihood.perturb(boxes[:1], "distance", rng) is None


def test_the_json_writer_gives_the_records_of_json_dumps() -> None:
    pair = PairScore(0, 1, ('a "b"', "ç"), "left of", "density", 12.34567, 0.81234, 7, ("a", None),
                     ("exact", "none"), {"objects": -1.23456, "pair": math.inf, "relation": 0.0})
    lone = PairScore(3, None, ("cat",), None, "density", 50.0, 1.0, 0, (), (), {"object": 0.5})
    for layout in (LayoutScore(12.34567, "density", 0.9, [pair, lone]), LayoutScore(0.0, "empty", 0.0, [])):
        expected = layout.to_dict()
        expected["pairs"] = [
            {**p, "terms": {k: (v if math.isfinite(v) else None) for k, v in p["terms"].items()}}
            for p in expected["pairs"]
        ]
        assert json.loads(layout.to_json()) == expected


BAD_LINES = [
    "not json", "[1, 2]", '{"id": "x"}', '{"id": "000", "caption": "c", "planner": "h", "objects": '
    '[{"id": 0, "category": "cat", "description": "d", "bbox": [0.1, 0.1, NaN, 0.2]}]}',
    "[" * 5000 + "]" * 5000, '{"id": "000", "caption": "c", "planner": "h", "extra": 1}',
]


def test_the_fast_reader_gives_the_plans_and_reasons_of_read_plans(tmp_path: Path) -> None:
    good = {"id": "000001", "caption": "a cat", "planner": "heuristic", "concepts": ["cat"],
            "objects": [{"id": 0, "category": "cat", "description": "a cat", "bbox": [0.1, 0.2, 0.3, 0.4]}]}
    path = tmp_path / "plans.jsonl"
    path.write_text("\n".join([json.dumps(good), *BAD_LINES]) + "\n")
    expected = [(plan, reason) for _, plan, reason in read_plans(path)]
    assert [parse_plan_line(line) for line in [json.dumps(good), *BAD_LINES]] == expected
    assert isinstance(expected[0][0], ScenePlan) and all(plan is None for plan, _ in expected[1:])


def test_workers_write_what_one_process_writes(
    world: tuple[Bank, list[list[tuple[str, Box]]]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    from acp.score import plan_files

    bank, held_out = world
    bank.save(tmp_path / "bank")
    lines = []
    for k, objects in enumerate(held_out * 2):
        lines.append(json.dumps({
            "id": f"{k:06d}", "caption": "c", "planner": "heuristic",
            "objects": [{"id": i, "category": n, "description": n, "bbox": b}
                        for i, (n, b) in enumerate(objects)],
            "relations": [{"subject": 0, "predicate": "above", "object": 1}]}))
    lines.insert(7, "not a plan")
    (tmp_path / "plans.jsonl").write_text("\n".join(lines) + "\n")
    monkeypatch.setattr(plan_files, "BATCH", 8)  # several batches from a few plans
    outputs = []
    for workers in ("1", "3"):
        out = tmp_path / f"scored-{workers}.jsonl"
        run = CliRunner().invoke(app, ["score", "layouts", str(tmp_path / "plans.jsonl"), "--bank",
                                       str(tmp_path / "bank"), "-o", str(out), "--workers", workers])
        assert run.exit_code == 1 and "plans.jsonl:8: not a JSON object" in run.output
        outputs.append(out.read_bytes())
    assert outputs[0] == outputs[1] and outputs[0].count(b"\n") == len(held_out) * 2
    # ... and what scoring the plans one by one gives.
    records = [json.loads(line) for line in outputs[0].decode().splitlines()]
    scorer = LayoutScorer(Bank.load(tmp_path / "bank"))
    text, bad, count = score_chunk(scorer, [(1, lines[0])])
    assert json.loads(text) == records[0] and not bad and count == 1

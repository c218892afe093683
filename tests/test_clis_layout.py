"""CLIS-L, the paper's method (`--clis-l-method paper`): each term against hand-computed values,
back-offs, matching, vectorised == loop; v2 is in tests/test_clis_v2.py."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from acp.errors import MissingDependencyError
from acp.schema import ScenePlan
from acp.score.bank import Bank
from acp.score.layout import (
    LayoutScorer,
    penalty,
    sentence_transformer_embedder,
)
from tests.clis_oracle import loop_pair_score
from tests.test_bank import write_coco

Box = list[float]
S, O = [0.1, 0.1, 0.2, 0.2], [0.6, 0.1, 0.2, 0.2]  # noqa: E741  (subject left of object)
BELOW = [0.1, 0.6, 0.2, 0.2]  # under S


def paper_scorer(bank: Bank | None, **options: Any) -> LayoutScorer:
    return LayoutScorer(bank, method="paper", **options)


def bank_of(tmp_path: Path, images: list[list[tuple[str, Box]]], name: str = "refs.json") -> Bank:
    return Bank.from_coco([write_coco(tmp_path / name, images)])


def total(size: float, distance: float, direction: float) -> float:
    return 100 * min(1.0, max(0.0, (0.5 * size + 1.0 * distance + 0.8 * direction) / 2.3 / 100))


@pytest.mark.parametrize(
    ("value", "expected"), [(0.0, -1.0), (0.015, -0.485), (0.03, 0.03), (0.5, 0.5), (1.0, 1.0)]
)
def test_penalty_maps_below_threshold_onto_minus_one(value: float, expected: float) -> None:
    assert penalty(value) == pytest.approx(expected)


# Each row: plan subject/object boxes, the single reference's subject/object boxes, the predicate,
# and the expected size, distance and direction terms (x100; None: not checked).
WIDE, INNER = [0.2, 0.2, 0.4, 0.4], [0.3, 0.3, 0.2, 0.2]  # INNER is concentric with WIDE
# fmt: off
TERM_ROWS: list[tuple[str, Box, Box, Box, Box, str | None, float | None, float | None, float | None]] = [
    ("identical", S, O, S, O, None, 100, 100, 100),
    # The mirrored reference counts as the same layout when no side is named ...
    ("mirror, no predicate", S, O, O, S, None, 100, 100, 100),
    # ... and is mirrored onto the named side for left/right (the plan has S left of O).
    ("mirror, left of", S, O, O, S, "left of", 100, 100, 100),
    # cos = -1 -> (1 - 1) / 2 = 0 -> penalty -> -1: the plan contradicts its predicate.
    ("contradicts right of", S, O, S, O, "to the right of", 100, 100, -100),
    # Mirror symmetry is horizontal only: an upside-down reference is opposite.
    ("vertical flip", S, BELOW, BELOW, S, None, 100, 100, -100),
    # cos = 0 -> 0.5.
    ("perpendicular", S, O, S, BELOW, None, 100, 100, 50),
    # Area ratio 1 vs 2: sim 0.5. IoU 0 both: iou term 1 > 0.95, so w = 0.2 and
    # rel = (0.5 / 0.28284) / (|(0.5, -0.05)| / mean(0.28284, 0.22361)) = 1.76777 / 1.98438
    # = 0.89084 -> distance 0.2 + 0.8 * 0.89084 = 0.91267. Direction (1 + 0.99504) / 2 = 0.99752.
    ("size ratio halved", S, O, S, [0.6, 0.1, 0.2, 0.1], None, 50, 91.267, 99.752),
    # IoU 1/3 vs 1/7: sim 3/7; centre distance 0.2 vs 0.3 over the same diagonals: sim 2/3;
    # neither above 0.95 -> 0.5 * 3/7 + 0.5 * 2/3 = 0.54762.
    ("overlap", WIDE, [0.4, 0.2, 0.4, 0.4], WIDE, [0.5, 0.2, 0.4, 0.4], None, 100, 54.762, 100),
    # The published code scores this 100 (its distance term is IoU only, 0 vs 0 -> 1). Ours:
    # centre distance 0.3 vs 0.7 over equal diagonals: sim 3/7 -> 0.2 * 1 + 0.8 * 3/7 = 0.54286.
    ("disjoint, farther apart", [0, 0, 0.2, 0.2], [0.3, 0, 0.2, 0.2], [0, 0, 0.2, 0.2], [0.7, 0, 0.2, 0.2],
     None, 100, 54.286, 100),
    ("concentric both", WIDE, INNER, WIDE, INNER, None, 100, 100, 100),
    ("concentric plan only", WIDE, INNER, WIDE, [0.5, 0.3, 0.2, 0.2], None, None, None, 0),
]
# fmt: on


@pytest.mark.parametrize("swap_categories", [False, True], ids=["cat-dog", "dog-cat"])
@pytest.mark.parametrize(
    ("name", "plan_s", "plan_o", "ref_s", "ref_o", "predicate", "size", "distance", "direction"),
    TERM_ROWS,
    ids=[row[0] for row in TERM_ROWS],
)
def test_each_term_matches_the_hand_computed_value(
    tmp_path: Path,
    swap_categories: bool,
    name: str,
    plan_s: Box,
    plan_o: Box,
    ref_s: Box,
    ref_o: Box,
    predicate: str | None,
    size: float | None,
    distance: float | None,
    direction: float | None,
) -> None:
    subject, obj = ("dog", "cat") if swap_categories else ("cat", "dog")
    bank = bank_of(tmp_path, [[(subject, ref_s), (obj, ref_o)]])
    relations = [(0, 1, predicate)] if predicate else []
    result = paper_scorer(bank).score_layout([subject, obj], [plan_s, plan_o], relations=relations)
    (pair,) = result.pairs
    assert pair.method == "pairs" and pair.references == 1
    for term, expected in (("size", size), ("distance", distance), ("direction", direction)):
        if expected is not None:
            assert pair.terms[term] == pytest.approx(expected, abs=1e-3), term
    terms = pair.terms
    assert pair.score == pytest.approx(total(terms["size"], terms["distance"], terms["direction"]))
    assert result.score == pytest.approx(pair.score)


def test_score_is_the_published_high_percentile_of_the_references(tmp_path: Path) -> None:
    perfect, perpendicular = [("cat", S), ("dog", O)], [("cat", S), ("dog", BELOW)]
    # (0.5 * 1 + 1.0 * 1 + 0.8 * 0.5) / 2.3 = 0.82609 for a perpendicular reference.
    bank = bank_of(tmp_path, [perfect] * 2 + [perpendicular] * 98)
    scorer = paper_scorer(bank)
    assert scorer.score_layout(["cat", "dog"], [S, O]).score == pytest.approx(82.609, abs=1e-3)  # 3rd best
    assert paper_scorer(bank, percentile=99).score_layout(["cat", "dog"], [S, O]).score == pytest.approx(100)
    few = bank_of(tmp_path, [perfect] + [perpendicular] * 48, name="few.json")
    assert paper_scorer(few).score_layout(["cat", "dog"], [S, O]).score == pytest.approx(100)  # 49 // 50 = 0


def test_same_category_references_are_read_both_ways(tmp_path: Path) -> None:
    small, big = [0.1, 0.1, 0.1, 0.1], [0.5, 0.1, 0.4, 0.4]
    bank = bank_of(tmp_path, [[("dog", small), ("dog", big)]])
    scorer = paper_scorer(bank)
    mirrored_small, mirrored_big = [0.8, 0.1, 0.1, 0.1], [0.1, 0.1, 0.4, 0.4]
    for boxes in ([small, big], [big, small], [mirrored_small, mirrored_big], [mirrored_big, mirrored_small]):
        assert scorer.score_layout(["dog", "dog"], boxes).score == pytest.approx(100, abs=1e-3)
    # The big dog under the small one instead: direction (1 + 0.263) / 2 -> total 0.872.
    upright = scorer.score_layout(["dog", "dog"], [[0.3, 0.1, 0.1, 0.1], [0.15, 0.52, 0.4, 0.4]])
    assert upright.score == pytest.approx(87.2, abs=0.1)


@pytest.mark.parametrize(
    "bad_box",
    [
        [0.1, 0.1, 0.0, 0.3],
        [0.1, 0.1, 0.3, 0.0],
        [0.1, 0.1, -0.2, 0.3],
        [float("nan"), 0.1, 0.2, 0.2],
        [0.1, 0.1, float("inf"), 0.2],
    ],
)
@pytest.mark.parametrize("with_bank", [True, False])
def test_degenerate_boxes_score_zero_without_raising(tmp_path: Path, bad_box: Box, with_bank: bool) -> None:
    bank = bank_of(tmp_path, [[("cat", S), ("dog", O)]]) if with_bank else None
    scorer = paper_scorer(bank)
    result = scorer.score_layout(["cat", "dog"], [S, bad_box])
    assert result.score == 0 and result.pairs[0].method == "degenerate" and not result.reference_free
    assert scorer.score_layout(["cat"], [bad_box]).score == 0
    # One broken box among three pulls the plan down through its two pairs (confidence 1 each).
    three = scorer.score_layout(["cat", "dog", "dog"], [S, O, bad_box])
    good = next(p for p in three.pairs if p.method != "degenerate")
    assert three.score == pytest.approx(good.score * good.confidence / (good.confidence + 2))


def test_a_plan_record_with_a_zero_area_box_scores_low(tmp_path: Path) -> None:
    plan = ScenePlan.model_validate(
        {
            "id": "p1",
            "caption": "a cat next to a dog",
            "planner": "heuristic",
            "concepts": ["cat", "dog"],
            "objects": [
                {"id": 0, "category": "cat", "description": "a cat", "bbox": S},
                {"id": 1, "category": "dog", "description": "a dog", "bbox": O},
            ],
        }
    )
    scorer = paper_scorer(bank_of(tmp_path, [[("cat", S), ("dog", O)]]))
    assert scorer.score(plan).score == pytest.approx(100, abs=1e-3)
    broken = plan.model_copy(deep=True)
    broken.objects[1].bbox = (0.6, 0.1, 0.0, 0.2)  # bypasses validation, as a hand-edited record might
    assert scorer.score(broken).score == 0


def test_relations_choose_the_subject_and_the_predicate(tmp_path: Path) -> None:
    scorer = paper_scorer(bank_of(tmp_path, [[("cat", S), ("dog", O)]]))
    result = scorer.score_layout(["cat", "dog"], [S, O], relations=[(11, 10, "right of")], ids=[10, 11])
    (pair,) = result.pairs
    assert (pair.subject, pair.object, pair.predicate) == (11, 10, "right of")
    assert pair.terms["direction"] == pytest.approx(100)  # dog is right of cat, as drawn
    wrong = scorer.score_layout(["cat", "dog"], [S, O], relations=[(11, 10, "left of")], ids=[10, 11])
    assert wrong.pairs[0].terms["direction"] == pytest.approx(-100)


def test_plan_score_is_the_confidence_weighted_mean_of_pairs(tmp_path: Path) -> None:
    person = [0.3, 0.5, 0.2, 0.4]
    images = [[("cat", S), ("dog", O)]] * 10 + [[("cat", S), ("person", person)]] * 40
    bank = bank_of(tmp_path, images)
    result = paper_scorer(bank).score_layout(["cat", "dog", "person"], [S, [0.5, 0.3, 0.3, 0.2], person])
    by_categories = {p.categories: p for p in result.pairs}
    assert by_categories[("cat", "dog")].confidence == pytest.approx(10 / 20)
    assert by_categories[("cat", "person")].confidence == pytest.approx(1.0)
    dog_person = by_categories[("dog", "person")]
    # No dog-person reference: each object against its priors (dog 10 boxes, person 40).
    assert dog_person.method == "priors"
    assert dog_person.confidence == pytest.approx(0.5 * (10 / 20 + 1.0) / 2)
    weights = np.array([p.confidence for p in result.pairs])
    scores = np.array([p.score for p in result.pairs])
    assert result.score == pytest.approx(float(weights @ scores / weights.sum()))
    assert result.method == "pairs" and not result.reference_free


def test_priors_back_off_for_unknown_pairs_and_lone_objects(tmp_path: Path) -> None:
    bank = bank_of(tmp_path, [[("cat", [0.1, 0.1, 0.2, 0.2])]])
    scorer = paper_scorer(bank)
    # size sim 0.04 / 0.08 = 0.5, aspect 0.5 / 1 = 0.5, centres 0.1 apart -> position 0.8:
    # (0.5 + 0.5 + 0.8) / 3 = 0.6.
    lone = scorer.score_layout(["cat"], [[0.1, 0.1, 0.2, 0.4]])
    assert lone.method == "priors" and lone.score == pytest.approx(60, abs=1e-3)
    pair = scorer.score_layout(["cat", "unicorn"], [[0.1, 0.1, 0.2, 0.4], [0.5, 0.5, 0.3, 0.3]])
    assert pair.pairs[0].method == "priors" and pair.score == pytest.approx(60, abs=1e-3)
    assert pair.pairs[0].confidence == pytest.approx(0.5 * (1 / 20) / 2)
    unknown = scorer.score_layout(["unicorn", "dragon"], [[0.1, 0.1, 0.4, 0.4], [0.1, 0.1, 0.4, 0.3]])
    assert unknown.method == "sanity" and unknown.reference_free
    assert unknown.pairs[0].confidence == pytest.approx(0.1)


@pytest.mark.parametrize(
    ("boxes", "expected"),
    [
        # IoU 0.12 / 0.16 = 0.75 -> overlap 1 - 0.25 / 0.5 = 0.5; both sizes plausible.
        ([[0.1, 0.1, 0.4, 0.4], [0.1, 0.1, 0.4, 0.3]], 50),
        ([[0.1, 0.1, 0.2, 0.2], [0.5, 0.5, 0.2, 0.2]], 100),
        ([[0.5, 0.5, math.sqrt(0.001), math.sqrt(0.001)]], 40),  # area 0.001 / 0.0025
        ([[0.8, 0.1, 0.4, 0.4]], 50),  # half outside the frame
        ([[0.0, 0.0, 1.0, 0.9]], 50),  # area 0.9: (1 - 0.9) / 0.2
    ],
)
def test_reference_free_sanity_score_without_a_bank(boxes: list[Box], expected: float) -> None:
    result = LayoutScorer(None).score_layout(["cat", "dog"][: len(boxes)], boxes)
    assert result.method == "sanity" and result.reference_free
    assert result.score == pytest.approx(expected, abs=1e-6)


def test_names_match_exactly_then_through_synonyms_then_embeddings(tmp_path: Path) -> None:
    bank = bank_of(tmp_path, [[("cat", S), ("dog", O)]] * 20)
    vectors = {"cat": [1, 0, 0], "dog": [0, 1, 0], "feline": [0.8, 0, 0.6], "spoon": [0, 0, 1]}

    def embed(texts: list[str]) -> Any:
        return np.array([vectors[t] for t in texts])

    scorer = paper_scorer(bank, embedder=embed)
    assert (scorer.match("Cats").how, scorer.match("Cats").weight) == ("exact", 1.0)
    assert (scorer.match("kitty").how, scorer.match("kitty").weight) == ("synonym", 0.9)
    feline = scorer.match("feline")
    assert feline.how == "embedding" and feline.weight == pytest.approx(0.8)
    assert scorer.match("spoon").category is None  # cosine 0 < 0.6
    result = scorer.score_layout(["feline", "puppy"], [S, O])
    assert result.pairs[0].matched == ("cat", "dog")
    assert result.pairs[0].match == ("embedding", "synonym")
    assert result.pairs[0].confidence == pytest.approx(0.8 * 0.9)
    assert paper_scorer(bank).match("feline").category is None


def test_embed_model_without_sentence_transformers_is_a_clear_error() -> None:
    pytest.importorskip("numpy")
    try:
        import sentence_transformers  # noqa: F401
    except ImportError:
        with pytest.raises(MissingDependencyError, match="pip install sentence-transformers"):
            sentence_transformer_embedder("all-MiniLM-L6-v2")
    else:
        pytest.skip("sentence-transformers is installed")


def test_vectorised_scores_equal_the_per_reference_loop(tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    names = ["cat", "dog", "person"]

    def random_box() -> Box:
        w, h = rng.uniform(0.05, 0.6, 2)
        return [float(rng.uniform(0, 1 - w)), float(rng.uniform(0, 1 - h)), float(w), float(h)]

    images = [[(str(rng.choice(names)), random_box()) for _ in range(rng.integers(2, 6))] for _ in range(150)]
    bank = bank_of(tmp_path, images)
    scorer = paper_scorer(bank)
    predicates = ["left of", "to the right of", "above"]
    checked = 0
    for _ in range(40):
        count = int(rng.integers(2, 5))  # 1 to 6 pairs, scored together
        categories = [str(c) for c in rng.choice(names, count)]
        boxes = [random_box() for _ in range(count)]
        if rng.random() < 0.2:  # concentric subject and object
            boxes[1] = [
                boxes[0][0] + boxes[0][2] / 4,
                boxes[0][1] + boxes[0][3] / 4,
                boxes[0][2] / 2,
                boxes[0][3] / 2,
            ]
        relations = [(1, 0, str(rng.choice(predicates)))] if rng.random() < 0.7 else []
        for pair in scorer.score_layout(categories, boxes, relations=relations).pairs:
            assert pair.method == "pairs" and pair.object is not None
            a, b = (bank.category_by_key(categories[k]) for k in (pair.subject, pair.object))
            assert a is not None and b is not None
            rows = bank.pair_rows(min(a, b), max(a, b))
            first, second = bank.boxes[bank.pair_a[rows]].tolist(), bank.boxes[bank.pair_b[rows]].tolist()
            references = list(zip(*((first, second) if a <= b else (second, first)), strict=True))
            sign = {"left of": 1, "to the right of": -1}.get(pair.predicate or "", 0)
            subject, obj = boxes[pair.subject], boxes[pair.object]
            expected = loop_pair_score(subject, obj, references, sign=sign, same_category=a == b)
            assert pair.score == pytest.approx(expected, abs=1e-3)
            checked += 1
    assert checked > 100


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.lists(
        st.lists(st.floats(allow_nan=True, allow_infinity=True, width=32), min_size=4, max_size=4),
        min_size=1,
        max_size=4,
    )
)
def test_any_numbers_give_a_finite_score_in_range(boxes: list[Box]) -> None:
    for bank in (_RANDOM_BANK, None):
        result = paper_scorer(bank).score_layout(["cat", "dog", "cat", "bird"][: len(boxes)], boxes)
        assert 0.0 <= result.score <= 100.0


def _random_bank() -> Bank:
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        images = [[("cat", [0.1, 0.1, 0.3, 0.2]), ("dog", [0.4, 0.3, 0.2, 0.5])]]
        images.append([("cat", [0.5, 0.5, 0.1, 0.1])])
        return bank_of(Path(folder), images)


_RANDOM_BANK = _random_bank()

"""Label fidelity (acp.score.fidelity): acp's AP and AP50, per set and per category, equal one
pycocotools COCOeval over the whole set, built here by hand."""

from __future__ import annotations

import contextlib
import io
from typing import Any

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from acp.score.fidelity import Fidelity

Label = tuple[str, list[float], bool]
Found = tuple[str, float, list[float]]

# Per image: labels (category, xywh, crowd) and detections (category, score, xywh).
HAND_BUILT: list[tuple[list[Label], list[Found]]] = [
    # A dog found well, a cat found loosely, a false dog, a duplicate cat.
    ([("dog", [10, 10, 40, 40], False), ("cat", [60, 60, 30, 30], False)],
     [("dog", 0.9, [11, 10, 40, 41]), ("cat", 0.8, [64, 62, 30, 30]), ("dog", 0.7, [70, 0, 20, 20]),
      ("cat", 0.3, [60, 60, 29, 30])]),
    # A dog missed, a detection on a crowd region (neither right nor wrong).
    ([("dog", [0, 0, 20, 20], False), ("dog", [50, 50, 40, 40], True)], [("dog", 0.6, [52, 52, 30, 30])]),
    # Only a detection: a false cat.
    ([], [("cat", 0.95, [5, 5, 10, 10])]),
    # Only labels, found by nothing.
    ([("cat", [30, 30, 20, 20], False)], []),
    # A category with detections and no label: no AP, and no part of the mean.
    ([("dog", [20, 20, 30, 30], False)], [("dog", 0.5, [20, 20, 30, 28]), ("bus", 0.9, [0, 0, 50, 50])]),
]


def cocoeval(images: list[tuple[list[Label], list[Found]]]) -> tuple[COCOeval, list[str]]:
    names = sorted({c for labels, found in images for c, *_ in [*labels, *found]})
    ids = {name: k + 1 for k, name in enumerate(names)}
    annotations, results = [], []
    for image, (labels, found) in enumerate(images, start=1):
        for category, box, crowd in labels:
            annotations.append({"id": len(annotations) + 1, "image_id": image, "category_id": ids[category],
                                "bbox": box, "area": box[2] * box[3], "iscrowd": int(crowd)})
        for category, score, box in found:
            results.append({"image_id": image, "category_id": ids[category], "bbox": box, "score": score})
    gt = COCO()
    gt.dataset = {"images": [{"id": k + 1} for k in range(len(images))],
                  "categories": [{"id": ids[n], "name": n} for n in names], "annotations": annotations}
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
        evaluation = COCOeval(gt, gt.loadRes(results), iouType="bbox")
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    return evaluation, names


def category_ap(evaluation: COCOeval, k: int, iou: slice = slice(None)) -> float | None:
    """COCOeval's precision of category ``k`` (area all, 100 detections), as summarize means it."""
    table = evaluation.eval["precision"][iou, :, k, 0, 2]
    valid = table[table > -1]
    return float(valid.mean()) if valid.size else None


def acp_fidelity(images: list[tuple[list[Label], list[Found]]], pieces: bool = False) -> Any:
    fidelity = Fidelity()
    for labels, found in images:
        if pieces:  # an image's labels and detections given apart, as `score dataset` may
            image = fidelity.add(labels, [])
            fidelity.add([], found, image=image)
        else:
            fidelity.add(labels, found)
    return fidelity.result()


def check_equal(images: list[tuple[list[Label], list[Found]]], pieces: bool = False) -> None:
    evaluation, names = cocoeval(images)
    result = acp_fidelity(images, pieces)
    assert result.ap == pytest.approx(evaluation.stats[0], abs=1e-9)
    assert result.ap50 == pytest.approx(evaluation.stats[1], abs=1e-9)
    by_name = {c.name: c for c in result.categories}
    assert set(by_name) == set(names)
    for k, name in enumerate(names):
        expected, expected50 = category_ap(evaluation, k), category_ap(evaluation, k, slice(0, 1))
        if expected is None:
            assert by_name[name].ap is None and by_name[name].ap50 is None
        else:
            assert by_name[name].ap == pytest.approx(expected, abs=1e-9), name
            assert by_name[name].ap50 == pytest.approx(expected50, abs=1e-9), name


@pytest.mark.parametrize("pieces", [False, True])
def test_the_hand_built_case_equals_cocoeval(pieces: bool) -> None:
    check_equal(HAND_BUILT, pieces)
    result = acp_fidelity(HAND_BUILT)
    by_name = {c.name: c for c in result.categories}
    assert 0 < result.ap < result.ap50 < 1  # neither figure is trivial here
    assert by_name["bus"].ap is None and by_name["bus"].detections == 1
    assert (by_name["dog"].labels, by_name["dog"].detections) == (3, 4)  # the crowd box is no label


def test_random_sets_equal_cocoeval() -> None:
    rng = np.random.default_rng(0)
    names = ["dog", "cat", "bus", "hot dog"]
    for _ in range(3):
        images = []
        for _ in range(25):
            labels = [(str(rng.choice(names)), [*(rng.uniform(0, 60, 2)), *(rng.uniform(4, 40, 2))],
                       bool(rng.random() < 0.1)) for _ in range(rng.integers(0, 5))]
            found = [(c, float(rng.uniform(0.05, 1.0)), [b[0] + rng.normal(0, 4), b[1] + rng.normal(0, 4),
                                                          b[2] * rng.uniform(0.7, 1.3), b[3]])
                     for c, b, _ in labels if rng.random() < 0.7]
            found += [(str(rng.choice(names)), float(rng.uniform(0.05, 1.0)),
                       [*(rng.uniform(0, 60, 2)), *(rng.uniform(4, 40, 2))])
                      for _ in range(rng.integers(0, 3))]
            images.append(([(c, [float(v) for v in b], k) for c, b, k in labels],
                           [(c, s, [float(v) for v in b]) for c, s, b in found]))
        check_equal(images)


def test_nothing_to_measure() -> None:
    assert Fidelity().result().ap is None
    result = acp_fidelity([([], [("dog", 0.9, [0, 0, 10, 10])])])
    assert result.ap is None and result.ap50 is None
    perfect = acp_fidelity([([("dog", [0, 0, 10, 10], False)], [("dog", 0.9, [0, 0, 10, 10])])])
    assert perfect.ap == pytest.approx(1.0) and perfect.ap50 == pytest.approx(1.0)

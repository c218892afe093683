"""Label fidelity: COCO AP and AP50 of a detector's detections against a set's labels, computed
with pycocotools' ``COCOeval`` (the "YOLO score" layout-to-image papers report, here per set
and per category).

``COCOeval`` over a whole set evaluates every (image, category) pair, the empty ones included:
a dict entry and a call each, 80 million for 1M images of 80 categories, and that cost grows
with images x categories, not with the boxes. ``Fidelity`` runs ``COCOeval`` once per category
over the images that have a label or a detection of it, which gives that category's precision
table exactly (``COCOeval`` evaluates each pair on its own, and an image without either is
skipped), and pools the tables as ``COCOeval.summarize`` does: AP is the mean of every
precision entry over the 10 IoU thresholds, 101 recall points and the categories with a label
(area "all", 100 detections per image), AP50 the same at IoU 0.5. So the work and the memory
grow with the labels and detections, and ``tests/test_fidelity.py`` checks the numbers against
one ``COCOeval`` over the whole set.

Labels and detections are held as columns of numbers (about 50 bytes a box) until ``result``.
Crowd labels (``iscrowd: 1``) are ignore regions, as in COCO: a detection on one is neither
right nor wrong.
"""

from __future__ import annotations

import contextlib
import io
from array import array
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

MAX_DETECTIONS = 100  # per image and category, COCO's maxDets


@dataclass(frozen=True)
class CategoryFidelity:
    name: str
    ap: float | None  # None: no label of the category (COCOeval leaves it out)
    ap50: float | None
    labels: int
    detections: int


@dataclass(frozen=True)
class FidelityResult:
    ap: float | None
    ap50: float | None
    categories: tuple[CategoryFidelity, ...]

    def record(self) -> dict[str, Any]:
        def rounded(value: float | None) -> float | None:
            return round(value, 4) if value is not None else None

        return {"ap": rounded(self.ap), "ap50": rounded(self.ap50), "categories": [
            {"category": c.name, "ap": rounded(c.ap), "ap50": rounded(c.ap50), "labels": c.labels,
             "detections": c.detections} for c in self.categories]}


@dataclass
class Fidelity:
    """Labels and detections, image by image (``add``), then AP (``result``)."""

    names: list[str] = field(default_factory=list)
    _index: dict[str, int] = field(default_factory=dict)
    _labels: dict[str, array[Any]] = field(default_factory=lambda: _columns("qqddddb"))
    _detections: dict[str, array[Any]] = field(default_factory=lambda: _columns("qqddddd"))
    images: int = 0

    def category(self, name: str) -> int:
        if name not in self._index:
            self._index[name] = len(self.names)
            self.names.append(name)
        return self._index[name]

    def add(self, labels: Sequence[tuple[str, Sequence[float], bool]],
            detections: Sequence[tuple[str, float, Sequence[float]]], image: int | None = None) -> int:
        """An image's labels ``(category, [x, y, w, h], crowd)`` and detections ``(category,
        score, [x, y, w, h])``; ``image``: add to that image (its number, as returned before),
        else to a new one. Returns the image's number."""
        if image is None:
            image = self.images
        self.images = max(self.images, image + 1)
        for name, box, crowd in labels:
            _append(self._labels, (image, self.category(name), *map(float, box), int(bool(crowd))))
        for name, score, box in detections:
            _append(self._detections, (image, self.category(name), *map(float, box), float(score)))
        return image

    def result(self) -> FidelityResult:
        labels = {k: np.frombuffer(v, dtype=v.typecode) for k, v in self._labels.items()}
        found = {k: np.frombuffer(v, dtype=v.typecode) for k, v in self._detections.items()}
        tables = []
        rows = []
        for k, name in enumerate(self.names):
            mine = labels["c"] == k
            theirs = found["c"] == k
            table = _precision(_rows(labels, mine), _rows(found, theirs))
            tables.append(table)
            rows.append(CategoryFidelity(name, _mean(table), _mean(table[:1]),
                                         int(np.count_nonzero(mine & (labels["6"] == 0))),
                                         int(np.count_nonzero(theirs))))
        if not tables:
            return FidelityResult(None, None, ())
        stacked = np.stack(tables, axis=-1)  # [IoU, recall, category], as COCOeval's precision
        return FidelityResult(_mean(stacked), _mean(stacked[:1]), tuple(rows))


def _columns(types: str) -> dict[str, array[Any]]:
    names = ["i", "c", "x", "y", "w", "h", "6"]  # image, category, box, crowd (labels) or score
    return {name: array(code) for name, code in zip(names, types, strict=True)}


def _append(columns: dict[str, array[Any]], values: tuple[Any, ...]) -> None:
    for column, value in zip(columns.values(), values, strict=True):
        column.append(value)


def _rows(columns: dict[str, np.ndarray], mask: np.ndarray) -> dict[str, np.ndarray]:
    return {k: v[mask] for k, v in columns.items()}


def _mean(table: np.ndarray) -> float | None:
    """COCOeval.summarize's mean: over the entries that are not -1 (no label)."""
    valid = table[table > -1]
    return float(np.mean(valid)) if valid.size else None


def _precision(labels: dict[str, np.ndarray], detections: dict[str, np.ndarray]) -> np.ndarray:
    """COCOeval's precision table ``[IoU threshold, recall point]`` of one category over the
    images with a label or a detection of it (-1 everywhere when it has no label)."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    images = sorted(set(labels["i"].tolist()) | set(detections["i"].tolist()))
    gt = COCO()
    gt.dataset = {
        "images": [{"id": int(i)} for i in images],
        "categories": [{"id": 1}],
        "annotations": [
            {"id": n + 1, "image_id": int(i), "category_id": 1,
             "bbox": [float(x), float(y), float(w), float(h)], "area": float(w * h), "iscrowd": int(c)}
            for n, (i, x, y, w, h, c) in enumerate(zip(labels["i"], labels["x"], labels["y"], labels["w"],
                                                       labels["h"], labels["6"], strict=True))],
    }
    results = [{"image_id": int(i), "category_id": 1, "bbox": [float(x), float(y), float(w), float(h)],
                "score": float(s)}
               for i, x, y, w, h, s in zip(detections["i"], detections["x"], detections["y"], detections["w"],
                                           detections["h"], detections["6"], strict=True)]
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
        gt.createIndex()
        dt = gt.loadRes(results) if results else COCO()
        if not results:
            dt.dataset = {"images": gt.dataset["images"], "categories": [{"id": 1}], "annotations": []}
            dt.createIndex()
        evaluator = COCOeval(gt, dt, iouType="bbox")
        evaluator.params.imgIds = images
        evaluator.params.catIds = [1]
        evaluator.params.areaRng = [[0, 1e10]]  # "all": the only range the figures use
        evaluator.params.areaRngLbl = ["all"]
        evaluator.params.maxDets = [MAX_DETECTIONS]
        evaluator.evaluate()
        evaluator.accumulate()
    return np.asarray(evaluator.eval["precision"][:, :, 0, 0, 0], dtype=np.float64)

"""CLIS-L v3: a layout's log-likelihood ratio, real against perturbed, learned from the bank alone.

v2 summed its terms with weights tuned on five named corruptions, and did not generalise to
others. v3 keeps the terms (``acp.score.density``; densities with a Student kernel, see
``acp.score.kernel``) and reads a layout by nine statistics of them, each a log-likelihood in
its own right (0: as typical as the bank's own references):

- ``objects`` and ``weakest_object``: the mean and the smallest of the objects' terms (each
  box's size, aspect and place under its category);
- ``pairs`` and ``weakest_pair``: likewise of the scored pairs' relative geometry;
- ``relations`` and ``weakest_relation``: of the stated relations, ``log F(r)``, ``r`` the
  relation's margin (``density.relation_margins``) and ``F`` its CDF over the relations that the
  bank's real pairs show (their main offset's side): how rare so narrow a margin is;
- ``assignments`` and ``weakest_assignment``: ``log P(this labelling | the boxes)`` of each
  pair, against its two categories exchanged;
- ``weakest_element``: the smallest over objects of its own term plus every pair term and
  relation term it takes part in (how likely that object is, given the others).

They are combined by ``logit = w . statistics``: a logistic regression of real layouts against
perturbed ones, fitted when the bank is built, on the bank's own layouts (real sub-layouts of its
images, each scored leaving its image out) and a broad generic family of perturbations of them
(``FAMILIES``: every degree of freedom of a box and of a pair, both ways, strengths drawn at
random; ``perturb``). The classifier estimates the log-ratio of the two densities, so no weight
is chosen by hand nor against a named corruption, and weights are non-negative: a term never
counts for a layout by being implausible. ``bench/bench_clis_quality.py`` checks it on
perturbations it never saw, and with each family left out of the fit in turn.

The 0-100 score is then v2's: the empirical CDF of the logit over real sub-layouts per object
count and kind (``density.Calibration``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from acp.score import density
from acp.score.density import (
    CDF_BUCKETS,
    STUDENT,
    Calibration,
    Float64Array,
    Int64Array,
    LayoutBatch,
    LayoutModel,
    LayoutRows,
    calibration_layouts,
    dominant_axis,
    log_sigmoid,
    make_batch,
    pair_features,
    relation_margins,
)

FEATURES = (
    "objects", "weakest_object", "pairs", "weakest_pair", "relations", "weakest_relation",
    "assignments", "weakest_assignment", "weakest_element",
)
FAMILIES = ("random", "position", "size", "shape", "side", "distance", "direction", "pair size", "identity",
            "layout")
PAIR_FAMILIES = {"distance", "direction", "pair size", "identity"}  # need two objects
TERM_BOUND = 50.0  # log units: a term past this is as implausible as can be (keeps the fit finite)
RIDGE = 1e-3  # L2 penalty of the fit, per sample, on standardised statistics


@dataclass(frozen=True)
class Statistics:
    """Per layout its ``FEATURES`` (rows of ``layouts``); per scored pair the same read as a
    two-object layout of its own (rows of ``pairs``); and the terms the detail reports."""

    layouts: Float64Array
    pairs: Float64Array
    object_terms: Float64Array
    pair_terms: Float64Array
    pair_relation: Float64Array
    pair_assignment: Float64Array


@dataclass(frozen=True)
class _Terms:
    own: Float64Array
    pair: Float64Array
    assignment: Float64Array
    relation: Float64Array
    relation_pair: Int64Array  # the scored pair each stated relation links


def _terms(
    model: LayoutModel, batch: LayoutBatch,
    object_images: list[Int64Array] | None = None, pair_images: list[Int64Array] | None = None,
) -> _Terms:
    m, p = batch.category.size, batch.pair_i.size
    cat, boxes, i, j, image = batch.category, batch.boxes, batch.pair_i, batch.pair_j, batch.image
    # Each box as its own category, then as the other category of each of its pairs.
    rows = np.concatenate([np.arange(m), i, j])
    obj = model.object_terms(np.concatenate([cat, cat[j], cat[i]]), boxes[rows],
                             image[rows] if image is not None else None, object_images)
    own, swapped_i, swapped_j = obj[:m], obj[m:m + p], obj[m + p:]
    x = pair_features(np.concatenate([boxes[i], boxes[j]]), np.concatenate([boxes[j], boxes[i]]))
    both = model.pair_terms(np.concatenate([cat[i], cat[i]]), np.concatenate([cat[j], cat[j]]), x,
                            np.concatenate([image[i], image[i]]) if image is not None else None, pair_images)
    pair, pair_swapped = both[:p], both[p:]
    with np.errstate(invalid="ignore"):
        assignment = np.where(cat[i] == cat[j], math.log(0.5),
                              log_sigmoid((own[i] + own[j] + pair) - (swapped_i + swapped_j + pair_swapped)))
    assignment = np.where(np.isnan(assignment), math.log(0.5), assignment)
    margin = relation_margins(boxes[batch.rel_i], boxes[batch.rel_j], batch.rel_axis)
    if model.margins.size:
        share = Calibration(np.array([0, model.margins.size]), model.margins).score(
            margin, np.zeros(margin.size, dtype=np.int64)) / 100
        with np.errstate(divide="ignore"):
            relation = np.log(share)
    else:  # a bank without pairs: the v2 term
        relation = log_sigmoid(density.RELATION_SHARPNESS * margin)
    # Related pairs are always scored, and pairs are sorted by (first row, second row).
    width = max(m, 1)
    keys = i * width + j
    wanted = np.minimum(batch.rel_i, batch.rel_j) * width + np.maximum(batch.rel_i, batch.rel_j)
    relation_pair = np.minimum(np.searchsorted(keys, wanted), max(p - 1, 0)).astype(np.int64)
    bound = TERM_BOUND
    return _Terms(np.clip(own, -bound, bound), np.clip(pair, -bound, bound), assignment,
                  np.clip(relation, -bound, 0.0), relation_pair)


def _statistics(batch: LayoutBatch, terms: _Terms, relations: bool = True) -> Statistics:
    """The ``FEATURES`` of each layout and pair (``relations=False``: as if none was stated)."""
    n, m, p = batch.layouts, batch.category.size, batch.pair_i.size
    i, j = batch.pair_i, batch.pair_j
    relation = terms.relation if relations else np.zeros(0)
    relation_pair = terms.relation_pair if relations else np.zeros(0, dtype=np.int64)
    relation_layout = batch.layout[batch.rel_i] if relations else np.zeros(0, dtype=np.int64)
    pair_layout = batch.layout[i]

    def mean(values: Float64Array, where: Int64Array) -> Float64Array:
        return np.bincount(where, values, minlength=n) / np.maximum(np.bincount(where, minlength=n), 1)

    def weakest(values: Float64Array, where: Int64Array) -> Float64Array:
        low = np.full(n, np.inf)
        np.minimum.at(low, where, values)
        return np.where(np.isfinite(low), low, 0.0)

    pair_relation = np.bincount(relation_pair, relation, minlength=p).astype(np.float64) if p else np.zeros(0)
    linked = terms.pair + pair_relation
    element = terms.own + np.bincount(i, linked, minlength=m) + np.bincount(j, linked, minlength=m)
    layouts = np.stack([
        mean(terms.own, batch.layout), weakest(terms.own, batch.layout),
        mean(terms.pair, pair_layout), weakest(terms.pair, pair_layout),
        mean(relation, relation_layout), weakest(relation, relation_layout),
        mean(terms.assignment, pair_layout), weakest(terms.assignment, pair_layout),
        weakest(element, batch.layout),
    ], axis=1)
    own_i, own_j = terms.own[i], terms.own[j]
    low = np.minimum(own_i, own_j)
    pairs = np.stack([
        (own_i + own_j) / 2, low, terms.pair, terms.pair, pair_relation, pair_relation,
        terms.assignment, terms.assignment, low + linked,
    ], axis=1) if p else np.zeros((0, len(FEATURES)))
    return Statistics(layouts, pairs, terms.own, terms.pair, pair_relation, terms.assignment)


def logit(features: Float64Array, weights: Float64Array) -> Float64Array:
    """``features @ weights`` row by row, one column after another: unlike a BLAS product, a
    row's value does not depend on how many rows the batch has."""
    total = np.zeros(features.shape[0])
    for column, weight in enumerate(weights.tolist()):
        total += features[:, column] * weight
    return total


def statistics(model: LayoutModel, batch: LayoutBatch) -> Statistics:
    """Every statistic of every layout of ``batch`` (and of its pairs), one pass per density."""
    return _statistics(batch, _terms(model, batch))


# -- the generic perturbations the weights are fitted against -----------------------------------


def _clipped(b: Float64Array) -> Float64Array:
    w, h = np.clip(b[2], 1e-3, 1.0), np.clip(b[3], 1e-3, 1.0)
    return np.array([np.clip(b[0], 0.0, 1.0 - w), np.clip(b[1], 0.0, 1.0 - h), w, h])


def _at(
    b: Float64Array, cx: float, cy: float, w: float | None = None, h: float | None = None
) -> Float64Array:
    w = b[2] if w is None else w
    h = b[3] if h is None else h
    return _clipped(np.array([cx - w / 2, cy - h / 2, w, h]))


def _sign(rng: np.random.Generator) -> float:
    return 1.0 if rng.uniform() < 0.5 else -1.0


def perturb(boxes: Float64Array, family: str, rng: np.random.Generator) -> Float64Array | None:
    """A copy of ``boxes`` (n, 4) perturbed by a random member of ``family``, at a random
    strength and direction; None where the family needs more objects than there are."""
    n = boxes.shape[0]
    if n < 2 and family in PAIR_FAMILIES:
        return None
    out = boxes.copy()
    k = int(rng.integers(n))
    c = out[:, :2] + out[:, 2:] / 2
    if family == "random":
        for r in range(n) if rng.uniform() < 0.5 else [k]:
            w, h = rng.uniform(0.02, 1.0, 2)
            out[r] = [rng.uniform(0, 1 - w), rng.uniform(0, 1 - h), w, h]
    elif family == "position":
        angle, length = rng.uniform(0, 2 * math.pi), rng.uniform(0.15, 0.6)
        out[k] = _at(out[k], c[k, 0] + length * math.cos(angle), c[k, 1] + length * math.sin(angle))
    elif family == "size":
        f = math.exp(_sign(rng) * rng.uniform(math.log(1.6), math.log(7.0)))
        out[k] = _at(out[k], c[k, 0], c[k, 1], out[k, 2] * f, out[k, 3] * f)
    elif family == "shape":
        f = math.exp(_sign(rng) * rng.uniform(math.log(1.6), math.log(3.5)))
        out[k] = _at(out[k], c[k, 0], c[k, 1], out[k, 2] * f, out[k, 3] / f)
    elif family == "side":
        f = math.exp(_sign(rng) * rng.uniform(math.log(1.6), math.log(4.0)))
        wide = rng.uniform() < 0.5
        out[k] = _at(out[k], c[k, 0], c[k, 1], out[k, 2] * (f if wide else 1), out[k, 3] * (1 if wide else f))
    elif family == "layout":
        kind = int(rng.integers(3))
        f = rng.uniform(0.35, 0.6) if rng.uniform() < 0.5 else rng.uniform(1.5, 2.2)
        for r in range(n):
            x, y, w, h = out[r]
            if kind == 0:  # upside down
                out[r] = [x, 1 - y - h, w, h]
            elif kind == 1:  # transposed
                out[r] = _clipped(np.array([y, x, h, w]))
            else:  # zoomed out or in about the frame's centre
                out[r] = _at(out[r], 0.5 + f * (c[r, 0] - 0.5), 0.5 + f * (c[r, 1] - 0.5), w * f, h * f)
    else:
        j = int(rng.choice([r for r in range(n) if r != k]))
        dx, dy = c[k] - c[j]
        if family == "distance":
            f = rng.uniform(0.0, 0.5) if rng.uniform() < 0.5 else rng.uniform(1.8, 3.5)
            out[k] = _at(out[k], c[j, 0] + f * dx, c[j, 1] + f * dy)
        elif family == "direction":
            angle = _sign(rng) * rng.uniform(math.pi / 3, math.pi)
            cos, sin = math.cos(angle), math.sin(angle)
            out[k] = _at(out[k], c[j, 0] + cos * dx - sin * dy, c[j, 1] + sin * dx + cos * dy)
        elif family == "pair size":
            f = math.exp(rng.uniform(math.log(1.6), math.log(4.0)))
            out[k] = _at(out[k], c[k, 0], c[k, 1], out[k, 2] * f, out[k, 3] * f)
            out[j] = _at(out[j], c[j, 0], c[j, 1], out[j, 2] / f, out[j, 3] / f)
        elif rng.uniform() < 0.5:  # identity: boxes exchanged
            out[[k, j]] = out[[j, k]]
        else:  # identity: sizes exchanged, centres kept
            (wk, hk), (wj, hj) = out[k, 2:], out[j, 2:]
            out[k] = _at(out[k], c[k, 0], c[k, 1], wj, hj)
            out[j] = _at(out[j], c[j, 0], c[j, 1], wk, hk)
    return out


# -- fitting ---------------------------------------------------------------------------------------


def fit_weights(x: Float64Array, real: np.ndarray) -> Float64Array:
    """Non-negative weights of a ridge logistic regression of ``real`` (bool) on the rows of
    ``x``, classes balanced; features that would take a negative weight are left out."""
    mu = x.mean(axis=0)
    sd = np.maximum(x.std(axis=0), 1e-6)
    z = (x - mu) / sd
    y = real.astype(np.float64)
    share = y.mean() if y.size else 0.5
    sample = np.where(real, 0.5 / max(share, 1e-9), 0.5 / max(1 - share, 1e-9)) / max(y.size, 1)
    active = np.ones(x.shape[1], dtype=bool)
    w = np.zeros(x.shape[1])
    for _ in range(x.shape[1]):
        a = np.concatenate([z[:, active], np.ones((z.shape[0], 1))], axis=1)
        beta = np.zeros(a.shape[1])
        for _ in range(25):  # Newton's method: the loss is convex, a few steps converge
            prob = 1.0 / (1.0 + np.exp(-np.clip(a @ beta, -30, 30)))
            grad = a.T @ (sample * (prob - y)) + RIDGE * np.r_[beta[:-1], 0.0]
            ridge = RIDGE * np.diag(np.r_[np.ones(a.shape[1] - 1), 0.0])
            hess = (a * (sample * prob * (1 - prob))[:, None]).T @ a + ridge
            step = np.linalg.solve(hess + 1e-12 * np.eye(a.shape[1]), grad)
            beta -= step
            if np.abs(step).max() < 1e-9:
                break
        w = np.zeros(x.shape[1])
        w[active] = beta[:-1]
        if (w >= 0).all():
            break
        active &= w > 0
    return np.maximum(w, 0.0) / sd


def build(
    category: Int64Array, boxes: Float64Array, image: Int64Array, pair_a: Int64Array, pair_b: Int64Array,
    supercategory: Int64Array, rng: np.random.Generator, families: tuple[str, ...] = FAMILIES,
) -> LayoutModel:
    """Everything CLIS-L v3 reads of a bank: Student-kernel densities, the weights (fitted
    against ``families``) and the CDF tables of real sub-layouts, all left out by image."""
    boxes = np.asarray(boxes, dtype=np.float64)
    model, object_images, pair_images = LayoutModel.build_densities(
        category, boxes, image, pair_a, pair_b, supercategory, rng, kernel=STUDENT
    )
    layouts, buckets = calibration_layouts(boxes, image, rng)
    # The margins of the relations real pairs show, for the relation term.
    pairs = [rows[[r, r + 1]] for rows in layouts for r in range(rows.size - 1)]
    if pairs:
        a, b = boxes[[p[0] for p in pairs]], boxes[[p[1] for p in pairs]]
        margins = np.sort(relation_margins(a, b, dominant_axis(a, b)))
        model = LayoutModel(model.objects, model.pairs, model.supercategory, model.cdf_offsets,
                            model.cdf_values, model.weights, margins)
    changed, changed_rows = [], []
    for rows in layouts:
        family = families[int(rng.integers(len(families)))] if families else None
        copy = perturb(boxes[rows], family, rng) if family else None
        if copy is not None:
            changed.append(copy)
            changed_rows.append(rows)

    def related(rows: Int64Array) -> list[tuple[int, int, int]]:
        """The relation each consecutive pair's real offset shows: what a caption would state."""
        b = boxes[rows]
        axes = dominant_axis(b[:-1], b[1:]) if rows.size > 1 else np.zeros(0, dtype=np.int64)
        return [(r, r + 1, int(axes[r])) for r in range(rows.size - 1)]

    inputs: list[LayoutRows] = [(category[rows], boxes[rows], related(rows)) for rows in layouts]
    inputs += [(category[rows], b, related(rows)) for rows, b in zip(changed_rows, changed, strict=True)]
    batch = make_batch(inputs, images=[image[rows] for rows in layouts + changed_rows])
    terms = _terms(model, batch, object_images, pair_images)
    stated = _statistics(batch, terms).layouts
    bare = _statistics(batch, terms, relations=False).layouts
    count = len(layouts)
    sizes = np.array([rows.size for rows in layouts + changed_rows])
    with_relation = sizes > 1
    x = np.concatenate([bare, stated[with_relation]])
    real = np.concatenate([np.arange(len(sizes)) < count, (np.arange(len(sizes)) < count)[with_relation]])
    weights = fit_weights(x, real) if (~real).any() else np.ones(len(FEATURES))
    totals = logit(x[real], weights)
    kinds = np.concatenate([buckets, buckets[with_relation[:count]] + CDF_BUCKETS])
    order = np.lexsort((totals, kinds))
    counts = np.bincount(kinds, minlength=2 * CDF_BUCKETS)
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    return LayoutModel(model.objects, model.pairs, model.supercategory, offsets, totals[order], weights,
                       model.margins)

"""CLIS-L v2: layout plausibility as kernel densities learned from the bank, scored in batches.

A layout is judged by how likely its objects' shapes and places, and its pairs' geometry, are
under the bank's real layouts of the same categories (``acp.score.layout`` turns the result into
the 0-100 score; docs/architecture.md says why this design). Features of normalised xywh boxes:

- object: ``(log area, log aspect w/h, centre x, centre y)``;
- pair ``(a, b)``: ``(log(area_a / area_b), dx / D, dy / D, IoU)``, ``(dx, dy)`` the offset from
  a's centre to b's, ``D`` the mean of the two diagonals. Reading the pair the other way round
  negates the first three.

Densities: a Gaussian kernel density per group with diagonal bandwidth ``h_d = s_d n^(-1/8)``
(``s_d`` the pooled within-group standard deviation of feature ``d`` at that level, ``n`` the
group's references, at most ``MAX_REFERENCES`` of its level, sampled). Each level backs off to
its parent with a pseudo-count: ``p = (n p_group + m p_parent) / (n + m)``, ``m = PSEUDO_COUNT``.
Levels: objects per category, then all objects; pairs per category pair, then per
super-category pair, then all pairs. A pair is stored oriented from the lower group id to the
higher at each level, both ways when the two ids are equal (same category, same
super-category, and always at the top level), so no orientation is ever privileged.

Every term is normalised by its group's mean leave-one-image-out log-density (shrunk towards the
parent's with the same pseudo-count), so a term of 0 is "as typical as the group's own
references" whatever the group's spread. All of it (references, bandwidths, counts, means, the
CDF tables of ``acp.score.layout``) is computed by ``LayoutModel.build`` at ``acp bank build``
time and stored in the bank; scoring sorts its queries by group and evaluates each group once.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from acp.boxes import iou_aligned
from acp.errors import InputError
from acp.score.kernel import LOG_NORMALISER, kernel_sums

GAUSSIAN, STUDENT = "gauss", "student"  # the kernels of v2 and v3
PSEUDO_COUNT = 5.0
MAX_REFERENCES = (256, 256, 256)  # per group, by level: the category (pair), its parent, the top
MIN_SPREAD = 1e-3  # a feature's pooled spread is floored here (groups of identical boxes)
_LOG_2PI = math.log(2 * math.pi)
_HALF = math.sqrt(0.5)  # features are scaled by sqrt(0.5) / h: squared distances come out halved
_BLOCK = 256  # queries per block of the kernel sums: the temporaries stay in cache
NORM_SAMPLE = 64  # references per group that its normaliser is the mean over

Float32Array = NDArray[np.float32]
Float64Array = NDArray[np.float64]
Int64Array = NDArray[np.int64]


def object_features(boxes: NDArray[Any]) -> Float64Array:
    """``(log area, log aspect, cx, cy)`` of xywh boxes with positive sides, one row a box."""
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    return np.stack(
        [np.log(b[:, 2] * b[:, 3]), np.log(b[:, 2] / b[:, 3]), b[:, 0] + b[:, 2] / 2, b[:, 1] + b[:, 3] / 2],
        axis=1,
    )


def pair_features(a: NDArray[Any], b: NDArray[Any]) -> Float64Array:
    """``(log area ratio, dx / D, dy / D, IoU)`` of aligned xywh boxes ``a`` and ``b``."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    area_a, area_b = a[:, 2] * a[:, 3], b[:, 2] * b[:, 3]
    dx = (b[:, 0] + b[:, 2] / 2) - (a[:, 0] + a[:, 2] / 2)
    dy = (b[:, 1] + b[:, 3] / 2) - (a[:, 1] + a[:, 3] / 2)
    diagonal = (np.hypot(a[:, 2], a[:, 3]) + np.hypot(b[:, 2], b[:, 3])) / 2
    return np.stack([np.log(area_a / area_b), dx / diagonal, dy / diagonal, iou_aligned(a, b)], axis=1)


REVERSE = np.array([-1.0, -1.0, -1.0, 1.0])  # a pair's features read the other way round


LEFT, RIGHT, ABOVE, BELOW, NEXT_TO = range(5)
_AXIS_WORDS = {
    "left": LEFT, "right": RIGHT, "above": ABOVE, "top": ABOVE, "over": ABOVE, "on": ABOVE,
    "atop": ABOVE, "below": BELOW, "under": BELOW, "beneath": BELOW, "underneath": BELOW,
    "bottom": BELOW, "next": NEXT_TO, "beside": NEXT_TO, "besides": NEXT_TO,
}


def relation_axis(predicate: str | None) -> int | None:
    """The spatial relation a predicate names (``LEFT`` ... ``NEXT_TO``), ``None`` for any other
    ("in front of", "holding"): its relation term is then not counted. The first word that
    names a side decides ("on top of": above; "to the left of": left)."""
    if not predicate:
        return None
    for word in predicate.lower().replace("-", " ").split():
        if word in _AXIS_WORDS:
            return _AXIS_WORDS[word]
    return None


def relation_margins(subject: Float64Array, obj: Float64Array, axis: Int64Array) -> Float64Array:
    """``r``: the subject-to-object offset along the relation's axis (signed as the relation
    says), minus the absolute offset across it, over the mean box side."""
    dx = (obj[:, 0] + obj[:, 2] / 2) - (subject[:, 0] + subject[:, 2] / 2)
    dy = (obj[:, 1] + obj[:, 3] / 2) - (subject[:, 1] + subject[:, 3] / 2)
    side = (subject[:, 2] + subject[:, 3] + obj[:, 2] + obj[:, 3]) / 4
    along = np.select(
        [axis == LEFT, axis == RIGHT, axis == ABOVE, axis == BELOW], [dx, -dx, dy, -dy], np.abs(dx)
    )
    across = np.where((axis == ABOVE) | (axis == BELOW), np.abs(dx), np.abs(dy))
    return (along - across) / side


def dominant_axis(subject: Float64Array, obj: Float64Array) -> Int64Array:
    """The relation a describer would state of a real pair: its main offset's side."""
    dx = (obj[:, 0] + obj[:, 2] / 2) - (subject[:, 0] + subject[:, 2] / 2)
    dy = (obj[:, 1] + obj[:, 3] / 2) - (subject[:, 1] + subject[:, 3] / 2)
    horizontal = np.where(dx > 0, LEFT, RIGHT)
    vertical = np.where(dy > 0, ABOVE, BELOW)
    return np.where(np.abs(dx) >= np.abs(dy), horizontal, vertical).astype(np.int64)


def log_sigmoid(x: Float64Array) -> Float64Array:
    return -np.logaddexp(0.0, -x)


@dataclass(frozen=True, eq=False)
class Level:
    """The kernel densities of one level: group ``g`` owns ``refs[offsets[g]:offsets[g + 1]]``,
    looked up by its sorted ``keys``; ``bandwidth`` (G, 4); ``norm`` its shrunk mean
    leave-one-image-out log-density."""

    keys: Int64Array
    offsets: Int64Array
    refs: Float32Array
    bandwidth: Float32Array
    norm: Float64Array
    kernel: str = GAUSSIAN  # GAUSSIAN (v2) or STUDENT (v3, ``acp.score.kernel``)
    count: Int64Array = field(init=False, repr=False)  # references per group
    scaled: NDArray[Any] = field(init=False, repr=False)  # refs / their group's bandwidth (see below)
    constant: Float64Array = field(init=False, repr=False)  # log normaliser of each group's kernel sum

    def __post_init__(self) -> None:
        g = self.keys.size
        if (self.offsets.shape != (g + 1,) or self.bandwidth.shape != (g, 4) or self.norm.shape != (g,)
                or self.refs.ndim != 2 or self.refs.shape[1:] != (4,)
                or int(self.offsets[-1]) != self.refs.shape[0] or np.any(np.diff(self.offsets) < 0)
                or not np.all(self.bandwidth > 0) or np.any(np.diff(self.keys) <= 0)):
            raise InputError("inconsistent bank: the arrays of a density level do not match")
        counts = np.diff(self.offsets)
        group = np.repeat(np.arange(g), counts)
        object.__setattr__(self, "count", counts)
        log_bandwidth = np.log(self.bandwidth.astype(np.float64)).sum(axis=1)
        if self.kernel == STUDENT:  # float64, divided by twice the bandwidth: u = |z|^2 / 4
            scaled = self.refs.astype(np.float64) / (2.0 * self.bandwidth[group].astype(np.float64))
            object.__setattr__(self, "scaled", np.ascontiguousarray(scaled))
            object.__setattr__(self, "constant", log_bandwidth + LOG_NORMALISER)
            return
        scaled = self.refs.astype(np.float64) * (_HALF / self.bandwidth[group].astype(np.float64))
        object.__setattr__(self, "scaled", scaled.astype(np.float32))
        object.__setattr__(self, "constant", log_bandwidth + 2 * _LOG_2PI + np.log(np.maximum(counts, 1)))

    def lookup(self, keys: Int64Array) -> Int64Array:
        """Group index of each key, -1 where the level has no such group."""
        if self.keys.size == 0:
            return np.full(keys.shape, -1, dtype=np.int64)
        k = np.minimum(np.searchsorted(self.keys, keys), self.keys.size - 1)
        return np.where(self.keys[k] == keys, k, -1).astype(np.int64)

    def log_density(
        self, group: Int64Array, x: Float64Array,
        query_image: Int64Array | None = None, ref_image: Int64Array | None = None,
    ) -> Float64Array:
        """Log kernel density of each row of ``x`` under its group (``-inf`` for group -1).

        With images given (at build time) the references of a query's own image are left out
        (leave-one-image-out). Each group is evaluated once for all of its queries, element by
        element: a query's value does not depend on the other queries of the batch."""
        out = np.full(group.shape, -np.inf)
        if group.size == 0:
            return out
        if self.kernel == STUDENT:
            return self._student_log_density(group, x, query_image, ref_image)
        order = np.argsort(group, kind="stable")
        sorted_group = group[order]
        bounds = [0, *(np.flatnonzero(sorted_group[1:] != sorted_group[:-1]) + 1).tolist(), group.size]
        masked = query_image is not None and ref_image is not None
        for first, last in itertools.pairwise(bounds):
            g = int(sorted_group[first])
            if g < 0:
                continue
            start, stop = int(self.offsets[g]), int(self.offsets[g + 1])
            refs = self.scaled[start:stop]
            scale = (_HALF / self.bandwidth[g]).astype(np.float32)
            for block in range(first, last, _BLOCK):
                rows = order[block:min(block + _BLOCK, last)]
                z = x[rows].astype(np.float32) * scale
                # 0.5 * squared scaled distance, in place: this loop is all of scoring's time.
                half_d2 = np.subtract.outer(z[:, 0], refs[:, 0])
                np.square(half_d2, out=half_d2)
                work = np.empty_like(half_d2)
                for d in range(1, 4):
                    np.subtract.outer(z[:, d], refs[:, d], out=work)
                    np.square(work, out=work)
                    half_d2 += work
                constant: Any = self.constant[g]
                if masked:
                    assert query_image is not None and ref_image is not None
                    same = query_image[rows, None] == ref_image[None, start:stop]
                    half_d2[same] = np.inf
                    kept = (stop - start) - same.sum(axis=1)
                    constant = constant - math.log(stop - start) + np.log(np.maximum(kept, 1))
                nearest = half_d2.min(axis=1)
                nearest = np.where(np.isfinite(nearest), nearest, np.float32(0.0))
                half_d2 -= nearest[:, None]
                np.negative(half_d2, out=half_d2)
                np.exp(half_d2, out=half_d2)
                with np.errstate(divide="ignore"):  # every reference left out: log 0 = -inf
                    total = np.log(half_d2.sum(axis=1)) - nearest
                out[rows] = total.astype(np.float64) - constant
        return out

    def _student_log_density(
        self, group: Int64Array, x: Float64Array,
        query_image: Int64Array | None, ref_image: Int64Array | None,
    ) -> Float64Array:
        safe = np.maximum(group, 0)
        z = np.asarray(x, dtype=np.float64) / (2.0 * self.bandwidth[safe].astype(np.float64))
        sums, kept = kernel_sums(z, group, self.offsets, self.scaled, query_image, ref_image)
        out = np.full(group.shape, -np.inf)  # no reference (group -1, or all left out)
        ok = (kept > 0) & (sums > 0)
        out[ok] = np.log(sums[ok]) - np.log(kept[ok]) - self.constant[safe[ok]]
        return out

    def with_norm(self, norm: Float64Array) -> Level:
        return Level(self.keys, self.offsets, self.refs, self.bandwidth, norm.astype(np.float64), self.kernel)

    def arrays(self, prefix: str) -> dict[str, NDArray[Any]]:
        return {f"{prefix}_{name}": getattr(self, name) for name in _LEVEL_ARRAYS}

    @classmethod
    def from_arrays(cls, prefix: str, data: dict[str, NDArray[Any]], kernel: str = GAUSSIAN) -> Level:
        return cls(
            keys=data[f"{prefix}_keys"].astype(np.int64, copy=False),
            offsets=data[f"{prefix}_offsets"].astype(np.int64, copy=False),
            refs=data[f"{prefix}_refs"].astype(np.float32, copy=False),
            bandwidth=data[f"{prefix}_bandwidth"].astype(np.float32, copy=False),
            norm=data[f"{prefix}_norm"].astype(np.float64, copy=False),
            kernel=kernel,
        )


_LEVEL_ARRAYS = ("keys", "offsets", "refs", "bandwidth", "norm")


def backed_off(
    levels: list[Level], groups: list[Int64Array], features: list[Float64Array],
    query_image: Int64Array | None = None, ref_images: list[Int64Array] | None = None,
) -> tuple[Float64Array, Float64Array]:
    """Backed-off log-density of each query and its normaliser. ``levels[0]`` is the finest;
    ``groups[k]`` a query's group at level ``k`` (-1: none there, the parent's density stands),
    ``features[k]`` the query as level ``k`` reads it."""
    value = np.full(groups[0].shape, -np.inf)
    norm = np.zeros(groups[0].shape)
    for k in range(len(levels) - 1, -1, -1):
        level, group = levels[k], groups[k]
        refs = ref_images[k] if ref_images is not None else None
        here = level.log_density(group, features[k], query_image, refs)
        known = group >= 0
        safe = np.maximum(group, 0)
        group_norm = level.norm[safe] if level.norm.size else np.zeros(group.shape)
        if k < len(levels) - 1:
            n = np.where(known, level.count[safe] if level.count.size else 0, 0).astype(np.float64)
            share = n / (n + PSEUDO_COUNT)
            with np.errstate(divide="ignore"):
                here = np.logaddexp(np.log(share) + here, np.log1p(-share) + value)
        value = np.where(known, here, value)
        norm = np.where(known, group_norm, norm)
    return value, norm


def _sample(keys: Int64Array, cap: int, rng: np.random.Generator) -> Int64Array:
    """Rows sorted by key, at most ``cap`` of each key (a uniform sample)."""
    order = rng.permutation(keys.size)
    order = order[np.argsort(keys[order], kind="stable")]
    _, starts, counts = np.unique(keys[order], return_index=True, return_counts=True)
    rank = np.arange(order.size) - np.repeat(starts, counts)
    return order[rank < cap]


def build_level(
    x: Float64Array, keys: Int64Array, cap: int, rng: np.random.Generator, kernel: str = GAUSSIAN
) -> tuple[Level, Int64Array]:
    """A level's groups of feature rows ``x`` keyed by ``keys`` (norms 0, set later) and the
    rows kept as references."""
    rows = _sample(keys, cap, rng)
    unique, counts = np.unique(keys[rows], return_counts=True)
    refs = x[rows]
    group = np.repeat(np.arange(unique.size), counts)
    means = np.zeros((unique.size, 4))
    np.add.at(means, group, refs)
    means /= np.maximum(counts, 1)[:, None]
    if refs.shape[0] > unique.size:  # pooled within-group spread
        spread = np.sqrt(((refs - means[group]) ** 2).sum(axis=0) / (refs.shape[0] - unique.size))
    else:
        spread = refs.std(axis=0) if refs.shape[0] > 1 else np.ones(4)
    spread = np.maximum(spread, MIN_SPREAD)
    bandwidth = spread[None, :] * counts[:, None].astype(np.float64) ** (-1 / 8)
    if kernel == STUDENT:  # the t kernel's variance is 2 per dimension: the same smoothing
        bandwidth = bandwidth * _HALF
    level = Level(
        keys=unique.astype(np.int64),
        offsets=np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
        refs=refs.astype(np.float32),
        bandwidth=bandwidth.astype(np.float32),
        norm=np.zeros(unique.size),
        kernel=kernel,
    )
    return level, rows


def _norm_rows(level: Level) -> tuple[Int64Array, Int64Array]:
    """The references a level's normalisers are computed from, ``NORM_SAMPLE`` of each group at
    most (its first: references are in random order within a group), and their groups."""
    group = np.repeat(np.arange(level.keys.size), level.count)
    rank = np.arange(group.size) - np.repeat(level.offsets[:-1], level.count)
    rows = np.flatnonzero(rank < NORM_SAMPLE)
    return rows, group[rows]


def _shrunk_means(
    level: Level, group: Int64Array, values: Float64Array, parent_norm: Float64Array
) -> Float64Array:
    """Per group: the mean of ``values`` (of references in ``group``), shrunk towards
    ``parent_norm`` (one per value) with the pseudo-count."""
    finite = np.isfinite(values)
    sums = np.bincount(group[finite], values[finite], minlength=level.keys.size)
    n = np.bincount(group[finite], minlength=level.keys.size).astype(np.float64)
    parent = np.zeros(level.keys.size)
    parent[group] = parent_norm  # one parent per group
    return (sums + PSEUDO_COUNT * parent) / (n + PSEUDO_COUNT)


@dataclass(frozen=True, eq=False)
class LayoutModel:
    """The bank's densities: object levels (category, all) and pair levels (category pair,
    super-category pair, all), each bank category's super-category id, and the CDF tables
    (sorted totals of real layouts per object-count bucket; ``acp.score.layout``)."""

    objects: list[Level]
    pairs: list[Level]
    supercategory: Int64Array
    cdf_offsets: Int64Array  # bucket b owns cdf_values[cdf_offsets[b]:cdf_offsets[b + 1]]
    cdf_values: Float64Array
    weights: Float64Array = field(default_factory=lambda: np.zeros(0))  # v3's (acp.score.likelihood)
    margins: Float64Array = field(default_factory=lambda: np.zeros(0))  # v3's: real relations', sorted

    PREFIXES = ("object_category", "object_all", "pair_category", "pair_super", "pair_all")

    @property
    def categories(self) -> int:
        return int(self.supercategory.size)

    @property
    def _super_width(self) -> int:
        return int(self.supercategory.max()) + 1 if self.supercategory.size else 1

    # -- terms -----------------------------------------------------------------------------
    def object_terms(
        self, category: Int64Array, boxes: Float64Array,
        image: Int64Array | None = None, ref_images: list[Int64Array] | None = None,
    ) -> Float64Array:
        """Normalised log-density of each box as its category (-1: unknown, the top level)."""
        groups = [np.where(category >= 0, self.objects[0].lookup(np.maximum(category, 0)), -1),
                  np.zeros(category.shape, dtype=np.int64)]
        x = object_features(boxes)
        value, norm = backed_off(self.objects, groups, [x, x], image, ref_images)
        return value - norm

    def pair_terms(
        self, a: Int64Array, b: Int64Array, x: Float64Array,
        image: Int64Array | None = None, ref_images: list[Int64Array] | None = None,
    ) -> Float64Array:
        """Normalised log-density of pair features ``x`` of category ``a``'s box to ``b``'s
        (-1: unknown; a pair with an unknown category is read at the top level)."""
        if self.pairs[2].keys.size == 0:  # a bank of one-object images: no pair evidence either way
            return np.zeros(a.shape[0])
        known = (a >= 0) & (b >= 0)
        lo, hi = np.minimum(a, b), np.maximum(a, b)
        category = np.where(known, self.pairs[0].lookup(lo * max(self.categories, 1) + hi), -1)
        sa = self.supercategory[np.maximum(a, 0)] if self.categories else np.zeros_like(a)
        sb = self.supercategory[np.maximum(b, 0)] if self.categories else np.zeros_like(b)
        s = self._super_width
        sup = np.where(known, self.pairs[1].lookup(np.minimum(sa, sb) * s + np.maximum(sa, sb)), -1)
        groups = [category, sup, np.zeros(a.shape, dtype=np.int64)]
        features = [np.where((a > b)[:, None], x * REVERSE, x), np.where((sa > sb)[:, None], x * REVERSE, x),
                    x]
        value, norm = backed_off(self.pairs, groups, features, image, ref_images)
        return value - norm

    # -- files -----------------------------------------------------------------------------
    def arrays(self) -> dict[str, NDArray[Any]]:
        data: dict[str, NDArray[Any]] = {
            "supercategory": self.supercategory, "cdf_offsets": self.cdf_offsets,
            "cdf_values": self.cdf_values, "weights": self.weights, "margins": self.margins,
        }
        for prefix, level in zip(self.PREFIXES, [*self.objects, *self.pairs], strict=True):
            data.update(level.arrays(prefix))
        return data

    @classmethod
    def array_names(cls) -> list[str]:
        return ["supercategory", "cdf_offsets", "cdf_values", "weights", "margins"] + [
            f"{p}_{n}" for p in cls.PREFIXES for n in _LEVEL_ARRAYS
        ]

    @property
    def kernel(self) -> str:
        return self.objects[0].kernel

    @classmethod
    def from_arrays(cls, data: dict[str, NDArray[Any]], kernel: str = GAUSSIAN) -> LayoutModel:
        levels = [Level.from_arrays(p, data, kernel) for p in cls.PREFIXES]
        model = cls(
            levels[:2], levels[2:], data["supercategory"].astype(np.int64, copy=False),
            data["cdf_offsets"].astype(np.int64, copy=False),
            data["cdf_values"].astype(np.float64, copy=False),
            data["weights"].astype(np.float64, copy=False),
            data["margins"].astype(np.float64, copy=False),
        )
        if model.cdf_offsets.ndim != 1 or model.cdf_offsets.size < 2 or int(model.cdf_offsets[-1]) != (
            model.cdf_values.size
        ):
            raise InputError("inconsistent bank: the CDF tables do not match")
        return model

    # -- building --------------------------------------------------------------------------
    @classmethod
    def build_densities(
        cls,
        category: Int64Array,
        boxes: NDArray[Any],
        image: Int64Array,
        pair_a: Int64Array,
        pair_b: Int64Array,
        supercategory: Int64Array,
        rng: np.random.Generator,
        kernel: str = GAUSSIAN,
    ) -> tuple[LayoutModel, list[Int64Array], list[Int64Array]]:
        """The densities of bank boxes (``category``, ``boxes``, ``image`` per box) and pairs
        (box rows ``pair_a``, ``pair_b``), normalisers included, CDF tables still empty; and the
        image of every reference of every object and pair level, which the leave-one-image-out
        statistics need (the bank does not store them)."""
        boxes = np.asarray(boxes, dtype=np.float64)
        c = max(int(supercategory.size), 1)
        s = int(supercategory.max()) + 1 if supercategory.size else 1
        x = object_features(boxes)
        objects, object_images = [], []
        for keys, cap in ((category, MAX_REFERENCES[0]), (np.zeros_like(category), MAX_REFERENCES[2])):
            level, rows = build_level(x, keys, cap, rng, kernel)
            objects.append(level)
            object_images.append(image[rows])
        # Normalisers from the top level down, each from its own references, left out by image.
        top = objects[1]
        value = top.log_density(np.zeros(top.refs.shape[0], dtype=np.int64), top.refs.astype(np.float64),
                                object_images[1], object_images[1])
        objects[1] = top.with_norm(np.array([_finite_mean(value)]))
        fine = objects[0]
        rows, group = _norm_rows(fine)
        value, _ = backed_off(objects, [group, np.zeros(rows.size, dtype=np.int64)],
                              [fine.refs[rows].astype(np.float64)] * 2, object_images[0][rows], object_images)
        objects[0] = fine.with_norm(_shrunk_means(fine, group, value, np.full(rows.size, objects[1].norm[0])))

        ca, cb = category[pair_a], category[pair_b]
        sa, sb = supercategory[ca], supercategory[cb]
        base = pair_features(boxes[pair_a], boxes[pair_b])
        pair_image = image[pair_a]
        pairs, pair_images = [], []
        for lo_id, hi_id, width, cap in ((ca, cb, c, MAX_REFERENCES[0]), (sa, sb, s, MAX_REFERENCES[1]),
                                         (np.zeros_like(ca), np.zeros_like(cb), 1, MAX_REFERENCES[2])):
            # Oriented from the lower id to the higher; both ways when the two are equal.
            feats = np.where((lo_id > hi_id)[:, None], base * REVERSE, base)
            keys = np.minimum(lo_id, hi_id) * width + np.maximum(lo_id, hi_id)
            equal = lo_id == hi_id
            feats = np.concatenate([feats, feats[equal] * REVERSE])
            keys = np.concatenate([keys, keys[equal]])
            source = np.concatenate([np.arange(pair_a.size), np.flatnonzero(equal)])
            level, rows = build_level(feats, keys, cap, rng, kernel)
            pairs.append(level)
            pair_images.append(pair_image[source[rows]])
        # Normalisers, top down: each level's references read through the levels above them.
        top = pairs[2]
        if top.keys.size == 0:  # no pairs at all
            return cls(objects, pairs, supercategory.astype(np.int64), np.zeros(2, dtype=np.int64),
                       np.zeros(0)), object_images, pair_images
        value = top.log_density(np.zeros(top.refs.shape[0], dtype=np.int64), top.refs.astype(np.float64),
                                pair_images[2], pair_images[2])
        pairs[2] = top.with_norm(np.array([_finite_mean(value)]))
        sup = pairs[1]
        rows, group = _norm_rows(sup)
        value, _ = backed_off(pairs[1:], [group, np.zeros(rows.size, dtype=np.int64)],
                              [sup.refs[rows].astype(np.float64)] * 2, pair_images[1][rows], pair_images[1:])
        pairs[1] = sup.with_norm(_shrunk_means(sup, group, value, np.full(rows.size, pairs[2].norm[0])))
        model = cls(objects, pairs, supercategory.astype(np.int64), np.zeros(2, dtype=np.int64), np.zeros(0))
        fine = pairs[0]
        rows, group = _norm_rows(fine)
        lo, hi = fine.keys[group] // c, fine.keys[group] % c
        value = model.pair_terms(lo, hi, fine.refs[rows].astype(np.float64), pair_images[0][rows],
                                 pair_images)
        # Every reference has its fine group, whose norm is still 0: ``value`` is the density.
        s_lo, s_hi = supercategory[lo], supercategory[hi]
        parent_group = pairs[1].lookup(np.minimum(s_lo, s_hi) * s + np.maximum(s_lo, s_hi))
        parent_norm = np.where(parent_group >= 0, pairs[1].norm[np.maximum(parent_group, 0)],
                               pairs[2].norm[0])
        pairs[0] = fine.with_norm(_shrunk_means(fine, group, value, parent_norm))
        return (cls(objects, pairs, supercategory.astype(np.int64), np.zeros(2, dtype=np.int64), np.zeros(0)),
                object_images, pair_images)


def _finite_mean(values: Float64Array) -> float:
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if finite.size else 0.0


# -- layouts ---------------------------------------------------------------------------------
# Tuned on NSR-1K splits (bench/bench_clis_quality.py): the weakest object counts apart from the
# mean, as a corruption usually hits one object; the relation term is steep and weighs most.
WEIGHTS = {"objects": 1.0, "weakest_object": 1.0, "pair": 0.5, "relation": 12.0, "assignment": 1.0}
RELATION_SHARPNESS = 8.0
NEIGHBOURS = 2  # past 3 objects, each object's pairs with its 2 nearest neighbours are scored
CDF_BUCKETS = 8  # layouts of 1, 2, ..., 7 and 8+ objects are calibrated apart
CDF_LAYOUTS = 1000  # real sub-layouts sampled per bucket at build time
CDF_PER_IMAGE = 4  # sub-layouts per image at most, on average
MIN_CDF_IMAGES = 10  # a bucket with fewer images borrows the nearest calibrated one
UNCALIBRATED_SCALE = 2.0  # log units: the logistic that stands in for the CDF of a tiny bank
MAX_CDF_OBJECTS = 20


def scored_pairs(boxes: Float64Array, related: set[tuple[int, int]]) -> list[tuple[int, int]]:
    """The object pairs a layout is scored on, ``(i, j)`` with ``i < j``: all of them up to 3
    objects; past that the related pairs and each object's ``NEIGHBOURS`` nearest (centre
    distance over the mean diagonal), so the cost grows linearly with the objects."""
    n = boxes.shape[0]
    if n <= 3:
        return [(i, j) for i in range(n) for j in range(i + 1, n)]
    centre = boxes[:, :2] + boxes[:, 2:] / 2
    diagonal = np.hypot(boxes[:, 2], boxes[:, 3])
    distance = np.hypot(*(centre[:, None, :] - centre[None, :, :]).transpose(2, 0, 1))
    distance = distance / ((diagonal[:, None] + diagonal[None, :]) / 2)
    np.fill_diagonal(distance, np.inf)
    chosen = set(related)
    nearest = np.argsort(distance, axis=1, kind="stable")[:, :NEIGHBOURS]
    for i in range(n):
        for j in nearest[i]:
            chosen.add((min(i, int(j)), max(i, int(j))))
    return sorted(chosen)


@dataclass
class LayoutBatch:
    """Layouts flattened for one scoring pass. Objects: ``category`` (bank id, -1 unknown),
    ``boxes``, ``layout``; pairs ``(pair_i, pair_j)`` and relations ``(rel_i, rel_j, rel_axis)``
    are object rows, subject first; ``image`` (build time only) each object's bank image."""

    layouts: int
    category: Int64Array
    boxes: Float64Array
    layout: Int64Array
    pair_i: Int64Array
    pair_j: Int64Array
    rel_i: Int64Array
    rel_j: Int64Array
    rel_axis: Int64Array
    image: Int64Array | None = None


@dataclass(frozen=True)
class Terms:
    """Per layout: the mean of each kind of term and their weighted sum ``total``; per object
    and per pair (rows of the batch) the terms themselves, in log units."""

    objects: Float64Array
    weakest_object: Float64Array
    pair: Float64Array
    relation: Float64Array
    assignment: Float64Array
    total: Float64Array
    object_terms: Float64Array
    pair_terms: Float64Array
    pair_assignment: Float64Array
    pair_relation: Float64Array  # the relation term of a pair's stated relation (0: none)


def layout_terms(
    model: LayoutModel, batch: LayoutBatch,
    object_images: list[Int64Array] | None = None, pair_images: list[Int64Array] | None = None,
) -> Terms:
    """Every term of every layout of ``batch``, in one pass per kind of density."""
    m, p = batch.category.size, batch.pair_i.size
    cat, boxes, i, j = batch.category, batch.boxes, batch.pair_i, batch.pair_j
    image = batch.image
    # Each box as its own category, then as the other category of each of its pairs.
    object_rows = np.concatenate([np.arange(m), i, j])
    as_category = np.concatenate([cat, cat[j], cat[i]])
    obj = model.object_terms(
        as_category, boxes[object_rows], image[object_rows] if image is not None else None, object_images
    )
    own, swapped_i, swapped_j = obj[:m], obj[m:m + p], obj[m + p:]
    x = pair_features(np.concatenate([boxes[i], boxes[j]]), np.concatenate([boxes[j], boxes[i]]))
    pair_image = np.concatenate([image[i], image[i]]) if image is not None else None
    both = model.pair_terms(np.concatenate([cat[i], cat[i]]), np.concatenate([cat[j], cat[j]]), x,
                            pair_image, pair_images)
    pair, pair_swapped = both[:p], both[p:]  # the swapped read: category i at box j and j at i
    given = own[i] + own[j] + pair
    exchanged = swapped_i + swapped_j + pair_swapped
    with np.errstate(invalid="ignore"):
        assignment = np.where(cat[i] == cat[j], math.log(0.5), log_sigmoid(given - exchanged))
    assignment = np.where(np.isnan(assignment), math.log(0.5), assignment)
    relation = log_sigmoid(RELATION_SHARPNESS * relation_margins(boxes[batch.rel_i], boxes[batch.rel_j],
                                                                 batch.rel_axis))
    n = batch.layouts
    pair_layout = batch.layout[i]
    rel_layout = batch.layout[batch.rel_i]

    def mean(values: Float64Array, where: Int64Array) -> Float64Array:
        count = np.bincount(where, minlength=n)
        return np.bincount(where, values, minlength=n) / np.maximum(count, 1)

    def weakest(values: Float64Array, where: Int64Array) -> Float64Array:
        low = np.full(n, np.inf)
        np.minimum.at(low, where, values)
        return np.where(np.isfinite(low), low, 0.0)

    means = {
        "objects": mean(own, batch.layout), "weakest_object": weakest(own, batch.layout),
        "pair": mean(pair, pair_layout),
        "relation": mean(relation, rel_layout), "assignment": mean(assignment, pair_layout),
    }
    total = sum(WEIGHTS[k] * v for k, v in means.items())
    # The relation term of each scored pair, for its own detail (the first stated one).
    pair_relation = np.zeros(p)
    if p and relation.size:
        key = {}
        for k in range(relation.size - 1, -1, -1):
            a, b = int(batch.rel_i[k]), int(batch.rel_j[k])
            key[(min(a, b), max(a, b))] = relation[k]
        pair_relation = np.array(
            [key.get((min(int(a), int(b)), max(int(a), int(b))), 0.0) for a, b in zip(i, j, strict=True)]
        )
    return Terms(means["objects"], means["weakest_object"], means["pair"], means["relation"],
                 means["assignment"], np.asarray(total), own, pair, assignment,
                 pair_relation)


def pair_totals(terms: Terms, batch: LayoutBatch) -> Float64Array:
    """Each scored pair's total as a two-object layout of its own."""
    i, j = batch.pair_i, batch.pair_j
    own_i, own_j = terms.object_terms[i], terms.object_terms[j]
    return (WEIGHTS["objects"] * (own_i + own_j) / 2 + WEIGHTS["weakest_object"] * np.minimum(own_i, own_j)
            + WEIGHTS["pair"] * terms.pair_terms + WEIGHTS["relation"] * terms.pair_relation
            + WEIGHTS["assignment"] * terms.pair_assignment)


def without_relations(terms: Terms) -> Float64Array:
    """The layouts' totals without their relation terms: what the relation-free tables hold."""
    return terms.total - WEIGHTS["relation"] * terms.relation


def bucket_of(objects: NDArray[Any], related: NDArray[Any] | bool = False) -> NDArray[np.int64]:
    """The CDF table of layouts of ``objects`` objects: one per size up to ``CDF_BUCKETS``, for
    layouts without a stated spatial relation, then the same for layouts with one."""
    size = np.clip(np.asarray(objects), 1, CDF_BUCKETS) - 1
    return (size + CDF_BUCKETS * np.asarray(related, dtype=np.int64)).astype(np.int64)


def calibration_batch(
    category: Int64Array, boxes: Float64Array, image: Int64Array, rng: np.random.Generator
) -> tuple[LayoutBatch, Int64Array]:
    """Real sub-layouts of bank images for the CDF tables (``calibration_layouts``), with a
    relation between consecutive objects, the one their offset shows; and each one's bucket."""
    layouts, buckets = calibration_layouts(boxes, image, rng)
    return make_batch([(category[rows], boxes[rows], None) for rows in layouts],
                      images=[image[rows] for rows in layouts]), buckets


def calibration_layouts(
    boxes: Float64Array, image: Int64Array, rng: np.random.Generator
) -> tuple[list[Int64Array], Int64Array]:
    """Real sub-layouts of bank images, as box rows: per bucket up to ``CDF_LAYOUTS`` random
    subsets of an image's ``MAX_CDF_OBJECTS`` largest boxes; and the bucket of each layout."""
    area = boxes[:, 2] * boxes[:, 3]
    order = np.lexsort((-area, image))
    _, starts, counts = np.unique(image[order], return_index=True, return_counts=True)
    used = np.minimum(counts, MAX_CDF_OBJECTS)
    layouts: list[Int64Array] = []
    buckets: list[int] = []
    for bucket in range(CDF_BUCKETS):
        low = bucket + 1
        eligible = np.flatnonzero(used >= low)
        if eligible.size < MIN_CDF_IMAGES:
            continue
        # A few subsets of each image at most: more would repeat the same evidence.
        count = min(CDF_LAYOUTS, CDF_PER_IMAGE * eligible.size)
        picks = rng.choice(eligible, count, replace=eligible.size < count)
        for pick in picks:
            high = int(used[pick]) if bucket == CDF_BUCKETS - 1 else low
            size = int(rng.integers(low, high + 1))
            chosen = rng.choice(int(used[pick]), size, replace=False)
            layouts.append(order[starts[pick] + chosen])
            buckets.append(bucket)
    return layouts, np.array(buckets, dtype=np.int64)


# A layout as ``make_batch`` takes it: category ids, boxes (rows of 4), relations or None.
LayoutRows = tuple[Sequence[int] | NDArray[Any], Sequence[Sequence[float]] | NDArray[Any],
                   Sequence[tuple[int, int, int]] | None]


def make_batch(
    layouts: Sequence[LayoutRows],
    images: list[Int64Array] | None = None,
    related: list[set[tuple[int, int]]] | None = None,
) -> LayoutBatch:
    """A batch of layouts ``(categories, boxes, relations)``, relations ``(subject row, object
    row, axis)``; ``None``: each object related to the next by the side their offset shows.
    ``related``: per layout the pairs ``(i < j)`` that a relation links (default: those of
    ``relations``), which are always scored. Built in Python lists, made arrays once."""
    cats: list[int] = []
    boxes: list[Sequence[float]] = []
    owner: list[int] = []
    pi: list[int] = []
    pj: list[int] = []
    ri: list[int] = []
    rj: list[int] = []
    ra: list[int] = []
    offset = 0
    for k, (category, box, relations) in enumerate(layouts):
        n = len(category)
        rows = box.tolist() if isinstance(box, np.ndarray) else box
        cats.extend(int(c) for c in category)
        boxes.extend(rows)
        owner.extend([k] * n)
        if relations is None:  # the axes are filled in below, all at once
            relations = [(r, r + 1, -1) for r in range(n - 1)]
        linked = related[k] if related is not None else {(min(s, o), max(s, o)) for s, o, _ in relations}
        pairs = _ALL_PAIRS[n] if n <= 3 else scored_pairs(np.asarray(rows, dtype=np.float64), linked)
        for a, b in pairs:
            pi.append(offset + a)
            pj.append(offset + b)
        for s, o, axis in relations:
            ri.append(offset + s)
            rj.append(offset + o)
            ra.append(axis)
        offset += n

    def ints(values: list[int]) -> Int64Array:
        return np.asarray(values, dtype=np.int64)

    all_boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    axes, subjects, objects = ints(ra), ints(ri), ints(rj)
    unset = axes < 0
    if unset.any():
        axes[unset] = dominant_axis(all_boxes[subjects[unset]], all_boxes[objects[unset]])

    return LayoutBatch(
        layouts=len(layouts), category=ints(cats), boxes=all_boxes, layout=ints(owner),
        pair_i=ints(pi), pair_j=ints(pj), rel_i=subjects, rel_j=objects, rel_axis=axes,
        image=np.concatenate(images) if images else None,
    )


_ALL_PAIRS = [[(i, j) for i in range(n) for j in range(i + 1, n)] for n in range(4)]


class Calibration:
    """The empirical CDF of real layouts' totals per bucket, with exponential tails beyond the
    lowest and the highest: ``score(T)`` is 100 x the share of real layouts less plausible."""

    def __init__(self, offsets: Int64Array, values: Float64Array):
        self.tables: list[tuple[Float64Array, Float64Array, float, float] | None] = []
        for b in range(offsets.size - 1):
            v = np.sort(values[offsets[b]:offsets[b + 1]])
            v = v[np.isfinite(v)]
            if v.size == 0:
                self.tables.append(None)
                continue
            n = v.size
            unique, first, counts = np.unique(v, return_index=True, return_counts=True)
            rank = (first + counts / 2) / n  # mid-rank of ties
            decile = max(1, n // 10)
            # Exponential tails through the outermost value and the decile next to it.
            fall = max(math.log(decile * 2), 1.0)
            low_tau = max(float(v[min(decile, n - 1)] - v[0]), 1e-3) / fall
            high_tau = max(float(v[-1] - v[max(n - 1 - decile, 0)]), 1e-3) / fall
            self.tables.append((unique, rank, low_tau, high_tau))
        # Buckets without a table borrow the nearest one of their kind (the lower one first),
        # else of the other kind.
        known = [b for b, t in enumerate(self.tables) if t is not None]

        def nearest(b: int) -> int:
            same_kind = [k for k in known if k // CDF_BUCKETS == b // CDF_BUCKETS] or known
            return min(same_kind, key=lambda k: (abs(k % CDF_BUCKETS - b % CDF_BUCKETS), k)) if known else -1

        self.source = [nearest(b) for b in range(len(self.tables))]

    def score(self, totals: Float64Array, buckets: Int64Array) -> Float64Array:
        out = np.zeros(totals.shape)
        for b in np.unique(buckets):
            source = self.source[int(b)] if 0 <= b < len(self.source) else -1
            table = self.tables[source] if source >= 0 else None
            rows = buckets == b
            t = totals[rows]
            if table is None:  # a bank too small to calibrate: a total of 0 is typical, so 50
                out[rows] = 100.0 / (1.0 + np.exp(-np.clip(t, -500, 500) / UNCALIBRATED_SCALE))
                continue
            unique, rank, low_tau, high_tau = table
            first, last = rank[0], 1.0 - rank[-1] if unique.size > 1 else rank[0]
            with np.errstate(over="ignore", invalid="ignore"):
                value = np.interp(t, unique, rank)
                below = first * np.exp(np.minimum(t - unique[0], 0.0) / low_tau)
                above = 1.0 - last * np.exp(-np.maximum(t - unique[-1], 0.0) / high_tau)
            value = np.where(t < unique[0], below, np.where(t > unique[-1], above, value))
            out[rows] = np.where(np.isfinite(t), 100.0 * value, np.where(t > 0, 100.0, 0.0))
        return out


def build_model(
    category: Int64Array, boxes: NDArray[Any], image: Int64Array, pair_a: Int64Array, pair_b: Int64Array,
    supercategory: Int64Array, rng: np.random.Generator,
) -> LayoutModel:
    """Everything CLIS-L v2 reads of a bank (``LayoutModel.build_densities``), with the CDF
    tables of real sub-layouts scored leaving their own image out."""
    boxes = np.asarray(boxes, dtype=np.float64)
    model, object_images, pair_images = LayoutModel.build_densities(
        category, boxes, image, pair_a, pair_b, supercategory, rng
    )
    batch, buckets = calibration_batch(category, boxes, image, rng)
    terms = layout_terms(model, batch, object_images, pair_images)
    # The same real sub-layouts twice: as they are, and with the relations their offsets show.
    related = buckets > 0
    totals = np.concatenate([without_relations(terms), terms.total[related]])
    buckets = np.concatenate([buckets, buckets[related] + CDF_BUCKETS])
    order = np.lexsort((totals, buckets))
    counts = np.bincount(buckets, minlength=2 * CDF_BUCKETS)
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    return LayoutModel(model.objects, model.pairs, model.supercategory, offsets, totals[order])



"""CLIS-L: how much a layout looks like real layouts of the same categories (0-100).

Two methods (``LayoutScorer(bank, method=...)``, ``--clis-l-method``):

- ``v2``, the default: the layout's terms as densities learned from the bank
  (``acp.score.density``), its total mapped to 100 x the share of real bank layouts that are
  less plausible (``density.Calibration``). Method ``density``; a pair's detail holds its terms
  in log units (``objects``: the mean of its two objects', ``pair``, ``relation``,
  ``assignment``) and its score as a two-object layout. A layout none of whose names the bank
  knows gets the reference-free sanity check below, as in the paper's method; a degenerate box
  makes the whole layout score 0 (method ``degenerate``).
- ``paper``: the published formula, described in the rest of this docstring.

``score_many`` / ``score_layouts`` score a batch in one vectorised pass, with the same results
as ``score`` / ``score_layout`` one by one.

For every pair of objects of a plan, the real pairs of the same categories are read from the
bank (``acp.score.bank``) and each is compared with the plan's pair on three published terms.
Notation: a box is normalised ``[x, y, w, h]``; ``c`` its centre; ``diag`` its diagonal.

- ``sim(a, b) = min(a', b') / max(a', b')`` with ``a' = max(a, 1e-6)``: the paper's
  ``1 - |a - b| / max(a, b)``, which is 1 when both are (near) 0; the floor replaces its 1e-10
  guard, which is below the float32 noise of a bank;
- ``penalty(s) = s - max(0, 1 - s / t)`` with ``t = 0.03``: the published linear penalty,
  which maps ``[0, t)`` onto ``[-1, t)`` and leaves larger values alone.

Terms of a plan pair (subject ``s``, object ``o``) against a reference pair ``(s', o')``:

- size: ``penalty(sim(area_s / area_o, area_s' / area_o'))``;
- distance: ``w * iou + (1 - w) * rel`` with ``iou = penalty(sim(IoU(s, o), IoU(s', o')))``
  and ``rel = penalty(sim(d(s, o), d(s', o')))``, ``d = |c_o - c_s| / mean(diag_s, diag_o)``;
  ``w = 0.2`` if ``iou > 0.95``, else ``0.8`` if ``rel > 0.95``, else ``0.5`` (the published
  balance: agreement on one term is cheap, so the other decides). The paper's code computes
  ``rel`` from the prediction against itself and then overwrites it with the IoU term, so its
  distance never counts the centre distance; here it does;
- direction: with ``u``, ``r`` the unit vectors from subject to object centre in the plan and
  in the reference, ``cos = u_y r_y + |u_x r_x|`` (mirror-symmetric: the better of ``r`` and
  its mirror ``(-r_x, r_y)``), except for a relation naming left or right, where the reference
  is mirrored onto the side the predicate names and not mirrored back:
  ``cos = sigma u_x |r_x| + u_y r_y``, ``sigma = +1`` for "left of", ``-1`` for "right of"
  (a COCO bank carries no predicates, and a mirrored real image is still a real layout).
  ``direction = penalty((1 + cos) / 2)``; 1 when both pairs are concentric, 0 when one is;
- reference score ``= (0.5 size + 1.0 distance + 0.8 direction) / 2.3``, in ``[-1, 1]``.
  When subject and object share a category, the reference is also read the other way round
  (``s'`` and ``o'`` swapped: size ratio inverted, ``r`` negated) and the better read counts.

Pair score: ``100 * clip(q, 0, 1)`` where ``q`` is the ``k``-th best reference score (0-based),
``k = floor(n * (100 - P) / 100)``, ``P = 98``: as published (``index = n // 50``), a high
percentile that tolerates a few freak references. Plan score: the confidence-weighted mean of
its pair scores, with pair confidence ``w_s * w_o * min(1, n / 20)``; ``w`` is how well a plan
category matched a bank category: 1 exact (``category_key``: case, plural), 0.9 through the
synonym table (``canonical_key``), the cosine similarity through ``--embed-model`` (when at
least 0.6, the paper's threshold). Unlike the paper, the match weight does not scale the terms
themselves: a well-shaped layout of loosely matched names is not a worse layout, only a less
certain score.

Back-offs, each labelled in the pair's ``method``:

- ``priors``: no reference pair, but the bank has boxes of the category: each object against
  its category's boxes with ``size = sim(area, area')``, ``aspect = sim(w/h, w'/h')``,
  ``position = max(0, 1 - 2 |c - c'|)``, reference score their mean, the same percentile;
  pair score the mean over its objects, confidence ``0.5 * mean_i(w_i * min(1, n_i / 20))``;
- ``sanity``: no bank, or neither category in it: a reference-free check. Per object
  ``frame * size`` (fraction of the box inside the frame; 1 for an area within
  ``[0.0025, 0.8]``, falling linearly to 0 at area 0 and at area 1); per pair that times
  ``1 - max(0, IoU - 0.5) / 0.5``. Confidence 0.1 when a bank was given, so any evidence
  from the bank outweighs it;
- ``degenerate``: a box with a non-finite value or a side ``<= 0`` scores 0 with confidence 1
  (the paper's code divides by zero here); it never raises.

A plan with one object is scored by that object's priors (or sanity check); a plan with none
scores 0 (method ``empty``). All references of all pairs of a plan are scored in one numpy
pass (``reference_scores``); Python loops only over the plan's pairs, never over references.
``tests/clis_oracle.py`` holds the same formula one reference at a time, for tests and benchmarks.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray

from acp.boxes import iou_aligned
from acp.errors import InputError, MissingDependencyError, one_line
from acp.names import canonical_key, category_key
from acp.pretrained import load_pretrained, loading
from acp.schema import ScenePlan
from acp.score import density, likelihood
from acp.score.bank import ZERO, Bank

WEIGHTS = (0.5, 1.0, 0.8)  # size, distance, direction
PENALTY_THRESHOLD = 0.03
PERCENTILE = 98.0
MIN_SUPPORT = 20  # references at which a pair's confidence saturates
SYNONYM_WEIGHT = 0.9
EMBED_THRESHOLD = 0.6
PRIOR_CONFIDENCE = 0.5
SANITY_CONFIDENCE = 0.1
SANITY_AREA = (0.0025, 0.8)
SANITY_MAX_IOU = 0.5

Method = Literal["density", "pairs", "priors", "sanity", "degenerate", "empty"]
ScoringMethod = Literal["v3", "v2", "paper"]
SCORING_METHODS: tuple[ScoringMethod, ...] = ("v3", "v2", "paper")
Embedder = Callable[[list[str]], NDArray[np.floating[Any]]]


@dataclass(frozen=True)
class PairScore:
    """CLIS-L of one object pair (or of a lone object, ``object is None``)."""

    subject: int
    object: int | None
    categories: tuple[str, ...]
    predicate: str | None
    method: Method
    score: float  # 0-100
    confidence: float
    references: int
    matched: tuple[str | None, ...] = ()  # bank categories the names matched
    match: tuple[str, ...] = ()  # how: exact, synonym, embedding or none
    terms: dict[str, float] = field(default_factory=dict)  # chosen reference's, x100; < 0: penalty

    def to_dict(self) -> dict[str, Any]:
        return {
            "subject": self.subject,
            "object": self.object,
            "categories": list(self.categories),
            "predicate": self.predicate,
            "method": self.method,
            "score": round(self.score, 3),
            "confidence": round(self.confidence, 4),
            "references": self.references,
            "matched": list(self.matched),
            "match": list(self.match),
            "terms": {k: round(v, 3) for k, v in self.terms.items()},
        }

    def to_json(self) -> str:
        """``json.dumps(self.to_dict())``, compact and not ASCII-escaped, written directly: it is
        most of ``acp score layouts``' output (a non-finite number is written null)."""
        terms = ",".join(f"{_text(k)}:{number_text(v, 3)}" for k, v in self.terms.items())
        return (
            f'{{"subject":{self.subject},"object":{_json(self.object)},'
            f'"categories":[{_texts(self.categories)}],"predicate":{_json(self.predicate)},'
            f'"method":"{self.method}","score":{number_text(self.score, 3)},'
            f'"confidence":{number_text(self.confidence, 4)},"references":{self.references},'
            f'"matched":[{_texts(self.matched)}],"match":[{_texts(self.match)}],"terms":{{{terms}}}}}'
        )


@dataclass(frozen=True)
class LayoutScore:
    """CLIS-L of a layout: ``score`` 0-100, how it was reached, and the per-pair detail."""

    score: float
    method: Method
    confidence: float
    pairs: list[PairScore]

    @property
    def reference_free(self) -> bool:
        """True when no bank evidence went in: a sanity check, not CLIS-L proper. (A layout of
        degenerate boxes is not: it scores 0 with or without a bank, and that 0 counts.)"""
        return self.method in ("sanity", "empty")

    def to_dict(self) -> dict[str, Any]:
        return {
            "score": round(self.score, 3),
            "method": self.method,
            "reference_free": self.reference_free,
            "confidence": round(self.confidence, 4),
            "pairs": [p.to_dict() for p in self.pairs],
        }

    def to_json(self) -> str:
        """``json.dumps(self.to_dict())``, compact, as ``PairScore.to_json``."""
        return (
            f'{{"score":{number_text(self.score, 3)},"method":"{self.method}",'
            f'"reference_free":{"true" if self.reference_free else "false"},'
            f'"confidence":{number_text(self.confidence, 4)},'
            f'"pairs":[{",".join(p.to_json() for p in self.pairs)}]}}'
        )


@functools.lru_cache(maxsize=1 << 16)  # names and predicates repeat from plan to plan
def _text(value: str) -> str:
    return json.dumps(value, ensure_ascii=False)


def _json(value: str | int | None) -> str:
    return "null" if value is None else str(value) if isinstance(value, int) else _text(value)


def _texts(values: Sequence[str | None]) -> str:
    return ",".join("null" if v is None else _text(v) for v in values)


def number_text(value: float, digits: int) -> str:
    """``value`` to ``digits`` decimals: the decimal ``round(value, digits)`` gives (both round
    the exact binary value correctly), written three times faster than its ``repr``."""
    if not math.isfinite(value):
        return "null"
    return f"{value:.3f}" if digits == 3 else f"{value:.4f}"


@dataclass(frozen=True)
class _Match:
    category: int | None
    weight: float
    how: str


def penalty(score: Any, threshold: float = PENALTY_THRESHOLD) -> Any:
    """The published linear penalty: ``[0, t)`` onto ``[-1, t)``, identity above ``t``.

    ``min(s, s (1 + 1/t) - 1)`` equals ``s - max(0, 1 - s/t)`` in one operation fewer."""
    return np.minimum(score, score * (1.0 + 1.0 / threshold) - 1.0)


def relation_sign(predicate: str | None) -> int:
    """+1 for a "left" relation (subject left of object), -1 for "right", 0 otherwise."""
    if not predicate:
        return 0
    words = predicate.lower()
    left, right = "left" in words, "right" in words
    return 1 if left and not right else -1 if right and not left else 0


def _kth_best(scores: NDArray[Any], percentile: float) -> int:
    """Row of the ``floor(n * (100 - percentile) / 100)``-th best score (0-based)."""
    k = int(scores.size * (100.0 - percentile) / 100.0)
    if k == 0:
        return int(np.argmax(scores))
    return int(np.argpartition(scores, scores.size - 1 - k)[scores.size - 1 - k])


def _valid_box(box: Sequence[float] | NDArray[np.float64]) -> bool:
    x, y, w, h = box
    return math.isfinite(x) and math.isfinite(y) and math.isfinite(w) and math.isfinite(h) and w > 0 and h > 0


@dataclass(frozen=True)
class PairQuery:
    """A plan pair, ready to be scored against bank ``rows`` (its side of every term)."""

    rows: slice
    log_ratio: float  # log(area_s / area_o)
    iou: float  # floored at ZERO, as the bank's
    rel_distance: float  # likewise
    across: float  # |u_x| (mirror-symmetric) or sigma * u_x (left/right): cos = across |r_x| + ...
    uy: float  # ... + u_y r_y
    concentric: bool
    same_category: bool

    @classmethod
    def of(
        cls, rows: slice, subject: NDArray[np.float64], obj: NDArray[np.float64], sign: int, same: bool
    ) -> PairQuery:
        sx, sy, sw, sh = subject.tolist()
        ox, oy, ow, oh = obj.tolist()
        ratio, iou = (sw * sh) / (ow * oh), float(iou_aligned(subject, obj))
        vx, vy = (ox + ow / 2) - (sx + sw / 2), (oy + oh / 2) - (sy + sh / 2)
        distance = math.hypot(vx, vy) / ((math.hypot(sw, sh) + math.hypot(ow, oh)) / 2)
        length = math.hypot(vx, vy)
        concentric = length <= ZERO
        ux, uy = (0.0, 0.0) if concentric else (vx / length, vy / length)
        return cls(
            rows, math.log(ratio), max(iou, ZERO), max(distance, ZERO),
            sign * ux if sign else abs(ux), uy, concentric, same,
        )


CHUNK = 1 << 20  # references scored in one go at most: bounds the temporaries (~100 MB)
_F32 = np.float32


def reference_scores(
    bank: Bank, queries: Sequence[PairQuery], percentile: float = PERCENTILE
) -> list[tuple[float, dict[str, float]]]:
    """For each query: the score of its ``k``-th best reference in ``[-1, 1]`` and that
    reference's terms. All references of all queries (up to ``CHUNK``) in one numpy pass."""
    results: list[tuple[float, dict[str, float]]] = []
    group: list[PairQuery] = []
    size = 0
    for query in queries:
        n = query.rows.stop - query.rows.start
        if group and size + n > CHUNK:
            results += _score_group(bank, group, percentile)
            group, size = [], 0
        group.append(query)
        size += n
    if group:
        results += _score_group(bank, group, percentile)
    return results


def _score_group(
    bank: Bank, queries: list[PairQuery], percentile: float
) -> list[tuple[float, dict[str, float]]]:
    f = bank.pair_features
    counts = [q.rows.stop - q.rows.start for q in queries]
    single = len(queries) == 1

    def take(array: NDArray[Any]) -> NDArray[Any]:
        return array[queries[0].rows] if single else np.concatenate([array[q.rows] for q in queries])

    def spread(values: list[float]) -> Any:
        return _F32(values[0]) if single else np.repeat(np.asarray(values, dtype=_F32), counts)

    log_ratio, concentric = take(f.log_ratio), take(f.concentric)
    plan_ratio = spread([q.log_ratio for q in queries])
    size = penalty(np.exp(-np.abs(plan_ratio - log_ratio)))
    iou_r, rel_r = take(f.iou), take(f.rel_distance)
    plan_iou, plan_rel = spread([q.iou for q in queries]), spread([q.rel_distance for q in queries])
    iou = penalty(np.minimum(plan_iou, iou_r) / np.maximum(plan_iou, iou_r))
    rel = penalty(np.minimum(plan_rel, rel_r) / np.maximum(plan_rel, rel_r))
    w = np.where(iou > 0.95, _F32(0.2), np.where(rel > 0.95, _F32(0.8), _F32(0.5)))
    distance = w * (iou - rel) + rel
    across = np.abs(take(f.ux)) * spread([q.across for q in queries])
    along = take(f.uy) * spread([q.uy for q in queries])
    ws, wd, wr = (_F32(v / sum(WEIGHTS)) for v in WEIGHTS)

    def direction_of(cos: NDArray[Any]) -> NDArray[Any]:
        return np.where(concentric, _F32(0.0), penalty((cos + 1.0) * 0.5))

    direction = direction_of(across + along)
    total = ws * size + wd * distance + wr * direction
    swapped_size = None
    if any(q.same_category for q in queries):
        # The reference read the other way round: size ratio inverted, direction negated.
        swapped_size = penalty(np.exp(-np.abs(plan_ratio + log_ratio)))
        swapped_direction = direction_of(across - along)
        swapped = ws * swapped_size + wd * distance + wr * swapped_direction
        better = swapped > total
        if not single:
            better &= np.repeat(np.array([q.same_category for q in queries]), counts)
        total = np.where(better, swapped, total)
        size_read = np.where(better, swapped_size, size)
        direction = np.where(better, swapped_direction, direction)
    else:
        size_read = size
    offsets = np.concatenate([[0], np.cumsum(counts)])
    results = []
    for k, query in enumerate(queries):
        seg = slice(int(offsets[k]), int(offsets[k + 1]))
        if query.concentric:  # direction 1 against concentric references, 0 against the rest
            seg_direction = concentric[seg].astype(_F32)
            seg_size = size[seg]
            if query.same_category and swapped_size is not None:
                seg_size = np.maximum(seg_size, swapped_size[seg])
            seg_total = ws * seg_size + wd * distance[seg] + wr * seg_direction
        else:
            seg_total, seg_size, seg_direction = total[seg], size_read[seg], direction[seg]
        best = _kth_best(seg_total, percentile)
        terms = {
            "size": 100.0 * float(seg_size[best]),
            "distance": 100.0 * float(distance[seg][best]),
            "direction": 100.0 * float(seg_direction[best]),
        }
        results.append((float(seg_total[best]), terms))
    return results


def prior_reference_scores(
    bank: Bank, rows: slice, box: NDArray[np.float64]
) -> dict[str, NDArray[np.float64]]:
    """Reference scores and terms of one plan box against its category's bank boxes ``rows``."""
    f = bank.prior_features
    size = np.exp(-np.abs(math.log(box[2] * box[3]) - f.log_area[rows]))
    aspect = np.exp(-np.abs(math.log(box[2] / box[3]) - f.log_aspect[rows]))
    shift = np.hypot((box[0] + box[2] / 2) - f.cx[rows], (box[1] + box[3] / 2) - f.cy[rows])
    position = np.maximum(0.0, 1.0 - 2.0 * shift)
    return {"total": (size + aspect + position) / 3.0, "size": size, "aspect": aspect, "position": position}


def sanity_object(box: NDArray[np.float64]) -> float:
    """Reference-free object term: fraction inside the frame times size plausibility, 0-1."""
    x0, y0, w, h = (float(v) for v in box)
    inside_w = max(0.0, min(x0 + w, 1.0) - max(x0, 0.0))
    inside_h = max(0.0, min(y0 + h, 1.0) - max(y0, 0.0))
    frame = inside_w * inside_h / (w * h)
    area = w * h
    low, high = SANITY_AREA
    size = area / low if area < low else (1.0 - area) / (1.0 - high) if area > high else 1.0
    return frame * max(0.0, min(1.0, size))


def sanity_pair(s: NDArray[np.float64], o: NDArray[np.float64]) -> float:
    """Reference-free pair term, 0-1: the objects' terms, averaged, times an overlap penalty."""
    overlap = 1.0 - max(0.0, float(iou_aligned(s, o)) - SANITY_MAX_IOU) / (1.0 - SANITY_MAX_IOU)
    return overlap * (sanity_object(s) + sanity_object(o)) / 2


def _clip100(value: float) -> float:
    return 100.0 * min(1.0, max(0.0, value)) if math.isfinite(value) or value > 0 else 0.0


def sentence_transformer_embedder(model: str, *, progress: bool = False) -> Embedder:
    """An embedder from a sentence-transformers folder or hub id (normalised embeddings);
    ``progress``: the status line of ``acp.pretrained.loading``."""
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError:
        raise MissingDependencyError(
            f"--embed-model {model} needs sentence-transformers; install it with "
            "`pip install sentence-transformers`"
        ) from None
    with loading("--embed-model", model, progress=progress):
        try:
            encoder = load_pretrained(SentenceTransformer, model, option="--embed-model")
        except (OSError, ValueError) as error:
            raise InputError(f"--embed-model {model}: cannot load ({one_line(str(error))})") from None

    def embed(texts: list[str]) -> NDArray[np.floating[Any]]:
        return np.asarray(encoder.encode(texts, normalize_embeddings=True))

    return embed


class LayoutScorer:
    """CLIS-L against a bank (or, with ``bank=None``, the labelled reference-free sanity score).

    ``embedder`` maps names to vectors (e.g. ``sentence_transformer_embedder(...)``) and is
    consulted for names that match no bank category exactly or through synonyms.
    """

    def __init__(
        self,
        bank: Bank | None,
        *,
        embedder: Embedder | None = None,
        method: ScoringMethod = "v3",
        percentile: float = PERCENTILE,
        embed_threshold: float = EMBED_THRESHOLD,
    ):
        if not 0.0 <= percentile <= 100.0:
            raise InputError(f"percentile must be within [0, 100], got {percentile:g}")
        if method not in SCORING_METHODS:
            raise InputError(f"CLIS-L method {method!r}: expected one of {', '.join(SCORING_METHODS)}")
        self.bank = bank
        self.method = method
        self._calibration = (
            density.Calibration(bank.model.cdf_offsets, bank.model.cdf_values) if bank else None
        )
        self._likelihood = (
            density.Calibration(bank.likelihood.cdf_offsets, bank.likelihood.cdf_values) if bank else None
        )
        self.embedder = embedder
        self.percentile = percentile
        self.embed_threshold = embed_threshold
        self._matches: dict[str, _Match] = {}
        self._bank_vectors: NDArray[np.float64] | None = None

    # -- category matching ---------------------------------------------------------------
    def match(self, name: str) -> _Match:
        """The bank category a plan name refers to, with a weight in ``(0, 1]``."""
        if name in self._matches:
            return self._matches[name]
        result = _Match(None, 0.0, "none")
        bank = self.bank
        if bank is not None:
            exact = bank.category_by_alias(category_key(name))
            if exact is not None:
                result = _Match(exact, 1.0, "exact")
            else:
                synonym = bank.category_by_key(canonical_key(name))
                if synonym is not None:
                    result = _Match(synonym, SYNONYM_WEIGHT, "synonym")
                elif self.embedder is not None and bank.categories:
                    result = self._embedding_match(name)
        self._matches[name] = result
        return result

    def _embedding_match(self, name: str) -> _Match:
        assert self.bank is not None and self.embedder is not None
        if self._bank_vectors is None:
            self._bank_vectors = _unit(self.embedder([c.key for c in self.bank.categories]))
        query = _unit(self.embedder([category_key(name)]))[0]
        similarity = self._bank_vectors @ query
        best = int(np.argmax(similarity))
        if similarity[best] >= self.embed_threshold:
            return _Match(best, float(similarity[best]), "embedding")
        return _Match(None, 0.0, "none")

    # -- scoring -------------------------------------------------------------------------
    def score(self, plan: ScenePlan) -> LayoutScore:
        """CLIS-L of a plan: its objects, pairs and relations (the per-layout call)."""
        return self.score_many([plan])[0]

    def score_many(self, plans: Sequence[ScenePlan]) -> list[LayoutScore]:
        """CLIS-L of many plans in one vectorised pass: the same scores as ``score`` one by one."""
        if self.method == "paper" or self.bank is None:
            return self.score_layouts([_plan_layout(plan) for plan in plans])
        return self._density_layouts([_plan_layout(plan) for plan in plans])  # shapes hold by the schema

    def score_layout(
        self,
        categories: Sequence[str],
        boxes: ArrayLike,
        relations: Sequence[tuple[int, int, str]] = (),
        ids: Sequence[int] | None = None,
    ) -> LayoutScore:
        """CLIS-L of normalised xywh ``boxes`` with their ``categories``.

        ``relations`` are ``(subject_id, object_id, predicate)``; ids default to positions.
        """
        return self.score_layouts([(categories, boxes, relations, ids)])[0]

    def score_layouts(self, layouts: Sequence[LayoutInput]) -> list[LayoutScore]:
        """``score_layout`` of each ``(categories, boxes, relations, ids)``, in one pass."""
        checked = [_checked(*layout) for layout in layouts]
        if self.method == "paper" or self.bank is None:
            return [self._paper_layout(c, np.asarray(b, dtype=np.float64).reshape(-1, 4), r, i)
                    for c, b, r, i in checked]
        return self._density_layouts(checked)

    # -- v2 ------------------------------------------------------------------------------
    def _density_layouts(self, layouts: list[_Layout]) -> list[LayoutScore]:
        assert self.bank is not None and self._calibration is not None and self._likelihood is not None
        results: list[LayoutScore | None] = [None] * len(layouts)
        todo: list[tuple[int, list[tuple[int, int, int | None, str]]]] = []
        inputs: list[density.LayoutRows] = []
        for k, (categories, boxes, relations, ids) in enumerate(layouts):
            if not categories:
                results[k] = LayoutScore(0.0, "empty", 0.0, [])
                continue
            if not all(_valid_box(box) for box in boxes):  # scores 0, as a layout: one unusable box is enough
                pairs = [
                    PairScore(ids[i], None, (categories[i],), None, "degenerate", 0.0, 1.0, 0)
                    for i, box in enumerate(boxes) if not _valid_box(box)
                ]
                results[k] = LayoutScore(0.0, "degenerate", 1.0, pairs)
                continue
            position = {object_id: i for i, object_id in enumerate(ids)}
            stated = [
                (position[subject], position[obj], density.relation_axis(predicate), predicate)
                for subject, obj, predicate in relations
                if subject in position and obj in position and subject != obj
            ]
            category = [self._category(name) for name in categories]
            if max(category) < 0:  # nothing the bank knows: the reference-free check, as before
                array = np.asarray(boxes, dtype=np.float64)
                results[k] = self._paper_layout(categories, array, relations, ids)
                continue
            inputs.append((category, boxes, [(s, o, a) for s, o, a, _ in stated if a is not None]))
            todo.append((k, stated))
        if todo:
            related = [{(min(s, o), max(s, o)) for s, o, _, _ in stated} for _, stated in todo]
            batch = density.make_batch(inputs, related=related)
            n_objects = np.bincount(batch.layout, minlength=batch.layouts)
            stated_any = np.bincount(batch.layout[batch.rel_i], minlength=batch.layouts) > 0
            buckets = density.bucket_of(n_objects, stated_any)
            if self.method == "v3":
                model = self.bank.likelihood
                stats = likelihood.statistics(model, batch)
                terms: density.Terms | likelihood.Statistics = stats
                scores = self._likelihood.score(likelihood.logit(stats.layouts, model.weights), buckets)
                pair_scores = self._likelihood.score(
                    likelihood.logit(stats.pairs, model.weights),
                    density.bucket_of(np.full(batch.pair_i.size, 2), stats.pair_relation != 0))
            else:
                terms = density.layout_terms(self.bank.model, batch)
                scores = self._calibration.score(terms.total, buckets)
                pair_scores = self._calibration.score(
                    density.pair_totals(terms, batch),
                    density.bucket_of(np.full(batch.pair_i.size, 2), terms.pair_relation != 0),
                )
            starts = np.concatenate([[0], np.cumsum(n_objects)]).tolist()
            pair_bounds = np.searchsorted(batch.layout[batch.pair_i], np.arange(batch.layouts + 1)).tolist()
            model = self.bank.likelihood if self.method == "v3" else self.bank.model
            # Python lists, read element by element below: numpy scalars cost more one at a time.
            rows = _Rows(
                pair_i=batch.pair_i.tolist(), pair_j=batch.pair_j.tolist(),
                object_terms=terms.object_terms.tolist(), pair_terms=terms.pair_terms.tolist(),
                pair_relation=terms.pair_relation.tolist(),
                pair_assignment=terms.pair_assignment.tolist(),
                pair_scores=pair_scores.tolist(),
                object_references=_group_sizes(model.objects[0], batch.category,
                                               batch.category >= 0).tolist(),
                pair_references=_pair_sizes(model, batch).tolist(),
            )
            scores_list = scores.tolist()
            for slot, (k, stated) in enumerate(todo):
                categories, _, _, ids = layouts[k]
                results[k] = self._density_result(
                    categories, stated, ids, rows, starts[slot],
                    range(pair_bounds[slot], pair_bounds[slot + 1]), scores_list[slot],
                )
        return [r for r in results if r is not None]

    def _category(self, name: str) -> int:
        found = self.match(name).category
        return -1 if found is None else found

    def _density_result(
        self, categories: Sequence[str], stated: list[tuple[int, int, int | None, str]], ids: list[int],
        rows: _Rows, start: int, pair_rows: range, score: float,
    ) -> LayoutScore:
        assert self.bank is not None
        matches = [self.match(name) for name in categories]
        matched = [self.bank.categories[m.category].key if m.category is not None else None for m in matches]
        predicates = {(min(s, o), max(s, o)): (s, o, p) for s, o, _, p in reversed(stated)}
        pairs = []
        if len(categories) == 1:
            pairs.append(PairScore(
                ids[0], None, (categories[0],), None, "density", score, matches[0].weight,
                rows.object_references[start], (matched[0],), (matches[0].how,),
                {"object": rows.object_terms[start]},
            ))
        for row in pair_rows:
            i, j = rows.pair_i[row] - start, rows.pair_j[row] - start
            s, o, predicate = predicates.get((i, j), (i, j, None))
            terms = {
                "objects": (rows.object_terms[start + i] + rows.object_terms[start + j]) / 2,
                "pair": rows.pair_terms[row],
                "relation": rows.pair_relation[row],
                "assignment": rows.pair_assignment[row],
            }
            pairs.append(PairScore(
                ids[s], ids[o], (categories[s], categories[o]), predicate, "density", rows.pair_scores[row],
                matches[s].weight * matches[o].weight, rows.pair_references[row],
                (matched[s], matched[o]), (matches[s].how, matches[o].how), terms,
            ))
        confidence = sum(m.weight for m in matches) / len(matches)
        return LayoutScore(score, "density", confidence, pairs)

    # -- the paper's formula ---------------------------------------------------------------
    def _paper_layout(
        self,
        categories: Sequence[str],
        array: NDArray[np.float64],
        relations: Sequence[tuple[int, int, str]],
        ids: list[int],
    ) -> LayoutScore:
        """Every unordered pair of objects is scored; a relation between two objects makes its
        subject the pair's subject and its predicate the pair's predicate."""
        count = len(categories)
        if count == 0:
            return LayoutScore(0.0, "empty", 0.0, [])
        position = {object_id: k for k, object_id in enumerate(ids)}
        linked: dict[tuple[int, int], tuple[int, int, str | None]] = {}
        for subject, obj, predicate in relations:
            if subject not in position or obj not in position or subject == obj:
                continue
            i, j = position[subject], position[obj]
            key = (min(i, j), max(i, j))
            # A left/right relation fixes the direction term, so it wins over any other one.
            if key not in linked or (relation_sign(predicate) and not relation_sign(linked[key][2])):
                linked[key] = (i, j, predicate)
        pairs: list[PairScore] = []
        if count == 1:
            pairs.append(self._lone(array[0], categories[0], ids[0]))
        queries: list[tuple[int, PairQuery]] = []
        for i in range(count):
            for j in range(i + 1, count):
                s, o, named = linked.get((i, j), (i, j, None))
                pair, query = self._pair(array, categories, ids, s, o, named)
                if query is not None:
                    queries.append((len(pairs), query))
                pairs.append(pair)
        if queries:
            assert self.bank is not None
            found = reference_scores(self.bank, [q for _, q in queries], self.percentile)
            for (slot, _), (value, terms) in zip(queries, found, strict=True):
                pairs[slot] = replace(pairs[slot], score=_clip100(value), terms=terms)
        weights = np.array([p.confidence for p in pairs])
        scores = np.array([p.score for p in pairs])
        total = float(weights @ scores / weights.sum()) if weights.sum() > 0 else float(scores.mean())
        methods = {p.method for p in pairs}
        method: Method = next(
            m for m in ("pairs", "priors", "sanity", "degenerate") if m in methods  # type: ignore[misc]
        )
        return LayoutScore(total, method, float(weights.mean()), pairs)

    def _pair(
        self,
        boxes: NDArray[np.float64],
        categories: Sequence[str],
        ids: list[int],
        s: int,
        o: int,
        predicate: str | None,
    ) -> tuple[PairScore, PairQuery | None]:
        """The pair's score, or a placeholder and the query that will give it."""
        names = (categories[s], categories[o])
        base: dict[str, Any] = {
            "subject": ids[s], "object": ids[o], "categories": names, "predicate": predicate
        }
        if not (_valid_box(boxes[s]) and _valid_box(boxes[o])):
            return PairScore(**base, method="degenerate", score=0.0, confidence=1.0, references=0), None
        bank = self.bank
        if bank is None:
            score = 100.0 * sanity_pair(boxes[s], boxes[o])
            return PairScore(**base, method="sanity", score=score, confidence=1.0, references=0), None
        ms, mo = self.match(names[0]), self.match(names[1])
        matched = tuple(bank.categories[m.category].key if m.category is not None else None for m in (ms, mo))
        base.update(matched=matched, match=(ms.how, mo.how))
        if ms.category is not None and mo.category is not None:
            a, b = ms.category, mo.category
            subject_box, object_box = boxes[s], boxes[o]
            sign = relation_sign(predicate)
            if a > b:  # the bank stores each pair with the lower category id first
                a, b = b, a
                subject_box, object_box = object_box, subject_box
                sign = -sign
            rows = bank.pair_rows(a, b)
            n = rows.stop - rows.start
            if n:
                query = PairQuery.of(rows, subject_box, object_box, sign, a == b)
                confidence = ms.weight * mo.weight * min(1.0, n / MIN_SUPPORT)
                pending = PairScore(**base, method="pairs", score=0.0, confidence=confidence, references=n)
                return pending, query
        priors = [self._prior(boxes[k], m) for k, m in ((s, ms), (o, mo))]
        known = [p for p in priors if p is not None]
        if not known:
            score = 100.0 * sanity_pair(boxes[s], boxes[o])
            return PairScore(
                **base, method="sanity", score=score, confidence=SANITY_CONFIDENCE, references=0
            ), None
        return PairScore(
            **base,
            method="priors",
            score=sum(p[0] for p in known) / len(known),
            confidence=PRIOR_CONFIDENCE * sum(p[1] for p in known) / 2,
            references=sum(p[2] for p in known),
            terms={f"{side}_prior": p[0] for side, p in zip(("subject", "object"), priors, strict=True) if p},
        ), None

    def _prior(self, box: NDArray[np.float64], match: _Match) -> tuple[float, float, int] | None:
        """(score 0-100, weight * support, references) of one box against its category's priors."""
        if self.bank is None or match.category is None:
            return None
        rows = self.bank.prior_rows(match.category)
        n = rows.stop - rows.start
        if n == 0:
            return None
        terms = prior_reference_scores(self.bank, rows, box)
        best = _kth_best(terms["total"], self.percentile)
        return _clip100(float(terms["total"][best])), match.weight * min(1.0, n / MIN_SUPPORT), n

    def _lone(self, box: NDArray[np.float64], name: str, object_id: int) -> PairScore:
        base: dict[str, Any] = {
            "subject": object_id, "object": None, "categories": (name,), "predicate": None
        }
        if not _valid_box(box):
            return PairScore(**base, method="degenerate", score=0.0, confidence=1.0, references=0)
        match = self.match(name)
        prior = self._prior(box, match)
        if prior is None:
            confidence = 1.0 if self.bank is None else SANITY_CONFIDENCE
            return PairScore(
                **base, method="sanity", score=100.0 * sanity_object(box), confidence=confidence, references=0
            )
        assert self.bank is not None and match.category is not None  # a prior implies both
        matched = (self.bank.categories[match.category].key,)
        return PairScore(
            **base, method="priors", score=prior[0], confidence=PRIOR_CONFIDENCE * prior[1],
            references=prior[2], matched=matched, match=(match.how,),
        )


@dataclass(frozen=True)
class _Rows:
    """What a batch's results read, row by row, as Python lists."""

    pair_i: list[int]
    pair_j: list[int]
    object_terms: list[float]
    pair_terms: list[float]
    pair_relation: list[float]
    pair_assignment: list[float]
    pair_scores: list[float]
    object_references: list[int]  # references of the finest group a box was read in
    pair_references: list[int]


def _group_sizes(
    level: density.Level, keys: NDArray[np.int64], known: NDArray[np.bool_]
) -> NDArray[np.int64]:
    """References of each key's group at ``level`` (0: unknown key, or no such group)."""
    group = level.lookup(np.maximum(keys, 0))
    sizes = np.where(group >= 0, level.count[np.maximum(group, 0)] if level.count.size else 0, 0)
    return np.where(known, sizes, 0).astype(np.int64)


def _pair_sizes(model: density.LayoutModel, batch: density.LayoutBatch) -> NDArray[np.int64]:
    a, b = batch.category[batch.pair_i], batch.category[batch.pair_j]
    keys = np.minimum(a, b) * model.categories + np.maximum(a, b)
    return _group_sizes(model.pairs[0], keys, (a >= 0) & (b >= 0))


LayoutInput = tuple[Sequence[str], ArrayLike, Sequence[tuple[int, int, str]], Sequence[int] | None]
# Categories, boxes (rows of 4 numbers), relations (subject id, object id, predicate), ids.
_Layout = tuple[list[str], Sequence[Sequence[float]], list[tuple[int, int, str]], list[int]]


def _checked(
    categories: Sequence[str], boxes: ArrayLike, relations: Sequence[tuple[int, int, str]] = (),
    ids: Sequence[int] | None = None,
) -> _Layout:
    count = len(categories)
    array = np.asarray(boxes, dtype=np.float64)
    if count == 0:
        array = array.reshape(0, 4) if array.size == 0 else array
    if array.shape != (count, 4):
        raise InputError(f"expected {count} boxes of 4 numbers for {count} categories, got {array.shape}")
    ids = list(ids) if ids is not None else list(range(count))
    return list(categories), array.tolist(), list(relations), ids


def _plan_layout(plan: ScenePlan) -> _Layout:
    return (
        [o.category for o in plan.objects],
        [o.bbox for o in plan.objects],
        [(r.subject, r.object, r.predicate) for r in plan.relations],
        [o.id for o in plan.objects],
    )


def _unit(vectors: NDArray[Any]) -> NDArray[np.float64]:
    array = np.atleast_2d(np.asarray(vectors, dtype=np.float64))
    norms = np.linalg.norm(array, axis=1, keepdims=True)
    return array / np.where(norms > 0, norms, 1.0)

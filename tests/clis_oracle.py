"""The paper's CLIS-L formula one reference at a time, in plain Python: the oracle that
``acp.score.layout``'s vectorised scorer is checked against (tests/test_clis_layout.py) and
timed against (bench/bench_clis.py). It reads the reference boxes, not the bank's precomputed
features."""

from __future__ import annotations

import math
from collections.abc import Sequence

from acp.score.bank import ZERO
from acp.score.layout import PENALTY_THRESHOLD, PERCENTILE, WEIGHTS


def clip100(value: float) -> float:
    """A 0-1 value as 0-100, clipped (what the scorer does to a pair's score)."""
    return 100.0 * min(1.0, max(0.0, value)) if math.isfinite(value) or value > 0 else 0.0


def _loop_similarity(a: float, b: float) -> float:
    a, b = max(a, ZERO), max(b, ZERO)
    return min(a, b) / max(a, b)


def _loop_penalty(score: float) -> float:
    return score - max(0.0, 1.0 - score / PENALTY_THRESHOLD)


def _loop_geometry(s: Sequence[float], o: Sequence[float]) -> tuple[float, float, float, float, float]:
    sx, sy, sw, sh = s
    ox, oy, ow, oh = o
    ix = max(0.0, min(sx + sw, ox + ow) - max(sx, ox))
    iy = max(0.0, min(sy + sh, oy + oh) - max(sy, oy))
    inter = ix * iy
    iou = inter / (sw * sh + ow * oh - inter)
    vx, vy = (ox + ow / 2) - (sx + sw / 2), (oy + oh / 2) - (sy + sh / 2)
    distance = math.hypot(vx, vy) / ((math.hypot(sw, sh) + math.hypot(ow, oh)) / 2)
    return (sw * sh) / (ow * oh), iou, distance, vx, vy


def loop_reference_score(
    subject: Sequence[float], obj: Sequence[float], ref_subject: Sequence[float], ref_object: Sequence[float],
    sign: int = 0,
) -> float:
    """One reference's score in ``[-1, 1]`` by the module's formula, without numpy."""
    ratio, iou_p, dist_p, vx, vy = _loop_geometry(subject, obj)
    ratio_r, iou_r, dist_r, rx, ry = _loop_geometry(ref_subject, ref_object)
    size = _loop_penalty(_loop_similarity(ratio, ratio_r))
    iou = _loop_penalty(_loop_similarity(iou_p, iou_r))
    rel = _loop_penalty(_loop_similarity(dist_p, dist_r))
    w = 0.2 if iou > 0.95 else 0.8 if rel > 0.95 else 0.5
    distance = w * iou + (1 - w) * rel
    plan_length, ref_length = math.hypot(vx, vy), math.hypot(rx, ry)
    if plan_length <= ZERO or ref_length <= ZERO:
        direction = 1.0 if plan_length <= ZERO and ref_length <= ZERO else 0.0
    else:
        if sign:
            rx = sign * abs(rx)  # mirrored onto the predicate's side
            cos = (vx * rx + vy * ry) / (plan_length * ref_length)
        else:
            cos = max(vx * rx + vy * ry, -vx * rx + vy * ry) / (plan_length * ref_length)
        direction = _loop_penalty((1 + cos) / 2)
    ws, wd, wr = WEIGHTS
    return (ws * size + wd * distance + wr * direction) / (ws + wd + wr)


def loop_pair_score(
    subject: Sequence[float],
    obj: Sequence[float],
    references: Sequence[tuple[Sequence[float], Sequence[float]]],
    sign: int = 0,
    same_category: bool = False,
    percentile: float = PERCENTILE,
) -> float:
    """Pair score 0-100 against ``references`` (subject box, object box), one at a time."""
    scores = []
    for ref_subject, ref_object in references:
        score = loop_reference_score(subject, obj, ref_subject, ref_object, sign)
        if same_category:
            score = max(score, loop_reference_score(subject, obj, ref_object, ref_subject, sign))
        scores.append(score)
    scores.sort(reverse=True)
    return clip100(scores[int(len(scores) * (100.0 - percentile) / 100.0)])

"""Box conversions: property tests (hypothesis) and fixed examples."""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from acp import boxes

unit = st.floats(min_value=0.0, max_value=0.9, allow_nan=False)
side = st.floats(min_value=0.01, max_value=0.1, allow_nan=False)
sizes = st.integers(min_value=8, max_value=4096)


@given(unit, unit, side, side)
def test_xywh_xyxy_round_trip(x, y, w, h):
    box = [x, y, w, h]
    assert np.allclose(boxes.xyxy_to_xywh(boxes.xywh_to_xyxy(box)), box)


@given(unit, unit, side, side, sizes, sizes)
def test_coco_round_trip(x, y, w, h, width, height):
    box = [x, y, w, h]
    pixels = boxes.plan_to_coco(box, width, height)
    assert np.allclose(boxes.coco_to_plan(pixels, width, height), box)
    assert np.allclose(pixels[2:] / [width, height], [w, h])


@given(unit, unit, side, side, sizes, sizes)
def test_sam_is_pixel_xyxy(x, y, w, h, width, height):
    sam = boxes.plan_to_sam([x, y, w, h], width, height)
    assert np.allclose(sam, [x * width, y * height, (x + w) * width, (y + h) * height])


@given(unit, unit, side, side)
def test_gligen_in_unit_square(x, y, w, h):
    g = boxes.plan_to_gligen([x, y, w, h])
    assert (g >= 0).all() and (g <= 1).all() and g[2] >= g[0] and g[3] >= g[1]


def test_batched_shapes():
    array = np.random.default_rng(0).uniform(0, 0.5, size=(3, 5, 4))
    assert boxes.xywh_to_xyxy(array).shape == (3, 5, 4)


def test_iou_matrix_values():
    a = [[0, 0, 2, 2]]
    b = [[1, 1, 2, 2], [5, 5, 1, 1], [0, 0, 2, 2], [0, 0, 0, 0]]
    assert np.allclose(boxes.iou_matrix(a, b), [[1 / 7, 0.0, 1.0, 0.0]])


def test_overlapping_pairs_matches_iou_matrix():
    rng = np.random.default_rng(1)
    xy = rng.uniform(0, 0.6, size=(20, 2))
    wh = rng.uniform(0.05, 0.4, size=(20, 2))
    b = np.concatenate([xy, wh], axis=1)
    full = boxes.iou_matrix(b, b)
    expected = {(i, j) for i in range(20) for j in range(i + 1, 20) if full[i, j] > 0.2}
    found = {(i, j) for i, j, _ in boxes.overlapping_pairs(b.tolist(), 0.2)}
    assert found == expected and expected

"""The one place where box formats meet.

- plan boxes: normalised ``[x, y, w, h]``, top-left origin, fractions of the frame;
- GLIGEN: normalised ``[x0, y0, x1, y1]``;
- COCO: pixel ``[x, y, w, h]``;
- SAM: pixel ``[x0, y0, x1, y1]``.

Every function accepts one box (a sequence of 4 numbers) or an ``(..., 4)`` array and returns
the same shape as a float64 numpy array; callers that need plain lists call ``.tolist()``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import ArrayLike, NDArray

Box = tuple[float, float, float, float]
FloatArray = NDArray[np.float64]


def _as_boxes(boxes: ArrayLike) -> FloatArray:
    array = np.asarray(boxes, dtype=np.float64)
    if array.shape == (0,):  # an empty list: no boxes (an image without labels), not a bad box
        return array.reshape(0, 4)
    if array.shape[-1:] != (4,):
        raise ValueError(f"boxes must have 4 values in the last axis, got shape {array.shape}")
    return array


def xywh_to_xyxy(boxes: ArrayLike) -> FloatArray:
    b = _as_boxes(boxes)
    return np.concatenate([b[..., :2], b[..., :2] + b[..., 2:]], axis=-1)


def xyxy_to_xywh(boxes: ArrayLike) -> FloatArray:
    b = _as_boxes(boxes)
    return np.concatenate([b[..., :2], b[..., 2:] - b[..., :2]], axis=-1)


def _scale(width: float, height: float) -> FloatArray:
    return np.array([width, height, width, height], dtype=np.float64)


def normalized_to_pixels(boxes: ArrayLike, width: float, height: float) -> FloatArray:
    """Scale normalised boxes (either layout) to pixels of a ``width`` x ``height`` image."""
    return _as_boxes(boxes) * _scale(width, height)


def pixels_to_normalized(boxes: ArrayLike, width: float, height: float) -> FloatArray:
    return _as_boxes(boxes) / _scale(width, height)


def plan_to_gligen(boxes: ArrayLike) -> FloatArray:
    """Plan xywh (normalised) to GLIGEN's normalised xyxy, clipped to the unit square."""
    return np.clip(xywh_to_xyxy(boxes), 0.0, 1.0)


def plan_to_coco(boxes: ArrayLike, width: int, height: int) -> FloatArray:
    """Plan xywh (normalised) to COCO pixel xywh."""
    return normalized_to_pixels(boxes, width, height)


def plan_to_sam(boxes: ArrayLike, width: int, height: int) -> FloatArray:
    """Plan xywh (normalised) to SAM's pixel xyxy."""
    return normalized_to_pixels(xywh_to_xyxy(boxes), width, height)


def coco_to_plan(boxes: ArrayLike, width: float, height: float) -> FloatArray:
    """COCO pixel xywh to plan xywh (normalised)."""
    return pixels_to_normalized(boxes, width, height)


def iou_matrix(a: ArrayLike, b: ArrayLike) -> FloatArray:
    """Pairwise IoU of xywh boxes ``a`` (N, 4) and ``b`` (M, 4); 0 where a union is empty."""
    return iou_aligned(np.atleast_2d(_as_boxes(a))[:, None, :], np.atleast_2d(_as_boxes(b))[None, :, :])


def overlapping_pairs(boxes: Sequence[Sequence[float]], max_iou: float) -> list[tuple[int, int, float]]:
    """Pairs ``(i, j, iou)`` with ``i < j`` whose IoU exceeds ``max_iou``.

    A spatial index (shapely's) prunes pairs whose boxes do not touch, so this stays cheap for
    the 30 boxes a plan may hold; the IoU is ``iou_aligned``'s, the one IoU of acp.
    """
    import shapely

    if len(boxes) < 2:
        return []
    xyxy = xywh_to_xyxy(boxes)
    polygons = shapely.box(xyxy[:, 0], xyxy[:, 1], xyxy[:, 2], xyxy[:, 3])
    tree = shapely.STRtree(polygons)
    left, right = tree.query(polygons, predicate="intersects")
    keep = left < right
    left, right = left[keep], right[keep]
    boxes_array = _as_boxes(boxes)
    iou = iou_aligned(boxes_array[left], boxes_array[right])
    return [
        (int(i), int(j), float(v))
        for i, j, v in zip(left, right, iou, strict=True)
        if v > max_iou
    ]


def coco_to_plan_sized(boxes: ArrayLike, widths: ArrayLike, heights: ArrayLike) -> FloatArray:
    """COCO pixel xywh ``(N, 4)`` to plan xywh, each box with its own image size ``(N,)``."""
    b = np.atleast_2d(_as_boxes(boxes))
    w = np.asarray(widths, dtype=np.float64).reshape(-1, 1)
    h = np.asarray(heights, dtype=np.float64).reshape(-1, 1)
    return b / np.concatenate([w, h, w, h], axis=1)


def iou_aligned(a: ArrayLike, b: ArrayLike) -> FloatArray:
    """IoU of aligned xywh boxes: ``a[..., i]`` with ``b[..., i]`` (broadcast); 0 where a union is empty."""
    xa = xywh_to_xyxy(a)
    xb = xywh_to_xyxy(b)
    lo = np.maximum(xa[..., :2], xb[..., :2])
    hi = np.minimum(xa[..., 2:], xb[..., 2:])
    inter = np.prod(np.clip(hi - lo, 0.0, None), axis=-1)
    area_a = np.prod(np.clip(xa[..., 2:] - xa[..., :2], 0.0, None), axis=-1)
    area_b = np.prod(np.clip(xb[..., 2:] - xb[..., :2], 0.0, None), axis=-1)
    union = area_a + area_b - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)

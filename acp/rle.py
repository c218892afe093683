"""COCO run-length masks decoded from input that may be hostile, in time linear in the mask.

pycocotools decodes an RLE without checking it: counts that add up to more than
``height x width`` write past its buffer, and a ``size`` of [200000, 200000] asks for 37 GiB.
``decode_rle`` checks everything first and decodes with numpy:

- ``size`` must be the ``[height, width]`` the caller expects (the image's), and at most
  ``max_pixels``;
- ``counts`` is the compressed string of COCO's format (at most one character per pixel plus
  one) or a list of integers (at most one per pixel plus one); every run length is >= 0 and
  they add up to ``height x width`` exactly.

Anything else is ``None``, never an exception: a caller draws or skips, and says so.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

MAX_PIXELS = 89_478_485  # acp.images.MAX_PIXELS: a mask is never larger than an image acp reads
_MAX_DIGITS = 12  # 5 bits a character: 60 bits, far past any count of a real mask


def _string_counts(text: str) -> NDArray[np.int64] | None:
    """The run lengths of COCO's compressed RLE string (pycocotools' ``rleFrString``): each
    count is written 5 bits a character (``+48``), low bits first, bit 0x20 meaning "more
    follows" and bit 0x10 of the last character its sign; counts from the third on are stored
    as the difference from the count two before."""
    try:
        raw = np.frombuffer(text.encode("ascii"), dtype=np.uint8).astype(np.int64) - 48
    except UnicodeEncodeError:
        return None
    if raw.size == 0 or raw.min() < 0 or raw.max() > 63 or raw[-1] & 0x20:
        return None
    ends = np.flatnonzero((raw & 0x20) == 0)  # the last character of each count
    starts = np.concatenate(([0], ends[:-1] + 1))
    lengths = ends - starts + 1
    if lengths.max() > _MAX_DIGITS:
        return None
    digit = np.arange(raw.size) - np.repeat(starts, lengths)
    values = np.add.reduceat((raw & 0x1F) << (5 * digit), starts)
    negative = (raw[ends] & 0x10) != 0
    values[negative] -= np.left_shift(1, 5 * lengths[negative])
    counts = values.copy()
    counts[1::2] = np.cumsum(values[1::2])  # index 3 adds index 1's count, 5 adds 3's, ...
    counts[2::2] = np.cumsum(values[2::2])
    return counts


def decode_rle(segmentation: Any, height: int, width: int, max_pixels: int = MAX_PIXELS
               ) -> NDArray[np.bool_] | None:
    """The ``height x width`` mask of a COCO RLE ``segmentation``, or ``None`` when it is not
    one of that size (see the module notes)."""
    if not isinstance(segmentation, dict):
        return None
    size, counts = segmentation.get("size"), segmentation.get("counts")
    if size != [height, width] or height <= 0 or width <= 0 or height * width > max_pixels:
        return None
    pixels = height * width
    if isinstance(counts, str):
        if len(counts) > pixels + 1:
            return None
        runs = _string_counts(counts)
    elif isinstance(counts, list) and len(counts) <= pixels + 1 and all(
            isinstance(c, int) and not isinstance(c, bool) and 0 <= c <= pixels for c in counts):
        runs = np.asarray(counts, dtype=np.int64)
    else:
        return None
    if runs is None or runs.size == 0 or runs.min() < 0 or int(runs.sum()) != pixels:
        return None
    values = np.arange(runs.size) % 2 == 1  # runs alternate, starting with background
    return np.repeat(values, runs).reshape(width, height).T  # COCO masks are column-major

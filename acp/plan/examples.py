"""Planning from a bank (``--bank`` on ``acp plan`` and ``acp generate``): real layouts of a
scene's categories, retrieved from a CLIS-L bank (``acp.score.bank``).

- ``BankLayouts.retrieve``: up to ``k`` real images holding as many of the scene's categories
  (with their counts) as any image does, drawn at random among the best (seeded); an inverted
  index from category to images makes it a few array operations per scene.
- ``BankLayouts.sample``: an offline layout drawn from the bank's densities around a retrieved
  image: each requested object takes a distinct box of its category there (a category the
  image lacks takes a real box of its own, set next to a placed one as a real pair of the two
  sits); then the largest box, the anchor, is drawn from its category's object density (a real
  box of the category from any image, plus kernel noise) and every other box from the density
  of its pair with the anchor, around its retrieved offset and size ratio; the whole is
  mirrored at random. Kernel noise is ``DRAW_SPREAD`` of v2's bandwidths, so no plan is a copy
  of a bank layout, and its place and scale vary as the category's own boxes do; objects of a
  category the bank does not know are left to the caller (None).
- ``example_block``: the text of retrieved layouts for an LLM prompt, bounded (``MAX_EXAMPLES``
  layouts of at most ``MAX_EXAMPLE_OBJECTS`` objects each, ~1 KB).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from acp.names import canonical_key, category_key

if TYPE_CHECKING:
    from acp.score.bank import Bank
    from acp.score.density import Level

MAX_EXAMPLES = 3
MAX_EXAMPLE_OBJECTS = 8
DRAW_TRIES = 8
# The share of a density's bandwidth a draw spreads over. A kernel density is smoothed to be
# estimated from few references; draws at its full width scatter wider than real layouts do.
DRAW_SPREAD = 0.2
MIN_SIDE = 1.5 / 64  # a little over the planner's minimum side, so that rounding keeps it valid

Box = tuple[float, float, float, float]


@dataclass(frozen=True)
class Example:
    """One retrieved real layout: its bank image id and its boxes (category name, xywh)."""

    image_id: str
    objects: tuple[tuple[str, Box], ...]


class BankLayouts:
    """The real layouts of a bank, indexed by category."""

    def __init__(self, bank: Bank):
        self.bank = bank
        order = np.argsort(bank.box_image, kind="stable")
        self._rows = order  # box rows grouped by image
        images = bank.box_image[order]
        self._image_offsets = np.searchsorted(images, np.arange(bank.image_ids.size + 1))
        category = np.repeat(np.arange(len(bank.categories)), np.diff(bank.category_offsets))
        # (category, image) -> how many boxes of the category the image has
        keys = category.astype(np.int64) * max(bank.image_ids.size, 1) + bank.box_image
        self._pair_keys, self._pair_counts = np.unique(keys, return_counts=True)
        self._category = category

    def category(self, name: str) -> int | None:
        """The bank category of a plan name (exact key, then synonyms), as CLIS-L matches it."""
        found = self.bank.category_by_alias(category_key(name))
        return found if found is not None else self.bank.category_by_key(canonical_key(name))

    def retrieve(self, names: list[str], k: int, rng: random.Random) -> list[int]:
        """Up to ``k`` images holding the most of ``names`` (each as often as asked), best first."""
        wanted: dict[int, int] = {}
        for name in names:
            c = self.category(name)
            if c is not None:
                wanted[c] = wanted.get(c, 0) + 1
        if not wanted or k <= 0:
            return []
        width = max(self.bank.image_ids.size, 1)
        candidates, hits = [], []
        for c, count in wanted.items():
            lo = np.searchsorted(self._pair_keys, c * width)
            hi = np.searchsorted(self._pair_keys, (c + 1) * width)
            images = self._pair_keys[lo:hi] - c * width
            candidates.append(images)
            hits.append(np.minimum(self._pair_counts[lo:hi], count))
        images, inverse = np.unique(np.concatenate(candidates), return_inverse=True)
        score = np.bincount(inverse, np.concatenate(hits).astype(np.float64), minlength=images.size)
        best = images[score == score.max()]
        chosen = rng.sample(range(best.size), min(k, best.size))
        return [int(best[i]) for i in chosen]

    def boxes_of(self, image: int) -> list[tuple[int, Box]]:
        rows = self._rows[self._image_offsets[image]:self._image_offsets[image + 1]]
        return [(int(self._category[r]), _box(self.bank.boxes[r])) for r in rows]

    def example(self, image: int, names: list[str]) -> Example:
        """An image's layout for a prompt: the boxes of the scene's categories first, then the
        largest others, ``MAX_EXAMPLE_OBJECTS`` at most."""
        wanted = {self.category(n) for n in names}
        boxes = sorted(self.boxes_of(image), key=lambda cb: (cb[0] not in wanted, -cb[1][2] * cb[1][3]))
        objects = tuple((self.bank.categories[c].name, _box(round(v, 3) for v in b))
                        for c, b in boxes[:MAX_EXAMPLE_OBJECTS])
        return Example(str(self.bank.image_ids[image]), objects)

    def sample(self, names: list[str], rng: random.Random) -> tuple[list[Box | None], str | None]:
        """A layout for ``names`` (None where the bank does not know the category) and the bank
        image id it was drawn from (None: none held any of them)."""
        images = self.retrieve(names, 1, rng)
        source = self.boxes_of(images[0]) if images else []
        used: set[int] = set()
        boxes: list[Box | None] = []
        placed: list[tuple[int, Box]] = []
        for name in names:
            c = self.category(name)
            choices = [k for k, (cat, _) in enumerate(source) if cat == c and k not in used]
            box: Box | None = None
            if c is not None and choices:
                k = rng.choice(choices)
                used.add(k)
                box = source[k][1]
            elif c is not None:
                box = self._near(c, placed, rng)
            boxes.append(box)
            if c is not None and box is not None:
                placed.append((c, box))
        if not placed:
            return boxes, None
        for _ in range(DRAW_TRIES):  # a draw that a frame edge would cut much is drawn again
            drawn = self._drawn(boxes, placed, rng)
            inside = [None if b is None else _inside(b) for b in drawn]
            if all(b is None or c is None or _kept(b, c) > 0.9 for b, c in zip(drawn, inside, strict=True)):
                break
        mirror = rng.random() < 0.5  # a mirrored photograph is as real as the photograph
        out = [None if b is None else _mirrored(b) if mirror else b for b in inside]
        return out, (str(self.bank.image_ids[images[0]]) if images else None)

    def _drawn(self, boxes: list[Box | None], placed: list[tuple[int, Box]], rng: random.Random
               ) -> list[Box | None]:
        """A draw from the bank's densities around the layout ``boxes`` (Gaussian kernels of
        v2's bandwidths): its largest box, the anchor, from its category's object density (a
        real box of the category plus kernel noise); every other box from the density of its
        pair with the anchor, around the offset and size ratio it has in ``boxes``, its aspect
        from its own category's density around its own."""
        model = self.bank.model
        width = max(model.categories, 1)
        anchor_category, anchor = max(placed, key=lambda cb: cb[1][2] * cb[1][3])
        start, stop = int(self.bank.category_offsets[anchor_category]), int(
            self.bank.category_offsets[anchor_category + 1])
        h = _bandwidth(model.objects, anchor_category)
        x, y, w, hh = _box(self.bank.boxes[rng.randrange(start, stop)])
        area = math.log(w * hh) + rng.gauss(0, h[0])
        aspect = math.log(w / hh) + rng.gauss(0, h[1])
        cx, cy = x + w / 2 + rng.gauss(0, h[2]), y + hh / 2 + rng.gauss(0, h[3])
        new_anchor = _from_features(area, aspect, cx, cy)
        category_of = {id(b): c for c, b in placed}
        out: list[Box | None] = []
        for box in boxes:
            if box is None or box is anchor:
                out.append(None if box is None else new_anchor)
                continue
            c = category_of[id(box)]
            lo, hi = min(c, anchor_category), max(c, anchor_category)
            hp = _bandwidth(model.pairs, lo * width + hi)
            ho = _bandwidth(model.objects, c)
            diagonal = (math.hypot(anchor[2], anchor[3]) + math.hypot(box[2], box[3])) / 2
            ratio = math.log((anchor[2] * anchor[3]) / (box[2] * box[3])) + rng.gauss(0, hp[0])
            dx = (box[0] + box[2] / 2 - anchor[0] - anchor[2] / 2) / diagonal + rng.gauss(0, hp[1])
            dy = (box[1] + box[3] / 2 - anchor[1] - anchor[3] / 2) / diagonal + rng.gauss(0, hp[2])
            own_area = math.log(new_anchor[2] * new_anchor[3]) - ratio
            own_aspect = math.log(box[2] / box[3]) + rng.gauss(0, ho[1])
            guess = _from_features(own_area, own_aspect, 0.0, 0.0)
            scale = (math.hypot(new_anchor[2], new_anchor[3]) + math.hypot(guess[2], guess[3])) / 2
            out.append(_from_features(own_area, own_aspect, new_anchor[0] + new_anchor[2] / 2 + dx * scale,
                                      new_anchor[1] + new_anchor[3] / 2 + dy * scale))
        return out

    def _near(self, category: int, placed: list[tuple[int, Box]], rng: random.Random) -> Box | None:
        """A real box of ``category`` (None: the bank has none); next to a placed box as a real
        pair of the two sits, where the bank holds one (relative offset and size), else where it
        was in its own image."""
        bank = self.bank
        start, stop = int(bank.category_offsets[category]), int(bank.category_offsets[category + 1])
        if stop == start:
            return None
        x, y, w, h = (float(v) for v in bank.boxes[rng.randrange(start, stop)])
        own = (x, y, w, h)
        if not placed:
            return own
        anchor_category, anchor = rng.choice(placed)
        a, b = sorted((anchor_category, category))
        rows = bank.pair_rows(a, b)
        if rows.stop == rows.start:
            return own
        p = rng.randrange(rows.start, rows.stop)
        first, second = bank.boxes[bank.pair_a[p]], bank.boxes[bank.pair_b[p]]
        ref_anchor, ref_other = (first, second) if anchor_category == a else (second, first)
        if a == b and rng.random() < 0.5:
            ref_anchor, ref_other = ref_other, ref_anchor
        scale = math.sqrt((anchor[2] * anchor[3]) / float(ref_anchor[2] * ref_anchor[3]))
        dx = (ref_other[0] + ref_other[2] / 2 - ref_anchor[0] - ref_anchor[2] / 2) * scale
        dy = (ref_other[1] + ref_other[3] / 2 - ref_anchor[1] - ref_anchor[3] / 2) * scale
        w, h = float(ref_other[2]) * scale, float(ref_other[3]) * scale
        cx, cy = anchor[0] + anchor[2] / 2 + dx, anchor[1] + anchor[3] / 2 + dy
        return _inside((cx - w / 2, cy - h / 2, w, h))

def _box(values: object) -> Box:
    x, y, w, h = (float(v) for v in values)  # type: ignore[attr-defined]
    return (x, y, w, h)


def _inside(box: Box) -> Box:
    x, y, w, h = box
    w, h = min(max(w, MIN_SIDE), 0.98), min(max(h, MIN_SIDE), 0.98)
    return (min(max(x, 0.0), 1.0 - w), min(max(y, 0.0), 1.0 - h), w, h)


def _mirrored(box: Box) -> Box:
    x, y, w, h = box
    return (1.0 - x - w, y, w, h)


def _from_features(log_area: float, log_aspect: float, cx: float, cy: float) -> Box:
    """The box of object features (log area, log aspect w/h, centre)."""
    w = math.exp((log_area + log_aspect) / 2)
    h = math.exp((log_area - log_aspect) / 2)
    return (cx - w / 2, cy - h / 2, w, h)


def _kept(box: Box, inside: Box) -> float:
    """The share of ``box`` that ``inside`` (its version put into the frame) still covers."""
    ix = max(0.0, min(box[0] + box[2], inside[0] + inside[2]) - max(box[0], inside[0]))
    iy = max(0.0, min(box[1] + box[3], inside[1] + inside[3]) - max(box[1], inside[1]))
    return ix * iy / (box[2] * box[3])


def _bandwidth(levels: list[Level], key: int) -> list[float]:
    """The kernel bandwidth of ``key``'s group at the finest level (the top level's without one)."""
    group = int(levels[0].lookup(np.array([key]))[0])
    if group >= 0:
        return [DRAW_SPREAD * float(v) for v in levels[0].bandwidth[group]]
    return [DRAW_SPREAD * float(v) for v in levels[-1].bandwidth[0]] if levels[-1].keys.size else [0.0] * 4


def example_block(examples: list[Example]) -> str:
    """The prompt lines that show the LLM real layouts of the scene's categories."""
    if not examples:
        return ""
    lines = ["Real photographs with these categories (normalised [x, y, w, h]); use them as a guide "
             "to sizes and placement, do not copy them:"]
    for k, example in enumerate(examples, start=1):
        boxes = "; ".join(f"{name} {list(box)}" for name, box in example.objects)
        lines.append(f"{k}. {boxes}")
    return "\n".join(lines) + "\n"


def bank_examples(layouts: BankLayouts, names: list[str], k: int, rng: random.Random) -> list[Example]:
    return [layouts.example(image, names) for image in layouts.retrieve(names, k, rng)]


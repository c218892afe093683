"""A CLIS-L reference bank: the layouts of real images, from any COCO-format annotation file.

``Bank.from_coco([...])`` reads COCO, LVIS, Objects365 or the user's own files (plain ``json``;
only ``images``, ``annotations`` and ``categories`` are read, and polygon ``segmentation``
values are cut from the text before it is parsed: ``read_coco_file(polygons=False)``),
normalises every box by its image size and keeps, per canonical category
(``acp.names.canonical_key``, so "Puppies" and "dog" meet):

- every usable box, grouped by category: the single-object priors (size, aspect, position) that
  CLIS-L falls back to when a pair of categories has no reference;
- object pairs of the same image, indexed by their (unordered) category pair.

What is skipped, and counted in ``Bank.summary["skipped"]``: malformed annotations, boxes of
unknown images or images without a size (or with a side over ``MAX_IMAGE_SIDE`` pixels),
unknown category ids, crowd boxes, degenerate boxes (non-finite, zero or negative side) and
boxes reaching more than ``OUT_OF_IMAGE_TOLERANCE`` pixels outside their image (boxes within
it are clipped to the image).

Caps, so that a full COCO train split (860k boxes) builds in bounded time (see
docs/architecture.md; v2's and v3's densities and calibration are most of it) and loads in a
fraction of a second (``bench/bench_bank.py``):

- pairs are enumerated among the ``max_objects_per_image`` largest boxes of an image (20: at
  most 190 pairs per image; the small boxes of a crowded image add little layout evidence and
  would otherwise dominate with thousands of pairs);
- each category pair keeps at most ``max_pairs_per_category_pair`` references (10,000, a
  uniform sample: CLIS-L uses a high percentile, which 10,000 samples estimate well, and
  scoring time stays bounded for frequent pairs such as person-person);
- each category keeps at most ``max_boxes_per_category`` prior boxes (10,000, likewise).

On disk a bank is a folder with ``bank.npz`` (uncompressed numpy arrays, loaded in one read)
and ``index.json`` (format version, categories with a summary of their priors, build summary).
The arrays hold the boxes, the pairs and what scoring reads of them, computed once at build
time rather than at every load: for the paper's method ``PairFeatures`` and ``PriorFeatures``
(since format 2), for CLIS-L v2 the ``acp.score.density.LayoutModel`` (since format 3:
references, bandwidths and normalisers of every density group, the CDF tables; arrays named
``v2_*``), for v3 its own (since format 4: Student-kernel densities, fitted weights, relation
margins and CDF tables, ``v3_*``; ``acp.score.likelihood``), and each box's image with the
images' source ids (``box_image``, ``image_ids``: the real layouts planning draws from,
``acp.plan.examples``). Each category keeps its source's ``supercategory`` (the first seen),
which the pair densities back off to. A bank of format 1, 2 or 3 is refused with a request to
rebuild it.
The folder is written as a whole (``Bank.save``): rebuilding over a bank replaces both files
together or neither. Input that yields no usable box at all is an error, not an empty bank.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from numpy.typing import NDArray

from acp import atomic
from acp.atomic import sweep_stale_temps, temp_prefix
from acp.boxes import coco_to_plan_sized, iou_aligned
from acp.cocostream import POLYGON_PATTERN
from acp.errors import InputError, quoted
from acp.jsonl import loads
from acp.names import canonical_key, category_key
from acp.paths import (
    COCO_FILE_BYTES,
    SMALL_FILE_BYTES,
    FileTooLargeError,
    open_regular,
    read_regular_text,
    size_text,
)
from acp.score import likelihood as v3
from acp.score.density import STUDENT, LayoutModel, build_model

BANK_FORMAT = 4  # 4: CLIS-L v3 (Student-kernel densities, three CDF tables); 3: v2 densities;
# 2: pair and prior features stored
ARRAYS_FILE = "bank.npz"
INDEX_FILE = "index.json"
OUT_OF_IMAGE_TOLERANCE = 1.0  # pixels; COCO boxes overshoot their image by rounding only
# An image side past this is no size (1e308 made boxes of height 0 in float32, aspect infinity).
MAX_IMAGE_SIDE = 1_000_000
MAX_OBJECTS_PER_IMAGE = 20
MAX_PAIRS_PER_CATEGORY_PAIR = 10_000
MAX_BOXES_PER_CATEGORY = 10_000
_FEATURE_BLOCK = 1 << 16  # pairs per block of the feature computation
ZERO = 1e-6  # IoUs and distances are floored here: below it, float32 noise (see acp.score.layout)
SKIP_REASONS = (
    "malformed",
    "unknown_image",
    "image_without_size",
    "unknown_category",
    "crowd",
    "degenerate",
    "out_of_image",
)

Float32Array = NDArray[np.float32]
Int32Array = NDArray[np.int32]
Int64Array = NDArray[np.int64]


@dataclass(frozen=True)
class BankCategory:
    key: str  # canonical key; what plans are matched against
    name: str  # the first name seen in the sources, for display
    aliases: tuple[str, ...]  # category keys of every source name merged into this entry
    supercategory: str = ""  # the source's `supercategory` (the first seen), "" if none


@dataclass(frozen=True)
class PairFeatures:
    """Geometry of every bank pair, computed at build time and stored (float32, one row a pair)."""

    log_ratio: Float32Array  # log(area_a / area_b)
    iou: Float32Array  # floored at ZERO
    rel_distance: Float32Array  # centre distance / mean diagonal, floored at ZERO
    ux: Float32Array  # unit vector from the centre of a to the centre of b; 0 when concentric
    uy: Float32Array
    concentric: NDArray[np.bool_]


@dataclass(frozen=True)
class PriorFeatures:
    """Geometry of every bank box: log area, log aspect (w/h), centre."""

    log_area: Float32Array
    log_aspect: Float32Array
    cx: Float32Array
    cy: Float32Array


def pair_features_of(boxes: Float32Array, pair_a: Int32Array, pair_b: Int32Array) -> PairFeatures:
    """The ``PairFeatures`` of the pairs ``(pair_a[p], pair_b[p])`` of rows of ``boxes``, in
    blocks of pairs: the float64 temporaries stay small (and in cache) however many pairs."""
    n = pair_a.size
    columns: list[NDArray[Any]] = [np.empty(n, dtype=np.float32) for _ in range(5)]
    columns.append(np.empty(n, dtype=bool))
    for start in range(0, n, _FEATURE_BLOCK):
        rows = slice(start, start + _FEATURE_BLOCK)
        a, b = boxes[pair_a[rows]].astype(np.float64), boxes[pair_b[rows]].astype(np.float64)
        for column, values in zip(columns, _pair_geometry(a, b), strict=True):
            column[rows] = values
    return PairFeatures(*columns)


def prior_features_of(boxes: Float32Array) -> PriorFeatures:
    b = boxes.astype(np.float64)
    return PriorFeatures(
        log_area=np.log(b[:, 2] * b[:, 3]).astype(np.float32),
        log_aspect=np.log(b[:, 2] / b[:, 3]).astype(np.float32),
        cx=(b[:, 0] + b[:, 2] / 2).astype(np.float32),
        cy=(b[:, 1] + b[:, 3] / 2).astype(np.float32),
    )


# Names of the feature arrays in bank.npz: "pair_" or "prior_" and the field name.
_FEATURE_ARRAYS = [f"pair_{f.name}" for f in fields(PairFeatures)] + [
    f"prior_{f.name}" for f in fields(PriorFeatures)
]


@dataclass
class Bank:
    """Real layouts, ready to score against. Build with ``from_coco``, reopen with ``load``.

    ``boxes`` (N, 4) are normalised xywh sorted by category (random order within one);
    category ``c`` owns rows ``category_offsets[c]:category_offsets[c + 1]``, of which the
    first ``max_boxes_per_category`` are its priors. Pair ``p`` joins boxes ``pair_a[p]`` and
    ``pair_b[p]`` with ``category(a) <= category(b)``; pairs are sorted by the key
    ``category(a) * C + category(b)``, key ``pair_keys[k]`` owning rows
    ``pair_offsets[k]:pair_offsets[k + 1]``. ``pair_features`` and ``prior_features`` hold what
    scoring reads of them, row by row; ``from_coco`` computes them, ``load`` reads them back.
    """

    categories: list[BankCategory]
    boxes: Float32Array
    category_offsets: Int64Array
    pair_a: Int32Array
    pair_b: Int32Array
    pair_keys: Int64Array
    pair_offsets: Int64Array
    pair_features: PairFeatures
    prior_features: PriorFeatures
    model: LayoutModel  # CLIS-L v2
    likelihood: LayoutModel  # CLIS-L v3
    box_image: Int32Array  # each box's image (a row of image_ids): real layouts, for planning
    image_ids: NDArray[np.str_]  # each image's id in its source ("k:id" past the first source)
    max_boxes_per_category: int = MAX_BOXES_PER_CATEGORY
    summary: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        count = len(self.categories)
        problems = []
        if self.boxes.ndim != 2 or self.boxes.shape[1:] != (4,):
            problems.append(f"boxes has shape {self.boxes.shape}, expected (N, 4)")
        if self.category_offsets.shape != (count + 1,):
            problems.append(f"category_offsets has {self.category_offsets.size} rows, expected {count + 1}")
        if self.pair_a.shape != self.pair_b.shape:
            problems.append("pair_a and pair_b differ in length")
        if self.pair_offsets.shape != (self.pair_keys.size + 1,):
            problems.append("pair_offsets does not match pair_keys")
        for prefix, features, rows in (("pair", self.pair_features, self.pair_a.shape),
                                       ("prior", self.prior_features, self.boxes.shape[:1])):
            problems += [
                f"{prefix}_{f.name} has shape {getattr(features, f.name).shape}, expected {rows}"
                for f in fields(features)
                if getattr(features, f.name).shape != rows
            ]
        if self.box_image.shape != self.boxes.shape[:1]:
            problems.append(f"box_image has shape {self.box_image.shape}, expected {self.boxes.shape[:1]}")
        elif self.box_image.size and not 0 <= int(self.box_image.min()) <= int(self.box_image.max()) < (
                self.image_ids.size):
            problems.append("box_image names images beyond image_ids")
        for model in (self.model, self.likelihood):
            if model.categories != count:
                problems.append(f"the density model has {model.categories} categories, expected {count}")
        if problems:
            raise InputError("inconsistent bank: " + "; ".join(problems))
        self._by_key = {c.key: i for i, c in enumerate(self.categories)}
        self._by_alias = {alias: i for i, c in enumerate(self.categories) for alias in c.aliases}

    # -- lookups -------------------------------------------------------------------------
    @property
    def num_pairs(self) -> int:
        return int(self.pair_a.size)

    def category_by_key(self, key: str) -> int | None:
        """Category id whose canonical key is ``key``."""
        return self._by_key.get(key)

    def category_by_alias(self, key: str) -> int | None:
        """Category id one of whose source names has the ``category_key`` ``key``."""
        return self._by_alias.get(key)

    def pair_rows(self, a: int, b: int) -> slice:
        """Rows of the pairs of categories ``a <= b`` (an empty slice when there are none)."""
        key = a * len(self.categories) + b
        k = int(np.searchsorted(self.pair_keys, key))
        if k == self.pair_keys.size or self.pair_keys[k] != key:
            return slice(0, 0)
        return slice(int(self.pair_offsets[k]), int(self.pair_offsets[k + 1]))

    def prior_rows(self, category: int) -> slice:
        start = int(self.category_offsets[category])
        stop = min(int(self.category_offsets[category + 1]), start + self.max_boxes_per_category)
        return slice(start, stop)

    # -- files ---------------------------------------------------------------------------
    def save(self, folder: Path) -> None:
        """Write ``bank.npz`` and ``index.json`` as the folder ``folder``, atomically as a whole.

        Both files go to a temporary sibling folder, which then takes the place of ``folder``:
        an existing bank is renamed away, the new one renamed in, the old one deleted. A reader
        sees the old bank or the new one, never new arrays with old names; a kill between the
        two renames leaves no ``folder`` and the old bank in ``.{name}.old-*`` beside it (which
        ``load`` points to), a kill before them a staging folder that the next save removes
        (``acp.atomic.sweep_stale_temps``). A ``folder`` that holds anything but a bank is left
        alone and refused, since replacing it would delete those files.
        """
        folder = check_output(folder)
        try:
            self._swap_in(folder)
        except OSError as error:
            raise InputError(f"bank {folder}: cannot write ({error.strerror or error})") from None

    def _swap_in(self, folder: Path) -> None:
        parent = folder.parent
        parent.mkdir(parents=True, exist_ok=True)
        sweep_stale_temps(parent)  # staging folders of builds that were killed
        staging = Path(tempfile.mkdtemp(dir=parent, prefix=temp_prefix(folder.name), suffix=".tmp"))
        try:
            # mkdtemp makes it 0700, unreadable to others; a bank must be readable by whoever
            # the umask allows, as a folder made with mkdir would be.
            os.chmod(staging, 0o777 & ~atomic.UMASK)
            self._write_files(staging)
            if folder.exists():
                old = Path(tempfile.mkdtemp(dir=parent, prefix=f".{folder.name}.old-"))
                try:
                    os.rename(folder, old / "bank")
                    try:
                        os.rename(staging, folder)
                    except BaseException:
                        os.rename(old / "bank", folder)
                        raise
                finally:
                    if folder.exists():  # else the old bank stays where ``load`` will point to it
                        shutil.rmtree(old, ignore_errors=True)
            else:
                os.rename(staging, folder)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        _fsync_folder(parent)

    def _write_files(self, folder: Path) -> None:
        """``bank.npz`` and ``index.json`` into ``folder`` (a fresh one: plain writes, flushed)."""
        index = {
            "format": BANK_FORMAT,
            "max_boxes_per_category": self.max_boxes_per_category,
            "categories": [
                {"key": c.key, "name": c.name, "aliases": list(c.aliases), "supercategory": c.supercategory,
                 **self._prior_summary(i)}
                for i, c in enumerate(self.categories)
            ],
            "summary": self.summary,
        }
        text = json.dumps(index, indent=1, ensure_ascii=False, allow_nan=False) + "\n"
        with open(folder / ARRAYS_FILE, "wb") as handle:
            arrays: dict[str, Any] = {
                "boxes": self.boxes,
                "category_offsets": self.category_offsets,
                "pair_a": self.pair_a,
                "pair_b": self.pair_b,
                "pair_keys": self.pair_keys,
                "pair_offsets": self.pair_offsets,
                **{f"pair_{f.name}": getattr(self.pair_features, f.name) for f in fields(PairFeatures)},
                **{f"prior_{f.name}": getattr(self.prior_features, f.name) for f in fields(PriorFeatures)},
                **{f"v2_{name}": array for name, array in self.model.arrays().items()},
                **{f"v3_{name}": array for name, array in self.likelihood.arrays().items()},
                "box_image": self.box_image,
                "image_ids": self.image_ids,
            }
            np.savez(handle, **arrays)
            handle.flush()
            os.fsync(handle.fileno())
        with open(folder / INDEX_FILE, "w", encoding="utf-8", newline="\n") as text_handle:
            text_handle.write(text)
            text_handle.flush()
            os.fsync(text_handle.fileno())
        _fsync_folder(folder)

    def _prior_summary(self, category: int) -> dict[str, Any]:
        start, stop = self.category_offsets[category], self.category_offsets[category + 1]
        b = self.boxes[start:stop].astype(np.float64)
        if b.size == 0:
            return {"boxes": 0}
        return {
            "boxes": int(stop - start),
            "median_area": round(float(np.median(b[:, 2] * b[:, 3])), 5),
            "median_aspect": round(float(np.median(b[:, 2] / b[:, 3])), 4),
            "mean_center": [round(float(v), 4) for v in (b[:, :2] + b[:, 2:] / 2).mean(axis=0)],
        }

    @classmethod
    def load(cls, folder: Path) -> Bank:
        """Open a bank folder written by ``save`` (``acp bank build``)."""
        folder = Path(folder)
        expected = f"expected a folder with {ARRAYS_FILE} and {INDEX_FILE} written by `acp bank build`"
        if not folder.exists() and folder.parent.is_dir():
            prefix = f".{folder.name}.old-"
            left = sorted(
                p / "bank"
                for p in folder.parent.iterdir()
                if p.name.startswith(prefix) and (p / "bank").is_dir()
            )
            if left:
                raise InputError(
                    f"bank {folder}: no such folder; a rebuild was interrupted and the previous bank "
                    f"is in {left[-1]}: move it back or run `acp bank build` again"
                )
        if not (folder / ARRAYS_FILE).is_file() or not (folder / INDEX_FILE).is_file():
            raise InputError(f"bank {folder}: {expected}")
        try:
            index = loads(read_regular_text(folder / INDEX_FILE, SMALL_FILE_BYTES))
        except (OSError, ValueError) as error:
            raise InputError(f"bank {folder}: unreadable ({error}); {expected}") from None
        if not isinstance(index, dict) or index.get("format") != BANK_FORMAT:
            found = index.get("format") if isinstance(index, dict) else None
            raise InputError(
                f"bank {folder}: format {found!r}, expected {BANK_FORMAT}; rebuild it with `acp bank build`"
            )
        try:
            with open_regular(folder / ARRAYS_FILE) as handle, np.load(handle, allow_pickle=False) as arrays:
                data = {name: arrays[name] for name in arrays.files}
        except (OSError, ValueError) as error:
            raise InputError(f"bank {folder}: unreadable ({error}); {expected}") from None
        names = ["boxes", "category_offsets", "pair_a", "pair_b", "pair_keys", "pair_offsets", "box_image",
                 "image_ids"]
        names += _FEATURE_ARRAYS + [f"{v}_{name}" for v in ("v2", "v3") for name in LayoutModel.array_names()]
        missing = [n for n in names if n not in data]
        if missing:
            raise InputError(f"bank {folder}: {ARRAYS_FILE} lacks {missing}; {expected}")
        try:
            categories = [
                BankCategory(key=c["key"], name=c["name"], aliases=tuple(c["aliases"]),
                             supercategory=str(c.get("supercategory", "")))
                for c in index["categories"]
            ]
            return cls(
                categories=categories,
                boxes=data["boxes"].astype(np.float32, copy=False),
                category_offsets=data["category_offsets"].astype(np.int64, copy=False),
                pair_a=data["pair_a"].astype(np.int32, copy=False),
                pair_b=data["pair_b"].astype(np.int32, copy=False),
                pair_keys=data["pair_keys"].astype(np.int64, copy=False),
                pair_offsets=data["pair_offsets"].astype(np.int64, copy=False),
                pair_features=PairFeatures(**{
                    f.name: data[f"pair_{f.name}"].astype(bool if f.name == "concentric" else np.float32,
                                                          copy=False)
                    for f in fields(PairFeatures)
                }),
                prior_features=PriorFeatures(**{
                    f.name: data[f"prior_{f.name}"].astype(np.float32, copy=False)
                    for f in fields(PriorFeatures)
                }),
                model=LayoutModel.from_arrays(
                    {name[3:]: array for name, array in data.items() if name.startswith("v2_")}
                ),
                likelihood=LayoutModel.from_arrays(
                    {name[3:]: array for name, array in data.items() if name.startswith("v3_")}, STUDENT
                ),
                box_image=data["box_image"].astype(np.int32, copy=False),
                image_ids=data["image_ids"].astype(str, copy=False),
                max_boxes_per_category=int(index["max_boxes_per_category"]),
                summary=index.get("summary", {}),
            )
        except (KeyError, TypeError) as error:
            raise InputError(f"bank {folder}: {INDEX_FILE} lacks {error}; {expected}") from None

    # -- building ------------------------------------------------------------------------
    @classmethod
    def from_coco(
        cls,
        paths: list[Path],
        *,
        max_objects_per_image: int = MAX_OBJECTS_PER_IMAGE,
        max_pairs_per_category_pair: int = MAX_PAIRS_PER_CATEGORY_PAIR,
        max_boxes_per_category: int = MAX_BOXES_PER_CATEGORY,
        seed: int = 0,
        families: tuple[str, ...] = v3.FAMILIES,
    ) -> Bank:
        """Build a bank from COCO-format annotation files (see the module docstring)."""
        if not paths:
            raise InputError("no annotation file given; expected at least one COCO-format JSON file")
        for name, value in (
            ("max_objects_per_image", max_objects_per_image),
            ("max_pairs_per_category_pair", max_pairs_per_category_pair),
            ("max_boxes_per_category", max_boxes_per_category),
        ):
            if value < 2:
                raise InputError(f"{name} must be >= 2, got {value}")
        rng = np.random.default_rng(seed)
        merged = _CategoryMerger()
        parts: list[tuple[Int64Array, Int64Array, NDArray[np.float64]]] = []
        skipped = dict.fromkeys(SKIP_REASONS, 0)
        sources: list[dict[str, Any]] = []
        image_offset = 0
        image_ids: list[str] = []
        for source, path in enumerate(paths):
            data = read_coco_file(Path(path), polygons=False)
            images, cats, boxes, skip_counts, n_images = _usable_boxes(Path(path), data, merged)
            parts.append((images + image_offset, cats, boxes))
            image_offset += n_images
            prefix = f"{source}:" if source else ""
            image_ids += [f"{prefix}{item['id']}" for item in data["images"]]
            for reason, count in skip_counts.items():
                skipped[reason] += count
            sources.append(
                {
                    "path": str(path),
                    "images": n_images,
                    "annotations": len(data["annotations"]),
                    "boxes": int(cats.size),
                }
            )
            del data  # before the next file is read, not after
        if not sum(int(p[1].size) for p in parts):
            why = ", ".join(f"{k} {v}" for k, v in skipped.items() if v)
            raise InputError(
                f"{', '.join(str(p) for p in paths)}: no usable boxes found "
                f"({'skipped: ' + why if why else 'no annotations'}); expected non-crowd annotations "
                "with a bbox inside an image of known width and height and a known category_id"
            )
        image = np.concatenate([p[0] for p in parts])
        category = np.concatenate([p[1] for p in parts])
        boxes = np.concatenate([p[2] for p in parts]).reshape(-1, 4)
        n_categories = len(merged.categories)

        # Random order within each category, so that the first rows of a category are a uniform
        # sample (its priors under the cap).
        order = rng.permutation(category.size)
        order = order[np.argsort(category[order], kind="stable")]
        image, category, boxes = image[order], category[order], boxes[order]
        category_offsets = np.searchsorted(category, np.arange(n_categories + 1)).astype(np.int64)

        pair_a, pair_b, capped_boxes = _image_pairs(image, boxes, max_objects_per_image)
        swap = category[pair_a] > category[pair_b]
        pair_a, pair_b = np.where(swap, pair_b, pair_a), np.where(swap, pair_a, pair_b)
        keys = category[pair_a] * n_categories + category[pair_b]
        order = rng.permutation(keys.size)
        order = order[np.argsort(keys[order], kind="stable")]
        keys = keys[order]
        unique, starts, counts = np.unique(keys, return_index=True, return_counts=True)
        rank = np.arange(keys.size) - np.repeat(starts, counts)
        keep = order[rank < max_pairs_per_category_pair]
        kept_counts = np.minimum(counts, max_pairs_per_category_pair)
        pair_offsets = np.concatenate([[0], np.cumsum(kept_counts)]).astype(np.int64)

        summary = {
            "sources": sources,
            "images": image_offset,
            "annotations": sum(s["annotations"] for s in sources),
            "boxes": int(category.size),
            "categories": n_categories,
            "pairs": int(keep.size),
            "category_pairs": int(unique.size),
            "skipped": skipped,
            "boxes_left_out_of_pairs": capped_boxes,
            "pairs_over_cap": int(keys.size - keep.size),
            "settings": {
                "max_objects_per_image": max_objects_per_image,
                "max_pairs_per_category_pair": max_pairs_per_category_pair,
                "max_boxes_per_category": max_boxes_per_category,
                "seed": seed,
            },
        }
        stored = boxes.astype(np.float32)
        kept_a, kept_b = pair_a[keep].astype(np.int32), pair_b[keep].astype(np.int32)
        # A category without a super-category is its own (its pairs back off to all pairs).
        super_names = [c.supercategory or f"={c.key}" for c in merged.categories]
        supers = {name: k for k, name in enumerate(sorted(set(super_names)))}
        supercategory = np.array([supers[name] for name in super_names], dtype=np.int64)
        model = build_model(category, boxes, image, kept_a.astype(np.int64), kept_b.astype(np.int64),
                            supercategory, rng)
        likelihood = v3.build(category, boxes, image, kept_a.astype(np.int64), kept_b.astype(np.int64),
                              supercategory, rng, families)
        return cls(
            categories=merged.categories,
            boxes=stored,
            category_offsets=category_offsets,
            pair_a=kept_a,
            pair_b=kept_b,
            pair_keys=unique.astype(np.int64),
            pair_offsets=pair_offsets,
            pair_features=pair_features_of(stored, kept_a, kept_b),
            prior_features=prior_features_of(stored),
            model=model,
            likelihood=likelihood,
            box_image=image.astype(np.int32),
            image_ids=np.array(image_ids, dtype=str),
            max_boxes_per_category=max_boxes_per_category,
            summary=summary,
        )


def check_output(folder: Path) -> Path:
    """``folder`` (a link resolved) if a bank may be saved there: it is missing, empty or a bank;
    else an ``InputError``, since saving replaces the whole folder. Cheap: ``acp bank build``
    calls it before the build."""
    folder = Path(folder)
    if folder.is_symlink():
        folder = folder.resolve()
    if folder.exists():
        if not folder.is_dir():
            raise InputError(f"bank {folder}: exists and is not a folder; give another --output")
        names = sorted(p.name for p in folder.iterdir())
        foreign = [name for name in names if name not in (ARRAYS_FILE, INDEX_FILE)]
        if foreign:
            shown = ", ".join(foreign[:3]) + (", ..." if len(foreign) > 3 else "")
            raise InputError(
                f"bank {folder}: the folder holds other files ({shown}), which replacing it would "
                "delete; give another --output or empty it"
            )
        if names and not _is_bank_index(folder / INDEX_FILE):  # the names alone prove nothing
            raise InputError(
                f"bank {folder}: holds {' and '.join(names)} but no {INDEX_FILE} written by `acp bank "
                "build`, so not a bank to replace; give another --output or empty it"
            )
    return folder


def _is_bank_index(path: Path) -> bool:
    """Whether ``path`` is the index of a bank of any format (an older one is rebuilt over)."""
    try:
        index = loads(read_regular_text(path, SMALL_FILE_BYTES))
    except (OSError, ValueError):
        return False
    return isinstance(index, dict) and isinstance(index.get("format"), int) and isinstance(
        index.get("categories"), list)


def _fsync_folder(folder: Path) -> None:
    """Flush a folder's entries (the renames) to disk, where the platform allows it."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems and Windows do not sync folders
    finally:
        os.close(fd)


def _pair_geometry(a: NDArray[np.float64], b: NDArray[np.float64]) -> tuple[Any, ...]:
    """``PairFeatures`` fields of aligned xywh boxes ``a`` and ``b`` (float64 in, float32 out)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        log_ratio = np.log(a[:, 2] * a[:, 3]) - np.log(b[:, 2] * b[:, 3])
        vx = (b[:, 0] + b[:, 2] / 2) - (a[:, 0] + a[:, 2] / 2)
        vy = (b[:, 1] + b[:, 3] / 2) - (a[:, 1] + a[:, 3] / 2)
        length = np.hypot(vx, vy)
        diagonal = (np.hypot(a[:, 2], a[:, 3]) + np.hypot(b[:, 2], b[:, 3])) / 2
        concentric = length <= ZERO
        safe = np.where(concentric, 1.0, length)
        f32 = np.float32
        return (
            log_ratio.astype(f32),
            np.maximum(iou_aligned(a, b), ZERO).astype(f32),
            np.maximum(length / diagonal, ZERO).astype(f32),
            np.where(concentric, 0.0, vx / safe).astype(f32),
            np.where(concentric, 0.0, vy / safe).astype(f32),
            concentric,
        )


class _CategoryMerger:
    """Gives each canonical category key one id across all source files."""

    def __init__(self) -> None:
        self.categories: list[BankCategory] = []
        self._ids: dict[str, int] = {}

    def add(self, name: str, supercategory: str = "") -> int:
        key = canonical_key(name)
        alias = category_key(name)
        if key not in self._ids:
            self._ids[key] = len(self.categories)
            self.categories.append(BankCategory(key, name, (alias,), supercategory))
        index = self._ids[key]
        entry = self.categories[index]
        if alias not in entry.aliases or (supercategory and not entry.supercategory):
            aliases = entry.aliases if alias in entry.aliases else (*entry.aliases, alias)
            supercategory = entry.supercategory or supercategory
            self.categories[index] = BankCategory(entry.key, entry.name, aliases, supercategory)
        return index


def read_coco_file(path: Path, *, polygons: bool = True) -> dict[str, Any]:
    """A COCO-format file as a dict with 'images', 'annotations' and 'categories' lists; every
    problem is one ``InputError`` line.

    With ``polygons=False`` every polygon ``segmentation`` value (an array of arrays of numbers)
    is null, removed from the text before it is parsed: a bank reads no mask, and on COCO's
    files the polygons are most of the text, of the parse time and, as Python floats, of the
    memory. A mask of another shape (RLE) is parsed as written.
    """
    expected = "expected a COCO-format JSON object with 'images', 'annotations' and 'categories' lists"
    try:
        with open_regular(path) as handle:
            size = os.fstat(handle.fileno()).st_size
            if size <= COCO_FILE_BYTES:
                raw = handle.read(COCO_FILE_BYTES + 1) if polygons else _without_polygons(handle)
            if size > COCO_FILE_BYTES or handle.tell() > COCO_FILE_BYTES:  # or it grew meanwhile
                raise FileTooLargeError(f"{size_text(max(size, handle.tell()))} is over the "
                                        f"{size_text(COCO_FILE_BYTES)} cap of a COCO file read whole", path)
        # Decoded here as json.loads would, so that the bytes are gone before the parse.
        text = raw.decode(json.detect_encoding(raw), "surrogatepass")
        del raw
        data = loads(text)
    except OSError as error:
        raise InputError(f"{path}: cannot read ({error.strerror or error})") from None
    except ValueError as error:  # bad JSON, bad UTF-8, an integer past Python's 4300 digits
        if not polygons:  # the error as positioned in the file, not in the shortened text
            return read_coco_file(path)
        raise InputError(f"{path}: not valid JSON ({error}); {expected}") from None
    del text
    if not isinstance(data, dict) or not all(
        isinstance(data.get(key), list) for key in ("images", "annotations", "categories")
    ):
        raise InputError(f"{path}: {expected}")
    return data


_POLYGONS = re.compile(POLYGON_PATTERN.encode())  # polygon segmentations (see acp.cocostream)
_NO_POLYGONS = b'"segmentation": null'
_CHUNK = 1 << 24


def _without_polygons(handle: BinaryIO) -> bytes:
    """The file's text with every polygon value null, read and rewritten chunk by chunk (each
    cut after a "}"), so the whole text as written is never in memory."""
    pieces = []
    tail = b""
    while handle.tell() <= COCO_FILE_BYTES and (chunk := handle.read(_CHUNK)):
        buffer = tail + chunk
        cut = buffer.rfind(b"}") + 1
        pieces.append(_POLYGONS.sub(_NO_POLYGONS, buffer[:cut]))
        tail = buffer[cut:]
    pieces.append(_POLYGONS.sub(_NO_POLYGONS, tail))
    return b"".join(pieces)


def usable_id(value: Any) -> bool:
    """An id COCO records can refer to: a number or a string (not a bool, list or object, nor
    NaN or infinity, which JSON cannot write back and NaN no lookup finds)."""
    if isinstance(value, float):
        return math.isfinite(value)
    return isinstance(value, int | str) and not isinstance(value, bool)


def _usable_boxes(
    path: Path, data: dict[str, Any], merged: _CategoryMerger
) -> tuple[Int64Array, Int64Array, NDArray[np.float64], dict[str, int], int]:
    """Image index, category id and normalised box of each usable annotation of one file, the
    skip counts and the number of images."""
    categories: dict[Any, int] = {}
    for k, item in enumerate(data["categories"]):
        if not isinstance(item, dict) or "id" not in item or not isinstance(item.get("name"), str):
            raise InputError(f"{path}: categories[{k}] has no 'id' and 'name'; expected COCO categories")
        if not usable_id(item["id"]):
            raise InputError(
                f"{path}: categories[{k}] has id {quoted(item['id'])}; expected a number or a string"
            )
        if category_key(item["name"]):
            supercategory = item.get("supercategory")
            categories[item["id"]] = merged.add(
                item["name"], category_key(supercategory) if isinstance(supercategory, str) else ""
            )
    image_rows: dict[Any, int] = {}
    sizes = np.zeros((len(data["images"]), 2), dtype=np.float64)
    for k, item in enumerate(data["images"]):
        if not isinstance(item, dict) or "id" not in item:
            raise InputError(f"{path}: images[{k}] has no 'id'; expected COCO images")
        if not usable_id(item["id"]):
            raise InputError(
                f"{path}: images[{k}] has id {quoted(item['id'])}; expected a number or a string"
            )
        image_rows[item["id"]] = k
        try:
            sizes[k] = float(item["width"]), float(item["height"])
        except (KeyError, TypeError, ValueError, OverflowError):  # an integer of 400 digits, too
            sizes[k] = 0.0, 0.0  # counted as image_without_size below

    annotations = data["annotations"]
    n = len(annotations)
    image = np.full(n, -1, dtype=np.int64)
    category = np.full(n, -1, dtype=np.int64)
    crowd = np.zeros(n, dtype=bool)
    boxes = np.full((n, 4), np.nan, dtype=np.float64)
    malformed = np.zeros(n, dtype=bool)
    for i, item in enumerate(annotations):
        try:
            bbox = item["bbox"]
            boxes[i] = bbox[0], bbox[1], bbox[2], bbox[3]
            image[i] = image_rows.get(item["image_id"], -1)
            category[i] = categories.get(item["category_id"], -1)
            crowd[i] = bool(item.get("iscrowd", 0))
        except (KeyError, TypeError, ValueError, IndexError, OverflowError):
            malformed[i] = True

    reasons = np.full(n, -1, dtype=np.int8)  # index into SKIP_REASONS; -1 keeps the box

    def mark(mask: NDArray[np.bool_], reason: str) -> None:
        reasons[(reasons < 0) & mask] = SKIP_REASONS.index(reason)

    mark(malformed, "malformed")
    mark(image < 0, "unknown_image")
    width = np.where(image >= 0, sizes[np.maximum(image, 0), 0], 0.0)
    height = np.where(image >= 0, sizes[np.maximum(image, 0), 1], 0.0)
    mark(~((width > 0) & (height > 0) & (width <= MAX_IMAGE_SIDE) & (height <= MAX_IMAGE_SIDE)),
         "image_without_size")  # NaN fails every comparison
    mark(category < 0, "unknown_category")
    mark(crowd, "crowd")
    with np.errstate(invalid="ignore"):
        finite = np.isfinite(boxes).all(axis=1)
        mark(~finite | (boxes[:, 2] <= 0) | (boxes[:, 3] <= 0), "degenerate")
        tol = OUT_OF_IMAGE_TOLERANCE
        outside = (
            (boxes[:, 0] < -tol)
            | (boxes[:, 1] < -tol)
            | (boxes[:, 0] + boxes[:, 2] > width + tol)
            | (boxes[:, 1] + boxes[:, 3] > height + tol)
        )
    mark(outside, "out_of_image")
    keep = reasons < 0
    x0 = np.clip(boxes[keep, 0], 0, width[keep])
    y0 = np.clip(boxes[keep, 1], 0, height[keep])
    x1 = np.clip(boxes[keep, 0] + boxes[keep, 2], 0, width[keep])
    y1 = np.clip(boxes[keep, 1] + boxes[keep, 3], 0, height[keep])
    clipped = coco_to_plan_sized(np.stack([x0, y0, x1 - x0, y1 - y0], axis=1), width[keep], height[keep])
    # Clipping can flatten a box that sat on the border; that is degenerate too.
    flat = (clipped[:, 2] <= 0) | (clipped[:, 3] <= 0)
    kept_rows = np.flatnonzero(keep)
    reasons[kept_rows[flat]] = SKIP_REASONS.index("degenerate")
    counts = {reason: int((reasons == k).sum()) for k, reason in enumerate(SKIP_REASONS)}
    return image[keep][~flat], category[keep][~flat], clipped[~flat], counts, len(data["images"])


def _image_pairs(
    image: Int64Array, boxes: NDArray[np.float64], max_objects: int
) -> tuple[Int64Array, Int64Array, int]:
    """All pairs ``(a, b)`` of rows in the same image among its ``max_objects`` largest boxes,
    and how many boxes the cap left out. Vectorised per image size, not per image."""
    area = boxes[:, 2] * boxes[:, 3]
    order = np.lexsort((-area, image))  # by image, largest first
    sorted_image = image[order]
    _, starts, counts = np.unique(sorted_image, return_index=True, return_counts=True)
    used = np.minimum(counts, max_objects)
    left_out = int((counts - used).sum())
    firsts: list[Int64Array] = []
    seconds: list[Int64Array] = []
    for size in np.unique(used):
        if size < 2:
            continue
        group = starts[used == size]
        i, j = np.triu_indices(int(size), k=1)
        firsts.append(order[(group[:, None] + i[None, :]).ravel()])
        seconds.append(order[(group[:, None] + j[None, :]).ravel()])
    if not firsts:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, left_out
    return np.concatenate(firsts), np.concatenate(seconds), left_out


def describe_summary(summary: dict[str, Any]) -> str:
    """A few lines for the terminal: what went in, what was kept and skipped."""
    skipped = {k: v for k, v in summary.get("skipped", {}).items() if v}
    lines = [
        f"{summary['boxes']} boxes of {summary['images']} images in {summary['categories']} categories; "
        f"{summary['pairs']} pairs over {summary['category_pairs']} category pairs",
        "skipped: " + (", ".join(f"{k} {v}" for k, v in skipped.items()) if skipped else "none"),
    ]
    if summary.get("boxes_left_out_of_pairs") or summary.get("pairs_over_cap"):
        lines.append(
            f"capped: {summary['boxes_left_out_of_pairs']} boxes beyond "
            f"{summary['settings']['max_objects_per_image']} per image left out of pairs, "
            f"{summary['pairs_over_cap']} pairs beyond "
            f"{summary['settings']['max_pairs_per_category_pair']} per category pair"
        )
    return "\n".join(lines)

"""Long-tail top-up: what to generate, read from a real dataset's class histogram.

``read_histogram(REAL)`` streams a COCO-format instances file (COCO, LVIS, the user's own;
``acp.coco``) and counts, per category, its instances (crowd boxes excluded), the images
it appears in, and with which other categories it shares images. ``plan_balance`` turns that
into scenes:

- **Which categories** (``BalanceOptions``): those with fewer than ``tail_below`` instances,
  those of the given LVIS ``frequency`` (r, c, f), those named in ``categories_only``, or all;
  given together, a category must pass each.
- **Quotas**: each selected category ``c`` with ``n_c`` real instances is topped up to the
  target ``N``: ``quota_c = ceil(max(0, N - n_c) / pass_rate_c)``, at most
  ``max_per_category``. ``pass_rate_c`` is the share of planned instances that CLIS keeps:
  one number, or per category from an earlier run's ``summary.json`` (``pass_rates_from``).
- **Scenes**: the category with the most quota left is the scene's subject; the scene has
  between ``objects`` MIN and MAX distinct categories. Companions are drawn, weighted by the
  number of REAL images the two share, from the categories that co-occur with the subject
  **and** with every companion already drawn, so every pair of companions has been seen
  together (fewer companions when its partners are used up). Only a subject that shares no
  image with any other category backs off, first to the co-occurrences of its
  supercategory's categories, then to the frequent classes
  (LVIS's ``f``, else the ``FREQUENT_FALLBACK`` categories in most images); every backed-off
  pair is recorded in ``BalancePlan.backoffs``.
- **Companions count**: a companion instance of a selected category counts towards its quota.
  A category with no quota left (any head class) is drawn as a companion only while the
  instances it gained so get below ``companion_cap`` times its real count, so frequent classes
  grow by at most that share (10% by default) and tail classes without quota not at all.

Bounds, whatever REAL's shape: 16 bytes an annotation while counting, at most ``MAX_PAIRS``
co-occurring pairs and ``MAX_PARTNERS`` partners a category (the most shared kept, the cut
said), at most ``MAX_TOPUP_INSTANCES`` instances planned (refused before any scene is drawn);
every number read from REAL or a summary is checked before use.

Names: scenes name categories by a phrase made for prompts ("aerosol can" for LVIS's
``aerosol_can``, "bow (weapon)" for ``bow_(weapon)``), checked to map back to exactly its
category by the rules of ``acp.export.categories``, so the export carries REAL's names and ids.
"""

from __future__ import annotations

import hashlib
import heapq
import json
from array import array
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, overload

import numpy as np
from numpy.typing import NDArray

from acp import defaults
from acp.atomic import atomic_path, write_atomic
from acp.coco import scan_object
from acp.concepts import MAX_NAME_LENGTH, MAX_OBJECTS_PER_SCENE, MAX_QUOTA, ConceptInput
from acp.errors import InputError, MissingDependencyError, quoted
from acp.export.categories import Category, CategoryMatcher, parse_categories
from acp.jsonl import read_records
from acp.paths import file_problem
from acp.runfolder import BALANCE_MARK, read_run_summary

MAX_CATEGORIES = 100_000
# Pairs of an image are counted among its first this many distinct categories: an image of
# hundreds of classes costs time quadratic in them for little more evidence.
MAX_CATEGORIES_PER_IMAGE = 50
# Distinct co-occurring pairs kept (LVIS's 1,203 classes have at most 723,003): 16 bytes each,
# twice. A file with more keeps those shared by most images (see ``_cooccurrence``).
MAX_PAIRS = 1_000_000
# A category's partners kept, its most shared ones (LVIS's most connected class has about 1,100):
# drawing a companion looks at each, so a scene costs time in this, not in the categories.
MAX_PARTNERS = 2_000
PAIR_CHUNK = 1 << 20  # pairs of images formed and counted at a time
ID_LIMIT = 2**63  # ids are 64-bit integers (numpy's, pycocotools')
_HASHED = 2**62  # image keys at and above this are hashes of string ids
FREQUENT_FALLBACK = 20  # categories in most images, the last back-off when a file has no frequency
MIN_PASS_RATE = 0.1  # a quota grows at most tenfold for the instances CLIS drops
MIN_EVIDENCE = 5  # planned instances of a category before its own pass rate is trusted
MAX_COUNT = 10**15  # a count read from a summary: above any run's, exact as a float
# Instances one top-up plans (the sum of the quotas), so that planning takes minutes at most and
# its scenes fit in memory; LVIS's rare and common classes to 1,000 each ask for about 760,000.
MAX_TOPUP_INSTANCES = 1_000_000
CHART_NAMES = 60  # category names on the chart's x axis, at most
FREQUENCIES = {"r": "rare", "c": "common", "f": "frequent"}
SOURCES = ("cooccurrence", "supercategory", "frequent")

IntArray = NDArray[np.int64]


def prompt_phrase(name: str) -> str:
    """A category name as a prompt says it: ``aerosol_can`` -> "aerosol can",
    ``bow_(weapon)`` -> "bow (weapon)"."""
    return " ".join(name.replace("_", " ").split())


@dataclass(frozen=True)
class RealCategory:
    id: int
    name: str
    supercategory: str
    frequency: str | None  # LVIS's r / c / f
    phrase: str  # how scenes and prompts name it; maps back to this category alone
    synonyms: tuple[str, ...] = ()


@dataclass
class ClassHistogram:
    """What ``read_histogram`` counted; arrays are indexed by row (the file's category order)."""

    path: Path
    categories: list[RealCategory]
    instances: IntArray  # non-crowd instances per category
    images_with: IntArray  # images holding at least one instance of the category
    pair_ptr: IntArray  # co-occurrence, CSR: row r's partners are pair_row[ptr[r]:ptr[r+1]]
    pair_row: IntArray
    pair_images: IntArray  # images the two categories share
    images: int = 0
    annotations: int = 0
    crowd: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    ambiguous: list[str] = field(default_factory=list)  # names that map to several categories
    pairs_cut: int = 0  # co-occurrences left out: pairs past MAX_PAIRS, partners past MAX_PARTNERS

    def partners(self, row: int) -> tuple[IntArray, IntArray]:
        """The categories sharing an image with ``row`` and how many images they share."""
        start, end = self.pair_ptr[row], self.pair_ptr[row + 1]
        return self.pair_row[start:end], self.pair_images[start:end]

    def cooccur(self, a: int, b: int) -> bool:
        rows, _ = self.partners(a)
        i = int(np.searchsorted(rows, b))
        return i < rows.size and int(rows[i]) == b

    def row_of(self) -> dict[int, int]:
        return {c.id: i for i, c in enumerate(self.categories)}


def _real_categories(value: Any, path: Path) -> tuple[list[RealCategory], list[str]]:
    if not isinstance(value, list) or not value:
        raise InputError(f"{path}: no categories (expected a non-empty 'categories' list)")
    if len(value) > MAX_CATEGORIES:
        raise InputError(f"{path}: {len(value)} categories; at most {MAX_CATEGORIES}")
    parsed = parse_categories(value, str(path))
    matcher = CategoryMatcher(parsed)
    categories, ambiguous = [], []
    for item, category in zip(value, parsed, strict=True):
        frequency = item.get("frequency")
        phrase = prompt_phrase(category.name)
        if [c.id for c in matcher.candidates(phrase)] != [category.id]:
            phrase = category.name  # the name as written is matched first
            if [c.id for c in matcher.candidates(phrase)] != [category.id]:
                ambiguous.append(category.name)
        categories.append(RealCategory(
            id=category.id, name=category.name, supercategory=category.supercategory,
            frequency=frequency if frequency in FREQUENCIES else None, phrase=phrase,
            synonyms=category.synonyms,
        ))
    return categories, ambiguous


def integer_id(value: Any) -> int | None:
    """``value`` as a COCO id that fits 64 bits: an integer, or a float with an integer value
    (``1.0``, as tools that write every number as a float do); ``None`` for anything else
    (a bool, ``1.5``, NaN, a string, an integer of 30 digits)."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, int) and not isinstance(value, bool) and -ID_LIMIT < value < ID_LIMIT:
        return value
    return None


def _image_key(value: Any) -> int | None:
    """An int64 that tells images apart: the id itself when it is a small enough integer, else
    (a string id) a 62-bit hash above every such id. Holding the ids themselves would cost a
    dictionary entry per image (hundreds of MB for a file of a million tiny images)."""
    number = integer_id(value)
    if number is not None and -_HASHED < number < _HASHED:
        return number
    if number is None and not isinstance(value, str):
        return None
    text = value if isinstance(value, str) else str(number)
    digest = hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return _HASHED + (int.from_bytes(digest, "big") >> 2)


def read_histogram(path: Path) -> ClassHistogram:
    """Count REAL's classes and their co-occurrences in one streamed pass. Memory: 16 bytes per
    annotation, the co-occurrence counts (at most ``MAX_PAIRS`` pairs) and the categories."""
    path = Path(path)
    image_keys: array[int] = array("q")
    category_ids: array[int] = array("q")
    skipped: Counter[str] = Counter()
    crowd = annotations = 0

    def annotation(item: Any) -> None:
        nonlocal crowd, annotations
        annotations += 1
        if not isinstance(item, dict):
            skipped["not an object"] += 1
            return
        category, image = item.get("category_id"), item.get("image_id")
        if type(category) is not int or not -ID_LIMIT < category < ID_LIMIT:  # the usual case first
            category = integer_id(category)
        if type(image) is not int or not -_HASHED < image < _HASHED:
            image = _image_key(image)
        if category is None:
            skipped["category_id not an integer"] += 1
            return
        if image is None:
            skipped["image_id not an integer or a string"] += 1
            return
        if item.get("iscrowd"):
            crowd += 1
            return
        image_keys.append(image)
        category_ids.append(category)

    images = 0

    def count_image(_item: Any) -> None:
        nonlocal images
        images += 1

    found = scan_object(path, visit={"annotations": annotation, "images": count_image},
                        keep=("categories",), polygons=False)
    if "categories" not in found:
        raise InputError(f"{path}: no categories (expected a COCO-format file with a 'categories' list)")
    categories, ambiguous = _real_categories(found["categories"], path)
    if not annotations:
        raise InputError(f"{path}: no annotations (expected a COCO-format instances file with an "
                         "'annotations' list)")
    ids = np.array([c.id for c in categories], dtype=np.int64)
    order = np.argsort(ids)
    raw = np.frombuffer(category_ids, dtype=np.int64)
    where = np.minimum(np.searchsorted(ids[order], raw), ids.size - 1)
    known = ids[order][where] == raw
    skipped["category_id not in its categories"] += int((~known).sum())
    rows = order[where[known]]
    del raw, where
    keys = np.frombuffer(image_keys, dtype=np.int64)[known]
    distinct_images, image = np.unique(keys, return_inverse=True)
    del keys, known
    n = len(categories)
    instances = np.bincount(rows, minlength=n).astype(np.int64)
    # One entry per (image, category), sorted by image, then category.
    present = np.unique(image.astype(np.int64) * n + rows)
    del image, rows
    present_image, present_row = present // n, present % n
    images_with = np.bincount(present_row, minlength=n).astype(np.int64)
    ptr, partner, shared, cut = _cooccurrence(present_image, present_row, n)
    return ClassHistogram(
        path=path, categories=categories, instances=instances, images_with=images_with,
        pair_ptr=ptr, pair_row=partner, pair_images=shared, images=max(images, distinct_images.size),
        annotations=annotations, crowd=crowd, skipped=+skipped, ambiguous=ambiguous, pairs_cut=cut,
    )


def _cooccurrence(image: IntArray, row: IntArray, n: int) -> tuple[IntArray, IntArray, IntArray, int]:
    """Symmetric CSR of how many images each pair of categories shares, and how many pairs were
    left out; ``image`` is sorted and (image, row) unique, so an image's rows ascend.

    Pairs are formed per run of equal images, grouped by run length (vectorised per size, not
    per image), ``PAIR_CHUNK`` at a time, and counted into a sorted array of pair keys. Past
    ``MAX_PAIRS`` distinct pairs, those shared by fewest images are dropped (counted in the
    return value): memory stays bounded whatever the file's shape, and a file of images with
    fifty random classes each does not grow a table of billions of pairs."""
    _, starts, counts = np.unique(image, return_index=True, return_counts=True)
    used = np.minimum(counts, MAX_CATEGORIES_PER_IMAGE)
    starts, used = starts[used >= 2], used[used >= 2]
    ends = np.cumsum(used * (used - 1) // 2)  # pairs up to and including each image
    keys, shared = np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    cut, first = 0, 0
    while first < starts.size:
        done = int(ends[first - 1]) if first else 0
        last = max(int(np.searchsorted(ends, done + PAIR_CHUNK, side="right")), first + 1)
        chunk, chunk_counts = np.unique(_pair_keys(starts[first:last], used[first:last], row, n),
                                        return_counts=True)
        keys, shared = _add_counts(keys, shared, chunk, chunk_counts)
        if keys.size > MAX_PAIRS:  # keep the most shared; ties by key, so the cut is deterministic
            kept = np.sort(np.lexsort((keys, -shared))[:MAX_PAIRS])
            cut += keys.size - MAX_PAIRS
            keys, shared = keys[kept], shared[kept]
        first = last
    a, b = keys // n, keys % n
    rows, partners = np.concatenate([a, b]), np.concatenate([b, a])
    shared = np.concatenate([shared, shared])
    del a, b, keys
    # Each category's MAX_PARTNERS most shared partners: a companion is drawn in time of them.
    order = np.lexsort((partners, -shared, rows))
    rank = np.arange(order.size) - np.searchsorted(rows[order], rows[order])
    order = order[rank < MAX_PARTNERS]
    cut_partners = rank.size - order.size
    order = order[np.lexsort((partners[order], rows[order]))]
    ptr = np.searchsorted(rows[order], np.arange(n + 1)).astype(np.int64)
    return ptr, partners[order], shared[order], cut + cut_partners


def _pair_keys(starts: IntArray, used: IntArray, row: IntArray, n: int) -> IntArray:
    """``a * n + b`` (``a < b``) for every pair of categories within each image."""
    parts = []
    for size in np.unique(used):
        group = starts[used == size]
        i, j = np.triu_indices(int(size), k=1)
        parts.append((row[group[:, None] + i[None, :]] * n + row[group[:, None] + j[None, :]]).ravel())
    return np.concatenate(parts)


def _add_counts(keys: IntArray, counts: IntArray, new: IntArray, new_counts: IntArray
                ) -> tuple[IntArray, IntArray]:
    """Sorted unique ``keys`` with ``counts``, plus sorted unique ``new`` with ``new_counts``."""
    at = np.searchsorted(keys, new)
    found = at < keys.size
    found[found] = keys[at[found]] == new[found]
    counts = counts.copy()
    counts[at[found]] += new_counts[found]
    fresh = ~found
    return np.insert(keys, at[fresh], new[fresh]), np.insert(counts, at[fresh], new_counts[fresh])


# -- choosing and sizing ----------------------------------------------------------------------


@dataclass(frozen=True)
class BalanceOptions:
    """What to top up and how (see the module docstring)."""

    target: int
    pass_rate: float = 1.0
    tail_below: int | None = None
    frequency: tuple[str, ...] = ()  # of "r", "c", "f"
    categories_only: tuple[str, ...] = ()
    max_per_category: int | None = None
    objects: tuple[int, int] = (1, 3)
    companion_cap: float = defaults.BALANCE_COMPANION_CAP
    seed: int = 0

    def __post_init__(self) -> None:
        if not 1 <= self.target <= MAX_QUOTA:
            raise InputError(f"--target: expected 1..{MAX_QUOTA}, got {self.target}")
        if not 0 < self.pass_rate <= 1:
            raise InputError(f"--pass-rate: expected a share in (0, 1], got {self.pass_rate}")
        if self.max_per_category is not None and self.max_per_category < 1:
            raise InputError(f"--max-per-category: expected >= 1, got {self.max_per_category}")
        if not 0 <= self.companion_cap <= 10:
            raise InputError(f"--companion-cap: expected a share in 0..10, got {self.companion_cap}")
        unknown = [f for f in self.frequency if f not in FREQUENCIES]
        if unknown:
            raise InputError(f"--frequency: expected letters of r,c,f (rare, common, frequent), "
                             f"got {quoted(','.join(unknown))}")


def parse_frequency(text: str | None) -> tuple[str, ...]:
    """``"r,c"`` (or ``"rare,common"``) to ``("r", "c")``."""
    if not text:
        return ()
    letters = []
    for part in text.split(","):
        part = part.strip().lower()
        letters.append(part[:1] if part in FREQUENCIES.values() else part)
    return tuple(dict.fromkeys(letters))


def select(histogram: ClassHistogram, options: BalanceOptions) -> NDArray[np.bool_]:
    """Which categories are topped up; a bad filter is an ``InputError``."""
    cats = histogram.categories
    chosen = np.ones(len(cats), dtype=bool)
    if options.tail_below is not None:
        chosen &= histogram.instances < options.tail_below
    if options.frequency:
        if not any(c.frequency for c in cats):
            raise InputError(f"{histogram.path}: --frequency needs LVIS's 'frequency' field (r, c, f) "
                             "on the categories, and this file has none; use --tail-below instead")
        chosen &= np.array([c.frequency in options.frequency for c in cats])
    if options.categories_only:
        matcher = CategoryMatcher(Category(c.id, c.name, c.supercategory, c.synonyms) for c in cats)
        rows = histogram.row_of()
        wanted = np.zeros(len(cats), dtype=bool)
        unknown = []
        for name in options.categories_only:
            found = matcher.candidates(name)
            if len(found) != 1:
                unknown.append(repr(name) + (" (ambiguous)" if found else ""))
            else:
                wanted[rows[found[0].id]] = True
        if unknown:
            raise InputError(f"--categories-only: no category in {histogram.path} for "
                             f"{', '.join(unknown)}")
        chosen &= wanted
    ambiguous = {c.name for c in cats} & set(histogram.ambiguous)
    if ambiguous:
        chosen &= np.array([c.name not in ambiguous for c in cats])
    return chosen


def pass_rates_from(summary: Path, histogram: ClassHistogram) -> NDArray[np.float64]:
    """Per category, the share of planned instances an earlier run kept, read from its
    ``summary.json``: kept / (kept + dropped) where at least ``MIN_EVIDENCE`` were planned,
    else that run's overall share; never under ``MIN_PASS_RATE``. Every count must be an
    integer in 0..``MAX_COUNT``, and some category of the summary a category of REAL. The file
    is read as every run's summary is (``acp.runfolder.read_run_summary``: bounded, typed)."""
    where = f"--pass-rate-from {summary}"
    try:
        record = read_run_summary(summary)
    except InputError as error:
        raise InputError(f"--pass-rate-from {error}") from None
    keys = ("instances_kept_by_category", "instances_dropped_by_category")
    if not set(keys) <= record.model_fields_set:
        raise InputError(f"{where}: expected the summary.json of an acp generate run (with "
                         "instances_kept_by_category and instances_dropped_by_category)")
    kept, dropped = record.instances_kept_by_category, record.instances_dropped_by_category
    cats = histogram.categories
    matcher = CategoryMatcher(Category(c.id, c.name, c.supercategory, c.synonyms) for c in cats)
    rows = histogram.row_of()
    n = len(cats)
    good, bad = np.zeros(n), np.zeros(n)
    matched = 0
    for key, counts, into in ((keys[0], kept, good), (keys[1], dropped, bad)):
        for name, count in counts.items():
            if type(count) is not int or not 0 <= count <= MAX_COUNT:
                raise InputError(f"{where}: {key}[{quoted(name)}] is {quoted(count)}; expected a "
                                 f"count of instances (an integer in 0..{MAX_COUNT})")
            category = matcher.match(name)
            if category is not None:
                into[rows[category.id]] += count
                matched += 1
    if (kept or dropped) and not matched:
        raise InputError(f"{where}: none of its categories is a category of {histogram.path} "
                         "(expected the summary of a run that topped up this file)")
    total = good.sum() + bad.sum()
    overall = good.sum() / total if total else 1.0
    planned = good + bad
    rates = np.where(planned >= MIN_EVIDENCE, good / np.maximum(planned, 1), overall)
    return np.clip(rates, MIN_PASS_RATE, 1.0)


def quotas(histogram: ClassHistogram, selected: NDArray[np.bool_], options: BalanceOptions,
           pass_rates: NDArray[np.float64] | None = None) -> IntArray:
    """``ceil(max(0, target - n_c) / pass_rate_c)`` for the selected, capped; 0 elsewhere."""
    rates = pass_rates if pass_rates is not None else np.full(len(histogram.categories), options.pass_rate)
    if rates.shape != histogram.instances.shape or not ((rates > 0) & (rates <= 1)).all():  # NaN too
        raise ValueError("pass rates must be one share in (0, 1] per category")
    missing = np.maximum(options.target - histogram.instances, 0)
    # Rounded before the ceiling so that 0.7 / 0.7 is 1, not 1.0000000000000002.
    quota = np.ceil(np.round(missing / rates, 9)).astype(np.int64)
    if options.max_per_category is not None:
        quota = np.minimum(quota, options.max_per_category)
    return np.where(selected, np.minimum(quota, MAX_QUOTA), 0)


# -- scenes -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class BalanceScene:
    subject: int  # row
    companions: tuple[tuple[int, str], ...]  # (row, source), source one of SOURCES


class SceneList(Sequence[BalanceScene]):
    """The scenes of a plan in flat arrays: 9 bytes a scene and 5 a companion (a list of
    ``BalanceScene`` took about 300 bytes a scene)."""

    def __init__(self) -> None:
        self._subjects: array[int] = array("i")
        self._ends: array[int] = array("q")  # where each scene's companions end
        self._companions: array[int] = array("i")
        self._sources: array[int] = array("b")

    def append(self, subject: int, companions: Sequence[tuple[int, str]]) -> None:
        self._subjects.append(subject)
        for row, source in companions:
            self._companions.append(row)
            self._sources.append(SOURCES.index(source))
        self._ends.append(len(self._companions))

    def __len__(self) -> int:
        return len(self._subjects)

    @overload
    def __getitem__(self, index: int) -> BalanceScene: ...

    @overload
    def __getitem__(self, index: slice) -> list[BalanceScene]: ...

    def __getitem__(self, index: int | slice) -> BalanceScene | list[BalanceScene]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        index = range(len(self))[index]  # negative indices, and IndexError past the end
        start, end = self._ends[index - 1] if index else 0, self._ends[index]
        return BalanceScene(self._subjects[index], tuple(
            (self._companions[k], SOURCES[self._sources[k]]) for k in range(start, end)))


@dataclass
class BalancePlan:
    histogram: ClassHistogram
    options: BalanceOptions
    selected: NDArray[np.bool_]
    pass_rates: NDArray[np.float64]
    quota: IntArray
    scenes: SceneList
    as_subject: IntArray  # instances planned per category as a scene's subject
    towards_quota: IntArray  # as companions, counted towards the category's quota
    beyond_quota: IntArray  # as companions past the quota (head classes), under the cap
    backoffs: Counter[tuple[int, int, str]] = field(default_factory=Counter)  # (subject, companion, source)

    @property
    def planned(self) -> IntArray:
        return self.as_subject + self.towards_quota + self.beyond_quota

    def concept_input(self) -> ConceptInput:
        """The scenes as ``acp.concepts`` explicit scenes, companions marked."""
        cats = self.histogram.categories
        scenes = tuple((cats[s.subject].phrase, *(cats[r].phrase for r, _ in s.companions))
                       for s in self.scenes)
        companions = tuple(tuple(cats[r].phrase for r, _ in s.companions) for s in self.scenes)
        return ConceptInput(scenes=scenes, companions=companions)

    def budget(self) -> dict[str, int]:
        """Planned instances by where they go: the selected categories' quotas (as subject or
        as companion), and companions of categories past their quota."""
        return {
            "instances": int(self.planned.sum()),
            "to_selected_as_subject": int(self.as_subject.sum()),
            "to_selected_as_companion": int(self.towards_quota.sum()),
            "companions_past_quota": int(self.beyond_quota.sum()),
        }

    def record(self) -> dict[str, Any]:
        """The plan as JSON: options, per-category rows, back-offs, budget."""
        cats = self.histogram.categories
        rows = []
        for i, c in enumerate(cats):
            if not (self.selected[i] or self.planned[i]):
                continue
            rows.append({
                "id": c.id, "name": c.name, "phrase": c.phrase, "frequency": c.frequency,
                "real": int(self.histogram.instances[i]), "selected": bool(self.selected[i]),
                "pass_rate": round(float(self.pass_rates[i]), 4), "quota": int(self.quota[i]),
                "as_subject": int(self.as_subject[i]), "as_companion": int(self.towards_quota[i]),
                "past_quota": int(self.beyond_quota[i]),
            })
        return {
            BALANCE_MARK: "plan",
            "real": str(self.histogram.path),
            "options": {k: v for k, v in self.options.__dict__.items()},
            "real_images": self.histogram.images,
            "real_instances": int(self.histogram.instances.sum()),
            "categories": len(cats),
            "selected": int(self.selected.sum()),
            "scenes": len(self.scenes),
            "budget": self.budget(),
            "backoffs": [
                {"subject": cats[s].name, "companion": cats[c].name, "source": source, "scenes": n}
                for (s, c, source), n in sorted(self.backoffs.items())
            ],
            "ambiguous_names": self.histogram.ambiguous,
            "rows": rows,
        }

    def write(self, path: Path) -> None:
        # allow_nan=False: every number is checked where it is read, and NaN is no JSON.
        write_atomic(path, json.dumps(self.record(), indent=1, ensure_ascii=False, allow_nan=False) + "\n")


class _Pools:
    """Back-off pools of companions, computed once each: a supercategory's co-occurrences and
    the frequent classes; and the co-occurrence weights as floats."""

    def __init__(self, histogram: ClassHistogram):
        self.histogram = histogram
        self._super: dict[str, tuple[IntArray, NDArray[np.float64]]] = {}
        self._members: dict[str, list[int]] = {}  # rows by supercategory, made once (not per call)
        for i, c in enumerate(histogram.categories):
            self._members.setdefault(c.supercategory, []).append(i)
        cats = histogram.categories
        frequent = np.array([c.frequency == "f" for c in cats])
        if not frequent.any():
            top = np.argsort(-histogram.images_with, kind="stable")[:FREQUENT_FALLBACK]
            frequent = np.zeros(len(cats), dtype=bool)
            frequent[top] = True
        rows = np.flatnonzero(frequent & (histogram.images_with > 0))
        self.frequent = (rows.astype(np.int64), histogram.images_with[rows].astype(np.float64))
        self.pair_weights = histogram.pair_images.astype(np.float64)  # converted once, not per draw

    def supercategory(self, row: int) -> tuple[IntArray, NDArray[np.float64]]:
        name = self.histogram.categories[row].supercategory
        if name not in self._super:
            weights = np.zeros(len(self.histogram.categories))
            for member in self._members[name]:
                partners, shared = self.histogram.partners(member)
                np.add.at(weights, partners, shared)
            rows = np.flatnonzero(weights)
            self._super[name] = (rows.astype(np.int64), weights[rows])
        return self._super[name]


def plan_balance(histogram: ClassHistogram, options: BalanceOptions,
                 pass_rates: NDArray[np.float64] | None = None) -> BalancePlan:
    """Quotas and scenes for ``histogram`` (deterministic per ``options.seed``)."""
    selected = select(histogram, options)
    rates = pass_rates if pass_rates is not None else np.full(len(histogram.categories), options.pass_rate)
    quota = quotas(histogram, selected, options, rates)
    if quota.sum() > MAX_TOPUP_INSTANCES:
        raise InputError(
            f"the top-up asks for {int(quota.sum())} instances ({int((quota > 0).sum())} categories "
            f"below --target {options.target}); at most {MAX_TOPUP_INSTANCES} are planned at once: "
            "lower --target, set --max-per-category, or top up part of the categories at a time "
            "(--tail-below, --frequency, --categories-only)")
    n = len(histogram.categories)
    plan = BalancePlan(histogram, options, selected, rates, quota, SceneList(),
                       np.zeros(n, dtype=np.int64), np.zeros(n, dtype=np.int64), np.zeros(n, dtype=np.int64))
    low, high = options.objects
    if not 1 <= low <= high <= MAX_OBJECTS_PER_SCENE:
        raise InputError(f"--objects-per-scene: expected 1 <= MIN <= MAX <= {MAX_OBJECTS_PER_SCENE}")
    rng = np.random.default_rng(options.seed)
    remaining = quota.copy()
    cap = np.floor(options.companion_cap * histogram.instances).astype(np.int64)
    ambiguous = set(histogram.ambiguous)
    usable = np.array([c.name not in ambiguous and len(c.phrase) <= MAX_NAME_LENGTH
                       for c in histogram.categories]) if ambiguous else np.ones(n, dtype=bool)
    pools = _Pools(histogram)
    hits = np.zeros(n, dtype=np.int64)  # per scene: companions each category has shared an image with
    taken = np.zeros(n, dtype=bool)  # per scene: already in it
    beyond = plan.beyond_quota
    # Who may still be drawn, kept up to date per draw rather than recomputed over every partner
    # of every draw: wanted (quota left) or under its cap, usable, and not in the scene.
    open_ = ((remaining > 0) | (beyond < cap)) & usable

    def reopen(row: int) -> None:
        open_[row] = (remaining[row] > 0 or beyond[row] < cap[row]) and usable[row] and not taken[row]

    heap = [(-int(remaining[r]), float(rng.random()), int(r)) for r in np.flatnonzero(remaining)]
    heapq.heapify(heap)
    while heap:
        left, _, subject = heapq.heappop(heap)
        if -left != remaining[subject] or remaining[subject] <= 0:
            continue  # stale: the category was drawn as a companion since
        remaining[subject] -= 1
        plan.as_subject[subject] += 1
        wanted = int(rng.integers(low, high + 1)) - 1
        chosen: list[tuple[int, str]] = []
        counted: list[int] = []  # companions whose partners are counted in ``hits``
        taken[subject], open_[subject] = True, False
        for _ in range(wanted):
            pick = _draw(histogram, pools, subject, len(chosen), hits, open_, rng)
            if pick is None:
                break
            row, source = pick
            chosen.append((row, source))
            taken[row], open_[row] = True, False
            if len(chosen) < wanted:  # only a later draw reads them
                hits[histogram.partners(row)[0]] += 1
                counted.append(row)
            if remaining[row] > 0:
                remaining[row] -= 1
                plan.towards_quota[row] += 1
                heapq.heappush(heap, (-int(remaining[row]), float(rng.random()), row))
            else:
                beyond[row] += 1
            if source != "cooccurrence":
                plan.backoffs[(subject, row, source)] += 1
        # The scratch arrays back as they were, in time of the scene's size.
        for row in counted:
            hits[histogram.partners(row)[0]] -= 1
        taken[subject] = False
        reopen(subject)
        for row, _ in chosen:
            taken[row] = False
            reopen(row)
        plan.scenes.append(subject, chosen)
        if remaining[subject] > 0:
            heapq.heappush(heap, (-int(remaining[subject]), float(rng.random()), subject))
    return plan


def _draw(histogram: ClassHistogram, pools: _Pools, subject: int, drawn: int, hits: IntArray,
          open_: NDArray[np.bool_], rng: np.random.Generator) -> tuple[int, str] | None:
    """One companion for ``subject``: from its co-occurrences, else a back-off pool. It must
    have shared an image with each of the ``drawn`` companions so far (``hits``: with how many
    of them each category has) and be ``open_``: not in the scene, usable, and still wanted
    (quota left) or under its cap."""
    start, end = histogram.pair_ptr[subject], histogram.pair_ptr[subject + 1]
    partners = histogram.pair_row[start:end], pools.pair_weights[start:end]
    sources: list[tuple[str, tuple[IntArray, NDArray[np.float64]]]] = [("cooccurrence", partners)]
    # Back-offs are for a subject that shares no image with any category: one whose partners
    # are used up gets a smaller scene instead, never a pair the real data has not shown.
    if not drawn and partners[0].size == 0:
        sources += [("supercategory", pools.supercategory(subject)), ("frequent", pools.frequent)]
    for source, (rows, weights) in sources:
        if rows.size == 0:
            continue
        ok = open_[rows]
        if drawn:
            ok &= hits[rows] == drawn
        candidates = rows[ok]
        if not candidates.size:
            continue
        total = np.cumsum(weights[ok])
        pick = int(np.searchsorted(total, rng.random() * total[-1], side="right"))
        return int(candidates[min(pick, candidates.size - 1)]), source
    return None


# -- what a synthetic set adds ----------------------------------------------------------------


def synthetic_counts(path: Path, histogram: ClassHistogram) -> tuple[IntArray, int]:
    """Instances per REAL category in a synthetic set: a COCO file (its annotations; a category
    with REAL's id and name is that category, any other is matched by name) or a plans file
    (``.jsonl``: every planned object). Also returns how many matched no REAL category."""
    cats = histogram.categories
    matcher = CategoryMatcher(Category(c.id, c.name, c.supercategory, c.synonyms) for c in cats)
    rows = histogram.row_of()
    counts = np.zeros(len(cats), dtype=np.int64)
    unmatched = 0
    path = Path(path)
    if path.suffix.lower() == ".jsonl":
        by_name: dict[str, int | None] = {}  # names matched so far, at most MAX_CATEGORIES of them
        if problem := file_problem(path):
            raise InputError(f"{path}: {problem}")
        for _number, record, _text in read_records(path):
            for obj in (record or {}).get("objects") or []:
                name = obj.get("category") if isinstance(obj, dict) else None
                if not isinstance(name, str):
                    continue
                row = by_name.get(name, -1)
                if row == -1:
                    category = matcher.match(name)
                    row = None if category is None else rows[category.id]
                    if len(by_name) < MAX_CATEGORIES:
                        by_name[name] = row
                if row is None:
                    unmatched += 1
                else:
                    counts[row] += 1
        return counts, unmatched
    # The category id of every annotation, mapped once the categories are read (they may come
    # last): 8 bytes an annotation, whatever ids the file holds.
    ids: array[int] = array("q")

    def annotation(item: Any) -> None:
        nonlocal unmatched
        if isinstance(item, dict) and not item.get("iscrowd"):
            cid = integer_id(item.get("category_id"))
            if cid is None:
                unmatched += 1
            else:
                ids.append(cid)

    found = scan_object(path, visit={"annotations": annotation}, keep=("categories",), polygons=False)
    if not isinstance(found.get("categories"), list):
        raise InputError(f"{path}: no categories (expected a COCO-format file or a plans .jsonl)")
    mapping: dict[int, int] = {}
    for item in found["categories"]:
        cid = integer_id(item.get("id")) if isinstance(item, dict) else None
        if cid is None or not isinstance(item.get("name"), str):
            continue
        same = rows.get(cid)
        if same is not None and cats[same].name == item["name"]:
            mapping[cid] = same
            continue
        match = matcher.match(item["name"])
        if match is not None:
            mapping[cid] = rows[match.id]
    known = np.array(sorted(mapping), dtype=np.int64)
    found_ids = np.frombuffer(ids, dtype=np.int64)
    if known.size:
        at = np.minimum(np.searchsorted(known, found_ids), known.size - 1)
        hit = known[at] == found_ids
        target = np.array([mapping[int(k)] for k in known], dtype=np.int64)
        counts += np.bincount(target[at[hit]], minlength=len(cats))
        unmatched += int((~hit).sum())
    else:
        unmatched += found_ids.size
    return counts, unmatched


@dataclass
class BalanceReport:
    """The histogram before and after, head to tail."""

    histogram: ClassHistogram
    synthetic: IntArray
    target: int | None = None
    selected: NDArray[np.bool_] | None = None
    unmatched: int = 0
    order: IntArray = field(init=False)

    def __post_init__(self) -> None:
        self.order = np.lexsort((np.arange(len(self.histogram.categories)), -self.histogram.instances))

    @property
    def after(self) -> IntArray:
        return self.histogram.instances + self.synthetic

    def rows(self) -> list[dict[str, Any]]:
        cats, real = self.histogram.categories, self.histogram.instances
        return [{
            "id": cats[i].id, "name": cats[i].name, "frequency": cats[i].frequency,
            "real": int(real[i]), "synthetic": int(self.synthetic[i]),
            "after": int(real[i] + self.synthetic[i]),
            **({"selected": bool(self.selected[i])} if self.selected is not None else {}),
        } for i in self.order]

    def totals(self) -> dict[str, Any]:
        real, after = self.histogram.instances, self.after
        totals: dict[str, Any] = {
            "categories": len(real), "real_instances": int(real.sum()),
            "synthetic_instances": int(self.synthetic.sum()), "unmatched_synthetic": self.unmatched,
        }
        if self.target is not None:
            watched = self.selected if self.selected is not None else np.ones(len(real), dtype=bool)
            totals["target"] = self.target
            totals["below_target_before"] = int((watched & (real < self.target)).sum())
            totals["below_target_after"] = int((watched & (after < self.target)).sum())
        return totals

    def write_json(self, path: Path) -> None:
        report = {BALANCE_MARK: "report", "real": str(self.histogram.path), **self.totals(),
                  "rows": self.rows()}
        write_atomic(path, json.dumps(report, ensure_ascii=False, indent=None, separators=(",", ":"),
                                      allow_nan=False).replace('{"id"', '\n{"id"') + "\n")

    def table(self, limit: int = 40) -> list[str]:
        """Lines for the terminal: the selected categories (or all), head to tail, at most
        ``limit`` rows (the JSON has every row)."""
        shown = [i for i in self.order if self.selected is None or self.selected[i] or self.synthetic[i]]
        width = max([len(self.histogram.categories[i].name) for i in shown[:limit]] + [8])
        lines = [f"{'category':<{width}}  {'freq':>4}  {'real':>9}  {'synthetic':>9}  {'after':>9}"]
        for i in shown[:limit]:
            c = self.histogram.categories[i]
            real, syn = int(self.histogram.instances[i]), int(self.synthetic[i])
            lines.append(f"{c.name:<{width}}  {c.frequency or '-':>4}  {real:>9}  {syn:>9}  {real + syn:>9}")
        if len(shown) > limit:
            lines.append(f"... and {len(shown) - limit} more rows")
        return lines

    def write_chart(self, path: Path) -> None:
        """A bar chart on a log scale, head to tail: real instances, what the synthetic set
        adds on top, and the target line; the x axis names the categories (every one up to
        ``CHART_NAMES``, else that many spread evenly). Every text is drawn as written: a "$"
        in a name would otherwise start matplotlib's mathtext, and a bad formula fail."""
        try:
            import matplotlib
        except ImportError:
            raise MissingDependencyError(
                "the balance chart needs matplotlib: pip install 'acp[report]'") from None
        matplotlib.use("Agg")
        from matplotlib import pyplot as plt

        real, after = self.histogram.instances[self.order], self.after[self.order]
        x = np.arange(real.size)
        figure, axes = plt.subplots(figsize=(12, 4.5), dpi=100)
        try:
            axes.bar(x, np.maximum(after, 0.5), width=1.0, color="#e4572e", label="after (real + synthetic)")
            axes.bar(x, np.maximum(real, 0.5), width=1.0, color="#4c72b0", label="real")
            if self.target is not None:
                axes.axhline(self.target, color="black", linestyle="--", linewidth=1,
                             label=f"target {self.target}")
            axes.set_yscale("log")
            axes.set_ylim(bottom=0.8)
            axes.set_xlim(-0.5, real.size - 0.5)
            ticks = np.unique(np.linspace(0, real.size - 1, min(real.size, CHART_NAMES)).round().astype(int))
            names = [self.histogram.categories[i].name for i in self.order[ticks]]
            axes.set_xticks(ticks, [n if len(n) <= 24 else n[:23] + "…" for n in names],
                            rotation=90, fontsize=7 if len(ticks) > 30 else 9, parse_math=False)
            shown = "" if len(ticks) == real.size else f", {len(ticks)} of them named"
            axes.set_xlabel(f"{real.size} categories, head to tail (by real instances){shown}",
                            parse_math=False)
            axes.set_ylabel("instances")
            axes.set_title(f"{self.histogram.path.name}: instances per category before and after",
                           parse_math=False)
            axes.legend(loc="upper right")
            figure.tight_layout()
            with atomic_path(path) as tmp:
                figure.savefig(tmp, format="png", metadata={"Software": BALANCE_MARK})
        finally:
            plt.close(figure)


def plan_report(plan: BalancePlan) -> BalanceReport:
    """The histogram the plan would make if CLIS kept every planned instance."""
    return BalanceReport(plan.histogram, plan.planned, plan.options.target, plan.selected)


def describe_budget(plan: BalancePlan) -> str:
    """One line: scenes, instances and where they go."""
    budget = plan.budget()
    total = max(budget["instances"], 1)
    selected = budget["to_selected_as_subject"] + budget["to_selected_as_companion"]
    below = int((plan.quota > 0).sum())
    return (f"{int(plan.selected.sum())} categories selected, {below} below the target; "
            f"{len(plan.scenes)} scenes, {budget['instances']} instances: "
            f"{selected} ({100 * selected / total:.1f}%) to the selected categories' quotas, "
            f"{budget['companions_past_quota']} ({100 * budget['companions_past_quota'] / total:.1f}%) "
            f"companions past their quota; {sum(plan.backoffs.values())} backed-off companions")

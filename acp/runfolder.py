"""The files of a run folder, by name, and typed readers of each of them.

Two kinds of folder are read here:

- ``RunFolder``: an ``acp generate`` output (``settings.json``, ``progress.jsonl``,
  ``scores.jsonl``, ``summary.json``, ``plans.jsonl``, ``annotations.json``, ``images/``,
  ``candidates/`` with its ``manifest.jsonl``, ``balance.json``, ``report.html``);
- ``ScoreReportFolder``: an ``acp score dataset`` report (``summary.json``, ``images.json``,
  ``boxes.json``, ``categories.json``, ``failures.json``).

The names are defined here once; readers get records validated through a pydantic model
before anything uses a field. Files are data, and data can be hostile (a hand edit, another
tool, a corrupted disk), so every reader is bounded and decides what a bad value costs:

- A whole-file record (``settings.json``, ``summary.json``, a score report's
  ``categories.json``) is read only from a regular file of at most ``MAX_FILE`` bytes. A file
  that is not JSON, not of the expected shape, or has a wrong type in a field a reader uses is
  an ``InputError`` naming the file and the field: one line, nothing written. A missing file
  is ``None`` (an interrupted run has no summary yet).
- A stream of records (the ``.jsonl`` files; ``images.json``, ``boxes.json`` and
  ``failures.json``, written one element a line) is read a line at a time, at most
  ``MAX_LINE`` bytes a line (a longer one is skipped without being held). A line that is not
  JSON, not an object, or fails its model is skipped and counted in ``Skipped``, with its file,
  line and reason, so a page can say what it left out. As ``acp.jsonl`` does, a final line
  without its newline counts only when it parses.
- The elements of a COCO file's ``images``, ``annotations`` and ``categories`` are validated
  one at a time as they are used (``CocoImage``, ``CocoAnnotation``, ``CocoCategory``); a bad one
  is skipped and counted the same way. The COCO file itself is the dataset and is parsed whole
  (``acp.score.bank.read_coco_file``), up to ``MAX_COCO`` bytes.

Numbers are read strictly (no ``"5"`` for 5, no ``true`` for 1). Scores must lie in 0-100
(``NaN`` and ``Infinity`` fail that too), counts in 64 bits; a whole-file record refuses
``NaN`` and ``Infinity`` anywhere, and an integer past Python's 4300 digits is bad JSON.
The records of ``acp.schema`` (plans, candidates, candidate scores, plan results) are read
with those models, which refuse unknown keys as ``acp validate`` does; the records defined
here ignore unknown keys (a newer acp may add some), and ``settings.json`` keeps them to show.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

from acp import defaults
from acp.errors import InputError
from acp.schema import Candidate, CandidateScore, PlanResult, ScenePlan, error_problems

# --- names ---------------------------------------------------------------------------------

SETTINGS = "settings.json"
PROGRESS = "progress.jsonl"
SCORES = "scores.jsonl"
SUMMARY = "summary.json"
PLANS = "plans.jsonl"
PLAN_FAILURES = "plans.jsonl.failures.jsonl"
ANNOTATIONS = "annotations.json"
COCO_RECORDS = "coco_records.jsonl"
IMAGES = "images"
CANDIDATES = "candidates"
MANIFEST = "manifest.jsonl"  # in CANDIDATES, as in any render folder
BALANCE = "balance.json"
BALANCE_CHART = "balance.png"
REPORT = "report.html"

# An `acp score dataset` report.
SCORE_SUMMARY = "summary.json"
SCORE_IMAGES = "images.json"
SCORE_BOXES = "boxes.json"
SCORE_CATEGORIES = "categories.json"
SCORE_FAILURES = "failures.json"

# --- bounds --------------------------------------------------------------------------------

# A line of a stream: acp's longest, a scores line of 30 objects with their 435 pair details,
# is about 150 kB.
MAX_LINE = 1 << 20
# A whole-file record: a summary of 100,000 categories is about 6 MB.
MAX_FILE = 16 << 20
# The COCO file, parsed whole: 1M images with RLE masks and provenance are about 2 GB, and
# parsing takes several times its size in memory.
MAX_COCO = 4 << 30
MAX_TEXT = 10_000  # characters of a name, reason or caption
MAX_COUNT = (1 << 63) - 1
SKIPPED_EXAMPLES = 20  # reasons kept for messages; the counts are complete


# --- field types ---------------------------------------------------------------------------


class _Read(BaseModel):
    """A record as read back: strict types, unknown keys ignored, immutable."""

    model_config = ConfigDict(strict=True, extra="ignore", frozen=True, allow_inf_nan=False)


Score = Annotated[float, Field(ge=0.0, le=100.0, allow_inf_nan=False)]
Count = Annotated[int, Field(ge=0, le=MAX_COUNT)]
Text = Annotated[str, Field(max_length=MAX_TEXT)]
Seconds = Annotated[float, Field(ge=0.0, allow_inf_nan=False)]
# An id that COCO records refer to each other by: a 64-bit integer, a finite number or a short
# string (never a bool, a list or an object).
RecordId = (Annotated[int, Field(ge=-MAX_COUNT, le=MAX_COUNT)]
            | Annotated[float, Field(allow_inf_nan=False)]
            | Annotated[str, Field(min_length=1, max_length=256)])


def _pixel_box(box: list[float]) -> list[float]:
    if len(box) != 4:
        raise ValueError(f"expected 4 numbers [x, y, w, h], got {len(box)}")
    if not all(math.isfinite(v) for v in box):
        raise ValueError("values must be finite")
    if box[2] <= 0 or box[3] <= 0:
        raise ValueError("width and height must be > 0")
    return box


# A COCO box in pixels. Its values may still lie far outside its image: a drawing clips it.
PixelBox = Annotated[list[Annotated[float, Field(allow_inf_nan=False)]], AfterValidator(_pixel_box)]


# --- skipped records -----------------------------------------------------------------------


@dataclass
class Skipped:
    """Records a reader left out: a count per file and the first reasons."""

    counts: dict[str, int] = field(default_factory=dict)
    examples: list[str] = field(default_factory=list)

    def add(self, file: str, where: str, reason: str) -> None:
        self.counts[file] = self.counts.get(file, 0) + 1
        if len(self.examples) < SKIPPED_EXAMPLES:
            self.examples.append(f"{file} {where}: {_short(reason, 300)}")

    @property
    def total(self) -> int:
        return sum(self.counts.values())


def _short(text: str, limit: int) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _reason(error: ValidationError) -> str:
    return "; ".join(f"{f}: {r}" for f, r in error_problems(error)[:3])


# --- JSON, bounded -------------------------------------------------------------------------


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


_DECODER = json.JSONDecoder(parse_constant=_refuse_constant)


def parse_json(text: str | bytes) -> Any:
    """``json.loads`` without ``NaN``/``Infinity``; every failure (bad JSON or UTF-8, nesting
    past the recursion limit, an integer past 4300 digits) is a ``ValueError``."""
    try:
        return _DECODER.decode(text.decode("utf-8") if isinstance(text, bytes) else text)
    except RecursionError:
        raise ValueError("nested too deeply") from None


def _regular(path: Path) -> bool:
    """A regular file (or a link to one): never a FIFO, a device or a folder, which could block
    or never end."""
    return path.is_file()


def read_json_file(path: Path, limit: int = MAX_FILE) -> Any | None:
    """The JSON value of a whole-file record; ``None`` when there is no such file."""
    if not path.exists() and not path.is_symlink():
        return None
    if not _regular(path):
        raise InputError(f"{path}: not a regular file")
    try:
        with open(path, "rb") as handle:
            raw = handle.read(limit + 1)
    except OSError as error:
        raise InputError(f"{path}: cannot read ({error.strerror or error})") from None
    if len(raw) > limit:
        raise InputError(f"{path}: larger than {limit >> 20} MiB; expected the small file acp writes")
    try:
        return parse_json(raw)
    except (ValueError, UnicodeDecodeError) as error:
        raise InputError(f"{path}: not valid JSON ({_short(str(error), 200)})") from None


M = TypeVar("M", bound=BaseModel)


def _record(path: Path, model: type[M], value: Any, **options: Any) -> M:
    """``value`` through ``model``, or one ``InputError`` line naming the file and the field."""
    if not isinstance(value, dict):
        raise InputError(f"{path}: expected a JSON object, got {type(value).__name__}")
    try:
        return model.model_validate(value, **options)
    except ValidationError as error:
        field_name, reason = error_problems(error)[0]
        raise InputError(f"{path}: {field_name}: {_short(reason, 200)}") from None


def _lines(path: Path, limit: int = MAX_LINE) -> Iterator[tuple[int, bytes | None]]:
    """``(number, line)`` of each non-blank line; ``None`` for one longer than ``limit`` bytes,
    which is read past in pieces, never held whole. A final line without its newline is given
    only when it parses (a torn write otherwise, as ``acp.jsonl`` reads it)."""
    with open(path, "rb") as handle:
        number = 0
        while raw := handle.readline(limit + 1):
            number += 1
            if len(raw) > limit:
                while raw and not raw.endswith(b"\n"):
                    raw = handle.readline(1 << 20)
                yield number, None
                continue
            if not raw.endswith(b"\n"):
                try:
                    parse_json(raw)
                except (ValueError, UnicodeDecodeError):
                    return
            if raw.strip():
                yield number, raw


def _valid(values: Iterator[tuple[str, Any]], model: type[M], file: str, skipped: Skipped,
           check: Callable[[M], str | None] | None = None, **options: Any) -> Iterator[M]:
    """Each ``(where, value)`` through ``model`` (and ``check``, a reason or None); the rest is
    counted in ``skipped``. A value of ``bytes`` is a line of JSON, parsed by pydantic (three
    times faster than ``json.loads`` and a validation); NaN passes that parser, so every score
    is range-checked (``_out_of_range``)."""
    for where, value in values:
        try:
            if isinstance(value, bytes):
                record = model.model_validate_json(value, **options)
            elif isinstance(value, dict):
                record = model.model_validate(value, **options)
            else:
                skipped.add(file, where, f"expected a JSON object, got {type(value).__name__}")
                continue
        except ValidationError as error:
            skipped.add(file, where, _reason(error))
            continue
        problem = check(record) if check is not None else None
        if problem is not None:
            skipped.add(file, where, problem)
            continue
        yield record


def _line_values(path: Path, skipped: Skipped, first: int = 1) -> Iterator[tuple[str, bytes]]:
    """``("line N", text)`` of each line of ``path`` from line ``first`` on; an element written
    one a line may end in a comma, and the closing ``]`` is not one."""
    for number, raw in _lines(path):
        if number < first:
            continue
        if raw is None:
            skipped.add(path.name, f"line {number}", f"longer than {MAX_LINE >> 20} MiB")
            continue
        text = raw.strip().rstrip(b",")
        if text != b"]":
            yield f"line {number}", text


def _stream(path: Path, model: type[M], skipped: Skipped,
            check: Callable[[M], str | None] | None = None, **options: Any) -> Iterator[M]:
    if not path.exists():
        return
    if not _regular(path):
        skipped.add(path.name, "", "not a regular file")
        return
    yield from _valid(_line_values(path, skipped), model, path.name, skipped, check, **options)


def _with_ids(path: Path, ids: Collection[str], skipped: Skipped) -> Iterator[tuple[str, bytes]]:
    """The lines of ``path`` that hold one of ``ids`` as JSON text; the others, which cannot
    be one of them, are not even parsed."""
    wanted = [json.dumps(i).encode() for i in ids]
    for where, text in _line_values(path, skipped):
        if any(w in text for w in wanted):
            yield where, text


def _out_of_range(record: BaseModel, keys: tuple[str, ...], prefix: str = "") -> str | None:
    """Why a score of ``record`` is not one (0-100; NaN fails the comparison too), or None."""
    for key in keys:
        value = getattr(record, key)
        if value is not None and not 0.0 <= value <= 100.0:
            return f"{prefix}{key}: {value!r} is not a score (expected 0-100)"
    return None


_RESULT_SCORES = ("clis", "clis_l", "clis_l_sanity", "clis_i")
_CANDIDATE_SCORES = ("clis", "clis_l", "clis_i", "clis_i_global", "clis_i_local")
_OBJECT_SCORES = ("clis_i", "text_similarity", "category_confidence", "judge")


def _check_result(record: PlanResult) -> str | None:
    return _out_of_range(record, _RESULT_SCORES)


def _check_score(record: CandidateScore) -> str | None:
    problem = _out_of_range(record, _CANDIDATE_SCORES)
    for k, obj in enumerate(record.objects):
        problem = problem or _out_of_range(obj, _OBJECT_SCORES, f"objects[{k}].")
    return problem


# --- an `acp generate` output --------------------------------------------------------------


class RunSettings(_Read):
    """``settings.json``: the fields a reader uses, typed; every key (these included) is kept as
    written in ``values``, to be shown."""

    model_config = ConfigDict(strict=True, extra="allow", frozen=True, allow_inf_nan=False)

    concepts: Text | None = None  # a fingerprint of the concept input
    planner: Text | None = None
    scenes: Count | None = None
    bank: Text | None = None
    masks: bool = False
    keep_candidates: bool = False
    min_clis_l: Score | None = None
    min_clis_i: Score | None = None
    clis_l_method: Text = defaults.CLIS_L_METHOD

    @property
    def values(self) -> dict[str, Any]:
        """Every key of the file with its value (the typed ones as validated)."""
        return self.model_dump(exclude_unset=True)


class PlannerRun(_Read):
    planned: Count = 0
    repaired: Count = 0
    retried: Count = 0
    failed: Count = 0
    skipped: Count = 0
    last_error: Text | None = None

    def line(self) -> str:
        return (f"planned {self.planned}, repaired {self.repaired}, retried {self.retried}, "
                f"failed {self.failed}, already done {self.skipped}")


class LastRun(_Read):
    scenes: Count | None = None
    seconds: Seconds | None = None
    planner: PlannerRun | None = None


class RunSummary(_Read):
    """``summary.json`` of a run: what a reader uses of it."""

    scenes: Count | None = None
    images_kept: Count | None = None
    scenes_dropped: Count | None = None
    scenes_failed: Count | None = None
    annotations: Count | None = None
    drop_reasons: dict[Text, Count] = Field(default_factory=dict)
    instances_kept_by_category: dict[Text, Count] = Field(default_factory=dict)
    instances_dropped_by_category: dict[Text, Count] = Field(default_factory=dict)
    last_run: LastRun | None = None


def read_run_summary(path: Path) -> RunSummary:
    """A run's ``summary.json`` wherever it is (``--pass-rate-from`` names one): a missing or
    bad file is one ``InputError`` line naming it and the field."""
    value = read_json_file(Path(path))
    if value is None:
        raise InputError(f"{path}: no such file")
    return _record(Path(path), RunSummary, value)


class ImageProvenance(_Read):
    """An image's ``acp`` key in an acp dataset."""

    plan_id: Text | None = None
    clis: Score | None = None
    caption: Text | None = None


class CocoImage(_Read):
    id: RecordId
    file_name: Text  # checked against its folder when it is opened (acp.paths.inside)
    width: Count | None = None
    height: Count | None = None
    acp: ImageProvenance | None = None


class BoxProvenance(_Read):
    """An annotation's ``acp`` key in an acp dataset."""

    clis_i: Score | None = None
    description: Text | None = None


class CocoAnnotation(_Read):
    id: RecordId | None = None
    image_id: RecordId
    category_id: RecordId
    bbox: PixelBox
    iscrowd: Literal[0, 1] = 0
    segmentation: Any = None  # an RLE is checked where it is decoded (acp.rle)
    acp: BoxProvenance | None = None


class CocoCategory(_Read):
    id: RecordId
    name: Text


class Coco:
    """A COCO file's records, validated one at a time as they are iterated (each bad one is
    counted in ``skipped``; a second pass, ``again=True``, counts nothing)."""

    def __init__(self, path: Path, data: dict[str, Any], skipped: Skipped):
        self.path, self.data, self.skipped = path, data, skipped
        self.image_count = len(data["images"])
        self.annotation_count = len(data["annotations"])

    def _each(self, key: str, model: type[M], again: bool = False) -> Iterator[M]:
        values = ((f"{key}[{k}]", v) for k, v in enumerate(self.data[key]))
        return _valid(values, model, self.path.name, Skipped() if again else self.skipped)

    def images(self, again: bool = False) -> Iterator[CocoImage]:
        return self._each("images", CocoImage, again)

    def annotations(self) -> Iterator[CocoAnnotation]:
        return self._each("annotations", CocoAnnotation)

    def categories(self) -> list[CocoCategory]:
        return list(self._each("categories", CocoCategory))


class RunFolder:
    """An ``acp generate`` output folder: where each file is, and its records read back."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.skipped = Skipped()

    settings_path = property(lambda self: self.root / SETTINGS)
    progress_path = property(lambda self: self.root / PROGRESS)
    scores_path = property(lambda self: self.root / SCORES)
    summary_path = property(lambda self: self.root / SUMMARY)
    plans_path = property(lambda self: self.root / PLANS)
    annotations_path = property(lambda self: self.root / ANNOTATIONS)
    images_dir = property(lambda self: self.root / IMAGES)
    candidates_dir = property(lambda self: self.root / CANDIDATES)
    manifest_path = property(lambda self: self.root / CANDIDATES / MANIFEST)
    report_path = property(lambda self: self.root / REPORT)

    def is_run(self) -> bool:
        """Whether the folder looks like an ``acp generate`` output (settings and annotations)."""
        return self.settings_path.is_file() and self.annotations_path.is_file()

    def settings(self) -> RunSettings | None:
        value = read_json_file(self.settings_path)
        return None if value is None else _record(self.settings_path, RunSettings, value)

    def summary(self) -> RunSummary | None:
        value = read_json_file(self.summary_path)
        return None if value is None else _record(self.summary_path, RunSummary, value)

    def progress(self) -> Iterator[PlanResult]:
        """``progress.jsonl``: what became of each finished plan."""
        return _stream(self.progress_path, PlanResult, self.skipped, _check_result, strict=True)

    def scores(self) -> Iterator[CandidateScore]:
        """``scores.jsonl``: the scores of every candidate."""
        return _stream(self.scores_path, CandidateScore, self.skipped, _check_score, strict=True)

    def plans(self, ids: Collection[str] | None = None) -> Iterator[ScenePlan]:
        """``plans.jsonl`` (only the plans of ``ids`` when given, each line scanned as bytes
        first). Validated as ``acp validate`` does (a box is a JSON list, so not strictly)."""
        if ids is None:
            return _stream(self.plans_path, ScenePlan, self.skipped)
        if not _regular(self.plans_path):
            return iter(())
        found = _valid(_with_ids(self.plans_path, ids, self.skipped), ScenePlan, PLANS, self.skipped)
        return (plan for plan in found if plan.id in ids)

    def candidates(self) -> Iterator[Candidate]:
        """``candidates/manifest.jsonl`` (with ``--keep-candidates``)."""
        return _stream(self.manifest_path, Candidate, self.skipped, strict=True)

    def coco(self) -> Coco:
        """``annotations.json``, parsed whole; its records are validated as they are iterated."""
        from acp.score.bank import read_coco_file

        path = self.annotations_path
        if not _regular(path):
            raise InputError(f"{path}: not a regular file")
        if path.stat().st_size > MAX_COCO:
            raise InputError(f"{path}: {path.stat().st_size / 1e9:.1f} GB, more than the "
                             f"{MAX_COCO >> 30} GiB a report parses")
        data = read_coco_file(path, polygons=False)
        return Coco(self.annotations_path, data, self.skipped)


# --- an `acp score dataset` report ---------------------------------------------------------


class ScoreSummary(_Read):
    """``summary.json`` of a score report (``scored_images`` and ``clip_model`` tell it from a
    run's summary)."""

    scored_images: Count
    clip_model: Text
    annotations: Text | None = None
    images_dir: Text | None = None
    images: Count | None = None
    failed_images: Count | None = None
    boxes: Count | None = None
    scored_boxes: Count | None = None
    failed_boxes: Count | None = None
    crowd_boxes: Count | None = None
    keep_above: Score | None = None
    removed_boxes: Text | None = None
    kept_images: Count | None = None
    kept_boxes: Count | None = None
    ignored_boxes: Count | None = None
    renumbered_annotations: Count | None = None
    bank: bool | None = None


class ImageRow(_Read):
    """One element of ``images.json``."""

    id: RecordId
    file_name: Text | None = None
    clis: Score | None = None
    clis_l: Score | None = None
    clis_i: Score | None = None
    caption: Text | None = None
    kept: bool | None = None


class BoxRow(_Read):
    """One element of ``boxes.json``."""

    id: RecordId | None = None
    image_id: RecordId
    category: Text
    bbox: PixelBox
    clis_i: Score | None = None
    kept: bool | None = None


class CategoryRow(_Read):
    """One element of ``categories.json``."""

    category: Text
    boxes: Count
    mean: Score | None = None
    median: Score | None = None
    p10: Score | None = None
    below: float | None = Field(default=None, ge=0.0, le=1.0, allow_inf_nan=False, alias="below_60")


class FailureRow(_Read):
    """One element of ``failures.json``."""

    item: Text
    reason: Text


class ScoreReportFolder:
    """An ``acp score dataset`` report folder, read back."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.skipped = Skipped()

    summary_path = property(lambda self: self.root / SCORE_SUMMARY)
    images_path = property(lambda self: self.root / SCORE_IMAGES)
    boxes_path = property(lambda self: self.root / SCORE_BOXES)
    categories_path = property(lambda self: self.root / SCORE_CATEGORIES)
    failures_path = property(lambda self: self.root / SCORE_FAILURES)

    def is_report(self) -> bool:
        """Whether ``summary.json`` is a score report's (it names ``scored_images`` and
        ``clip_model``); says nothing about its other fields."""
        try:
            value = read_json_file(self.summary_path)
        except InputError:
            return False
        return isinstance(value, dict) and {"scored_images", "clip_model"} <= value.keys()

    def summary(self) -> ScoreSummary:
        value = read_json_file(self.summary_path)
        if value is None:
            raise InputError(f"{self.summary_path}: no such file")
        return _record(self.summary_path, ScoreSummary, value)

    def _array(self, path: Path, model: type[M], by_line: bool = True, again: bool = False) -> Iterator[M]:
        """The elements of a JSON array written one element a line (``by_line``, as ``acp
        score dataset`` writes its rows); one in any other layout is parsed whole when it is
        at most ``MAX_FILE`` bytes, and is an ``InputError`` when larger or not an array."""
        skipped = Skipped() if again else self.skipped
        if not path.exists():
            return
        if not _regular(path):
            skipped.add(path.name, "", "not a regular file")
            return
        with open(path, "rb") as handle:
            first = handle.readline(MAX_LINE).strip()
        if by_line and first in (b"[", b"[]"):
            elements: Iterator[tuple[str, Any]] = _line_values(path, skipped, first=2)
        else:
            value = read_json_file(path)
            if not isinstance(value, list):
                raise InputError(f"{path}: expected a JSON array")
            elements = ((f"[{k}]", v) for k, v in enumerate(value))
        yield from _valid(elements, model, path.name, skipped)

    def images(self, again: bool = False) -> Iterator[ImageRow]:
        """``images.json``; ``again``: a second pass, whose bad rows are not counted again."""
        return self._array(self.images_path, ImageRow, again=again)

    def boxes(self) -> Iterator[BoxRow]:
        return self._array(self.boxes_path, BoxRow)

    def failures(self) -> Iterator[FailureRow]:
        return self._array(self.failures_path, FailureRow)

    def categories(self) -> list[CategoryRow]:
        return list(self._array(self.categories_path, CategoryRow, by_line=False))


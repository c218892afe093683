"""The files of a run folder, by name: how an ``acp generate`` run writes its folder, and
typed readers of each file.

```
OUT/
  settings.json                 what decides the output (a rerun with other settings is refused)
  plans.jsonl (+ .failures.jsonl) the planner's output, resumable by scene id
  images/, annotations.json,    the COCO writer's (``acp.export.coco.CocoWriter``): an image is
  coco_records.jsonl            saved before its log line; annotations.json is rebuilt from the log
  scores.jsonl                  one CandidateScore per candidate of every finished plan
  candidates/ (+ manifest.jsonl) every candidate, with --keep-candidates
  progress.jsonl                the ledger: one PlanResult per finished plan, written last
  summary.json, report.html     counts and the page, rebuilt at the end of a run that made any
```

Writing (``RunFolder.writer``, ``RunWriter``): a plan is finished exactly when its ledger line
is there. ``RunWriter.write`` writes its candidates, its image, its scores and then the ledger
line, so a kill at any moment leaves a plan finished or unfinished, never half. At start-up,
``trim`` cuts ``scores.jsonl`` and the candidate manifest back to the finished plans, so a plan
interrupted half-way is redone whole (the COCO writer's own log keeps its image from being
exported twice). The folder's one lock (``RunFolder.lock``) is handed to the COCO writer.

Reading: two kinds of folder are read here:

- ``RunFolder``: an ``acp generate`` output (``settings.json``, ``progress.jsonl``,
  ``scores.jsonl``, ``summary.json``, ``plans.jsonl``, ``annotations.json``, ``images/``,
  ``candidates/`` with its ``manifest.jsonl``, ``balance.json``, ``report.html``);
- ``ScoreReportFolder``: an ``acp score dataset`` report (``summary.json``, ``images.json``,
  ``boxes.json``, ``categories.json``, ``failures.json``; with a verifier ``verification.json``
  and ``detections.json``).

The names are defined here once; readers get records validated through a pydantic model
before anything uses a field. Files are data, and data can be hostile (a hand edit, another
tool, a corrupted disk), so every reader is bounded and decides what a bad value costs:

- A whole-file record (``settings.json``, ``summary.json``, a score report's
  ``categories.json`` and ``verification.json``) is read only from a regular file of at most
  ``MAX_FILE`` bytes. A file that is not JSON, not of the expected shape, or has a wrong type
  in a field a reader uses is an ``InputError`` naming the file and the field: one line,
  nothing written. A missing file is ``None`` (an interrupted run has no summary yet). The
  rows of ``verification.json``'s ``categories`` are validated one at a time, as a stream's.
- A stream of records (the ``.jsonl`` files; ``images.json``, ``boxes.json``,
  ``failures.json`` and ``detections.json``, written one element a line) is read a line at a
  time, at most ``MAX_LINE`` bytes a line (a longer one is skipped without being held). A line that is not
  JSON, not an object, or fails its model is skipped and counted in ``Skipped``, with its file,
  line and reason, so a page can say what it left out. As ``acp.jsonl`` does, a final line
  without its newline counts only when it parses.
- The elements of a COCO file's ``images``, ``annotations`` and ``categories`` are validated
  one at a time as they are used (``CocoImage``, ``CocoAnnotation``, ``CocoCategory``); a bad one
  is skipped and counted the same way. The COCO file itself is the dataset and is parsed whole
  (``acp.coco.read_coco_file``), up to ``MAX_COCO`` bytes.

Numbers are read strictly (no ``"5"`` for 5, no ``true`` for 1). Scores must lie in 0-100
(``NaN`` and ``Infinity`` fail that too), APs, IoUs and detector confidences in 0-1, boxes be
finite with a width and height, counts in 64 bits, an image's detections at most
``MAX_DETECTIONS``; a whole-file record refuses
``NaN`` and ``Infinity`` anywhere, and an integer past Python's 4300 digits is bad JSON.
The records of ``acp.schema`` (plans, candidates, candidate scores, plan results) are read
with those models, which refuse unknown keys as ``acp validate`` does; the records defined
here ignore unknown keys (a newer acp may add some), and ``settings.json`` keeps them to show.
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

from acp import defaults
from acp.atomic import atomic_text_file, write_atomic
from acp.errors import InputError, OutputMismatchError
from acp.export.coco import ANNOTATIONS_NAME, IMAGES_DIR, RECORDS_NAME
from acp.jsonl import TOO_LONG, JsonlWriter, drop_torn_tail, read_records
from acp.lock import OutputLock
from acp.paths import FileTooLargeError, NotRegularFileError, open_regular, read_regular
from acp.render.folder import MANIFEST
from acp.schema import Candidate, CandidateScore, PlanResult, ScenePlan, error_problems

if TYPE_CHECKING:
    from acp.export import coco as coco_writer
    from acp.export.categories import CategorySet
    from acp.export.coco import CocoWriter, EncodedImage, Instance

# --- names ---------------------------------------------------------------------------------

SETTINGS = "settings.json"
PROGRESS = "progress.jsonl"
SCORES = "scores.jsonl"
SUMMARY = "summary.json"
PLANS = "plans.jsonl"
PLAN_FAILURES = "plans.jsonl.failures.jsonl"
ANNOTATIONS, IMAGES, COCO_RECORDS = ANNOTATIONS_NAME, IMAGES_DIR, RECORDS_NAME  # the COCO writer's
CANDIDATES = "candidates"  # laid out as a render folder, its MANIFEST included
REPORT = "report.html"
# What other acp commands write into a run folder by default: `generate --balance` (the top-up
# plan, its report and chart) and `export coco-split` (the splits). --force removes them with
# the rest: they describe the images of the run being replaced.
SPLITS = ("train.json", "val.json", "test.json")

# An `acp score dataset` report.
SCORE_SUMMARY = "summary.json"
SCORE_IMAGES = "images.json"
SCORE_BOXES = "boxes.json"
SCORE_CATEGORIES = "categories.json"
SCORE_FAILURES = "failures.json"
# With a verifier (``acp score dataset --verify``): per-category counts and label fidelity, and
# each image's detections (one element a line).
SCORE_VERIFICATION = "verification.json"
SCORE_DETECTIONS = "detections.json"

# --- bounds --------------------------------------------------------------------------------

# A line of a stream: acp's longest, a scores line of 30 objects with their 435 pair details,
# is about 150 kB.
MAX_LINE = 1 << 20
# The files a balance writes (``acp.balance``; into a run folder too). Each carries
# BALANCE_MARK at its start (the JSON files' first key; the chart's PNG "Software" text), so
# that ``--force`` removes a balance file only when it can prove acp wrote it.
BALANCE_REPORT = "balance.json"
BALANCE_CHART = "balance.png"
BALANCE_PLAN_SUFFIX = ".balance.json"  # plans.jsonl -> plans.balance.json
BALANCE_MARK = "acp_balance"
_MARK_BYTES = 4096  # a PNG's text chunk comes right after its header
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
Fraction = Annotated[float, Field(ge=0.0, le=1.0, allow_inf_nan=False)]  # an AP, an IoU, a confidence
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
    except ValueError as error:
        if "digits" in str(error) and not isinstance(error, json.JSONDecodeError):
            raise ValueError(TOO_LONG) from None  # Python's own words name a sys function
        raise


def _regular(path: Path) -> bool:
    """A regular file (or a link to one): never a FIFO, a device or a folder, which could block
    or never end."""
    return path.is_file()


def read_json_file(path: Path, limit: int = MAX_FILE) -> Any | None:
    """The JSON value of a whole-file record; ``None`` when there is no such file."""
    if not path.exists() and not path.is_symlink():
        return None
    try:  # a FIFO, device or folder is refused before any read, a file over ``limit`` on its size
        raw = read_regular(path, limit)
    except (NotRegularFileError, FileTooLargeError, IsADirectoryError) as error:
        raise InputError(f"{path}: {error.strerror}") from None
    except OSError as error:
        raise InputError(f"{path}: cannot read ({error.strerror or error})") from None
    try:
        return parse_json(raw)
    except (ValueError, UnicodeDecodeError) as error:
        raise InputError(f"{path}: not valid JSON ({_short(str(error), 200)})") from None


def plan_record_path(plans: Path) -> Path:
    """Where the top-up plan of a plans file is written: ``plans.jsonl`` -> ``plans.balance.json``."""
    return plans.with_name(plans.stem + BALANCE_PLAN_SUFFIX)


def is_balance_file(path: Path) -> bool:
    """Whether ``path`` is a file a balance wrote: it begins with ``BALANCE_MARK`` (a regular file
    only, and only its first bytes are read)."""
    try:
        with open_regular(path) as handle:
            start = handle.read(_MARK_BYTES)
    except OSError:
        return False
    if start.startswith(b"\x89PNG"):
        return b"Software\x00" + BALANCE_MARK.encode() in start
    return start.startswith(b'{"' + BALANCE_MARK.encode() + b'":')


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
    with open_regular(path) as handle:
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
    problem = _out_of_range(record, (*_CANDIDATE_SCORES, "verification"))
    for k, obj in enumerate(record.objects):
        problem = (problem or _out_of_range(obj, _OBJECT_SCORES, f"objects[{k}].")
                   or _not_fraction(obj.detection_iou, f"objects[{k}].detection_iou")
                   or _not_fraction(obj.detection_score, f"objects[{k}].detection_score")
                   or _not_box(obj.detection_bbox, f"objects[{k}].detection_bbox"))
    for k, found in enumerate(record.detections):
        problem = (problem or _not_fraction(found.score, f"detections[{k}].score")
                   or _not_box(found.bbox, f"detections[{k}].bbox"))
    return problem


def _not_fraction(value: float | None, where: str) -> str | None:
    """Why ``value`` is not a number in 0-1 (NaN fails the comparison), or None."""
    if value is not None and not 0.0 <= value <= 1.0:
        return f"{where}: {value!r} is not in 0-1"
    return None


def _not_box(box: list[float] | None, where: str) -> str | None:
    """Why ``box`` is not a pixel ``[x, y, w, h]`` (finite, w and h > 0), or None."""
    if box is None:
        return None
    try:
        _pixel_box(box)
    except ValueError as error:
        return f"{where}: {error}"
    return None


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


@dataclass(frozen=True)
class KeptImage:
    """A plan's kept image as the run folder stores it: already encoded, with its instances
    and provenance."""

    image: EncodedImage
    instances: tuple[Instance, ...]
    provenance: coco_writer.ImageProvenance


@dataclass(frozen=True)
class KeptCandidate:
    """A candidate kept with ``--keep-candidates``: its manifest record and its PNG bytes."""

    candidate: Candidate
    png: bytes


class RunFolder:
    """An ``acp generate`` output folder: where each file is, its lock, how a run writes it,
    and its records read back."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.skipped = Skipped()
        self.lock = OutputLock(self.root)

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
        from acp.coco import read_coco_file

        path = self.annotations_path
        if not _regular(path):
            raise InputError(f"{path}: not a regular file")
        if path.stat().st_size > MAX_COCO:
            raise InputError(f"{path}: {path.stat().st_size / 1e9:.1f} GB, more than the "
                             f"{MAX_COCO >> 30} GiB a report parses")
        data = read_coco_file(path, polygons=False)
        return Coco(self.annotations_path, data, self.skipped)


    # -- a run writing it -----------------------------------------------------------------

    def stored_settings(self) -> dict[str, Any] | None:
        """The settings record as written (``None``: there is none; ``InputError``: it is not a
        JSON object), to compare with a run's own."""
        value = read_json_file(self.settings_path)
        if value is not None and not isinstance(value, dict):
            raise InputError(f"{self.settings_path}: expected a JSON object")
        return value

    def write_settings(self, record: dict[str, Any]) -> None:
        write_atomic(self.settings_path, json.dumps(record, indent=2, sort_keys=True) + "\n")

    def finished(self) -> set[str]:
        """The ids of the finished plans: every ledger line with a plan id (read loosely, as
        resume always has: a line dropped here would be made again)."""
        if not self.progress_path.exists():
            return set()
        return {r["plan_id"] for _, r, _ in read_records(self.progress_path)
                if r and isinstance(r.get("plan_id"), str)}

    def trim(self, done: set[str]) -> None:
        """Drop the score and candidate lines of plans not in ``done`` (a plan cut off mid-way
        is redone whole). Streams, and leaves a file alone when every line is a finished plan's."""
        for path in (self.scores_path, self.manifest_path):
            if not path.exists():
                continue
            if all(r is not None and r.get("plan_id") in done for _, r, _ in read_records(path)):
                drop_torn_tail(path)
                continue
            with atomic_text_file(path) as handle:
                for _, record, text in read_records(path):
                    if record is not None and record.get("plan_id") in done:
                        handle.write(text + "\n")

    def write_summary(self, report: dict[str, Any]) -> None:
        write_atomic(self.summary_path, json.dumps(report, indent=2) + "\n")

    def clear(self) -> None:
        """Remove what acp wrote into a run folder (``--force``), and nothing else: its own
        files, the images its COCO log lists, the candidates its manifest lists, temporaries
        of writes a kill cut short, and the split files ``acp export coco-split`` and the balance
        files ``--balance`` marked as their own. A file of the user's, in ``images/`` too, stays
        (``acp.owned.remove_files``)."""
        from acp.atomic import is_temporary
        from acp.export.split import is_split_file
        from acp.owned import remove_files

        names = [SETTINGS, PROGRESS, SCORES, SUMMARY, PLANS, PLAN_FAILURES, ANNOTATIONS, COCO_RECORDS,
                 REPORT, f"{CANDIDATES}/{MANIFEST}",
                 f".{COCO_RECORDS}.lock"]  # the COCO writer's lock file of acp before 0.2
        names += [split for split in SPLITS if is_split_file(self.root / split)]
        balance = [plan_record_path(self.plans_path).name, BALANCE_REPORT, BALANCE_CHART]
        names += [name for name in balance if is_balance_file(self.root / name)]
        log = self.root / COCO_RECORDS
        if log.is_file():
            names += [f"{IMAGES}/{r['image']['file_name']}" for _, r, _ in read_records(log)
                      if r and r.get("kind") == "image" and isinstance(r.get("image"), dict)
                      and isinstance(r["image"].get("file_name"), str)]
        if self.manifest_path.is_file():
            names += [f"{CANDIDATES}/{r['path']}" for _, r, _ in read_records(self.manifest_path)
                      if r and isinstance(r.get("path"), str)]
        for folder in (IMAGES, CANDIDATES):
            if (self.root / folder).is_dir() and not (self.root / folder).is_symlink():
                names += [f"{folder}/{p.relative_to(self.root / folder).as_posix()}"
                          for p in (self.root / folder).rglob("*") if is_temporary(p.name)]
        remove_files(self.root, names)

    @contextlib.contextmanager
    def writer(self, categories: CategorySet, *, image_format: str, keep_candidates: bool
               ) -> Iterator[RunWriter]:
        """The open output files of a run; closing brings ``annotations.json`` up to date."""
        from acp.export.coco import CocoWriter

        with contextlib.ExitStack() as files:
            coco = files.enter_context(
                CocoWriter(self.root, categories, image_format=image_format, lock=self.lock))  # type: ignore[arg-type]
            scores = files.enter_context(JsonlWriter(self.scores_path))
            progress = files.enter_context(JsonlWriter(self.progress_path))
            candidates = files.enter_context(JsonlWriter(self.manifest_path)) if keep_candidates else None
            yield RunWriter(self, coco, scores, progress, candidates)


class RunWriter:
    """Writes finished plans into a run folder, each whole (see the module docstring)."""

    def __init__(self, folder: RunFolder, coco: CocoWriter, scores: JsonlWriter, progress: JsonlWriter,
                 candidates: JsonlWriter | None):
        self.folder, self.coco = folder, coco
        self._scores, self._progress, self._candidates = scores, progress, candidates

    def write(self, result: PlanResult, scores: Sequence[CandidateScore] = (),
              image: KeptImage | None = None, candidates: Sequence[KeptCandidate] = ()) -> None:
        """Candidates (``--keep-candidates``), the kept image, the scores, and last the ledger
        line: a kill at any moment leaves the plan unfinished or finished, never half."""
        if self._candidates is not None:
            for kept in candidates:
                write_atomic(self.folder.candidates_dir / kept.candidate.path, kept.png)
                self._candidates.write(kept.candidate)
        if image is not None:
            self.coco.add_image(result.plan_id, image.image, image.instances, image.provenance)
        for score in scores:
            self._scores.write(score)
        self._progress.write(result)


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
    """One element of ``images.json`` (``verification`` and ``unlabeled`` with a verifier)."""

    id: RecordId
    file_name: Text | None = None
    clis: Score | None = None
    clis_l: Score | None = None
    clis_i: Score | None = None
    caption: Text | None = None
    kept: bool | None = None
    verification: Score | None = None
    unlabeled: Count | None = None


Verdict = Literal["verified", "refined", "missing"]


class BoxRow(_Read):
    """One element of ``boxes.json`` (``verification`` and ``detection_iou`` with a verifier)."""

    id: RecordId | None = None
    image_id: RecordId
    category: Text
    bbox: PixelBox
    clis_i: Score | None = None
    kept: bool | None = None
    verification: Verdict | None = None
    detection_iou: Fraction | None = None


# Detections of one image read back: acp keeps at most 100 (acp.score.verify.MAX_DETECTIONS); a
# row with more is not acp's and is skipped.
MAX_DETECTIONS = 1000


class DetectionRow(_Read):
    """One detection of the verifier (``acp.schema.DetectedBox``), as read back."""

    category: Text
    score: Fraction
    bbox: PixelBox
    role: Literal["match", "part", "unplanned", "weak"]
    confident: bool = False


class _RowId(_Read):
    id: RecordId


class ImageDetections(_Read):
    """One element of ``detections.json``: an image's detections, best first."""

    id: RecordId
    file_name: Text | None = None
    verification: Score | None = None
    unlabeled: Count | None = None
    detections: list[DetectionRow] = Field(default_factory=list, max_length=MAX_DETECTIONS)


class LabelFidelity(_Read):
    """COCO AP and AP50 of the detector's detections against the labels (None: no label)."""

    ap: Fraction | None = None
    ap50: Fraction | None = None


class VerificationCategory(_Read):
    """One row of ``verification.json``'s ``categories``."""

    category: Text
    verified: Count = 0
    missing: Count = 0
    unlabeled: Count = 0
    ap: Fraction | None = None
    ap50: Fraction | None = None
    detections: Count = 0


class VerificationRecord(_Read):
    """``verification.json`` without its ``categories`` (read element by element)."""

    detector_model: Text | None = None
    detector_family: Text | None = None
    detection_threshold: Fraction | None = None
    unplanned_threshold: Fraction | None = None
    verify_iou: Fraction | None = None
    verified: Count | None = None
    missing: Count | None = None
    unlabeled: Count | None = None
    images_with_unlabeled: Count | None = None
    label_fidelity: LabelFidelity | None = None


@dataclass
class Verification:
    """A score report's ``verification.json``: the whole-file fields and the category rows that
    validate (a bad row is counted in the folder's ``Skipped``)."""

    record: VerificationRecord
    categories: list[VerificationCategory]


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
        with open_regular(path) as handle:
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

    verification_path = property(lambda self: self.root / SCORE_VERIFICATION)
    detections_path = property(lambda self: self.root / SCORE_DETECTIONS)

    def verified(self) -> bool:
        """Whether the report was made with a verifier (its ``verification.json`` or
        ``detections.json`` is there, or its summary names a detector)."""
        if self.verification_path.exists() or self.detections_path.exists():
            return True
        try:
            value = read_json_file(self.summary_path)
        except InputError:
            return False
        return isinstance(value, dict) and value.get("detector_model") is not None

    def verification(self) -> Verification | None:
        """``verification.json`` (``None``: there is none), read whole up to ``MAX_FILE`` bytes;
        ``InputError`` when it is not an object of the expected fields. Its ``categories`` are
        validated one at a time, a bad one skipped and counted."""
        value = read_json_file(self.verification_path)
        if value is None:
            return None
        record = _record(self.verification_path, VerificationRecord, value)
        rows = value.get("categories", [])
        if not isinstance(rows, list):
            raise InputError(f"{self.verification_path}: categories: expected a JSON array")
        elements = ((f"categories[{k}]", v) for k, v in enumerate(rows))
        return Verification(record, list(_valid(elements, VerificationCategory, SCORE_VERIFICATION,
                                                self.skipped)))

    def detections(self, ids: Collection[Any]) -> Iterator[ImageDetections]:
        """The rows of ``detections.json`` of the images ``ids``. A line that cannot hold one of
        them (as JSON text) is not parsed, and the row of another image is not validated: only
        a bad row of ``ids`` is counted in ``skipped`` (with every line too long to read)."""
        path = self.detections_path
        if not path.exists():
            return
        if not _regular(path):
            self.skipped.add(path.name, "", "not a regular file")
            return
        for where, text in _with_ids(path, ids, self.skipped):
            try:
                if _RowId.model_validate_json(text).id not in ids:
                    continue
            except ValidationError:
                pass  # not a row of an image, or not JSON: said below
            yield from _valid(iter([(where, text)]), ImageDetections, path.name, self.skipped)


# --- starting a run -------------------------------------------------------------------------


def check_output(out: Path, record: dict[str, Any], force: bool) -> bool:
    """Refuse to continue ``out`` with other settings (more ``scenes`` is fine: the run grows;
    so is anything while no plan is finished, e.g. after a run that could not reach its LLM:
    nothing made would be mixed with the new settings). Returns whether ``out`` must be cleared
    first; nothing is written here, so a run that fails before its models load leaves ``out``
    as it was."""
    folder = RunFolder(out)
    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: not a folder")
    if folder.settings_path.exists():
        try:
            previous = folder.stored_settings()
        except InputError:
            previous = None
        if previous == record or (previous is not None and _grows(previous, record)):
            return False
        if not folder.finished():
            return True
        if not force:
            changed = _changes(previous, record) if previous is not None else "unreadable"
            raise OutputMismatchError(
                f"{out} was generated with other settings ({changed}); "
                "use another output folder, or --force to start over"
            )
        return True
    if out.exists() and any(out.iterdir()) and not force:
        raise OutputMismatchError(
            f"{out} is not empty and was not made by acp generate; use an empty folder or --force"
        )
    return force and out.exists()


def _grows(previous: dict[str, Any], record: dict[str, Any]) -> bool:
    """Whether ``record`` only asks for more scenes of the same run. Scene ``i``'s concepts do
    not depend on the number of scenes (``sample_scenes`` draws them in order), so the scenes
    already made stay exactly what they are and the new ones follow them."""
    old, new = previous.get("scenes"), record.get("scenes")
    same_otherwise = {k: v for k, v in previous.items() if k != "scenes"} == {
        k: v for k, v in record.items() if k != "scenes"}
    return same_otherwise and isinstance(old, int) and isinstance(new, int) and new > old


def _changes(previous: dict[str, Any], record: dict[str, Any]) -> str:
    def short(value: Any) -> str:
        text = json.dumps(value, sort_keys=True)
        return text if len(text) <= 60 else text[:57] + "..."

    keys = sorted(k for k in set(record) | set(previous) if previous.get(k) != record.get(k))
    return "; ".join(f"{k} {short(previous.get(k))} -> {short(record.get(k))}" for k in keys)

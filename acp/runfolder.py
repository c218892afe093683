"""The output folder of ``acp generate``: every file name in it, its one lock, how a finished
plan is written, and its files read back as typed records.

```
OUT/
  settings.json                 what decides the output (a rerun with other settings is refused)
  plans.jsonl (+ .failures.jsonl) the planner's output, resumable by scene id
  images/, annotations.json,    the COCO writer's (``acp.export.coco.CocoWriter``): an image is
  coco_records.jsonl            saved before its log line; annotations.json is rebuilt from the log
  scores.jsonl                  one CandidateScore per candidate of every finished plan
  candidates/ (+ manifest.jsonl) every candidate, with --keep-candidates
  progress.jsonl                the ledger: one PlanResult per finished plan, written last
  summary.json, report.html     counts and the page, rebuilt at the end of every run
```

A plan is finished exactly when its ledger line is there: ``RunWriter.write`` writes its
candidates, its image, its scores and then the ledger line, so a kill at any moment leaves a
plan finished or unfinished, never half. At start-up, ``trim`` cuts ``scores.jsonl`` and the
candidate manifest back to the finished plans, so a plan interrupted half-way is redone whole
(the COCO writer's own log keeps its image from being exported twice).
"""

from __future__ import annotations

import contextlib
import json
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from acp.atomic import atomic_text_file, write_atomic
from acp.errors import InputError, OutputMismatchError
from acp.jsonl import JsonlWriter, drop_torn_tail, loads, read_records
from acp.lock import OutputLock
from acp.render.folder import MANIFEST  # candidates/ is laid out as a render folder
from acp.schema import Candidate, CandidateScore, PlanResult

if TYPE_CHECKING:
    from acp.export.categories import CategorySet
    from acp.export.coco import CocoWriter, EncodedImage, ImageProvenance, Instance

SETTINGS = "settings.json"
PLANS = "plans.jsonl"
PLAN_FAILURES = "plans.jsonl.failures.jsonl"
SCORES = "scores.jsonl"
PROGRESS = "progress.jsonl"
SUMMARY = "summary.json"
CANDIDATES = "candidates"
REPORT = "report.html"
# What other acp commands write into a run folder by default: `generate --balance` (the top-up
# plan, its report and chart) and `export coco-split` (the splits). --force removes them with
# the rest: they describe the images of the run being replaced.
BALANCE_PLAN = "plans.balance.json"
BALANCE_REPORT = "balance.json"
BALANCE_CHART = "balance.png"
SPLITS = ("train.json", "val.json", "test.json")


@dataclass(frozen=True)
class KeptImage:
    """A plan's kept image as the run folder stores it: already encoded, with its instances
    and provenance."""

    image: EncodedImage
    instances: tuple[Instance, ...]
    provenance: ImageProvenance


@dataclass(frozen=True)
class KeptCandidate:
    """A candidate kept with ``--keep-candidates``: its manifest record and its PNG bytes."""

    candidate: Candidate
    png: bytes


class RunFolder:
    """``OUT/`` of ``acp generate`` (see the module docstring)."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.lock = OutputLock(self.root)

    def path(self, name: str) -> Path:
        return self.root / name

    @property
    def candidate_manifest(self) -> Path:
        return self.root / CANDIDATES / MANIFEST

    # -- settings ---------------------------------------------------------------------------

    def settings(self) -> dict[str, Any] | None:
        """The stored settings record; ``None`` when there is none; raises ``InputError`` when
        the file is there but is not a JSON object."""
        path = self.path(SETTINGS)
        if not path.exists():
            return None
        try:
            record = loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            record = None
        if not isinstance(record, dict):
            raise InputError(f"{path}: unreadable settings (not a JSON object)")
        return record

    def write_settings(self, record: dict[str, Any]) -> None:
        write_atomic(self.path(SETTINGS), json.dumps(record, indent=2, sort_keys=True) + "\n")

    def made_by_acp(self) -> bool:
        """Whether the folder holds a run of ``acp generate`` (its settings file)."""
        return self.path(SETTINGS).is_file()

    # -- progress ---------------------------------------------------------------------------

    def finished(self) -> set[str]:
        """The ids of the finished plans (lines of the ledger; a torn or foreign line counts
        for nothing, so its plan is made again)."""
        path = self.path(PROGRESS)
        if not path.exists():
            return set()
        return {r["plan_id"] for _, r, _ in read_records(path) if r and isinstance(r.get("plan_id"), str)}

    def progress(self) -> Iterator[PlanResult]:
        """Every ledger line, as the record it was written as (lines that are not are skipped)."""
        from pydantic import ValidationError

        path = self.path(PROGRESS)
        if not path.exists():
            return
        for _, record, _ in read_records(path):
            if record is None:
                continue
            try:
                yield PlanResult.model_validate(record)
            except ValidationError:
                continue

    def trim(self, done: set[str]) -> None:
        """Drop the score and candidate lines of plans not in ``done`` (a plan cut off mid-way
        is redone whole). Streams, and leaves a file alone when every line is a finished plan's."""
        for path in (self.path(SCORES), self.candidate_manifest):
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
        write_atomic(self.path(SUMMARY), json.dumps(report, indent=2) + "\n")

    # -- starting over ----------------------------------------------------------------------

    def clear(self) -> None:
        """Remove what acp writes into a run folder (``--force``), and nothing else."""
        from acp.export.coco import ANNOTATIONS_NAME, IMAGES_DIR, RECORDS_NAME

        for name in (SETTINGS, PROGRESS, SCORES, SUMMARY, PLANS, PLAN_FAILURES, ANNOTATIONS_NAME,
                     RECORDS_NAME, REPORT, BALANCE_PLAN, BALANCE_REPORT, BALANCE_CHART, *SPLITS):
            self.path(name).unlink(missing_ok=True)
        for folder in (IMAGES_DIR, CANDIDATES):
            shutil.rmtree(self.path(folder), ignore_errors=True)

    # -- writing ----------------------------------------------------------------------------

    @contextlib.contextmanager
    def writer(self, categories: CategorySet, *, image_format: str, keep_candidates: bool
               ) -> Iterator[RunWriter]:
        """The open output files of a run; closing brings ``annotations.json`` up to date."""
        from acp.export.coco import CocoWriter

        with contextlib.ExitStack() as files:
            coco = files.enter_context(
                CocoWriter(self.root, categories, image_format=image_format, lock=self.lock))  # type: ignore[arg-type]
            scores = files.enter_context(JsonlWriter(self.path(SCORES)))
            progress = files.enter_context(JsonlWriter(self.path(PROGRESS)))
            candidates = (files.enter_context(JsonlWriter(self.candidate_manifest))
                          if keep_candidates else None)
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
                write_atomic(self.folder.root / CANDIDATES / kept.candidate.path, kept.png)
                self._candidates.write(kept.candidate)
        if image is not None:
            self.coco.add_image(result.plan_id, image.image, image.instances, image.provenance)
        for score in scores:
            self._scores.write(score)
        self._progress.write(result)


def check_output(out: Path, record: dict[str, Any], force: bool) -> bool:
    """Refuse to continue ``out`` with other settings (more ``scenes`` is fine: the run grows;
    so is anything while no plan is finished, e.g. after a run that could not reach its LLM:
    nothing made would be mixed with the new settings). Returns whether ``out`` must be cleared
    first; nothing is written here, so a run that fails before its models load leaves ``out``
    as it was."""
    folder = RunFolder(out)
    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: not a folder")
    if folder.path(SETTINGS).exists():
        try:
            previous = folder.settings()
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

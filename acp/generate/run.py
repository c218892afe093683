"""``acp generate``'s run: everything around the engine. The inputs are checked and the
output folder locked and checked against its settings before any model loads; the engine
loads; only then is the folder claimed (cleared with ``force``); the plans not yet finished
are fed to the engine, which hands each finished plan to the one writer (``Recorder``: the
failure policy, then ``RunWriter``); at the end the summary is rebuilt from the ledger.

Rerun the same call to resume: the ledger says which plans are finished (see
``acp.runfolder``), and they are neither made nor written again.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from acp.concepts import all_concepts, scene_concepts, scene_total
from acp.errors import AcpError, InputError, OutputMismatchError, first_line
from acp.generate import components
from acp.generate.components import StageSpec
from acp.generate.config import GenerateConfig
from acp.generate.engine import Engine, RunState
from acp.generate.feed import PlanFeed
from acp.generate.records import Finished, StageTimes, Unfinished
from acp.plan.run import PlanSummary, make_requests
from acp.runfolder import RunFolder, RunWriter, check_output

if TYPE_CHECKING:
    from acp.score.judge import JudgeReport

FAILURES_IN_A_ROW = 5


class SceneFailuresError(AcpError):
    """Several scenes in a row failed: something is wrong with the setup, not with a scene."""


class NothingMade(AcpError):
    """A run that made no image and recorded failures: exit non-zero with the last reason."""


class PlansLeftUnfinished(AcpError):
    """An engine gave up on some plans for this run (``Unfinished``): the rest is written and
    summarised; a rerun makes them."""


@dataclass
class GenerateSummary:
    scenes: int = 0  # finished scenes in OUT, earlier runs included
    kept: int = 0
    dropped: int = 0
    failed: int = 0
    annotations: int = 0
    this_run: int = 0
    planner: PlanSummary = field(default_factory=PlanSummary)
    seconds: float = 0.0
    times: StageTimes = field(default_factory=StageTimes)
    reasons: Counter[str | None] = field(default_factory=Counter)
    judge: JudgeReport | None = None  # what the judge did this run, when there is one

    def line(self) -> str:
        rate = self.this_run / self.seconds if self.seconds > 0 else 0.0
        return (f"{self.kept} images kept, {self.dropped} scenes dropped, {self.failed} failed "
                f"({self.scenes} finished, {self.this_run} this run at {rate:.2f} scenes/s; "
                f"planner: {self.planner.failed} failed)")


class Recorder:
    """The run's one writer, as the engines see it: counts failures in a row (several stop the
    run, the scene staying unfinished), then writes the plan, its ledger line last."""

    def __init__(self, writer: RunWriter, times: StageTimes):
        self.writer, self.times = writer, times
        self.failures_in_a_row = 0
        self.failed = 0  # scenes of this run recorded as failed
        self.last_failure: str | None = None
        self.unfinished: list[Unfinished] = []

    def write(self, finished: Finished | Unfinished) -> None:
        if isinstance(finished, Unfinished):  # nothing written: the next run makes it
            self.unfinished.append(finished)
            return
        result = finished.result
        if result.status == "failed":
            self.failed += 1
            self.last_failure = result.reason
            self.failures_in_a_row += 1
            if self.failures_in_a_row >= FAILURES_IN_A_ROW:
                raise SceneFailuresError(
                    f"{FAILURES_IN_A_ROW} scenes in a row failed; stopping (last: {result.reason})")
        else:
            self.failures_in_a_row = 0
        with self.times.timed("export"):
            self.writer.write(result, finished.scores, finished.image, finished.candidates)


def generate(config: GenerateConfig, out: Path, engine: Engine | None = None, *, force: bool = False,
             progress: bool = True) -> GenerateSummary:
    """Make the dataset of ``config`` in ``out`` with ``engine`` (default: the local engine on
    the best device there is); rerun with the same arguments to resume.

    ``out`` is locked before anything in it is read or cleared, and nothing is written there
    before every input and model has loaded: a wrong model path leaves ``out`` as it was.
    ``force`` starts over in a folder made with other settings.
    """
    from acp.export import load_categories
    from acp.generate.local import LocalEngine

    out = Path(out)
    started = time.perf_counter()
    engine = engine if engine is not None else LocalEngine()
    # Everything that can fail on the user's input fails here, before any model is loaded.
    categories = load_categories(all_concepts(config.concepts), config.export.categories)
    sets = scene_concepts(config.concepts, config.scenes, config.objects, config.seed)
    total = scene_total(config.concepts, config.scenes, sets)
    if config.score.bank is not None and not Path(config.score.bank).is_dir():
        raise InputError(f"--bank {config.score.bank}: no such folder (build one with `acp bank build`)")
    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: not a folder")
    folder = RunFolder(out)
    if out.is_dir():
        folder.lock.acquire()
    try:
        return _run(config, folder, engine, categories, sets, total, force=force, progress=progress,
                    started=started)
    finally:
        folder.lock.release()


def _run(config: GenerateConfig, folder: RunFolder, engine: Engine, categories: Any, sets: Any,
         total: int | None, *, force: bool, progress: bool, started: float) -> GenerateSummary:
    from tqdm import tqdm

    from acp.export import CocoWriter

    out = folder.root
    record = config.record()
    clear = check_output(out, record, force) if out.exists() else False
    done = set() if clear else folder.finished()
    if not clear and out.exists():
        folder.trim(done)
    if not clear and total is not None and len(done) >= total:  # a finished job: nothing to load
        summary = GenerateSummary(seconds=time.perf_counter() - started)
        with CocoWriter(out, categories, image_format=config.export.image_format,  # type: ignore[arg-type]
                        lock=folder.lock) as finished:
            summary.annotations = finished.annotation_count
        write_summary(folder, summary)
        return summary
    planner = components.planner(config.plan_settings, config.llm, max_reasks=config.max_reasks,
                                 bank=config.score.bank)
    spec = StageSpec(render=config.render, candidates=config.candidates, score=config.score,
                     masks=config.masks, categories=categories, image_format=config.export.image_format,
                     keep_candidates=config.export.keep_candidates)
    try:
        engine.load(spec)
        engine.times.load = time.perf_counter() - started  # imports and inputs included
        # Only now that every model loaded is the folder claimed (and, with --force, cleared)
        # for these settings: a typo in a model path must not leave debris, nor destroy the
        # last run.
        out.mkdir(parents=True, exist_ok=True)
        if not folder.lock.held:
            folder.lock.acquire()  # ``out`` did not exist when the run began
            if any(out.iterdir()):  # someone else's run appeared meanwhile
                raise OutputMismatchError(f"{out}: another run started writing it; rerun")
        if clear:
            folder.clear()
        folder.write_settings(record)
        summary = GenerateSummary(times=engine.times)
        feed = PlanFeed(planner, make_requests(sets, config.seed, *config.size,
                                               companions=config.concepts.companions),
                        folder.plans_path, done, total)
        bar = tqdm(total=total, initial=len(done), desc="generating", unit="scene",
                   disable=not progress, dynamic_ncols=True)
        try:
            with folder.writer(categories, image_format=config.export.image_format,
                               keep_candidates=config.export.keep_candidates) as writer:
                kept_before = writer.coco.image_count
                recorder = Recorder(writer, engine.times)

                def advance(count: int) -> None:
                    summary.this_run += count
                    bar.update(count)
                    bar.set_postfix(kept=writer.coco.image_count, refresh=False)

                engine.run(RunState(feed, done, recorder, advance))
                summary.annotations = writer.coco.annotation_count
                kept_now = writer.coco.image_count - kept_before
        finally:
            feed.close()
            bar.close()
    finally:
        engine.close()
    summary.planner = feed.summary
    summary.judge = engine.judge
    summary.seconds = time.perf_counter() - started
    write_summary(folder, summary, engine.report)
    if recorder.unfinished:
        left = recorder.unfinished[-1]
        raise PlansLeftUnfinished(
            f"{out}: {len(recorder.unfinished)} plans left unfinished (last: plan {left.plan_id}, "
            f"{left.reason}); rerun the same command to make them")
    failures = summary.planner.failed + recorder.failed
    if kept_now == 0 and failures:
        last = recorder.last_failure or summary.planner.last_error or "unknown"
        raise NothingMade(
            f"{out}: no image made this run; {failures} scenes failed (last reason: "
            f"{first_line(last, default='unknown')})"
        )
    return summary


def _bin(value: Any) -> int | None:
    """The 10-point histogram bin of a 0-100 score (100 goes in the last), None if not one."""
    if not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return min(max(int(value // 10), 0), 9)


def _histogram(bins: Counter[int]) -> dict[str, int]:
    return {f"{10 * b}-{10 * b + 10}": bins.get(b, 0) for b in range(10)}


def write_summary(folder: RunFolder, summary: GenerateSummary, executor: dict[str, Any] | None = None
                  ) -> dict[str, Any]:
    """Summarise the ledger (all runs) into ``summary.json``; fills ``summary``'s counts.
    ``executor`` is the engine's report (Ray: workers, plans per worker, restarts, retries)."""
    kept_by_category: Counter[str] = Counter()
    dropped_by_category: Counter[str] = Counter()
    reasons: Counter[str | None] = Counter()
    status: Counter[str] = Counter()
    scores: dict[str, Counter[int]] = {"clis": Counter(), "clis_l": Counter(), "clis_i": Counter()}
    for result in folder.progress():  # counted as read: memory does not grow with the scenes
        status[result.status] += 1
        if result.reason:
            reasons[result.reason_kind] += 1
        kept_by_category.update(result.kept_categories)
        dropped_by_category.update(result.dropped_categories)
        for key, bins in scores.items():
            if (found := _bin(getattr(result, key))) is not None:
                bins[found] += 1
    summary.scenes = sum(status.values())
    summary.kept, summary.dropped, summary.failed = status["kept"], status["dropped"], status["failed"]
    summary.reasons = reasons
    last_run: dict[str, Any] = {
        "scenes": summary.this_run,
        "seconds": round(summary.seconds, 3),
        "planner": asdict(summary.planner),
        "stage_seconds": {k: round(v, 3) for k, v in summary.times.seconds().items()},
        "stage_shares": summary.times.shares(summary.seconds),
        "executor": executor or {"name": "local"},
    }
    if summary.judge is not None:
        last_run["judge"] = summary.judge.to_dict()
    report = {
        "scenes": summary.scenes,
        "images_kept": summary.kept,
        "scenes_dropped": summary.dropped,
        "scenes_failed": summary.failed,
        "annotations": summary.annotations,
        "drop_reasons": dict(reasons.most_common()),
        "instances_kept_by_category": dict(sorted(kept_by_category.items())),
        "instances_dropped_by_category": dict(sorted(dropped_by_category.items())),
        "score_histograms": {k: _histogram(v) for k, v in scores.items()},
        "last_run": last_run,
    }
    folder.write_summary(report)
    return report

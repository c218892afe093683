"""``acp generate``: concepts to a COCO dataset, every stage wired together, resumable.

Three threads, joined by bounded queues, so memory does not grow with the number of scenes
(only the set of finished ids does):

1. planning (``_PlanFeed``): plans are made ahead, so an LLM's latency overlaps rendering;
2. the device thread (the caller): CLIS-L (a plan under ``min_clis_l`` is dropped before any
   GPU time is spent), then K candidates rendered in one batch (``_Stages.render``);
3. finishing (``_Finisher`` running ``_Stages.finish``), one plan behind: CLIS-I on all
   candidates in one CLIP pass, keep the best (instances under ``min_clis_i`` lose their
   annotation), optional SAM masks, then JPEG encoding and every write of the plan, in order.

Files in ``OUT/`` and how a kill at any moment is survived:

- ``settings.json``: what decides the output; a rerun with other settings is refused
  (``force`` starts over);
- ``plans.jsonl`` (+ ``.failures.jsonl``): from the planner runner, resumable by scene id;
- ``images/``, ``annotations.json``, ``coco_records.jsonl``: from ``CocoWriter``, which saves
  an image before its log line and rewrites ``annotations.json`` atomically at checkpoints;
- ``scores.jsonl``: one ``CandidateScore`` per candidate of every finished plan;
- ``progress.jsonl``: one line per finished plan (kept, dropped or failed, with the reason),
  written last: it is what "finished" means. At start-up ``scores.jsonl`` is cut back to the
  plans listed there, so a plan interrupted half-way is redone whole, and the writer's own
  log keeps its image from being exported twice;
- ``summary.json``: counts per category and per reason, score histograms, stage times.
"""

from __future__ import annotations

import contextlib
import json
import math
import queue
import shutil
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from acp import defaults
from acp.atomic import atomic_text_file, write_atomic
from acp.concepts import ConceptInput, all_concepts, scene_concepts
from acp.errors import AcpError, InputError, OutputMismatchError, first_line
from acp.jsonl import JsonlWriter, drop_torn_tail, loads, read_records
from acp.lock import OutputLock
from acp.plan.base import PlanSettings
from acp.plan.run import PlanSummary, make_requests, run_planner
from acp.schema import LayoutRules, PlanResult, ScenePlan, read_plan_lines

SETTINGS_NAME = "settings.json"
PROGRESS_NAME = "progress.jsonl"
SCORES_NAME = "scores.jsonl"
SUMMARY_NAME = "summary.json"
CANDIDATES_DIR = "candidates"
QUEUE_SIZE = 16
# Rendered plans waiting for the finishing thread (CLIP-I, masks, export): two keep the device
# busy while one is finished; each holds its K candidate images.
FINISH_QUEUE = 2


@dataclass(frozen=True)
class LLMOptions:
    base_url: str | None
    model: str
    concurrency: int = 8
    max_reasks: int = 2
    timeout: float = 120.0


@dataclass(frozen=True)
class GenerateConfig:
    """Everything that decides the dataset (``record()`` is stored in ``settings.json``)."""

    concepts: ConceptInput
    scenes: int | None = None
    objects: tuple[int, int] = (1, 3)
    seed: int = 0
    size: tuple[int, int] = (512, 512)
    planner: str = "heuristic"
    llm: LLMOptions | None = None
    rules: LayoutRules = field(default_factory=LayoutRules)
    model: str = defaults.GLIGEN_MODEL
    candidates: int = defaults.CANDIDATES
    steps: int = defaults.STEPS
    guidance: float = defaults.GUIDANCE
    beta: float = defaults.BETA
    negative_prompt: str = ""
    safety_checker: bool = defaults.SAFETY_CHECKER
    clip_model: str = defaults.CLIP_MODEL
    bank: Path | None = None
    embed_model: str | None = None
    clis_l_method: str = defaults.CLIS_L_METHOD
    judge_model: str | None = None
    judge_base_url: str | None = None
    judge_margin: float = defaults.JUDGE_MARGIN
    judge_max_calls: int = defaults.JUDGE_MAX_CALLS
    min_clis_l: float | None = defaults.MIN_CLIS_L
    min_clis_i: float | None = defaults.MIN_CLIS_I
    masks: bool = False
    sam_model: str = defaults.SAM_MODEL
    categories: Path | None = None
    keep_candidates: bool = False
    image_format: str = "jpeg"
    # How the device runs, not what it makes (kept out of ``record()``): torch.compile the UNet.
    compile_unet: bool = False

    def record(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("compile_unet")
        data["concepts"] = self.concepts.fingerprint()
        data["rules"] = self.rules.model_dump()
        for key in ("bank", "categories"):
            data[key] = str(Path(data[key]).resolve()) if data[key] else None
        for key in ("model", "clip_model", "sam_model"):
            if Path(data[key]).is_dir():
                data[key] = str(Path(data[key]).resolve())
        if not self.masks:
            data.pop("sam_model")
        if self.llm is not None:
            data["llm"] = {"base_url": self.llm.base_url, "model": self.llm.model}
        if self.clis_l_method == defaults.CLIS_L_METHOD:
            data.pop("clis_l_method")  # the default: a settings.json from before the option still matches
        if not self.safety_checker:
            data.pop("safety_checker")  # off, as before the option: older runs still match
        for key in ("embed_model", "judge_model", "judge_base_url", "judge_margin", "judge_max_calls"):
            if not data[key] or (key.startswith("judge_") and not self.judge_model):
                data.pop(key)  # unused: a settings.json from before these options still matches
        return json.loads(json.dumps(data))


@dataclass
class StageTimes:
    """Seconds per stage. ``plan_wait``, ``layout``, ``render`` and ``finish_wait`` are spent on
    the device thread; ``score``, ``segment`` and ``export`` on the finishing thread, alongside
    it, so the shares of a run can add up to more than 1."""

    load: float = 0.0  # start-up until the first plan: imports, inputs, loading the models
    plan_wait: float = 0.0  # the renderer waiting for the planner
    layout: float = 0.0
    render: float = 0.0
    score: float = 0.0
    segment: float = 0.0
    export: float = 0.0  # encoding and writing
    finish_wait: float = 0.0  # the device thread waiting for room in the finishing queue

    def shares(self, total: float) -> dict[str, float]:
        return {k: round(v / total, 4) if total > 0 else 0.0 for k, v in asdict(self).items()}


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
    reasons: Counter[str] = field(default_factory=Counter)

    def line(self) -> str:
        rate = self.this_run / self.seconds if self.seconds > 0 else 0.0
        return (f"{self.kept} images kept, {self.dropped} scenes dropped, {self.failed} failed "
                f"({self.scenes} finished, {self.this_run} this run at {rate:.2f} scenes/s; "
                f"planner: {self.planner.failed} failed)")


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


def check_settings(out: Path, record: dict[str, Any], force: bool) -> bool:
    """Refuse to continue ``out`` with other settings (more ``scenes`` is fine: the run grows).
    Returns whether ``out`` must be cleared first (``force``); nothing is written here, so a
    run that fails before its models load leaves ``out`` as it was."""
    path = out / SETTINGS_NAME
    if path.exists():
        try:
            previous = loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            previous = None
        if previous == record or (isinstance(previous, dict) and _grows(previous, record)):
            return False
        if not force:
            changed = _changes(previous, record) if isinstance(previous, dict) else "unreadable"
            raise OutputMismatchError(
                f"{out} was generated with other settings ({changed}); "
                "use another output folder, or --force to start over"
            )
        return True
    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: not a folder")
    if out.exists() and any(out.iterdir()) and not force:
        raise OutputMismatchError(
            f"{out} is not empty and was not made by acp generate; use an empty folder or --force"
        )
    return force and out.exists()


def clear_output(out: Path) -> None:
    """Remove what acp writes into ``out`` (and nothing else)."""
    from acp.export.coco import ANNOTATIONS_NAME, IMAGES_DIR, RECORDS_NAME

    for name in (SETTINGS_NAME, PROGRESS_NAME, SCORES_NAME, SUMMARY_NAME, "plans.jsonl",
                 "plans.jsonl.failures.jsonl", ANNOTATIONS_NAME, RECORDS_NAME):
        (out / name).unlink(missing_ok=True)
    for folder in (IMAGES_DIR, CANDIDATES_DIR):
        shutil.rmtree(out / folder, ignore_errors=True)


def finished_plans(out: Path) -> set[str]:
    path = out / PROGRESS_NAME
    if not path.exists():
        return set()
    return {r["plan_id"] for _, r, _ in read_records(path) if r and "plan_id" in r}


def trim_to_finished(path: Path, done: set[str]) -> None:
    """Drop the lines of plans not in ``done`` (a plan cut off mid-way is redone whole).
    Streams, and leaves the file alone when every line belongs to a finished plan."""
    if not path.exists():
        return
    if all(r is not None and r.get("plan_id") in done for _, r, _ in read_records(path)):
        drop_torn_tail(path)
        return
    with atomic_text_file(path) as handle:
        for _, record, text in read_records(path):
            if record is not None and record.get("plan_id") in done:
                handle.write(text + "\n")


FAILURES_IN_A_ROW = 5


class SceneFailuresError(AcpError):
    """Several scenes in a row failed: something is wrong with the setup, not with a scene."""


def _stops_the_run(error: Exception) -> bool:
    """Errors that would hit every scene alike (disk, device memory, a dead GPU) stop the run
    instead of being recorded against one scene; the scene stays unfinished for the rerun."""
    if isinstance(error, OSError | AcpError):
        return True
    name = type(error).__name__
    return name in ("OutOfMemoryError", "AcceleratorError") or "CUDA error" in str(error)


_DONE = object()


class _PlanFeed:
    """Plans for the renderer, in a background thread: first those already in ``plans.jsonl``
    but not finished, then new ones as the planner makes them."""

    def __init__(self, planner: Any, requests: Iterator[Any], plans_path: Path, done: set[str],
                 total: int | None):
        self.queue: queue.Queue[Any] = queue.Queue(maxsize=QUEUE_SIZE)
        self.summary = PlanSummary()
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, args=(planner, requests, plans_path, done, total), daemon=True
        )
        self._thread.start()

    def _put(self, item: Any) -> None:
        while not self._stop.is_set():
            try:
                self.queue.put(item, timeout=0.2)
                return
            except queue.Full:
                continue
        raise _Stopped

    def _run(self, planner: Any, requests: Iterator[Any], plans_path: Path, done: set[str],
             total: int | None) -> None:
        try:
            if plans_path.exists():
                for number, plan_id, plan, reason in read_plan_lines(plans_path, skip=done):
                    if plan is not None:
                        self._put(plan)
                    elif plan_id is not None:  # without an id the planner plans that scene again
                        self._put(InvalidPlan(plan_id, f"{plans_path}:{number}: {reason}"))
            self.summary = run_planner(planner, requests, plans_path, total=total, progress=False,
                                       on_plan=self._put)
        except _Stopped:
            return
        except BaseException as error:  # handed to the consumer, which re-raises it
            self.error = error
        try:
            self._put(_DONE)
        except _Stopped:
            return

    def __iter__(self) -> Iterator[ScenePlan | InvalidPlan]:
        while True:
            item = self.queue.get()
            if item is _DONE:
                if self.error is not None:
                    raise self.error
                return
            yield item

    END = _DONE

    def take(self, timeout: float) -> ScenePlan | InvalidPlan | object | None:
        """The next plan, ``END`` once the planner is done (raising its error if it failed), or
        ``None`` when nothing came within ``timeout`` seconds (0: only what is ready)."""
        try:
            item = self.queue.get(timeout=timeout) if timeout > 0 else self.queue.get_nowait()
        except queue.Empty:
            return None
        if item is _DONE and self.error is not None:
            raise self.error
        return item

    def ready(self) -> bool:
        """Whether a plan (or the end) is waiting, so that iterating will not block."""
        return not self.queue.empty()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


class _Stopped(Exception):
    pass


@dataclass(frozen=True)
class InvalidPlan:
    """A line of ``plans.jsonl`` that no longer validates (edited by hand, or rules that changed
    between versions): its scene is recorded as failed, with the reason, instead of vanishing."""

    id: str
    reason: str


def _bin(value: Any) -> int | None:
    """The 10-point histogram bin of a 0-100 score (100 goes in the last), None if not one."""
    if not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return min(max(int(value // 10), 0), 9)


def _histogram(bins: Counter[int]) -> dict[str, int]:
    return {f"{10 * b}-{10 * b + 10}": bins.get(b, 0) for b in range(10)}


def write_summary(out: Path, summary: GenerateSummary, executor: dict[str, Any] | None = None
                  ) -> dict[str, Any]:
    """Summarise ``progress.jsonl`` (all runs) into ``summary.json``; fills ``summary``'s counts.
    ``executor`` is the Ray engine's report (workers, plans per worker, restarts, retries)."""
    kept_by_category: Counter[str] = Counter()
    dropped_by_category: Counter[str] = Counter()
    reasons: Counter[str] = Counter()
    status: Counter[str] = Counter()
    scores: dict[str, Counter[int]] = {"clis": Counter(), "clis_l": Counter(), "clis_i": Counter()}
    for _, record, _ in read_records(out / PROGRESS_NAME) if (out / PROGRESS_NAME).exists() else []:
        if not record:
            continue
        status[record["status"]] += 1
        if record.get("reason"):
            reasons[record["reason_kind"]] += 1
        kept_by_category.update(record.get("kept_categories", []))
        dropped_by_category.update(record.get("dropped_categories", []))
        for key, bins in scores.items():  # counted as read: memory does not grow with the scenes
            if (found := _bin(record.get(key))) is not None:
                bins[found] += 1
    summary.scenes = sum(status.values())
    summary.kept, summary.dropped, summary.failed = status["kept"], status["dropped"], status["failed"]
    summary.reasons = reasons
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
        "last_run": {
            "scenes": summary.this_run,
            "seconds": round(summary.seconds, 3),
            "planner": asdict(summary.planner),
            "stage_seconds": {k: round(v, 3) for k, v in asdict(summary.times).items()},
            "stage_shares": summary.times.shares(summary.seconds),
            "executor": executor or {"name": "local"},
        },
    }
    write_atomic(out / SUMMARY_NAME, json.dumps(report, indent=2) + "\n")
    return report


@dataclass
class _Work:
    """One plan on its way through the stages. The device thread fills ``rendered`` (or a
    final ``result`` when the plan ends there); the finishing thread scores it, adds the kept
    image and writes it all, the ledger line last."""

    plan: ScenePlan | None
    result: PlanResult
    rendered: list[Any] = field(default_factory=list)
    layout: Any = None  # the plan's CLIS-L, computed once, before rendering
    scores: list[Any] = field(default_factory=list)
    image: Any = None
    instances: list[Any] = field(default_factory=list)
    provenance: Any = None

    def ready(self) -> ScenePlan:
        """The plan, for a stage that only runs on plans still going."""
        assert self.plan is not None
        return self.plan


class _Finisher:
    """Runs ``finish`` on each batch of ``_Work`` on one background thread, in the order put,
    through a queue of ``depth`` batches, so that CLIP-I, masks, JPEG encoding and disk writes overlap the
    next plan's rendering and memory stays bounded. ``depth`` 0 runs inline (the sequential
    engine, kept for the benchmark that compares the two). An error that stops the run is
    raised by the next ``put`` or by ``close``."""

    def __init__(self, finish: Callable[[list[_Work]], None], times: StageTimes, depth: int):
        self._finish, self.times = finish, times
        self._queue: queue.Queue[list[_Work] | None] = queue.Queue(maxsize=max(depth, 1))
        self._error: BaseException | None = None
        self._thread = None
        if depth > 0:
            self._thread = threading.Thread(target=self._run, name="acp-finish", daemon=True)
            self._thread.start()

    def put(self, work: list[_Work]) -> None:
        if self._thread is None:
            self._finish(work)
            return
        start = time.perf_counter()
        while True:
            self._raise()
            try:
                self._queue.put(work, timeout=0.1)
                break
            except queue.Full:
                continue
        self.times.finish_wait += time.perf_counter() - start

    def close(self) -> None:
        """Finish what is queued, stop the thread, raise its error if it had one."""
        if self._thread is not None:
            while self._thread.is_alive():
                try:
                    self._queue.put(None, timeout=0.1)
                    break
                except queue.Full:
                    continue
            self._thread.join()
            self._thread = None
        self._raise()

    def _raise(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def _run(self) -> None:
        while True:
            work = self._queue.get()
            if work is None:
                return
            try:
                self._finish(work)
            except BaseException as error:  # handed to the device thread, which stops the run
                self._error = error
                return


class _Outputs:
    """The open output files of a run, written by the finishing thread only."""

    def __init__(self, out: Path, writer: Any, scores: JsonlWriter, progress: JsonlWriter,
                 candidates: JsonlWriter | None):
        self.out, self.writer = out, writer
        self.scores, self.progress, self.candidates = scores, progress, candidates

    def write(self, work: _Work) -> None:
        """Candidates (``--keep-candidates``), the kept image, the scores, and last the ledger
        line: a kill at any moment leaves the plan unfinished or finished, never half."""
        if self.candidates is not None:
            for item in work.rendered:
                write_atomic(self.out / CANDIDATES_DIR / item.candidate.path, png_bytes(item.image))
                self.candidates.write(item.candidate)
        if work.image is not None:
            self.writer.add_image(work.result.plan_id, work.image, work.instances, work.provenance)
        for score in work.scores:
            self.scores.write(score)
        self.progress.write(work.result)


class _Recorder:
    """The only writer of a run's output (the finishing thread, or the Ray driver): writes each
    finished plan, its ledger line last, and applies the failure policy."""

    def __init__(self, outputs: _Outputs, times: StageTimes):
        self.outputs, self.times = outputs, times
        self.failures_in_a_row = 0
        self.failed = 0  # scenes of this run recorded as failed
        self.last_failure: str | None = None

    def write(self, work: _Work) -> None:
        """Count failures in a row (several stop the run, the scene staying unfinished), then
        write the plan's files, its ledger line last."""
        if work.result.status == "failed":
            self.failed += 1
            self.last_failure = work.result.reason
            self.failures_in_a_row += 1
            if self.failures_in_a_row >= FAILURES_IN_A_ROW:
                raise SceneFailuresError(
                    f"{FAILURES_IN_A_ROW} scenes in a row failed; stopping (last: {work.result.reason})")
        else:
            self.failures_in_a_row = 0
        start = time.perf_counter()
        self.outputs.write(work)
        self.times.export += time.perf_counter() - start


def png_bytes(image: Any) -> bytes:
    """A candidate as the PNG file written for it (already bytes when a worker encoded it)."""
    if isinstance(image, bytes):
        return image
    import io

    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


class _Stages:
    """The loaded stage runners: ``Renderer.render`` and ``Scorer`` (as ``acp render`` and
    ``acp score candidates`` run them) and the mask segmenter. The device thread calls
    ``layout`` and ``render``; ``finish`` runs behind it on a ``_Finisher`` (locally), or all
    three run in a Ray worker (``acp.distributed``). ``_Stages`` writes nothing."""

    def __init__(self, config: GenerateConfig, device: str, renderer: Any = None,
                 judge: Any = None, categories: Any = None):
        from acp.render.gligen import GligenRenderer, RenderSettings
        from acp.score.bank import Bank
        from acp.score.candidates import Scorer, Thresholds
        from acp.score.image import ImageScorer
        from acp.score.layout import LayoutScorer, sentence_transformer_embedder

        self.config = config
        self.categories = categories
        self.times = StageTimes()
        bank = Bank.load(Path(config.bank)) if config.bank is not None else None
        embedder = sentence_transformer_embedder(config.embed_model) if config.embed_model else None
        self.renderer = renderer or GligenRenderer(
            RenderSettings(model=config.model, steps=config.steps, guidance=config.guidance,
                           beta=config.beta, size=config.size,
                           negative_prompt=config.negative_prompt, seed=config.seed,
                           safety_checker=config.safety_checker),
            device=device, compile=config.compile_unet,
        )
        self.scorer = Scorer(
            ImageScorer.from_pretrained(config.clip_model, device=self.renderer.device),
            LayoutScorer(bank, embedder=embedder, method=config.clis_l_method),  # type: ignore[arg-type]
            judge=judge,
            thresholds=Thresholds(config.min_clis_l, config.min_clis_i))
        self.segmenter = None
        if config.masks:
            from acp.segment import MaskSegmenter

            self.segmenter = MaskSegmenter(config.sam_model, device=self.renderer.device)

    def _timed(self, stage: str, start: float) -> None:
        setattr(self.times, stage, getattr(self.times, stage) + time.perf_counter() - start)

    # -- the device thread ------------------------------------------------------------------

    def layout(self, plan: ScenePlan) -> _Work:
        """CLIS-L, once per plan: a plan under the threshold ends here, before any GPU time."""
        from acp.score.candidates import layout_fields

        result = PlanResult(plan_id=plan.id, status="dropped",
                            dropped_categories=[o.category for o in plan.objects])
        start = time.perf_counter()
        layout = self.scorer.layout(plan)
        self._timed("layout", start)
        for key, value in layout_fields(layout).items():  # a reference-free score is not a CLIS-L
            setattr(result, key, value)
        if not self.scorer.layout_passes(layout):
            assert layout is not None
            result.reason = f"CLIS-L {layout.score:.1f} < {self.scorer.thresholds.min_clis_l:g}"
            result.reason_kind = "layout under the CLIS-L threshold"
            return _Work(None, result)
        return _Work(plan, result, layout=layout)

    def render(self, batch: list[_Work]) -> None:
        """The candidates of every plan of ``batch`` in one denoising loop. A scene's own
        error in a batch of several is traced to its plan by rendering them one by one; that
        plan's result records it and it is not scored."""
        start = time.perf_counter()
        try:
            rendered = self.renderer.render([w.ready() for w in batch], self.config.candidates)
        except Exception as error:
            if _stops_the_run(error):
                raise
            if len(batch) == 1:
                _fail(batch[0].result, error)
                batch[0].plan = None
                return
            rendered = None
        finally:
            self._timed("render", start)
        if rendered is None:
            for work in batch:
                self.render([work])
            return
        for work, candidates in zip(batch, rendered, strict=True):
            self._take(work, candidates)

    def _take(self, work: _Work, rendered: list[Any]) -> None:
        flagged = [r for r in rendered if getattr(r, "flagged", False)]
        if flagged:  # black images: dropped unscored, not ranked as bad candidates
            work.result.flagged = len(flagged)
            rendered = [r for r in rendered if not getattr(r, "flagged", False)]
            if not rendered:
                work.result.reason = "every candidate was flagged by the safety checker"
                work.result.reason_kind = "flagged by the safety checker"
                work.plan = None
        work.rendered = rendered

    # -- the finishing thread ---------------------------------------------------------------

    def finish(self, batch: list[_Work]) -> None:
        """Score the plans of ``batch`` in one CLIP pass and choose each one's image and
        instances (a scene's own error is recorded in its result). Writes nothing."""
        scored = [w for w in batch if w.plan is not None]
        if scored:
            start = time.perf_counter()
            try:
                results = self.scorer.score_many([(w.ready(), w.rendered, w.layout) for w in scored])
            except Exception as error:
                if _stops_the_run(error):
                    raise
                results = None
            finally:
                self._timed("score", start)
            if results is None:  # a scene's own error, but whose? Score them one by one.
                for work in scored:
                    self._score_alone(work)
            else:
                for work, scores in zip(scored, results, strict=True):
                    work.scores = list(scores.candidates)
                    self._keep(work, scores.best)

    def _score_alone(self, work: _Work) -> None:
        start = time.perf_counter()
        try:
            (scores,) = self.scorer.score_many([(work.ready(), work.rendered, work.layout)])
        except Exception as error:
            _raise_or_fail(error, work)
            return
        finally:
            self._timed("score", start)
        work.scores = list(scores.candidates)
        self._keep(work, scores.best)

    def _keep(self, work: _Work, best: Any) -> None:
        """The best candidate (if any) with its masks becomes the plan's image and instances."""
        try:
            self._export(work, best)
        except Exception as error:
            _raise_or_fail(error, work)

    def _export(self, work: _Work, best: Any) -> None:
        from acp.boxes import plan_to_sam
        from acp.export import ImageProvenance, plan_instances

        plan, result, rendered = work.plan, work.result, work.rendered
        assert plan is not None
        if best is None:
            result.reason = work.scores[0].reason if work.scores else "no candidate"
            result.reason_kind = "no candidate passes the CLIS-I threshold"
            result.clis_i = max((s.clis_i for s in work.scores), default=None)
            return
        chosen = next(r for r in rendered if r.candidate.index == best.index)
        masks = None
        if self.segmenter is not None:
            start = time.perf_counter()
            objects = {o.id: o for o in plan.objects}
            kept = [s for s in best.objects if s.kept]
            width, height = chosen.image.size
            found = self.segmenter.segment(
                chosen.image, plan_to_sam([objects[s.id].bbox for s in kept], width, height))
            masks = {}
            unmasked = set()
            for instance, mask in zip(kept, found, strict=True):
                what = f"object {instance.id} ({instance.category})"
                if mask.problem:  # no usable mask: the instance is not exported, and said so
                    unmasked.add(instance.id)
                    result.mask_problems.append(f"{what}: {mask.problem}")
                else:
                    masks[instance.id] = mask
                    if mask.warning:  # kept, but implausible for its box: said so
                        result.mask_problems.append(f"{what}: {mask.warning}")
            # The scores stay what the scorer said (as `acp score candidates` writes them); what
            # is exported is a new score without the unmasked instances.
            best = best.model_copy(update={"objects": [
                o.model_copy(update={"kept": False}) if o.id in unmasked else o for o in best.objects]})
            self._timed("segment", start)
        if not any(s.kept for s in best.objects) and best.objects:
            result.reason, result.reason_kind = "every mask came out empty", "no usable mask"
            return
        work.instances = plan_instances(plan, self.categories, score=best, masks=masks,
                                        size=chosen.image.size)
        work.provenance = ImageProvenance.from_records(
            plan, chosen.candidate, best,
            sam_model=self.config.sam_model if self.segmenter is not None else None)
        work.image = chosen.image
        result.status, result.candidate = "kept", best.index
        result.clis, result.clis_i = best.clis, best.clis_i
        result.kept_categories = [o.category for o in best.objects if o.kept]
        result.dropped_categories = [o.category for o in best.objects if not o.kept]


def _raise_or_fail(error: Exception, work: _Work) -> None:
    """Re-raise an error that stops the run; record any other against ``work``'s scene."""
    if _stops_the_run(error):
        raise error
    work.scores, work.image, work.instances = [], None, []
    _fail(work.result, error)


def _fail(result: PlanResult, error: Exception) -> None:
    """Record a scene's own error in its result."""
    first = first_line(error, limit=500)
    result.status = "failed"
    result.reason = f"{type(error).__name__}: {first}"[:500]
    result.reason_kind = f"error: {type(error).__name__}"


class NothingMade(AcpError):
    """A run that made no image and recorded failures: exit non-zero with the last reason."""


def generate(
    config: GenerateConfig,
    out: Path,
    *,
    api_key: str | None = None,
    device: str = "auto",
    force: bool = False,
    progress: bool = True,
    renderer: Any = None,
    judge: Any = None,
    finish_queue: int | None = None,
    batch_plans: int = defaults.BATCH_PLANS,
    executor: str = "local",
    ray: Any = None,
    renderer_factory: Callable[[], Any] | None = None,
) -> GenerateSummary:
    """Run the whole job into ``out``; rerun with the same arguments to resume.

    ``out`` is locked before anything in it is read or cleared, and nothing is written there
    before every input and model has loaded: a wrong model path leaves ``out`` as it was.
    ``judge`` is the VLM judge (``acp.score.judge.Judge``) made from ``config.judge_*``, asked
    where CLIP-I is unsure, as in ``acp score candidates``. ``renderer`` replaces the GLIGEN
    renderer built from ``config`` (benchmarks pass a stand-in with its ``render(plans, K)``
    and ``device``); ``finish_queue`` is how many rendered batches may wait for the finishing
    thread (0: finish inline, the sequential engine; by default ``FINISH_QUEUE``, and 0 on the
    CPU, where rendering and CLIP would share the same cores: measured, the threads made a
    tiny-model run 2.5 times slower there); ``batch_plans`` is how many plans the
    device renders in one loop (on CPU the images do not depend on it). ``executor`` "ray"
    runs the stages in Ray workers (``acp.distributed``; ``ray`` is its ``RayOptions``), each
    building its renderer with ``renderer_factory`` when given (a picklable callable).
    """
    from acp.device import resolve_device
    from acp.export import load_categories
    from acp.render.folder import check_batch_plans

    out = Path(out)
    started = time.perf_counter()
    # Everything that can fail on the user's input fails here, before any model is loaded.
    # Ray workers resolve the device themselves: the driver may be a node without the GPUs.
    device = resolve_device(device) if executor != "ray" else device
    check_batch_plans(batch_plans)
    categories = load_categories(all_concepts(config.concepts), config.categories)
    sets = scene_concepts(config.concepts, config.scenes, config.objects, config.seed)
    total = len(sets) if isinstance(sets, tuple) else (
        None if config.concepts.quotas else (config.scenes or len(config.concepts.vocabulary)))
    if config.bank is not None and not Path(config.bank).is_dir():
        raise InputError(f"--bank {config.bank}: no such folder (build one with `acp bank build`)")
    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: not a folder")
    if executor == "ray":
        from acp.distributed import RayEngine, RayOptions

        engine: Any = RayEngine(config, device, ray or RayOptions(), renderer_factory=renderer_factory,
                                judge=judge, categories=categories, batch_plans=batch_plans)
    elif executor == "local":
        if renderer is None and renderer_factory is not None:
            renderer = renderer_factory()
        if finish_queue is None:
            finish_queue = 0 if device == "cpu" and renderer is None else FINISH_QUEUE
        engine = LocalEngine(config, device, renderer=renderer, judge=judge, categories=categories,
                             finish_queue=finish_queue, batch_plans=batch_plans)
    else:
        raise InputError(f"--executor: expected local or ray, got {executor!r}")
    lock = OutputLock(out)
    if out.is_dir():
        lock.acquire()
    try:
        return _generate(config, out, lock, categories, sets, total, api_key=api_key, force=force,
                         progress=progress, started=started, engine=engine)
    finally:
        lock.release()


@dataclass
class RunState:
    """What an engine works with: the plans to make (``feed``), the ids already finished
    (``done``, which it extends), the only writer of the output (``recorder``), the summary it
    counts into and the progress bar."""

    feed: _PlanFeed
    done: set[str]
    recorder: _Recorder
    summary: GenerateSummary
    bar: Any
    writer: Any

    def invalid(self, plan: InvalidPlan) -> _Work:
        return _Work(None, PlanResult(plan_id=plan.id, status="failed", reason_kind="invalid plan",
                                      reason=f"invalid plan: {plan.reason}"[:500]))

    def written(self, count: int = 1) -> None:
        self.summary.this_run += count
        self.bar.update(count)
        self.bar.set_postfix(kept=self.writer.image_count, refresh=False)


class LocalEngine:
    """The in-process engine: the device thread here, a finishing thread behind it."""

    def __init__(self, config: GenerateConfig, device: str, *, renderer: Any = None, judge: Any = None,
                 categories: Any = None, finish_queue: int = FINISH_QUEUE,
                 batch_plans: int = defaults.BATCH_PLANS):
        self.config, self.device, self.renderer, self.judge = config, device, renderer, judge
        self.categories, self.finish_queue, self.batch_plans = categories, finish_queue, batch_plans
        self.stages: _Stages | None = None
        self.times = StageTimes()

    def load(self) -> None:
        self.stages = _Stages(self.config, self.device, self.renderer, self.judge, self.categories)
        self.times = self.stages.times

    def run(self, state: RunState) -> None:
        stages = self.stages
        assert stages is not None

        def finish(batch: list[_Work]) -> None:
            stages.finish(batch)
            for work in batch:
                state.recorder.write(work)

        finisher = _Finisher(finish, stages.times, self.finish_queue)
        pending: list[_Work] = []  # in plan order; those with a plan wait to be rendered

        def flush() -> None:
            batch = [w for w in pending if w.plan is not None]
            if batch:
                stages.render(batch)
            finisher.put(pending.copy())
            state.written(len(pending))
            pending.clear()

        try:
            mark = time.perf_counter()
            for plan in state.feed:
                stages.times.plan_wait += time.perf_counter() - mark
                if plan.id not in state.done:
                    pending.append(
                        state.invalid(plan) if isinstance(plan, InvalidPlan) else stages.layout(plan))
                    state.done.add(plan.id)
                    # B plans to render, or fewer when the planner has nothing more ready: the
                    # device never waits for a batch to fill.
                    if sum(w.plan is not None for w in pending) >= self.batch_plans or not state.feed.ready():
                        flush()
                mark = time.perf_counter()
            flush()
        finally:
            finisher.close()  # what was queued is finished, so a rendered plan is never lost

    def close(self) -> None:
        pass


def _generate(config: GenerateConfig, out: Path, lock: OutputLock, categories: Any, sets: Any,
              total: int | None, *, api_key: str | None, force: bool, progress: bool,
              started: float, engine: Any) -> GenerateSummary:
    from tqdm import tqdm

    from acp.export import CocoWriter

    record = config.record()
    clear = check_settings(out, record, force) if out.exists() else False
    done = set() if clear else finished_plans(out)
    if not clear and out.exists():
        trim_to_finished(out / SCORES_NAME, done)
        trim_to_finished(out / CANDIDATES_DIR / "manifest.jsonl", done)
    if not clear and total is not None and len(done) >= total:  # a finished job: nothing to load
        summary = GenerateSummary(seconds=time.perf_counter() - started)
        with CocoWriter(out, categories, image_format=config.image_format) as finished:  # type: ignore[arg-type]
            summary.annotations = finished.annotation_count
        write_summary(out, summary)
        return summary
    planner = _planner(config, api_key)
    try:
        engine.load()
        engine.times.load = time.perf_counter() - started  # imports and inputs included
        # Only now that every model loaded is the folder claimed (and, with --force, cleared)
        # for these settings: a typo in a model path must not leave debris, nor destroy the
        # last run.
        out.mkdir(parents=True, exist_ok=True)
        if not lock.held:
            lock.acquire()  # ``out`` did not exist when the run began
            if check_settings(out, record, force):  # someone else's run appeared meanwhile
                raise OutputMismatchError(f"{out}: another run started writing it; rerun")
        if clear:
            clear_output(out)
        write_atomic(out / SETTINGS_NAME, json.dumps(record, indent=2, sort_keys=True) + "\n")
        writer = CocoWriter(out, categories, image_format=config.image_format)  # type: ignore[arg-type]
        summary = GenerateSummary(times=engine.times)
        feed = _PlanFeed(planner, make_requests(sets, config.seed, *config.size,
                                                companions=config.concepts.companions),
                         out / "plans.jsonl", done, total)
        bar = tqdm(total=total, initial=len(done), desc="generating", unit="scene",
                   disable=not progress, dynamic_ncols=True)
        try:
            with contextlib.ExitStack() as files:
                files.enter_context(writer)
                kept_before = writer.image_count
                scores_log = files.enter_context(JsonlWriter(out / SCORES_NAME))
                progress_log = files.enter_context(JsonlWriter(out / PROGRESS_NAME))
                candidates_log = (files.enter_context(JsonlWriter(out / CANDIDATES_DIR / "manifest.jsonl"))
                                  if config.keep_candidates else None)
                recorder = _Recorder(_Outputs(out, writer, scores_log, progress_log, candidates_log),
                                     engine.times)
                engine.run(RunState(feed, done, recorder, summary, bar, writer))
                summary.annotations = writer.annotation_count
                kept_now = writer.image_count - kept_before
        finally:
            feed.close()
            bar.close()
    finally:
        engine.close()
    summary.planner = feed.summary
    summary.seconds = time.perf_counter() - started
    write_summary(out, summary, getattr(engine, "report", None))
    failures = summary.planner.failed + recorder.failed
    if kept_now == 0 and failures:
        last = recorder.last_failure or summary.planner.last_error or "unknown"
        raise NothingMade(
            f"{out}: no image made this run; {failures} scenes failed (last reason: "
            f"{first_line(last, default='unknown')})"
        )
    return summary


def _planner(config: GenerateConfig, api_key: str | None) -> Any:
    settings = PlanSettings(width=config.size[0], height=config.size[1], rules=config.rules,
                            categories=tuple(all_concepts(config.concepts)))
    if config.planner == "openai":
        from acp.plan.llm import LLMPlanner

        assert config.llm is not None
        return LLMPlanner.from_options(
            base_url=config.llm.base_url, model=config.llm.model, api_key=api_key,
            concurrency=config.llm.concurrency, max_reasks=config.llm.max_reasks,
            timeout=config.llm.timeout, settings=settings,
        )
    from acp.plan.heuristic import HeuristicPlanner

    return HeuristicPlanner(settings)

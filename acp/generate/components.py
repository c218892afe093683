"""The one builder of acp's runners from their settings: the planner, the renderer, the
layout and image scorers, the judge, the verifier and the mask segmenter. ``acp plan``, ``acp render``,
``acp score ...`` and ``acp generate`` (both engines) all build them here, so one setting means
the same thing everywhere. Model loading is lazy: nothing heavy is imported until a builder
that needs it is called."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from acp import defaults
from acp.errors import InputError

if TYPE_CHECKING:
    from acp.export.categories import CategorySet
    from acp.llm import ChatSettings
    from acp.plan.base import PlanSettings
    from acp.plan.run import Planner
    from acp.render.base import Renderer
    from acp.render.gligen import GligenRenderer, RenderSettings
    from acp.score.candidates import Scorer, ScoreSettings
    from acp.score.image import ImageScorer
    from acp.score.judge import Judge, JudgeSettings
    from acp.score.layout import LayoutScorer
    from acp.score.verify import Verifier, VerifySettings
    from acp.segment import MaskSegmenter, MaskSettings


def planner(settings: PlanSettings, chat: ChatSettings | None = None, *,
            max_reasks: int = defaults.LLM_MAX_REASKS, bank: Path | None = None) -> Planner:
    """The LLM planner with ``chat``, else the offline heuristic one; with a ``bank`` (a
    folder of ``acp bank build``), planning is grounded in its real layouts: the heuristic
    planner draws scenes from them, the LLM is shown some as examples."""
    from acp.score.bank import Bank

    layouts = Bank.load(Path(bank)) if bank is not None else None
    if chat is not None:
        from acp.plan.llm import LLMPlanner

        return LLMPlanner(chat, settings, max_reasks=max_reasks, bank=layouts)
    from acp.plan.heuristic import HeuristicPlanner

    return HeuristicPlanner(settings, bank=layouts)


def renderer(settings: RenderSettings, device: str, *, compile: bool = False, dtype: str | None = None,
             progress: bool = False) -> GligenRenderer:
    from acp.render.gligen import GligenRenderer

    return GligenRenderer(settings, device=device, compile=compile, dtype=dtype, progress=progress)


def layout_scorer(settings: ScoreSettings, *, progress: bool = False) -> LayoutScorer:
    """CLIS-L against ``settings.bank``; without one, the reference-free sanity score."""
    from acp.score.bank import Bank
    from acp.score.layout import SCORING_METHODS, LayoutScorer, sentence_transformer_embedder

    if settings.clis_l_method not in SCORING_METHODS:
        raise InputError(f"--clis-l-method: expected one of {', '.join(SCORING_METHODS)}, "
                         f"got {settings.clis_l_method!r}")
    if settings.embed_model and settings.bank is None:
        raise InputError("--embed-model needs --bank (it matches names against the bank's categories)")
    if settings.bank is not None and not Path(settings.bank).is_dir():
        raise InputError(f"--bank {settings.bank}: no such folder (build one with `acp bank build`)")
    embedder = (sentence_transformer_embedder(settings.embed_model, progress=progress)
                if settings.embed_model else None)
    bank = Bank.load(Path(settings.bank)) if settings.bank is not None else None
    return LayoutScorer(bank, embedder=embedder, method=settings.clis_l_method)  # type: ignore[arg-type]


def image_scorer(clip_model: str, device: str | None, *, dtype: str | None = None,
                 progress: bool = False) -> ImageScorer:
    from acp.score.image import ImageScorer

    return ImageScorer.from_pretrained(clip_model, device=device, dtype=dtype, progress=progress)


def judge(settings: JudgeSettings | None) -> Judge | None:
    from acp.score.judge import Judge

    return Judge.from_settings(settings) if settings is not None else None


def scorer(settings: ScoreSettings, device: str | None, *, judge: Judge | None = None,
           dtype: str | None = None, progress: bool = False) -> Scorer:
    """CLIS-L and CLIS-I with ``settings``' thresholds, ``judge`` asked where CLIP is unsure."""
    from acp.score.candidates import Scorer

    return Scorer(image_scorer(settings.clip_model, device, dtype=dtype, progress=progress),
                  layout_scorer(settings, progress=progress), judge=judge, thresholds=settings.thresholds)


def verifier(settings: VerifySettings | None, device: str | None, *, dtype: str | None = None,
             progress: bool = False) -> Verifier | None:
    """The detector of ``settings`` (``acp.score.detector``) with its checks; ``None`` without."""
    if settings is None:
        return None
    from acp.score.detector import ZeroShotDetector
    from acp.score.verify import Verifier

    detector = ZeroShotDetector.from_pretrained(settings.detector_model, device=device, dtype=dtype,
                                                progress=progress)
    return Verifier(detector, settings)


def segmenter(settings: MaskSettings | None, device: str | None, *, dtype: str | None = None,
              progress: bool = False) -> MaskSegmenter | None:
    if settings is None:
        return None
    from acp.segment import MaskSegmenter

    return MaskSegmenter(settings.sam_model, device=device, dtype=dtype, progress=progress)


def check_models(spec: StageSpec, *, renderer: bool = True) -> None:
    """Every model the stages load, looked for before any is loaded: all that are missing in
    one line with the command that fetches them (``acp.pretrained.check_models``)."""
    from acp.pretrained import check_models as check

    score = spec.score
    check([*([("--model", spec.render.model)] if renderer else []), ("--clip-model", score.clip_model),
           *([("--sam-model", spec.masks.sam_model)] if spec.masks is not None else []),
           *([("--detector-model", score.verify.detector_model)] if score.verify is not None else []),
           *([("--embed-model", score.embed_model)] if score.embed_model else [])])


@dataclass(frozen=True)
class StageSpec:
    """What the per-plan stages of ``acp generate`` are built from and run with (picklable, so
    that a Ray worker builds the same): the stage settings, the output's categories, and the
    candidates' fate (image format, kept or not)."""

    render: RenderSettings
    candidates: int
    score: ScoreSettings
    masks: MaskSettings | None
    categories: CategorySet
    image_format: str
    keep_candidates: bool


@dataclass(frozen=True)
class Components:
    """The loaded runners of the stages."""

    renderer: Renderer
    scorer: Scorer
    segmenter: MaskSegmenter | None
    verifier: Verifier | None = None

    @classmethod
    def load(cls, spec: StageSpec, device: str, *, compile: bool = False, dtype: str | None = None,
             make_renderer: Callable[[], Renderer] | None = None, progress: bool = False) -> Components:
        """Every model of the stages, on ``device`` (the scorers go where the renderer is), in
        ``dtype`` (``acp.device.resolve_dtype``); missing ones are all named before any loads.
        ``make_renderer`` replaces GLIGEN (benchmarks and tests pass a stand-in); ``progress``:
        a status line per model."""
        check_models(spec, renderer=make_renderer is None)
        built = (make_renderer() if make_renderer is not None
                 else renderer(spec.render, device, compile=compile, dtype=dtype, progress=progress))
        return cls(built, scorer(spec.score, built.device, judge=judge(spec.score.judge), dtype=dtype,
                                 progress=progress),
                   segmenter(spec.masks, built.device, dtype=dtype, progress=progress),
                   verifier(spec.score.verify, built.device, dtype=dtype, progress=progress))

"""CLIS-L and CLIS-I combined into ``CandidateScore`` records, and the best candidate of a plan.

- ``clis = 0.5 * clis_l + 0.5 * clis_i`` when CLIS-L comes from a bank; ``clis = clis_i`` when
  the layout score is reference-free (no bank, or none of the plan's categories in it: a check
  of frame and overlaps should not move a quality score). All candidates of a plan share its
  CLIS-L, so within a plan the ranking is CLIS-I's; the composite makes scores comparable
  across plans. With a detector (``acp.score.verify``), its verification term joins them:
  ``clis`` is the mean of CLIS-L (a bank's), CLIS-I and the verification term, the ones there
  are, so within a plan the ranking is CLIS-I's and the verification's, equally.
- How a layout score is written, the same in every acp output (``layout_fields``; in a
  ``CandidateScore`` the last two sit in ``detail``, in ``acp score layouts`` and ``acp score
  dataset`` records at the top level): ``clis_l`` is CLIS-L proper, ``null`` when the score is
  reference-free, so that nothing reading ``clis_l`` (COCO provenance, histograms) mistakes a
  sanity check for CLIS-L; ``clis_l_sanity`` holds the reference-free score then (``null``
  otherwise); ``clis_l_method`` says how it was reached (``density`` for v2, ``pairs`` or
  ``priors`` for the paper's method, ``degenerate``;
  ``sanity`` or ``empty`` for a reference-free one; see ``acp.score.layout``).
- Thresholds: a plan with ``clis_l < min_clis_l`` (10 for CLIS-L v2) is dropped with all its
  candidates (a bank's CLIS-L only: the reference-free sanity score is on another footing);
  an instance with ``clis_i < min_clis_i`` (60) is dropped (``ObjectScore.kept`` false); a
  candidate whose instances are all dropped is dropped. ``None`` disables a threshold. With a
  detector an instance must also be verified, a disagreement goes to the judge (when there is
  one) and an unlabeled object drops the candidate under ``--unplanned drop``
  (``acp.score.verify``).
- Best: the kept candidate with the highest ``clis`` (ties: the lower index); a plan whose
  candidates are all dropped has no best.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from acp import defaults
from acp.errors import InputError, OutputMismatchError
from acp.images import read_rgb
from acp.paths import UnsafePathError, file_problem, inside
from acp.render.base import RenderedCandidate
from acp.render.folder import MANIFEST
from acp.schema import Candidate, CandidateScore, ObjectScore, ScenePlan
from acp.score.image import ImageScore, ImageScorer, Scene
from acp.score.judge import JudgeSettings
from acp.score.layout import LayoutScore, LayoutScorer
from acp.score.verify import VerifySettings
from acp.settings_record import recorded

if TYPE_CHECKING:
    from PIL.Image import Image

    from acp.score.image import InstanceScore
    from acp.score.judge import Judge
    from acp.score.verify import BoxCheck, CandidateCheck

LAYOUT_WEIGHT = 0.5
DEFAULT_INSTANCE_THRESHOLD = defaults.MIN_CLIS_I  # where the judge looks when no threshold is set


@dataclass(frozen=True)
class Thresholds:
    min_clis_l: float | None = defaults.MIN_CLIS_L
    min_clis_i: float | None = defaults.MIN_CLIS_I


@dataclass(frozen=True)
class ScoreSettings:
    """What decides a plan's scores and what is kept: the models, the bank, the thresholds
    (``None``: no threshold), the optional judge and the optional verifier. Options added after
    the first runs are recorded only when used (``acp.settings_record``), so settings of older
    runs still match."""

    clip_model: str = field(default=defaults.CLIP_MODEL, metadata=recorded(model=True))
    bank: Path | None = None
    embed_model: str | None = field(default=None, metadata=recorded(omit="empty"))
    # Recorded unless v2: a settings.json from before the option meant v2, the default then.
    clis_l_method: str = field(default=defaults.CLIS_L_METHOD, metadata=recorded(omit_value="v2"))
    judge: JudgeSettings | None = field(default=None, metadata=recorded(flatten="judge_"))
    min_clis_l: float | None = defaults.MIN_CLIS_L
    min_clis_i: float | None = defaults.MIN_CLIS_I
    # The detector that verifies each box (acp.score.verify); recorded only when there is one,
    # so a settings.json from before the verifier (none) still matches.
    verify: VerifySettings | None = field(default=None, metadata=recorded(flatten=""))

    @property
    def thresholds(self) -> Thresholds:
        return Thresholds(self.min_clis_l, self.min_clis_i)


def compose_clis(layout: LayoutScore | None, clis_i: float, verification: float | None = None) -> float:
    """The composite score (see the module docstring)."""
    if verification is not None:
        terms = [clis_i, verification]
        if layout is not None and not layout.reference_free:
            terms.append(layout.score)
        return sum(terms) / len(terms)
    if layout is None or layout.reference_free:
        return clis_i
    return LAYOUT_WEIGHT * layout.score + (1 - LAYOUT_WEIGHT) * clis_i


def layout_fields(layout: LayoutScore | None) -> dict[str, Any]:
    """``clis_l``, ``clis_l_sanity`` and ``clis_l_method`` of a layout score, rounded (see the
    module docstring); all ``None`` without one."""
    if layout is None:
        return {"clis_l": None, "clis_l_sanity": None, "clis_l_method": None}
    value = round(layout.score, 3)
    return {
        "clis_l": None if layout.reference_free else value,
        "clis_l_sanity": value if layout.reference_free else None,
        "clis_l_method": layout.method,
    }


def _kept(instance: InstanceScore, thresholds: Thresholds, box: BoxCheck | None) -> bool:
    """Whether an instance is exported: CLIS-I passes, and with a detector the box is verified,
    unless the judge rated a disagreement (its rating then decides alone)."""
    passes = thresholds.min_clis_i is None or instance.clis_i >= thresholds.min_clis_i
    if box is None or instance.judge is not None:
        return passes
    return passes and box.verified


def combine(
    plan_id: str,
    candidates: Sequence[Candidate],
    images: Sequence[ImageScore],
    layout: LayoutScore | None,
    thresholds: Thresholds = Thresholds(),
    settings: dict[str, Any] | None = None,
    checks: Sequence[CandidateCheck] | None = None,
    verify: VerifySettings | None = None,
) -> list[CandidateScore]:
    """One ``CandidateScore`` per candidate of one plan, thresholds applied, best marked;
    ``checks`` (one per candidate) are the verifier's, read with ``verify``'s policy."""
    from acp.score.verify import object_fields

    low_layout = (
        layout is not None
        and not layout.reference_free
        and thresholds.min_clis_l is not None
        and layout.score < thresholds.min_clis_l
    )
    refine = verify is not None and verify.refine_boxes
    records = []
    for k, (candidate, image) in enumerate(zip(candidates, images, strict=True)):
        check = checks[k] if checks is not None else None
        boxes = check.boxes if check is not None else [None] * len(image.objects)
        objects = [
            ObjectScore(
                id=o.id,
                category=o.category,
                clis_i=round(o.clis_i, 3),
                text_similarity=round(o.text_similarity, 3),
                category_confidence=round(o.category_confidence, 3),
                judge=o.judge,
                kept=_kept(o, thresholds, box),
                **(object_fields(box, refine) if box is not None else {}),
            )
            for o, box in zip(image.objects, boxes, strict=True)
        ]
        reason = None
        detections = list(check.detections) if check is not None else []
        verification = check.verification if check is not None else None
        if low_layout:
            assert layout is not None and thresholds.min_clis_l is not None
            reason = f"plan CLIS-L {layout.score:.1f} < {thresholds.min_clis_l:g}"
        elif objects and not any(o.kept for o in objects):
            reason = f"no instance reaches CLIS-I {thresholds.min_clis_i:g}" + (
                " and a detection of its category" if check is not None else "")
        elif check is not None and verify is not None and verify.unplanned == "drop":
            scored = CandidateScore(plan_id=plan_id, index=candidate.index, clis=0.0, clis_i=0.0,
                                    objects=objects, detections=detections)
            extra = scored.unlabeled()
            if extra:
                names = ", ".join(dict.fromkeys(d.category for d in extra))
                reason = f"{len(extra)} unlabeled objects the detector is sure of ({names})"
        detail: dict[str, Any] = {"clis_i_global_cosine": round(image.global_cosine, 5)}
        fields = layout_fields(layout)
        if layout is not None:
            detail["clis_l_method"] = fields["clis_l_method"]
            detail["clis_l_reference_free"] = layout.reference_free
            detail["clis_l_sanity"] = fields["clis_l_sanity"]
            detail["clis_l_pairs"] = [p.to_dict() for p in layout.pairs]
        if settings:
            detail["settings"] = settings
        records.append(
            CandidateScore(
                plan_id=plan_id,
                index=candidate.index,
                path=candidate.path,
                clis=round(compose_clis(layout, image.clis_i, verification), 3),
                clis_l=fields["clis_l"],
                clis_i=round(image.clis_i, 3),
                clis_i_global=round(image.global_score, 3),
                clis_i_local=round(image.local_score, 3) if image.local_score is not None else None,
                objects=objects,
                kept=reason is None,
                reason=reason,
                detail=detail,
                verification=round(verification, 3) if verification is not None else None,
                detections=detections,
            )
        )
    best = best_candidate(records)
    if best is not None:
        best.best = True
    return records


def best_candidate(scores: Sequence[CandidateScore]) -> CandidateScore | None:
    """The kept candidate with the highest ``clis``, ties to the lower index; None if none is kept."""
    kept = [s for s in scores if s.kept]
    return max(kept, key=lambda s: (s.clis, -s.index)) if kept else None


@dataclass(frozen=True)
class PlanScores:
    """One plan scored: its CLIS-L (once for all its candidates; ``None`` without a layout
    scorer) and one ``CandidateScore`` per candidate, thresholds applied, the best marked."""

    plan_id: str
    layout: LayoutScore | None
    candidates: tuple[CandidateScore, ...]

    @property
    def best(self) -> CandidateScore | None:
        return next((c for c in self.candidates if c.best), None)


class Scorer:
    """The CLIS scorer of ``acp score candidates`` and ``acp generate``: one way to score a
    plan's rendered candidates. ``layout`` is CLIS-L, which ``generate`` asks before rendering
    (a plan under the threshold costs no GPU time) and hands back to ``score``; ``score_many``
    scores several plans with all their images and crops in one CLIP pass, the judge asked
    where CLIP is unsure."""

    def __init__(
        self,
        image_scorer: ImageScorer,
        layout_scorer: LayoutScorer | None = None,
        *,
        judge: Judge | None = None,
        thresholds: Thresholds = Thresholds(),
        settings: dict[str, Any] | None = None,
    ):
        self.image_scorer, self.layout_scorer, self.judge = image_scorer, layout_scorer, judge
        self.thresholds, self.settings = thresholds, settings

    def layout(self, plan: ScenePlan) -> LayoutScore | None:
        return self.layout_scorer.score(plan) if self.layout_scorer is not None else None

    def layout_passes(self, layout: LayoutScore | None) -> bool:
        """Whether a plan with this CLIS-L is worth rendering (a reference-free score always is)."""
        floor = self.thresholds.min_clis_l
        return layout is None or layout.reference_free or floor is None or layout.score >= floor

    def score(self, plan: ScenePlan, rendered: Sequence[RenderedCandidate], layout: LayoutScore | None = None
              ) -> PlanScores:
        """``rendered`` candidates of ``plan``; ``layout`` is its CLIS-L if known already."""
        (scores,) = self.score_many([(plan, rendered, layout)])
        return scores

    def score_many(self, items: Sequence[tuple[ScenePlan, Sequence[RenderedCandidate], LayoutScore | None]],
                   checks: Sequence[Sequence[CandidateCheck] | None] | None = None,
                   verify: VerifySettings | None = None) -> list[PlanScores]:
        """``score`` for several ``(plan, rendered, layout or None)``, in one CLIP pass;
        ``checks`` are the verifier's (per plan, one per candidate), read with ``verify``'s
        policy (``acp.score.verify``)."""
        each = [(Scene.from_plan(plan), r) for plan, rendered, _ in items for r in rendered]
        # CLIP reads the device copy where the renderer left one; the judge, the PIL image
        image_scores = self.image_scorer.score_scenes([(scene, r.picture) for scene, r in each])
        scenes = [(scene, r.image) for scene, r in each]
        flat = ([c for plan_checks, (_, rendered, _) in zip(checks, items, strict=True)
                 for c in (plan_checks if plan_checks is not None else [None] * len(rendered))]
                if checks is not None else [None] * len(scenes))
        if self.judge is not None:
            floor = self.thresholds.min_clis_i
            floor = floor if floor is not None else DEFAULT_INSTANCE_THRESHOLD
            rows = list(zip(scenes, image_scores, flat, strict=True))
            self.judge.review([(scene, image, s) for (scene, image), s, c in rows if c is None], floor)
            judge_disagreements(self.judge, [(scene, image, s, c) for (scene, image), s, c in rows
                                             if c is not None], floor)
        missing = [plan for plan, _, layout in items if layout is None]
        computed = iter(self.layout_scorer.score_many(missing) if self.layout_scorer and missing else [])
        results, start = [], 0
        for plan, rendered, layout in items:
            if layout is None and self.layout_scorer is not None:
                layout = next(computed)  # all the batch's CLIS-L in one vectorised pass
            scores = image_scores[start : start + len(rendered)]
            plan_checks = flat[start : start + len(rendered)]
            start += len(rendered)
            records = combine(plan.id, [r.candidate for r in rendered], scores, layout, self.thresholds,
                              self.settings, checks=None if None in plan_checks else plan_checks,  # type: ignore[arg-type]
                              verify=verify)
            results.append(PlanScores(plan.id, layout, tuple(records)))
        return results


def judge_disagreements(judge: Judge, items: Sequence[tuple[Scene, Image, ImageScore, CandidateCheck]],
                        floor: float) -> int:
    """The cascade with a detector: the judge rates the instances where CLIP (CLIS-I at least
    ``floor``) and the detector (verified) disagree, in order and within its call budget, and
    its rating replaces CLIS-I (``Judge.review`` does the same where CLIP alone is unsure).
    Returns the number of requests made."""
    from acp.score.image import crop_box, square_pad
    from acp.score.judge import JudgeRequest

    room = judge.max_calls - judge.calls
    chosen: list[tuple[ImageScore, int, JudgeRequest]] = []
    for scene, image, score, check in items:
        rgb = image.convert("RGB")
        for k, (obj, instance, box) in enumerate(zip(scene.objects, score.objects, check.boxes, strict=True)):
            if len(chosen) >= room:
                break
            if (instance.clis_i >= floor) != box.verified:
                crop = square_pad(rgb.crop(crop_box(obj.bbox, rgb.width, rgb.height)))
                chosen.append((score, k, JudgeRequest(crop, obj.description, obj.category)))
    if not chosen:
        return 0
    ratings = judge.rate([request for _, _, request in chosen])
    for (score, k, _), rating in zip(chosen, ratings, strict=True):
        if rating is not None:
            score.objects[k].judge = rating
            score.objects[k].clis_i = rating
    for score in {id(score): score for score, _, _ in chosen}.values():
        score.recompute()
    return len(chosen)


@dataclass
class RunSummary:
    """What ``score_renders`` did; ``failures`` are ``(item, reason)`` for the user."""

    scored: int = 0
    kept: int = 0
    best: int = 0
    plans: int = 0
    skipped: int = 0  # already in the output
    failures: list[tuple[str, str]] = field(default_factory=list)

    def line(self) -> str:
        return (
            f"{self.scored} candidates of {self.plans} plans scored ({self.kept} kept, {self.best} best), "
            f"{self.skipped} already scored, {len(self.failures)} failed"
        )


def read_manifest(renders: Path) -> tuple[list[Candidate], list[tuple[str, str]]]:
    """Valid candidates of ``renders/manifest.jsonl`` and ``(file:line, reason)`` for the rest."""
    from pydantic import ValidationError

    from acp.jsonl import read_records
    from acp.schema import error_problems

    manifest = renders / MANIFEST
    if problem := file_problem(manifest):
        raise InputError(f"{renders}: no {MANIFEST}; expected the folder written by `acp render`"
                         if problem == "no such file" else f"{manifest}: {problem}")
    candidates, problems = [], []
    for number, record, _ in read_records(manifest):
        where = f"{manifest}:{number}"
        if record is None:
            problems.append((where, "not a JSON object"))
            continue
        try:
            candidate = Candidate.model_validate(record)
        except ValidationError as error:
            problems.append((where, "; ".join(f"{f}: {r}" for f, r in error_problems(error))))
            continue
        try:  # before anything opens it: a path out of the folder is never read
            inside(renders, candidate.path, what="path")
        except UnsafePathError as error:
            problems.append((where, str(error)))
            continue
        candidates.append(candidate)
    return candidates, problems


def render_mismatch(plan: ScenePlan, candidate: Candidate) -> str | None:
    """Why ``candidate`` was not rendered from ``plan`` (its prompt and phrases are the plan's
    caption and descriptions, cut to the text encoder's limit), or ``None``."""
    from acp.render.gligen import global_prompt

    def fits(given: str, source: str) -> bool:  # given is source, or source cut at its end
        source = " ".join(source.split())
        return given == source or (bool(given) and source.startswith(given))

    if not fits(candidate.prompt, global_prompt(plan)):
        return f"its prompt {candidate.prompt[:60]!r} is not plan {plan.id}'s caption"
    if candidate.phrases and (len(candidate.phrases) != len(plan.objects) or not all(
            fits(phrase, obj.description)
            for phrase, obj in zip(candidate.phrases, plan.objects, strict=False))):
        return f"its box phrases are not the descriptions of plan {plan.id}'s objects"
    return None


def _check_plans_match(by_plan: dict[str, list[Candidate]], plans: dict[str, ScenePlan],
                       renders: Path, plans_path: Path, unmatched: int) -> None:
    """Refuse to score renders against plans they were not made from: the scores would be
    silently meaningless (boxes and captions of other scenes)."""
    mismatched = [(c, why) for plan_id, cs in by_plan.items() for c in cs
                  if (why := render_mismatch(plans[plan_id], c)) is not None]
    if mismatched:
        candidate, why = mismatched[0]
        raise InputError(
            f"{plans_path} does not match the renders in {renders}: {len(mismatched)} candidates were "
            f"rendered from other plans (first: {candidate.path}: {why}); pass the plans file "
            "given to `acp render`"
        )
    if unmatched and not by_plan:
        raise InputError(f"{plans_path} does not match the renders in {renders}: none of their "
                         f"{unmatched} candidates has its plan there; pass the plans file given to "
                         "`acp render`")


def _resume(output: Path, wanted: dict[str, set[int]], settings: dict[str, Any]) -> set[str]:
    """Plans of ``wanted`` already complete in ``output``; lines of its incomplete plans are
    removed from it (lines of other plans stay)."""
    from acp.jsonl import dumps, read_records, write_atomic

    if not output.exists():
        return set()
    records = [record for _, record, _ in read_records(output) if record is not None]
    for record in records[:1]:
        previous = (record.get("detail") or {}).get("settings")
        if previous != settings:
            changed = sorted(k for k in set(previous or {}) | set(settings)
                             if (previous or {}).get(k) != settings.get(k))
            raise OutputMismatchError(
                f"{output} was scored with other settings ({', '.join(changed) or 'settings'} differ); "
                "give another --output or delete it"
            )
    have: dict[str, set[int]] = {}
    for record in records:
        have.setdefault(str(record.get("plan_id")), set()).add(int(record.get("index", -1)))
    complete = {plan for plan, indices in wanted.items() if indices <= have.get(plan, set())}
    keep = [r for r in records if r.get("plan_id") in complete or r.get("plan_id") not in wanted]
    if len(keep) != len(records):
        write_atomic(output, "".join(dumps(r) + "\n" for r in keep))
    return complete


def score_renders(
    renders: Path,
    plans_path: Path,
    output: Path,
    *,
    image_scorer: ImageScorer,
    layout_scorer: LayoutScorer | None = None,
    judge: Judge | None = None,
    thresholds: Thresholds = Thresholds(),
    settings: dict[str, Any] | None = None,
    batch_size: int = 8,
    progress: bool = False,
    scorer: Scorer | None = None,
) -> RunSummary:
    """Score every candidate of a render folder into ``output`` (JSON Lines, resumable).

    A plan is scored as a whole, so its best flag is consistent; plans already complete in
    ``output`` are skipped, incomplete ones (a kill, an unreadable image) are scored again.
    Candidates whose plan or image cannot be read are reported in ``failures`` and not
    written. Raises ``OutputMismatchError`` if ``output`` was made with other ``settings``.
    """
    from tqdm import tqdm

    from acp.jsonl import JsonlWriter
    from acp.schema import read_plans

    settings = dict(settings or {})
    scorer = scorer or Scorer(image_scorer, layout_scorer, judge=judge, thresholds=thresholds,
                              settings=settings)
    summary = RunSummary()
    candidates, summary.failures = read_manifest(renders)
    if problem := file_problem(plans_path):
        raise InputError(f"{plans_path}: {problem}; expected the plans file (JSON Lines)")
    plans: dict[str, ScenePlan] = {}
    bad_plans: dict[str, str] = {}
    for number, plan, reason in read_plans(plans_path):
        if plan is not None:
            plans[plan.id] = plan
        else:
            bad_plans[f"{plans_path}:{number}"] = reason or "invalid"
    by_plan: dict[str, list[Candidate]] = {}
    for candidate in candidates:
        if candidate.plan_id not in plans:
            reason = f"plan {candidate.plan_id} not in {plans_path}"
            summary.failures.append((str(renders / candidate.path), reason))
            continue
        by_plan.setdefault(candidate.plan_id, []).append(candidate)
    _check_plans_match(by_plan, plans, renders, plans_path, unmatched=len(candidates) - sum(
        len(c) for c in by_plan.values()))
    summary.failures.extend(bad_plans.items())
    complete = _resume(output, {p: {c.index for c in cs} for p, cs in by_plan.items()}, settings)
    pending = [p for p in by_plan if p not in complete]
    summary.skipped = sum(len(by_plan[p]) for p in complete)

    bar = tqdm(total=sum(len(by_plan[p]) for p in pending), unit="candidate", disable=not progress)
    with JsonlWriter(output) as writer:
        batch: list[tuple[ScenePlan, Sequence[RenderedCandidate], LayoutScore | None]] = []
        size = 0
        for position, plan_id in enumerate(pending):
            readable = []
            for candidate in by_plan[plan_id]:
                image, reason = read_rgb(renders / candidate.path)
                if image is None:
                    summary.failures.append((str(renders / candidate.path), reason or "unreadable"))
                    bar.update(1)
                else:
                    readable.append(RenderedCandidate(candidate, image))
            if readable:
                batch.append((plans[plan_id], readable, None))
                size += len(readable)
            if batch and (size >= batch_size or position == len(pending) - 1):
                for scored in scorer.score_many(batch):
                    records = scored.candidates
                    for record in records:
                        writer.write(record)
                    summary.plans += 1
                    summary.scored += len(records)
                    summary.kept += sum(r.kept for r in records)
                    summary.best += sum(r.best for r in records)
                    bar.update(len(records))
                batch, size = [], 0
    bar.close()
    return summary

"""The stages of ``acp generate`` as functions over records (``acp.generate.records``), run
by either engine with the loaded ``Components``: ``lay`` (CLIS-L, before any GPU time),
``render`` (K candidates of a batch of plans in one loop), ``verify`` (the detector over the
batch's candidates in one pass, when there is a verifier; ``finish`` calls it first) and
``finish`` (CLIS-I in one pass, the best candidate, its masks and instances, everything
encoded as it will be written).
They load nothing, write nothing and change none of their inputs; ``times`` adds up the
seconds of each stage.

Errors: one that would hit every scene alike (disk, device memory, a dead GPU: ``stops_the_run``)
is raised and stops the run; any other is a scene's own and ends that plan as ``failed``, with
the reason. In a batch of several plans the culprit is found by running them one by one.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

from acp.errors import AcpError, first_line
from acp.generate.records import Finished, Laid, Rendered, StageTimes
from acp.render.base import RenderedCandidate
from acp.runfolder import KeptCandidate, KeptImage
from acp.schema import CandidateScore, PlanResult, ScenePlan

if TYPE_CHECKING:
    from PIL.Image import Image

    from acp.generate.components import Components, StageSpec
    from acp.score.candidates import PlanScores


def stops_the_run(error: Exception) -> bool:
    """Errors that would hit every scene alike stop the run instead of being recorded against
    one scene; the scene stays unfinished for the rerun."""
    if isinstance(error, OSError | AcpError):
        return True
    name = type(error).__name__
    return name in ("OutOfMemoryError", "AcceleratorError") or "CUDA error" in str(error)


def failed(result: PlanResult, error: Exception) -> PlanResult:
    """``result`` recording a scene's own error."""
    first = first_line(error, limit=500)
    return result.model_copy(update={
        "status": "failed", "reason": f"{type(error).__name__}: {first}"[:500],
        "reason_kind": f"error: {type(error).__name__}"})


# -- lay --------------------------------------------------------------------------------------


def lay(plan: ScenePlan, components: Components, times: StageTimes) -> Laid | Finished:
    """CLIS-L, once per plan: a plan under the threshold ends here, before any GPU time."""
    from acp.score.candidates import layout_fields

    scorer = components.scorer
    with times.timed("layout"):
        layout = scorer.layout(plan)
    result = PlanResult(plan_id=plan.id, status="dropped",
                        dropped_categories=[o.category for o in plan.objects],
                        **layout_fields(layout))  # a reference-free score is not a CLIS-L
    if not scorer.layout_passes(layout):
        assert layout is not None
        return Finished(result.model_copy(update={
            "reason": f"CLIS-L {layout.score:.1f} < {scorer.thresholds.min_clis_l:g}",
            "reason_kind": "layout under the CLIS-L threshold"}))
    return Laid(plan, layout, result)


# -- render -----------------------------------------------------------------------------------


def render(batch: Sequence[Laid], components: Components, spec: StageSpec, times: StageTimes
           ) -> list[Rendered | Finished]:
    """The candidates of every plan of ``batch`` in one denoising loop, in order."""
    try:
        with times.timed("render"):
            rendered = components.renderer.render([laid.plan for laid in batch], spec.candidates)
    except Exception as error:
        if stops_the_run(error):
            raise
        if len(batch) == 1:
            return [Finished(failed(batch[0].result, error))]
        return [out for laid in batch for out in render([laid], components, spec, times)]
    return [_take(laid, candidates) for laid, candidates in zip(batch, rendered, strict=True)]


def _take(laid: Laid, rendered: list[RenderedCandidate]) -> Rendered | Finished:
    """Flagged candidates (black images) are dropped unscored, not ranked as bad ones."""
    kept = tuple(r for r in rendered if not r.flagged)
    flagged = len(rendered) - len(kept)
    if flagged and not kept:
        return Finished(laid.result.model_copy(update={
            "flagged": flagged, "reason": "every candidate was flagged by the safety checker",
            "reason_kind": "flagged by the safety checker"}))
    return Rendered(laid, kept, flagged)


# -- verify -----------------------------------------------------------------------------------


def verify(batch: Sequence[Rendered], components: Components, times: StageTimes) -> list[Rendered]:
    """The detector's verdict on every candidate of ``batch`` (one detection pass), in each
    ``Rendered.checks``; the batch as it is without a verifier, or once verified."""
    verifier = components.verifier
    todo = [r for r in batch if r.checks is None]
    if verifier is None or not todo:
        return list(batch)
    with times.timed("verify"):
        found = iter(verifier.check_plans([(r.laid.plan, c.picture) for r in todo for c in r.candidates]))
    return [r if r.checks is not None else replace(r, checks=tuple(next(found) for _ in r.candidates))
            for r in batch]


# -- finish -----------------------------------------------------------------------------------


def finish(batch: Sequence[Rendered], components: Components, spec: StageSpec, times: StageTimes
           ) -> list[Finished]:
    """Verify (``verify``) and score the plans of ``batch`` in one pass each and make each one's
    image and instances, encoded as the run folder stores them."""
    if not batch:
        return []
    scorer = components.scorer
    policy = components.verifier.settings if components.verifier is not None else None
    try:
        batch = _on_device(batch, components)
        batch = verify(batch, components, times)
        with times.timed("score"):
            results = scorer.score_many([(r.laid.plan, r.candidates, r.laid.layout) for r in batch],
                                        checks=[r.checks for r in batch], verify=policy)
    except Exception as error:
        if stops_the_run(error) or len(batch) == 1:
            if stops_the_run(error):
                raise
            return [_failed(batch[0], spec, error, times)]
        # A scene's own error, but whose? Score them one by one.
        return [out for rendered in batch for out in finish([rendered], components, spec, times)]
    return [_keep(rendered, scores, components, spec, times)
            for rendered, scores in zip(batch, results, strict=True)]


def _on_device(batch: Sequence[Rendered], components: Components) -> Sequence[Rendered]:
    """With a verifier, CLIP and the detector both read every candidate: one the renderer left
    only on the host (a renderer without a device tensor) is copied to the device once, for
    both, not once per model."""
    if components.verifier is None or all(c.pixels is not None for r in batch for c in r.candidates):
        return batch
    from acp.score.pixels import to_device

    device = components.scorer.image_scorer.device
    copied = []
    for rendered in batch:
        pixels = to_device([c.image if c.pixels is None else c.pixels for c in rendered.candidates], device)
        copied.append(replace(rendered, candidates=tuple(
            c._replace(pixels=p) for c, p in zip(rendered.candidates, pixels, strict=True))))
    return copied


def _failed(rendered: Rendered, spec: StageSpec, error: Exception, times: StageTimes) -> Finished:
    """A plan whose scoring or export failed on its own: its candidates are still kept."""
    result = rendered.laid.result.model_copy(update={"flagged": rendered.flagged})
    return Finished(failed(result, error), candidates=_candidates(rendered, spec, times))


def _candidates(rendered: Rendered, spec: StageSpec, times: StageTimes) -> tuple[KeptCandidate, ...]:
    """Every candidate as the PNG file written for it, with ``--keep-candidates``."""
    if not spec.keep_candidates:
        return ()
    with times.timed("export"):
        return tuple(KeptCandidate(r.candidate, _png(r.image)) for r in rendered.candidates)


def _verified(score: CandidateScore) -> dict[str, object]:
    """The ledger's verification fields of the kept candidate (none without a verifier)."""
    if score.verification is None and not any(o.verification for o in score.objects):
        return {}
    verified = ("verified", "refined")
    return {"verification": score.verification,
            "verified_categories": [o.category for o in score.objects if o.verification in verified],
            "missing_categories": [o.category for o in score.objects if o.verification == "missing"],
            "unplanned_categories": [d.category for d in score.detections if d.role == "unplanned"]}


def _dropped_kind(records: Sequence[CandidateScore], verified: bool) -> str:
    """Why no candidate of a plan was kept, for the summary's count per reason: with a
    verifier, a candidate with an instance kept was dropped for an object no label covers,
    and a candidate without one failed CLIP or the detector."""
    if not verified:
        return "no candidate passes the CLIS-I threshold"
    if any(o.kept for record in records for o in record.objects):
        return "unlabeled objects the detector is sure of"
    return "no instance that CLIS-I and the detector both accept"


def _png(image: Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _keep(rendered: Rendered, scores: PlanScores, components: Components, spec: StageSpec,
          times: StageTimes) -> Finished:
    """The best candidate (if any) with its masks becomes the plan's image and instances."""
    try:
        return _export(rendered, scores, components, spec, times)
    except Exception as error:
        if stops_the_run(error):
            raise
        return _failed(rendered, spec, error, times)


def _export(rendered: Rendered, scores: PlanScores, components: Components, spec: StageSpec,
            times: StageTimes) -> Finished:
    from acp.boxes import xywh_to_xyxy
    from acp.export import ImageProvenance, encode_image, plan_instances
    from acp.export.coco import export_boxes

    plan = rendered.laid.plan
    records = scores.candidates
    best: CandidateScore | None = scores.best
    result = rendered.laid.result.model_copy(update={"flagged": rendered.flagged})
    candidates = _candidates(rendered, spec, times)
    if best is None:
        result = result.model_copy(update={
            "reason": records[0].reason if records else "no candidate",
            "reason_kind": _dropped_kind(records, verified=components.verifier is not None),
            "clis_i": max((s.clis_i for s in records), default=None)})
        return Finished(result, records, None, candidates)
    chosen = next(r for r in rendered.candidates if r.candidate.index == best.index)
    policy = components.verifier.settings.unplanned if components.verifier is not None else None
    unlabeled = policy if policy in ("ignore", "pseudo-label") else None
    masks = None
    boxes = None
    if components.segmenter is not None:
        with times.timed("segment"):
            boxes = export_boxes(plan, best, chosen.image.size, unlabeled)  # type: ignore[arg-type]
            objects = [b for b in boxes if not b.crowd]
            found = components.segmenter.segment(chosen.image, xywh_to_xyxy([b.bbox for b in objects]))
            masks = {}
            unmasked: set[int | str] = set()
            problems = list(result.mask_problems)
            for box, mask in zip(objects, found, strict=True):
                what = (f"object {box.key} ({box.category})" if isinstance(box.key, int)
                        else f"{box.key} ({box.category}, {unlabeled})")
                if mask.problem:  # no usable mask: the instance is not exported, and said so
                    unmasked.add(box.key)
                    problems.append(f"{what}: {mask.problem}")
                else:
                    masks[box.key] = mask
                    if mask.warning:  # kept, but implausible for its box: said so
                        problems.append(f"{what}: {mask.warning}")
            result = result.model_copy(update={"mask_problems": problems})
            # The scores stay what the scorer said (as `acp score candidates` writes them); what
            # is exported is a new score without the unmasked instances. A pseudo-label without
            # a mask becomes an ignore region (its box): still no object left as background.
            best = best.model_copy(update={"objects": [
                o.model_copy(update={"kept": False}) if o.id in unmasked else o for o in best.objects]})
            ignored = {"verification": "ignore"}
            boxes = [replace(b, crowd=True, provenance=b.provenance.model_copy(update=ignored))
                     if b.key in unmasked and isinstance(b.key, str) else b
                     for b in boxes if not (b.key in unmasked and isinstance(b.key, int))]
    if not any(s.kept for s in best.objects) and best.objects:
        result = result.model_copy(update={"reason": "every mask came out empty",
                                           "reason_kind": "no usable mask"})
        return Finished(result, records, None, candidates)
    instances = plan_instances(plan, spec.categories, score=best, masks=masks, size=chosen.image.size,
                               unlabeled=unlabeled, boxes=boxes)  # type: ignore[arg-type]
    provenance = ImageProvenance.from_records(
        plan, chosen.candidate, best, sam_model=spec.masks.sam_model if spec.masks is not None else None)
    with times.timed("export"):
        image = encode_image(chosen.image, spec.image_format)
    result = result.model_copy(update={
        "status": "kept", "candidate": best.index, "clis": best.clis, "clis_i": best.clis_i,
        "kept_categories": [o.category for o in best.objects if o.kept],
        "dropped_categories": [o.category for o in best.objects if not o.kept],
        **_verified(best)})
    return Finished(result, records, KeptImage(image, tuple(instances), provenance), candidates)

"""acp from Python: the commands as functions, with the command line's options as keyword
arguments (same names, same defaults) and the same files written, the HTML report included.

```python
from acp.api import generate

summary = generate(["dog", "frisbee"], "out/dataset", scenes=100, masks=True)
print(summary.line())
```

The functions: ``generate``, ``plan``, ``score_dataset``, ``export_yolo``,
``export_coco_split``, ``export_merge`` (and ``generate_config``, ``concept_input``).
Errors are ``acp.errors.AcpError`` subclasses with a one-line message (``InputError`` for bad
input). The lower-level pieces stay available: ``acp.generate.GenerateConfig`` and
``acp.generate.generate`` (a config and an engine), ``acp.generate.components`` (the
planner, renderer and scorers), ``acp.export.CocoWriter``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Union

from acp import defaults
from acp.concepts import ConceptInput
from acp.errors import InputError

if TYPE_CHECKING:
    from acp.export.merge import MergeSummary
    from acp.export.split import SplitSummary
    from acp.export.yolo import YoloSummary
    from acp.generate.config import GenerateConfig
    from acp.generate.engine import Engine
    from acp.generate.run import GenerateSummary
    from acp.plan.run import PlanSummary
    from acp.score.dataset import DatasetReport

# A concept file, a list of concepts, {concept: instances wanted}, or a parsed input.
Concepts = Union[str, Path, Sequence[str], Mapping[str, int], ConceptInput]  # noqa: UP007


def concept_input(concepts: Concepts) -> ConceptInput:
    """Any form of concepts as the ``ConceptInput`` the planners take: a path to a concept file
    (``.txt``, ``.json``, ``.yaml``, ``.jsonl``), a list of names, or ``{name: quota}``."""
    from acp.concepts import load_concepts, parse_structured

    if isinstance(concepts, ConceptInput):
        return concepts
    if isinstance(concepts, str | Path):
        return load_concepts(Path(concepts))
    if isinstance(concepts, Mapping):
        return parse_structured(dict(concepts), "concepts")
    return parse_structured(list(concepts), "concepts")


def _size(size: int | str | tuple[int, int]) -> tuple[int, int]:
    if isinstance(size, tuple):
        return size
    if isinstance(size, int):
        size = f"{size}x{size}"
    from acp.generate.config import parse_size

    return parse_size(str(size))


def _objects(objects: tuple[int, int] | str) -> tuple[int, int]:
    from acp.concepts import parse_object_range

    return objects if isinstance(objects, tuple) else parse_object_range(objects)


def generate_config(
    concepts: Concepts, *, scenes: int | None = None,
    objects: tuple[int, int] | str = defaults.OBJECTS_PER_SCENE, seed: int = 0,
    size: int | str | tuple[int, int] = defaults.IMAGE_SIZE, planner: str | None = None,
    llm_base_url: str | None = None, llm_model: str = defaults.LLM_MODEL, api_key: str | None = None,
    concurrency: int = defaults.LLM_CONCURRENCY, max_reasks: int = defaults.LLM_MAX_REASKS,
    llm_timeout: float = defaults.LLM_TIMEOUT, max_overlap: float = defaults.MAX_OVERLAP,
    on_overlap: str = "reject", model: str = defaults.GLIGEN_MODEL, candidates: int = defaults.CANDIDATES,
    steps: int = defaults.STEPS, guidance: float = defaults.GUIDANCE, beta: float = defaults.BETA,
    negative_prompt: str = "", safety_checker: bool = defaults.SAFETY_CHECKER,
    clip_model: str = defaults.CLIP_MODEL, bank: str | Path | None = None, embed_model: str | None = None,
    clis_l_method: str = defaults.CLIS_L_METHOD, judge_model: str | None = None,
    judge_base_url: str | None = None, judge_margin: float = defaults.JUDGE_MARGIN,
    judge_max_calls: int = defaults.JUDGE_MAX_CALLS, min_clis_l: float | None = defaults.MIN_CLIS_L,
    min_clis_i: float | None = defaults.MIN_CLIS_I, masks: bool = False, sam_model: str = defaults.SAM_MODEL,
    categories: str | Path | None = None, keep_candidates: bool = False,
    image_format: str = defaults.IMAGE_FORMAT, verify: bool = False, detector_model: str | None = None,
    detection_threshold: float | None = None, unplanned_threshold: float | None = None,
    verify_iou: float = defaults.VERIFY_IOU, unplanned: str = defaults.UNPLANNED, refine_boxes: bool = False,
) -> GenerateConfig:
    """The ``GenerateConfig`` of ``acp generate`` with these options (``planner`` ``None``: the
    LLM when ``api_key`` or ``llm_base_url`` is given, else the offline planner; ``verify`` or a
    ``detector_model``: a detector checks every box, ``acp.score.verify``)."""
    from acp.generate.config import ExportSettings, GenerateConfig
    from acp.llm import ChatSettings
    from acp.render.gligen import RenderSettings
    from acp.schema import LayoutRules
    from acp.score.candidates import ScoreSettings
    from acp.score.judge import JudgeSettings
    from acp.score.verify import verify_settings
    from acp.segment import MaskSettings

    api_key = api_key or None
    planner = planner or ("openai" if api_key or llm_base_url else "heuristic")
    if planner not in ("openai", "heuristic"):
        raise InputError(f"--planner: expected openai or heuristic, got {planner!r}")
    if planner == "openai" and not (api_key or llm_base_url):
        raise InputError("--planner openai needs OPENAI_API_KEY or --llm-base-url")
    if judge_model is None and judge_base_url:
        raise InputError("--judge-base-url needs --judge-model")
    if judge_model is not None and not (api_key or judge_base_url):
        raise InputError("--judge-model needs OPENAI_API_KEY or --judge-base-url")
    if embed_model and bank is None:
        raise InputError("--embed-model needs --bank (it matches names against the bank's categories)")
    return GenerateConfig(
        concepts=concept_input(concepts), scenes=scenes, objects=_objects(objects), seed=seed,
        size=_size(size),
        llm=ChatSettings(model=llm_model, base_url=llm_base_url, api_key=api_key, timeout=llm_timeout,
                         concurrency=concurrency) if planner == "openai" else None,
        max_reasks=max_reasks,
        rules=LayoutRules(max_overlap=max_overlap, on_overlap=on_overlap),  # type: ignore[arg-type]
        render=RenderSettings(model=model, steps=steps, guidance=guidance, beta=beta,
                              negative_prompt=negative_prompt, safety_checker=safety_checker),
        candidates=candidates,
        score=ScoreSettings(
            clip_model=clip_model, bank=Path(bank) if bank is not None else None, embed_model=embed_model,
            clis_l_method=clis_l_method,
            judge=JudgeSettings(model=judge_model, base_url=judge_base_url, margin=judge_margin,
                                max_calls=judge_max_calls, api_key=api_key) if judge_model else None,
            min_clis_l=min_clis_l, min_clis_i=min_clis_i,
            verify=verify_settings(verify, detector_model, detection_threshold=detection_threshold,
                                   unplanned_threshold=unplanned_threshold, verify_iou=verify_iou,
                                   unplanned=unplanned, refine_boxes=refine_boxes)),
        masks=MaskSettings(sam_model) if masks else None,
        export=ExportSettings(categories=Path(categories) if categories is not None else None,
                              keep_candidates=keep_candidates, image_format=image_format),
    )


def generate(concepts: Concepts, output: str | Path, *, device: str = "auto", dtype: str = "auto",
             batch_plans: int = defaults.BATCH_PLANS, compile: bool = False, engine: Engine | None = None,
             force: bool = False, progress: bool = True, report: bool = True,
             **options: object) -> GenerateSummary:
    """``acp generate``: plan, render, score, keep the best and export a COCO dataset into
    ``output`` (resumable: call it again to finish an interrupted run). ``options`` are
    ``generate_config``'s. ``engine`` replaces the local engine on ``device`` (e.g.
    ``acp.generate.ray.RayEngine``). ``report`` writes ``output/report.html`` as the command
    line does, when the run made something or there is none yet."""
    from acp.generate import LocalEngine
    from acp.generate import generate as run
    from acp.report import write_report
    from acp.runfolder import REPORT

    config = generate_config(concepts, **options)  # type: ignore[arg-type]
    engine = engine if engine is not None else LocalEngine(device, batch_plans=batch_plans, compile=compile,
                                                           dtype=dtype, progress=progress)
    summary = run(config, Path(output), engine, force=force, progress=progress)
    if report and (summary.this_run or not (Path(output) / REPORT).exists()):
        write_report(Path(output))
    return summary


def plan(concepts: Concepts, output: str | Path, *, scenes: int | None = None,
         objects: tuple[int, int] | str = defaults.OBJECTS_PER_SCENE, seed: int = 0,
         size: int | str | tuple[int, int] = defaults.IMAGE_SIZE, planner: str | None = None,
         llm_base_url: str | None = None, llm_model: str = defaults.LLM_MODEL, api_key: str | None = None,
         concurrency: int = defaults.LLM_CONCURRENCY, max_reasks: int = defaults.LLM_MAX_REASKS,
         llm_timeout: float = defaults.LLM_TIMEOUT, max_overlap: float = defaults.MAX_OVERLAP,
         on_overlap: str = "reject", bank: str | Path | None = None, progress: bool = True) -> PlanSummary:
    """``acp plan``: scene plans (caption, objects, boxes, relations) into ``output`` (JSON
    Lines, resumable), with the options of ``generate_config`` that planning takes; ``bank``
    grounds the layouts in a bank's real ones (``components.planner``)."""
    from acp.concepts import scene_concepts, scene_total
    from acp.generate import components
    from acp.plan.run import make_requests, run_planner

    config = generate_config(
        concepts, scenes=scenes, objects=objects, seed=seed, size=size, planner=planner,
        llm_base_url=llm_base_url, llm_model=llm_model, api_key=api_key, concurrency=concurrency,
        max_reasks=max_reasks, llm_timeout=llm_timeout, max_overlap=max_overlap, on_overlap=on_overlap)
    source = config.concepts
    sets = scene_concepts(source, scenes, config.objects, seed)
    planner_ = components.planner(config.plan_settings, config.llm, max_reasks=config.max_reasks,
                                  bank=Path(bank) if bank is not None else None)
    requests = make_requests(sets, seed, *config.size, companions=source.companions)
    return run_planner(planner_, requests, Path(output), total=scene_total(source, scenes, sets),
                       progress=progress)


def score_dataset(annotations: str | Path, images: str | Path, output: str | Path, *,
                  keep_above: float | None = None, removed_boxes: str = "drop-image",
                  bank: str | Path | None = None, clis_l_method: str = defaults.CLIS_L_METHOD,
                  clip_model: str = defaults.CLIP_MODEL, device: str = "auto", dtype: str = "auto",
                  batch_size: int = 8, verify: bool = False, detector_model: str | None = None,
                  detection_threshold: float | None = None, unplanned_threshold: float | None = None,
                  verify_iou: float = defaults.VERIFY_IOU, progress: bool = True,
                  report: bool = True) -> DatasetReport:
    """``acp score dataset``: CLIS of every image and box of a COCO file into the report
    folder ``output`` (with ``keep_above``, a filtered copy in ``output/filtered/``), and
    ``output/report.html``; with ``verify`` (or a ``detector_model``) a zero-shot detector
    checks every box and measures label fidelity, as ``--verify`` does. Items that could not
    be scored are in the result's ``failed``."""
    from acp.device import resolve_device, resolve_dtype
    from acp.generate import components
    from acp.pretrained import check_models
    from acp.report import write_report
    from acp.score.candidates import ScoreSettings
    from acp.score.dataset import check_paths
    from acp.score.dataset import score_dataset as run
    from acp.score.verify import verify_settings

    annotations, images, output = Path(annotations), Path(images), Path(output)
    check_paths(annotations, images, output)  # before any model, as on the command line
    device = resolve_device(device)
    resolve_dtype(dtype, device)
    checks = verify_settings(verify, detector_model, detection_threshold=detection_threshold,
                             unplanned_threshold=unplanned_threshold, verify_iou=verify_iou)
    check_models([("--clip-model", clip_model),
                  *([("--detector-model", checks.detector_model)] if checks else [])])
    settings = ScoreSettings(clip_model=clip_model, bank=Path(bank) if bank is not None else None,
                             clis_l_method=clis_l_method)
    layout = components.layout_scorer(settings, progress=progress) if bank is not None else None
    result = run(annotations, images, output,
                 image_scorer=components.image_scorer(clip_model, device, dtype=dtype, progress=progress),
                 layout_scorer=layout, keep_above=keep_above, removed_boxes=removed_boxes,  # type: ignore[arg-type]
                 batch_size=batch_size, progress=progress,
                 verifier=components.verifier(checks, device, dtype=dtype, progress=progress))
    if report:
        write_report(output)
    return result


def export_yolo(annotations: str | Path, output: str | Path, *, images: str | Path | None = None,
                val_fraction: float = defaults.VAL_FRACTION, test_fraction: float = defaults.TEST_FRACTION,
                task: str = "detect", link: str = "hardlink", progress: bool = True) -> YoloSummary:
    """``acp export yolo``: ultralytics' layout (images/ and labels/ per split, data.yaml) in
    ``output``; ``link`` is hardlink, copy or symlink."""
    from acp.export.split import Fractions
    from acp.export.yolo import export_yolo as run

    return run(Path(annotations), Path(output), fractions=Fractions(val_fraction, test_fraction),
               images_dir=Path(images) if images is not None else None, task=task,  # type: ignore[arg-type]
               link=link, progress=progress)  # type: ignore[arg-type]


def export_coco_split(annotations: str | Path, output: str | Path | None = None, *,
                      images: str | Path | None = None, val_fraction: float = defaults.VAL_FRACTION,
                      test_fraction: float = defaults.TEST_FRACTION) -> SplitSummary:
    """``acp export coco-split``: train.json, val.json (and test.json) in ``output`` (the
    annotations' folder by default)."""
    from acp.export.split import Fractions, split_coco

    annotations = Path(annotations)
    return split_coco(annotations, Path(output) if output is not None else annotations.parent,
                      fractions=Fractions(val_fraction, test_fraction),
                      images_dir=Path(images) if images is not None else None)


def export_merge(synthetic: str | Path, real: str | Path, output: str | Path, *,
                 synthetic_images: str | Path | None = None, real_images: str | Path | None = None,
                 overwrite: bool = False, allow_outside_paths: bool = False) -> MergeSummary:
    """``acp export merge``: SYNTHETIC merged into REAL as ``output`` (categories unified by
    name, ids made unique, image paths valid from ``output``'s folder)."""
    from acp.export.merge import merge_coco

    return merge_coco(Path(synthetic), Path(real), Path(output),
                      synthetic_images=Path(synthetic_images) if synthetic_images is not None else None,
                      real_images=Path(real_images) if real_images is not None else None,
                      overwrite=overwrite, allow_outside_paths=allow_outside_paths)

"""``acp generate``: concepts to a COCO dataset in one resumable command."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from acp import defaults
from acp.cli._common import ApiKeyOption, DeviceOption, DtypeOption, handle_errors, write_report_after
from acp.cli.app import app
from acp.cli.plan import (
    OBJECTS_DEFAULT,
    BalanceOption,
    BaseUrlOption,
    CategoriesOnlyOption,
    CompanionCapOption,
    ConceptsOption,
    ConcurrencyOption,
    FrequencyOption,
    InputArgument,
    LLMModelOption,
    MaxOverlapOption,
    MaxPerCategoryOption,
    MaxReasksOption,
    ObjectsOption,
    OnOverlapOption,
    OverlapAction,
    PassRateFromOption,
    PassRateOption,
    PlannerOption,
    ProgressOption,
    ScenesOption,
    SeedOption,
    SizeOption,
    TailBelowOption,
    TargetOption,
    TimeoutOption,
    choose_planner,
    read_input,
)
from acp.cli.render import (
    BatchPlansOption,
    BetaOption,
    CandidatesOption,
    CompileOption,
    GuidanceOption,
    ModelOption,
    NegativePromptOption,
    SafetyCheckerOption,
    StepsOption,
)
from acp.cli.score import (
    BankOption,
    ClipOption,
    ClisLMethodOption,
    DetectionThresholdOption,
    DetectorModelOption,
    EmbedOption,
    JudgeBaseUrlOption,
    JudgeMarginOption,
    JudgeMaxCallsOption,
    JudgeModelOption,
    MinClisIOption,
    MinClisLOption,
    UnplannedThresholdOption,
    VerifyIouOption,
    VerifyOption,
    check_clis_l_method,
    judge_settings,
)


@app.command()
@handle_errors
def generate(
    input: InputArgument = None,
    output: Annotated[Path, typer.Option("--output", "-o", help="Dataset folder.")] = Path("out"),
    concepts: ConceptsOption = None,
    scenes: ScenesOption = None,
    objects_per_scene: ObjectsOption = OBJECTS_DEFAULT,
    seed: SeedOption = 0,
    size: SizeOption = str(defaults.IMAGE_SIZE),
    planner: PlannerOption = None,
    llm_base_url: BaseUrlOption = None,
    llm_model: LLMModelOption = defaults.LLM_MODEL,
    concurrency: ConcurrencyOption = defaults.LLM_CONCURRENCY,
    max_reasks: MaxReasksOption = defaults.LLM_MAX_REASKS,
    llm_timeout: TimeoutOption = defaults.LLM_TIMEOUT,
    max_overlap: MaxOverlapOption = defaults.MAX_OVERLAP,
    on_overlap: OnOverlapOption = OverlapAction.reject,
    api_key: ApiKeyOption = None,
    model: ModelOption = defaults.GLIGEN_MODEL,
    candidates: CandidatesOption = defaults.CANDIDATES,
    steps: StepsOption = defaults.STEPS,
    guidance: GuidanceOption = defaults.GUIDANCE,
    beta: BetaOption = defaults.BETA,
    negative_prompt: NegativePromptOption = "",
    safety_checker: SafetyCheckerOption = defaults.SAFETY_CHECKER,
    batch_plans: BatchPlansOption = defaults.BATCH_PLANS,
    compile: CompileOption = False,
    device: DeviceOption = "auto",
    dtype: DtypeOption = "auto",
    executor: Annotated[
        str, typer.Option(help='local (this process) or ray (Ray workers; pip install "acp[ray]").')
    ] = "local",
    ray_address: Annotated[
        str,
        typer.Option(help="With --executor ray: auto (a running cluster if reachable, else a Ray "
                     "started here), local, or a cluster address."),
    ] = "auto",
    workers: Annotated[
        int | None,
        typer.Option(min=1, help="With --executor ray: workers [default: one per GPU Ray sees, or 1]."),
    ] = None,
    gpus_per_worker: Annotated[
        float | None,
        typer.Option(min=0.0, help="With --executor ray: GPUs per worker [default: 1 with GPUs, else 0]."),
    ] = None,
    clip_model: ClipOption = defaults.CLIP_MODEL,
    bank: BankOption = None,
    embed_model: EmbedOption = None,
    clis_l_method: ClisLMethodOption = defaults.CLIS_L_METHOD,
    judge_model: JudgeModelOption = None,
    judge_base_url: JudgeBaseUrlOption = None,
    judge_margin: JudgeMarginOption = defaults.JUDGE_MARGIN,
    judge_max_calls: JudgeMaxCallsOption = defaults.JUDGE_MAX_CALLS,
    min_clis_l: MinClisLOption = defaults.MIN_CLIS_L,
    min_clis_i: MinClisIOption = defaults.MIN_CLIS_I,
    verify: VerifyOption = False,
    detector_model: DetectorModelOption = None,
    detection_threshold: DetectionThresholdOption = None,
    unplanned_threshold: UnplannedThresholdOption = None,
    verify_iou: VerifyIouOption = defaults.VERIFY_IOU,
    unplanned: Annotated[str, typer.Option(
        help="With --verify, an object the detector is sure of that no label covers: drop (its "
        "candidate), ignore (an iscrowd 1 region) or pseudo-label (a label with the detector's box).",
    )] = defaults.UNPLANNED,
    refine_boxes: Annotated[bool, typer.Option(
        "--refine-boxes", help="With --verify, export a verified box as its detection's box.")] = False,
    masks: Annotated[bool, typer.Option("--masks", help="Add SAM instance masks (COCO RLE).")] = False,
    sam_model: Annotated[str, typer.Option(help="SAM hub id or folder, with --masks.")] = (
        defaults.SAM_MODEL
    ),
    categories: Annotated[
        Path | None,
        typer.Option(help="COCO or LVIS file whose category ids the output uses (names are matched)."),
    ] = None,
    keep_candidates: Annotated[
        bool, typer.Option("--keep-candidates", help="Also keep every candidate under OUT/candidates.")
    ] = False,
    image_format: Annotated[str, typer.Option(help="jpeg or png.")] = defaults.IMAGE_FORMAT,
    force: Annotated[
        bool, typer.Option("--force", help="Start over when OUT holds a run with other settings.")
    ] = False,
    progress: ProgressOption = True,
    balance: BalanceOption = None,
    target: TargetOption = None,
    pass_rate: PassRateOption = 1.0,
    pass_rate_from: PassRateFromOption = None,
    tail_below: TailBelowOption = None,
    frequency: FrequencyOption = None,
    categories_only: CategoriesOnlyOption = None,
    max_per_category: MaxPerCategoryOption = None,
    companion_cap: CompanionCapOption = defaults.BALANCE_COMPANION_CAP,
) -> None:
    """Plan, render, score, keep the best, segment and export a COCO dataset; with --balance
    REAL, the dataset that tops up REAL's long tail (report in OUT/balance.json and .png).

    Rerun the same command to resume after an interruption. The API key is read from
    OPENAI_API_KEY and never printed or written.
    """
    from acp.api import generate_config
    from acp.cli.balance import BalanceArgs, balance_plan, report_after_run
    from acp.concepts import parse_object_range
    from acp.errors import InputError
    from acp.generate import generate
    from acp.generate.config import IMAGE_FORMATS, parse_size
    from acp.generate.engine import Engine
    from acp.runfolder import REPORT

    if executor == "ray":
        from acp.generate.ray import import_ray

        import_ray()  # without Ray: the install hint, before anything else is said or done
    check_clis_l_method(clis_l_method)
    wanted = BalanceArgs(balance, target, pass_rate, pass_rate_from, tail_below, frequency,
                         categories_only, max_per_category, companion_cap)
    topup = balance_plan(wanted, input=input, concepts=concepts, scenes=scenes,
                         objects=parse_object_range(objects_per_scene), seed=seed)
    if topup is not None and not topup.scenes:
        return
    if topup is not None and categories is not None and categories.resolve() != balance.resolve():  # type: ignore[union-attr]
        raise InputError("--categories cannot differ from --balance REAL: the output takes REAL's categories")
    source = topup.concept_input() if topup is not None else read_input(input, concepts)
    if topup is not None:
        categories = balance
    if image_format not in IMAGE_FORMATS:
        raise InputError(f"--image-format: expected jpeg or png, got {image_format!r}")
    api_key = api_key or None
    judge_settings(judge_model, judge_base_url, judge_margin, judge_max_calls, api_key)  # exit 2 if misused
    config = generate_config(
        source, scenes=scenes, objects=parse_object_range(objects_per_scene), seed=seed,
        size=parse_size(size),
        planner=choose_planner(planner, api_key, llm_base_url), llm_base_url=llm_base_url,
        llm_model=llm_model, api_key=api_key, concurrency=concurrency, max_reasks=max_reasks,
        llm_timeout=llm_timeout, max_overlap=max_overlap, on_overlap=on_overlap.value, model=model,
        candidates=candidates, steps=steps, guidance=guidance, beta=beta, negative_prompt=negative_prompt,
        safety_checker=safety_checker, clip_model=clip_model, bank=bank, embed_model=embed_model,
        clis_l_method=clis_l_method, judge_model=judge_model, judge_base_url=judge_base_url,
        judge_margin=judge_margin, judge_max_calls=judge_max_calls, min_clis_l=min_clis_l,
        min_clis_i=min_clis_i, masks=masks, sam_model=sam_model, categories=categories,
        keep_candidates=keep_candidates, image_format=image_format, verify=verify,
        detector_model=detector_model, detection_threshold=detection_threshold,
        unplanned_threshold=unplanned_threshold, verify_iou=verify_iou, unplanned=unplanned,
        refine_boxes=refine_boxes)
    engine: Engine
    if executor == "ray":
        from acp.generate.ray import RayEngine, RayOptions

        engine = RayEngine(RayOptions(address=ray_address, workers=workers, gpus_per_worker=gpus_per_worker),
                           device, batch_plans=batch_plans, compile=compile, dtype=dtype, progress=progress)
    elif executor != "local":
        raise InputError(f"--executor: expected local or ray, got {executor!r}")
    elif workers is not None or gpus_per_worker is not None or ray_address != "auto":
        raise InputError("--workers, --gpus-per-worker and --ray-address need --executor ray")
    else:
        from acp.generate import LocalEngine

        engine = LocalEngine(device, batch_plans=batch_plans, compile=compile, dtype=dtype, progress=progress)
    summary = generate(config, output, engine, force=force, progress=progress)
    print(f"{output}: {summary.line()}")
    if summary.judge is not None:
        print(f"{output}: {summary.judge.line()}")
    print(f"{output / 'annotations.json'}: {summary.annotations} annotations; "
          f"summary in {output / 'summary.json'}")
    if topup is not None:
        from acp.runfolder import plan_record_path

        topup.write(plan_record_path(output / "plans.jsonl"))
        report_after_run(topup, output / "annotations.json", output)
    if summary.this_run or not (output / REPORT).exists():  # a finished dataset: nothing new to show
        write_report_after(output)


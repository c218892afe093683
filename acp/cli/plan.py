"""``acp plan`` and ``acp validate``."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from acp import defaults
from acp.cli._common import ApiKeyOption, fail, handle_errors, notice
from acp.cli.app import app

if TYPE_CHECKING:
    from acp.concepts import ConceptInput

MAX_PROBLEM_LINES = 20  # `acp validate` on a binary or wrong file should not scroll for pages


class PlannerName(str, Enum):
    openai = "openai"
    heuristic = "heuristic"


class OverlapAction(str, Enum):
    reject = "reject"
    flag = "flag"


# Options shared with `acp generate` (same names, same defaults).
InputArgument = Annotated[
    Path | None,
    typer.Argument(help="Concept list: .txt (one per line), .json/.yaml list or "
                   "{concept: quota}, or .jsonl of explicit scenes."),
]
ConceptsOption = Annotated[
    str | None, typer.Option(help='Inline concepts instead of INPUT, e.g. "dog,frisbee".')
]
ScenesOption = Annotated[
    int | None, typer.Option(help="Scenes to sample from a vocabulary [default: one per concept].")
]
ObjectsOption = Annotated[str, typer.Option(help="Concepts per sampled scene: N or MIN-MAX.")]
OBJECTS_DEFAULT = "{}-{}".format(*defaults.OBJECTS_PER_SCENE)
SeedOption = Annotated[
    int, typer.Option(min=0, help="Seed of scene sampling, planning and rendering.")
]
SizeOption = Annotated[str, typer.Option(help="Image size: N or WIDTHxHEIGHT.")]
PlannerOption = Annotated[
    PlannerName | None,
    typer.Option(help="[default: openai when OPENAI_API_KEY or --llm-base-url is set, "
                 "else heuristic]"),
]
BaseUrlOption = Annotated[
    str | None,
    typer.Option(envvar="OPENAI_BASE_URL", help="OpenAI-compatible endpoint (vLLM, Ollama, ...)."),
]
LLMModelOption = Annotated[str, typer.Option(envvar="ACP_LLM_MODEL", help="Model name at the endpoint.")]
ConcurrencyOption = Annotated[int, typer.Option(min=1, max=256, help="LLM requests in flight.")]
MaxReasksOption = Annotated[
    int, typer.Option(min=0, max=10, help="Re-asks of the LLM after an invalid reply.")
]
TimeoutOption = Annotated[
    float,
    typer.Option(min=1.0, max=3600.0, help="Seconds one LLM request may take, its whole reply included."),
]
MaxOverlapOption = Annotated[
    float, typer.Option(min=0.0, max=1.0, help="Largest IoU allowed between two objects.")
]
OnOverlapOption = Annotated[OverlapAction, typer.Option(help="What to do with a larger overlap.")]
ProgressOption = Annotated[bool, typer.Option(help="Show a progress bar.")]
PlanBankOption = Annotated[
    Path | None,
    typer.Option("--bank", show_default=False,
                 help="Bank folder (`acp bank build`): the heuristic planner draws layouts from its real "
                 "layouts, the LLM sees 3 of them as examples per scene."),
]

# Long-tail top-up (acp.balance), shared with `acp generate`; acp.cli.balance reads them.
BalanceOption = Annotated[
    Path | None,
    typer.Option("--balance", metavar="REAL", show_default=False,
                 help="Real COCO/LVIS instances file: plan scenes that top up its rare classes to "
                 "--target instead of reading INPUT; categories and ids follow REAL."),
]
TargetOption = Annotated[
    int | None,
    typer.Option(min=1, show_default=False, help="With --balance: instances each selected category "
                 "reaches; quota = ceil(max(0, target - real) / pass rate)."),
]
PassRateOption = Annotated[
    float, typer.Option(min=0.01, max=1.0, help="With --balance: the share of planned instances CLIS keeps.")
]
PassRateFromOption = Annotated[
    Path | None,
    typer.Option(show_default=False, help="With --balance: an earlier run's OUT/summary.json; its "
                 "per-category pass rates replace --pass-rate."),
]
TailBelowOption = Annotated[
    int | None,
    typer.Option(min=1, show_default=False, help="With --balance: select categories with fewer than M "
                 "real instances."),
]
FrequencyOption = Annotated[
    str | None,
    typer.Option(show_default=False, help="With --balance: select LVIS frequencies, e.g. r,c (rare, "
                 "common, frequent)."),
]
CategoriesOnlyOption = Annotated[
    str | None,
    typer.Option(show_default=False,
                 help='With --balance: select these categories, e.g. "aerosol_can,bow_(weapon)".'),
]
MaxPerCategoryOption = Annotated[
    int | None,
    typer.Option(min=1, show_default=False, help="With --balance: cap on any one category's quota."),
]
CompanionCapOption = Annotated[
    float,
    typer.Option(min=0.0, max=10.0, help="With --balance: a category with no quota left gains at most "
                 "this share of its real instances as companions."),
]


def read_input(input: Path | None, concepts: str | None) -> ConceptInput:
    from acp.concepts import load_concepts, parse_inline

    if (input is None) == (concepts is None):
        raise fail("give a concept file (INPUT) or --concepts, not both and not neither", code=2)
    return parse_inline(concepts) if concepts is not None else load_concepts(input)  # type: ignore[arg-type]


def choose_planner(planner: PlannerName | None, api_key: str | None, base_url: str | None) -> str:
    """The planner to use: as asked, or openai when an endpoint is configured."""
    if planner is None:
        planner = PlannerName.openai if (api_key or base_url) else PlannerName.heuristic
        if planner is PlannerName.heuristic:
            notice("no LLM endpoint configured (OPENAI_API_KEY or --llm-base-url); "
                   "using the offline heuristic planner")
    if planner is PlannerName.openai and not (api_key or base_url):
        raise fail("--planner openai needs OPENAI_API_KEY or --llm-base-url", code=2)
    if planner is PlannerName.openai:
        from acp.llm import safe_url

        notice(f"planning with the LLM at {safe_url(base_url) if base_url else 'the OpenAI API'} "
               "(--planner heuristic plans offline)")
    return planner.value


@app.command()
@handle_errors
def plan(
    input: InputArgument = None,
    output: Annotated[Path, typer.Option("--output", "-o", help="Plans file (JSON Lines).")] = Path(
        "plans.jsonl"
    ),
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
    bank: PlanBankOption = None,
) -> None:
    """Plan scenes (caption, objects, boxes, relations) from a concept list, or, with
    --balance REAL, the scenes that top up REAL's long tail (plan written to PLANS.balance.json).

    The API key is read from OPENAI_API_KEY and never printed or written.
    """
    from acp import api
    from acp.cli.balance import BalanceArgs, balance_plan
    from acp.concepts import parse_object_range, scene_concepts
    from acp.generate.config import parse_size
    from acp.plan.run import failures_path
    from acp.runfolder import plan_record_path

    objects = parse_object_range(objects_per_scene)
    wanted = BalanceArgs(balance, target, pass_rate, pass_rate_from, tail_below, frequency,
                         categories_only, max_per_category, companion_cap)
    topup = balance_plan(wanted, input=input, concepts=concepts, scenes=scenes, objects=objects,
                         seed=seed)
    if topup is not None:
        topup.write(plan_record_path(output))
        print(f"{plan_record_path(output)}: the top-up plan (quotas, companions, back-offs)")
        if not topup.scenes:
            return
    source = topup.concept_input() if topup is not None else read_input(input, concepts)
    width_height = parse_size(size)
    scene_concepts(source, scenes, objects, seed)  # bad --scenes etc. fail before any notice
    api_key = api_key or None
    summary = api.plan(
        source, output, scenes=scenes, objects=objects, seed=seed, size=width_height,
        planner=choose_planner(planner, api_key, llm_base_url), llm_base_url=llm_base_url,
        llm_model=llm_model, api_key=api_key, concurrency=concurrency, max_reasks=max_reasks,
        llm_timeout=llm_timeout, max_overlap=max_overlap, on_overlap=on_overlap.value, bank=bank,
        progress=progress)
    print(f"{output}: {summary.line()}")
    if summary.failed:
        print(f"failures with reasons and raw replies: {failures_path(output)}")


@app.command()
@handle_errors
def validate(
    plans: Annotated[Path, typer.Argument(help="Plans file (JSON Lines) to check.")],
    max_overlap: MaxOverlapOption = defaults.MAX_OVERLAP,
    on_overlap: Annotated[
        OverlapAction, typer.Option(help="reject: a larger overlap is an error; flag: a warning.")
    ] = OverlapAction.reject,
) -> None:
    """Check every record of a plans file; one line per problem (the first 20), exit 1 if any
    or if the file holds no plan at all."""
    from acp.errors import InputError
    from acp.paths import file_problem
    from acp.schema import LayoutRules, layout_problems, read_plans

    if problem := file_problem(plans):
        raise InputError(f"{plans}: {problem}")
    rules = LayoutRules(max_overlap=max_overlap)
    seen: dict[str, int] = {}
    good = bad = warned = 0
    hidden = {"problems": 0, "warnings": 0}  # past MAX_PROBLEM_LINES: counted, not printed
    shown = 0
    for number, record, reason in read_plans(plans):
        problems = [reason] if record is None else []
        warnings: list[str] = []
        if record is not None:
            if record.id in seen:
                problems.append(f"id: {record.id!r} repeats line {seen[record.id]}")
            seen.setdefault(record.id, number)
            overlaps = [f"{field}: {why}" for field, why in layout_problems(record, rules)]
            (warnings if on_overlap is OverlapAction.flag else problems).extend(overlaps)
        for kind, lines in (("warnings", [f"warning: {w}" for w in warnings]), ("problems", problems)):
            for line in lines:
                if shown < MAX_PROBLEM_LINES:
                    print(f"{plans}:{number}: {line}")
                    shown += 1
                else:
                    hidden[kind] += 1
        warned += bool(warnings)
        bad += bool(problems)
        good += not problems
    if not good and not bad:
        raise fail(f"{plans}: 0 plans (the file is empty)")
    if any(hidden.values()):
        more = " and ".join(f"{n} more {kind}" for kind, n in hidden.items() if n)
        print(f"{plans}: ... and {more}")
    flagged = f", {warned} with warnings" if warned else ""
    print(f"{plans}: {good} valid, {bad} invalid{flagged}")
    if bad:
        raise typer.Exit(code=1)

"""``acp plan`` and ``acp validate``."""

from __future__ import annotations

import os
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from acp.cli import app
from acp.cli._common import fail, handle_errors, notice

DEFAULT_LLM_MODEL = "gpt-4o-mini"


class PlannerName(str, Enum):
    openai = "openai"
    heuristic = "heuristic"


class OverlapAction(str, Enum):
    reject = "reject"
    flag = "flag"


def parse_size(text: str) -> tuple[int, int]:
    """``"512"`` or ``"768x512"`` (width x height), each a multiple of 8 in 64..4096."""
    from acp.errors import InputError

    parts = text.lower().split("x")
    try:
        width, height = (int(parts[0]), int(parts[-1])) if len(parts) <= 2 else (0, 0)
    except ValueError:
        raise InputError(f"--size: expected N or WIDTHxHEIGHT, got {text!r}") from None
    for value in (width, height):
        if not 64 <= value <= 4096 or value % 8:
            raise InputError(
                f"--size: width and height must be multiples of 8 in 64..4096, got {text!r}"
            )
    return width, height


@app.command()
@handle_errors
def plan(
    input: Annotated[
        Path | None,
        typer.Argument(help="Concept list: .txt (one per line), .json/.yaml list or "
                       "{concept: quota}, or .jsonl of explicit scenes."),
    ] = None,
    output: Annotated[Path, typer.Option("--output", "-o", help="Plans file (JSON Lines).")] = Path(
        "plans.jsonl"
    ),
    concepts: Annotated[
        str | None, typer.Option(help='Inline concepts instead of INPUT, e.g. "dog,frisbee".')
    ] = None,
    scenes: Annotated[
        int | None, typer.Option(help="Scenes to sample from a vocabulary [default: one per concept].")
    ] = None,
    objects_per_scene: Annotated[
        str, typer.Option(help="Concepts per sampled scene: N or MIN-MAX.")
    ] = "1-3",
    seed: Annotated[int, typer.Option(help="Seed of scene sampling and planning.")] = 0,
    size: Annotated[str, typer.Option(help="Image size: N or WIDTHxHEIGHT.")] = "512",
    planner: Annotated[
        PlannerName | None,
        typer.Option(help="[default: openai when OPENAI_API_KEY or --llm-base-url is set, "
                     "else heuristic]"),
    ] = None,
    llm_base_url: Annotated[
        str | None,
        typer.Option(envvar="OPENAI_BASE_URL", help="OpenAI-compatible endpoint (vLLM, Ollama, ...)."),
    ] = None,
    llm_model: Annotated[
        str, typer.Option(envvar="ACP_LLM_MODEL", help="Model name at the endpoint.")
    ] = DEFAULT_LLM_MODEL,
    concurrency: Annotated[int, typer.Option(min=1, max=256, help="LLM requests in flight.")] = 8,
    max_reasks: Annotated[
        int, typer.Option(min=0, max=10, help="Re-asks of the LLM after an invalid reply.")
    ] = 2,
    llm_timeout: Annotated[
        float, typer.Option(min=1.0, help="Seconds to wait for one LLM reply.")
    ] = 120.0,
    max_overlap: Annotated[
        float, typer.Option(min=0.0, max=1.0, help="Largest IoU allowed between two objects.")
    ] = 0.7,
    on_overlap: Annotated[
        OverlapAction, typer.Option(help="What to do with a larger overlap.")
    ] = OverlapAction.reject,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
) -> None:
    """Plan scenes (caption, objects, boxes, relations) from a concept list.

    The API key is read from OPENAI_API_KEY and never printed or written.
    """
    from acp.concepts import load_concepts, parse_inline, parse_object_range, scene_concepts
    from acp.plan.base import PlanSettings
    from acp.plan.run import failures_path, make_requests, run_planner
    from acp.schema import LayoutRules

    if (input is None) == (concepts is None):
        raise fail("give a concept file (INPUT) or --concepts, not both and not neither", code=2)
    source = parse_inline(concepts) if concepts is not None else load_concepts(input)  # type: ignore[arg-type]
    objects = parse_object_range(objects_per_scene)
    width, height = parse_size(size)
    sets = scene_concepts(source, scenes, objects, seed)
    total = len(sets) if isinstance(sets, tuple) else (scenes if not source.quotas else None)
    if total is None and source.vocabulary:
        total = len(source.vocabulary)
    settings = PlanSettings(
        width=width, height=height,
        rules=LayoutRules(max_overlap=max_overlap, on_overlap=on_overlap.value),
    )
    api_key = os.environ.get("OPENAI_API_KEY") or None
    if planner is None:
        planner = PlannerName.openai if (api_key or llm_base_url) else PlannerName.heuristic
        if planner is PlannerName.heuristic:
            notice("no LLM endpoint configured (OPENAI_API_KEY or --llm-base-url); "
                   "using the offline heuristic planner")
    if planner is PlannerName.openai:
        if not (api_key or llm_base_url):
            raise fail("--planner openai needs OPENAI_API_KEY or --llm-base-url", code=2)
        from acp.plan.llm import LLMPlanner

        chosen = LLMPlanner.from_options(
            base_url=llm_base_url, model=llm_model, api_key=api_key, concurrency=concurrency,
            max_reasks=max_reasks, timeout=llm_timeout, settings=settings,
        )
    else:
        from acp.plan.heuristic import HeuristicPlanner

        chosen = HeuristicPlanner(settings)
    requests = make_requests(sets, seed, width, height)
    summary = run_planner(chosen, requests, output, total=total, progress=progress)
    print(f"{output}: {summary.line()}")
    if summary.failed:
        print(f"failures with reasons and raw replies: {failures_path(output)}")


@app.command()
@handle_errors
def validate(
    plans: Annotated[Path, typer.Argument(help="Plans file (JSON Lines) to check.")],
    max_overlap: Annotated[
        float, typer.Option(min=0.0, max=1.0, help="Largest IoU allowed between two objects.")
    ] = 0.7,
) -> None:
    """Check every record of a plans file; one line per problem, exit 1 if any."""
    from acp.errors import InputError
    from acp.schema import LayoutRules, layout_problems, read_plans

    if not plans.is_file():
        raise InputError(f"{plans}: no such file")
    rules = LayoutRules(max_overlap=max_overlap)
    good = bad = 0
    for number, record, reason in read_plans(plans):
        problems = [reason] if record is None else [
            f"{field}: {why}" for field, why in layout_problems(record, rules)
        ]
        problems = [p for p in problems if p]
        if problems:
            bad += 1
            for problem in problems:
                print(f"{plans}:{number}: {problem}")
        else:
            good += 1
    print(f"{plans}: {good} valid, {bad} invalid")
    if bad:
        raise typer.Exit(code=1)

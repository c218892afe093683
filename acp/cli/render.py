"""``acp render`` and ``acp preview``."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from acp import defaults
from acp.cli._common import DeviceOption, DtypeOption, fail, handle_errors, notice
from acp.cli.app import app

if TYPE_CHECKING:
    from acp.schema import ScenePlan

PlansArgument = Annotated[Path, typer.Argument(help="Plans file (JSON Lines) from `acp plan`.")]
LimitOption = Annotated[int | None, typer.Option(min=1, help="Use only the first N valid plans.")]
# Options shared with `acp generate` (same names, same defaults).
ModelOption = Annotated[str, typer.Option(help="GLIGEN text-box pipeline: hub id or local folder.")]
CandidatesOption = Annotated[
    int,
    typer.Option("--candidates", "-k", min=1, max=defaults.MAX_CANDIDATES,
                 help=f"Candidates per plan, rendered in one batch (at most {defaults.MAX_CANDIDATES})."),
]
BatchPlansOption = Annotated[
    int,
    typer.Option(min=1, max=defaults.MAX_BATCH_PLANS,
                 help="Plans denoised together (B plans x K candidates per loop). On CUDA the batch "
                 "runs whole; on CPU samples run one at a time, so images do not depend on B."),
]
CompileOption = Annotated[
    bool,
    typer.Option("--compile", help="torch.compile the UNet (CUDA only; the first plan pays for "
                 "compiling two graphs). Off by default until measured on your GPU: bench/bench_gpu.py."),
]
StepsOption = Annotated[int, typer.Option(min=1, max=defaults.MAX_STEPS, help="Denoising steps.")]
GuidanceOption = Annotated[float, typer.Option(min=0.0, help="Classifier-free guidance scale.")]
BetaOption = Annotated[
    float,
    typer.Option(
        min=0.0, max=1.0,
        help="GLIGEN scheduled sampling: fraction of the steps that follow the boxes. 0.3 (the "
        "GLIGEN paper's) fixes the layout early and leaves the details to Stable Diffusion; "
        "raise it for tighter boxes at some cost in image quality.",
    ),
]
NegativePromptOption = Annotated[str, typer.Option(help="What the images should not show.")]
SafetyCheckerOption = Annotated[
    bool,
    typer.Option(
        "--safety-checker/--no-safety-checker",
        help="Run the model's NSFW safety checker (a CLIP ViT-L/14 pass per image) and drop the "
        "images it flags, unscored. Off: CLIS already filters bad candidates.",
    ),
]


def _load_plans(path: Path, limit: int | None) -> tuple[list[ScenePlan], list[tuple[int, str]]]:
    """Valid plans; each skipped line is reported as ``FILE:LINE: skipped: reason``."""
    from acp.render.folder import read_plan_file

    plans, problems = read_plan_file(path, limit)
    for number, reason in problems:
        notice(f"{path}:{number}: skipped: {reason}")
    if not plans:
        raise fail(f"{path}: no valid plans" + (f" ({len(problems)} lines skipped)" if problems else ""))
    return plans, problems


@app.command()
@handle_errors
def render(
    plans: PlansArgument,
    output: Annotated[
        Path, typer.Option("--output", "-o", help="Render folder: <plan_id>/<index>.png, manifest.jsonl.")
    ] = Path("renders"),
    model: ModelOption = defaults.GLIGEN_MODEL,
    candidates: CandidatesOption = defaults.CANDIDATES,
    steps: StepsOption = defaults.STEPS,
    guidance: GuidanceOption = defaults.GUIDANCE,
    size: Annotated[
        str | None,
        typer.Option(help="N or WIDTHxHEIGHT, multiples of 8 [default: each plan's own size, 512]."),
    ] = None,
    beta: BetaOption = defaults.BETA,
    negative_prompt: NegativePromptOption = "",
    safety_checker: SafetyCheckerOption = defaults.SAFETY_CHECKER,
    batch_plans: BatchPlansOption = defaults.BATCH_PLANS,
    compile: CompileOption = False,
    limit: LimitOption = None,
    seed: Annotated[
        int, typer.Option(min=0, help="Run seed; a candidate's seed derives from it, its plan id and index.")
    ] = 0,
    device: DeviceOption = "auto",
    dtype: DtypeOption = "auto",
    force: Annotated[
        bool,
        typer.Option(help="Discard the renders in --output and start over (needed when they were "
                     "made with other settings)."),
    ] = False,
    progress: Annotated[bool, typer.Option(help="Show the model's loading line and a progress bar.")] = True,
) -> None:
    """Render candidate images of each plan with GLIGEN (resumable: a rerun skips finished ones)."""
    import functools

    from acp.device import resolve_device, resolve_dtype
    from acp.generate import components
    from acp.generate.config import parse_size
    from acp.pretrained import check_models
    from acp.render.folder import render_to_folder
    from acp.render.gligen import RenderSettings

    width_height = parse_size(size) if size is not None else None
    settings = RenderSettings(
        model=model, steps=steps, guidance=guidance, beta=beta, size=width_height,
        negative_prompt=negative_prompt, seed=seed, safety_checker=safety_checker,
    )
    chosen, problems = _load_plans(plans, limit)
    device = resolve_device(device)
    resolve_dtype(dtype, device)  # a bad --dtype fails before the model is looked for
    check_models([("--model", model)])
    load = functools.partial(components.renderer, settings, device, compile=compile, dtype=dtype,
                             progress=progress)
    summary = render_to_folder(chosen, output, settings, candidates=candidates, force=force,
                               progress=progress, batch_plans=batch_plans, load_renderer=load)
    skipped = f"; {len(problems)} plans lines skipped" if problems else ""
    print(f"{output}: {summary.line()}{skipped}")


@app.command()
@handle_errors
def preview(
    plans: PlansArgument,
    output: Annotated[Path, typer.Option("--output", "-o", help="Folder for the drawings.")] = Path(
        "previews"
    ),
    overlay: Annotated[
        Path | None,
        typer.Option(help="Render folder: draw the boxes over its candidates instead of a blank canvas."),
    ] = None,
    grid: Annotated[
        bool, typer.Option(help="Write contact sheets (sheet-0001.png, ...) instead of one file each.")
    ] = False,
    limit: LimitOption = None,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
) -> None:
    """Draw each plan's layout (boxes, labels, one colour per category) without any model."""
    from acp.fonts import missing_note
    from acp.render.preview import write_previews

    chosen, problems = _load_plans(plans, limit)
    summary = write_previews(chosen, output, overlay=overlay, grid=grid, progress=progress)
    for path, reason in summary.unreadable:
        notice(f"{path}: skipped: {reason}")
    if (note := missing_note()) is not None:
        notice(note)
    skipped = f"; {len(problems)} plans lines skipped" if problems else ""
    print(f"{output}: {summary.line()}{skipped}")

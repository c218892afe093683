"""``acp bank build`` and ``acp score layouts | candidates | dataset``.

Every output writes a layout score the same way (``acp.score.candidates.layout_fields``):
``clis_l`` is CLIS-L against a bank and ``null`` when the score is reference-free (no
``--bank``, or none of the plan's categories in it), ``clis_l_sanity`` then holds the sanity
score, and ``clis_l_method`` says how the score was reached (``sanity`` for the check).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from acp import defaults
from acp.cli._common import (
    ApiKeyOption,
    DeviceOption,
    DtypeOption,
    fail,
    handle_errors,
    notice,
    status_printer,
    write_report_after,
)
from acp.cli.app import app

if TYPE_CHECKING:
    from acp.score.judge import JudgeSettings
    from acp.score.layout import LayoutScorer

MAX_BATCH = 256  # images per CLIP pass: past this, memory grows with nothing gained

bank_app = typer.Typer(help="Reference banks of real layouts, for CLIS-L.", no_args_is_help=True)
score_app = typer.Typer(
    help="CLIS scores of layouts, rendered candidates and datasets.", no_args_is_help=True
)
app.add_typer(bank_app, name="bank")
app.add_typer(score_app, name="score")

BankOption = Annotated[
    Path | None,
    typer.Option("--bank", help="Bank folder from `acp bank build` [default: reference-free sanity score]."),
]
EmbedOption = Annotated[
    str | None,
    typer.Option(
        "--embed-model",
        help="sentence-transformers folder or id, to match names the bank does not know.",
    ),
]
ClisLMethodOption = Annotated[
    str,
    typer.Option(
        "--clis-l-method",
        help="CLIS-L formula: v2 (densities learned from the bank) or paper (the published one, "
        "to compare with the paper's numbers; its scores run higher, so set --min-clis-l to match).",
    ),
]
ClipOption = Annotated[str, typer.Option("--clip-model", help="CLIP hub id or folder.")]
# The VLM judge cascade, shared with `acp generate`.
JudgeModelOption = Annotated[
    str | None,
    typer.Option(help="Vision LLM that rates instances CLIP is unsure about (OpenAI-compatible)."),
]
JudgeBaseUrlOption = Annotated[
    str | None, typer.Option(help="OpenAI-compatible endpoint of the judge [default: OpenAI].")
]
JudgeMarginOption = Annotated[
    float, typer.Option(min=0.0, max=100.0, help="CLIP is unsure within this distance of --min-clis-i.")
]
JudgeMaxCallsOption = Annotated[int, typer.Option(min=0, help="Judge requests per run at most.")]
ProgressOption = Annotated[bool, typer.Option(help="Show each model's loading line and a progress bar.")]
# The verifier (acp.score.verify), shared with `acp generate`.
VerifyOption = Annotated[bool, typer.Option(
    "--verify",
    help=f"Check every box with a zero-shot detector (--detector-model, default {defaults.DETECTOR_MODEL}).",
)]
DetectorModelOption = Annotated[str | None, typer.Option(
    "--detector-model", show_default=False,
    help="Zero-shot detector (OWLv2 or Grounding DINO) hub id or folder; implies --verify.")]
DetectionThresholdOption = Annotated[float | None, typer.Option(
    min=0.0, max=1.0, show_default=False,
    help="Detector score at which a detection counts [default: OWLv2 0.1, Grounding DINO 0.35].")]
UnplannedThresholdOption = Annotated[float | None, typer.Option(
    min=0.0, max=1.0, show_default=False,
    help="Detector score at which a detection matching no box is an unlabeled object "
    "[default: OWLv2 0.3, Grounding DINO 0.5].")]
VerifyIouOption = Annotated[float, typer.Option(
    min=0.0, max=1.0, help="IoU at which a detection of its category verifies a box.")]


@bank_app.command("build")
@handle_errors
def bank_build(
    annotations: Annotated[
        list[Path], typer.Argument(help="COCO-format annotation files (COCO, LVIS, Objects365, your own).")
    ],
    output: Annotated[Path, typer.Option("--output", "-o", help="Bank folder to write.")],
    max_objects_per_image: Annotated[
        int, typer.Option(min=2, help="Pairs are formed among this many largest boxes of an image.")
    ] = 20,
    max_pairs: Annotated[
        int, typer.Option(min=2, help="References kept per category pair (uniform sample).")
    ] = 10_000,
    max_boxes: Annotated[
        int, typer.Option(min=2, help="Prior boxes kept per category (uniform sample).")
    ] = 10_000,
    seed: Annotated[int, typer.Option(help="Seed of the sampling under the caps.")] = 0,
) -> None:
    """Build a CLIS-L reference bank from real layouts: pairs per category pair, priors per category."""
    from acp.score.bank import Bank, check_output, describe_summary

    check_output(output)  # before the build, which takes a while on a full COCO split
    bank = Bank.from_coco(
        annotations,
        max_objects_per_image=max_objects_per_image,
        max_pairs_per_category_pair=max_pairs,
        max_boxes_per_category=max_boxes,
        seed=seed,
    )
    bank.save(output)
    print(f"{output}: " + describe_summary(bank.summary).replace("\n", f"\n{output}: "))



def check_clis_l_method(method: str) -> None:
    from acp.score.layout import SCORING_METHODS

    if method not in SCORING_METHODS:
        raise fail(f"--clis-l-method: expected one of {', '.join(SCORING_METHODS)}, got {method!r}", code=2)


def check_layout_options(bank: Path | None, embed_model: str | None, method: str) -> None:
    check_clis_l_method(method)
    if bank is None and embed_model:
        raise fail("--embed-model needs --bank (it matches names against the bank's categories)", code=2)


def make_layout_scorer(
    bank: Path | None, embed_model: str | None, method: str = defaults.CLIS_L_METHOD, *,
    progress: bool = False,
) -> LayoutScorer:
    from acp.generate import components
    from acp.score.candidates import ScoreSettings

    check_layout_options(bank, embed_model, method)
    if bank is None:
        notice(
            "no --bank given: no CLIS-L (clis_l is null); a reference-free sanity score "
            "(in frame, sizes, overlaps) is written as clis_l_sanity"
        )
    settings = ScoreSettings(bank=bank, embed_model=embed_model, clis_l_method=method)
    return components.layout_scorer(settings, progress=progress)


def check_scoring_models(clip_model: str, embed_model: str | None, detector_model: str | None = None) -> None:
    """Every model a scoring command loads, looked for before any is loaded."""
    from acp.pretrained import check_models

    check_models([("--clip-model", clip_model), *([("--embed-model", embed_model)] if embed_model else []),
                  *([("--detector-model", detector_model)] if detector_model else [])])


@score_app.command("layouts")
@handle_errors
def score_layouts(
    plans: Annotated[Path, typer.Argument(help="Plans file (JSON Lines).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Scored plans (JSON Lines).")],
    bank: BankOption = None,
    embed_model: EmbedOption = None,
    clis_l_method: ClisLMethodOption = defaults.CLIS_L_METHOD,
    workers: Annotated[
        int | None,
        typer.Option(min=1, max=64, show_default=False,
                     help="Processes scoring batches of plans [default: the usable CPUs, at most 8]."),
    ] = None,
) -> None:
    """CLIS-L of every plan: each plan record plus clis_l, clis_l_sanity, clis_l_method and
    clis_l_detail (per pair).

    clis_l is null when the score is reference-free (no --bank, or no category of the plan in
    it); the sanity score is then in clis_l_sanity, and clis_l_method says "sanity". Invalid
    plan lines are reported (file:line: reason) and skipped; the exit code is 1 if any.
    """
    from acp.atomic import atomic_text_file
    from acp.errors import InputError
    from acp.paths import file_problem
    from acp.score.plan_files import score_plan_file

    if problem := file_problem(plans):
        raise InputError(f"{plans}: {problem}; expected a plans file (JSON Lines)")
    check_layout_options(bank, embed_model, clis_l_method)
    if embed_model:
        from acp.pretrained import check_models

        check_models([("--embed-model", embed_model)])
    scorer = make_layout_scorer(bank, embed_model, clis_l_method)
    scored = bad = 0
    with atomic_text_file(output) as out:  # streamed in batches: memory does not grow with the plans
        for text, rejected, count in score_plan_file(scorer, plans, 1 if embed_model else workers):
            out.write(text)
            scored += count
            bad += len(rejected)
            for number, reason in rejected:
                print(f"{plans}:{number}: {reason}")
    print(f"{output}: {scored} plans scored, {bad} invalid lines skipped")
    if bad:
        raise typer.Exit(code=1)


MinClisLOption = Annotated[
    float,
    typer.Option(min=0.0, max=100.0,
                 help="Drop plans whose CLIS-L is lower (needs --bank; 0 keeps all)."),
]
MinClisIOption = Annotated[
    float, typer.Option(min=0.0, max=100.0, help="Drop instances whose CLIS-I is lower (0 keeps all).")
]


def judge_settings(model: str | None, base_url: str | None, margin: float, max_calls: int,
                   api_key: str | None) -> JudgeSettings | None:
    if model is None:
        if base_url:
            raise fail("--judge-base-url needs --judge-model", code=2)
        return None
    from acp.score.judge import JudgeSettings

    api_key = api_key or None  # never echoed nor stored
    if not (api_key or base_url):
        raise fail("--judge-model needs OPENAI_API_KEY or --judge-base-url", code=2)
    settings = JudgeSettings(model=model, base_url=base_url, margin=margin, max_calls=max_calls,
                             api_key=api_key)
    settings.chat()  # a malformed --judge-base-url, proxy or certificate file: one line, now
    return settings


@score_app.command("candidates")
@handle_errors
def score_candidates(
    renders: Annotated[Path, typer.Argument(help="Render folder with manifest.jsonl (from `acp render`).")],
    plans: Annotated[Path, typer.Option("--plans", help="Plans file the candidates were rendered from.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Scores (JSON Lines; resumable).")],
    bank: BankOption = None,
    embed_model: EmbedOption = None,
    clis_l_method: ClisLMethodOption = defaults.CLIS_L_METHOD,
    clip_model: ClipOption = defaults.CLIP_MODEL,
    device: DeviceOption = "auto",
    dtype: DtypeOption = "auto",
    min_clis_l: MinClisLOption = defaults.MIN_CLIS_L,
    min_clis_i: MinClisIOption = defaults.MIN_CLIS_I,
    batch_size: Annotated[
        int,
        typer.Option(min=1, max=MAX_BATCH, help="Candidates per CLIP forward pass (with all their crops)."),
    ] = 8,
    judge_model: JudgeModelOption = None,
    judge_base_url: JudgeBaseUrlOption = None,
    judge_margin: JudgeMarginOption = defaults.JUDGE_MARGIN,
    judge_max_calls: JudgeMaxCallsOption = defaults.JUDGE_MAX_CALLS,
    api_key: ApiKeyOption = None,
    progress: ProgressOption = True,
) -> None:
    """Score rendered candidates: clis, clis_l, clis_i, per-object scores, best per plan.

    Plans below --min-clis-l and instances below --min-clis-i are marked dropped, with the
    reason. A rerun skips plans already scored. The judge's key is read from OPENAI_API_KEY.
    """
    from acp.device import resolve_device, resolve_dtype
    from acp.generate import components
    from acp.score.candidates import Thresholds, score_renders

    device = resolve_device(device)  # a bad --device fails before any bank or model is loaded
    resolve_dtype(dtype, device)
    judge = components.judge(
        judge_settings(judge_model, judge_base_url, judge_margin, judge_max_calls, api_key))
    check_layout_options(bank, embed_model, clis_l_method)
    check_scoring_models(clip_model, embed_model)
    layout_scorer = make_layout_scorer(bank, embed_model, clis_l_method, progress=progress)
    if bank is None:
        notice("without --bank, --min-clis-l does not apply and clis is CLIS-I alone")
    settings = {
        "clip_model": clip_model,
        "bank": str(bank) if bank else None,
        "embed_model": embed_model,
        "min_clis_l": min_clis_l,
        "min_clis_i": min_clis_i,
        "judge_model": judge_model,
        "judge_margin": judge_margin if judge_model else None,
    }
    if clis_l_method != defaults.CLIS_L_METHOD:  # recorded when not the default, as generate does
        settings["clis_l_method"] = clis_l_method
    summary = score_renders(
        renders,
        plans,
        output,
        image_scorer=components.image_scorer(clip_model, device, dtype=dtype, progress=progress),
        layout_scorer=layout_scorer,
        judge=judge,
        thresholds=Thresholds(min_clis_l=min_clis_l or None, min_clis_i=min_clis_i or None),
        settings=settings,
        batch_size=batch_size,
        progress=progress,
    )
    for item, reason in summary.failures:
        print(f"{item}: {reason}")
    print(f"{output}: {summary.line()}")
    if judge is not None:
        print(judge.report().line())
    if summary.failures:
        raise typer.Exit(code=1)


@score_app.command("dataset")
@handle_errors
def score_dataset(
    annotations: Annotated[Path, typer.Argument(help="COCO-format annotation file.")],
    images: Annotated[Path, typer.Option("--images", help="Folder the images' file_name are relative to.")],
    output: Annotated[
        Path, typer.Option("--output", "-o", help="Report folder to write: a new one, or an earlier report.")
    ],
    keep_above: Annotated[
        float | None,
        typer.Option(min=0.0, max=100.0,
                     help="Also write a filtered copy (OUT/filtered/) without what scores lower."),
    ] = None,
    removed_boxes: Annotated[
        str,
        typer.Option(help="In the filtered copy, an image with a box under --keep-above: drop-image "
                     "(no object left unlabelled) or ignore (keep it, the box as iscrowd 1)."),
    ] = "drop-image",
    bank: BankOption = None,
    embed_model: EmbedOption = None,
    clis_l_method: ClisLMethodOption = defaults.CLIS_L_METHOD,
    clip_model: ClipOption = defaults.CLIP_MODEL,
    device: DeviceOption = "auto",
    dtype: DtypeOption = "auto",
    batch_size: Annotated[int, typer.Option(min=1, max=MAX_BATCH, help="Images per CLIP forward pass.")] = 8,
    verify: VerifyOption = False,
    detector_model: DetectorModelOption = None,
    detection_threshold: DetectionThresholdOption = None,
    unplanned_threshold: UnplannedThresholdOption = None,
    verify_iou: VerifyIouOption = defaults.VERIFY_IOU,
    progress: ProgressOption = True,
) -> None:
    """Score every image and box of a COCO dataset; report per image, per box, per category.

    With --verify, a detector also checks every box (verified or missing), finds objects no box
    labels, and measures label fidelity (COCO AP of its detections against the labels).
    Items that cannot be scored (missing or undecodable image, box outside its image, unknown
    category id) are listed in failures.json and printed as found; the exit code is then 1.
    """
    from tqdm import tqdm

    from acp.device import resolve_device, resolve_dtype
    from acp.generate import components
    from acp.score.dataset import check_paths
    from acp.score.dataset import score_dataset as run

    check_paths(annotations, images, output)  # before any model: these would fail late, or per image
    device = resolve_device(device)  # a bad --device fails before any bank or model is loaded
    resolve_dtype(dtype, device)
    check_layout_options(bank, embed_model, clis_l_method)
    from acp.score.verify import verify_settings

    checks = verify_settings(verify, detector_model, detection_threshold=detection_threshold,
                             unplanned_threshold=unplanned_threshold, verify_iou=verify_iou)
    check_scoring_models(clip_model, embed_model, checks.detector_model if checks else None)
    layout_scorer = (make_layout_scorer(bank, embed_model, clis_l_method, progress=progress)
                     if bank or embed_model else None)

    def print_failure(item: str, reason: str) -> None:  # as found, above the progress bar
        tqdm.write(f"{annotations}: {item}: {reason}", file=sys.stdout)

    # The steps before the bar starts (loading CLIP, parsing a large COCO file) take seconds to
    # minutes: a line each (the model's from acp.pretrained.loading).
    image_scorer = components.image_scorer(clip_model, device, dtype=dtype, progress=progress)
    verifier = components.verifier(checks, device, dtype=dtype, progress=progress)
    status = status_printer(progress)
    if status is not None:
        status(f"reading {annotations} ({annotations.stat().st_size / 1e6:.1f} MB)")
    report = run(
        annotations,
        images,
        output,
        image_scorer=image_scorer,
        layout_scorer=layout_scorer,
        keep_above=keep_above,
        removed_boxes=removed_boxes,  # type: ignore[arg-type]
        batch_size=batch_size,
        progress=progress,
        on_failure=print_failure,
        verifier=verifier,
    )
    s = report.summary
    kept = f", kept {s['kept_images']} images and {s['kept_boxes']} boxes" if keep_above is not None else ""
    print(
        f"{output}: {s['scored_images']} of {s['images']} images and {s['scored_boxes']} of {s['boxes']} "
        f"boxes scored, {report.failed} failed{kept}"
    )
    if verifier is not None:
        fidelity = s["label_fidelity"]
        figures = (f"AP {fidelity['ap']:.3f}, AP50 {fidelity['ap50']:.3f}" if fidelity["ap"] is not None
                   else "no AP (no label)")
        print(f"{output}: {s['verified_boxes']} boxes verified, {s['missing_boxes']} missing, "
              f"{s['unlabeled_objects']} unlabeled objects in {s['images_with_unlabeled']} images; "
              f"label fidelity ({verifier.detector.name}): {figures}")
    if s.get("renumbered_annotations"):
        notice(f"{s['renumbered_annotations']} annotations had a missing or repeated id: renumbered in "
               "the filtered copy")
    write_report_after(output)
    if report.failed:
        raise typer.Exit(code=1)


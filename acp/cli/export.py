"""``acp export ...``: operations on COCO files made by acp."""

from __future__ import annotations

from pathlib import Path

import typer

from acp.cli import app
from acp.cli._common import handle_errors, notice

export_app = typer.Typer(
    name="export",
    help="COCO files: merge a synthetic set into a real training set.",
    no_args_is_help=True,
)
app.add_typer(export_app, name="export")


@export_app.command("merge")
@handle_errors
def merge(
    synthetic: Path = typer.Argument(
        ..., metavar="SYNTHETIC", help="COCO file made by acp (OUT/annotations.json)."
    ),
    real: Path = typer.Argument(..., metavar="REAL", help="COCO file of the real training set."),
    output: Path = typer.Option(
        ..., "-o", "--output", help="Merged COCO file; its file_name values are relative to its folder."
    ),
    synthetic_images: Path | None = typer.Option(
        None, "--synthetic-images", help="Images folder of SYNTHETIC [default: its images/ or its folder]."
    ),
    real_images: Path | None = typer.Option(
        None, "--real-images", help="Images folder of REAL [default: its images/ or its folder]."
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Allow -o to replace an input file."),
    allow_outside_paths: bool = typer.Option(
        False, "--allow-outside-paths",
        help="Accept file names that leave their images folder, and write ones that leave the "
        "merged file's folder ('..').",
    ),
) -> None:
    """Merge SYNTHETIC into REAL: categories unified by name (REAL's ids win), ids made unique,
    image paths rewritten to stay valid from the merged file's folder."""
    from acp.export.merge import merge_coco

    summary = merge_coco(
        synthetic, real, output, synthetic_images=synthetic_images, real_images=real_images,
        overwrite=overwrite, allow_outside_paths=allow_outside_paths,
    )
    for name, target in summary.matched.items():
        if name != target:
            notice(f"category {name!r} merged into {target!r}")
    if summary.added:
        notice(f"categories new to {real}: {', '.join(repr(n) for n in summary.added)}")
    if summary.outside_paths:
        notice(
            f"{summary.outside_paths} image paths leave {output.parent} (--allow-outside-paths); some "
            "readers refuse them: write the merged file in a folder that contains both image folders"
        )
    typer.echo(
        f"{summary.output}: {summary.real_images} real + {summary.synthetic_images} synthetic images, "
        f"{summary.annotations} annotations, {summary.categories} categories"
    )

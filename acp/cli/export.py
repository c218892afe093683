"""``acp export ...``: COCO files made by acp, as training sets: YOLO layout, splits, merges."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from acp import defaults
from acp.cli._common import handle_errors, notice
from acp.cli.app import app

export_app = typer.Typer(
    name="export",
    help="Training sets from a COCO file: YOLO layout, train/val splits, a merge into a real set.",
    no_args_is_help=True,
)

AnnotationsArgument = Annotated[
    Path, typer.Argument(metavar="ANNOTATIONS", help="COCO file (an acp dataset's OUT/annotations.json).")
]
ImagesOption = Annotated[
    Path | None,
    typer.Option("--images",
                 help="Folder the file_name values are relative to [default: its images/ or its folder]."),
]
ValFractionOption = Annotated[
    float,
    typer.Option(min=0.0, max=1.0, help="Share of images in val (per image, from a hash of its plan id)."),
]
TestFractionOption = Annotated[float, typer.Option(min=0.0, max=1.0, help="Share of images in test.")]
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
    overwrite: bool = typer.Option(
        False, "--overwrite", help="Allow -o to replace a file that is not an earlier merge (an input, say)."
    ),
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


@export_app.command("yolo")
@handle_errors
def yolo(
    annotations: AnnotationsArgument,
    output: Annotated[
        Path, typer.Option("-o", "--output", help="Folder to write (new, empty, or an earlier export).")
    ],
    images: ImagesOption = None,
    val_fraction: ValFractionOption = defaults.VAL_FRACTION,
    test_fraction: TestFractionOption = defaults.TEST_FRACTION,
    task: Annotated[str, typer.Option(help="detect (boxes) or segment (mask outlines).")] = "detect",
    copy: Annotated[bool, typer.Option("--copy", help="Copy the images, not hard-link them.")] = False,
    symlink: Annotated[bool, typer.Option("--symlink", help="Link the images symbolically.")] = False,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
) -> None:
    """Ultralytics YOLO layout: images/ and labels/ per split, data.yaml, categories.json.

    Class ids are 0, 1, ... in COCO category id order (categories.json maps them back). Images
    are hard links where the file system allows (else copies). Crowd boxes are left out.
    """
    from acp.errors import InputError
    from acp.export.split import Fractions
    from acp.export.yolo import export_yolo

    if copy and symlink:
        raise InputError("--copy and --symlink: give at most one")
    fractions = Fractions(val_fraction, test_fraction)
    summary = export_yolo(
        annotations, output, fractions=fractions, images_dir=images, task=task,  # type: ignore[arg-type]
        link="copy" if copy else "symlink" if symlink else "hardlink", progress=progress,
    )
    if summary.copied:
        notice(f"{summary.copied} images copied: the file system refused hard links")
    _empty_splits(summary.images)
    typer.echo(f"{output}: {summary.line()}; train with data={output / 'data.yaml'}")


@export_app.command("coco-split")
@handle_errors
def coco_split(
    annotations: AnnotationsArgument,
    output: Annotated[
        Path | None,
        typer.Option("-o", "--output",
                     help="Folder for train.json, val.json, test.json [default: ANNOTATIONS' folder]."),
    ] = None,
    images: ImagesOption = None,
    val_fraction: ValFractionOption = defaults.VAL_FRACTION,
    test_fraction: TestFractionOption = defaults.TEST_FRACTION,
) -> None:
    """Train/val(/test) COCO files over the same images; file_name relative to their folder."""
    from acp.export.split import Fractions, split_coco

    fractions = Fractions(val_fraction, test_fraction)
    folder = output if output is not None else annotations.parent
    summary = split_coco(annotations, folder, fractions=fractions, images_dir=images)
    _empty_splits(summary.images)
    for split, path in summary.files.items():
        typer.echo(f"{path}: {summary.images[split]} images, {summary.annotations[split]} annotations")
    typer.echo(f"image root for every split: {folder}")


def _empty_splits(images: dict[str, int]) -> None:
    for split, count in images.items():
        if count == 0 and split != "train":
            notice(f"the {split} split is empty: too few images for its fraction")

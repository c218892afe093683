"""``acp report``: the HTML page of a dataset folder or a score report."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from acp.cli._common import handle_errors, status_printer
from acp.cli.app import app


@app.command()
@handle_errors
def report(
    folder: Annotated[
        Path, typer.Argument(metavar="FOLDER", help="`acp generate` output or `acp score dataset` report.")
    ],
    output: Annotated[
        Path | None, typer.Option("-o", "--output", help="HTML file to write [default: FOLDER/report.html].")
    ] = None,
) -> None:
    """One self-contained HTML page: settings, kept and dropped counts, score histograms, a
    contact sheet with boxes drawn, the weakest kept beside the best dropped, per-category examples."""
    from acp.report import write_report

    summary = write_report(folder, output, status=status_printer())  # a line per step
    typer.echo(f"{summary.path}: {summary.thumbnails} thumbnails of {summary.images} images, "
               f"{summary.bytes / 1e6:.1f} MB")

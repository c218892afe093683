"""The ``acp`` Typer app that every command module registers on (``acp.cli`` imports them all)."""

from __future__ import annotations

import os
from typing import Annotated

import typer

# Model libraries print advisories that drown acp's own progress; a user can still turn them
# back on by setting these variables. The hub's download bars are not among them:
# acp.pretrained.loading shows them for a download and hides them for a local load
# (HF_HUB_DISABLE_PROGRESS_BARS=1 set here would hide every download's bar for good).
for _name, _value in (("TRANSFORMERS_VERBOSITY", "error"), ("DIFFUSERS_VERBOSITY", "error"),
                      ("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")):
    os.environ.setdefault(_name, _value)

app = typer.Typer(
    name="acp",
    help="Synthetic object-detection data: concept list in, scored COCO dataset out.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


def _show_version(value: bool) -> None:
    if value:
        from acp import __version__

        print(f"acp {__version__}")
        raise typer.Exit()


@app.callback()
def _options(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_show_version, is_eager=True, help="Show acp's version and exit."),
    ] = False,
) -> None:
    """Synthetic object-detection data: concept list in, scored COCO dataset out."""

"""The ``acp`` Typer app that every command module registers on (``acp.cli`` imports them all)."""

from __future__ import annotations

import os

import typer

# Model libraries print load bars and advisories that drown acp's own progress; a user can
# still turn them back on by setting these variables.
for _name, _value in (("TRANSFORMERS_VERBOSITY", "error"), ("DIFFUSERS_VERBOSITY", "error"),
                      ("HF_HUB_DISABLE_PROGRESS_BARS", "1"), ("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")):
    os.environ.setdefault(_name, _value)

app = typer.Typer(
    name="acp",
    help="Synthetic object-detection data: concept list in, scored COCO dataset out.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

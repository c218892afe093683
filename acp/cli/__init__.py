"""The ``acp`` command line. Only this package knows about exit codes and terminal output.

Each submodule registers its commands on ``app``; none imports torch at module level, so
``acp --help`` stays fast.
"""

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

# Registration order is the order of `acp --help`: the stages in pipeline order.
from acp.cli import plan as _plan  # noqa: E402,F401,I001
from acp.cli import render as _render  # noqa: E402,F401
from acp.cli import score as _score  # noqa: E402,F401
from acp.cli import generate as _generate  # noqa: E402,F401
from acp.cli import export as _export  # noqa: E402,F401
from acp.cli import balance as _balance  # noqa: E402,F401
from acp.cli import report as _report  # noqa: E402,F401


def main() -> None:
    app()

"""The ``acp`` command line. Only this package knows about exit codes and terminal output.

Each submodule registers its commands on ``app`` (``acp.cli.app``); none imports torch at
module level, so ``acp --help`` stays fast.
"""

from __future__ import annotations

from acp.cli import balance as _balance  # noqa: F401
from acp.cli import export as _export  # noqa: F401
from acp.cli import generate as _generate  # noqa: F401

# Registration order is the order of `acp --help`: the stages in pipeline order.
from acp.cli import plan as _plan  # noqa: F401
from acp.cli import render as _render  # noqa: F401
from acp.cli import report as _report  # noqa: F401
from acp.cli import score as _score  # noqa: F401
from acp.cli.app import app

__all__ = ["app", "main"]


def main() -> None:
    app()

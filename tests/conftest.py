"""Shared fixtures. Tests need no network and no GPU; models are tiny and built in-process."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    """Tiny random GLIGEN, CLIP and SAM saved with ``save_pretrained`` (loaded back for real)."""
    from acp.testing import save_tiny_models

    return save_tiny_models(tmp_path_factory.mktemp("tiny-models"))


@pytest.fixture(scope="session")
def tiny_dataset(tiny_models, tmp_path_factory) -> Path:
    """An `acp generate` output of 12 scenes (tiny models, SAM masks, candidates kept), some of
    them dropped under CLIS-I 30: what `acp export` and `acp report` start from."""
    from typer.testing import CliRunner

    from acp.cli import app

    out = tmp_path_factory.mktemp("tiny-dataset") / "dataset"
    result = CliRunner().invoke(app, [
        "generate", "--concepts", "dog,frisbee,cat,bus", "-o", str(out), "--scenes", "12",
        "--model", str(tiny_models["gligen"]), "--clip-model", str(tiny_models["clip"]),
        "--masks", "--sam-model", str(tiny_models["sam"]), "--keep-candidates",
        "--steps", "2", "--size", "64", "-k", "2", "--min-clis-i", "30", "--no-progress",
        "--planner", "heuristic",
    ])
    assert result.exit_code == 0, result.output
    return out

"""Shared fixtures. Tests need no network and no GPU; models are tiny and built in-process."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import settings

# No per-example deadline (hypothesis' default is 200 ms): on a loaded machine an example is
# slow without being wrong. Property tests check results, not time.
settings.register_profile("acp", deadline=None)
settings.load_profile("acp")


@pytest.fixture(autouse=True)
def empty_working_directory(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch):
    """Every test runs in a new empty folder: what the user's working directory holds (the
    README example's ./models and ./out) cannot change a result, and a test that writes into
    its working directory (a default output such as ./renders) fails instead of leaving debris."""
    folder = tmp_path_factory.mktemp("cwd")
    monkeypatch.chdir(folder)
    yield folder
    left = sorted(path.name for path in folder.iterdir())
    assert not left, f"the test wrote into its working directory: {left}"


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

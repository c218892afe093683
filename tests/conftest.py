"""Shared fixtures. Tests need no network and no GPU; models are tiny and built in-process."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    """Tiny random GLIGEN, CLIP and SAM saved with ``save_pretrained`` (loaded back for real)."""
    from acp.testing import save_tiny_models

    return save_tiny_models(tmp_path_factory.mktemp("tiny-models"))

"""The suite's own guarantees (issue 17): a result depends neither on the working directory the
suite is started from (after the README's example wrote ./models/clip, a test expecting no such
folder failed) nor on how busy the machine is."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import settings

ROOT = Path(__file__).resolve().parent.parent


def test_a_test_starts_in_an_empty_folder_outside_the_checkout() -> None:
    here = Path.cwd()
    assert list(here.iterdir()) == []
    assert ROOT not in (here, *here.parents)


def test_property_tests_have_no_deadline() -> None:
    assert settings().deadline is None


def test_the_per_test_timeout_is_a_backstop_for_a_loaded_machine(pytestconfig: pytest.Config) -> None:
    """The slowest tests (three `acp generate` processes in one) take minutes on a busy 2-core
    machine; the timeout only catches a hang."""
    assert float(pytestconfig.getini("timeout")) >= 900

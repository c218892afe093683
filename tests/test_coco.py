"""One COCO reader (acp.coco): every command that reads a COCO file whole says the same about
the same broken file."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from acp.errors import InputError


def _readers() -> list[tuple[str, Callable[[Path], Any]]]:
    from acp.coco import read_coco_file
    from acp.export.merge import read_instances
    from acp.score.bank import Bank

    return [("read_coco_file", read_coco_file), ("bank build", lambda p: Bank.from_coco([p])),
            ("exports", read_instances)]


@pytest.mark.parametrize("text", ['{"images": [], "annotations": []}', "[1, 2]", '{"images": {}, '
                                  '"annotations": [], "categories": []}'])
@pytest.mark.parametrize(("name", "read"), _readers(), ids=[n for n, _ in _readers()])
def test_every_reader_refuses_a_file_that_is_no_coco_alike(
    name: str, read: Callable[[Path], Any], text: str, tmp_path: Path
) -> None:
    path = tmp_path / "instances.json"
    path.write_text(text)
    with pytest.raises(InputError) as error:
        read(path)
    assert str(error.value) == (f"{path}: not a COCO instances file; expected a COCO-format JSON object "
                                "with 'images', 'annotations' and 'categories' lists")


@pytest.mark.parametrize(("name", "read"), _readers(), ids=[n for n, _ in _readers()])
def test_every_reader_names_bad_json_alike(name: str, read: Callable[[Path], Any], tmp_path: Path) -> None:
    path = tmp_path / "instances.json"
    path.write_text(json.dumps({"images": [], "annotations": [], "categories": []})[:-3])
    with pytest.raises(InputError, match=r"^.*instances\.json: not valid JSON \(") as error:
        read(path)
    assert "\n" not in str(error.value)

"""``acp preview``: layout drawings, overlays on rendered candidates, contact sheets; no model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import Result
from PIL import Image
from typer.testing import CliRunner

from acp.cli import app
from acp.jsonl import dumps
from acp.render.preview import TILE, category_colour, draw_layout
from acp.schema import Candidate, ScenePlan

DOG_BOX = [0.25, 0.25, 0.5, 0.25]  # x 128..384, y 128..256 on 512 x 512


def plan_record(plan_id: str, *categories: str) -> dict[str, object]:
    objects = [
        {"id": i, "category": c, "description": f"a {c}", "bbox": [0.1 + 0.2 * i, 0.6, 0.15, 0.2]}
        for i, c in enumerate(categories)
    ]
    if categories and categories[0] == "dog":
        objects[0]["bbox"] = DOG_BOX
    return {"id": plan_id, "caption": f"A scene with {', '.join(categories) or 'nothing'}.",
            "objects": objects, "planner": "heuristic"}


@pytest.fixture
def plans(tmp_path: Path) -> Path:
    records = [plan_record("p1", "dog", "frisbee"), plan_record("p2", "dog", "cat", "bench"),
               plan_record("p3")]
    path = tmp_path / "plans.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def invoke(*args: object) -> Result:
    return CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)


def rgb(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def test_colour_depends_only_on_the_category() -> None:
    assert category_colour("dog") == category_colour("Dogs")
    colours = {category_colour(c) for c in ("dog", "cat", "frisbee", "bench", "person", "car")}
    assert len(colours) == 6


def test_layout_previews(plans: Path, tmp_path: Path) -> None:
    result = invoke("preview", plans, "-o", tmp_path / "out")
    assert result.exit_code == 0, result.output
    assert "3 drawings in 3 files" in result.stdout
    first, second = rgb(tmp_path / "out" / "p1.png"), rgb(tmp_path / "out" / "p2.png")
    assert first.shape[1] == 512 and first.shape[0] > 512  # caption strip under the 512 canvas
    dog = category_colour("dog")
    # Box outline: bottom edge of the dog box, away from the label; same colour in both plans.
    assert tuple(first[255, 300]) == dog and tuple(second[255, 300]) == dog
    assert tuple(first[200, 300]) == (245, 245, 245)  # inside the box: untouched canvas
    assert (rgb(tmp_path / "out" / "p3.png")[:512] == 245).all()  # no objects, no boxes


def test_overlay_draws_over_rendered_candidates(plans: Path, tmp_path: Path) -> None:
    renders = tmp_path / "renders"
    (renders / "p1").mkdir(parents=True)
    lines = []
    for index in range(2):
        Image.new("RGB", (128, 128), (0, 0, index * 100)).save(renders / "p1" / f"{index}.png")
        lines.append(dumps(Candidate(
            plan_id="p1", index=index, seed=index, path=f"p1/{index}.png", model="m", steps=2,
            guidance=7.5, beta=0.3, width=128, height=128, prompt="x",
        )))
    lines.append(lines[0].replace('"p1"', '"elsewhere"').replace("p1/0", "p1/1"))
    (renders / "manifest.jsonl").write_text("\n".join(lines) + "\n")
    result = invoke("preview", plans, "-o", tmp_path / "out", "--overlay", renders)
    assert result.exit_code == 0, result.output
    assert "2 drawings" in result.stdout and "1 rendered candidates have no plan" in result.stdout
    drawn = rgb(tmp_path / "out" / "p1" / "1.png")
    assert drawn.shape == (128, 128, 3)
    assert tuple(drawn[63, 60]) == category_colour("dog")  # bottom edge of the dog box (y 32..64)
    assert tuple(drawn[56, 60]) == (0, 0, 100)  # inside, below the label: the rendered pixels


def test_grid_writes_contact_sheets(plans: Path, tmp_path: Path) -> None:
    result = invoke("preview", plans, "-o", tmp_path / "out", "--grid")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["acp-owned.json", "sheet-0001.png"]
    with Image.open(tmp_path / "out" / "sheet-0001.png") as sheet:
        assert sheet.size == (3 * TILE, TILE)  # one row of three layouts


def test_preview_never_draws_over_a_render_folder_or_a_user_s_files(plans: Path, tmp_path: Path) -> None:
    """-o the render folder itself drew over the rendered candidates; -o a folder of the user's
    overwrote files named like drawings. Either is refused, untouched; a preview's own folder is
    replaced, files of the user's beside the drawings kept."""
    renders = tmp_path / "renders"
    (renders / "p1").mkdir(parents=True)
    Image.new("RGB", (128, 128), (0, 0, 100)).save(renders / "p1" / "0.png")
    (renders / "manifest.jsonl").write_text(dumps(Candidate(
        plan_id="p1", index=0, seed=0, path="p1/0.png", model="m", steps=2, guidance=7.5, beta=0.3,
        width=128, height=128, prompt="x")) + "\n")
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "sheet-0001.png").write_bytes(b"my drawing")
    for out, options in ((renders, ["--overlay", renders]), (mine, ["--grid"])):
        before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
        result = invoke("preview", plans, "-o", out, *options)
        assert result.exit_code == 1 and "did not write" in result.stderr, result.output
        assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    out = tmp_path / "out"
    assert invoke("preview", plans, "-o", out).exit_code == 0
    (out / "notes.txt").write_text("keep me")
    assert invoke("preview", plans, "-o", out, "--grid").exit_code == 0
    assert sorted(p.name for p in out.iterdir()) == ["acp-owned.json", "notes.txt", "sheet-0001.png"]


def test_preview_reports_bad_lines_and_missing_render_folder(plans: Path, tmp_path: Path) -> None:
    with plans.open("a") as handle:
        handle.write("[1, 2]\n")
    result = invoke("preview", plans, "-o", tmp_path / "out", "--overlay", tmp_path / "nothing")
    assert result.exit_code == 1
    assert f"{plans}:4: skipped: not a JSON object" in result.stderr
    assert "acp: error: no manifest.jsonl in" in result.stderr


def test_draw_layout_leaves_the_given_image_alone() -> None:
    plan = ScenePlan.model_validate(plan_record("p", "dog"))
    image = Image.new("RGB", (32, 32), (9, 9, 9))
    drawn = draw_layout(plan, image)
    assert drawn is not image and image.getpixel((8, 15)) == (9, 9, 9)
    assert category_colour("dog") in {tuple(p) for p in np.asarray(drawn).reshape(-1, 3)}  # on the copy


def test_preview_shows_its_progress(plans: Path, tmp_path: Path) -> None:
    """A bar over the plans (1,000 plans take seconds); none with --no-progress."""
    shown = CliRunner().invoke(app, ["preview", str(plans), "-o", str(tmp_path / "a")])
    assert shown.exit_code == 0, shown.output
    assert "preview: 100%" in shown.stderr and "3/3" in shown.stderr
    quiet = CliRunner().invoke(app, ["preview", str(plans), "-o", str(tmp_path / "b"), "--no-progress"])
    assert quiet.exit_code == 0 and quiet.stderr == ""

"""Inputs that used to pass silently: mismatched plans, out-of-range options, spilled masks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from acp.cli import app
from acp.errors import InputError
from acp.segment import decode_mask, encode_masks
from tests.test_clis_image import tiny_clip_dir_fixture  # noqa: F401  (provides tiny_clip_dir)
from tests.test_score_cli import PLANS, write_plans, write_renders

runner = CliRunner()


def score_candidates(renders: Path, plans: Path, out: Path, clip: Path, *extra: str):
    return runner.invoke(app, ["score", "candidates", str(renders), "--plans", str(plans), "-o", str(out),
                               "--clip-model", str(clip), "--no-progress", *extra])


def test_score_candidates_refuses_plans_the_renders_were_not_made_from(
    tmp_path: Path, tiny_clip_dir: Path
) -> None:
    renders = write_renders(tmp_path / "renders", {"p1": 2, "p2": 1})
    other = tmp_path / "other.jsonl"
    other.write_text("".join(json.dumps({**p, "caption": "a quite different scene"}) + "\n" for p in PLANS))
    out = tmp_path / "scores.jsonl"
    result = score_candidates(renders, other, out, tiny_clip_dir)
    assert result.exit_code == 1 and result.stderr.count("acp: error: ") == 1
    assert "does not match the renders" in result.stderr and "3 candidates" in result.stderr
    assert not out.exists()
    # Same captions, other objects: the box phrases give it away.
    swapped = tmp_path / "swapped.jsonl"
    records = [dict(p) for p in PLANS]
    records[0]["objects"] = [{**o, "description": "a red bus"} for o in records[0]["objects"]]  # type: ignore[union-attr]
    swapped.write_text("".join(json.dumps(r) + "\n" for r in records))
    lines = [json.loads(x) for x in (renders / "manifest.jsonl").read_text().splitlines()]
    for line in lines:
        if line["plan_id"] == "p1":
            line["phrases"] = ["a photo of a cat", "a photo of a dog"]
    (renders / "manifest.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    assert score_candidates(renders, write_plans(tmp_path / "plans.jsonl"), out, tiny_clip_dir,
                            "--min-clis-i", "0").exit_code == 0
    out.unlink()
    result = score_candidates(renders, swapped, out, tiny_clip_dir)
    assert result.exit_code == 1 and "box phrases" in result.stderr
    # None of the candidates' plans in the file at all.
    unrelated = tmp_path / "unrelated.jsonl"
    unrelated.write_text(json.dumps({**PLANS[0], "id": "zz"}) + "\n")
    result = score_candidates(renders, unrelated, out, tiny_clip_dir)
    assert result.exit_code == 1 and "none of their 3 candidates" in result.stderr


@pytest.mark.parametrize(
    ("command", "option", "value"),
    [
        (["score", "candidates", "r", "--plans", "p", "-o", "o"], "--min-clis-i", "-5"),
        (["score", "candidates", "r", "--plans", "p", "-o", "o"], "--min-clis-l", "150"),
        (["score", "candidates", "r", "--plans", "p", "-o", "o"], "--batch-size", "100000"),
        (["score", "dataset", "a.json", "--images", "i", "-o", "o"], "--keep-above", "101"),
        (["render", "plans.jsonl"], "-k", "10000"),
        (["generate", "--concepts", "dog"], "-k", "33"),
        (["generate", "--concepts", "dog"], "--min-clis-i", "-1"),
    ],
)
def test_out_of_range_options_are_refused_before_any_work(
    tmp_path: Path, command: list[str], option: str, value: str
) -> None:
    result = runner.invoke(app, [*command, option, value])
    assert result.exit_code == 2
    assert "Invalid value" in result.output and option.lstrip("-") in result.output


def test_the_library_caps_candidates_too(tmp_path: Path) -> None:
    from acp.render.folder import render_to_folder
    from acp.render.gligen import RenderSettings

    with pytest.raises(InputError, match=r"candidates must be 1\.\.32, got 10000"):
        render_to_folder([], tmp_path / "r", RenderSettings(model="m"), candidates=10000)
    assert not (tmp_path / "r").exists()


def test_a_mask_is_cut_to_its_box_and_a_thin_one_is_flagged() -> None:
    masks = np.zeros((2, 64, 96), dtype=bool)
    masks[0] = True  # SAM spilled over the whole image
    masks[1, 20, 20:22] = True  # two stray pixels in a 30x30 box
    box = [10.5, 8.0, 21.0, 18.0]  # 10.5 x 10 px
    results = encode_masks(masks, [0.9, 0.8], [box, [10, 10, 40, 40]])
    spilled = decode_mask(results[0].rle)
    assert results[0].area == spilled.sum() == 11 * 10  # every pixel the box touches, no more
    assert spilled[8:18, 10:21].all()
    assert results[0].problem is None and results[0].warning is None
    assert results[1].problem is None and results[1].area == 2
    assert results[1].warning is not None and "under 5%" in results[1].warning


@pytest.mark.parametrize("device", ["cuda:1", "cuda", "gpu"])
@pytest.mark.parametrize("command", [["render", "plans.jsonl"], ["generate", "--concepts", "dog"]])
def test_every_command_takes_the_same_device_and_refuses_a_missing_one_in_one_line(
    tmp_path: Path, command: list[str], device: str
) -> None:
    plans = tmp_path / "plans.jsonl"
    plans.write_text(json.dumps(PLANS[0]) + "\n")
    args = [str(plans)] if command[0] == "render" else command[1:]
    result = runner.invoke(app, [command[0], *args, "-o", str(tmp_path / "out"), "--device", device,
                                 "--model", str(tmp_path / "no-model")])
    assert result.exit_code == 1, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("acp: error: ")]
    assert len(errors) == 1 and errors[0].startswith("acp: error: --device ") and device in errors[0]
    assert not (tmp_path / "out").exists()

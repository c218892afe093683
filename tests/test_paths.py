"""Paths read from input files stay inside their root: for deleting, reading and writing."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from acp.cli import app
from acp.errors import InputError
from acp.export import merge_coco
from acp.paths import UnsafePathError, inside, path_problem
from acp.score.dataset import score_dataset
from acp.score.image import ImageScorer
from tests.test_clis_image import tiny_clip_dir_fixture  # noqa: F401  (provides tiny_clip_dir)
from tests.test_merge import _real_set, _synthetic_set
from tests.test_render import plan_record, render, write_plans
from tests.test_score_cli import write_plans as write_score_plans
from tests.test_score_cli import write_renders

runner = CliRunner()


def _png(path: Path, seed: int = 0, size: int = 64) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 255, (size, size, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


@pytest.mark.parametrize(
    ("name", "ok"),
    [
        ("a.png", True),
        ("p1/0.png", True),
        ("./a.png", True),
        ("a..b.png", True),
        ("../a.png", False),
        ("p1/../../a.png", False),
        ("/etc/passwd", False),
        ("C:/x.png", False),
        ("p1\\..\\a.png", False),
        ("a\x00.png", False),
        ("", False),
        (7, False),
    ],
)
def test_path_problem_judges_the_text(name: object, ok: bool) -> None:
    assert (path_problem(name) is None) is ok


def test_inside_refuses_a_link_that_leads_out(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    (tmp_path / "secret.txt").write_text("x")
    (root / "out.png").symlink_to(tmp_path / "secret.txt")
    (root / "sub" / "dir").symlink_to(tmp_path)
    (root / "in.png").symlink_to(root / "sub")
    assert inside(root, "in.png") == root / "in.png"  # a link that stays inside is fine
    for name in ("out.png", "sub/dir/secret.txt", "sub/dir/missing.txt"):
        with pytest.raises(UnsafePathError, match="symbolic link"):
            inside(root, name)


def test_render_force_deletes_nothing_outside_its_folder(
    tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    plans = write_plans(tmp_path / "plans.jsonl", [plan_record("two")])
    output = tmp_path / "renders"
    assert render(plans, output, tiny_models["gligen"], "-k", 1).exit_code == 0
    (line,) = (output / "manifest.jsonl").read_text().splitlines()
    victims = [tmp_path / "victim.txt", tmp_path / "absolute.txt", tmp_path / "linked.txt"]
    for victim in victims:
        victim.write_text("keep me")
    (output / "two" / "link.png").symlink_to(victims[2])
    hostile = [
        {**json.loads(line), "index": 1, "path": "../victim.txt"},
        {**json.loads(line), "index": 2, "path": str(victims[1])},
        {**json.loads(line), "index": 3, "path": "two/link.png"},
    ]
    with open(output / "manifest.jsonl", "a") as handle:
        handle.write("".join(json.dumps(h) + "\n" for h in hostile))
    result = render(plans, output, tiny_models["gligen"], "-k", 1, "--seed", 3, "--force")
    assert result.exit_code == 0, result.output
    assert all(v.read_text() == "keep me" for v in victims)
    assert [json.loads(x)["path"] for x in (output / "manifest.jsonl").read_text().splitlines()] == [
        "two/0.png"
    ]


def _coco(path: Path, file_names: list[str]) -> Path:
    images = [{"id": k + 1, "file_name": name} for k, name in enumerate(file_names)]
    annotations = [
        {"id": k + 1, "image_id": k + 1, "category_id": 1, "bbox": [4, 4, 20, 20]} for k in range(len(images))
    ]
    path.write_text(json.dumps({"images": images, "annotations": annotations,
                                "categories": [{"id": 1, "name": "dog"}]}))
    return path


def test_score_dataset_reads_no_image_outside_the_images_folder(tmp_path: Path, tiny_clip_dir: Path) -> None:
    images = tmp_path / "data" / "images"
    _png(images / "ok.png")
    _png(tmp_path / "secret.png", seed=1)  # a real image outside: it must not be read
    (images / "link.png").symlink_to(tmp_path / "secret.png")
    names = ["ok.png", "../../secret.png", "../../no-such.png", str(tmp_path / "secret.png"), "link.png"]
    coco = _coco(tmp_path / "data" / "instances.json", names)
    scorer = ImageScorer.from_pretrained(tiny_clip_dir, device="cpu")
    report = tmp_path / "report"
    score_dataset(coco, images, report, image_scorer=scorer)
    assert [i["file_name"] for i in json.loads((report / "images.json").read_text())] == ["ok.png"]
    reasons = {f["item"]: f["reason"] for f in json.loads((report / "failures.json").read_text())}
    assert set(reasons) == {"image 2", "image 3", "image 4", "image 5"}
    assert "climbs out of its folder" in reasons["image 2"] and "symbolic link" in reasons["image 5"]
    # An existing and a missing target get the same answer: no message tells which files exist.
    assert reasons["image 2"].replace("secret", "X") == reasons["image 3"].replace("no-such", "X")
    assert all("not found" not in r and "decode" not in r for r in reasons.values())


def test_score_candidates_reads_no_image_outside_the_render_folder(
    tmp_path: Path, tiny_clip_dir: Path
) -> None:
    plans = write_score_plans(tmp_path / "plans.jsonl")
    renders = write_renders(tmp_path / "renders", {"p1": 1})
    _png(tmp_path / "outside.png", seed=2)
    first = json.loads((renders / "manifest.jsonl").read_text().splitlines()[0])
    with open(renders / "manifest.jsonl", "a") as handle:
        handle.write(json.dumps({**first, "index": 1, "path": "../outside.png"}) + "\n")
    out = tmp_path / "scores.jsonl"
    result = runner.invoke(app, ["score", "candidates", str(renders), "--plans", str(plans), "-o", str(out),
                                 "--clip-model", str(tiny_clip_dir), "--min-clis-i", "0", "--no-progress"])
    assert "climbs out of its folder" in result.output
    scored = [json.loads(x) for x in out.read_text().splitlines()]
    assert [(s["plan_id"], s["index"]) for s in scored] == [("p1", 0)]


def test_merge_refuses_input_paths_that_leave_their_images_folder(tmp_path: Path) -> None:
    synthetic = _synthetic_set(tmp_path / "syn")
    real = _real_set(tmp_path / "real", images_dir="images", annotations="instances.json")
    data = json.loads(real.read_text())
    _png(tmp_path / "private.jpg")
    data["images"][1]["file_name"] = "../../private.jpg"
    hostile = tmp_path / "real" / "hostile.json"
    hostile.write_text(json.dumps(data))
    output = tmp_path / "merged.json"
    with pytest.raises(UnsafePathError, match=r"images\[1\]\.file_name: .* climbs out"):
        merge_coco(synthetic, hostile, output)
    # A link planted in the images folder is refused as well.
    data["images"][1]["file_name"] = "planted.jpg"
    (tmp_path / "real" / "images" / "planted.jpg").symlink_to(tmp_path / "private.jpg")
    hostile.write_text(json.dumps(data))
    with pytest.raises(UnsafePathError, match="symbolic link"):
        merge_coco(synthetic, hostile, output)
    assert not output.exists()
    result = runner.invoke(app, ["export", "merge", str(synthetic), str(hostile), "-o", str(output),
                                 "--allow-outside-paths"])
    assert result.exit_code == 0, result.output
    assert json.loads(output.read_text())["images"][1]["file_name"] == "real/images/planted.jpg"


def test_merge_refuses_to_replace_an_input_without_overwrite(tmp_path: Path) -> None:
    synthetic = _synthetic_set(tmp_path / "syn")
    real = _real_set(tmp_path / "real", images_dir="images", annotations="instances.json")
    before = real.read_bytes()
    for target in (real, tmp_path / "real" / ".." / "real" / "instances.json", synthetic):
        result = runner.invoke(app, ["export", "merge", str(synthetic), str(real), "-o", str(target)])
        assert result.exit_code == 1 and result.stderr.count("\n") == 1
        assert "input" in result.stderr and "--overwrite" in result.stderr
    assert real.read_bytes() == before
    link = tmp_path / "alias.json"
    os.symlink(real, link)
    with pytest.raises(InputError, match="REAL input"):
        merge_coco(synthetic, real, link)


def test_score_dataset_cli_answers_alike_for_existing_and_missing_outside_files(
    tmp_path: Path, tiny_clip_dir: Path
) -> None:
    images = tmp_path / "data" / "images"
    _png(images / "ok.png")
    _png(tmp_path / "exists.png")
    outputs = []
    for name in ("exists", "absent"):
        coco = _coco(tmp_path / "data" / f"{name}.json", [f"../../{name}.png"])
        result = runner.invoke(app, ["score", "dataset", str(coco), "--images", str(images), "-o",
                                     str(tmp_path / f"report-{name}"), "--clip-model", str(tiny_clip_dir),
                                     "--no-progress"])
        outputs.append(result.output.replace(name, "X"))
    assert outputs[0] == outputs[1] and "climbs out of its folder" in outputs[0]

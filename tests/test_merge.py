"""``acp export merge``: a synthetic COCO set merged into a real one."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO
from typer.testing import CliRunner

from acp.errors import InputError
from acp.export import CategorySet, CocoWriter, ImageProvenance, Instance, merge_coco

REAL_CATEGORIES = [
    {"id": 1, "name": "person", "supercategory": "person"},
    {"id": 18, "name": "dog", "supercategory": "animal"},
    {"id": 63, "name": "couch", "supercategory": "furniture"},
    {"id": 90, "name": "toothbrush", "supercategory": "indoor"},
]


def _save(path: Path, seed: int, size: tuple[int, int] = (40, 30)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)


def _real_set(root: Path, images_dir: str = "train", annotations: str = "annotations/instances.json") -> Path:
    """A COCO-style real set: ids with gaps, images in their own folder, a license, an extra key."""
    images = []
    for image_id, name in ((1, "000001.jpg"), (7, "sub/000007.jpg"), (500, "000500.jpg")):
        _save(root / images_dir / name, image_id)
        images.append({"id": image_id, "file_name": name, "width": 40, "height": 30, "license": 2})
    anns = [
        {"id": 3, "image_id": 1, "category_id": 18, "bbox": [1, 1, 10, 10], "area": 100, "iscrowd": 0},
        {"id": 4, "image_id": 7, "category_id": 1, "bbox": [5, 5, 10, 20], "area": 200, "iscrowd": 0},
        {"id": 900, "image_id": 500, "category_id": 90, "bbox": [0, 0, 4, 4], "area": 16, "iscrowd": 0},
    ]
    data = {
        "info": {"description": "real"},
        "licenses": [{"id": 2, "name": "CC BY 4.0", "url": "https://creativecommons.org/licenses/by/4.0/"}],
        "categories": REAL_CATEGORIES,
        "images": images,
        "annotations": anns,
        "split": "train",
    }
    path = root / annotations
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path


def _synthetic_set(root: Path, concepts: tuple[str, ...] = ("dog", "puppy", "unicorn", "Couches")) -> Path:
    categories = CategorySet.from_concepts(concepts)
    with CocoWriter(root, categories) as writer:
        for i in range(4):
            image = Image.fromarray(np.full((30, 40, 3), 40 * i, dtype=np.uint8))
            instances = [Instance(category_id=(i % len(categories)) + 1, bbox=(2.0, 3.0, 10.0, 8.0))]
            if i == 0:
                instances.append(Instance(category_id=len(categories), bbox=(20.0, 10.0, 5.0, 5.0)))
            provenance = ImageProvenance(
                plan_id=f"plan-{i}", candidate=0, caption="c", seed=i, planner="heuristic",
                render_model="tiny", steps=2, guidance=7.5, beta=0.3, prompt="c",
            )
            writer.add_image(f"plan-{i}", image, instances, provenance)
    return root / "annotations.json"


@pytest.fixture
def sets(tmp_path: Path) -> tuple[Path, Path, Path]:
    data = tmp_path / "data"
    return data, _synthetic_set(data / "synthetic"), _real_set(data / "real")


def _ids_unique(data: dict[str, Any]) -> None:
    for key in ("images", "annotations", "categories"):
        ids = [x["id"] for x in data[key]]
        assert len(ids) == len(set(ids)), key


def test_merge_unifies_categories_and_keeps_real_ids(sets: tuple[Path, Path, Path]) -> None:
    data, synthetic, real = sets
    output = data / "merged.json"
    summary = merge_coco(synthetic, real, output, real_images=data / "real" / "train")
    merged = json.loads(output.read_text())
    real_data, syn_data = json.loads(real.read_text()), json.loads(synthetic.read_text())
    _ids_unique(merged)

    names = {c["id"]: c["name"] for c in merged["categories"]}
    assert merged["categories"][: len(REAL_CATEGORIES)] == REAL_CATEGORIES  # real ids win
    assert names[91] == "unicorn" and len(names) == 5  # only the unknown one is added
    assert summary.matched == {"dog": "dog", "puppy": "dog", "Couches": "couch"}
    assert summary.added == ["unicorn"]
    syn_names = {c["id"]: c["name"] for c in syn_data["categories"]}
    expected = {"dog": 18, "puppy": 18, "Couches": 63, "unicorn": 91}
    synthetic_anns = merged["annotations"][len(real_data["annotations"]):]
    assert [a["category_id"] for a in synthetic_anns] == [
        expected[syn_names[a["category_id"]]] for a in syn_data["annotations"]
    ]

    # Real records unchanged apart from paths; synthetic ids come after the largest real id.
    assert merged["annotations"][:3] == real_data["annotations"]
    assert [i["id"] for i in merged["images"]] == [1, 7, 500, 501, 502, 503, 504]
    assert [a["id"] for a in synthetic_anns] == [901, 902, 903, 904, 905]
    assert [a["image_id"] for a in synthetic_anns] == [501, 501, 502, 503, 504]
    assert merged["split"] == "train" and merged["info"] == {"description": "real"}
    assert [x["id"] for x in merged["licenses"]] == [2, 3]
    assert {i["license"] for i in merged["images"]} == {2, 3}
    assert [i["acp"]["seed"] for i in merged["images"][3:]] == [0, 1, 2, 3]  # provenance survives

    # Paths: relative to merged.json's folder, no "..", every image found from there.
    assert [i["file_name"] for i in merged["images"][:2]] == [
        "real/train/000001.jpg", "real/train/sub/000007.jpg"
    ]
    assert merged["images"][3]["file_name"] == "synthetic/images/plan-0.jpg"
    assert summary.outside_paths == 0
    assert all((data / i["file_name"]).is_file() for i in merged["images"])
    coco = COCO(str(output))
    assert len(coco.getImgIds()) == 7 and len(coco.getAnnIds()) == 8


def test_merged_file_loads_in_supervision(sets: tuple[Path, Path, Path]) -> None:
    import supervision as sv

    data, synthetic, real = sets
    merge_coco(synthetic, real, data / "merged.json", real_images=data / "real" / "train")
    dataset = sv.DetectionDataset.from_coco(
        images_directory_path=str(data), annotations_path=str(data / "merged.json")
    )
    assert len(dataset) == 7 and "unicorn" in dataset.classes
    assert sum(len(d) for _, _, d in dataset) == 8


def test_paths_outside_the_merged_folder_stay_valid(sets: tuple[Path, Path, Path]) -> None:
    data, synthetic, real = sets
    output = data / "deep" / "er" / "merged.json"
    with pytest.raises(InputError, match="leave the merged file's folder"):
        merge_coco(synthetic, real, output, real_images=data / "real" / "train")
    assert not output.exists()
    summary = merge_coco(synthetic, real, output, real_images=data / "real" / "train",
                         allow_outside_paths=True)
    merged = json.loads(output.read_text())
    assert summary.outside_paths == 7
    assert merged["images"][0]["file_name"] == "../../real/train/000001.jpg"
    assert all((output.parent / i["file_name"]).resolve().is_file() for i in merged["images"])


def test_default_image_roots_and_replacing_an_input(tmp_path: Path) -> None:
    # Real set in the acp layout (images/ next to the json) and one with images beside the json.
    synthetic = _synthetic_set(tmp_path / "syn")
    real = _real_set(tmp_path / "real", images_dir="images", annotations="instances.json")
    flat = _real_set(tmp_path / "flat", images_dir=".", annotations="instances.json")
    merge_coco(synthetic, real, tmp_path / "a.json")
    merged = json.loads((tmp_path / "a.json").read_text())
    assert merged["images"][0]["file_name"] == "real/images/000001.jpg"
    with pytest.raises(InputError, match="is the REAL input"):
        merge_coco(synthetic, flat, flat)
    merge_coco(synthetic, flat, flat, overwrite=True, allow_outside_paths=True)  # replaces the input
    merged = json.loads(flat.read_text())
    assert merged["images"][0]["file_name"] == "000001.jpg"
    assert merged["images"][-1]["file_name"] == "../syn/images/plan-3.jpg"
    assert all((flat.parent / i["file_name"]).is_file() for i in merged["images"])


def test_an_existing_file_is_replaced_only_when_an_earlier_merge_wrote_it(tmp_path: Path) -> None:
    """-o thesis.tex was overwritten with the merge; now a file without the merge's mark at its
    start needs --overwrite, and a rerun into its own output goes on replacing it."""
    synthetic = _synthetic_set(tmp_path / "syn")
    real = _real_set(tmp_path / "real", images_dir="images", annotations="instances.json")
    theirs = tmp_path / "thesis.tex"
    theirs.write_text("\\documentclass{article}")
    from acp.cli import app

    result = CliRunner().invoke(app, ["export", "merge", str(synthetic), str(real), "-o", str(theirs)])
    assert theirs.read_text() == "\\documentclass{article}"
    assert result.exit_code == 1 and "is not a file acp export merge wrote" in result.output
    assert len(result.output.strip().splitlines()) == 1
    merged = tmp_path / "merged.json"
    merge_coco(synthetic, real, merged)
    assert next(iter(json.loads(merged.read_text()))) == "acp_merge"
    merge_coco(synthetic, real, merged)  # a rerun
    merge_coco(merged, real, tmp_path / "again.json")  # a merge as input: its mark is not copied
    assert list(json.loads((tmp_path / "again.json").read_text())).count("acp_merge") == 1
    merge_coco(synthetic, real, theirs, overwrite=True)
    assert json.loads(theirs.read_text())["images"]


def test_ambiguous_category_is_an_error(tmp_path: Path) -> None:
    synthetic = _synthetic_set(tmp_path / "syn", concepts=("bow",))
    real = _real_set(tmp_path / "real", images_dir="images", annotations="instances.json")
    data = json.loads(real.read_text())
    data["categories"] += [{"id": 100, "name": "bow_(weapon)"}, {"id": 101, "name": "bow_(ribbon)"}]
    real.write_text(json.dumps(data))
    with pytest.raises(InputError, match=r"category 'bow' is ambiguous in .*'bow_\(weapon\)'"):
        merge_coco(synthetic, real, tmp_path / "m.json")


def _breakers() -> list[tuple[str, Any, str]]:
    def drop(key: str) -> Any:
        return lambda d: {k: v for k, v in d.items() if k != key}

    def edit(function: Any) -> Any:
        def apply(d: dict[str, Any]) -> dict[str, Any]:
            function(d)
            return d

        return apply

    return [
        ("no annotations", drop("annotations"), "not a COCO instances file"),
        ("list", lambda d: [d], "not a COCO instances file"),
        ("image id twice", edit(lambda d: d["images"].append(dict(d["images"][0]))),
         "image id 1 appears twice"),
        ("string id", edit(lambda d: d["images"][0].update(id="1")), r"images\[0\] needs an integer 'id'"),
        ("annotation id twice", edit(lambda d: d["annotations"].append(dict(d["annotations"][0]))),
         "annotation id 3 appears twice"),
        ("unknown image", edit(lambda d: d["annotations"][0].update(image_id=77)), "names image 77"),
        ("unknown category", edit(lambda d: d["annotations"][0].update(category_id=5)), "names category 5"),
        ("missing image file", edit(lambda d: d["images"][1].update(file_name="gone.jpg")),
         "1 of 3 images missing under .*first: 'gone.jpg'"),
        ("bad category", edit(lambda d: d["categories"].append({"id": 2})),
         "integer 'id' and a non-empty 'name'"),
    ]


@pytest.mark.parametrize(("label", "breaker", "expected"), _breakers(), ids=[b[0] for b in _breakers()])
def test_bad_real_input_is_one_line_naming_the_file(
    sets: tuple[Path, Path, Path], label: str, breaker: Any, expected: str
) -> None:
    data, synthetic, real = sets
    real.write_text(json.dumps(breaker(json.loads(real.read_text()))))
    with pytest.raises(InputError, match=expected) as error:
        merge_coco(synthetic, real, data / "merged.json", real_images=data / "real" / "train")
    assert str(real) in str(error.value) and "\n" not in str(error.value)
    assert not (data / "merged.json").exists()


def test_images_not_found_asks_for_the_folder(sets: tuple[Path, Path, Path]) -> None:
    data, synthetic, real = sets
    with pytest.raises(InputError, match=r"image '000001.jpg' not found under .* pass --real-images DIR"):
        merge_coco(synthetic, real, data / "merged.json")


def test_cli_merge(sets: tuple[Path, Path, Path]) -> None:
    from acp.cli import app
    from acp.cli import export as _export  # noqa: F401  (registers the sub-app until acp.cli imports it)

    data, synthetic, real = sets
    runner = CliRunner()
    output = data / "merged.json"
    images = ["--real-images", str(data / "real/train")]
    result = runner.invoke(app, ["export", "merge", str(synthetic), str(real), "-o", str(output), *images])
    assert result.exit_code == 0, result.output
    assert "3 real + 4 synthetic images, 8 annotations, 5 categories" in result.stdout
    assert "category 'puppy' merged into 'dog'" in result.stderr
    assert "categories new to" in result.stderr and "'unicorn'" in result.stderr
    assert len(json.loads(output.read_text())["images"]) == 7

    (data / "broken.json").write_text("{")
    broken = str(data / "broken.json")
    result = runner.invoke(app, ["export", "merge", str(synthetic), broken, "-o", str(output)])
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"acp: error: {broken}: not a readable JSON file")

"""The CLIS-L reference bank: built from COCO files the tests write, saved, loaded."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from acp.errors import InputError
from acp.score.bank import Bank


def write_coco(
    path: Path,
    images: list[list[tuple[str, list[float]]]],
    *,
    size: tuple[int, int] = (100, 100),
    extra_annotations: list[dict[str, Any]] | None = None,
    extra_images: list[dict[str, Any]] | None = None,
) -> Path:
    """A COCO file with one image per entry of ``images``: (category name, normalised xywh) pairs."""
    width, height = size
    names = sorted({name for objects in images for name, _ in objects})
    ids = {name: k + 1 for k, name in enumerate(names)}
    coco: dict[str, Any] = {
        "images": [{"id": i + 1, "width": width, "height": height} for i in range(len(images))],
        "annotations": [],
        "categories": [{"id": ids[n], "name": n} for n in names],
    }
    for i, objects in enumerate(images):
        for name, (x, y, w, h) in objects:
            coco["annotations"].append(
                {
                    "id": len(coco["annotations"]) + 1,
                    "image_id": i + 1,
                    "category_id": ids[name],
                    "bbox": [x * width, y * height, w * width, h * height],
                    "iscrowd": 0,
                }
            )
    coco["annotations"] += extra_annotations or []
    coco["images"] += extra_images or []
    path.write_text(json.dumps(coco))
    return path


def test_boxes_are_normalised_and_problem_annotations_skipped_and_counted(tmp_path: Path) -> None:
    bad: list[dict[str, Any]] = [
        {"id": 100, "image_id": 1, "category_id": 1, "bbox": [10, 10, 20, 20], "iscrowd": 1},
        {"id": 101, "image_id": 1, "category_id": 1, "bbox": [10, 10, 0, 20]},  # zero width
        {"id": 102, "image_id": 1, "category_id": 1, "bbox": [10, 10, float("nan"), 20]},
        {"id": 103, "image_id": 1, "category_id": 1, "bbox": [190, 10, 30, 20]},  # 20 px outside
        {"id": 104, "image_id": 1, "category_id": 99, "bbox": [10, 10, 20, 20]},
        {"id": 105, "image_id": 77, "category_id": 1, "bbox": [10, 10, 20, 20]},
        {"id": 106, "image_id": 1, "category_id": 1},  # no bbox
        {"id": 107, "image_id": 2, "category_id": 1, "bbox": [10, 10, 20, 20]},  # image has no size
        {"id": 108, "image_id": 1, "category_id": 1, "bbox": [-0.5, 50, 100.5, 20]},  # rounding: clipped
    ]
    path = write_coco(
        tmp_path / "a.json",
        [[("dog", [0.1, 0.2, 0.5, 0.25]), ("person", [0.5, 0.5, 0.2, 0.2])]],
        size=(200, 100),
        extra_annotations=bad,
        extra_images=[{"id": 2, "file_name": "x.jpg"}],
    )
    bank = Bank.from_coco([path])
    assert bank.summary["skipped"] == {
        "malformed": 1,
        "unknown_image": 1,
        "image_without_size": 1,
        "unknown_category": 1,
        "crowd": 1,
        "degenerate": 2,
        "out_of_image": 1,
    }
    assert bank.summary["boxes"] == 3
    dog = bank.category_by_key("dog")
    assert dog is not None
    rows = bank.boxes[bank.category_offsets[dog] : bank.category_offsets[dog + 1]]
    np.testing.assert_allclose(
        sorted(rows.tolist()), sorted([[0.1, 0.2, 0.5, 0.25], [0.0, 0.5, 0.5, 0.2]]), atol=1e-6
    )


def test_categories_merge_across_files_by_canonical_key(tmp_path: Path) -> None:
    a = write_coco(tmp_path / "a.json", [[("Dogs", [0.1, 0.1, 0.2, 0.2]), ("person", [0.5, 0.5, 0.2, 0.2])]])
    b = write_coco(tmp_path / "b.json", [[("puppy", [0.1, 0.1, 0.3, 0.3]), ("man", [0.6, 0.5, 0.2, 0.3])]])
    bank = Bank.from_coco([a, b])
    assert [c.key for c in bank.categories] == ["dog", "person"]
    assert set(bank.categories[0].aliases) == {"dog", "puppy"}
    assert bank.category_by_alias("puppy") == bank.category_by_key("dog")
    rows = bank.pair_rows(0, 1)
    assert rows.stop - rows.start == 2  # one pair per image, the files' images kept apart
    assert bank.summary["images"] == 2


def test_pairs_are_indexed_by_category_pair_with_the_lower_id_first(tmp_path: Path) -> None:
    path = write_coco(
        tmp_path / "a.json",
        [
            [("cat", [0.0, 0.0, 0.1, 0.1]), ("dog", [0.5, 0.5, 0.2, 0.2]), ("dog", [0.2, 0.6, 0.3, 0.3])],
            [("dog", [0.1, 0.1, 0.2, 0.2])],
        ],
    )
    bank = Bank.from_coco([path])
    cat, dog = bank.category_by_key("cat"), bank.category_by_key("dog")
    assert cat is not None and dog is not None
    assert bank.num_pairs == 3
    low, high = sorted((cat, dog))
    cross = bank.pair_rows(low, high)
    assert cross.stop - cross.start == 2
    assert (bank.category_offsets[low] <= bank.pair_a[cross]).all()
    assert (bank.pair_a[cross] < bank.category_offsets[low + 1]).all()
    same = bank.pair_rows(dog, dog)
    assert same.stop - same.start == 1
    assert bank.pair_rows(cat, cat) == slice(0, 0)


def test_caps_limit_pairs_per_image_and_per_category_pair(tmp_path: Path) -> None:
    boxes = [("dog", [0.1 * k, 0.1 * k, 0.05 + 0.01 * k, 0.05]) for k in range(5)]
    path = write_coco(tmp_path / "a.json", [boxes, boxes, boxes])
    bank = Bank.from_coco([path], max_objects_per_image=3)
    assert bank.summary["boxes_left_out_of_pairs"] == 6
    assert bank.num_pairs == 9  # 3 pairs among the 3 largest of each image
    widths = bank.boxes[np.concatenate([bank.pair_a, bank.pair_b]), 2]
    assert widths.min() == pytest.approx(0.07)  # the two smallest boxes never pair
    capped = Bank.from_coco([path], max_pairs_per_category_pair=4, max_boxes_per_category=5)
    assert capped.num_pairs == 4 and capped.summary["pairs_over_cap"] == 26
    rows = capped.prior_rows(0)
    assert rows.stop - rows.start == 5


def test_save_and_load_round_trip(tmp_path: Path) -> None:
    path = write_coco(tmp_path / "a.json", [[("dog", [0.1, 0.1, 0.2, 0.2]), ("cat", [0.4, 0.1, 0.3, 0.5])]])
    bank = Bank.from_coco([path])
    bank.save(tmp_path / "bank")
    loaded = Bank.load(tmp_path / "bank")
    assert loaded.categories == bank.categories
    for name in ("boxes", "category_offsets", "pair_a", "pair_b", "pair_keys", "pair_offsets"):
        np.testing.assert_array_equal(getattr(loaded, name), getattr(bank, name))
    assert loaded.summary == bank.summary
    index = json.loads((tmp_path / "bank" / "index.json").read_text())
    dog = next(c for c in index["categories"] if c["key"] == "dog")
    assert dog["boxes"] == 1 and dog["median_area"] == pytest.approx(0.04)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("not json", "not valid JSON"),
        ("[1, 2]", "expected a COCO-format JSON object"),
        ('{"images": [], "annotations": []}', "'categories' lists"),
        ('{"images": [], "annotations": [], "categories": [{"id": 1}]}', r"categories\[0\] has no"),
    ],
)
def test_bad_annotation_files_are_named_in_the_error(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(InputError, match=message) as error:
        Bank.from_coco([path])
    assert str(path) in str(error.value)


def test_missing_file_and_bad_bank_folders_raise_input_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="cannot read"):
        Bank.from_coco([tmp_path / "missing.json"])
    with pytest.raises(InputError, match="acp bank build"):
        Bank.load(tmp_path)
    path = write_coco(tmp_path / "a.json", [[("dog", [0.1, 0.1, 0.2, 0.2])]])
    Bank.from_coco([path]).save(tmp_path / "bank")
    index = tmp_path / "bank" / "index.json"
    index.write_text(index.read_text().replace('"format": 4', '"format": 99'))
    with pytest.raises(InputError, match="format 99, expected 4"):
        Bank.load(tmp_path / "bank")


def test_no_usable_box_is_an_error_naming_the_files(tmp_path: Path) -> None:
    crowd = write_coco(
        tmp_path / "crowd.json",
        [],
        extra_images=[{"id": 1, "width": 100, "height": 100}],
        extra_annotations=[{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 5, 5], "iscrowd": 1}],
    )
    empty = write_coco(tmp_path / "empty.json", [])
    with pytest.raises(InputError, match="no usable boxes found") as error:
        Bank.from_coco([crowd, empty])
    assert str(crowd) in str(error.value) and str(empty) in str(error.value)
    assert "\n" not in str(error.value)


def _two_banks(tmp_path: Path) -> tuple[Bank, Bank]:
    a = write_coco(tmp_path / "a.json", [[("dog", [0.1, 0.1, 0.2, 0.2]), ("cat", [0.4, 0.1, 0.3, 0.5])]])
    animals = [[("bird", [0.1, 0.1, 0.2, 0.2])], [("cow", [0.2, 0.2, 0.5, 0.5])]]
    b = write_coco(tmp_path / "b.json", animals * 3)
    return Bank.from_coco([a]), Bank.from_coco([b])


def test_rebuilding_over_a_bank_replaces_the_folder_whole(tmp_path: Path) -> None:
    old, new = _two_banks(tmp_path)
    folder = tmp_path / "out" / "bank"
    old.save(folder)
    new.save(folder)
    loaded = Bank.load(folder)
    assert [c.key for c in loaded.categories] == ["bird", "cow"]
    np.testing.assert_array_equal(loaded.boxes, new.boxes)
    assert sorted(p.name for p in folder.parent.iterdir()) == ["bank"]  # nothing left beside it


def test_a_rebuild_that_dies_leaves_the_old_bank_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os

    import acp.score.bank as bank_module

    old, new = _two_banks(tmp_path)
    folder = tmp_path / "bank"
    old.save(folder)

    real_fsync, synced = os.fsync, []

    def killed(fd: int) -> None:  # dies once the arrays are on disk, before the names are
        synced.append(fd)
        if len(synced) == 2:
            raise KeyboardInterrupt
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", killed)
    with pytest.raises(KeyboardInterrupt):
        new.save(folder)
    monkeypatch.undo()
    assert [c.key for c in Bank.load(folder).categories] == ["cat", "dog"]
    np.testing.assert_array_equal(Bank.load(folder).boxes, old.boxes)
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(".json")) == ["bank"]

    # Killed between the two renames: the old bank is put back.
    renames = []
    real_rename = bank_module.os.rename

    def rename(source: Path, target: Path) -> None:
        renames.append(target)
        if len(renames) == 2:
            raise KeyboardInterrupt
        real_rename(source, target)

    monkeypatch.setattr(bank_module.os, "rename", rename)
    with pytest.raises(KeyboardInterrupt):
        new.save(folder)
    monkeypatch.undo()
    np.testing.assert_array_equal(Bank.load(folder).boxes, old.boxes)


def test_a_kill_between_the_renames_is_explained_on_load(tmp_path: Path) -> None:
    old, _ = _two_banks(tmp_path)
    old.save(tmp_path / "left")
    (tmp_path / ".bank.old-x1y2").mkdir()
    (tmp_path / "left").rename(tmp_path / ".bank.old-x1y2" / "bank")
    with pytest.raises(InputError, match="rebuild was interrupted") as error:
        Bank.load(tmp_path / "bank")
    assert str(tmp_path / ".bank.old-x1y2" / "bank") in str(error.value)


def test_save_refuses_a_folder_holding_other_files(tmp_path: Path) -> None:
    bank, _ = _two_banks(tmp_path)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "precious.txt").write_text("keep me")
    with pytest.raises(InputError, match="holds other files"):
        bank.save(tmp_path / "data")
    assert (tmp_path / "data" / "precious.txt").read_text() == "keep me"
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["precious.txt"]


@pytest.mark.parametrize("names", [["index.json"], ["bank.npz"], ["bank.npz", "index.json"]])
def test_save_refuses_files_named_like_a_bank_s_that_are_not_one(tmp_path: Path, names: list[str]) -> None:
    """Only an index.json written by `acp bank build` makes a folder a bank to replace."""
    bank, _ = _two_banks(tmp_path)
    (tmp_path / "data").mkdir()
    for name in names:
        (tmp_path / "data" / name).write_text('{"mine": true}')
    with pytest.raises(InputError, match="so not a bank to replace"):
        bank.save(tmp_path / "data")
    left = {p.name: p.read_text() for p in (tmp_path / "data").iterdir()}
    assert left == dict.fromkeys(names, '{"mine": true}')
    bank.save(tmp_path / "bank")
    bank.save(tmp_path / "bank")  # over a bank: replaced


def test_saved_bank_modes_follow_the_umask(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import os
    import stat

    from acp import atomic

    bank, _ = _two_banks(tmp_path)
    monkeypatch.setattr(atomic, "UMASK", 0o022)  # read once at import
    previous = os.umask(0o022)
    try:
        bank.save(tmp_path / "bank")
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "bank").stat().st_mode) == 0o755  # mkdtemp alone gives 0700
    for name in ("bank.npz", "index.json"):
        assert stat.S_IMODE((tmp_path / "bank" / name).stat().st_mode) == 0o644


# -- costs: polygons are not parsed, features are computed at build time, not at load -------------


def with_polygons(path: Path, points: int = 40, *, indent: int | None = None) -> Path:
    """The COCO file at ``path`` with a polygon of ``points`` points under every annotation, and
    a few things a polygon cutter must leave alone: an RLE mask, keys and strings that mention
    "segmentation"."""
    coco = json.loads(path.read_text())
    for k, ann in enumerate(coco["annotations"]):
        ann["segmentation"] = [[round(0.37 * (k + j), 2) for j in range(2 * points)], [1, 2, 3e-1, -4]]
    coco["annotations"][0]["segmentation"] = {"size": [100, 100], "counts": "a]1[\\\\b}"}  # RLE
    coco["images"][0]["note"] = 'has "segmentation": [[1, 2]] in a string'
    coco["info"] = {'"segmentation"': [[5, 6]], "segmentation": "none"}
    out = path.with_name(f"polygons-{path.name}")
    out.write_text(json.dumps(coco, indent=indent))
    return out


def _images(n: int) -> list[list[tuple[str, list[float]]]]:
    rng = np.random.default_rng(n)
    return [
        [(str(rng.choice(["cat", "dog", "cow"])), [0.1 * j, 0.05 * j, 0.2 + 0.1 * rng.random(), 0.3])
         for j in range(1 + k % 4)]
        for k in range(n)
    ]


@pytest.mark.parametrize("chunk", [None, 7])  # 7 bytes: polygons and keys cut across chunks
@pytest.mark.parametrize("indent", [None, 2])
def test_polygons_are_cut_before_parsing_and_nothing_else_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, chunk: int | None, indent: int | None
) -> None:
    from acp.score import bank as bank_module
    from acp.score.bank import read_coco_file

    if chunk:
        monkeypatch.setattr(bank_module, "_CHUNK", chunk)
    plain = write_coco(tmp_path / "a.json", _images(30))
    polygons = with_polygons(plain, indent=indent)
    whole, cut = read_coco_file(polygons), read_coco_file(polygons, polygons=False)
    assert cut["annotations"][0]["segmentation"] == whole["annotations"][0]["segmentation"]  # RLE
    assert all(a["segmentation"] is None for a in cut["annotations"][1:])
    for ann in whole["annotations"]:
        ann["segmentation"] = None if isinstance(ann["segmentation"], list) else ann["segmentation"]
    assert cut == whole  # strings and keys that mention "segmentation" are intact
    a, b = Bank.from_coco([plain]), Bank.from_coco([polygons])
    for name in ("boxes", "category_offsets", "pair_a", "pair_b", "pair_keys", "pair_offsets"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))


def test_a_json_error_is_placed_in_the_file_as_written(tmp_path: Path) -> None:
    from acp.score.bank import read_coco_file

    path = with_polygons(write_coco(tmp_path / "a.json", _images(5)))
    path.write_text(path.read_text()[:-40] + "oops")
    with pytest.raises(InputError) as whole:
        read_coco_file(path)
    with pytest.raises(InputError) as cut:
        read_coco_file(path, polygons=False)
    assert str(cut.value) == str(whole.value) and "not valid JSON" in str(cut.value)


def test_building_from_a_file_with_polygons_costs_little_more_memory_than_without(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Measured: 1.2 times the peak of the same file without polygons (the old code, which parsed
    them: 6.7 times)."""
    import tracemalloc

    from acp.score import bank as bank_module
    from acp.score import density

    monkeypatch.setattr(bank_module, "_CHUNK", 1 << 16, raising=False)
    # Fewer calibration layouts: the same for both files, and slow under tracemalloc.
    monkeypatch.setattr(density, "CDF_LAYOUTS", 50)
    plain = write_coco(tmp_path / "a.json", _images(1500))
    polygons = with_polygons(plain)

    def peak(path: Path) -> int:
        tracemalloc.start()
        try:
            Bank.from_coco([path])
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    peak(plain)  # first-call caches aside
    assert polygons.stat().st_size > 3 * plain.stat().st_size
    assert peak(polygons) < 1.5 * peak(plain), (peak(polygons), peak(plain))


def test_a_loaded_bank_scores_without_recomputing_its_features(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from acp.score import bank as bank_module
    from acp.score.layout import LayoutScorer

    monkeypatch.setattr(bank_module, "_FEATURE_BLOCK", 3, raising=False)  # blocks of 3 pairs
    built = Bank.from_coco([write_coco(tmp_path / "a.json", _images(40))])
    built.save(tmp_path / "bank")
    layout = (["cat", "dog", "cow", "dog"], [[0.1, 0.1, 0.3, 0.3], [0.5, 0.4, 0.2, 0.3],
                                            [0.2, 0.6, 0.4, 0.3], [0.6, 0.1, 0.2, 0.2]])
    expected = LayoutScorer(built, method="paper").score_layout(*layout)
    expected_v2 = LayoutScorer(built).score_layout(*layout)
    whole = bank_module._pair_geometry(  # as computed at every load before format 2, in one block
        built.boxes[built.pair_a].astype(np.float64), built.boxes[built.pair_b].astype(np.float64)
    )
    for name, value in zip(vars(built.pair_features), whole, strict=True):
        np.testing.assert_array_equal(getattr(built.pair_features, name), value)

    def computed(*args: Any) -> Any:
        raise AssertionError("features recomputed at load")

    monkeypatch.setattr(bank_module, "_pair_geometry", computed)
    monkeypatch.setattr(bank_module, "prior_features_of", computed, raising=False)
    loaded = Bank.load(tmp_path / "bank")
    score = LayoutScorer(loaded, method="paper").score_layout(*layout)
    assert score.method == "pairs" and score == expected
    assert LayoutScorer(loaded).score_layout(*layout) == expected_v2 and expected_v2.method == "density"
    for name, value in built.model.arrays().items():
        np.testing.assert_array_equal(loaded.model.arrays()[name], value)
    for name in ("pair_features", "prior_features"):
        for key, value in vars(getattr(built, name)).items():
            np.testing.assert_array_equal(getattr(getattr(loaded, name), key), value)


@pytest.mark.parametrize("version", [1, 2, 3])
def test_an_old_format_bank_asks_for_a_rebuild(tmp_path: Path, version: int) -> None:
    """A format-1 bank (no stored features), 2 (no v2 densities) or 3 (no v3 model): one line
    naming the command that fixes it."""
    from typer.testing import CliRunner

    from acp.cli import app

    folder = tmp_path / "bank"
    Bank.from_coco([write_coco(tmp_path / "a.json", _images(5))]).save(folder)
    with np.load(folder / "bank.npz") as arrays:
        old = {n: arrays[n] for n in ("boxes", "category_offsets", "pair_a", "pair_b", "pair_keys",
                                      "pair_offsets")}
    np.savez(folder / "bank.npz", **old)
    index = json.loads((folder / "index.json").read_text())
    (folder / "index.json").write_text(json.dumps({**index, "format": version}))
    with pytest.raises(InputError) as error:
        Bank.load(folder)
    expected = f"bank {folder}: format {version}, expected 4; rebuild it with `acp bank build`"
    assert str(error.value) == expected
    plans = tmp_path / "plans.jsonl"
    plans.write_text("")
    result = CliRunner().invoke(app, ["score", "layouts", str(plans), "--bank", str(folder),
                                      "-o", str(tmp_path / "out.jsonl")])
    assert result.exit_code == 1 and result.stderr.count("\n") == 1
    assert "rebuild it with `acp bank build`" in result.stderr

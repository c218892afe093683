"""COCO export: safe file names, categories, the resumable writer, its output in real readers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from acp.errors import InputError, OutputMismatchError
from acp.export import (
    CategorySet,
    CocoWriter,
    ImageProvenance,
    Instance,
    load_categories,
    plan_instances,
    safe_filename,
)
from acp.export.filenames import MAX_FILENAME_BYTES
from acp.schema import Candidate, CandidateScore, ObjectScore, PlanObject, ScenePlan
from acp.segment import MaskResult, encode_masks

REPO = Path(__file__).resolve().parent.parent

# --------------------------------------------------------------------------- safe_filename

FILENAME_CASES = [
    ("dog", "dog"),
    ("fire hydrant", "fire_hydrant"),
    ("  padded  name ", "padded_name"),
    ("../../etc/passwd", "etc_passwd"),
    ("a/b", "a_b"),
    ("a\\b", "a_b"),
    ("/abs/path", "abs_path"),
    ("C:\\Windows\\x", "C_Windows_x"),
    ("..", "unnamed"),
    (".", "unnamed"),
    ("", "unnamed"),
    ("///", "unnamed"),
    (".hidden", "hidden"),
    ("trailing.", "trailing"),
    ("nul\x00byte", "nul_byte"),
    ("line\nbreak\ttab", "line_break_tab"),
    ('a<b>:c"d|e?f*g', "a_b_c_d_e_f_g"),
    ("CON", "_CON"),
    ("con.txt", "_con.txt"),
    ("LPT1", "_LPT1"),
    ("com9.tar.gz", "_com9.tar.gz"),
    ("console", "console"),
    ("🐶 dog", "🐶_dog"),
    ("cafe\u0301", "café"),  # NFD in, NFC out
    ("évier_à_café", "évier_à_café"),
    ("a\u202egnp.exe", "a_gnp.exe"),  # right-to-left override would disguise the extension
    ("\ud800lone", "lone"),  # lone surrogate
    ("zero\u200bwidth", "zero_width"),
]


@pytest.mark.parametrize(("name", "expected"), FILENAME_CASES)
def test_safe_filename_table(name: str, expected: str) -> None:
    assert safe_filename(name) == expected


def _assert_safe(result: str) -> None:
    assert result and result not in (".", "..")
    assert not result.startswith((".", " ")) and not result.endswith((".", " "))
    assert not any(c in result for c in '/\\\x00<>:"|?*')
    assert len(result.encode("utf-8")) <= MAX_FILENAME_BYTES
    assert Path(result).name == result  # no folder part on this OS


def test_safe_filename_bounds_long_names_and_keeps_them_distinct() -> None:
    long_a, long_b = "x" * 300, "x" * 299 + "y"
    a, b = safe_filename(long_a), safe_filename(long_b)
    _assert_safe(a)
    assert a != b and a.startswith("x" * 50) and len(a.encode()) <= MAX_FILENAME_BYTES
    emoji = safe_filename("🐶" * 100)  # 4 bytes each: the cut must not split one
    _assert_safe(emoji)
    assert emoji.startswith("🐶" * 20)
    assert safe_filename("a" * 40, max_bytes=20).endswith(safe_filename("a" * 40, max_bytes=20)[-8:])
    with pytest.raises(ValueError, match="max_bytes"):
        safe_filename("x", max_bytes=4)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=400))
def test_safe_filename_is_always_safe(name: str) -> None:
    _assert_safe(safe_filename(name))


# --------------------------------------------------------------------------- categories

COCO_CATEGORIES = [
    {"id": 1, "name": "person", "supercategory": "person"},
    {"id": 3, "name": "car", "supercategory": "vehicle"},
    {"id": 11, "name": "fire hydrant", "supercategory": "outdoor"},
    {"id": 18, "name": "dog", "supercategory": "animal"},
    {"id": 63, "name": "couch", "supercategory": "furniture"},
    {"id": 67, "name": "dining table", "supercategory": "furniture"},
]
LVIS_CATEGORIES = [
    {"id": 1, "name": "aerosol_can", "synonyms": ["aerosol_can", "spray_can"], "frequency": "c"},
    {"id": 2, "name": "bat_(animal)", "synonyms": ["bat_(animal)"], "frequency": "c"},
    {"id": 3, "name": "baseball_bat", "synonyms": ["baseball_bat"], "frequency": "f"},
    {"id": 4, "name": "fire_hydrant", "synonyms": ["fire_hydrant", "fireplug"], "frequency": "f"},
    {"id": 5, "name": "bow_(weapon)", "synonyms": ["bow_(weapon)"], "frequency": "r"},
    {"id": 6, "name": "bow_(decorative_ribbons)", "synonyms": ["bow_(decorative_ribbons)"], "frequency": "f"},
    {"id": 7, "name": "table", "synonyms": ["table"], "frequency": "f"},
    {"id": 8, "name": "dog", "synonyms": ["dog"], "frequency": "f"},
]


def test_categories_from_concepts_first_seen_order_merges_spellings() -> None:
    categories = CategorySet.from_concepts(["dog", "Dogs", "fire_hydrant", "cat", "Fire Hydrants"])
    assert [(c.id, c.name) for c in categories.categories] == [(1, "dog"), (2, "fire_hydrant"), (3, "cat")]
    assert categories.get("DOGS") == 1 and categories.get("fire hydrant") == 2
    assert categories.get("unicorn") is None
    with pytest.raises(KeyError, match="unicorn"):
        categories.id_for("unicorn")
    # Appending a concept keeps every earlier id.
    grown = CategorySet.from_concepts(["dog", "fire_hydrant", "cat", "zebra"])
    assert [c.id for c in grown.categories if c.name != "zebra"] == [1, 2, 3]
    with pytest.raises(InputError, match="empty"):
        CategorySet.from_concepts(["", "  "])


def test_categories_from_coco_file_map_by_name_plural_and_synonyms(tmp_path: Path) -> None:
    path = tmp_path / "instances.json"
    path.write_text(json.dumps({"images": [], "annotations": [], "categories": COCO_CATEGORIES}))
    concepts = ["Dogs", "puppy", "Fire_Hydrants", "sofa", "table", "people"]
    categories = load_categories(concepts, path)
    assert [categories.id_for(c) for c in concepts] == [18, 18, 11, 63, 67, 1]
    # The whole file is kept, ids and names as they are, so the output merges into it.
    assert categories.to_coco() == COCO_CATEGORIES


def test_categories_from_lvis_file_use_its_synonyms_and_qualifiers(tmp_path: Path) -> None:
    path = tmp_path / "lvis_categories.json"
    path.write_text(json.dumps(LVIS_CATEGORIES))  # a bare categories list is accepted too
    concepts = ["spray cans", "bat", "baseball bat", "fireplug", "Fire Hydrant", "table", "dogs"]
    categories = load_categories(concepts, path)
    assert [categories.id_for(c) for c in concepts] == [1, 2, 3, 4, 4, 7, 8]
    assert {c["name"] for c in categories.to_coco()} == {c["name"] for c in LVIS_CATEGORIES}


def test_unmappable_concepts_are_all_named_in_one_error(tmp_path: Path) -> None:
    path = tmp_path / "lvis.json"
    path.write_text(json.dumps({"categories": LVIS_CATEGORIES}))
    with pytest.raises(InputError) as error:
        load_categories(["dog", "unicorn", "bow", "griffin"], path)
    message = str(error.value)
    assert "\n" not in message and str(path) in message
    assert "'unicorn'" in message and "'griffin'" in message
    assert "'bow' is ambiguous" in message and "bow_(weapon)" in message
    assert "'dog'" not in message


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (None, "no such category file"),
        ("{not json", "not a readable JSON file"),
        ('{"images": []}', "expected a COCO/LVIS file with a 'categories' list"),
        ("[]", "non-empty 'categories' list"),
        ('[{"id": "1", "name": "dog"}]', "integer 'id' and a non-empty 'name'"),
        ('[{"id": 1, "name": "dog"}, {"id": 1, "name": "cat"}]', "category id 1 appears twice"),
        ('[{"id": 1, "name": "dog", "synonyms": "hound"}]', "synonyms must be a list"),
    ],
)
def test_bad_category_files_raise_one_line(tmp_path: Path, content: str | None, expected: str) -> None:
    path = tmp_path / "cats.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(InputError, match=expected) as error:
        load_categories(["dog"], path)
    assert "\n" not in str(error.value) and str(path) in str(error.value)


# --------------------------------------------------------------------------- writer

CONCEPTS = ["dog", "cat", "frisbee"]


def _image(seed: int, width: int = 64, height: int = 48) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 255, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def _instances(seed: int, width: int = 64, height: int = 48) -> list[Instance]:
    rng = np.random.default_rng(seed)
    instances = []
    for _ in range(int(rng.integers(0, 4))):
        w, h = rng.uniform(4, width / 2), rng.uniform(4, height / 2)
        x, y = rng.uniform(0, width - w), rng.uniform(0, height - h)
        instances.append(Instance(category_id=int(rng.integers(1, 4)), bbox=(x, y, w, h)))
    return instances


def _write(out: Path, keys: list[str], **options: object) -> tuple[CategorySet, dict[str, list[Instance]]]:
    categories = CategorySet.from_concepts(CONCEPTS)
    given: dict[str, list[Instance]] = {}
    with CocoWriter(out, categories, **options) as writer:  # type: ignore[arg-type]
        for seed, key in enumerate(keys):
            given[key] = _instances(seed)
            writer.add_image(key, _image(seed), given[key])
    return categories, given


def _load(path: Path) -> COCO:
    coco = COCO(str(path))
    return coco


def test_round_trip_through_pycocotools(tmp_path: Path) -> None:
    keys = [f"scene-{i:03d}" for i in range(12)]
    _, given = _write(tmp_path, keys)
    data = json.loads((tmp_path / "annotations.json").read_text())
    assert set(data) >= {"info", "licenses", "categories", "images", "annotations"}
    assert data["info"]["contributor"] == "acp" and data["licenses"][0]["id"] == 1
    coco = _load(tmp_path / "annotations.json")
    assert len(coco.getImgIds()) == len(keys)
    assert len(coco.getAnnIds()) == sum(len(v) for v in given.values()) > 0
    assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == CONCEPTS
    image_ids = [i["id"] for i in data["images"]]
    annotation_ids = [a["id"] for a in data["annotations"]]
    assert image_ids == list(range(1, len(keys) + 1))
    assert annotation_ids == list(range(1, len(annotation_ids) + 1))
    by_name = {i["file_name"]: i for i in data["images"]}
    for key, instances in given.items():
        image = by_name[f"{key}.jpg"]
        assert (tmp_path / "images" / image["file_name"]).is_file()
        assert (image["width"], image["height"]) == (64, 48)
        anns = coco.loadAnns(coco.getAnnIds(imgIds=[image["id"]]))
        assert len(anns) == len(instances)
        for ann, instance in zip(anns, instances, strict=True):
            np.testing.assert_allclose(ann["bbox"], instance.bbox, atol=0.006)
            assert ann["area"] == pytest.approx(ann["bbox"][2] * ann["bbox"][3], abs=0.01)
            assert ann["iscrowd"] == 0 and ann["category_id"] == instance.category_id


def test_annotations_evaluated_against_themselves_give_ap_1(tmp_path: Path) -> None:
    _write(tmp_path, [f"s{i}" for i in range(10)])
    gt = _load(tmp_path / "annotations.json")
    detections = [{**a, "score": 1.0} for a in gt.loadAnns(gt.getAnnIds())]
    for detection in detections:
        detection.pop("segmentation", None)
        detection.pop("id")
    evaluation = COCOeval(gt, gt.loadRes(detections), "bbox")
    evaluation.evaluate()
    evaluation.accumulate()
    evaluation.summarize()
    assert evaluation.stats[0] == pytest.approx(1.0)  # AP@[.5:.95]
    assert evaluation.stats[1] == pytest.approx(1.0)  # AP@.5


def test_supervision_reads_the_dataset(tmp_path: Path) -> None:
    import supervision as sv

    _, given = _write(tmp_path, [f"s{i}" for i in range(6)])
    dataset = sv.DetectionDataset.from_coco(
        images_directory_path=str(tmp_path / "images"), annotations_path=str(tmp_path / "annotations.json")
    )
    assert dataset.classes == CONCEPTS
    assert len(dataset) == 6
    assert sum(len(d) for _, _, d in dataset) == sum(len(v) for v in given.values())


def test_provenance_and_plan_instances(tmp_path: Path) -> None:
    plan = ScenePlan(
        id="plan-7", concepts=["dog", "frisbee"], caption="a dog catching a frisbee", width=128, height=64,
        planner="heuristic", seed=3,
        objects=[
            PlanObject(id=0, category="Dogs", description="a brown dog", bbox=(0.25, 0.5, 0.5, 0.5)),
            PlanObject(id=1, category="frisbee", description="a red frisbee", bbox=(0.0, 0.0, 0.125, 0.25)),
            PlanObject(id=2, category="cat", description="a cat", bbox=(0.75, 0.0, 0.25, 0.25)),
        ],
    )
    candidate = Candidate(
        plan_id="plan-7", index=2, seed=1234, path="c2.png", model="tiny/gligen", steps=2, guidance=7.5,
        beta=0.3, width=128, height=64, prompt="a dog catching a frisbee", phrases=["a brown dog"],
    )
    score = CandidateScore(
        plan_id="plan-7", index=2, clis=71.5, clis_l=60.0, clis_i=80.0,
        objects=[
            ObjectScore(id=0, category="dog", clis_i=90.0),
            ObjectScore(id=1, category="frisbee", clis_i=20.0, kept=False),
            ObjectScore(id=2, category="cat", clis_i=50.0),
        ],
    )
    categories = CategorySet.from_concepts(CONCEPTS)
    instances = plan_instances(plan, categories, score=score)
    assert [i.provenance.object_id for i in instances if i.provenance] == [0, 2]
    assert instances[0].bbox == (32.0, 32.0, 64.0, 32.0) and instances[0].category_id == 1
    assert plan_instances(plan, categories, size=(256, 128))[0].bbox == (64.0, 64.0, 128.0, 64.0)
    provenance = ImageProvenance.from_records(plan, candidate, score, sam_model="tiny/sam")
    with CocoWriter(tmp_path, categories, image_format="png") as writer:
        exported = writer.add_image(plan.id, _image(0, 128, 64), instances, provenance)
    assert exported.file_name == "plan-7.png" and exported.annotations == 2
    data = json.loads((tmp_path / "annotations.json").read_text())
    image = data["images"][0]
    extra = set(image) - {"id", "file_name", "width", "height", "license"}
    assert extra == {"acp"}  # provenance lives under one key
    restored = ImageProvenance.model_validate(image["acp"])
    assert (restored.plan_id, restored.seed, restored.candidate) == ("plan-7", 1234, 2)
    assert (restored.clis, restored.render_model, restored.sam_model) == (71.5, "tiny/gligen", "tiny/sam")
    assert data["annotations"][0]["acp"] == {
        "object_id": 0, "description": "a brown dog", "clis_i": 90.0, "mask_score": None
    }
    with pytest.raises(KeyError, match="unicorn"):
        plan_instances(plan.model_copy(update={"objects": [
            plan.objects[0].model_copy(update={"category": "unicorn"})]}), categories)


def test_masks_are_stored_as_rle_with_their_area(tmp_path: Path) -> None:
    masks = np.zeros((2, 48, 64), dtype=bool)
    masks[0, 10:20, 5:25] = True
    masks[1, 30:40, 40:44] = True
    results = encode_masks(masks, [0.9, 0.8], [[5, 10, 25, 20], [40, 30, 44, 40]])
    instances = [
        Instance(category_id=1, bbox=(5, 10, 20, 10), mask=results[0]),
        Instance(category_id=2, bbox=(40, 30, 4, 10), mask=results[1]),
    ]
    categories = CategorySet.from_concepts(CONCEPTS)
    with CocoWriter(tmp_path, categories) as writer:
        writer.add_image("m", _image(0), instances)
    coco = _load(tmp_path / "annotations.json")
    anns = coco.loadAnns(coco.getAnnIds())
    assert [a["area"] for a in anns] == [200, 40]
    for ann, mask in zip(anns, masks, strict=True):
        assert isinstance(ann["segmentation"]["counts"], str)
        np.testing.assert_array_equal(coco.annToMask(ann).astype(bool), mask)
    detections = [{**a, "score": 1.0} for a in anns]
    for detection in detections:
        detection.pop("id")
    evaluation = COCOeval(coco, coco.loadRes(detections), "segm")
    evaluation.evaluate()
    evaluation.accumulate()
    evaluation.summarize()
    assert evaluation.stats[0] == pytest.approx(1.0)

    import supervision as sv

    dataset = sv.DetectionDataset.from_coco(
        str(tmp_path / "images"), str(tmp_path / "annotations.json"), force_masks=True
    )
    (_, _, detections_read), = list(dataset)
    np.testing.assert_array_equal(detections_read.mask, masks)


def _mask(masks: np.ndarray) -> MaskResult:
    return encode_masks(masks, [1.0], [[1, 1, 6, 6]])[0]


@pytest.mark.parametrize(
    ("instance", "expected"),
    [
        (Instance(category_id=99, bbox=(1, 1, 5, 5)), "category_id 99"),
        (Instance(category_id=1, bbox=(70, 1, 5, 5)), "no area inside the 64x48 image"),
        (Instance(category_id=1, bbox=(1, 1, 0, 5)), "no area"),
        (Instance(category_id=1, bbox=(1, 1, float("nan"), 5)), "finite"),
        (Instance(category_id=1, bbox=(1, 1, 5, 5), mask=_mask(np.zeros((1, 48, 64)))), "empty mask"),
        (Instance(category_id=1, bbox=(1, 1, 5, 5), mask=_mask(np.ones((1, 8, 8)))), "mask size"),
    ],
)
def test_bad_instances_are_refused_and_nothing_is_written(
    tmp_path: Path, instance: Instance, expected: str
) -> None:
    with CocoWriter(tmp_path, CategorySet.from_concepts(CONCEPTS)) as writer:
        with pytest.raises(ValueError, match=expected):
            writer.add_image("bad", _image(0), [instance])
        assert "bad" not in writer and writer.image_count == 0
    assert not list((tmp_path / "images").iterdir())


def test_box_is_clipped_to_the_image(tmp_path: Path) -> None:
    with CocoWriter(tmp_path, CategorySet.from_concepts(CONCEPTS)) as writer:
        writer.add_image("k", _image(0), [Instance(category_id=1, bbox=(-2.0, 40.0, 10.0, 20.0))])
    ann = json.loads((tmp_path / "annotations.json").read_text())["annotations"][0]
    assert ann["bbox"] == [0.0, 40.0, 8.0, 8.0] and ann["area"] == 64.0


def test_keys_are_idempotent_and_file_names_stay_distinct(tmp_path: Path) -> None:
    source = tmp_path / "render.png"
    _image(3).save(source)
    with CocoWriter(tmp_path / "out", CategorySet.from_concepts(CONCEPTS)) as writer:
        first = writer.add_image("a/b", _image(0), [Instance(1, (1, 1, 5, 5))])
        second = writer.add_image("a_b", _image(1), [])
        again = writer.add_image("a/b", _image(2), [Instance(2, (1, 1, 5, 5))] * 3)
        copied = writer.add_image("../../evil", source, [])
        assert "a/b" in writer and writer.image_count == 3 and writer.annotation_count == 1
    assert first.file_name == "a_b.jpg" and second.file_name.startswith("a_b-") and not first.resumed
    assert again == first.__class__(id=first.id, file_name=first.file_name, annotations=1, resumed=True)
    assert copied.file_name == "evil.png"
    assert (tmp_path / "out/images/evil.png").read_bytes() == source.read_bytes()
    assert sorted(p.name for p in (tmp_path / "out/images").iterdir()) == sorted(
        [first.file_name, second.file_name, "evil.png"]
    )


@pytest.fixture
def checkpoints_by_count(monkeypatch: pytest.MonkeyPatch) -> None:
    """Checkpoints due by count are written at once: on a busy disk one can take longer than
    SPACED_CHECKPOINT_S, and the writer would then space the next ones (tests/test_coco_writer.py
    checks the spacing on a fake clock)."""
    import acp.export.coco

    monkeypatch.setattr(acp.export.coco, "SPACED_CHECKPOINT_S", float("inf"))


def test_checkpoints_keep_annotations_json_current(tmp_path: Path, checkpoints_by_count: None) -> None:
    writer = CocoWriter(tmp_path, CategorySet.from_concepts(CONCEPTS), checkpoint_every=2).open()
    try:
        assert json.loads((tmp_path / "annotations.json").read_text())["images"] == []
        writer.add_image("a", _image(0), [])
        assert len(json.loads((tmp_path / "annotations.json").read_text())["images"]) == 0
        writer.add_image("b", _image(1), [])
        assert len(json.loads((tmp_path / "annotations.json").read_text())["images"]) == 2
    finally:
        writer.close()
    with pytest.raises(RuntimeError, match="open"):
        writer.add_image("c", _image(2), [])


def test_a_second_writer_on_the_same_folder_is_refused(tmp_path: Path) -> None:
    categories = CategorySet.from_concepts(CONCEPTS)
    with CocoWriter(tmp_path, categories), pytest.raises(OutputMismatchError, match="another acp process"):
        CocoWriter(tmp_path, categories).open()
    CocoWriter(tmp_path, categories).open().close()  # released on close


def test_resume_with_other_categories_is_refused(tmp_path: Path) -> None:
    _write(tmp_path, ["a"])
    with pytest.raises(OutputMismatchError, match="other categories"):
        CocoWriter(tmp_path, CategorySet.from_concepts(["dog", "zebra"])).open()
    records = tmp_path / "coco_records.jsonl"
    records.write_text(records.read_text().splitlines()[0] + "\nnot json\n")
    with pytest.raises(OutputMismatchError, match=r"coco_records.jsonl:2: not an acp COCO record"):
        CocoWriter(tmp_path, CategorySet.from_concepts(CONCEPTS)).open()


# --------------------------------------------------------------------------- kill and resume

WRITER_SCRIPT = textwrap.dedent(
    """
    import sys, time
    sys.path.insert(0, {tests!r})
    from pathlib import Path
    from test_export import CONCEPTS, _image, _instances
    import acp.export.coco
    from acp.export import CategorySet, CocoWriter

    acp.export.coco.SPACED_CHECKPOINT_S = float("inf")  # checkpoints by count, however busy the disk

    out, count, delay = Path(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
    with CocoWriter(out, CategorySet.from_concepts(CONCEPTS), checkpoint_every=7) as writer:
        for seed in range(count):
            key = f"scene-{{seed:04d}}"
            if key not in writer:
                writer.add_image(key, _image(seed), _instances(seed))
                time.sleep(delay)
    """
)


def _run_writer(out: Path, count: int, delay: float) -> subprocess.Popen[bytes]:
    script = out.parent / "writer.py"
    script.write_text(WRITER_SCRIPT.format(tests=str(REPO / "tests")))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, str(script), str(out), str(count), str(delay)], env=env)


def _dataset(path: Path) -> tuple[list[tuple[int, str]], list[tuple[int, int, int, tuple[float, ...]]]]:
    data = json.loads(path.read_text())
    images = [(i["id"], i["file_name"]) for i in data["images"]]
    annotations = [(a["id"], a["image_id"], a["category_id"], tuple(a["bbox"])) for a in data["annotations"]]
    return images, annotations


def test_sigkill_then_resume_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    count = 60
    reference = tmp_path / "reference"
    _write(reference, [f"scene-{i:04d}" for i in range(count)], checkpoint_every=7)

    out = tmp_path / "killed"
    process = _run_writer(out, count, delay=0.01)
    records = out / "coco_records.jsonl"
    deadline = time.monotonic() + 240  # a backstop for a loaded machine: the loop ends at 25 records
    while time.monotonic() < deadline:
        if records.exists() and records.read_bytes().count(b"\n") > 25:
            break
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL

    # What a kill leaves is a valid COCO file from the last checkpoint.
    before_images, before_annotations = _dataset(out / "annotations.json")
    assert 0 < len(before_images) < count
    _load(out / "annotations.json")
    # Worst case on top: a torn last line, and annotations.json gone.
    with open(records, "ab") as handle:
        handle.write(b'{"kind":"image","key":"scene-9999","image":{"id":')
    (out / "annotations.json").unlink()

    resumed = _run_writer(out, count, delay=0.0)
    assert resumed.wait(timeout=240) == 0

    images, annotations = _dataset(out / "annotations.json")
    assert (images, annotations) == _dataset(reference / "annotations.json")  # same as uninterrupted
    assert set(before_images) <= set(images)  # no id of the first run was reassigned
    assert set(before_annotations) <= set(annotations)
    assert len({i for i, _ in images}) == count and len({a[0] for a in annotations}) == len(annotations)
    assert sorted(p.name for p in (out / "images").iterdir()) == sorted(name for _, name in images)
    assert b"scene-9999" not in records.read_bytes()
    coco = _load(out / "annotations.json")
    assert len(coco.getImgIds()) == count


def test_a_nan_score_fails_before_anything_is_written(tmp_path: Path) -> None:
    provenance = ImageProvenance(
        plan_id="p", candidate=0, caption="c", seed=1, planner="heuristic", render_model="m", steps=1,
        guidance=1.0, beta=0.3, prompt="c", clis=float("nan"),
    )
    with CocoWriter(tmp_path, CategorySet.from_concepts(CONCEPTS)) as writer:
        with pytest.raises(ValueError, match="JSON"):
            writer.add_image("p", _image(0), [], provenance)
        assert writer.image_count == 0
    assert not list((tmp_path / "images").iterdir())
    assert json.loads((tmp_path / "annotations.json").read_text())["images"] == []

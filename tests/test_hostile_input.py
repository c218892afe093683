"""Hostile input files: each is one line naming the file, or a reported item, never a traceback.

JSON nested thousands deep (Python's decoder raises RecursionError), image headers that claim
billions of pixels, unhashable ids, a YAML alias bomb, names holding control characters.
"""

from __future__ import annotations

import json
import os
import resource
import struct
import subprocess
import sys
import warnings
import zlib
from pathlib import Path
from typing import Any

import pytest
from click.testing import Result
from PIL import Image
from typer.testing import CliRunner

from acp.cli import app
from tests.test_clis_image import tiny_clip_dir_fixture  # noqa: F401  (provides tiny_clip_dir)

DEEP_ARRAY = "[" * 5000 + "]" * 5000
DEEP_OBJECT = '{"a":' * 5000 + "1" + "}" * 5000


def invoke(*args: object) -> Result:
    # catch_exceptions=False: an exception escaping the command fails the test with its traceback
    return CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)


def assert_one_line_error(result: Result, *expected: str) -> str:
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("acp: error: "), result.stderr
    assert "Traceback" not in result.output
    for text in expected:
        assert text in lines[0], lines[0]
    return lines[0]


def plan_line(plan_id: str = "p1") -> str:
    return json.dumps({
        "id": plan_id, "concepts": ["dog"], "caption": "a dog", "planner": "heuristic",
        "objects": [{"id": 0, "category": "dog", "description": "a dog", "bbox": [0.1, 0.1, 0.3, 0.3]}],
    })


# -- JSON nested too deeply ----------------------------------------------------------------------


@pytest.mark.parametrize("deep", [DEEP_ARRAY, DEEP_OBJECT], ids=["array", "object"])
def test_deep_json_in_bank_build_is_one_line(tmp_path: Path, deep: str) -> None:
    path = tmp_path / "deep.json"
    path.write_text(deep)
    result = invoke("bank", "build", path, "-o", tmp_path / "bank")
    assert_one_line_error(result, str(path), "nested too deeply")


def test_deep_json_in_score_dataset_is_one_line(tmp_path: Path, tiny_clip_dir: Path) -> None:
    path = tmp_path / "deep.json"
    path.write_text(DEEP_OBJECT)
    result = invoke("score", "dataset", path, "--images", tmp_path, "-o", tmp_path / "r",
                    "--clip-model", tiny_clip_dir, "--no-progress")
    assert_one_line_error(result, str(path), "nested too deeply")


@pytest.mark.parametrize("which", ["synthetic", "real"])
def test_deep_json_in_export_merge_is_one_line(tmp_path: Path, which: str) -> None:
    deep, fine = tmp_path / "deep.json", tmp_path / "fine.json"
    deep.write_text(DEEP_ARRAY)
    fine.write_text(json.dumps({"images": [], "annotations": [], "categories": [{"id": 1, "name": "dog"}]}))
    pair = (deep, fine) if which == "synthetic" else (fine, deep)
    result = invoke("export", "merge", *pair, "-o", tmp_path / "merged.json")
    assert_one_line_error(result, str(deep), "nested too deeply")


@pytest.mark.parametrize(
    ("name", "content", "where"),
    [
        ("c.json", DEEP_ARRAY, "c.json:1"),
        ("c.json", '{"dog": ' + DEEP_ARRAY + "}", "c.json:1"),
        ("c.jsonl", '{"concepts": ["dog"]}\n' + DEEP_OBJECT + "\n", "c.jsonl:2"),
        ("c.yaml", DEEP_ARRAY, "c.yaml"),
    ],
)
def test_deep_concept_files_in_plan_are_one_line(tmp_path: Path, name: str, content: str, where: str) -> None:
    path = tmp_path / name
    path.write_text(content)
    result = invoke("plan", path, "-o", tmp_path / "plans.jsonl", "--planner", "heuristic")
    assert_one_line_error(result, where, "nested too deeply")


def test_deep_categories_file_in_generate_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "categories.json"
    path.write_text(DEEP_ARRAY)
    result = invoke("generate", "--concepts", "dog", "--categories", path, "-o", tmp_path / "out",
                    "--planner", "heuristic", "--no-progress")
    assert_one_line_error(result, str(path), "nested too deeply")


def test_deep_plan_line_in_validate_is_an_invalid_line(tmp_path: Path) -> None:
    path = tmp_path / "plans.jsonl"
    path.write_text(plan_line() + "\n" + DEEP_OBJECT + "\n")
    result = invoke("validate", path)
    assert result.exit_code == 1 and "Traceback" not in result.output
    lines = result.output.splitlines()
    assert f"{path}:2: not a JSON object" in lines
    assert lines[-1] == f"{path}: 1 valid, 1 invalid"


def test_deep_last_line_without_newline_is_a_torn_tail(tmp_path: Path) -> None:
    # A last line that does not parse and lacks its newline is a torn write (acp.jsonl), whatever
    # the reason it does not parse.
    path = tmp_path / "plans.jsonl"
    path.write_text(plan_line() + "\n" + DEEP_OBJECT)
    result = invoke("validate", path)
    assert result.exit_code == 0 and result.output.splitlines()[-1] == f"{path}: 1 valid, 0 invalid"


def test_deep_plan_line_in_render_is_skipped(tmp_path: Path) -> None:
    path = tmp_path / "plans.jsonl"
    path.write_text(DEEP_ARRAY + "\n")
    result = invoke("render", path, "-o", tmp_path / "renders", "--no-progress")
    assert f"{path}:1: skipped: not a JSON object" in result.stderr
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert result.stderr.strip().splitlines()[-1] == f"acp: error: {path}: no valid plans (1 lines skipped)"


def test_deep_bank_index_is_one_line(tmp_path: Path) -> None:
    from acp.errors import InputError
    from acp.score.bank import Bank
    from tests.test_bank import write_coco

    coco = write_coco(tmp_path / "a.json", [[("dog", [0.1, 0.1, 0.2, 0.2]), ("cat", [0.5, 0.5, 0.2, 0.2])]])
    Bank.from_coco([coco]).save(tmp_path / "bank")
    (tmp_path / "bank" / "index.json").write_text(DEEP_OBJECT)
    with pytest.raises(InputError, match="nested too deeply"):
        Bank.load(tmp_path / "bank")


def test_deep_judge_reply_has_no_rating() -> None:
    from acp.score.judge import parse_rating

    assert parse_rating(DEEP_ARRAY) is None
    assert parse_rating('{"rating": ' + DEEP_ARRAY + "}") is None


# -- image headers claiming huge sizes ------------------------------------------------------------


def png_claiming(width: int, height: int) -> bytes:
    """A PNG of a few dozen bytes whose header claims ``width`` x ``height`` 1-bit grey pixels
    (valid chunks and CRCs, one almost empty IDAT)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00"))
            + chunk(b"IEND", b""))


BOMB = png_claiming(100_000, 100_000)  # PIL itself refuses this one (DecompressionBombError)
BIG = png_claiming(10_000, 10_000)  # PIL only warns, then would allocate 100 MB to decode it


def test_bomb_png_is_tiny_and_claims_its_size(tmp_path: Path) -> None:
    path = tmp_path / "bomb.png"
    path.write_bytes(BOMB)
    assert len(BOMB) < 80
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(Image.DecompressionBombError):
            Image.open(path)


@pytest.mark.parametrize("content", [BOMB, BIG], ids=["bomb", "big"])
def test_read_rgb_refuses_images_over_the_pixel_limit(tmp_path: Path, content: bytes) -> None:
    from acp.images import read_rgb

    path = tmp_path / "x.png"
    path.write_bytes(content)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no DecompressionBombWarning either
        image, reason = read_rgb(path)
    assert image is None and reason is not None and "too large" in reason


def test_score_dataset_lists_a_bomb_image_and_goes_on(tmp_path: Path, tiny_clip_dir: Path) -> None:
    images = tmp_path / "images"
    images.mkdir()
    Image.new("RGB", (64, 48), (200, 10, 10)).save(images / "good.png")
    (images / "bomb.png").write_bytes(BOMB)
    (images / "big.png").write_bytes(BIG)
    coco = {
        "images": [{"id": 1, "file_name": "good.png", "width": 64, "height": 48},
                   {"id": 2, "file_name": "bomb.png", "width": 100_000, "height": 100_000},
                   {"id": 3, "file_name": "big.png", "width": 10_000, "height": 10_000}],
        "annotations": [{"id": k, "image_id": k, "category_id": 1, "bbox": [1, 1, 20, 20]}
                        for k in (1, 2, 3)],
        "categories": [{"id": 1, "name": "dog"}],
    }
    annotations = tmp_path / "instances.json"
    annotations.write_text(json.dumps(coco))
    out = tmp_path / "report"
    result = invoke("score", "dataset", annotations, "--images", images, "-o", out,
                    "--clip-model", tiny_clip_dir, "--no-progress")
    assert result.exit_code == 1, result.output  # failed items: exit 1, after the report
    failures = {f["item"]: f["reason"] for f in json.loads((out / "failures.json").read_text())}
    assert set(failures) == {"image 2", "image 3"}
    assert all("too large" in reason for reason in failures.values())
    assert [i["id"] for i in json.loads((out / "images.json").read_text())] == [1]


def test_score_candidates_lists_a_bomb_candidate_and_goes_on(tmp_path: Path, tiny_clip_dir: Path) -> None:
    from tests.test_score_cli import write_plans, write_renders

    plans = write_plans(tmp_path / "plans.jsonl")
    renders = write_renders(tmp_path / "renders", {"p1": 2, "p2": 1})
    (renders / "p2" / "0.png").write_bytes(BOMB)
    out = tmp_path / "scores.jsonl"
    result = invoke("score", "candidates", renders, "--plans", plans, "-o", out,
                    "--clip-model", tiny_clip_dir, "--no-progress")
    assert result.exit_code == 1, result.output
    assert "p2/0.png: the image is too large" in result.stdout
    assert [json.loads(line)["plan_id"] for line in out.read_text().splitlines()] == ["p1", "p1"]


def test_preview_overlay_skips_a_bomb_candidate(tmp_path: Path) -> None:
    from acp.jsonl import dumps
    from acp.schema import Candidate
    from tests.test_preview import plan_record

    plans = tmp_path / "plans.jsonl"
    plans.write_text(json.dumps(plan_record("p1", "dog")) + "\n")
    renders = tmp_path / "renders"
    (renders / "p1").mkdir(parents=True)
    Image.new("RGB", (64, 64)).save(renders / "p1" / "0.png")
    (renders / "p1" / "1.png").write_bytes(BOMB)
    (renders / "manifest.jsonl").write_text("".join(dumps(Candidate(
        plan_id="p1", index=i, seed=i, path=f"p1/{i}.png", model="m", steps=2, guidance=7.5,
        beta=0.3, width=64, height=64, prompt="x")) + "\n" for i in (0, 1)))
    result = invoke("preview", plans, "-o", tmp_path / "out", "--overlay", renders)
    assert result.exit_code == 0, result.output
    assert f"acp: {renders / 'p1' / '1.png'}: skipped: the image is too large" in result.stderr
    assert "1 drawings in 1 files" in result.stdout
    assert (tmp_path / "out" / "p1" / "0.png").is_file() and not (tmp_path / "out" / "p1" / "1.png").exists()


# -- ids that are not numbers or strings -----------------------------------------------------------


def coco_with(images: list[Any], categories: list[Any], annotations: list[Any]) -> str:
    return json.dumps({"images": images, "annotations": annotations, "categories": categories})


GOOD_IMAGE = {"id": 1, "width": 100, "height": 100}
GOOD_CATEGORY = {"id": 1, "name": "dog"}
GOOD_BOX = {"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 10, 20, 20]}


@pytest.mark.parametrize(
    ("content", "where"),
    [
        (coco_with([GOOD_IMAGE, {"id": [2], "width": 100, "height": 100}], [GOOD_CATEGORY], [GOOD_BOX]),
         "images[1]"),
        (coco_with([GOOD_IMAGE], [GOOD_CATEGORY, {"id": {"a": 2}, "name": "cat"}], [GOOD_BOX]),
         "categories[1]"),
        (coco_with([GOOD_IMAGE], [{"id": True, "name": "cat"}], [GOOD_BOX]), "categories[0]"),
    ],
)
def test_bank_build_with_an_unusable_image_or_category_id_is_one_line(
    tmp_path: Path, content: str, where: str
) -> None:
    path = tmp_path / "coco.json"
    path.write_text(content)
    result = invoke("bank", "build", path, "-o", tmp_path / "bank")
    line = assert_one_line_error(result, str(path), where, "a number or a string")
    assert len(line) < 300


def test_bank_build_skips_annotations_with_unusable_ids_as_malformed(tmp_path: Path) -> None:
    path = tmp_path / "coco.json"
    path.write_text(coco_with([GOOD_IMAGE], [GOOD_CATEGORY], [
        GOOD_BOX,
        {**GOOD_BOX, "id": 2, "image_id": [1]},
        {**GOOD_BOX, "id": 3, "category_id": {"x": 1}},
    ]))
    result = invoke("bank", "build", path, "-o", tmp_path / "bank")
    assert result.exit_code == 0, result.output
    assert "skipped: malformed 2" in result.stdout


# -- YAML anchors and aliases ---------------------------------------------------------------------


def yaml_bomb() -> str:
    """294 bytes: nine levels of nine aliases each, 9**9 (387 million) strings once expanded."""
    levels = ["&a [x,x,x,x,x,x,x,x,x]"]
    for before, name in zip("abcdefgh", "bcdefghi", strict=True):
        levels.append(f"&{name} [" + ",".join([f"*{before}"] * 9) + "]")
    return "dog: [" + ", ".join(levels) + "]\n"


MEMORY_LIMIT = 512 << 20  # address space; `acp plan` runs in half of it


def _limit_memory() -> None:  # in the child: an expanding bomb ends in MemoryError, not swap
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))


def test_yaml_alias_bomb_is_refused_at_once_in_little_memory(tmp_path: Path) -> None:
    bomb = tmp_path / "concepts.yaml"
    bomb.write_text(yaml_bomb())
    assert bomb.stat().st_size == 294
    env = {**os.environ, "OPENAI_API_KEY": "", "OPENAI_BASE_URL": ""}
    # Unfixed, this takes 4.5 GB and 71 s: here a MemoryError traceback (the memory limit is the
    # check; the timeout is only a backstop, generous for a loaded machine).
    result = subprocess.run(
        [sys.executable, "-m", "acp", "plan", str(bomb), "-o", str(tmp_path / "plans.jsonl"),
         "--planner", "heuristic"],
        capture_output=True, text=True, env=env, preexec_fn=_limit_memory, timeout=300,
    )
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert result.stderr.strip().splitlines() == [
        f"acp: error: {bomb}:1: YAML anchors and aliases (& and *) are not allowed in a concept list"
    ]


@pytest.mark.parametrize(
    ("content", "line"),
    [("- dog\n- &pet cat\n", 2), ("- dog\n- *pet\n", 2), ("dog: &n 3\ncat: *n\n", 1)],
)
def test_any_yaml_anchor_or_alias_is_refused(tmp_path: Path, content: str, line: int) -> None:
    from acp.concepts import load_concepts
    from acp.errors import InputError

    path = tmp_path / "c.yaml"
    path.write_text(content)
    with pytest.raises(InputError, match=f"^{path}:{line}: YAML anchors and aliases"):
        load_concepts(path)


@pytest.mark.parametrize(
    ("name", "content"),
    [("c.json", json.dumps({"dog": ["x"] * 100_000})),
     ("c.json", json.dumps({"x" * 100_000: 3})),
     ("c.yaml", "dog: [" + "x," * 100_000 + "]\n")],
)
def test_messages_quote_values_cut_short(tmp_path: Path, name: str, content: str) -> None:
    from acp.concepts import load_concepts
    from acp.errors import InputError

    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(InputError) as caught:
        load_concepts(path)
    assert len(str(caught.value)) < len(str(path)) + 200, str(caught.value)


# -- control and bidirectional characters in names ------------------------------------------------

BAD_CHARACTERS = {
    "U+0000": "\x00", "U+0007": "\x07", "U+202E": "\u202e", "U+200E": "\u200e", "U+200F": "\u200f",
    "U+2066": "\u2066", "U+2069": "\u2069", "U+202A": "\u202a", "U+FEFF": "\ufeff", "U+200B": "\u200b",
}


def concept_input(form: str, name: str, tmp_path: Path) -> tuple[list[str], str]:
    """Arguments of `acp plan` giving the concepts dog and ``name`` in ``form``, and where an
    error must point."""
    if form == "inline":
        return ["--concepts", f"dog,{name}"], "--concepts"
    path = tmp_path / f"concepts.{form}"
    content = {
        "txt": f"dog\n{name}\n",
        "json": json.dumps(["dog", name]),
        "yaml": "- dog\n- " + json.dumps(name) + "\n",  # a JSON string is a YAML string, escapes too
        "jsonl": json.dumps({"concepts": ["dog"]}) + "\n" + json.dumps({"concepts": [name]}) + "\n",
    }[form]
    path.write_text(content, encoding="utf-8")
    return [str(path)], str(path)


@pytest.mark.parametrize("code", sorted(BAD_CHARACTERS))
@pytest.mark.parametrize("form", ["inline", "txt", "json", "yaml", "jsonl"])
def test_a_concept_name_with_a_control_character_is_one_line(tmp_path: Path, form: str, code: str) -> None:
    args, where = concept_input(form, f"ca{BAD_CHARACTERS[code]}t", tmp_path)
    result = invoke("plan", *args, "-o", tmp_path / "plans.jsonl", "--planner", "heuristic")
    assert_one_line_error(result, where, code)
    assert not (tmp_path / "plans.jsonl").exists()


@pytest.mark.parametrize("name", ["\u0645\u06cc\u200c\u062e\u0648\u0627\u0647\u0645",  # Persian, with ZWNJ
                                  "\U0001f468\u200d\U0001f469\u200d\U0001f467"])  # emoji joined by ZWJ
def test_joiners_that_spell_words_are_allowed(tmp_path: Path, name: str) -> None:
    result = invoke("plan", "--concepts", f"dog,{name}", "-o", tmp_path / "plans.jsonl",
                    "--planner", "heuristic")
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize("field", ["name", "supercategory"])
def test_a_category_file_with_a_control_character_is_one_line(tmp_path: Path, field: str) -> None:
    category = {"id": 1, "name": "dog", "supercategory": "animal"}
    category[field] += "\u202e"
    path = tmp_path / "categories.json"
    path.write_text(json.dumps({"categories": [category]}))
    result = invoke("generate", "--concepts", "dog", "--categories", path, "-o", tmp_path / "out",
                    "--planner", "heuristic", "--no-progress")
    assert_one_line_error(result, str(path), "categories[0]", "U+202E")


def test_a_merge_input_with_a_control_character_in_a_category_is_one_line(tmp_path: Path) -> None:
    fine, bad = tmp_path / "fine.json", tmp_path / "bad.json"
    fine.write_text(json.dumps({"images": [], "annotations": [], "categories": [{"id": 1, "name": "dog"}]}))
    bad.write_text(json.dumps({"images": [], "annotations": [],
                               "categories": [{"id": 1, "name": "d\x00og"}]}))
    result = invoke("export", "merge", fine, bad, "-o", tmp_path / "merged.json")
    assert_one_line_error(result, str(bad), "U+0000")


def test_control_characters_in_an_llm_reply_are_stripped_and_recorded() -> None:
    from acp.plan.base import SceneRequest
    from acp.plan.parse import parse_plan
    from tests.chat_server import layout

    draft = layout(["dog"])
    draft["caption"] = "A dog\u202e in a park.\x00"
    draft["objects"][0]["description"] = "a \u2066brown\u2069 dog"
    draft["objects"][0]["category"] = "d\u200bog"
    plan = parse_plan(json.dumps(draft), SceneRequest(id="s1", concepts=("dog",), seed=1),
                      categories=("dog",))
    assert plan.caption == "A dog in a park."
    assert plan.objects[0].description == "a brown dog" and plan.objects[0].category == "dog"
    assert any("5 control or formatting characters" in repair for repair in plan.repairs), plan.repairs

"""Long-tail top-up: histogram of a real file, quotas, companions from co-occurrence, the
report, and `generate --balance` end to end with tiny models."""

from __future__ import annotations

import json
import math
import random
import re
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from acp.balance import (
    BalanceOptions,
    pass_rates_from,
    plan_balance,
    prompt_phrase,
    read_histogram,
    synthetic_counts,
)
from acp.cli import app
from acp.errors import InputError
from tests.chat_server import chat_server_fixture  # noqa: F401  (provides chat_server)

runner = CliRunner()

# name, supercategory, LVIS frequency
CATEGORIES = [
    ("person", "human", "f"), ("car", "vehicle", "f"), ("dog", "animal", "f"),
    ("kite", "sports", "c"), ("aerosol_can", "object", "r"), ("bow_(weapon)", "weapon", "r"),
    ("unicycle", "vehicle", "r"), ("frisbee", "sports", "r"),
]


def long_tailed(path: Path, *, frequency: bool = True, seed: int = 0) -> Path:
    """A small LVIS-style file: three head classes with hundreds of instances, a tail of 1-5.
    ``unicycle`` never shares an image with another class; ``frisbee`` only with ``kite``; a
    crowd box of ``aerosol_can`` is not counted. Ids are sparse (10, 20, ...) on purpose."""
    rng = random.Random(seed)
    ids = {name: 10 * (i + 1) for i, (name, _, _) in enumerate(CATEGORIES)}
    categories = [{"id": ids[n], "name": n, "supercategory": s, "synonyms": [n],
                   **({"frequency": f} if frequency else {})} for n, s, f in CATEGORIES]
    images: list[dict] = []
    annotations: list[dict] = []

    def image(names: list[str], crowd: tuple[str, ...] = ()) -> None:
        image_id = 1000 + len(images)
        images.append({"id": image_id, "file_name": f"{image_id}.jpg", "width": 640, "height": 480})
        for name in names:
            x, y = rng.uniform(0, 500), rng.uniform(0, 350)
            annotations.append({"id": 1 + len(annotations), "image_id": image_id, "category_id": ids[name],
                                "bbox": [x, y, 60.0, 80.0], "area": 4800.0, "iscrowd": int(name in crowd),
                                "segmentation": [[x, y, x + 60, y, x + 60, y + 80]]})

    for _ in range(100):
        image(["person", "person", "car"])
    for _ in range(60):
        image(["person", "dog"])
    for _ in range(40):
        image(["car", "car", "dog"])
    for _ in range(9):
        image(["kite", "person"])
    image(["kite", "frisbee"])
    image(["aerosol_can", "person"])
    image(["aerosol_can", "aerosol_can", "person", "dog"])
    image(["aerosol_can", "person"], crowd=("aerosol_can",))
    image(["bow_(weapon)", "person", "car"])
    image(["unicycle", "unicycle"])
    path.write_text(json.dumps({"info": {}, "images": images, "annotations": annotations,
                                "categories": categories}))
    return path


@pytest.fixture
def real(tmp_path: Path) -> Path:
    return long_tailed(tmp_path / "real.json")


def counts_by_name(histogram) -> dict[str, int]:
    return {c.name: int(n) for c, n in zip(histogram.categories, histogram.instances, strict=True)}


def test_histogram_counts_instances_not_crowds_and_cooccurrence(real: Path) -> None:
    histogram = read_histogram(real)
    counts = counts_by_name(histogram)
    assert counts == {"person": 100 * 2 + 60 + 9 + 3 + 1, "car": 100 + 80 + 1, "dog": 100 + 1, "kite": 10,
                      "aerosol_can": 3, "bow_(weapon)": 1, "unicycle": 2, "frisbee": 1}
    assert histogram.crowd == 1 and histogram.images == 215
    rows = {c.name: i for i, c in enumerate(histogram.categories)}
    assert histogram.cooccur(rows["aerosol_can"], rows["dog"])
    assert not histogram.cooccur(rows["frisbee"], rows["person"])
    partners, shared = histogram.partners(rows["person"])
    assert dict(zip(partners.tolist(), shared.tolist(), strict=True))[rows["car"]] == 101
    assert [c.phrase for c in histogram.categories][4:6] == ["aerosol can", "bow (weapon)"]


def test_quotas_follow_the_formula(real: Path) -> None:
    histogram = read_histogram(real)
    for target, rate, cap in ((8, 1.0, None), (20, 0.7, None), (20, 0.3, 40)):
        plan = plan_balance(histogram, BalanceOptions(target=target, pass_rate=rate, tail_below=10,
                                                      max_per_category=cap))
        for i, c in enumerate(histogram.categories):
            n = int(histogram.instances[i])
            expected = math.ceil(max(0, target - n) / rate) if n < 10 else 0
            assert plan.quota[i] == (min(expected, cap) if cap else expected), (c.name, target, rate)
            # Every quota is met exactly: as subject or as a companion counted towards it.
            assert plan.as_subject[i] + plan.towards_quota[i] == plan.quota[i]


def test_selection_filters_combine_and_bad_names_fail(real: Path) -> None:
    histogram = read_histogram(real)
    selected = plan_balance(histogram, BalanceOptions(target=5, frequency=("r",), tail_below=2)).selected
    names = {c.name for c, s in zip(histogram.categories, selected, strict=True) if s}
    assert names == {"bow_(weapon)", "frisbee"}
    only = plan_balance(histogram, BalanceOptions(target=5, categories_only=("Aerosol Cans", "unicycle")))
    assert {c.name for c, s in zip(histogram.categories, only.selected, strict=True) if s} == {
        "aerosol_can", "unicycle"}
    with pytest.raises(InputError, match=r"--categories-only: no category .* for 'zebra'"):
        plan_balance(histogram, BalanceOptions(target=5, categories_only=("zebra", "dog")))


def test_companions_only_from_real_cooccurrence_unless_backed_off(real: Path) -> None:
    histogram = read_histogram(real)
    plan = plan_balance(histogram, BalanceOptions(target=30, tail_below=20, objects=(2, 4), seed=3))
    assert plan.scenes
    seen_backoff = set()
    for scene in plan.scenes:
        rows = [scene.subject, *(r for r, _ in scene.companions)]
        assert len(set(rows)) == len(rows)
        for row, source in scene.companions:
            if source == "cooccurrence":
                assert histogram.cooccur(scene.subject, row)
            else:  # only for a subject with no real partner, and never silently
                assert histogram.partners(scene.subject)[0].size == 0
                assert plan.backoffs[(scene.subject, row, source)] > 0
                seen_backoff.add((histogram.categories[scene.subject].name, source))
        companions = [r for r, _ in scene.companions]
        for k, a in enumerate(companions):  # companions have all shared an image with each other
            for b in companions[k + 1:]:
                assert histogram.cooccur(a, b)
    # unicycle shares no image: it backs off to its supercategory (vehicle: car's partners).
    assert ("unicycle", "supercategory") in seen_backoff
    # frisbee only ever met a kite: nothing else is planned with it.
    rows = {c.name: i for i, c in enumerate(histogram.categories)}
    for scene in plan.scenes:
        if scene.subject == rows["frisbee"]:
            assert {r for r, _ in scene.companions} <= {rows["kite"]}


def test_head_classes_are_not_inflated(real: Path) -> None:
    histogram = read_histogram(real)
    for cap in (0.0, 0.05):
        plan = plan_balance(histogram, BalanceOptions(target=40, tail_below=20, objects=(3, 3),
                                                      companion_cap=cap))
        assert (plan.beyond_quota <= np.floor(cap * histogram.instances)).all()
        assert plan.beyond_quota.sum() <= cap * histogram.instances.sum()
    assert plan.beyond_quota.sum() > 0  # the cap binds: head companions stop at 5%


def test_a_target_below_every_count_is_an_empty_plan(real: Path, tmp_path: Path) -> None:
    result = runner.invoke(app, ["plan", "--balance", str(real), "--target", "1", "--tail-below", "5",
                                 "-o", str(tmp_path / "plans.jsonl"), "--planner", "heuristic"])
    assert result.exit_code == 0, result.output
    assert "nothing to do" in result.output
    assert not (tmp_path / "plans.jsonl").exists()
    assert json.loads((tmp_path / "plans.balance.json").read_text())["scenes"] == 0


@pytest.mark.parametrize(("content", "args", "expected"), [
    ({"images": [], "annotations": [{"image_id": 1, "category_id": 1}]}, (), "no categories"),
    ({"images": [], "annotations": [], "categories": [{"id": 1, "name": "a"}]}, (), "no annotations"),
    ({"images": [], "annotations": 3, "categories": []}, (), "'annotations' is not a list"),
    (None, ("--frequency", "r"), "needs LVIS's 'frequency' field"),
    (None, ("--categories-only", "dog,zebra"), "no category .* for 'zebra'"),
    (None, ("--frequency", "x"), "expected letters of r,c,f"),
])
def test_bad_input_is_one_line(tmp_path: Path, content, args, expected) -> None:
    path = tmp_path / "real.json"
    if content is None:
        long_tailed(path, frequency=False)
    else:
        path.write_text(json.dumps(content))
    result = runner.invoke(app, ["plan", "--balance", str(path), "--target", "5", *args,
                                 "-o", str(tmp_path / "p.jsonl"), "--planner", "heuristic"])
    assert result.exit_code == 1, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("acp: error:")]
    assert len(errors) == 1 and re.search(expected, errors[0]), result.output


def test_balance_options_need_balance_and_a_target(real: Path, tmp_path: Path) -> None:
    out = str(tmp_path / "p.jsonl")
    for args, expected in ((["--concepts", "dog", "--target", "5"], "need --balance"),
                           (["--balance", str(real)], "needs --target"),
                           (["--balance", str(real), "--target", "5", "--concepts", "dog"], "without INPUT"),
                           (["--balance", str(real), "--target", "5", "--scenes", "3"], "--scenes")):
        result = runner.invoke(app, ["plan", *args, "-o", out, "--planner", "heuristic"])
        assert result.exit_code == 2 and expected in result.output, (args, result.output)


def test_plan_names_lvis_categories_as_phrases_and_tells_the_planner(real: Path, tmp_path: Path) -> None:
    from acp.plan.llm import scene_prompt

    out = tmp_path / "plans.jsonl"
    result = runner.invoke(app, ["plan", "--balance", str(real), "--target", "6", "--frequency", "r",
                                 "-o", str(out), "--planner", "heuristic", "--no-progress", "--seed", "2"])
    assert result.exit_code == 0, result.output
    plans = [json.loads(line) for line in out.read_text().splitlines()]
    names = {o["category"] for p in plans for o in p["objects"]}
    assert "bow (weapon)" in names and "bow_(weapon)" not in names
    subjects = [p["concepts"][0] for p in plans]
    assert set(subjects) <= {"aerosol can", "bow (weapon)", "unicycle", "frisbee"}
    # The subject leads the caption, its companions follow "with".
    assert all(re.match(rf"A photo of an? {re.escape(s)}( with | in )", p["caption"])
               for p, s in zip(plans, subjects, strict=True))
    prompt = scene_prompt(["bow (weapon)", "person"], 512, 512, ["dog", "cat"], ["person"])
    assert 'Subject: "bow (weapon)"\nCompanions: ["person"]\nAllowed categories: ["bow (weapon)", "person"]' \
        in prompt


def test_pass_rate_from_an_earlier_summary(real: Path, tmp_path: Path) -> None:
    histogram = read_histogram(real)
    summary = tmp_path / "summary.json"
    summary.write_text(json.dumps({"instances_kept_by_category": {"aerosol can": 5, "person": 30},
                                   "instances_dropped_by_category": {"aerosol can": 5, "person": 10,
                                                                     "bow (weapon)": 1}}))
    found = pass_rates_from(summary, histogram)
    rates = dict(zip([c.name for c in histogram.categories], found, strict=True))
    assert rates["aerosol_can"] == pytest.approx(0.5)
    assert rates["person"] == pytest.approx(0.75)
    assert rates["bow_(weapon)"] == pytest.approx(35 / 51)  # too few: the run's overall rate
    plan = plan_balance(histogram, BalanceOptions(target=13, tail_below=5),
                        pass_rates_from(summary, histogram))
    rows = {c.name: i for i, c in enumerate(histogram.categories)}
    assert plan.quota[rows["aerosol_can"]] == 20  # ceil((13 - 3) / 0.5)


def test_report_writes_table_json_and_png(real: Path, tmp_path: Path) -> None:
    result = runner.invoke(app, ["balance", "report", str(real), "--target", "5", "-o", str(tmp_path / "r")])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "r" / "balance.json").read_text())
    assert [r["name"] for r in report["rows"]][:3] == ["person", "car", "dog"]  # head to tail
    assert report["below_target_before"] == report["below_target_after"] == 4
    png = (tmp_path / "r" / "balance.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 5000
    assert "aerosol_can" in result.output


def test_generate_balance_reaches_the_target_and_merges(tiny_models, real: Path, tmp_path: Path) -> None:
    from pycocotools.coco import COCO

    out = tmp_path / "out"
    target = 4
    args = ["generate", "--balance", str(real), "--target", str(target), "--tail-below", str(target),
            "-o", str(out), "--model", str(tiny_models["gligen"]), "--clip-model", str(tiny_models["clip"]),
            "--steps", "2", "--size", "64", "-k", "1", "--min-clis-i", "0", "--no-progress",
            "--planner", "heuristic", "--objects-per-scene", "1-2"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    synthetic = json.loads((out / "annotations.json").read_text())
    real_data = json.loads(real.read_text())
    assert synthetic["categories"] == [{k: c[k] for k in ("id", "name", "supercategory")}
                                       for c in real_data["categories"]]
    histogram = read_histogram(real)
    added, unmatched = synthetic_counts(out / "annotations.json", histogram)
    assert unmatched == 0
    for i, c in enumerate(histogram.categories):
        if histogram.instances[i] < target:
            assert histogram.instances[i] + added[i] >= target, c.name
    report = json.loads((out / "balance.json").read_text())
    assert report["below_target_before"] == 4 and report["below_target_after"] == 0
    assert (out / "balance.png").stat().st_size > 0 and (out / "plans.balance.json").is_file()
    # Rerunning the same command resumes a finished run: the settings still match.
    again = runner.invoke(app, args)
    assert again.exit_code == 0, again.output

    # One training file with REAL's ids, no remapping.
    (tmp_path / "images").mkdir()
    for image in real_data["images"]:
        (tmp_path / "images" / image["file_name"]).write_bytes(b"")
    merged = tmp_path / "merged.json"
    result = runner.invoke(app, ["export", "merge", str(out / "annotations.json"), str(real),
                                 "-o", str(merged)])
    assert result.exit_code == 0, result.output
    assert "merged into" not in result.output and "new to" not in result.output
    data = json.loads(merged.read_text())
    assert data["categories"] == real_data["categories"]
    coco = COCO(str(merged))
    by_name = {c["name"]: c["id"] for c in real_data["categories"]}
    bows = coco.getAnnIds(catIds=[by_name["bow_(weapon)"]])
    assert len(bows) >= target
    assert len(coco.getImgIds()) == len(real_data["images"]) + len(synthetic["images"])


def test_prompt_phrase() -> None:
    assert prompt_phrase("aerosol_can") == "aerosol can"
    assert prompt_phrase("bow_(weapon)") == "bow (weapon)"
    assert prompt_phrase("  fire_hydrant ") == "fire hydrant"


@pytest.mark.parametrize("chunk", [7, 64, 1 << 22])
def test_streamed_reading_matches_json_load_at_any_chunk_size(real: Path, monkeypatch, chunk: int) -> None:
    """Values cut anywhere by the read buffer decode whole; polygons can be read as null."""
    import acp.coco as stream

    monkeypatch.setattr(stream, "CHUNK", chunk)
    whole = json.loads(real.read_text())
    seen: list[dict] = []
    found = stream.scan_object(real, visit={"annotations": seen.append}, keep=("categories", "info"))
    assert seen == whole["annotations"]
    assert found == {"categories": whole["categories"], "info": whole["info"]}
    bare: list[dict] = []
    stream.scan_object(real, visit={"annotations": bare.append}, polygons=False)
    assert [a["segmentation"] for a in bare] == [None] * len(whole["annotations"])
    assert [{**a, "segmentation": None} for a in whole["annotations"]] == bare


@pytest.mark.parametrize("text", ['{"a": [1, 2', '[1]', '{"a": 1,}', '{"a" 1}', '{} x', '{"a": [1 2]}',
                                  '{"a": ' + "[" * 100_000 + "]" * 100_000 + "}", "\xff{}",
                                  '{"a": [' + "9" * 5000 + "]}"])
def test_streamed_reading_of_bad_json_is_one_input_error(tmp_path: Path, text: str) -> None:
    from acp.coco import scan_object

    path = tmp_path / "bad.json"
    path.write_bytes(text.encode("latin-1") if text.startswith("\xff") else text.encode())
    with pytest.raises(InputError) as error:
        scan_object(path, keep=("a",))
    assert str(error.value).startswith(str(path)) and "\n" not in str(error.value)


def test_the_llm_is_told_subject_and_companions_and_adds_nothing(chat_server) -> None:
    """A top-up scene allows its own concepts only: a person the run knows is still refused,
    so companions never inflate a head class beyond what was planned."""
    from acp.plan.base import SceneRequest
    from tests.chat_server import ok, valid_text
    from tests.test_llm_planner import extra_object, plan_one

    concepts = ["dog", "frisbee"]
    request = SceneRequest("000000", tuple(concepts), seed=1, companions=("frisbee",))
    chat_server.script(ok(extra_object("person")(concepts)), ok(valid_text(concepts)))
    outcome = plan_one(chat_server.url, request, categories=("dog", "frisbee", "person"))
    assert outcome.plan is not None and outcome.attempts == 2, outcome.error
    first = chat_server.requests[0].messages[-1]["content"]
    assert 'Subject: "dog"\nCompanions: ["frisbee"]\nAllowed categories: ["dog", "frisbee"]' in first
    reask = chat_server.requests[1].messages[-1]["content"]
    assert "'person' is not one of the requested categories" in reask


def test_settings_of_older_runs_still_match() -> None:
    """The digest a run's settings.json holds is unchanged for inputs without companions."""
    import hashlib

    from acp.concepts import ConceptInput

    old = hashlib.sha256(json.dumps({"vocabulary": ["dog", "cat"], "quotas": [], "scenes": []},
                                    separators=(",", ":")).encode()).hexdigest()
    assert ConceptInput(vocabulary=("dog", "cat")).fingerprint() == old
    scenes = (("aerosol can", "person"),)
    assert ConceptInput(scenes=scenes, companions=(("person",),)).fingerprint() != \
        ConceptInput(scenes=scenes).fingerprint()


# -- hostile REAL files, summaries and sizes: one line, a bound, never NaN -----------------------


def plan_args(real: Path, tmp_path: Path, *args: str) -> list[str]:
    return ["plan", "--balance", str(real), *args, "-o", str(tmp_path / "p.jsonl"),
            "--planner", "heuristic", "--no-progress"]


def one_error(result) -> str:
    assert result.exit_code == 1, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("acp: error:")]
    assert len(errors) == 1 and "Traceback" not in result.output, result.output
    return errors[0]


def summary_text(kept: str, dropped: str = "{}") -> str:
    return f'{{"instances_kept_by_category": {kept}, "instances_dropped_by_category": {dropped}}}'


@pytest.mark.parametrize(("text", "expected"), [
    (summary_text('{"aerosol can": NaN}'), r"summary\.json: not valid JSON \(NaN is not JSON\)"),
    (summary_text('{"aerosol can": Infinity}'), r"not valid JSON \(Infinity is not JSON\)"),
    (summary_text('{"aerosol can": 1e308}'),
     r"summary\.json: instances_kept_by_category\.aerosol can: Input should be a valid integer"),
    (summary_text('{"person": 3}', '{"aerosol can": -Infinity}'),
     r"not valid JSON \(-Infinity is not JSON\)"),
    (summary_text('{"aerosol can": -1}'), r"aerosol can: Input should be greater than or equal to 0"),
    (summary_text('{"aerosol can": 2.5}'), r"aerosol can: Input should be a valid integer"),
    (summary_text('{"aerosol can": true}'), r"aerosol can: Input should be a valid integer"),
    (summary_text('{"aerosol can": "7"}'), r"aerosol can: Input should be a valid integer"),
    (summary_text('{"aerosol can": 10000000000000001}'), r"expected a count of instances \(an integer in"),
    (summary_text('{"aerosol can": ' + "9" * 5000 + "}"), r"not valid JSON \(an integer of more than"),
    ('{"a":' * 5000 + "1" + "}" * 5000, r"not valid JSON \(nested too deeply\)"),
    (summary_text('{"zebra": 3}', '{"yak": 1}'), r"none of its categories is a category of"),
    ("[1, 2]", r"summary\.json: expected a JSON object, got list"),
    ('{"scenes": 3}', r"expected the summary.json of an acp generate run"),
])
def test_pass_rate_from_validates_every_number(real: Path, tmp_path: Path, text: str, expected: str) -> None:
    """NaN, infinities and 1e308 counts made NaN pass rates, quotas of -2**63 and NaN in
    PLANS.balance.json, with exit 0; a deep file or a 5000-digit number, a traceback."""
    summary = tmp_path / "summary.json"
    summary.write_text(text)
    result = runner.invoke(app, plan_args(real, tmp_path, "--target", "6", "--pass-rate-from", str(summary)))
    assert re.search(expected, one_error(result)), result.output
    assert not (tmp_path / "p.balance.json").exists()


def strict_json(text: str):
    def refuse(constant: str):
        raise AssertionError(f"{constant} in JSON written by acp")

    return json.loads(text, parse_constant=refuse)


def test_plan_record_and_report_are_strict_json(real: Path, tmp_path: Path) -> None:
    """NaN reached PLANS.balance.json (invalid JSON); now every number is checked where it is
    read, and a NaN that got through anyway stops the write instead of being written."""
    summary = tmp_path / "summary.json"
    summary.write_text(summary_text('{"aerosol can": 0, "person": 7}', '{"aerosol can": 9, "person": 0}'))
    result = runner.invoke(app, plan_args(real, tmp_path, "--target", "6", "--tail-below", "6",
                                          "--pass-rate-from", str(summary)))
    assert result.exit_code == 0, result.output
    record = strict_json((tmp_path / "p.balance.json").read_text())
    rows = {r["name"]: r for r in record["rows"]}
    assert rows["aerosol_can"]["pass_rate"] == 0.1  # 0 of 9 kept: the floor, never 0 or NaN
    assert all(r["quota"] > 0 for r in rows.values() if r["selected"])  # every one is planned
    result = runner.invoke(app, ["balance", "report", str(real), str(tmp_path / "p.jsonl"), "--target", "6"])
    assert result.exit_code == 0, result.output
    strict_json((tmp_path / "balance.json").read_text())
    plan = plan_balance(read_histogram(real), BalanceOptions(target=6))
    plan.pass_rates[0] = math.nan
    with pytest.raises(ValueError, match="not JSON compliant"):
        plan.write(tmp_path / "nan.balance.json")
    assert not list(tmp_path.glob("*nan.balance.json*"))


def test_a_top_up_too_large_to_plan_is_one_line_at_once(real: Path, tmp_path: Path) -> None:
    """--target 10000000 planned for minutes while memory grew: the quotas' sum is checked
    against MAX_TOPUP_INSTANCES before any scene is drawn."""
    from acp.balance import MAX_TOPUP_INSTANCES

    result = runner.invoke(app, plan_args(real, tmp_path, "--target", "10000000"))
    line = one_error(result)
    assert f"at most {MAX_TOPUP_INSTANCES} are planned at once" in line and "--max-per-category" in line
    histogram = read_histogram(real)
    plan = plan_balance(histogram, BalanceOptions(target=10_000_000, max_per_category=100_000))
    assert len(plan.scenes) <= MAX_TOPUP_INSTANCES  # within the bound, it plans


def coco_text(annotations: str, categories: str = '[{"id": 1, "name": "dog"}]') -> str:
    return f'{{"images": [], "annotations": {annotations}, "categories": {categories}}}'


@pytest.mark.parametrize(("text", "expected"), [
    (coco_text('[{"image_id": 1, "category_id": ' + "1" * 5000 + "}]"), "an integer of more than"),
    (coco_text('[{"image_id": 1, "category_id": 1}]', '[{"id": ' + "1" * 4000 + ', "name": "dog"}]'),
     "expected a 64-bit integer"),
    (coco_text('[{"image_id": 1, "category_id": 1, "note": "' + "x" * 200_000 + '"}]'),
     "a value longer than 65536 characters"),
    (coco_text("[]", json.dumps([{"id": i, "name": f"c{i}", "def": "x" * 2000} for i in range(50)])),
     "'categories' is longer than 65536 characters"),
    (coco_text("[]", json.dumps([{"id": i, "name": f"c{i}"} for i in range(101)])),
     "'categories' has more than 100 elements"),
])
def test_a_real_file_with_a_huge_value_is_one_line(tmp_path: Path, monkeypatch, text: str,
                                                   expected: str) -> None:
    """A 5000-digit id was a traceback, a 4000-digit one an OverflowError; one huge string or
    categories list was read whole (the caps are made small here to keep the test fast)."""
    from acp import coco

    monkeypatch.setattr(coco, "CHUNK", 1 << 12)
    monkeypatch.setattr(coco, "MAX_VALUE_CHARS", 1 << 16)
    monkeypatch.setattr(coco, "MAX_KEPT_CHARS", 1 << 16)
    monkeypatch.setattr(coco, "MAX_KEPT_ITEMS", 100)
    path = tmp_path / "real.json"
    path.write_text(text)
    result = runner.invoke(app, plan_args(path, tmp_path, "--target", "3"))
    assert expected in one_error(result)


def test_ids_that_are_no_integers_are_counted_or_said(tmp_path: Path) -> None:
    """Float ids with an integer value (1.0, as some tools write every number) are those ids;
    other ids are skipped, and the skipped annotations are said, not silently dropped."""
    annotations = [{"image_id": 1, "category_id": 1.0}, {"image_id": "a", "category_id": 2},
                   {"image_id": 1.0, "category_id": 2}, {"image_id": 2, "category_id": 1.5},
                   {"image_id": 2, "category_id": "1"}, {"image_id": [2], "category_id": 1},
                   {"image_id": 3, "category_id": 1e30}, {"image_id": 3, "category_id": 7}]
    path = tmp_path / "real.json"
    path.write_text(json.dumps({"images": [], "annotations": annotations,
                                "categories": [{"id": 1, "name": "dog"}, {"id": 2, "name": "cat"}]}))
    histogram = read_histogram(path)
    assert counts_by_name(histogram) == {"dog": 1, "cat": 2}
    assert histogram.images == 2 and histogram.cooccur(0, 1)  # image 1 (and 1.0) holds both
    assert histogram.skipped == {"category_id not an integer": 3, "image_id not an integer or a string": 1,
                                 "category_id not in its categories": 1}
    result = runner.invoke(app, ["balance", "report", str(path), "-o", str(tmp_path / "r")])
    assert result.exit_code == 0, result.output
    assert ("5 annotations not counted (3 category_id not an integer, 1 image_id not an integer or a "
            "string, 1 category_id not in its categories)") in result.stderr


def brute_force_pairs(path: Path) -> dict[tuple[str, str], int]:
    """Images shared by each pair of categories, counted the plain way."""
    data = json.loads(path.read_text())
    names = {c["id"]: c["name"] for c in data["categories"]}
    by_image: dict = {}
    for a in data["annotations"]:
        if not a.get("iscrowd"):
            by_image.setdefault(a["image_id"], set()).add(names[a["category_id"]])
    pairs: dict[tuple[str, str], int] = {}
    for found in by_image.values():
        for x in found:
            for y in found:
                if x != y:
                    pairs[(x, y)] = pairs.get((x, y), 0) + 1
    return pairs


def histogram_pairs(histogram) -> dict[tuple[str, str], int]:
    names = [c.name for c in histogram.categories]
    return {(names[r], names[int(p)]): int(s) for r in range(len(names))
            for p, s in zip(*histogram.partners(r), strict=True)}


def test_cooccurrence_is_counted_in_chunks_exactly(real: Path, monkeypatch) -> None:
    """Pairs are counted a chunk of images at a time (memory bounded by the chunk, not by the
    file's pairs): the counts are those of the plain count, with string image ids too."""
    from acp import balance

    expected = brute_force_pairs(real)
    monkeypatch.setattr(balance, "PAIR_CHUNK", 3)
    assert histogram_pairs(read_histogram(real)) == expected
    data = json.loads(real.read_text())
    for a in data["annotations"]:
        a["image_id"] = f"img-{a['image_id']}"
    real.write_text(json.dumps(data))
    histogram = read_histogram(real)
    assert histogram_pairs(histogram) == expected and histogram.pairs_cut == 0


def test_past_max_pairs_the_pairs_shared_by_fewest_images_are_left_out(real: Path, monkeypatch) -> None:
    """A file whose images each hold many random classes made billions of pairs (a 47 MB file
    took 1.8 GB): past MAX_PAIRS distinct pairs, those shared by fewest images go, and say so;
    past MAX_PARTNERS partners of a category, likewise. What is kept is counted exactly."""
    from acp import balance

    expected = brute_force_pairs(real)
    monkeypatch.setattr(balance, "PAIR_CHUNK", 4)
    monkeypatch.setattr(balance, "MAX_PAIRS", 3)
    histogram = read_histogram(real)
    found = histogram_pairs(histogram)
    assert len(found) == 2 * 3 and histogram.pairs_cut > 0
    assert all(expected[pair] == count for pair, count in found.items())
    most = sorted({tuple(sorted(p)): n for p, n in expected.items()}.values(), reverse=True)[:3]
    assert sorted({tuple(sorted(p)): n for p, n in found.items()}.values(), reverse=True) == most
    monkeypatch.setattr(balance, "MAX_PAIRS", 1000)
    monkeypatch.setattr(balance, "MAX_PARTNERS", 1)
    histogram = read_histogram(real)
    assert all(histogram.partners(r)[0].size <= 1 for r in range(len(histogram.categories)))
    assert histogram.pairs_cut > 0


def test_memory_of_the_histogram_does_not_grow_with_pairs(tmp_path: Path) -> None:
    """The co-occurrence blow-up measured as what the process allocates (tracemalloc: numpy
    reports its arrays there): 4,000 images of 50 random classes each (5M pairs of 1,225
    distinct ones) stay within a few MB above the file's own 16 bytes an annotation."""
    import tracemalloc

    rng = random.Random(0)
    annotations = [{"image_id": image, "category_id": c}
                   for image in range(4000) for c in rng.sample(range(1, 51), 50)]
    path = tmp_path / "dense.json"
    path.write_text(json.dumps({"annotations": annotations,
                                "categories": [{"id": i, "name": f"class {i}"} for i in range(1, 51)]}))
    del annotations
    tracemalloc.start()
    try:
        histogram = read_histogram(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert histogram.pair_row.size == 50 * 49
    # 200,000 annotations: 3.2 MB of ids; the pairs of a chunk (2**20) take about 50 MB at once.
    assert peak < 80 << 20, peak


def test_report_without_matplotlib_names_only_what_it_wrote(real: Path, tmp_path: Path, monkeypatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib: ImportError
    result = runner.invoke(app, ["balance", "report", str(real), "-o", str(tmp_path / "r")])
    assert result.exit_code == 0, result.output
    assert "no balance.png: the balance chart needs matplotlib" in result.stderr
    assert "balance.png" not in result.stdout and str(tmp_path / "r" / "balance.json") in result.stdout
    assert not (tmp_path / "r" / "balance.png").exists()


def test_chart_names_the_categories_and_draws_dollars_as_written(tmp_path: Path, monkeypatch) -> None:
    """The x axis showed 0..8; a "$" in a file name or a category name started matplotlib's
    mathtext, and a bad formula was a traceback."""
    pytest.importorskip("matplotlib")
    from matplotlib.axes import Axes

    path = long_tailed(tmp_path / "real $\\frac{$.json")
    data = json.loads(path.read_text())
    data["categories"][3]["name"] = "$\\unknown{kite$"
    path.write_text(json.dumps(data))
    labels: list[list[str]] = []
    set_xticks = Axes.set_xticks

    def spy(self, ticks, labels_=None, **kwargs):
        labels.append(list(labels_ or []))
        return set_xticks(self, ticks, labels_, **kwargs)

    monkeypatch.setattr(Axes, "set_xticks", spy)
    result = runner.invoke(app, ["balance", "report", str(path), "-o", str(tmp_path / "r")])
    assert result.exit_code == 0, result.output
    assert labels == [["person", "car", "dog", "$\\unknown{kite$", "aerosol_can", "unicycle", "bow_(weapon)",
                       "frisbee"]]
    assert (tmp_path / "r" / "balance.png").read_bytes().startswith(b"\x89PNG")

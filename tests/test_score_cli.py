"""``acp bank build`` and ``acp score layouts | candidates`` through typer's CliRunner."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from acp.cli import app
from acp.schema import CandidateScore
from acp.score.bank import Bank
from tests.chat_server import ChatServer, chat_server_fixture, error, ok  # noqa: F401
from tests.test_bank import write_coco
from tests.test_clis_image import tiny_clip_dir_fixture  # noqa: F401  (provides tiny_clip_dir)

runner = CliRunner()

CAT, DOG, BIRD = [0.1, 0.2, 0.3, 0.4], [0.5, 0.3, 0.4, 0.5], [0.3, 0.2, 0.3, 0.3]


def plan_record(plan_id: str, objects: list[tuple[str, list[float]]], caption: str) -> dict[str, Any]:
    return {
        "id": plan_id,
        "caption": caption,
        "planner": "heuristic",
        "concepts": [c for c, _ in objects],
        "objects": [
            {"id": k, "category": c, "description": f"a photo of a {c}", "bbox": b}
            for k, (c, b) in enumerate(objects)
        ],
        "relations": [{"subject": 0, "object": 1, "predicate": "left of"}] if len(objects) > 1 else [],
    }


PLANS = [
    plan_record("p1", [("cat", CAT), ("dog", DOG)], "a cat left of a dog"),
    plan_record("p2", [("bird", BIRD)], "a bird"),
]


CAPTIONS = {str(p["id"]): str(p["caption"]) for p in PLANS}


def write_plans(path: Path, extra_lines: tuple[str, ...] = ()) -> Path:
    path.write_text(
        "".join(json.dumps(p) + "\n" for p in PLANS) + "".join(line + "\n" for line in extra_lines)
    )
    return path


def write_renders(folder: Path, counts: dict[str, int]) -> Path:
    rng = np.random.default_rng(0)
    lines = []
    for plan_id, count in counts.items():
        for index in range(count):
            path = f"{plan_id}/{index}.png"
            (folder / plan_id).mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(folder / path)
            lines.append(
                {
                    "plan_id": plan_id,
                    "index": index,
                    "seed": index,
                    "path": path,
                    "model": "tiny",
                    "steps": 2,
                    "guidance": 7.5,
                    "beta": 0.3,
                    "width": 64,
                    "height": 64,
                    "prompt": CAPTIONS.get(plan_id, "x"),  # what `acp render` records
                }
            )
    (folder / "manifest.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    return folder


@pytest.fixture
def bank_dir(tmp_path: Path) -> Path:
    coco = write_coco(
        tmp_path / "coco.json", [[("cat", CAT), ("dog", DOG)], [("dog", [0.4, 0.4, 0.3, 0.3])]] * 5
    )
    result = runner.invoke(app, ["bank", "build", str(coco), "-o", str(tmp_path / "bank")])
    assert result.exit_code == 0, result.output
    return tmp_path / "bank"


def test_bank_build_writes_a_loadable_bank_and_a_summary(tmp_path: Path, bank_dir: Path) -> None:
    bank = Bank.load(bank_dir)
    assert [c.key for c in bank.categories] == ["cat", "dog"] and bank.num_pairs == 5
    coco = write_coco(
        tmp_path / "crowd.json",
        [[("cat", CAT)]],
        extra_annotations=[{"id": 9, "image_id": 1, "category_id": 1, "bbox": [1, 1, 5, 5], "iscrowd": 1}],
    )
    result = runner.invoke(app, ["bank", "build", str(coco), "-o", str(tmp_path / "b2")])
    assert result.exit_code == 0
    assert "skipped: crowd 1" in result.output


def test_bank_build_of_a_bad_file_is_one_line_naming_it(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("[]")
    result = runner.invoke(app, ["bank", "build", str(bad), "-o", str(tmp_path / "bank")])
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("acp: error: ") and str(bad) in lines[0]
    assert not (tmp_path / "bank").exists()


def test_bank_build_without_a_usable_box_is_an_error_naming_the_files(tmp_path: Path) -> None:
    coco = write_coco(
        tmp_path / "useless.json",
        [],
        extra_annotations=[{"id": 9, "image_id": 1, "category_id": 1, "bbox": [1, 1, 5, 5], "iscrowd": 1}],
        extra_images=[{"id": 1, "width": 100, "height": 100}],
    )
    result = runner.invoke(app, ["bank", "build", str(coco), "-o", str(tmp_path / "bank")])
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("acp: error: ") and str(coco) in lines[0]
    assert "no usable boxes" in lines[0]
    assert not (tmp_path / "bank").exists()


def test_bank_build_over_a_bank_replaces_it_and_refuses_other_folders(tmp_path: Path, bank_dir: Path) -> None:
    coco = write_coco(tmp_path / "birds.json", [[("bird", BIRD)]])
    result = runner.invoke(app, ["bank", "build", str(coco), "-o", str(bank_dir)])
    assert result.exit_code == 0, result.output
    assert [c.key for c in Bank.load(bank_dir).categories] == ["bird"]
    assert sorted(p.name for p in bank_dir.iterdir()) == ["bank.npz", "index.json"]
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("mine")
    result = runner.invoke(app, ["bank", "build", str(coco), "-o", str(tmp_path / "mine")])
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "holds other files (notes.txt)" in lines[0]
    assert sorted(p.name for p in (tmp_path / "mine").iterdir()) == ["notes.txt"]


def test_score_layouts_adds_clis_l_and_reports_bad_lines(tmp_path: Path, bank_dir: Path) -> None:
    plans = write_plans(tmp_path / "plans.jsonl", extra_lines=('{"id": "broken"}',))
    out = tmp_path / "scored.jsonl"
    result = runner.invoke(app, ["score", "layouts", str(plans), "--bank", str(bank_dir), "-o", str(out)])
    assert result.exit_code == 1  # the broken line
    assert f"{plans}:3:" in result.output and "2 plans scored, 1 invalid" in result.output
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in records] == ["p1", "p2"]
    assert records[0]["clis_l"] > 50  # the bank holds this very layout
    detail = records[0]["clis_l_detail"]
    assert detail["method"] == "density" and detail["pairs"][0]["predicate"] == "left of"
    assert records[1]["clis_l_detail"]["method"] == "sanity"  # no bird in the bank
    assert records[0]["clis_l_method"] == "density" and records[0]["clis_l_sanity"] is None
    assert records[1]["clis_l"] is None and records[1]["clis_l_method"] == "sanity"
    assert records[1]["clis_l_sanity"] == pytest.approx(records[1]["clis_l_detail"]["score"], abs=1e-3)


def test_score_layouts_without_a_bank_labels_the_sanity_score(tmp_path: Path) -> None:
    plans = write_plans(tmp_path / "plans.jsonl")
    out = tmp_path / "scored.jsonl"
    result = runner.invoke(app, ["score", "layouts", str(plans), "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "reference-free" in result.stderr
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert all(r["clis_l_detail"]["reference_free"] for r in records)
    # A sanity check is not CLIS-L: clis_l stays empty, the value is labelled as what it is.
    assert all(r["clis_l"] is None and r["clis_l_method"] == "sanity" for r in records)
    assert [r["clis_l_sanity"] for r in records] == [
        pytest.approx(r["clis_l_detail"]["score"], abs=1e-3) for r in records
    ]
    assert all(r["clis_l_sanity"] > 0 for r in records)


def _scores(path: Path) -> list[CandidateScore]:
    return [CandidateScore.model_validate_json(line) for line in path.read_text().splitlines()]


def test_score_candidates_writes_scores_marks_best_and_resumes(
    tmp_path: Path, bank_dir: Path, tiny_clip_dir: Path
) -> None:
    plans = write_plans(tmp_path / "plans.jsonl")
    renders = write_renders(tmp_path / "renders", {"p1": 3, "p2": 2})
    out = tmp_path / "scores.jsonl"
    args = [
        "score",
        "candidates",
        str(renders),
        "--plans",
        str(plans),
        "-o",
        str(out),
        "--bank",
        str(bank_dir),
        "--clip-model",
        str(tiny_clip_dir),
        "--min-clis-i",
        "0",
        "--batch-size",
        "2",
        "--no-progress",
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    scores = _scores(out)
    assert sorted((s.plan_id, s.index) for s in scores) == [
        ("p1", 0),
        ("p1", 1),
        ("p1", 2),
        ("p2", 0),
        ("p2", 1),
    ]
    for plan_id in ("p1", "p2"):
        mine = [s for s in scores if s.plan_id == plan_id]
        (best,) = [s for s in mine if s.best]
        assert best.clis == max(s.clis for s in mine)
    p1 = next(s for s in scores if s.plan_id == "p1")
    assert p1.clis_l is not None and p1.clis_l > 50  # the bank holds this very layout
    assert p1.clis == pytest.approx(0.5 * p1.clis_l + 0.5 * p1.clis_i, abs=1e-2)
    assert [o.category for o in p1.objects] == ["cat", "dog"]
    assert p1.detail["settings"]["clip_model"] == str(tiny_clip_dir)
    p2 = next(s for s in scores if s.plan_id == "p2")
    assert p2.clis == p2.clis_i  # no bird in the bank: the sanity layout score does not count

    before = out.read_text()
    again = runner.invoke(app, args)
    assert again.exit_code == 0 and "5 already scored" in again.output and out.read_text() == before

    # A run killed after the first line: that plan is scored again, the other is kept.
    first = before.splitlines()[0]
    out.write_text(
        first + "\n" + "\n".join(line for line in before.splitlines() if '"plan_id":"p2"' in line) + "\n"
    )
    resumed = runner.invoke(app, args)
    assert resumed.exit_code == 0, resumed.output
    assert "2 already scored" in resumed.output
    assert sorted(before.splitlines()) == sorted(out.read_text().splitlines())

    other = runner.invoke(app, [*args[:-5], "--min-clis-i", "30", "--batch-size", "2", "--no-progress"])
    assert other.exit_code == 1 and "min_clis_i differ" in other.stderr


def test_thresholds_drop_weak_plans_and_instances_with_a_reason(
    tmp_path: Path, bank_dir: Path, tiny_clip_dir: Path
) -> None:
    plans = write_plans(tmp_path / "plans.jsonl")
    renders = write_renders(tmp_path / "renders", {"p1": 2})
    out = tmp_path / "scores.jsonl"
    # A bank whose dogs sit elsewhere, so that p1's layout scores under 100.
    coco = write_coco(tmp_path / "elsewhere.json", [[("cat", CAT), ("dog", [0.05, 0.6, 0.2, 0.3])]] * 5)
    assert runner.invoke(app, ["bank", "build", str(coco), "-o", str(tmp_path / "b")]).exit_code == 0
    base = [
        "score",
        "candidates",
        str(renders),
        "--plans",
        str(plans),
        "--bank",
        str(tmp_path / "b"),
        "--clip-model",
        str(tiny_clip_dir),
        "--no-progress",
    ]
    result = runner.invoke(app, [*base, "-o", str(out), "--min-clis-l", "100.5"])
    assert result.exit_code == 2 and "--min-clis-l" in result.output  # thresholds are 0..100
    result = runner.invoke(app, [*base, "-o", str(out), "--min-clis-l", "100"])
    assert result.exit_code == 0, result.output
    scores = _scores(out)
    assert scores and all(s.clis_l is not None and s.clis_l < 100 for s in scores)
    assert all(not s.kept and not s.best and s.reason == f"plan CLIS-L {s.clis_l:.1f} < 100" for s in scores)
    strict = tmp_path / "strict.jsonl"
    result = runner.invoke(app, [*base, "-o", str(strict), "--min-clis-l", "0", "--min-clis-i", "100"])
    scores = _scores(strict)
    assert all(not o.kept for s in scores for o in s.objects)
    assert all(s.reason == "no instance reaches CLIS-I 100" for s in scores)


def test_unreadable_images_are_reported_and_the_run_goes_on(tmp_path: Path, tiny_clip_dir: Path) -> None:
    plans = write_plans(tmp_path / "plans.jsonl")
    renders = write_renders(tmp_path / "renders", {"p1": 2, "p2": 1})
    (renders / "p1" / "1.png").unlink()
    (renders / "p2" / "0.png").write_bytes(b"not a png")
    with open(renders / "manifest.jsonl", "a") as handle:
        handle.write('{"plan_id": "p9", "index": 0}\n')
    out = tmp_path / "scores.jsonl"
    result = runner.invoke(
        app,
        [
            "score",
            "candidates",
            str(renders),
            "--plans",
            str(plans),
            "-o",
            str(out),
            "--clip-model",
            str(tiny_clip_dir),
            "--no-progress",
        ],
    )
    assert result.exit_code == 1
    assert "p1/1.png: image file not found" in result.output
    assert "p2/0.png: cannot decode the image" in result.output
    assert "manifest.jsonl:4: seed: Field required" in result.output
    assert [(s.plan_id, s.index) for s in _scores(out)] == [("p1", 0)]
    (score,) = _scores(out)  # no bank: the sanity score is in detail, not in clis_l
    assert score.clis_l is None and score.detail["clis_l_sanity"] > 0
    assert score.clis == score.clis_i


@pytest.mark.parametrize("command", ["candidates", "dataset"])
@pytest.mark.parametrize("device", ["gpu", "cuda:x"])
def test_a_bad_device_is_one_line_naming_the_option(
    tmp_path: Path, tiny_clip_dir: Path, command: str, device: str
) -> None:
    plans = write_plans(tmp_path / "plans.jsonl")
    renders = write_renders(tmp_path / "renders", {"p1": 1})
    if command == "candidates":
        args = ["score", "candidates", str(renders), "--plans", str(plans)]
    else:
        coco = write_coco(tmp_path / "coco.json", [[("cat", CAT)]])
        args = ["score", "dataset", str(coco), "--images", str(renders)]
    out = tmp_path / "out"
    result = runner.invoke(
        app, [*args, "-o", str(out), "--clip-model", str(tiny_clip_dir), "--device", device, "--no-progress"]
    )
    assert result.exit_code == 1, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith(f"acp: error: --device '{device}': not a torch device")
    assert "cpu" in lines[-1] and "cuda:0" in lines[-1] and "mps" in lines[-1]
    assert "Traceback" not in result.output and not out.exists()


def test_a_device_this_machine_lacks_is_one_line(
    tmp_path: Path, tiny_clip_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    plans = write_plans(tmp_path / "plans.jsonl")
    renders = write_renders(tmp_path / "renders", {"p1": 1})
    result = runner.invoke(
        app,
        ["score", "candidates", str(renders), "--plans", str(plans), "-o", str(tmp_path / "s.jsonl"),
         "--clip-model", str(tiny_clip_dir), "--device", "cuda", "--no-progress"],
    )
    assert result.exit_code == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("acp: error: --device cuda: torch sees no CUDA GPU")


def test_candidates_with_the_judge_never_write_the_key(
    tmp_path: Path, tiny_clip_dir: Path, chat_server: ChatServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-never-written-1234")
    chat_server.responder = lambda body: ok('{"rating": 3}')
    plans = write_plans(tmp_path / "plans.jsonl")
    renders = write_renders(tmp_path / "renders", {"p1": 2})
    out = tmp_path / "scores.jsonl"
    # A margin of 100 makes every instance unsure, so the judge sees all four (cap 3).
    result = runner.invoke(
        app,
        [
            "score",
            "candidates",
            str(renders),
            "--plans",
            str(plans),
            "-o",
            str(out),
            "--clip-model",
            str(tiny_clip_dir),
            "--no-progress",
            "--judge-model",
            "vlm",
            "--judge-base-url",
            chat_server.url,
            "--judge-margin",
            "100",
            "--judge-max-calls",
            "3",
        ],
    )
    assert result.exit_code == 0, result.output
    assert ("judge vlm: 3 requests, 3 rated, 0 failed, 1 unsure instances left to CLIP "
            "(--judge-max-calls reached)") in result.output
    judged = [o.judge for s in _scores(out) for o in s.objects]
    assert judged.count(60.0) == 3 and judged.count(None) == 1
    assert chat_server.requests[0].headers["authorization"] == "Bearer sk-never-written-1234"
    assert "sk-never-written" not in out.read_text() + result.output


def _judged(tmp_path: Path, clip: Path, server: ChatServer, *extra: str) -> Any:
    plans = write_plans(tmp_path / "plans.jsonl")
    renders = write_renders(tmp_path / "renders", {"p1": 2})
    return runner.invoke(app, [
        "score", "candidates", str(renders), "--plans", str(plans), "-o", str(tmp_path / "scores.jsonl"),
        "--clip-model", str(clip), "--no-progress", "--judge-model", "vlm", "--judge-margin", "100",
        *extra, "--judge-base-url", server.url])


def test_a_judge_refusing_every_request_stops_scoring_with_one_line(
    tmp_path: Path, tiny_clip_dir: Path, chat_server: ChatServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The judge answered HTTP 400 to every call and the run looked fine: now it stops, saying so.
    monkeypatch.setenv("OPENAI_API_KEY", "sk-never-written-1234")
    chat_server.responder = lambda body: error(400, "image input is not supported", echo_headers=True)
    result = _judged(tmp_path, tiny_clip_dir, chat_server)
    assert result.exit_code == 1
    last = result.output.strip().splitlines()[-1]
    assert last.startswith("acp: error: the judge vlm failed 3 requests in a row (last: vlm at ")
    assert "HTTP 400: image input is not supported" in last and "Traceback" not in result.output
    assert "sk-never-written" not in result.output and len(chat_server.requests) <= 8


def test_a_malformed_judge_url_is_one_line_naming_the_option(tmp_path: Path, tiny_clip_dir: Path) -> None:
    result = runner.invoke(app, [
        "score", "candidates", str(tmp_path), "--plans", str(tmp_path / "p.jsonl"), "-o",
        str(tmp_path / "s.jsonl"), "--judge-model", "vlm", "--judge-base-url", "http://[::1"])
    assert result.exit_code == 1
    assert result.output.strip().splitlines()[-1].startswith(
        "acp: error: --judge-base-url: expected an http:// or https:// URL")


def test_help_does_not_import_torch() -> None:
    code = (
        "import sys\n"
        "from acp.cli import app\n"
        "try:\n    app(['score', 'candidates', '--help'])\nexcept SystemExit:\n    pass\n"
        "print('torch' in sys.modules, 'transformers' in sys.modules)\n"
    )
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert output.strip().splitlines()[-1] == "False False"

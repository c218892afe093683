"""`acp generate` end to end with the heuristic planner and tiny GLIGEN, CLIP and SAM."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from acp.cli import app
from acp.jsonl import read_records
from tests.chat_server import ChatServer, always, chat_server_fixture, raw_body, valid_text  # noqa: F401

runner = CliRunner()


def generate_args(models: dict[str, Path], out: Path, *extra: str) -> list[str]:
    return [
        "generate", "--concepts", "dog,frisbee,cat,bus", "-o", str(out),
        "--model", str(models["gligen"]), "--clip-model", str(models["clip"]),
        "--steps", "2", "--size", "64", "-k", "2", "--min-clis-i", "0", "--no-progress",
        "--planner", "heuristic", *extra,
    ]


def test_generate_makes_a_trainable_coco_dataset(tiny_models, tmp_path):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    out = tmp_path / "out"
    args = generate_args(tiny_models, out, "--scenes", "5", "--masks", "--sam-model",
                         str(tiny_models["sam"]), "--image-format", "png")
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    data = json.loads((out / "annotations.json").read_text())
    assert data["info"] and data["licenses"]
    assert {c["name"] for c in data["categories"]} == {"dog", "frisbee", "cat", "bus"}
    summary = json.loads((out / "summary.json").read_text())
    assert summary["scenes"] == 5
    assert summary["images_kept"] == len(data["images"])
    assert summary["annotations"] == len(data["annotations"])
    kept = sum(summary["instances_kept_by_category"].values())
    assert kept == len(data["annotations"]) > 0
    assert set(summary["last_run"]["stage_shares"]) >= {"render", "score", "segment", "export"}
    for image in data["images"]:
        assert (out / "images" / image["file_name"]).is_file()
        assert (image["width"], image["height"]) == (64, 64)
        provenance = image["acp"]
        assert provenance["render_model"] == str(tiny_models["gligen"])
        assert {"plan_id", "seed", "clis", "caption", "steps"} <= set(provenance)
    for annotation in data["annotations"]:
        x, _y, w, h = annotation["bbox"]
        assert annotation["iscrowd"] == 0 and w > 0 and h > 0 and x + w <= 64.001
        assert annotation["segmentation"]["counts"] and annotation["area"] > 0
        # A mask never spills out of its box (SAM's do, before acp cuts them).
        from acp.segment import decode_mask

        mask = decode_mask(annotation["segmentation"])
        x, y, w, h = annotation["bbox"]
        top, left = int(np.floor(y - 0.01)), int(np.floor(x - 0.01))  # the bbox is rounded to 0.01
        mask[max(top, 0):int(np.ceil(y + h + 0.01)), max(left, 0):int(np.ceil(x + w + 0.01))] = False
        assert not mask.any()

    coco = COCO(str(out / "annotations.json"))
    for kind in ("bbox", "segm"):
        detections = coco.loadRes([{**a, "score": 1.0} for a in data["annotations"]])
        evaluation = COCOeval(coco, detections, kind)
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
        assert evaluation.stats[0] == pytest.approx(1.0), kind

    import supervision as sv

    dataset = sv.DetectionDataset.from_coco(
        images_directory_path=str(out / "images"),
        annotations_path=str(out / "annotations.json"),
    )
    assert len(dataset) == len(data["images"])
    assert sum(len(d) for _, _, d in dataset) == len(data["annotations"])

    scores = [r for _, r, _ in read_records(out / "scores.jsonl")]
    assert len(scores) == 5 * 2 and sum(r["best"] for r in scores) == len(data["images"])


def test_other_settings_are_refused_then_forced(tiny_models, tmp_path):
    out = tmp_path / "out"
    assert runner.invoke(app, generate_args(tiny_models, out, "--scenes", "1")).exit_code == 0
    again = runner.invoke(app, generate_args(tiny_models, out, "--scenes", "1", "--steps", "3"))
    assert again.exit_code == 1
    assert "other settings (steps 2 -> 3)" in again.output
    forced = runner.invoke(app, generate_args(tiny_models, out, "--scenes", "2", "--force"))
    assert forced.exit_code == 0, forced.output
    assert json.loads((out / "summary.json").read_text())["scenes"] == 2


def test_unmappable_concept_fails_before_any_model_loads(tmp_path):
    categories = tmp_path / "coco.json"
    categories.write_text(json.dumps({"categories": [{"id": 18, "name": "dog"}]}))
    out = tmp_path / "out"
    result = runner.invoke(app, [
        "generate", "--concepts", "dog,quokka", "-o", str(out), "--categories", str(categories),
        "--model", str(tmp_path / "no-such-model"), "--planner", "heuristic",
    ])
    assert result.exit_code == 1
    assert "quokka" in result.output and "no-such-model" not in result.output
    assert not out.exists()


def _dataset(out: Path) -> dict:
    data = json.loads((out / "annotations.json").read_text())
    files = {i["id"]: i["file_name"] for i in data["images"]}
    boxes = sorted((files[a["image_id"]], a["category_id"], tuple(a["bbox"])) for a in data["annotations"])
    pixels = {name: (out / "images" / name).read_bytes() for name in files.values()}
    return {"boxes": boxes, "pixels": pixels, "image_ids": sorted(files),
            "annotation_ids": sorted(a["id"] for a in data["annotations"])}


def test_sigkill_then_rerun_matches_an_uninterrupted_run(tiny_models, tmp_path):
    args = generate_args(tiny_models, Path("out"), "--scenes", "10")[:]
    env = {**os.environ, "OPENAI_API_KEY": ""}
    killed = tmp_path / "killed"
    killed.mkdir()
    process = subprocess.Popen([sys.executable, "-m", "acp", *args], cwd=killed, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    progress = killed / "out" / "progress.jsonl"
    deadline = time.monotonic() + 300  # a backstop for a loaded machine: the loop ends at 3 scenes
    while time.monotonic() < deadline and process.poll() is None:
        if progress.exists() and len(progress.read_text().splitlines()) >= 3:
            break
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    finished_before = len(progress.read_text().splitlines())
    assert 3 <= finished_before < 10, "the run was not interrupted mid-way"
    json.loads((killed / "out" / "annotations.json").read_text())  # valid COCO at any moment

    resumed = subprocess.run([sys.executable, "-m", "acp", *args], cwd=killed, env=env,
                             capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    clean = tmp_path / "clean"
    clean.mkdir()
    reference = subprocess.run([sys.executable, "-m", "acp", *args], cwd=clean, env=env,
                               capture_output=True, text=True)
    assert reference.returncode == 0, reference.stderr

    got, want = _dataset(killed / "out"), _dataset(clean / "out")
    assert got == want
    assert len(set(got["annotation_ids"])) == len(got["annotation_ids"])
    plan_ids = [r["plan_id"] for _, r, _ in read_records(killed / "out" / "progress.jsonl")]
    assert sorted(plan_ids) == [f"{i:06d}" for i in range(10)]
    scored = [(r["plan_id"], r["index"]) for _, r, _ in read_records(killed / "out" / "scores.jsonl")]
    assert len(scored) == len(set(scored)) == 20


def test_a_typo_in_a_model_path_leaves_the_folder_usable(tiny_models, tmp_path):
    out = tmp_path / "out"
    args = generate_args(tiny_models, out, "--scenes", "2")
    typo = [str(tmp_path / "no-such-clip") if a == str(tiny_models["clip"]) else a for a in args]
    failed = runner.invoke(app, typo)
    assert failed.exit_code == 1 and "no-such-clip" in failed.output
    fixed = runner.invoke(app, args)
    assert fixed.exit_code == 0, fixed.output
    assert json.loads((out / "summary.json").read_text())["scenes"] == 2


def test_keep_candidates_resume_does_not_duplicate(tiny_models, tmp_path):
    out = tmp_path / "out"
    args = generate_args(tiny_models, out, "--scenes", "3", "--keep-candidates")
    assert runner.invoke(app, args).exit_code == 0
    # As if killed after the last plan's candidates were saved but before it was finished.
    progress = out / "progress.jsonl"
    lines = progress.read_text().splitlines(keepends=True)
    progress.write_text("".join(lines[:-1]))
    assert runner.invoke(app, args).exit_code == 0
    manifest = [(r["plan_id"], r["index"]) for _, r, _ in read_records(out / "candidates" / "manifest.jsonl")]
    assert sorted(manifest) == sorted({(f"{i:06d}", k) for i in range(3) for k in range(2)})
    for plan_id, index in manifest:
        assert (out / "candidates" / plan_id / f"{index}.png").is_file()


def _failing_render(original, error: Exception, times: int):
    """A GligenRenderer.render that fails the way a scene or a machine fails, ``times``
    times, then renders for real."""
    left = [times]

    def render(renderer, plans, candidates=4):
        if left[0] > 0:
            left[0] -= 1
            raise error
        return original(renderer, plans, candidates)

    return render


@pytest.mark.parametrize(
    ("error", "times", "exit_code", "failed", "message"),
    [
        (ValueError("odd plan"), 1, 0, 1, None),  # one scene's problem: recorded, run goes on
        (ValueError("broken"), 99, 1, 4, "5 scenes in a row failed"),
        (OSError(28, "No space left on device"), 1, 1, 0, "No space left on device"),
    ],
)
def test_scene_failures_versus_failures_that_stop_the_run(tiny_models, tmp_path, monkeypatch,
                                                          error, times, exit_code, failed, message):
    from acp.render.gligen import GligenRenderer

    original = GligenRenderer.render
    monkeypatch.setattr(GligenRenderer, "render", _failing_render(original, error, times))
    out = tmp_path / "out"
    result = runner.invoke(app, generate_args(tiny_models, out, "--scenes", "6"))
    assert result.exit_code == exit_code, result.output
    if message:
        assert f"acp: error: {message}" in result.output
    records = [r for _, r, _ in read_records(out / "progress.jsonl")]
    assert sum(r["status"] == "failed" for r in records) == failed
    if exit_code:
        # The scene that stopped the run is not marked finished: a rerun does it again.
        monkeypatch.setattr(GligenRenderer, "render", original)
        again = runner.invoke(app, generate_args(tiny_models, out, "--scenes", "6"))
        assert again.exit_code == 0, again.output
        records = [r for _, r, _ in read_records(out / "progress.jsonl")]
        assert sorted(r["plan_id"] for r in records) == [f"{i:06d}" for i in range(6)]


def test_an_endpoint_answering_a_web_page_is_retried_not_a_traceback(tiny_models, tmp_path,
                                                                     chat_server: ChatServer):
    # HTTP 200 with a non-JSON body labelled JSON: the openai client raises while decoding it.
    chat_server.script(raw_body("<html>oops</html>", "application/json"))
    chat_server.responder = always(lambda concepts, width, height: valid_text(concepts))
    out = tmp_path / "out"
    args = generate_args(tiny_models, out, "--scenes", "1", "--llm-base-url", chat_server.url,
                         "--llm-model", "test-model")
    args[args.index("heuristic")] = "openai"
    result = CliRunner().invoke(app, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert len(chat_server.requests) == 2  # the page, then the retry
    records = [r for _, r, _ in read_records(out / "progress.jsonl")]
    assert [r["status"] for r in records] in (["kept"], ["dropped"])  # planned, not failed

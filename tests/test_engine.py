"""The generate engine: exporting on its own thread changes nothing in the output, and an
export error stops the run with every finished plan kept."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from acp.cli import app
from acp.concepts import ConceptInput
from acp.generate import ExportSettings, GenerateConfig, LocalEngine, generate
from acp.jsonl import read_records
from acp.render.gligen import RenderSettings
from acp.schema import PlanResult
from acp.score.candidates import ScoreSettings
from tests.chat_server import ChatServer, chat_server_fixture, error, ok  # noqa: F401
from tests.test_generate import _dataset, generate_args


def config(models: dict[str, Path], **overrides: Any) -> GenerateConfig:
    values: dict[str, Any] = dict(
        scenes=6, model=str(models["gligen"]), clip_model=str(models["clip"]), steps=1, candidates=2,
        min_clis_i=0.0, keep_candidates=True,
    )
    values.update(overrides)
    return GenerateConfig(
        concepts=ConceptInput(vocabulary=("dog", "cat", "bus")), scenes=values["scenes"], size=(64, 64),
        render=RenderSettings(model=values["model"], steps=values["steps"]), candidates=values["candidates"],
        score=ScoreSettings(clip_model=values["clip_model"], min_clis_i=values["min_clis_i"]),
        export=ExportSettings(keep_candidates=values["keep_candidates"]),
    )


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines()


def test_threaded_and_inline_export_write_the_same_dataset(
    tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    threaded, inline = tmp_path / "threaded", tmp_path / "inline"
    generate(config(tiny_models), threaded, LocalEngine("cpu", finish_queue=2), progress=False)
    generate(config(tiny_models), inline, LocalEngine("cpu", finish_queue=0), progress=False)
    assert _dataset(threaded) == _dataset(inline)
    for name in ("progress.jsonl", "scores.jsonl", "plans.jsonl", "candidates/manifest.jsonl"):
        assert lines(threaded / name) == lines(inline / name), name
    results = [PlanResult.model_validate(r) for _, r, _ in read_records(threaded / "progress.jsonl")]
    assert [r.plan_id for r in results] == [f"{i:06d}" for i in range(6)]  # the ledger keeps plan order
    summary = json.loads((threaded / "summary.json").read_text())
    assert summary["last_run"]["stage_seconds"]["export"] > 0


def test_batching_plans_changes_nothing_in_the_output_on_cpu(
    tiny_models: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """B plans x K candidates per denoising loop (CLIP-I over the whole batch) writes, on CPU,
    the dataset of one plan at a time: images, scores, ledger, COCO records, byte for byte."""
    from acp.render.gligen import GligenRenderer

    sizes: list[int] = []
    render = GligenRenderer.render

    def counted(self: GligenRenderer, plans: Any, candidates: int = 4) -> Any:
        sizes.append(len(plans))
        return render(self, plans, candidates)

    monkeypatch.setattr(GligenRenderer, "render", counted)
    one, three = tmp_path / "one", tmp_path / "three"
    generate(config(tiny_models, scenes=7), one, LocalEngine("cpu"), progress=False)
    assert set(sizes) == {1}
    sizes.clear()
    generate(config(tiny_models, scenes=7), three, LocalEngine("cpu", batch_plans=3), progress=False)
    assert max(sizes) == 3 and sum(sizes) == 7, sizes
    assert _dataset(one) == _dataset(three)
    for name in ("progress.jsonl", "scores.jsonl", "candidates/manifest.jsonl"):
        assert lines(one / name) == lines(three / name), name
    # The COCO log, past its header (which holds the time it was made).
    assert lines(one / "coco_records.jsonl")[1:] == lines(three / "coco_records.jsonl")[1:]
    for image in sorted((one / "candidates").rglob("*.png")):
        assert image.read_bytes() == (three / image.relative_to(one)).read_bytes(), image
    for image in sorted((one / "images").iterdir()):
        assert image.read_bytes() == (three / "images" / image.name).read_bytes(), image


@pytest.mark.parametrize("depth", [0, 2])
def test_an_export_error_stops_the_run_and_keeps_what_was_finished(
    tiny_models: dict[str, Path], tmp_path: Path, depth: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The disk fills up at the second image, written on the finishing thread (depth 2) or in
    line (0): the run stops with the error, the first plan finished and nothing after it."""
    from acp.export import CocoWriter

    images: list[str] = []
    add_image = CocoWriter.add_image

    def disk_fills_at_the_second(self: CocoWriter, key: str, *args: Any) -> Any:
        if len(images) == 1:
            raise OSError(28, "No space left on device")
        images.append(key)
        return add_image(self, key, *args)

    monkeypatch.setattr(CocoWriter, "add_image", disk_fills_at_the_second)
    out = tmp_path / "out"
    with pytest.raises(OSError, match="No space left"):
        generate(config(tiny_models), out, LocalEngine("cpu", finish_queue=depth), progress=False)
    finished = [r["plan_id"] for _, r, _ in read_records(out / "progress.jsonl")]
    assert images == ["000000"] and finished == ["000000"]  # p1's ledger line never came before its image


def test_generate_asks_the_same_judge_as_score_candidates(
    chat_server: ChatServer, tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    chat_server.responder = lambda body: ok('{"rating": 4}')
    out = tmp_path / "out"
    result = CliRunner().invoke(app, [
        *generate_args(tiny_models, out, "--scenes", "2"), "--judge-model", "vlm",
        "--judge-base-url", chat_server.url, "--judge-margin", "100", "--judge-max-calls", "50",
    ])
    assert result.exit_code == 0, result.output
    assert chat_server.requests, "the judge was never asked"
    judged = [o["judge"] for _, r, _ in read_records(out / "scores.jsonl") for o in r["objects"]]
    assert judged and all(j == 80.0 for j in judged)  # a rating of 4 of 5
    settings = json.loads((out / "settings.json").read_text())
    assert settings["judge_model"] == "vlm" and settings["judge_margin"] == 100
    # what the judge did is in the output and the summary, as score candidates says it
    report = json.loads((out / "summary.json").read_text())["last_run"]["judge"]
    assert report["model"] == "vlm" and report["requests"] == len(chat_server.requests) == len(judged)
    assert report["rated"] == report["requests"] and report["failed"] == 0
    assert f"judge vlm: {report['requests']} requests, {report['requests']} rated, 0 failed" in result.output


def test_generate_stops_with_one_line_when_the_judge_fails_every_request(
    chat_server: ChatServer, tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    # A judge answering HTTP 400 to every call left no trace in generate's output or summary.
    chat_server.responder = lambda body: error(400, "image input is not supported")
    out = tmp_path / "out"
    result = CliRunner().invoke(app, [
        *generate_args(tiny_models, out, "--scenes", "2"), "--judge-model", "vlm",
        "--judge-base-url", chat_server.url, "--judge-margin", "100",
    ])
    assert result.exit_code == 1
    last = result.output.strip().splitlines()[-1]
    assert last.startswith("acp: error: ") and "the judge vlm failed 3 requests in a row" in last
    assert "HTTP 400: image input is not supported" in last


def test_the_stage_commands_and_generate_make_the_same_images_and_scores(
    tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    import numpy as np
    from PIL import Image

    runner = CliRunner()
    out = tmp_path / "out"
    common = ["--model", str(tiny_models["gligen"]), "--steps", "2", "--size", "64", "-k", "2"]
    result = runner.invoke(app, [
        "generate", "--concepts", "dog,frisbee,cat", "--scenes", "3", "-o", str(out), *common,
        "--clip-model", str(tiny_models["clip"]), "--min-clis-i", "0", "--planner", "heuristic",
        "--keep-candidates", "--image-format", "png", "--no-progress",
    ])
    assert result.exit_code == 0, result.output
    renders = tmp_path / "renders"
    result = runner.invoke(app, ["render", str(out / "plans.jsonl"), "-o", str(renders), *common,
                                 "--no-progress"])
    assert result.exit_code == 0, result.output
    scores = tmp_path / "scores.jsonl"
    result = runner.invoke(app, ["score", "candidates", str(renders), "--plans", str(out / "plans.jsonl"),
                                 "-o", str(scores), "--clip-model", str(tiny_models["clip"]),
                                 "--min-clis-i", "0", "--no-progress"])
    assert result.exit_code == 0, result.output

    def pixels(path: Path) -> np.ndarray:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"))

    rendered = {(c["plan_id"], c["index"]): c for _, c, _ in read_records(renders / "manifest.jsonl")}
    kept = {(c["plan_id"], c["index"]): c for _, c, _ in read_records(out / "candidates" / "manifest.jsonl")}
    assert rendered.keys() == kept.keys() and len(rendered) == 6
    for key, candidate in rendered.items():
        assert candidate["seed"] == kept[key]["seed"]
        np.testing.assert_array_equal(pixels(renders / candidate["path"]),
                                      pixels(out / "candidates" / kept[key]["path"]))

    def by_candidate(path: Path) -> dict[tuple[str, int], tuple[float, float, bool]]:
        return {(r["plan_id"], r["index"]): (r["clis"], r["clis_i"], r["best"])
                for _, r, _ in read_records(path)}

    assert by_candidate(scores) == by_candidate(out / "scores.jsonl")
    data = json.loads((out / "annotations.json").read_text())
    for image in data["images"]:
        best = (image["acp"]["plan_id"], image["acp"]["candidate"])
        np.testing.assert_array_equal(pixels(out / "images" / image["file_name"]),
                                      pixels(renders / rendered[best]["path"]))


def test_generate_drops_flagged_candidates_unscored(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    from acp import testing

    flagging = tmp_path / "flagging"
    pipeline = testing.tiny_gligen_pipeline(safety_checker=True)
    testing.flag_everything(pipeline.safety_checker)
    pipeline.save_pretrained(flagging)
    out = tmp_path / "out"
    args = generate_args({**tiny_models, "gligen": flagging}, out, "--scenes", "2", "--safety-checker")
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["images_kept"] == 0 and summary["drop_reasons"] == {"flagged by the safety checker": 2}
    assert not (out / "scores.jsonl").read_text()  # never scored as bad candidates
    assert all(r["flagged"] == 2 for _, r, _ in read_records(out / "progress.jsonl"))
    assert json.loads((out / "settings.json").read_text())["safety_checker"] is True

"""``acp render``: tiny GLIGEN pipeline saved to disk and loaded through the real CLI path."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import Result
from PIL import Image
from typer.testing import CliRunner

from acp import testing
from acp.cli import app
from acp.errors import InputError
from acp.render import folder as folder_module
from acp.render import gligen
from acp.render.gligen import GligenRenderer, RenderSettings, fit_to_tokens, global_prompt
from acp.schema import Candidate, ScenePlan
from acp.seeds import derive_seed

LONG = "a shaggy brown dog with a red collar, floppy ears and a wagging tail " * 4


def plan_record(plan_id: str, objects: int = 2, **extra: object) -> dict[str, object]:
    catalogue = [
        ("dog", "a brown dog", [0.05, 0.3, 0.4, 0.6]),
        ("frisbee", "a red frisbee", [0.6, 0.1, 0.2, 0.15]),
        ("bench", "a wooden park bench", [0.5, 0.55, 0.45, 0.3]),
    ]
    chosen = catalogue[:objects]
    record: dict[str, object] = {
        "id": plan_id,
        "concepts": [category for category, _d, _b in chosen],
        "caption": "A dog catches a frisbee near a bench.",
        "background": "a sunny park",
        "objects": [
            {"id": i, "category": category, "description": description, "bbox": box}
            for i, (category, description, box) in enumerate(chosen)
        ],
        "planner": "heuristic",
    }
    record.update(extra)
    return record


def write_plans(path: Path, records: list[object]) -> Path:
    lines = [r if isinstance(r, str) else json.dumps(r) for r in records]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def manifest(folder: Path) -> list[Candidate]:
    text = (folder / "manifest.jsonl").read_text(encoding="utf-8")
    return [Candidate.model_validate_json(line) for line in text.splitlines()]


def pixels(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return testing.save_tiny_models(tmp_path_factory.mktemp("models"))["gligen"]


@pytest.fixture(scope="module")
def plans_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    long_phrase = plan_record("long", objects=1)
    long_phrase["objects"][0]["description"] = LONG  # type: ignore[index]
    records = [
        plan_record("two"),
        plan_record("empty", objects=0, caption="An empty beach at dawn.", background="a beach"),
        long_phrase,
    ]
    return write_plans(tmp_path_factory.mktemp("plans") / "plans.jsonl", records)


def invoke(*args: object) -> Result:
    return CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)


def render(plans: Path, output: Path, model: Path, *extra: object) -> Result:
    return invoke(
        "render", plans, "-o", output, "--model", model, "--steps", 2, "--size", 64, "--no-progress",
        *extra,
    )


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory, model: Path, plans_file: Path) -> Path:
    """One finished run, K=3; tests that change it work on a copy."""
    output = tmp_path_factory.mktemp("run") / "renders"
    result = render(plans_file, output, model, "-k", 3)
    assert result.exit_code == 0, result.output
    assert "rendered 9 candidates of 3 plans" in result.stdout
    return output


def copy_of(rendered: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(rendered, tmp_path / "renders"))


def test_outputs_and_manifest_fields(rendered: Path, model: Path) -> None:
    records = manifest(rendered)
    assert [(c.plan_id, c.index) for c in records] == [
        (p, i) for p in ("two", "empty", "long") for i in range(3)
    ]
    for c in records:
        assert c.path == f"{c.plan_id}/{c.index}.png"
        assert c.seed == derive_seed(0, c.plan_id, c.index)
        assert (c.model, c.steps, c.guidance, c.width, c.height) == (str(model.resolve()), 2, 7.5, 64, 64)
        with Image.open(rendered / c.path) as image:
            assert (image.format, image.size, image.mode) == ("PNG", (64, 64), "RGB")
    two = [c for c in records if c.plan_id == "two"]
    assert two[0].phrases == ["a brown dog", "a red frisbee"] and two[0].beta == 0.3
    assert two[0].prompt == "A dog catches a frisbee near a bench, a sunny park"
    assert len({pixels(rendered / c.path).tobytes() for c in two}) == 3  # own noise per candidate
    settings = json.loads((rendered / "render.json").read_text())
    assert settings["steps"] == 2 and settings["size"] == [64, 64] and settings["seed"] == 0
    assert not list(rendered.rglob("*.tmp"))


def test_background_only_plan_renders_without_grounding(rendered: Path) -> None:
    empty = [c for c in manifest(rendered) if c.plan_id == "empty"]
    assert len(empty) == 3
    assert all(c.phrases == [] and c.beta == 0.0 for c in empty)
    assert empty[0].prompt == "An empty beach at dawn, a beach"


def test_long_phrase_is_cut_to_the_token_limit(rendered: Path) -> None:
    phrase = next(c for c in manifest(rendered) if c.plan_id == "long").phrases[0]
    tokenizer = testing.tiny_tokenizer()
    assert len(tokenizer(phrase).input_ids) <= testing.TOKEN_LIMIT
    assert LONG.startswith(phrase) and len(phrase) > 40
    assert LONG[len(phrase)] in " ,"  # cut between words


def test_single_candidate_rerender_is_bit_exact(rendered: Path, plans_file: Path) -> None:
    settings = RenderSettings(**{**json.loads((rendered / "render.json").read_text()), "size": (64, 64)})
    renderer = GligenRenderer(settings, device="cpu")
    plans = {p.id: p for p in (ScenePlan.model_validate_json(x) for x in plans_file.read_text().splitlines())}
    for record in (manifest(rendered)[2], manifest(rendered)[7]):  # "two" #2, "long" #1
        (((candidate, image, flagged, on_device),),) = renderer.render_seeds(
            [(plans[record.plan_id], {record.index: record.seed})]
        )
        assert candidate == record and not flagged
        assert np.array_equal(np.asarray(image), pixels(rendered / record.path))
        # the scorers' copy, left on the device, is the same image
        assert on_device.dtype == torch.uint8
        assert np.array_equal(on_device.permute(1, 2, 0).numpy(), np.asarray(image))


def test_render_entry_point_batches_k(model: Path) -> None:
    renderer = GligenRenderer(RenderSettings(model=str(model), steps=2), device="cpu")
    plan = ScenePlan.model_validate(plan_record("lib", width=64, height=64))
    (out,) = renderer.render([plan], candidates=2)
    assert [r.candidate.index for r in out] == [0, 1]
    assert all(r.image.size == (64, 64) for r in out)  # plan size when no size is set
    with pytest.raises(InputError, match="candidates"):
        renderer.render([plan], candidates=0)


def _pipeline_images(renderer: GligenRenderer, plan: ScenePlan, seeds: list[int]) -> list[np.ndarray]:
    """The diffusers pipeline's own call for one layout, as acp made it before its own loop."""
    phrases = renderer.phrases_for(plan)
    boxes = gligen.plan_to_gligen([o.bbox for o in plan.objects]).tolist() if phrases else [[0.0] * 4]
    settings = renderer.settings
    output = renderer.pipeline(
        prompt=renderer.prompt_for(plan), negative_prompt=settings.negative_prompt or None,
        gligen_phrases=phrases or [""], gligen_boxes=boxes,
        gligen_scheduled_sampling_beta=settings.beta if phrases else 0.0,
        num_inference_steps=settings.steps, guidance_scale=settings.guidance,
        height=renderer.size_for(plan)[1], width=renderer.size_for(plan)[0],
        num_images_per_prompt=len(seeds), generator=[torch.Generator().manual_seed(s) for s in seeds],
        output_type="pil",
    )
    return [np.asarray(image) for image in output.images]


@pytest.mark.parametrize("guidance", [7.5, 1.0])
def test_own_denoising_loop_matches_the_pipeline(model: Path, guidance: float) -> None:
    """acp's batched loop over the pipeline's components gives the pipeline's pixels, for a
    grounded plan (gated layers on for the first beta of the steps) and a background-only one."""
    settings = RenderSettings(model=str(model), steps=3, beta=0.5, size=(64, 64), guidance=guidance,
                              negative_prompt="blurry")
    renderer = GligenRenderer(settings, device="cpu")
    for plan in (ScenePlan.model_validate(plan_record("two")),
                 ScenePlan.model_validate(plan_record("none", objects=0))):
        (ours,) = renderer.render([plan], candidates=2)
        seeds = [r.candidate.seed for r in ours]
        for mine, theirs in zip(ours, _pipeline_images(renderer, plan, seeds), strict=True):
            assert np.array_equal(np.asarray(mine.image), theirs)


def test_a_batch_of_plans_renders_each_plan_as_alone(model: Path) -> None:
    """B plans in one loop (different object counts, a background-only plan in its own group,
    a plan of another size) give, on CPU, the images each plan gets rendered alone."""
    renderer = GligenRenderer(RenderSettings(model=str(model), steps=2), device="cpu")
    plans = [ScenePlan.model_validate(plan_record(f"p{n}", objects=n, width=64, height=64))
             for n in (2, 0, 1, 3)]
    plans.append(ScenePlan.model_validate(plan_record("wide", objects=2, width=96, height=64)))
    together = renderer.render(plans, candidates=2)
    assert [[r.candidate.plan_id for r in rendered] for rendered in together] == [
        [p.id] * 2 for p in plans]
    assert together[-1][0].image.size == (96, 64)
    for plan, rendered in zip(plans, together, strict=True):
        (alone,) = renderer.render([plan], candidates=2)
        assert [r.candidate for r in alone] == [r.candidate for r in rendered]
        for a, b in zip(alone, rendered, strict=True):
            assert np.array_equal(np.asarray(a.image), np.asarray(b.image))


def test_rerun_skips_finished_without_loading_the_model(
    rendered: Path, plans_file: Path, model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    output = copy_of(rendered, tmp_path)
    before = (output / "manifest.jsonl").read_bytes()

    def no_load(*args: object, **kwargs: object) -> None:
        raise AssertionError("the model was loaded although nothing was left to render")

    monkeypatch.setattr(gligen.GligenRenderer, "__init__", no_load)
    result = render(plans_file, output, model, "-k", 3)
    assert result.exit_code == 0, result.output
    assert "rendered 0 candidates" in result.stdout and "9 already done" in result.stdout
    assert (output / "manifest.jsonl").read_bytes() == before


def test_more_candidates_adds_only_missing(
    rendered: Path, plans_file: Path, model: Path, tmp_path: Path
) -> None:
    output = copy_of(rendered, tmp_path)
    result = render(plans_file, output, model, "-k", 4, "--limit", 1)
    assert result.exit_code == 0, result.output
    records = manifest(output)
    assert len(records) == 10 and records[-1].plan_id == "two" and records[-1].index == 3
    keys = [(c.plan_id, c.index) for c in records]
    assert len(keys) == len(set(keys))


def test_damaged_folder_resumes_without_duplicates_or_gaps(
    rendered: Path, plans_file: Path, model: Path, tmp_path: Path
) -> None:
    output = copy_of(rendered, tmp_path)
    original = {c.path: pixels(output / c.path) for c in manifest(output)}
    lines = (output / "manifest.jsonl").read_text().splitlines(keepends=True)
    # Killed while appending line 9 (torn tail); image of line 4 lost; a line repeated; junk.
    damaged = [*lines[:5], lines[1], "{not json\n", *lines[5:8], lines[8][:30]]
    (output / "manifest.jsonl").write_text("".join(damaged))
    (output / manifest(rendered)[3].path).unlink()
    result = render(plans_file, output, model, "-k", 3)
    assert result.exit_code == 0, result.output
    assert "rendered 2 candidates" in result.stdout
    records = manifest(output)
    keys = sorted((c.plan_id, c.index) for c in records)
    assert keys == sorted((c.plan_id, c.index) for c in manifest(rendered))
    assert all(np.array_equal(pixels(output / c.path), original[c.path]) for c in records)


def test_interrupted_run_resumes(
    plans_file: Path, model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    output = tmp_path / "renders"
    add = folder_module.RenderFolder.add
    calls = []

    def add_then_interrupt(self: folder_module.RenderFolder, candidate: Candidate, image: Image.Image):
        if len(calls) == 4:
            raise KeyboardInterrupt
        calls.append(candidate)
        add(self, candidate, image)

    monkeypatch.setattr(folder_module.RenderFolder, "add", add_then_interrupt)
    result = render(plans_file, output, model, "-k", 2)
    assert result.exit_code == 130 and "rerun the same command to resume" in result.stderr
    assert len(manifest(output)) == 4
    monkeypatch.setattr(folder_module.RenderFolder, "add", add)
    result = render(plans_file, output, model, "-k", 2)
    assert result.exit_code == 0 and "rendered 2 candidates" in result.stdout
    keys = [(c.plan_id, c.index) for c in manifest(output)]
    assert sorted(keys) == sorted((p, i) for p in ("two", "empty", "long") for i in range(2))


def test_write_failure_is_one_line_and_keeps_what_was_written(
    plans_file: Path, model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write = folder_module.write_atomic
    images = []

    def disk_fills_up(path: Path, data: bytes | str) -> None:
        if str(path).endswith(".png"):
            if len(images) == 3:
                raise OSError(28, "No space left on device")
            images.append(path)
        write(path, data)

    monkeypatch.setattr(folder_module, "write_atomic", disk_fills_up)
    result = render(plans_file, tmp_path / "out", model, "-k", 2)
    assert result.exit_code == 1
    assert result.stderr == f"acp: error: cannot write to {tmp_path / 'out'}: No space left on device\n"
    assert [tmp_path / "out" / c.path for c in manifest(tmp_path / "out")] == images


def test_bad_plans_lines_reported_and_others_render(model: Path, tmp_path: Path) -> None:
    bad_box = plan_record("bad")
    bad_box["objects"][0]["bbox"] = [0.8, 0.1, 0.5, 0.2]  # type: ignore[index]
    plans = write_plans(tmp_path / "plans.jsonl", [plan_record("a", 1), "{oops", bad_box, plan_record("a", 1),
                                                   plan_record("b", 1)])
    result = render(plans, tmp_path / "out", model, "-k", 1)
    assert result.exit_code == 0, result.output
    assert f"{plans}:2: skipped: not a JSON object" in result.stderr
    assert f"{plans}:3: skipped: objects[0].bbox: bbox leaves the frame" in result.stderr
    assert f"{plans}:4: skipped: plan id 'a' already used on line 1" in result.stderr
    assert [c.plan_id for c in manifest(tmp_path / "out")] == ["a", "b"]
    assert "3 plans lines skipped" in result.stdout


@pytest.mark.parametrize("size", ["60", "64x60", "big"])
def test_size_must_be_a_multiple_of_8(size: str, plans_file: Path, model: Path, tmp_path: Path) -> None:
    result = render(plans_file, tmp_path / "out", model, "--size", size)
    assert result.exit_code == 1
    assert result.stderr.startswith("acp: error: --size") and result.stderr.count("\n") == 1
    assert not (tmp_path / "out").exists()


def test_other_settings_refused_unless_forced(
    rendered: Path, plans_file: Path, model: Path, tmp_path: Path
) -> None:
    output = copy_of(rendered, tmp_path)
    result = render(plans_file, output, model, "-k", 3, "--steps", 3, "--seed", 5)
    assert result.exit_code == 1
    assert "steps 2 -> 3; seed 0 -> 5" in result.stderr and "--force" in result.stderr
    assert manifest(output) == manifest(rendered)
    result = render(plans_file, output, model, "-k", 1, "--steps", 3, "--seed", 5, "--force")
    assert result.exit_code == 0, result.output
    records = manifest(output)
    two = [(c.index, c.steps, c.seed) for c in records if c.plan_id == "two"]
    assert two == [(0, 3, derive_seed(5, "two", 0))]
    assert len(records) == 3 and not (output / "two" / "2.png").exists()


@pytest.mark.parametrize("force", [[], ["--force"]])
def test_a_folder_that_is_not_a_render_folder_is_refused_and_untouched(
    plans_file: Path, model: Path, tmp_path: Path, force: list[str]
) -> None:
    """A user's folder, even with a manifest.jsonl of its own, is no render folder: nothing in
    it is rewritten or added, --force or not. One of acp's temporaries alone (a run killed
    before its first file) leaves a folder empty."""
    output = tmp_path / "project"
    (output / "two").mkdir(parents=True)
    (output / "two" / "0.png").write_bytes(b"my picture")
    (output / "manifest.jsonl").write_text('{"my": "list"}\n')
    (output / "thesis.tex").write_text("\\documentclass{article}")
    before = {p: p.read_bytes() for p in output.rglob("*") if p.is_file()}
    result = render(plans_file, output, model, "-k", 1, *force)
    assert result.exit_code == 1
    assert "is not a render folder" in result.stderr and result.stderr.count("\n") == 1
    assert {p: p.read_bytes() for p in output.rglob("*") if p.is_file()} == before
    killed = tmp_path / "killed"
    killed.mkdir()
    (killed / ".render.json.acp-host-1-abcdefgh.tmp").write_text("{")
    assert render(plans_file, killed, model, "-k", 1).exit_code == 0


def test_not_a_gligen_model_is_one_line_error(plans_file: Path, model: Path, tmp_path: Path) -> None:
    result = render(plans_file, tmp_path / "out", model.parent / "clip")  # found before any load
    assert result.exit_code == 1
    assert result.stderr.startswith(f"acp: error: --model {model.parent / 'clip'}: a folder without "
                                    "model_index.json; expected a GLIGEN model")
    assert result.stderr.count("\n") == 1
    plain = Path(shutil.copytree(model, tmp_path / "plain"))  # a pipeline, without gated attention
    config = json.loads((plain / "unet" / "config.json").read_text())
    (plain / "unet" / "config.json").write_text(json.dumps({**config, "attention_type": "default"}))
    result = render(plans_file, tmp_path / "out", plain)
    assert result.exit_code == 1
    assert result.stderr == (f"acp: error: '{plain}' is not a GLIGEN text-box model: its UNet has "
                             "attention_type 'default', expected 'gated'\n")


@pytest.mark.parametrize("command", ["render", "generate"])
def test_steps_beyond_the_scheduler_are_refused_at_parsing(
    command: str, plans_file: Path, model: Path, tmp_path: Path
) -> None:
    # SD schedulers train 1000 steps and skip the first (steps_offset 1): 1000 already fails.
    args = [plans_file] if command == "render" else ["--concepts", "dog", "--planner", "heuristic"]
    for steps in (1000, 1001):
        result = invoke(command, *args, "-o", tmp_path / "out", "--model", model, "--steps", steps,
                        "--size", 64, "--no-progress")
        assert result.exit_code == 2, result.output
        assert "Invalid value for '--steps'" in result.stderr and "999" in result.stderr
        assert not (tmp_path / "out").exists()


def test_steps_beyond_a_models_own_scheduler_are_one_line(model: Path, tmp_path: Path) -> None:
    short = Path(shutil.copytree(model, tmp_path / "short"))
    config_path = short / "scheduler" / "scheduler_config.json"
    config = json.loads(config_path.read_text())
    config.update(num_train_timesteps=50, steps_offset=1)
    config_path.write_text(json.dumps(config))
    with pytest.raises(InputError, match=r"steps must be in 1\.\.49 for the scheduler of .*, got 50"):
        GligenRenderer(RenderSettings(model=str(short), steps=50), device="cpu")
    assert GligenRenderer(RenderSettings(model=str(short), steps=49), device="cpu").settings.steps == 49


def test_a_long_load_error_keeps_its_start_and_its_end(plans_file: Path, model: Path, tmp_path: Path) -> None:
    """diffusers' ~400-character error for a component of an unknown library: the line keeps
    what failed and the advice at the end, and cuts neither inside a word."""
    broken = shutil.copytree(model, tmp_path / "broken")
    index = json.loads((broken / "model_index.json").read_text())
    index["unet"] = ["nosuchlib", "UNet"]
    (broken / "model_index.json").write_text(json.dumps(index))
    result = render(plans_file, tmp_path / "out", broken)
    assert result.exit_code == 1 and result.stderr.count("\n") == 1, result.stderr
    line = result.stderr.strip()
    assert line.startswith(f"acp: error: cannot load a GLIGEN pipeline from '{broken}': nosuchlib is not one")
    assert " … " in line and line.endswith("import nosuchlib before calling `from_pretrained`.")
    assert len(line) < 400


def test_missing_weights_are_one_line(plans_file: Path, model: Path, tmp_path: Path) -> None:
    broken = shutil.copytree(model, tmp_path / "broken")
    for weights in (broken / "vae").glob("diffusion_pytorch_model.*"):
        weights.unlink()
    # A real process: diffusers' log handler holds the stderr of its first use, not CliRunner's.
    result = subprocess.run(
        [sys.executable, "-m", "acp", "render", str(plans_file), "-o", str(tmp_path / "out"),
         "--model", str(broken), "--device", "cpu"],
        capture_output=True, text=True, timeout=120,
    )
    # The model's status line, ended as failed, then the error in one line.
    status, error = result.stderr.splitlines()
    assert result.returncode == 1 and status.startswith("acp: loading GLIGEN") and status.endswith(" failed")
    assert error.startswith("acp: error: cannot load a GLIGEN pipeline") and "vae" in error


def test_missing_plans_file(model: Path, tmp_path: Path) -> None:
    result = render(tmp_path / "nope.jsonl", tmp_path / "out", model)
    assert result.exit_code == 1 and "plans file not found" in result.stderr


@pytest.mark.parametrize(
    ("text", "limit", "expected"),
    [
        ("a red  dog", 20, "a red dog"),
        ("one two three four", 3 + 2, "one two"),  # "three" is long: 5 tokens
        ("one two, three four", 2 + 2, "one two"),
        ("abcdefgh ijk", 3 + 2, "abcd"),  # a first word over the limit is cut inside
    ],
)
def test_fit_to_tokens(text: str, limit: int, expected: str) -> None:
    def count(piece: str) -> int:  # BOS + EOS + a token per short word, per letter of a long one
        return 2 + sum(1 if len(word) <= 4 else len(word) for word in piece.split())

    assert fit_to_tokens(text, count, limit) == expected


@pytest.mark.parametrize(
    ("caption", "background", "expected"),
    [
        ("A dog runs.", "a park", "A dog runs, a park"),
        ("A dog runs in a park.", "a park", "A dog runs in a park."),
        ("A dog runs.", "", "A dog runs."),
    ],
)
def test_global_prompt(caption: str, background: str, expected: str) -> None:
    plan = ScenePlan.model_validate(plan_record("p", 0, caption=caption, background=background))
    assert global_prompt(plan) == expected


@pytest.mark.parametrize(
    ("change", "message"),
    [({"steps": 0}, "steps"), ({"beta": 1.5}, "beta"), ({"size": (64, 60)}, "multiple of 8"),
     ({"guidance": -1.0}, "guidance"), ({"steps": 1000}, r"steps must be in 1\.\.999")],
)
def test_settings_are_checked(change: dict[str, object], message: str) -> None:
    with pytest.raises(InputError, match=message):
        RenderSettings(**change)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def checked_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny GLIGEN pipeline with a tiny safety checker (which flags nothing yet)."""
    folder = tmp_path_factory.mktemp("checked") / "gligen"
    testing.tiny_gligen_pipeline(safety_checker=True).save_pretrained(folder)
    return folder


def checker_cosines(pipeline: object, images: list[Image.Image]) -> np.ndarray:
    """Cosine of each image with the checker's first concept, the way the checker computes it."""
    checker, extractor = pipeline.safety_checker, pipeline.feature_extractor  # type: ignore[attr-defined]
    with torch.no_grad():
        pixels = extractor(images, return_tensors="pt").pixel_values
        embeds = checker.visual_projection(checker.vision_model(pixels)[1])
        return torch.nn.functional.cosine_similarity(embeds, checker.concept_embeds[:1]).numpy()


def test_safety_checker_is_not_loaded_unless_asked_for(checked_model: Path) -> None:
    off = GligenRenderer(RenderSettings(model=str(checked_model), steps=2), device="cpu")
    assert off.pipeline.safety_checker is None and off.pipeline.feature_extractor is None
    on = GligenRenderer(RenderSettings(model=str(checked_model), steps=2, safety_checker=True), device="cpu")
    assert on.pipeline.safety_checker is not None
    plan = ScenePlan.model_validate(plan_record("lib", width=64, height=64))
    (plain,), (checked,) = off.render([plan], candidates=2), on.render([plan], candidates=2)
    assert [r.flagged for r in checked] == [False, False]  # diffusers' initial thresholds flag nothing
    for a, b in zip(plain, checked, strict=True):
        assert np.array_equal(np.asarray(a.image), np.asarray(b.image))


def test_flagged_candidates_are_marked_and_blacked_out(checked_model: Path) -> None:
    settings = RenderSettings(model=str(checked_model), steps=2, safety_checker=True)
    renderer = GligenRenderer(settings, device="cpu")
    plan = ScenePlan.model_validate(plan_record("lib", width=64, height=64))
    (clean,) = renderer.render([plan], candidates=4)
    cosines = checker_cosines(renderer.pipeline, [r.image for r in clean])
    # A threshold in the widest gap between the candidates' cosines flags those above it (the
    # checker rounds to 3 decimals); the other 16 concepts and 3 special ones never fire.
    ordered = np.sort(cosines)
    gap = int(np.argmax(np.diff(ordered)))
    assert ordered[gap + 1] - ordered[gap] > 0.005, cosines
    checker = renderer.pipeline.safety_checker
    with torch.no_grad():
        checker.concept_embeds_weights.fill_(2.0)
        checker.special_care_embeds_weights.fill_(2.0)
        checker.concept_embeds_weights[0] = float(ordered[gap] + ordered[gap + 1]) / 2
    (out,) = renderer.render([plan], candidates=4)
    expected = [bool(c > ordered[gap]) for c in cosines]
    assert [r.flagged for r in out] == expected and 0 < sum(expected) < 4
    assert [r.candidate for r in out] == [r.candidate for r in clean]  # all returned, in order
    for before, after in zip(clean, out, strict=True):
        if after.flagged:
            assert not np.asarray(after.image).any()  # diffusers' black image
        else:
            assert np.array_equal(np.asarray(after.image), np.asarray(before.image))


def test_flagged_images_are_not_written_but_counted(
    checked_model: Path, plans_file: Path, tmp_path: Path
) -> None:
    flagging = tmp_path / "flagging"
    pipeline = testing.tiny_gligen_pipeline(safety_checker=True)
    testing.flag_everything(pipeline.safety_checker)
    pipeline.save_pretrained(flagging)
    output = tmp_path / "renders"
    result = render(plans_file, output, flagging, "-k", 2, "--safety-checker", "--limit", 2)
    assert result.exit_code == 0, result.output
    assert "rendered 4 candidates of 2 plans" in result.stdout
    assert "4 flagged by the safety checker, not written" in result.stdout
    assert (output / "manifest.jsonl").read_text() == "" and not list(output.rglob("*.png"))
    assert json.loads((output / "render.json").read_text())["safety_checker"] is True
    # Nothing finished, so a rerun renders them again (same seeds, same verdict).
    result = render(plans_file, output, flagging, "-k", 2, "--safety-checker", "--limit", 2)
    assert result.exit_code == 0 and "4 flagged" in result.stdout and "already done" not in result.stdout
    result = render(plans_file, tmp_path / "kept", checked_model, "-k", 2, "--safety-checker", "--limit", 2)
    assert result.exit_code == 0 and "flagged by" not in result.stdout
    assert len(manifest(tmp_path / "kept")) == 4


def test_safety_checker_setting_is_recorded_and_a_change_refused(
    rendered: Path, plans_file: Path, model: Path, tmp_path: Path
) -> None:
    assert json.loads((rendered / "render.json").read_text())["safety_checker"] is False
    output = copy_of(rendered, tmp_path)
    result = render(plans_file, output, model, "-k", 3, "--safety-checker")
    assert result.exit_code == 1
    assert "safety_checker False -> True" in result.stderr and "--force" in result.stderr
    assert manifest(output) == manifest(rendered)


def test_safety_checker_on_a_model_without_one_is_one_line(
    plans_file: Path, model: Path, tmp_path: Path
) -> None:
    result = render(plans_file, tmp_path / "out", model, "--safety-checker")
    assert result.exit_code == 1 and result.stderr.count("\n") == 1, result.stderr
    assert "has no safety checker" in result.stderr and "--no-safety-checker" in result.stderr
    assert not (tmp_path / "out").exists()


def test_compile_needs_cuda_and_says_so_before_loading(tmp_path: Path) -> None:
    """--compile is for the GPU; elsewhere it is one line, before any model is read."""
    with pytest.raises(InputError, match=r"--compile needs a CUDA device .* got cpu"):
        GligenRenderer(RenderSettings(model=str(tmp_path / "absent")), device="cpu", compile=True)

"""Whole runs as a user meets them: one writer per output, honest exit codes, no debris,
a dataset that can grow. The lock and exit-code cases run ``acp`` as real subprocesses."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from typer.testing import CliRunner

from acp.cli import app
from acp.jsonl import read_records
from tests.chat_server import ChatServer, Reply, chat_server_fixture, concepts_of, error, ok, valid_text  # noqa: F401
from tests.test_generate import _dataset, generate_args

ENV = {**os.environ, "OPENAI_API_KEY": "", "HF_HUB_OFFLINE": "1"}


def acp(*args: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "acp", *map(str, args)], capture_output=True, text=True,
                          env=ENV, timeout=300)


def acp_here(*args: object) -> subprocess.CompletedProcess[str]:
    """``acp`` in this process (models load faster once torch is imported), same result shape."""
    result = CliRunner().invoke(app, [str(a) for a in args], env={"OPENAI_API_KEY": ""})
    return subprocess.CompletedProcess(args, result.exit_code, result.stdout, result.stderr)


def start(*args: object) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "acp", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=ENV)


def wait_for(condition: Any, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.05)


def hold_llm(server: ChatServer, answered: int = 2) -> threading.Event:
    """The LLM answers ``answered`` scenes, then holds its replies until the event is set: a
    run using it is then certainly still writing while the test starts a second one."""
    release = threading.Event()

    def respond(body: dict[str, Any]) -> Reply:
        if len(server.requests) > answered:
            release.wait(timeout=120)
        return ok(valid_text(concepts_of(body)))

    server.responder = respond
    return release


def llm_args(server: ChatServer) -> list[str]:
    return ["--planner", "openai", "--llm-base-url", server.url, "--llm-model", "m", "--concurrency", "1"]


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    """The one error line (notices such as "using the offline planner" may come before it)."""
    errors = [line for line in result.stderr.splitlines() if line.startswith("acp: error: ")]
    assert result.returncode == 1 and len(errors) == 1, result.stderr
    assert result.stderr.strip().splitlines()[-1] == errors[0] and "Traceback" not in result.stderr
    return errors[0]


# --- one writer per output ---------------------------------------------------------------------

def test_a_forced_generate_cannot_destroy_a_run_still_writing(
    chat_server: ChatServer, tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    second_done = hold_llm(chat_server)
    out = tmp_path / "out"
    first = start(*generate_args(tiny_models, out, "--scenes", "6"), *llm_args(chat_server))
    wait_for(lambda: (out / "progress.jsonl").exists() and (out / "progress.jsonl").read_text())
    settings = (out / "settings.json").read_text()
    try:
        second = acp(*generate_args(tiny_models, out, "--scenes", "3", "--steps", "3", "--force"))
        assert first.poll() is None, "the first run ended before the second began"
    finally:
        second_done.set()
    assert "another acp process is writing it" in one_line_error(second)
    assert (out / "settings.json").read_text() == settings
    assert first.wait(timeout=120) == 0, first.stderr
    summary = json.loads((out / "summary.json").read_text())
    data = json.loads((out / "annotations.json").read_text())
    assert summary["scenes"] == 6 and len(data["images"]) == summary["images_kept"] == 6
    files = sorted(i["file_name"] for i in data["images"])
    assert sorted(p.name for p in (out / "images").iterdir()) == files


def test_two_plan_runs_into_one_file_are_refused(chat_server: ChatServer, tmp_path: Path) -> None:
    release = hold_llm(chat_server)
    plans = tmp_path / "plans.jsonl"
    first = start("plan", "--concepts", "dog,cat", "--scenes", "8", "-o", plans, "--no-progress",
                  *llm_args(chat_server))
    wait_for(lambda: plans.exists() and plans.read_text())
    try:
        second = acp("plan", "--concepts", "dog,cat", "--scenes", "8", "-o", plans, "--no-progress")
        assert first.poll() is None, "the first run ended before the second began"
    finally:
        release.set()
    assert "another acp process is writing it" in one_line_error(second)
    assert first.wait(timeout=300) == 0, first.stderr
    ids = [r["id"] for _, r, _ in read_records(plans) if r]
    assert sorted(ids) == [f"{i:06d}" for i in range(8)]


def test_two_renders_into_one_folder_are_refused(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    plans = tmp_path / "plans.jsonl"
    planned = acp_here("plan", "--concepts", "dog,cat", "--scenes", "2", "-o", plans, "--no-progress")
    assert planned.returncode == 0
    folder = tmp_path / "renders"
    render = ["render", plans, "-o", folder, "--model", tiny_models["gligen"], "--steps", 1, "--size", 64,
              "-k", 1, "--no-progress"]
    assert acp_here(*render).returncode == 0
    manifest = (folder / "manifest.jsonl").read_text()
    # Another process holds the folder (as a render in progress does); --force must not touch it.
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from acp.lock import OutputLock; "
         "OutputLock(sys.argv[1]).acquire(); print('held', flush=True); time.sleep(60)", str(folder)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        result = acp_here(*render, "--seed", 4, "--force")
        assert "another acp process is writing it" in one_line_error(result)
        assert (folder / "manifest.jsonl").read_text() == manifest
    finally:
        holder.kill()
        holder.wait()
    assert acp_here(*render, "--seed", 4, "--force").returncode == 0  # the lock died with its holder


# --- a run that made nothing says so -----------------------------------------------------------

def test_plan_where_every_scene_fails_exits_non_zero_with_the_reason(
    chat_server: ChatServer, tmp_path: Path
) -> None:
    chat_server.responder = lambda body: error(400, "model is overloaded with nonsense")
    plans = tmp_path / "plans.jsonl"
    result = acp("plan", "--concepts", "dog,cat", "--scenes", "3", "-o", plans, "--no-progress",
                 *llm_args(chat_server))
    line = one_line_error(result)
    assert "no scene could be planned: 3 failed" in line and "overloaded with nonsense" in line
    assert not plans.exists()
    failures = (tmp_path / "plans.jsonl.failures.jsonl").read_text().splitlines()
    assert len(failures) == 3


def test_the_failure_that_stops_a_run_is_recorded_too(chat_server: ChatServer, tmp_path: Path) -> None:
    chat_server.responder = lambda body: error(400, "no")
    plans = tmp_path / "plans.jsonl"
    result = acp("plan", "--concepts", "dog,cat", "--scenes", "30", "-o", plans, "--no-progress",
                 *llm_args(chat_server))
    assert "the first 10 scenes all failed" in one_line_error(result)
    assert len((tmp_path / "plans.jsonl.failures.jsonl").read_text().splitlines()) == 10


def test_generate_where_every_scene_fails_exits_non_zero_with_the_reason(
    chat_server: ChatServer, tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    chat_server.responder = lambda body: ok("I cannot help with that.")
    out = tmp_path / "out"
    result = acp(*generate_args(tiny_models, out, "--scenes", "3"), *llm_args(chat_server),
                 "--max-reasks", "0")
    line = one_line_error(result)
    assert "no scene could be planned: 3 failed" in line and "no JSON object" in line


# --- nothing lost, nothing half-written --------------------------------------------------------

def test_a_plan_that_turned_invalid_is_recorded_as_failed(
    tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "out"
    assert acp_here(*generate_args(tiny_models, out, "--scenes", "3")).returncode == 0
    # A run killed after planning scene 2 but before finishing it, whose plan line was then
    # edited so that it no longer validates.
    progress = (out / "progress.jsonl").read_text().splitlines()
    (out / "progress.jsonl").write_text("\n".join(progress[:2]) + "\n")
    lines = (out / "plans.jsonl").read_text().splitlines()
    broken = json.loads(lines[2])
    broken["objects"][0]["bbox"] = [0.9, 0.9, 0.5, 0.5]
    (out / "plans.jsonl").write_text("\n".join([*lines[:2], json.dumps(broken)]) + "\n")
    result = acp_here(*generate_args(tiny_models, out, "--scenes", "3"))
    line = one_line_error(result)  # this run made nothing and failed one scene: it says so
    assert "1 scenes failed" in line and "plans.jsonl:3: objects[0].bbox" in line
    summary = json.loads((out / "summary.json").read_text())
    assert summary["scenes"] == 3 and summary["scenes_failed"] == 1
    assert summary["drop_reasons"] == {"invalid plan": 1}
    record = [r for _, r, _ in read_records(out / "progress.jsonl")][-1]
    assert record["plan_id"] == "000002" and "plans.jsonl:3" in record["reason"]
    again = acp_here(*generate_args(tiny_models, out, "--scenes", "3"))  # finished: no model is loaded
    assert again.returncode == 0 and "0 this run" in again.stdout


def test_failed_loads_leave_no_debris(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = acp_here(*generate_args(tiny_models, out, "--scenes", "2", "--masks", "--sam-model",
                                tmp_path / "no-sam"))
    assert result.returncode == 1 and not out.exists()
    plans = tmp_path / "plans.jsonl"
    assert acp_here("plan", "--concepts", "dog", "-o", plans, "--no-progress").returncode == 0
    renders = tmp_path / "renders"
    result = acp_here("render", plans, "-o", renders, "--model", tmp_path / "no-model", "--no-progress")
    assert result.returncode == 1 and not renders.exists()
    renders.mkdir()
    result = acp_here("render", plans, "-o", renders, "--model", tmp_path / "no-model", "--no-progress")
    assert result.returncode == 1 and list(renders.iterdir()) == []


def test_plan_refuses_to_append_to_a_file_that_is_not_a_plans_file(tmp_path: Path) -> None:
    target = tmp_path / "annotations.json"
    target.write_text('{"images": [], "annotations": [], "categories": []}\n')
    before = target.read_bytes()
    result = acp("plan", "--concepts", "dog", "-o", target, "--no-progress")
    assert "is not a plans file" in one_line_error(result)
    assert target.read_bytes() == before


def test_a_finished_dataset_grows_with_more_scenes(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    out, reference = tmp_path / "grown", tmp_path / "reference"
    assert acp_here(*generate_args(tiny_models, out, "--scenes", "2")).returncode == 0
    first = _dataset(out)
    grown = acp_here(*generate_args(tiny_models, out, "--scenes", "4"))
    assert grown.returncode == 0, grown.stderr
    assert "2 this run" in grown.stdout
    assert acp_here(*generate_args(tiny_models, reference, "--scenes", "4")).returncode == 0
    assert _dataset(out) == _dataset(reference)
    assert set(first["pixels"].items()) <= set(_dataset(out)["pixels"].items())
    assert json.loads((out / "settings.json").read_text())["scenes"] == 4
    shrunk = acp_here(*generate_args(tiny_models, out, "--scenes", "3", "--steps", "3"))
    assert "scenes 4 -> 3; steps 2 -> 3" in one_line_error(shrunk)


# --- starting over, and not starting at all ------------------------------------------------------

def test_force_removes_every_file_acp_wrote_there_and_nothing_else(
    tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    """--force replaces a run: the splits `acp export coco-split` wrote into it describe images
    that are gone, so they go too; a file acp did not write stays, in images/ as well."""
    out = tmp_path / "out"
    assert CliRunner().invoke(app, generate_args(tiny_models, out, "--scenes", "2")).exit_code == 0
    split = CliRunner().invoke(app, ["export", "coco-split", str(out / "annotations.json"),
                                     "--val-fraction", "0.5"])
    assert split.exit_code == 0, split.output
    splits = sorted(p.name for p in out.glob("*.json") if p.name in ("train.json", "val.json", "test.json"))
    assert splits, "coco-split wrote nothing into the run folder"
    (out / "notes.txt").write_text("mine")
    (out / "images" / "mine.jpg").write_text("mine too")
    forced = CliRunner().invoke(app, [*generate_args(tiny_models, out, "--scenes", "2"), "--steps", "1",
                                      "--force"])
    assert forced.exit_code == 0, forced.output
    assert [name for name in splits if (out / name).exists()] == []
    assert (out / "notes.txt").read_text() == "mine"
    assert (out / "images" / "mine.jpg").read_text() == "mine too"
    assert len(json.loads((out / "annotations.json").read_text())["images"]) == 2


def test_a_run_that_finished_nothing_can_be_rerun_with_other_settings(
    chat_server: ChatServer, tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    """An LLM that could not be reached leaves a folder with settings but no finished plan:
    the offline planner may take it over without --force."""
    chat_server.responder = lambda body: error(400, "unreachable in spirit")
    out = tmp_path / "out"
    failed = acp(*generate_args(tiny_models, out, "--scenes", "2"), *llm_args(chat_server))
    assert failed.returncode == 1 and json.loads((out / "settings.json").read_text())["planner"] == "openai"
    offline = acp(*generate_args(tiny_models, out, "--scenes", "2"))
    assert offline.returncode == 0, offline.stderr
    assert json.loads((out / "settings.json").read_text())["planner"] == "heuristic"
    assert [r["status"] for _, r, _ in read_records(out / "progress.jsonl")] == ["kept", "kept"]


def test_a_finished_dataset_rerun_loads_no_model_and_rewrites_nothing(
    tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    """Decided before loading: nothing is left, so no model loads (a model folder that has
    gone since cannot be read) and the report is not rebuilt."""
    import shutil

    models = tmp_path / "models"
    shutil.copytree(tiny_models["gligen"], models / "gligen")
    out = tmp_path / "out"
    args = generate_args({**tiny_models, "gligen": models / "gligen"}, out, "--scenes", "2")
    assert CliRunner().invoke(app, args).exit_code == 0
    report = (out / "report.html").stat().st_mtime_ns
    shutil.rmtree(models / "gligen")
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 0, again.output
    assert (out / "report.html").stat().st_mtime_ns == report

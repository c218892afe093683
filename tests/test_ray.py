"""``acp generate --executor ray`` on a real local Ray (CPU actors, tiny models): the same
dataset as the local engine, a killed worker costs nothing, a killed driver is resumed, and
without Ray the option is one line."""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from acp.generate import GenerateConfig, LocalEngine, generate
from acp.jsonl import read_records
from acp.score.judge import JudgeSettings
from tests.chat_server import ChatServer, chat_server_fixture, ok  # noqa: F401
from tests.test_engine import config as engine_config
from tests.test_generate import _dataset

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module", autouse=True)
def two_torch_threads() -> Any:
    """The local runs here compute with two threads whatever the machine: Ray workers must
    follow the driver's count (each holds one CPU, so by default Ray gives it one thread)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def local_ray() -> Any:
    """One Ray for the module (it starts in seconds; workers load the tiny models once each)."""
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


def config(models: dict[str, Path], **overrides: Any) -> GenerateConfig:
    return engine_config(models, **{"scenes": 8, **overrides})


def same_output(a: Path, b: Path) -> None:
    """Byte-identical images and candidates, the same ledger, scores and COCO records."""
    assert _dataset(a) == _dataset(b)
    for name in ("progress.jsonl", "scores.jsonl", "candidates/manifest.jsonl"):
        assert (a / name).read_text() == (b / name).read_text(), name
    header_free = [(p / "coco_records.jsonl").read_text().splitlines()[1:] for p in (a, b)]
    assert header_free[0] == header_free[1]  # past the header, which holds the time it was made
    for image in sorted((a / "candidates").rglob("*.png")):
        assert image.read_bytes() == (b / image.relative_to(a)).read_bytes(), image


def ray_engine(workers: int = 2, **options: Any) -> Any:
    from acp.generate.ray import RayEngine, RayOptions

    return RayEngine(RayOptions(workers=workers), "cpu", **options)


@pytest.fixture(scope="module")
def local_run(tiny_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("local") / "out"
    generate(config(tiny_models), out, LocalEngine("cpu"), progress=False)
    return out


def test_two_workers_write_the_local_engines_dataset(
    local_ray: str, local_run: Path, tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "ray"
    generate(config(tiny_models), out, ray_engine(2, batch_plans=2), progress=False)
    same_output(local_run, out)
    executor = json.loads((out / "summary.json").read_text())["last_run"]["executor"]
    assert executor["name"] == "ray" and executor["workers"] == 2
    assert sum(executor["plans_per_worker"].values()) == 8 and len(executor["plans_per_worker"]) == 2


def test_each_workers_judge_is_in_the_summary(
    local_ray: str, chat_server: ChatServer, tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    server = chat_server
    server.responder = lambda body: ok('{"rating": 4}')
    judged = config(tiny_models, scenes=4)
    judged = dataclasses.replace(judged, score=dataclasses.replace(judged.score, judge=JudgeSettings(
        model="vlm", base_url=server.url, margin=100.0)))
    out = tmp_path / "ray"
    summary = generate(judged, out, ray_engine(2, batch_plans=1), progress=False)
    asked = [o["judge"] for _, r, _ in read_records(out / "scores.jsonl") for o in r["objects"]]
    assert summary.judge is not None and summary.judge.requests == len(asked) == len(server.requests) > 0
    assert json.loads((out / "summary.json").read_text())["last_run"]["judge"]["rated"] == len(asked)


def test_a_verified_run_on_two_workers_writes_the_local_engines_dataset(
    local_ray: str, tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    """Each worker loads the detector once and verifies its plans' candidates as the local
    engine does (the tiny OWLv2; a low IoU so that some boxes are verified and images kept)."""
    from acp.score.verify import VerifySettings

    verified = config(tiny_models, scenes=6)
    verified = dataclasses.replace(verified, score=dataclasses.replace(verified.score, verify=VerifySettings(
        detector_model=str(tiny_models["owlv2"]), verify_iou=0.05, unplanned="ignore")))
    local, out = tmp_path / "local", tmp_path / "ray"
    generate(verified, local, LocalEngine("cpu"), progress=False)
    generate(verified, out, ray_engine(2, batch_plans=2), progress=False)
    same_output(local, out)
    local_coco, ray_coco = (json.loads((p / "annotations.json").read_text()) for p in (local, out))
    assert local_coco["annotations"] == ray_coco["annotations"]  # provenance and ignore regions too
    scores = [r for _, r, _ in read_records(out / "scores.jsonl")]
    assert len(scores) == 12 and all(r["verification"] is not None for r in scores)
    assert any(r["status"] == "kept" for _, r, _ in read_records(out / "progress.jsonl"))


def test_a_killed_worker_loses_and_duplicates_nothing(
    local_ray: str, local_run: Path, tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    from acp.render.gligen import RenderSettings
    from acp.testing import SlowRenderer

    settings = RenderSettings(model=str(tiny_models["gligen"]), steps=1, size=(64, 64))
    factory = functools.partial(SlowRenderer, settings, "cpu", 0.4)
    out = tmp_path / "ray"
    killed: list[str] = []

    def kill_one_worker_mid_run() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            ledger = out / "progress.jsonl"
            if ledger.exists() and ledger.read_text().count("\n") >= 1:
                name = next(a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
                            if a["name"].startswith(f"acp-{os.getpid()}-"))
                ray.kill(ray.get_actor(name), no_restart=False)  # Ray restarts it: a crash, not a stop
                killed.append(name)
                return
            time.sleep(0.05)

    killer = threading.Thread(target=kill_one_worker_mid_run)
    killer.start()
    summary = generate(config(tiny_models), out, ray_engine(2, make_renderer=factory), progress=False)
    killer.join()
    assert killed, "no worker was killed"
    assert summary.kept == 8
    same_output(local_run, out)
    executor = json.loads((out / "summary.json").read_text())["last_run"]["executor"]
    assert executor["worker_restarts"] >= 1 and executor["retried_plans"] >= 1, executor


def _kill_a_worker_process_when(out: Path, lines: int, killed: list[int]) -> None:
    """SIGKILL one worker's process once the ledger has ``lines`` lines (Ray restarts it)."""
    deadline = time.monotonic() + 120
    ledger = out / "progress.jsonl"
    while time.monotonic() < deadline:
        if ledger.exists() and ledger.read_text().count("\n") >= lines:
            name = next(a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
                        if a["name"].startswith(f"acp-{os.getpid()}-"))
            pid = ray.get(ray.get_actor(name).__ray_call__.remote(lambda worker: os.getpid()))
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
            return
        time.sleep(0.05)


def test_a_sigkilled_worker_is_one_death_and_costs_no_plan(
    local_ray: str, local_run: Path, tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    """The plans it held wait for a live worker (never sent to the restarting one), its death
    is counted once however many calls it held, and nothing is recorded as failed."""
    from acp.render.gligen import RenderSettings
    from acp.testing import SlowRenderer

    settings = RenderSettings(model=str(tiny_models["gligen"]), steps=1, size=(64, 64))
    factory = functools.partial(SlowRenderer, settings, "cpu", 0.4)
    out = tmp_path / "ray"
    killed: list[int] = []
    killer = threading.Thread(target=_kill_a_worker_process_when, args=(out, 1, killed))
    killer.start()
    summary = generate(config(tiny_models), out, ray_engine(2, make_renderer=factory), progress=False)
    killer.join()
    assert killed, "no worker was killed"
    assert summary.kept == 8 and summary.failed == 0
    same_output(local_run, out)
    executor = json.loads((out / "summary.json").read_text())["last_run"]["executor"]
    assert executor["worker_restarts"] == 1 and executor["unfinished_plans"] == 0, executor


def test_a_plan_that_kills_every_worker_is_left_for_the_next_run(
    local_ray: str, local_run: Path, tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    from acp.generate.run import PlansLeftUnfinished
    from acp.render.gligen import RenderSettings
    from acp.testing import CrashingRenderer

    settings = RenderSettings(model=str(tiny_models["gligen"]), steps=1, size=(64, 64))
    factory = functools.partial(CrashingRenderer, settings, "cpu", 0.2, "000003")
    out = tmp_path / "ray"
    with pytest.raises(PlansLeftUnfinished, match=r"1 plans left unfinished .*000003.*died 3 times"):
        generate(config(tiny_models), out, ray_engine(2, make_renderer=factory), progress=False)
    ledger = [r["plan_id"] for _, r, _ in read_records(out / "progress.jsonl")]
    assert ledger == [f"{i:06d}" for i in range(8) if i != 3]  # the others, in order
    executor = json.loads((out / "summary.json").read_text())["last_run"]["executor"]
    assert executor["unfinished_plans"] == 1 and executor["worker_restarts"] == 3, executor
    rerun = generate(config(tiny_models), out, LocalEngine("cpu"), progress=False)  # makes only it
    assert rerun.this_run == 1 and rerun.kept == 8
    assert _dataset(out) == _dataset(local_run)
    for name in ("progress.jsonl", "scores.jsonl", "candidates/manifest.jsonl"):
        assert sorted((out / name).read_text().splitlines()) == sorted(
            (local_run / name).read_text().splitlines()), name


@pytest.mark.parametrize("address", ["127.0.0.1:1", "garbage", "", "ray://127.0.0.1:1", "host:99999"])
def test_a_bad_ray_address_is_one_line_and_writes_nothing(
    address: str, tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    """In a fresh process (no Ray running in it): an address where nothing listens is refused
    by one TCP probe before Ray is asked (which retries a dead address for minutes)."""
    out = tmp_path / "out"
    command = [sys.executable, "-m", "acp", "generate", "--concepts", "dog", "--scenes", "1",
               "--executor", "ray", "--ray-address", address, "--model", str(tiny_models["gligen"]),
               "--clip-model", str(tiny_models["clip"]), "--planner", "heuristic", "--no-progress",
               "-o", str(out)]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("acp: error: --ray-address"), lines
    assert not out.exists()


def test_sigkill_of_the_driver_then_rerun_finishes_the_dataset(
    local_ray: str, local_run: Path, tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "ray"
    command = [
        sys.executable, "-m", "acp", "generate", "--concepts", "dog,cat,bus", "--scenes", "8",
        "--size", "64", "--model", str(tiny_models["gligen"]), "--clip-model", str(tiny_models["clip"]),
        "--steps", "1", "-k", "2", "--min-clis-i", "0", "--keep-candidates", "--planner", "heuristic",
        "--no-progress", "--device", "cpu", "--executor", "ray", "--workers", "1", "-o", str(out),
    ]
    # The driver joins the test's Ray (--ray-address auto finds it through RAY_ADDRESS).
    env = {**os.environ, "RAY_ADDRESS": local_ray, "OPENAI_API_KEY": ""}
    driver = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 180
    ledger = out / "progress.jsonl"
    while time.monotonic() < deadline and driver.poll() is None:
        if ledger.exists() and ledger.read_text().count("\n") >= 2:
            break
        time.sleep(0.02)
    assert driver.poll() is None, driver.communicate()[0].decode()[-2000:]
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    finished = [r["plan_id"] for _, r, _ in read_records(ledger)]
    assert 2 <= len(finished) < 8, finished
    # Rerun with progress: Ray's start-up, silent for seconds before, says what it is doing.
    rerun = subprocess.run([a for a in command if a != "--no-progress"], env=env, capture_output=True,
                           text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stdout[-2000:] + rerun.stderr[-2000:]
    same_output(local_run, out)
    started = r"acp: starting 1 Ray workers \(each loads its models\) \.\.\. \d+\.\d s"
    assert re.search(started, rerun.stderr), rerun.stderr[-2000:]


def test_a_model_a_worker_cannot_load_is_the_workers_one_line_and_writes_nothing(
    local_ray: str, tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    from acp.errors import InputError

    out = tmp_path / "ray"
    with pytest.raises(InputError, match=r"--model .*missing: no such folder"):
        generate(config(tiny_models, model=str(tmp_path / "missing")), out, ray_engine(1), progress=False)
    assert not out.exists()

    def ours() -> list[str]:
        return [a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
                if a["name"].startswith(f"acp-{os.getpid()}-")]

    deadline = time.monotonic() + 20
    while ours() and time.monotonic() < deadline:  # ray.kill returns before the actor is gone
        time.sleep(0.1)
    assert not ours()  # the driver stopped its workers


def test_without_ray_the_executor_is_one_line_with_the_install_hint(
    tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    script = (
        "import sys; sys.modules['ray'] = None\n"  # as if Ray were not installed
        "from acp.cli import main\n"
        "sys.argv = ['acp', 'generate', '--concepts', 'dog', '--scenes', '1', '--executor', 'ray', "
        f"'--model', {str(tiny_models['gligen'])!r}, '-o', {str(tmp_path / 'out')!r}]\n"
        "main()\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                            env={**os.environ, "OPENAI_API_KEY": ""})
    assert result.returncode != 0
    lines = (result.stdout + result.stderr).strip().splitlines()
    assert lines == ['acp: error: the ray executor needs Ray: pip install "acp[ray]"'], lines
    assert not (tmp_path / "out").exists()

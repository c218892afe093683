"""Temporary files and folders of a writer killed mid-write are removed by the next run; those
of a writer still running are not."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from acp.cli import app
from tests.test_bank import write_coco

REPO = Path(__file__).resolve().parent.parent

# Each script stops inside its write, with the temporary made, and says so.
FILE_WRITER = """
import sys, time
from acp.atomic import atomic_text_file
with atomic_text_file(sys.argv[1]) as handle:
    handle.write("{}")
    print("ready", flush=True)
    time.sleep(120)
"""
BANK_WRITER = """
import sys, time
from acp.score.bank import Bank
def stuck(self, folder):
    print("ready", flush=True)
    time.sleep(120)
Bank._write_files = stuck
Bank.from_coco([sys.argv[1]]).save(sys.argv[2])
"""


def start_writer(script: str, *args: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    process = subprocess.Popen([sys.executable, "-c", script, *map(str, args)], env=env,
                               stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None and process.stdout.readline().strip() == "ready"
    return process


def kill(process: subprocess.Popen[str]) -> None:
    process.send_signal(signal.SIGKILL)
    process.wait()  # reaped: its pid is no process any more, not a zombie


def temps(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir() if p.name.endswith(".tmp")}


@pytest.fixture
def merge_inputs(tmp_path: Path) -> tuple[Path, Path]:
    synthetic, real = tmp_path / "synthetic.json", tmp_path / "real.json"
    for path in (synthetic, real):
        path.write_text(json.dumps({"images": [], "annotations": [],
                                    "categories": [{"id": 1, "name": "dog"}]}))
    return synthetic, real


def test_a_killed_writers_temp_file_is_removed_by_the_next_write(
    tmp_path: Path, merge_inputs: tuple[Path, Path]
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    merged = out / "merged.json"
    killed = start_writer(FILE_WRITER, merged)
    dead = temps(out)
    live = start_writer(FILE_WRITER, merged)  # started first, so its own sweep cannot do the work
    kill(killed)
    try:
        alive = temps(out) - dead
        assert len(dead) == 1 and len(alive) == 1
        foreign = out / ".merged.json.k3j4h5.tmp"  # not acp's pattern: someone else's, kept
        foreign.write_text("{}")
        result = CliRunner().invoke(app, ["export", "merge", *map(str, merge_inputs), "-o", str(merged)],
                                    catch_exceptions=False)
        assert result.exit_code == 0, result.output
        assert temps(out) == alive | {foreign.name}
        assert json.loads(merged.read_text())["categories"][0]["name"] == "dog"
    finally:
        kill(live)


def test_a_killed_bank_builds_staging_folder_is_removed_by_the_next_build(tmp_path: Path) -> None:
    coco = write_coco(tmp_path / "coco.json",
                      [[("dog", [0.1, 0.1, 0.2, 0.2]), ("cat", [0.5, 0.5, 0.2, 0.2])]])
    out = tmp_path / "banks"
    out.mkdir()
    killed = start_writer(BANK_WRITER, coco, out / "bank")
    dead = temps(out)
    live = start_writer(BANK_WRITER, coco, out / "bank")
    kill(killed)
    try:
        alive = temps(out) - dead
        assert len(dead) == 1 and len(alive) == 1 and all((out / name).is_dir() for name in alive)
        result = CliRunner().invoke(app, ["bank", "build", str(coco), "-o", str(out / "bank")],
                                    catch_exceptions=False)
        assert result.exit_code == 0, result.output
        assert temps(out) == alive
        assert (out / "bank" / "index.json").is_file()
    finally:
        kill(live)


def test_only_temporaries_of_dead_writers_on_this_host_are_swept(tmp_path: Path) -> None:
    from acp.atomic import sweep_stale_temps, temp_prefix

    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                              capture_output=True, text=True, check=True)
    dead_pid = int(finished.stdout)
    mine = temp_prefix("x.json")  # .x.json.acp-HOST-PID-
    dead = mine.replace(f"-{os.getpid()}-", f"-{dead_pid}-")
    other_host = dead.replace(".acp-", ".acp-elsewhere", 1)
    names = {
        "dead": dead + "abcd1234.tmp",
        "dead folder": dead + "efgh5678.tmp",
        "live": mine + "ijkl9012.tmp",
        "other host": other_host + "mnop3456.tmp",
        "not a temporary": dead + "qrst7890.json",
    }
    for name in names.values():
        (tmp_path / name).write_text("x")
    (tmp_path / names["dead folder"]).unlink()
    (tmp_path / names["dead folder"]).mkdir()  # a bank build's staging folder, with a file
    (tmp_path / names["dead folder"] / "bank.npz").write_text("x")
    sweep_stale_temps(tmp_path)
    assert {p.name for p in tmp_path.iterdir()} == {
        names[k] for k in ("live", "other host", "not a temporary")
    }

"""`acp plan` and `acp validate` through the real command line."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from acp.cli import app
from acp.jsonl import read_records

runner = CliRunner()


def plans_in(path: Path) -> list[dict]:
    return [record for _, record, _ in read_records(path)]


def test_plan_inline_offline(tmp_path):
    out = tmp_path / "plans.jsonl"
    result = runner.invoke(app, ["plan", "--concepts", "dog,frisbee,cat", "--scenes", "12",
                                 "-o", str(out), "--no-progress"], env={"OPENAI_API_KEY": ""})
    assert result.exit_code == 0, result.output
    assert "heuristic planner" in result.output
    assert "planned 12" in result.output
    records = plans_in(out)
    assert [r["id"] for r in records] == [f"{i:06d}" for i in range(12)]
    assert all(r["planner"] == "heuristic" for r in records)
    validated = runner.invoke(app, ["validate", str(out)])
    assert validated.exit_code == 0 and "12 valid, 0 invalid" in validated.output


def test_rerun_skips_and_extends_without_duplicates(tmp_path):
    out = tmp_path / "plans.jsonl"
    args = ["plan", "--concepts", "dog,cat,bus", "-o", str(out), "--no-progress", "--seed", "4"]
    assert runner.invoke(app, [*args, "--scenes", "5"]).exit_code == 0
    first = out.read_text()
    # A torn tail, as a kill mid-write would leave it.
    with open(out, "a") as handle:
        handle.write('{"id": "000005", "conc')
    result = runner.invoke(app, [*args, "--scenes", "8"])
    assert result.exit_code == 0, result.output
    assert "planned 3" in result.output and "already done 5" in result.output
    text = out.read_text()
    assert text.startswith(first) and text.endswith("\n")
    ids = [r["id"] for r in plans_in(out)]
    assert ids == [f"{i:06d}" for i in range(8)]


def test_rerun_with_other_input_is_refused(tmp_path):
    out = tmp_path / "plans.jsonl"
    assert runner.invoke(app, ["plan", "--concepts", "dog", "-o", str(out)]).exit_code == 0
    result = runner.invoke(app, ["plan", "--concepts", "zebra", "-o", str(out)])
    assert result.exit_code == 1
    assert "planned from concepts ['dog'], seed" in result.output
    assert "not concepts ['zebra']" in result.output
    other_size = runner.invoke(app, ["plan", "--concepts", "dog", "-o", str(out), "--size", "768x512"])
    assert other_size.exit_code == 1 and "size 512x512, not" in other_size.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--scenes", "0"], "--scenes: expected 1.."),
        (["--objects-per-scene", "5-2"], "--objects-per-scene"),
        (["--size", "500"], "--size: width and height must be multiples of 8"),
        (["--planner", "openai"], "--planner openai needs OPENAI_API_KEY or --llm-base-url"),
    ],
)
def test_bad_options_fail_in_one_line(tmp_path, args, message):
    out = tmp_path / "plans.jsonl"
    result = runner.invoke(app, ["plan", "--concepts", "dog", "-o", str(out), *args],
                           env={"OPENAI_API_KEY": "", "OPENAI_BASE_URL": ""})
    assert result.exit_code != 0
    errors = [line for line in result.output.splitlines() if line.startswith("acp: error:")]
    assert len(errors) == 1 and message in errors[0], result.output
    assert not out.exists()


def test_bad_concept_file_names_line(tmp_path):
    concepts = tmp_path / "concepts.txt"
    concepts.write_text("dog\ncat\ndog\n")
    result = runner.invoke(app, ["plan", str(concepts), "-o", str(tmp_path / "p.jsonl")])
    assert result.exit_code == 1
    assert f"acp: error: {concepts}:3: duplicate concept 'dog'" in result.output


def test_validate_reports_each_bad_record(tmp_path):
    good = {"id": "a", "concepts": ["dog"], "caption": "c", "planner": "x",
            "objects": [{"id": 0, "category": "dog", "description": "d", "bbox": [0.1, 0.1, 0.2, 0.2]}]}
    leaving = json.loads(json.dumps(good))
    leaving["objects"][0]["bbox"] = [0.9, 0.1, 0.2, 0.2]
    overlapping = json.loads(json.dumps(good))
    overlapping["objects"].append({**good["objects"][0], "id": 1})
    path = tmp_path / "plans.jsonl"
    path.write_text("\n".join([json.dumps(good), "not json", json.dumps(leaving),
                               json.dumps(overlapping)]) + "\n")
    result = runner.invoke(app, ["validate", str(path)])
    assert result.exit_code == 1
    lines = result.output.splitlines()
    assert f"{path}:2: not a JSON object" in lines
    assert any(line.startswith(f"{path}:3: objects[0].bbox: bbox leaves the frame") for line in lines)
    assert any(line.startswith(f"{path}:4: objects[0].bbox: overlaps object 1") for line in lines)
    assert lines[-1] == f"{path}: 1 valid, 3 invalid"


def test_validate_shows_the_first_problems_and_counts_the_rest(tmp_path):
    path = tmp_path / "binary.jsonl"
    path.write_bytes(b"\x00\xff\xfe binary\n" * 500)
    result = runner.invoke(app, ["validate", str(path)])
    assert result.exit_code == 1
    lines = result.output.splitlines()
    assert lines[:20] == [f"{path}:{n}: not a JSON object" for n in range(1, 21)]
    assert lines[20:] == [f"{path}: ... and 480 more problems", f"{path}: 0 valid, 500 invalid"]


@pytest.mark.parametrize("content", ["", "\n  \n\n"])
def test_validate_an_empty_file_is_an_error(tmp_path, content):
    path = tmp_path / "empty.jsonl"
    path.write_text(content)
    result = runner.invoke(app, ["validate", str(path)])
    assert result.exit_code == 1
    assert result.stdout == "" and result.stderr == f"acp: error: {path}: 0 plans (the file is empty)\n"


def _pipe_to_head(args, cwd):
    """``acp ARGS | head -1`` as two real processes; acp's exit code and stderr."""
    acp = subprocess.Popen([sys.executable, "-m", "acp", *args], cwd=cwd, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE)
    head = subprocess.Popen(["head", "-1"], stdin=acp.stdout, stdout=subprocess.PIPE)
    acp.stdout.close()  # head alone reads it now: its exit closes the pipe
    first, _ = head.communicate(timeout=120)
    _, errors = acp.communicate(timeout=120)
    return first.decode(), acp.returncode, errors.decode()


def test_a_reader_that_leaves_early_is_no_error(tmp_path):
    bad = "".join(f'{{"id": "p{n}"}}\n' for n in range(20_000))  # 20 000 invalid plans
    (tmp_path / "big.jsonl").write_text(bad)
    first, code, errors = _pipe_to_head(["validate", "big.jsonl"], tmp_path)
    assert first.startswith("big.jsonl:1: ") and errors == "" and code in (1, 141)
    # Output far beyond the pipe's buffer: acp writes while head has gone.
    first, code, errors = _pipe_to_head(["score", "layouts", "big.jsonl", "-o", "scored.jsonl"], tmp_path)
    assert first.startswith("big.jsonl:1: ") and code == 141
    assert [line for line in errors.splitlines() if not line.startswith("acp: no --bank")] == []


def _run_cli(args, cwd, **kwargs):
    env = {**os.environ, "OPENAI_API_KEY": "", "OPENAI_BASE_URL": ""}
    return subprocess.run([sys.executable, "-m", "acp", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, **kwargs)


def test_help_and_offline_plan_never_import_torch(tmp_path):
    code = (
        "import sys\n"
        "from acp.cli import app\n"
        "for args in (['--help'], ['plan', '--concepts', 'dog,cat', '-o', 'p.jsonl', '--no-progress']):\n"
        "    try:\n"
        "        app(args)\n"
        "    except SystemExit as e:\n"
        "        assert e.code == 0, e.code\n"
        "heavy = ['torch', 'diffusers', 'transformers', 'openai', 'pycocotools']\n"
        "heavy = [m for m in heavy if m in sys.modules]\n"
        "assert not heavy, heavy\n"
        "print('clean')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                            env={**os.environ, "OPENAI_API_KEY": ""})
    assert result.returncode == 0, result.stderr
    assert "clean" in result.stdout and (tmp_path / "p.jsonl").exists()


def test_sigkill_then_rerun_finishes_without_duplicates(tmp_path):
    args = ["plan", "--concepts", ",".join(f"c{i}" for i in range(50)), "--scenes", "30000",
            "--objects-per-scene", "1-4", "-o", "plans.jsonl", "--no-progress"]
    env = {**os.environ, "OPENAI_API_KEY": "", "OPENAI_BASE_URL": ""}
    process = subprocess.Popen([sys.executable, "-m", "acp", *args], cwd=tmp_path, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    out = tmp_path / "plans.jsonl"
    deadline = time.monotonic() + 240  # a backstop for a loaded machine: the loop ends at 200 kB
    while (not out.exists() or out.stat().st_size < 200_000) and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    partial = len(plans_in(out))
    assert 0 < partial < 30000
    finished = _run_cli(args, tmp_path)
    assert finished.returncode == 0, finished.stderr
    ids = [r["id"] for r in plans_in(out)]
    assert sorted(ids) == [f"{i:06d}" for i in range(30000)]
    assert f"already done {partial}" in finished.stdout
    reference = tmp_path / "ref"
    reference.mkdir()
    assert _run_cli(args, reference).returncode == 0
    expected = (reference / "plans.jsonl").read_text().splitlines()
    assert sorted(out.read_text().splitlines()) == sorted(expected)


def test_a_run_whose_first_scenes_all_fail_stops(tmp_path):
    out = tmp_path / "plans.jsonl"
    # 30 people with no overlap allowed at all cannot be placed: every scene fails alike.
    result = runner.invoke(app, ["plan", "--concepts", "person", "--scenes", "50",
                                 "--objects-per-scene", "1", "--max-overlap", "0", "-o", str(out)],
                           env={"OPENAI_API_KEY": ""})
    assert result.exit_code == 0  # one person fits anywhere: nothing fails
    crowded = tmp_path / "crowded.jsonl"
    crowded.write_text("".join('{"concepts": ' + json.dumps(["person"] * 30) + "}\n" for _ in range(50)))
    result = runner.invoke(app, ["plan", str(crowded), "--max-overlap", "0",
                                 "-o", str(tmp_path / "crowded-plans.jsonl")])
    assert result.exit_code == 1
    assert "the first 10 scenes all failed; stopping (last reason: objects[" in result.output


def test_validate_flags_duplicates_and_can_downgrade_overlaps(tmp_path):
    good = {"id": "a", "concepts": [], "caption": "c", "planner": "x",
            "objects": [{"id": 0, "category": "dog", "description": "d", "bbox": [0.1, 0.1, 0.4, 0.4]},
                        {"id": 1, "category": "cat", "description": "d", "bbox": [0.2, 0.1, 0.4, 0.4]}]}
    path = tmp_path / "plans.jsonl"
    path.write_text(json.dumps(good) + "\n" + json.dumps(good))  # no final newline either
    strict = runner.invoke(app, ["validate", str(path), "--max-overlap", "0.3"])
    assert strict.exit_code == 1
    assert f"{path}:2: id: 'a' repeats line 1" in strict.output
    assert f"{path}:1: objects[0].bbox: overlaps object 1" in strict.output
    flagged = runner.invoke(app, ["validate", str(path), "--max-overlap", "0.3", "--on-overlap", "flag"])
    assert f"{path}:1: warning: objects[0].bbox" in flagged.output
    assert flagged.output.splitlines()[-1] == f"{path}: 1 valid, 1 invalid, 2 with warnings"


def test_byte_order_mark_is_not_part_of_a_name(tmp_path):
    concepts = tmp_path / "concepts.txt"
    concepts.write_bytes(b"\xef\xbb\xbfdog\r\ncat\r\n")
    out = tmp_path / "plans.jsonl"
    assert runner.invoke(app, ["plan", str(concepts), "-o", str(out), "--no-progress"]).exit_code == 0
    assert {c for r in plans_in(out) for c in r["concepts"]} == {"dog", "cat"}


def test_output_that_is_a_folder_is_a_one_line_error(tmp_path):
    result = runner.invoke(app, ["plan", "--concepts", "dog", "-o", str(tmp_path)])
    assert result.exit_code == 1
    assert result.output.strip().splitlines()[-1].startswith(f"acp: error: {tmp_path}")


@pytest.mark.parametrize(("env", "expected"), [
    ({"OPENAI_BASE_URL": "http://[::1"}, "--llm-base-url (or OPENAI_BASE_URL): expected an http:// or https://"),
    ({"OPENAI_BASE_URL": "ftp://example.com/v1"}, "--llm-base-url (or OPENAI_BASE_URL): expected an http://"),
    ({"OPENAI_BASE_URL": "http://127.0.0.1:9/v1", "ALL_PROXY": "socks4://proxy:1080"},
     "ALL_PROXY: expected a proxy URL"),
    ({"OPENAI_BASE_URL": "http://127.0.0.1:9/v1", "HTTPS_PROXY": "http://u:secret@[::1"},
     "HTTPS_PROXY: expected a proxy URL"),
    ({"OPENAI_BASE_URL": "http://127.0.0.1:9/v1", "SSL_CERT_FILE": "/nonexistent.pem"}, "SSL_CERT_FILE:"),
    ({"OPENAI_BASE_URL": "http://127.0.0.1:9/v1", "OPENAI_API_KEY": "sk-\u043a\u043b\u044e\u0447"},
     "the API key (OPENAI_API_KEY) holds"),
])
def test_an_endpoint_setting_that_cannot_work_is_one_line_and_writes_nothing(tmp_path, env, expected):
    out = tmp_path / "plans.jsonl"
    base = {k: v for k, v in os.environ.items()
            if k.upper() not in ("OPENAI_BASE_URL", "OPENAI_API_KEY", "ALL_PROXY", "HTTP_PROXY",
                                 "HTTPS_PROXY", "SSL_CERT_FILE")}
    command = [sys.executable, "-m", "acp", "plan", "--concepts", "dog", "-o", str(out), "--no-progress"]
    result = subprocess.run(command, capture_output=True, text=True, env={**base, **env}, timeout=120)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("acp: error: ") and expected in lines[-1], result.stderr
    assert "Traceback" not in result.stderr and "secret" not in result.stderr + result.stdout
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("value", ["inf", "nan", "1e308", "0.5"])
def test_an_llm_timeout_that_bounds_nothing_is_refused(tmp_path, value):
    result = runner.invoke(app, ["plan", "--concepts", "dog", "-o", str(tmp_path / "p.jsonl"),
                                 "--llm-base-url", "http://127.0.0.1:9/v1", "--llm-timeout", value])
    assert result.exit_code == 2 and "--llm-timeout" in result.output
    assert list(tmp_path.iterdir()) == []

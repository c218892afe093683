"""The README's two opening commands stay true: its example runs, and CI runs its test command."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
BLOCKS = re.findall(r"```bash\n(.*?)```", README, flags=re.S)


def _after_install(block: str) -> str:
    command = block.strip()
    assert command.startswith("pip install") and " && " in command, command
    return command.split(" && ", 1)[1]


def test_readme_example_outputs_are_ignored_by_git():
    """Run from a checkout, the folders the example writes must not show up as changes."""
    commands = [shlex.split(command) for command in _after_install(BLOCKS[0]).split(" && ")]
    written = {args[-1] for args in commands if args[:3] == ["python", "-m", "acp.testing"]}
    written |= {args[args.index("-o") + 1] for args in commands if "-o" in args}
    folders = sorted({Path(path).parts[0] for path in written})
    assert folders == ["models", "out"]
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    paths = [f"{folder}/any/file" for folder in folders]
    result = subprocess.run(["git", "check-ignore", *paths], cwd=ROOT, capture_output=True, text=True)
    assert result.stdout.split() == paths, result.stderr


def test_readme_example_runs(tmp_path):
    env = {**os.environ, "OPENAI_API_KEY": "", "OPENAI_BASE_URL": ""}
    commands = _after_install(BLOCKS[0]).split(" && ")
    for command in commands:
        args = shlex.split(command)
        # `acp` and `python` as installed in this interpreter's environment.
        program = [sys.executable, "-m", "acp"] if args[0] == "acp" else [sys.executable]
        assert args[0] in ("acp", "python"), command
        result = subprocess.run([*program, *args[1:]], cwd=tmp_path, env=env,
                                capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, f"{command}: {result.stderr}"
    data = json.loads((tmp_path / "out" / "dataset" / "annotations.json").read_text())
    assert len(data["images"]) == 8 and data["annotations"]
    assert all((tmp_path / "out" / "dataset" / "images" / i["file_name"]).is_file()
               for i in data["images"])


def test_ci_runs_the_readme_test_command():
    command = _after_install(BLOCKS[1])
    ci_lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert ci_lines[-1] == command


def test_readme_python_example_runs(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    """The "From Python" block, in a folder holding the models the first command makes."""
    (block,) = re.findall(r"```python\n(.*?)```", README, flags=re.S)
    (tmp_path / "models").mkdir()
    for name in ("gligen", "clip"):
        (tmp_path / "models" / name).symlink_to(tiny_models[name], target_is_directory=True)
    env = {**os.environ, "OPENAI_API_KEY": "", "OPENAI_BASE_URL": ""}
    result = subprocess.run([sys.executable, "-c", block], cwd=tmp_path, env=env, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert "4 images kept" in result.stdout
    out = tmp_path / "out" / "api-dataset"
    annotations = json.loads((out / "annotations.json").read_text())
    assert len(annotations["images"]) == 4
    assert (out / "report.html").is_file()
    boxes = len(annotations["annotations"])
    assert f"{boxes} boxes scored" in result.stdout
    assert len(json.loads((tmp_path / "out" / "api-scores" / "boxes.json").read_text())) == boxes
    assert (tmp_path / "out" / "api-scores" / "report.html").is_file()
    assert (tmp_path / "out" / "api-scores" / "filtered" / "annotations.json").is_file()
    assert (tmp_path / "out" / "api-yolo" / "data.yaml").is_file()

"""The README's two opening commands stay true: its example runs, and CI runs its test command."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
BLOCKS = re.findall(r"```bash\n(.*?)```", README, flags=re.S)


def _after_install(block: str) -> str:
    command = block.strip()
    assert command.startswith("pip install") and " && " in command, command
    return command.split(" && ", 1)[1]


def test_readme_example_runs(tmp_path):
    command = _after_install(BLOCKS[0])
    args = shlex.split(command)
    assert args[0] == "acp"
    env = {**os.environ, "OPENAI_API_KEY": "", "OPENAI_BASE_URL": ""}
    result = subprocess.run([sys.executable, "-m", "acp", *args[1:]], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    outputs = [Path(a) for a in args if a.startswith("out/")]
    assert outputs and all((tmp_path / o).exists() for o in outputs)


def test_ci_runs_the_readme_test_command():
    command = _after_install(BLOCKS[1])
    ci_lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert ci_lines[-1] == command

"""The wheel carries prompts/ and schemas/, and a non-editable install finds them."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_wheel_ships_prompts_and_schemas(tmp_path):
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(tmp_path), str(ROOT)],
        capture_output=True, text=True,
    )
    assert build.returncode == 0, build.stderr
    wheel = next(tmp_path.glob("acp-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    for folder in ("prompts", "schemas"):
        shipped = sorted(n for n in names if n.startswith(f"acp/{folder}/"))
        expected = sorted(f"acp/{folder}/{p.name}" for p in (ROOT / folder).iterdir() if p.is_file())
        assert shipped == expected and expected, folder

    target = tmp_path / "site"
    install = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target),
         str(wheel)],
        capture_output=True, text=True,
    )
    assert install.returncode == 0, install.stderr
    code = (
        "import acp.resources as r, acp.schema as s\n"
        "p = r.resource_dir('schemas')\n"
        f"assert str(p).startswith({str(target)!r}), p\n"
        "assert (p / 'scene_plan.schema.json').is_file()\n"
        "assert any(r.resource_dir('prompts').iterdir())\n"
        "print('ok')\n"
    )
    env = {**os.environ, "PYTHONPATH": str(target)}
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env,
                            capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr

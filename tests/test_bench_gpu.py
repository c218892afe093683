"""bench/bench_gpu.py: refuses a machine without CUDA in one line, and its code path runs on
tiny models (``--dry-run``) so that it cannot rot between GPU runs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parent.parent / "bench" / "bench_gpu.py"


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(BENCH), *args], capture_output=True, text=True, timeout=240)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_without_cuda_it_exits_non_zero_with_one_line() -> None:
    result = run()
    assert result.returncode != 0
    lines = (result.stdout + result.stderr).splitlines()
    assert len(lines) == 1 and "CUDA" in lines[0], lines


def test_dry_run_runs_every_eager_row_on_tiny_models() -> None:
    result = run("--dry-run")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "Full-size configs on the meta device" in out and "(B x K = 4, doubled by CFG)" in out
    rows = [line for line in out.splitlines() if line.startswith("| eager")]
    assert len(rows) == 8  # 4 eager configurations, K=2, B in (1, 2)
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        images_per_second, tflops = float(cells[3]), float(cells[6])
        assert images_per_second > 0 and tflops > 0, row

"""bench/bench_verify.py runs at its smallest settings (one plan, one candidate), so that its
code paths cannot rot between runs. Left out: the full-size FLOP count (part 3), which builds
both detectors at their real size, and `acp score dataset` (part 4), two commands in fresh
processes (half a minute of CPU even on four images)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "bench" / "bench_verify.py"
NUMBER = r"(\d+\.\d+)"


def test_the_bench_prints_every_figure_of_parts_1_and_2(tmp_path: Path) -> None:
    smallest = ["--plans", "1", "--repeats", "1", "--candidates", "1", "--parts", "12"]
    env = {**os.environ, "PYTHONPATH": str(BENCH.parent.parent)}  # this tree's acp, in the commands too
    result = subprocess.run([sys.executable, str(BENCH), *smallest], capture_output=True, text=True,
                            timeout=600, cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    outside = re.search(rf"outside the models, all on the CPU: {NUMBER} ms; of which acp.score.pixels' "
                        rf"tensor operations {NUMBER} ms .* the rest {NUMBER} ms", out)
    assert outside is not None, out
    total, device, host = map(float, outside.groups())
    assert total > 0 and 0 <= device <= total and abs(total - device - host) < 0.2
    assert re.search(rf"read from files .* the rest {NUMBER} ms", out), out
    cpu_batched = rf"as on a CPU .* the rest {NUMBER} ms from the renderer, {NUMBER} ms from files"
    assert re.search(cpu_batched, out), out
    assert re.search(rf"CLIP {NUMBER} -> {NUMBER} ms, OWLv2 {NUMBER} -> {NUMBER} ms", out), out
    for family in ("OWLv2", "Grounding DINO"):
        assert re.search(rf"{family} +{NUMBER} ms wall, +{NUMBER} ms CPU per candidate", out), out
    assert list(tmp_path.iterdir()) == []

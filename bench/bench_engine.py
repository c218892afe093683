"""Does the generate engine keep the device busy? A stand-in renderer holds the "device" for a
fixed time per plan while releasing the GIL (``time.sleep``, as a CUDA kernel launch does), and
hands back real 512 px images; everything around it is real: the heuristic planner, CLIS-L,
CLIP-I (the tiny CLIP, on this CPU), JPEG encoding and the COCO writer.

    python bench/bench_engine.py                 # 200 scenes, 0.25 s per plan, K=4
    python bench/bench_engine.py --scenes 100 --render-seconds 0.3

Two engines run over the same scenes in one process: the sequential one (everything after
rendering inline, ``finish_queue=0``) and the overlapped one (CLIP-I, masks, encoding and
writing on the finishing thread, one plan behind, the default). For each it prints the wall
time of the scene loop against the stand-in device's busy time and the finishing thread's:
the goal is the CPU stages hidden, i.e. wall within 10 % of the device's busy time. On this
2-core machine the tiny CLIP's forward pass is CPU work too; on a GPU host it is device work
but its preprocessing (PIL resizes and crops) stays on the CPU, which is what is hidden here.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from acp.concepts import ConceptInput
from acp.generate import GenerateConfig, LocalEngine, generate
from acp.render.base import RenderedCandidate
from acp.render.gligen import RenderSettings, global_prompt
from acp.schema import Candidate, ScenePlan
from acp.score.candidates import ScoreSettings
from acp.seeds import derive_seed
from acp.testing import save_tiny_models


class SleepingRenderer:
    """``render`` as ``GligenRenderer`` has it, taking ``seconds`` per batch off the GIL."""

    device = "cpu"

    def __init__(self, seconds: float, size: int):
        self.seconds = seconds
        self.size = size
        self.busy = 0.0
        # Photographs compress like smooth noise, not like flat colour: blur random noise.
        rng = np.random.default_rng(0)
        base = rng.integers(0, 255, (size // 8, size // 8, 3), dtype=np.uint8)
        self._texture = np.asarray(Image.fromarray(base).resize((size, size), Image.BICUBIC))

    def render(self, plans: list[ScenePlan], candidates: int) -> list[list[RenderedCandidate]]:
        start = time.perf_counter()
        time.sleep(self.seconds)
        out = [self._candidates(plan, candidates) for plan in plans]
        self.busy += time.perf_counter() - start
        return out

    def _candidates(self, plan: ScenePlan, candidates: int) -> list[RenderedCandidate]:
        out = []
        for index in range(candidates):
            seed = derive_seed(0, plan.id, index)
            pixels = np.roll(self._texture, seed % self.size, axis=1)
            out.append(RenderedCandidate(
                Candidate(plan_id=plan.id, index=index, seed=seed, path=f"{plan.id}/{index}.png",
                          model="stand-in", steps=25, guidance=7.5, beta=0.3, width=self.size,
                          height=self.size, prompt=global_prompt(plan),
                          phrases=[o.description for o in plan.objects]),
                Image.fromarray(pixels)))
        return out


def run(models: dict[str, Path], out: Path, scenes: int, seconds: float, size: int, candidates: int,
        finish_queue: int) -> dict[str, float]:
    renderer = SleepingRenderer(seconds, size)
    config = GenerateConfig(
        concepts=ConceptInput(vocabulary=("dog", "frisbee", "cat", "bus", "person", "cup")),
        scenes=scenes, size=(size, size), render=RenderSettings(model="stand-in"),
        score=ScoreSettings(clip_model=str(models["clip"]), min_clis_i=0.0), candidates=candidates,
    )
    engine = LocalEngine("cpu", make_renderer=lambda: renderer, finish_queue=finish_queue)
    summary = generate(config, out, engine, progress=False)
    times = summary.times
    loop = summary.seconds - times.load
    return {"scenes": summary.this_run, "wall": loop, "device": renderer.busy,
            "finishing": times.score + times.segment + times.export, "score": times.score,
            "export": times.export, "layout": times.layout, "finish_wait": times.finish_wait,
            "plan_wait": times.plan_wait}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenes", type=int, default=200)
    parser.add_argument("--render-seconds", type=float, default=0.25,
                        help="stand-in device time per plan")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("-k", "--candidates", type=int, default=4)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        models = save_tiny_models(Path(tmp) / "models")
        rows = {}
        for name, depth in (("sequential", 0), ("overlapped", 2)):
            rows[name] = run(models, Path(tmp) / name, args.scenes, args.render_seconds, args.size,
                             args.candidates, depth)
    print(f"{args.scenes} scenes, K={args.candidates}, {args.size} px, stand-in device "
          f"{args.render_seconds:.3f} s per plan; CLIP-I with the tiny CLIP on this CPU\n")
    print("| engine | wall s | device busy s | wall / device | finishing s (CLIP-I + export) | "
          "device waiting for the finishing thread s |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, row in rows.items():
        print(f"| {name} | {row['wall']:.2f} | {row['device']:.2f} | {row['wall'] / row['device']:.3f} | "
              f"{row['finishing']:.2f} ({row['score']:.2f} + {row['export']:.2f}) | "
              f"{row['finish_wait']:.2f} |")
    print()
    print(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()

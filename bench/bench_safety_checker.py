"""What the safety checker costs per image: measured on the tiny models, counted at full size.

    .venv/bin/python bench/bench_safety_checker.py [--repeats 7] [--steps 25] [--candidates 4]

1. CPU, tiny models (acp.testing; the checker is a 2-layer CLIP vision tower on 32 px):
   seconds per candidate through ``GligenRenderer.render`` with ``safety_checker`` off and
   on, interleaved, median over repeats, one torch thread. The tiny checker is about as small
   next to the tiny UNet as the real one is next to the real UNet only by accident: read the
   ratio as a measurement of acp's code path, not of the real model.
2. Full size, no weights (the meta device): FLOPs per image of the SD-1.x GLIGEN UNet over a
   render (PNDM's steps + 1 calls at batch 2 for CFG, gated for the first ``beta`` of them), the
   VAE decode, and the safety checker (CLIP ViT-L/14 at 224 px), with torch.utils.flop_counter.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import warnings

import torch
from bench_gpu import FULL, build_pipeline, unet_flops

from acp import testing
from acp.defaults import BETA
from acp.render.gligen import GligenRenderer, RenderSettings
from acp.schema import ScenePlan


def tiny_cost(repeats: int, steps: int, k: int) -> None:
    torch.set_num_threads(1)
    plan = ScenePlan.model_validate({
        "id": "p", "caption": "A dog catches a frisbee.", "width": testing.IMAGE_SIZE,
        "height": testing.IMAGE_SIZE, "planner": "heuristic",
        "objects": [{"id": 0, "category": "dog", "description": "a brown dog", "bbox": [0.1, 0.3, 0.4, 0.5]},
                    {"id": 1, "category": "frisbee", "description": "a red frisbee",
                     "bbox": [0.6, 0.1, 0.2, 0.2]}],
    })
    with tempfile.TemporaryDirectory() as folder:
        testing.tiny_gligen_pipeline(safety_checker=True).save_pretrained(folder)
        renderers = {on: GligenRenderer(RenderSettings(model=folder, steps=steps, safety_checker=on), "cpu")
                     for on in (False, True)}
        for renderer in renderers.values():
            renderer.render([plan], k)  # warm-up
        seconds: dict[bool, list[float]] = {False: [], True: []}
        for repeat in range(repeats):
            for on in (False, True) if repeat % 2 else (True, False):
                start = time.process_time()
                renderers[on].render([plan], k)
                seconds[on].append((time.process_time() - start) / k)
    off, on = (statistics.median(seconds[x]) for x in (False, True))
    print(f"CPU, tiny models, {testing.IMAGE_SIZE} px, {steps} steps, K={k}, {repeats} repeats, 1 thread, "
          "CPU seconds per candidate (median):")
    print(f"  safety checker off  {off * 1e3:8.2f} ms")
    print(f"  safety checker on   {on * 1e3:8.2f} ms   ({100 * (on / off - 1):+.1f} % per image)")


def full_size_flops(steps: int) -> None:
    from torch.utils.flop_counter import FlopCounterMode

    pipeline = build_pipeline(FULL, "meta", torch.float32)
    pipeline.scheduler.set_timesteps(steps)
    calls = len(pipeline.scheduler.timesteps)
    gated_calls = int(BETA * calls)
    unet = unet_flops(pipeline.unet, 2, "meta", torch.float32)
    unet_total = gated_calls * unet[True] + (calls - gated_calls) * unet[False]
    latent = torch.empty(1, 4, 64, 64, device="meta")
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        pipeline.vae.decode(latent)
    vae = counter.get_total_flops()
    checker = pipeline.safety_checker
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        checker.visual_projection(checker.vision_model(torch.empty(1, 3, 224, 224, device="meta"))[1])
    check = counter.get_total_flops()
    print(f"Full size (meta device), {steps} steps ({calls} UNet calls at batch 2, {gated_calls} gated), "
          "FLOPs per image:")
    print(f"  UNet {unet_total / 1e12:7.2f} T, VAE decode {vae / 1e12:5.2f} T, "
          f"safety checker (ViT-L/14, 224 px) {check / 1e9:6.1f} G = "
          f"{100 * check / (unet_total + vae):.2f} % of the render")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--candidates", type=int, default=4)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.set_verbosity_error()
    tiny_cost(args.repeats, args.steps, args.candidates)
    full_size_flops(args.steps)


if __name__ == "__main__":
    main()

"""Render throughput: acp's overhead over the bare pipeline, and full-size GLIGEN on a GPU.

    .venv/bin/python bench/bench_render.py [--plans 16] [--repeats 7] [--steps 4] [--candidates 4]

1. CPU, tiny pipeline (``acp.testing``): seconds per candidate through ``render_to_folder``
   (prompt and phrase fitting, seeds, PNG encoding, atomic writes, manifest, progress bar)
   versus calling the same loaded pipeline directly with the same batch and generators.
   Both sides exclude the model load; the two are interleaved and the median over repeats is
   reported, as other processes share the machine. Also shown: the price of rendering one
   sample at a time on CPU (bit-exact re-renders), against a plain batched pipeline.
2. GPU (only where ``torch.cuda.is_available()``): the full-size GLIGEN architecture (SD-1.4
   UNet config with gated attention, SD VAE, CLIP-L text encoder; random weights, nothing
   downloaded) saved and loaded through ``GligenRenderer``: images/s at 512x512, 25 steps,
   K=4, float16, and the peak GPU memory.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from acp import testing
from acp.render.folder import render_to_folder
from acp.render.gligen import GligenRenderer, RenderSettings, load_pipeline
from acp.schema import ScenePlan


def make_plans(count: int, size: int) -> list[ScenePlan]:
    plans = []
    for n in range(count):
        shift = (n % 5) * 0.05
        plans.append(ScenePlan.model_validate({
            "id": f"bench-{n:04d}",
            "caption": f"A brown dog catches a red frisbee next to a bench, scene {n}.",
            "background": "a sunny park",
            "width": size, "height": size, "planner": "heuristic",
            "objects": [
                {"id": 0, "category": "dog", "description": "a brown dog",
                 "bbox": [0.05 + shift, 0.4, 0.4, 0.5]},
                {"id": 1, "category": "frisbee", "description": "a red frisbee",
                 "bbox": [0.6, 0.1, 0.2, 0.15]},
                {"id": 2, "category": "bench", "description": "a wooden bench",
                 "bbox": [0.5, 0.6, 0.45, 0.3]},
            ],
        }))
    return plans


class Clock:
    """Wall and CPU seconds. The CPU clock (this process, all threads, one torch thread) is the
    one to trust on a shared machine: other processes' load barely moves it."""

    def __init__(self) -> None:
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        self.thread = time.thread_time()

    def read(self) -> tuple[float, float]:
        return time.perf_counter() - self.wall, time.process_time() - self.cpu

    def read_thread(self) -> float:
        """CPU seconds of the calling thread only (the writer thread's work is not in it)."""
        return time.thread_time() - self.thread


class TimedPipeline:
    """The loaded pipeline, with the time spent inside its calls added up."""

    def __init__(self, pipeline: Any):
        self.pipeline, self.thread_cpu = pipeline, 0.0

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        clock = Clock()
        try:
            return self.pipeline(*args, **kwargs)
        finally:
            self.thread_cpu += clock.read_thread()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.pipeline, name)


def direct(renderer: GligenRenderer, pipeline: Any, plans: list[ScenePlan], k: int) -> tuple[float, float]:
    """(wall, cpu) seconds per candidate calling ``pipeline`` as acp does, without acp."""
    from acp.boxes import plan_to_gligen

    settings = renderer.settings
    calls = []
    for plan in plans:  # inputs prepared outside the clock: only the pipeline is timed
        seeds = [renderer.seed_for(plan.id, i) for i in range(k)]
        calls.append((renderer.prompt_for(plan), renderer.phrases_for(plan),
                      plan_to_gligen([o.bbox for o in plan.objects]).tolist(), seeds))
    clock = Clock()
    for prompt, phrases, boxes, seeds in calls:
        pipeline(
            prompt=prompt, gligen_phrases=phrases, gligen_boxes=boxes,
            gligen_scheduled_sampling_beta=settings.beta, num_inference_steps=settings.steps,
            guidance_scale=settings.guidance, height=plans[0].height, width=plans[0].width,
            num_images_per_prompt=k, generator=[torch.Generator().manual_seed(s) for s in seeds],
            output_type="pil",
        )
    wall, cpu = clock.read()
    return wall / (len(plans) * k), cpu / (len(plans) * k)


def through_acp(renderer: GligenRenderer, plans: list[ScenePlan], k: int, scratch: Path) -> dict[str, float]:
    """Per candidate: wall and CPU seconds of ``render_to_folder``; CPU seconds of acp's own work
    on the rendering thread in that same run (outside the pipeline call) and on its writer thread
    (PNG encoding, atomic writes, manifest lines)."""
    timed = TimedPipeline(renderer.pipeline)
    renderer.pipeline = timed
    try:
        with tempfile.TemporaryDirectory(dir=scratch) as output:
            clock = Clock()
            summary = render_to_folder(
                plans, Path(output), renderer.settings, candidates=k, renderer=renderer, progress=True
            )
            wall, cpu = clock.read()
            thread = clock.read_thread()
    finally:
        renderer.pipeline = timed.pipeline
    count = len(plans) * k
    assert summary.rendered == count
    return {
        "wall": wall / count, "cpu": cpu / count, "own_cpu": (thread - timed.thread_cpu) / count,
        "writer_cpu": (cpu - thread) / count, "pipeline_cpu": timed.thread_cpu / count,
    }


def cpu_overhead(args: argparse.Namespace) -> None:
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as scratch:
        folder = testing.save_tiny_models(scratch)["gligen"]
        settings = RenderSettings(model=str(folder), steps=args.steps)
        renderer = GligenRenderer(settings, device="cpu")
        plain = load_pipeline(settings.model, "cpu", torch.float32)  # batched, not per sample
        plans = make_plans(args.plans, testing.IMAGE_SIZE)
        k = args.candidates
        direct(renderer, renderer.pipeline, plans[:2], k)  # warm-up
        runs: dict[str, list[float]] = {}
        for repeat in range(args.repeats):
            # Interleaved, and in alternating order, so drifting load and warm caches hit both
            # sides alike.
            for side in ("direct", "acp") if repeat % 2 else ("acp", "direct"):
                if side == "direct":
                    wall, cpu = direct(renderer, renderer.pipeline, plans, k)
                    runs.setdefault("direct_wall", []).append(wall)
                    runs.setdefault("direct_cpu", []).append(cpu)
                else:
                    for name, value in through_acp(renderer, plans, k, Path(scratch)).items():
                        runs.setdefault(f"acp_{name}", []).append(value)
            runs.setdefault("plain_cpu", []).append(direct(renderer, plain, plans, k)[1])
    m = {name: statistics.median(values) for name, values in runs.items()}
    if args.verbose:
        for name, values in runs.items():
            print(f"  {name:16}", " ".join(f"{v * 1e3:7.2f}" for v in values))
    print(f"CPU, tiny GLIGEN, {testing.IMAGE_SIZE}x{testing.IMAGE_SIZE}, {args.steps} steps, K={k}, "
          f"{args.plans} plans x {args.repeats} repeats, 1 torch thread, medians per candidate:")
    print(f"  {'':28}{'CPU ms':>10}{'wall ms':>10}")
    print(f"  {'pipeline called directly':28}{m['direct_cpu'] * 1e3:10.2f}{m['direct_wall'] * 1e3:10.2f}")
    print(f"  {'acp render_to_folder':28}{m['acp_cpu'] * 1e3:10.2f}{m['acp_wall'] * 1e3:10.2f}")
    print(f"  acp overhead, A/B:           {100 * (m['acp_cpu'] / m['direct_cpu'] - 1):+.1f} % CPU, "
          f"{100 * (m['acp_wall'] / m['direct_wall'] - 1):+.1f} % wall  (target < 10 %)")
    print(f"  acp's own work in its run:   {m['acp_own_cpu'] * 1e3:.2f} ms CPU on the rendering thread "
          f"({100 * m['acp_own_cpu'] / m['acp_pipeline_cpu']:.1f} % of the pipeline's; prompts, seeds, "
          f"records, progress) + {m['acp_writer_cpu'] * 1e3:.2f} ms on the writer thread "
          "(PNG, atomic writes, manifest), overlapped with rendering")
    print(f"  plain batched pipeline:      {m['plain_cpu'] * 1e3:.2f} ms CPU (one sample at a time, for "
          f"bit-exact CPU re-renders, costs {100 * (m['direct_cpu'] / m['plain_cpu'] - 1):.0f} % on this "
          "tiny model; the batch runs whole on GPUs)")


def gpu_throughput(k: int = 4, steps: int = 25, size: int = 512, plans: int = 4) -> None:
    if not torch.cuda.is_available():
        print("GPU: no CUDA device available here; the full-size measurement was not run.")
        return
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionGLIGENPipeline, UNet2DConditionModel
    from diffusers.utils import logging as diffusers_logging
    from transformers import CLIPTextConfig, CLIPTextModel

    # Stable Diffusion 1.4's UNet and VAE configs (CompVis/stable-diffusion-v1-4), GLIGEN's gating.
    unet = UNet2DConditionModel(
        sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
        block_out_channels=(320, 640, 1280, 1280), attention_head_dim=8, cross_attention_dim=768,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3, attention_type="gated",
    )
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, sample_size=512,
        block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
    )
    tokenizer = testing.tiny_tokenizer()  # ids < 514 fit CLIP-L's 49408-token embedding
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
        num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu",
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    ))
    scheduler = PNDMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              skip_prk_steps=True)
    pipeline = StableDiffusionGLIGENPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    params = sum(p.numel() for p in unet.parameters()) / 1e6
    diffusers_logging.set_verbosity_error()  # casting a fresh model by .to() is fine here
    with tempfile.TemporaryDirectory() as folder:
        pipeline.to(torch.float16).save_pretrained(folder)
        del pipeline, unet, vae, text_encoder
        renderer = GligenRenderer(RenderSettings(model=folder, steps=steps, size=(size, size)), device="cuda")
        work = make_plans(plans + 1, size)
        renderer.render([work[0]], k)  # warm-up (kernel selection)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        with tempfile.TemporaryDirectory() as output:
            summary = render_to_folder(work[1:], Path(output), renderer.settings, candidates=k,
                                       renderer=renderer)
        peak = torch.cuda.max_memory_allocated() / 2**30
        direct_s = direct(renderer, renderer.pipeline, work[1:], k)[0]
    print(f"GPU {torch.cuda.get_device_name()}: full-size GLIGEN (UNet {params:.0f} M params, random "
          f"weights), {size}x{size}, {steps} steps, K={k}, float16, SDPA:")
    print(f"  acp render_to_folder   {summary.images_per_second:6.2f} images/s")
    print(f"  pipeline directly      {1 / direct_s:6.2f} images/s")
    print(f"  peak GPU memory        {peak:6.2f} GiB (torch.cuda.max_memory_allocated)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--plans", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--candidates", type=int, default=4)
    parser.add_argument("--skip-cpu", action="store_true", help="Only the GPU measurement.")
    parser.add_argument("--verbose", action="store_true", help="Print every repeat (ms per candidate).")
    args = parser.parse_args()
    if not args.skip_cpu:
        cpu_overhead(args)
    gpu_throughput(k=args.candidates)


if __name__ == "__main__":
    main()

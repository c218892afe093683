"""Full-size GLIGEN on one CUDA GPU: images/s, peak memory and UNet TFLOP/s per configuration.

    python bench/bench_gpu.py             # every row, about 5 minutes on an H100/H200
    python bench/bench_gpu.py --quick     # eager rows only, under 2 minutes
    python bench/bench_gpu.py --dry-run   # tiny models on the CPU, 4 steps: the code path, in seconds

Nothing is downloaded. The models are the full-size architectures with random weights (speed
does not depend on the weights): the SD-1.x UNet with GLIGEN's gated attention, the SD VAE, a
CLIP ViT-L text encoder, and (for the safety-checker row) Stable Diffusion's safety checker on a
CLIP ViT-L/14 vision tower; the tokenizer is acp.testing's offline byte-level one. They are put
together into ``StableDiffusionGLIGENPipeline`` as acp.testing does for the tiny one, and
rendered through acp's own loop (``GligenRenderer.render``, wrapped around that pipeline): B
plans (``--batch-plans``) x K candidates per denoising loop, 3 boxes each, beta 0.3, guidance
7.5, 512x512, 25 steps, float16, PIL output.

Rows vary one thing at a time:
- attention: ``AttnProcessor`` (explicit matmul + softmax) or ``AttnProcessor2_0`` (PyTorch's
  fused SDPA: diffusers' default on torch 2, and what acp sets on CUDA);
- ``channels_last`` memory format for the UNet;
- ``torch.compile`` of the UNet's forward (``dynamic=False``). GLIGEN's scheduled sampling
  switches the gated layers off after ``int(beta * steps)`` UNet calls, which fails a guard and
  compiles a second graph: the first call of a compiled row compiles both. "compile s" is that
  first call minus a steady call; the throughput columns are steady state, after it;
- the safety checker (acp's ``--safety-checker``), on top of eager SDPA.

UNet TFLOP/s: FLOPs of one UNet forward counted with ``torch.utils.flop_counter`` on the same
device, at the batch the UNet really sees: 2BK, because classifier-free guidance doubles the
batch inside the pipeline, so the count already includes it (no extra factor 2). It is counted
with the gated layers on and off (they add about 40 %), and each timed call sums the count of
the state every UNet call ran in, over the UNet calls actually made (PNDM makes steps + 1).
Counted with the explicit-matmul attention, so that attention is counted on every device; SDPA
computes the same products. The time is the UNet's own (CUDA events around each call), so VAE,
text encoder and PIL conversion are not in it; "UNet share" says how much of a call it is.
"""

from __future__ import annotations

import argparse
import gc
import platform
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

BETA = 0.3
GUIDANCE = 7.5
FULL_BUDGET_S = 330.0  # whole script, model building included; rows that would not fit are skipped
QUICK_BUDGET_S = 110.0
COMPILE_RESERVE_S = 150.0  # a compiled row is started only with this much budget left
EAGER_RESERVE_S = 20.0

# Keyword arguments of each model, full size and tiny (the tiny ones mirror acp.testing).
FULL = {
    "unet": dict(
        sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
        block_out_channels=(320, 640, 1280, 1280), attention_head_dim=8, cross_attention_dim=768,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3, attention_type="gated",
    ),
    "vae": dict(
        in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, sample_size=512,
        block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
    ),
    "text": dict(
        vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
        num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu",
    ),
    "vision": dict(  # CLIP ViT-L/14, the safety checker's tower
        hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
        image_size=224, patch_size=14, hidden_act="quick_gelu",
    ),
    "projection_dim": 768,
}
TINY = {
    "unet": dict(
        FULL["unet"], sample_size=8, layers_per_block=1, block_out_channels=(32, 32, 64, 64),
        cross_attention_dim=32,
    ),
    "vae": dict(FULL["vae"], layers_per_block=1, sample_size=64, block_out_channels=(8, 8, 16, 16),
                norm_num_groups=8),
    "text": dict(vocab_size=514, hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                 num_attention_heads=4, max_position_embeddings=77),
    "vision": dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                   image_size=32, patch_size=8),
    "projection_dim": 32,
}


@dataclass(frozen=True)
class Variant:
    name: str
    attention: str = "sdpa"  # or "matmul"
    channels_last: bool = False
    compiled: bool = False
    safety_checker: bool = False


VARIANTS = [
    Variant("eager, matmul attention", attention="matmul"),
    Variant("eager, SDPA (acp today)"),
    Variant("eager, SDPA, channels_last", channels_last=True),
    Variant("eager, SDPA, + safety checker", safety_checker=True),
    Variant("compiled, SDPA", compiled=True),
    Variant("compiled, SDPA, channels_last", channels_last=True, compiled=True),
]


@dataclass
class Setup:
    device: str
    dtype: torch.dtype
    sizes: dict[str, Any]
    size: int
    steps: int
    ks: tuple[int, ...]
    bs: tuple[int, ...]
    repeats: int
    budget: float
    variants: list[Variant]
    started: float = field(default_factory=time.perf_counter)

    def left(self) -> float:
        return self.budget - (time.perf_counter() - self.started)


def build_pipeline(sizes: dict[str, Any], device: str | torch.device, dtype: torch.dtype) -> Any:
    """GLIGEN UNet, VAE, CLIP text encoder and safety checker with random weights, built on
    ``device`` (``meta`` builds the shapes only), in one StableDiffusionGLIGENPipeline."""
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionGLIGENPipeline, UNet2DConditionModel
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
    from transformers import CLIPConfig, CLIPTextConfig, CLIPTextModel
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    from acp import testing

    tokenizer = testing.tiny_tokenizer()  # its ids (< 514) fit any CLIP vocabulary
    special = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
               "pad_token_id": tokenizer.pad_token_id}
    torch.manual_seed(0)
    with torch.device(device):  # initialised where it runs: a CPU init of 1.3 B weights is slow
        unet = UNet2DConditionModel(**sizes["unet"])
        vae = AutoencoderKL(**sizes["vae"])
        text_encoder = CLIPTextModel(CLIPTextConfig(**sizes["text"], **special))
        checker = StableDiffusionSafetyChecker(CLIPConfig(
            text_config={**sizes["text"], **special}, vision_config=sizes["vision"],
            projection_dim=sizes["projection_dim"],
        ))
    side = sizes["vision"]["image_size"]
    extractor = CLIPImageProcessorPil(size={"shortest_edge": side}, crop_size={"height": side, "width": side})
    # The GLIGEN checkpoints' scheduler: PNDM, PLMS steps only.
    scheduler = PNDMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              skip_prk_steps=True, steps_offset=1, set_alpha_to_one=False)
    pipeline = StableDiffusionGLIGENPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
        safety_checker=checker, feature_extractor=extractor, requires_safety_checker=False,
    )
    pipeline.to(device, dtype)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def bench_plans(size: int, count: int) -> list[Any]:
    """``count`` three-object plans (their own ids, so their own seeds)."""
    from acp.schema import ScenePlan

    return [ScenePlan.model_validate({
        "id": f"bench-{n}", "caption": "A brown dog catches a red frisbee by a bench.",
        "background": "a park", "width": size, "height": size, "planner": "heuristic",
        "objects": [
            {"id": 0, "category": "dog", "description": "a brown dog", "bbox": [0.05, 0.4, 0.4, 0.5]},
            {"id": 1, "category": "frisbee", "description": "a red frisbee", "bbox": [0.6, 0.1, 0.2, 0.15]},
            {"id": 2, "category": "bench", "description": "a wooden bench", "bbox": [0.5, 0.6, 0.45, 0.3]},
        ],
    }) for n in range(count)]


def gated_layers(unet: Any) -> list[Any]:
    return [m for m in unet.modules() if type(m).__name__ == "GatedSelfAttentionDense"]


def unet_inputs(unet: Any, batch: int, device: str | torch.device, dtype: torch.dtype) -> dict[str, Any]:
    """What the pipeline passes the UNet at one step, for a batch of ``batch`` (already 2K)."""
    config = unet.config
    side, width, boxes = config.sample_size, config.cross_attention_dim, 30  # the pipeline's max_objs
    return {
        "sample": torch.randn(batch, config.in_channels, side, side, device=device, dtype=dtype),
        "timestep": torch.tensor(500, device=device),
        "encoder_hidden_states": torch.randn(batch, 77, width, device=device, dtype=dtype),
        "cross_attention_kwargs": {"gligen": {
            "boxes": torch.rand(batch, boxes, 4, device=device, dtype=dtype),
            "positive_embeddings": torch.randn(batch, boxes, width, device=device, dtype=dtype),
            "masks": torch.ones(batch, boxes, device=device, dtype=dtype),
        }},
    }


def unet_flops(unet: Any, batch: int, device: str | torch.device, dtype: torch.dtype) -> dict[bool, int]:
    """FLOPs of one UNet forward at ``batch``, gated layers on (True) and off (False)."""
    from diffusers.models.attention_processor import AttnProcessor
    from torch.utils.flop_counter import FlopCounterMode

    saved = unet.attn_processors
    unet.set_attn_processor(AttnProcessor())  # its matmuls are counted on every device
    counts = {}
    try:
        for enabled in (True, False):
            for layer in gated_layers(unet):
                layer.enabled = enabled
            with torch.inference_mode(), FlopCounterMode(display=False) as counter:
                unet(**unet_inputs(unet, batch, device, dtype))
            counts[enabled] = counter.get_total_flops()
    finally:
        unet.set_attn_processor(saved)
        for layer in gated_layers(unet):
            layer.enabled = True
    return counts


class TimedUNet:
    """Replaces ``unet.forward``: times each call (CUDA events, or the clock on a CPU) and notes
    whether the gated layers were on."""

    def __init__(self, unet: Any, forward: Callable[..., Any], cuda: bool):
        self.unet, self.forward, self.cuda = unet, forward, cuda
        self.gate = gated_layers(unet)[0]
        self.calls: list[tuple[bool, Any, Any]] = []

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            out = self.forward(*args, **kwargs)
            end.record()
        else:
            start = time.perf_counter()
            out = self.forward(*args, **kwargs)
            end = time.perf_counter()
        self.calls.append((bool(self.gate.enabled), start, end))
        return out

    def take(self, flops: dict[bool, int]) -> tuple[float, int, int]:
        """(seconds, FLOPs, calls) of the UNet calls since the last ``take``."""
        if self.cuda:
            torch.cuda.synchronize()
            seconds = sum(start.elapsed_time(end) for _, start, end in self.calls) / 1e3
        else:
            seconds = sum(end - start for _, start, end in self.calls)
        total = sum(flops[gated] for gated, _, _ in self.calls)
        calls, self.calls = len(self.calls), []
        return seconds, total, calls


def configure(pipeline: Any, variant: Variant) -> Callable[..., Any]:
    """Set the variant's attention, memory format and safety checker; the UNet forward to time."""
    from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

    processor = AttnProcessor2_0 if variant.attention == "sdpa" else AttnProcessor
    pipeline.unet.set_attn_processor(processor())
    pipeline.vae.set_attn_processor(processor())
    layout = torch.channels_last if variant.channels_last else torch.contiguous_format
    pipeline.unet.to(memory_format=layout)
    forward = type(pipeline.unet).forward.__get__(pipeline.unet)  # the class's, not a wrapper
    if variant.compiled:
        torch._dynamo.reset()  # every compiled row compiles from scratch (its own shapes, layout)
        forward = torch.compile(forward, dynamic=False)
    return forward


def measure(pipeline: Any, setup: Setup, variant: Variant, k: int, b: int, flops: dict[bool, int],
            plans: list[Any], checker: tuple[Any, Any]) -> dict[str, Any]:
    from acp.render.gligen import GligenRenderer, RenderSettings

    cuda = setup.device == "cuda"
    pipeline.safety_checker, pipeline.feature_extractor = checker if variant.safety_checker else (None, None)
    timed = TimedUNet(pipeline.unet, configure(pipeline, variant), cuda)
    pipeline.unet.forward = timed
    settings = RenderSettings(model="bench", steps=setup.steps, guidance=GUIDANCE, beta=BETA,
                              size=(setup.size, setup.size), safety_checker=variant.safety_checker)
    renderer = GligenRenderer.from_pipeline(pipeline, settings, setup.device)

    def one_call() -> float:
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        renderer.render(plans[:b], k)
        if cuda:
            torch.cuda.synchronize()
        return time.perf_counter() - start

    try:
        first = one_call()  # warm-up: kernel selection, and compilation for compiled rows
        timed.take(flops)
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        walls = [one_call() for _ in range(setup.repeats)]
        unet_seconds, unet_flop_total, unet_calls = timed.take(flops)
    finally:
        del pipeline.unet.forward  # back to the class's forward
    wall = statistics.median(walls)
    return {
        "images/s": b * k * len(walls) / sum(walls),
        "s/call": wall,
        "UNet ms/call": 1e3 * unet_seconds / unet_calls,
        "UNet TFLOP/s": unet_flop_total / unet_seconds / 1e12,
        "UNet share": unet_seconds / sum(walls),
        "peak GiB": torch.cuda.max_memory_allocated() / 2**30 if cuda else None,
        "compile s": first - wall if variant.compiled else None,
    }


COLUMNS = ["images/s", "s/call", "UNet ms/call", "UNet TFLOP/s", "UNet share", "peak GiB", "compile s"]


def cell(name: str, value: Any) -> str:
    if value is None:
        return "-"
    if name == "UNet share":
        return f"{100 * value:.0f} %"
    return f"{value:.3g}" if name in ("images/s", "UNet TFLOP/s") else f"{value:.2f}"


def run(setup: Setup) -> None:
    import diffusers

    cuda = setup.device == "cuda"
    started = time.perf_counter()
    pipeline = build_pipeline(setup.sizes, setup.device, setup.dtype)
    checker = (pipeline.safety_checker, pipeline.feature_extractor)
    build_s = time.perf_counter() - started
    unet_params = sum(p.numel() for p in pipeline.unet.parameters()) / 1e6
    batches = sorted({k * b for k in setup.ks for b in setup.bs})
    flops = {n: unet_flops(pipeline.unet, 2 * n, setup.device, setup.dtype) for n in batches}
    where = torch.cuda.get_device_name() if cuda else f"CPU ({platform.processor() or platform.machine()})"
    print(f"## GLIGEN on {where}\n")
    dtype = str(setup.dtype).removeprefix("torch.")
    print(f"torch {torch.__version__}, diffusers {diffusers.__version__}; {setup.size}x{setup.size}, "
          f"{setup.steps} steps, {dtype}, beta {BETA}, guidance {GUIDANCE}; "
          f"UNet {unet_params:.0f} M parameters, random weights (built in {build_s:.1f} s).")
    for n in batches:
        print(f"UNet forward at batch {2 * n} (B x K = {n}, doubled by CFG): {flops[n][True] / 1e9:.5g} "
              f"GFLOP with the gated layers on, {flops[n][False] / 1e9:.5g} GFLOP off.")
    print()
    print("| configuration | K | B | " + " | ".join(COLUMNS) + " |")
    print("|---|---:|---:|" + "---:|" * len(COLUMNS))
    plans = bench_plans(setup.size, max(setup.bs))
    # Eager rows first; compiled rows last, largest batch first, while the budget lasts.
    rows = [(v, k, b) for v in setup.variants if not v.compiled for k in setup.ks for b in setup.bs]
    rows += [(v, k, b) for k in sorted(setup.ks, reverse=True) for b in sorted(setup.bs, reverse=True)
             for v in setup.variants if v.compiled]
    for variant, k, b in rows:
        reserve = COMPILE_RESERVE_S if variant.compiled else EAGER_RESERVE_S
        if setup.left() < reserve:
            print(f"| {variant.name} | {k} | {b} | skipped: under {reserve:.0f} s of the time budget left |"
                  + " |" * (len(COLUMNS) - 1))
            continue
        result = measure(pipeline, setup, variant, k, b, flops[k * b], plans, checker)
        cells = " | ".join(cell(c, result[c]) for c in COLUMNS)
        print(f"| {variant.name} | {k} | {b} | {cells} |", flush=True)
        gc.collect()
        if cuda:
            torch.cuda.empty_cache()
    print(f"\n{setup.repeats} timed calls per row after one warm-up call; images/s over those calls; "
          f"total {time.perf_counter() - setup.started:.0f} s.")


def dry_run_full_size_flops() -> None:
    """The full-size configs, built on the meta device (shapes, no weights): their UNet FLOPs."""
    pipeline = build_pipeline(FULL, "meta", torch.float16)
    counts = unet_flops(pipeline.unet, 2, "meta", torch.float16)
    print(f"Full-size configs on the meta device: UNet forward at batch 2 (K=1), "
          f"{counts[True] / 1e9:.5g} GFLOP gated, {counts[False] / 1e9:.5g} GFLOP plain.\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="Eager rows only, 2 timed calls each.")
    parser.add_argument("--dry-run", action="store_true",
                        help="Tiny models on the CPU, 4 steps, 64 px: checks the code, measures nothing.")
    parser.add_argument("--budget", type=float, default=None,
                        help=f"Seconds for the whole run [default: {FULL_BUDGET_S:.0f}, "
                        f"--quick {QUICK_BUDGET_S:.0f}]; rows that would not fit are skipped.")
    args = parser.parse_args(argv)
    if not args.dry_run and not torch.cuda.is_available():
        print("bench_gpu: needs a CUDA GPU and torch sees none (torch.cuda.is_available() is False); "
              "--dry-run runs tiny models on the CPU", file=sys.stderr)
        return 2
    warnings.filterwarnings("ignore")  # random weights overflow float16 into NaN; PIL casts warn
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.set_verbosity_error()
    transformers_logging.set_verbosity_error()
    if args.dry_run:
        torch.set_num_threads(1)
        dry_run_full_size_flops()
        # 4 steps: PNDM makes 5 UNet calls, the first with the gated layers on, the rest off.
        setup = Setup("cpu", torch.float32, TINY, size=64, steps=4, ks=(2,), bs=(1, 2), repeats=1,
                      budget=float("inf"), variants=[v for v in VARIANTS if not v.compiled])
        print("(dry run: tiny models, numbers mean nothing; compiled rows need CUDA and are left out)\n")
    else:
        quick = args.quick
        setup = Setup("cuda", torch.float16, FULL, size=512, steps=25, ks=(1, 4), bs=(1, 2, 4, 8),
                      repeats=2 if quick else 3,
                      budget=args.budget or (QUICK_BUDGET_S if quick else FULL_BUDGET_S),
                      variants=[v for v in VARIANTS if not (quick and v.compiled)])
    run(setup)
    return 0


if __name__ == "__main__":
    sys.exit(main())

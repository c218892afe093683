"""GLIGEN (text-box generation) through diffusers: a plan in, K candidate images out.

``GligenRenderer`` loads ``StableDiffusionGLIGENPipeline`` once and renders any number of plans
with it; ``render_plan(plan, candidates=K)`` renders K candidates in one batched call.

Choices worth knowing:
- Seeds. Candidate ``i`` of plan ``p`` uses ``derive_seed(run_seed, p, i)`` and its own CPU
  ``torch.Generator``, so its starting noise does not depend on the batch it shares, and is
  the same on every device.
- Bit-exact re-rendering on CPU. CPU kernels (oneDNN convolutions, MKL GEMMs) pick different
  blocking for different batch sizes, so the same sample in a batch of 8 and of 2 differs in
  the last float bits. On CPU the UNet and VAE therefore run one sample at a time inside the
  batched call: a candidate re-rendered alone from its recorded seed is the same image, pixel
  for pixel. On GPUs the batch runs whole; there throughput matters and the kernels are not
  bit-reproducible across batch sizes anyway.
- ``beta`` (GLIGEN's scheduled sampling): the gated box attention runs for the first
  ``beta`` of the steps, then the base Stable Diffusion weights finish alone. The default 0.3
  is the GLIGEN paper's (and diffusers') setting: the layout is settled in the early, noisy
  steps, and grounding later on mostly costs image quality. Raise it towards 1 for tighter
  boxes; CLIS cherry-picking already drops candidates whose objects left their boxes.
- A plan without objects (background only) is plain text-to-image: diffusers refuses an empty
  box list, so one placeholder box is passed with grounding switched off from the first step
  (beta 0), which leaves the gated layers out of every UNet call. Its candidates record beta 0.
- Phrases and prompts are cut, at a word boundary where possible, to the pipeline tokenizer's
  limit (77 tokens for CLIP): GLIGEN's phrase encoder does not truncate and would crash.
- The safety checker (``RenderSettings.safety_checker``, off by default) is not even loaded when
  off. When on, diffusers blacks out each image it flags; such a candidate comes back with
  ``flagged=True`` and must be dropped, not scored (``render_to_folder`` writes no manifest
  line for it and counts it).
"""

from __future__ import annotations

import functools
import logging
import math
import warnings
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from acp import defaults
from acp.boxes import plan_to_gligen
from acp.device import resolve_device
from acp.errors import InputError, MissingDependencyError, one_line
from acp.plan.base import derive_seed
from acp.pretrained import load_pretrained
from acp.schema import Candidate, ScenePlan

if TYPE_CHECKING:
    import torch
    from PIL import Image

_TOKEN_LIMIT_FALLBACK = 77  # CLIP's context, for tokenizers saved without model_max_length


@dataclass(frozen=True)
class RenderSettings:
    """Everything that decides the pixels of a candidate, apart from its plan and index.

    ``size`` is ``(width, height)``; ``None`` renders each plan at its own width and height.
    A local folder given as ``model`` is stored as its absolute path. ``safety_checker`` runs the
    model's NSFW classifier after every decode: it leaves an unflagged image as it is, but it
    decides which candidates exist.
    """

    model: str = defaults.GLIGEN_MODEL
    steps: int = defaults.STEPS
    guidance: float = defaults.GUIDANCE
    beta: float = defaults.BETA
    size: tuple[int, int] | None = None
    negative_prompt: str = ""
    seed: int = 0
    safety_checker: bool = defaults.SAFETY_CHECKER

    def __post_init__(self) -> None:
        if not 1 <= self.steps <= defaults.MAX_STEPS:
            raise InputError(f"steps must be in 1..{defaults.MAX_STEPS}, got {self.steps}")
        if not (math.isfinite(self.guidance) and self.guidance >= 0):
            raise InputError(f"guidance must be >= 0, got {self.guidance:g}")
        if not 0.0 <= self.beta <= 1.0:
            raise InputError(f"beta must be in [0, 1], got {self.beta:g}")
        if self.seed < 0:
            raise InputError(f"seed must be >= 0, got {self.seed}")
        if self.size is not None:
            width, height = self.size
            if width < 8 or height < 8 or width % 8 or height % 8:
                raise InputError(
                    f"size must be a multiple of 8 (the VAE's factor), got {width}x{height}"
                )
            object.__setattr__(self, "size", (int(width), int(height)))
        if Path(self.model).is_dir():
            object.__setattr__(self, "model", str(Path(self.model).resolve()))

    def record(self) -> dict[str, Any]:
        """JSON-ready form, stored next to the renders to refuse mixing settings."""
        data = asdict(self)
        data["size"] = list(self.size) if self.size else None
        return data


class Rendered(NamedTuple):
    """One candidate: its manifest record and its image (not yet written anywhere).

    ``flagged``: the safety checker flagged it and diffusers returned a black image in its
    place. Drop it: do not write, score or export it."""

    candidate: Candidate
    image: Image.Image
    flagged: bool = False


def global_prompt(plan: ScenePlan) -> str:
    """The caption, with the background appended unless the caption already names it."""
    caption = plan.caption.strip()
    background = plan.background.strip()
    if not background or background.lower() in caption.lower():
        return caption
    return f"{caption.rstrip('. ')}, {background}"


def fit_to_tokens(text: str, count_tokens: Callable[[str], int], limit: int) -> str:
    """The longest prefix of ``text`` with at most ``limit`` tokens, cut between words where
    possible (inside the first word only when even that one is too long)."""
    text = " ".join(text.split())
    if count_tokens(text) <= limit:
        return text
    words = text.split(" ")

    def longest(pieces: list[str], joiner: str) -> int:
        low, high = 0, len(pieces)  # pieces[:low] fits, pieces[:high + 1] does not
        while low < high:
            middle = (low + high + 1) // 2
            if count_tokens(joiner.join(pieces[:middle])) <= limit:
                low = middle
            else:
                high = middle - 1
        return low

    kept = longest(words, " ")
    if kept == 0:
        return words[0][: longest(list(words[0]), "")]
    return " ".join(words[:kept]).rstrip(" ,;:")


def _split_batch(value: Any, index: int, size: int) -> Any:
    import torch

    if isinstance(value, torch.Tensor):
        return value[index : index + 1] if value.ndim and value.shape[0] == size else value
    if isinstance(value, dict):
        return {key: _split_batch(item, index, size) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_split_batch(item, index, size) for item in value)
    return value


def _join_batch(parts: list[Any]) -> Any:
    import torch

    first = parts[0]
    if isinstance(first, torch.Tensor):
        return torch.cat(parts)
    if isinstance(first, tuple):
        return tuple(_join_batch([part[i] for part in parts]) for i in range(len(first)))
    # diffusers' output dataclasses (UNet2DConditionOutput, DecoderOutput) are mappings.
    return type(first)(**{key: _join_batch([part[key] for part in parts]) for key in first})


def one_sample_at_a_time(call: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap a model call so each batch item is computed alone and the results concatenated
    (see the module notes on bit-exact CPU re-renders)."""

    @functools.wraps(call)
    def run(sample: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        size = sample.shape[0]
        if size == 1:
            return call(sample, *args, **kwargs)
        return _join_batch(
            [
                call(sample[i : i + 1], *_split_batch(args, i, size), **_split_batch(kwargs, i, size))
                for i in range(size)
            ]
        )

    return run


def load_pipeline(model: str, device: str, dtype: torch.dtype, *, safety_checker: bool = False) -> Any:
    """``StableDiffusionGLIGENPipeline.from_pretrained(model)`` on ``device``, checked to be a
    GLIGEN (gated attention) model; load failures become one-line ``InputError``s. A hub id is
    read from the cache first (``acp.pretrained``). Without ``safety_checker`` the checker and
    its feature extractor are not loaded at all; with it, a model that has none is an error."""
    try:
        from diffusers.utils import logging as diffusers_logging
        from transformers.utils import logging as transformers_logging
    except ImportError as error:
        raise MissingDependencyError(
            f"rendering needs torch, diffusers and transformers ({error}); "
            "install them with: pip install torch diffusers transformers"
        ) from None
    # Quiet during import and load: diffusers warns that the GLIGEN pipeline is deprecated
    # (it still works through 0.42, which acp is tested with), transformers about optional
    # torchvision, and both draw per-component loading bars; acp reports the load time in its
    # summary instead. diffusers also logs, as an error, each weight file it falls back from
    # (safetensors -> bin): only the exception that ends a failed load is news to the user.
    libraries = (diffusers_logging, transformers_logging)
    saved = [(lib.get_verbosity(), lib.is_progress_bar_enabled()) for lib in libraries]
    for lib in libraries:
        lib.set_verbosity(logging.CRITICAL)
        lib.disable_progress_bar()
    try:
        from diffusers import StableDiffusionGLIGENPipeline

        with warnings.catch_warnings():
            # Newer diffusers call it ``dtype``; ``torch_dtype`` works on every supported version.
            warnings.filterwarnings("ignore", message=".*torch_dtype.*", category=FutureWarning)
            # ``None`` overrides the model_index entry, so the checker's weights are not read.
            skip: dict[str, Any] = (
                {} if safety_checker else {"safety_checker": None, "feature_extractor": None}
            )
            pipeline = load_pretrained(
                functools.partial(StableDiffusionGLIGENPipeline.from_pretrained, torch_dtype=dtype, **skip),
                model, option="--model",
            )
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        raise InputError(f"cannot load a GLIGEN pipeline from {model!r}: {one_line(str(error))}") from None
    finally:
        for lib, (verbosity, bars) in zip(libraries, saved, strict=True):
            lib.set_verbosity(verbosity)
            if bars:
                lib.enable_progress_bar()
    attention = getattr(pipeline.unet.config, "attention_type", "default")
    if attention != "gated":
        raise InputError(
            f"{model!r} is not a GLIGEN text-box model: its UNet has attention_type "
            f"{attention!r}, expected 'gated'"
        )
    if safety_checker and (pipeline.safety_checker is None or pipeline.feature_extractor is None):
        raise InputError(
            f"--safety-checker: {model!r} has no safety checker (or no feature extractor for it); "
            "use --no-safety-checker"
        )
    pipeline = pipeline.to(device)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


class GligenRenderer:
    """A loaded GLIGEN pipeline and the settings it renders with. Build it once, render many
    plans: ``render_plan(plan, candidates=K)`` or ``render_seeds(plan, {index: seed})``."""

    def __init__(self, settings: RenderSettings | None = None, device: str = "auto"):
        import torch

        self.settings = settings or RenderSettings()
        self.device = resolve_device(device)
        # Half precision only where it is the well-trodden path for SD 1.x: CUDA.
        self.dtype = torch.float16 if self.device.startswith("cuda") else torch.float32
        self.pipeline = load_pipeline(
            self.settings.model, self.device, self.dtype, safety_checker=self.settings.safety_checker
        )
        scheduler = self.pipeline.scheduler.config
        most = int(scheduler.get("num_train_timesteps", 1000)) - int(scheduler.get("steps_offset", 0) or 0)
        if self.settings.steps > most:
            raise InputError(
                f"steps must be in 1..{most} for the scheduler of {self.settings.model!r}, "
                f"got {self.settings.steps}"
            )
        if self.device.startswith("cuda"):
            from diffusers.models.attention_processor import AttnProcessor2_0

            # PyTorch's fused scaled-dot-product attention (flash / memory-efficient kernels).
            self.pipeline.unet.set_attn_processor(AttnProcessor2_0())
            self.pipeline.vae.set_attn_processor(AttnProcessor2_0())
        if self.device == "cpu":
            self.pipeline.unet.forward = one_sample_at_a_time(self.pipeline.unet.forward)
            self.pipeline.vae.decode = one_sample_at_a_time(self.pipeline.vae.decode)
        limit = int(getattr(self.pipeline.tokenizer, "model_max_length", 0) or 0)
        self.token_limit = limit if 0 < limit < 100_000 else _TOKEN_LIMIT_FALLBACK

    def _count_tokens(self, text: str) -> int:
        return len(self.pipeline.tokenizer(text, verbose=False).input_ids)

    def fit(self, text: str) -> str:
        """``text`` cut to the text encoder's token limit."""
        return fit_to_tokens(text, self._count_tokens, self.token_limit)

    def prompt_for(self, plan: ScenePlan) -> str:
        return self.fit(global_prompt(plan))

    def phrases_for(self, plan: ScenePlan) -> list[str]:
        return [self.fit(obj.description) for obj in plan.objects]

    def seed_for(self, plan_id: str, index: int) -> int:
        return derive_seed(self.settings.seed, plan_id, index)

    def size_for(self, plan: ScenePlan) -> tuple[int, int]:
        return self.settings.size or (plan.width, plan.height)

    def render_plan(self, plan: ScenePlan, candidates: int = defaults.CANDIDATES) -> list[Rendered]:
        """Candidates ``0 .. candidates-1`` of ``plan``, in one batched pipeline call."""
        if not 1 <= candidates <= defaults.MAX_CANDIDATES:
            raise InputError(f"candidates must be 1..{defaults.MAX_CANDIDATES}, got {candidates}")
        return self.render_seeds(plan, {i: self.seed_for(plan.id, i) for i in range(candidates)})

    def render_seeds(self, plan: ScenePlan, seeds: Mapping[int, int]) -> list[Rendered]:
        """The candidates ``{index: seed}`` of ``plan`` in one batched call, in that order.
        Pass a manifest record's ``{index: seed}`` to rebuild its image. Every candidate is
        returned, flagged ones too (``Rendered.flagged``): callers index them by position."""
        import torch

        if not seeds:
            return []
        settings = self.settings
        width, height = self.size_for(plan)
        prompt = self.prompt_for(plan)
        negative = self.fit(settings.negative_prompt) if settings.negative_prompt.strip() else ""
        phrases = self.phrases_for(plan)
        if phrases:
            boxes, beta = plan_to_gligen([obj.bbox for obj in plan.objects]).tolist(), settings.beta
        else:  # background only: a placeholder box, never attended to (see the module notes)
            boxes, beta = [[0.0, 0.0, 0.0, 0.0]], 0.0
        generators = [torch.Generator(device="cpu").manual_seed(seed) for seed in seeds.values()]
        output = self.pipeline(
            prompt=prompt,
            negative_prompt=negative or None,
            gligen_phrases=phrases or [""],
            gligen_boxes=boxes,
            gligen_scheduled_sampling_beta=beta,
            num_inference_steps=settings.steps,
            guidance_scale=settings.guidance,
            height=height,
            width=width,
            num_images_per_prompt=len(generators),
            generator=generators,
            output_type="pil",
        )
        # diffusers gives None when no checker ran, else one bool per image.
        flags = output.nsfw_content_detected or [False] * len(output.images)
        return [
            Rendered(
                Candidate(
                    plan_id=plan.id,
                    index=index,
                    seed=seed,
                    path=f"{plan.id}/{index}.png",
                    model=settings.model,
                    steps=settings.steps,
                    guidance=settings.guidance,
                    beta=beta,
                    width=width,
                    height=height,
                    prompt=prompt,
                    negative_prompt=negative,
                    phrases=phrases,
                ),
                image,
                bool(flagged),
            )
            for (index, seed), image, flagged in zip(seeds.items(), output.images, flags, strict=True)
        ]

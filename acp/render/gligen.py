"""GLIGEN (text-box generation) through diffusers: a plan in, K candidate images out.

``GligenRenderer`` loads ``StableDiffusionGLIGENPipeline`` once and renders any number of plans
with it; ``render(plans, candidates=K)`` renders K candidates of each plan, all plans in one
denoising loop of acp's own over the pipeline's components (the pipeline takes one layout per
call; ``_denoise`` is its loop with a batch of layouts, tested against it pixel for pixel).

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
import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from acp import defaults
from acp.boxes import plan_to_gligen
from acp.device import resolve_device, resolve_dtype
from acp.errors import InputError, MissingDependencyError, one_line
from acp.pretrained import load_pretrained, loading
from acp.render.base import RenderedCandidate
from acp.schema import Candidate, ScenePlan
from acp.seeds import derive_seed
from acp.settings_record import recorded

if TYPE_CHECKING:
    import torch

_TOKEN_LIMIT_FALLBACK = 77  # CLIP's context, for tokenizers saved without model_max_length
GLIGEN_SLOTS = 30  # the grounding tokens of GLIGEN's position net (a plan has at most as many objects)


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
    # In a generate run's settings, size and seed are the run's own, recorded once.
    size: tuple[int, int] | None = field(default=None, metadata=recorded(skip=True))
    negative_prompt: str = ""
    seed: int = field(default=0, metadata=recorded(skip=True))
    # Off, as before the option existed: settings of older runs still match.
    safety_checker: bool = field(default=defaults.SAFETY_CHECKER, metadata=recorded(omit="default"))

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
        try:
            folder = Path(self.model).is_dir()
        except OSError:  # a name too long to be a path: a hub id, or nothing (acp.pretrained says)
            folder = False
        if folder:
            object.__setattr__(self, "model", str(Path(self.model).resolve()))

    def record(self) -> dict[str, Any]:
        """JSON-ready form, stored next to the renders to refuse mixing settings."""
        data = asdict(self)
        data["size"] = list(self.size) if self.size else None
        return data


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


def _token_limit(tokenizer: Any) -> int:
    limit = int(getattr(tokenizer, "model_max_length", 0) or 0)
    return limit if 0 < limit < 100_000 else _TOKEN_LIMIT_FALLBACK


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


def load_pipeline(model: str, device: str, dtype: torch.dtype, *, safety_checker: bool = False,
                  progress: bool = False) -> Any:
    """``StableDiffusionGLIGENPipeline.from_pretrained(model)`` in ``dtype`` on ``device``,
    checked to be a GLIGEN (gated attention) model; load failures become one-line
    ``InputError``s. A hub id is read from the cache first (``acp.pretrained``). Without
    ``safety_checker`` the checker and its feature extractor are not loaded at all; with it, a
    model that has none is an error. ``progress``: the status line of ``acp.pretrained.loading``."""
    try:
        import diffusers.utils.logging  # noqa: F401 - imported first, so that the load quiets its logs
        import transformers  # noqa: F401
    except ImportError as error:
        raise MissingDependencyError(
            f"rendering needs torch, diffusers and transformers ({error}); "
            "install them with: pip install torch diffusers transformers"
        ) from None
    with loading("--model", model, progress=progress):
        # diffusers warns, when the class is imported, that the GLIGEN pipeline is deprecated (it
        # still works through 0.42, which acp is tested with); ``loading`` keeps that quiet.
        try:
            from diffusers import StableDiffusionGLIGENPipeline

            with warnings.catch_warnings():
                # Newer diffusers call it ``dtype``; ``torch_dtype`` works on every supported version.
                warnings.filterwarnings("ignore", message=".*torch_dtype.*", category=FutureWarning)
                # ``None`` overrides the model_index entry, so the checker's weights are not read.
                skip: dict[str, Any] = (
                    {} if safety_checker else {"safety_checker": None, "feature_extractor": None}
                )
                load = functools.partial(StableDiffusionGLIGENPipeline.from_pretrained, torch_dtype=dtype,
                                         **skip)
                pipeline = load_pretrained(load, model, option="--model")
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
            raise InputError(f"cannot load a GLIGEN pipeline from {model!r}: {one_line(str(error))}"
                             ) from None
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
    plans: ``render(plans, candidates=K)`` or ``render_seeds([(plan, {index: seed}), ...])``."""

    def __init__(self, settings: RenderSettings | None = None, device: str = "auto", *,
                 compile: bool = False, dtype: str | torch.dtype | None = None, progress: bool = False):
        self.settings = settings or RenderSettings()
        self.device = resolve_device(device)
        if compile and not self.device.startswith("cuda"):
            raise InputError(f"--compile needs a CUDA device (it compiles the UNet for the GPU), "
                             f"got {self.device}")
        # By default float16 on CUDA, float32 elsewhere (acp.device.resolve_dtype).
        self.dtype = resolve_dtype(dtype, self.device)
        self.pipeline = load_pipeline(
            self.settings.model, self.device, self.dtype, safety_checker=self.settings.safety_checker,
            progress=progress,
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
            if compile:
                # In place, so the pipeline still sees its UNet. Scheduled sampling switches the
                # gated layers off after ``beta`` of the steps, a second graph: both compile on
                # the first plan, and every later plan reuses them.
                self.pipeline.unet.compile(dynamic=False)
        if self.device == "cpu":
            self.pipeline.unet.forward = one_sample_at_a_time(self.pipeline.unet.forward)
            self.pipeline.vae.decode = one_sample_at_a_time(self.pipeline.vae.decode)
        self.token_limit = _token_limit(self.pipeline.tokenizer)

    @classmethod
    def from_pipeline(cls, pipeline: Any, settings: RenderSettings, device: str) -> GligenRenderer:
        """A renderer around a pipeline already built and configured (attention, memory format,
        compilation), used as it is: ``bench/bench_gpu.py`` times acp's loop this way."""
        renderer = cls.__new__(cls)
        renderer.settings, renderer.device, renderer.pipeline = settings, device, pipeline
        renderer.dtype = pipeline.unet.dtype
        renderer.token_limit = _token_limit(pipeline.tokenizer)
        return renderer

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

    def render(self, plans: Sequence[ScenePlan], candidates: int = defaults.CANDIDATES
               ) -> list[list[RenderedCandidate]]:
        """Candidates ``0 .. candidates-1`` of each plan, all plans in one batch (see
        ``render_seeds``); one list per plan, in order."""
        if not 1 <= candidates <= defaults.MAX_CANDIDATES:
            raise InputError(f"candidates must be 1..{defaults.MAX_CANDIDATES}, got {candidates}")
        return self.render_seeds([(plan, {i: self.seed_for(plan.id, i) for i in range(candidates)})
                                  for plan in plans])

    def render_seeds(self, requests: Sequence[tuple[ScenePlan, Mapping[int, int]]]
                     ) -> list[list[RenderedCandidate]]:
        """The candidates ``{index: seed}`` of each ``(plan, seeds)``, one list per request in
        its seeds' order. Requests of the same size and grounding share one denoising loop (a
        batch of every candidate of every plan in it); pass a manifest record's
        ``{index: seed}`` to rebuild its image. Every candidate is returned, flagged ones too
        (``RenderedCandidate.flagged``): callers index them by position."""
        conditions = [self._condition(plan, seeds) for plan, seeds in requests if seeds]
        groups: dict[tuple[int, int, float], list[_Condition]] = {}
        for condition in conditions:
            groups.setdefault((condition.width, condition.height, condition.beta), []).append(condition)
        images: dict[int, tuple[list[Any], list[Any], list[bool]]] = {}
        for group in groups.values():
            pictures, levels, flags = self._denoise(group)
            start = 0
            for condition in group:
                count = len(condition.seeds)
                images[id(condition)] = (pictures[start : start + count], levels[start : start + count],
                                         flags[start : start + count])
                start += count
        results: list[list[RenderedCandidate]] = []
        found = iter(conditions)
        for plan, seeds in requests:
            if not seeds:
                results.append([])
                continue
            condition = next(found)
            pictures, levels, flags = images[id(condition)]
            results.append([
                RenderedCandidate(self._candidate(plan, condition, index, seed), image, flagged, pixels)
                for (index, seed), image, pixels, flagged in zip(seeds.items(), pictures, levels, flags,
                                                                  strict=True)
            ])
        return results

    def _candidate(self, plan: ScenePlan, condition: _Condition, index: int, seed: int) -> Candidate:
        settings = self.settings
        return Candidate(
            plan_id=plan.id, index=index, seed=seed, path=f"{plan.id}/{index}.png",
            model=settings.model, steps=settings.steps, guidance=settings.guidance,
            beta=condition.beta, width=condition.width, height=condition.height,
            prompt=condition.prompt, negative_prompt=condition.negative, phrases=condition.phrases,
        )

    def _condition(self, plan: ScenePlan, seeds: Mapping[int, int]) -> _Condition:
        """A plan's text and box conditioning, computed as the diffusers GLIGEN pipeline does
        for one layout: the prompt repeated per candidate, the phrases' pooled CLIP embeddings
        and normalised boxes padded to its 30 slots, a mask over the slots in use."""
        import torch

        pipe, settings = self.pipeline, self.settings
        width, height = self.size_for(plan)
        prompt = self.prompt_for(plan)
        negative = self.fit(settings.negative_prompt) if settings.negative_prompt.strip() else ""
        phrases = self.phrases_for(plan)
        if phrases:
            boxes, beta = plan_to_gligen([obj.bbox for obj in plan.objects]).tolist(), settings.beta
        else:  # background only: a placeholder box, never attended to (see the module notes)
            boxes, beta = [[0.0, 0.0, 0.0, 0.0]], 0.0
        device, count = pipe._execution_device, len(seeds)
        positive, unconditional = pipe.encode_prompt(
            prompt, device, count, settings.guidance > 1.0, negative or None)
        tokens = pipe.tokenizer(phrases or [""], padding=True, return_tensors="pt").to(device)
        pooled = pipe.text_encoder(**tokens).pooler_output
        dtype, used = pipe.text_encoder.dtype, len(boxes)
        slots = torch.zeros(GLIGEN_SLOTS, 4, device=device, dtype=dtype)
        slots[:used] = torch.tensor(boxes)
        width_of = pipe.unet.config.cross_attention_dim
        embeddings = torch.zeros(GLIGEN_SLOTS, width_of, device=device, dtype=dtype)
        embeddings[:used] = pooled
        masks = torch.zeros(GLIGEN_SLOTS, device=device, dtype=dtype)
        masks[:used] = 1
        return _Condition(
            width=width, height=height, beta=beta, prompt=prompt, negative=negative, phrases=phrases,
            seeds=dict(seeds), positive=positive, unconditional=unconditional,
            boxes=slots.expand(count, -1, -1), embeddings=embeddings.expand(count, -1, -1),
            masks=masks.expand(count, -1),
        )

    def _denoise(self, group: Sequence[_Condition]) -> tuple[list[Any], list[Any], list[bool]]:
        """One denoising loop over every candidate of ``group`` (same size and ``beta``), the
        steps of ``StableDiffusionGLIGENPipeline.__call__`` with a batch of layouts instead of
        one; ``tests/test_render.py`` checks it against the pipeline, pixel for pixel. Returns
        the PIL images, the same images as uint8 ``(3, H, W)`` tensors left on the device (for
        the scorers), and the safety checker's flags."""
        import torch

        pipe, settings = self.pipeline, self.settings
        first = group[0]
        guided = settings.guidance > 1.0
        device = pipe._execution_device
        generators = [torch.Generator(device="cpu").manual_seed(seed)
                      for condition in group for seed in condition.seeds.values()]
        with torch.no_grad():
            prompts = torch.cat([c.positive for c in group])
            boxes = torch.cat([c.boxes for c in group])
            embeddings = torch.cat([c.embeddings for c in group])
            masks = torch.cat([c.masks for c in group])
            if guided:  # the unconditional half first; its boxes are masked out
                prompts = torch.cat([torch.cat([c.unconditional for c in group]), prompts])
                boxes, embeddings = torch.cat([boxes, boxes]), torch.cat([embeddings, embeddings])
                masks = torch.cat([torch.zeros_like(masks), masks])
            grounding = {"gligen": {"boxes": boxes, "positive_embeddings": embeddings, "masks": masks}}
            pipe.scheduler.set_timesteps(settings.steps, device=device)
            timesteps = pipe.scheduler.timesteps
            latents = pipe.prepare_latents(len(generators), pipe.unet.config.in_channels, first.height,
                                           first.width, prompts.dtype, device, generators)
            grounded_steps = int(first.beta * len(timesteps))
            extra = pipe.prepare_extra_step_kwargs(generators, 0.0)
            pipe.enable_fuser(True)
            for step, t in enumerate(timesteps):
                if step == grounded_steps:
                    pipe.enable_fuser(False)
                model_input = torch.cat([latents, latents]) if guided else latents
                model_input = pipe.scheduler.scale_model_input(model_input, t)
                noise = pipe.unet(model_input, t, encoder_hidden_states=prompts,
                                  cross_attention_kwargs=grounding).sample
                if guided:
                    unconditional, conditional = noise.chunk(2)
                    noise = unconditional + settings.guidance * (conditional - unconditional)
                latents = pipe.scheduler.step(noise, t, latents, **extra).prev_sample
            decoded = pipe.vae.decode(latents / pipe.vae.config.scaling_factor, return_dict=False)[0]
            decoded, flagged = pipe.run_safety_checker(decoded, device, prompts.dtype)
        # diffusers gives None when no checker ran, else one bool per image.
        flags = [bool(f) for f in flagged] if flagged is not None else [False] * len(generators)
        with torch.no_grad():
            decoded = pipe.image_processor.postprocess(decoded, output_type="pt",
                                                       do_denormalize=[not f for f in flags])
            # diffusers' numpy_to_pil arithmetic (float32 x 255, rounded half to even), done on
            # the device: the same bits, and the host only copies bytes.
            levels = (decoded.float() * 255).round().to(torch.uint8)
        from PIL import Image

        # channels last on the device (a kernel there), so the host copies rows as they are
        images = [Image.fromarray(array) for array in levels.permute(0, 2, 3, 1).contiguous().cpu().numpy()]
        return images, list(levels.unbind(0)), flags


@dataclass
class _Condition:
    """One plan's conditioning for ``GligenRenderer._denoise`` (tensors batched per candidate)."""

    width: int
    height: int
    beta: float
    prompt: str
    negative: str
    phrases: list[str]
    seeds: dict[int, int]
    positive: Any
    unconditional: Any
    boxes: Any
    embeddings: Any
    masks: Any

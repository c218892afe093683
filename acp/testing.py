"""Tiny, randomly initialised, seeded models for tests, examples and install checks.

Each builder returns a real diffusers / transformers object with the architecture of the model
acp uses (a gated-attention GLIGEN UNet, CLIP, SAM) but tiny widths (the UNet's 1.6 M parameters
are mostly GLIGEN's fixed 512-wide box projection), so it runs offline on a CPU in well under a
second. The tokenizer is a byte-level BPE built in memory (the 256 byte symbols, each also as a
word end, no merges): no file, no hub. The outputs are noise; only shapes, dtypes, loading paths
and determinism are meaningful.

``tiny_gligen_pipeline(safety_checker=True)`` adds a tiny ``StableDiffusionSafetyChecker`` (a
CLIP vision tower on 32 px inputs) and its feature extractor; it flags nothing until its concept
thresholds are lowered (``flag_everything``).

``tiny_owlv2`` and ``tiny_grounding_dino`` are the verifier's two detector families
(``acp.score.detector``), Grounding DINO's BERT tokenizer a WordPiece over single letters.

``save_tiny_models(directory)`` writes all of them with ``save_pretrained`` so callers exercise
the same ``from_pretrained(folder)`` path as with a real checkpoint. From a shell:
``python -m acp.testing DIRECTORY``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

if TYPE_CHECKING:
    from diffusers.pipelines.deprecated.stable_diffusion_gligen.pipeline_stable_diffusion_gligen import (
        StableDiffusionGLIGENPipeline,
    )
    from transformers import (
        CLIPModel,
        CLIPProcessor,
        CLIPTokenizer,
        GroundingDinoForObjectDetection,
        GroundingDinoProcessor,
        Owlv2ForObjectDetection,
        Owlv2Processor,
        SamModel,
        SamProcessor,
    )

TOKEN_LIMIT = 77  # CLIP's context length; the GLIGEN pipeline truncates prompts to it
IMAGE_SIZE = 64  # default output side of the tiny GLIGEN pipeline (latent 8x8, VAE factor 8)
CLIP_IMAGE_SIZE = 32
SAM_IMAGE_SIZE = 64
DETECTOR_IMAGE_SIZE = 64  # the detectors' input side (OWLv2: 4x4 patches of 16 px)
OWL_TEXT_LENGTH = 16  # OWLv2's text context, as the released models have it
DINO_TEXT_LENGTH = 64  # Grounding DINO's max_text_len (256 in the released models)
_HIDDEN = 32  # text width = UNet cross-attention width = GLIGEN phrase-embedding width


def _byte_symbols() -> list[str]:
    """GPT-2 / CLIP's printable stand-in for each of the 256 bytes, in byte order."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    symbols: dict[int, str] = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in symbols:
            symbols[b] = chr(256 + extra)
            extra += 1
    return [symbols[b] for b in range(256)]


def tiny_tokenizer() -> CLIPTokenizer:
    """A CLIPTokenizer over bytes: every character is a token, so phrases hit the limit fast."""
    from transformers import CLIPTokenizer

    symbols = _byte_symbols()
    tokens = symbols + [s + "</w>" for s in symbols] + ["<|startoftext|>", "<|endoftext|>"]
    vocab = {token: i for i, token in enumerate(tokens)}
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=TOKEN_LIMIT)


def _text_config_kwargs(tokenizer: CLIPTokenizer) -> dict[str, Any]:
    return {
        "vocab_size": len(tokenizer),
        "hidden_size": _HIDDEN,
        "intermediate_size": 37,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "max_position_embeddings": TOKEN_LIMIT,
        "layer_norm_eps": 1e-5,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }


def _tiny_vision_config() -> Any:
    from transformers import CLIPVisionConfig

    return CLIPVisionConfig(
        hidden_size=_HIDDEN,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=CLIP_IMAGE_SIZE,
        patch_size=8,
        layer_norm_eps=1e-5,
    )


def _tiny_clip_image_processor() -> Any:
    # The PIL backend needs no torchvision; it is what CLIPImageProcessor falls back to anyway.
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    return CLIPImageProcessorPil(
        size={"shortest_edge": CLIP_IMAGE_SIZE},
        crop_size={"height": CLIP_IMAGE_SIZE, "width": CLIP_IMAGE_SIZE},
    )


def tiny_safety_checker(seed: int = 0) -> tuple[Any, Any]:
    """Stable Diffusion's safety checker on a tiny CLIP vision tower, and its feature extractor.
    Its 17 + 3 concept embeddings and thresholds are diffusers' initial ones (all ones): no cosine
    exceeds a threshold of 1, so it flags nothing."""
    import torch
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
    from transformers import CLIPConfig

    tokenizer = tiny_tokenizer()
    config = CLIPConfig(
        text_config=_text_config_kwargs(tokenizer),
        vision_config=_tiny_vision_config().to_dict(),
        projection_dim=_HIDDEN,
    )
    torch.manual_seed(seed)
    return StableDiffusionSafetyChecker(config).eval(), _tiny_clip_image_processor()


def flag_everything(safety_checker: Any) -> None:
    """Lower every concept threshold below any cosine, so the checker flags every image."""
    import torch

    with torch.no_grad():
        safety_checker.concept_embeds_weights.fill_(-2.0)


def tiny_gligen_pipeline(seed: int = 0, *, safety_checker: bool = False) -> StableDiffusionGLIGENPipeline:
    """A GLIGEN text-box pipeline (gated UNet, VAE with factor 8, CLIP text encoder), 64 px,
    with a tiny safety checker when asked for."""
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from diffusers import StableDiffusionGLIGENPipeline as Pipeline
    from transformers import CLIPTextConfig, CLIPTextModel

    tokenizer = tiny_tokenizer()
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=IMAGE_SIZE // 8,
        block_out_channels=(32, 64),
        layers_per_block=1,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=_HIDDEN,
        attention_head_dim=8,
        attention_type="gated",
    )
    torch.manual_seed(seed + 1)
    # Four levels give Stable Diffusion's factor 8 between pixels and latents.
    vae = AutoencoderKL(
        block_out_channels=(8, 8, 16, 16),
        norm_num_groups=8,
        layers_per_block=1,
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=4,
        sample_size=IMAGE_SIZE,
    )
    torch.manual_seed(seed + 2)
    text_encoder = CLIPTextModel(CLIPTextConfig(**_text_config_kwargs(tokenizer)))
    scheduler = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
    )
    checker, feature_extractor = tiny_safety_checker(seed + 3) if safety_checker else (None, None)
    pipeline = Pipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=checker,
        feature_extractor=feature_extractor,
        requires_safety_checker=safety_checker,
    )
    # mypy sees diffusers' import-time dummy class; the real one is the deprecated module's.
    return cast("StableDiffusionGLIGENPipeline", pipeline)


def tiny_clip(seed: int = 0) -> tuple[CLIPModel, CLIPProcessor]:
    """A CLIPModel (text and 32 px vision towers, projection 32) and its processor."""
    import torch
    from transformers import CLIPConfig, CLIPModel, CLIPProcessor

    tokenizer = tiny_tokenizer()
    text_config = _text_config_kwargs(tokenizer)
    config = CLIPConfig(
        text_config=text_config, vision_config=_tiny_vision_config().to_dict(), projection_dim=_HIDDEN
    )
    torch.manual_seed(seed)
    model = CLIPModel(config).eval()
    return model, CLIPProcessor(image_processor=_tiny_clip_image_processor(), tokenizer=tokenizer)


def tiny_sam(seed: int = 0) -> tuple[SamModel, SamProcessor]:
    """A SamModel on 64 px inputs (8x8 embedding grid) that turns box prompts into masks."""
    import torch
    from transformers import (
        SamConfig,
        SamMaskDecoderConfig,
        SamModel,
        SamProcessor,
        SamPromptEncoderConfig,
        SamVisionConfig,
    )
    from transformers.models.sam.image_processing_pil_sam import SamImageProcessorPil

    width, patch = 32, 8
    vision = SamVisionConfig(
        hidden_size=width,
        output_channels=width,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=SAM_IMAGE_SIZE,
        patch_size=patch,
        window_size=4,
        global_attn_indexes=(1,),
        num_pos_feats=width // 2,  # the shared positional embedding is 2 * num_pos_feats wide
        mlp_dim=64,
    )
    prompt = SamPromptEncoderConfig(
        hidden_size=width, image_size=SAM_IMAGE_SIZE, patch_size=patch, mask_input_channels=4
    )
    decoder = SamMaskDecoderConfig(
        hidden_size=width, mlp_dim=64, num_hidden_layers=2, num_attention_heads=2, iou_head_hidden_dim=32
    )
    torch.manual_seed(seed)
    model = SamModel(
        SamConfig(
            vision_config=vision.to_dict(),
            prompt_encoder_config=prompt.to_dict(),
            mask_decoder_config=decoder.to_dict(),
        )
    ).eval()
    mask_side = SAM_IMAGE_SIZE // 4
    image_processor = SamImageProcessorPil(
        size={"longest_edge": SAM_IMAGE_SIZE},
        pad_size={"height": SAM_IMAGE_SIZE, "width": SAM_IMAGE_SIZE},
        mask_size={"longest_edge": mask_side},
        mask_pad_size={"height": mask_side, "width": mask_side},
    )
    return model, SamProcessor(image_processor=image_processor)


def tiny_owlv2(seed: int = 0) -> tuple[Owlv2ForObjectDetection, Owlv2Processor]:
    """An OWLv2 detector (the byte-level CLIP text tower, a 64 px ViT with 16 px patches: 16
    boxes per image) and its processor."""
    import torch
    from transformers import Owlv2Config, Owlv2ForObjectDetection, Owlv2Processor
    from transformers.models.owlv2.image_processing_pil_owlv2 import Owlv2ImageProcessorPil

    tokenizer = tiny_tokenizer()
    tokenizer.model_max_length = OWL_TEXT_LENGTH
    text = _text_config_kwargs(tokenizer) | {"max_position_embeddings": OWL_TEXT_LENGTH}
    vision = _tiny_vision_config().to_dict() | {"image_size": DETECTOR_IMAGE_SIZE, "patch_size": 16}
    torch.manual_seed(seed)
    config = Owlv2Config(text_config=text, vision_config=vision, projection_dim=_HIDDEN)
    model = Owlv2ForObjectDetection(config)
    side = {"height": DETECTOR_IMAGE_SIZE, "width": DETECTOR_IMAGE_SIZE}
    processor = Owlv2Processor(image_processor=Owlv2ImageProcessorPil(size=side), tokenizer=tokenizer)
    return model.eval(), processor


def tiny_bert_tokenizer() -> Any:
    """A BERT WordPiece tokenizer over lowercase letters, digits and punctuation (each word is
    spelled out letter by letter), built in memory."""
    import string

    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import BertTokenizerFast

    symbols = string.ascii_lowercase + string.digits
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *string.punctuation, *symbols,
              *(f"##{c}" for c in symbols)]
    vocab = {token: k for k, token in enumerate(dict.fromkeys(tokens))}
    backend = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]", max_input_chars_per_word=100))
    backend.normalizer = normalizers.BertNormalizer(lowercase=True)
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])])
    return BertTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", sep_token="[SEP]",
                             pad_token="[PAD]", cls_token="[CLS]", mask_token="[MASK]",
                             model_max_length=DINO_TEXT_LENGTH)


def tiny_grounding_dino(seed: int = 0) -> tuple[GroundingDinoForObjectDetection, GroundingDinoProcessor]:
    """A Grounding DINO detector (a 4-stage Swin of width 8, a one-layer BERT, 20 queries, 64
    text tokens) and its processor (shortest side 64)."""
    import torch
    from transformers import (
        BertConfig,
        GroundingDinoConfig,
        GroundingDinoForObjectDetection,
        GroundingDinoProcessor,
        SwinConfig,
    )
    from transformers.models.grounding_dino.image_processing_pil_grounding_dino import (
        GroundingDinoImageProcessorPil,
    )

    tokenizer = tiny_bert_tokenizer()
    backbone = SwinConfig(image_size=DETECTOR_IMAGE_SIZE, patch_size=4, embed_dim=8, depths=[1, 1, 1, 1],
                          num_heads=[1, 1, 2, 2], window_size=2, out_indices=[2, 3, 4])
    text = BertConfig(vocab_size=len(tokenizer), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                      intermediate_size=32, max_position_embeddings=DINO_TEXT_LENGTH)
    config = GroundingDinoConfig(
        backbone_config=backbone, text_config=text, num_queries=20, encoder_layers=1, decoder_layers=2,
        encoder_ffn_dim=32, decoder_ffn_dim=32, d_model=64, encoder_attention_heads=2,
        decoder_attention_heads=2, max_text_len=DINO_TEXT_LENGTH, encoder_n_points=2, decoder_n_points=2)
    torch.manual_seed(seed)
    model = GroundingDinoForObjectDetection(config)
    processor = GroundingDinoProcessor(
        image_processor=GroundingDinoImageProcessorPil(
            size={"shortest_edge": DETECTOR_IMAGE_SIZE, "longest_edge": 2 * DETECTOR_IMAGE_SIZE}),
        tokenizer=tokenizer)
    return model.eval(), processor


def save_tiny_models(directory: Path | str, seed: int = 0) -> dict[str, Path]:
    """Write the tiny GLIGEN pipeline, CLIP, SAM and the detectors (OWLv2, Grounding DINO) under
    ``directory``; return their folders."""
    root = Path(directory)
    folders = {name: root / name for name in ("gligen", "clip", "sam", "owlv2", "grounding-dino")}
    tiny_gligen_pipeline(seed).save_pretrained(folders["gligen"])
    built = (("clip", tiny_clip(seed)), ("sam", tiny_sam(seed)), ("owlv2", tiny_owlv2(seed)),
             ("grounding-dino", tiny_grounding_dino(seed)))
    for name, (model, processor) in built:
        model.save_pretrained(folders[name])
        processor.save_pretrained(folders[name])
    return folders


class SlowRenderer:
    """A real ``GligenRenderer`` whose every ``render`` call takes at least ``delay`` seconds,
    for tests that must act while a run is in flight (kill a worker, kill the driver). Built
    where it runs, so a Ray worker gets it as ``functools.partial(SlowRenderer, ...)``."""

    def __init__(self, settings: Any, device: str = "cpu", delay: float = 0.3):
        from acp.render.gligen import GligenRenderer

        self.inner = GligenRenderer(settings, device=device)
        self.device, self.delay = self.inner.device, delay

    def render(self, plans: Any, candidates: int) -> Any:
        import time

        started = time.perf_counter()
        out = self.inner.render(plans, candidates)
        time.sleep(max(0.0, self.delay - (time.perf_counter() - started)))
        return out


class CrashingRenderer(SlowRenderer):
    """A ``SlowRenderer`` whose process dies (``os._exit``) whenever it is asked to render
    ``plan_id``, ``delay`` seconds in: a plan that kills every Ray worker it is sent to. (The
    delay lets the worker's reply for its previous call reach the driver first: a process that
    dies the instant that call returns can take the reply with it, and the driver then rightly
    charges the death to that call, which a test counting deaths would not expect.)"""

    def __init__(self, settings: Any, device: str = "cpu", delay: float = 0.3, plan_id: str = ""):
        super().__init__(settings, device, delay)
        self.plan_id = plan_id

    def render(self, plans: Any, candidates: int) -> Any:
        import os
        import time

        if any(plan.id == self.plan_id for plan in plans):
            time.sleep(self.delay)
            os._exit(1)
        return super().render(plans, candidates)


def main(argv: list[str] | None = None) -> None:
    """``python -m acp.testing DIRECTORY``: write the tiny models, print ``name<TAB>folder``."""
    import argparse
    import os
    import warnings

    parser = argparse.ArgumentParser(
        prog="python -m acp.testing",
        description="Write tiny random GLIGEN, CLIP, SAM and detector (OWLv2, Grounding DINO) models "
        "(save_pretrained folders) for "
        "tests and examples; print each one's folder.",
    )
    parser.add_argument(
        "directory", type=Path, metavar="DIRECTORY",
        help="folder to write gligen/, clip/, sam/, owlv2/ and grounding-dino/ into"
    )
    args = parser.parse_args(argv)
    if str(args.directory).startswith("-"):  # `-- -x`: surely a mistyped option, not a folder
        parser.error(f"DIRECTORY cannot start with '-', got {str(args.directory)!r}")
    # Quiet the libraries' save bars and advisories: this prints the folders, nothing else.
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    warnings.filterwarnings("ignore")
    for name, folder in save_tiny_models(args.directory).items():
        print(f"{name}\t{folder}")


if __name__ == "__main__":
    main()

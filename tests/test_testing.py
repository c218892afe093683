"""The tiny models of ``acp.testing``: they run, load back through ``from_pretrained`` and are
seeded."""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from acp import testing

PHRASES = ["a brown dog", "a red frisbee"]
BOXES = [[0.1, 0.2, 0.5, 0.9], [0.55, 0.1, 0.8, 0.35]]


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return testing.save_tiny_models(tmp_path_factory.mktemp("tiny"))


def _render(pipeline, seed: int = 0, k: int = 2) -> np.ndarray:
    return pipeline(
        prompt="a dog catching a frisbee in a park",
        gligen_phrases=PHRASES,
        gligen_boxes=BOXES,
        gligen_scheduled_sampling_beta=0.5,
        num_inference_steps=2,
        height=testing.IMAGE_SIZE,
        width=testing.IMAGE_SIZE,
        num_images_per_prompt=k,
        generator=[torch.Generator().manual_seed(seed + i) for i in range(k)],
        output_type="np",
    ).images


def _photo(width: int = 70, height: int = 50) -> Image.Image:
    pixels = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def test_tokenizer_is_byte_level_and_offline() -> None:
    tokenizer = testing.tiny_tokenizer()
    ids = tokenizer("A Dog!").input_ids
    assert ids[0] == tokenizer.bos_token_id and ids[-1] == tokenizer.eos_token_id
    assert tokenizer.convert_ids_to_tokens(ids[1:-1]) == ["a</w>", "d", "o", "g</w>", "!</w>"]
    # No merges: one token per character, so a long phrase overflows CLIP's 77-token window.
    assert len(tokenizer("x" * 100).input_ids) == 102
    assert tokenizer.model_max_length == testing.TOKEN_LIMIT


def test_gligen_pipeline_renders_batch_with_gated_unet() -> None:
    pipeline = testing.tiny_gligen_pipeline()
    assert pipeline.unet.config.attention_type == "gated"
    assert pipeline.vae_scale_factor == 8
    images = _render(pipeline, k=3)
    assert images.shape == (3, testing.IMAGE_SIZE, testing.IMAGE_SIZE, 3)
    assert np.isfinite(images).all()
    assert not np.array_equal(images[0], images[1])  # one generator per image


def test_gligen_pipeline_is_seeded() -> None:
    first, again, other = (testing.tiny_gligen_pipeline(seed) for seed in (0, 0, 1))
    assert np.array_equal(_render(first), _render(again))
    assert not np.array_equal(_render(first), _render(other))


def test_gligen_pipeline_round_trip(saved: dict[str, Path]) -> None:
    from diffusers import StableDiffusionGLIGENPipeline

    built = testing.tiny_gligen_pipeline()
    loaded = StableDiffusionGLIGENPipeline.from_pretrained(saved["gligen"])
    assert loaded.tokenizer.model_max_length == testing.TOKEN_LIMIT
    for name in ("unet", "vae", "text_encoder"):
        _same_weights(getattr(built, name), getattr(loaded, name))
    np.testing.assert_allclose(_render(loaded), _render(built), atol=1e-5)


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    """Bit-identical tensors. Outputs are compared with a tolerance: SIMD kernels may round
    differently on the memory-mapped (differently aligned) tensors that ``from_pretrained`` gives."""
    ours, theirs = a.state_dict(), b.state_dict()
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)


def _clip_logits(model, processor) -> torch.Tensor:
    inputs = processor(
        text=["a dog", "a red frisbee"], images=[_photo()], return_tensors="pt", padding=True
    )
    with torch.no_grad():
        return model(**inputs).logits_per_image


def test_clip_round_trip_and_seed(saved: dict[str, Path]) -> None:
    from transformers import CLIPModel, CLIPProcessor

    logits = _clip_logits(*testing.tiny_clip())
    assert logits.shape == (1, 2) and torch.isfinite(logits).all()
    loaded = CLIPModel.from_pretrained(saved["clip"]), CLIPProcessor.from_pretrained(saved["clip"])
    assert loaded[1].image_processor.crop_size["height"] == testing.CLIP_IMAGE_SIZE
    _same_weights(testing.tiny_clip()[0], loaded[0])
    torch.testing.assert_close(_clip_logits(*loaded), logits)
    assert not torch.allclose(_clip_logits(*testing.tiny_clip(seed=1)), logits)


def test_safety_checker_flags_nothing_until_told_to(tmp_path: Path) -> None:
    checker, extractor = testing.tiny_safety_checker()
    images = np.stack([np.asarray(_photo(64, 64), dtype=np.float32) / 255] * 2)
    clip_input = extractor([_photo(64, 64)] * 2, return_tensors="pt").pixel_values
    _, flags = checker(clip_input=clip_input, images=images.copy())
    assert flags == [False, False]
    testing.flag_everything(checker)
    blacked, flags = checker(clip_input=clip_input, images=images.copy())
    assert flags == [True, True] and not np.asarray(blacked).any()
    pipeline = testing.tiny_gligen_pipeline(safety_checker=True)  # saved and loaded back whole
    pipeline.save_pretrained(tmp_path)
    loaded = type(pipeline).from_pretrained(tmp_path)
    assert type(loaded.safety_checker).__name__ == "StableDiffusionSafetyChecker"
    assert loaded.feature_extractor.crop_size["height"] == testing.CLIP_IMAGE_SIZE


def _sam_masks(model, processor) -> torch.Tensor:
    image = _photo()
    inputs = processor(images=image, input_boxes=[[[5.0, 5.0, 40.0, 45.0]]], return_tensors="pt")
    with torch.no_grad():
        outputs = model(**inputs, multimask_output=False)
    masks = processor.image_processor.post_process_masks(
        outputs.pred_masks, inputs["original_sizes"], inputs["reshaped_input_sizes"]
    )
    return masks[0]


def test_sam_masks_from_box_round_trip(saved: dict[str, Path]) -> None:
    from transformers import SamModel, SamProcessor

    model, processor = testing.tiny_sam()
    masks = _sam_masks(model, processor)
    assert masks.shape == (1, 1, 50, 70) and masks.dtype == torch.bool
    assert 0 < masks.sum() < masks.numel()  # a real mask, neither empty nor full
    loaded = SamModel.from_pretrained(saved["sam"]), SamProcessor.from_pretrained(saved["sam"])
    _same_weights(model, loaded[0])
    # Thresholded masks may flip a pixel whose logit sits at 0 within rounding.
    assert (_sam_masks(*loaded) != masks).float().mean() < 0.01


def test_module_entry_point_prints_folders(tmp_path: Path, monkeypatch, capsys) -> None:
    # main() quiets the libraries through the environment: for this test only, not for the
    # tests (and their processes) that run after it in this interpreter.
    for name in ("TRANSFORMERS_VERBOSITY", "DIFFUSERS_VERBOSITY", "HF_HUB_DISABLE_PROGRESS_BARS"):
        monkeypatch.setenv(name, "")  # undone last: what was there before, or nothing
        monkeypatch.delenv(name)
    monkeypatch.setattr(sys, "argv", ["acp.testing", str(tmp_path)])
    monkeypatch.delitem(sys.modules, "acp.testing")  # run it fresh, as ``python -m`` does
    runpy.run_module("acp.testing", run_name="__main__")
    printed = dict(line.split("\t") for line in capsys.readouterr().out.splitlines())
    assert set(printed) == {"gligen", "clip", "sam", "owlv2", "grounding-dino"}
    assert (Path(printed["gligen"]) / "model_index.json").is_file()
    for name in ("sam", "owlv2", "grounding-dino"):
        assert (Path(printed[name]) / "config.json").is_file()


@pytest.mark.parametrize(
    ("argv", "code", "said"),
    [(["--help"], 0, "usage: python -m acp.testing"), (["-h"], 0, "usage:"), (["-x"], 2, "usage:"),
     (["--", "-x"], 2, "cannot start with '-'"), ([], 2, "required"), (["a", "b"], 2, "unrecognized")],
)
def test_module_entry_point_arguments(argv, code, said, tmp_path: Path, monkeypatch, capsys) -> None:
    """``--help`` is help, not the name of a folder to fill with models."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["acp.testing", *argv])
    monkeypatch.delitem(sys.modules, "acp.testing")
    with pytest.raises(SystemExit) as exit_:
        runpy.run_module("acp.testing", run_name="__main__")
    assert exit_.value.code == code
    captured = capsys.readouterr()
    assert said in captured.out + captured.err
    assert list(tmp_path.iterdir()) == []

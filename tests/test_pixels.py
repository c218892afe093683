"""Preprocessing on the device (acp.score.pixels) against transformers' processors, on odd image
sizes: CLIP's within a pixel level on smooth images and CLIS-I within ``CLIS_TOLERANCE`` with
boxes at the edges; OWLv2's equal; Grounding DINO's within a pixel level, with the same mask."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from acp.score.pixels import CLIS_TOLERANCE, ClipPixels, DinoPixels, OwlPixels, to_device

# Odd sizes (height, width): wide and tall, smaller and larger than every model's input, one row.
LEVEL = 1.001  # a pixel level, and float rounding
SIZES = [(48, 80), (97, 33), (300, 41), (7, 13), (1, 50), (513, 257), (40, 24), (64, 64)]


def smooth(rng: np.random.Generator, height: int, width: int) -> Image.Image:
    """A photo-like image: colours that change over several pixels."""
    small = rng.integers(0, 256, (max(height // 8, 2), max(width // 8, 2), 3), dtype=np.uint8)
    return Image.fromarray(small).resize((width, height), Image.BILINEAR)


def noise(rng: np.random.Generator, height: int, width: int) -> Image.Image:
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def levels(ours: torch.Tensor, theirs: torch.Tensor, processor: Any) -> torch.Tensor:
    """Differences of two normalised batches in pixel levels (0-255)."""
    assert ours.shape == theirs.shape
    std = torch.tensor(processor.image_std).view(1, 3, 1, 1)
    return (ours - theirs).abs() * std * 255


def processors(tiny_models: dict[str, Path]) -> dict[str, Any]:
    from transformers import AutoProcessor

    return {name: AutoProcessor.from_pretrained(tiny_models[name]).image_processor
            for name in ("clip", "owlv2", "grounding-dino")}


@pytest.fixture(scope="module")
def image_processors(tiny_models: dict[str, Path]) -> dict[str, Any]:
    return processors(tiny_models)


@pytest.mark.parametrize(("height", "width"), SIZES)
def test_each_models_pixels_match_its_processor(image_processors: dict[str, Any], height: int,
                                                width: int) -> None:
    rng = np.random.default_rng(height * 1000 + width)
    clip, owl, dino = (image_processors[n] for n in ("clip", "owlv2", "grounding-dino"))
    for make in (smooth, noise):
        image = make(rng, height, width)
        pixels = to_device([image], "cpu")

        def theirs(processor: Any, image: Image.Image = image) -> Any:
            return processor(images=[image], return_tensors="pt")

        clip_levels = levels(ClipPixels.from_processor(clip).batch(pixels, torch.float32),
                             theirs(clip)["pixel_values"], clip)
        # PIL rounds between its two bicubic passes and clamps the overshoot on noise: a level
        # on photo-like images, less than half a level on average on noise.
        if make is smooth:
            assert clip_levels.max() <= LEVEL
        assert clip_levels.mean() <= 0.5
        # OWLv2's scipy resize (Gaussian, linear zoom, mirrored border): the same numbers.
        owl_levels = levels(OwlPixels.from_processor(owl).batch(pixels, torch.float32),
                            theirs(owl)["pixel_values"], owl)
        assert owl_levels.max() <= 0.01
        # Grounding DINO: PIL's bilinear, one rounding; the same padding mask.
        values, mask = DinoPixels.from_processor(dino).batch(pixels, torch.float32)
        expected = theirs(dino)
        assert levels(values, expected["pixel_values"], dino).max() <= LEVEL
        assert torch.equal(mask, expected["pixel_mask"])


def test_a_dino_batch_of_two_sizes_is_padded_with_its_mask(image_processors: dict[str, Any]) -> None:
    rng = np.random.default_rng(0)
    dino = image_processors["grounding-dino"]
    images = [smooth(rng, 48, 80), smooth(rng, 97, 33)]
    values, mask = DinoPixels.from_processor(dino).batch(to_device(images, "cpu"), torch.float32)
    expected = dino(images=images, return_tensors="pt")
    assert levels(values, expected["pixel_values"], dino).max() <= LEVEL
    assert torch.equal(mask, expected["pixel_mask"])


class ProcessorPixels:
    """CLIP's processor in place of ``ClipPixels``: what acp computed before (PIL on the CPU)."""

    def __init__(self, processor: Any):
        self.processor = processor

    def batch(self, images: list[torch.Tensor], dtype: torch.dtype) -> torch.Tensor:
        pil = [Image.fromarray(p.permute(1, 2, 0).round().byte().numpy()) for p in images]
        return self.processor(images=pil, return_tensors="pt")["pixel_values"].to(dtype)


def test_clis_i_is_within_the_stated_tolerance_of_the_processors(tiny_models: dict[str, Path]) -> None:
    from acp.score.image import ImageScorer, Scene, SceneObject

    scorer = ImageScorer.from_pretrained(str(tiny_models["clip"]), device="cpu")
    rng = np.random.default_rng(1)
    boxes = [(0.0, 0.0, 0.3, 0.4), (0.7, 0.6, 0.3, 0.4), (0.0, 0.9, 1.0, 0.1), (0.45, 0.0, 0.02, 1.0),
             (0.2, 0.2, 0.5, 0.5)]  # corners, a strip along an edge, a sliver, the middle
    names = ("dog", "cat")
    scene = Scene("a dog and a cat in a park", tuple(
        SceneObject(k, names[k % 2], f"a {names[k % 2]}", box) for k, box in enumerate(boxes)))
    items = [(scene, smooth(rng, h, w)) for h, w in [(64, 64), (97, 33), (48, 80), (300, 41)]]
    ours = scorer.score_scenes(items)
    scorer.pixels = ProcessorPixels(scorer.processor.image_processor)  # type: ignore[assignment]
    theirs = scorer.score_scenes(items)
    for a, b in zip(ours, theirs, strict=True):
        assert abs(a.clis_i - b.clis_i) <= CLIS_TOLERANCE
        for x, y in zip(a.objects, b.objects, strict=True):
            assert abs(x.clis_i - y.clis_i) <= CLIS_TOLERANCE


# -- one copy on the device: a renderer's tensor read as it is, by CLIP and the detector alike --


def as_tensor(image: Image.Image) -> torch.Tensor:
    """``image`` as a renderer leaves it on the device: ``(3, H, W)`` uint8."""
    return torch.from_numpy(np.array(image)).permute(2, 0, 1).contiguous()


def test_a_device_tensor_is_taken_as_it_is_and_anything_else_is_refused() -> None:
    from acp.score.pixels import image_size

    image = smooth(np.random.default_rng(3), 30, 50)
    tensor = as_tensor(image)
    (taken,) = to_device([tensor], "cpu")
    assert taken is tensor  # no copy when it is already there
    (copied,) = to_device([image], "cpu")
    assert copied.dtype == torch.uint8 and torch.equal(copied, tensor)
    assert image_size(image) == image_size(tensor) == (50, 30)
    for bad in (tensor.float(), tensor[0], tensor[:2], tensor.permute(1, 2, 0)):
        with pytest.raises(ValueError, match=r"\(3, H, W\) uint8"):
            to_device([bad], "cpu")


def test_scores_and_detections_of_a_device_tensor_equal_those_of_its_image(tiny_models: dict[str, Path]
                                                                            ) -> None:
    from acp.score.detector import ZeroShotDetector
    from acp.score.image import ImageScorer, Scene, SceneObject

    rng = np.random.default_rng(4)
    images = [smooth(rng, h, w) for h, w in [(64, 64), (97, 33), (48, 80)]]
    scene = Scene("a dog and a cat", (SceneObject(0, "dog", "a dog", (0.1, 0.1, 0.5, 0.6)),
                                      SceneObject(1, "cat", "a cat", (0.5, 0.4, 0.45, 0.5))))
    scorer = ImageScorer.from_pretrained(str(tiny_models["clip"]), device="cpu")
    from_images = scorer.score_scenes([(scene, image) for image in images])
    from_tensors = scorer.score_scenes([(scene, as_tensor(image)) for image in images])
    assert from_images == from_tensors
    for family in ("owlv2", "grounding-dino"):
        detector = ZeroShotDetector.from_pretrained(str(tiny_models[family]), device="cpu")
        queries = [["dog", "cat"]] * len(images)
        assert (detector.detect(images, queries, 0.0)
                == detector.detect([as_tensor(image) for image in images], queries, 0.0))

"""Every model acp loads runs in the dtype it uses on CUDA, here on the CPU with the tiny models
(torch runs float16 and bfloat16 there): a dtype mismatch between a stage and the next fails
here before it fails on a GPU. Each stage's output is checked to be what the next one expects,
and close to float32's within the tolerances below (measured with these tiny random models:
float16 differs by at most 3 pixel levels, 0.13 CLIS points, 5e-4 in a cosine and 0.97 mask
IoU; bfloat16, with 8 bits of mantissa to float16's 11, by 18 levels, 0.78 points, 5e-3 and
0.79: the bounds leave about 3 times that)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from acp.boxes import plan_to_sam
from acp.cli import app
from acp.device import resolve_dtype
from acp.errors import InputError
from acp.render.gligen import GligenRenderer, RenderSettings
from acp.schema import ScenePlan
from acp.score.image import ImageScorer
from acp.segment import MaskSegmenter, decode_mask

PLAN = ScenePlan.model_validate({
    "id": "p", "concepts": ["dog", "frisbee"], "caption": "a dog and a frisbee", "background": "a park",
    "planner": "test",
    "objects": [
        {"id": 0, "category": "dog", "description": "a brown dog", "bbox": [0.1, 0.1, 0.5, 0.5]},
        {"id": 1, "category": "frisbee", "description": "a red frisbee", "bbox": [0.55, 0.5, 0.3, 0.2]},
    ],
})


@dataclass(frozen=True)
class Tolerance:
    mean_pixels: float  # mean absolute difference of an image's pixel levels (0-255)
    max_pixels: float
    clis: float  # CLIS points (0-100)
    cosine: float
    mask_iou: float  # least IoU of a mask with float32's


TOLERANCES = {
    "float16": Tolerance(mean_pixels=1.0, max_pixels=10, clis=0.5, cosine=2e-3, mask_iou=0.9),
    "bfloat16": Tolerance(mean_pixels=5.0, max_pixels=50, clis=2.5, cosine=1.5e-2, mask_iou=0.6),
}


@dataclass
class Run:
    images: list[Any]
    decoded: list[torch.Tensor]  # what the VAE gave, before PIL
    scores: list[Any]
    masks: list[Any]
    models: dict[str, torch.dtype]


def run_models(tiny_models: dict[str, Path], dtype: str) -> Run:
    """Render two candidates with guidance, score them with CLIP, segment their boxes with SAM:
    every model in ``dtype``."""
    renderer = GligenRenderer(RenderSettings(model=str(tiny_models["gligen"]), steps=2, size=(64, 64),
                                             guidance=7.5), device="cpu", dtype=dtype)
    decoded: list[torch.Tensor] = []
    postprocess = renderer.pipeline.image_processor.postprocess

    def spy(images: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        decoded.append(images.detach().clone())
        return postprocess(images, *args, **kwargs)

    renderer.pipeline.image_processor.postprocess = spy
    images = [rendered.image for rendered in renderer.render([PLAN], candidates=2)[0]]
    scorer = ImageScorer.from_pretrained(tiny_models["clip"], device="cpu", dtype=dtype)
    segmenter = MaskSegmenter(tiny_models["sam"], device="cpu", dtype=dtype)
    boxes = plan_to_sam([o.bbox for o in PLAN.objects], 64, 64)
    pipe = renderer.pipeline
    return Run(
        images=images, decoded=decoded, scores=scorer.score(PLAN, images),
        masks=[segmenter.segment(image, boxes) for image in images],
        models={"unet": pipe.unet.dtype, "vae": pipe.vae.dtype, "text encoder": pipe.text_encoder.dtype,
                "clip": scorer.model.dtype, "sam": segmenter.model.dtype},
    )


@pytest.fixture(scope="module")
def float32_run(tiny_models: dict[str, Path]) -> Run:
    return run_models(tiny_models, "float32")


@pytest.mark.parametrize("dtype", sorted(TOLERANCES))
def test_gligen_clip_and_sam_run_in_half_precision(dtype: str, tiny_models: dict[str, Path],
                                                   float32_run: Run) -> None:
    half, tolerance = getattr(torch, dtype), TOLERANCES[dtype]
    run = run_models(tiny_models, dtype)
    assert run.models == dict.fromkeys(run.models, half)

    # GLIGEN: the VAE decodes in the model's dtype, finite; the images are 8-bit RGB, as PNGs take.
    assert [tensor.dtype for tensor in run.decoded] == [half] and torch.isfinite(run.decoded[0]).all()
    for image, reference in zip(run.images, float32_run.images, strict=True):
        assert (image.mode, image.size) == ("RGB", (64, 64))
        pixels, expected = np.asarray(image), np.asarray(reference)
        assert pixels.dtype == np.uint8
        difference = np.abs(pixels.astype(np.int16) - expected.astype(np.int16))
        assert difference.mean() <= tolerance.mean_pixels and difference.max() <= tolerance.max_pixels

    # CLIP: plain Python floats, as scores.jsonl and the thresholds take them.
    for score, reference in zip(run.scores, float32_run.scores, strict=True):
        numbers = [score.clis_i, score.global_score, score.global_cosine]
        numbers += [value for o in score.objects for value in (o.clis_i, o.cosine, o.category_confidence)]
        assert all(type(value) is float and math.isfinite(value) for value in numbers)
        assert abs(score.clis_i - reference.clis_i) <= tolerance.clis
        assert abs(score.global_cosine - reference.global_cosine) <= tolerance.cosine
        for got, want in zip(score.objects, reference.objects, strict=True):
            assert abs(got.cosine - want.cosine) <= tolerance.cosine
            assert abs(got.clis_i - want.clis_i) <= tolerance.clis

    # SAM: boolean masks as RLE, int areas, float scores; the same masks as float32's, nearly.
    for masks, references in zip(run.masks, float32_run.masks, strict=True):
        for mask, reference in zip(masks, references, strict=True):
            pixels, expected = decode_mask(mask.rle), decode_mask(reference.rle)
            assert pixels.dtype == np.bool_ and pixels.shape == (64, 64)
            assert type(mask.area) is int and mask.area == int(pixels.sum())
            assert type(mask.score) is float and math.isfinite(mask.score)
            iou = (pixels & expected).sum() / max(int((pixels | expected).sum()), 1)
            assert iou >= tolerance.mask_iou
            json.dumps(mask.rle)  # written into annotations.json as it is


def test_sam_takes_pixels_in_its_own_dtype(tiny_models: dict[str, Path]) -> None:
    """The regression: SAM's processor gives float32 pixels, which a float16 SAM refused ("Input
    type (float) and bias type (c10::Half) should be the same")."""
    segmenter = MaskSegmenter(tiny_models["sam"], device="cpu", dtype="float16")
    from PIL import Image

    masks = segmenter.segment(Image.new("RGB", (64, 48), (120, 80, 40)), [[4, 4, 40, 30]])
    assert len(masks) == 1 and masks[0].rle["size"] == [48, 64]


@pytest.mark.parametrize(
    ("device", "half_on_cuda", "expected"),
    [("cuda", True, torch.float16), ("cuda:1", True, torch.float16), ("cuda", False, torch.float32),
     ("cpu", True, torch.float32), ("mps", True, torch.float32)],
)
@pytest.mark.parametrize("dtype", [None, "auto"])
def test_auto_is_float16_on_cuda_for_gligen_and_clip_only(
    dtype: str | None, device: str, half_on_cuda: bool, expected: torch.dtype
) -> None:
    assert resolve_dtype(dtype, device, half_on_cuda=half_on_cuda) is expected


@pytest.mark.parametrize(("dtype", "expected"), [
    ("float32", torch.float32), ("float16", torch.float16), ("bfloat16", torch.bfloat16),
    (torch.bfloat16, torch.bfloat16),
])
def test_an_explicit_dtype_holds_on_every_device(dtype: Any, expected: torch.dtype) -> None:
    for device in ("cpu", "cuda", "mps"):
        assert resolve_dtype(dtype, device, half_on_cuda=False) is expected


@pytest.mark.parametrize("dtype", ["float64", "half", "int8", "", "Float16", torch.float64])
def test_a_dtype_acp_does_not_run_in_is_one_line(dtype: Any) -> None:
    with pytest.raises(InputError, match=r"^--dtype .*: not a dtype acp runs models in; expected auto, "):
        resolve_dtype(dtype, "cpu")


def _plans(tmp_path: Path) -> Path:
    path = tmp_path / "plans.jsonl"
    path.write_text(PLAN.model_dump_json() + "\n")
    return path


def test_render_and_score_take_dtype(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    runner = CliRunner()
    renders, scores = tmp_path / "renders", tmp_path / "scores.jsonl"
    result = runner.invoke(app, ["render", str(_plans(tmp_path)), "-o", str(renders), "--model",
                                 str(tiny_models["gligen"]), "--steps", "1", "--size", "64", "-k", "2",
                                 "--device", "cpu", "--dtype", "float16", "--no-progress"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["score", "candidates", str(renders), "--plans", str(_plans(tmp_path)),
                                 "-o", str(scores), "--clip-model", str(tiny_models["clip"]),
                                 "--device", "cpu", "--dtype", "bfloat16", "--min-clis-i", "0",
                                 "--no-progress"])
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in scores.read_text().splitlines()]
    assert len(records) == 2 and all(isinstance(r["clis"], float) for r in records)


@pytest.mark.parametrize("command", ["render", "candidates", "dataset"])
def test_a_bad_dtype_is_refused_before_any_model_is_looked_for(command: str, tmp_path: Path) -> None:
    coco = tmp_path / "coco.json"
    coco.write_text('{"images": [], "annotations": [], "categories": []}')
    args = {"render": ["render", str(_plans(tmp_path)), "--model", str(tmp_path / "absent")],
            "candidates": ["score", "candidates", str(tmp_path), "--plans", str(_plans(tmp_path)),
                           "--clip-model", str(tmp_path / "absent")],
            "dataset": ["score", "dataset", str(coco), "--images", str(tmp_path),
                        "--clip-model", str(tmp_path / "absent")]}[command]
    result = CliRunner().invoke(app, [*args, "-o", str(tmp_path / "out"), "--device", "cpu",
                                      "--dtype", "fp8"])
    assert result.exit_code == 1
    assert result.stderr.splitlines() == [
        "acp: error: --dtype fp8: not a dtype acp runs models in; "
        "expected auto, float32, float16 or bfloat16"]

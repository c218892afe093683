"""The verifier's detectors (acp.score.detector) for real: tiny random OWLv2 and Grounding DINO
saved with save_pretrained, loaded through acp's loader, run on a batch of two images, and
compared with what transformers' own processor, forward and post-processing find."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from acp.errors import InputError
from acp.score.detector import OWL_PROMPT, ZeroShotDetector
from acp.score.verify import Detection

FAMILIES = {"owlv2": "owl", "grounding-dino": "grounding-dino"}


def images() -> list[Image.Image]:
    """Two images of different sizes, neither square, one smaller than the models' input."""
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (48, 80, 3), dtype=np.uint8)),
            Image.fromarray(rng.integers(0, 256, (100, 70, 3), dtype=np.uint8)).convert("L")]


QUERIES = [["dog", "hot dog"], ["cat"]]
MIN_SCORE = 0.1


@pytest.fixture(scope="module")
def detectors(tiny_models: dict[str, Path]) -> dict[tuple[str, str], ZeroShotDetector]:
    return {(name, dtype): ZeroShotDetector.from_pretrained(str(tiny_models[name]), device="cpu", dtype=dtype)
            for name in FAMILIES for dtype in ("float32", "float16")}


def reference(folder: Path, image: Image.Image, queries: list[str], min_score: float) -> list[Detection]:
    """What transformers' processor, model and post-processing find, as acp reports it: the
    boxes cut to the image, those left without area dropped; for Grounding DINO, each query's
    category is its best category's tokens."""
    from transformers import AutoModelForZeroShotObjectDetection, AutoProcessor

    processor = AutoProcessor.from_pretrained(folder)
    model = AutoModelForZeroShotObjectDetection.from_pretrained(folder).eval()
    width, height = image.size
    if model.config.model_type == "owlv2":
        inputs = processor(text=[[OWL_PROMPT.format(q) for q in queries]], images=[image.convert("RGB")],
                           padding="max_length", truncation=True,
                           max_length=model.config.text_config.max_position_embeddings, return_tensors="pt")
        with torch.no_grad():
            output = model(**inputs)
        side = max(width, height)  # OWLv2's boxes are relative to the padded square
        (found,) = processor.post_process_grounded_object_detection(
            outputs=output, threshold=min_score, target_sizes=torch.tensor([[side, side]]))
        rows = [(queries[int(label)], float(score), box)
                for score, label, box in zip(found["scores"], found["labels"], found["boxes"].tolist(),
                                             strict=True)]
    else:
        inputs = processor(images=[image.convert("RGB")], text=[" . ".join(queries) + " ."],
                           return_tensors="pt")
        with torch.no_grad():
            output = model(**inputs)
        probabilities = torch.sigmoid(output.logits[0])
        # The tokens of each query: the tiny tokenizer spells words letter by letter.
        ids = inputs["input_ids"][0].tolist()
        spans, start = [], 1
        for query in queries:
            length = len(processor.tokenizer(query, add_special_tokens=False).input_ids)
            spans.append((start, start + length))
            start += length + 1  # and its "."
        assert ids[start] == processor.tokenizer.sep_token_id
        per_query = torch.stack([probabilities[:, a:b].max(dim=-1).values for a, b in spans], dim=-1)
        scores, labels = per_query.max(dim=-1)
        boxes = output.pred_boxes[0]
        xyxy = torch.stack([boxes[:, 0] - boxes[:, 2] / 2, boxes[:, 1] - boxes[:, 3] / 2,
                            boxes[:, 0] + boxes[:, 2] / 2, boxes[:, 1] + boxes[:, 3] / 2], dim=-1)
        xyxy = xyxy * torch.tensor([width, height, width, height])
        rows = [(queries[int(label)], float(score), box)
                for score, label, box in zip(scores, labels, xyxy.tolist(), strict=True)
                if score >= min_score]
    out = []
    for category, score, (x0, y0, x1, y1) in rows:
        x0, x1 = min(max(x0, 0.0), width), min(max(x1, 0.0), width)
        y0, y1 = min(max(y0, 0.0), height), min(max(y1, 0.0), height)
        if x1 > x0 and y1 > y0:
            out.append(Detection(category, score, (x0, y0, x1 - x0, y1 - y0)))
    return sorted(out, key=lambda d: -d.score)


class ProcessorPixels:
    """The processor's preprocessing in place of acp's (``acp.score.pixels``, within a pixel
    level of it: tests/test_pixels.py), so that the rest of ``detect`` is compared exactly: a
    random detector's proposals can turn on a pixel level."""

    def __init__(self, detector: ZeroShotDetector):
        self.processor = detector.processor.image_processor

    def batch(self, pixels: list[torch.Tensor], dtype: torch.dtype) -> Any:
        pil = [Image.fromarray(p.permute(1, 2, 0).round().byte().numpy()) for p in pixels]
        out = self.processor(images=pil, return_tensors="pt")
        values = out["pixel_values"].to(dtype)
        return (values, out["pixel_mask"]) if "pixel_mask" in out else values


def rounded(found: list[Detection]) -> list[tuple[str, float, list[float]]]:
    return [(d.category, round(d.score, 4), [round(v, 2) for v in d.box]) for d in found]


@pytest.mark.parametrize("name", list(FAMILIES))
def test_a_batch_finds_what_transformers_finds(detectors: dict, tiny_models: dict[str, Path],
                                                name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from acp.score import detector as module

    detector = detectors[name, "float32"]
    assert detector.family == FAMILIES[name] and detector.dtype == torch.float32
    monkeypatch.setattr(module, "OwlPixels", ProcessorPixels)  # what _owl and _dino check for
    monkeypatch.setattr(module, "DinoPixels", ProcessorPixels)
    monkeypatch.setattr(detector, "pixels", ProcessorPixels(detector))
    found = detector.detect(images(), QUERIES, MIN_SCORE)
    assert len(found) == 2
    for image, queries, ours in zip(images(), QUERIES, found, strict=True):
        assert ours, "the tiny detector finds something"
        assert rounded(ours) == rounded(reference(tiny_models[name], image, queries, MIN_SCORE))


@pytest.mark.parametrize(("name", "dtype"), [(n, d) for n in FAMILIES for d in ("float32", "float16")])
def test_detections_are_the_asked_categories_inside_the_image_best_first(detectors: dict, name: str,
                                                                         dtype: str) -> None:
    """acp's own preprocessing, and float16 (what acp loads on CUDA) on the CPU."""
    detector = detectors[name, dtype]
    assert next(detector.model.parameters()).dtype == getattr(torch, dtype)
    found = detector.detect(images(), QUERIES, MIN_SCORE)
    for image, queries, ours in zip(images(), QUERIES, found, strict=True):
        assert ours
        assert [d.score for d in ours] == sorted((d.score for d in ours), reverse=True)
        width, height = image.size
        for d in ours:
            x, y, w, h = d.box
            assert d.category in queries and d.score >= MIN_SCORE
            assert x >= 0 and y >= 0 and w > 0 and h > 0 and x + w <= width + 1e-3 and y + h <= height + 1e-3


def test_owl_in_float16_finds_float32s_confident_boxes(detectors: dict) -> None:
    half, full = detectors["owlv2", "float16"], detectors["owlv2", "float32"]
    for ours, theirs in zip(half.detect(images(), QUERIES, MIN_SCORE),
                            full.detect(images(), QUERIES, MIN_SCORE), strict=True):
        for expected in [d for d in theirs if d.score >= 0.5 and min(d.box[2:]) >= 1]:
            assert any(d.category == expected.category and np.allclose(d.box, expected.box, atol=1.0)
                       for d in ours), expected


def test_owl_embeds_each_phrase_once(detectors: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    detector = ZeroShotDetector(detectors["owlv2", "float32"].model, detectors["owlv2", "float32"].processor,
                                name="owl")
    tower = detector.model.owlv2
    calls: list[int] = []
    original = tower.get_text_features

    def counted(*args: Any, **kwargs: Any) -> Any:
        calls.append(int(kwargs["input_ids"].shape[0]))
        return original(*args, **kwargs)

    monkeypatch.setattr(tower, "get_text_features", counted)
    first = detector.detect(images(), [["dog", "cat"], ["cat"]], 0.1)
    assert len(calls) == 2  # dog and cat, one pass each on a CPU
    second = detector.detect(images(), [["cat"], ["dog", "cat"]], 0.1)
    assert len(calls) == 2
    # A category's scores do not depend on its company (a box goes to its best category).
    assert set(d for d in first[0] if d.category == "cat") <= set(second[0])
    assert {d.box for d in second[0]} <= {d.box for d in first[0]}


def test_an_image_asked_nothing_finds_nothing(detectors: dict) -> None:
    for name in FAMILIES:
        found = detectors[name, "float32"].detect(images(), [[], ["cat"]], 0.0)
        assert found[0] == [] and found[1]


def test_a_long_dino_vocabulary_is_split_into_prompts_that_fit(detectors: dict) -> None:
    detector = detectors["grounding-dino", "float32"]
    names = [f"category {k} st. bernard" for k in range(12)]
    prompts = detector._dino_prompts(names)
    limit = detector.model.config.max_text_len
    assert len(prompts) > 1 and all(len(ids) <= limit for ids, _ in prompts)
    assert [name for _, spans in prompts for name, _ in spans] == names
    found = detector.detect(images()[:1], [names], 0.0)[0]
    assert found and {d.category for d in found} <= set(names)


def test_a_model_that_is_no_detector_is_one_line(tiny_models: dict[str, Path]) -> None:
    with pytest.raises(InputError, match=r"--detector-model .*clip: a clip model, not a zero-shot detector"):
        ZeroShotDetector.from_pretrained(str(tiny_models["clip"]), device="cpu")

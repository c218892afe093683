"""SAM masks from boxes, with the tiny SAM of ``acp.testing`` (random weights: only shapes,
encodings and bookkeeping are meaningful)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from acp.boxes import plan_to_sam
from acp.errors import InputError
from acp.export import CategorySet, CocoWriter, plan_instances
from acp.schema import PlanObject, ScenePlan
from acp.segment import MaskSegmenter, decode_mask, encode_masks

WIDTH, HEIGHT = 96, 64


@pytest.fixture(scope="module")
def sam_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from acp.testing import tiny_sam

    folder = tmp_path_factory.mktemp("sam")
    model, processor = tiny_sam(seed=0)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def segmenter(sam_folder: Path) -> MaskSegmenter:
    return MaskSegmenter(sam_folder, device="cpu")


def _plan() -> ScenePlan:
    return ScenePlan(
        id="p1", concepts=["dog", "cat"], caption="a dog and a cat", width=WIDTH, height=HEIGHT,
        planner="heuristic",
        objects=[
            PlanObject(id=0, category="dog", description="a dog", bbox=(0.0, 0.25, 0.5, 0.75)),
            PlanObject(id=1, category="cat", description="a cat", bbox=(0.5, 0.0, 0.5, 0.5)),
            PlanObject(id=2, category="cat", description="a cat", bbox=(0.75, 0.75, 0.25, 0.25)),
        ],
    )


def _image() -> Image.Image:
    return Image.fromarray(np.random.default_rng(1).integers(0, 255, (HEIGHT, WIDTH, 3), dtype=np.uint8))


def test_one_valid_rle_per_box(segmenter: MaskSegmenter) -> None:
    plan = _plan()
    boxes = plan_to_sam([o.bbox for o in plan.objects], WIDTH, HEIGHT)
    results = segmenter.segment(_image(), boxes)
    assert len(results) == 3
    for result, box in zip(results, boxes, strict=True):
        assert result.rle["size"] == [HEIGHT, WIDTH] and isinstance(result.rle["counts"], str)
        mask = decode_mask(result.rle)
        assert mask.shape == (HEIGHT, WIDTH)
        encoded = {**result.rle, "counts": result.rle["counts"].encode()}
        assert result.area == int(mask.sum()) == int(mask_utils.area(encoded))
        assert np.isfinite(result.score)
        assert result.box == tuple(box)
        assert (result.problem is None) == (result.area > 0)
    assert any(r.area > 0 for r in results)
    # Deterministic: the same image and boxes give the same masks.
    assert [r.rle for r in segmenter.segment(_image(), boxes)] == [r.rle for r in results]
    assert segmenter.segment(_image(), np.zeros((0, 4))) == []


def test_the_best_of_the_multimask_outputs_is_kept(segmenter: MaskSegmenter) -> None:
    import torch

    image, boxes = _image(), plan_to_sam([o.bbox for o in _plan().objects], WIDTH, HEIGHT)
    inputs = segmenter.processor(images=image, input_boxes=[boxes.tolist()], return_tensors="pt")
    with torch.inference_mode():
        outputs = segmenter.model(**inputs, multimask_output=True)
    best = outputs.iou_scores[0].argmax(-1)
    all_masks = segmenter.processor.post_process_masks(
        outputs.pred_masks, inputs["original_sizes"], inputs["reshaped_input_sizes"]
    )[0]
    results = segmenter.segment(image, boxes)
    for k, result in enumerate(results):
        assert result.score == pytest.approx(float(outputs.iou_scores[0, k, best[k]]), rel=1e-5)
        expected = np.zeros_like(all_masks[k, best[k]].numpy())  # SAM's mask, cut to its box
        x0, y0, x1, y1 = boxes[k]
        rows, cols = slice(int(np.floor(y0)), int(np.ceil(y1))), slice(int(np.floor(x0)), int(np.ceil(x1)))
        expected[rows, cols] = all_masks[k, best[k]].numpy()[rows, cols]
        assert (decode_mask(result.rle) != expected).mean() < 0.01  # same up to interpolation order


def test_an_empty_mask_is_reported_not_kept(sam_folder: Path) -> None:
    import torch

    segmenter = MaskSegmenter(sam_folder, device="cpu")
    # Zero hypernetwork outputs make every mask logit 0, which the 0.0 threshold turns into "empty".
    with torch.no_grad():
        for mlp in segmenter.model.mask_decoder.output_hypernetworks_mlps:
            mlp.proj_out.weight.zero_()
            mlp.proj_out.bias.zero_()
    results = segmenter.segment(_image(), [[10, 10, 40, 40], [0, 0, 96, 64]])
    assert [r.area for r in results] == [0, 0]
    assert [r.problem for r in results] == [
        "empty mask for box [10.0, 10.0, 40.0, 40.0]",
        "empty mask for box [0.0, 0.0, 96.0, 64.0]",
    ]


def test_encode_masks_flags_only_empty_masks() -> None:
    masks = np.zeros((3, 8, 10), dtype=bool)
    masks[0, 1:3, 2:6] = True
    masks[2, 7, 9] = True
    results = encode_masks(masks, [0.5, 0.6, 0.7], [[2, 1, 6, 3], [0, 0, 1, 1], [9, 7, 10, 8]])
    assert [r.area for r in results] == [8, 0, 1]
    assert [r.problem is None for r in results] == [True, False, True]
    for result, mask in zip(results, masks, strict=True):
        np.testing.assert_array_equal(decode_mask(result.rle), mask)
    assert encode_masks(np.zeros((0, 8, 10)), [], np.zeros((0, 4))) == []
    with pytest.raises(ValueError, match="expected"):
        encode_masks(masks, [0.5], [[0, 0, 1, 1]])


def test_bad_model_folder_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"--sam-model .*missing: no such folder") as error:
        MaskSegmenter(tmp_path / "missing", device="cpu")
    assert "\n" not in str(error.value)
    with pytest.raises(InputError, match=r"--sam-model .*cannot load a SAM checkpoint") as error:
        MaskSegmenter(tmp_path, device="cpu")  # a folder, but no model in it
    assert "\n" not in str(error.value)


def test_masks_export_to_coco_and_evaluate_to_ap_1(segmenter: MaskSegmenter, tmp_path: Path) -> None:
    plan, image = _plan(), _image()
    masks = segmenter.segment(image, plan_to_sam([o.bbox for o in plan.objects], WIDTH, HEIGHT))
    usable = {o.id: m for o, m in zip(plan.objects, masks, strict=True) if m.problem is None}
    categories = CategorySet.from_concepts(plan.concepts)
    instances = plan_instances(plan, categories, masks=usable)
    with CocoWriter(tmp_path, categories, image_format="png") as writer:
        writer.add_image(plan.id, image, instances)
    data = json.loads((tmp_path / "annotations.json").read_text())
    with_masks = [a for a in data["annotations"] if "segmentation" in a]
    assert len(with_masks) == len(usable) > 0
    for annotation in with_masks:
        mask = masks[annotation["acp"]["object_id"]]
        assert annotation["area"] == mask.area
        assert annotation["acp"]["mask_score"] == pytest.approx(mask.score)
    gt = COCO(str(tmp_path / "annotations.json"))
    gt.dataset["annotations"] = with_masks
    gt.createIndex()
    detections = [{k: v for k, v in a.items() if k != "id"} | {"score": 1.0} for a in with_masks]
    evaluation = COCOeval(gt, gt.loadRes(detections), "segm")
    evaluation.evaluate()
    evaluation.accumulate()
    evaluation.summarize()
    assert evaluation.stats[0] == pytest.approx(1.0)

"""Instance masks from boxes with SAM (transformers' ``SamModel``).

``MaskSegmenter`` loads a SAM checkpoint once and turns the kept boxes of an image into COCO
RLE masks: all boxes of an image go through one forward pass (the image embedding is computed
once), SAM's three candidate masks per box are reduced to the one with the highest predicted
IoU, and the mask is encoded with pycocotools together with its pixel area.

Each mask is cut to its box: GLIGEN placed the object there, and SAM, prompted with a box,
sometimes spills onto a neighbour or the background (a mask many times its box's area). A box
whose mask comes out empty is not dropped here and not silently kept: its
``MaskResult.problem`` says so and the caller decides (the pipeline drops the instance and
counts it). A mask that fills under ``MIN_BOX_FILL`` of its box is kept but flagged in
``MaskResult.warning``: SAM found little of an object there, and the summary says so.

Default checkpoint: ``facebook/sam-vit-huge``. Masks are computed once per *kept* image, after
K candidates were each rendered with tens of diffusion steps, so SAM's share of the run time is
small even for the largest encoder, while the SAM paper reports ViT-H giving clearly better
masks than ViT-B. On a CPU-only machine pass ``--sam-model facebook/sam-vit-base``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import ArrayLike

from acp import defaults
from acp.device import resolve_device, resolve_dtype
from acp.errors import InputError, MissingDependencyError, one_line
from acp.pretrained import load_pretrained, loading
from acp.settings_record import recorded

if TYPE_CHECKING:
    import torch
    from PIL import Image

# Share of its box under which a mask is implausible (a thin pole fills ~0.1 of its box; a mask
# of a few stray pixels fills far less).
MIN_BOX_FILL = 0.05


@dataclass(frozen=True)
class MaskResult:
    """The mask SAM drew for one box prompt."""

    rle: dict[str, Any]  # COCO RLE: {"size": [height, width], "counts": str}
    area: int  # mask pixels
    score: float  # SAM's predicted IoU of the chosen mask
    box: tuple[float, float, float, float]  # the prompt, pixel [x0, y0, x1, y1]
    problem: str | None = None  # set when the mask must not be used (e.g. it is empty)
    warning: str | None = None  # set when the mask is usable but implausible for its box


def encode_masks(
    masks: ArrayLike, scores: ArrayLike, boxes: ArrayLike
) -> list[MaskResult]:
    """Encode ``(N, H, W)`` binary masks as ``MaskResult``, each cut to its pixel
    ``[x0, y0, x1, y1]`` box first; an empty mask gets a ``problem``, one that fills under
    ``MIN_BOX_FILL`` of its box a ``warning``."""
    from pycocotools import mask as mask_utils

    masks = np.asarray(masks, dtype=bool)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    if masks.ndim != 3 or not len(masks) == len(scores) == len(boxes):
        raise ValueError(
            f"expected (N, H, W) masks with N scores and N boxes, got masks {masks.shape}, "
            f"{len(scores)} scores, {len(boxes)} boxes"
        )
    if len(masks) == 0:
        return []
    height, width = masks.shape[1:]
    inside_box = np.zeros_like(masks)
    for k, (x0, y0, x1, y1) in enumerate(boxes):
        # Every pixel the box touches: a box edge at 10.5 keeps pixel 10.
        left, top = max(0, int(np.floor(x0))), max(0, int(np.floor(y0)))
        right, bottom = min(width, int(np.ceil(x1))), min(height, int(np.ceil(y1)))
        inside_box[k, top:bottom, left:right] = True
    clipped = masks & inside_box
    # pycocotools wants (H, W, N) uint8 in Fortran order.
    encoded = mask_utils.encode(np.asfortranarray(clipped.transpose(1, 2, 0).astype(np.uint8)))
    areas = mask_utils.area(encoded)
    results = []
    for rle, area, score, box in zip(encoded, areas, scores, boxes, strict=True):
        box_tuple = (float(box[0]), float(box[1]), float(box[2]), float(box[3]))
        problem = warning = None
        where = f"box [{', '.join(f'{v:.1f}' for v in box_tuple)}]"
        box_area = max(box_tuple[2] - box_tuple[0], 0.0) * max(box_tuple[3] - box_tuple[1], 0.0)
        if int(area) == 0:
            problem = f"empty mask for {where}"
        elif box_area > 0 and int(area) < MIN_BOX_FILL * box_area:
            warning = (f"mask of {int(area)} px fills {int(area) / box_area:.1%} of {where} "
                       f"(under {MIN_BOX_FILL:.0%})")
        results.append(
            MaskResult(
                rle={"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")},
                area=int(area),
                score=float(score),
                box=box_tuple,
                problem=problem,
                warning=warning,
            )
        )
    return results


def decode_mask(rle: dict[str, Any]) -> np.ndarray:
    """The ``(H, W)`` bool mask of a COCO RLE with ``counts`` as str or bytes."""
    from pycocotools import mask as mask_utils

    counts = rle["counts"]
    if isinstance(counts, str):
        counts = counts.encode("ascii")
    data = {"size": list(rle["size"]), "counts": counts}
    return np.asarray(mask_utils.decode(data), dtype=bool)


@dataclass(frozen=True)
class MaskSettings:
    """Instance masks from SAM (``--masks``): which checkpoint."""

    sam_model: str = field(default=defaults.SAM_MODEL, metadata=recorded(model=True))


class MaskSegmenter:
    """SAM loaded once; ``segment(image, boxes)`` per image."""

    def __init__(self, model: str | Path = defaults.SAM_MODEL, device: str | None = None, *,
                 dtype: str | torch.dtype | None = None, progress: bool = False):
        """SAM on ``device`` (``acp.device.resolve_device``) in ``dtype``: float32 by default on
        every device (``resolve_dtype(..., half_on_cuda=False)``: masks are a small share of a
        run, and SAM's mask logits are thresholded at 0). ``progress``: the status line of
        ``acp.pretrained.loading``."""
        try:
            import torch  # noqa: F401
            from transformers import SamModel, SamProcessor
        except ImportError as error:  # pragma: no cover - both are install requirements
            raise MissingDependencyError(
                f"SAM masks need torch and transformers ({error}); pip install torch transformers"
            ) from None
        self.model_id = str(model)
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device, half_on_cuda=False)
        with loading("--sam-model", self.model_id, progress=progress):
            try:
                self.processor, loaded = load_pretrained(
                    lambda source, **kwargs: (SamProcessor.from_pretrained(source, **kwargs),
                                              SamModel.from_pretrained(source, **kwargs)),
                    self.model_id, option="--sam-model",
                )
            except (OSError, ValueError) as error:
                raise InputError(
                    f"--sam-model {self.model_id}: cannot load a SAM checkpoint (expected a hub id such as "
                    f"{defaults.SAM_MODEL} or a folder saved with save_pretrained): {one_line(str(error))}"
                ) from None
            self.model = loaded.to(device=self.device, dtype=self.dtype).eval()

    def segment(self, image: Image.Image, boxes: ArrayLike) -> list[MaskResult]:
        """One mask per pixel ``[x0, y0, x1, y1]`` box (``acp.boxes.plan_to_sam``), in box order."""
        import torch

        prompts = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        if len(prompts) == 0:
            return []
        image = image.convert("RGB")
        inputs = self.processor(images=image, input_boxes=[prompts.tolist()], return_tensors="pt")
        # The processor gives float32 pixels: a half model needs them in its own dtype.
        inputs = {k: v.to(self.device) if hasattr(v, "to") else v for k, v in inputs.items()}
        inputs["pixel_values"] = inputs["pixel_values"].to(self.dtype)
        with torch.inference_mode():
            outputs = self.model(**inputs, multimask_output=True)
        # pred_masks: (1, N, 3, h, w) low-resolution logits; iou_scores: (1, N, 3).
        scores = outputs.iou_scores[0].float()
        best = scores.argmax(dim=-1)
        picked = torch.arange(len(best), device=best.device)
        low_res = outputs.pred_masks[0][picked, best].unsqueeze(1).float().cpu()  # (N, 1, h, w)
        # Upscale only the chosen mask of each box: a third of the work and memory.
        masks = self.processor.post_process_masks(
            [low_res], inputs["original_sizes"].cpu(), inputs["reshaped_input_sizes"].cpu()
        )[0][:, 0]
        return encode_masks(masks.numpy(), scores[picked, best].cpu().numpy(), prompts)


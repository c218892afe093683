"""CLIS-I with CLIP: how well an image shows its plan, globally and object by object (0-100).

Terms, for an image with caption ``T`` and objects ``i`` (category ``c_i``, description ``d_i``,
box ``b_i``):

- global: ``map(cos(image, T))``;
- text similarity of object ``i``: ``map(cos(crop_i, d_i))``, where ``crop_i`` is ``b_i`` widened
  by ``CONTEXT_MARGIN`` (10 %) of its side on every side (at least one pixel), clipped to the
  image and padded to a square with CLIP's mean colour (CLIP's processor would otherwise cut
  the middle out of a tall or wide crop);
- category confidence of object ``i``: ``100 * softmax(s * cos(crop_i, p_k))`` at ``k = c_i``,
  over the prompts ``p_k = "a photo of a {k}."`` of the scene's distinct categories plus
  "background" (so that a scene of one category still asks whether the object is there at
  all); ``s`` is CLIP's own logit scale (100 for the released models);
- instance: ``0.8 * text similarity + 0.2 * category confidence``. The paper's local term is
  0.8 region + 0.2 crop, from VLM captions; here the description match plays the region's
  part and the category contrast the crop's;
- image: ``0.5 * global + 0.5 * mean(instances)`` (global alone for an image without objects).

``map(cos) = 100 * clip((cos - 0.12) / (0.32 - 0.12), 0, 1)``. CLIP's image-text cosine
similarities are compressed: for ViT-L/14, unrelated pairs sit around 0.10-0.18 and good
matches around 0.25-0.33 (the range behind CLIPScore's ``2.5 * cos`` rescaling). The map puts
0.12 at 0 and 0.32 at 100, so the paper's instance threshold of 60 falls at cosine 0.24, just
under a typical good match. It is a hand calibration from those published ranges, not a fit:
with another CLIP, check the bounds (``ImageScorer(..., cosine_range=(lo, hi))``).

All images and crops of one ``score`` call go through CLIP's vision tower in one forward pass
on an accelerator (split only beyond ``max_batch`` inputs); on a CPU each goes alone, for the
reason texts do (below): an image's embedding must not depend on the images that share its
pass, which is decided by how many plans an engine had ready, so that the local and the Ray
engine write the same scores. They are made on the model's device
(``acp.score.pixels``): each image is copied there once, and the crops, padding, resizing and
normalising are tensor operations, within a pixel level of CLIP's processor (CLIS-I within
``acp.score.pixels.CLIS_TOLERANCE`` of the processor's scores).

Texts are embedded once per scorer: the same captions,
descriptions and category prompts come back plan after plan, so each text's embedding is kept
(``TextEmbeddingCache``, least recently used out beyond ``TEXT_CACHE_SIZE`` texts) and only
texts not seen before go through the text tower. For a cached embedding to be the one the text
would get now, an embedding must depend on its text alone, not on the texts that share its
batch; CPU kernels (and cuBLAS) round a row differently with the shape of its batch, by about
1e-7. So on a CPU each text goes through alone, at its own length (the CPU is busy with
arithmetic, not with launching kernels: padding would cost more than the extra calls), and on
a GPU in passes of exactly ``ACCELERATOR_TEXT_BATCH`` texts padded to CLIP's 77 tokens (the GPU
is busy launching kernels: the padding is nearly free, one call per text would not be).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from acp.device import resolve_device, resolve_dtype
from acp.errors import InputError, one_line
from acp.names import category_key
from acp.pretrained import load_pretrained, loading
from acp.schema import ScenePlan
from acp.score.pixels import ClipPixels, square, to_device

if TYPE_CHECKING:
    import torch
    from PIL.Image import Image

    from acp.score.pixels import Picture

COSINE_RANGE = (0.12, 0.32)
CONTEXT_MARGIN = 0.1
GLOBAL_WEIGHT = 0.5
REGION_WEIGHT = 0.8  # text similarity; the rest goes to the category confidence
PROMPT = "a photo of a {}."
BACKGROUND = "background"
CLIP_MEAN_RGB = (122, 116, 104)
MAX_BATCH = 256
# Distinct texts kept per scorer: float32 rows, 150 MB at CLIP ViT-L's 768 wide projection.
TEXT_CACHE_SIZE = 50_000
ACCELERATOR_TEXT_BATCH = 32  # texts per text-tower pass off the CPU; every pass has this shape


@dataclass(frozen=True)
class SceneObject:
    id: int
    category: str
    description: str
    bbox: tuple[float, float, float, float]  # normalised xywh


@dataclass(frozen=True)
class Scene:
    """What CLIS-I compares an image with: a caption and described, boxed objects."""

    caption: str
    objects: tuple[SceneObject, ...]

    @classmethod
    def from_plan(cls, plan: ScenePlan) -> Scene:
        return cls(
            caption=plan.caption,
            objects=tuple(SceneObject(o.id, o.category, o.description, o.bbox) for o in plan.objects),
        )


@dataclass
class InstanceScore:
    id: int
    category: str
    clis_i: float
    text_similarity: float
    category_confidence: float
    cosine: float  # raw crop-description cosine, for recalibration
    judge: float | None = None


@dataclass
class ImageScore:
    clis_i: float
    global_score: float
    local_score: float | None
    global_cosine: float
    objects: list[InstanceScore] = field(default_factory=list)

    def recompute(self) -> None:
        """Refresh ``local_score`` and ``clis_i`` after instance scores changed (the judge)."""
        if self.objects:
            self.local_score = float(np.mean([o.clis_i for o in self.objects]))
            self.clis_i = GLOBAL_WEIGHT * self.global_score + (1 - GLOBAL_WEIGHT) * self.local_score
        else:
            self.local_score, self.clis_i = None, self.global_score


def cosine_to_score(cosine: NDArray[Any] | float, cosine_range: tuple[float, float] = COSINE_RANGE) -> Any:
    """The documented linear map of a CLIP cosine onto 0-100, clipped."""
    low, high = cosine_range
    return 100.0 * np.clip((np.asarray(cosine, dtype=np.float64) - low) / (high - low), 0.0, 1.0)


def crop_box(
    bbox: Sequence[float], width: int, height: int, margin: float = CONTEXT_MARGIN
) -> tuple[int, int, int, int]:
    """Pixel ``(left, top, right, bottom)`` of a normalised xywh box widened by ``margin`` of its
    side, at least one pixel wide and high, inside the image. Never raises on odd boxes.
    Python floats, not numpy: the same IEEE arithmetic as ``plan_to_sam``, at a twentieth of
    the cost (it runs for every crop CLIS-I scores)."""
    x, y, w, h = (_finite(float(v)) for v in bbox)
    x0, y0, x1, y1 = x * width, y * height, (x + w) * width, (y + h) * height
    dx, dy = margin * max(x1 - x0, 0.0), margin * max(y1 - y0, 0.0)
    eps = 1e-6  # 0.2 * 200 + 2 is 42.000000001 in floating point; that is pixel 42, not 43
    left = _whole(x0 - dx + eps, 0, width - 1, math.floor)
    top = _whole(y0 - dy + eps, 0, height - 1, math.floor)
    right = _whole(x1 + dx - eps, left + 1, width, math.ceil)
    bottom = _whole(y1 + dy - eps, top + 1, height, math.ceil)
    return left, top, right, bottom


def _finite(value: float) -> float:
    """``np.nan_to_num(value, nan=0, posinf=1, neginf=0)``."""
    if math.isnan(value) or value == -math.inf:
        return 0.0
    return 1.0 if value == math.inf else value


def _whole(value: float, low: int, high: int, rounding: Callable[[float], int]) -> int:
    """``rounding(value)`` clipped to ``[low, high]`` (``low`` for NaN)."""
    if not value > low:
        return low
    if value >= high:
        return high
    return min(max(rounding(value), low), high)


def square_pad(image: Image) -> Image:
    """``image`` centred on a square of CLIP's mean colour."""
    from PIL import Image as PILImage

    side = max(image.size)
    if image.size == (side, side):
        return image
    canvas = PILImage.new("RGB", (side, side), CLIP_MEAN_RGB)
    canvas.paste(image, ((side - image.width) // 2, (side - image.height) // 2))
    return canvas


class TextEmbeddingCache:
    """Text -> CLIP text embedding (float32, before normalising), at most ``size`` texts, the
    least recently used dropped first. ``hits`` and ``misses`` count lookups."""

    def __init__(self, size: int = TEXT_CACHE_SIZE):
        if size < 0:
            raise ValueError(f"cache size must be >= 0, got {size}")
        self.size = size
        self.hits = self.misses = 0
        self._rows: OrderedDict[str, NDArray[np.float32]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._rows)

    def get(self, text: str) -> NDArray[np.float32] | None:
        row = self._rows.get(text)
        if row is None:
            self.misses += 1
            return None
        self.hits += 1
        self._rows.move_to_end(text)
        return row

    def put(self, text: str, row: NDArray[np.float32]) -> None:
        if self.size == 0:
            return
        self._rows[text] = row
        self._rows.move_to_end(text)
        while len(self._rows) > self.size:
            self._rows.popitem(last=False)

    def clear(self) -> None:
        self._rows.clear()
        self.hits = self.misses = 0


class ImageScorer:
    """CLIS-I with an already-loaded CLIP (``from_pretrained`` loads one)."""

    def __init__(
        self,
        model: Any,
        processor: Any,
        *,
        device: str | None = None,
        cosine_range: tuple[float, float] = COSINE_RANGE,
        max_batch: int = MAX_BATCH,
        name: str = "",
        text_cache_size: int = TEXT_CACHE_SIZE,
    ):
        import torch

        self.model = model.eval()
        self.processor = processor
        self.device = (
            torch.device(resolve_device(device)) if device is not None else next(model.parameters()).device
        )
        self.model.to(self.device)
        self.dtype = next(model.parameters()).dtype
        self.pixels = ClipPixels.from_processor(processor)
        self.cosine_range = cosine_range
        self.max_batch = max_batch
        # Images per vision pass: one on a CPU, where a row's rounding depends on its batch.
        self.image_batch = 1 if self.device.type == "cpu" else max_batch
        self.name = name
        self.text_cache = TextEmbeddingCache(text_cache_size)
        # Texts per text-tower pass (see the module notes); the shape of every pass is fixed.
        self.text_batch = 1 if self.device.type == "cpu" else ACCELERATOR_TEXT_BATCH

    @classmethod
    def from_pretrained(cls, name_or_path: str | Path, *, device: str | None = None,
                        dtype: str | torch.dtype | None = None, progress: bool = False) -> ImageScorer:
        """Load CLIP from a hub id or folder, in ``dtype`` (by default float16 on CUDA, float32
        elsewhere: ``acp.device.resolve_dtype``). ``device`` and ``dtype`` are checked before
        anything is loaded; ``progress``: the status line of ``acp.pretrained.loading``."""
        from transformers import CLIPModel, CLIPProcessor

        device = resolve_device(device)  # before loading: a typo should not cost a model load
        dtype = resolve_dtype(dtype, device)
        name = str(name_or_path)

        def load(source: str, **kwargs: Any) -> tuple[Any, Any]:
            processor = CLIPProcessor.from_pretrained(source, **kwargs)
            return processor, CLIPModel.from_pretrained(source, **kwargs)

        with loading("--clip-model", name, progress=progress):
            try:
                processor, model = load_pretrained(load, name, option="--clip-model")
            except (OSError, ValueError) as error:
                reason = one_line(str(error)) or type(error).__name__
                raise InputError(f"--clip-model {name}: cannot load a CLIP model ({reason})") from None
            # Cast after loading: the dtype keyword of from_pretrained differs across versions.
            model = model.to(device=device, dtype=dtype)
        return cls(model, processor, device=device, name=name)

    # -- embeddings ----------------------------------------------------------------------
    def embed_images(self, images: Sequence[Picture]) -> NDArray[np.float64]:
        """Unit CLIP image embeddings; one vision forward pass per ``image_batch`` images."""
        return self.embed_pixels(to_device(images, self.device))

    def embed_pixels(self, images: Sequence[torch.Tensor]) -> NDArray[np.float64]:
        """``embed_images`` of ``(3, H, W)`` pixel-level tensors already on the device."""
        import torch

        rows = []
        for start in range(0, len(images), self.image_batch):
            with torch.inference_mode():
                pixels = self.pixels.batch(images[start : start + self.image_batch], self.dtype)
                pooled = self.model.vision_model(pixel_values=pixels).pooler_output
                rows.append(self.model.visual_projection(pooled).float().cpu().numpy())
        return _unit(np.concatenate(rows)) if rows else np.zeros((0, 0))

    def embed_texts(self, texts: Sequence[str]) -> NDArray[np.float64]:
        """Unit CLIP text embeddings (truncated to CLIP's context). Only texts missing from
        ``text_cache`` go through the text tower, and each text's embedding is the same
        whichever texts it comes with."""
        found: dict[str, NDArray[np.float32]] = {}
        for text in texts:
            if text not in found:
                row = self.text_cache.get(text)
                if row is not None:
                    found[text] = row
        missing = [text for text in dict.fromkeys(texts) if text not in found]
        for text, row in zip(missing, self._encode_texts(missing), strict=True):
            found[text] = row
            self.text_cache.put(text, row)
        if not texts:
            return np.zeros((0, 0))
        return _unit(np.stack([found[text] for text in texts]))

    def _encode_texts(self, texts: Sequence[str]) -> list[NDArray[np.float32]]:
        """Projected, not yet normalised, text embeddings, in passes of exactly ``text_batch``
        texts (the last one filled up with empty texts): a text's row never depends on the
        others in its pass. One text alone runs at its own length; several are padded to the
        text tower's full context, so that every pass has the same shape."""
        import torch

        rows: list[NDArray[np.float32]] = []
        size = self.text_batch
        context = int(self.model.config.text_config.max_position_embeddings)
        for start in range(0, len(texts), size):
            part = list(texts[start : start + size])
            tokens = self.processor(
                text=part + [""] * (size - len(part)), return_tensors="pt", truncation=True,
                max_length=context, padding="max_length" if size > 1 else "longest",
            )
            with torch.inference_mode():
                pooled = self.model.text_model(
                    input_ids=tokens["input_ids"].to(self.device),
                    attention_mask=tokens["attention_mask"].to(self.device),
                ).pooler_output
                projected = self.model.text_projection(pooled).float().cpu().numpy()
            rows.extend(np.array(row) for row in projected[: len(part)])  # copies: no chunk kept alive
        return rows

    # -- scoring -------------------------------------------------------------------------
    def score(self, plan: ScenePlan, images: Sequence[Picture]) -> list[ImageScore]:
        """CLIS-I of each of ``images`` (candidates rendered from ``plan``)."""
        scene = Scene.from_plan(plan)
        return self.score_scenes([(scene, image) for image in images])

    def score_scenes(self, items: Sequence[tuple[Scene, Picture]]) -> list[ImageScore]:
        """CLIS-I of each ``(scene, image)``; all images and crops in one vision pass on an
        accelerator, one pass each on a CPU (``image_batch``)."""
        if not items:
            return []
        inputs: list[torch.Tensor] = []
        image_rows: list[int] = []
        crop_rows: list[list[int]] = []
        on_device = to_device([image for _, image in items], self.device)
        for (scene, _), pixels in zip(items, on_device, strict=True):
            _, height, width = pixels.shape
            image_rows.append(len(inputs))
            inputs.append(square(pixels, CLIP_MEAN_RGB))
            crop_rows.append(list(range(len(inputs), len(inputs) + len(scene.objects))))
            for obj in scene.objects:
                left, top, right, bottom = crop_box(obj.bbox, width, height)
                inputs.append(square(pixels[:, top:bottom, left:right], CLIP_MEAN_RGB))
        texts: dict[str, int] = {}

        def text_row(text: str) -> int:
            return texts.setdefault(text, len(texts))

        plans = []
        for scene, _ in items:
            caption = text_row(scene.caption)
            keys = list(dict.fromkeys(category_key(o.category) for o in scene.objects))
            names = {BACKGROUND: BACKGROUND} | {category_key(o.category): o.category for o in scene.objects}
            contrast = keys if BACKGROUND in keys else [*keys, BACKGROUND]
            prompts = [text_row(PROMPT.format(names[k])) for k in contrast]
            descriptions = [text_row(o.description) for o in scene.objects]
            own = [keys.index(category_key(o.category)) for o in scene.objects]
            plans.append((caption, prompts, descriptions, own))
        image_vectors = self.embed_pixels(inputs)
        text_vectors = self.embed_texts(list(texts))
        scale = float(self.model.logit_scale.exp().item()) if hasattr(self.model, "logit_scale") else 100.0

        results = []
        for k, ((scene, _), plan) in enumerate(zip(items, plans, strict=True)):
            caption, prompts, descriptions, own = plan
            global_cosine = float(image_vectors[image_rows[k]] @ text_vectors[caption])
            instances = []
            if scene.objects:
                crops = image_vectors[crop_rows[k]]
                text_cos = np.einsum("nd,nd->n", crops, text_vectors[descriptions])
                logits = scale * crops @ text_vectors[prompts].T
                logits -= logits.max(axis=1, keepdims=True)
                probabilities = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
                confidence = 100.0 * probabilities[np.arange(len(own)), own]
                similarity = cosine_to_score(text_cos, self.cosine_range)
                for n, obj in enumerate(scene.objects):
                    instances.append(
                        InstanceScore(
                            id=obj.id,
                            category=obj.category,
                            clis_i=float(REGION_WEIGHT * similarity[n] + (1 - REGION_WEIGHT) * confidence[n]),
                            text_similarity=float(similarity[n]),
                            category_confidence=float(confidence[n]),
                            cosine=float(text_cos[n]),
                        )
                    )
            result = ImageScore(
                clis_i=0.0,
                global_score=float(cosine_to_score(global_cosine, self.cosine_range)),
                local_score=None,
                global_cosine=global_cosine,
                objects=instances,
            )
            result.recompute()
            results.append(result)
        return results


def _unit(vectors: NDArray[Any]) -> NDArray[np.float64]:
    array = np.asarray(vectors, dtype=np.float64)
    norms = np.linalg.norm(array, axis=-1, keepdims=True)
    return array / np.where(norms > 0, norms, 1.0)

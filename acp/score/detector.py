"""The verifier's detector: transformers' zero-shot detectors, loaded like every acp model.

``ZeroShotDetector.from_pretrained(name)`` loads ``AutoModelForZeroShotObjectDetection`` and
``AutoProcessor`` from a hub id or a folder through ``acp.pretrained`` (one status line, every
missing model named before any loads), in the dtype ``acp.device.resolve_dtype`` gives (float16
on CUDA), and ``detect`` finds the asked categories in a batch of images: one forward pass per
batch on an accelerator, one image at a time on a CPU (where a batch rounds differently from
a single image, and the same plan must score the same whatever the batch).

Two families (``acp.score.verify.FAMILIES``):

- **OWLv2** (``owlv2``; the default, ``google/owlv2-base-patch16-ensemble``). Each query is
  scored on its own (a sigmoid per patch and query), so a category's score for a box does not
  depend on which other categories share the scene (a box still goes to its best category); and
  the text tower runs once per phrase for the whole run: queries are embedded alone (``"a photo
  of a {category}"``, the prompt of the model's examples), cached, and matched against each
  image's patch embeddings with the model's own class and box heads (``image_embedder``,
  ``class_predictor``, ``box_predictor``: the same numbers as its ``forward``). A vocabulary of
  thousands of categories (LVIS in ``acp score dataset``) then costs one text pass per category,
  not one per image. Apache-2.0.
- **Grounding DINO** (``grounding-dino``, ``mm-grounding-dino``; e.g.
  ``IDEA-Research/grounding-dino-tiny``). The categories are one prompt (``"dog . cat ."``)
  fused with the image in every layer: stronger on COCO-like categories, but nothing can be
  cached, a prompt holds at most ``max_text_len`` (256) tokens (longer vocabularies take one
  pass per chunk), and a category's score depends on its prompt's company. A category's score
  for a box is its best token's.

Preprocessing runs on the device (``acp.score.pixels``). Each image's detections are sorted by
score and the boxes are pixel ``[x, y, w, h]`` of the image as given.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from acp.device import resolve_device, resolve_dtype
from acp.errors import InputError, one_line
from acp.pretrained import load_pretrained, loading
from acp.score.pixels import DinoPixels, OwlPixels, image_size, to_device
from acp.score.verify import MAX_DETECTIONS, Detection, as_xywh, check_family

if TYPE_CHECKING:
    import torch

    from acp.score.pixels import Picture

OPTION = "--detector-model"
OWL_PROMPT = "a photo of a {}"
MAX_BATCH = 16  # images per forward pass off the CPU
ACCELERATOR_TEXT_BATCH = 32  # OWL phrases per text pass off the CPU; every pass has this shape
TEXT_CACHE_SIZE = 50_000  # phrases whose OWL embedding is kept
Span = tuple[str, tuple[int, int]]  # a category of a prompt and its tokens' positions


class ZeroShotDetector:
    """A loaded zero-shot detector (see the module docstring); implements
    ``acp.score.verify.Detector``."""

    def __init__(self, model: Any, processor: Any, *, device: str | None = None, name: str = ""):
        import torch

        self.name = name
        self.model = model.eval()
        self.processor = processor
        self.family = check_family(str(getattr(model.config, "model_type", "")), name)
        self.device = (torch.device(resolve_device(device)) if device is not None
                       else next(model.parameters()).device)
        self.model.to(self.device)
        self.dtype = next(model.parameters()).dtype
        self.pixels: OwlPixels | DinoPixels = (
            OwlPixels.from_processor(processor, OPTION) if self.family == "owl"
            else DinoPixels.from_processor(processor, OPTION))
        self.batch = 1 if self.device.type == "cpu" else MAX_BATCH
        self.text_batch = 1 if self.device.type == "cpu" else ACCELERATOR_TEXT_BATCH
        self._texts: OrderedDict[str, torch.Tensor] = OrderedDict()

    @classmethod
    def from_pretrained(cls, name_or_path: str | Path, *, device: str | None = None,
                        dtype: str | torch.dtype | None = None, progress: bool = False) -> ZeroShotDetector:
        """Load a detector from a hub id or folder (``acp.pretrained``), in ``dtype`` (float16 on
        CUDA by default); a model of another kind is an ``InputError`` before its weights load."""
        from transformers import AutoConfig, AutoModelForZeroShotObjectDetection, AutoProcessor

        device = resolve_device(device)
        torch_dtype = resolve_dtype(dtype, device)
        name = str(name_or_path)

        def load(source: str, **kwargs: Any) -> tuple[Any, Any]:
            config = AutoConfig.from_pretrained(source, **kwargs)
            check_family(str(getattr(config, "model_type", "")), name)  # before the weights
            processor = AutoProcessor.from_pretrained(source, **kwargs)
            return processor, AutoModelForZeroShotObjectDetection.from_pretrained(source, **kwargs)

        with loading(OPTION, name, progress=progress):
            try:
                processor, model = load_pretrained(load, name, option=OPTION)
            except (OSError, ValueError, KeyError) as error:
                reason = one_line(str(error)) or type(error).__name__
                raise InputError(f"{OPTION} {name}: cannot load a zero-shot detector ({reason})") from None
            model = model.to(device=device, dtype=torch_dtype)
        return cls(model, processor, device=device, name=name)

    # -- detection ------------------------------------------------------------------------

    def detect(self, images: Sequence[Picture], queries: Sequence[Sequence[str]], min_score: float
               ) -> list[list[Detection]]:
        """Detections of ``queries[k]`` (category names) in ``images[k]`` with a score at least
        ``min_score``, best first, at most ``MAX_DETECTIONS`` per image."""
        if len(images) != len(queries):
            raise ValueError(f"{len(images)} images but {len(queries)} query lists")
        found: list[list[Detection]] = [[] for _ in images]
        # Images of one size per pass: a padded image is not the image alone to Grounding DINO.
        by_size: dict[tuple[int, int], list[int]] = {}
        for k, phrases in enumerate(queries):
            if phrases:
                by_size.setdefault(image_size(images[k]), []).append(k)
        run = self._owl if self.family == "owl" else self._dino
        for same in by_size.values():
            for start in range(0, len(same), self.batch):
                part = same[start:start + self.batch]
                pixels = to_device([images[k] for k in part], self.device)
                sizes = [(int(p.shape[1]), int(p.shape[2])) for p in pixels]
                asked = [list(dict.fromkeys(queries[k])) for k in part]
                for k, detections in zip(part, run(pixels, sizes, asked, min_score), strict=True):
                    found[k] = sorted(detections, key=lambda d: -d.score)[:MAX_DETECTIONS]
        return found

    def _owl(self, pixels: list[torch.Tensor], sizes: list[tuple[int, int]], queries: list[list[str]],
             min_score: float) -> list[list[Detection]]:
        import torch

        assert isinstance(self.pixels, OwlPixels)
        model = self.model
        width = max(len(q) for q in queries)
        embeddings = self._owl_texts([p for q in queries for p in q])
        dim = embeddings[queries[0][0]].shape[-1]
        with torch.inference_mode():
            values = self.pixels.batch(pixels, self.dtype)
            feature_map = model.image_embedder(pixel_values=values)[0]
            batch, rows, columns, hidden = feature_map.shape
            image_feats = feature_map.reshape(batch, rows * columns, hidden)
            query = torch.zeros(batch, width, dim, device=self.device, dtype=feature_map.dtype)
            mask = torch.zeros(batch, width, device=self.device, dtype=torch.bool)
            for k, phrases in enumerate(queries):
                query[k, : len(phrases)] = torch.stack([embeddings[p] for p in phrases]).to(feature_map.dtype)
                mask[k, : len(phrases)] = True
            logits = model.class_predictor(image_feats, query, mask)[0]
            boxes = model.box_predictor(image_feats, feature_map)
            scores, labels = torch.sigmoid(logits.float()).max(dim=-1)
            scores_host, labels_host = scores.cpu().numpy(), labels.cpu().numpy()
            boxes_host = boxes.float().cpu().numpy()
        results = []
        for k, (height, width_) in enumerate(sizes):
            side = float(max(height, width_))  # boxes are relative to the padded square
            results.append(_detections(scores_host[k], labels_host[k], boxes_host[k], queries[k], min_score,
                                       (side, side), (width_, height)))
        return results

    def _owl_texts(self, phrases: list[str]) -> dict[str, torch.Tensor]:
        """Each phrase's query embedding (as the model's forward normalises it), from the cache
        or through the text tower, alone on a CPU and in passes of a fixed shape elsewhere, so
        that an embedding depends on its phrase alone."""
        import torch

        found = {}
        missing = []
        for phrase in dict.fromkeys(phrases):
            if phrase in self._texts:
                self._texts.move_to_end(phrase)
                found[phrase] = self._texts[phrase]
            else:
                missing.append(phrase)
        tower = getattr(self.model, str(self.model.config.model_type))
        context = int(self.model.config.text_config.max_position_embeddings)
        size = self.text_batch
        for start in range(0, len(missing), size):
            part = missing[start:start + size]
            texts = [OWL_PROMPT.format(p) for p in part] + [""] * (size - len(part))
            tokens = self.processor.tokenizer(texts, padding="max_length", truncation=True,
                                              max_length=context, return_tensors="pt")
            with torch.inference_mode():
                output = tower.get_text_features(input_ids=tokens["input_ids"].to(self.device),
                                                 attention_mask=tokens["attention_mask"].to(self.device))
                rows = output.pooler_output if hasattr(output, "pooler_output") else output
                rows = rows / torch.linalg.norm(rows, ord=2, dim=-1, keepdim=True)
            for phrase, row in zip(part, rows, strict=False):
                found[phrase] = row.clone()
                self._texts[phrase] = found[phrase]
                while len(self._texts) > TEXT_CACHE_SIZE:
                    self._texts.popitem(last=False)
        return found

    def _dino(self, pixels: list[torch.Tensor], sizes: list[tuple[int, int]], queries: list[list[str]],
              min_score: float) -> list[list[Detection]]:
        """One pass per chunk of categories that fits the model's text length."""
        import torch

        assert isinstance(self.pixels, DinoPixels)
        prompts = [self._dino_prompts(q) for q in queries]
        results: list[list[Detection]] = [[] for _ in pixels]
        with torch.inference_mode():
            values, pixel_mask = self.pixels.batch(pixels, self.dtype)
            for chunk in range(max(len(p) for p in prompts)):
                rows = [k for k, p in enumerate(prompts) if len(p) > chunk]
                ids, spans = zip(*(prompts[k][chunk] for k in rows), strict=True)
                length = max(len(i) for i in ids)
                pad = int(self.processor.tokenizer.pad_token_id or 0)
                device = self.device
                input_ids = torch.tensor([[*i, *[pad] * (length - len(i))] for i in ids], device=device)
                attention = torch.tensor([[1] * len(i) + [0] * (length - len(i)) for i in ids], device=device)
                index = torch.tensor(rows, device=device)
                output = self.model(pixel_values=values[index], pixel_mask=pixel_mask[index],
                                    input_ids=input_ids, attention_mask=attention,
                                    token_type_ids=torch.zeros_like(input_ids))
                probabilities = torch.sigmoid(output.logits.float())
                for n, k in enumerate(rows):
                    names = [name for name, _ in spans[n]]
                    per_category = torch.stack([probabilities[n, :, a:b].max(dim=-1).values
                                                for _, (a, b) in spans[n]], dim=-1)
                    scores, labels = per_category.max(dim=-1)
                    height, width = sizes[k]
                    boxes = output.pred_boxes[n].float().cpu().numpy()
                    results[k].extend(_detections(scores.cpu().numpy(), labels.cpu().numpy(), boxes, names,
                                                  min_score, (width, height), (width, height)))
        return results

    def _dino_prompts(self, categories: list[str]) -> list[tuple[list[int], list[Span]]]:
        """``categories`` as Grounding DINO prompts (``[CLS] dog . hot dog . [SEP]``), split so
        that each fits the model's text length: the token ids and, per category, its name and
        the span of its tokens."""
        tokenizer = self.processor.tokenizer
        limit = int(getattr(self.model.config, "max_text_len", 256))
        dot = int(tokenizer.convert_tokens_to_ids("."))
        chunks: list[tuple[list[int], list[Span]]] = []
        ids: list[int] = [int(tokenizer.cls_token_id)]
        spans: list[Span] = []
        for name in categories:
            # The prompt's separator is "."; a name's own periods ("st. bernard") would split it.
            words = " ".join(name.replace(".", " ").lower().split())
            tokens = tokenizer(words, add_special_tokens=False).input_ids
            tokens = list(tokens)[: limit - 3] or [int(tokenizer.unk_token_id or 0)]
            if spans and len(ids) + len(tokens) + 2 > limit:
                chunks.append(([*ids, int(tokenizer.sep_token_id)], spans))
                ids, spans = [int(tokenizer.cls_token_id)], []
            spans.append((name, (len(ids), len(ids) + len(tokens))))
            ids += [*tokens, dot]
        chunks.append(([*ids, int(tokenizer.sep_token_id)], spans))
        return chunks


def _detections(scores: NDArray[np.float32], labels: NDArray[np.int64], boxes: NDArray[np.float32],
                names: Sequence[str], min_score: float, scale: tuple[float, float], size: tuple[int, int]
                ) -> list[Detection]:
    """The boxes (``cx, cy, w, h`` relative to ``scale``: width, height) whose score reaches
    ``min_score``, in pixels, cut to the image (``size``: width, height); one left with no area
    is none. On the host, in numpy: the model's outputs come over once per batch, and a few
    float32 operations on a hundred boxes cost less there than their launches on a device."""
    keep = np.flatnonzero(scores >= min_score)
    if keep.size > MAX_DETECTIONS:  # the best, ties to the earlier
        keep = keep[np.argsort(-scores[keep], kind="stable")[:MAX_DETECTIONS]]
    kept = boxes[keep].astype(np.float32)
    centre_x, centre_y, half_w, half_h = kept[:, 0], kept[:, 1], kept[:, 2] / 2, kept[:, 3] / 2
    corners = np.stack([centre_x - half_w, centre_y - half_h, centre_x + half_w, centre_y + half_h], axis=-1)
    corners = corners * np.array([scale[0], scale[1], scale[0], scale[1]], dtype=np.float32)
    limit = np.array([size[0], size[1], size[0], size[1]], dtype=np.float32)
    corners = np.minimum(np.maximum(corners, np.float32(0)), limit)
    out = []
    for score, label, box in zip(scores[keep].tolist(), labels[keep].tolist(), corners.tolist(), strict=True):
        if box[2] > box[0] and box[3] > box[1]:
            out.append(Detection(names[int(label)], float(score), as_xywh(box)))
    return out

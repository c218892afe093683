"""The verifier's costs: CPU per plan outside the models, the detector per candidate, the
full-size detectors' FLOPs, and `acp score dataset` with and without a detector.

    python bench/bench_verify.py [--plans 8] [--repeats 5] [--images 5000] [--parts 1234]

1. **CPU per plan outside the models** (the issue's goal: at most 15 ms at 512 px, K=4, with the
   verifier on). A plan of 3 objects, K=4 random 512 px candidates, scored as ``acp generate``
   scores a batch: ``Verifier.check_plans`` (the detector and the matching) then
   ``Scorer.score_many`` (CLIS-I of the images and crops, the candidates' records), on the
   CPU with one torch thread. The models are tiny (``acp.testing``'s shapes) but take inputs of
   the real models' sizes (CLIP 224 px, OWLv2 960 px), so every preprocessing step handles as
   many pixels as with the released models. Method: ``time.process_time`` around the whole
   call, minus the CPU spent inside ``torch.nn.Module`` calls (global forward hooks add up the
   outermost module call's ``process_time``): what is left is acp's own work and the
   preprocessing. On a CPU the tensor preprocessing runs there; on a GPU the same operations
   are kernels and cost the CPU only their launches, so this figure is an upper bound of a GPU
   worker's. Candidates come as the GLIGEN renderer hands them over (each image also a uint8
   tensor on the device), and, second, as read from files (PIL, copied to the device once for
   both models). Passes are sized as acp sizes them on a GPU (every image of a call in one
   pass: the goal's case) and, third, as on a CPU (one image per pass, which multiplies the
   per-pass host work by the number of images). Also shown: the preprocessing alone, before
   (transformers' processors on PIL: ``CLIPProcessor`` on the image and its square-padded
   crops, ``Owlv2Processor`` on the image) and after (``acp.score.pixels`` on tensors),
   medians over ``--repeats``.
2. **The verifier per candidate**: ``Verifier.check_plans`` on 512 px candidates with the tiny
   OWLv2 and Grounding DINO of ``acp.testing`` (64 px inputs), wall and CPU ms, one thread.
3. **FLOPs per image of the full-size detectors**, counted with
   ``torch.utils.flop_counter.FlopCounterMode`` over one forward pass of the real architecture
   with random weights on the CPU (the configs are written here from the published
   architectures, nothing is downloaded; the meta device cannot run either forward: OWLv2
   calls ``Tensor.item()``, Grounding DINO mixes in CPU tensors): OWLv2 base patch 16
   (ViT-B/16 at 960 px, CLIP text tower, 3 queries) and
   Grounding DINO tiny (Swin-T, BERT-base text, 6+6 layers, 900 queries, 800 x 800 for a
   square candidate, a 3-category prompt), next to GLIGEN's ~49.6 TFLOP per 512 px candidate
   (25 steps with guidance). FlopCounterMode counts matrix products and convolutions (2 FLOPs
   a multiply-add; attention is run eagerly, as matrix products, so that it is counted), not
   element-wise work or grid sampling (Grounding DINO's deformable attention), so the figures
   are a little low.
4. **`acp score dataset` per image**, with and without ``--detector-model`` (tiny CLIP, tiny
   OWLv2), on a synthetic COCO set of ``--images`` 32 x 32 images (``bench_score_dataset``'s),
   wall seconds of the command in a fresh process.

Figures (CPU only, no GPU; torch 2.13; a machine of 2 cores. Parts 1, 2 and 4: 2026-12-08,
quiet (load average about 1), after each candidate's pixels stayed on the device, each part
run alone with ``--parts N``; part 3: 2026-12-07, busy):

    1. CPU per plan, 512 px, K=4, 3 objects, verifier on (tiny OWLv2 at 960 px, tiny CLIP at
       224 px), 1 torch thread, median of 8 plans x 5:
       batched as on a GPU, candidates from the renderer (uint8 on the device): outside the
       models, all on the CPU: 346.8 ms; of which acp.score.pixels' tensor operations
       336.5 ms (kernels on a GPU) and the rest 10.1 ms (host work; goal <= 15 ms); inside
       the tiny models: 52.2 ms
       the same, candidates read from files (PIL, copied to the device once): the rest 12.8 ms
       batched as on a CPU (one image per pass): the rest 18.4 ms from the renderer, 19.4 ms
       from files
       preprocessing alone, before (processors on PIL) -> after (acp.score.pixels on CPU
       tensors): CLIP 65.8 -> 54.6 ms, OWLv2 1086.1 -> 275.2 ms
    2. The verifier per 512 px candidate, tiny detectors of acp.testing (64 px inputs), CPU,
       1 torch thread, median of 5:
       OWLv2             38.55 ms wall,   38.54 ms CPU per candidate
       Grounding DINO    26.75 ms wall,   26.75 ms CPU per candidate
    3. FLOPs per image of the full-size detectors (random weights, FlopCounterMode, 3
       categories), against GLIGEN's ~49.6 TFLOP per 512 px candidate:
       OWLv2 base/16, 960 px          1.117 TFLOP per image (2.25 % of a GLIGEN candidate)
       Grounding DINO tiny, 800 px    0.502 TFLOP per image (1.01 % of a GLIGEN candidate)
    4. acp score dataset, 5000 images of 32 x 32 px, 17432 boxes, tiny CLIP, --batch-size 64,
       CPU, wall seconds of the command:
       without a detector       68.9 s,   13.78 ms per image
       with tiny OWLv2         101.6 s,   20.31 ms per image

Read with care: part 1's host work was 21.3 ms batched as on a GPU (34.7 ms as on a CPU) at
8ee24d4, this bench run against it on the same quiet machine the same hour; the changes since:
the renderer's uint8 tensor read by both models (no copy back, no second copy), the float
conversion moved into the device preprocessing, the detector's outputs brought to the host once
per batch and cut to boxes in numpy (a few float32 operations on a hundred boxes cost less there
than their launches), non-maximum suppression from one IoU matrix per image, ``crop_box`` in
Python floats (same arithmetic, a twentieth of the cost). Figures from one run to the next on
this machine moved by up to 4 ms (13.0-17.8 ms for the CPU-batched case). Part 1's figure is
what a CPU does standing in for the GPU: the launches of the device operations (a few hundred
a plan) are in its "tensor operations", not in the host work; no GPU was lent to measure them.
On 2026-12-07, on the same machine busy with other jobs, parts 2 and 4 read several times
slower (OWLv2 85.0 ms and Grounding DINO 89.1 ms wall per candidate; ``score dataset`` 84.5 ms
per image without a detector and 311.2 ms with it): on a shared machine read them side by side
only within one run. In part 4 the detector adds the tiny model's forward, one image at a time
on a CPU, and the label-fidelity COCOeval (0.4 s in all).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
GLIGEN_TFLOP = 49.6  # one 512 px GLIGEN candidate: 25 steps, classifier-free guidance
SIDE = 512
CATEGORIES = ("dog", "frisbee", "bench")


class ModelClock:
    """CPU seconds spent inside ``torch.nn.Module`` calls while entered: global forward hooks
    add up the ``process_time`` of each outermost module call."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self._depth = 0
        self._start = 0.0

    def __enter__(self) -> ModelClock:
        from torch.nn.modules.module import register_module_forward_hook, register_module_forward_pre_hook

        self._handles = [register_module_forward_pre_hook(self._before),
                         register_module_forward_hook(self._after)]
        return self

    def __exit__(self, *exc: Any) -> None:
        for handle in self._handles:
            handle.remove()

    def _before(self, module: Any, args: Any) -> None:
        if self._depth == 0:
            self._start = time.process_time()
        self._depth += 1

    def _after(self, module: Any, args: Any, output: Any) -> None:
        self._depth -= 1
        if self._depth == 0:
            self.seconds += time.process_time() - self._start


def make_plan(n: int) -> Any:
    from acp.schema import ScenePlan

    shift = (n % 5) * 0.05
    return ScenePlan.model_validate({
        "id": f"bench-{n:04d}", "caption": f"A brown dog catches a red frisbee next to a bench, scene {n}.",
        "background": "a sunny park", "width": SIDE, "height": SIDE, "planner": "heuristic",
        "objects": [
            {"id": 0, "category": "dog", "description": "a brown dog", "bbox": [0.05 + shift, 0.4, 0.4, 0.5]},
            {"id": 1, "category": "frisbee", "description": "a red frisbee", "bbox": [0.6, 0.1, 0.2, 0.15]},
            {"id": 2, "category": "bench", "description": "a wooden bench", "bbox": [0.5, 0.6, 0.45, 0.3]},
        ]})


def candidates(plan: Any, k: int, seed: int) -> list[Any]:
    from PIL import Image

    from acp.render.base import RenderedCandidate
    from acp.schema import Candidate

    rng = np.random.default_rng(seed)
    return [RenderedCandidate(
        Candidate(plan_id=plan.id, index=i, seed=i, path=f"{plan.id}/{i}.png", model="bench", steps=25,
                  guidance=7.5, beta=0.3, width=SIDE, height=SIDE, prompt=plan.caption,
                  phrases=[o.description for o in plan.objects]),
        Image.fromarray(rng.integers(0, 255, (SIDE, SIDE, 3), dtype=np.uint8))) for i in range(k)]


def full_size_input_models() -> tuple[Any, Any]:
    """The tiny CLIP and OWLv2 of ``acp.testing``, their vision towers taking the released
    models' input sizes (CLIP 224 px in 32 px patches, OWLv2 960 px in 64 px patches)."""
    from transformers import (
        CLIPConfig,
        CLIPModel,
        CLIPProcessor,
        Owlv2Config,
        Owlv2ForObjectDetection,
        Owlv2Processor,
    )
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil
    from transformers.models.owlv2.image_processing_pil_owlv2 import Owlv2ImageProcessorPil

    from acp import testing
    from acp.score.detector import ZeroShotDetector
    from acp.score.image import ImageScorer

    tokenizer = testing.tiny_tokenizer()
    text = testing._text_config_kwargs(tokenizer)
    vision = testing._tiny_vision_config().to_dict()
    torch.manual_seed(0)
    clip_vision = vision | {"image_size": 224, "patch_size": 32}
    clip = CLIPModel(CLIPConfig(text_config=text, vision_config=clip_vision,
                                projection_dim=32)).eval()
    clip_processor = CLIPProcessor(image_processor=CLIPImageProcessorPil(
        size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224}), tokenizer=tokenizer)
    owl_tokenizer = testing.tiny_tokenizer()
    owl_tokenizer.model_max_length = testing.OWL_TEXT_LENGTH
    owl = Owlv2ForObjectDetection(Owlv2Config(
        text_config=text | {"max_position_embeddings": testing.OWL_TEXT_LENGTH},
        vision_config=vision | {"image_size": 960, "patch_size": 64}, projection_dim=32)).eval()
    owl_processor = Owlv2Processor(image_processor=Owlv2ImageProcessorPil(size={"height": 960, "width": 960}),
                                   tokenizer=owl_tokenizer)
    return (ImageScorer(clip, clip_processor, device="cpu", name="tiny-clip-224"),
            ZeroShotDetector(owl, owl_processor, device="cpu", name="tiny-owlv2-960"))


def clip_before(scorer: Any, detector: Any, plan: Any, rendered: list[Any]) -> None:
    """CLIP's processor on PIL, as CLIS-I did it: the image and its square-padded crops."""
    from acp.score.image import crop_box, square_pad

    images = []
    for r in rendered:
        images.append(square_pad(r.image))
        for obj in plan.objects:
            images.append(square_pad(r.image.crop(crop_box(obj.bbox, *r.image.size))))
    scorer.processor(images=images, return_tensors="pt")


def owl_before(scorer: Any, detector: Any, plan: Any, rendered: list[Any]) -> None:
    """OWLv2's processor on PIL, as a verifier would do it the processor's way."""
    detector.processor.image_processor([r.image for r in rendered], return_tensors="pt")


def clip_after(scorer: Any, detector: Any, plan: Any, rendered: list[Any]) -> None:
    """The same on tensors (``acp.score.pixels``), as CLIS-I now does it."""
    from acp.score.image import CLIP_MEAN_RGB, crop_box
    from acp.score.pixels import square, to_device

    inputs = []
    for pixels in to_device([r.image for r in rendered], "cpu"):
        _, height, width = pixels.shape
        inputs.append(square(pixels, CLIP_MEAN_RGB))
        for obj in plan.objects:
            left, top, right, bottom = crop_box(obj.bbox, width, height)
            inputs.append(square(pixels[:, top:bottom, left:right], CLIP_MEAN_RGB))
    scorer.pixels.batch(inputs, torch.float32)


def owl_after(scorer: Any, detector: Any, plan: Any, rendered: list[Any]) -> None:
    from acp.score.pixels import to_device

    detector.pixels.batch(to_device([r.image for r in rendered], "cpu"), torch.float32)


class DeviceWork:
    """CPU seconds inside ``acp.score.pixels``' tensor operations (the ``batch`` of each
    model's pixels and ``square``), which run on the device where there is one; patched in
    while entered."""

    def __init__(self, scorer: Any, detector: Any) -> None:
        import acp.score.image

        self.seconds = 0.0
        self._depth = 0
        self._patched = [(type(scorer.pixels), "batch"), (type(detector.pixels), "batch"),
                         (acp.score.image, "square")]

    def _timed(self, function: Any) -> Any:
        def call(*args: Any, **kwargs: Any) -> Any:
            start = time.process_time()
            self._depth += 1
            try:
                return function(*args, **kwargs)
            finally:
                self._depth -= 1
                if self._depth == 0:
                    self.seconds += time.process_time() - start
        return call

    def __enter__(self) -> DeviceWork:
        self._saved = [(owner, name, getattr(owner, name)) for owner, name in self._patched]
        for owner, name, function in self._saved:
            setattr(owner, name, self._timed(function))
        return self

    def __exit__(self, *exc: Any) -> None:
        for owner, name, function in self._saved:
            setattr(owner, name, function)


def on_device(items: list[Any]) -> list[Any]:
    """``items`` as the GLIGEN renderer hands them over: each image also as a ``(3, H, W)`` uint8
    tensor on the device (here the CPU), made by the renderer before the scorers run."""
    return [r._replace(pixels=torch.from_numpy(np.array(r.image)).permute(2, 0, 1)) for r in items]


def cpu_per_plan(args: argparse.Namespace) -> None:
    from acp.score.candidates import Scorer
    from acp.score.detector import MAX_BATCH as DETECTOR_BATCH
    from acp.score.pixels import to_device
    from acp.score.verify import Verifier

    scorer, detector = full_size_input_models()
    verifier = Verifier(detector)
    score = Scorer(scorer)
    plans = [make_plan(n) for n in range(args.plans)]
    from_files = [candidates(plan, args.candidates, n) for n, plan in enumerate(plans)]
    rendered = [on_device(items) for items in from_files]

    def whole(plan: Any, items: list[Any]) -> tuple[float, float, float]:
        """CPU seconds outside the models, of which in the tensor preprocessing; in the models.
        What ``acp.generate.stages.finish`` does with a batch: candidates without a device
        tensor copied there once for both models, then the detector, then CLIS-I."""
        clock, device = ModelClock(), DeviceWork(scorer, detector)
        start = time.process_time()
        with clock, device:
            if any(r.pixels is None for r in items):
                pixels = to_device([r.image for r in items], scorer.device)
                items = [r._replace(pixels=p) for r, p in zip(items, pixels, strict=True)]
            checks = verifier.check_plans([(plan, r.picture) for r in items])
            score.score_many([(plan, items, None)], checks=[checks], verify=verifier.settings)
        total = time.process_time() - start
        return total - clock.seconds, device.seconds, clock.seconds

    def cpu(call: Any, plan: Any, items: list[Any]) -> float:
        start = time.process_time()
        call(scorer, detector, plan, items)
        return time.process_time() - start

    def batching(accelerator: bool) -> None:
        """Pass sizes as acp sets them on an accelerator (every image of a call in one pass)
        or on a CPU (one image per pass, for rounding that does not depend on the batch)."""
        scorer.image_batch = scorer.max_batch if accelerator else 1
        detector.batch = DETECTOR_BATCH if accelerator else 1

    runs: dict[str, list[float]] = {}
    for accelerator in (True, False):
        batching(accelerator)
        whole(plans[0], rendered[0])  # warm-up: text embeddings cached, as in a long run
        mode = "" if accelerator else "cpu_"
        for repeat in range(args.repeats):
            for plan, items, files in zip(plans, rendered, from_files, strict=True):
                for source, given in (("", items), ("files_", files))[:: 1 if repeat % 2 else -1]:
                    own, device, model = whole(plan, given)
                    runs.setdefault(mode + source + "own", []).append(own)
                    runs.setdefault(mode + source + "device", []).append(device)
                    runs.setdefault(mode + source + "host", []).append(own - device)
                    runs.setdefault(mode + source + "model", []).append(model)
    batching(False)
    calls = (("clip_before", clip_before), ("clip_after", clip_after), ("owl_before", owl_before),
             ("owl_after", owl_after))
    for repeat in range(args.repeats):
        for plan, files in zip(plans, from_files, strict=True):
            for name, call in calls[:: 1 if repeat % 2 else -1]:  # alternating order: drifting load
                runs.setdefault(name, []).append(cpu(call, plan, files))
    m = {name: statistics.median(values) * 1e3 for name, values in runs.items()}
    print(f"1. CPU per plan, {SIDE} px, K={args.candidates}, 3 objects, verifier on (tiny OWLv2 at 960 px, "
          f"tiny CLIP at 224 px), 1 torch thread, median of {args.plans} plans x {args.repeats}:")
    print(f"   batched as on a GPU, candidates from the renderer (uint8 on the device): outside the models, "
          f"all on the CPU: {m['own']:.1f} ms; of which acp.score.pixels' tensor operations "
          f"{m['device']:.1f} ms (kernels on a GPU) and the rest {m['host']:.1f} ms (host work; goal "
          f"<= 15 ms); inside the tiny models: {m['model']:.1f} ms")
    print(f"   the same, candidates read from files (PIL, copied to the device once): the rest "
          f"{m['files_host']:.1f} ms")
    print(f"   batched as on a CPU (one image per pass): the rest {m['cpu_host']:.1f} ms from the renderer, "
          f"{m['cpu_files_host']:.1f} ms from files")
    print(f"   preprocessing alone, before (processors on PIL) -> after (acp.score.pixels on CPU tensors): "
          f"CLIP {m['clip_before']:.1f} -> {m['clip_after']:.1f} ms, "
          f"OWLv2 {m['owl_before']:.1f} -> {m['owl_after']:.1f} ms")


def verifier_per_candidate(args: argparse.Namespace) -> None:
    from acp import testing
    from acp.score.detector import ZeroShotDetector
    from acp.score.verify import Verifier

    plans = [make_plan(n) for n in range(args.plans)]
    rendered = [candidates(plan, args.candidates, n) for n, plan in enumerate(plans)]
    print(f"2. The verifier per {SIDE} px candidate, tiny detectors of acp.testing "
          f"({testing.DETECTOR_IMAGE_SIZE} px inputs), CPU, 1 torch thread, median of {args.repeats}:")
    for name, build in (("OWLv2", testing.tiny_owlv2), ("Grounding DINO", testing.tiny_grounding_dino)):
        model, processor = build()
        verifier = Verifier(ZeroShotDetector(model, processor, device="cpu", name=name))
        items = [(plan, r.image) for plan, rs in zip(plans, rendered, strict=True) for r in rs]
        verifier.check_plans(items[:1])
        walls, cpus = [], []
        for _ in range(args.repeats):
            wall, cpu = time.perf_counter(), time.process_time()
            verifier.check_plans(items)
            walls.append((time.perf_counter() - wall) / len(items))
            cpus.append((time.process_time() - cpu) / len(items))
        print(f"   {name:15} {statistics.median(walls) * 1e3:7.2f} ms wall, "
              f"{statistics.median(cpus) * 1e3:7.2f} ms CPU per candidate")


def owlv2_base() -> tuple[Any, dict[str, Any]]:
    """google/owlv2-base-patch16-ensemble's architecture: ViT-B/16 at 960 px, CLIP's text tower."""
    from transformers import Owlv2Config, Owlv2ForObjectDetection

    config = Owlv2Config(
        text_config={"vocab_size": 49408, "hidden_size": 512, "intermediate_size": 2048,
                     "num_hidden_layers": 12,
                     "num_attention_heads": 8, "max_position_embeddings": 16},
        vision_config={"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
                       "num_attention_heads": 12, "image_size": 960, "patch_size": 16},
        projection_dim=512)
    _eager(config, config.text_config, config.vision_config)
    with torch.device("cpu"):
        model = Owlv2ForObjectDetection(config).eval()
        inputs = {"pixel_values": torch.zeros(1, 3, 960, 960),
                  "input_ids": torch.zeros(len(CATEGORIES), 16, dtype=torch.long),
                  "attention_mask": torch.ones(len(CATEGORIES), 16, dtype=torch.long)}
    return model, inputs


def grounding_dino_tiny() -> tuple[Any, dict[str, Any]]:
    """IDEA-Research/grounding-dino-tiny's architecture: Swin-T, BERT-base, 6+6 layers, 900
    queries, a 800 x 800 input (a square candidate) and a prompt of the three categories."""
    from transformers import BertConfig, GroundingDinoConfig, GroundingDinoForObjectDetection, SwinConfig

    backbone = SwinConfig(image_size=224, patch_size=4, embed_dim=96, depths=[2, 2, 6, 2],
                          num_heads=[3, 6, 12, 24], window_size=7, out_indices=[2, 3, 4])
    config = GroundingDinoConfig(
        backbone_config=backbone, text_config=BertConfig(), num_queries=900, encoder_layers=6,
        decoder_layers=6,
        d_model=256, encoder_ffn_dim=2048, decoder_ffn_dim=2048, encoder_attention_heads=8,
        decoder_attention_heads=8, num_feature_levels=4, encoder_n_points=4, decoder_n_points=4,
        max_text_len=256, two_stage=True)
    _eager(config, config.backbone_config, config.text_config)
    tokens = 2 + sum(len(c.split()) + 1 for c in CATEGORIES)  # [CLS] dog . frisbee . bench . [SEP]
    with torch.device("cpu"):
        model = GroundingDinoForObjectDetection(config).eval()
        inputs = {"pixel_values": torch.zeros(1, 3, 800, 800),
                  "pixel_mask": torch.ones(1, 800, 800, dtype=torch.long),
                  "input_ids": torch.ones(1, tokens, dtype=torch.long),
                  "attention_mask": torch.ones(1, tokens, dtype=torch.long),
                  "token_type_ids": torch.zeros(1, tokens, dtype=torch.long)}
    return model, inputs


def _eager(*configs: Any) -> None:
    """Attention as matrix products, which FlopCounterMode counts (it has no formula for the
    CPU's fused attention kernel, and would leave attention out)."""
    for config in configs:
        config._attn_implementation = "eager"


def flops(args: argparse.Namespace) -> None:
    from torch.utils.flop_counter import FlopCounterMode

    print("3. FLOPs per image of the full-size detectors (random weights, FlopCounterMode, "
          f"{len(CATEGORIES)} "
          f"categories), against GLIGEN's ~{GLIGEN_TFLOP} TFLOP per {SIDE} px candidate:")
    for name, build in (("OWLv2 base/16, 960 px", owlv2_base),
                        ("Grounding DINO tiny, 800 px", grounding_dino_tiny)):
        try:
            model, inputs = build()
            counter = FlopCounterMode(display=False)
            with torch.inference_mode(), counter:
                model(**inputs)
            total = counter.get_total_flops() / 1e12
        except Exception as error:  # a model whose forward the meta device cannot run
            print(f"   {name:28} not counted: {type(error).__name__}: {str(error).splitlines()[0][:200]}")
            continue
        print(f"   {name:28} {total:7.3f} TFLOP per image ({100 * total / GLIGEN_TFLOP:.2f} % of a GLIGEN "
              f"candidate)")


def dataset_seconds(args: argparse.Namespace) -> None:
    sys.path.insert(0, str(ROOT / "bench"))
    from bench_score_dataset import write_dataset

    from acp import testing

    with tempfile.TemporaryDirectory(prefix="bench-verify-") as scratch:
        root = Path(scratch)
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()  # "Writing model shards" bars
        models = root / "models"
        for name, build in (("clip", testing.tiny_clip), ("owlv2", testing.tiny_owlv2)):
            model, processor = build()
            model.save_pretrained(models / name)
            processor.save_pretrained(models / name)
        coco, boxes = write_dataset(root / "set", args.images)
        print(f"4. acp score dataset, {args.images} images of 32 x 32 px, {boxes} boxes, tiny CLIP, "
              "--batch-size 64, CPU, wall seconds of the command:")
        detector = ["--detector-model", str(models / "owlv2")]
        for label, extra in (("without a detector", []), ("with tiny OWLv2", detector)):
            command = [sys.executable, "-m", "acp", "score", "dataset", str(coco), "--images",
                       str(root / "set" / "images"), "-o", str(root / f"report-{len(extra)}"),
                       "--clip-model", str(models / "clip"), "--device", "cpu", "--batch-size", "64",
                       "--no-progress", *extra]
            start = time.perf_counter()
            result = subprocess.run(command, cwd=root, capture_output=True, text=True, check=False,
                                    env={**os.environ, "PYTHONPATH": str(ROOT)})
            seconds = time.perf_counter() - start
            if result.returncode not in (0, 1):
                raise SystemExit(result.stderr[-2000:])
            print(f"   {label:20} {seconds:8.1f} s, {1e3 * seconds / args.images:7.2f} ms per image",
                  flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--plans", type=int, default=8)
    parser.add_argument("--candidates", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--images", type=int, default=5000, help="images of the score dataset set")
    parser.add_argument("--parts", default="1234", help="which parts to run (digits of the list above)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    parts = (("1", cpu_per_plan), ("2", verifier_per_candidate), ("3", flops), ("4", dataset_seconds))
    for part, run in parts:
        if part in args.parts:
            run(args)


if __name__ == "__main__":
    main()

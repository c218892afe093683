"""What the CLIP text-embedding cache saves on a run whose plans repeat their phrases.

    .venv/bin/python bench/bench_clip_cache.py [--plans 200] [--categories 10] [--repeats 3]

Plans come from the offline planner over the first ``--categories`` COCO categories (1-4
objects each), and each is scored with K=4 random 64 px images through the tiny CLIP
(acp.testing), one ``ImageScorer.score`` call per plan as ``acp generate`` does. Three ways of
embedding the texts, each on a fresh scorer, the order rotating between repeats, one torch
thread, medians:

- before: the code before the cache, every text of a call in one padded batch;
- cache off: ``text_cache_size=0``, each text through the text tower alone (acp on a CPU);
- cache on: the default, 50,000 texts;
- cache on, 32/pass: as on a GPU, passes of 32 texts padded to 77 tokens (its CPU times say
  little: the padding that a GPU gets nearly free is paid in full here; count the passes).

Text-tower time is the CPU time inside its forward calls; score time is the whole ``score`` call.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import numpy as np
import torch
from PIL import Image

from acp import testing
from acp.concepts import sample_scenes
from acp.plan.heuristic import HeuristicPlanner
from acp.plan.priors import PRIORS
from acp.plan.run import make_requests
from acp.schema import ScenePlan
from acp.score.image import ImageScorer

K = 4


def make_plans(count: int, categories: int) -> list[ScenePlan]:
    requests = make_requests(sample_scenes(list(PRIORS)[:categories], count, (1, 4), seed=0), 0, 64, 64)
    return [outcome.plan for outcome in HeuristicPlanner().plan_many(requests) if outcome.plan is not None]


def embed_texts_before(scorer: ImageScorer, texts: Any) -> np.ndarray:
    """``ImageScorer.embed_texts`` as it was before the cache: one padded batch per call."""
    tokens = scorer.processor(text=list(texts), return_tensors="pt", padding=True, truncation=True)
    with torch.inference_mode():
        pooled = scorer.model.text_model(
            input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"]
        ).pooler_output
        rows = scorer.model.text_projection(pooled).float().numpy()
        return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def score_run(mode: str, plans: list[ScenePlan], images: list[list[Image.Image]]) -> dict[str, float]:
    model, processor = testing.tiny_clip()
    scorer = ImageScorer(model, processor, device="cpu", text_cache_size=0 if mode == "cache off" else 50_000)
    if mode == "cache on, 32/pass":
        scorer.text_batch = 32
    if mode == "before":
        scorer.embed_texts = lambda texts: embed_texts_before(scorer, texts)  # type: ignore[method-assign]
    tower = {"calls": 0, "texts": 0, "cpu": 0.0}
    started: list[float] = []

    def before(_module: Any, _args: Any, kwargs: Any) -> None:
        tower["calls"] += 1
        tower["texts"] += len(kwargs["input_ids"])
        started.append(time.process_time())

    def after(*_: Any) -> None:
        tower["cpu"] += time.process_time() - started.pop()

    hooks = [scorer.model.text_model.register_forward_pre_hook(before, with_kwargs=True),
             scorer.model.text_model.register_forward_hook(after)]
    start = time.process_time()
    for plan, candidates in zip(plans, images, strict=True):
        scorer.score(plan, candidates)
    total = time.process_time() - start
    for hook in hooks:
        hook.remove()
    cache = scorer.text_cache
    return {**tower, "total": total, "hits": cache.hits, "misses": cache.misses}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--plans", type=int, default=200)
    parser.add_argument("--categories", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    plans = make_plans(args.plans, args.categories)
    rng = np.random.default_rng(0)
    images = [[Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)) for _ in range(K)]
              for _ in plans]
    texts = [t for p in plans for t in (p.caption, *(o.description for o in p.objects))]
    modes = ["before", "cache off", "cache on", "cache on, 32/pass"]
    runs: dict[str, list[dict[str, float]]] = {mode: [] for mode in modes}
    for repeat in range(args.repeats):
        for mode in modes[repeat % len(modes):] + modes[: repeat % len(modes)]:
            runs[mode].append(score_run(mode, plans, images))
    print(f"{len(plans)} plans over {args.categories} categories, K={K}, tiny CLIP on CPU, 1 thread; "
          f"{len(texts)} captions and descriptions, {len(set(texts))} distinct; medians of {args.repeats}:")
    heads = ("text passes", 12), ("texts", 8), ("text ms/plan", 14), ("score ms/plan", 15), ("hit rate", 10)
    print(f"  {'':18}" + "".join(f"{name:>{width}}" for name, width in heads))
    for mode in modes:
        m = {key: statistics.median(r[key] for r in runs[mode]) for key in runs[mode][0]}
        lookups = m["hits"] + m["misses"]
        rate = f"{100 * m['hits'] / lookups:.0f} %" if lookups else "-"
        print(f"  {mode:18}{m['calls']:12.0f}{m['texts']:8.0f}{1e3 * m['cpu'] / len(plans):14.2f}"
              f"{1e3 * m['total'] / len(plans):15.2f}{rate:>10}")


if __name__ == "__main__":
    main()

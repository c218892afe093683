"""CLIS-I with the tiny CLIP, and the VLM judge against the local chat server."""

from __future__ import annotations

import base64
import dataclasses
import io
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from acp.errors import InputError
from acp.llm import ChatSettings, LLMConfigError
from acp.render.base import RenderedCandidate as Rendered
from acp.schema import Candidate, ScenePlan
from acp.score.candidates import Scorer, Thresholds
from acp.score.image import (
    PROMPT,
    ImageScore,
    ImageScorer,
    InstanceScore,
    Scene,
    SceneObject,
    TextEmbeddingCache,
    cosine_to_score,
    crop_box,
)
from acp.score.judge import MAX_FAILURES_IN_A_ROW, Judge, JudgeFailing, JudgeReport, parse_rating
from acp.score.layout import LayoutScorer
from tests.chat_server import ChatServer, Reply, chat_server_fixture, error, ok, trickle  # noqa: F401


@pytest.fixture(scope="session", name="tiny_clip_dir")
def tiny_clip_dir_fixture(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny CLIP of ``acp.testing``, saved as a model folder."""
    from acp.testing import tiny_clip

    folder = tmp_path_factory.mktemp("clip")
    model, processor = tiny_clip()
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def scorer(tiny_clip_dir: Path) -> ImageScorer:
    return ImageScorer.from_pretrained(tiny_clip_dir, device="cpu")


def make_plan(objects: list[tuple[str, str, list[float]]], caption: str = "a cat next to a dog") -> ScenePlan:
    return ScenePlan.model_validate(
        {
            "id": "p1",
            "caption": caption,
            "planner": "heuristic",
            "objects": [
                {"id": k, "category": c, "description": d, "bbox": b} for k, (c, d, b) in enumerate(objects)
            ],
        }
    )


def random_images(count: int, size: tuple[int, int] = (64, 48), seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [
        Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)) for _ in range(count)
    ]


PLAN = make_plan(
    [("cat", "a fluffy cat", [0.1, 0.1, 0.3, 0.4]), ("dog", "a brown dog", [0.5, 0.4, 0.4, 0.5])]
)


@pytest.fixture
def forward_calls(scorer: ImageScorer) -> Iterator[dict[str, int]]:
    calls = {"vision": 0, "text": 0}
    hooks = [
        scorer.model.vision_model.register_forward_hook(
            lambda *_: calls.__setitem__("vision", calls["vision"] + 1)
        ),
        scorer.model.text_model.register_forward_hook(
            lambda *_: calls.__setitem__("text", calls["text"] + 1)
        ),
    ]
    yield calls
    for hook in hooks:
        hook.remove()


def test_all_images_and_crops_of_a_batch_go_through_one_forward_pass(
    scorer: ImageScorer, forward_calls: dict[str, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    other = make_plan([("bird", "a small bird", [0.2, 0.2, 0.2, 0.2])], caption="a bird")
    items = [(Scene.from_plan(PLAN), image) for image in random_images(3)]
    items += [(Scene.from_plan(other), image) for image in random_images(2, seed=1)]
    scorer.text_cache.clear()
    results = scorer.score_scenes(items)
    # Each distinct text once, alone (on a CPU): 2 captions, 4 prompts (cat, dog, bird,
    # background), 3 descriptions; each of the 5 images and 8 crops alone too (on a CPU).
    assert forward_calls == {"vision": 13, "text": 9}
    assert [len(r.objects) for r in results] == [2, 2, 2, 1, 1]
    monkeypatch.setattr(scorer, "image_batch", scorer.max_batch)  # as on an accelerator
    forward_calls.update(vision=0, text=0)
    assert [r.clis_i for r in scorer.score_scenes(items)] == pytest.approx([r.clis_i for r in results])
    assert forward_calls == {"vision": 1, "text": 0}


SCENES = [
    Scene.from_plan(PLAN),
    Scene.from_plan(make_plan([("dog", "a brown dog", [0.1, 0.2, 0.5, 0.5]),
                               ("bird", "a small bird", [0.6, 0.1, 0.2, 0.2])], caption="a dog and a bird")),
    Scene.from_plan(make_plan([("cat", "a black cat", [0.3, 0.3, 0.4, 0.4])], caption="a cat")),
]


def score_all(scorer: ImageScorer, seed: int = 0) -> list[ImageScore]:
    items = [(scene, image) for scene in SCENES for image in random_images(2, seed=seed)]
    return scorer.score_scenes(items)


def test_an_image_embeds_alike_whatever_shares_its_pass_on_the_cpu(scorer: ImageScorer) -> None:
    """How many plans an engine had ready decides which images share a vision pass, and on a
    CPU a row's rounding depends on its batch: a local and a Ray run under load wrote different
    CLIS-I for the same images."""
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (64, 48, 3), dtype=np.uint8)) for _ in range(6)]
    alone = scorer.embed_images([images[0]])[0]
    for n in range(2, 7):
        assert np.array_equal(scorer.embed_images([*images[1:n], images[0]])[-1], alone), n


def test_cached_text_embeddings_give_bit_identical_scores(tiny_clip_dir: Path) -> None:
    cold = ImageScorer.from_pretrained(tiny_clip_dir, device="cpu")
    uncached = ImageScorer.from_pretrained(tiny_clip_dir, device="cpu")
    uncached.text_cache = TextEmbeddingCache(0)
    warm = ImageScorer.from_pretrained(tiny_clip_dir, device="cpu")
    # Warm up on other scenes that share some texts, in other company and another order.
    warm.score(make_plan([("dog", "a brown dog", [0.1, 0.1, 0.3, 0.3]),
                          ("cat", "a fluffy cat", [0.5, 0.5, 0.3, 0.3])], caption="a cat"), random_images(1))
    assert warm.text_cache.hits == 0 and len(warm.text_cache) == 6  # caption, 3 prompts, 2 descriptions
    expected = score_all(cold)
    assert score_all(warm) == expected  # dataclass equality: every float, bit for bit
    assert score_all(uncached) == expected and len(uncached.text_cache) == 0
    assert score_all(cold) == expected  # all hits now


@pytest.mark.parametrize("text_batch", [1, 4])
def test_a_text_embedding_does_not_depend_on_its_company(scorer: ImageScorer, text_batch: int) -> None:
    texts = ["a cat", "a photo of a very fluffy ginger cat on a sofa", "dog", "a photo of a background.",
             "a red frisbee in the air", "b"]
    scorer.text_batch = text_batch
    try:
        scorer.text_cache.clear()
        together = scorer.embed_texts(texts)
        for n, text in enumerate(texts):
            scorer.text_cache.clear()
            assert np.array_equal(scorer.embed_texts([text])[0], together[n])
            scorer.text_cache.clear()
            assert np.array_equal(scorer.embed_texts([*reversed(texts), text])[-1], together[n])
    finally:
        scorer.text_batch = 1


def test_a_second_scoring_runs_the_text_encoder_on_no_text(
    scorer: ImageScorer, forward_calls: dict[str, int]
) -> None:
    texts: list[int] = []
    hook = scorer.model.text_model.register_forward_hook(
        lambda _module, args, kwargs, _out: texts.append(len(kwargs["input_ids"])), with_kwargs=True
    )
    try:
        scorer.text_cache.clear()
        first = score_all(scorer)
        distinct = {s.caption for s in SCENES} | {o.description for s in SCENES for o in s.objects}
        distinct |= {PROMPT.format(name) for name in ("cat", "dog", "bird", "background")}
        assert sum(texts) == forward_calls["text"] == len(distinct) == len(scorer.text_cache)
        texts.clear()
        forward_calls.update(vision=0, text=0)
        again = score_all(scorer, seed=1)  # the same captions and descriptions, other images
    finally:
        hook.remove()
    assert texts == [] and forward_calls["text"] == 0 and forward_calls["vision"] > 0
    assert scorer.text_cache.hits >= len(distinct)
    assert [r.clis_i for r in again] != [r.clis_i for r in first]  # the images did change


def test_text_cache_drops_the_least_recently_used() -> None:
    cache = TextEmbeddingCache(2)
    rows = {t: np.full(3, i, dtype=np.float32) for i, t in enumerate("abc")}
    cache.put("a", rows["a"])
    cache.put("b", rows["b"])
    assert cache.get("a") is rows["a"]  # now "b" is the least recently used
    cache.put("c", rows["c"])
    assert len(cache) == 2 and cache.get("b") is None and cache.get("a") is rows["a"]
    assert (cache.hits, cache.misses) == (2, 1)
    empty = TextEmbeddingCache(0)
    empty.put("a", rows["a"])
    assert len(empty) == 0 and empty.get("a") is None
    with pytest.raises(ValueError, match="size"):
        TextEmbeddingCache(-1)


def test_score_candidates_uses_one_pass_and_marks_one_best(
    scorer: ImageScorer, forward_calls: dict[str, int]
) -> None:
    candidates = [
        Candidate(
            plan_id="p1",
            index=k,
            seed=k,
            path=f"p1/{k}.png",
            model="tiny",
            steps=2,
            guidance=7.5,
            beta=0.3,
            width=64,
            height=48,
            prompt=PLAN.caption,
        )
        for k in range(4)
    ]
    scored = Scorer(scorer, LayoutScorer(None), thresholds=Thresholds(None, None)).score(
        PLAN, [Rendered(c, image) for c, image in zip(candidates, random_images(4), strict=True)])
    records = scored.candidates
    assert scored.best is not None and scored.best.best and scored.layout is not None
    assert forward_calls["vision"] == 4 * 3  # each candidate and its 2 crops, alone on a CPU
    assert [r.index for r in records] == [0, 1, 2, 3] and sum(r.best for r in records) == 1
    best = next(r for r in records if r.best)
    assert best.clis == max(r.clis for r in records)
    assert all(r.clis == r.clis_i and r.detail["clis_l_reference_free"] for r in records)


def test_scores_follow_the_documented_composition(scorer: ImageScorer) -> None:
    (result,) = scorer.score(PLAN, random_images(1))
    for instance in result.objects:
        assert instance.text_similarity == pytest.approx(float(cosine_to_score(instance.cosine)))
        assert instance.clis_i == pytest.approx(
            0.8 * instance.text_similarity + 0.2 * instance.category_confidence
        )
        assert 0 <= instance.clis_i <= 100
    assert result.global_score == pytest.approx(float(cosine_to_score(result.global_cosine)))
    assert result.local_score == pytest.approx(np.mean([o.clis_i for o in result.objects]))
    assert result.local_score is not None
    assert result.clis_i == pytest.approx(0.5 * result.global_score + 0.5 * result.local_score)


def test_category_confidence_is_a_softmax_over_scene_categories_and_background(scorer: ImageScorer) -> None:
    plan = make_plan(
        [
            ("cat", "a cat", [0.1, 0.1, 0.4, 0.4]),
            ("cat", "a cat", [0.5, 0.5, 0.4, 0.4]),
            ("dog", "a dog", [0.1, 0.5, 0.3, 0.3]),
        ]
    )
    image = random_images(1)[0]
    (result,) = scorer.score(plan, [image])
    crop = image.crop(crop_box(plan.objects[2].bbox, image.width, image.height))
    from acp.score.image import square_pad

    vector = scorer.embed_images([square_pad(crop)])[0]
    prompts = scorer.embed_texts([PROMPT.format(n) for n in ("cat", "dog", "background")])
    logits = scorer.model.logit_scale.exp().item() * prompts @ vector
    expected = 100 * np.exp(logits[1]) / np.exp(logits).sum()  # the dog, against cat and background
    assert result.objects[2].category_confidence == pytest.approx(expected, rel=1e-4)


def test_batching_and_chunking_do_not_change_scores(
    tiny_clip_dir: Path, forward_calls: dict[str, int]
) -> None:
    chunked = ImageScorer.from_pretrained(tiny_clip_dir, device="cpu")
    chunked.max_batch = 2
    images = random_images(3)
    together = chunked.score(PLAN, images)  # 3 images + 6 crops = 9 inputs in chunks of 2
    alone = [chunked.score(PLAN, [image])[0] for image in images]
    for a, b in zip(together, alone, strict=True):
        assert a.clis_i == pytest.approx(b.clis_i, abs=1e-4)
        assert [o.clis_i for o in a.objects] == pytest.approx([o.clis_i for o in b.objects], abs=1e-4)


def test_an_image_without_objects_is_scored_on_its_caption_alone(scorer: ImageScorer) -> None:
    (result,) = scorer.score_scenes([(Scene("an empty street", ()), random_images(1)[0])])
    assert result.local_score is None and result.clis_i == result.global_score


@pytest.mark.parametrize(
    ("cosine", "expected"), [(0.0, 0.0), (0.12, 0.0), (0.22, 50.0), (0.24, 60.0), (0.32, 100.0), (0.9, 100.0)]
)
def test_cosine_map_is_linear_between_the_documented_bounds(cosine: float, expected: float) -> None:
    assert float(cosine_to_score(cosine)) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("bbox", "expected"),
    [
        ([0.25, 0.25, 0.5, 0.5], (40, 40, 160, 160)),  # 100 px box, 10 px margin each side
        ([0.0, 0.0, 1.0, 1.0], (0, 0, 200, 200)),  # margin clipped to the image
        ([0.5, 0.5, 0.0, 0.0], (100, 100, 101, 101)),  # zero size: one pixel
        ([1.0, 1.0, 0.1, 0.1], (198, 198, 200, 200)),  # outside: its margin reaches in
        ([float("nan"), 0.2, 0.1, 0.1], (0, 38, 22, 62)),
    ],
)
def test_crop_box_adds_context_and_never_leaves_the_image(
    bbox: list[float], expected: tuple[int, ...]
) -> None:
    assert crop_box(bbox, 200, 200) == expected


def test_degenerate_boxes_are_scored_without_raising(scorer: ImageScorer) -> None:
    scene = Scene(
        "x",
        (
            SceneObject(0, "cat", "a cat", (0.5, 0.5, 0.0, 0.0)),
            SceneObject(1, "dog", "a dog", (2.0, 2.0, 0.1, 0.1)),
        ),
    )
    (result,) = scorer.score_scenes([(scene, random_images(1)[0])])
    assert all(0 <= o.clis_i <= 100 for o in result.objects)


def test_unknown_clip_folder_is_an_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no such folder"):
        ImageScorer.from_pretrained(tmp_path / "missing")
    with pytest.raises(InputError, match="cannot load a CLIP model"):
        ImageScorer.from_pretrained(tmp_path)  # a folder, but no model in it


# -- the judge ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"rating": 4}', 4.0),
        ('```json\n{"rating": 3.5}\n```', 3.5),
        ('{"score": 1}', 1.0),
        ("I would rate it 2/5.", 2.0),
        ("Rating: 5", 5.0),
        ('{"rating": 7}', None),
        ("no idea", None),
        ("", None),
        ("9" * 5000, None),  # JSON Python refuses to convert: no rating, not a crash
        ('{"rating": ' + "9" * 400 + "}", None),  # an integer beyond any float
        ('{"rating": 1e999}', None),
        ('{"rating": NaN}', None),
    ],
)
def test_ratings_are_parsed_leniently_and_validated_strictly(text: str, expected: float | None) -> None:
    assert parse_rating(text) == expected


def _image_score(values: list[float]) -> ImageScore:
    objects = [InstanceScore(k, "cat", v, v, v, 0.2) for k, v in enumerate(values)]
    score = ImageScore(clis_i=0.0, global_score=50.0, local_score=None, global_cosine=0.22, objects=objects)
    score.recompute()
    return score


def _scene(count: int) -> Scene:
    return Scene(
        "cats",
        tuple(SceneObject(k, "cat", f"cat number {k}", (0.1 * k, 0.1, 0.1, 0.2)) for k in range(count)),
    )


def _settings(server: ChatServer) -> ChatSettings:
    return ChatSettings(
        model="judge-test", base_url=server.url, api_key="sk-judge-secret", retry_backoff=0.0, temperature=0.0
    )


def test_judge_rates_only_unsure_instances_and_replaces_their_score(chat_server: ChatServer) -> None:
    chat_server.script(ok('{"rating": 4}'))
    score = _image_score([55.0, 90.0, 20.0])  # only 55 is within 10 of 60
    judge = Judge(_settings(chat_server))
    made = judge.review([(_scene(3), random_images(1)[0], score)], threshold=60.0)
    assert made == 1 and len(chat_server.requests) == 1
    assert score.objects[0].judge == 80.0 and score.objects[0].clis_i == 80.0
    assert [o.clis_i for o in score.objects[1:]] == [90.0, 20.0]
    assert score.local_score == pytest.approx((80 + 90 + 20) / 3)
    request = chat_server.requests[0]
    assert request.headers["authorization"] == "Bearer sk-judge-secret"
    content = request.messages[0]["content"]
    assert "cat number 0" in content[0]["text"]
    url = content[1]["image_url"]["url"]
    assert url.startswith("data:image/png;base64,")
    assert Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).size[0] > 0


def test_judge_respects_its_call_cap_and_retries_transport_errors(chat_server: ChatServer) -> None:
    chat_server.script(error(503), ok('{"rating": 5}'))
    score = _image_score([55.0, 58.0, 65.0])
    judge = Judge(_settings(chat_server), max_calls=1)
    judge.review([(_scene(3), random_images(1)[0], score)], threshold=60.0)
    assert judge.calls == 1 and len(chat_server.requests) == 2  # one retried call
    assert [o.judge for o in score.objects] == [100.0, None, None]
    assert judge.review([(_scene(3), random_images(1)[0], score)], threshold=60.0) == 0
    assert judge.report() == JudgeReport(model="judge-test", requests=1, rated=1, failed=0, retries=1,
                                         unjudged=2 + 2)  # the judged one is sure now


def _judge_one_at_a_time(server: ChatServer) -> Judge:
    judge = Judge(_settings(server))
    judge.settings = dataclasses.replace(judge.settings, concurrency=1, max_retries=0)
    return judge


@pytest.mark.parametrize("reply", [
    pytest.param(ok("I cannot rate images."), id="no rating"),
    pytest.param(error(400, "this model does not take image input", echo_headers=True), id="HTTP 400"),
    pytest.param(error(500, "down", echo_headers=True), id="HTTP 500 after its retries"),
])
def test_a_judge_failing_every_request_stops_the_run_with_its_last_reason(
        chat_server: ChatServer, reply: Reply) -> None:
    # A judge that never rates is a setup error: scoring on with CLIP alone would silently give
    # another dataset than the one asked for.
    chat_server.responder = lambda body: reply
    score = _image_score([55.0, 58.0, 62.0, 65.0, 52.0])
    before = [o.clis_i for o in score.objects]
    judge = _judge_one_at_a_time(chat_server)
    with pytest.raises(JudgeFailing) as caught:
        judge.review([(_scene(5), random_images(1)[0], score)], threshold=60.0)
    message = str(caught.value)
    assert f"failed {MAX_FAILURES_IN_A_ROW} requests in a row" in message and "--judge-model" in message
    assert [o.clis_i for o in score.objects] == before
    assert len(chat_server.requests) == MAX_FAILURES_IN_A_ROW  # none sent after the third failure
    report = judge.report()
    assert (report.requests, report.rated, report.failed) == (MAX_FAILURES_IN_A_ROW, 0, MAX_FAILURES_IN_A_ROW)
    assert report.last_failure and report.last_failure in message
    expected = {"no rating": "no 0-5 rating", "HTTP 400": "HTTP 400: this model does not take image",
                "HTTP 500 after its retries": "HTTP 500: down"}
    assert any(text in report.last_failure for text in expected.values())
    # the server echoed the key in its errors: it is in no message, report or score
    assert chat_server.requests[0].headers["authorization"] == "Bearer sk-judge-secret"
    shown = (message + json.dumps(report.to_dict()) + report.line()
             + json.dumps([o.__dict__ for o in score.objects]))
    assert "sk-judge-secret" not in shown


@pytest.mark.parametrize("status", [401, 403, 404])
def test_a_judge_whose_key_model_or_route_is_refused_stops_at_once(chat_server: ChatServer,
                                                                    status: int) -> None:
    chat_server.responder = lambda body: error(status, "no such model", echo_headers=True)
    judge = _judge_one_at_a_time(chat_server)
    with pytest.raises(LLMConfigError) as caught:
        judge.review([(_scene(3), random_images(1)[0], _image_score([55.0, 58.0, 62.0]))], threshold=60.0)
    assert f"HTTP {status}" in str(caught.value) and "sk-judge-secret" not in str(caught.value)
    assert len(chat_server.requests) == 1 and judge.report().failed == 1


def test_a_judge_failing_now_and_then_goes_on_and_reports_its_failures(chat_server: ChatServer) -> None:
    replies = [ok('{"rating": 4}'), error(400, "bad crop"), ok("hmm"), ok('{"rating": 2}'),
               error(400, "bad crop again"), ok('{"rating": 5}')]
    chat_server.script(*replies)
    score = _image_score([55.0, 58.0, 62.0, 65.0, 52.0, 68.0])
    judge = _judge_one_at_a_time(chat_server)
    assert judge.review([(_scene(6), random_images(1)[0], score)], threshold=60.0) == 6
    assert [o.judge for o in score.objects] == [80.0, None, None, 40.0, None, 100.0]
    report = judge.report()
    assert (report.requests, report.rated, report.failed, report.unjudged) == (6, 3, 3, 0)
    assert report.last_failure is not None and "HTTP 400: bad crop again" in report.last_failure
    assert report.line().startswith("judge judge-test: 6 requests, 3 rated, 3 failed (last failure: ")


def test_a_stalled_judge_reply_is_cut_at_the_deadline(chat_server: ChatServer) -> None:
    chat_server.script(trickle('{"rating": 4}' + " " * 200, 0.05), ok('{"rating": 3}'))
    judge = Judge(dataclasses.replace(_settings(chat_server), timeout=0.5, max_retries=0, concurrency=1))
    score = _image_score([55.0, 58.0])
    judge.review([(_scene(2), random_images(1)[0], score)], threshold=60.0)
    assert [o.judge for o in score.objects] == [None, 60.0]
    report = judge.report()
    assert report.failed == 1 and "no complete reply within 0.5 s" in (report.last_failure or "")
    assert not chat_server.requests[0].finished


def test_judge_reports_of_several_workers_add_up() -> None:
    first = JudgeReport("vlm", requests=5, rated=4, failed=1, retries=2, unjudged=0, last_failure="HTTP 500")
    second = JudgeReport("vlm", requests=3, rated=3, failed=0, retries=0, unjudged=7)
    assert JudgeReport.merge([first, second]) == JudgeReport("vlm", 8, 7, 1, 2, 7, "HTTP 500")
    assert JudgeReport.merge([]) is None


@pytest.mark.parametrize("device", ["gpu", "CPU", "cuda:x", "", "meta"])
def test_an_invalid_device_is_one_input_error_naming_the_option(tmp_path: Path, device: str) -> None:
    from acp.device import resolve_device

    with pytest.raises(InputError) as caught:
        resolve_device(device)
    message = str(caught.value)
    assert "\n" not in message and message.startswith("--device")
    assert "cpu" in message and "cuda:0" in message and "mps" in message
    # Checked before anything is loaded: the missing model folder is not what is reported.
    with pytest.raises(InputError, match=r"^--device"):
        ImageScorer.from_pretrained(tmp_path / "missing", device=device)


def test_an_unavailable_device_is_an_input_error(
    monkeypatch: pytest.MonkeyPatch, scorer: ImageScorer
) -> None:
    import torch

    from acp.device import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(InputError, match="--device cuda: torch sees no CUDA GPU"):
        resolve_device("cuda")
    with pytest.raises(InputError, match="--device cuda:0"):
        ImageScorer(scorer.model, scorer.processor, device="cuda:0")
    assert resolve_device(None) == resolve_device("auto") == "cpu"
    assert resolve_device("cpu") == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert resolve_device("cuda:0") == "cuda:0" and resolve_device(None) == "cuda"
    with pytest.raises(InputError, match=r"--device cuda:1: torch sees 1 cuda device\(s\)"):
        resolve_device("cuda:1")


def _candidate(index: int) -> Candidate:
    return Candidate(
        plan_id="p1", index=index, seed=index, path=f"p1/{index}.png", model="tiny", steps=2,
        guidance=7.5, beta=0.3, width=64, height=48, prompt="x",
    )


def test_a_reference_free_layout_score_is_not_written_as_clis_l(tmp_path: Path) -> None:
    from acp.score.bank import Bank
    from acp.score.candidates import combine, layout_fields
    from tests.test_bank import write_coco

    image = _image_score([80.0, 70.0])
    sanity = LayoutScorer(None).score(PLAN)
    assert sanity.reference_free and sanity.score > 0
    (record,) = combine("p1", [_candidate(0)], [image], sanity, Thresholds(None, None))
    assert record.clis_l is None and record.clis == pytest.approx(image.clis_i, abs=1e-3)
    assert record.detail["clis_l_sanity"] == pytest.approx(sanity.score, abs=1e-3)
    assert record.detail["clis_l_method"] == "sanity" and record.detail["clis_l_reference_free"]
    assert layout_fields(sanity) == {
        "clis_l": None, "clis_l_sanity": round(sanity.score, 3), "clis_l_method": "sanity"
    }
    assert layout_fields(None) == {"clis_l": None, "clis_l_sanity": None, "clis_l_method": None}

    pets = [("cat", [0.1, 0.1, 0.3, 0.4]), ("dog", [0.5, 0.4, 0.4, 0.5])]
    coco = write_coco(tmp_path / "coco.json", [pets])
    layout = LayoutScorer(Bank.from_coco([coco])).score(PLAN)
    assert not layout.reference_free
    (record,) = combine("p1", [_candidate(0)], [image], layout, Thresholds(None, None))
    assert record.clis_l == pytest.approx(layout.score, abs=1e-3)
    assert record.detail["clis_l_sanity"] is None and record.detail["clis_l_method"] == "density"


def _crop_box_in_numpy(bbox, width, height, margin=0.1):
    """``crop_box`` as first written, in numpy (the reference of the Python-float version)."""
    from acp.boxes import plan_to_sam

    values = np.nan_to_num(np.asarray(bbox, dtype=np.float64), nan=0.0, posinf=1.0, neginf=0.0)
    x0, y0, x1, y1 = plan_to_sam(values, width, height).tolist()
    dx, dy = margin * max(x1 - x0, 0.0), margin * max(y1 - y0, 0.0)
    left = int(np.clip(np.floor(x0 - dx + 1e-6), 0, width - 1))
    top = int(np.clip(np.floor(y0 - dy + 1e-6), 0, height - 1))
    right = int(np.clip(np.ceil(x1 + dx - 1e-6), left + 1, width))
    bottom = int(np.clip(np.ceil(y1 + dy - 1e-6), top + 1, height))
    return left, top, right, bottom


def test_crop_box_equals_its_numpy_reference_on_any_box() -> None:
    from acp.score.image import crop_box

    rng = np.random.default_rng(0)
    edges = [0.0, 1.0, 0.2, 0.5, 1e-9, -0.1, 1.3, 0.999999, 1 / 3, 0.7]
    boxes = [*rng.random((3000, 4)), *rng.normal(0.5, 1, (3000, 4)),
             *(rng.choice(edges, 4) for _ in range(3000)),
             (np.nan, 0.1, np.inf, 0.2), (-np.inf, 0.0, 0.5, np.nan)]
    for box in boxes:
        for width, height in ((512, 512), (200, 300), (1, 1), (640, 427)):
            assert crop_box(list(box), width, height) == _crop_box_in_numpy(list(box), width, height)

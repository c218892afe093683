"""The optional VLM judge: the paper's 0-5 rating, asked only where CLIP is unsure.

An instance is unsure when its CLIP instance score lies within ``margin`` (default 10) of the
instance threshold (default 60), i.e. in 50-70. For such instances, at most ``max_calls`` per
run, a vision model on any OpenAI-compatible endpoint is shown the object's crop (the same
crop CLIP saw) and its description and asked for a 0-5 rating; ``20 * rating`` replaces the
instance's CLIS-I (CLIP's terms stay beside it) and the image's CLIS-I is recomputed. This is
the paper's direct rating, one request per instance, rather than its caption-then-grade pair
of requests.

Requests go through ``acp.llm.ChatClient`` (counted retries with backoff, timeouts, the key
kept out of every message). A reply without a usable rating, or a request that fails after
its retries, leaves CLIP's score in place and is counted; after ``MAX_FAILURES_IN_A_ROW``
failures in a row the judge switches itself off for the rest of the run.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from acp import defaults
from acp.errors import LLMError
from acp.jsonl import loads
from acp.llm import ChatClient, ChatSettings, as_completed_bounded
from acp.score.image import ImageScore, Scene, crop_box, square_pad
from acp.settings_record import recorded

if TYPE_CHECKING:
    from PIL.Image import Image

MARGIN = defaults.JUDGE_MARGIN
MAX_CALLS = defaults.JUDGE_MAX_CALLS
MAX_FAILURES_IN_A_ROW = 3
MAX_SIDE = 384  # pixels sent per crop; a rating needs no more
PROMPT = (
    "You grade images made by a text-to-image model. The image is a crop around one object "
    'that should show: "{description}" (category: {category}).\n'
    "Rate from 0 to 5 how clearly and correctly the crop shows it: 0 = absent or a different "
    "thing, 1 = barely recognisable, 3 = recognisable with visible flaws, 5 = clear and exactly "
    'as described. Reply with JSON only: {{"rating": <0-5>}}'
)
_NUMBER = re.compile(r"(?<![\d.])(\d+(?:\.\d+)?)")


def parse_rating(text: str) -> float | None:
    """The 0-5 rating in a reply (JSON, fenced JSON or prose), or None when there is none."""
    body = text.strip()
    fenced = re.search(r"```(?:json)?\s*(.*?)```", body, re.DOTALL)
    if fenced:
        body = fenced.group(1).strip()
    value: Any = None
    try:
        parsed = loads(body)
    except json.JSONDecodeError:
        match = re.search(r"rating\D{0,12}?(\d+(?:\.\d+)?)", body, re.IGNORECASE) or _NUMBER.search(body)
        value = match.group(1) if match else None
    else:
        value = parsed.get("rating", parsed.get("score")) if isinstance(parsed, dict) else parsed
    try:
        rating = float(value)
    except (TypeError, ValueError):
        return None
    return rating if 0.0 <= rating <= 5.0 else None


def _data_url(image: Image) -> str:
    copy = image.convert("RGB")
    copy.thumbnail((MAX_SIDE, MAX_SIDE))
    buffer = io.BytesIO()
    copy.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


@dataclass(frozen=True)
class JudgeSettings:
    """Which vision model judges, where (``None``: OpenAI, then ``api_key`` is needed), and
    how much it is asked. A run's settings record what is set (``acp.settings_record``), so
    older runs still match; never the key."""

    model: str
    base_url: str | None = field(default=None, metadata=recorded(omit="empty"))
    margin: float = field(default=MARGIN, metadata=recorded(omit="empty"))
    max_calls: int = field(default=MAX_CALLS, metadata=recorded(omit="empty"))
    api_key: str | None = field(default=None, repr=False, metadata=recorded(skip=True))

    def __post_init__(self) -> None:
        if self.margin < 0 or self.max_calls < 0:
            raise LLMError(
                f"judge margin and max_calls must be >= 0, got {self.margin:g} and {self.max_calls}")


@dataclass
class JudgeRequest:
    crop: Image
    description: str
    category: str


class Judge:
    """Rates unsure instances with a vision LLM; see the module docstring."""

    def __init__(self, settings: ChatSettings, *, margin: float = MARGIN, max_calls: int = MAX_CALLS):
        if margin < 0 or max_calls < 0:
            raise LLMError(f"judge margin and max_calls must be >= 0, got {margin:g} and {max_calls}")
        self.settings = settings
        self.margin = margin
        self.max_calls = max_calls
        self.calls = 0
        self.failures = 0
        self.failures_in_a_row = 0
        self.disabled: str | None = None

    @classmethod
    def from_settings(cls, settings: JudgeSettings) -> Judge:
        chat = ChatSettings(model=settings.model, base_url=settings.base_url, api_key=settings.api_key,
                            temperature=0.0)
        return cls(chat, margin=settings.margin, max_calls=settings.max_calls)

    @property
    def model(self) -> str:
        return self.settings.model

    def unsure(self, score: float, threshold: float) -> bool:
        return abs(score - threshold) <= self.margin

    def review(self, items: Sequence[tuple[Scene, Image, ImageScore]], threshold: float) -> int:
        """Rate the unsure instances of ``items`` (in order, within the call cap) and apply the
        ratings to their scores in place. Returns the number of requests made."""
        chosen: list[tuple[ImageScore, int, JudgeRequest]] = []
        for scene, image, score in items:
            rgb = image.convert("RGB")
            for k, (obj, instance) in enumerate(zip(scene.objects, score.objects, strict=True)):
                if self.disabled or self.calls + len(chosen) >= self.max_calls:
                    break
                if self.unsure(instance.clis_i, threshold):
                    crop = square_pad(rgb.crop(crop_box(obj.bbox, rgb.width, rgb.height)))
                    chosen.append((score, k, JudgeRequest(crop, obj.description, obj.category)))
        if not chosen:
            return 0
        ratings = self.rate([request for _, _, request in chosen])
        touched: set[int] = set()
        for (score, k, _), rating in zip(chosen, ratings, strict=True):
            if rating is not None:
                score.objects[k].judge = rating
                score.objects[k].clis_i = rating
                touched.add(id(score))
        for score, _, _ in chosen:
            if id(score) in touched:
                score.recompute()
        return len(chosen)

    def rate(self, requests: Sequence[JudgeRequest]) -> list[float | None]:
        """Scores 0-100 (``20 * rating``), None where the judge gave no usable answer."""
        self.calls += len(requests)
        return asyncio.run(self._rate_all(list(requests)))

    async def _rate_all(self, requests: list[JudgeRequest]) -> list[float | None]:
        results: list[float | None] = [None] * len(requests)
        async with ChatClient(self.settings) as client:

            async def one(k: int) -> tuple[int, float | None]:
                return k, await self._rate_one(client, requests[k])

            async for k, value in as_completed_bounded((one(k) for k in range(len(requests))),
                                                       self.settings.concurrency):
                results[k] = value
        return results

    async def _rate_one(self, client: ChatClient, request: JudgeRequest) -> float | None:
        if self.disabled:
            return None
        message = {
            "role": "user",
            "content": [
                {"type": "text", "text": PROMPT.format(description=request.description,
                                                      category=request.category)},
                {"type": "image_url", "image_url": {"url": _data_url(request.crop)}},
            ],
        }
        try:
            text = await client.complete([message])
        except LLMError as error:
            self._failed(str(error))
            return None
        rating = parse_rating(text)
        if rating is None:
            self._failed(f"no 0-5 rating in the reply {text[:80]!r}")
            return None
        self.failures_in_a_row = 0
        return 20.0 * rating

    def _failed(self, reason: str) -> None:
        self.failures += 1
        self.failures_in_a_row += 1
        if self.failures_in_a_row >= MAX_FAILURES_IN_A_ROW and not self.disabled:
            self.disabled = f"switched off after {self.failures_in_a_row} failures in a row (last: {reason})"

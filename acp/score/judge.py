"""The optional VLM judge: the paper's 0-5 rating, asked only where CLIP is unsure.

An instance is unsure when its CLIP instance score lies within ``margin`` (default 10) of the
instance threshold (default 60), i.e. in 50-70. For such instances, at most ``max_calls`` per
run, a vision model on any OpenAI-compatible endpoint is shown the object's crop (the same
crop CLIP saw) and its description and asked for a 0-5 rating; ``20 * rating`` replaces the
instance's CLIS-I (CLIP's terms stay beside it) and the image's CLIS-I is recomputed. This is
the paper's direct rating, one request per instance, rather than its caption-then-grade pair
of requests.

Requests go through ``acp.llm.ChatClient`` (counted retries with backoff, a deadline on each
request, replies of at most 1 MiB, the key kept out of every message). A reply without a usable
rating, or a request that fails after its retries, leaves CLIP's score in place and is counted.
A judge that fails ``MAX_FAILURES_IN_A_ROW`` requests in a row is set up wrong (a model that
takes no images, a wrong URL) or its server is down: it raises ``JudgeFailing`` and the run
stops with one line, as it does at once for a refused key, model or route (``LLMConfigError``),
rather than go on scoring with CLIP alone what the user asked a judge to score. The rerun
resumes. ``Judge.report()`` says what the judge did: requests, ratings, failures and the last
failure's reason.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import io
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from acp import defaults
from acp.errors import LLMError, first_line
from acp.jsonl import loads
from acp.llm import ChatClient, ChatSettings, LLMConfigError, as_completed_bounded
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
    except ValueError:  # not JSON, or an integer of thousands of digits
        match = re.search(r"rating\D{0,12}?(\d+(?:\.\d+)?)", body, re.IGNORECASE) or _NUMBER.search(body)
        value = match.group(1) if match else None
    else:
        value = parsed.get("rating", parsed.get("score")) if isinstance(parsed, dict) else parsed
    try:
        rating = float(value)
    except (TypeError, ValueError, OverflowError):  # no number, or an integer beyond any float
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

    def chat(self) -> ChatSettings:
        """The chat settings the judge's requests go with (checked: a bad URL is one line)."""
        return ChatSettings(model=self.model, base_url=self.base_url, api_key=self.api_key, temperature=0.0,
                            base_url_name="--judge-base-url")


@dataclass
class JudgeRequest:
    crop: Image
    description: str
    category: str


class JudgeFailing(LLMError):
    """The judge failed ``MAX_FAILURES_IN_A_ROW`` requests in a row: stop the run."""


@dataclass
class JudgeReport:
    """What a judge did in a run. ``failed`` counts requests that gave no usable rating
    (transport errors after their retries, and replies without a 0-5 rating); ``unjudged``
    counts unsure instances left to CLIP because ``max_calls`` was reached. ``last_failure`` is
    the last failure's reason, redacted like every message of ``acp.llm`` (no API key)."""

    model: str
    requests: int = 0
    rated: int = 0
    failed: int = 0
    retries: int = 0  # transport retries spent by those requests
    unjudged: int = 0
    last_failure: str | None = None

    def line(self) -> str:
        """One line for a command's output."""
        text = (f"judge {self.model}: {self.requests} requests, {self.rated} rated, "
                f"{self.failed} failed")
        if self.unjudged:
            text += f", {self.unjudged} unsure instances left to CLIP (--judge-max-calls reached)"
        if self.last_failure:
            text += f" (last failure: {self.last_failure})"
        return text

    def to_dict(self) -> dict[str, Any]:
        """The report as a summary file holds it."""
        return dataclasses.asdict(self)

    @classmethod
    def merge(cls, reports: Iterable[JudgeReport]) -> JudgeReport | None:
        """One report for the judges of several workers (one copy of the judge each); the
        last failure is the last non-empty one given. None when there is none."""
        reports = list(reports)
        if not reports:
            return None
        merged = cls(model=reports[0].model)
        for report in reports:
            merged.requests += report.requests
            merged.rated += report.rated
            merged.failed += report.failed
            merged.retries += report.retries
            merged.unjudged += report.unjudged
            merged.last_failure = report.last_failure or merged.last_failure
        return merged


class Judge:
    """Rates unsure instances with a vision LLM; see the module docstring."""

    def __init__(self, settings: ChatSettings, *, margin: float = MARGIN, max_calls: int = MAX_CALLS):
        if margin < 0 or max_calls < 0:
            raise LLMError(f"judge margin and max_calls must be >= 0, got {margin:g} and {max_calls}")
        self.settings = settings
        self.margin = margin
        self.max_calls = max_calls
        self.calls = 0  # requests granted under max_calls
        self.failures_in_a_row = 0
        self._report = JudgeReport(model=settings.model)
        self._stopped: JudgeFailing | None = None

    @classmethod
    def from_settings(cls, settings: JudgeSettings) -> Judge:
        return cls(settings.chat(), margin=settings.margin, max_calls=settings.max_calls)

    @property
    def model(self) -> str:
        return self.settings.model

    def report(self) -> JudgeReport:
        """A copy of what this judge did so far."""
        return dataclasses.replace(self._report)

    def unsure(self, score: float, threshold: float) -> bool:
        return abs(score - threshold) <= self.margin

    def review(self, items: Sequence[tuple[Scene, Image, ImageScore]], threshold: float) -> int:
        """Rate the unsure instances of ``items`` (in order, within the call cap) and apply the
        ratings to their scores in place. Returns the number of requests made. Raises
        ``JudgeFailing`` or ``LLMConfigError`` when the judge cannot work (module docstring)."""
        chosen: list[tuple[ImageScore, int, JudgeRequest]] = []
        for scene, image, score in items:
            rgb: Image | None = None
            for k, (obj, instance) in enumerate(zip(scene.objects, score.objects, strict=True)):
                if not self.unsure(instance.clis_i, threshold):
                    continue
                if self.calls + len(chosen) >= self.max_calls:
                    self._report.unjudged += 1
                    continue
                rgb = rgb or image.convert("RGB")
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

            ratings = as_completed_bounded((one(k) for k in range(len(requests))), self.settings.concurrency)
            try:
                async with contextlib.aclosing(ratings):  # requests in flight end before the client
                    async for k, value in ratings:
                        results[k] = value
            finally:
                self._report.retries += client.retries
        return results

    async def _rate_one(self, client: ChatClient, request: JudgeRequest) -> float | None:
        if self._stopped is not None:  # requests still queued when the judge gave up
            raise self._stopped
        message = {
            "role": "user",
            "content": [
                {"type": "text", "text": PROMPT.format(description=request.description,
                                                      category=request.category)},
                {"type": "image_url", "image_url": {"url": _data_url(request.crop)}},
            ],
        }
        self._report.requests += 1
        try:
            text = await client.complete([message])
        except LLMConfigError as error:
            self._report.failed += 1
            self._report.last_failure = first_line(error)
            raise  # a refused key, model or route: every request would fail alike
        except LLMError as error:
            self._failed(str(error))
            return None
        rating = parse_rating(text)
        if rating is None:
            self._failed(f"no 0-5 rating in the reply {text[:80]!r}")
            return None
        self.failures_in_a_row = 0
        self._report.rated += 1
        return 20.0 * rating

    def _failed(self, reason: str) -> None:
        self._report.failed += 1
        self._report.last_failure = first_line(reason)  # one line of at most 300 characters
        self.failures_in_a_row += 1
        if self._stopped is None and self.failures_in_a_row >= MAX_FAILURES_IN_A_ROW:
            self._stopped = JudgeFailing(
                f"the judge {self.model} failed {self.failures_in_a_row} requests in a row (last: "
                f"{self._report.last_failure}); check --judge-model and --judge-base-url, or leave "
                "--judge-model out. What was scored so far is kept: rerun to go on"
            )
        if self._stopped is not None:  # one error, whichever of the requests in flight ends first
            raise self._stopped

"""A chat client for any OpenAI-compatible endpoint (OpenAI, vLLM, Ollama, LM Studio).

``ChatClient.complete(messages)`` returns the reply text. Transport faults (429, 408, 409, 5xx,
timeouts, refused or dropped connections) are retried here, not by the ``openai`` client, so
that each retry is counted: exponential backoff with jitter, or the server's ``Retry-After``
(capped by ``ChatSettings.max_retry_wait``). Other HTTP errors are raised at once.

Structured output: a ``response_format`` the server rejects (a 400/422 that names
``response_format``, ``json_schema`` or ``json_object``) is stepped down once,
``json_schema`` -> ``json_object`` -> none, and the client remembers it for the rest of its life.

The API key is never part of a repr, a log line, an exception message or an output: every text
from a server passes through ``ChatClient.redact`` (a server may echo request headers), and
every value decoded from a reply's JSON through ``ChatClient.redact_value``. ``redact`` finds
the key however a JSON writer may have spelled it (``\\uXXXX`` escapes, ``\\/`` for ``/``, split
by white space or ``\\n``), so a key survives neither the raw text nor its decoding.

``as_completed_bounded`` runs coroutines drawn lazily from an iterable with at most N in flight.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import random
import re
import time
from collections.abc import AsyncIterator, Awaitable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from acp import defaults
from acp.errors import LLMError
from acp.settings_record import recorded

if TYPE_CHECKING:
    import openai

log = logging.getLogger(__name__)

T = TypeVar("T")

Message = dict[str, Any]
RETRY_STATUSES = frozenset({408, 409, 429})  # and every 5xx
_FORMAT_WORDS = ("response_format", "json_schema", "json_object", "structured output", "guided")
_FORMAT_STEPS: dict[str, str | None] = {"json_schema": "json_object", "json_object": None}
_NO_KEY = "no-key"  # local servers ignore the key, but the openai client insists on one


@dataclass(frozen=True)
class ChatSettings:
    """Where and how to ask. ``base_url=None`` means OpenAI itself (then ``api_key`` is needed)."""

    model: str
    base_url: str | None = None
    # A run's settings record the endpoint and model only (acp.settings_record): the rest
    # changes how requests go, and the key is a secret.
    api_key: str | None = field(default=None, repr=False, metadata=recorded(skip=True))
    timeout: float = field(default=defaults.LLM_TIMEOUT, metadata=recorded(skip=True))  # one request, s
    max_retries: int = field(default=5, metadata=recorded(skip=True))  # transport retries per request
    concurrency: int = field(default=defaults.LLM_CONCURRENCY, metadata=recorded(skip=True))  # in flight
    temperature: float | None = field(default=0.7, metadata=recorded(skip=True))
    retry_backoff: float = field(default=1.0, metadata=recorded(skip=True))  # first backoff; doubles
    max_retry_wait: float = field(default=60.0, metadata=recorded(skip=True))  # cap of any wait

    def __post_init__(self) -> None:
        if not self.model or not self.model.strip():
            raise LLMError("an LLM model name is needed (e.g. --llm-model gpt-4o-mini)")
        if self.timeout <= 0:
            raise LLMError(f"the LLM timeout must be > 0 seconds, got {self.timeout:g}")
        if self.max_retries < 0:
            raise LLMError(f"max_retries must be >= 0, got {self.max_retries}")
        if self.concurrency < 1:
            raise LLMError(f"concurrency must be >= 1, got {self.concurrency}")
        if self.retry_backoff < 0 or self.max_retry_wait < 0:
            raise LLMError("retry_backoff and max_retry_wait must be >= 0")
        if self.base_url is None and not self.api_key:
            raise LLMError("no API key for OpenAI: set OPENAI_API_KEY or give --llm-base-url")


@dataclass
class ChatReply:
    text: str
    retries: int = 0  # transport retries this reply needed
    finish_reason: str | None = None  # "length" means the reply was cut short
    model: str | None = None  # the model id the server reports
    response_format: str | None = None  # the format type actually sent


class LLMTransportError(LLMError):
    """The endpoint could not be reached or kept failing; ``retries`` were spent first."""

    def __init__(self, message: str, retries: int = 0):
        super().__init__(message)
        self.retries = retries


class LLMConfigError(LLMError):
    """The endpoint refused the key, the model or the route (HTTP 401, 403, 404): every
    request would fail the same way, so the run stops instead of failing scene by scene."""


FATAL_STATUSES = (401, 403, 404)


def json_schema_format(name: str, schema: dict[str, Any]) -> dict[str, Any]:
    """A ``response_format`` asking for JSON that follows ``schema`` (non-strict: OpenAI's strict
    mode refuses common JSON Schema keywords that pydantic emits)."""
    return {"type": "json_schema", "json_schema": {"name": name, "schema": schema, "strict": False}}


class ChatClient:
    """One ``openai.AsyncOpenAI`` client with counted retries and response-format fallback.

    Create it inside the event loop that uses it; close it with ``await client.close()`` or
    ``async with``.
    """

    def __init__(self, settings: ChatSettings):
        import openai

        self.settings = settings
        self._key = settings.api_key or ""
        self._key_pattern = key_pattern(self._key) if len(self._key) >= 4 else None
        self._client = openai.AsyncOpenAI(
            api_key=settings.api_key or _NO_KEY,
            base_url=settings.base_url,
            timeout=settings.timeout,
            max_retries=0,  # retried below, where they can be counted
        )
        self._rejected_formats: set[str] = set()
        self._random = random.Random()
        self.requests = 0
        self.retries = 0

    def __repr__(self) -> str:
        return f"ChatClient(model={self.settings.model!r}, base_url={self._safe_url!r})"

    @property
    def _safe_url(self) -> str:
        return self.redact(str(self._client.base_url))

    def redact(self, text: str) -> str:
        """``text`` with the API key replaced by ``***``, in any spelling ``key_pattern``
        knows. A key under 4 characters is a local server's placeholder, not a secret;
        replacing it would garble the text."""
        if self._key_pattern is None:
            return text
        return self._key_pattern.sub("***", text)

    def redact_value(self, value: Any) -> Any:
        """``value`` (decoded JSON) with ``redact`` applied to every string in it, keys too."""
        if isinstance(value, str):
            return self.redact(value)
        if isinstance(value, list):
            return [self.redact_value(v) for v in value]
        if isinstance(value, dict):
            return {self.redact(str(k)): self.redact_value(v) for k, v in value.items()}
        return value

    async def __aenter__(self) -> ChatClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._client.close()

    async def complete(
        self, messages: Sequence[Message], response_format: dict[str, Any] | None = None
    ) -> str:
        """The reply text (empty when the server sent none)."""
        return (await self.chat(messages, response_format)).text

    async def chat(
        self,
        messages: Sequence[Message],
        response_format: dict[str, Any] | None = None,
        *,
        seed: int | None = None,
    ) -> ChatReply:
        """One completion with retries; raises ``LLMTransportError`` or ``LLMError``.

        A 200 whose body is no completion (a proxy's or login page, a server restarting) is
        retried like a 5xx. Its body is never quoted: it may echo the key.
        """
        import openai

        not_a_completion = "HTTP 200 but the body is not a chat completion (a proxy or login page?)"
        retries = 0
        while True:
            sent = self._effective_format(response_format)
            kwargs: dict[str, Any] = {"model": self.settings.model, "messages": list(messages)}
            if sent is not None:
                kwargs["response_format"] = sent
            if self.settings.temperature is not None:
                kwargs["temperature"] = self.settings.temperature
            if seed is not None:
                kwargs["seed"] = seed
            self.requests += 1
            # Faults are noted inside the except clauses and handled after them, so that the
            # openai exception (it holds the request, and maybe an echo of the key) is never
            # chained to the exception raised here.
            status: int | None = None
            retry_after: float | None = None
            unexpected = False
            try:
                response = await self._client.chat.completions.create(**kwargs)
            except openai.APIStatusError as error:
                status, what = error.status_code, f"HTTP {error.status_code}: {self._error_detail(error)}"
                retry_after = _retry_after(error.response.headers)
            except openai.APIConnectionError as error:
                what = "timed out" if isinstance(error, openai.APITimeoutError) else "connection failed"
            except openai.APIResponseValidationError:
                what = not_a_completion
            except openai.OpenAIError as error:
                what, unexpected = self.redact(f"{type(error).__name__}: {error}"), True
            except (ValueError, RecursionError):  # the client failed to decode a 200's body
                what = not_a_completion
            else:
                reply = self._reply(response, retries, sent)
                if reply is not None:
                    return reply
                what = not_a_completion
            if unexpected:
                raise LLMError(f"{self.settings.model} at {self._safe_url}: {what}")
            if sent is not None and status in (400, 422) and _names_format(what):
                self._reject_format(sent["type"], what)
                continue
            if status in FATAL_STATUSES:
                raise LLMConfigError(
                    f"{self.settings.model} at {self._safe_url}: {what} (check OPENAI_API_KEY, "
                    "the model name and the base URL)"
                )
            retryable = status is None or status in RETRY_STATUSES or status >= 500
            if not retryable or retries >= self.settings.max_retries:
                raise LLMTransportError(f"{self.settings.model} at {self._safe_url}: {what}{_after(retries)}",
                                        retries)
            wait = self._wait(retries, retry_after)
            log.debug("%s at %s: %s; retry %d in %.2fs", self.settings.model, self._safe_url,
                      what, retries + 1, wait)
            self.retries += 1
            retries += 1
            await asyncio.sleep(wait)

    def _reply(self, response: Any, retries: int, sent: dict[str, Any] | None) -> ChatReply | None:
        """The reply, or None when ``response`` is no completion (the openai client hands back
        a non-JSON body as a str, and does not check a JSON one): no list of choices with a
        message. A message whose content is null is a completion, with an empty text."""
        choices = getattr(response, "choices", None)
        if not isinstance(choices, list) or not choices or not hasattr(choices[0], "message"):
            return None
        text = getattr(choices[0].message, "content", None) or ""
        return ChatReply(
            text=self.redact(text) if isinstance(text, str) else "",
            retries=retries,
            finish_reason=getattr(choices[0], "finish_reason", None),
            model=getattr(response, "model", None),
            response_format=sent["type"] if sent else None,
        )

    def _effective_format(self, wanted: dict[str, Any] | None) -> dict[str, Any] | None:
        current = wanted
        while current is not None and current.get("type") in self._rejected_formats:
            step = _FORMAT_STEPS.get(str(current.get("type")))
            current = {"type": step} if step else None
        return current

    def _reject_format(self, kind: str, detail: str) -> None:
        if kind not in self._rejected_formats:
            self._rejected_formats.add(kind)
            log.info("%s refused response_format %s; falling back (%s)", self._safe_url, kind, detail)

    def _error_detail(self, error: openai.APIStatusError) -> str:
        body = error.body
        if isinstance(body, dict):
            inner = body.get("error", body)
            message = inner.get("message") if isinstance(inner, dict) else inner
            text = str(message if message is not None else body)
        else:
            text = str(body if body is not None else error.message)
        return self.redact(" ".join(text.split()))[:300]  # redact first: a cut could split the key

    def _wait(self, retries: int, retry_after: float | None) -> float:
        cap = self.settings.max_retry_wait
        if retry_after is not None:
            return min(max(retry_after, 0.0), cap)
        # Exponential backoff with "equal jitter": half fixed, half random, so that many
        # clients hit by the same fault do not come back in step.
        delay = min(cap, self.settings.retry_backoff * 2**retries)
        return delay / 2 + self._random.uniform(0, delay / 2)


# Between two characters of an echoed key: white space, or the escapes a JSON writer uses for it.
_KEY_GAP = r"(?:\s|\\[nrt])*"


def key_pattern(key: str) -> re.Pattern[str]:
    """A regex matching ``key`` as written raw or by any JSON encoder: each character as itself
    or as a ``\\uXXXX`` escape (any case), ``/`` also as ``\\/``, with white space or ``\\n``-style
    escapes allowed between characters (a key wrapped across lines)."""
    parts = []
    for char in key:
        spellings = [re.escape(char), f"\\\\u(?i:{ord(char):04x})"]
        if char == "/":
            spellings.append(r"\\/")
        elif char == "\\":
            spellings.append(r"\\\\")
        parts.append("(?:" + "|".join(spellings) + ")")
    return re.compile(_KEY_GAP.join(parts))


def _names_format(detail: str) -> bool:
    lowered = detail.lower()
    return any(word in lowered for word in _FORMAT_WORDS)


def _after(retries: int) -> str:
    return f" (after {retries} retries)" if retries else ""


def _retry_after(headers: Any) -> float | None:
    """Seconds asked by ``retry-after-ms`` or ``retry-after`` (seconds or an HTTP date)."""
    try:
        if headers.get("retry-after-ms"):
            return float(headers["retry-after-ms"]) / 1000
        value = headers.get("retry-after")
    except (AttributeError, ValueError):
        return None
    if not value:
        return None
    try:
        return float(value)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


async def as_completed_bounded(awaitables: Iterable[Awaitable[T]], limit: int) -> AsyncIterator[T]:
    """Results of ``awaitables`` in completion order, with at most ``limit`` running at once.

    The iterable is drawn from only when a slot is free, so a generator of coroutines over a
    huge or endless input keeps memory flat (at most ``limit`` running plus the finished ones
    not yet taken). Leaving the loop early cancels what still runs.
    """
    if limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit}")
    source = iter(awaitables)
    running: set[asyncio.Future[T]] = set()
    exhausted = False

    def fill() -> None:
        nonlocal exhausted
        while not exhausted and len(running) < limit:
            try:
                running.add(asyncio.ensure_future(next(source)))
            except StopIteration:
                exhausted = True

    try:
        fill()
        while running:
            done, running = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
            fill()  # start the next ones before handing results out, so slots never idle
            for future in done:
                yield future.result()
    finally:
        for future in running:
            future.cancel()
        if running:
            await asyncio.gather(*running, return_exceptions=True)

"""A chat client for any OpenAI-compatible endpoint (OpenAI, vLLM, Ollama, LM Studio).

``ChatClient.complete(messages)`` returns the reply text. Transient faults (429, 408, 409, 5xx,
timeouts, a connection dropped mid-reply, a 200 that is no completion) are retried here, not by
the ``openai`` client, so that each retry is counted: exponential backoff with jitter, or the
server's ``Retry-After`` (capped by ``ChatSettings.max_retry_wait``). Other HTTP errors, and a
connection that cannot be made at all (refused, unknown host, TLS or proxy failure), are raised
at once: retrying an endpoint that is not there only makes the user wait.

Every request is bounded. ``ChatSettings.timeout`` is a deadline on the whole request, headers
and body (a server trickling one byte a second never trips a per-read timeout); a reply body
may hold at most ``ChatSettings.max_reply_bytes`` (1 MiB), counted as it arrives, redirects
included; replies are asked for uncompressed and a compressed one is refused, since its size
cannot be bounded before it is decoded. One request therefore costs at most ``timeout`` seconds
and ``max_reply_bytes`` of memory, and one ``chat`` call at most ``(max_retries + 1) * timeout``
seconds plus the waits between retries.

The endpoint is checked when ``ChatSettings`` is made, before anything is sent: the base URL,
the proxy variables (``HTTP_PROXY``, ``HTTPS_PROXY``, ``ALL_PROXY``; socks needs ``socksio``),
``SSL_CERT_FILE`` and the API key's characters; each problem is one ``LLMError`` naming the
setting and what was expected.

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
import functools
import logging
import math
import os
import random
import re
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from acp import defaults
from acp.errors import LLMError, quoted
from acp.settings_record import recorded

if TYPE_CHECKING:
    import httpx2
    import openai

log = logging.getLogger(__name__)

T = TypeVar("T")

Message = dict[str, Any]
RETRY_STATUSES = frozenset({408, 409, 429})  # and every 5xx
_FORMAT_WORDS = ("response_format", "json_schema", "json_object", "structured output", "guided")
_FORMAT_STEPS: dict[str, str | None] = {"json_schema": "json_object", "json_object": None}
_NO_KEY = "no-key"  # local servers ignore the key, but the openai client insists on one
OPENAI_URL = "https://api.openai.com/v1"  # base_url None: OpenAI itself, whatever OPENAI_BASE_URL says
# Largest reply body read. A plan is a few kB and a rating a few bytes; 1 MiB holds a reply of
# some 250k tokens, far more than any chat model writes in one answer.
MAX_REPLY_BYTES = 1 << 20
PROXY_VARIABLES = ("ALL_PROXY", "HTTP_PROXY", "HTTPS_PROXY")  # read in either case, as httpx does
_PROXY_SCHEMES = ("http", "https", "socks5", "socks5h")
_USERINFO = re.compile(r"(?<=://)[^/?#@\s]*@")  # a password in a URL, e.g. a proxy's


@dataclass(frozen=True)
class ChatSettings:
    """Where and how to ask. ``base_url=None`` means OpenAI itself (then ``api_key`` is needed)."""

    model: str
    base_url: str | None = None
    # A run's settings record the endpoint and model only (acp.settings_record): the rest
    # changes how requests go, and the key is a secret.
    api_key: str | None = field(default=None, repr=False, metadata=recorded(skip=True))
    # seconds for one request, its whole reply included
    timeout: float = field(default=defaults.LLM_TIMEOUT, metadata=recorded(skip=True))
    max_retries: int = field(default=5, metadata=recorded(skip=True))  # transport retries per request
    concurrency: int = field(default=defaults.LLM_CONCURRENCY, metadata=recorded(skip=True))  # in flight
    temperature: float | None = field(default=0.7, metadata=recorded(skip=True))
    retry_backoff: float = field(default=1.0, metadata=recorded(skip=True))  # first backoff; doubles
    max_retry_wait: float = field(default=60.0, metadata=recorded(skip=True))  # cap of any wait
    max_reply_bytes: int = field(default=MAX_REPLY_BYTES, metadata=recorded(skip=True))
    # How the user gave ``base_url``, for the message when it is malformed.
    base_url_name: str = field(default="--llm-base-url (or OPENAI_BASE_URL)", repr=False, compare=False,
                               metadata=recorded(skip=True))

    def __post_init__(self) -> None:
        if not self.model or not self.model.strip():
            raise LLMError("an LLM model name is needed (e.g. --llm-model gpt-4o-mini)")
        if not (math.isfinite(self.timeout) and self.timeout > 0):  # NaN and inf included
            raise LLMError(f"the LLM timeout must be a finite number of seconds > 0, got {self.timeout:g}")
        if self.max_retries < 0:
            raise LLMError(f"max_retries must be >= 0, got {self.max_retries}")
        if self.concurrency < 1:
            raise LLMError(f"concurrency must be >= 1, got {self.concurrency}")
        if self.retry_backoff < 0 or self.max_retry_wait < 0:
            raise LLMError("retry_backoff and max_retry_wait must be >= 0")
        if self.max_reply_bytes < 1:
            raise LLMError(f"max_reply_bytes must be >= 1, got {self.max_reply_bytes}")
        if self.base_url is None and not self.api_key:
            raise LLMError("no API key for OpenAI: set OPENAI_API_KEY or give --llm-base-url")
        check_endpoint(self)

    @property
    def url(self) -> str:
        """The base URL requests go to."""
        return self.base_url if self.base_url is not None else OPENAI_URL


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


class LLMReplyRefused(LLMError):
    """A reply body over ``max_reply_bytes``, or compressed: not read, and not asked again
    (the same request would bring the same reply)."""


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
            base_url=settings.url,
            timeout=settings.timeout,
            max_retries=0,  # retried below, where they can be counted
            http_client=bounded_http_client(settings),
        )
        self._rejected_formats: set[str] = set()
        self._random = random.Random()
        self.requests = 0
        self.retries = 0

    def __repr__(self) -> str:
        return f"ChatClient(model={self.settings.model!r}, base_url={self._safe_url!r})"

    @property
    def _safe_url(self) -> str:
        return self.redact(safe_url(str(self._client.base_url)))

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
            retry = unexpected = False
            try:
                request = asyncio.ensure_future(self._client.chat.completions.create(**kwargs))
                request.add_done_callback(_seen)
                response = await asyncio.wait_for(request, self.settings.timeout)
            except asyncio.TimeoutError:
                what, retry = f"no complete reply within {self.settings.timeout:g} s", True
            except LLMReplyRefused as error:
                what = str(error)
            except openai.APIStatusError as error:
                status, what = error.status_code, f"HTTP {error.status_code}: {self._error_detail(error)}"
                retry_after = _retry_after(error.response.headers)
                retry = status in RETRY_STATUSES or status >= 500
            except openai.APIConnectionError as error:
                what, retry = self._connection_failure(error)
            except openai.APIResponseValidationError:
                what, retry = not_a_completion, True
            except openai.OpenAIError as error:
                what, unexpected = self.redact(f"{type(error).__name__}: {error}"), True
            except (ValueError, RecursionError):  # the client failed to decode a 200's body
                what, retry = not_a_completion, True
            else:
                reply = self._reply(response, retries, sent)
                if reply is not None:
                    return reply
                what, retry = not_a_completion, True
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
            if not retry or retries >= self.settings.max_retries:
                raise LLMTransportError(f"{self.settings.model} at {self._safe_url}: {what}{_after(retries)}",
                                        retries)
            wait = self._wait(retries, retry_after)
            log.debug("%s at %s: %s; retry %d in %.2fs", self.settings.model, self._safe_url,
                      what, retries + 1, wait)
            self.retries += 1
            retries += 1
            await asyncio.sleep(wait)

    def _connection_failure(self, error: openai.APIConnectionError) -> tuple[str, bool]:
        """What went wrong, and whether it is worth another try: a timeout or a connection
        dropped mid-reply is; a connection that could not be made (refused, unknown host, no
        route, TLS, proxy) is not, since the next try meets the same closed door."""
        import anyio
        import httpx2
        import openai

        if isinstance(error, openai.APITimeoutError):
            return "timed out", True
        cause = error.__cause__
        if isinstance(cause, httpx2.ReadError | httpx2.WriteError | httpx2.RemoteProtocolError
                      | anyio.EndOfStream):
            return "the connection dropped before the reply was complete", True
        detail = self.redact(safe_url(" ".join(_os_reason(cause).split())))[:200]
        kind = "proxy failed" if isinstance(cause, httpx2.ProxyError) else "could not connect"
        return f"{kind} ({detail or type(cause).__name__})", False

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


def _seen(request: asyncio.Future[Any]) -> None:
    """Mark a request's error as read. ``wait_for`` reads it when it returns; when it gave up on
    the request instead (the deadline, a cancel) and the request failed on its way out (on a
    client closed under it, say), asyncio would log that error as never retrieved."""
    if not request.cancelled():
        request.exception()


def _retry_after(headers: Any) -> float | None:
    """Seconds asked by ``retry-after-ms`` or ``retry-after`` (seconds or an HTTP date); None
    when neither says a number ("nan" is no wait asked, so the backoff applies)."""
    try:
        if headers.get("retry-after-ms"):
            seconds = float(headers["retry-after-ms"]) / 1000
            return seconds if not math.isnan(seconds) else None
        value = headers.get("retry-after")
    except (AttributeError, ValueError):
        return None
    if not value:
        return None
    try:
        seconds = float(value)
        return seconds if not math.isnan(seconds) else None
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _os_reason(error: BaseException | None) -> str:
    """The operating system's words for a failed connection ("Connection refused", "Name or
    service not known"), found down the chain of causes; else the error's own text."""
    found, seen = str(error or ""), 0
    while error is not None and seen < 10:
        if isinstance(error, OSError) and error.errno is not None:
            return os.strerror(error.errno) if error.errno > 0 else str(error.strerror)
        error, seen = error.__cause__ or error.__context__, seen + 1
    return found


def safe_url(text: str) -> str:
    """``text`` with the password of any URL in it (``http://user:secret@host``) replaced."""
    return _USERINFO.sub("***@", text)


def check_endpoint(settings: ChatSettings) -> None:
    """Raise ``LLMError`` naming the setting when the endpoint cannot even be tried: a malformed
    base URL, proxy variable or ``SSL_CERT_FILE``, or an API key no HTTP header can carry (the
    key itself is never quoted). Everything the HTTP client would trip on when it is made is
    found here, before any request or output."""
    import httpx2

    name = settings.base_url_name
    expected = "expected an http:// or https:// URL such as http://localhost:8000/v1"
    try:
        url = httpx2.URL(settings.url)
        port = url.port
    except (httpx2.InvalidURL, ValueError) as error:
        raise LLMError(f"{name}: {expected}, got {quoted(safe_url(settings.url))} ({error})") from None
    if url.scheme not in ("http", "https") or not url.host:
        raise LLMError(f"{name}: {expected}, got {quoted(safe_url(settings.url))}")
    if port is not None and not 0 < port < 65536:
        raise LLMError(f"{name}: the port must be 1-65535, got {port}")
    key = settings.api_key or ""
    if key and not (key.isascii() and key.isprintable() and not any(c.isspace() for c in key)):
        raise LLMError("the API key (OPENAI_API_KEY) holds white space, a control character or a "
                       "non-ASCII letter, which no HTTP header can carry; check how it was set")
    for variable in PROXY_VARIABLES:
        for spelling in (variable, variable.lower()):
            if os.environ.get(spelling):
                _check_proxy(spelling, os.environ[spelling])
    cert_file = os.environ.get("SSL_CERT_FILE")
    if cert_file and not os.path.isfile(cert_file):  # a FIFO would block the read for good
        why = "not a regular file" if os.path.exists(cert_file) else "no such file"
        raise LLMError(f"SSL_CERT_FILE: expected a file of CA certificates, got {quoted(cert_file)} "
                       f"({why}); unset it or fix the path")
    try:
        bounded_http_client(settings)
    except (OSError, ValueError) as error:  # ssl.SSLError is an OSError: no certificate in the file
        where = f"SSL_CERT_FILE {quoted(cert_file)}" if cert_file else "the TLS set-up"
        raise LLMError(f"{where}: {error}") from None


def _check_proxy(variable: str, value: str) -> None:
    import importlib.util

    import httpx2

    shown = quoted(safe_url(value))
    expected = "expected a proxy URL such as http://proxy:3128 (http, https, socks5 or socks5h)"
    try:
        url = httpx2.URL(value if "://" in value else f"http://{value}")  # as httpx reads it
        url.port  # noqa: B018  (parsing the port is what raises)
    except (httpx2.InvalidURL, ValueError) as error:
        raise LLMError(f"{variable}: {expected}, got {shown} ({error})") from None
    if url.scheme not in _PROXY_SCHEMES or not url.host:
        raise LLMError(f"{variable}: {expected}, got {shown}")
    if url.scheme.startswith("socks") and importlib.util.find_spec("socksio") is None:
        raise LLMError(f"{variable}: a socks proxy needs the socksio package (pip install socksio), "
                       f"or unset {variable}")


def bounded_http_client(settings: ChatSettings) -> httpx2.AsyncClient:
    """The HTTP client under the ``openai`` one: the openai defaults (connection limits,
    redirects, proxies from the environment), replies asked for uncompressed, and every reply
    body (redirects' too) cut off past ``settings.max_reply_bytes``."""
    import httpx2
    import openai

    limit = settings.max_reply_bytes

    async def bound(response: httpx2.Response) -> None:
        encoding = response.headers.get("content-encoding", "").strip().lower()
        if encoding not in ("", "identity"):
            raise LLMReplyRefused(f"the reply came compressed ({quoted(encoding, 40)}) though asked "
                                  "for none; its size cannot be bounded before it is decoded")
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and (len(declared) > 15 or int(declared) > limit):
            raise LLMReplyRefused(_too_large(limit))
        assert isinstance(response.stream, httpx2.AsyncByteStream)  # an AsyncClient's always is
        response.stream = _bounded_stream()(response.stream, limit)

    return openai.DefaultAsyncHttpxClient(
        timeout=settings.timeout,
        headers={"Accept-Encoding": "identity"},
        event_hooks={"response": [bound]},
    )


def _too_large(limit: int) -> str:
    return f"the reply is larger than {limit:,} bytes; not read"


@functools.cache
def _bounded_stream() -> Callable[[httpx2.AsyncByteStream, int], httpx2.AsyncByteStream]:
    """The class of a response body that raises ``LLMReplyRefused`` once more than ``limit``
    bytes came (made on first use: httpx2 is imported only where a request is made)."""
    import httpx2

    class BoundedStream(httpx2.AsyncByteStream):
        def __init__(self, stream: httpx2.AsyncByteStream, limit: int):
            self._stream, self._limit = stream, limit

        async def __aiter__(self) -> AsyncIterator[bytes]:
            received = 0
            async for chunk in self._stream:
                received += len(chunk)
                if received > self._limit:
                    raise LLMReplyRefused(_too_large(self._limit))
                yield chunk

        async def aclose(self) -> None:
            await self._stream.aclose()

    return BoundedStream


async def as_completed_bounded(awaitables: Iterable[Awaitable[T]], limit: int) -> AsyncGenerator[T, None]:
    """Results of ``awaitables`` in completion order, with at most ``limit`` running at once.

    The iterable is drawn from only when a slot is free, so a generator of coroutines over a
    huge or endless input keeps memory flat (at most ``limit`` running plus the finished ones
    not yet taken). Leaving the loop early cancels what still runs; when one raises, the
    errors of the others finished with it are dropped with them (never logged as unretrieved).
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

    ready: list[asyncio.Future[T]] = []
    try:
        fill()
        while running:
            done, running = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
            fill()  # start the next ones before handing results out, so slots never idle
            ready = list(done)
            while ready:
                yield ready.pop().result()
    finally:
        for future in running:
            future.cancel()
        if running:
            await asyncio.gather(*running, return_exceptions=True)
        for future in ready:
            if not future.cancelled():
                future.exception()  # retrieved: it goes with the error being raised

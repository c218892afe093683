"""A real chat-completions HTTP server on 127.0.0.1 for tests and benchmarks.

It speaks enough of the OpenAI protocol for the ``openai`` client (``POST /v1/chat/completions``,
a JSON ``chat.completion`` with ``choices[0].message.content``, ``usage`` and ids, OpenAI-style
error bodies) and is scripted per test: ``server.script(reply, ...)`` queues replies that are
served in arrival order; when the queue is empty, ``server.responder(body)`` is asked, if set.
Every request is recorded in ``server.requests``, with how many bytes of its answer went out
(``sent``) and whether all of them did (``finished``). ``raw_body`` answers 200 with a body that
is no completion, as a proxy or login page in front of the endpoint does; ``trickle`` sends a
reply one byte at a time, ``unsized`` without a Content-Length (the body ends when the
connection closes), and ``gzipped`` compressed.

The ``*_text`` functions write the kinds of replies real models send: valid, fenced,
prose-wrapped, pixel coordinates, corners instead of sizes, truncated, schema-violating.
"""

from __future__ import annotations

import collections
import gzip
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

REASK_MARKER = "Your reply could not be used"


@dataclass
class Reply:
    """One scripted answer: a completion (``content``) or an HTTP error (``status`` >= 400)."""

    content: str | None = ""
    status: int = 200
    delay: float = 0.0  # seconds to wait before answering
    headers: dict[str, str] = field(default_factory=dict)
    message: str = ""  # error message for status >= 400
    echo_headers: bool = False  # put the request headers into the error message (leak tests)
    drop: bool = False  # close the connection without answering
    finish_reason: str = "stop"
    body: str | None = None  # sent as is instead of a completion (a proxy's page, say)
    content_type: str = "application/json"  # of ``body``
    trickle: float = 0.0  # seconds between two pieces of the body (a server that stalls)
    piece: int = 1  # bytes of the body sent at a time when it trickles
    sized: bool = True  # send a Content-Length; without one, the body ends with the connection
    gzip: bool = False  # send the body gzip-compressed, with Content-Encoding: gzip


def ok(content: str | None, delay: float = 0.0, finish_reason: str = "stop") -> Reply:
    return Reply(content=content, delay=delay, finish_reason=finish_reason)


def raw_body(body: str = "<html>oops</html>", content_type: str = "text/html") -> Reply:
    """HTTP 200 whose body is not a chat completion (a login page, a misrouted proxy)."""
    return Reply(body=body, content_type=content_type)


def trickle(content: str, seconds_per_byte: float) -> Reply:
    """A completion whose body comes one byte every ``seconds_per_byte``: each read gets data
    within any per-read timeout, so only a deadline on the whole request stops it."""
    return Reply(content=content, trickle=seconds_per_byte)


def unsized(content: str) -> Reply:
    """A completion sent without Content-Length (HTTP/1.1 read-until-close)."""
    return Reply(content=content, sized=False)


def gzipped(content: str) -> Reply:
    return Reply(content=content, gzip=True)


def error(status: int, message: str = "server error", retry_after: str | None = None,
          echo_headers: bool = False) -> Reply:
    headers = {"Retry-After": retry_after} if retry_after is not None else {}
    return Reply(status=status, message=message, headers=headers, echo_headers=echo_headers)


@dataclass
class Recorded:
    path: str
    headers: dict[str, str]
    body: dict[str, Any]
    at: float
    sent: int = 0  # bytes of the answer's body written to the client
    finished: bool = False  # the whole body was written

    @property
    def messages(self) -> list[dict[str, Any]]:
        return list(self.body.get("messages", []))

    @property
    def response_format(self) -> str | None:
        fmt = self.body.get("response_format")
        return fmt.get("type") if isinstance(fmt, dict) else None


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # socketserver's default listen backlog is 5: a burst of connections beyond it has its SYNs
    # dropped and retried by the kernel a second later, which would look like a slow client.
    request_queue_size = 128


class ChatServer:
    def __init__(self) -> None:
        self._queue: collections.deque[Reply] = collections.deque()
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self.requests: list[Recorded] = []
        self.responder: Callable[[dict[str, Any]], Reply] | None = None
        self.reject_formats: set[str] = set()  # response_format types answered with a 400
        self._server = _Server(("127.0.0.1", 0), self._handler_class())
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.02,), daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/v1"

    def start(self) -> ChatServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        self._server.shutdown()
        self._server.server_close()

    def script(self, *replies: Reply) -> None:
        with self._lock:
            self._queue.extend(replies)

    @property
    def pending(self) -> int:
        with self._lock:
            return len(self._queue)

    def _next_reply(self, body: dict[str, Any]) -> Reply:
        with self._lock:
            if self._queue:
                return self._queue.popleft()
        if self.responder is not None:
            return self.responder(body)
        return error(500, "the test server has no scripted reply left")

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as real servers do
            # Headers and body go out in two writes; with Nagle on, the second waits for the
            # client's delayed ACK (~40 ms a reply), which would dwarf what the tests measure.
            disable_nagle_algorithm = True

            def log_message(self, format: str, *args: Any) -> None:  # quiet test output
                pass

            def do_POST(self) -> None:
                self.reply: Reply | None = None  # one handler serves every request of a connection
                length = int(self.headers.get("Content-Length", "0"))
                raw = self.rfile.read(length)
                try:
                    body = json.loads(raw or b"{}")
                except json.JSONDecodeError:
                    body = {}
                headers = {k.lower(): v for k, v in self.headers.items()}
                self.recorded = Recorded(self.path, headers, body, time.monotonic())
                with server._lock:
                    server.requests.append(self.recorded)
                if not self.path.rstrip("/").endswith("/chat/completions"):
                    self._send(404, {"error": {"message": f"no route {self.path}", "type": "not_found"}})
                    return
                fmt = body.get("response_format")
                if isinstance(fmt, dict) and fmt.get("type") in server.reject_formats:
                    self._send(400, {"error": {
                        "message": f"response_format type '{fmt['type']}' is not supported by this model",
                        "type": "invalid_request_error", "param": "response_format", "code": None}})
                    return
                try:
                    reply = server._next_reply(body)
                except Exception as failure:  # a broken responder shows up as a 500, not a hang
                    reply = error(500, f"test server responder failed: {failure!r}")
                if reply.delay and server._stopping.wait(reply.delay):
                    return
                if reply.drop:
                    self.close_connection = True
                    return
                self.reply = reply
                if reply.body is not None:  # 200 unless a status is given (a redirect's, say)
                    self._send_bytes(reply.status, reply.body.encode(), reply.content_type, reply.headers)
                    return
                if reply.status >= 400:
                    message = reply.message
                    if reply.echo_headers:
                        message += f" (request headers: {headers})"
                    self._send(reply.status, {"error": {"message": message, "type": "server_error",
                                                        "code": str(reply.status)}}, reply.headers)
                    return
                prompt_tokens = sum(len(str(m.get("content", "")).split()) for m in body.get("messages", []))
                completion_tokens = len((reply.content or "").split())
                self._send(200, {
                    "id": f"chatcmpl-{len(server.requests)}",
                    "object": "chat.completion",
                    "created": int(time.time()),
                    "model": body.get("model", "test-model"),
                    "system_fingerprint": "fp_test",
                    "choices": [{
                        "index": 0,
                        "message": {"role": "assistant", "content": reply.content},
                        "finish_reason": reply.finish_reason,
                        "logprobs": None,
                    }],
                    "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                              "total_tokens": prompt_tokens + completion_tokens},
                }, reply.headers)

            def _send(self, status: int, payload: dict[str, Any],
                      headers: dict[str, str] | None = None) -> None:
                self._send_bytes(status, json.dumps(payload).encode(), "application/json", headers)

            def _send_bytes(self, status: int, data: bytes, content_type: str,
                            headers: dict[str, str] | None = None) -> None:
                reply = self.reply
                if reply is not None and reply.gzip:
                    data = gzip.compress(data)
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", content_type)
                    if reply is None or reply.sized:
                        self.send_header("Content-Length", str(len(data)))
                    else:
                        self.send_header("Connection", "close")
                        self.close_connection = True
                    if reply is not None and reply.gzip:
                        self.send_header("Content-Encoding", "gzip")
                    for name, value in (headers or {}).items():
                        self.send_header(name, value)
                    self.end_headers()
                    if reply is not None and reply.trickle:
                        for k in range(0, len(data), reply.piece):
                            if server._stopping.wait(reply.trickle):
                                return
                            self.wfile.write(data[k : k + reply.piece])
                            self.wfile.flush()
                            self.recorded.sent += len(data[k : k + reply.piece])
                    else:
                        self.wfile.write(data)
                        self.recorded.sent = len(data)
                    self.recorded.finished = True
                except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout)
                    self.close_connection = True

        return Handler


@pytest.fixture(name="chat_server")
def chat_server_fixture() -> Iterator[ChatServer]:
    """A started ``ChatServer``; import ``chat_server_fixture`` and ask for ``chat_server``."""
    server = ChatServer().start()
    try:
        yield server
    finally:
        server.stop()


def refused_url() -> str:
    """A base URL on 127.0.0.1 where nothing listens (the port was just freed)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


# --- reply texts -------------------------------------------------------------------------------

def concepts_of(body: dict[str, Any]) -> list[str]:
    """The concepts of the scene asked in a request (its first ``Concepts:`` line after the
    few-shot examples, i.e. in the last message that is not a re-ask)."""
    for message in reversed(body.get("messages", [])):
        content = str(message.get("content", ""))
        if message.get("role") == "user" and content.startswith("Concepts: "):
            return list(json.loads(content.splitlines()[0].removeprefix("Concepts: ")))
    raise ValueError("no Concepts: line in the request")


def is_reask(body: dict[str, Any]) -> bool:
    messages = body.get("messages", [])
    return bool(messages) and REASK_MARKER in str(messages[-1].get("content", ""))


def layout(concepts: list[str]) -> dict[str, Any]:
    """A valid draft for ``concepts``: side-by-side boxes in the lower part of the frame.

    Boxes sit at y = 0.35 with h = 0.5, so read as corners ``[x1, y1, x2, y2]`` they would leave
    the frame as ``[x, y, w, h]`` (``y + h = 1.2``): the corners-reply below is unambiguous.
    """
    n = max(1, len(concepts))
    step = 1 / n
    objects = [
        {"id": i, "category": c, "description": f"a {c} seen in daylight",
         "bbox": [round(i * step + 0.1 * step, 6), 0.35, round(0.8 * step, 6), 0.5], "depth": 0.5}
        for i, c in enumerate(concepts)
    ]
    relations = [{"subject": 0, "predicate": "left of", "object": 1}] if n > 1 else []
    return {"caption": "A photo of " + ", ".join(concepts) + ".", "background": "a plain room",
            "objects": objects, "relations": relations}


def valid_text(concepts: list[str], width: int = 512, height: int = 512) -> str:
    return json.dumps(layout(concepts))


def _with_boxes(concepts: list[str], convert: Callable[[list[float]], list[Any]]) -> str:
    draft = layout(concepts)
    for item in draft["objects"]:
        item["bbox"] = convert(item["bbox"])
    return json.dumps(draft)


def fenced_text(concepts: list[str], width: int = 512, height: int = 512) -> str:
    return "```json\n" + json.dumps(layout(concepts), indent=2) + "\n```"


def prose_text(concepts: list[str], width: int = 512, height: int = 512) -> str:
    return ("Sure! Here is a scene {as requested}:\n\n" + json.dumps(layout(concepts))
            + "\n\nLet me know if you want changes.")


def trailing_commas_text(concepts: list[str], width: int = 512, height: int = 512) -> str:
    return valid_text(concepts).replace("]", ",]").replace("}", ",}")


def wrapped_text(concepts: list[str], width: int = 512, height: int = 512) -> str:
    return json.dumps({"scene": layout(concepts)})


def box_alias_text(concepts: list[str], width: int = 512, height: int = 512) -> str:
    draft = layout(concepts)
    for item in draft["objects"]:
        item["box"] = item.pop("bbox")
    return json.dumps(draft)


def string_numbers_text(concepts: list[str], width: int = 512, height: int = 512) -> str:
    return _with_boxes(concepts, lambda b: [str(v) for v in b])


def pixels_text(concepts: list[str], width: int = 512, height: int = 512) -> str:
    return _with_boxes(concepts, lambda b: [b[0] * width, b[1] * height, b[2] * width, b[3] * height])


def xyxy_text(concepts: list[str], width: int = 512, height: int = 512) -> str:
    return _with_boxes(concepts, lambda b: [b[0], b[1], b[0] + b[2], b[1] + b[3]])


def pixels_xyxy_text(concepts: list[str], width: int = 512, height: int = 512) -> str:
    return _with_boxes(concepts, lambda b: [b[0] * width, b[1] * height,
                                            (b[0] + b[2]) * width, (b[1] + b[3]) * height])


def overshoot_text(concepts: list[str], width: int = 512, height: int = 512) -> str:
    draft = layout(concepts)
    x, y, _, h = draft["objects"][-1]["bbox"]
    draft["objects"][-1]["bbox"] = [x, y, round(1.01 - x, 6), h]  # 0.01 past the right edge
    return json.dumps(draft)


def truncated_relations_text(concepts: list[str], width: int = 512, height: int = 512) -> str:
    """Cut inside the relations: every object survives, the half relation is dropped."""
    text = json.dumps(layout(concepts))
    if '"predicate"' not in text:  # one object, no relation: lose the closing brace only
        return text[:-1]
    return text[: text.index('"predicate"') + 8]


def truncated_objects_text(concepts: list[str], width: int = 512, height: int = 512) -> str:
    """Cut inside the last object's box: that object is lost, so a concept is missing."""
    text = json.dumps(layout(concepts))
    last = text.rindex('"bbox"')
    return text[: last + 12]


def schema_violation_text(concepts: list[str], width: int = 512, height: int = 512) -> str:
    draft = layout(concepts)
    draft["objects"][0]["bbox"][2] = -0.2  # negative width
    draft["objects"][0]["colour"] = "red"  # unknown key
    del draft["caption"]
    return json.dumps(draft)


TextMaker = Callable[..., str]


def _with_extra_object(draft: dict[str, Any], bbox: list[float]) -> dict[str, Any]:
    objects = draft["objects"]
    objects.append({"id": len(objects), "category": "lamp", "description": "a brass lamp", "bbox": bbox})
    return draft


def extra_object(category: str) -> TextMaker:
    """A reply maker: a valid layout plus one object of ``category`` in the top-left corner."""

    def make(concepts: list[str], width: int = 512, height: int = 512) -> str:
        draft = _with_extra_object(layout(concepts), [0.02, 0.02, 0.2, 0.2])
        draft["objects"][-1].update(category=category, description=f"a {category} in the corner")
        return json.dumps(draft)

    return make


def long_integer(digits: int) -> TextMaker:
    """A reply maker: a valid layout whose first box width is an integer of ``digits`` digits
    (valid JSON that Python cannot convert: 4300 digits and more to ``int``, 309 and more to
    ``float``)."""

    def make(concepts: list[str], width: int = 512, height: int = 512) -> str:
        draft = layout(concepts)
        draft["objects"][0]["bbox"][2] = "@NUMBER@"
        return json.dumps(draft).replace('"@NUMBER@"', "9" * digits)

    return make


def missing_concept_text(concepts: list[str], width: int = 512, height: int = 512) -> str:
    return json.dumps(layout([*concepts[:-1], "unicycle"]))


def overlap_text(concepts: list[str], width: int = 512, height: int = 512) -> str:
    """An extra object drawn right over the first one (IoU 1)."""
    draft = layout(concepts)
    return json.dumps(_with_extra_object(draft, list(draft["objects"][0]["bbox"])))


def mixed_units_text(concepts: list[str], width: int = 512, height: int = 512) -> str:
    """Scene boxes in pixels plus an extra normalised box: ambiguous, so not repaired."""
    draft = layout(concepts)
    for item in draft["objects"]:
        x, y, w, h = item["bbox"]
        item["bbox"] = [x * width, y * height, w * width, h * height]
    return json.dumps(_with_extra_object(draft, [0.02, 0.02, 0.2, 0.2]))


def empty_text(concepts: list[str], width: int = 512, height: int = 512) -> str:
    return ""


def refusal_text(concepts: list[str], width: int = 512, height: int = 512) -> str:
    return "I'm sorry, I can't help with planning this scene."


# name -> (reply maker, what the planner should make of it on the first reply:
#   "parsed": used as is; "repaired": used with repairs; "reask": needs another reply)
MALFORMED: dict[str, tuple[TextMaker, str]] = {
    "fenced": (fenced_text, "parsed"),
    "prose": (prose_text, "parsed"),
    "trailing_commas": (trailing_commas_text, "parsed"),
    "wrapped": (wrapped_text, "parsed"),
    "box_alias": (box_alias_text, "parsed"),
    "string_numbers": (string_numbers_text, "parsed"),
    "pixels": (pixels_text, "repaired"),
    "xyxy": (xyxy_text, "repaired"),
    "pixels_xyxy": (pixels_xyxy_text, "repaired"),
    "overshoot": (overshoot_text, "repaired"),
    "truncated_relations": (truncated_relations_text, "repaired"),
    "truncated_objects": (truncated_objects_text, "reask"),
    "schema_violation": (schema_violation_text, "reask"),
    "missing_concept": (missing_concept_text, "reask"),
    "overlap": (overlap_text, "reask"),
    "mixed_units": (mixed_units_text, "reask"),
    "empty": (empty_text, "reask"),
    "refusal": (refusal_text, "reask"),
}


def first_bad_then_valid(maker: TextMaker, width: int = 512, height: int = 512,
                         delay: float = 0.0) -> Callable[[dict[str, Any]], Reply]:
    """A responder: ``maker``'s reply to a new scene, a valid reply to a re-ask."""

    def respond(body: dict[str, Any]) -> Reply:
        concepts = concepts_of(body)
        text = valid_text(concepts) if is_reask(body) else maker(concepts, width, height)
        return ok(text, delay=delay)

    return respond


def always(maker: TextMaker, width: int = 512, height: int = 512,
           delay: float = 0.0) -> Callable[[dict[str, Any]], Reply]:
    """A responder giving ``maker``'s reply to every request."""
    return lambda body: ok(maker(concepts_of(body), width, height), delay=delay)


def main() -> None:
    """``python -m tests.chat_server --delay 0.2``: serve valid plans from a separate process
    (benchmarks: the server's own work then does not compete with the client for the GIL).
    Prints the base URL on the first line of stdout, then serves until killed."""
    import argparse
    import sys

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--delay", type=float, default=0.0, help="seconds before each reply")
    args = parser.parse_args()
    server = ChatServer()
    server.responder = always(lambda concepts, width, height: valid_text(concepts), delay=args.delay)
    server.start()
    print(server.url, flush=True)
    sys.stdout.close()
    threading.Event().wait()


if __name__ == "__main__":
    main()

"""The LLM planner and chat client against a real chat-completions server on 127.0.0.1."""

from __future__ import annotations

import asyncio
import gc
import importlib.util
import json
import logging
import math
import string
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from acp.errors import InputError, LLMError
from acp.llm import ChatClient, ChatSettings, LLMConfigError, LLMTransportError, as_completed_bounded
from acp.plan.base import PlanOutcome, PlanSettings, SceneRequest
from acp.plan.llm import LLMPlanner, example_messages, scene_prompt, system_prompt
from acp.plan.parse import parse_plan
from acp.resources import read_prompt
from acp.schema import MIN_BOX_SIDE, LayoutRules, ScenePlan, layout_problems
from tests.chat_server import (  # noqa: F401  (chat_server_fixture provides chat_server)
    MALFORMED,
    REASK_MARKER,
    ChatServer,
    Reply,
    always,
    chat_server_fixture,
    concepts_of,
    error,
    extra_object,
    first_bad_then_valid,
    gzipped,
    long_integer,
    ok,
    raw_body,
    refused_url,
    schema_violation_text,
    trickle,
    unsized,
    valid_text,
)

KEY = "sk-test-DO-NOT-LEAK-4f9a2c1e77"
CONCEPTS = ("dog", "frisbee")


def settings_for(url: str, **overrides: Any) -> ChatSettings:
    values: dict[str, Any] = {"model": "test-model", "base_url": url, "api_key": KEY, "timeout": 5.0,
                              "max_retries": 3, "retry_backoff": 0.01, "concurrency": 4}
    values.update(overrides)
    return ChatSettings(**values)


def request(index: int = 0, concepts: tuple[str, ...] = CONCEPTS, **kw: Any) -> SceneRequest:
    return SceneRequest(id=f"scene-{index}", concepts=concepts, seed=1000 + index, **kw)


def plan_one(url: str, req: SceneRequest | None = None, *, max_reasks: int = 2,
             rules: LayoutRules | None = None, categories: tuple[str, ...] | None = None,
             **overrides: Any) -> PlanOutcome:
    plan_settings = PlanSettings(rules=rules or LayoutRules(), categories=categories)
    planner = LLMPlanner(settings_for(url, **overrides), plan_settings, max_reasks=max_reasks)
    outcomes = list(planner.plan_many([req or request()]))
    assert len(outcomes) == 1
    return outcomes[0]


# --- prompts -----------------------------------------------------------------------------------

def test_few_shot_examples_are_valid_plans() -> None:
    examples = json.loads(read_prompt("plan_examples.json"))
    assert len(examples) >= 2
    for k, example in enumerate(examples):
        req = SceneRequest(id=f"example-{k}", concepts=tuple(example["concepts"]), seed=0,
                           width=example["width"], height=example["height"])
        plan = parse_plan(json.dumps(example["reply"]), req, LayoutRules(),
                          categories=example.get("categories"))
        assert plan.repairs == [] and plan.warnings == []
        assert layout_problems(plan, LayoutRules(max_overlap=0.5)) == []
        for obj in plan.objects:  # GLIGEN phrases: short (well under CLIP's 77 tokens)
            assert 3 <= len(obj.description.split()) < 15, obj.description
    messages = example_messages()
    assert [m["role"] for m in messages] == ["user", "assistant"] * len(examples)
    # at least one example shows the allowed categories, and keeps to the requested ones
    assert any("\nAllowed categories: [" in m["content"] for m in messages if m["role"] == "user")


def test_scene_prompt_lists_the_allowed_categories() -> None:
    plain = scene_prompt(["dog", "frisbee"], 512, 384)
    assert plain.startswith('Concepts: ["dog", "frisbee"]\nImage size: 512 x 384')
    assert "Allowed" not in plain
    # every concept of the run, one spelling per category, the scene's own concepts included
    allowed = scene_prompt(["dog", "frisbee"], 512, 384, ("person", "Dogs", "dog", "people", "cat"))
    assert allowed.splitlines()[:3] == [
        'Concepts: ["dog", "frisbee"]',
        'Allowed categories: ["person", "Dogs", "cat", "frisbee"]',
        "Image size: 512 x 384 pixels (width x height).",
    ]
    prompt = system_prompt(PlanSettings())
    assert "Allowed categories" in prompt and "Never add an object of a category that" in prompt
    assert "Add at most a few extra objects" not in prompt


def test_system_prompt_states_the_rules() -> None:
    prompt = system_prompt(PlanSettings(rules=LayoutRules(max_overlap=0.4)))
    assert "$" not in prompt  # every placeholder was filled
    assert "[x, y, w, h]" in prompt and f"{MIN_BOX_SIDE:.4f}" in prompt
    assert "30 objects" in prompt and "40%" in prompt
    assert "relations" in prompt and "depth" in prompt
    assert set(string.Template(read_prompt("plan_system.md")).get_identifiers()) == {
        "max_objects", "min_side", "max_overlap_percent"}


# --- every kind of reply -----------------------------------------------------------------------

@pytest.mark.parametrize("kind", list(MALFORMED))
def test_every_reply_kind_ends_in_a_valid_plan(chat_server: ChatServer, kind: str) -> None:
    maker, expected = MALFORMED[kind]
    chat_server.responder = first_bad_then_valid(maker, 640, 480)
    req = request(concepts=("dog", "frisbee", "person"), width=640, height=480)
    outcome = plan_one(chat_server.url, req)
    assert outcome.plan is not None, outcome.error
    plan = outcome.plan
    ScenePlan.model_validate_json(plan.model_dump_json())
    assert (plan.planner, plan.model, plan.seed, plan.id) == ("openai", "test-model", req.seed, req.id)
    assert (plan.width, plan.height) == (640, 480)
    assert len(chat_server.requests) == outcome.attempts == plan.attempts
    if expected == "reask":
        assert outcome.attempts == 2
        reask = chat_server.requests[1].messages
        assert reask[-2] == {"role": "assistant", "content": maker(list(req.concepts), 640, 480)
                             or "(empty reply)"}
        assert REASK_MARKER in reask[-1]["content"]
    else:
        assert outcome.attempts == 1
        assert bool(plan.repairs) == (expected == "repaired"), plan.repairs
        assert outcome.repairs == plan.repairs


def test_reask_lists_the_validation_errors(chat_server: ChatServer) -> None:
    bad = schema_violation_text(list(CONCEPTS))
    chat_server.script(ok(bad), ok(valid_text(list(CONCEPTS))))
    outcome = plan_one(chat_server.url)
    assert outcome.ok and outcome.attempts == 2
    first, second = chat_server.requests
    assert second.messages[: len(first.messages)] == first.messages  # same conversation, continued
    assert second.messages[-2] == {"role": "assistant", "content": bad}
    problems = second.messages[-1]["content"]
    assert "- caption: Field required" in problems
    assert "- objects[0].colour: Extra inputs are not permitted" in problems
    assert "objects[0].bbox" in problems


def test_reasks_are_bounded_then_the_scene_fails_with_its_raw_reply(chat_server: ChatServer) -> None:
    chat_server.responder = always(schema_violation_text)
    outcome = plan_one(chat_server.url, max_reasks=2)
    assert outcome.plan is None and outcome.attempts == 3
    assert len(chat_server.requests) == 3
    assert outcome.raw == schema_violation_text(list(CONCEPTS))
    assert outcome.error is not None and "no valid plan after 3 replies" in outcome.error
    assert "caption: Field required" in outcome.error


def test_max_reasks_zero_asks_once(chat_server: ChatServer) -> None:
    chat_server.responder = always(schema_violation_text)
    outcome = plan_one(chat_server.url, max_reasks=0)
    assert not outcome.ok and outcome.attempts == 1 and len(chat_server.requests) == 1


def test_null_content_is_an_empty_reply_and_reasked(chat_server: ChatServer) -> None:
    chat_server.script(ok(None), ok(valid_text(list(CONCEPTS))))
    outcome = plan_one(chat_server.url)
    assert outcome.ok and outcome.attempts == 2
    assert "the reply is empty" in chat_server.requests[1].messages[-1]["content"]


# --- categories --------------------------------------------------------------------------------

def test_object_of_a_category_not_allowed_is_reasked(chat_server: ChatServer) -> None:
    # concepts dog, frisbee: an extra person would have no COCO category in `acp generate`
    bad = extra_object("person")(list(CONCEPTS))
    chat_server.script(ok(bad), ok(valid_text(list(CONCEPTS))))
    outcome = plan_one(chat_server.url, categories=CONCEPTS)
    assert outcome.plan is not None and outcome.attempts == 2, outcome.error
    assert [o.category for o in outcome.plan.objects] == ["dog", "frisbee"]
    first, second = chat_server.requests
    assert 'Allowed categories: ["dog", "frisbee"]' in first.messages[-1]["content"]
    assert second.messages[-2] == {"role": "assistant", "content": bad}
    assert REASK_MARKER in second.messages[-1]["content"]
    assert ("- objects[2].category: 'person' is not one of the requested categories: dog, frisbee; "
            "use only these") in second.messages[-1]["content"]


def test_object_of_a_category_not_allowed_fails_the_scene_after_the_reasks(
        chat_server: ChatServer) -> None:
    chat_server.responder = always(extra_object("lamp"))
    outcome = plan_one(chat_server.url, categories=CONCEPTS, max_reasks=1)
    assert not outcome.ok and outcome.attempts == 2
    assert outcome.raw == extra_object("lamp")(list(CONCEPTS))
    assert "objects[2].category: 'lamp' is not one of the requested categories" in (outcome.error or "")


@pytest.mark.parametrize("extra", ["person", "People", "woman", "puppy"])
def test_extra_object_of_another_allowed_category_is_accepted(chat_server: ChatServer,
                                                             extra: str) -> None:
    # the run's categories may be more than the scene's concepts; names match by canonical key
    chat_server.script(ok(extra_object(extra)(list(CONCEPTS))))
    outcome = plan_one(chat_server.url, categories=("dog", "frisbee", "person", "cat"))
    assert outcome.plan is not None and outcome.attempts == 1, outcome.error
    assert [o.category for o in outcome.plan.objects] == ["dog", "frisbee", extra]
    assert 'Allowed categories: ["dog", "frisbee", "person", "cat"]' in (
        chat_server.requests[0].messages[-1]["content"])


def test_without_categories_any_category_is_accepted(chat_server: ChatServer) -> None:
    chat_server.script(ok(extra_object("lamp")(list(CONCEPTS))))
    outcome = plan_one(chat_server.url, categories=None)
    assert outcome.plan is not None and outcome.attempts == 1, outcome.error
    assert [o.category for o in outcome.plan.objects] == ["dog", "frisbee", "lamp"]
    assert "Allowed categories" not in chat_server.requests[0].messages[-1]["content"]


# --- replies the parser cannot read ------------------------------------------------------------

@pytest.mark.parametrize("digits", [400, 5000])
def test_reply_with_a_huge_integer_is_reasked(chat_server: ChatServer, digits: int) -> None:
    # 5000 digits: int() refuses (sys.get_int_max_str_digits); 400 digits: float() overflows
    chat_server.responder = first_bad_then_valid(long_integer(digits))
    outcome = plan_one(chat_server.url)
    assert outcome.plan is not None and outcome.attempts == 2, outcome.error
    reask = chat_server.requests[1].messages[-1]["content"]
    assert f"- (reply): a number has {digits} digits" in reask


@pytest.mark.parametrize("digits", [400, 5000])
def test_reply_with_a_huge_integer_fails_its_scene_not_the_run(chat_server: ChatServer,
                                                               digits: int) -> None:
    def respond(body: dict[str, Any]) -> Reply:  # the "cat" scene gets the bad reply every time
        concepts = concepts_of(body)
        return ok(long_integer(digits)(concepts) if concepts == ["cat"] else valid_text(concepts))

    chat_server.responder = respond
    planner = LLMPlanner(settings_for(chat_server.url, concurrency=2), max_reasks=1)
    outcomes = {o.request.id: o for o in planner.plan_many([request(0, ("cat",)), request(1)])}
    assert outcomes["scene-1"].ok
    failed = outcomes["scene-0"]
    assert not failed.ok and failed.attempts == 2
    assert failed.raw == long_integer(digits)(["cat"])
    assert f"a number has {digits} digits" in (failed.error or "")


def test_any_parser_exception_fails_its_scene_with_the_raw_reply(
        chat_server: ChatServer, monkeypatch: pytest.MonkeyPatch) -> None:
    import acp.plan.llm as llm_module

    real = llm_module.parse_plan

    def buggy(text: str, req: SceneRequest, *args: Any, **kwargs: Any) -> ScenePlan:
        if req.concepts == ("cat",):
            raise ZeroDivisionError("a parser bug")
        return real(text, req, *args, **kwargs)

    monkeypatch.setattr(llm_module, "parse_plan", buggy)
    chat_server.responder = always(lambda c, w, h: valid_text(c))
    planner = LLMPlanner(settings_for(chat_server.url, concurrency=2))
    outcomes = {o.request.id: o for o in planner.plan_many([request(0, ("cat",)), request(1)])}
    assert outcomes["scene-1"].ok
    failed = outcomes["scene-0"]
    assert not failed.ok and failed.attempts == 1  # not re-asked: the reply was not at fault
    assert failed.raw == valid_text(["cat"])
    assert failed.error == "the reply could not be parsed (ZeroDivisionError: a parser bug)"


def test_memory_error_while_parsing_stops_the_run(chat_server: ChatServer,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    import acp.plan.llm as llm_module

    def exhausted(*args: Any, **kwargs: Any) -> ScenePlan:
        raise MemoryError

    monkeypatch.setattr(llm_module, "parse_plan", exhausted)
    chat_server.responder = always(lambda c, w, h: valid_text(c))
    with pytest.raises(MemoryError):
        list(LLMPlanner(settings_for(chat_server.url, concurrency=1)).plan_many([request(0)]))


def test_flagged_overlap_becomes_a_warning(chat_server: ChatServer) -> None:
    overlapping = json.loads(valid_text(list(CONCEPTS)))
    overlapping["objects"][1]["bbox"] = overlapping["objects"][0]["bbox"]
    chat_server.script(ok(json.dumps(overlapping)))
    outcome = plan_one(chat_server.url, rules=LayoutRules(max_overlap=0.5, on_overlap="flag"))
    assert outcome.plan is not None and outcome.attempts == 1
    assert len(outcome.plan.warnings) == 1 and "IoU 1.00" in outcome.plan.warnings[0]


def test_request_carries_model_seed_temperature_and_schema(chat_server: ChatServer) -> None:
    chat_server.script(ok(valid_text(list(CONCEPTS))))
    req = request(3)
    plan_one(chat_server.url, req, temperature=0.2)
    body = chat_server.requests[0].body
    assert body["model"] == "test-model" and body["temperature"] == 0.2
    assert body["seed"] == req.seed % 2**31
    assert body["response_format"]["type"] == "json_schema"
    assert "objects" in body["response_format"]["json_schema"]["schema"]["properties"]
    assert body["messages"][0]["role"] == "system"
    assert body["messages"][-1]["content"].startswith('Concepts: ["dog", "frisbee"]')
    assert chat_server.requests[0].headers["authorization"] == f"Bearer {KEY}"


# --- response_format fallback ------------------------------------------------------------------

def test_json_schema_refused_falls_back_to_json_object_and_remembers(chat_server: ChatServer) -> None:
    chat_server.reject_formats = {"json_schema"}
    chat_server.responder = always(lambda c, w, h: valid_text(c))
    planner = LLMPlanner(settings_for(chat_server.url, concurrency=1))
    outcomes = list(planner.plan_many([request(0), request(1), request(2)]))
    assert all(o.ok for o in outcomes)
    assert all(o.transport_retries == 0 for o in outcomes)  # a fallback is not a transport retry
    assert [r.response_format for r in chat_server.requests] == [
        "json_schema", "json_object", "json_object", "json_object"]


def test_both_formats_refused_falls_back_to_none(chat_server: ChatServer) -> None:
    chat_server.reject_formats = {"json_schema", "json_object"}
    chat_server.responder = always(lambda c, w, h: valid_text(c))
    planner = LLMPlanner(settings_for(chat_server.url, concurrency=1))
    outcomes = list(planner.plan_many([request(0), request(1)]))
    assert all(o.ok for o in outcomes)
    assert [r.response_format for r in chat_server.requests] == ["json_schema", "json_object", None, None]


def test_other_bad_request_is_not_a_format_problem(chat_server: ChatServer) -> None:
    chat_server.script(error(400, "context length exceeded"))
    outcome = plan_one(chat_server.url)
    assert not outcome.ok and "HTTP 400: context length exceeded" in (outcome.error or "")
    assert len(chat_server.requests) == 1 and outcome.transport_retries == 0


# --- transport faults --------------------------------------------------------------------------

def chosen_waits(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The wait the client chooses before each retry, as it chooses them (the clock of a loaded
    machine says only that it waited at least that long)."""
    waits: list[float] = []
    choose = ChatClient._wait

    def spy(self: ChatClient, retries: int, retry_after: float | None) -> float:
        waits.append(choose(self, retries, retry_after))
        return waits[-1]

    monkeypatch.setattr(ChatClient, "_wait", spy)
    return waits


def test_429_waits_for_retry_after(chat_server: ChatServer, monkeypatch: pytest.MonkeyPatch) -> None:
    waits = chosen_waits(monkeypatch)
    chat_server.script(error(429, "slow down", retry_after="1"), ok(valid_text(list(CONCEPTS))))
    outcome = plan_one(chat_server.url)
    assert outcome.ok and outcome.transport_retries == 1 and outcome.attempts == 1
    assert waits == [1.0]  # backoff alone would have been ~0.01 s
    first, second = chat_server.requests
    assert second.at - first.at >= 0.95


@pytest.mark.parametrize("retry_after", ["3600", "inf", "1e400"])
def test_retry_after_is_capped(
        chat_server: ChatServer, monkeypatch: pytest.MonkeyPatch, retry_after: str) -> None:
    waits = chosen_waits(monkeypatch)
    chat_server.script(error(429, "slow down", retry_after=retry_after), ok(valid_text(list(CONCEPTS))))
    outcome = plan_one(chat_server.url, max_retry_wait=0.2)
    assert outcome.ok and outcome.transport_retries == 1
    assert waits == [0.2]
    first, second = chat_server.requests
    assert second.at - first.at >= 0.18


def test_a_retry_after_that_is_no_number_leaves_the_backoff(chat_server: ChatServer) -> None:
    chat_server.script(error(429, "slow down", retry_after="nan"), ok(valid_text(list(CONCEPTS))))
    outcome = plan_one(chat_server.url, retry_backoff=0.6)
    assert outcome.ok and outcome.transport_retries == 1
    first, second = chat_server.requests
    assert second.at - first.at >= 0.29  # half the backoff at least; "nan" asked for no wait


def test_5xx_is_retried_with_backoff(chat_server: ChatServer) -> None:
    chat_server.script(error(500), error(503, "overloaded"), ok(valid_text(list(CONCEPTS))))
    outcome = plan_one(chat_server.url, retry_backoff=0.1)
    assert outcome.ok and outcome.transport_retries == 2
    times = [r.at for r in chat_server.requests]
    # equal jitter: the n-th wait lies in [backoff * 2**n / 2, backoff * 2**n]
    assert times[1] - times[0] >= 0.05 and times[2] - times[1] >= 0.1


def test_retries_run_out_and_the_scene_fails(chat_server: ChatServer) -> None:
    chat_server.responder = lambda body: error(502, "bad gateway")
    outcome = plan_one(chat_server.url, max_retries=2)
    assert not outcome.ok and outcome.transport_retries == 2
    assert "HTTP 502" in (outcome.error or "") and "after 2 retries" in (outcome.error or "")
    assert len(chat_server.requests) == 3


# HTTP 200 bodies that are no chat completion: the openai client raises on some, returns a str,
# None or an object without choices on others.
NOT_COMPLETIONS = {
    "html": ("<html>oops</html>", "text/html"),
    "html-as-json": ("<html>oops</html>", "application/json"),
    "empty": ("", "application/json"),
    "no-choices": ('{"id": "chatcmpl-1", "object": "chat.completion"}', "application/json"),
    "empty-choices": ('{"choices": []}', "application/json"),
    "string": ('"a string"', "application/json"),
    "null": ("null", "text/plain"),
    "too-deep": ("[" * 5000 + "]" * 5000, "application/json"),
}


@pytest.mark.parametrize("kind", sorted(NOT_COMPLETIONS))
def test_a_200_that_is_not_a_completion_is_retried(chat_server: ChatServer, kind: str) -> None:
    chat_server.script(raw_body(*NOT_COMPLETIONS[kind]), ok(valid_text(list(CONCEPTS))))
    outcome = plan_one(chat_server.url)
    assert outcome.ok and outcome.transport_retries == 1 and outcome.attempts == 1
    assert len(chat_server.requests) == 2


@pytest.mark.parametrize("kind", ["html", "html-as-json", "no-choices"])
def test_a_200_that_is_never_a_completion_fails_the_scene(chat_server: ChatServer, kind: str) -> None:
    body, content_type = NOT_COMPLETIONS[kind]
    # The page echoes the key, as a misconfigured proxy might: it must not reach any message.
    chat_server.responder = lambda _: raw_body(body.replace("oops", KEY), content_type)
    outcome = plan_one(chat_server.url, max_retries=2)
    assert not outcome.ok and outcome.transport_retries == 2 and len(chat_server.requests) == 3
    assert "not a chat completion" in (outcome.error or "") and "after 2 retries" in (outcome.error or "")
    assert KEY not in (outcome.error or "") and KEY not in (outcome.raw or "")


def test_a_200_that_is_not_a_completion_is_a_counted_transport_error(chat_server: ChatServer) -> None:
    chat_server.responder = lambda _: raw_body()

    async def ask() -> ChatClient:
        async with ChatClient(settings_for(chat_server.url, max_retries=1)) as client:
            with pytest.raises(LLMTransportError) as caught:
                await client.chat([{"role": "user", "content": "hi"}])
            assert caught.value.retries == 1 and caught.value.__cause__ is None
            return client

    client = asyncio.run(ask())
    assert (client.requests, client.retries) == (2, 1)


def test_timeout_is_retried(chat_server: ChatServer) -> None:
    # The first reply comes after a minute (the server lets go of it when the test ends); 2 s
    # leave the second, immediate reply time enough on a loaded machine.
    chat_server.script(ok(valid_text(list(CONCEPTS)), delay=60.0), ok(valid_text(list(CONCEPTS))))
    outcome = plan_one(chat_server.url, timeout=2.0)
    # A client that waited for the slow reply would have taken it: no retry, one request.
    assert outcome.ok and outcome.transport_retries == 1
    assert len(chat_server.requests) == 2


def test_dropped_connection_is_retried(chat_server: ChatServer) -> None:
    chat_server.script(Reply(drop=True), ok(valid_text(list(CONCEPTS))))
    outcome = plan_one(chat_server.url)
    assert outcome.ok and outcome.transport_retries == 1


def test_refused_connection_fails_at_once_without_retries() -> None:
    # Nothing listens: another try meets the same closed port, so none is made (an unreachable
    # endpoint used to take 5 retries, 30-50 s, to fail).
    planner = LLMPlanner(settings_for(refused_url(), max_retries=5, retry_backoff=1.0))
    outcomes = list(planner.plan_many([request(0), request(1)]))
    assert [o.ok for o in outcomes] == [False, False]
    for outcome in outcomes:
        assert "could not connect (Connection refused)" in (outcome.error or "")
        assert outcome.transport_retries == 0 and outcome.raw is None


def test_a_stalled_reply_is_cut_at_the_deadline_and_retried(chat_server: ChatServer) -> None:
    # One byte every 50 ms: every read gets data well within any per-read timeout, so only a
    # deadline on the whole request ends it. The body would take about a minute.
    text = valid_text(list(CONCEPTS))
    chat_server.script(trickle(text, 0.05), trickle(text, 0.05))
    outcome = plan_one(chat_server.url, timeout=0.5, max_retries=1)
    assert not outcome.ok and "no complete reply within 0.5 s (after 1 retries)" in (outcome.error or "")
    assert outcome.transport_retries == 1 and len(chat_server.requests) == 2
    # The mechanism, not the clock: both replies were cut off mid-body, not read to their end.
    assert not any(r.finished for r in chat_server.requests)
    assert all(0 < r.sent < len(text) for r in chat_server.requests)


LIMIT = 10_000  # bytes of a reply body read, in the tests below (1 MiB by default)


@pytest.mark.parametrize("reply", [
    pytest.param(ok("x" * 2 * LIMIT), id="with a content-length"),
    pytest.param(unsized("x" * 2 * LIMIT), id="read until the connection closes"),
    pytest.param(Reply(content="x" * 2 * LIMIT, sized=False, trickle=0.001, piece=500),
                 id="in many small pieces"),
    pytest.param(error(500, "x" * 2 * LIMIT), id="an error body"),
    pytest.param(raw_body("<html>" + "x" * 2 * LIMIT), id="a page that is no completion"),
    pytest.param(gzipped(valid_text(list(CONCEPTS))), id="compressed"),
    pytest.param(Reply(status=307, headers={"Location": "/v1/chat/completions"}, body="x" * 2 * LIMIT,
                       sized=False), id="a redirect's body"),
])
def test_a_reply_past_the_size_limit_is_refused_unread_and_not_asked_again(
        chat_server: ChatServer, reply: Reply) -> None:
    chat_server.script(reply)
    chat_server.responder = lambda body: ok(valid_text(list(CONCEPTS)))

    async def ask() -> str:
        async with ChatClient(settings_for(chat_server.url, max_reply_bytes=LIMIT)) as client:
            with pytest.raises(LLMTransportError) as caught:
                await client.complete([{"role": "user", "content": "hi"}])
            assert caught.value.retries == 0 and caught.value.__cause__ is None
            return str(caught.value)

    message = asyncio.run(ask())
    assert f"larger than {LIMIT:,} bytes" in message or "compressed ('gzip')" in message
    assert len(chat_server.requests) == 1 and "xxxxxxxx" not in message
    assert chat_server.requests[0].headers["accept-encoding"] == "identity"


def test_by_default_a_reply_over_one_mebibyte_is_refused(chat_server: ChatServer) -> None:
    chat_server.script(ok("x" * (1 << 20)))  # the JSON body around it makes it larger still
    outcome = plan_one(chat_server.url)
    assert not outcome.ok and "larger than 1,048,576 bytes; not read" in (outcome.error or "")
    assert len(chat_server.requests) == 1 and outcome.raw is None


def test_a_reply_within_the_size_limit_is_read(chat_server: ChatServer) -> None:
    text = valid_text(list(CONCEPTS))
    chat_server.script(unsized(text), ok(text))
    for _ in range(2):
        outcome = plan_one(chat_server.url, max_reply_bytes=LIMIT)
        assert outcome.ok, outcome.error


@pytest.mark.parametrize("status", [401, 403, 404])
def test_auth_or_model_error_stops_the_run(chat_server: ChatServer, status: int) -> None:
    # A wrong key, model or URL fails every scene alike: one clear error, no retries, no flood
    # of per-scene failures.
    chat_server.responder = lambda body: error(status, "refused", echo_headers=True)
    planner = LLMPlanner(settings_for(chat_server.url, concurrency=1))
    with pytest.raises(LLMConfigError) as caught:
        list(planner.plan_many([request(0), request(1), request(2)]))
    assert f"HTTP {status}" in str(caught.value) and "OPENAI_API_KEY" in str(caught.value)
    assert KEY not in str(caught.value)
    assert len(chat_server.requests) == 1


# --- the API key -------------------------------------------------------------------------------

def test_api_key_never_leaks(chat_server: ChatServer, caplog: pytest.LogCaptureFixture,
                             tmp_path: Path) -> None:
    caplog.set_level(logging.DEBUG)
    # Servers that echo the request headers, in errors and in content.
    chat_server.script(
        error(500, "boom", echo_headers=True),
        error(429, "wait", retry_after="0", echo_headers=True),
        error(400, "unsupported response_format", echo_headers=True),
        error(422, "unprocessable", echo_headers=True),
    )
    chat_server.responder = lambda body: ok(f"my key is {body['messages'][0]['content'][:0]}{KEY}")
    settings = settings_for(chat_server.url, concurrency=1)
    planner = LLMPlanner(settings)
    outcomes = list(planner.plan_many([request(0), request(1)]))
    # The server really saw (and echoed) the key, so the checks below can fail.
    assert chat_server.requests[0].headers["authorization"] == f"Bearer {KEY}"
    texts = [repr(settings), str(settings), repr(planner)]
    for outcome in outcomes:
        assert not outcome.ok
        texts += [outcome.error or "", outcome.raw or "", repr(outcome)]
    assert "***" in outcomes[0].error  # type: ignore[operator]  (the echoed header, redacted)
    texts += [record.getMessage() for record in caplog.records]
    out = tmp_path / "failures.jsonl"
    out.write_text("\n".join(json.dumps({"reason": o.error, "raw": o.raw}) for o in outcomes))
    texts.append(out.read_text())
    leaked = [t for t in texts if KEY in t]
    assert leaked == []


def test_transport_error_message_hides_the_key(chat_server: ChatServer) -> None:
    chat_server.script(error(404, "model not found", echo_headers=True))

    async def ask() -> str:
        async with ChatClient(settings_for(chat_server.url)) as client:
            assert KEY not in repr(client)
            with pytest.raises(LLMError) as caught:
                await client.complete([{"role": "user", "content": "hi"}])
            return str(caught.value) + repr(caught.value) + str(caught.value.__context__ or "")

    text = asyncio.run(ask())
    assert "HTTP 404: model not found" in text and KEY not in text


def test_settings_check_their_values() -> None:
    with pytest.raises(LLMError, match="API key"):
        ChatSettings(model="gpt-4o-mini")  # OpenAI itself needs a key
    with pytest.raises(LLMError, match="concurrency"):
        ChatSettings(model="m", base_url="http://127.0.0.1:1/v1", concurrency=0)
    with pytest.raises(LLMError, match="model"):
        ChatSettings(model=" ", base_url="http://127.0.0.1:1/v1")
    for timeout in (0.0, -1.0, math.nan, math.inf):  # a deadline must bound the request
        with pytest.raises(LLMError, match="timeout must be a finite number"):
            ChatSettings(model="m", base_url="http://127.0.0.1:1/v1", timeout=timeout)
    assert KEY not in repr(ChatSettings(model="m", api_key=KEY))


# --- settings the endpoint cannot work with: one line each, before any request -----------------

PROXY_SECRET = "pr0xy-pa55"


@pytest.mark.parametrize(("base_url", "expected"), [
    ("http://[::1", "--llm-base-url (or OPENAI_BASE_URL): expected an http:// or https:// URL"),
    ("ftp://example.com/v1", "--llm-base-url (or OPENAI_BASE_URL): expected an http:// or https:// URL"),
    ("localhost:8000/v1", "expected an http:// or https:// URL"),
    ("not a url", "expected an http:// or https:// URL"),
    ("http://", "expected an http:// or https:// URL"),
    ("http:///v1", "expected an http:// or https:// URL"),
    ("http://localhost:99999/v1", "the port must be 1-65535, got 99999"),
    ("http://localhost:0/v1", "the port must be 1-65535, got 0"),
])
def test_a_malformed_base_url_is_one_error_naming_it(base_url: str, expected: str) -> None:
    with pytest.raises(LLMError) as caught:
        ChatSettings(model="m", base_url=base_url)
    assert expected in str(caught.value) and "\n" not in str(caught.value)


SOCKSIO = importlib.util.find_spec("socksio") is not None


@pytest.mark.parametrize(("variable", "value", "expected"), [
    ("HTTPS_PROXY", "http://[::1", "HTTPS_PROXY: expected a proxy URL"),
    ("https_proxy", f"http://user:{PROXY_SECRET}@[::1", "https_proxy: expected a proxy URL"),
    ("HTTP_PROXY", ":::", "HTTP_PROXY: expected a proxy URL"),
    ("HTTP_PROXY", "ftp://proxy:21", "HTTP_PROXY: expected a proxy URL"),
    ("ALL_PROXY", "socks4://proxy:1080", "ALL_PROXY: expected a proxy URL"),
    pytest.param("ALL_PROXY", "socks5://127.0.0.1:1080", "ALL_PROXY: a socks proxy needs the socksio package",
                 marks=pytest.mark.skipif(SOCKSIO, reason="socksio is installed here")),
    ("SSL_CERT_FILE", "/nonexistent/ca.pem", "SSL_CERT_FILE: expected a file of CA certificates"),
    ("SSL_CERT_FILE", "/dev/null", "(not a regular file)"),
    ("SSL_CERT_FILE", "@not-a-pem", "no certificate"),
])
def test_a_malformed_proxy_or_certificate_variable_is_one_error_naming_it(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, variable: str, value: str, expected: str) -> None:
    if value == "@not-a-pem":
        value = str(tmp_path / "ca.pem")
        Path(value).write_text("not a certificate\n")
    monkeypatch.setenv(variable, value)
    with pytest.raises(LLMError) as caught:
        ChatSettings(model="m", base_url="http://127.0.0.1:8000/v1")
    assert expected in str(caught.value) and PROXY_SECRET not in str(caught.value)


@pytest.mark.parametrize("key", ["sk-abc\n", "sk-abc\r", "sk abc", "sk-ключ", "sk-\x00abc", "\tsk-abc"])
def test_an_api_key_no_header_can_carry_is_one_error_that_does_not_quote_it(key: str) -> None:
    with pytest.raises(LLMError) as caught:
        ChatSettings(model="m", base_url="http://127.0.0.1:8000/v1", api_key=key)
    assert "OPENAI_API_KEY" in str(caught.value) and "abc" not in str(caught.value)


def test_without_a_base_url_requests_go_to_openai_whatever_openai_base_url_says(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_BASE_URL", "http://[::1")  # the openai client would read and trip on it
    settings = ChatSettings(model="m", api_key=KEY)

    async def url() -> str:
        async with ChatClient(settings) as client:
            return repr(client)

    assert "https://api.openai.com/v1" in asyncio.run(url())


def test_a_password_in_the_base_url_is_never_shown(chat_server: ChatServer) -> None:
    chat_server.script(error(400, "bad request"))
    url = chat_server.url.replace("http://", f"http://user:{PROXY_SECRET}@")

    async def ask() -> str:
        async with ChatClient(settings_for(url)) as client:
            with pytest.raises(LLMError) as caught:
                await client.complete([{"role": "user", "content": "hi"}])
            return repr(client) + str(caught.value)

    text = asyncio.run(ask())
    assert "http://***@127.0.0.1" in text and PROXY_SECRET not in text


# --- the generic client ------------------------------------------------------------------------

def test_complete_passes_any_message_content_through(chat_server: ChatServer) -> None:
    chat_server.script(ok("4"))
    image_message = {"role": "user", "content": [
        {"type": "text", "text": "Rate this image 0-5."},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
    ]}

    async def ask() -> str:
        async with ChatClient(settings_for(chat_server.url, temperature=None)) as client:
            return await client.complete([image_message])

    assert asyncio.run(ask()) == "4"
    body = chat_server.requests[0].body
    assert body["messages"] == [image_message]
    assert "response_format" not in body and "temperature" not in body


def test_as_completed_bounded_limits_and_draws_lazily() -> None:
    drawn = 0
    running = peak = 0

    async def job(k: int) -> int:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.01 * (k % 3))
        running -= 1
        return k

    def jobs() -> Iterator[Any]:
        nonlocal drawn
        for k in range(50):
            drawn += 1
            yield job(k)

    async def collect() -> list[int]:
        return [k async for k in as_completed_bounded(jobs(), 4)]

    assert sorted(asyncio.run(collect())) == list(range(50))
    assert peak == 4 and drawn == 50

    async def first_only() -> int:
        async for k in as_completed_bounded(jobs(), 3):
            return k
        raise AssertionError("no result")

    drawn = 0
    asyncio.run(first_only())
    assert 3 < drawn <= 6  # the freed slots were refilled, and nothing beyond them was drawn


# --- concurrency and streaming -----------------------------------------------------------------

def test_as_completed_bounded_raises_the_first_error_and_drops_the_others_quietly(
        caplog: pytest.LogCaptureFixture) -> None:
    async def fail(k: int) -> int:
        await asyncio.sleep(0)
        raise ValueError(f"failure {k}")

    async def run() -> None:
        with pytest.raises(ValueError, match="failure"):
            async for _ in as_completed_bounded((fail(k) for k in range(8)), 4):
                pass

    with caplog.at_level(logging.ERROR, logger="asyncio"):
        asyncio.run(run())
        gc.collect()  # an unretrieved task error is logged when the task is collected
    assert not [r for r in caplog.records if "never retrieved" in r.getMessage()]


def test_concurrent_requests_overlap(chat_server: ChatServer) -> None:
    n = 8
    # No reply before all n requests have arrived: only a client with n in flight gets any.
    # (The barrier's timeout is a backstop; a sequential client fails on it, with retries.)
    everyone = threading.Barrier(n, timeout=60)

    def respond(body: dict[str, Any]) -> Reply:
        everyone.wait()
        return ok(valid_text(concepts_of(body)))

    chat_server.responder = respond
    planner = LLMPlanner(settings_for(chat_server.url, concurrency=n, max_retries=0, timeout=120.0))
    outcomes = list(planner.plan_many(request(k) for k in range(n)))
    assert all(o.ok for o in outcomes) and len(outcomes) == n
    assert len(chat_server.requests) == n


def test_outcomes_come_in_completion_order(chat_server: ChatServer) -> None:
    # The first scene is answered only once the second one's outcome is out (the wait's
    # timeout is a backstop: a planner yielding in request order fails the assertion after it).
    second_out = threading.Event()

    def respond(body: dict[str, Any]) -> Reply:
        concepts = concepts_of(body)
        if concepts == ["cat"]:
            second_out.wait(timeout=60)
        return ok(valid_text(concepts))

    chat_server.responder = respond
    planner = LLMPlanner(settings_for(chat_server.url, concurrency=2, timeout=120.0))
    outcomes = planner.plan_many([request(0, ("cat",)), request(1, ("dog",))])
    first = next(outcomes)
    second_out.set()
    assert [first.request.id, *(o.request.id for o in outcomes)] == ["scene-1", "scene-0"]


def test_requests_are_drawn_lazily_and_closing_stops_the_worker(chat_server: ChatServer) -> None:
    chat_server.responder = always(lambda c, w, h: valid_text(c), delay=0.05)
    drawn = 0

    def endless() -> Iterator[SceneRequest]:
        nonlocal drawn
        while True:
            drawn += 1
            yield request(drawn)

    before = threading.active_count()
    planner = LLMPlanner(settings_for(chat_server.url, concurrency=3))
    outcomes = planner.plan_many(endless())
    first = [next(outcomes) for _ in range(5)]
    assert all(o.ok for o in first)
    outcomes.close()  # type: ignore[attr-defined]
    # taken (5) + queued (3) + being handed over (1) + finished, not yet handed over (2)
    # + in flight (3): memory is bounded by the concurrency, not by the request stream
    assert drawn <= 5 + 3 + 1 + 2 + 3
    seen = drawn
    time.sleep(0.3)
    assert drawn == seen  # nothing is drawn after close
    deadline = time.monotonic() + 60  # a backstop: the loop ends as soon as the threads have
    while threading.active_count() > before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(t.name == "acp-llm-planner" for t in threading.enumerate())


def test_closing_the_planner_early_ends_its_requests_before_their_client_closes(
        chat_server: ChatServer, caplog: pytest.LogCaptureFixture) -> None:
    # A run stopping (10 scenes failed, say) closes the planner with requests in flight. They
    # were left running while their client closed, failed "Cannot send a request, as the client
    # has been closed" and were logged with a traceback at the event loop's shutdown.
    chat_server.responder = lambda body: Reply(status=400, message="no",
                                               delay=0.0 if len(chat_server.requests) <= 1 else 0.5)
    with caplog.at_level(logging.ERROR, logger="asyncio"):
        for _ in range(5):
            chat_server.requests.clear()
            planner = LLMPlanner(settings_for(chat_server.url, concurrency=8, retry_backoff=0.0))
            outcomes = planner.plan_many(request(k) for k in range(20))
            next(outcomes)
            outcomes.close()
            gc.collect()
    assert [r.getMessage() for r in caplog.records] == []


def test_an_error_in_the_request_stream_reaches_the_caller(chat_server: ChatServer) -> None:
    chat_server.responder = always(lambda c, w, h: valid_text(c))

    def broken() -> Iterator[SceneRequest]:
        yield request(0)
        raise InputError("concepts.txt:3: blank concept name")

    planner = LLMPlanner(settings_for(chat_server.url, concurrency=1))
    with pytest.raises(InputError, match="blank concept"):
        list(planner.plan_many(broken()))


# --- the command line --------------------------------------------------------------------------

def test_acp_plan_with_an_endpoint(chat_server: ChatServer, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from acp.cli import app

    def respond(body: dict[str, Any]) -> Reply:  # the "cat" scene gets a bad reply every time
        concepts = concepts_of(body)
        return ok(valid_text(concepts) if concepts != ["cat"] else schema_violation_text(concepts))

    chat_server.responder = respond
    scenes = tmp_path / "scenes.jsonl"
    scenes.write_text('{"concepts": ["dog", "frisbee"]}\n{"concepts": ["cat"]}\n{"concepts": ["person"]}\n')
    output = tmp_path / "out" / "plans.jsonl"
    result = CliRunner().invoke(app, [
        "plan", str(scenes), "-o", str(output), "--planner", "openai",
        "--llm-base-url", chat_server.url, "--llm-model", "test-model", "--concurrency", "2",
        "--max-reasks", "1", "--llm-timeout", "5", "--no-progress",
    ], env={"OPENAI_API_KEY": KEY})
    assert result.exit_code == 0, result.output
    plans = [ScenePlan.model_validate_json(line) for line in output.read_text().splitlines()]
    assert sorted(tuple(p.concepts) for p in plans) == [("dog", "frisbee"), ("person",)]
    assert all(p.planner == "openai" and p.model == "test-model" for p in plans)
    failures = [json.loads(line) for line in (tmp_path / "out" / "plans.jsonl.failures.jsonl")
                .read_text().splitlines()]
    assert len(failures) == 1 and failures[0]["concepts"] == ["cat"]
    assert "no valid plan after 2 replies" in failures[0]["reason"]
    assert failures[0]["raw"] == schema_violation_text(["cat"])
    assert len(chat_server.requests) == 4  # 1 + 1 + 2 (one re-ask) requests
    assert all(r.headers["authorization"] == f"Bearer {KEY}" for r in chat_server.requests)
    outputs = [result.output, *(p.read_text() for p in tmp_path.rglob("*") if p.is_file())]
    assert not [text for text in outputs if KEY in text]


def test_the_failures_file_keeps_a_bounded_part_of_each_raw_reply(chat_server: ChatServer,
                                                                   tmp_path: Path) -> None:
    # Three scenes of soup replies made a 314 MB failures file: each raw reply was stored whole.
    from typer.testing import CliRunner

    from acp.cli import app
    from acp.plan.run import MAX_RAW_KEPT, MAX_REASON_KEPT

    soup = '{"caption": "' + "soup " * 150_000  # 750 kB, under the 1 MiB reply limit
    chat_server.responder = lambda body: ok(soup)
    output = tmp_path / "plans.jsonl"
    result = CliRunner().invoke(app, [
        "plan", "--concepts", "dog,cat,bus", "-o", str(output), "--llm-base-url", chat_server.url,
        "--max-reasks", "0", "--no-progress"], env={"OPENAI_API_KEY": KEY})
    assert result.exit_code == 1 and len(chat_server.requests) == 3
    failures = tmp_path / "plans.jsonl.failures.jsonl"
    records = [json.loads(line) for line in failures.read_text().splitlines()]
    assert len(records) == 3
    for record in records:
        assert record["raw"].startswith(soup[:MAX_RAW_KEPT])
        assert record["raw"].endswith(f"[{len(soup) - MAX_RAW_KEPT:,} more characters not kept]")
        assert len(record["reason"]) <= MAX_REASON_KEPT + 50
    assert failures.stat().st_size < 3 * (MAX_RAW_KEPT + MAX_REASON_KEPT + 500)

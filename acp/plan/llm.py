"""The LLM planner: one chat conversation per scene on any OpenAI-compatible endpoint.

Each scene is asked with the system prompt and few-shot examples of ``prompts/``; the reply is
parsed by ``acp.plan.parse``. When ``PlanSettings.categories`` is set, the scene prompt lists
them as the allowed categories and an object of any other category fails validation. A reply that
fails validation is sent back to the model together with its problems, at most ``max_reasks``
times; a scene that still fails, or whose requests keep failing in transport, becomes a failed
``PlanOutcome`` carrying the last raw reply. So does a reply whose parsing raises anything else
(a bug in the parser must not cost the other scenes). Nothing a scene does aborts the run, save
a configuration error that every scene would hit alike, memory running out, or an interrupt.

``plan_many`` is a plain iterator: an asyncio loop in a background thread keeps
``concurrency`` scenes in flight, drawing requests lazily and handing outcomes over through a
small bounded queue, so memory stays flat however many scenes are asked for.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import queue
import random
import string
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from acp import defaults
from acp.errors import LLMError, PlanValidationError
from acp.llm import (
    ChatClient,
    ChatSettings,
    LLMConfigError,
    LLMTransportError,
    Message,
    as_completed_bounded,
    json_schema_format,
)
from acp.plan.base import PlanOutcome, PlanSettings, SceneRequest
from acp.plan.examples import MAX_EXAMPLES, Example, bank_examples, example_block
from acp.plan.parse import allowed_names, parse_plan
from acp.resources import read_prompt
from acp.schema import MAX_OBJECTS, MIN_BOX_SIDE, SceneDraft

if TYPE_CHECKING:
    from acp.score.bank import Bank

PLANNER_NAME = "openai"
_MAX_ECHO = 12_000  # characters of a bad reply sent back on a re-ask (a runaway reply is cut)
_MAX_REASON = 500  # characters of an unexpected parser error kept in a failure's reason
log = logging.getLogger(__name__)


def scene_prompt(concepts: Iterable[str], width: int, height: int,
                 categories: Iterable[str] | None = None,
                 companions: Iterable[str] | None = None, examples: str = "") -> str:
    """The user message that asks for one scene.

    ``categories`` (the run's concepts) adds the line of allowed categories: the scene's own
    concepts are required, the others may be added, no other category may be used.
    ``companions`` (a top-up scene, ``SceneRequest.companions``) names the subject (the first
    concept) and its companions, and allows the scene's own concepts only. ``examples``
    (``acp.plan.examples.example_block``) shows real layouts of the scene's categories.
    """
    concepts = list(concepts)
    allowed = ""
    if companions is not None:
        companions = list(companions)
        allowed = f"Subject: {json.dumps(concepts[0], ensure_ascii=False)}\n"
        if companions:
            allowed += f"Companions: {json.dumps(companions, ensure_ascii=False)}\n"
        categories = concepts
    if categories is not None:
        names = json.dumps(allowed_names(categories, concepts), ensure_ascii=False)
        allowed += f"Allowed categories: {names}\n"
    return (
        f"Concepts: {json.dumps(concepts, ensure_ascii=False)}\n"
        f"{allowed}"
        f"{examples}"
        f"Image size: {width} x {height} pixels (width x height).\n"
        "Reply with the JSON object only."
    )


def reask_prompt(problems: list[tuple[str, str]]) -> str:
    """The user message that sends a failed reply's problems back to the model."""
    lines = "\n".join(f"- {field}: {reason}" for field, reason in problems)
    return (
        "Your reply could not be used. Problems found:\n"
        f"{lines}\n"
        "Reply with the whole corrected JSON object only, in the same format."
    )


def system_prompt(settings: PlanSettings) -> str:
    template = string.Template(read_prompt("plan_system.md"))
    return template.substitute(
        max_objects=MAX_OBJECTS,
        min_side=f"{MIN_BOX_SIDE:.4f}",
        max_overlap_percent=f"{settings.rules.max_overlap * 100:.0f}",
    )


def example_messages() -> list[Message]:
    """The few-shot examples of ``prompts/plan_examples.json`` as user/assistant turns."""
    messages: list[Message] = []
    for example in json.loads(read_prompt("plan_examples.json")):
        prompt = scene_prompt(example["concepts"], example["width"], example["height"],
                              example.get("categories"))
        messages.append({"role": "user", "content": prompt})
        messages.append({"role": "assistant", "content": json.dumps(example["reply"], ensure_ascii=False)})
    return messages


@dataclass(frozen=True)
class _Raised:
    error: BaseException


_DONE = object()


class LLMPlanner:
    """Plans scenes with an OpenAI-compatible chat model.

    ``LLMPlanner(ChatSettings(model=..., base_url=..., api_key=..., concurrency=N),
    PlanSettings(rules=...), max_reasks=2)``.
    """

    name = PLANNER_NAME

    def __init__(self, client_settings: ChatSettings, plan_settings: PlanSettings | None = None,
                 *, max_reasks: int = defaults.LLM_MAX_REASKS, bank: Bank | None = None):
        from acp.plan.examples import BankLayouts

        if max_reasks < 0:
            raise LLMError(f"max_reasks must be >= 0, got {max_reasks}")
        # With a bank, each scene's prompt shows real layouts of its categories (``examples``).
        self.layouts = BankLayouts(bank) if bank is not None else None
        self.client_settings = client_settings
        self.plan_settings = plan_settings or PlanSettings()
        self.max_reasks = max_reasks
        self._preamble: list[Message] = [
            {"role": "system", "content": system_prompt(self.plan_settings)}, *example_messages()
        ]
        self._response_format = json_schema_format("scene_draft", SceneDraft.model_json_schema())

    def __repr__(self) -> str:
        return f"LLMPlanner({self.client_settings!r}, max_reasks={self.max_reasks})"

    def plan_many(self, requests: Iterable[SceneRequest]) -> Iterator[PlanOutcome]:
        """Outcomes in completion order, ``concurrency`` requests in flight.

        ``requests`` is read lazily from the worker thread. Closing the iterator early (or
        Ctrl-C while waiting on it) cancels the scenes still in flight.
        """
        outcomes: queue.Queue[object] = queue.Queue(maxsize=self.client_settings.concurrency)
        stop = threading.Event()
        running: dict[str, Any] = {}

        def hand_over(item: object) -> None:
            while not stop.is_set():
                try:
                    outcomes.put(item, timeout=0.1)
                    return
                except queue.Full:
                    continue

        async def produce() -> None:
            running["loop"] = asyncio.get_running_loop()
            running["task"] = asyncio.current_task()
            if stop.is_set():  # closed before the task could be cancelled (set, then checked)
                return
            async with ChatClient(self.client_settings) as client:
                scenes = (self._plan_scene(client, request) for request in requests)
                # aclosing: on a cancel, the scenes in flight are cancelled before the client
                # closes under them (they would fail on a closed client, unheard)
                async with contextlib.aclosing(
                        as_completed_bounded(scenes, self.client_settings.concurrency)) as finished:
                    async for outcome in finished:
                        await asyncio.to_thread(hand_over, outcome)
                        if stop.is_set():
                            return

        def work() -> None:
            try:
                asyncio.run(produce())
            except asyncio.CancelledError:
                pass
            except BaseException as error:  # handed to the consumer, which raises it
                hand_over(_Raised(error))
            finally:
                hand_over(_DONE)

        worker = threading.Thread(target=work, name="acp-llm-planner", daemon=True)
        worker.start()
        try:
            while True:
                item = outcomes.get()
                if item is _DONE:
                    return
                if isinstance(item, _Raised):
                    raise item.error
                assert isinstance(item, PlanOutcome)
                yield item
        finally:
            stop.set()
            loop, task = running.get("loop"), running.get("task")
            if loop is not None and task is not None:
                with contextlib.suppress(RuntimeError):  # the loop has already finished
                    loop.call_soon_threadsafe(task.cancel)
            worker.join()

    def _examples(self, request: SceneRequest) -> list[Example]:
        """Up to ``MAX_EXAMPLES`` real layouts of the scene's categories (none without a bank),
        the same for a request whatever else runs."""
        if self.layouts is None:
            return []
        return bank_examples(self.layouts, list(request.concepts), MAX_EXAMPLES,
                             random.Random(request.seed))

    async def _plan_scene(self, client: ChatClient, request: SceneRequest) -> PlanOutcome:
        """One scene's conversation; a scene's own failure is returned, never raised."""
        categories = self.plan_settings.categories
        if request.companions is not None:  # a top-up scene holds exactly its concepts
            categories = request.concepts
        examples = self._examples(request)
        prompt = scene_prompt(request.concepts, request.width, request.height, categories,
                              request.companions, example_block(examples))
        messages = [*self._preamble, {"role": "user", "content": prompt}]
        retries = 0
        raw: str | None = None
        error = ""
        attempts = 0
        model = self.client_settings.model
        for attempts in range(1, self.max_reasks + 2):
            try:
                # 31 bits: servers store the seed in a C int (vLLM, llama.cpp) or reject larger ones
                reply = await client.chat(messages, self._response_format, seed=request.seed % 2**31)
            except LLMError as failure:
                if isinstance(failure, LLMConfigError):
                    raise  # no scene can succeed: stop the run with this message
                if isinstance(failure, LLMTransportError):
                    retries += failure.retries
                return PlanOutcome(request, error=str(failure), raw=raw, attempts=attempts,
                                   transport_retries=retries)
            retries += reply.retries
            raw = reply.text
            try:
                plan = parse_plan(raw, request, self.plan_settings.rules, planner=PLANNER_NAME,
                                  model=model, attempts=attempts, categories=categories,
                                  clean=client.redact_value)
            except MemoryError:
                raise
            except PlanValidationError as invalid:
                error = str(invalid)
                messages = [
                    *messages,
                    {"role": "assistant", "content": raw[:_MAX_ECHO] or "(empty reply)"},
                    {"role": "user", "content": reask_prompt(invalid.problems)},
                ]
                continue
            except Exception as failure:  # a parser bug: this scene fails, the run goes on
                log.debug("parsing the reply to scene %s failed", request.id, exc_info=True)
                return PlanOutcome(
                    request,
                    error=f"the reply could not be parsed ({type(failure).__name__}: "
                          f"{str(failure)[:_MAX_REASON]})",
                    raw=raw,
                    attempts=attempts,
                    transport_retries=retries,
                )
            plan.examples = [e.image_id for e in examples]
            return PlanOutcome(request, plan=plan, attempts=attempts, transport_retries=retries,
                               repairs=list(plan.repairs))
        return PlanOutcome(
            request,
            error=f"no valid plan after {attempts} replies: {error}",
            raw=raw,
            attempts=attempts,
            transport_retries=retries,
        )

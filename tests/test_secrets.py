"""The API key never reaches an output or a message, however a server echoes it back.

The local chat server below copies the key it receives (from the Authorization header) into
its replies: raw, as JSON ``\\uXXXX`` escapes, with ``/`` escaped as ``\\/`` (PHP's
``json_encode``) and split across lines. Every file ``acp generate`` writes, and everything it
prints, is then searched for the key in each of those spellings.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from acp.llm import key_pattern
from tests.chat_server import (  # noqa: F401  (chat_server_fixture provides chat_server)
    ChatServer,
    Reply,
    chat_server_fixture,
    concepts_of,
    layout,
    ok,
)

KEY = "sk-proj/Echo+Me_9f3b2a71c0d4e5"


def spellings(key: str) -> dict[str, str]:
    return {
        "raw": key,
        "unicode escapes": "".join(f"\\u{ord(c):04x}" for c in key),
        "escaped slash": key.replace("/", "\\/"),
        "split across lines": key[:9] + "\\n" + key[9:],
        "half escaped": key[:5] + "".join(f"\\u{ord(c):04X}" for c in key[5:12]) + key[12:],
    }


def echoing(server: ChatServer) -> Any:
    """Replies whose caption, descriptions and background hold the key the request carried, one
    spelling per scene; every third reply is invalid and quotes the key too (with no re-asks, that
    scene fails and its reply goes to the failures file)."""

    def respond(body: dict[str, Any]) -> Reply:
        key = server.requests[-1].headers["authorization"].removeprefix("Bearer ")
        concepts = concepts_of(body)
        index = len(server.requests)
        name, spelled = list(spellings(key).items())[index % 5]
        draft = layout(concepts)
        marker = "KEY_GOES_HERE"
        draft["caption"] = f"A scene ({name}) {marker}"
        draft["background"] = f"a wall with {marker} on it"
        draft["objects"][0]["description"] = f"a {concepts[0]} wearing {marker}"
        text = json.dumps(draft).replace(marker, spelled)
        if index % 3 == 0:
            return ok(f"not json at all, but here is your key: {spelled} and raw {key}")
        return ok(text)

    return respond


def test_generate_writes_and_prints_no_echoed_key(
    chat_server: ChatServer, tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    chat_server.responder = echoing(chat_server)
    out = tmp_path / "out"
    command = [
        sys.executable, "-m", "acp", "generate", "--concepts", "dog,cat", "--scenes", "6",
        "-o", str(out),
        "--planner", "openai", "--llm-base-url", chat_server.url, "--llm-model", "test-model",
        "--model", str(tiny_models["gligen"]), "--clip-model", str(tiny_models["clip"]),
        "--steps", "1", "--size", "64", "-k", "1", "--min-clis-i", "0", "--keep-candidates",
        "--max-reasks", "0", "--no-progress",
    ]
    env = {**os.environ, "OPENAI_API_KEY": KEY, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=240)
    assert result.returncode == 0, result.stderr
    # The server did see and echo the key, so the search below can fail.
    assert chat_server.requests[0].headers["authorization"] == f"Bearer {KEY}"
    plans = (out / "plans.jsonl").read_text()
    assert plans.count("\n") >= 4 and "***" in plans
    texts = {"stdout": result.stdout, "stderr": result.stderr}
    for path in out.rglob("*"):
        if path.is_file() and path.suffix in {".json", ".jsonl", ".txt"}:
            texts[str(path.relative_to(out))] = path.read_text()
    wanted = {"annotations.json", "coco_records.jsonl", "candidates/manifest.jsonl", "scores.jsonl",
              "plans.jsonl.failures.jsonl"}
    assert wanted <= set(texts)
    pattern = key_pattern(KEY)
    for where, text in texts.items():
        for name, spelled in spellings(KEY).items():
            assert spelled not in text, f"{name} key in {where}"
        assert not pattern.search(text), where


@pytest.mark.parametrize("name", list(spellings(KEY)))
def test_key_pattern_finds_every_spelling(name: str) -> None:
    spelled = spellings(KEY)[name]
    text = f'{{"caption": "before {spelled} after"}}'
    assert key_pattern(KEY).sub("***", text) == '{"caption": "before *** after"}'
    decoded = json.loads(text)["caption"]
    assert key_pattern(KEY).sub("***", decoded) == "before *** after"

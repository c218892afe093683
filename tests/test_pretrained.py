"""Model loading (``acp.pretrained``): a hub id that is neither cached nor reachable fails in
seconds with what to do, instead of minutes of retries; HF_HUB_OFFLINE never touches the network."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from acp import pretrained
from acp.errors import InputError
from acp.pretrained import hub_unreachable, load_pretrained

ROOT = Path(__file__).resolve().parent.parent
PROXIES = ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY")
UNLIKELY = "acp-tests-no-such-org-7f3q/no-such-model-7f3q"  # no such repo, with or without network
HINT = "not in the local Hugging Face cache"


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A local port that refuses connections: bound, never listening."""
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        yield held.getsockname()[1]


def run_acp(args: list[str], tmp_path: Path, **env: str) -> tuple[subprocess.CompletedProcess[str], float]:
    dropped = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_ENDPOINT", *PROXIES)
    environment = {k: v for k, v in os.environ.items() if k not in dropped}
    environment.update(HF_HOME=str(tmp_path / "hf-home"), PYTHONPATH=str(ROOT), **env)
    start = time.monotonic()
    # 60 s: well past the 20 s allowed, far below the minutes of retries this guards against.
    result = subprocess.run([sys.executable, "-m", "acp", *args], cwd=tmp_path, env=environment,
                            capture_output=True, text=True, timeout=60)
    return result, time.monotonic() - start


def plans_file(tmp_path: Path) -> Path:
    plan = {"id": "p", "concepts": ["dog"], "caption": "a dog", "background": "a park", "planner": "test",
            "objects": [{"id": 0, "category": "dog", "description": "a dog", "bbox": [0.1, 0.1, 0.5, 0.5]}]}
    path = tmp_path / "plans.jsonl"
    path.write_text(json.dumps(plan) + "\n")
    return path


def test_render_with_an_unreachable_hub_fails_in_seconds(tmp_path: Path, closed_port: int) -> None:
    result, seconds = run_acp(
        ["render", str(plans_file(tmp_path)), "-o", "out", "--model", UNLIKELY, "--device", "cpu"],
        tmp_path, HF_ENDPOINT=f"http://127.0.0.1:{closed_port}",
    )
    assert result.returncode == 1 and seconds < 20
    assert result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith(f"acp: error: --model {UNLIKELY}: {HINT}")
    assert "the hub cannot be reached" in result.stderr and f"hf download {UNLIKELY}" in result.stderr


def test_render_with_hf_hub_offline_fails_in_seconds(tmp_path: Path) -> None:
    result, seconds = run_acp(
        ["render", str(plans_file(tmp_path)), "-o", "out", "--model", UNLIKELY, "--device", "cpu"],
        tmp_path, HF_HUB_OFFLINE="1",
    )
    assert result.returncode == 1 and seconds < 20
    assert result.stderr.count("\n") == 1, result.stderr
    assert HINT in result.stderr and "HF_HUB_OFFLINE is set" in result.stderr


def test_clip_from_the_default_hub_fails_in_seconds_with_or_without_network(tmp_path: Path) -> None:
    """The reported case: `acp score dataset` with a CLIP hub id and no HF_HUB_OFFLINE. With
    network the unlikely id is a quick 'not found'; without, the hint."""
    from PIL import Image

    (tmp_path / "images").mkdir()
    Image.new("RGB", (32, 32)).save(tmp_path / "images" / "a.png")
    coco = {"images": [{"id": 1, "file_name": "a.png", "width": 32, "height": 32}],
            "categories": [{"id": 1, "name": "dog"}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 10, 10]}]}
    (tmp_path / "coco.json").write_text(json.dumps(coco))
    result, seconds = run_acp(
        ["score", "dataset", "coco.json", "--images", "images", "-o", "report",
         "--clip-model", UNLIKELY, "--device", "cpu", "--no-progress"],
        tmp_path,
    )
    assert result.returncode == 1 and seconds < 20
    assert result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith(f"acp: error: --clip-model {UNLIKELY}")
    if hub_unreachable() is not None:
        assert HINT in result.stderr


# -- the helper, with a stand-in loader --------------------------------------------------------


class Loader:
    """Records its calls; raises OSError (not cached) for ``local_files_only`` unless ``cached``."""

    def __init__(self, cached: bool = False):
        self.cached = cached
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def __call__(self, source: str, **kwargs: Any) -> str:
        self.calls.append((source, kwargs))
        if kwargs.get("local_files_only") and not self.cached:
            raise OSError("not in the cache")
        return f"model from {source}"


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the network was tried")

    monkeypatch.setattr(pretrained, "hub_unreachable", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.fixture
def online(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)


def test_a_folder_is_loaded_from_disk_only(tmp_path: Path, no_network: None) -> None:
    load = Loader()
    load.cached = True
    assert load_pretrained(load, str(tmp_path), option="--clip-model") == f"model from {tmp_path}"
    assert load.calls == [(str(tmp_path), {"local_files_only": True})]


@pytest.mark.parametrize("name", ["/no/such/folder", "./models/clip", "a/b/c", "~/nothing-here-7f3q"])
def test_a_path_that_is_no_folder_is_one_line(name: str, no_network: None) -> None:
    load = Loader()
    with pytest.raises(InputError, match=r"^--sam-model .*: no such folder"):
        load_pretrained(load, name, option="--sam-model")
    assert load.calls == []


def test_a_cached_hub_id_never_asks_the_hub(online: None, no_network: None) -> None:
    load = Loader(cached=True)
    assert load_pretrained(load, "org/model", option="--model") == "model from org/model"
    assert load.calls == [("org/model", {"local_files_only": True})]


@pytest.mark.parametrize("variable", ["HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"])
def test_offline_mode_never_tries_the_network(
    variable: str, online: None, no_network: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(variable, "1")
    load = Loader()
    with pytest.raises(InputError, match="HF_HUB_OFFLINE is set") as error:
        load_pretrained(load, "org/model", option="--model")
    message = str(error.value)
    assert message.startswith(f"--model org/model: {HINT}") and "hf download org/model" in message
    assert len(load.calls) == 1


def test_unreachable_hub_is_one_line_without_a_network_load(
    online: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pretrained, "hub_unreachable", lambda: "huggingface.co:443: Name or service unknown")
    load = Loader()
    with pytest.raises(InputError, match=r"the hub cannot be reached \(huggingface.co:443: Name or service"):
        load_pretrained(load, "org/model", option="--clip-model")
    assert len(load.calls) == 1


def test_reachable_hub_downloads(online: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pretrained, "hub_unreachable", lambda: None)
    load = Loader()
    assert load_pretrained(load, "org/model", option="--clip-model") == "model from org/model"
    assert load.calls == [("org/model", {"local_files_only": True}), ("org/model", {})]


def test_the_probe(monkeypatch: pytest.MonkeyPatch, closed_port: int) -> None:
    for variable in PROXIES:
        monkeypatch.delenv(variable, raising=False)
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        monkeypatch.setattr("huggingface_hub.constants.ENDPOINT", f"http://127.0.0.1:{server.getsockname()[1]}")
        assert hub_unreachable() is None
    monkeypatch.setattr("huggingface_hub.constants.ENDPOINT", f"http://127.0.0.1:{closed_port}")
    assert f"127.0.0.1:{closed_port}: " in (hub_unreachable() or "")

    released = threading.Event()

    def hang(*args: Any, **kwargs: Any) -> None:  # a resolver or connect that does not answer
        released.wait(30)
        raise OSError("released")

    monkeypatch.setattr(socket, "create_connection", hang)
    start = time.monotonic()
    try:
        assert "no answer within 0.2 s" in (hub_unreachable(timeout=0.2) or "")
        assert time.monotonic() - start < 2
    finally:
        released.set()  # let the probe's thread end


def _gligen(name: str) -> object:
    import torch

    from acp.render.gligen import load_pipeline

    return load_pipeline(name, "cpu", torch.float32)


def _clip(name: str) -> object:
    from acp.score.image import ImageScorer

    return ImageScorer.from_pretrained(name, device="cpu")


def _sam(name: str) -> object:
    from acp.segment import MaskSegmenter

    return MaskSegmenter(name, device="cpu")


def _embedder(name: str) -> object:
    from acp.score.layout import sentence_transformer_embedder

    return sentence_transformer_embedder(name)


@pytest.mark.parametrize(
    ("build", "option"),
    [(_gligen, "--model"), (_clip, "--clip-model"), (_sam, "--sam-model"), (_embedder, "--embed-model")],
)
def test_every_model_load_goes_through_the_cache_first(
    build: Any, option: str, online: None, no_network: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    import types

    # sentence-transformers is optional (not installed for the tests): a stand-in that, like
    # the real one, takes local_files_only and raises OSError for what is not cached.
    class SentenceTransformer:
        def __init__(self, name: str, local_files_only: bool = False):
            raise OSError(f"{name} is not cached")

    monkeypatch.setitem(sys.modules, "sentence_transformers",
                        types.SimpleNamespace(SentenceTransformer=SentenceTransformer))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(InputError) as error:
        build(UNLIKELY)
    assert str(error.value).startswith(f"{option} {UNLIKELY}: {HINT}")

"""Model loading (``acp.pretrained``): a hub id that is neither cached nor reachable fails in
seconds with what to do, instead of minutes of retries; HF_HUB_OFFLINE never touches the network."""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from acp import pretrained
from acp.errors import InputError
from acp.pretrained import check_models, hub_unreachable, load_pretrained

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


# Runs the CLI as `python -m acp` would, recording every TCP connection it attempts (host, port)
# into the file named by ACP_TEST_CONNECTIONS: what these tests check is how often acp goes to
# the network, not how long that takes on a loaded machine.
COUNTING_MAIN = """
import atexit, os, runpy, socket, sys
attempts = []
def counted(original):
    def connect(self, address, *args):
        if self.family in (socket.AF_INET, socket.AF_INET6):
            attempts.append(list(address[:2]))
        return original(self, address, *args)
    return connect
socket.socket.connect = counted(socket.socket.connect)
socket.socket.connect_ex = counted(socket.socket.connect_ex)
def record():
    with open(os.environ["ACP_TEST_CONNECTIONS"], "w") as out:
        out.write(repr(attempts))
atexit.register(record)
sys.argv[0] = "acp"
runpy.run_module("acp", run_name="__main__", alter_sys=True)
"""


def run_acp(args: list[str], tmp_path: Path, **env: str
            ) -> tuple[subprocess.CompletedProcess[str], list[Any]]:
    """acp's result and the TCP connections it attempted, ``[host, port]`` each."""
    dropped = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_ENDPOINT", *PROXIES)
    environment = {k: v for k, v in os.environ.items() if k not in dropped}
    connections = tmp_path / "connections.txt"
    environment.update(HF_HOME=str(tmp_path / "hf-home"), PYTHONPATH=str(ROOT),
                       ACP_TEST_CONNECTIONS=str(connections), **env)
    # A backstop only (the minutes of retries this guards against would pass it): the loads of
    # torch and diffusers alone took 38 s on a loaded 2-core machine.
    result = subprocess.run([sys.executable, "-c", COUNTING_MAIN, *args], cwd=tmp_path, env=environment,
                            capture_output=True, text=True, timeout=300)
    return result, ast.literal_eval(connections.read_text())


def plans_file(tmp_path: Path) -> Path:
    plan = {"id": "p", "concepts": ["dog"], "caption": "a dog", "background": "a park", "planner": "test",
            "objects": [{"id": 0, "category": "dog", "description": "a dog", "bbox": [0.1, 0.1, 0.5, 0.5]}]}
    path = tmp_path / "plans.jsonl"
    path.write_text(json.dumps(plan) + "\n")
    return path


def test_render_with_an_unreachable_hub_fails_after_one_probe(tmp_path: Path, closed_port: int) -> None:
    """No retry loop: the one connection acp attempts is the probe of the hub."""
    result, connections = run_acp(
        ["render", str(plans_file(tmp_path)), "-o", "out", "--model", UNLIKELY, "--device", "cpu"],
        tmp_path, HF_ENDPOINT=f"http://127.0.0.1:{closed_port}",
    )
    assert result.returncode == 1
    assert connections == [["127.0.0.1", closed_port]]
    assert result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith(f"acp: error: --model {UNLIKELY}: {HINT}")
    assert "the hub cannot be reached" in result.stderr and f"hf download {UNLIKELY}" in result.stderr


def test_render_with_hf_hub_offline_never_connects(tmp_path: Path) -> None:
    result, connections = run_acp(
        ["render", str(plans_file(tmp_path)), "-o", "out", "--model", UNLIKELY, "--device", "cpu"],
        tmp_path, HF_HUB_OFFLINE="1",
    )
    assert result.returncode == 1
    assert connections == []
    assert result.stderr.count("\n") == 1, result.stderr
    assert HINT in result.stderr and "HF_HUB_OFFLINE is set" in result.stderr


def test_clip_from_the_default_hub_fails_at_once_with_or_without_network(tmp_path: Path) -> None:
    """The reported case: `acp score dataset` with a CLIP hub id and no HF_HUB_OFFLINE. With
    network the unlikely id is a 'not found' after the probe and one request; without, the hint
    after the probe alone."""
    from PIL import Image

    (tmp_path / "images").mkdir()
    Image.new("RGB", (32, 32)).save(tmp_path / "images" / "a.png")
    coco = {"images": [{"id": 1, "file_name": "a.png", "width": 32, "height": 32}],
            "categories": [{"id": 1, "name": "dog"}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 10, 10]}]}
    (tmp_path / "coco.json").write_text(json.dumps(coco))
    result, connections = run_acp(
        ["score", "dataset", "coco.json", "--images", "images", "-o", "report",
         "--clip-model", UNLIKELY, "--device", "cpu", "--no-progress"],
        tmp_path,
    )
    assert result.returncode == 1
    assert len(connections) <= (1 if hub_unreachable() is not None else 2), connections
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

    released, ended = threading.Event(), threading.Event()

    def hang(*args: Any, **kwargs: Any) -> None:  # a resolver or connect that does not answer
        released.wait(120)
        ended.set()
        raise OSError("released")

    monkeypatch.setattr(socket, "create_connection", hang)
    try:
        # The connect still hangs when the probe answers: it did not wait for it.
        assert "no answer within 0.2 s" in (hub_unreachable(timeout=0.2) or "")
        assert not ended.is_set()
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


# -- every model looked for before any is loaded -------------------------------------------------


@pytest.fixture
def hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty Hugging Face hub cache of the test's own."""
    cache = tmp_path / "hub-cache"
    cache.mkdir()
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(cache))
    return cache


def cache_repo(cache: Path, repo: str, *files: str) -> None:
    """``files`` of ``repo`` laid out as huggingface_hub caches them (refs/main -> a snapshot)."""
    root, commit = cache / f"models--{repo.replace('/', '--')}", "0" * 40
    (root / "refs").mkdir(parents=True)
    (root / "refs" / "main").write_text(commit)
    for name in files:
        (root / "snapshots" / commit / name).parent.mkdir(parents=True, exist_ok=True)
        (root / "snapshots" / commit / name).write_text("{}")


def test_every_missing_model_is_in_one_message_with_the_commands_that_fetch_them(
    tmp_path: Path, hub_cache: Path, online: None, no_network: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cache_repo(hub_cache, "org/clip", "config.json")
    no_config = tmp_path / "embedder"
    no_config.mkdir()
    with pytest.raises(InputError) as error:
        check_models([("--model", "org/gligen"), ("--clip-model", "org/clip"),
                      ("--sam-model", str(tmp_path / "sam")), ("--embed-model", str(no_config))])
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith("3 models are missing: --model org/gligen: not in the local Hugging Face cache "
                              "and HF_HUB_OFFLINE is set; ")
    assert f"--sam-model {tmp_path / 'sam'}: no such folder" in message
    assert f"--embed-model {no_config}: a folder without config.json or modules.json" in message
    assert "--clip-model" not in message  # cached
    assert "(hf download org/gligen) and copy the cache" in message and str(hub_cache) in message


def test_one_missing_model_reads_as_the_load_would_say_it(
    hub_cache: Path, online: None, no_network: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(InputError, match=rf"^--clip-model org/clip: {HINT} and HF_HUB_OFFLINE is set; "
                                         r"download it on a machine with network \(hf download org/clip\)"):
        check_models([("--clip-model", "org/clip")])


def test_folders_and_cached_models_are_present_without_network(
    tiny_models: dict[str, Path], hub_cache: Path, online: None, no_network: None
) -> None:
    cache_repo(hub_cache, "org/embedder", "config.json", "modules.json")
    check_models([("--model", str(tiny_models["gligen"])), ("--clip-model", str(tiny_models["clip"])),
                  ("--sam-model", str(tiny_models["sam"])), ("--embed-model", "org/embedder")])


def test_a_folder_of_another_kind_is_missing(tiny_models: dict[str, Path], no_network: None) -> None:
    with pytest.raises(InputError, match=r"^--model .*clip: a folder without model_index.json; "
                                         r"expected a GLIGEN model"):
        check_models([("--model", str(tiny_models["clip"]))])


def test_an_unreachable_hub_is_probed_once_for_all_models(
    hub_cache: Path, online: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    probes: list[float] = []

    def unreachable(timeout: float = pretrained.PROBE_TIMEOUT) -> str:
        probes.append(timeout)
        return "huggingface.co:443: Name or service not known"

    monkeypatch.setattr(pretrained, "hub_unreachable", unreachable)
    with pytest.raises(InputError) as error:
        check_models([("--model", "org/a"), ("--clip-model", "org/b"), ("--sam-model", "org/c")])
    assert len(probes) == 1
    assert str(error.value).count("the hub cannot be reached (huggingface.co:443: Name or service") == 3
    assert "(hf download org/a && hf download org/b && hf download org/c)" in str(error.value)


def test_a_reachable_hub_is_asked_once_per_model_and_settles_only_what_it_can(
    hub_cache: Path, online: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    from huggingface_hub.errors import GatedRepoError

    asked: list[tuple[str, str]] = []

    def file_exists(repo: str, filename: str) -> bool:
        asked.append((repo, filename))
        if repo == "org/gated":
            raise GatedRepoError("gated", response=SimpleNamespace(headers={}, request=None))  # type: ignore[arg-type]
        if repo == "org/outage":
            raise RuntimeError("502 Bad Gateway")
        return repo == "org/there"

    monkeypatch.setattr(pretrained, "hub_unreachable", lambda: None)
    monkeypatch.setattr("huggingface_hub.file_exists", file_exists)
    with pytest.raises(InputError) as error:
        check_models([("--model", "org/there"), ("--clip-model", "org/typo"), ("--sam-model", "org/gated"),
                      ("--embed-model", "org/outage")])
    message = str(error.value)
    assert asked == [("org/there", "model_index.json"), ("org/typo", "config.json"),
                     ("org/gated", "config.json"), ("org/outage", "config.json")]
    assert message.startswith("2 models are missing: --clip-model org/typo: not in the local Hugging Face "
                              "cache nor on the hub (no such model with a config.json); "
                              "--sam-model org/gated: ")
    assert "gated on the hub" in message and "hf auth login" in message
    assert "org/there" not in message and "org/outage" not in message and "hf download" not in message


def test_a_name_that_is_no_hub_id_is_missing(no_network: None, hub_cache: Path) -> None:
    with pytest.raises(InputError, match=r"^--clip-model bad\*\*name: neither a folder nor a hub id"):
        check_models([("--clip-model", "bad**name")])


@pytest.mark.parametrize("command", ["candidates", "dataset"])
def test_score_lists_every_missing_model_before_loading_any(
    command: str, tmp_path: Path, online: None, no_network: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 17: missing weights were found one model per run, each run loading the others first."""
    from typer.testing import CliRunner

    from acp.cli import app

    (tmp_path / "bank").mkdir()
    (tmp_path / "images").mkdir()
    (tmp_path / "coco.json").write_text('{"images": [], "annotations": [], "categories": []}')
    inputs = (["candidates", str(tmp_path), "--plans", str(plans_file(tmp_path))] if command == "candidates"
              else ["dataset", str(tmp_path / "coco.json"), "--images", str(tmp_path / "images")])
    result = CliRunner().invoke(app, [
        "score", *inputs, "-o", str(tmp_path / "out"), "--bank", str(tmp_path / "bank"),
        "--clip-model", str(tmp_path / "clip"), "--embed-model", "org/embedder-7f3q", "--device", "cpu",
    ], env={"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf-home")})
    assert result.exit_code == 1
    assert result.stderr.splitlines()[-1].startswith(
        f"acp: error: 2 models are missing: --clip-model {tmp_path / 'clip'}: no such folder")
    assert "--embed-model org/embedder-7f3q: not in the local Hugging Face cache" in result.stderr
    assert "acp: loading" not in result.stderr  # nothing was loaded
    assert not (tmp_path / "out").exists()


# -- the status line of each load -----------------------------------------------------------------

STATUS = re.compile(r"^acp: loading (\S+) \((--\S+) (.+)\) from (a local folder|the Hugging Face cache) "
                    r"\.\.\. (\d+\.\d s|failed)$")


def test_a_load_says_which_model_from_where_and_how_long_in_one_line(
    tiny_models: dict[str, Path], capfd: pytest.CaptureFixture[str]
) -> None:
    from acp.score.image import ImageScorer

    ImageScorer.from_pretrained(tiny_models["clip"], device="cpu", progress=True)
    lines = capfd.readouterr().err.splitlines()
    assert len(lines) == 1, lines  # transformers' own "Loading weights" bar is kept quiet
    match = STATUS.match(lines[0])
    assert match
    assert match.groups()[:4] == ("CLIP", "--clip-model", str(tiny_models["clip"]), "a local folder")


def test_without_progress_a_load_prints_nothing(tiny_models: dict[str, Path],
                                                capfd: pytest.CaptureFixture[str]) -> None:
    from acp.segment import MaskSegmenter

    MaskSegmenter(tiny_models["sam"], device="cpu")
    assert capfd.readouterr().err == ""


def test_a_failed_load_ends_its_line_before_the_error(
    hub_cache: Path, capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    cache_repo(hub_cache, "org/model", "config.json")
    monkeypatch.setattr(warnings, "showwarning", lambda message, *args: print(f"warning: {message}",
                                                                             file=sys.stderr))
    with pytest.raises(OSError, match="broken weights"), pretrained.loading("--sam-model", "org/model",
                                                                            progress=True):
        warnings.warn("a library's advice", UserWarning, stacklevel=1)
        raise OSError("broken weights")
    assert capfd.readouterr().err.splitlines() == [
        "acp: loading SAM (--sam-model org/model) from the Hugging Face cache ... failed",
        "warning: a library's advice",  # after the line, not inside it
    ]


def test_the_command_line_leaves_download_bars_to_the_load(tmp_path: Path) -> None:
    """Importing the CLI once set HF_HUB_DISABLE_PROGRESS_BARS=1, which the hub reads at import
    and which no later call can undo: a download from ``acp generate`` showed no bar at all."""
    code = (
        "import acp.cli\n"
        "from acp import pretrained\n"
        "from huggingface_hub.utils import are_progress_bars_disabled\n"
        "with pretrained.loading('--model', 'org/not-cached', progress=True):\n"
        "    print('download bars', not are_progress_bars_disabled())\n"
        "with pretrained.loading('--model', '/'):\n"
        "    print('local bars', not are_progress_bars_disabled())\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_DISABLE_PROGRESS_BARS"}
    env["HF_HUB_CACHE"] = str(tmp_path)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["download bars True", "local bars False"]


def test_a_download_keeps_its_bars_between_two_lines(
    hub_cache: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

    was_disabled = are_progress_bars_disabled()  # global state: an earlier test may have changed it
    enable_progress_bars()
    try:
        with pretrained.loading("--model", "org/not-cached", progress=True):
            assert not are_progress_bars_disabled()
            print("a download bar", file=sys.stderr)
        for quiet in (pretrained.loading("--model", "org/not-cached"), pretrained.loading("--model", "/")):
            with quiet:
                assert are_progress_bars_disabled()
        assert not are_progress_bars_disabled()
    finally:
        (disable_progress_bars if was_disabled else enable_progress_bars)()
    lines = capfd.readouterr().err.splitlines()
    assert lines[0] == "acp: loading GLIGEN (--model org/not-cached) from the hub ..."
    assert lines[1] == "a download bar"
    assert re.fullmatch(r"acp: GLIGEN \(--model org/not-cached\): \d+\.\d s", lines[2])


@pytest.mark.parametrize("progress", [True, False])
def test_render_prints_a_loading_line_unless_told_not_to(
    progress: bool, tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    from typer.testing import CliRunner

    from acp.cli import app

    result = CliRunner().invoke(app, [
        "render", str(plans_file(tmp_path)), "-o", str(tmp_path / "renders"),
        "--model", str(tiny_models["gligen"]), "--steps", "1", "--size", "64", "-k", "1", "--device", "cpu",
        "--progress" if progress else "--no-progress",
    ], env={"HF_TOKEN": "hf_never-shown-7f3q"})
    assert result.exit_code == 0, result.output
    loads = [line for line in result.stderr.splitlines() if line.startswith("acp: loading")]
    assert len(loads) == (1 if progress else 0)
    if progress:
        assert STATUS.match(loads[0]) and loads[0].startswith("acp: loading GLIGEN (--model ")
    assert "hf_never-shown" not in result.output


def test_a_load_from_disk_marks_the_hub_offline_meanwhile(
    online: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """huggingface_hub fetches its agent registry (telemetry) even for a cache-only load."""
    from huggingface_hub import constants

    seen: list[bool] = []

    def load(source: str, **kwargs: Any) -> str:
        seen.append(constants.HF_HUB_OFFLINE)
        if kwargs.get("local_files_only"):
            raise OSError("not in the cache")
        return source

    monkeypatch.setattr(pretrained, "hub_unreachable", lambda: None)
    assert load_pretrained(load, "org/model", option="--clip-model") == "org/model"
    assert seen == [True, False] and constants.HF_HUB_OFFLINE is False


def test_a_cached_load_never_connects(tiny_models: dict[str, Path], tmp_path: Path, closed_port: int) -> None:
    """A real process: with the model in the hub's cache, nothing goes to the network, not
    even huggingface_hub's telemetry (before, one connection per process)."""
    (tmp_path / "images").mkdir()
    (tmp_path / "coco.json").write_text('{"images": [], "annotations": [], "categories": []}')
    files = [path.name for path in tiny_models["clip"].iterdir()]
    cache_repo(tmp_path / "hf-home" / "hub", "org/tiny-clip", *files)
    snapshot = tmp_path / "hf-home" / "hub" / "models--org--tiny-clip" / "snapshots" / ("0" * 40)
    for name in files:
        shutil.copy(tiny_models["clip"] / name, snapshot / name)
    result, connections = run_acp(
        ["score", "dataset", "coco.json", "--images", "images", "-o", "report",
         "--clip-model", "org/tiny-clip", "--device", "cpu", "--no-progress"],
        tmp_path, HF_ENDPOINT=f"http://127.0.0.1:{closed_port}",
    )
    assert result.returncode == 0, result.stderr
    assert connections == []


@pytest.mark.parametrize("name", ["org/model\nacp: error: forged", "x" * 10_000 + "/y/z", "org/\x1b[31mred"])
def test_a_hostile_name_stays_one_short_line(name: str, no_network: None, hub_cache: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(InputError) as error:
        check_models([("--clip-model", name), ("--sam-model", name + "2")])
    message = str(error.value)
    assert message.isprintable() and len(message) < 1500


def test_render_with_a_model_name_too_long_for_a_path_is_one_short_line(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from acp.cli import app

    name = "x" * 10_000 + "/y/z"
    result = CliRunner().invoke(app, ["render", str(plans_file(tmp_path)), "-o", str(tmp_path / "out"),
                                      "--model", name, "--device", "cpu"])
    assert result.exit_code == 1
    assert result.stderr.startswith("acp: error: --model 'xxx") and "no such folder" in result.stderr
    assert result.stderr.count("\n") == 1 and len(result.stderr) < 500

"""Where model weights come from: a local folder, or a hub id read from the Hugging Face cache.

Every model acp loads (GLIGEN, CLIP, SAM, the detector, the sentence-transformers embedder) goes through
``load_pretrained``. A hub id is first loaded with ``local_files_only=True``; only when that
fails does acp go to the hub, and only after a TCP connect to it (``PROBE_TIMEOUT`` seconds)
succeeded. Without network, huggingface_hub would otherwise retry every file with backoff and
take minutes to fail; here it is a one-line error with what to do. ``HF_HUB_OFFLINE=1`` (or
``TRANSFORMERS_OFFLINE=1``) keeps acp off the network entirely.

A cached model is used as it is, without asking the hub for a newer revision: the run is
then the same with and without network. The cache-only attempt runs with the hub marked offline
(huggingface_hub would otherwise fetch its agent registry, a telemetry request, once per process).

``check_models`` looks at every model a command will load before any is loaded, without
loading one: all that are missing are listed in one error, with the command that fetches them.
``loading`` is the status line on stderr every loader prints around its load (which model,
from where, seconds taken), and keeps the libraries' own logs and progress bars quiet meanwhile.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NamedTuple, TypeVar
from urllib.parse import urlsplit
from urllib.request import getproxies, proxy_bypass

from acp.errors import InputError, quoted

T = TypeVar("T")

PROBE_TIMEOUT = 3.0  # seconds for the hub to take a TCP connection (DNS included)
_TRUE = {"1", "ON", "YES", "TRUE"}  # huggingface_hub's reading of its boolean variables


class ModelKind(NamedTuple):
    """What an option loads: its name in messages, and the config file that marks a model of it
    (the first one is looked up in the hub's cache and on the hub; a folder may hold any)."""

    what: str
    configs: tuple[str, ...]


# Every option that names a model, in every command.
MODELS = {
    "--model": ModelKind("GLIGEN", ("model_index.json",)),
    "--clip-model": ModelKind("CLIP", ("config.json",)),
    "--sam-model": ModelKind("SAM", ("config.json",)),
    # A sentence-transformers folder has modules.json; a plain transformers one, config.json.
    "--embed-model": ModelKind("sentence-transformers", ("config.json", "modules.json")),
    "--detector-model": ModelKind("detector", ("config.json",)),
}


def _folder(name: str) -> Path | None:
    """``name`` as an existing folder (``~`` expanded); ``None`` when it is none, a name too long
    for the file system included."""
    try:
        path = Path(name).expanduser()
        return path if path.is_dir() else None
    except (OSError, RuntimeError):  # ENAMETOOLONG; RuntimeError: ~user that does not exist
        return None


def looks_like_path(name: str) -> bool:
    """A name that can only be a folder: a hub id is ``owner/name`` (or a bare ``name``)."""
    return name.startswith(("/", ".", "~")) or name.count("/") > 1 or "\\" in name


def hub_offline() -> bool:
    """Whether the user switched the hub off, read now (huggingface_hub reads it at import)."""
    from huggingface_hub import constants

    variables = (os.environ.get("HF_HUB_OFFLINE"), os.environ.get("TRANSFORMERS_OFFLINE"))
    return bool(constants.HF_HUB_OFFLINE) or any((v or "").upper() in _TRUE for v in variables)


def hub_unreachable(timeout: float = PROBE_TIMEOUT) -> str | None:
    """Why the hub (``HF_ENDPOINT``, or the proxy in front of it) takes no TCP connection within
    ``timeout`` seconds; ``None`` when it does."""
    from huggingface_hub import constants

    url = urlsplit(constants.ENDPOINT)
    host, port = url.hostname or "", url.port or (443 if url.scheme == "https" else 80)
    proxy = getproxies().get(url.scheme) or getproxies().get("all")
    if proxy and not proxy_bypass(host):
        via = urlsplit(proxy if "://" in proxy else f"http://{proxy}")
        host, port = via.hostname or "", via.port or 80
    reasons: list[str | None] = []

    def connect() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            reasons.append(None)
        except OSError as error:
            reasons.append(error.strerror or str(error) or type(error).__name__)

    # In a thread: name resolution has no timeout of its own and can hang as long as a connect.
    thread = threading.Thread(target=connect, daemon=True)
    thread.start()
    thread.join(timeout)
    if not reasons:
        return f"{host}:{port}: no answer within {timeout:g} s"
    return None if reasons[0] is None else f"{host}:{port}: {reasons[0]}"


def load_pretrained(load: Callable[..., T], name: str, *, option: str) -> T:
    """``load(source, **kwargs)`` (a ``from_pretrained``) from a folder or a hub id.

    ``option`` names the model in messages (``--clip-model``). A path-like name that is not a
    folder, and a hub id that is neither cached nor reachable, are ``InputError``s; errors of
    ``load`` itself are the caller's to word.
    """
    folder = _folder(name)
    if folder is not None:
        return _from_disk(load, str(folder))
    if looks_like_path(name):
        raise InputError(f"{option} {shown(name)}: no such folder; "
                         "expected a hub id (owner/name) or a model folder")
    try:
        return _from_disk(load, name)
    except OSError:
        pass  # not (fully) in the cache
    if hub_offline():
        why = "HF_HUB_OFFLINE is set"
    else:
        unreachable = hub_unreachable()
        if unreachable is None:
            return load(name)
        why = f"the hub cannot be reached ({unreachable})"
    from huggingface_hub import constants

    raise InputError(
        f"{option} {shown(name)}: not in the local Hugging Face cache ({constants.HF_HUB_CACHE}) and {why}; "
        f"download it on a machine with network (hf download {shown(name)}) and copy the cache over, "
        "or pass a local folder"
    )


def shown(name: str) -> str:
    """A model name as messages and status lines print it: as given, unless it holds a control
    character (a line break would split a one-line error) or runs past 200 characters."""
    return name if name.isprintable() and len(name) <= 200 else quoted(name, 200)


def _from_disk(load: Callable[..., T], source: str) -> T:
    """``load(source, local_files_only=True)`` with the hub marked offline meanwhile: even a
    cache-only load has huggingface_hub fetch its agent registry (telemetry) once per process,
    a connection to the hub and seconds lost where the network drops packets."""
    from huggingface_hub import constants

    saved = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = True
    try:
        return load(source, local_files_only=True)
    finally:
        constants.HF_HUB_OFFLINE = saved


def _in_cache(name: str, config: str) -> bool:
    """Whether the hub's cache holds ``config`` of the repo ``name`` (no network)."""
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(name, config), str)


def _missing_from_hub(name: str, config: str) -> str | None:
    """Why the hub does not serve ``config`` of ``name``; ``None`` when it does, or when its
    answer settles nothing (an outage, a proxy's error page): the load then says what failed."""
    from huggingface_hub import file_exists
    from huggingface_hub.errors import GatedRepoError

    try:
        if file_exists(name, config):
            return None
        return f"not in the local Hugging Face cache nor on the hub (no such model with a {config})"
    except GatedRepoError:
        return ("not in the local Hugging Face cache, and gated on the hub: accept its terms on its "
                "page and log in (hf auth login)")
    except Exception:  # any other answer leaves the question to the load
        return None


def check_models(models: Iterable[tuple[str, str]]) -> None:
    """Check every ``(option, name)`` a command will load before any is loaded, and raise one
    ``InputError`` listing all that are missing, with the command that fetches them.

    A folder must exist and hold its kind's config (``MODELS``). A hub id is present when its
    config is in the local Hugging Face cache (no network). One that is not is missing when
    HF_HUB_OFFLINE is set or the hub takes no TCP connection (one probe for them all); when
    the hub is reachable, it is asked for the config file of each (one HEAD request each,
    without retries): a model it does not have, or holds gated, is missing; any other answer
    leaves the question to the load. Nothing is downloaded here.
    """
    from huggingface_hub import constants
    from huggingface_hub.errors import HFValidationError

    reasons: dict[tuple[str, str], str | None] = {}  # in the order given; None: present
    uncached: list[tuple[str, str]] = []
    for option, name in dict.fromkeys(models):
        kind = MODELS[option]
        folder = _folder(name)
        reason = None
        if folder is not None:
            if not any((folder / config).is_file() for config in kind.configs):
                reason = (f"a folder without {' or '.join(kind.configs)}; "
                          f"expected a {kind.what} model saved with save_pretrained")
        elif looks_like_path(name):
            reason = "no such folder; expected a hub id (owner/name) or a model folder"
        else:
            try:
                if not _in_cache(name, kind.configs[0]):
                    uncached.append((option, name))
            except HFValidationError:
                reason = "neither a folder nor a hub id (owner/name)"
        reasons[option, name] = reason
    fetch: list[str] = []
    if uncached:
        why = "HF_HUB_OFFLINE is set" if hub_offline() else None
        if why is None:
            unreachable = hub_unreachable()
            why = f"the hub cannot be reached ({unreachable})" if unreachable else None
        for option, name in uncached:
            if why:
                reasons[option, name] = f"not in the local Hugging Face cache and {why}"
                fetch.append(name)
            else:
                reasons[option, name] = _missing_from_hub(name, MODELS[option].configs[0])
    missing = [f"{option} {shown(name)}: {reason}" for (option, name), reason in reasons.items() if reason]
    if not missing:
        return
    message = missing[0] if len(missing) == 1 else f"{len(missing)} models are missing: " + "; ".join(missing)
    if fetch:
        commands = " && ".join(f"hf download {shown(name)}" for name in fetch)
        message += (f"; download {'it' if len(fetch) == 1 else 'them'} on a machine with network "
                    f"({commands}) and copy the cache ({constants.HF_HUB_CACHE}) over, "
                    "or pass a local folder")
    raise InputError(message)


def model_source(option: str, name: str) -> str:
    """Where ``name`` will be loaded from: a local folder, the Hugging Face cache or the hub."""
    if _folder(name) is not None:
        return "a local folder"
    try:
        return "the Hugging Face cache" if _in_cache(name, MODELS[option].configs[0]) else "the hub"
    except ValueError:  # not a hub id: the load says so
        return "the hub"


@contextmanager
def loading(option: str, name: str, *, progress: bool = False) -> Iterator[None]:
    """The load of the model ``option`` names, inside: libraries' logs and progress bars kept
    quiet, and with ``progress`` a status line on stderr, ``acp: loading CLIP (--clip-model
    NAME) from the Hugging Face cache ... 2.1 s`` (``failed`` when the load raises). Warnings
    raised meanwhile are shown after the line. A download from the hub keeps its own progress
    bars, so its status is a line before them and one after."""
    what = MODELS[option].what
    source = model_source(option, name) if progress else ""
    inline = source != "the hub"  # and without progress, no line and no bar at all
    if progress:
        print(f"acp: loading {what} ({option} {shown(name)}) from {source} ...", end=" " if inline else "\n",
              file=sys.stderr, flush=True)
    started = time.perf_counter()
    outcome = "failed"
    caught: list[warnings.WarningMessage] = []
    try:
        with warnings.catch_warnings(record=progress and inline) as recorded, _quiet(downloads=not inline):
            caught = recorded if recorded is not None else caught  # filled in place
            try:
                yield
                outcome = f"{time.perf_counter() - started:.1f} s"
            finally:
                if progress:
                    print(outcome if inline else f"acp: {what} ({option} {shown(name)}): {outcome}",
                          file=sys.stderr, flush=True)
    finally:
        for warning in caught:
            warnings.showwarning(warning.message, warning.category, warning.filename, warning.lineno)


@contextmanager
def _quiet(*, downloads: bool) -> Iterator[None]:
    """transformers' and diffusers' logs (their per-component loading bars, the deprecation of
    the GLIGEN pipeline, each weight file a load falls back from) silenced, and the hub's
    download bars too unless ``downloads``; diffusers only when it is already imported (a CLIP
    load does not import it). The exception that ends a failed load is all the user needs."""
    from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars
    from transformers.utils import logging as transformers_logging

    libraries: list[Any] = [transformers_logging]
    if "diffusers" in sys.modules:
        from diffusers.utils import logging as diffusers_logging

        libraries.append(diffusers_logging)
    hub_bars = not are_progress_bars_disabled()
    saved = [(lib.get_verbosity(), lib.is_progress_bar_enabled()) for lib in libraries]
    for lib in libraries:
        lib.set_verbosity(logging.CRITICAL)
        lib.disable_progress_bar()  # transformers' switches the hub's bars off with its own
    if hub_bars and downloads:
        enable_progress_bars()
    try:
        yield
    finally:
        for lib, (verbosity, bars) in zip(libraries, saved, strict=True):
            lib.set_verbosity(verbosity)
            if bars:
                lib.enable_progress_bar()
        (enable_progress_bars if hub_bars else disable_progress_bars)()

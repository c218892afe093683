"""Where model weights come from: a local folder, or a hub id read from the Hugging Face cache.

Every model acp loads (GLIGEN, CLIP, SAM, the sentence-transformers embedder) goes through
``load_pretrained``. A hub id is first loaded with ``local_files_only=True``; only when that
fails does acp go to the hub, and only after a TCP connect to it (``PROBE_TIMEOUT`` seconds)
succeeded. Without network, huggingface_hub would otherwise retry every file with backoff and
take minutes to fail; here it is a one-line error with what to do. ``HF_HUB_OFFLINE=1`` (or
``TRANSFORMERS_OFFLINE=1``) keeps acp off the network entirely.

A cached model is used as it is, without asking the hub for a newer revision: the run is
then the same with and without network.
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlsplit
from urllib.request import getproxies, proxy_bypass

from acp.errors import InputError

T = TypeVar("T")

PROBE_TIMEOUT = 3.0  # seconds for the hub to take a TCP connection (DNS included)
_TRUE = {"1", "ON", "YES", "TRUE"}  # huggingface_hub's reading of its boolean variables


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
    if Path(name).expanduser().is_dir():
        return load(str(Path(name).expanduser()), local_files_only=True)
    if looks_like_path(name):
        raise InputError(f"{option} {name}: no such folder; expected a hub id (owner/name) or a model folder")
    try:
        return load(name, local_files_only=True)
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
        f"{option} {name}: not in the local Hugging Face cache ({constants.HF_HUB_CACHE}) and {why}; "
        f"download it on a machine with network (hf download {name}) and copy the cache over, "
        "or pass a local folder"
    )

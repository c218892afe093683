"""The one place that turns ``--device`` into a torch device, and ``--dtype`` into the dtype each
model runs in, for every command that loads a model: ``auto`` (or nothing), ``cpu``, ``cuda``,
``cuda:N``, ``mps``. A device this machine lacks, or a dtype acp does not run in, is a one-line
``InputError`` naming the option before any model is loaded."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from acp.errors import InputError

if TYPE_CHECKING:
    import torch

DEVICE_KINDS = ("cpu", "cuda", "mps", "xpu")
EXPECTED_DEVICES = "expected auto, cpu, cuda, cuda:N (a GPU index, e.g. cuda:0) or mps"


def resolve_device(device: str | None) -> str:
    """The torch device to run on, as a string: ``None`` or ``"auto"`` give ``cuda`` when torch
    sees a CUDA GPU, else ``mps`` on an Apple GPU, else ``cpu``; any other value is checked, and
    a string torch does not parse, a kind of device acp does not run on, or a device this
    machine lacks raises a one-line ``InputError`` naming ``--device``."""
    import torch

    if device is None or device == "auto":
        if torch.cuda.is_available():
            return "cuda"
        mps = getattr(torch.backends, "mps", None)
        return "mps" if mps is not None and mps.is_available() else "cpu"
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise InputError(f"--device {device!r}: not a torch device; {EXPECTED_DEVICES}") from None
    kind = parsed.type
    if kind not in DEVICE_KINDS:
        raise InputError(f"--device {device}: acp cannot run on a {kind} device; {EXPECTED_DEVICES}")
    if kind == "cpu":
        return device
    backend: Any = torch.backends.mps if kind == "mps" else getattr(torch, kind, None)
    if backend is None or not backend.is_available():
        found = "torch sees no CUDA GPU" if kind == "cuda" else f"torch sees no {kind} device"
        raise InputError(f"--device {device}: {found} on this machine; use --device cpu or leave it out")
    if parsed.index is not None and hasattr(backend, "device_count"):
        count = int(backend.device_count())
        if parsed.index >= count:
            raise InputError(
                f"--device {device}: torch sees {count} {kind} device(s) here, "
                f"expected {kind}:0 to {kind}:{count - 1}"
            )
    return device


DTYPES = ("float32", "float16", "bfloat16")
EXPECTED_DTYPES = "expected auto, float32, float16 or bfloat16"


def check_dtype(dtype: str) -> None:
    """``--dtype`` checked without torch (a run with nothing left to do imports none)."""
    if dtype != "auto" and dtype not in DTYPES:
        raise InputError(f"--dtype {dtype}: not a dtype acp runs models in; {EXPECTED_DTYPES}")


def resolve_dtype(dtype: str | torch.dtype | None, device: str, *, half_on_cuda: bool = True) -> torch.dtype:
    """The torch dtype a model runs in on ``device``. ``None`` or ``"auto"``: float16 on CUDA
    for a model with ``half_on_cuda`` (GLIGEN and CLIP: half precision is the well-trodden path
    of Stable Diffusion 1.x and CLIP there), float32 everywhere else (SAM, whose share of a run
    is small; every model on the CPU and on MPS). Otherwise one of ``DTYPES`` (or a torch
    dtype among them); anything else is a one-line ``InputError`` naming ``--dtype``."""
    import torch

    if dtype is None or dtype == "auto":
        return torch.float16 if half_on_cuda and device.startswith("cuda") else torch.float32
    name = str(dtype).removeprefix("torch.")
    if name not in DTYPES:
        raise InputError(f"--dtype {name}: not a dtype acp runs models in; {EXPECTED_DTYPES}")
    resolved: torch.dtype = getattr(torch, name)
    return resolved

"""Precision of an alignment's semantic side: fp32, bf16, or bf16 where the hardware has it.

The semantic vectors are fixed inputs (text-encoder output, 384-1536 wide) and their products
are most of an alignment's step. In bf16 they take half the memory and, on hardware that
multiplies bf16 natively (CUDA GPUs with bf16 support; CPUs with AVX512-BF16 or AMX), run
2-4x faster with fp32 accumulation. Without native support bf16 products are emulated and
slower than fp32, so ``"auto"`` picks bf16 only where it is native.
"""

from __future__ import annotations

import contextlib
from typing import Any, Literal

import torch

Bf16 = bool | Literal["auto"]


def native_bf16(device: torch.device | str | None = None) -> bool:
    """Whether ``device`` multiplies bf16 natively. ``None``: the device training will use
    (CUDA when available, else the CPU)."""
    dev = torch.device(device) if device is not None else torch.device(
        "cuda" if torch.cuda.is_available() else "cpu")
    if dev.type == "cuda":
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    if dev.type == "cpu":
        # torch.cpu's capability probes are the only public-facing query of these ISA
        # extensions (underscored, present since torch 2.2); a missing probe means "no"
        probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
        return any(bool(getattr(torch.cpu, p, lambda: False)()) for p in probes)
    return False


def resolve_bf16(flag: Bf16, device: torch.device | str | None = None) -> bool:
    """``True``/``False`` as given; ``"auto"``: :func:`native_bf16` of ``device``."""
    if flag == "auto":
        return native_bf16(device)
    return bool(flag)


def precision_of(module: Any) -> str:
    """``"bf16"`` or ``"fp32"``: what an alignment's semantic side runs in (its resolved
    ``bf16``; modules without one are fp32). For run summaries and benchmark records."""
    return "bf16" if getattr(module, "bf16", False) is True else "fp32"


def autocast(enabled: bool, device: torch.device) -> Any:
    """bf16 autocast on ``device`` when ``enabled``, else nothing."""
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)

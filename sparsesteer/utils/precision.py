"""Training precision: bfloat16 autocast where the hardware runs it fast, float32 elsewhere.

The encoder matmul is the floor of a TopK training step; in bfloat16 it runs 2-3x faster on CUDA
and on CPUs with native bfloat16 dot products (AVX-512 BF16, AMX). Only the matmuls run in bf16:
master weights, optimiser state, the selected pre-activations (recomputed in float32 for the
chosen latents, see `kernels.encode_select`) and the loss stay in float32. Without native support
a bf16 matmul is emulated and slower than float32, so `auto` keeps float32 there.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator

import torch


@functools.cache
def cpu_bf16_native() -> bool:
    """Whether this CPU has native bfloat16 dot products (AVX-512 BF16 or AMX-BF16)."""
    try:
        caps = torch._C._cpu._get_cpu_capability()
    except (AttributeError, RuntimeError):  # older torch or a non-x86 build: no fast path known
        return False
    return bool(caps.get("avx512_bf16") or caps.get("amx_bf16"))


def cuda_bf16(device: torch.device) -> bool:
    return device.type == "cuda" and torch.cuda.is_bf16_supported()


def resolve_bf16(setting: bool | None, device: torch.device) -> bool:
    """The precision a run uses: `setting` when given, else bf16 where it is fast (see module doc)."""
    if setting is not None:
        return bool(setting) and device.type in ("cpu", "cuda")
    if device.type == "cuda":
        return cuda_bf16(device)
    return device.type == "cpu" and cpu_bf16_native()


def describe(bf16: bool, device: torch.device) -> str:
    """What ran, for the log and the run's config, e.g. 'bf16 autocast (cpu: avx512_bf16)'."""
    if not bf16:
        return "fp32"
    if device.type == "cpu":
        caps = _caps()
        have = [c for c in ("amx_bf16", "avx512_bf16") if caps.get(c)] or ["emulated"]
        return f"bf16 autocast ({device.type}: {'+'.join(have)})"
    return f"bf16 autocast ({device.type})"


def _caps() -> dict:
    try:
        return dict(torch._C._cpu._get_cpu_capability())
    except (AttributeError, RuntimeError):
        return {}


@contextlib.contextmanager
def autocast(bf16: bool, device: torch.device) -> Iterator[None]:
    """bf16 autocast on `device` when `bf16`, else nothing."""
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16 and device.type in ("cpu", "cuda")):
        yield

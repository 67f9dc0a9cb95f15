"""The `--device` option of every command."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .errors import SparsesteerError

if TYPE_CHECKING:
    import torch


def resolve_device(spec: str | None = "auto") -> torch.device:
    """`--device` value -> torch.device; 'auto' = CUDA when available, else CPU."""
    import torch

    if spec in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except (RuntimeError, TypeError):
        raise SparsesteerError(f"unknown device {spec!r}; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SparsesteerError(f"--device {spec}: CUDA is not available on this machine; use --device cpu")
    return device

"""Training precision: fp32, fp16 + GradScaler, or bf16, resolved from ``--precision`` and the device.

Why a module of its own: the choice depends on the device (bf16 needs compute capability >= 8 on
CUDA; fp16 needs a GradScaler because its range ends at 65504), and the divergence rule depends on
the choice (:mod:`quicktune.finetune.divergence`: in fp16 an overflowed step is skipped by the
scaler, not fatal).

``auto`` (the default of ``quicktune step``): bf16 on a CUDA device with compute capability >= 8
(A100, H100, H200, L4 ...), fp16 + GradScaler on older CUDA devices, fp32 on the CPU. An explicit
``fp16`` or ``bf16`` also runs on the CPU (torch autocasts there; slow, used by the tests).
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch

__all__ = [
    "PRECISIONS",
    "FP16_INIT_SCALE",
    "resolve_precision",
    "cuda_bf16_native",
    "autocast",
    "make_scaler",
]

PRECISIONS = ("fp32", "fp16", "bf16", "auto")
_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}

#: GradScaler's initial scale (torch's default, 2**16); a module constant so a test can start it
#: at a scale that overflows for sure
FP16_INIT_SCALE = 2.0**16


def resolve_precision(asked: str, device: torch.device | str, bf16_supported: bool | None = None) -> str:
    """The concrete precision (``fp32``/``fp16``/``bf16``) for ``asked`` on ``device``.

    ``bf16_supported`` overrides the device query (tests); by default a CUDA device supports bf16
    natively when its compute capability is >= 8 (the step's own device index, not device 0)."""
    if asked not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {asked!r}")
    dev = torch.device(device)
    if asked != "auto":
        return asked
    if dev.type != "cuda":
        return "fp32"
    if bf16_supported is None:
        bf16_supported = cuda_bf16_native(dev)
    return "bf16" if bf16_supported else "fp16"


def cuda_bf16_native(dev: torch.device) -> bool:
    """True when the CUDA device ``dev`` computes bf16 natively (compute capability >= 8)."""
    if dev.type != "cuda" or not torch.cuda.is_available():
        return False
    if torch.version.hip:
        return True
    return torch.cuda.get_device_properties(dev).major >= 8


def autocast(device: torch.device, precision: str) -> Any:
    """The autocast context of ``precision`` on ``device`` (a no-op for fp32)."""
    dtype = _DTYPES.get(precision)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def make_scaler(device: torch.device, precision: str) -> torch.amp.GradScaler | None:
    """A GradScaler for fp16 (None otherwise: fp32 and bf16 need none)."""
    if precision != "fp16":
        return None
    return torch.amp.GradScaler(device.type, init_scale=FP16_INIT_SCALE)

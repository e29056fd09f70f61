"""Which number format a device computes fastest, shared by training (`--mixed_precision auto`) and inference.

Where the hardware has bf16 arithmetic, bf16 autocast cut the time of a wav2vec2-base pretraining update by 1.7x
and of an inference window by 2.2x on this project's CPU (BENCHMARKS.md); where bf16 is only emulated it is
slower, so "auto" falls back to fp32 there.
"""

from contextlib import nullcontext

import torch

PRECISIONS = ("auto", "fp32", "bf16")


def bf16_is_native(device: torch.device | str) -> bool:
    """Whether `device` computes bf16 natively: a GPU of compute capability 8 or later, a CPU with AVX512-BF16 or
    AMX. (`torch.cuda.is_bf16_supported()` also counts emulation, and oneDNN's own check any AVX512 CPU.)"""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.get_device_capability(device)[0] >= 8
    if device.type == "cpu":
        # torch's CPU feature probes are underscored but have no public spelling; one place wraps them.
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    return False


def resolve_precision(precision: str, device: torch.device | str) -> str:
    """"auto" -> "bf16" where `device` has native bf16, else "fp32"; other values pass through (checked)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "auto":
        return "bf16" if bf16_is_native(device) else "fp32"
    return precision


def autocast(precision: str, device: torch.device | str):
    """The autocast context of a resolved `precision` ("fp32": none)."""
    if precision == "bf16":
        return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)
    return nullcontext()


__all__ = ["PRECISIONS", "autocast", "bf16_is_native", "resolve_precision"]

"""Which number format a device computes fastest, shared by training (`--mixed_precision auto`) and inference.

bf16 autocast roughly halves the time of wav2vec2's matrix products and convolutions where the hardware has bf16
arithmetic (BENCHMARKS.md: about 2x per pretraining update and per inference window of wav2vec2-base on a CPU
with AVX512-BF16); elsewhere it is emulated and slower, so "auto" falls back to fp32 there.
"""

from contextlib import nullcontext

import torch

PRECISIONS = ("auto", "fp32", "bf16")


def bf16_is_native(device: torch.device | str) -> bool:
    """Whether `device` computes bf16 matrix products natively (a GPU with bf16, a CPU with AVX512-BF16 or AMX)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()
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

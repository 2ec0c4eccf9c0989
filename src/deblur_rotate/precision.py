"""Which floating-point precision pays off on a device: bf16 autocast where the hardware computes bf16 natively
(CUDA GPUs with bf16, CPUs with AVX-512 BF16 or AMX), fp32 elsewhere.

On a CPU without those instructions PyTorch emulates bf16 and autocast is far slower than fp32 (session 10, an
AVX2-only AMD EPYC, ``benchmarks/train_step_speed.py --threads 1``: one E_s + G step 56 s under bf16 against
2.5 s in fp32), so "auto" is the safe default
for anything that should run fast everywhere. torch is imported only when a device is probed.
"""
from __future__ import annotations

__all__ = ["bf16_is_native", "resolve_precision"]


def bf16_is_native(device) -> bool:
    """Whether ``device`` (a torch.device) computes bf16 natively: CUDA with bf16 support, or a CPU with
    AVX-512 BF16 or AMX tiles."""
    import torch

    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        cpu = getattr(torch, "cpu", None)
        probes = [getattr(cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
        return any(bool(probe()) for probe in probes if callable(probe))
    return False


def resolve_precision(precision: str, device) -> str:
    """``precision`` with "auto" replaced by "bf16" where :func:`bf16_is_native`, else "fp32"."""
    if precision != "auto":
        return precision
    return "bf16" if bf16_is_native(device) else "fp32"

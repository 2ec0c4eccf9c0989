"""Image and video measures shared by training (logged PSNR) and evaluation (the paper's tables): PSNR, SSIM,
the better time order of a predicted video, and motion energy. Pure functions, torch and kornia only.

Conventions (docs/DESIGN.md): images ``[..., 3, H, W]`` float in [-1, 1]; videos ``[N, T, 3, H, W]``. The
evaluation protocol that uses them is :data:`deblur_rotate.evaluate.metrics.PROTOCOL`.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

__all__ = ["SSIM_SIGMA", "SSIM_WINDOW", "OrderChoice", "apply_order", "best_order", "motion_energy", "motion_ratio",
           "psnr", "reverse_frames", "sharpness", "sharpness_ratio", "ssim", "video_metric"]

SSIM_WINDOW = 11  # Gaussian window taps (Wang et al. 2004)
SSIM_SIGMA = 1.5  # Gaussian window standard deviation, pixels (kornia's ssim fixes sigma at 1.5)

# ------------------------------------------------------------------------------------------- images

def _check_pair(pred: torch.Tensor, target: torch.Tensor) -> None:
    if pred.shape != target.shape:
        raise ValueError(f"pred and target must have the same shape, got {tuple(pred.shape)} and "
                         f"{tuple(target.shape)}")
    if pred.dim() < 3 or pred.shape[-3] != 3:
        raise ValueError(f"expected images [..., 3, H, W], got {tuple(pred.shape)}")


def psnr(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Peak signal-to-noise ratio per image, dB.

    pred, target: ``[..., 3, H, W]`` in [-1, 1] (e.g. ``[N, 3, H, W]`` or videos ``[N, T, 3, H, W]``).
    Returns ``[...]`` (``[N]``, ``[N, T]``): ``10 log10(1 / MSE)`` with the images mapped to [0, 1], i.e.
    ``10 log10(4 / MSE_[-1,1])``; +inf for identical images. Values are not clamped: clamp (and quantise
    to 8 bits, if the protocol wants it) before calling.
    """
    _check_pair(pred, target)
    mse = (pred.double() - target.double()).square().flatten(-3).mean(-1) / 4.0  # [...] in [0, 1] units
    return (10.0 * torch.log10(1.0 / mse)).float()  # 1 / 0 -> inf


def ssim(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Structural similarity per image (see :data:`PROTOCOL` for the settings), in [-1, 1]; 1 = identical.

    pred, target: ``[..., 3, H, W]`` in [-1, 1], H and W >= 11. Returns ``[...]``.
    """
    from kornia.metrics import ssim as kornia_ssim

    _check_pair(pred, target)
    h, w = pred.shape[-2:]
    if min(h, w) < SSIM_WINDOW:
        raise ValueError(f"SSIM needs images of at least {SSIM_WINDOW} px, got {h}x{w}")
    lead = pred.shape[:-3]
    a = ((pred.reshape(-1, 3, h, w).double() + 1) / 2)
    b = ((target.reshape(-1, 3, h, w).double() + 1) / 2)
    ssim_map = kornia_ssim(a, b, SSIM_WINDOW, max_val=1.0, eps=0.0, padding="valid")  # [M, 3, h', w']
    return ssim_map.flatten(1).mean(1).float().reshape(lead)


# ------------------------------------------------------------------------------- time order of videos

def reverse_frames(video: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """The video with its frames in reverse order (``[N, T, ...]`` along ``dim``, default the T axis)."""
    return video.flip(dim)


@dataclass
class OrderChoice:
    """Per-frame figures after picking, per sequence, the better of the two time orders."""

    per_frame: torch.Tensor  # [N, T] figure of target frame t under the chosen order
    reversed: torch.Tensor  # [N] bool: True where the reversed prediction won


def best_order(per_frame_fwd: torch.Tensor, per_frame_bwd: torch.Tensor,
               higher_is_better: bool = True) -> OrderChoice:
    """Keep, per sequence, the better of the as-ordered and the reversed scores (paper's protocol).

    per_frame_fwd: ``[N, T]`` metric of predicted frame t against target frame t.
    per_frame_bwd: ``[N, T]`` metric of predicted frame T-1-t against target frame t (the prediction
                   reversed), e.g. ``psnr(reverse_frames(pred), target)``.
    higher_is_better: True for PSNR/SSIM, False for errors (landmarks).
    A sequence's orders are compared by their mean over frames (NaN frames left out); a tie keeps the
    forward order. Returns :class:`OrderChoice` (per-frame figures indexed by target frame).
    """
    if per_frame_fwd.shape != per_frame_bwd.shape or per_frame_fwd.dim() != 2:
        raise ValueError(f"expected two [N, T] tensors, got {tuple(per_frame_fwd.shape)} and "
                         f"{tuple(per_frame_bwd.shape)}")
    fwd, bwd = per_frame_fwd.double().nanmean(1), per_frame_bwd.double().nanmean(1)
    if not higher_is_better:
        fwd, bwd = -fwd, -bwd
    # a NaN mean (nothing measurable) never wins; fwd = +inf (identical) vs bwd = +inf is a tie
    rev = (bwd > fwd) | (fwd.isnan() & ~bwd.isnan())
    return OrderChoice(per_frame=apply_order(per_frame_fwd, per_frame_bwd, rev), reversed=rev)


def apply_order(per_frame_fwd: torch.Tensor, per_frame_bwd: torch.Tensor, reversed: torch.Tensor) -> torch.Tensor:
    """``[N, T]`` figures under a given order choice ``reversed [N]`` (bool), e.g. to report the landmark
    error under the order that PSNR chose."""
    return torch.where(reversed.to(per_frame_fwd.device)[:, None], per_frame_bwd, per_frame_fwd)


def video_metric(metric: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], pred: torch.Tensor,
                 target: torch.Tensor, higher_is_better: bool = True) -> OrderChoice:
    """A per-image metric (e.g. :func:`psnr`, :func:`ssim`) on videos under the better time order.

    pred, target: ``[N, T, 3, H, W]`` in [-1, 1]. Returns :class:`OrderChoice` with ``per_frame [N, T]``.
    """
    if pred.dim() != 5:
        raise ValueError(f"expected videos [N, T, 3, H, W], got {tuple(pred.shape)}")
    return best_order(metric(pred, target), metric(reverse_frames(pred), target), higher_is_better)


def motion_energy(video: torch.Tensor) -> torch.Tensor:
    """Mean absolute frame-to-frame change of each video: ``[N, T, 3, H, W]`` in [-1, 1] -> ``[N]``, in
    [0, 2] (the same in either time order)."""
    if video.dim() != 5 or video.shape[1] < 2:
        raise ValueError(f"expected videos [N, T >= 2, 3, H, W], got {tuple(video.shape)}")
    return (video[:, 1:] - video[:, :-1]).abs().flatten(1).mean(1)


def sharpness(images: torch.Tensor) -> torch.Tensor:
    """Mean absolute Laplacian (kornia, 3 x 3 kernel, reflected borders) of ``[..., 3, H, W]`` images in [-1, 1],
    taken on [0, 1] values, per image ``[...]``: how much fine detail (edges, texture) an image holds; blur lowers
    it."""
    if images.dim() < 3 or images.shape[-3] != 3:
        raise ValueError(f"expected images [..., 3, H, W], got {tuple(images.shape)}")
    from kornia.filters import laplacian

    flat = ((images.float() + 1) / 2).reshape(-1, *images.shape[-3:])
    return laplacian(flat, 3).abs().flatten(1).mean(1).view(images.shape[:-3])


def sharpness_ratio(pred: torch.Tensor, target: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Mean :func:`sharpness` of each predicted video over that of its target video, ``[N]`` (1 = as much fine
    detail as the true frames; a blurry image scores below 1). pred, target ``[N, T, 3, H, W]``."""
    _check_pair(pred, target)
    return sharpness(pred).mean(1) / sharpness(target).mean(1).clamp_min(eps)


def motion_ratio(pred: torch.Tensor, target: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """How much of the true motion a predicted video shows: ``motion_energy(pred) / motion_energy(target)``
    per video, ``[N]`` (1 = as much frame-to-frame change as the truth; 0 = a still image). Order-free:
    reversing a video leaves its frame-to-frame differences unchanged. pred, target ``[N, T, 3, H, W]``."""
    _check_pair(pred, target)
    return motion_energy(pred) / motion_energy(target).clamp_min(eps)

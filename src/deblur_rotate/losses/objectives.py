"""The paper's four training objectives (eq. 1-4), one pure function each; the stages call these.

Each function takes the quantities the stage computed (network outputs, targets, frozen loss networks) and
the weights as arguments, and returns ``(total, terms)``: the weighted scalar to back-propagate and the
unweighted terms by name (scalars, for logging). The default weights are the paper's and live in one place,
each stage's Config dataclass (``train/<stage>.py``); these functions take them as given.

========  =====================================  ======================================
equation  objective                              function
========  =====================================  ======================================
eq. 1     E_s (+ G fine-tuned), l_s              :func:`sharp_encoder_loss`
eq. 2     E_v, time-order invariant codes        :func:`blur_encoder_loss`
eq. 3     E_3D, l_im + landmarks + views + prior :func:`face3d_loss`
eq. 4     F, codes of another view               :func:`fusion_loss`
========  =====================================  ======================================

The terms themselves are in :mod:`deblur_rotate.losses.terms` (image and code terms) and
:mod:`deblur_rotate.losses.face3d` (E_3D's render terms).
"""
from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from torch import nn

from deblur_rotate.losses.face3d import (
    RenderedFace,
    coefficient_regularizer,
    identity_chip_loss,
    landmark_loss,
    masked_edge_loss,
    multiview_loss,
    photometric_loss,
)
from deblur_rotate.losses.terms import (
    edge_loss,
    identity_loss,
    l1_loss,
    latent_norm_loss,
    order_invariant_latent_loss,
    parameter_drift_loss,
    perceptual_loss,
)

__all__ = ["blur_encoder_loss", "face3d_loss", "fusion_loss", "sharp_encoder_loss", "weighted_total"]

Terms = dict[str, torch.Tensor]


def weighted_total(terms: Mapping[str, torch.Tensor], weights: Mapping[str, float]) -> torch.Tensor:
    """``sum_k weights[k] * terms[k]`` over the terms, in their order (a term without a weight is an error)."""
    missing = [k for k in terms if k not in weights]
    if missing:
        raise KeyError(f"no weight for the loss term(s) {', '.join(missing)}")
    return sum(weights[k] * v for k, v in terms.items())


def sharp_encoder_loss(
    recon: torch.Tensor,  # [N, 3, R, R] G(E_s(y)) in about [-1, 1]
    target: torch.Tensor,  # [N, 3, R, R] the sharp faces y in [-1, 1]
    ws: torch.Tensor,  # [N, num_ws, w_dim] E_s(y)
    *,
    lambda_l1: float = 1.0,
    lambda_edge: float,
    lambda_s: float,
    lambda_id: float = 0.0,
    lambda_per: float = 0.0,
    lambda_g: float = 0.0,
    w_norm_ref: float | torch.Tensor = 1.0,  # |w| G's codes have (latent_norm_loss)
    pixel_weights: torch.Tensor | None = None,  # [N, 1, R, R] e.g. skin counting double
    identity_chips: tuple[torch.Tensor, torch.Tensor] | None = None,  # recon and target chips [N, 3, 150, 150]
    identity_net: nn.Module | None = None,  # frozen face-descriptor network (with identity_chips)
    perceptual: nn.Module | None = None,  # frozen PerceptualFeatures
    generator: nn.Module | None = None,  # G's fine-tuned synthesis network (for lambda_g)
    generator_init: Mapping[str, torch.Tensor] | None = None,  # its parameters at the start
) -> tuple[torch.Tensor, Terms]:
    """Eq. 1, the sharp encoder's objective:

        l_s = lambda_id L_id + lambda_per L_per + lambda_edge L_edge + L_1 + lambda_g |G_init - G|^2
              + lambda_s |1 - |E_s(y)||

    L_id is computed only with ``identity_net`` (and ``identity_chips``), L_per only with ``perceptual``,
    the drift term only when ``lambda_g > 0`` and ``generator`` is given. Terms: l1, edge, s, id, per,
    g_drift (those computed)."""
    terms: Terms = {"l1": l1_loss(recon, target, pixel_weights), "edge": edge_loss(recon, target, pixel_weights),
                    "s": latent_norm_loss(ws, w_norm_ref)}
    if identity_net is not None:
        if identity_chips is None:
            raise ValueError("sharp_encoder_loss: identity_net needs identity_chips (recon and target chips)")
        terms["id"] = identity_loss(identity_chips[0], identity_chips[1], identity_net)
    if perceptual is not None:
        terms["per"] = perceptual_loss(recon, target, perceptual)
    total = weighted_total(terms, {"l1": lambda_l1, "edge": lambda_edge, "s": lambda_s, "id": lambda_id,
                                   "per": lambda_per})
    if generator is not None and lambda_g > 0:
        if generator_init is None:
            raise ValueError("sharp_encoder_loss: lambda_g needs generator_init (G's starting parameters)")
        terms["g_drift"] = parameter_drift_loss(generator, generator_init)
        total = total + lambda_g * terms["g_drift"]
    return total, terms


def in_time_order(frames: torch.Tensor, reversed_: torch.Tensor) -> torch.Tensor:
    """``frames [N, T, ...]`` with the samples whose ``reversed_ [N]`` is True flipped in time."""
    flip = reversed_.view(-1, *([1] * (frames.dim() - 1)))
    return torch.where(flip, frames.flip(1), frames)


def blur_encoder_loss(
    pred: torch.Tensor,  # [N, T, num_ws, w_dim] E_v(x)
    teacher: torch.Tensor,  # [N, T, num_ws, w_dim] E_s of the T sharp frames, z
    *,
    kind: str = "l1",  # latent distance: l1 or l2
    lambda_image: float = 0.0,  # our option (0: the paper's objective)
    decode: Callable[[torch.Tensor], torch.Tensor] | None = None,  # [N, K, num_ws, w_dim] -> [N, K, 3, R, R]
    targets: torch.Tensor | None = None,  # [N, T, 3, R, R] the sharp frames (with lambda_image)
    frame_indices: torch.Tensor | None = None,  # [K] frames decoded for the image term (default all)
) -> tuple[torch.Tensor, Terms, torch.Tensor, torch.Tensor | None]:
    """Eq. 2, the blurry encoder's objective (the blur does not tell which way time ran):

        L_v = min( |E_v(x) - z|, |E_v(x) - z_reversed| )    per sample, then the batch mean

    With ``lambda_image > 0`` (not the paper's), ``+ lambda_image |G(E_v(x))_k - y_k|_1`` over the frames
    ``frame_indices``, the targets taken in the time order the latent term chose.
    Returns ``(total, terms, reversed [N] bool, (decoded frames [N, K, 3, R, R], their targets) or None)``."""
    per_sample, reversed_ = order_invariant_latent_loss(pred, teacher, kind)
    terms: Terms = {"latent": per_sample.mean()}
    total = terms["latent"]
    decoded = None
    if lambda_image > 0:
        if decode is None or targets is None:
            raise ValueError("blur_encoder_loss: lambda_image needs decode and targets")
        pick = torch.arange(pred.shape[1]) if frame_indices is None else frame_indices
        frames = decode(pred[:, pick])  # [N, K, 3, R, R]
        ordered = in_time_order(targets, reversed_)[:, pick]
        terms["image"] = (frames - ordered).abs().mean()
        total = total + lambda_image * terms["image"]
        decoded = (frames, ordered)
    return total, terms, reversed_, decoded


def face3d_loss(
    rendered: RenderedFace,  # the render of E_3D's coefficients (losses.face3d.render_coefficients_image)
    coeffs: torch.Tensor,  # [2P, C] coefficients, views u, v of each instant interleaved
    target: torch.Tensor,  # [2P, 3, S, S] sharp middle frames in [-1, 1]
    landmarks: torch.Tensor,  # [2P, 68, 2] ground-truth landmarks, pixels (NaN where unknown)
    layout,  # CoeffLayout of the coefficient vector
    *,
    weights: Mapping[str, float],  # data, edge, id, lan, mview, c
    image_width: float,  # pixels, the unit of L_lan
    pixel_weights: torch.Tensor | None = None,  # [2P, 1, S, S] e.g. skin counting double
    identity_net: nn.Module | None = None,  # frozen dlib descriptor network (lambda_id > 0)
    chip_to_image: torch.Tensor | None = None,  # [2P, 2, 3] identity-chip maps (with identity_net)
) -> tuple[torch.Tensor, Terms]:
    """Eq. 3 with the supplement's l_im, E_3D's objective:

        l_im = lambda_data L_1,mask + lambda_edge L_edge,mask + lambda_id L_id
        L_3D = l_im + lambda_lan L_lan + lambda_mview L_mview + lambda_c (|alpha|^2 + |beta|^2 + |delta|^2)

    L_mview compares the identity, albedo and expression of the two views of each instant (rows 2i, 2i+1).
    Terms: data, edge, lan, mview, c, id (with ``identity_net``)."""
    pairs = coeffs.view(-1, 2, coeffs.shape[-1])
    terms: Terms = {
        "data": photometric_loss(rendered.image, target, rendered.mask, pixel_weights),
        "edge": masked_edge_loss(rendered.image, target, rendered.mask, pixel_weights),
        "lan": landmark_loss(rendered.landmarks, landmarks, image_width),
        "mview": multiview_loss(pairs[:, 0], pairs[:, 1], layout),
        "c": coefficient_regularizer(coeffs, layout),
    }
    if identity_net is not None:
        if chip_to_image is None:
            raise ValueError("face3d_loss: identity_net needs chip_to_image")
        terms["id"] = identity_chip_loss(rendered.image, target, chip_to_image, identity_net)
    return weighted_total(terms, weights), terms


def fusion_loss(
    pred: torch.Tensor,  # [N, T, num_ws, w_dim] F(z^u, R^v - R^u)
    target: torch.Tensor,  # [N, T, num_ws, w_dim] E_s codes of view v's frames, z^v
    *,
    lambda_image: float = 0.0,  # our option (0: the paper's objective)
    decode: Callable[[torch.Tensor], torch.Tensor] | None = None,  # [N, T, num_ws, w_dim] -> [N, T, 3, R, R]
    target_frames: torch.Tensor | None = None,  # [N, T, 3, R, R] view v's sharp frames (with lambda_image)
) -> tuple[torch.Tensor, Terms, torch.Tensor]:
    """Eq. 4, the fusion network's objective:

        L_F = min( |F(z^u, dp) - z^v|, |F(z^u, dp) - z^v_reversed| )    per sample, then the batch mean

    With ``lambda_image > 0`` (not the paper's), ``+ lambda_image |G(F(z^u, dp)) - y^v|_1``, F's codes taken
    in the time order the latent term chose. Returns ``(total, terms, reversed [N] bool)``."""
    per_sample, reversed_ = order_invariant_latent_loss(pred, target)
    terms: Terms = {"latent": per_sample.mean()}
    if lambda_image > 0:
        if decode is None or target_frames is None:
            raise ValueError("fusion_loss: lambda_image needs decode and target_frames")
        terms["image"] = l1_loss(decode(in_time_order(pred, reversed_)), target_frames)
    total = terms["latent"] + lambda_image * terms.get("image", 0.0)
    return total, terms, reversed_

"""Loss terms of the 3D encoder E_3D (paper §3.4), as pure functions, and the differentiable render they use.

E_3D predicts a coefficient vector ``c = [alpha | beta | delta | gamma | R | t]`` (docs/DESIGN.md layout) from a
blurry face; the morphable model and our rasterizer turn ``c`` into an image and 68 landmarks, compared
with the sharp middle frame and its landmarks::

    l_im     = lambda_data * photometric_loss + lambda_edge * masked_edge_loss + lambda_id * identity term
    L_total  = l_im + lambda_lan * landmark_loss + lambda_mview * multiview_loss
               + lambda_c * coefficient_regularizer

The weighted sum is :func:`deblur_rotate.losses.objectives.face3d_loss`; the paper's weights are the defaults of
``train.face3d.Face3DConfig``. Images are ``[N, 3, H, W]`` in [-1, 1]; masks and weights are
``[N, 1, H, W]``; landmarks ``[N, 68, 2]`` (u, v) pixels with pixel centres at integers. Every loss
returns a scalar tensor (mean over the batch) and has no side effects.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from deblur_rotate.face3d.model import CoeffLayout, MorphableModel
from deblur_rotate.losses.terms import edge_loss, identity_loss, l1_loss

__all__ = [
    "RenderedFace",
    "coefficient_regularizer",
    "identity_chip_loss",
    "landmark_loss",
    "masked_edge_loss",
    "multiview_loss",
    "photometric_loss",
    "render_coefficients_image",
]

# ------------------------------------------------------------------------------------------------ rendering

@dataclass
class RenderedFace:
    """What :func:`render_coefficients_image` returns."""

    image: torch.Tensor  # [N, 3, H, W] in [-1, 1], the face over ``background``
    mask: torch.Tensor  # [N, 1, H, W] in [0, 1], soft coverage of the face (1 inside)
    landmarks: torch.Tensor  # [N, 68, 2] projected model landmarks, (u, v) pixels


def render_coefficients_image(
    model: MorphableModel,  # the morphable model the coefficients belong to (on the coefficients' device)
    coeffs: torch.Tensor,  # [N, C] coefficient vectors in ``model.layout``
    camera_matrix: torch.Tensor,  # [3, 3] or [N, 3, 3] intrinsics of the output image, pixels
    size: int | tuple[int, int],  # output side in pixels, or (H, W)
    background: float = -1.0,  # value of uncovered pixels in [-1, 1] (-1: black, as SynthBMFD)
    edge_softness_px: float = 0.7,  # soft silhouette sigma in pixels (0: hard edges, no silhouette gradient)
) -> RenderedFace:
    """Differentiable render of morphable-model coefficients (the training-time counterpart of
    :func:`deblur_rotate.data.synthbmfd.render_coefficients`, which renders uint8 frames without gradients).

    Gradients flow to ``coeffs`` through the vertices (interior and silhouette) and the lit colours.
    """
    from deblur_rotate.render.rasterizer import render

    height, width = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    vertices, colors = model(coeffs)  # [N, V, 3] camera frame, [N, V, 3] in [0, 1]
    out = render(vertices, model.triangles, colors, camera_matrix.to(vertices), (height, width),
                 background=(float(background) + 1.0) / 2.0, landmark_indices=model.landmark_indices,
                 edge_softness_px=edge_softness_px)
    return RenderedFace(image=out.image * 2.0 - 1.0, mask=out.mask, landmarks=out.landmarks)


# ------------------------------------------------------------------------------------------------ image terms

def _mask_weights(mask: torch.Tensor, weights: torch.Tensor | None, threshold: float = 1e-3) -> torch.Tensor:
    """Detached per-pixel weights [N, 1, H, W]: 1 wherever the render covers the pixel at all (its soft edge
    included), times ``weights`` (e.g. skin counting double).

    Binary on purpose: the soft-silhouette ring outside the face must count fully, or only the inward pull
    of the edge pixels would be felt and the face would shrink to lower the loss."""
    w = (mask.detach() > threshold).to(mask.dtype)
    return w if weights is None else w * weights.detach()


def photometric_loss(render: torch.Tensor, target: torch.Tensor, mask: torch.Tensor,
                     weights: torch.Tensor | None = None) -> torch.Tensor:
    """Mean absolute colour error inside the rendered face mask (paper: L1 photometric term).

    render, target: [N, 3, H, W] in [-1, 1]. mask: [N, 1, H, W] in [0, 1] (the render's soft coverage; every
    pixel it touches counts, as a detached weight: the mask is where the loss looks, not something the network
    can lower the loss with; the silhouette still gets gradients through ``render``). weights: optional
    [N, 1, H, W] extra per-pixel weights (:func:`deblur_rotate.skin.skin_weights`: skin counts double).
    Returns a scalar in [0, 2] (image units); 0 when the render equals the target inside the mask.
    """
    return l1_loss(render, target, _mask_weights(mask, weights))


def masked_edge_loss(render: torch.Tensor, target: torch.Tensor, mask: torch.Tensor,
                     weights: torch.Tensor | None = None) -> torch.Tensor:
    """L1 distance of Sobel gradient magnitudes inside the rendered face mask (arguments as
    :func:`photometric_loss`). Scalar >= 0; 0 for identical images."""
    return edge_loss(render, target, _mask_weights(mask, weights))


def identity_chip_loss(render: torch.Tensor, target: torch.Tensor, chip_to_image: torch.Tensor,
                       identity_net: nn.Module) -> torch.Tensor:
    """Identity term: 1 - cosine similarity of dlib face descriptors of the render and the target, both cut
    as 150x150 chips along the same dlib-style alignment.

    render, target: [N, 3, H, W] in [-1, 1]. chip_to_image: [N, 2, 3] chip pixel -> image pixel affine maps
    (e.g. :func:`deblur_rotate.models.identity.chip_transforms_from_landmarks` on the ground-truth landmarks).
    identity_net: the frozen ported dlib network (:func:`deblur_rotate.models.identity.load_dlib_face_recognition`).
    Returns a scalar in [0, 2]; the target's descriptors get no gradient.
    """
    from deblur_rotate.models.identity import extract_face_chips

    a = torch.as_tensor(chip_to_image, dtype=render.dtype, device=render.device)
    return identity_loss(extract_face_chips(render, a), extract_face_chips(target.detach(), a), identity_net)


# ------------------------------------------------------------------------------------------------ geometry terms

def landmark_loss(pred: torch.Tensor, target: torch.Tensor, image_width: float,
                  weights: torch.Tensor | None = None, reduction: str = "sum") -> torch.Tensor:
    """L_lan: Euclidean distances between projected model landmarks and the ground truth, in units of the
    image width (0.01 = one percent of the width), summed over the 68 points (the paper's sum over k) or
    averaged over them (``reduction="mean"``: the mean normalised error), then averaged over the images
    that have at least one usable point.

    pred, target: [N, 68, 2] (u, v) pixels. image_width: pixels. weights: optional [68] (or [N, 68])
    per-point weights (with ``"mean"``, normalised by their sum). Non-finite target points (missing
    annotations: real data whose landmarks the ``prepare`` command could not find are NaN) are ignored, and
    an image without any usable point is left out of the batch mean (it neither counts nor dilutes).
    Returns a scalar >= 0; 0 for identical landmarks and when no image has a usable point.
    """
    if reduction not in ("sum", "mean"):
        raise ValueError(f"reduction must be 'sum' or 'mean', got {reduction!r}")
    valid = torch.isfinite(target).all(-1)  # [N, 68]
    diff = torch.where(valid.unsqueeze(-1), pred - target.nan_to_num(0.0, 0.0, 0.0), torch.zeros_like(pred))
    dist = (diff.square().sum(-1) + 1e-12).sqrt() / float(image_width)  # [N, 68]
    w = valid.to(dist.dtype)
    if weights is not None:
        w = w * weights.to(dist).expand_as(w)
    per_image = (dist * w).sum(-1)  # [N]
    if reduction == "mean":
        per_image = per_image / w.sum(-1).clamp_min(1e-8)
    has_points = (w.sum(-1) > 0).to(dist.dtype)  # [N]: 1 where the image has a usable point
    return (per_image * has_points).sum() / has_points.sum().clamp_min(1.0)


def multiview_loss(coeffs_u: torch.Tensor, coeffs_v: torch.Tensor, layout: CoeffLayout) -> torch.Tensor:
    """L_mview: identity, albedo and expression predicted from two views u != v of the same instant agree.

    coeffs_u, coeffs_v: [N, C] predictions for the same N instants from two views. Returns the batch mean of
    ``|alpha_u - alpha_v|^2 + |beta_u - beta_v|^2 + |delta_u - delta_v|^2`` (squared L2 norms, coefficient
    units); 0 when the codes are equal. Gradients reach both predictions.

    The two views may be true views (multi-view data) or a face and its horizontal mirror (single-view data,
    paper §4). For a mirrored pair the term asks the mirror image to have the same coefficients, which is
    exact only for the modes that are left-right symmetric: the mirror of a face is the same face only if its
    identity and albedo are symmetric, and the same expression only if the expression mode is. In the
    procedural model the 13 anatomical identity modes, the named albedo modes and 9 of the 10 named
    expressions are symmetric; the smooth random identity bumps, the albedo blotches and ``jaw_sideways``
    (which the mirror reverses) are not, so the mirrored term is an approximation, as in the paper (BFM's
    PCA modes are close to symmetric too). Pose and lighting legitimately differ and are not compared.
    """
    u, v = layout.split(coeffs_u), layout.split(coeffs_v)
    total = coeffs_u.new_zeros(coeffs_u.shape[0])
    for name in ("id", "tex", "exp"):
        total = total + (u[name] - v[name]).square().sum(-1)
    return total.mean()


def coefficient_regularizer(coeffs: torch.Tensor, layout: CoeffLayout) -> torch.Tensor:
    """lambda_c term: batch mean of ``|alpha|^2 + |beta|^2 + |delta|^2`` (the modes are ~N(0, 1) a priori).

    coeffs: [N, C]. Returns a scalar >= 0; 0 for the mean face with the mean albedo and neutral expression.
    """
    parts = layout.split(coeffs)
    return sum(parts[name].square().sum(-1) for name in ("id", "tex", "exp")).mean()

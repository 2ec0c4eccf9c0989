"""Image and code loss terms of the paper (§3.2, §3.3, §3.5, §3.6), as pure functions.

Images are ``[N, 3, H, W]`` in [-1, 1]; optional per-pixel ``weights [N, 1, H, W]`` (e.g. skin counting
double, :func:`deblur_rotate.skin.skin_weights`). Every function returns a scalar tensor (mean over the
batch) unless it says otherwise. The objectives that weigh these terms (eq. 1-4) are in
:mod:`deblur_rotate.losses.objectives`.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import kornia
import torch
import torch.nn.functional as F
from torch import nn

from deblur_rotate.errors import UserError

__all__ = [
    "l1_loss", "edge_loss", "identity_loss", "perceptual_loss", "latent_norm_loss", "parameter_drift_loss",
    "PerceptualFeatures", "order_invariant_latent_loss", "LATENT_LOSSES", "blur_consistency_loss",
]

LATENT_LOSSES = ("l1", "l2")


def _weighted_mean(per_pixel: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    """Mean of ``per_pixel [N, C, H, W]`` with optional ``weights [N, 1, H, W]`` (normalised by their sum)."""
    if weights is None:
        return per_pixel.mean()
    weights = weights.expand_as(per_pixel)
    return (per_pixel * weights).sum() / weights.sum().clamp_min(1e-8)


def l1_loss(pred: torch.Tensor, target: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Mean absolute error (weighted mean when ``weights`` are given). Units: [-1, 1] image values."""
    return _weighted_mean((pred - target).abs(), weights)


def edge_loss(pred: torch.Tensor, target: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """L1 distance between Sobel gradient magnitudes (kornia), per channel: sharp edges where the target
    has them."""
    return _weighted_mean((kornia.filters.sobel(pred) - kornia.filters.sobel(target)).abs(), weights)


def identity_loss(pred_chips: torch.Tensor, target_chips: torch.Tensor, identity_net: nn.Module) -> torch.Tensor:
    """1 - cosine similarity of face descriptors, mean over the batch, in [0, 2].

    chips ``[N, 3, 150, 150]`` aligned as the identity network expects (see
    :func:`deblur_rotate.models.identity.extract_face_chips`); the target descriptors get no gradient.
    """
    pred = identity_net(pred_chips)
    with torch.no_grad():
        target = identity_net(target_chips)
    return (1.0 - F.cosine_similarity(pred, target, dim=-1)).mean()


def perceptual_loss(pred: torch.Tensor, target: torch.Tensor, features: "PerceptualFeatures") -> torch.Tensor:
    """Sum of squared feature differences over layers and elements, mean over the batch (the paper's
    lambda_per = 1e-6 implies a sum, not a mean). Target features get no gradient."""
    pred_feats = features(pred)
    with torch.no_grad():
        target_feats = features(target)
    total = pred.new_zeros(())
    for a, b in zip(pred_feats, target_feats):
        total = total + (a - b).pow(2).flatten(1).sum(1).mean()
    return total


def latent_norm_loss(ws: torch.Tensor, reference_norm: float | torch.Tensor = 1.0) -> torch.Tensor:
    """lambda_s term: mean over codes of |1 - |w| / reference_norm|.

    ws ``[N, num_ws, w_dim]``. The paper writes |1 - |E_s(y)||; with StyleGAN's W, whose vectors have norms
    far from 1, pass the mean norm of G's W (e.g. ``G.mapping.w_avg`` norm or the mean norm of mapped
    codes) as ``reference_norm`` so the term keeps codes at the scale G was trained on.
    """
    return (1.0 - ws.norm(dim=-1) / reference_norm).abs().mean()


def parameter_drift_loss(module: nn.Module, initial_state: dict[str, torch.Tensor]) -> torch.Tensor:
    """lambda_g term: sum over parameters of |theta - theta_init|^2 (the fine-tuned G kept near its start).

    ``initial_state``: ``{name: tensor}`` snapshot of the parameters (detached, same device)."""
    total = None
    for name, param in module.named_parameters():
        if name in initial_state:
            term = (param - initial_state[name]).pow(2).sum()
            total = term if total is None else total + term
    if total is None:
        raise ValueError("parameter_drift_loss: no parameter of the module is in initial_state")
    return total


def order_invariant_latent_loss(pred: torch.Tensor, target: torch.Tensor, kind: str = "l1"
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """Time-order invariant distance between code sequences (paper §3.3, §3.5, eq. 2 and 4): a blurry
    image does not tell which way time ran, so the target counts as matched in either order.

    pred, target: ``[N, T, ...]`` (e.g. ``[N, T, num_ws, w_dim]``: E_v's or F's codes and E_s's codes of
    the T sharp frames). kind: ``"l1"`` (mean absolute difference) or ``"l2"`` (mean squared difference),
    averaged over the frames, W+ entries and channels.
    Returns ``(per_sample [N], reversed [N] bool)``: per sample the smaller of the distances to the target as
    ordered and with its frames reversed, and whether the reversed order won (a tie keeps the forward
    order). The training loss is ``per_sample.mean()``.
    """
    if pred.shape != target.shape or pred.dim() < 2:
        raise ValueError(f"expected pred and target of one shape [N, T, ...], got {tuple(pred.shape)} and "
                         f"{tuple(target.shape)}")
    if kind not in LATENT_LOSSES:
        raise ValueError(f"latent loss must be one of {', '.join(LATENT_LOSSES)}, got {kind!r}")
    n = pred.shape[0]

    def distance(tgt: torch.Tensor) -> torch.Tensor:  # [N]
        diff = pred - tgt
        return (diff.abs() if kind == "l1" else diff.square()).reshape(n, -1).mean(1)

    forward, backward = distance(target), distance(target.flip(1))
    reversed_ = backward < forward
    return torch.where(reversed_, backward, forward), reversed_


def blur_consistency_loss(frames: torch.Tensor, blurry: torch.Tensor) -> torch.Tensor:
    """Per-sample ``| mean_t frames_t - blurry |_1`` (mean over pixels and channels): how far the mean of the
    decoded sharp frames is from the blurry image they should average to (the blur model of
    :mod:`deblur_rotate.data.blur`). Not a training loss of the paper; :mod:`deblur_rotate.refine` minimises it
    over the codes at inference.

    frames: ``[N, T, 3, H, W]``, blurry: ``[N, 3, H, W]``, both in [-1, 1]. Returns ``[N]``.
    """
    if frames.dim() != 5 or blurry.dim() != 4 or frames.shape[0] != blurry.shape[0] \
            or frames.shape[2:] != blurry.shape[1:]:
        raise ValueError(f"expected frames [N, T, 3, H, W] and blurry [N, 3, H, W], got {tuple(frames.shape)} and "
                         f"{tuple(blurry.shape)}")
    return (frames.mean(1) - blurry).abs().flatten(1).mean(1)


class PerceptualFeatures(nn.Module):
    """Feature extractor for :func:`perceptual_loss` (frozen).

    With ``vgg16_weights`` (a path to torchvision VGG16 ImageNet weights, a state dict file the user
    provides): relu1_2, relu2_2, relu3_3, relu4_3 of VGG16 on ImageNet-normalised input. Without it:
    the documented fallback, the first feature maps of the ported dlib face-recognition network (a
    face-trained ResNet), with one warning. Input ``[N, 3, H, W]`` in [-1, 1].
    """

    VGG_LAYERS = (3, 8, 15, 22)  # indices of relu1_2, relu2_2, relu3_3, relu4_3 in vgg16().features

    def __init__(self, vgg16_weights: str | Path | None = None,  # torchvision VGG16 state dict (.pth/.safetensors)
                 fallback_blocks: int = 4):  # residual blocks of the identity net used by the fallback
        super().__init__()
        self.kind = "vgg16" if vgg16_weights else "dlib-resnet"
        if vgg16_weights:
            from torchvision.models.vgg import cfgs, make_layers

            path = Path(vgg16_weights)
            if not path.is_file():
                raise UserError(f"VGG16 weights {path} not found; give the path of torchvision's vgg16 ImageNet "
                                "state dict, or omit it to use the face-network fallback")
            try:
                if path.suffix == ".safetensors":
                    from safetensors.torch import load_file

                    state = load_file(str(path))
                else:
                    state = torch.load(path, map_location="cpu", weights_only=True)
                # Only the convolutional part up to relu4_3 is used: take its keys (the classifier may be absent).
                net = make_layers(cfgs["D"])[: self.VGG_LAYERS[-1] + 1]  # vgg16().features, no classifier
                wanted = {f"features.{k}" for k in net.state_dict()}
                missing = sorted(wanted - set(state))
                if missing:
                    raise KeyError(f"missing {', '.join(missing[:4])}")
                net.load_state_dict({k[len("features."):]: v for k, v in state.items() if k in wanted})
            except Exception as err:  # noqa: BLE001 - any failure here is a bad file for the user
                raise UserError(f"{path} is not a torchvision VGG16 state dict ({err})") from err
            self.net = net
            self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
            self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))
        else:
            from deblur_rotate.models.identity import load_dlib_face_recognition

            warnings.warn("perceptual loss: no VGG16 weights given (--vgg16-weights); using the ported dlib "
                          "face-recognition network's early features instead", stacklevel=2)
            self.net = load_dlib_face_recognition()
        self.fallback_blocks = fallback_blocks
        self.requires_grad_(False)
        self.eval()

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        """images ``[N, 3, H, W]`` in [-1, 1] -> list of feature maps."""
        if self.kind == "vgg16":
            x = ((images + 1) / 2 - self.mean) / self.std
            feats = []
            for i, layer in enumerate(self.net):
                x = layer(x)
                if i in self.VGG_LAYERS:
                    feats.append(x)
            return feats
        if images.shape[-1] < 64:  # the face network's stem needs some room
            images = F.interpolate(images, size=(64, 64), mode="bilinear", align_corners=False)
        return self.net.feature_maps(images, self.fallback_blocks)

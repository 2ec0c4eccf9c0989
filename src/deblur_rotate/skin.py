"""Skin detection with the Gaussian-mixture colour models of Jones & Rehg.

M. J. Jones and J. M. Rehg, "Statistical Color Models with Application to Skin Detection", IJCV 46(1),
2002 (tech. report CRL 98/11, Table 1): two 16-component mixtures with diagonal covariances over 8-bit
RGB, one for skin and one for non-skin pixels. A pixel's skin posterior is
``P(skin | c) = p(c | skin) P(skin) / (p(c | skin) P(skin) + p(c | non-skin) (1 - P(skin)))``.

The paper's sharp-encoder loss counts skin pixels double (:func:`skin_weights`). Known limit of a
colour-only model: warm off-white surfaces (a white suit under warm light) also score as skin.
"""
from __future__ import annotations

import math

import torch

__all__ = ["skin_probability", "skin_weights", "SkinWeights", "SKIN_MIXTURE", "NON_SKIN_MIXTURE"]

# Rows: mean R, G, B; variance R, G, B; weight. 8-bit RGB units. (Jones & Rehg, Table 1.)
SKIN_MIXTURE = (
    (73.53, 29.94, 17.76, 765.40, 121.44, 112.80, 0.0294),
    (249.71, 233.94, 217.49, 39.94, 154.44, 396.05, 0.0331),
    (161.68, 116.25, 96.95, 291.03, 60.48, 162.85, 0.0654),
    (186.07, 136.62, 114.40, 274.95, 64.60, 198.27, 0.0756),
    (189.26, 98.37, 51.18, 633.18, 222.40, 250.69, 0.0554),
    (247.00, 152.20, 90.84, 65.23, 691.53, 609.92, 0.0314),
    (150.10, 72.66, 37.76, 408.63, 200.77, 257.57, 0.0454),
    (206.85, 171.09, 156.34, 530.08, 155.08, 572.79, 0.0469),
    (212.78, 152.82, 120.04, 160.57, 84.52, 243.90, 0.0956),
    (234.87, 175.43, 138.94, 163.80, 121.57, 279.22, 0.0763),
    (151.19, 97.74, 74.59, 425.40, 73.56, 175.11, 0.1100),
    (120.52, 77.55, 59.82, 330.45, 70.34, 151.82, 0.0676),
    (192.20, 119.62, 82.32, 152.76, 92.14, 259.15, 0.0755),
    (214.29, 136.08, 87.24, 204.90, 140.17, 270.19, 0.0500),
    (99.57, 54.33, 38.06, 448.13, 90.18, 151.29, 0.0667),
    (238.88, 203.08, 176.91, 178.38, 156.27, 404.99, 0.0749),
)
NON_SKIN_MIXTURE = (
    (254.37, 254.41, 253.82, 2.77, 2.81, 5.46, 0.0637),
    (9.39, 8.09, 8.52, 46.84, 33.59, 32.48, 0.0516),
    (96.57, 96.95, 91.53, 280.69, 156.79, 436.58, 0.0864),
    (160.44, 162.49, 159.06, 355.98, 115.89, 591.24, 0.0636),
    (74.98, 63.23, 46.33, 414.84, 245.95, 361.27, 0.0747),
    (121.83, 60.88, 18.31, 2502.24, 1383.53, 237.18, 0.0365),
    (202.18, 154.88, 91.04, 957.42, 1766.94, 1582.52, 0.0349),
    (193.06, 201.93, 206.55, 562.88, 190.23, 447.28, 0.0649),
    (51.88, 57.14, 61.55, 344.11, 191.77, 433.40, 0.0656),
    (30.88, 26.84, 25.32, 222.07, 118.65, 182.41, 0.1189),
    (44.97, 85.96, 131.95, 651.32, 840.52, 963.67, 0.0362),
    (236.02, 236.27, 230.70, 225.03, 117.29, 331.95, 0.0849),
    (207.86, 191.20, 164.12, 494.04, 237.69, 533.52, 0.0368),
    (99.83, 148.11, 188.17, 955.88, 654.95, 916.70, 0.0389),
    (135.06, 131.92, 123.10, 350.35, 130.30, 388.43, 0.0943),
    (135.96, 103.89, 66.88, 806.44, 642.20, 350.36, 0.0477),
)


def _log_mixture(rgb: torch.Tensor, table) -> torch.Tensor:
    """log p(c) of 8-bit RGB values ``[N, 3, H, W]`` under a diagonal mixture -> ``[N, H, W]``."""
    params = torch.tensor(table, dtype=torch.float64, device=rgb.device)
    mean, var, weight = params[:, 0:3], params[:, 3:6], params[:, 6]
    x = rgb.to(torch.float64).movedim(1, -1)[..., None, :]  # [N, H, W, 1, 3]
    mahalanobis = ((x - mean) ** 2 / var).sum(-1)  # [N, H, W, K]
    log_norm = torch.log(weight) - 0.5 * torch.log(var).sum(-1) - 1.5 * math.log(2 * math.pi)
    return torch.logsumexp(log_norm - 0.5 * mahalanobis, dim=-1)


def skin_probability(images: torch.Tensor, prior: float = 0.5) -> torch.Tensor:
    """Posterior probability of skin per pixel.

    images ``[N, 3, H, W]`` RGB in [-1, 1] -> ``[N, 1, H, W]`` in [0, 1] (float32, no gradient needed).
    prior: P(skin) before seeing the colour.
    """
    rgb = (images.detach().clamp(-1, 1) + 1) * 127.5
    log_ratio = _log_mixture(rgb, SKIN_MIXTURE) - _log_mixture(rgb, NON_SKIN_MIXTURE)
    log_ratio = log_ratio + math.log(prior / (1 - prior))
    return torch.sigmoid(log_ratio).unsqueeze(1).to(torch.float32)


def skin_weights(images: torch.Tensor, skin_weight: float = 2.0, threshold: float = 0.5) -> torch.Tensor:
    """Per-pixel loss weights ``[N, 1, H, W]``: ``skin_weight`` on skin pixels (posterior > threshold), 1
    elsewhere. images ``[N, 3, H, W]`` in [-1, 1]."""
    return 1.0 + (skin_weight - 1.0) * (skin_probability(images) > threshold).float()


class SkinWeights:
    """Callable for the readers' ``skin_model`` hook: targets ``[5, 3, S, S]`` -> weights ``[5, 1, S, S]``."""

    def __init__(self, skin_weight: float = 2.0, threshold: float = 0.5):
        self.skin_weight = skin_weight  # weight of skin pixels (the paper: 2)
        self.threshold = threshold  # posterior above which a pixel is skin

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return skin_weights(images, self.skin_weight, self.threshold)

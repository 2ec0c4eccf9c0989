"""Every loss of the model, as pure functions (docs/DESIGN.md, "Training stages").

* :mod:`~deblur_rotate.losses.objectives`: the paper's four objectives, one function each: eq. 1
  :func:`sharp_encoder_loss` (E_s + G), eq. 2 :func:`blur_encoder_loss` (E_v), eq. 3 :func:`face3d_loss` (E_3D),
  eq. 4 :func:`fusion_loss` (F).
* :mod:`~deblur_rotate.losses.terms`: the image and code terms they weigh (L1, Sobel edges, identity,
  perceptual, code norm, parameter drift, the time-order invariant code distance) and the inference-time
  blur-consistency loss of :mod:`deblur_rotate.refine`.
* :mod:`~deblur_rotate.losses.face3d`: E_3D's render terms (masked photometric and edge terms, landmarks,
  multi-view agreement, coefficient prior) and the differentiable render they compare.

The names of :mod:`~deblur_rotate.losses.terms` are importable from here, as before the package existed.
"""
from deblur_rotate.losses.terms import (
    LATENT_LOSSES,
    PerceptualFeatures,
    blur_consistency_loss,
    edge_loss,
    identity_loss,
    l1_loss,
    latent_norm_loss,
    order_invariant_latent_loss,
    parameter_drift_loss,
    perceptual_loss,
)

__all__ = ["LATENT_LOSSES", "PerceptualFeatures", "blur_consistency_loss", "edge_loss", "identity_loss", "l1_loss",
           "latent_norm_loss", "order_invariant_latent_loss", "parameter_drift_loss", "perceptual_loss"]

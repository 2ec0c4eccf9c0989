"""Stage 4's settings: :class:`Face3DConfig` (``deblur-rotate train face3d``). Torch-free."""
from __future__ import annotations

from dataclasses import dataclass

from deblur_rotate.errors import UserError
from deblur_rotate.train.configs.common import (
    DATA_KINDS,
    M_DEFAULT,
    M_HELP,
    PRESET_NAMES,
    RunOptions,
    check_even_m,
    check_signs,
)
from deblur_rotate.train.configs.fields import option

__all__ = ["PRESET_DEFAULTS", "Face3DConfig"]

# per-preset default total batch (images; two views per instant, so always even)
PRESET_DEFAULTS: dict[str, dict] = {
    "micro": {"batch": 4},
    "tiny": {"batch": 8},
    "paper": {"batch": 90},  # §3.6
}



@dataclass
class Face3DConfig(RunOptions):
    """Everything that determines an E_3D run (written to RUN/config.json)."""

    PRESET_DEFAULTS = PRESET_DEFAULTS

    preset: str = option("tiny", "encoder size (micro 32 px input, tiny 64, paper 256 with ResNet-50)",
                         choices=PRESET_NAMES)
    data: str = option("", "dataset folder: SynthBMFD (`deblur-rotate synth`) or a `deblur-rotate prepare` output "
                           "(images, 300vw, multiview, vidtimit); one dataset per run", required=True, path=True)
    kind: str = option("auto", "dataset kind", choices=DATA_KINDS, default_help="auto-detect")
    bfm: str | None = option(None, "Basel Face Model file (01_MorphableModel.mat or BFM_model_front.mat) to use "
                                   "instead of the built-in procedural model", path=True)
    bfm_expression: str | None = option(None, "Exp_Pca.bin (with 01_MorphableModel.mat)", path=True)
    bfm_landmarks: str | None = option(None, "68 landmark vertex indices of the BFM mesh", path=True)
    bfm_modes: list[int] | None = option(None, "BFM modes kept (the paper uses 199 199 29)", nargs=3,
                                         metavar=("N_ID", "N_TEX", "N_EXP"), default_help="all")
    # set by --model-from (train/options.py), a procedural model's sizes; None: SynthConfig's standard model
    procedural_model: dict | None = option(None, "procedural model sizes for real data", cli=False)
    focal_factor: float | None = option(None, "real data: focal length of the fixed camera in image sides",
                                        default_help="3.5, the SynthBMFD rig's framing")
    split: str = option("train", "SynthBMFD split", cli=False)
    m: int | None = option(None, M_HELP, default_help=M_DEFAULT)
    stride: int = option(1, "use every stride-th centre frame (video kinds)")
    batch: int | None = option(None, "total images per iteration over all processes, two views per instant, so "
                                     "even")
    lr: float = option(1e-4, "Adam learning rate")
    lambda_data: float = option(5.0, "photometric L1 weight (inside the rendered face mask)")
    lambda_edge: float = option(30.0, "edge loss weight (Sobel L1 inside the mask)")
    lambda_id: float = option(0.5, "identity loss weight (dlib descriptors of 150x150 chips; 0: off)")
    lambda_lan: float = option(1.0, "landmark loss weight (68-landmark distance / image width)")
    lambda_mview: float = option(0.25, "multi-view consistency weight (id/tex/exp agreement across two views)")
    lambda_c: float = option(1e-4, "coefficient regulariser weight (|alpha|^2 + |beta|^2 + |delta|^2)")
    skin_weight: float = option(2.0, "weight of skin pixels in the image terms (1: none)")
    edge_softness: float = option(0.7, "soft-silhouette sigma of the renderer, pixels", cli=False)
    grid: int = option(8, "faces in the input/render/target grid (0: none)")
    extra: dict = option(help="room for later options", cli=False, default_factory=dict)

    def resolved(self) -> Face3DConfig:
        """A copy with the preset defaults filled in; UserError on impossible values."""
        from deblur_rotate.models.encoders import ENCODER_PRESETS

        if self.preset not in ENCODER_PRESETS:
            raise UserError(f"unknown preset {self.preset!r}: choose one of {', '.join(ENCODER_PRESETS)}")
        c = self.with_preset_defaults(("batch",))
        c.data, c.out = str(c.data), str(c.out)
        for name in ("bfm", "bfm_expression", "bfm_landmarks"):
            if getattr(c, name) is not None:
                setattr(c, name, str(getattr(c, name)))
        if c.bfm is None and (c.bfm_expression or c.bfm_landmarks or c.bfm_modes):
            raise UserError("--bfm-expression, --bfm-landmarks and --bfm-modes need --bfm (the BFM model file)")
        if c.kind not in DATA_KINDS:
            raise UserError(f"unknown --kind {c.kind!r}: choose one of {', '.join(DATA_KINDS)}")
        if c.bfm is not None and c.procedural_model is not None:
            raise UserError("--model-from (a procedural model) and --bfm exclude each other; give one")
        check_even_m(c.m)
        if c.focal_factor is not None and not float(c.focal_factor) > 0:
            raise UserError(f"--focal-factor must be positive (got {c.focal_factor})")
        if c.bfm_modes is not None:
            c.bfm_modes = [int(v) for v in c.bfm_modes]
            if len(c.bfm_modes) != 3 or min(c.bfm_modes) < 0:
                raise UserError(f"--bfm-modes takes three counts >= 0 (identity, albedo, expression), "
                                f"got {c.bfm_modes}")
        if c.steps < 0:
            raise UserError(f"--steps must be positive (got {c.steps})")
        check_signs(c, positive=("batch", "checkpoint_every", "log_every", "stride"))
        if c.batch % 2:
            raise UserError(f"--batch counts images, two views per instant, so it must be even (got {c.batch})")
        check_signs(c, non_negative=("lr", "lambda_data", "lambda_edge", "lambda_id", "lambda_lan", "lambda_mview",
                                     "lambda_c", "edge_softness", "grid", "workers", "image_every"))
        if c.skin_weight < 1:
            raise UserError(f"--skin-weight must be >= 1 (skin pixels count that many times; got {c.skin_weight})")
        c.check_precision()
        return c

    def weights(self) -> dict[str, float]:
        """Loss weights by term name (the keys of ``FACE3D_WEIGHTS``)."""
        return {"data": self.lambda_data, "edge": self.lambda_edge, "id": self.lambda_id, "lan": self.lambda_lan,
                "mview": self.lambda_mview, "c": self.lambda_c}

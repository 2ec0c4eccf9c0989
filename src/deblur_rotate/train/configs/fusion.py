"""Stage 5's settings: :class:`FusionConfig` (``deblur-rotate train fusion``). Torch-free."""
from __future__ import annotations

from dataclasses import dataclass

from deblur_rotate.errors import UserError
from deblur_rotate.train.configs.common import (
    DATA_KINDS,
    LR_DECAY_HELP,
    M_DEFAULT,
    M_HELP,
    PRESET_NAMES,
    RunOptions,
    check_even_m,
    check_fraction,
    check_signs,
)
from deblur_rotate.train.configs.fields import option

__all__ = ["PRESET_DEFAULTS", "FusionConfig"]

# per-preset defaults: total batch (directed view pairs; two per instant), EMA half-life (samples)
PRESET_DEFAULTS: dict[str, dict] = {
    "paper": {"batch": 84, "ema_images": 10_000.0},  # §3.6: batch 84
    "tiny": {"batch": 16, "ema_images": 2_000.0},
    "micro": {"batch": 4, "ema_images": 100.0},
}


@dataclass
class FusionConfig(RunOptions):
    """Everything that determines a fusion run (written to RUN/config.json)."""

    PRESET_DEFAULTS = PRESET_DEFAULTS

    preset: str = option("tiny", "code sizes of F and the teachers (micro 32 px, tiny 64, paper 256)",
                         choices=PRESET_NAMES)
    data: str = option("", "dataset folder: SynthBMFD (`deblur-rotate synth`) or a `deblur-rotate prepare` output "
                           "(multiview: true views; images, 300vw, vidtimit: a face and its mirror image); one "
                           "dataset per run", required=True, path=True)
    kind: str = option("auto", "dataset kind", choices=DATA_KINDS, default_help="auto-detect")
    arch: str = option("FC3R", "F's architecture: FC<x> or FC<x>R (x layers; R: residual)")
    sharp_encoder: str = option("", "E_s folder (RUN/sharp_encoder of `train sharp-encoder`): input and target "
                                    "codes", required=True, path=True)
    generator: str = option("", "fine-tuned G folder (RUN/generator of `train sharp-encoder`), for the sample "
                                "grids and --lambda-image (needed unless --grid 0)", path=True)
    face3d_encoder: str = option("", "E_3D folder (RUN/face3d_encoder of `train face3d`), for Δp with "
                                     "--pose-source e3d", path=True)
    blur_encoder: str = option("", "E_v folder (RUN/blur_encoder of `train blur-encoder`), for --input-codes blur",
                               path=True)
    pose_source: str = option("e3d", "Δp from E_3D on the blurry images (e3d, as at inference) or the data's "
                                     "ground truth (gt; SynthBMFD only: real data has no poses)",
                              choices=("e3d", "gt"))
    input_codes: str = option("sharp", "F's input: E_s of the source view's sharp frames (sharp) or E_v of its "
                                       "blurry image (blur)", choices=("sharp", "blur"))
    split: str = option("train", "SynthBMFD split", cli=False)
    m: int | None = option(None, M_HELP, default_help=M_DEFAULT)
    stride: int = option(1, "use every stride-th centre frame (video kinds)")
    mirror: bool = option(True, "multi-view data: left-right mirrored pairs as well (single-view data always pairs "
                                "a face with its mirror)")
    batch: int | None = option(None, "training samples per iteration over all processes, two (u -> v, v -> u) "
                                     "per view pair, so even")
    lr: float = option(1e-4, "Adam learning rate (the paper's)")
    lambda_image: float = option(0.0, "weight of the L1 between G(F(z^u, Δp)) and view v's frames (0: off)")
    stats_samples: int = option(64, "view pairs whose teacher codes set F's input normalisation")
    ema_images: float | None = option(None, "EMA half-life in thousands of samples", flags=("--ema-kimg",),
                                      scale=1000.0)
    init_from: str = option("", "start F from a trained F folder of the same architecture (fine-tuning, e.g. "
                                "MODEL/fusion of a model folder), its input normalisation too; ignored by --resume")
    lr_decay: float = option(0.0, LR_DECAY_HELP)
    grid: int = option(4, "view pairs in the sample grid (0: none)")

    def resolved(self) -> FusionConfig:
        """A copy with preset defaults filled in; UserError on impossible values or missing networks."""
        from deblur_rotate.models.fusion import fusion_config

        if self.preset not in PRESET_DEFAULTS:
            raise UserError(f"unknown preset {self.preset!r}: choose one of {', '.join(PRESET_DEFAULTS)}")
        c = self.with_preset_defaults(("batch", "ema_images"))
        check_fraction("lr_decay", c.lr_decay)
        for name in ("data", "out", "sharp_encoder", "generator", "face3d_encoder", "blur_encoder"):
            value = getattr(c, name)
            setattr(c, name, "" if value is None else str(value))
        try:
            fusion_config(c.preset, c.arch)
        except ValueError as err:
            raise UserError(f"--arch {c.arch!r}: {err}") from None
        c.arch = c.arch.upper()
        if c.kind not in DATA_KINDS:
            raise UserError(f"unknown --kind {c.kind!r}: choose one of {', '.join(DATA_KINDS)}")
        check_even_m(c.m)
        if c.pose_source not in ("e3d", "gt"):
            raise UserError(f"--pose-source must be e3d or gt (got {c.pose_source!r})")
        if c.input_codes not in ("sharp", "blur"):
            raise UserError(f"--input-codes must be sharp or blur (got {c.input_codes!r})")
        if not c.sharp_encoder:
            raise UserError("--sharp-encoder is required: the E_s folder (RUN/sharp_encoder of "
                            "`deblur-rotate train sharp-encoder`), which gives the target codes")
        if c.input_codes == "blur" and not c.blur_encoder:
            raise UserError("--input-codes blur needs --blur-encoder: the E_v folder (RUN/blur_encoder of "
                            "`deblur-rotate train blur-encoder`); or use --input-codes sharp")
        if c.pose_source == "e3d" and not c.face3d_encoder:
            raise UserError("--pose-source e3d needs --face3d-encoder: the E_3D folder (RUN/face3d_encoder of "
                            "`deblur-rotate train face3d`); or use --pose-source gt (the dataset's poses)")
        if (c.grid > 0 or c.lambda_image > 0) and not c.generator:
            raise UserError("--generator is required for the sample grid and the image term: the fine-tuned G "
                            "folder (RUN/generator of `deblur-rotate train sharp-encoder`); or pass --grid 0 "
                            "(and --lambda-image 0)")
        check_signs(c, positive=("batch", "checkpoint_every", "log_every", "stride", "stats_samples"))
        if c.batch % 2:
            raise UserError(f"--batch counts training samples, two (u -> v and v -> u) per view pair, so it must "
                            f"be even (got {c.batch})")
        check_signs(c, non_negative=("steps", "lr", "lambda_image", "ema_images", "grid", "workers", "image_every"))
        c.check_precision()
        return c

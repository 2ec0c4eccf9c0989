"""Stage 3's settings: :class:`BlurEncoderConfig` (``deblur-rotate train blur-encoder``). Torch-free."""
from __future__ import annotations

from dataclasses import dataclass

from deblur_rotate.errors import UserError
from deblur_rotate.train.configs.common import (
    LATENT_LOSSES,
    LR_DECAY_HELP,
    PRESET_NAMES,
    RunOptions,
    check_even_m,
    check_fraction,
    check_signs,
)
from deblur_rotate.train.configs.fields import option

__all__ = ["NUM_FRAMES", "PRESET_DEFAULTS", "BlurEncoderConfig"]

NUM_FRAMES = 5  # sharp frames per blurry image (targets c-m, c-m/2, c, c+m/2, c+m)

# per-preset defaults: total batch (the paper's 96 for E_v), EMA half-life (images), colour jitter
PRESET_DEFAULTS: dict[str, dict] = {
    "paper": {"batch": 96, "ema_images": 10_000.0, "jitter": True},
    "tiny": {"batch": 8, "ema_images": 2_000.0, "jitter": False},
    "micro": {"batch": 4, "ema_images": 100.0, "jitter": False},
}


@dataclass
class BlurEncoderConfig(RunOptions):
    """Everything that determines a blur-encoder run (written to RUN/config.json)."""

    PRESET_DEFAULTS = PRESET_DEFAULTS

    preset: str = option("tiny", "network sizes: G's size and E_v's backbone (micro 32 px, tiny 64, paper 256)",
                         choices=PRESET_NAMES)
    data: str = option("", "dataset folder: SynthBMFD, images, 300VW or multi-view", required=True, path=True)
    sharp_encoder: str = option("", "trained sharp encoder folder (RUN/sharp_encoder of `train sharp-encoder`), "
                                    "the teacher", required=True, path=True)
    generator: str = option("", "fine-tuned generator folder (RUN/generator of `train sharp-encoder`)",
                            required=True, path=True)
    kind: str = option("auto", "dataset kind", default_help="auto-detect")
    split: str = option("train", "SynthBMFD split", choices=("train", "test", "all"))
    m: int | None = option(None, "blur half-window in frames: 2m+1 frames are averaged",
                           default_help="the data's own, SynthBMFD 32")
    mirror: bool = option(True, "add a mirrored copy of every sample")
    jitter: bool | None = option(None, "colour jitter of the blurry image and its targets alike")
    batch: int | None = option(None, "total batch over all processes")
    lr: float = option(1e-4, "Adam learning rate (the paper's)")
    latent_loss: str = option("l1", "distance between code sequences: l1 (mean absolute) or l2 (mean squared)",
                              choices=LATENT_LOSSES)
    lambda_image: float = option(0.0, "weight of an L1 between the decoded frames and the sharp targets (0: off, "
                                      "as the paper)")
    image_frames: int = option(NUM_FRAMES, "frames per sample decoded for the image term, drawn anew each step "
                                           "(fewer: cheaper)")
    head_grid: int = option(0, "E_v's head reads a K x K pooled feature map instead of the global pool (0: the "
                               "paper's)")
    head_bottleneck: int = option(0, "factor E_v's head through B units (a rank-B head; 0: one Linear layer)")
    ema_images: float | None = option(None, "EMA half-life in thousands of images", flags=("--ema-kimg",),
                                      scale=1000.0)
    backbone_weights: str | None = option(None, "torchvision ResNet state dict to start E_v's backbone from")
    init_from: str = option("", "start E_v from a trained E_v folder of the same architecture (fine-tuning, e.g. "
                                "MODEL/blur_encoder of a model folder); ignored by --resume")
    lr_decay: float = option(0.0, LR_DECAY_HELP)
    grid: int = option(4, "samples in the image grid (0: none)")

    def resolved(self) -> BlurEncoderConfig:
        """A copy with the preset defaults filled in; UserError on impossible values."""
        if self.preset not in PRESET_DEFAULTS:
            raise UserError(f"unknown preset {self.preset!r}: choose one of {', '.join(PRESET_DEFAULTS)}")
        c = self.with_preset_defaults(("batch", "ema_images", "jitter"))
        check_fraction("lr_decay", c.lr_decay)
        c.data, c.out, c.sharp_encoder, c.generator = str(c.data), str(c.out), str(c.sharp_encoder), str(c.generator)
        check_signs(c, positive=("batch", "checkpoint_every", "log_every"))
        if not 1 <= c.image_frames <= NUM_FRAMES:
            raise UserError(f"--image-frames must be between 1 and {NUM_FRAMES} (got {c.image_frames})")
        check_signs(c, non_negative=("steps", "lr", "lambda_image", "ema_images", "grid", "workers", "image_every",
                                     "head_grid", "head_bottleneck"))
        if c.latent_loss not in LATENT_LOSSES:
            raise UserError(f"--latent-loss must be one of {', '.join(LATENT_LOSSES)} (got {c.latent_loss!r})")
        check_even_m(c.m)
        c.check_precision()
        return c

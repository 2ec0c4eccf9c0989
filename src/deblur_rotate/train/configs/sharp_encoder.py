"""Stage 2's settings: :class:`SharpEncoderConfig` (``deblur-rotate train sharp-encoder``). Torch-free."""
from __future__ import annotations

from dataclasses import dataclass

from deblur_rotate.errors import UserError
from deblur_rotate.train.configs.common import LR_DECAY_HELP, PRESET_NAMES, RunOptions, check_fraction, check_signs
from deblur_rotate.train.configs.fields import option

__all__ = ["PRESET_DEFAULTS", "SharpEncoderConfig"]

# per-preset defaults: total batch, EMA half-life (images)
PRESET_DEFAULTS: dict[str, dict] = {
    "paper": {"batch": 72, "ema_images": 10_000.0},
    "tiny": {"batch": 8, "ema_images": 2_000.0},
    "micro": {"batch": 4, "ema_images": 100.0},
}



@dataclass
class SharpEncoderConfig(RunOptions):
    """Everything that determines a sharp-encoder run (written to RUN/config.json)."""

    PRESET_DEFAULTS = PRESET_DEFAULTS
    CLI_GROUPS = {"generator_source": True}  # exactly one of --generator and --fresh-generator

    preset: str = option("tiny", "network sizes: G's size and E_s's backbone (micro 32 px, tiny 64, paper 256)",
                         choices=PRESET_NAMES)
    data: str = option("", "dataset folder: SynthBMFD, images, 300VW or multi-view", required=True, path=True)
    generator: str = option("", "trained generator folder (RUN/generator of `train generator`)", path=True,
                            group="generator_source")
    fresh_generator: bool = option(
        False, "start G from random weights and train E_s + G as an autoencoder (no GAN stage; lambda_g is then "
               "0). The CPU recipe does this: a GAN needs far more iterations than a CPU gives before its G is a "
               "useful decoder", group="generator_source")
    generator_input: str = option("const", "with --fresh-generator: G's 4 px input, const (StyleGAN2) or dense (a "
                                           "layout computed from the first code, ProGAN-style)",
                                  choices=("const", "dense"))
    head_grid: int = option(0, "E_s's head reads a K x K pooled feature map instead of the global pool (0: global "
                               "pool, the paper's)")
    kind: str = option("auto", "dataset kind", default_help="auto-detect")
    split: str = option("train", "SynthBMFD split", cli=False)
    m: int | None = option(None, "blur half-window in frames, sets which sharp targets a sample has",
                           default_help="the data's own")
    all_frames: bool = option(True, "train on all 5 sharp targets of each sample", off_flags=("--middle-only",))
    mirror: bool = option(True, "x-flip augmentation")
    batch: int | None = option(None, "total batch over all processes")
    lr: float = option(1e-4, "Adam learning rate of E_s (the paper's)")
    lr_generator: float = option(1e-4, "Adam learning rate of G's synthesis network (0 keeps G frozen)")
    lambda_l1: float = option(1.0, "L1 weight")
    lambda_id: float = option(0.5, "identity loss weight (0: off)")
    lambda_per: float = option(1e-6, "perceptual loss weight (0: off)")
    lambda_edge: float = option(0.2, "edge loss weight")
    lambda_g: float = option(1.0, "|G_init - G|^2 weight at the start")
    g_relax_steps: int | None = option(None, "iterations over which lambda_g falls linearly to 0",
                                       default_help="half the run")
    lambda_s: float = option(1.0, "code-norm weight")
    skin_weight: float = option(2.0, "weight of skin pixels in L_1 and L_edge (1: off)")
    vgg16_weights: str | None = option(None, "torchvision VGG16 ImageNet weights for the perceptual loss",
                                       default_help="face-net fallback")
    ema_images: float | None = option(None, "EMA half-life in thousands of images", flags=("--ema-kimg",),
                                      scale=1000.0)
    backbone_weights: str | None = option(None, "torchvision ResNet state dict to start E_s's backbone from")
    init_from: str = option("", "start E_s from a trained E_s folder of the same architecture (fine-tuning, e.g. "
                                "RUN/sharp_encoder of an earlier run; pair it with that run's --generator); "
                                "ignored by --resume")
    lr_decay: float = option(0.0, LR_DECAY_HELP)
    grid: int = option(8, "faces in the reconstruction grid (0: none)")

    def resolved(self) -> SharpEncoderConfig:
        """A copy with preset defaults filled in; UserError on impossible values."""
        from deblur_rotate.models.stylegan2 import PRESETS

        if self.preset not in PRESETS:
            raise UserError(f"unknown preset {self.preset!r}: choose one of {', '.join(PRESETS)}")
        c = self.with_preset_defaults(("batch", "ema_images"))
        c.g_relax_steps = c.steps // 2 if c.g_relax_steps is None else int(c.g_relax_steps)
        check_fraction("lr_decay", c.lr_decay)
        c.data, c.out, c.generator = str(c.data), str(c.out), str(c.generator)
        if c.fresh_generator and c.generator:
            raise UserError("--fresh-generator starts G from random weights: do not also give --generator")
        if c.fresh_generator:
            c.lambda_g = 0.0  # nothing to stay near: G_init is random
        if c.generator_input not in ("const", "dense"):
            raise UserError(f"--generator-input must be const or dense (got {c.generator_input!r})")
        if c.generator_input != "const" and not c.fresh_generator:
            raise UserError("--generator-input applies to a fresh G only (--fresh-generator); "
                            "a trained G keeps its own")
        check_signs(c, positive=("batch", "checkpoint_every", "log_every"),
                    non_negative=("steps", "lr", "lr_generator", "lambda_l1", "lambda_id", "lambda_per",
                                  "lambda_edge", "lambda_g", "g_relax_steps", "lambda_s", "ema_images", "grid",
                                  "workers", "image_every"))
        if c.skin_weight < 1:
            raise UserError(f"--skin-weight must be >= 1 (got {c.skin_weight})")
        c.check_precision()
        return c

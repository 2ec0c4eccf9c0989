"""Stage 1's settings: :class:`GeneratorConfig` (``deblur-rotate train generator``). Torch-free."""
from __future__ import annotations

from dataclasses import dataclass

from deblur_rotate.errors import UserError
from deblur_rotate.train.configs.common import PRESET_NAMES, RunOptions, check_signs
from deblur_rotate.train.configs.fields import option

__all__ = ["GeneratorConfig", "PRESET_DEFAULTS"]

# per-preset defaults: total batch, R1 gamma, EMA half-life (images), EMA ramp-up
PRESET_DEFAULTS: dict[str, dict] = {
    "paper": {"batch": 32, "r1_gamma": 1.0, "ema_images": 10_000.0, "ema_rampup": None},
    "tiny": {"batch": 8, "r1_gamma": 0.2, "ema_images": 2_000.0, "ema_rampup": 0.05},
    "micro": {"batch": 4, "r1_gamma": 0.1, "ema_images": 200.0, "ema_rampup": 0.05},
}


@dataclass
class GeneratorConfig(RunOptions):
    """Everything that determines a generator run (written to RUN/config.json)."""

    PRESET_DEFAULTS = PRESET_DEFAULTS

    preset: str = option("tiny", "network size (micro 32 px, tiny 64, paper 256)", choices=PRESET_NAMES)
    data: str = option("", "dataset folder: SynthBMFD, images, 300VW or multi-view", required=True, path=True)
    kind: str = option("auto", "dataset kind", default_help="auto-detect")
    split: str = option("train", "SynthBMFD split", cli=False)
    m: int | None = option(None, "blur half-window in frames, sets which sharp targets a sample has",
                           default_help="the data's own")
    all_frames: bool = option(False, "train on all 5 sharp targets, not only the middle")
    mirror: bool = option(False, "x-flip augmentation (dataset doubled)")
    batch: int | None = option(None, "total batch over all processes")
    lr: float = option(0.002, "Adam learning rate of G and D (before the lazy-regularisation adjustment)")
    r1_gamma: float | None = option(None, "R1 weight")
    r1_every: int = option(16, "lazy R1 interval")
    pl_weight: float = option(0.0, "path-length regularisation weight (0: off)")
    pl_every: int = option(4, "lazy path-length interval")
    pl_decay: float = option(0.01, "decay of the path-length running mean", cli=False)
    style_mixing: float = option(0.9, "style-mixing probability")
    ema_images: float | None = option(None, "EMA half-life in thousands of images", flags=("--ema-kimg",),
                                      scale=1000.0)
    ema_rampup: float | None = option(-1.0, "-1: preset default; None/0: no ramp-up", cli=False)
    grid: int = option(16, "samples in the fixed-z grid (0: none)")
    extra: dict = option(help="room for later options", cli=False, default_factory=dict)

    def resolved(self) -> GeneratorConfig:
        """A copy with the preset defaults filled in; UserError on impossible values."""
        from deblur_rotate.models.stylegan2 import PRESETS

        if self.preset not in PRESETS:
            raise UserError(f"unknown preset {self.preset!r}: choose one of {', '.join(PRESETS)}")
        c = self.with_preset_defaults(("batch", "r1_gamma", "ema_images"))
        if c.ema_rampup is not None and c.ema_rampup < 0:
            c.ema_rampup = PRESET_DEFAULTS[c.preset]["ema_rampup"]
        c.ema_rampup = c.ema_rampup or None
        c.data, c.out = str(c.data), str(c.out)
        if c.steps < 0:
            raise UserError(f"--steps must be positive (got {c.steps})")
        check_signs(c, positive=("batch", "r1_every", "pl_every", "checkpoint_every", "log_every"),
                    non_negative=("lr", "r1_gamma", "pl_weight", "ema_images", "grid", "workers", "image_every"))
        if not 0 <= c.style_mixing <= 1:
            raise UserError(f"--style-mixing must be in [0, 1] (got {c.style_mixing})")
        c.check_precision()
        return c

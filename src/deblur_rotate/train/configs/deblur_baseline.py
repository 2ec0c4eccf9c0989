"""The direct-deblur baseline's settings: :class:`DeblurBaselineConfig` (``deblur-rotate train deblur-baseline``).
Torch-free."""
from __future__ import annotations

from dataclasses import dataclass

from deblur_rotate.errors import UserError
from deblur_rotate.train.configs.common import PRESET_NAMES, RunOptions, check_even_m, check_signs
from deblur_rotate.train.configs.fields import option

__all__ = ["PRESET_DEFAULTS", "DeblurBaselineConfig"]

# per-preset defaults: total batch
PRESET_DEFAULTS: dict[str, dict] = {"micro": {"batch": 4}, "tiny": {"batch": 16}, "paper": {"batch": 32}}


@dataclass
class DeblurBaselineConfig(RunOptions):
    """Everything that determines a deblur-baseline run (written to RUN/config.json)."""

    PRESET_DEFAULTS = PRESET_DEFAULTS

    preset: str = option("tiny", "network size and resolution (micro 32 px, tiny 64, paper 256)",
                         choices=PRESET_NAMES)
    data: str = option("", "dataset folder: SynthBMFD, 300VW, multi-view or images", required=True, path=True)
    kind: str = option("auto", "dataset kind", default_help="auto-detect")
    split: str = option("train", "SynthBMFD split")
    m: int | None = option(None, "blur half-window in frames (2m+1 frames averaged)",
                           default_help="the dataset kind's, 32 for SynthBMFD")
    batch: int | None = option(None, "total batch over all processes")
    lr: float = option(1e-4, "Adam learning rate")
    edge_weight: float = option(0.2, "Sobel edge loss weight (0: L1 only)")
    ema: float = option(0.0, "EMA decay per step of the saved network (0: none, the trained weights are saved)")
    grid: int = option(4, "samples in the grid (0: none)")

    def resolved(self) -> DeblurBaselineConfig:
        """A copy with the preset defaults filled in; UserError on impossible values."""
        from deblur_rotate.evaluate.baselines import DIRECT_DEBLUR_PRESETS

        if self.preset not in DIRECT_DEBLUR_PRESETS:
            raise UserError(f"unknown preset {self.preset!r}: choose one of {', '.join(DIRECT_DEBLUR_PRESETS)}")
        c = self.with_preset_defaults(("batch",))
        c.data, c.out = str(c.data), str(c.out)
        if not c.data:
            raise UserError("--data is required: a dataset folder with blurry images and their sharp frames "
                            "(e.g. `deblur-rotate synth --out data/synthbmfd`)")
        if c.steps < 0:
            raise UserError(f"--steps must be positive (got {c.steps})")
        check_signs(c, positive=("batch", "checkpoint_every", "log_every"),
                    non_negative=("lr", "edge_weight", "grid", "workers", "image_every"))
        if not 0 <= c.ema < 1:
            raise UserError(f"--ema must be in [0, 1) (got {c.ema})")
        check_even_m(c.m)
        c.check_precision()
        return c

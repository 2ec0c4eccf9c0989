"""What every training stage's config shares: the choice tuples, and :class:`RunOptions` (run folder, steps,
checkpoints, logging, device, precision, resume). Torch-free."""
from __future__ import annotations

import copy
from dataclasses import dataclass

from deblur_rotate.errors import UserError
from deblur_rotate.train.configs.fields import option

__all__ = ["DATA_KINDS", "DEVICES", "LATENT_LOSSES", "LR_DECAY_HELP", "M_DEFAULT", "M_HELP", "PRECISIONS",
           "PRESET_NAMES", "RunOptions", "check_even_m", "check_fraction", "check_signs"]

PRESET_NAMES = ("micro", "tiny", "paper")  # network sizes: models.stylegan2.PRESETS, each stage's preset table
LATENT_LOSSES = ("l1", "l2")               # losses.LATENT_LOSSES (tests/test_cli.py checks they agree)
PRECISIONS = ("fp32", "fp16", "bf16", "auto")
DEVICES = ("cpu", "cuda")
# dataset kinds of the face3d and fusion stages
DATA_KINDS = ("auto", "synthbmfd", "images", "300vw", "video", "multiview", "vidtimit")

LR_DECAY_HELP = ("fraction of the run at its end over which the learning rates fall linearly to 0 (0: constant, "
                 "the paper's)")
M_HELP = "blur half-window: the mean of 2m+1 frames (stills use a motion kernel)"  # the face3d / fusion wording
M_DEFAULT = "the kind's own, 32 for SynthBMFD and multi-view, 4 for 300VW and VIDTIMIT"

PRECISION_HELP = ("mixed precision: bf16 autocast (CPU or CUDA), fp16 with loss scaling (CUDA only), auto: bf16 where "
                  "the device computes it natively (CUDA, CPUs with AVX-512 BF16 or AMX), else fp32; on other CPUs "
                  "bf16 is emulated and many times slower than fp32")


@dataclass
class RunOptions:
    """The settings every stage's run has; each stage's config extends it."""

    out: str = option("", "run folder (checkpoints/, tb/, samples/, config.json)", flags=("-o", "--out"),
                      required=True, path=True)
    steps: int = option(1000, "total iterations of the run")
    batch: int | None = option(None, "total batch over all processes")  # stages restate it with their unit
    checkpoint_every: int = option(500, "iterations between checkpoints")
    log_every: int = option(50, "iterations between TensorBoard scalars")
    image_every: int | None = option(None, "iterations between image grids", default_help="--checkpoint-every")
    seed: int = option(0, "random seed")
    device: str | None = option(None, "where to train", choices=DEVICES, default_help="cuda when available")
    precision: str = option("fp32", PRECISION_HELP, choices=PRECISIONS)
    workers: int = option(0, "DataLoader worker processes (0: in-process, needed for bit-exact resume)")
    resume: bool = option(False, "continue the run in --out from its newest checkpoint")
    progress: bool = option(True, "a progress bar")

    def with_preset_defaults(self, names: tuple[str, ...]):
        """A deep copy whose fields ``names`` that are None take the class's ``PRESET_DEFAULTS`` value for this
        preset (a given value is cast to that value's type), and whose ``image_every`` defaults to
        ``checkpoint_every``; the caller checks the preset first."""
        c = copy.deepcopy(self)
        row = type(self).PRESET_DEFAULTS[c.preset]
        for name in names:
            value = getattr(c, name)
            setattr(c, name, row[name] if value is None else type(row[name])(value))
        c.image_every = c.checkpoint_every if c.image_every is None else int(c.image_every)
        return c

    def check_precision(self) -> None:
        """UserError unless ``precision`` is one of PRECISIONS."""
        if self.precision not in PRECISIONS:
            raise UserError(f"--precision must be one of {', '.join(PRECISIONS)} (got {self.precision!r})")


def check_fraction(name: str, value: float) -> None:
    """UserError unless ``value`` is in [0, 1] (``name``: the field)."""
    if not 0.0 <= value <= 1.0:
        raise UserError(f"--{name.replace('_', '-')} must be between 0 and 1 (got {value})")


def check_signs(config, positive: tuple[str, ...] = (), non_negative: tuple[str, ...] = ()) -> None:
    """UserError naming the first field of ``positive`` below 1 or of ``non_negative`` below 0."""
    for name in positive:
        if getattr(config, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be positive (got {getattr(config, name)})")
    for name in non_negative:
        if getattr(config, name) < 0:
            raise UserError(f"--{name.replace('_', '-')} must not be negative (got {getattr(config, name)})")


def check_even_m(m) -> None:
    """UserError unless the blur half-window ``m`` is None (the data's own) or an even number >= 2."""
    if m is not None and (isinstance(m, bool) or int(m) < 2 or int(m) % 2):
        raise UserError(f"--m must be an even number >= 2 (got {m})")

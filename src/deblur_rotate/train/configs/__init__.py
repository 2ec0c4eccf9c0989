"""Every training stage's settings, one dataclass per stage, torch-free.

Each field is declared once, with its default and help text (:func:`~deblur_rotate.train.configs.fields.option`);
``deblur-rotate train STAGE`` generates its options from it (train/options.py), ``train all`` and the stages
build it, and a run's ``RUN/config.json`` is it (plus the networks' sizes the stage adds).
:func:`load_run_config` reads such a file back, also one written before a field existed.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from deblur_rotate.errors import UserError
from deblur_rotate.train.configs.blur_encoder import BlurEncoderConfig
from deblur_rotate.train.configs.common import (
    DATA_KINDS,
    DEVICES,
    LATENT_LOSSES,
    PRECISIONS,
    PRESET_NAMES,
    RunOptions,
)
from deblur_rotate.train.configs.deblur_baseline import DeblurBaselineConfig
from deblur_rotate.train.configs.face3d import Face3DConfig
from deblur_rotate.train.configs.fields import add_config_options, config_from_args, option
from deblur_rotate.train.configs.fusion import FusionConfig
from deblur_rotate.train.configs.generator import GeneratorConfig
from deblur_rotate.train.configs.sharp_encoder import SharpEncoderConfig

__all__ = [
    "DATA_KINDS", "DEVICES", "LATENT_LOSSES", "PRECISIONS", "PRESET_NAMES", "STAGE_CONFIGS",
    "BlurEncoderConfig", "DeblurBaselineConfig", "Face3DConfig", "FusionConfig", "GeneratorConfig", "RunOptions",
    "SharpEncoderConfig", "add_config_options", "config_from_args", "load_run_config", "option",
]

# the "stage" a run writes into RUN/config.json -> its config class
STAGE_CONFIGS = {
    "generator": GeneratorConfig,
    "sharp-encoder": SharpEncoderConfig,
    "blur-encoder": BlurEncoderConfig,
    "face3d": Face3DConfig,
    "fusion": FusionConfig,
    "deblur-baseline": DeblurBaselineConfig,
}


def load_run_config(path: str | Path):
    """The stage config a run was trained with, from ``RUN/config.json`` (or RUN itself).

    Keys that are not fields of the stage's config (the networks' sizes the stage adds, and fields a later
    version removed) are ignored; fields the file lacks (added since it was written) take their defaults.
    UserError when the file is missing, unreadable or names no known stage.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "config.json"
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"{path} not found: give a run folder of `deblur-rotate train STAGE` (it holds "
                        "config.json)") from None
    except (OSError, ValueError, UnicodeDecodeError) as err:
        raise UserError(f"{path} is not a readable run config ({err}): give the config.json a training run "
                        "wrote") from None
    stage = data.get("stage") if isinstance(data, dict) else None
    if stage not in STAGE_CONFIGS:
        raise UserError(f"{path}: its 'stage' is {stage!r}, not one of {', '.join(STAGE_CONFIGS)}; it is not a "
                        "run config of `deblur-rotate train`")
    cls = STAGE_CONFIGS[stage]
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in data.items() if k in names})

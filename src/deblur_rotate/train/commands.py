"""``deblur-rotate train STAGE ...``: one sub-subcommand per training stage.

Wire into the CLI with ``add_train_parser(subparsers)``. A stage's options live in
:mod:`deblur_rotate.train.options` (no torch: ``train STAGE --help`` answers at once); the stage itself in its own
module ``deblur_rotate.train.<name>``, imported only when it runs. Modules listed in :data:`STAGE_MODULES` (light to
import) add further sub-commands with their own ``add_parser(stages)``.
"""
from __future__ import annotations

import argparse
import importlib
from pathlib import Path

from deblur_rotate.train.configs import config_from_args
from deblur_rotate.train.options import PARSER_ADDERS

__all__ = ["STAGES", "STAGE_MODULES", "add_train_parser", "configure_train_parser",
           "run_generator", "run_stage_cli"]


STAGES = list(PARSER_ADDERS)
# modules (light to import) that add further sub-commands with their own add_parser(stages)
STAGE_MODULES = ("all_stages",)


def _stage_adders():
    yield from STAGES
    for name in STAGE_MODULES:
        yield importlib.import_module(f"deblur_rotate.train.{name}").add_parser


TRAIN_HELP = "train one stage of the model"


def add_train_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``train`` and its stages on the CLI's subparsers; returns the ``train`` parser."""
    p = subparsers.add_parser("train", help=TRAIN_HELP)
    configure_train_parser(p)
    return p


def configure_train_parser(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The description, stage sub-commands and ``func`` of the ``train`` parser ``p`` (the CLI adds them only
    when ``train`` is chosen: the stage modules import torch); returns ``p``."""
    p.description = "Train one stage of the model (each stage has its own sub-command)."
    stages = p.add_subparsers(dest="stage", metavar="STAGE")
    for add in _stage_adders():
        add(stages)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])
    return p


def run_stage_cli(make_stage, config, written: str) -> int:
    """The body of every ``deblur-rotate train STAGE`` command: build the stage from its config, train it, print
    one summary line on rank 0 (``written``: what it wrote, e.g. "E_v written to RUN/blur_encoder"), and close the
    process group whatever happens. Returns the exit status 0."""
    import math

    from deblur_rotate.train import distributed as dist_utils

    try:
        stage = make_stage(config)
        losses = stage.run()
        if stage.info.rank == 0:
            terms = ", ".join(f"{k}={v:.4g}" for k, v in losses.items() if math.isfinite(v))
            print(f"trained {stage.config.steps} steps ({terms}); {written}")
    finally:
        dist_utils.shutdown()
    return 0


def run_generator(args) -> int:
    from deblur_rotate.train.gan import GeneratorConfig, GeneratorStage

    config = config_from_args(GeneratorConfig, args)
    return run_stage_cli(GeneratorStage, config, f"generator written to {Path(config.out) / 'generator'}")

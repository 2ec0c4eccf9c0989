"""``deblur-rotate train STAGE ...``: one sub-subcommand per training stage.

Wire into the CLI with ``add_train_parser(subparsers)``. A stage lives in its own module
``deblur_rotate.train.<name>`` listed in :data:`STAGE_MODULES`, which defines ``add_parser(stages)``:
it registers the stage's parser (using :func:`add_common_options`, with ``set_defaults(func=...)``).
Keep those modules' top-level imports light: every ``deblur-rotate`` call imports them.
"""
from __future__ import annotations

import argparse
import importlib
from pathlib import Path

__all__ = ["STAGES", "STAGE_MODULES", "add_common_options", "add_train_parser", "configure_train_parser",
           "run_generator"]


def add_common_options(p: argparse.ArgumentParser, *, batch_help: str) -> None:
    """Options every stage shares (run folder, steps, checkpoints, logging, device, resume)."""
    p.add_argument("-o", "--out", required=True, type=Path,
                   help="run folder (checkpoints/, tb/, samples/, config.json)")
    p.add_argument("--steps", type=int, default=1000, help="total iterations of the run (default 1000)")
    p.add_argument("--batch", type=int, default=None, help=batch_help)
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its newest checkpoint")
    p.add_argument("--checkpoint-every", type=int, default=500, help="iterations between checkpoints (default 500)")
    p.add_argument("--log-every", type=int, default=50, help="iterations between TensorBoard scalars (default 50)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--device", choices=("cpu", "cuda"), default=None, help="default: cuda when available")
    p.add_argument("--precision", choices=("fp32", "fp16", "bf16"), default="fp32",
                   help="mixed precision: bf16 autocast (CPU or CUDA), fp16 with loss scaling (CUDA only); "
                        "default fp32")
    p.add_argument("--workers", type=int, default=0, help="DataLoader worker processes (default 0)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")


def _add_generator(stages) -> None:
    from deblur_rotate.models.stylegan2 import PRESETS

    p = stages.add_parser(
        "generator", help="stage 1: StyleGAN2 generator on sharp faces",
        description="Train the StyleGAN2 generator G (non-saturating loss, lazy R1, EMA) on the sharp frames of "
                    "a dataset; writes RUN/generator/ (the EMA generator) at the end. Multi-GPU: launch with "
                    "torchrun --nproc_per_node N.")
    p.add_argument("--preset", choices=PRESETS, default="tiny", help="network size (micro 32 px, tiny 64, paper 256)")
    p.add_argument("--data", required=True, type=Path, help="dataset folder: SynthBMFD, images, 300VW or multi-view")
    p.add_argument("--kind", default="auto", help="dataset kind (default auto-detect)")
    p.add_argument("--m", type=int, default=None,
                   help="blur half-window in frames, sets which sharp targets a sample has (default: the data's own)")
    p.add_argument("--all-frames", action="store_true", help="train on all 5 sharp targets, not only the middle")
    p.add_argument("--mirror", action="store_true", help="x-flip augmentation")
    add_common_options(p, batch_help="total batch over all processes (default: micro 4, tiny 8, paper 32)")
    p.add_argument("--lr", type=float, default=0.002, help="Adam learning rate (default 0.002)")
    p.add_argument("--r1-gamma", type=float, default=None, help="R1 weight (default: micro 0.1, tiny 0.2, paper 1)")
    p.add_argument("--r1-every", type=int, default=16, help="lazy R1 interval (default 16)")
    p.add_argument("--pl-weight", type=float, default=0.0, help="path-length regularisation weight (default 0: off)")
    p.add_argument("--pl-every", type=int, default=4, help="lazy path-length interval (default 4)")
    p.add_argument("--style-mixing", type=float, default=0.9, help="style-mixing probability (default 0.9)")
    p.add_argument("--ema-kimg", type=float, default=None,
                   help="EMA half-life in thousands of images (default: micro 0.2, tiny 2, paper 10)")
    p.add_argument("--image-every", type=int, default=None, help="iterations between sample grids "
                                                                  "(default: --checkpoint-every)")
    p.add_argument("--grid", type=int, default=16, help="samples in the grid (default 16; 0: none)")
    p.set_defaults(func=run_generator)


STAGES = [_add_generator]
# stage modules in training order, each with add_parser(stages); see the module docstring
STAGE_MODULES = ("sharp_encoder", "blur_encoder", "face3d", "fusion", "deblur_baseline", "all_stages")


def _stage_adders():
    yield from STAGES
    for name in STAGE_MODULES:
        module_name = f"deblur_rotate.train.{name}"
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as err:
            if err.name == module_name:  # a stage not written yet
                continue
            raise
        yield module.add_parser


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


def run_generator(args) -> int:
    from deblur_rotate.train import distributed as dist_utils
    from deblur_rotate.train.gan import GeneratorConfig, GeneratorStage

    config = GeneratorConfig(
        preset=args.preset, data=str(args.data), out=str(args.out), kind=args.kind, m=args.m,
        all_frames=args.all_frames,
        mirror=args.mirror, steps=args.steps, batch=args.batch, lr=args.lr, r1_gamma=args.r1_gamma,
        r1_every=args.r1_every, pl_weight=args.pl_weight, pl_every=args.pl_every, style_mixing=args.style_mixing,
        ema_images=None if args.ema_kimg is None else args.ema_kimg * 1000.0,
        checkpoint_every=args.checkpoint_every, log_every=args.log_every, image_every=args.image_every,
        grid=args.grid, seed=args.seed, device=args.device, precision=args.precision, workers=args.workers,
        resume=args.resume, progress=args.progress)
    try:
        stage = GeneratorStage(config)
        losses = stage.run()
        if stage.info.rank == 0:
            terms = ", ".join(f"{k}={v:.4g}" for k, v in losses.items())
            print(f"trained {config.steps} steps ({terms}); generator written to {Path(config.out) / 'generator'}")
    finally:
        dist_utils.shutdown()
    return 0

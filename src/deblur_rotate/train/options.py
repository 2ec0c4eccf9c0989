"""The command-line options of every ``deblur-rotate train`` stage, in one module that imports no torch.

``deblur-rotate train STAGE --help`` and argument errors build these parsers only, so they answer at once; the
chosen stage's module (which imports torch) is imported when the stage runs (:func:`_lazy_run`). Each
``add_<stage>_parser(stages)`` registers one sub-command on ``stages`` (``train``'s sub-parsers); the stage's
``run_<stage>(args)`` turns the parsed options into its Config dataclass.

The choice tuples below mirror tables that live beside torch code; tests/test_cli.py checks that they agree.
"""
from __future__ import annotations

import argparse
import importlib
from pathlib import Path

__all__ = ["DATA_KINDS", "LATENT_LOSSES", "PARSER_ADDERS", "PRESET_NAMES", "add_common_options"]

PRESET_NAMES = ("micro", "tiny", "paper")  # network sizes: models.stylegan2.PRESETS, each stage's preset table
LATENT_LOSSES = ("l1", "l2")               # losses.LATENT_LOSSES
# dataset kinds of the face3d and fusion stages (train.face3d, which imports this)
DATA_KINDS = ("auto", "synthbmfd", "images", "300vw", "video", "multiview", "vidtimit")


def _lazy_run(module: str, function: str):
    """``func`` for ``set_defaults``: imports ``deblur_rotate.train.<module>`` only when the stage runs."""
    def run(args) -> int:
        return getattr(importlib.import_module(f"deblur_rotate.train.{module}"), function)(args)

    run.__name__ = function
    return run


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


def add_generator_parser(stages) -> None:
    p = stages.add_parser(
        "generator", help="stage 1: StyleGAN2 generator on sharp faces",
        description="Train the StyleGAN2 generator G (non-saturating loss, lazy R1, EMA) on the sharp frames of "
                    "a dataset; writes RUN/generator/ (the EMA generator) at the end. Multi-GPU: launch with "
                    "torchrun --nproc_per_node N.")
    p.add_argument("--preset", choices=PRESET_NAMES, default="tiny", help="network size (micro 32 px, tiny 64, paper 256)")
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
    p.set_defaults(func=_lazy_run("commands", "run_generator"))


def add_sharp_encoder_parser(stages) -> None:
    """Register ``deblur-rotate train sharp-encoder``."""

    p = stages.add_parser(
        "sharp-encoder", help="stage 2: the sharp-image encoder E_s (with G fine-tuned)",
        description="Train E_s (sharp face -> W+ codes of G) with G fine-tuned on l_s = lambda_id L_id + "
                    "lambda_per L_per + lambda_edge L_edge + L1 + lambda_g |G_init - G|^2 (relaxed to 0) + "
                    "lambda_s |1 - |E_s(y)||; skin pixels count double. Writes RUN/sharp_encoder/ and "
                    "RUN/generator/ (fine-tuned). Multi-GPU: launch with torchrun --nproc_per_node N.")
    p.add_argument("--preset", choices=("micro", "tiny", "paper"), default="tiny", help="network sizes (default tiny)")
    p.add_argument("--data", required=True, type=Path, help="dataset folder: SynthBMFD, images, 300VW or multi-view")
    gen = p.add_mutually_exclusive_group(required=True)
    gen.add_argument("--generator", type=Path, default=None,
                     help="trained generator folder (RUN/generator of `train generator`)")
    gen.add_argument("--fresh-generator", action="store_true",
                     help="start G from random weights and train E_s + G as an autoencoder (no GAN stage; "
                          "lambda_g is then 0). The CPU recipe does this: a GAN needs far more iterations "
                          "than a CPU gives before its G is a useful decoder")
    p.add_argument("--generator-input", choices=("const", "dense"), default="const",
                   help="with --fresh-generator: G's 4 px input, const (StyleGAN2) or dense (a layout computed "
                        "from the first code, ProGAN-style; default const)")
    p.add_argument("--head-grid", type=int, default=0,
                   help="E_s's head reads a K x K pooled feature map instead of the global pool (default 0: "
                        "global pool, the paper's)")
    p.add_argument("--kind", default="auto", help="dataset kind (default auto-detect)")
    p.add_argument("--m", type=int, default=None,
                   help="blur half-window in frames, sets which sharp targets a sample has (default: the data's own)")
    p.add_argument("--middle-only", dest="all_frames", action="store_false",
                   help="train on the middle sharp frame only (default: all 5 targets)")
    p.add_argument("--no-mirror", dest="mirror", action="store_false", help="no x-flip augmentation")
    add_common_options(p, batch_help="total batch over all processes (default: micro 4, tiny 8, paper 72)")
    p.add_argument("--lr-decay", type=float, default=0.0,
                   help="fraction of the run at its end over which the learning rates fall linearly to 0 "
                        "(default 0: constant, the paper's)")
    p.add_argument("--lr", type=float, default=1e-4, help="Adam learning rate of E_s (default 1e-4)")
    p.add_argument("--lr-generator", type=float, default=1e-4,
                   help="Adam learning rate of G's synthesis network (default 1e-4; 0 keeps G frozen)")
    p.add_argument("--lambda-l1", type=float, default=1.0)
    p.add_argument("--lambda-id", type=float, default=0.5, help="identity loss weight (default 0.5; 0: off)")
    p.add_argument("--lambda-per", type=float, default=1e-6, help="perceptual loss weight (default 1e-6; 0: off)")
    p.add_argument("--lambda-edge", type=float, default=0.2)
    p.add_argument("--lambda-g", type=float, default=1.0, help="|G_init - G|^2 weight at the start (default 1)")
    p.add_argument("--g-relax-steps", type=int, default=None,
                   help="iterations over which lambda_g falls linearly to 0 (default: half the run)")
    p.add_argument("--lambda-s", type=float, default=1.0, help="code-norm weight (default 1)")
    p.add_argument("--skin-weight", type=float, default=2.0, help="weight of skin pixels (default 2; 1: off)")
    p.add_argument("--vgg16-weights", type=str, default=None,
                   help="torchvision VGG16 ImageNet weights for the perceptual loss (default: face-net fallback)")
    p.add_argument("--init-from", type=str, default="",
                   help="start E_s from a trained E_s folder of the same architecture (fine-tuning, e.g. "
                        "RUN/sharp_encoder of an earlier run; pair it with that run's --generator); "
                        "ignored by --resume")
    p.add_argument("--backbone-weights", type=str, default=None,
                   help="torchvision ResNet state dict to start E_s's backbone from")
    p.add_argument("--ema-kimg", type=float, default=None, help="EMA half-life in thousands of images")
    p.add_argument("--image-every", type=int, default=None, help="iterations between reconstruction grids")
    p.add_argument("--grid", type=int, default=8, help="faces in the reconstruction grid (default 8; 0: none)")
    p.set_defaults(func=_lazy_run("sharp_encoder", "run_sharp_encoder"))


def add_blur_encoder_parser(stages) -> None:
    """Register ``deblur-rotate train blur-encoder``."""

    p = stages.add_parser(
        "blur-encoder", help="stage 3: the blurry-image encoder E_v (5 W+ codes per blurry face)",
        description="Train E_v (blurry face -> 5 W+ codes, one per sharp frame) to match the codes the frozen "
                    "sharp encoder E_s gives the 5 sharp frames, with the loss min(|E_v(x) - z|, "
                    "|E_v(x) - z_reversed|) (forward/backward ambiguity). Writes RUN/blur_encoder/ (EMA weights). "
                    "Multi-GPU: launch with torchrun --nproc_per_node N.")
    p.add_argument("--preset", choices=("micro", "tiny", "paper"), default="tiny",
                   help="network sizes (micro 32 px, tiny 64, paper 256; default tiny)")
    p.add_argument("--data", required=True, type=Path, help="dataset folder: SynthBMFD, images, 300VW or multi-view")
    p.add_argument("--sharp-encoder", required=True, type=Path,
                   help="trained sharp encoder folder (RUN/sharp_encoder of `train sharp-encoder`), the teacher")
    p.add_argument("--generator", required=True, type=Path,
                   help="fine-tuned generator folder (RUN/generator of `train sharp-encoder`)")
    p.add_argument("--kind", default="auto", help="dataset kind (default auto-detect)")
    p.add_argument("--split", default="train", choices=("train", "test", "all"), help="SynthBMFD split (default train)")
    p.add_argument("--m", type=int, default=None,
                   help="blur half-window in frames: 2m+1 frames are averaged (default: the data's own, "
                        "SynthBMFD 32)")
    p.add_argument("--mirror", action=argparse.BooleanOptionalAction, default=True,
                   help="add a mirrored copy of every sample (default on)")
    p.add_argument("--jitter", action=argparse.BooleanOptionalAction, default=None,
                   help="colour jitter of the blurry image and its targets alike (default: paper preset only)")
    add_common_options(p, batch_help="total batch over all processes (default: micro 4, tiny 8, paper 96)")
    p.add_argument("--lr-decay", type=float, default=0.0,
                   help="fraction of the run at its end over which the learning rates fall linearly to 0 "
                        "(default 0: constant, the paper's)")
    p.add_argument("--lr", type=float, default=1e-4, help="Adam learning rate (default 1e-4)")
    p.add_argument("--latent-loss", choices=LATENT_LOSSES, default="l1",
                   help="distance between code sequences: l1 (mean absolute) or l2 (mean squared); default l1")
    p.add_argument("--lambda-image", type=float, default=0.0,
                   help="weight of an L1 between the decoded frames and the sharp targets (default 0: off)")
    p.add_argument("--head-grid", type=int, default=0,
                   help="E_v's head reads a K x K pooled feature map instead of the global pool "
                        "(default 0: the paper's)")
    p.add_argument("--head-bottleneck", type=int, default=0,
                   help="factor E_v's head through B units (a rank-B head; default 0: one Linear layer)")
    p.add_argument("--image-frames", type=int, default=5,
                   help="frames per sample decoded for the image term, drawn anew each step (default 5: all)")
    p.add_argument("--backbone-weights", type=str, default=None,
                   help="torchvision ResNet state dict to start E_v's backbone from")
    p.add_argument("--init-from", type=str, default="",
                   help="start E_v from a trained E_v folder of the same architecture (fine-tuning, e.g. "
                        "MODEL/blur_encoder of a model folder); ignored by --resume")
    p.add_argument("--ema-kimg", type=float, default=None,
                   help="EMA half-life in thousands of images (default: micro 0.1, tiny 2, paper 10)")
    p.add_argument("--image-every", type=int, default=None,
                   help="iterations between sample grids (default: --checkpoint-every)")
    p.add_argument("--grid", type=int, default=4, help="samples in the grid (default 4; 0: none)")
    p.set_defaults(func=_lazy_run("blur_encoder", "run_blur_encoder"))


def add_face3d_parser(stages) -> None:
    """Register ``deblur-rotate train face3d``."""

    p = stages.add_parser(
        "face3d", help="stage 4: 3D encoder E_3D (blurry face -> 3DMM coefficients)",
        description="Train E_3D through the differentiable renderer (blurry input; sharp middle frame and its 68 "
                    "landmarks as targets; pairs of views for L_mview) on one dataset: SynthBMFD, the multi-view "
                    "layout (true view pairs), or single-view images / 300VW / VIDTIMIT, whose mirror images are "
                    "the second view. Real data needs the landmarks of `deblur-rotate prepare` and is rendered with "
                    "a fixed camera framed like the SynthBMFD rig. Writes RUN/face3d_encoder/ at the end. "
                    "Multi-GPU: launch with torchrun --nproc_per_node N.")
    p.add_argument("--preset", choices=PRESET_NAMES, default="tiny",
                   help="encoder size (micro 32 px input, tiny 64, paper 256 with ResNet-50; default tiny)")
    p.add_argument("--data", required=True, type=Path,
                   help="dataset folder: SynthBMFD (`deblur-rotate synth`) or a `deblur-rotate prepare` output "
                        "(images, 300vw, multiview, vidtimit); one dataset per run")
    p.add_argument("--kind", choices=DATA_KINDS, default="auto", help="dataset kind (default: auto-detect)")
    p.add_argument("--model-from", type=Path, default=None,
                   help="real data: use the procedural model this SynthBMFD folder was rendered with (default: "
                        "the standard one of `deblur-rotate synth`)")
    p.add_argument("--focal-factor", type=float, default=None,
                   help="real data: focal length of the fixed camera in image sides (default 3.5, the SynthBMFD "
                        "rig's framing)")
    p.add_argument("--bfm", type=Path, default=None,
                   help="Basel Face Model file (01_MorphableModel.mat or BFM_model_front.mat) to use instead of "
                        "the built-in procedural model")
    p.add_argument("--bfm-expression", type=Path, default=None, help="Exp_Pca.bin (with 01_MorphableModel.mat)")
    p.add_argument("--bfm-landmarks", type=Path, default=None, help="68 landmark vertex indices of the BFM mesh")
    p.add_argument("--bfm-modes", type=int, nargs=3, metavar=("N_ID", "N_TEX", "N_EXP"), default=None,
                   help="BFM modes kept (default all; the paper uses 199 199 29)")
    p.add_argument("--m", type=int, default=None,
                   help="blur half-window: the mean of 2m+1 frames (default: the kind's own, 32 for SynthBMFD and "
                        "multi-view, 4 for 300VW and VIDTIMIT; stills use a motion kernel)")
    p.add_argument("--stride", type=int, default=1, help="use every stride-th centre frame (default 1)")
    add_common_options(p, batch_help="total images per iteration, two views per instant, so even "
                                     "(default: micro 4, tiny 8, paper 90)")
    p.add_argument("--lr", type=float, default=1e-4, help="Adam learning rate (default 1e-4)")
    p.add_argument("--lambda-data", type=float, default=5.0, help="photometric L1 weight (default 5)")
    p.add_argument("--lambda-edge", type=float, default=30.0, help="edge loss weight (default 30)")
    p.add_argument("--lambda-id", type=float, default=0.5, help="identity loss weight (default 0.5; 0: off)")
    p.add_argument("--lambda-lan", type=float, default=1.0, help="landmark loss weight (default 1)")
    p.add_argument("--lambda-mview", type=float, default=0.25, help="multi-view consistency weight (default 0.25)")
    p.add_argument("--lambda-c", type=float, default=1e-4, help="coefficient regulariser weight (default 1e-4)")
    p.add_argument("--skin-weight", type=float, default=2.0, help="weight of skin pixels (default 2; 1: none)")
    p.add_argument("--image-every", type=int, default=None,
                   help="iterations between image grids (default: --checkpoint-every)")
    p.add_argument("--grid", type=int, default=8, help="faces in the input/render/target grid (default 8; 0: none)")
    p.set_defaults(func=_lazy_run("face3d", "run_face3d"))


def add_fusion_parser(stages) -> None:
    """Register ``deblur-rotate train fusion``."""

    p = stages.add_parser(
        "fusion", help="stage 5: the fusion network F (frame codes + pose change -> codes of another view)",
        description="Train F on pairs of views u != v of the same instants (SynthBMFD or multi-view folders: true "
                    "views; single-view images / 300VW / VIDTIMIT: a face and its mirror image, paper §4): "
                    "F(z^u, R^v - R^u) should give E_s's codes of view v (min over the two time orders); both "
                    "directions of every pair are used. The teachers (E_s, E_3D, optional E_v, G) stay frozen. "
                    "Writes RUN/fusion/ (EMA weights) at the end. Multi-GPU: launch with torchrun --nproc_per_node N.")
    p.add_argument("--preset", choices=PRESET_NAMES, default="tiny",
                   help="code sizes (micro 32 px, tiny 64, paper 256; default tiny)")
    p.add_argument("--data", required=True, type=Path,
                   help="dataset folder: SynthBMFD (`deblur-rotate synth`) or a `deblur-rotate prepare` output "
                        "(multiview, images, 300vw, vidtimit); one dataset per run")
    p.add_argument("--kind", choices=DATA_KINDS, default="auto", help="dataset kind (default: auto-detect)")
    p.add_argument("--arch", default="FC3R", help="FC<x> or FC<x>R: x layers, R residual (default FC3R)")
    p.add_argument("--sharp-encoder", required=True, type=Path,
                   help="E_s folder (RUN/sharp_encoder of `train sharp-encoder`): input and target codes")
    p.add_argument("--generator", type=Path, default=None,
                   help="fine-tuned G folder (RUN/generator of `train sharp-encoder`), for the sample grids and "
                        "--lambda-image (needed unless --grid 0)")
    p.add_argument("--face3d-encoder", type=Path, default=None,
                   help="E_3D folder (RUN/face3d_encoder of `train face3d`), for Δp with --pose-source e3d")
    p.add_argument("--blur-encoder", type=Path, default=None,
                   help="E_v folder (RUN/blur_encoder of `train blur-encoder`), for --input-codes blur")
    p.add_argument("--pose-source", choices=("e3d", "gt"), default="e3d",
                   help="Δp from E_3D on the blurry images (e3d, default, as at inference) or the data's "
                        "ground truth (gt; SynthBMFD only: real data has no poses)")
    p.add_argument("--input-codes", choices=("sharp", "blur"), default="sharp",
                   help="F's input: E_s of the source view's sharp frames (sharp, default) or E_v of its blurry "
                        "image (blur)")
    p.add_argument("--m", type=int, default=None,
                   help="blur half-window: the mean of 2m+1 frames (default: the kind's own, 32 for SynthBMFD and "
                        "multi-view, 4 for 300VW and VIDTIMIT; stills use a motion kernel)")
    p.add_argument("--stride", type=int, default=1, help="use every stride-th centre frame (default 1)")
    p.add_argument("--no-mirror", dest="mirror", action="store_false",
                   help="multi-view data: no left-right mirrored pairs (single-view data always pairs a face with "
                        "its mirror)")
    add_common_options(p, batch_help="training samples per iteration, two (u -> v, v -> u) per view pair, so "
                                     "even (default: micro 4, tiny 16, paper 84)")
    p.add_argument("--lr-decay", type=float, default=0.0,
                   help="fraction of the run at its end over which the learning rates fall linearly to 0 "
                        "(default 0: constant, the paper's)")
    p.add_argument("--lr", type=float, default=1e-4, help="Adam learning rate (default 1e-4)")
    p.add_argument("--lambda-image", type=float, default=0.0,
                   help="weight of the L1 between G(F(z^u, Δp)) and view v's frames (default 0: off)")
    p.add_argument("--stats-samples", type=int, default=64,
                   help="view pairs whose E_s codes set F's input normalisation (default 64)")
    p.add_argument("--ema-kimg", type=float, default=None, help="EMA half-life in thousands of samples")
    p.add_argument("--image-every", type=int, default=None,
                   help="iterations between sample grids (default: --checkpoint-every)")
    p.add_argument("--grid", type=int, default=4, help="view pairs in the sample grid (default 4; 0: none)")
    p.set_defaults(func=_lazy_run("fusion", "run_fusion"))


def add_deblur_baseline_parser(stages) -> None:
    """Register ``deblur-rotate train deblur-baseline``."""

    p = stages.add_parser(
        "deblur-baseline", help="baseline: direct regression of the 5 sharp frames (Jin et al.)",
        description="Train the DirectDeblurNet baseline (a U-Net regressing the 5 sharp frames from the blurry "
                    "image, L1 + Sobel edge loss under the forward/backward min); writes RUN/deblur_baseline/ "
                    "at the end. Multi-GPU: launch with torchrun --nproc_per_node N.")
    p.add_argument("--preset", choices=("micro", "tiny", "paper"), default="tiny",
                   help="network size and resolution (micro 32 px, tiny 64, paper 256)")
    p.add_argument("--data", required=True, type=Path, help="dataset folder: SynthBMFD, 300VW, multi-view or images")
    p.add_argument("--kind", default="auto", help="dataset kind (default auto-detect)")
    p.add_argument("--split", default="train", help="SynthBMFD split (default train)")
    p.add_argument("--m", type=int, default=None,
                   help="blur half-window in frames (2m+1 frames averaged; default the dataset kind's, 32 for "
                        "SynthBMFD)")
    add_common_options(p, batch_help="total batch over all processes (default: micro 4, tiny 16, paper 32)")
    p.add_argument("--lr", type=float, default=1e-4, help="Adam learning rate (default 1e-4)")
    p.add_argument("--edge-weight", type=float, default=0.2, help="Sobel edge loss weight (default 0.2; 0: off)")
    p.add_argument("--ema", type=float, default=0.0, help="EMA decay of the saved network (default 0: none)")
    p.add_argument("--image-every", type=int, default=None,
                   help="iterations between sample grids (default: --checkpoint-every)")
    p.add_argument("--grid", type=int, default=4, help="samples in the grid (default 4; 0: none)")
    p.set_defaults(func=_lazy_run("deblur_baseline", "run_deblur_baseline"))


# in training order; train/all_stages.py (light already) adds ``train all`` after these
PARSER_ADDERS = (add_generator_parser, add_sharp_encoder_parser, add_blur_encoder_parser, add_face3d_parser,
                 add_fusion_parser, add_deblur_baseline_parser)

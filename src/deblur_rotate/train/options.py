"""The command-line options of every ``deblur-rotate train`` stage, in one module that imports no torch.

``deblur-rotate train STAGE --help`` and argument errors build these parsers only, so they answer at once; the
chosen stage's module (which imports torch) is imported when the stage runs (:func:`_lazy_run`). Each
``add_<stage>_parser(stages)`` registers one sub-command on ``stages`` (``train``'s sub-parsers). Its options are
generated from the stage's config dataclass (:mod:`deblur_rotate.train.configs`): a default and its help text live
in that one field; the stage's ``run_<stage>(args)`` builds the config with
:func:`~deblur_rotate.train.configs.config_from_args`.
"""
from __future__ import annotations

import importlib
from pathlib import Path

from deblur_rotate.train.configs import (
    DATA_KINDS,
    LATENT_LOSSES,
    PRESET_NAMES,
    BlurEncoderConfig,
    DeblurBaselineConfig,
    Face3DConfig,
    FusionConfig,
    GeneratorConfig,
    SharpEncoderConfig,
    add_config_options,
)

__all__ = ["DATA_KINDS", "LATENT_LOSSES", "PARSER_ADDERS", "PRESET_NAMES"]


def _lazy_run(module: str, function: str):
    """``func`` for ``set_defaults``: imports ``deblur_rotate.train.<module>`` only when the stage runs."""
    def run(args) -> int:
        return getattr(importlib.import_module(f"deblur_rotate.train.{module}"), function)(args)

    run.__name__ = function
    return run


def add_generator_parser(stages) -> None:
    p = stages.add_parser(
        "generator", help="stage 1: StyleGAN2 generator on sharp faces",
        description="Train the StyleGAN2 generator G (non-saturating loss, lazy R1, EMA) on the sharp frames of "
                    "a dataset; writes RUN/generator/ (the EMA generator) at the end. Multi-GPU: launch with "
                    "torchrun --nproc_per_node N.")
    add_config_options(p, GeneratorConfig)
    p.set_defaults(func=_lazy_run("commands", "run_generator"))


def add_sharp_encoder_parser(stages) -> None:
    """Register ``deblur-rotate train sharp-encoder``."""

    p = stages.add_parser(
        "sharp-encoder", help="stage 2: the sharp-image encoder E_s (with G fine-tuned)",
        description="Train E_s (sharp face -> W+ codes of G) with G fine-tuned on l_s = lambda_id L_id + "
                    "lambda_per L_per + lambda_edge L_edge + L1 + lambda_g |G_init - G|^2 (relaxed to 0) + "
                    "lambda_s |1 - |E_s(y)||; skin pixels count double. Writes RUN/sharp_encoder/ and "
                    "RUN/generator/ (fine-tuned). Multi-GPU: launch with torchrun --nproc_per_node N.")
    add_config_options(p, SharpEncoderConfig)
    p.set_defaults(func=_lazy_run("sharp_encoder", "run_sharp_encoder"))


def add_blur_encoder_parser(stages) -> None:
    """Register ``deblur-rotate train blur-encoder``."""

    p = stages.add_parser(
        "blur-encoder", help="stage 3: the blurry-image encoder E_v (5 W+ codes per blurry face)",
        description="Train E_v (blurry face -> 5 W+ codes, one per sharp frame) to match the codes the frozen "
                    "sharp encoder E_s gives the 5 sharp frames, with the loss min(|E_v(x) - z|, "
                    "|E_v(x) - z_reversed|) (forward/backward ambiguity). Writes RUN/blur_encoder/ (EMA weights). "
                    "Multi-GPU: launch with torchrun --nproc_per_node N.")
    add_config_options(p, BlurEncoderConfig)
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
    add_config_options(p, Face3DConfig)
    p.add_argument("--model-from", type=Path, default=None,
                   help="real data: use the procedural model this SynthBMFD folder was rendered with "
                        "(default: the standard one of `deblur-rotate synth`)")
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
    add_config_options(p, FusionConfig)
    p.set_defaults(func=_lazy_run("fusion", "run_fusion"))


def add_deblur_baseline_parser(stages) -> None:
    """Register ``deblur-rotate train deblur-baseline``."""

    p = stages.add_parser(
        "deblur-baseline", help="baseline: direct regression of the 5 sharp frames (Jin et al.)",
        description="Train the DirectDeblurNet baseline (a U-Net regressing the 5 sharp frames from the blurry "
                    "image, L1 + Sobel edge loss under the forward/backward min); writes RUN/deblur_baseline/ "
                    "at the end. Multi-GPU: launch with torchrun --nproc_per_node N.")
    add_config_options(p, DeblurBaselineConfig)
    p.set_defaults(func=_lazy_run("deblur_baseline", "run_deblur_baseline"))


# in training order; train/all_stages.py (light already) adds ``train all`` after these
PARSER_ADDERS = (add_generator_parser, add_sharp_encoder_parser, add_blur_encoder_parser, add_face3d_parser,
                 add_fusion_parser, add_deblur_baseline_parser)

"""``deblur-rotate train all``: every stage in order, each resuming if interrupted, then the model folder.

    RUN/generator/       stage 1  StyleGAN2 G                     -> RUN/generator/generator/
    RUN/sharp_encoder/   stage 2  E_s with G fine-tuned           -> .../sharp_encoder/, .../generator/
    RUN/blur_encoder/    stage 3  E_v against E_s's codes         -> .../blur_encoder/
    RUN/face3d/          stage 4  E_3D through the renderer       -> .../face3d_encoder/
    RUN/fusion/          stage 5  F on view pairs (Δp from E_3D)  -> .../fusion/
    RUN/model/           the assembled model (pipeline.json + one folder per network; G is stage 2's)
    RUN/train_all.json   the resolved plan, and per stage: steps, wall time, machine

Recipes (``--recipe``): ``paper`` runs every stage with its own defaults (the paper's settings);
``cpu`` (the default of the ``tiny`` preset) is what the bundled model was trained with on a 2-core CPU:
no GAN stage (E_s and G train as an autoencoder from random weights), bf16 autocast where the CPU computes bf16
natively (fp32 elsewhere: ``--precision auto``), no identity or
perceptual term, higher learning rates, and an image term for E_v. :data:`RECIPES` gives each setting
with its reason; ``--set STAGE.FIELD=VALUE`` overrides any field of a stage's config.

Rerunning the same command continues where it stopped: a finished stage (its ``done.json`` names the
steps it trained) is skipped, an interrupted one resumes from its newest checkpoint, and the model
folder is re-assembled at the end. Asking for more steps than a finished stage trained continues it.
"""
from __future__ import annotations

import json
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path

from deblur_rotate.errors import UserError

__all__ = ["DEFAULT_STEPS", "STAGE_ORDER", "TrainAllPlan", "add_parser", "run_all"]

STAGE_ORDER = ("generator", "sharp_encoder", "blur_encoder", "face3d", "fusion")

# iterations per stage and preset; paper: the paper's §3.6 figures (G: StyleGAN2's FFHQ schedule at batch 32)
DEFAULT_STEPS: dict[str, dict[str, int]] = {
    "micro": {"generator": 20, "sharp_encoder": 20, "blur_encoder": 20, "face3d": 20, "fusion": 20},
    "tiny": {"generator": 2000, "sharp_encoder": 2000, "blur_encoder": 3000, "face3d": 1500, "fusion": 2000},
    "paper": {"generator": 780_000, "sharp_encoder": 1_000_000, "blur_encoder": 100_000, "face3d": 600_000,
              "fusion": 500_000},
}


# Stage settings per recipe: {stage: {config field: value}}; "steps" included. The reasons are the
# measurements in the bundled model card (MODEL_CARD.md, "Recipe"); the paper preset keeps "paper".
RECIPES: dict[str, dict[str, dict]] = {
    "paper": {},  # every stage's own defaults: the paper's losses, weights and learning rates
    "cpu": {
        # No GAN stage: 800 CPU iterations of StyleGAN2 gave head-shaped blobs (no face detected in its
        # samples), and E_s had to undo them. Trained from random weights as the decoder of an autoencoder,
        # G reaches a better reconstruction in the same time.
        "generator": {"steps": 0},
        "sharp_encoder": {
            "fresh_generator": True,
            "generator_input": "dense",  # G's 4 px layout from w_0: +0.3 dB at 650 iterations (MODEL_CARD "Recipe")
            "head_grid": 2,  # E_s's head sees a 2 x 2 feature map, not a global pool: +2 dB at 400 iterations
            "lambda_id": 0.0,  # dlib's descriptor does not tell our 64 px synthetic subjects apart (README)
            "lambda_per": 0.0,  # no VGG weights offline; the fallback features cost time and bought nothing
            "lr": 1e-3, "lr_generator": 2e-3,  # Adam at the usual autoencoder / StyleGAN2 rates, not 1e-4
            # bf16 where the CPU computes it natively: 1.7x per step on the AVX-512 BF16 CPU of sessions 1-9
            # (benchmarks/train_step_speed.py); fp32 on others, where emulated bf16 was 22x slower (session 10)
            "precision": "auto",
            "lr_decay": 0.4,  # constant lr plateaued (batch PSNR flat from 2000 to 3800); decay over the last 40%
            "steps": 6500,
        },
        "blur_encoder": {
            "lambda_image": 2.0,  # decoded frames vs sharp targets (order from the latent min): motion, not the mean
            "image_frames": 3,  # 3 of the 5 frames through G per sample and step (a new draw each step): cheaper
            "head_grid": 2, "head_bottleneck": 192,  # E_s's lever; a rank-192 head keeps the bundle under 25 MB
            "lr": 1e-3, "lr_decay": 0.4,
            "precision": "auto",
            "steps": 2000,
        },
        "face3d": {"precision": "auto", "lambda_id": 0.0, "lr": 5e-4, "steps": 1500},
        "fusion": {
            "pose_source": "gt",  # a requested angle is the angle rendered (E_3D's pose error does not enter F)
            "input_codes": "blur",  # F learns on E_v's codes, which is what the pipeline feeds it
            "lr": 5e-4, "lr_decay": 0.4, "precision": "auto", "steps": 1000,
        },
    },
}
DEFAULT_RECIPE = {"micro": "paper", "tiny": "cpu", "paper": "paper"}


@dataclass
class TrainAllPlan:
    """What ``train all`` runs (written to RUN/train_all.json)."""

    preset: str = "tiny"
    data: str = ""  # SynthBMFD folder (every stage trains on it)
    out: str = ""  # run folder
    recipe: str | None = None  # RECIPES key (None: DEFAULT_RECIPE of the preset)
    overrides: dict = field(default_factory=dict)  # stage -> {config field: value}, over the recipe
    steps: dict = field(default_factory=dict)  # stage -> iterations (missing: the recipe's, then DEFAULT_STEPS)
    batch: dict = field(default_factory=dict)  # stage -> total batch (missing: the stage's preset default)
    m: int | None = None  # blur half-window in frames (None: the data's own, 32 for SynthBMFD)
    fusion_arch: str = "FC3R"
    model_dtype: str = "float32"  # storage of the assembled model: float32 or float16
    checkpoint_every: int = 500
    seed: int = 0
    device: str | None = None
    workers: int = 0
    progress: bool = True

    def resolved(self) -> TrainAllPlan:
        if self.preset not in DEFAULT_STEPS:
            raise UserError(f"unknown preset {self.preset!r}: choose one of {', '.join(DEFAULT_STEPS)}")
        if not self.data or not Path(self.data).is_dir():
            raise UserError(f"--data {self.data!r} is not a folder: give a SynthBMFD folder "
                            "(`deblur-rotate synth --out data/synthbmfd`)")
        if self.model_dtype not in ("float32", "float16"):
            raise UserError(f"model dtype must be float32 or float16 (got {self.model_dtype!r})")
        unknown = (set(self.steps) | set(self.batch)) - set(STAGE_ORDER)
        if unknown:
            raise UserError(f"unknown stage(s) {', '.join(sorted(unknown))}: stages are {', '.join(STAGE_ORDER)}")
        recipe = DEFAULT_RECIPE[self.preset] if self.recipe is None else self.recipe
        if recipe not in RECIPES:
            raise UserError(f"unknown recipe {recipe!r}: choose one of {', '.join(RECIPES)}")
        unknown = set(self.overrides) - set(STAGE_ORDER)
        if unknown:
            raise UserError(f"--set: unknown stage(s) {', '.join(sorted(unknown))}: "
                            f"stages are {', '.join(STAGE_ORDER)}")
        settings = {stage: {**RECIPES[recipe].get(stage, {}), **self.overrides.get(stage, {})}
                    for stage in STAGE_ORDER}
        recipe_steps = {k: int(v.pop("steps")) for k, v in settings.items() if "steps" in v}
        steps = {**DEFAULT_STEPS[self.preset], **recipe_steps, **{k: int(v) for k, v in self.steps.items()}}
        for stage, values in settings.items():
            _check_fields(stage, values)
        return TrainAllPlan(**{**self.__dict__, "recipe": recipe, "overrides": settings, "steps": steps,
                               "data": str(self.data), "out": str(self.out)})


def _config_class(stage: str):
    """The config dataclass of ``stage`` (a STAGE_ORDER name), torch-free."""
    from deblur_rotate.train.configs import STAGE_CONFIGS

    return STAGE_CONFIGS[stage.replace("_", "-")]


# fields train all sets itself (from the plan and the stage order); a recipe or --set may not
_PLAN_FIELDS = {"preset", "data", "out", "generator", "sharp_encoder", "face3d_encoder", "blur_encoder", "resume",
                "progress"}


def _check_fields(stage: str, values: dict) -> None:
    """UserError unless every key of ``values`` is a settable field of the stage's config dataclass."""
    from dataclasses import fields

    names = {f.name for f in fields(_config_class(stage))} - _PLAN_FIELDS
    bad = sorted(set(values) - names)
    if bad:
        raise UserError(f"--set {stage}.{bad[0]}: {stage} has no setting {bad[0]!r} "
                        f"(settings: {', '.join(sorted(names))})")


def _stage_done(folder: Path, steps: int, output: Path) -> bool:
    """A stage is done when it wrote its output and its done.json names at least ``steps`` iterations."""
    marker = folder / "done.json"
    if not marker.is_file() or not (output / "model.safetensors").is_file():
        return False
    try:
        return int(json.loads(marker.read_text())["steps"]) >= steps
    except (ValueError, KeyError, TypeError):
        return False


def _has_checkpoint(folder: Path) -> bool:
    from deblur_rotate.train.checkpoint import latest_checkpoint

    return latest_checkpoint(folder / "checkpoints") is not None


def _common(plan: TrainAllPlan, stage: str, folder: Path) -> dict:
    out = {"out": str(folder), "steps": plan.steps[stage], "seed": plan.seed, "device": plan.device,
           "workers": plan.workers, "progress": plan.progress, "checkpoint_every": plan.checkpoint_every,
           "resume": _has_checkpoint(folder)}
    out.update(plan.overrides.get(stage, {}))
    if stage in plan.batch:
        out["batch"] = int(plan.batch[stage])
    return out


def _build(plan: TrainAllPlan, stage: str, run: Path):
    """(stage object, output network folder) for ``stage``; the stage runs with ``.run()``."""
    folder = run / stage
    common = _common(plan, stage, folder)
    m = {} if plan.m is None else {"m": plan.m}
    es_run = run / "sharp_encoder"
    if stage == "generator":
        from deblur_rotate.train.gan import GeneratorConfig, GeneratorStage

        return GeneratorStage(GeneratorConfig(preset=plan.preset, data=plan.data, all_frames=True, mirror=True,
                                              **m, **common)), folder / "generator"
    if stage == "sharp_encoder":
        from deblur_rotate.train.sharp_encoder import SharpEncoderConfig, SharpEncoderStage

        fresh = plan.steps["generator"] == 0  # no GAN stage: G starts from random weights
        common["fresh_generator"] = fresh
        return SharpEncoderStage(SharpEncoderConfig(preset=plan.preset, data=plan.data,
                                                    generator="" if fresh else str(run / "generator" / "generator"),
                                                    **m, **common)), folder / "sharp_encoder"
    if stage == "blur_encoder":
        from deblur_rotate.train.blur_encoder import BlurEncoderConfig, BlurEncoderStage

        return BlurEncoderStage(BlurEncoderConfig(preset=plan.preset, data=plan.data,
                                                  sharp_encoder=str(es_run / "sharp_encoder"),
                                                  generator=str(es_run / "generator"), **m, **common)), \
            folder / "blur_encoder"
    if stage == "face3d":
        from deblur_rotate.train.face3d import Face3DConfig, Face3DStage

        return Face3DStage(Face3DConfig(preset=plan.preset, data=plan.data, **m, **common)), \
            folder / "face3d_encoder"
    if stage == "fusion":
        from deblur_rotate.train.fusion import FusionConfig, FusionStage

        if common.get("input_codes") == "blur":  # F on E_v's codes: stage 3's E_v
            common["blur_encoder"] = str(_output_folder(run, "blur_encoder"))
        return FusionStage(FusionConfig(preset=plan.preset, data=plan.data, arch=plan.fusion_arch,
                                        sharp_encoder=str(es_run / "sharp_encoder"),
                                        generator=str(es_run / "generator"),
                                        face3d_encoder=str(run / "face3d" / "face3d_encoder"), **m, **common)), \
            folder / "fusion"
    raise ValueError(stage)


def training_crop(data: str, size: int, m: int | None) -> dict:
    """pipeline.json's ``crop``: landmark templates of the training framing, from SynthBMFD's landmarks.

    A ``template`` crop (:func:`deblur_rotate.faces.template_crop_from_landmarks`), not the FFHQ square: SynthBMFD
    is framed by its rig camera, and on a turned head the FFHQ square (eyes and mouth) moves the head off centre and
    zooms in (session 8: 6.2 px mean landmark displacement against 2.4 with templates, 64 px images).
    """
    import numpy as np

    from deblur_rotate.data.synthbmfd import SynthBMFD
    from deblur_rotate.faces import template_crop_from_landmarks

    ds = SynthBMFD(data, split="train", m=m or 32, size=size)
    idx = np.linspace(0, len(ds) - 1, min(256, len(ds))).round().astype(int)
    marks = np.stack([ds[int(i)]["landmarks"].numpy() for i in idx])
    return template_crop_from_landmarks(marks, size, source=f"SynthBMFD {Path(data).name} train landmarks")


def run_all(plan: TrainAllPlan) -> Path:
    """Run every stage of ``plan`` (skipping finished ones), assemble RUN/model; returns its path."""
    import torch

    from deblur_rotate.files import atomic_write_json
    from deblur_rotate.pipeline import assemble_model
    from deblur_rotate.train import distributed as dist_utils

    plan = plan.resolved()
    lead = dist_utils.setup(plan.device).rank == 0  # under torchrun only rank 0 writes the plan and the model
    run = Path(plan.out)
    if run.exists() and not run.is_dir():
        raise UserError(f"--out {run} is a file; give a folder for the run")
    run.mkdir(parents=True, exist_ok=True)
    log_path = run / "train_all.json"
    log = json.loads(log_path.read_text()) if log_path.is_file() else {}
    log["plan"] = plan.__dict__
    log.setdefault("stages", {})
    machine = {"platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
               "cpu_threads": torch.get_num_threads(),
               "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
    for number, stage in enumerate(STAGE_ORDER, 1):
        folder = run / stage
        steps = plan.steps[stage]
        output = _output_folder(run, stage)
        say = print if lead else (lambda *a, **k: None)
        if stage == "generator" and steps == 0:
            say(f"[{number}/5] {stage}: skipped (0 steps: E_s trains G from random weights)")
            continue
        if _stage_done(folder, steps, output):
            say(f"[{number}/5] {stage}: done ({steps} steps), skipped")
            continue
        say(f"[{number}/5] {stage}: {'resuming' if _has_checkpoint(folder) else 'training'} to {steps} steps "
            f"in {folder}")
        start = time.time()
        stage_obj, output = _build(plan, stage, run)
        losses = stage_obj.run()
        wall = time.time() - start
        entry = log["stages"].get(stage, {})
        entry.update({"steps": steps, "wall_s_last_session": round(wall, 1),
                      "wall_s_total": round(entry.get("wall_s_total", 0.0) + wall, 1),
                      "machine": machine, "last_losses": {k: float(v) for k, v in losses.items()}})
        log["stages"][stage] = entry
        if lead:
            atomic_write_json(folder / "done.json", {"steps": steps, "output": str(output)})
            atomic_write_json(log_path, log)
        dist_utils.barrier()

    if not lead:
        return run / "model"
    size = _resolution(plan.preset)
    crop = training_crop(plan.data, size, plan.m)
    dtype = torch.float16 if plan.model_dtype == "float16" else None
    model = assemble_model(run / "model", generator=run / "sharp_encoder" / "generator",
                           blur_encoder=_output_folder(run, "blur_encoder"),
                           face3d_encoder=_output_folder(run, "face3d"), fusion=_output_folder(run, "fusion"),
                           preset=plan.preset, crop=crop, dtype=dtype, overwrite=True,
                           extra={"train_all": str(log_path.name), "steps": plan.steps})
    log["model"] = str(model)
    atomic_write_json(log_path, log)
    return model


def _output_folder(run: Path, stage: str) -> Path:
    name = {"generator": "generator", "sharp_encoder": "sharp_encoder", "blur_encoder": "blur_encoder",
            "face3d": "face3d_encoder", "fusion": "fusion"}[stage]
    return run / stage / name


def _resolution(preset: str) -> int:
    from deblur_rotate.models.stylegan2 import stylegan2_config

    return int(stylegan2_config(preset)["img_resolution"])


# ------------------------------------------------------------------------------------------------- CLI

def _parse_stage_values(items: list[str] | None, what: str) -> dict:
    out = {}
    for item in items or []:
        if "=" not in item:
            raise UserError(f"--{what} takes STAGE=N (e.g. generator=2000), got {item!r}")
        key, value = item.split("=", 1)
        key = key.replace("-", "_")
        try:
            out[key] = int(value)
        except ValueError:
            raise UserError(f"--{what} {item!r}: N must be an integer") from None
    return out


def _parse_overrides(items: list[str] | None) -> dict:
    """``["sharp_encoder.lr=5e-4", ...]`` -> ``{"sharp_encoder": {"lr": 0.0005}}`` (values parsed as JSON,
    else kept as strings); UserError on a malformed item."""
    out: dict[str, dict] = {}
    for item in items or []:
        key, sep, raw = item.partition("=")
        stage, dot, name = key.partition(".")
        if not sep or not dot or not stage or not name:
            raise UserError(f"--set takes STAGE.FIELD=VALUE (e.g. sharp_encoder.lr=5e-4), got {item!r}")
        try:
            value = json.loads(raw)
        except ValueError:
            value = raw
        out.setdefault(stage.replace("-", "_"), {})[name.replace("-", "_")] = value
    return out


def add_parser(stages) -> None:
    """Register ``deblur-rotate train all``."""
    p = stages.add_parser(
        "all", help="every stage in order (G, E_s, E_v, E_3D, F), resumable, then the model folder",
        description="Train G, E_s, E_v, E_3D and F one after another on a SynthBMFD folder, each resuming if "
                    "interrupted (rerun the same command), and assemble RUN/model (pipeline.json + one folder "
                    "per network) for `deblur-rotate run --model RUN/model`.")
    p.add_argument("--preset", choices=tuple(DEFAULT_STEPS), default="tiny", help="network sizes (default tiny)")
    p.add_argument("--data", required=True, type=Path, help="SynthBMFD folder")
    p.add_argument("--out", required=True, type=Path, help="run folder (one sub-folder per stage, model/)")
    p.add_argument("--recipe", choices=tuple(RECIPES), default=None,
                   help="stage settings: paper (every stage's defaults, the paper's) or cpu (the bundled tiny "
                        "model's CPU recipe: no GAN stage, bf16 where native, no identity term, an image term for "
                        "E_v; see RECIPES in train/all_stages.py); default: cpu for --preset tiny, paper otherwise")
    p.add_argument("--set", dest="overrides", nargs="*", metavar="STAGE.FIELD=VALUE", default=None,
                   help="override one setting of a stage, e.g. sharp_encoder.lr=5e-4 blur_encoder.lambda_image=2 "
                        "(values are JSON: numbers, true/false, null, or a plain string)")
    p.add_argument("--steps", nargs="*", metavar="STAGE=N",
                   help=f"iterations per stage, e.g. generator=2000 fusion=500 (stages: {', '.join(STAGE_ORDER)}; "
                        "default per preset)")
    p.add_argument("--batch", nargs="*", metavar="STAGE=N", help="total batch per stage (default per preset)")
    p.add_argument("--m", type=int, default=None, help="blur half-window in frames (default: the data's own)")
    p.add_argument("--fusion-arch", default="FC3R", help="F's architecture, FC<x> or FC<x>R (default FC3R)")
    p.add_argument("--fp16-model", action="store_true", help="store the assembled model's weights as float16")
    p.add_argument("--checkpoint-every", type=int, default=500)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", choices=("cpu", "cuda"), default=None)
    p.add_argument("--workers", type=int, default=0, help="DataLoader worker processes (default 0)")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    p.set_defaults(func=_run_cli)


def _run_cli(args) -> int:
    plan = TrainAllPlan(preset=args.preset, data=str(args.data), out=str(args.out), recipe=args.recipe,
                        overrides=_parse_overrides(args.overrides),
                        steps=_parse_stage_values(args.steps, "steps"), batch=_parse_stage_values(args.batch, "batch"),
                        m=args.m, fusion_arch=args.fusion_arch,
                        model_dtype="float16" if args.fp16_model else "float32",
                        checkpoint_every=args.checkpoint_every, seed=args.seed, device=args.device,
                        workers=args.workers, progress=args.progress)
    model = run_all(plan)
    print(f"model written to {model}; try: deblur-rotate run -i PHOTO -o out --model {model}")
    return 0

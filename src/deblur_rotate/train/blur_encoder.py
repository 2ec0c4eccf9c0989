"""Stage 3: the blurry-image encoder E_v (paper §3.3), distilled from the sharp encoder E_s.

E_v maps one blurry face x to 5 W+ codes, one per sharp frame of the instant the shutter was open. Its
targets are the codes the (frozen) sharp encoder gives the 5 sharp frames, ``z = E_s(y_1..y_5)``
(``[B, 5, num_ws, w_dim]``, computed on the fly under ``no_grad``). A blurry image does not tell which
way time ran, so the loss keeps the better of the two orders per sample::

    L = mean_b min( |E_v(x_b) - z_b|, |E_v(x_b) - reversed(z_b)| )

with ``|.|`` the mean absolute (``--latent-loss l1``, default) or squared (``l2``) difference over
frames, W+ entries and channels (eq. 2, :func:`deblur_rotate.losses.objectives.blur_encoder_loss`). An
optional image term (``--lambda-image``, default 0: the paper has none) adds the L1 between
``G.synthesis(E_v(x))`` and the sharp targets, in the order the latent minimum chose; G is the fine-tuned
generator of stage 2, frozen.

Choices the paper leaves open, made here and written to RUN/config.json:

* E_v starts at the teacher's average face: its head is zero-initialised and its latent offset is
  ``E_s.latent_offset`` (G's mean W), so the untrained E_v predicts E_s's offset for every frame.
* Augmentation: ``--mirror`` (default on) adds a mirrored copy of every sample (blurry image and targets
  flipped together; the codes are recomputed from the flipped targets); ``--jitter`` (default on for the
  ``paper`` preset only) applies the same colour jitter to the blurry image and its targets
  (:func:`deblur_rotate.data.readers.jitter_batch`, drawn from a generator seeded by ``(seed, step)``, so
  resuming is exact).
* The saved network is the EMA copy (half-life ``ema_images``), as for G and E_s.

Run folder: ``RUN/config.json``, ``RUN/checkpoints/``, ``RUN/tb/`` (scalars ``loss/latent``,
``loss/reversed`` = the fraction of samples where the reversed order won, ...),
``RUN/samples/step-XXXXXXXX.png`` (per row: the blurry input, the 5 frames G decodes from the EMA E_v's
codes, the 5 sharp targets) and at the end ``RUN/blur_encoder/`` (``config.json`` + ``model.safetensors``).

Usage::

    deblur-rotate train blur-encoder --preset tiny --data data/synthbmfd \\
        --sharp-encoder runs/es/sharp_encoder --generator runs/es/generator --out runs/ev

Top-level imports stay light: every ``deblur-rotate`` call imports this module.
"""
from __future__ import annotations

import copy
import os
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

import torch

from deblur_rotate.errors import UserError
from deblur_rotate.train import distributed as dist_utils
from deblur_rotate.train.commands import run_stage_cli
from deblur_rotate.train.configs import config_from_args
from deblur_rotate.train.configs.blur_encoder import NUM_FRAMES, BlurEncoderConfig  # re-exported: the stage's settings

__all__ = [
    "NUM_FRAMES",
    "OUTPUT_FOLDER",
    "BlurEncoderConfig",
    "BlurEncoderStage",
    "BlurSequences",
    "open_blur_dataset",
    "run_blur_encoder",
]

OUTPUT_FOLDER = "blur_encoder"


# ------------------------------------------------------------------------------------------------- data

def open_blur_dataset(kind: str, root: str | os.PathLike, size: int, m: int | None, split: str = "train"):
    """A reader of blurry images with their 5 sharp frames at ``size`` px (see
    :func:`deblur_rotate.data.readers.open_training_dataset`)."""
    from deblur_rotate.data.readers import open_training_dataset

    return open_training_dataset(kind, root, size, m=m, split=split, needs="blurry images with their sharp frames")


class BlurSequences(torch.utils.data.Dataset):
    """Blurry images and their sharp frames from any reader, optionally with mirrored copies.

    Item: ``{"blurry": [3, R, R], "targets": [5, 3, R, R]}`` in [-1, 1]. With ``mirror``, item ``2 i`` is
    sample ``i`` and item ``2 i + 1`` its horizontal mirror (blurry image and targets flipped together);
    deterministic in the index. For a two-view reader item ``[2, ...]``, the first view.
    """

    def __init__(self,
                 dataset: torch.utils.data.Dataset,  # a reader (open_dataset) giving blurry and targets
                 mirror: bool = True,                 # add horizontally mirrored copies
                 ):
        self.dataset = dataset
        self.copies = 2 if mirror else 1

    def __len__(self) -> int:
        return len(self.dataset) * self.copies

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        i, flip = divmod(int(i), self.copies)
        sample = self.dataset[i]
        blurry, targets = sample["blurry"].float(), sample["targets"].float()
        if blurry.dim() == 4:  # a pair of views [2, 3, R, R]
            blurry, targets = blurry[0], targets[0]
        if targets.shape[0] != NUM_FRAMES:
            raise UserError(f"samples must have {NUM_FRAMES} sharp targets, got {targets.shape[0]}")
        if flip:
            blurry, targets = blurry.flip(-1), targets.flip(-1)
        return {"blurry": blurry, "targets": targets}


# ------------------------------------------------------------------------------------------------- stage

class BlurEncoderStage:
    """Builds E_v, its optimizer and EMA copy, the frozen teachers (E_s, G) and the data stream, and runs
    them through the shared Trainer. ``run()`` writes RUN/blur_encoder/ (EMA weights).

    Attributes after construction: ``E`` (E_v, bare module), ``E_ema``, ``E_s``, ``G`` (frozen, eval),
    ``opt``, ``trainer``, ``config`` (resolved), ``info`` (DistInfo), ``resolution``, ``dataset``.
    """

    def __init__(self, config: BlurEncoderConfig):
        from deblur_rotate.models.encoders import BlurEncoder, encoder_config
        from deblur_rotate.train.loop import MixedPrecision, Trainer, ema_beta_for, linear_decay

        self.config = c = config.resolved()
        self.info = info = dist_utils.setup(c.device)
        if c.batch % info.world_size:
            raise UserError(f"--batch {c.batch} must be a multiple of the number of processes ({info.world_size})")
        self.batch_per_rank = c.batch // info.world_size
        self.out = Path(c.out)
        dev = info.device

        self.G = self._load_generator().to(dev).eval().requires_grad_(False)
        self.E_s = self._load_sharp_encoder().to(dev).eval().requires_grad_(False)
        self.resolution = self.G.img_resolution
        self.dataset = BlurSequences(open_blur_dataset(c.kind, c.data, self.resolution, c.m, c.split), c.mirror)

        dist_utils.seed_all(c.seed, per_rank=False)  # the same initial weights on every rank
        self.e_config = dict(num_frames=NUM_FRAMES, num_ws=self.G.num_ws, w_dim=self.G.w_dim,
                             **encoder_config(c.preset, "blur"))
        for name in ("head_grid", "head_bottleneck"):
            if getattr(c, name):
                self.e_config[name] = int(getattr(c, name))
        self.E = BlurEncoder(**self.e_config, pretrained_backbone=c.backbone_weights).to(dev).train()
        self.E.set_latent_offset(self.E_s.latent_offset)
        if c.init_from:
            self._start_from(Path(c.init_from))
        self.E_ema = copy.deepcopy(self.E).eval().requires_grad_(False)
        self.E_ddp = dist_utils.wrap_ddp(self.E)
        self.opt = torch.optim.Adam(self.E.parameters(), lr=c.lr, betas=(0.9, 0.999))
        self.amp = MixedPrecision.from_precision(c.precision, dev)
        dist_utils.seed_all(c.seed)

        count = min(c.grid, len(self.dataset))
        picks = [round(i * (len(self.dataset) - 1) / max(count - 1, 1)) for i in range(count)]
        self.grid_items = [self.dataset[i] for i in picks]
        total_batch = c.batch

        def ema_beta(step: int) -> float:
            return ema_beta_for(total_batch, c.ema_images, 0.05, step)

        run_config = {**asdict(c), "stage": "blur-encoder", "world_size": info.world_size,
                      "blur_encoder": self.e_config, "sharp_encoder_config": self.E_s.config,
                      "generator_config": self.G.config, "resolution": self.resolution,
                      "dataset_items": len(self.dataset)}
        run_config.pop("resume", None)
        run_config.pop("progress", None)
        self.trainer = Trainer(
            run_dir=self.out, networks={"E": self.E}, network_configs={"E": self.e_config},
            optimizers={"E": self.opt}, step_fn=self.step_fn, data=self.batches, total_steps=c.steps,
            checkpoint_every=c.checkpoint_every, log_every=c.log_every, ema={"E": self.E_ema}, ema_beta=ema_beta,
            amp=self.amp, run_config=run_config, image_fn=self.image_fn if count > 0 else None,
            image_every=c.image_every if count > 0 else 0, progress=c.progress,
            lr_factor=linear_decay(c.steps, c.lr_decay))

    # ------------------------------------------------------------------------------------------ setup
    def _load_generator(self):
        from deblur_rotate.models.io import load_pretrained
        from deblur_rotate.models.stylegan2 import preset_generator

        c = self.config
        if not c.generator:
            raise UserError("--generator is required: the fine-tuned generator folder "
                            "(RUN/generator from `deblur-rotate train sharp-encoder`)")
        folder = Path(c.generator)
        if not folder.is_dir():
            raise UserError(f"generator folder {folder} not found; give RUN/generator of "
                            "`deblur-rotate train sharp-encoder` (config.json + model.safetensors)")
        G = preset_generator(c.preset, folder)
        return load_pretrained(G, folder)  # UserError naming keys/shapes (and the presets) on another preset

    def _start_from(self, folder: Path) -> None:
        """Replace E_v's initial weights by a trained E_v's (fine-tuning); a resumed run overrides them."""
        from deblur_rotate.models.io import load_pretrained

        if not folder.is_dir():
            raise UserError(f"--init-from {folder}: folder not found; give a blur encoder folder "
                            "(RUN/blur_encoder, or MODEL/blur_encoder of a model folder)")
        load_pretrained(self.E, folder)  # UserError naming keys/shapes if its architecture differs
        self.E.train()

    def _load_sharp_encoder(self):
        """The teacher E_s (any backbone) whose codes fit G (num_ws, w_dim); UserError otherwise."""
        from deblur_rotate.models.io import check_codes_match, load_pretrained

        c = self.config
        if not c.sharp_encoder:
            raise UserError("--sharp-encoder is required: the sharp encoder folder "
                            "(RUN/sharp_encoder from `deblur-rotate train sharp-encoder`)")
        folder = Path(c.sharp_encoder)
        if not folder.is_dir():
            raise UserError(f"sharp encoder folder {folder} not found; give RUN/sharp_encoder of "
                            "`deblur-rotate train sharp-encoder` (config.json + model.safetensors)")
        E_s = load_pretrained("encoders.sharp", folder)  # UserError on another kind or damaged files
        check_codes_match(E_s, self.G.num_ws, self.G.w_dim, f"sharp encoder {folder}",
                          f"the generator of preset {c.preset}",
                          "give the E_s trained with this generator (same --preset)")
        return E_s

    def batches(self, start_step: int) -> Iterator[dict[str, torch.Tensor]]:
        """Batches ``{blurry [B, 3, R, R], targets [B, 5, 3, R, R]}`` for iterations start_step, start_step + 1, ..."""
        c = self.config
        return dist_utils.resumable_batches(self.dataset, self.batch_per_rank, c.seed, start_step, c.workers,
                                            self.info.device)

    # ------------------------------------------------------------------------------------------ step
    def _augment(self, batch: dict[str, torch.Tensor], step: int) -> dict[str, torch.Tensor]:
        """Colour jitter (when on), drawn from a generator seeded by (seed, step, rank): exact on resume."""
        if not self.config.jitter:
            return batch
        from deblur_rotate.data.mixing import jitter_batch

        g = torch.Generator().manual_seed((self.config.seed * 1_000_003 + step) * 64 + self.info.rank)
        return jitter_batch(batch, g)

    @torch.no_grad()
    def teacher_codes(self, targets: torch.Tensor) -> torch.Tensor:
        """E_s codes of the sharp targets: ``[B, 5, 3, R, R]`` -> ``[B, 5, num_ws, w_dim]`` (float32)."""
        with self.amp.autocast():
            z = self.E_s(targets.flatten(0, 1))  # [B * 5, num_ws, w_dim]
        return z.float().view(*targets.shape[:2], *z.shape[1:])

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Frames G renders from codes: ``[B, T, num_ws, w_dim]`` -> ``[B, T, 3, R, R]`` in about [-1, 1]."""
        images = self.G.synthesis(codes.flatten(0, 1), noise_mode="const")  # [B * T, 3, R, R]
        return images.float().view(*codes.shape[:2], *images.shape[1:])

    def step_fn(self, batch: dict[str, torch.Tensor], step: int) -> dict[str, torch.Tensor]:
        """One Adam step of E_v on the order-invariant latent loss (+ the optional image term)."""
        from deblur_rotate.image_metrics import psnr
        from deblur_rotate.losses.objectives import blur_encoder_loss

        c, amp, dev = self.config, self.amp, self.info.device
        batch = {k: batch[k].to(dev, non_blocking=True).float() for k in ("blurry", "targets")}
        batch = self._augment(batch, step)
        blurry, targets = batch["blurry"], batch["targets"]  # [B, 3, R, R], [B, 5, 3, R, R]
        z = self.teacher_codes(targets)  # [B, 5, num_ws, w_dim]
        self.opt.zero_grad(set_to_none=True)
        with amp.autocast():
            pred = self.E_ddp(blurry)  # [B, 5, num_ws, w_dim]

        def decode(codes: torch.Tensor) -> torch.Tensor:  # [B, K, num_ws, w_dim] -> [B, K, 3, R, R]
            with amp.autocast():
                return self.decode(codes)

        pick = self.image_frame_indices(step) if c.lambda_image > 0 else None  # [K] frames of the image term
        total, terms, rev, decoded = blur_encoder_loss(pred.float(), z,
                                                       kind=c.latent_loss, lambda_image=c.lambda_image,
                                                       decode=decode, targets=targets, frame_indices=pick)
        amp.backward(total)
        amp.step(self.opt)
        out = {k: v.detach() for k, v in terms.items()}
        out["total"] = total.detach()
        out["reversed"] = rev.float().mean()  # fraction of samples where the reversed order won
        if decoded is not None:
            frames, in_order = decoded
            out["psnr"] = psnr(frames.detach().flatten(0, 1), in_order.flatten(0, 1)).mean()
        return out

    def image_frame_indices(self, step: int) -> torch.Tensor:
        """The ``image_frames`` of the 5 frames (sorted indices ``[K]``) decoded for the image term at ``step``:
        all of them by default; else a draw seeded by (seed, step), the same on every rank and on resume."""
        k = self.config.image_frames
        if k >= NUM_FRAMES:
            return torch.arange(NUM_FRAMES)
        g = torch.Generator().manual_seed(self.config.seed * 1_000_003 + step)
        return torch.randperm(NUM_FRAMES, generator=g)[:k].sort().values

    # ------------------------------------------------------------------------------------------ images
    @torch.no_grad()
    def predict_grid(self) -> torch.Tensor:
        """``[rows * 11, 3, R, R]``: per grid sample the blurry input, the 5 frames G decodes from the EMA
        E_v's codes and the 5 sharp targets."""
        dev = self.info.device
        blurry = torch.stack([it["blurry"] for it in self.grid_items]).to(dev)
        targets = torch.stack([it["targets"] for it in self.grid_items]).to(dev)
        frames = self.decode(self.E_ema(blurry)).clamp(-1, 1)  # [rows, 5, 3, R, R]
        rows = torch.cat([blurry[:, None], frames, targets], 1)  # [rows, 11, 3, R, R]
        return rows.flatten(0, 1).cpu()

    def image_fn(self, step: int) -> dict[str, torch.Tensor]:
        """Writes RUN/samples/step-XXXXXXXX.png (rank 0) and returns the grid for TensorBoard."""
        from deblur_rotate.train.loop import write_sample_grid

        imgs = self.predict_grid()
        write_sample_grid(self.out, step, imgs, nrow=1 + 2 * NUM_FRAMES)
        return {"blur_encoder": imgs}

    # ------------------------------------------------------------------------------------------ run
    def _check_resume_config(self) -> None:
        """A clear UserError when the checkpoint to resume holds an E_v of another configuration."""
        from deblur_rotate.train.checkpoint import resumed_config_mismatch

        mismatch = resumed_config_mismatch(self.out, "E", self.e_config)
        if mismatch is None:
            return
        folder, saved, diff = mismatch
        raise UserError(f"{folder} holds a blur encoder of another configuration (differing: {', '.join(diff)}) "
                        f"than this run's --preset {self.config.preset}; resume with the run's own preset or "
                        "choose another --out")

    def run(self) -> dict[str, float]:
        """Train (resuming first when ``config.resume``), then write RUN/blur_encoder/ (EMA E_v). Returns the
        last losses."""
        from deblur_rotate.models.io import save_pretrained

        if self.config.resume:
            self._check_resume_config()
            self.trainer.resume()
        losses = self.trainer.train()
        if self.info.rank == 0:
            save_pretrained(self.E_ema, self.out / OUTPUT_FOLDER)
        dist_utils.barrier()
        return losses


# ------------------------------------------------------------------------------------------------- CLI

def run_blur_encoder(args) -> int:
    config = config_from_args(BlurEncoderConfig, args)
    return run_stage_cli(BlurEncoderStage, config, f"E_v written to {Path(config.out) / OUTPUT_FOLDER}")

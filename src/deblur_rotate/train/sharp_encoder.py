"""Stage 2: the sharp-image encoder E_s, trained with the generator G fine-tuned (paper §3.2, §3.6).

E_s maps a sharp face y to W+ codes; G.synthesis renders them back. Both are trained on

    l_s = lambda_id L_id + lambda_per L_per + lambda_edge L_edge + lambda_l1 L_1        (image terms)
        + lambda_g(step) |G_init - G|^2                                                   (G kept near its start)
        + lambda_s |1 - |E_s(y)| / |w|_ref|                                               (codes at W's scale)

(eq. 1, :func:`deblur_rotate.losses.objectives.sharp_encoder_loss`) with the paper's weights (lambda_id 0.5,
lambda_per 1e-6, lambda_edge 0.2, lambda_g 1, lambda_s 1: the defaults of :class:`SharpEncoderConfig`) and
skin pixels counting double in L_1 and L_edge (:class:`deblur_rotate.skin.SkinWeights`).

Choices the paper leaves open, made here and written to RUN/config.json:

* "lambda_g relaxed during training": lambda_g falls linearly from its value to 0 over
  ``g_relax_steps`` iterations (default: the first half of the run), then G is free.
* ``|E_s(y)|`` is measured against ``|w|_ref``, the mean norm of codes from G's mapping network (W's
  vectors have norms far from 1); see :func:`deblur_rotate.losses.latent_norm_loss`.
* L_id: the ported dlib face-recognition ResNet on 150 x 150 chips cut (differentiably) along dlib's
  alignment of the sample's 68 landmarks; without landmarks (NaN), a fixed chip covering the image centre.
* E_s starts at G's mean W (its head is zero-initialised, see models/encoders.py); G runs with
  ``noise_mode='const'``, as at inference.
* EMA copies of E_s and G (half-life ``ema_images``) are what RUN/sharp_encoder/ and RUN/generator/ hold.

Usage::

    deblur-rotate train sharp-encoder --preset tiny --data data/synthbmfd --generator runs/g/generator --out runs/es
"""
from __future__ import annotations

import copy
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from deblur_rotate.errors import UserError
from deblur_rotate.train import distributed as dist_utils
from deblur_rotate.train.commands import run_stage_cli
from deblur_rotate.train.configs import config_from_args
from deblur_rotate.train.configs.sharp_encoder import SharpEncoderConfig  # re-exported: the stage's settings

__all__ = [
    "SharpEncoderConfig",
    "SharpEncoderStage",
    "SharpFaces",
    "central_chip_transform",
    "g_weight_at",
    "mean_w_norm",
]


# ------------------------------------------------------------------------------------------------- pure helpers

def g_weight_at(step: int, weight: float, relax_steps: int) -> float:
    """lambda_g at ``step``: ``weight`` falling linearly to 0 at ``relax_steps`` (0 steps: always 0)."""
    if relax_steps <= 0:
        return 0.0
    return float(weight) * max(0.0, 1.0 - step / relax_steps)


@torch.no_grad()
def mean_w_norm(generator, num: int = 2048, seed: int = 0) -> float:
    """Mean Euclidean norm of W codes G's mapping network gives for ``num`` random z (truncation 1)."""
    g = torch.Generator().manual_seed(seed)
    dev = next(generator.parameters()).device
    z = torch.randn(num, generator.z_dim, generator=g).to(dev)
    ws = generator.mapping(z, update_w_avg=False)  # [num, num_ws, w_dim], identical entries
    return float(ws[:, 0].norm(dim=-1).mean())


def central_chip_transform(size: int, chip: int = 150, fraction: float = 0.8) -> np.ndarray:
    """[2, 3] chip pixel -> image pixel map of a square chip covering the central ``fraction`` of a
    ``size`` x ``size`` image (used for faces without landmarks)."""
    side = fraction * (size - 1)
    scale = side / (chip - 1)
    offset = (size - 1 - side) / 2
    return np.array([[scale, 0.0, offset], [0.0, scale, offset]])


# ------------------------------------------------------------------------------------------------- data

class SharpFaces(torch.utils.data.Dataset):
    """Sharp faces of any reader with their identity-chip geometry.

    Item: ``{"image": [3, R, R] in [-1, 1], "chip": [2, 3] float32 chip pixel -> image pixel map}``.
    Item ``i`` is the middle target of sample ``i``; with ``all_frames`` every one of the 5 targets is an
    item; with ``mirror`` each also appears mirrored (landmarks renumbered). Deterministic in ``i``.
    """

    def __init__(self, dataset: torch.utils.data.Dataset,  # a reader (open_dataset) giving targets, target_landmarks
                 all_frames: bool = True,                     # all 5 sharp targets, not only the middle one
                 mirror: bool = True,                         # add horizontally mirrored copies
                 ):
        self.dataset = dataset
        self.frames = 5 if all_frames else 1
        self.copies = 2 if mirror else 1

    def __len__(self) -> int:
        return len(self.dataset) * self.frames * self.copies

    def __getitem__(self, i: int) -> dict:
        from deblur_rotate.data.blur import mirror_landmarks
        from deblur_rotate.models.identity import chip_transforms_from_landmarks

        i, flip = divmod(int(i), self.copies)
        i, frame = divmod(i, self.frames)
        k = 2 if self.frames == 1 else frame
        if hasattr(self.dataset, "load_target"):  # SynthBMFD: one PNG, not the whole blur window
            target = self.dataset.load_target(i, k)
            image, landmarks = target["image"].float(), target["landmarks"].float()
        else:
            sample = self.dataset[i]
            targets, marks = sample["targets"], sample.get("target_landmarks")
            if targets.dim() == 5:  # a mirrored pair [2, 5, 3, S, S]: the first view
                targets, marks = targets[0], None if marks is None else marks[0]
            image = targets[k].float()
            landmarks = None if marks is None else marks[k].float()
        size = image.shape[-1]
        if flip:
            image = image.flip(-1)
            landmarks = None if landmarks is None else mirror_landmarks(landmarks, size)
        if landmarks is not None and bool(torch.isfinite(landmarks).all()):
            chip = chip_transforms_from_landmarks(landmarks[None].numpy())[0]
        else:
            chip = central_chip_transform(size)
        return {"image": image, "chip": torch.as_tensor(chip, dtype=torch.float32)}


# ------------------------------------------------------------------------------------------------- stage

class SharpEncoderStage:
    """Builds E_s, G (fine-tuned), their optimizers and EMA copies, the loss networks and the data
    stream, and runs them through the shared Trainer. ``run()`` writes RUN/sharp_encoder/ and
    RUN/generator/ (EMA weights)."""

    def __init__(self, config: SharpEncoderConfig):
        from deblur_rotate.losses import PerceptualFeatures
        from deblur_rotate.models.encoders import SharpEncoder, encoder_config
        from deblur_rotate.models.identity import load_dlib_face_recognition
        from deblur_rotate.skin import SkinWeights
        from deblur_rotate.train.loop import MixedPrecision, Trainer, ema_beta_for, linear_decay

        self.config = c = config.resolved()
        self.info = info = dist_utils.setup(c.device)
        if c.batch % info.world_size:
            raise UserError(f"--batch {c.batch} must be a multiple of the number of processes ({info.world_size})")
        self.batch_per_rank = c.batch // info.world_size
        self.out = Path(c.out)
        dev = info.device

        dist_utils.seed_all(c.seed, per_rank=False)  # a fresh G is the same on every rank
        self.G = self._load_generator().to(dev)
        self.resolution = self.G.img_resolution
        self.dataset = self._open_data()
        dist_utils.seed_all(c.seed, per_rank=False)
        self.e_config = dict(num_ws=self.G.num_ws, w_dim=self.G.w_dim, **encoder_config(c.preset, "sharp"))
        if c.head_grid:
            self.e_config["head_grid"] = int(c.head_grid)
        self.E = SharpEncoder(**self.e_config, pretrained_backbone=c.backbone_weights).to(dev).train()
        self.E.set_latent_offset(self.G.mapping.w_avg)
        if c.init_from:
            self._start_from(Path(c.init_from))
        self.w_norm_ref = mean_w_norm(self.G)
        self.G.train()
        self.G.mapping.requires_grad_(False)  # E_s replaces the mapping network
        self.G_init = {k: v.detach().clone() for k, v in self.G.synthesis.named_parameters()}
        self.E_ema = copy.deepcopy(self.E).eval().requires_grad_(False)
        self.G_ema = copy.deepcopy(self.G).eval().requires_grad_(False)
        self.E_ddp = dist_utils.wrap_ddp(self.E)
        self.G_synthesis = dist_utils.wrap_ddp(self.G.synthesis, broadcast_buffers=False) if c.lr_generator > 0 \
            else self.G.synthesis
        if c.lr_generator <= 0:
            self.G.synthesis.requires_grad_(False)

        self.opt_E = torch.optim.Adam(self.E.parameters(), lr=c.lr, betas=(0.9, 0.999))
        opts = {"E": self.opt_E}
        if c.lr_generator > 0:
            self.opt_G = torch.optim.Adam(self.G.synthesis.parameters(), lr=c.lr_generator, betas=(0.9, 0.999))
            opts["G"] = self.opt_G
        self.amp = MixedPrecision.from_precision(c.precision, dev)

        self.identity_net = load_dlib_face_recognition().to(dev) if c.lambda_id > 0 else None
        self.perceptual = PerceptualFeatures(c.vgg16_weights).to(dev) if c.lambda_per > 0 else None
        self.skin = SkinWeights(c.skin_weight) if c.skin_weight > 1 else None
        dist_utils.seed_all(c.seed)

        self.grid_batch = self._fixed_grid(c.grid) if c.grid > 0 else None
        total_batch = c.batch

        def ema_beta(step: int) -> float:
            return ema_beta_for(total_batch, c.ema_images, 0.05, step)

        run_config = {**asdict(c), "stage": "sharp-encoder", "world_size": info.world_size,
                      "sharp_encoder": self.e_config, "generator_config": self.G.config,
                      "w_norm_reference": self.w_norm_ref, "dataset_items": len(self.dataset),
                      "perceptual_features": None if self.perceptual is None else self.perceptual.kind}
        run_config.pop("resume", None)
        run_config.pop("progress", None)
        self.trainer = Trainer(
            run_dir=self.out, networks={"E": self.E, "G": self.G},
            network_configs={"E": self.e_config, "G": self.G.config}, optimizers=opts, step_fn=self.step_fn,
            data=self.batches, total_steps=c.steps, checkpoint_every=c.checkpoint_every, log_every=c.log_every,
            ema={"E": self.E_ema, "G": self.G_ema}, ema_beta=ema_beta, amp=self.amp, run_config=run_config,
            image_fn=self.image_fn if self.grid_batch is not None else None,
            image_every=c.image_every if self.grid_batch is not None else 0, progress=c.progress,
            lr_factor=linear_decay(c.steps, c.lr_decay))

    # ------------------------------------------------------------------------------------------ setup
    def _load_generator(self):
        from deblur_rotate.models.io import load_pretrained
        from deblur_rotate.models.stylegan2 import Generator, preset_generator, stylegan2_config

        c = self.config
        if c.fresh_generator:
            return Generator(**stylegan2_config(c.preset, "generator"), input_mode=c.generator_input)
        if not c.generator:
            raise UserError("--generator is required: the folder of a trained generator "
                            "(RUN/generator from `deblur-rotate train generator`), or --fresh-generator "
                            "to train G from random weights as the decoder of an autoencoder")
        folder = Path(c.generator)
        if not folder.is_dir():
            raise UserError(f"generator folder {folder} not found; train one with `deblur-rotate train generator` "
                            "or give the folder that holds its config.json + model.safetensors")
        G = preset_generator(c.preset, folder)
        return load_pretrained(G, folder)  # UserError naming keys/shapes on another preset

    def _start_from(self, folder: Path) -> None:
        """Replace E_s's initial weights by a trained E_s's (fine-tuning); a resumed run overrides them."""
        from deblur_rotate.models.io import load_pretrained

        if not folder.is_dir():
            raise UserError(f"--init-from {folder}: folder not found; give a sharp encoder folder "
                            "(RUN/sharp_encoder of `deblur-rotate train sharp-encoder`)")
        load_pretrained(self.E, folder)  # UserError naming keys/shapes if its architecture differs
        self.E.train()

    def _open_data(self) -> SharpFaces:
        from deblur_rotate.data.readers import open_training_dataset

        c = self.config
        ds = open_training_dataset(c.kind, c.data, self.resolution, m=c.m, split=c.split, needs="sharp faces")
        return SharpFaces(ds, all_frames=c.all_frames, mirror=c.mirror)

    def _fixed_grid(self, n: int) -> dict:
        """A fixed set of ``n`` training faces spread over the dataset, for the reconstruction grid."""
        idx = np.linspace(0, len(self.dataset) - 1, n).round().astype(int)
        items = [self.dataset[int(i)] for i in idx]
        return {k: torch.stack([it[k] for it in items]).to(self.info.device) for k in items[0]}

    def batches(self, start_step: int) -> Iterator[dict]:
        """Batches {image [B, 3, R, R], chip [B, 2, 3]} for iterations start_step, start_step + 1, ..."""
        c = self.config
        return dist_utils.resumable_batches(self.dataset, self.batch_per_rank, c.seed, start_step, c.workers,
                                            self.info.device)

    def step_fn(self, batch: dict, step: int) -> dict[str, torch.Tensor]:
        """One iteration: E_s and G together on a batch of sharp faces."""
        from deblur_rotate.image_metrics import psnr
        from deblur_rotate.losses.objectives import sharp_encoder_loss
        from deblur_rotate.models.identity import extract_face_chips

        c, amp, dev = self.config, self.amp, self.info.device
        target = batch["image"].to(dev, non_blocking=True).float()
        chips = batch["chip"].to(dev, non_blocking=True).float()
        self.opt_E.zero_grad(set_to_none=True)
        if c.lr_generator > 0:
            self.opt_G.zero_grad(set_to_none=True)
        with amp.autocast():
            ws = self.E_ddp(target)
            recon = self.G_synthesis(ws, noise_mode="const").float()
        identity_chips = None
        if self.identity_net is not None:  # chips [B, 3, 150, 150] of the reconstruction and the target
            identity_chips = (extract_face_chips(recon, chips), extract_face_chips(target, chips))
        lambda_g = g_weight_at(step, c.lambda_g, c.g_relax_steps)
        total, terms = sharp_encoder_loss(
            recon, target, ws.float(), lambda_l1=c.lambda_l1, lambda_edge=c.lambda_edge, lambda_s=c.lambda_s,
            lambda_id=c.lambda_id, lambda_per=c.lambda_per, lambda_g=lambda_g, w_norm_ref=self.w_norm_ref,
            pixel_weights=self.skin(target) if self.skin is not None else None, identity_chips=identity_chips,
            identity_net=self.identity_net, perceptual=self.perceptual,
            generator=self.G.synthesis if c.lr_generator > 0 else None, generator_init=self.G_init)
        amp.backward(total)
        amp.step(self.opt_E)
        if c.lr_generator > 0:
            amp.step(self.opt_G)
        out = {k: v.detach() for k, v in terms.items()}
        out["total"] = total.detach()
        out["psnr"] = psnr(recon.detach(), target).mean()
        out["lambda_g"] = torch.tensor(lambda_g)
        return out

    # ------------------------------------------------------------------------------------------ images
    @torch.no_grad()
    def image_fn(self, step: int) -> dict[str, torch.Tensor]:
        """RUN/samples/step-XXXXXXXX.png: targets (top row) over EMA reconstructions (bottom row)."""
        from deblur_rotate.train.loop import write_sample_grid

        target = self.grid_batch["image"]
        recon = self.G_ema.synthesis(self.E_ema(target), noise_mode="const").float().clamp(-1, 1)
        write_sample_grid(self.out, step, torch.cat([target, recon]).cpu(), nrow=target.shape[0])
        return {"reconstructions": torch.cat([target, recon])}

    # ------------------------------------------------------------------------------------------ run
    def run(self) -> dict[str, float]:
        """Train (resuming first when ``config.resume``), then write RUN/sharp_encoder/ and RUN/generator/."""
        from deblur_rotate.models.io import save_pretrained

        if self.config.resume:
            self.trainer.resume()
        losses = self.trainer.train()
        if self.info.rank == 0:
            save_pretrained(self.E_ema, self.out / "sharp_encoder")
            save_pretrained(self.G_ema, self.out / "generator")
        dist_utils.barrier()
        return losses


# ------------------------------------------------------------------------------------------------- CLI

def run_sharp_encoder(args) -> int:
    config = config_from_args(SharpEncoderConfig, args)
    out = Path(config.out)
    return run_stage_cli(SharpEncoderStage, config,
                         f"E_s written to {out / 'sharp_encoder'}, fine-tuned G to {out / 'generator'}")

"""Stage 1: train the StyleGAN2 generator G on sharp faces (paper §3.6; StyleGAN2's recipe).

Pure loss functions (non-saturating logistic loss, lazy R1, path-length regularisation) and
:class:`GeneratorStage`, which builds G, D, their Adam optimizers, the EMA copy of G and the data
stream, and runs them through the shared :class:`deblur_rotate.train.loop.Trainer`::

    stage = GeneratorStage(GeneratorConfig(preset="tiny", data="data/synth", out="runs/g", steps=10_000))
    stage.run()          # RUN/checkpoints/..., RUN/samples/step-XXXXXXXX.png, RUN/generator/, RUN/config.json

One iteration = one D step (logistic loss on fakes and reals, + R1 on the reals every ``r1_every``
iterations, scaled by ``r1_every``) then one G step (non-saturating loss, + path-length regularisation
every ``pl_every`` iterations when ``pl_weight > 0``). Lazy regularisation adjusts Adam as in StyleGAN2:
``lr * c`` and ``betas ** c`` with ``c = every / (every + 1)``.
"""
from __future__ import annotations

import copy
import math
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from deblur_rotate.errors import UserError
from deblur_rotate.train import distributed as dist_utils
from deblur_rotate.train.configs.generator import PRESET_DEFAULTS, GeneratorConfig  # re-exported: the stage's settings

__all__ = [
    "PRESET_DEFAULTS",
    "GeneratorConfig",
    "GeneratorStage",
    "SharpImages",
    "d_loss_logistic",
    "g_loss_nonsaturating",
    "lazy_adam",
    "path_length_penalty",
    "r1_penalty",
]


# ------------------------------------------------------------------------------------------------- losses

def g_loss_nonsaturating(fake_logits: torch.Tensor) -> torch.Tensor:
    """Non-saturating logistic generator loss: mean(softplus(-D(G(z)))).

    fake_logits: [N, 1] (or [N]) D logits of generated images (real > 0).
    Returns a scalar >= 0; it decreases as D scores the fakes higher.
    """
    return F.softplus(-fake_logits.float()).mean()


def d_loss_logistic(real_logits: torch.Tensor | None, fake_logits: torch.Tensor | None) -> torch.Tensor:
    """Logistic discriminator loss: mean(softplus(D(fake))) + mean(softplus(-D(real))).

    real_logits: [N, 1] D logits of real images, or None to leave that term out.
    fake_logits: [M, 1] D logits of generated images, or None to leave that term out.
    Returns a scalar >= 0; it decreases as D scores reals higher and fakes lower.
    """
    loss = torch.zeros((), device=(real_logits if real_logits is not None else fake_logits).device)
    if fake_logits is not None:
        loss = loss + F.softplus(fake_logits.float()).mean()
    if real_logits is not None:
        loss = loss + F.softplus(-real_logits.float()).mean()
    return loss


def r1_penalty(real_logits: torch.Tensor, real_images: torch.Tensor, create_graph: bool = True) -> torch.Tensor:
    """R1 gradient penalty per sample: |d sum(D(x)) / d x_i|^2.

    real_logits: [N, 1] D logits computed from ``real_images``.
    real_images: [N, C, H, W] with ``requires_grad=True`` (the input of that D forward).
    create_graph: keep the graph so the penalty can be back-propagated into D (True for training).
    Returns [N] squared gradient norms (multiply by gamma / 2, average, times the lazy interval).
    """
    (grad,) = torch.autograd.grad(real_logits.float().sum(), real_images, create_graph=create_graph)
    return grad.float().square().flatten(1).sum(1)


def path_length_penalty(images: torch.Tensor, ws: torch.Tensor, pl_mean: torch.Tensor, decay: float = 0.01,
                        noise: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """StyleGAN2 path-length regularisation.

    images:  [N, C, H, W] G.synthesis(ws), differentiable w.r.t. ``ws``.
    ws:      [N, num_ws, w_dim] the latents that produced ``images``.
    pl_mean: [] running mean of the path lengths (a buffer; not modified here).
    decay:   weight of this batch in the new running mean.
    noise:   [N, C, H, W] projection noise; default randn / sqrt(H * W).
    Returns (penalty [N] = (|J^T y| - new_mean)^2, new_mean [] detached).
    """
    h, w = images.shape[2], images.shape[3]
    if noise is None:
        noise = torch.randn_like(images) / math.sqrt(h * w)
    (grad,) = torch.autograd.grad((images * noise).sum(), ws, create_graph=True)
    lengths = grad.float().square().sum(2).mean(1).sqrt()                # [N]
    new_mean = pl_mean.lerp(lengths.mean().detach(), decay)
    return (lengths - new_mean).square(), new_mean


def lazy_adam(params, lr: float, betas: tuple[float, float], reg_every: int | None) -> torch.optim.Adam:
    """Adam with StyleGAN2's lazy-regularisation adjustment: with a regulariser applied every
    ``reg_every`` iterations, lr *= c and betas **= c, c = reg_every / (reg_every + 1) (None/0: none)."""
    if reg_every:
        c = reg_every / (reg_every + 1)
        lr, betas = lr * c, (betas[0] ** c, betas[1] ** c)
    return torch.optim.Adam(params, lr=lr, betas=betas, eps=1e-8)


# ------------------------------------------------------------------------------------------------- data

class SharpImages(torch.utils.data.Dataset):
    """Sharp faces of any reader (:func:`deblur_rotate.data.readers.open_dataset`) as [3, R, R] in [-1, 1].

    Item ``i`` is the middle target ``targets[2]`` of sample ``i`` (SynthBMFD, video, multi-view; the
    image itself for stills); with ``all_frames`` every one of the 5 targets is an item (5x as many);
    with ``mirror`` each item also appears mirrored (2x). Deterministic: a function of ``i`` only.
    """

    def __init__(self, dataset: torch.utils.data.Dataset, all_frames: bool = False, mirror: bool = False):
        self.dataset = dataset
        self.frames = 5 if all_frames else 1
        self.copies = 2 if mirror else 1

    def __len__(self) -> int:
        return len(self.dataset) * self.frames * self.copies

    def __getitem__(self, i: int) -> torch.Tensor:
        i, flip = divmod(int(i), self.copies)
        i, frame = divmod(i, self.frames)
        targets = self.dataset[i]["targets"]
        if targets.dim() == 5:  # a mirrored pair [2, 5, 3, S, S]: the first view
            targets = targets[0]
        img = targets[2 if self.frames == 1 else frame].float()
        return img.flip(-1) if flip else img


# ------------------------------------------------------------------------------------------------- stage

class GeneratorStage:
    """Builds everything for stage 1 and runs it through the shared Trainer (see the module docstring).

    Attributes after construction: ``G``, ``D`` (bare modules on the device), ``G_ema``, ``opt_G``,
    ``opt_D``, ``trainer``, ``config`` (resolved), ``info`` (the DistInfo).
    """

    def __init__(self, config: GeneratorConfig):
        from deblur_rotate.models.stylegan2 import Discriminator, Generator, stylegan2_config
        from deblur_rotate.train.loop import MixedPrecision, Trainer, ema_beta_for

        self.config = c = config.resolved()
        self.info = info = dist_utils.setup(c.device)
        if c.batch % info.world_size:
            raise UserError(f"--batch {c.batch} must be a multiple of the number of processes ({info.world_size})")
        self.batch_per_rank = c.batch // info.world_size
        self.out = Path(c.out)
        self.dataset = self._open_data()
        dist_utils.seed_all(c.seed, per_rank=False)  # the same initial weights on every rank (and EMA copy)
        dev = info.device

        self.g_config = stylegan2_config(c.preset, "generator")
        self.d_config = stylegan2_config(c.preset, "discriminator")
        self.resolution = self.g_config["img_resolution"]
        self.G = Generator(**self.g_config).to(dev).train()
        self.D = Discriminator(**self.d_config).to(dev).train()
        self.G_ema = copy.deepcopy(self.G).eval().requires_grad_(False)
        # DDP wraps the parts that run forward separately (mapping, synthesis, D); no-ops on one process.
        self.G_mapping = dist_utils.wrap_ddp(self.G.mapping, broadcast_buffers=False)
        self.G_synthesis = dist_utils.wrap_ddp(self.G.synthesis, broadcast_buffers=False)
        self.D_ddp = dist_utils.wrap_ddp(self.D, broadcast_buffers=False)

        betas = (0.0, 0.99)
        self.opt_G = lazy_adam(self.G.parameters(), c.lr, betas, c.pl_every if c.pl_weight > 0 else None)
        self.opt_D = lazy_adam(self.D.parameters(), c.lr, betas, c.r1_every if c.r1_gamma > 0 else None)
        self.amp = MixedPrecision.from_precision(c.precision, dev)
        self.pl_state = _TensorState(pl_mean=torch.zeros((), device=dev))
        dist_utils.seed_all(c.seed)  # from here on, per-rank random streams (z, noise)

        g = torch.Generator().manual_seed(c.seed + 987_654)
        self.grid_z = torch.randn(max(c.grid, 1), self.G.z_dim, generator=g).to(dev)  # [grid, z_dim], fixed

        total_batch = c.batch

        def ema_beta(step: int) -> float:
            return ema_beta_for(total_batch, c.ema_images, c.ema_rampup, step)

        run_config = {**asdict(c), "stage": "generator", "world_size": info.world_size,
                      "generator": self.g_config, "discriminator": self.d_config,
                      "dataset_items": len(self.dataset)}
        run_config.pop("resume", None)
        run_config.pop("progress", None)
        self.trainer = Trainer(
            run_dir=self.out, networks={"G": self.G, "D": self.D},
            network_configs={"G": self.g_config, "D": self.d_config},
            optimizers={"G": self.opt_G, "D": self.opt_D}, step_fn=self.step_fn, data=self.batches,
            total_steps=c.steps, checkpoint_every=c.checkpoint_every, log_every=c.log_every,
            ema={"G": self.G_ema}, ema_beta=ema_beta, amp=self.amp, extra_state={"pl": self.pl_state},
            run_config=run_config, image_fn=self.image_fn if c.grid > 0 else None,
            image_every=c.image_every if c.grid > 0 else 0, progress=c.progress)

    # ------------------------------------------------------------------------------------------ data
    def _open_data(self) -> SharpImages:
        from deblur_rotate.data.readers import open_training_dataset
        from deblur_rotate.models.stylegan2 import stylegan2_config

        c = self.config
        size = stylegan2_config(c.preset)["img_resolution"]
        ds = open_training_dataset(c.kind, c.data, size, m=c.m, split=c.split, needs="sharp faces")
        return SharpImages(ds, all_frames=c.all_frames, mirror=c.mirror)

    def batches(self, start_step: int) -> Iterator[torch.Tensor]:
        """Real batches [B_rank, 3, R, R] in [-1, 1] for iterations start_step, start_step + 1, ..."""
        c = self.config
        return dist_utils.resumable_batches(self.dataset, self.batch_per_rank, c.seed, start_step, c.workers,
                                            self.info.device)

    # ------------------------------------------------------------------------------------------ step
    def _sample_ws(self, n: int, mapping: nn.Module | None = None) -> torch.Tensor:
        """[n, num_ws, w_dim] from random z, with style mixing; moves G's w_avg.

        mapping: the (DDP-wrapped) mapping network to run; one forward per call (DDP allows one
        forward per backward), so both latents of a style mix come from one batch of 2n."""
        dev = self.info.device
        mapping = self.G_mapping if mapping is None else mapping
        mix = self.config.style_mixing > 0
        z = torch.randn(2 * n if mix else n, self.G.z_dim, device=dev)
        ws = mapping(z, update_w_avg=self.G.training)
        if mix:
            ws, ws2 = ws[:n], ws[n:]
            num_ws = ws.shape[1]
            cutoff = torch.randint(1, num_ws, (), device=dev)
            use = torch.rand((), device=dev) < self.config.style_mixing
            cutoff = torch.where(use, cutoff, torch.full_like(cutoff, num_ws))
            keep = torch.arange(num_ws, device=dev)[None, :, None] < cutoff
            ws = torch.where(keep, ws, ws2)
        return ws

    def step_fn(self, batch: torch.Tensor, step: int) -> dict[str, torch.Tensor]:
        """One D step then one G step. batch: [B, 3, R, R] real images in [-1, 1]."""
        c, amp, dev = self.config, self.amp, self.info.device
        real = batch.to(dev, non_blocking=True).float()
        n = real.shape[0]
        losses: dict[str, torch.Tensor] = {}

        # ---- D: fakes (G frozen, no graph), then reals (+ R1 on lazy steps)
        self.G.requires_grad_(False)
        self.D.requires_grad_(True)
        self.opt_D.zero_grad(set_to_none=True)
        with torch.no_grad(), amp.autocast():  # bare G: no gradients, so no DDP hooks
            fake = self.G.synthesis(self._sample_ws(n, self.G.mapping))
        with amp.autocast():
            fake_logits = self.D_ddp(fake.float())
            loss_fake = d_loss_logistic(None, fake_logits)
        amp.backward(loss_fake)
        do_r1 = c.r1_gamma > 0 and step % c.r1_every == 0
        if do_r1:  # fp32: the double backward of R1 is not safe in half precision
            real_in = real.detach().requires_grad_(True)
            real_logits = self.D_ddp(real_in)
            loss_real = d_loss_logistic(real_logits, None)
            r1 = r1_penalty(real_logits, real_in)
            loss_r1 = r1.mean() * (c.r1_gamma / 2) * c.r1_every
            amp.backward(loss_real + loss_r1)
            losses["r1"] = r1.mean().detach()
        else:
            with amp.autocast():
                real_logits = self.D_ddp(real)
                loss_real = d_loss_logistic(real_logits, None)
            amp.backward(loss_real)
        amp.step(self.opt_D)
        losses["D"] = (loss_fake + loss_real).detach()
        losses["D_real"] = real_logits.detach().float().mean()
        losses["D_fake"] = fake_logits.detach().float().mean()

        # ---- G: non-saturating loss (+ path length on lazy steps)
        self.G.requires_grad_(True)
        self.D.requires_grad_(False)
        self.opt_G.zero_grad(set_to_none=True)
        with amp.autocast():
            # bare D: its weights are frozen in the G step, so DDP must not wait for their gradients
            gen_logits = self.D(self.G_synthesis(self._sample_ws(n)).float())
            loss_g = g_loss_nonsaturating(gen_logits)
        amp.backward(loss_g)
        losses["G"] = loss_g.detach()
        if c.pl_weight > 0 and step % c.pl_every == 0:
            m = max(n // 2, 1)
            ws = self._sample_ws(m)
            imgs = self.G_synthesis(ws)
            pen, new_mean = path_length_penalty(imgs, ws, self.pl_state.pl_mean, c.pl_decay)
            self.pl_state.pl_mean.copy_(new_mean)
            loss_pl = pen.mean() * c.pl_weight * c.pl_every
            amp.backward(loss_pl + imgs[:, 0, 0, 0].sum() * 0)
            losses["pl"] = pen.mean().detach()
        amp.step(self.opt_G)
        self.D.requires_grad_(True)
        return losses

    # ------------------------------------------------------------------------------------------ images
    @torch.no_grad()
    def sample_grid(self) -> torch.Tensor:
        """[grid, 3, R, R] images of the EMA generator from the fixed z, noise_mode const."""
        out = []
        for z in self.grid_z.split(16):
            out.append(self.G_ema(z, noise_mode="const").float().clamp(-1, 1))
        return torch.cat(out)

    def image_fn(self, step: int) -> dict[str, torch.Tensor]:
        """Writes RUN/samples/step-XXXXXXXX.png (rank 0 only calls it) and returns the grid for TensorBoard."""
        from deblur_rotate.train.loop import write_sample_grid

        imgs = self.sample_grid()
        nrow = max(1, math.ceil(math.sqrt(imgs.shape[0])))
        write_sample_grid(self.out, step, imgs.cpu(), nrow=nrow)
        return {"samples": imgs}

    # ------------------------------------------------------------------------------------------ run
    def _check_resume_preset(self) -> None:
        """A clear UserError when the checkpoint to resume holds another preset's networks."""
        from deblur_rotate.models.stylegan2 import Generator
        from deblur_rotate.train.checkpoint import resumed_config_mismatch

        mismatch = resumed_config_mismatch(self.out, "G", self.g_config)
        if mismatch is None:
            return
        folder, saved, diff = mismatch
        raise UserError(f"{folder} holds a generator of preset {Generator.config_name(saved)}, but this run "
                        f"asks for --preset {self.config.preset} (differing: {', '.join(diff)}); resume with "
                        f"the run's own preset or choose another --out")

    def run(self) -> dict[str, float]:
        """Train (resuming first when ``config.resume``), then write RUN/generator/ (EMA G). Returns the
        last losses."""
        from deblur_rotate.models.io import save_pretrained

        if self.config.resume:
            self._check_resume_preset()
            self.trainer.resume()
        losses = self.trainer.train()
        if self.info.rank == 0:
            save_pretrained(self.G_ema, self.out / "generator")
        dist_utils.barrier()
        return losses


class _TensorState:
    """Named tensors with state_dict()/load_state_dict() (Trainer extra_state), values copied in place."""

    def __init__(self, **tensors: torch.Tensor):
        self.__dict__["_t"] = dict(tensors)

    def __getattr__(self, name: str) -> torch.Tensor:
        try:
            return self.__dict__["_t"][name]
        except KeyError:
            raise AttributeError(name) from None

    def state_dict(self) -> dict:
        return {k: v.detach().clone() for k, v in self._t.items()}

    def load_state_dict(self, state: dict) -> None:
        for k, v in self._t.items():
            if k in state:
                v.copy_(torch.as_tensor(state[k]).to(v.device, v.dtype))

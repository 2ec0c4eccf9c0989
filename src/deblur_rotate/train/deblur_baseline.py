"""Baseline stage: train :class:`~deblur_rotate.evaluate.baselines.DirectDeblurNet` (Jin et al.'s direct
regression of the sharp frames, the deblurring half of the paper's Table 5 cascade baseline).

``deblur-rotate train deblur-baseline --preset tiny --data SYNTHBMFD --out RUN``

Loss per sample: ``min(ℓ(net(x), y), ℓ(net(x), reversed(y)))`` with ``ℓ = L1 + edge_weight * Sobel edge
L1`` over the 5 frames (the forward/backward ambiguity, as for E_v and F), averaged over the batch.
Adam, no EMA by default. Run folder: ``RUN/config.json``, ``RUN/checkpoints/``, ``RUN/tb/``,
``RUN/samples/step-XXXXXXXX.png`` (per row: blurry input, the 5 predicted frames, the 5 targets) and,
at the end, ``RUN/deblur_baseline/`` (``config.json`` + ``model.safetensors``; the EMA network when
``--ema`` > 0). Top-level imports stay light: every ``deblur-rotate`` call imports this module.
"""
from __future__ import annotations

import copy
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

import torch

from deblur_rotate.errors import UserError
from deblur_rotate.train import distributed as dist_utils
from deblur_rotate.train.commands import run_stage_cli
from deblur_rotate.train.configs import config_from_args
from deblur_rotate.train.configs.deblur_baseline import DeblurBaselineConfig  # re-exported: the stage's settings

__all__ = [
    "DeblurBaselineConfig",
    "DeblurBaselineStage",
    "order_invariant_loss",
    "run_deblur_baseline",
]

OUTPUT_FOLDER = "deblur_baseline"


# ------------------------------------------------------------------------------------------------- loss

def order_invariant_loss(pred: torch.Tensor, target: torch.Tensor, edge_weight: float = 0.0
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward/backward-invariant reconstruction loss of a predicted video.

    pred, target: ``[N, T, 3, H, W]`` in [-1, 1].
    edge_weight: weight of the Sobel term (L1 between kornia Sobel magnitudes, as ``losses.edge_loss``).
    Per sample ``l(order) = mean|pred - target_order| + edge_weight * mean|sobel(pred) - sobel(target_order)|``
    for the target as ordered and reversed; the smaller is kept.
    Returns ``(loss [] = batch mean of the per-sample minimum, reversed [N] bool = the reversed order won)``.
    """
    import kornia

    if pred.shape != target.shape or pred.dim() != 5:
        raise ValueError(f"expected two [N, T, 3, H, W] videos, got {tuple(pred.shape)} and {tuple(target.shape)}")
    n = pred.shape[0]

    def per_sample(tgt: torch.Tensor) -> torch.Tensor:  # [N]
        loss = (pred - tgt).abs().reshape(n, -1).mean(1)
        if edge_weight:
            sp = kornia.filters.sobel(pred.flatten(0, 1))
            st = kornia.filters.sobel(tgt.flatten(0, 1))
            loss = loss + edge_weight * (sp - st).abs().reshape(n, -1).mean(1)
        return loss

    fwd, bwd = per_sample(target), per_sample(target.flip(1))
    rev = bwd < fwd
    return torch.where(rev, bwd, fwd).mean(), rev


# ------------------------------------------------------------------------------------------------- data

class BlurSharpPairs(torch.utils.data.Dataset):
    """``(blurry [3, R, R], targets [5, 3, R, R])`` in [-1, 1] from any reader that yields the SynthBMFD sample
    structure (:func:`deblur_rotate.data.readers.open_dataset`); for a two-view item, the first view."""

    def __init__(self, dataset: torch.utils.data.Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        sample = self.dataset[int(i)]
        blurry, targets = sample["blurry"], sample["targets"]
        if blurry.dim() == 4:  # a pair of views [2, 3, R, R]
            blurry, targets = blurry[0], targets[0]
        return blurry.float(), targets.float()


# ------------------------------------------------------------------------------------------------ stage

class DeblurBaselineStage:
    """Builds the network, optimizer, data and Trainer of the deblur baseline and runs them.

    Attributes after construction: ``net`` (bare module on the device), ``net_ema`` (or None), ``opt``,
    ``trainer``, ``config`` (resolved), ``info`` (the DistInfo), ``resolution``.
    """

    def __init__(self, config: DeblurBaselineConfig):
        from deblur_rotate.evaluate.baselines import DirectDeblurNet, direct_deblur_config, preset_resolution
        from deblur_rotate.train.loop import MixedPrecision, Trainer

        self.config = c = config.resolved()
        self.info = info = dist_utils.setup(c.device)
        if c.batch % info.world_size:
            raise UserError(f"--batch {c.batch} must be a multiple of the number of processes ({info.world_size})")
        self.batch_per_rank = c.batch // info.world_size
        self.out = Path(c.out)
        self.resolution = preset_resolution(c.preset)
        self.dataset = self._open_data()
        dist_utils.seed_all(c.seed, per_rank=False)  # the same initial weights on every rank
        dev = info.device

        self.net_config = direct_deblur_config(c.preset)
        self.net = DirectDeblurNet(**self.net_config).to(dev).train()
        self.net_ddp = dist_utils.wrap_ddp(self.net)
        self.net_ema = copy.deepcopy(self.net).eval().requires_grad_(False) if c.ema > 0 else None
        self.opt = torch.optim.Adam(self.net.parameters(), lr=c.lr, betas=(0.9, 0.999))
        self.amp = MixedPrecision.from_precision(c.precision, dev)
        dist_utils.seed_all(c.seed)

        # fixed samples for the image grid: evenly spread over the dataset
        count = min(c.grid, len(self.dataset))
        picks = [round(i * (len(self.dataset) - 1) / max(count - 1, 1)) for i in range(count)]
        self.grid_items = [self.dataset[i] for i in picks]

        run_config = {**asdict(c), "stage": "deblur-baseline", "world_size": info.world_size,
                      "network": self.net_config, "resolution": self.resolution, "dataset_items": len(self.dataset)}
        run_config.pop("resume", None)
        run_config.pop("progress", None)
        self.trainer = Trainer(
            run_dir=self.out, networks={"net": self.net_ddp}, network_configs={"net": self.net_config},
            optimizers={"net": self.opt}, step_fn=self.step_fn, data=self.batches, total_steps=c.steps,
            checkpoint_every=c.checkpoint_every, log_every=c.log_every,
            ema={"net": self.net_ema} if self.net_ema is not None else None, ema_beta=c.ema, amp=self.amp,
            run_config=run_config, image_fn=self.image_fn if count > 0 else None,
            image_every=c.image_every if count > 0 else 0, progress=c.progress)

    # ------------------------------------------------------------------------------------------ data
    def _open_data(self) -> BlurSharpPairs:
        from deblur_rotate.data.readers import open_training_dataset

        c = self.config
        ds = open_training_dataset(c.kind, c.data, self.resolution, m=c.m, split=c.split,
                                   needs="blurry images with their sharp frames")
        return BlurSharpPairs(ds)

    def batches(self, start_step: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Batches ``(blurry [B, 3, R, R], targets [B, 5, 3, R, R])`` for iterations start_step, start_step + 1, ..."""
        c = self.config
        return dist_utils.resumable_batches(self.dataset, self.batch_per_rank, c.seed, start_step, c.workers,
                                            self.info.device)

    # ------------------------------------------------------------------------------------------ step
    def step_fn(self, batch: tuple[torch.Tensor, torch.Tensor], step: int) -> dict[str, torch.Tensor]:
        """One Adam step on the order-invariant loss. batch: (blurry [B, 3, R, R], targets [B, 5, 3, R, R])."""
        dev, amp = self.info.device, self.amp
        blurry = batch[0].to(dev, non_blocking=True)
        targets = batch[1].to(dev, non_blocking=True)
        self.opt.zero_grad(set_to_none=True)
        with amp.autocast():
            pred = self.net_ddp(blurry)  # [B, 5, 3, R, R]
        loss, rev = order_invariant_loss(pred.float(), targets, self.config.edge_weight)
        amp.backward(loss)
        amp.step(self.opt)
        with torch.no_grad():
            l1 = (pred.detach().float() - torch.where(rev[:, None, None, None, None], targets.flip(1), targets)).abs()
        return {"loss": loss.detach(), "l1": l1.mean(), "reversed": rev.float().mean()}

    # ------------------------------------------------------------------------------------------ images
    @torch.no_grad()
    def predict_grid(self) -> torch.Tensor:
        """``[rows * 11, 3, R, R]``: per grid sample the blurry input, 5 predicted and 5 target frames."""
        net = self.net_ema if self.net_ema is not None else self.net
        was_training = net.training
        net.eval()
        blurry = torch.stack([b for b, _ in self.grid_items]).to(self.info.device)
        targets = torch.stack([t for _, t in self.grid_items]).to(self.info.device)
        pred = net(blurry).float().clamp(-1, 1)
        net.train(was_training)
        rows = torch.cat([blurry[:, None], pred, targets], 1)  # [rows, 11, 3, R, R]
        return rows.flatten(0, 1).cpu()

    def image_fn(self, step: int) -> dict[str, torch.Tensor]:
        """Writes RUN/samples/step-XXXXXXXX.png (rank 0) and returns the grid for TensorBoard."""
        from deblur_rotate.train.loop import write_sample_grid

        imgs = self.predict_grid()
        write_sample_grid(self.out, step, imgs, nrow=11)
        return {"deblur": imgs}

    # ------------------------------------------------------------------------------------------ run
    def _check_resume_config(self) -> None:
        """A clear UserError when the checkpoint to resume holds another preset's network."""
        from deblur_rotate.train.checkpoint import resumed_config_mismatch

        mismatch = resumed_config_mismatch(self.out, "net", self.net_config)
        if mismatch is None:
            return
        folder, saved, diff = mismatch
        raise UserError(f"{folder} holds a deblur network {saved}, but this run asks for --preset "
                        f"{self.config.preset} ({self.net_config}); resume with the run's own preset or choose "
                        "another --out")

    def run(self) -> dict[str, float]:
        """Train (resuming first when ``config.resume``), then write RUN/deblur_baseline/. Returns the last
        losses."""
        from deblur_rotate.models.io import save_pretrained

        if self.config.resume:
            self._check_resume_config()
            self.trainer.resume()
        losses = self.trainer.train()
        if self.info.rank == 0:
            final = self.net_ema if self.net_ema is not None else self.net
            save_pretrained(final, self.out / OUTPUT_FOLDER)
        dist_utils.barrier()
        return losses


# -------------------------------------------------------------------------------------------------- CLI

def run_deblur_baseline(args) -> int:
    """CLI entry: build the config from ``args``, train, print a one-line summary."""
    config = config_from_args(DeblurBaselineConfig, args)
    return run_stage_cli(DeblurBaselineStage, config, f"network written to {Path(config.out) / OUTPUT_FOLDER}")


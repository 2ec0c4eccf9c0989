"""The training loop every stage shares: steps, checkpoints, resume, logging, NaN stop, EMA, AMP.

A stage (StyleGAN2, E_s, E_v, E_3D, F) supplies its networks, optimizers, a data factory and a
``step_fn(batch, step) -> {loss name: scalar}`` that does one full iteration (forward, backward,
optimizer steps: a GAN alternates D and G inside one call). :class:`Trainer` does the rest::

    info = distributed.setup()
    net = MyNet(**cfg).to(info.device)
    ddp = distributed.wrap_ddp(net)
    opt = torch.optim.Adam(net.parameters(), lr=1e-4)
    amp = MixedPrecision(enabled=args.amp, device=info.device)

    def step_fn(batch, step):
        x = batch.to(info.device)
        with amp.autocast():
            loss = ddp(x).square().mean()
        opt.zero_grad(set_to_none=True)
        amp.backward(loss)
        amp.step(opt)
        return {"l2": loss}

    trainer = Trainer(run_dir=args.out, networks={"net": ddp}, network_configs={"net": cfg},
                      optimizers={"net": opt}, step_fn=step_fn, data=make_batches, total_steps=10_000,
                      amp=amp, run_config=vars(args))
    if args.resume:
        trainer.resume()
    trainer.train()

Run folder (only rank 0 writes)::

    run_dir/config.json                     the resolved configuration of the run
    run_dir/tb/                             TensorBoard scalars (loss/*, lr/*, time/*) and images
    run_dir/checkpoints/latest.json         points at the newest complete checkpoint
    run_dir/checkpoints/step-XXXXXXXX/      <network>/config.json + model.safetensors, training_state.safetensors

Exact resume: the training state holds the step, every optimizer's state, the EMA weights, the
GradScaler state, the ``extra_state`` objects and every rank's RNG states (python, numpy, torch CPU,
torch CUDA). ``data(start_step)`` must yield the batches of steps ``start_step, start_step + 1, ...`` as
the uninterrupted run would (e.g. :class:`deblur_rotate.train.distributed.InfiniteSampler` with
``start=start_step * batch_size``, or batches drawn from a generator seeded by the step); with that,
a run stopped after checkpoint k and resumed ends with the same weights, bit for bit on CPU.
"""
from __future__ import annotations

import contextlib
import math
import os
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from deblur_rotate.errors import UserError
from deblur_rotate.files import atomic_write_json
from deblur_rotate.train import distributed as dist_utils
from deblur_rotate.train.checkpoint import (
    STATE_NAME,
    check_name,
    check_state_dict,
    checkpoint_step,
    latest_checkpoint,
    list_checkpoints,
    load_training_state,
    load_weights,
    rng_state,
    save_network,
    save_training_state,
    set_rng_state,
    write_checkpoint,
)

__all__ = ["MixedPrecision", "StepFn", "Trainer", "ema_beta_for", "ema_update", "linear_decay", "write_sample_grid"]

StepFn = Callable[[Any, int], Mapping[str, "torch.Tensor | float"]]


def write_sample_grid(run_dir: str | Path, step: int, images: torch.Tensor, nrow: int) -> torch.Tensor:
    """Write ``images [K, 3, H, W]`` in [-1, 1] as one grid of ``nrow`` per row, black padding, to
    ``run_dir/samples/step-XXXXXXXX.png`` (atomically: temp file + rename); returns the grid [3, H', W']."""
    from torchvision.utils import make_grid

    from deblur_rotate.files import save_png, to_uint8

    grid = make_grid(images.detach().float().cpu(), nrow=nrow, padding=2, pad_value=-1.0)  # [3, H', W']
    folder = Path(run_dir) / "samples"
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".step-{step:08d}.png.tmp"
    save_png(tmp, to_uint8(grid), compress_level=6)
    os.replace(tmp, folder / f"step-{step:08d}.png")
    return grid


def linear_decay(total_steps: int, fraction: float, final: float = 0.0) -> Callable[[int], float] | None:
    """A learning-rate multiplier for :class:`Trainer` (``lr_factor``): 1 until the last ``fraction`` of
    ``total_steps`` iterations, then falling linearly to ``final`` at the last one. None when
    ``fraction`` <= 0 (a constant learning rate, the paper's)."""
    if fraction <= 0 or total_steps <= 0:
        return None
    start = total_steps * (1.0 - min(float(fraction), 1.0))

    def factor(step: int) -> float:
        if step < start:
            return 1.0
        return 1.0 - (1.0 - final) * (step - start) / max(total_steps - start, 1e-9)

    return factor


def ema_beta_for(batch: int, half_life_images: float, rampup: float | None = None, step: int = 0) -> float:
    """EMA decay per iteration so that weights halve their influence after ``half_life_images`` images
    (StyleGAN2: 0.5 ** (batch / (ema_kimg * 1000))). ``rampup`` (e.g. 0.05) caps the half-life at
    ``rampup * images seen so far`` early in training, as NVlabs' ``ema_rampup``."""
    half = float(half_life_images)
    if rampup is not None:
        half = min(half, (step + 1) * batch * rampup)
    return 0.5 ** (batch / max(half, 1e-8))


@torch.no_grad()
def ema_update(ema_module: nn.Module, module: nn.Module, beta: float) -> None:
    """Exponential moving average, in place: ``ema = beta * ema + (1 - beta) * module`` for every
    parameter. Buffers are copied, as NVlabs' StyleGAN2 does: they are statistics the module keeps
    itself (G's tracked mean W, BatchNorm running means), already averages, and the EMA copy must use
    the current ones (an average of G's w_avg would lag behind the truncation centre G samples around).

    ema_module: a copy of the module's architecture (e.g. ``copy.deepcopy(net).eval().requires_grad_(False)``).
    module:     the trained network (a DDP wrapper is unwrapped).
    beta:       decay in [0, 1]; 0.999 averages over ~1000 steps. StyleGAN2 uses
                ``0.5 ** (batch_size / (10_000 images))``.
    """
    module = dist_utils.unwrap(module)
    ema_module = dist_utils.unwrap(ema_module)
    src = dict(module.named_parameters())
    for name, p_ema in ema_module.named_parameters():
        p = src[name].detach()
        p_ema.lerp_(p.to(p_ema.dtype), 1.0 - beta)
    src_buffers = dict(module.named_buffers())
    for name, b_ema in ema_module.named_buffers():
        b_ema.copy_(src_buffers[name])


class MixedPrecision:
    """autocast (+ GradScaler for float16) for the step functions; plain fp32 when off.

    * CUDA: float16 (with loss scaling) or bfloat16 autocast.
    * CPU: bfloat16 autocast only (on CPUs with AVX-512 BF16 / AMX its matmuls run about twice as fast as
      float32; measured 1.4-1.5x per E_s step on the development machine). float16 on CPU is refused.

    Use inside a step function: ``with amp.autocast(): loss = ...``, then ``amp.backward(loss)``,
    optionally ``amp.unscale_(opt)`` before gradient clipping, then ``amp.step(opt)``. The Trainer calls
    :meth:`update` once per iteration and checkpoints the scaler.
    """

    def __init__(
        self,
        enabled: bool,  # ask for mixed precision (see the class docstring for what each device supports)
        device: str | torch.device,  # the training device
        dtype: torch.dtype = torch.float16,  # autocast dtype; bfloat16 needs no loss scaling
    ):
        self.device = torch.device(device)
        if enabled and self.device.type == "cpu" and dtype != torch.bfloat16:
            raise UserError("mixed precision on the CPU is bfloat16 only: use --precision bf16 (or fp32)")
        self.enabled = bool(enabled) and self.device.type in ("cuda", "cpu")
        self.dtype = dtype
        self.scaler = torch.amp.GradScaler(
            "cuda", enabled=self.enabled and self.device.type == "cuda" and dtype == torch.float16)
        self._stepped = False

    @classmethod
    def from_precision(cls, precision: str, device: str | torch.device) -> MixedPrecision:
        """``precision`` one of ``fp32`` (off), ``bf16``, ``fp16`` (CUDA only), ``auto`` (bf16 where the device
        computes it natively, else fp32: :func:`deblur_rotate.precision.resolve_precision`)."""
        from deblur_rotate.precision import resolve_precision

        dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
        if precision not in (*dtypes, "auto"):
            raise UserError(f"--precision must be fp32, bf16, fp16 or auto (got {precision!r})")
        used = resolve_precision(precision, torch.device(device))
        return cls(enabled=used != "fp32", device=device, dtype=dtypes[used])

    @property
    def precision(self) -> str:
        """What runs: "bf16", "fp16" or "fp32" (also when mixed precision was asked for on another device)."""
        return {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(self.dtype, "fp32") if self.enabled else "fp32"

    def autocast(self):
        """Context manager: autocast to ``dtype`` when enabled, a no-op otherwise."""
        if not self.enabled:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)

    def backward(self, loss: torch.Tensor, **kwargs) -> None:
        """``loss.backward()`` on the (scaled) loss."""
        self.scaler.scale(loss).backward(**kwargs)

    def unscale_(self, optimizer: torch.optim.Optimizer) -> None:
        """Unscale the gradients of ``optimizer`` in place (before clipping them)."""
        self.scaler.unscale_(optimizer)

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        """``optimizer.step()``, skipped by the scaler when the scaled gradients hold inf/NaN."""
        self.scaler.step(optimizer)
        self._stepped = True

    def update(self) -> None:
        """Adjust the loss scale; once per iteration, after every ``step`` (the Trainer calls it)."""
        if self._stepped:
            self.scaler.update()
        self._stepped = False

    def state_dict(self) -> dict:
        return self.scaler.state_dict()

    def load_state_dict(self, state: dict) -> None:
        if state and self.scaler.is_enabled():
            self.scaler.load_state_dict(state)


def _fmt(value: float) -> str:
    return f"{value:.4g}" if math.isfinite(value) else str(value)


class Trainer:
    """Runs ``step_fn`` from the current step to ``total_steps``; checkpoints, logs, resumes.

    Every rank runs the same loop; only rank 0 writes files. Collectives per iteration: one
    all-reduce of the loss vector (for the NaN check and logging). ``step`` counts finished
    iterations: ``step_fn(batch, k)`` runs iteration k (0-based) and a checkpoint named ``step-k``
    holds the state after k iterations.
    """

    def __init__(
        self,
        *,
        run_dir: str | Path,  # output folder of the run (config.json, tb/, checkpoints/)
        networks: Mapping[str, nn.Module],  # name -> trained network (DDP wrapper allowed); saved each checkpoint
        optimizers: Mapping[str, torch.optim.Optimizer],  # name -> optimizer; state saved each checkpoint
        step_fn: StepFn,  # (batch, step) -> {loss term: scalar tensor or float}; does the whole iteration
        data: Callable[[int], Iterable],  # data(start_step) -> iterable of batches for steps start_step, ...
        total_steps: int,  # number of iterations of the whole run (not of this call)
        checkpoint_every: int = 1000,  # iterations between checkpoints (one is always written at the end)
        log_every: int = 50,  # iterations between TensorBoard scalars / progress-bar updates
        network_configs: Mapping[str, dict] | None = None,  # name -> constructor kwargs (default: module.config)
        ema: Mapping[str, nn.Module] | None = None,  # network name -> its EMA copy, updated after each step
        ema_beta: float | Callable[[int], float] = 0.999,  # EMA decay, or a function of the step
        amp: MixedPrecision | None = None,  # mixed precision helper used by step_fn (default: off)
        extra_state: Mapping[str, Any] | None = None,  # name -> object with state_dict()/load_state_dict()
        run_config: Mapping[str, Any] | None = None,  # resolved config of the run, written to run_dir/config.json
        image_fn: Callable[[int], Mapping[str, torch.Tensor]] | None = None,  # step -> {tag: [N,3,H,W] in [-1,1]}
        image_every: int = 0,  # iterations between image grids (0: never)
        keep_checkpoints: int = 2,  # checkpoints kept on disk (latest + the one before)
        progress: bool = True,  # tqdm bar on rank 0
        lr_factor: Callable[[int], float] | None = None,  # step -> multiplier of every optimizer's starting lr
    ):
        if total_steps < 0:
            raise ValueError("total_steps must be >= 0")
        if checkpoint_every <= 0 or log_every <= 0:
            raise ValueError("checkpoint_every and log_every must be positive")
        self.run_dir = Path(run_dir)
        self.networks = {check_name(k): v for k, v in networks.items()}
        self.optimizers = {check_name(k): v for k, v in optimizers.items()}
        self.step_fn = step_fn
        self.data = data
        self.total_steps = int(total_steps)
        self.checkpoint_every = int(checkpoint_every)
        self.log_every = int(log_every)
        self.network_configs = dict(network_configs or {})
        self.ema = dict(ema or {})
        unknown = sorted(set(self.ema) - set(self.networks))
        if unknown:
            raise ValueError(f"EMA for unknown networks {unknown}; networks are {sorted(self.networks)}")
        self.ema_beta = ema_beta
        self.info = dist_utils.info()
        self.amp = amp if amp is not None else MixedPrecision(False, self.info.device)
        self.extra_state = dict(extra_state or {})
        self.run_config = dict(run_config or {})
        if "precision" in self.run_config:  # what --precision (e.g. auto) came to on this device
            self.run_config["precision_used"] = self.amp.precision
        self.image_fn = image_fn
        self.image_every = int(image_every)
        self.keep_checkpoints = int(keep_checkpoints)
        self.lr_factor = lr_factor
        # the learning rates the optimizers were built with; lr_factor scales these (not a resumed, decayed lr)
        self._base_lrs = {k: [g["lr"] for g in o.param_groups] for k, o in self.optimizers.items()}
        self.progress = progress
        self.step = 0  # finished iterations
        self.last_checkpoint: Path | None = None
        self.last_losses: dict[str, float] = {}
        self._pending_rng: dict | None = None
        self._resumed = False

    # ------------------------------------------------------------------------------------ paths
    @property
    def checkpoint_root(self) -> Path:
        return self.run_dir / "checkpoints"

    # ----------------------------------------------------------------------------------- resume
    def resume(self, source: str | Path | None = None) -> int:
        """Load the newest checkpoint of ``source`` (a run folder, its ``checkpoints`` folder, or one
        ``step-*`` folder; default: this run's folder) into the networks, optimizers, EMA, scaler and
        extra state; the RNG states are restored when :meth:`train` starts. Returns the step.

        When the newest checkpoint of a run cannot be loaded (a damaged file: truncated, corrupt weights), the
        previous complete one (the loop keeps two) is loaded instead, with a warning naming both; a ``step-*``
        folder given directly has no fallback. Raises UserError when there is nothing to resume from or no
        checkpoint loads (the newest one's reason first)."""
        src = Path(source) if source is not None else self.run_dir
        if (src / STATE_NAME).is_file():
            return self._resume_from(src)
        latest = latest_checkpoint(src / "checkpoints") or latest_checkpoint(src)
        if latest is None:
            raise UserError(f"nothing to resume: no checkpoint in {src}")
        try:
            newest = checkpoint_step(latest)
        except UserError:  # latest.json names a folder that is no step-* folder: nothing to fall back along
            newest = -1
        older = [p for p in reversed(list_checkpoints(latest.parent))
                 if (p / STATE_NAME).is_file() and checkpoint_step(p) < newest]
        failures: list[str] = []
        for folder in [latest, *older]:
            try:
                step = self._resume_from(folder)
            except (UserError, KeyError, TypeError, ValueError, RuntimeError) as err:
                failures.append(f"{err}" if isinstance(err, UserError) else f"{folder}: {type(err).__name__}: {err}")
                continue
            if failures and self.info.rank == 0:
                print(f"warning: the latest checkpoint {latest} cannot be loaded ({failures[0]}); resumed from the "
                      f"previous complete checkpoint {folder} (step {step}) instead: the iterations after it are "
                      "trained again", file=sys.stderr)
            return step
        more = f" (older checkpoints failed too: {'; '.join(failures[1:])})" if failures[1:] else \
            " (and there is no older complete checkpoint to fall back on)"
        raise UserError(f"cannot resume: {failures[0]}{more}")

    def _resume_from(self, folder: Path) -> int:
        """Load checkpoint ``folder`` (``step-*``) into everything :meth:`resume` names; returns its step."""
        state = load_training_state(folder / STATE_NAME)

        def same(kind: str, saved, have) -> None:
            if set(saved) != set(have):
                raise UserError(f"{folder}: the checkpoint's {kind} are {sorted(saved)}, this run has {sorted(have)}")

        same("optimizers", state["optimizers"], self.optimizers)
        same("EMA networks", state.get("ema", {}), self.ema)
        same("extra states", state.get("extra", {}), self.extra_state)
        for name, net in self.networks.items():
            if not (folder / name).is_dir():
                raise UserError(f"{folder}: no weights for network {name!r}")
            load_weights(net, folder / name)
        for name, opt in self.optimizers.items():
            try:
                opt.load_state_dict(state["optimizers"][name])
            except (ValueError, KeyError) as e:
                raise UserError(f"{folder}: optimizer {name!r} does not fit: {e}") from None
        for name, ema_net in self.ema.items():
            check_state_dict(ema_net, state["ema"][name], source=f"{folder} (EMA of {name})")
            dist_utils.unwrap(ema_net).load_state_dict(state["ema"][name])
        self.amp.load_state_dict(state.get("amp") or {})
        for name, obj in self.extra_state.items():
            obj.load_state_dict(state["extra"][name])
        rngs = state.get("rng") or []
        if len(rngs) == self.info.world_size:
            self._pending_rng = rngs[self.info.rank]
        else:
            self._pending_rng = None
            if self.info.rank == 0:
                print(f"warning: {folder} was written by {len(rngs)} process(es), this run has "
                      f"{self.info.world_size}: random streams restart (the run continues, not bit-exactly)",
                      file=sys.stderr)
            dist_utils.seed_all(int(state["step"]) + 12345)
        self.step = int(state["step"])
        self.last_checkpoint = folder
        self._resumed = True
        return self.step

    # ------------------------------------------------------------------------------- checkpoint
    def _network_config(self, name: str) -> dict:
        if name in self.network_configs:
            return dict(self.network_configs[name])
        config = getattr(dist_utils.unwrap(self.networks[name]), "config", None)
        return dict(config) if isinstance(config, Mapping) else {}

    def training_state(self, rngs: list) -> dict:
        """The training state after ``self.step`` iterations (``rngs``: every rank's RNG state)."""
        return {
            "step": self.step,
            "total_steps": self.total_steps,
            "world_size": self.info.world_size,
            "optimizers": {k: o.state_dict() for k, o in self.optimizers.items()},
            "ema": {k: dist_utils.unwrap(m).state_dict() for k, m in self.ema.items()},
            "amp": self.amp.state_dict(),
            "extra": {k: o.state_dict() for k, o in self.extra_state.items()},
            "rng": rngs,
        }

    def save_checkpoint(self) -> Path | None:
        """Write checkpoint ``step-<self.step>`` (collective: every rank must call it; rank 0 writes).
        Returns its folder on rank 0, None elsewhere. A failure on rank 0 stops every rank."""
        rngs = dist_utils.all_gather_objects(rng_state())
        error: BaseException | None = None
        folder = None
        if self.info.rank == 0:
            def write(tmp: Path) -> None:
                for name, net in self.networks.items():
                    save_network(net, tmp / name, self._network_config(name))
                save_training_state(tmp / STATE_NAME, self.training_state(rngs))

            try:
                folder = write_checkpoint(self.checkpoint_root, self.step, write, keep=self.keep_checkpoints)
            except BaseException as e:  # noqa: BLE001 - re-raised below, after telling the other ranks
                error = e
        if self.info.distributed:
            ok = torch.tensor([0.0 if error is not None else 1.0], device=self.info.device)
            ok = dist_utils.all_reduce_mean(ok) * self.info.world_size
            if error is None and ok.item() < self.info.world_size - 0.5:
                raise UserError(f"rank 0 failed to write the checkpoint of step {self.step}; see its error")
        if error is not None:
            raise error
        if folder is not None:
            self.last_checkpoint = folder
        return folder

    # -------------------------------------------------------------------------------------- run
    def _write_run_config(self) -> None:
        path = self.run_dir / "config.json"
        if path.is_file() and self._resumed:
            import json

            try:
                old = json.loads(path.read_text())
            except (ValueError, UnicodeDecodeError):
                old = None
            if isinstance(old, dict):
                changed = sorted(k for k in set(old) | set(self.run_config) if old.get(k) != self.run_config.get(k))
                if changed:
                    print(f"note: resuming with a changed configuration ({', '.join(changed)}); "
                          f"{path} now holds the new one", file=sys.stderr)
        atomic_write_json(path, self.run_config)

    def _losses_vector(self, losses: Mapping[str, Any]) -> torch.Tensor:
        dev = self.info.device
        vals = [torch.as_tensor(v, dtype=torch.float32).detach().to(dev).reshape(()) for v in losses.values()]
        return torch.stack(vals) if vals else torch.zeros(0, device=self.info.device)

    def _stop_non_finite(self, step: int, names: list[str], values: list[float]) -> None:
        terms = ", ".join(f"{k}={_fmt(v)}" for k, v in zip(names, values))
        ranks = f" (mean over {self.info.world_size} ranks)" if self.info.world_size > 1 else ""
        if self.last_checkpoint is not None:
            where = (f"the last good checkpoint {self.last_checkpoint} is untouched; resume from it "
                     f"(e.g. with a lower learning rate)")
        else:
            where = "no checkpoint was written yet"
        raise UserError(f"non-finite loss at step {step}: {terms}{ranks}; training stopped, {where}")

    def _write_images(self, writer, step: int) -> None:
        saved = rng_state()  # image sampling must not shift the training's random streams
        try:
            with torch.no_grad():
                images = self.image_fn(step)
        finally:
            set_rng_state(saved)
        for tag, x in (images or {}).items():
            x = x.detach().float().cpu()
            if x.dim() == 3:
                x = x[None]
            writer.add_images(tag, ((x + 1) / 2).clamp(0, 1), step)

    def train(self) -> dict[str, float]:
        """Run iterations ``self.step .. total_steps - 1``; returns the last logged loss values.

        Raises UserError on a non-finite loss (naming the step and every term; nothing is saved for
        that step), when the data runs out, or when a fresh (not resumed) run would overwrite the
        checkpoints already in ``run_dir``."""
        main = self.info.rank == 0
        if not self._resumed and latest_checkpoint(self.checkpoint_root) is not None:
            raise UserError(f"{self.run_dir} already holds checkpoints: resume it (--resume) or choose another folder")
        writer = None
        bar = None
        start = self.step
        try:
            if main:
                self.run_dir.mkdir(parents=True, exist_ok=True)
                self._write_run_config()
                from torch.utils.tensorboard import SummaryWriter

                # a resumed run purges what the stopped one logged after its checkpoint: steps > start (the
                # point logged at step `start` itself belongs to the checkpointed state and is kept)
                writer = SummaryWriter(log_dir=str(self.run_dir / "tb"), purge_step=start + 1 if start > 0 else None)
                from tqdm import tqdm

                bar = tqdm(total=self.total_steps, initial=start, disable=not self.progress, dynamic_ncols=True,
                           desc=self.run_dir.name, unit="it")
            batches = iter(self.data(start))
            if self._pending_rng is not None:  # after data(): a loader drawing seeds must not shift them
                set_rng_state(self._pending_rng)
                self._pending_rng = None
            t_last, n_last = time.perf_counter(), start
            for step in range(start, self.total_steps):
                try:
                    batch = next(batches)
                except StopIteration:
                    raise UserError(f"the data ran out at step {step} of {self.total_steps}") from None
                if self.lr_factor is not None:
                    factor = float(self.lr_factor(step))
                    for k, opt in self.optimizers.items():
                        for group, base in zip(opt.param_groups, self._base_lrs[k]):
                            group["lr"] = base * factor
                losses = self.step_fn(batch, step)
                names = list(losses)
                values = dist_utils.all_reduce_mean(self._losses_vector(losses)).tolist()
                if not all(math.isfinite(v) for v in values):
                    self._stop_non_finite(step, names, values)
                self.amp.update()
                for name, ema_net in self.ema.items():
                    beta = self.ema_beta(step) if callable(self.ema_beta) else self.ema_beta
                    ema_update(ema_net, self.networks[name], beta)
                self.step = step + 1
                self.last_losses = dict(zip(names, values))
                if bar is not None:
                    bar.update(1)
                if self.step % self.log_every == 0 or self.step == self.total_steps:
                    now = time.perf_counter()
                    rate = (self.step - n_last) / max(now - t_last, 1e-9)
                    t_last, n_last = now, self.step
                    if writer is not None:
                        for k, v in self.last_losses.items():
                            writer.add_scalar(f"loss/{k}", v, self.step)
                        for k, opt in self.optimizers.items():
                            writer.add_scalar(f"lr/{k}", opt.param_groups[0]["lr"], self.step)
                        writer.add_scalar("time/steps_per_second", rate, self.step)
                    if bar is not None:
                        bar.set_postfix({k: _fmt(v) for k, v in self.last_losses.items()}, refresh=False)
                if writer is not None and self.image_fn is not None and self.image_every > 0 \
                        and self.step % self.image_every == 0:
                    self._write_images(writer, self.step)
                if self.step % self.checkpoint_every == 0 or self.step == self.total_steps:
                    self.save_checkpoint()
                    if writer is not None:
                        writer.flush()
        finally:
            if bar is not None:
                bar.close()
            if writer is not None:
                writer.close()
        return self.last_losses

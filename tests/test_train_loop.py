"""The shared training loop: exact resume, DDP on gloo, NaN stop, checkpoint mismatches, atomic writes."""
from __future__ import annotations

import copy
import itertools
import json
import os
import random
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from deblur_rotate.errors import UserError
from deblur_rotate.train import checkpoint as ckpt
from deblur_rotate.train.checkpoint import (
    STATE_NAME,
    latest_checkpoint,
    list_checkpoints,
    load_network,
    load_training_state,
    load_weights,
    save_network,
    save_training_state,
)
from deblur_rotate.train.loop import Trainer, ema_update


class TinyMLP(nn.Module):
    """[N, n_in] -> [N, n_out]."""

    def __init__(self, hidden: int = 16, n_in: int = 4, n_out: int = 2):
        super().__init__()
        self.config = {"hidden": hidden, "n_in": n_in, "n_out": n_out}
        self.net = nn.Sequential(nn.Linear(n_in, hidden), nn.Tanh(), nn.Linear(hidden, n_out))

    def forward(self, x):
        return self.net(x)


class Stage:
    """Everything a stage hands to the Trainer, for a toy regression with noise from every RNG."""

    def __init__(self, run_dir, total, *, seed=0, checkpoint_every=3, kill_at=None, nan_at=None):
        torch.manual_seed(seed), random.seed(seed), np.random.seed(seed)
        self.net = TinyMLP()
        self.ema = copy.deepcopy(self.net).requires_grad_(False)
        self.opt = torch.optim.Adam(self.net.parameters(), lr=1e-2)
        self.sched = torch.optim.lr_scheduler.StepLR(self.opt, step_size=4, gamma=0.5)

        def data(start):
            for s in itertools.count(start):
                g = torch.Generator().manual_seed(1000 + s)
                yield torch.randn(8, 4, generator=g), torch.randn(8, 2, generator=g)

        def step_fn(batch, step):
            if step == kill_at:
                raise KeyboardInterrupt  # the process dies mid-run
            x, y = batch
            # noise from torch, python and numpy global RNGs: all three must be restored on resume
            x = x + 0.01 * torch.randn_like(x) + 0.001 * random.random() + 0.001 * float(np.random.rand())
            loss = (self.net(x) - y).square().mean()
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
            self.sched.step()
            if step == nan_at:
                return {"mse": torch.tensor(float("nan")), "reg": 0.25}
            return {"mse": loss, "reg": 0.25}

        self.trainer = Trainer(
            run_dir=run_dir, networks={"net": self.net}, optimizers={"adam": self.opt}, step_fn=step_fn,
            data=data, total_steps=total, checkpoint_every=checkpoint_every, log_every=2,
            ema={"net": self.ema}, ema_beta=0.9, extra_state={"sched": self.sched},
            run_config={"total": total, "lr": 1e-2}, progress=False,
        )


def _same(a, b) -> bool:
    """Deep, bit-exact equality of nested state dicts."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def test_resume_is_bit_exact(tmp_path):
    straight = Stage(tmp_path / "a", total=10)
    straight.trainer.train()

    interrupted = Stage(tmp_path / "b", total=10, kill_at=7)
    with pytest.raises(KeyboardInterrupt):
        interrupted.trainer.train()
    assert latest_checkpoint(tmp_path / "b" / "checkpoints").name == "step-00000006"

    # a new process: other global RNG states, another initialisation
    torch.manual_seed(999), random.seed(999), np.random.seed(999)
    resumed = Stage(tmp_path / "b", total=10, seed=5)
    with pytest.raises(UserError, match="already holds checkpoints"):
        resumed.trainer.train()  # a fresh run must not overwrite
    assert resumed.trainer.resume() == 6
    resumed.trainer.train()

    assert _same(straight.net.state_dict(), resumed.net.state_dict())
    assert _same(straight.ema.state_dict(), resumed.ema.state_dict())
    assert _same(straight.opt.state_dict(), resumed.opt.state_dict())
    assert _same(straight.sched.state_dict(), resumed.sched.state_dict())
    assert not _same(straight.net.state_dict(), straight.ema.state_dict())
    # latest + previous kept; the weights folder rebuilds the network
    assert [p.name for p in list_checkpoints(tmp_path / "a" / "checkpoints")] == ["step-00000009", "step-00000010"]
    final = latest_checkpoint(tmp_path / "a" / "checkpoints")
    loaded = load_network(final / "net", TinyMLP)
    assert _same(loaded.state_dict(), straight.net.state_dict())
    assert json.loads((tmp_path / "a" / "config.json").read_text()) == {"total": 10, "lr": 1e-2}
    assert any((tmp_path / "a" / "tb").iterdir())


_DDP_SCRIPT = textwrap.dedent("""
    import json, sys
    import torch
    from safetensors.torch import save_file
    from deblur_rotate.train import distributed as D
    from deblur_rotate.train.loop import Trainer

    out = sys.argv[1]
    info = D.setup(device="cpu")
    torch.manual_seed(info.rank)  # different initialisations: DDP must broadcast rank 0's
    net = torch.nn.Linear(3, 2)
    init = {k: v.clone() for k, v in net.state_dict().items()}
    ddp = D.wrap_ddp(net)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)

    def data(start):
        for s in range(start, 10**9):
            yield torch.randn(4, 3, generator=D.rank_generator(7, step=s)) * (info.rank + 1)

    def step_fn(x, step):
        loss = ddp(x).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        return {"l2": loss}

    # each rank gets its own run folder, so the test can see which ranks wrote
    Trainer(run_dir=f"{out}/run_{info.rank}", networks={"net": ddp}, optimizers={"sgd": opt}, step_fn=step_fn,
            data=data, total_steps=4, checkpoint_every=2, log_every=1, network_configs={"net": {}},
            run_config={"world_size": info.world_size}, progress=False).train()
    save_file({**{k: v.contiguous() for k, v in net.state_dict().items()},
               **{"init." + k: v for k, v in init.items()}}, f"{out}/params_{info.rank}.safetensors")
    with open(f"{out}/info_{info.rank}.json", "w") as f:
        json.dump({"rank": info.rank, "world_size": info.world_size, "backend": info.backend}, f)
    D.shutdown()
""")


def test_ddp_two_processes_gloo(tmp_path):
    from safetensors.torch import load_file

    script = tmp_path / "ddp_job.py"
    script.write_text(_DDP_SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(script), str(tmp_path)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    infos = [json.loads((tmp_path / f"info_{r}.json").read_text()) for r in range(2)]
    assert [(i["rank"], i["world_size"], i["backend"]) for i in infos] == [(0, 2, "gloo"), (1, 2, "gloo")]
    p0, p1 = (load_file(tmp_path / f"params_{r}.safetensors") for r in range(2))
    assert not torch.equal(p0["init.weight"], p1["init.weight"])
    for k in ("weight", "bias"):
        assert torch.equal(p0[k], p1[k]), k
        assert not torch.equal(p0[k], p0["init." + k]), "did not train"
    # only rank 0 wrote
    assert (tmp_path / "run_0" / "config.json").is_file()
    assert [p.name for p in list_checkpoints(tmp_path / "run_0" / "checkpoints")] == ["step-00000002",
                                                                                      "step-00000004"]
    assert any((tmp_path / "run_0" / "tb").iterdir())
    assert not (tmp_path / "run_1").exists()
    saved = load_training_state(tmp_path / "run_0" / "checkpoints" / "step-00000004" / STATE_NAME)
    assert saved["step"] == 4 and saved["world_size"] == 2 and len(saved["rng"]) == 2
    weights = load_file(tmp_path / "run_0" / "checkpoints" / "step-00000004" / "net" / "model.safetensors")
    assert torch.equal(weights["weight"], p0["weight"])


def test_resumed_run_keeps_every_logged_step(tmp_path):
    """TensorBoard purges what the killed run logged after its checkpoint, not the point logged at it."""
    import time

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    killed = Stage(tmp_path / "run", total=10, kill_at=8)  # checkpoints at 3 and 6; losses logged at 2, 4, 6, 8
    with pytest.raises(KeyboardInterrupt):
        killed.trainer.train()
    time.sleep(1.1)  # event files are named by the second: the resumed run's sorts after the killed one's
    resumed = Stage(tmp_path / "run", total=10)
    assert resumed.trainer.resume() == 6
    resumed.trainer.train()
    events = EventAccumulator(str(tmp_path / "run" / "tb"))
    events.Reload()
    steps = [e.step for e in events.Scalars("loss/mse")]
    assert steps == [2, 4, 6, 8, 10]  # 6 kept (logged before the checkpoint), the killed run's 8 replaced once
    assert len(list((tmp_path / "run" / "tb").glob("events.out.tfevents.*"))) == 2


def test_nan_stops_with_step_and_terms(tmp_path):
    stage = Stage(tmp_path / "run", total=10, checkpoint_every=2, nan_at=5)
    with pytest.raises(UserError) as err:
        stage.trainer.train()
    msg = str(err.value)
    assert "step 5" in msg and "mse=nan" in msg and "reg=0.25" in msg and "step-00000004" in msg
    root = tmp_path / "run" / "checkpoints"
    assert [p.name for p in list_checkpoints(root)] == ["step-00000002", "step-00000004"]
    assert not [p for p in root.iterdir() if p.name.startswith(".")]
    assert load_training_state(latest_checkpoint(root) / STATE_NAME)["step"] == 4
    load_network(latest_checkpoint(root) / "net", TinyMLP)
    assert Stage(tmp_path / "run", total=10).trainer.resume() == 4


def test_mismatch_names_keys_and_shapes(tmp_path):
    save_network(TinyMLP(hidden=16), tmp_path / "net", {"hidden": 16, "n_in": 4, "n_out": 2})
    with pytest.raises(UserError) as err:
        load_weights(TinyMLP(hidden=8), tmp_path / "net")
    msg = str(err.value)
    assert "shape mismatch" in msg and "net.0.weight (checkpoint [16, 4], model [8, 4])" in msg

    other = nn.Sequential()
    other.add_module("encoder", nn.Linear(4, 16))
    other.add_module("head", nn.Linear(16, 2))
    with pytest.raises(UserError) as err:
        load_weights(other, tmp_path / "net")
    msg = str(err.value)
    assert "missing keys: encoder.bias, encoder.weight, head.bias, head.weight" in msg
    assert "unexpected keys: net.0.bias, net.0.weight, net.2.bias, net.2.weight" in msg

    with pytest.raises(UserError, match="does not fit"):
        load_network(tmp_path / "net", nn.Linear)  # config keys are not nn.Linear's arguments
    with pytest.raises(UserError, match="no config.json"):
        load_network(tmp_path / "missing", TinyMLP)


def test_tied_weights_and_state_types_round_trip(tmp_path):
    tied = nn.Sequential(nn.Linear(3, 3, bias=False), nn.Linear(3, 3, bias=False))
    tied[1].weight = tied[0].weight
    save_network(tied, tmp_path / "tied", {})
    fresh = nn.Sequential(nn.Linear(3, 3, bias=False), nn.Linear(3, 3, bias=False))
    load_weights(fresh, tmp_path / "tied")
    assert torch.equal(fresh[0].weight, tied[0].weight) and torch.equal(fresh[1].weight, tied[0].weight)

    state = {"step": 3, "lr": 0.1 + 0.2, "betas": (0.9, 0.999), "ids": {0: torch.arange(3), "x": None},
             "np": np.arange(5, dtype=np.uint32), "flag": True, "inf": float("inf"), "view": torch.ones(4)[::2]}
    save_training_state(tmp_path / "s.safetensors", state)
    back = load_training_state(tmp_path / "s.safetensors")
    assert back["np"].dtype == np.uint32 and list(back["np"]) == [0, 1, 2, 3, 4]
    del back["np"], state["np"]
    assert _same(back, state)
    with pytest.raises(TypeError, match="without pickle"):
        save_training_state(tmp_path / "bad.safetensors", {"f": object()})
    ema = nn.Linear(2, 1)
    net = copy.deepcopy(ema)
    with torch.no_grad():
        net.weight.add_(1.0)
    ema_update(ema, net, beta=0.75)
    assert torch.allclose(ema.weight, net.weight - 0.75)
    # buffers (running statistics such as G's tracked mean W) are copied, not averaged
    bn_ema, bn = nn.BatchNorm1d(3), nn.BatchNorm1d(3)
    bn.running_mean.fill_(2.0)
    bn.num_batches_tracked.fill_(7)
    ema_update(bn_ema, bn, beta=0.9)
    assert torch.equal(bn_ema.running_mean, bn.running_mean) and int(bn_ema.num_batches_tracked) == 7


def test_failed_write_keeps_previous_checkpoint(tmp_path, monkeypatch):
    stage = Stage(tmp_path / "run", total=4, checkpoint_every=2)
    real = ckpt.atomic_write_bytes

    def failing(path, data):
        if Path(path).name == STATE_NAME and stage.trainer.step == 4:
            Path(path).with_name(f".{STATE_NAME}.partial.tmp").write_bytes(data[: len(data) // 2])
            raise OSError("No space left on device")
        real(path, data)

    monkeypatch.setattr(ckpt, "atomic_write_bytes", failing)
    with pytest.raises(OSError, match="No space"):
        stage.trainer.train()
    monkeypatch.undo()
    root = tmp_path / "run" / "checkpoints"
    assert sorted(p.name for p in root.iterdir()) == ["latest.json", "step-00000002"]
    assert not [p for p in (tmp_path / "run").rglob("*") if ".tmp" in p.name or ".trash" in p.name]
    assert load_training_state(root / "step-00000002" / STATE_NAME)["step"] == 2

    # a failure inside the file write itself (the rename) leaves the old file and no temp file
    target = root / "step-00000002" / STATE_NAME
    before = target.read_bytes()
    import deblur_rotate.files as files

    def no_rename(src, dst):
        raise OSError("I/O error")

    monkeypatch.setattr(files.os, "replace", no_rename)
    with pytest.raises(OSError, match="I/O error"):
        save_training_state(target, {"step": 99})
    monkeypatch.undo()
    assert target.read_bytes() == before
    assert sorted(p.name for p in target.parent.iterdir()) == ["net", STATE_NAME]

    resumed = Stage(tmp_path / "run", total=4, checkpoint_every=2)
    assert resumed.trainer.resume() == 2
    resumed.trainer.train()
    assert latest_checkpoint(root).name == "step-00000004"


def test_infinite_sampler_splits_ranks_and_resumes():
    from deblur_rotate.train.distributed import InfiniteSampler

    def take(sampler, n):
        return [i for i, _ in zip(iter(sampler), range(n))]

    r0 = take(InfiniteSampler(10, seed=3, rank=0, world_size=2), 10)
    r1 = take(InfiniteSampler(10, seed=3, rank=1, world_size=2), 10)
    assert sorted(r0[:5] + r1[:5]) == list(range(10)) and sorted(r0[5:] + r1[5:]) == list(range(10))
    assert r0[:5] != r0[5:]  # a new permutation each epoch
    assert take(InfiniteSampler(10, seed=3, rank=1, world_size=2, start=7), 3) == r1[7:10]


def test_mixed_precision_bf16_on_cpu_and_fp16_refused():
    from deblur_rotate.errors import UserError
    from deblur_rotate.train.loop import MixedPrecision

    amp = MixedPrecision.from_precision("bf16", "cpu")
    layer = torch.nn.Linear(4, 4)
    with amp.autocast():
        out = layer(torch.randn(2, 4))
    assert amp.enabled and out.dtype == torch.bfloat16
    amp.backward(out.float().sum())  # no loss scaling needed for bf16
    assert layer.weight.grad is not None and layer.weight.grad.dtype == torch.float32
    off = MixedPrecision.from_precision("fp32", "cpu")
    with off.autocast():
        assert layer(torch.randn(2, 4)).dtype == torch.float32
    with pytest.raises(UserError, match="bfloat16 only"):
        MixedPrecision.from_precision("fp16", "cpu")
    with pytest.raises(UserError, match="must be fp32"):
        MixedPrecision.from_precision("fp8", "cpu")


def test_auto_precision_is_bf16_only_where_the_cpu_computes_it_natively(monkeypatch):
    """--precision auto: emulated bf16 is ~30x slower than fp32 on an AVX2-only CPU, so auto must pick fp32 there."""
    from deblur_rotate.precision import resolve_precision
    from deblur_rotate.train.loop import MixedPrecision

    cpu = torch.device("cpu")
    for native in (False, True):
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda native=native: native)
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
        want = "bf16" if native else "fp32"
        assert resolve_precision("auto", cpu) == want
        amp = MixedPrecision.from_precision("auto", "cpu")
        assert amp.precision == want and amp.enabled == native
    assert resolve_precision("fp32", cpu) == "fp32" and resolve_precision("bf16", cpu) == "bf16"


def test_linear_lr_decay_is_applied_per_step_and_resumes_from_the_built_lr(tmp_path):
    from deblur_rotate.train.loop import linear_decay

    assert linear_decay(10, 0.0) is None
    f = linear_decay(10, 0.5)
    assert [f(s) for s in (0, 4, 5)] == [1.0, 1.0, 1.0] and f(10) == 0.0 and abs(f(7.5) - 0.5) < 1e-9

    seen = []

    def run(total, resume):
        net = TinyMLP()
        opt = torch.optim.SGD(net.parameters(), lr=0.1)

        def data(start):
            for s in itertools.count(start):
                yield torch.full((2, 4), float(s))

        def step_fn(batch, step):
            seen.append((step, opt.param_groups[0]["lr"]))
            loss = net(batch).square().mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            return {"loss": loss}

        trainer = Trainer(run_dir=tmp_path / "run", networks={"net": net}, optimizers={"sgd": opt}, step_fn=step_fn,
                          data=data, total_steps=total, checkpoint_every=4, progress=False,
                          lr_factor=linear_decay(10, 0.5))
        if resume:
            trainer.resume()  # the checkpoint's optimizer holds a decayed lr; the factor scales the built one
        trainer.train()

    run(6, resume=False)
    run(10, resume=True)  # continues from the step-6 checkpoint
    lrs = dict(seen)
    assert lrs[0] == 0.1 and lrs[5] == 0.1
    assert abs(lrs[6] - 0.1 * 0.8) < 1e-12 and abs(lrs[9] - 0.1 * 0.2) < 1e-12


@pytest.mark.parametrize("damage", ["state", "weights"])
def test_resume_falls_back_to_the_previous_checkpoint_when_the_latest_is_damaged(tmp_path, capsys, damage):
    """A corrupt latest checkpoint (truncated training state, or damaged weights) is skipped with a warning: the
    run resumes from the one before it (the loop keeps two) and ends bit-identical to an uninterrupted run."""
    straight = Stage(tmp_path / "straight", total=12)
    straight.trainer.train()

    first = Stage(tmp_path / "run", total=9)  # checkpoints at 6 and 9 are kept
    first.trainer.train()
    root = tmp_path / "run" / "checkpoints"
    assert [p.name for p in list_checkpoints(root)] == ["step-00000006", "step-00000009"]
    target = root / "step-00000009" / (STATE_NAME if damage == "state" else "net/model.safetensors")
    target.write_bytes(target.read_bytes()[: len(target.read_bytes()) // 2])  # a kill mid-copy, a bad disk
    capsys.readouterr()

    resumed = Stage(tmp_path / "run", total=12, seed=3)
    assert resumed.trainer.resume() == 6
    err = capsys.readouterr().err
    assert "step-00000009 cannot be loaded" in err and "resumed from the previous complete checkpoint" in err
    assert "step-00000006" in err and "(step 6)" in err
    resumed.trainer.train()
    assert _same(straight.net.state_dict(), resumed.net.state_dict())
    assert _same(straight.opt.state_dict(), resumed.opt.state_dict())
    assert load_training_state(latest_checkpoint(root) / STATE_NAME)["step"] == 12


def test_resume_without_a_loadable_checkpoint_names_every_failure(tmp_path):
    Stage(tmp_path / "run", total=6).trainer.train()  # checkpoints at 3 and 6
    root = tmp_path / "run" / "checkpoints"
    for step in (3, 6):
        (root / f"step-{step:08d}" / STATE_NAME).write_bytes(b"not a safetensors file")
    with pytest.raises(UserError) as err:
        Stage(tmp_path / "run", total=9).trainer.resume()
    msg = str(err.value)
    assert msg.startswith("cannot resume: ") and "step-00000006" in msg and "older checkpoints failed too" in msg
    assert "step-00000003" in msg
    # a step folder named directly has no fallback
    with pytest.raises(UserError, match="unreadable training state"):
        Stage(tmp_path / "other", total=9).trainer.resume(root / "step-00000006")

"""Stage 1 (StyleGAN2 generator training): losses, a micro run, exact resume, errors, CLI."""
import argparse
import itertools

import numpy as np
import pytest
import torch
from PIL import Image

from deblur_rotate.errors import UserError
from deblur_rotate.train.gan import (
    GeneratorConfig,
    GeneratorStage,
    d_loss_logistic,
    g_loss_nonsaturating,
    lazy_adam,
    path_length_penalty,
    r1_penalty,
)
from deblur_rotate.train.loop import ema_beta_for

# ----------------------------------------------------------------------------------------------- losses

def test_d_loss_decreases_when_reals_score_higher():
    fake = torch.zeros(4, 1)
    losses = [d_loss_logistic(torch.full((4, 1), s), fake).item() for s in (-2.0, 0.0, 2.0, 5.0)]
    assert all(a > b for a, b in itertools.pairwise(losses))
    assert d_loss_logistic(torch.zeros(3, 1), torch.zeros(3, 1)).item() == pytest.approx(2 * np.log(2))
    # lower fake scores also lower the loss
    assert d_loss_logistic(None, torch.full((2, 1), -3.0)) < d_loss_logistic(None, torch.full((2, 1), 3.0))


def test_g_loss_values_and_sign():
    assert g_loss_nonsaturating(torch.zeros(5, 1)).item() == pytest.approx(np.log(2))
    assert g_loss_nonsaturating(torch.full((2, 1), 4.0)) < g_loss_nonsaturating(torch.full((2, 1), -4.0))
    x = torch.tensor([[1.5], [-0.5]])
    assert g_loss_nonsaturating(x).item() == pytest.approx(np.log1p(np.exp(-x.numpy())).mean(), rel=1e-6)


def test_r1_equals_analytic_gradient_norm_for_linear_d():
    torch.manual_seed(0)
    w = torch.randn(3, 4, 4)
    x = torch.randn(5, 3, 4, 4, requires_grad=True)
    logits = (x * w).flatten(1).sum(1, keepdim=True) + 0.3  # D(x) = <w, x> + b: gradient w for every sample
    r1 = r1_penalty(logits, x)
    assert r1.shape == (5,)
    torch.testing.assert_close(r1, torch.full((5,), w.square().sum().item()))


def test_path_length_penalty_linear_synthesis():
    torch.manual_seed(0)
    ws = torch.randn(3, 2, 4, requires_grad=True)
    a = torch.randn(2 * 4, 3 * 2 * 2)
    imgs = (ws.flatten(1) @ a).reshape(3, 3, 2, 2)
    noise = torch.randn(3, 3, 2, 2)
    pen, new_mean = path_length_penalty(imgs, ws, torch.tensor(0.0), decay=1.0, noise=noise)
    grads = (noise.flatten(1) @ a.T).reshape(3, 2, 4)  # J^T y per sample
    lengths = grads.square().sum(2).mean(1).sqrt()
    torch.testing.assert_close(new_mean, lengths.mean())
    torch.testing.assert_close(pen, (lengths - lengths.mean()).square())


def test_lazy_adam_and_ema_beta():
    p = [torch.nn.Parameter(torch.zeros(2))]
    opt = lazy_adam(p, 0.002, (0.0, 0.99), 16)
    g = opt.param_groups[0]
    assert g["lr"] == pytest.approx(0.002 * 16 / 17) and g["betas"][1] == pytest.approx(0.99 ** (16 / 17))
    assert lazy_adam(p, 0.002, (0.0, 0.99), None).param_groups[0]["lr"] == 0.002
    assert ema_beta_for(32, 10_000) == pytest.approx(0.5 ** (32 / 10_000))
    assert ema_beta_for(8, 10_000, rampup=0.05, step=0) < ema_beta_for(8, 10_000, rampup=0.05, step=1000)


# ------------------------------------------------------------------------------------------------- runs

@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("faces")
    rng = np.random.default_rng(0)
    for i in range(6):
        Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(root / f"{i:03d}.png")
    return root


def _config(data, out, steps, **kw):
    base = {"preset": "micro", "data": str(data), "out": str(out), "steps": steps, "batch": 4,
            "checkpoint_every": 2, "log_every": 1, "r1_every": 2, "pl_weight": 1.0, "pl_every": 2, "grid": 4,
            "progress": False}
    base.update(kw)
    return GeneratorConfig(**base)


def _weights(stage):
    return {f"{name}.{k}": v.detach().clone() for name, net in (("G", stage.G), ("D", stage.D), ("E", stage.G_ema))
            for k, v in net.state_dict().items()}


@pytest.fixture(scope="module")
def straight_run(image_folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "straight"
    stage = GeneratorStage(_config(image_folder, out, 4))
    losses = stage.run()
    return out, stage, losses


def test_micro_run_writes_everything(straight_run):
    from deblur_rotate.models.io import load_pretrained
    from deblur_rotate.models.stylegan2 import Generator

    out, stage, losses = straight_run
    assert {"G", "D", "D_real", "D_fake"} <= set(losses)
    assert (out / "checkpoints" / "step-00000004" / "G" / "model.safetensors").is_file()
    assert (out / "checkpoints" / "step-00000002" / "training_state.safetensors").is_file()
    assert (out / "samples" / "step-00000004.png").is_file()
    grid = np.asarray(Image.open(out / "samples" / "step-00000004.png"))
    assert grid.shape == (2 + 2 * 34, 2 + 2 * 34, 3)  # 2 x 2 grid of 32 px with 2 px padding
    assert (out / "config.json").is_file()
    G = load_pretrained(Generator, out / "generator")
    assert G.img_resolution == 32
    for k, v in G.state_dict().items():
        torch.testing.assert_close(v, stage.G_ema.state_dict()[k].cpu(), rtol=0, atol=0)
    assert any(t.abs().sum() > 0 for t in [stage.G.mapping.w_avg])  # w_avg tracked during training


def test_resume_is_bit_exact(straight_run, image_folder, tmp_path):
    _, straight, _ = straight_run
    out = tmp_path / "resumed"
    GeneratorStage(_config(image_folder, out, 2)).run()
    stage = GeneratorStage(_config(image_folder, out, 4, resume=True))
    stage.run()
    a, b = _weights(straight), _weights(stage)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_resume_with_other_preset_is_a_clear_error(straight_run, image_folder):
    out, _, _ = straight_run
    with pytest.raises(UserError, match="preset micro.*--preset tiny"):
        GeneratorStage(_config(image_folder, out, 8, preset="tiny", batch=2, resume=True)).run()


def test_empty_folder_is_a_user_error(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UserError, match="expected images"):
        GeneratorStage(_config(empty, tmp_path / "run", 2))
    with pytest.raises(UserError, match="does not exist"):
        GeneratorStage(_config(tmp_path / "missing", tmp_path / "run", 2))


def test_synthbmfd_middle_target(tmp_path):
    from conftest import SMALL_MODEL

    from deblur_rotate.data.synthbmfd import SynthBMFD, SynthConfig, generate
    from deblur_rotate.train.gan import SharpImages

    root = tmp_path / "synth"
    generate(root, SynthConfig(subjects=1, test_subjects=0, performances=1, size=32, fps=10, seconds=0.5,
                               views=2, supersample=1, model=SMALL_MODEL), progress=False)
    ds = SynthBMFD(root, m=2, size=32)
    sharp = SharpImages(ds)
    assert len(sharp) == len(ds)
    torch.testing.assert_close(sharp[0], ds[0]["targets"][2])
    all5 = SharpImages(ds, all_frames=True, mirror=True)
    assert len(all5) == 10 * len(ds)
    torch.testing.assert_close(all5[2 * 3 + 1], ds[0]["targets"][3].flip(-1))


# -------------------------------------------------------------------------------------------------- CLI

def test_cli_parses(image_folder, tmp_path):
    from deblur_rotate.train.commands import add_train_parser

    parser = argparse.ArgumentParser()
    add_train_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["train", "generator", "--preset", "micro", "--data", str(image_folder), "--out",
                              str(tmp_path / "r"), "--steps", "3", "--batch", "4", "--resume", "--r1-gamma", "2",
                              "--r1-every", "8", "--pl-weight", "0", "--lr", "0.001", "--checkpoint-every", "5",
                              "--log-every", "1", "--seed", "3", "--device", "cpu"])
    assert args.stage == "generator" and args.preset == "micro" and args.r1_gamma == 2.0 and args.resume
    assert args.func.__name__ == "run_generator"
    with pytest.raises(SystemExit):
        parser.parse_args(["train", "generator", "--preset", "huge", "--data", "x", "--out", "y"])

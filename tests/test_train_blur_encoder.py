"""Stage 3 (E_v distilled from E_s): the order-invariant latent loss, data, a micro run with exact resume,
overfitting one batch, teacher errors, CLI."""
import pytest
import torch
from conftest import SMALL_MODEL

from deblur_rotate.cli import main
from deblur_rotate.data.synthbmfd import SynthBMFD, SynthConfig, generate
from deblur_rotate.errors import UserError
from deblur_rotate.losses import order_invariant_latent_loss
from deblur_rotate.models.encoders import SharpEncoder, encoder_config
from deblur_rotate.models.io import load_pretrained, read_weights, save_pretrained
from deblur_rotate.models.stylegan2 import Generator, stylegan2_config
from deblur_rotate.train.blur_encoder import (
    BlurEncoderConfig,
    BlurEncoderStage,
    BlurSequences,
)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Micro networks: one intra-op thread is as fast as two on an idle machine and far faster when other
    processes share the cores (OpenMP threads then wait for each other); the previous count is restored."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory, small_model):
    root = tmp_path_factory.mktemp("synth_ev") / "ds"
    config = SynthConfig(subjects=3, test_subjects=1, performances=1, size=32, fps=112.0, seconds=0.12,
                         supersample=1, model=dict(SMALL_MODEL), seed=7)
    generate(root, config, progress=False, model=small_model)
    return root


@pytest.fixture(scope="module")
def teachers(tmp_path_factory):
    """(E_s folder, G folder): a micro generator and a micro sharp encoder with a random (non-zero) head,
    so that different frames get different codes."""
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("teachers")
    G = Generator(**stylegan2_config("micro"))
    with torch.no_grad():  # a plausible tracked mean of W
        G.mapping(torch.randn(64, G.z_dim), update_w_avg=True)
    E_s = SharpEncoder(num_ws=G.num_ws, w_dim=G.w_dim, **encoder_config("micro", "sharp"))
    E_s.set_latent_offset(G.mapping.w_avg)
    with torch.no_grad():
        E_s.head.weight.normal_(0.0, 0.2)
    return save_pretrained(E_s, folder / "sharp_encoder"), save_pretrained(G, folder / "generator")


def _config(tmp_path, synth_root, teachers, out="run", **kw):
    base = {"preset": "micro", "data": str(synth_root), "sharp_encoder": str(teachers[0]),
            "generator": str(teachers[1]), "out": str(tmp_path / out), "steps": 4, "m": 4, "batch": 2,
            "checkpoint_every": 2, "log_every": 1, "grid": 2, "progress": False, "device": "cpu"}
    base.update(kw)
    return BlurEncoderConfig(**base)


# ------------------------------------------------------------------------------------------------- loss

def test_order_invariant_latent_loss_picks_the_better_order():
    torch.manual_seed(0)
    pred = torch.randn(3, 5, 4, 6)
    loss, rev = order_invariant_latent_loss(pred, pred.clone())
    assert torch.all(loss == 0) and not rev.any()
    loss, rev = order_invariant_latent_loss(pred, pred.flip(1))
    assert torch.all(loss == 0) and rev.all()
    # a mixed batch: sample 1 reversed and perturbed, the others forward and perturbed
    target = pred + 0.1 * torch.randn_like(pred)
    target[1] = target[1].flip(0)
    loss, rev = order_invariant_latent_loss(pred, target)
    assert rev.tolist() == [False, True, False]
    expected = torch.stack([(pred[0] - target[0]).abs().mean(), (pred[1] - target[1].flip(0)).abs().mean(),
                            (pred[2] - target[2]).abs().mean()])
    torch.testing.assert_close(loss, expected)
    assert 0.05 < float(loss.mean()) < 0.12  # mean |N(0, 0.1^2)| = 0.08
    loss2, rev2 = order_invariant_latent_loss(pred, target, kind="l2")
    assert rev2.tolist() == [False, True, False]
    torch.testing.assert_close(loss2[0], (pred[0] - target[0]).square().mean())
    with pytest.raises(ValueError):
        order_invariant_latent_loss(pred, target[:, :4])
    with pytest.raises(ValueError):
        order_invariant_latent_loss(pred, target, kind="huber")


def test_order_invariant_latent_loss_gradient_follows_the_chosen_order():
    torch.manual_seed(1)
    target = torch.randn(1, 5, 2, 3)
    pred = (target.flip(1) + 0.01).requires_grad_(True)  # near the reversed target
    loss, rev = order_invariant_latent_loss(pred, target)
    loss.mean().backward()
    assert rev.item()
    # the gradient pulls pred towards the reversed target: every entry sits 0.01 above it
    assert torch.all(pred.grad > 0)


def test_blur_sequences_mirror_blurry_and_targets_together(synth_root):
    base = SynthBMFD(synth_root, split="train", m=4)
    pairs = BlurSequences(base, mirror=True)
    assert len(pairs) == 2 * len(base)
    a, b = pairs[6], pairs[7]
    assert a["blurry"].shape == (3, 32, 32) and a["targets"].shape == (5, 3, 32, 32)
    torch.testing.assert_close(a["blurry"], base[3]["blurry"])
    torch.testing.assert_close(b["blurry"], a["blurry"].flip(-1))
    torch.testing.assert_close(b["targets"], a["targets"].flip(-1))
    assert not torch.equal(b["blurry"], a["blurry"])  # faces are not symmetric, so the flip shows
    assert len(BlurSequences(base, mirror=False)) == len(base)


# ------------------------------------------------------------------------------------------------- runs

def test_micro_run_writes_blur_encoder_and_resumes_exactly(tmp_path, synth_root, teachers):
    kw = {"jitter": True, "lambda_image": 0.5}
    stage = BlurEncoderStage(_config(tmp_path, synth_root, teachers, **kw))
    # E_v starts at the teacher's average face for every frame
    E_s = load_pretrained("encoders.sharp", teachers[0])
    start = stage.E_ema(torch.zeros(2, 3, 32, 32))  # eval mode: the trained copy's BN statistics stay untouched
    assert start.shape == (2, 5, 8, 32)
    torch.testing.assert_close(start, E_s.latent_offset.expand_as(start))
    losses = stage.run()
    assert {"latent", "image", "total", "reversed", "psnr"} <= set(losses)
    assert 0.0 <= losses["reversed"] <= 1.0 and losses["latent"] > 0
    run = tmp_path / "run"
    assert (run / "blur_encoder" / "config.json").is_file() and (run / "blur_encoder" / "model.safetensors").is_file()
    assert list((run / "samples").glob("step-*.png")) and (run / "config.json").is_file()
    E_v = load_pretrained("encoders.blur", run / "blur_encoder")
    assert E_v.num_frames == 5 and E_v(torch.zeros(1, 3, 32, 32)).shape == (1, 5, 8, 32)
    trained = read_weights(run / "blur_encoder")
    assert not torch.equal(trained["head.weight"], torch.zeros_like(trained["head.weight"]))

    # the same run in two halves: stop at step 2, resume to 4; the weights match bit for bit
    half = BlurEncoderStage(_config(tmp_path, synth_root, teachers, out="halves", steps=2, **kw))
    half.run()
    more = BlurEncoderStage(_config(tmp_path, synth_root, teachers, out="halves", steps=4, resume=True, **kw))
    more.run()
    assert more.trainer.step == 4
    resumed = read_weights(tmp_path / "halves" / "blur_encoder")
    assert all(torch.equal(trained[k], resumed[k]) for k in trained)


def test_init_from_starts_from_a_trained_encoder_and_refuses_another_architecture(tmp_path, synth_root, teachers):
    first = BlurEncoderStage(_config(tmp_path, synth_root, teachers, out="first", steps=2, grid=0))
    first.run()
    trained = read_weights(tmp_path / "first" / "blur_encoder")
    warm = BlurEncoderStage(_config(tmp_path, synth_root, teachers, out="warm", steps=0, grid=0,
                                    init_from=str(tmp_path / "first" / "blur_encoder")))
    start = {k: v for k, v in warm.E.state_dict().items() if k in trained}
    assert all(torch.equal(start[k], trained[k]) for k in trained)  # E_v and its EMA copy start there
    assert all(torch.equal(warm.E_ema.state_dict()[k], trained[k]) for k in trained)
    cold = BlurEncoderStage(_config(tmp_path, synth_root, teachers, out="cold", steps=0, grid=0))
    assert not torch.equal(cold.E.state_dict()["head.weight"], trained["head.weight"])
    with pytest.raises(UserError, match="head"):  # another head: a clear mismatch, not a silent partial load
        BlurEncoderStage(_config(tmp_path, synth_root, teachers, out="other", steps=0, grid=0, head_grid=2,
                                 init_from=str(tmp_path / "first" / "blur_encoder")))
    with pytest.raises(UserError, match="--init-from .* not found"):
        BlurEncoderStage(_config(tmp_path, synth_root, teachers, out="none", init_from=str(tmp_path / "nope")))


def test_overfitting_one_batch_lowers_the_latent_loss(tmp_path, synth_root, teachers):
    torch.manual_seed(0)
    stage = BlurEncoderStage(_config(tmp_path, synth_root, teachers, grid=0, lr=3e-3, batch=4, mirror=False))
    batch = next(stage.batches(0))
    first = stage.step_fn(batch, 0)
    for step in range(1, 40):
        last = stage.step_fn(batch, step)
    assert first["latent"] > 0
    assert last["latent"] < 0.25 * first["latent"]  # about 0.06x in practice


def test_bad_teachers_are_user_errors(tmp_path, synth_root, teachers):
    es, g = teachers
    with pytest.raises(UserError, match="sharp encoder folder .* not found"):
        BlurEncoderStage(_config(tmp_path, synth_root, (tmp_path / "nope", g)))
    with pytest.raises(UserError, match="generator folder .* not found"):
        BlurEncoderStage(_config(tmp_path, synth_root, (es, tmp_path / "nope")))
    with pytest.raises(UserError, match="required"):
        BlurEncoderStage(_config(tmp_path, synth_root, ("", g)))
    with pytest.raises(UserError, match="expected a 'encoders.sharp'"):  # the generator given as E_s
        BlurEncoderStage(_config(tmp_path, synth_root, (g, g)))
    # a teacher of another preset: a tiny E_s with the micro G, a tiny G with --preset micro
    tiny_es = save_pretrained(SharpEncoder(num_ws=10, w_dim=256, **encoder_config("micro", "sharp")),
                              tmp_path / "tiny_es")
    with pytest.raises(UserError, match="preset micro needs 8 x 32"):
        BlurEncoderStage(_config(tmp_path, synth_root, (tiny_es, g)))
    tiny_g = save_pretrained(Generator(**stylegan2_config("tiny")), tmp_path / "tiny_g")
    with pytest.raises(UserError, match="preset"):
        BlurEncoderStage(_config(tmp_path, synth_root, (es, tiny_g)))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UserError):
        BlurEncoderStage(_config(tmp_path, empty, teachers))
    with pytest.raises(UserError, match="--latent-loss"):
        BlurEncoderStage(_config(tmp_path, synth_root, teachers, latent_loss="l3"))


def test_cli_runs_and_reports_missing_teacher(tmp_path, synth_root, teachers, capsys):
    common = ["train", "blur-encoder", "--preset", "micro", "--data", str(synth_root), "--generator",
              str(teachers[1]), "--steps", "1", "--m", "4", "--batch", "2", "--no-progress", "--device", "cpu"]
    code = main(common + ["--sharp-encoder", str(tmp_path / "missing"), "--out", str(tmp_path / "bad")])
    assert code == 2
    assert "sharp encoder folder" in capsys.readouterr().err
    code = main(common + ["--sharp-encoder", str(teachers[0]), "--out", str(tmp_path / "ok"), "--no-mirror",
                          "--latent-loss", "l2", "--grid", "0"])
    assert code == 0
    assert (tmp_path / "ok" / "blur_encoder" / "model.safetensors").is_file()
    assert "E_v written to" in capsys.readouterr().out


def test_image_term_on_a_subset_of_frames(tmp_path, synth_root, teachers):
    """image_frames=2: two of the five frames go through G per step, drawn per step (same draw on resume),
    and the image term still trains E_v."""
    stage = BlurEncoderStage(_config(tmp_path, synth_root, teachers, lambda_image=1.0, image_frames=2, grid=0,
                                     lr=3e-3, mirror=False))
    picks = [tuple(stage.image_frame_indices(s).tolist()) for s in range(20)]
    assert all(len(p) == 2 and p[0] < p[1] for p in picks) and len(set(picks)) > 3
    assert picks == [tuple(stage.image_frame_indices(s).tolist()) for s in range(20)]  # deterministic
    batch = next(stage.batches(0))
    first = stage.step_fn(batch, 0)
    assert {"image", "psnr"} <= set(first)
    for step in range(1, 15):
        last = stage.step_fn(batch, step)
    assert last["total"] < first["total"]
    with pytest.raises(UserError, match="image-frames"):
        BlurEncoderStage(_config(tmp_path, synth_root, teachers, image_frames=6))


def test_encoder_heads_with_a_feature_grid_and_a_bottleneck_round_trip(tmp_path):
    """head_grid=2 (+ head_bottleneck): the head reads the flattened 2 x 2 map through a rank-6 factor; the
    options survive save/load; a plain encoder's config has no new keys (old config.json files load)."""
    from deblur_rotate.models.encoders import BlurEncoder, SharpEncoder, encoder_config
    from deblur_rotate.models.io import load_pretrained, save_pretrained

    torch.manual_seed(0)
    arch = encoder_config("micro", "blur")
    grid = BlurEncoder(num_frames=5, num_ws=4, w_dim=8, **arch, head_grid=2, head_bottleneck=6).eval()
    assert grid.head_in.out_features == 6 and grid.head.in_features == 6
    with torch.no_grad():
        grid.head.weight.normal_()
    x = torch.randn(2, 3, 64, 64)  # a 2 x 2 last feature map
    assert grid(x).shape == (2, 5, 4, 8)
    folder = save_pretrained(grid, tmp_path / "ev")
    back = load_pretrained("encoders.blur", folder)
    assert back.config["head_grid"] == 2 and torch.allclose(back(x), grid(x))
    plain = SharpEncoder(num_ws=4, w_dim=8, **encoder_config("micro", "sharp"))
    assert "head_grid" not in plain.config and plain.head.in_features == plain.backbone.feature_dim
    with pytest.raises(ValueError):
        BlurEncoder(num_frames=5, num_ws=4, w_dim=8, **arch, head_grid=-1)

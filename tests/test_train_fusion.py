"""Stage 5 (fusion network F): the time-order invariant latent loss, the pair data, micro runs, resume, bad input, and
ground-truth-free data: stills and video frames paired with their mirror images, a real multi-view folder."""
import json
import math

import numpy as np
import pytest
import torch
from conftest import SMALL_MODEL

from deblur_rotate.cli import main
from deblur_rotate.data.blur import mirror_pose
from deblur_rotate.data.synthbmfd import SynthBMFD, SynthConfig, generate
from deblur_rotate.errors import UserError
from deblur_rotate.losses import order_invariant_latent_loss
from deblur_rotate.models.encoders import BlurEncoder, FaceCoefficientEncoder, SharpEncoder, encoder_config
from deblur_rotate.models.fusion import FusionNetwork, fusion_config
from deblur_rotate.models.io import load_pretrained, read_weights, save_pretrained
from deblur_rotate.models.stylegan2 import Generator, stylegan2_config
from deblur_rotate.render.camera import wrap_angle
from deblur_rotate.train.face3d_data import ViewPairs
from deblur_rotate.train.fusion import (
    FusionConfig,
    FusionPairs,
    FusionStage,
)

# ------------------------------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def synth_root(tmp_path_factory, small_model):
    root = tmp_path_factory.mktemp("synth_fusion") / "ds"
    config = SynthConfig(subjects=3, test_subjects=1, performances=1, size=32, fps=112.0, seconds=0.12,
                         views=4, supersample=1, model=dict(SMALL_MODEL), seed=7)  # 4 views: half the render time
    generate(root, config, progress=False, model=small_model)
    return root


def _random_head(net: torch.nn.Module, std: float) -> torch.nn.Module:
    """Make a freshly built encoder's output depend on the image: random head weights (they start at zero)
    and unit BatchNorm gains (the last one of each residual block starts at zero)."""
    with torch.no_grad():
        net.head.weight.normal_(0.0, std)
        for module in net.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.weight.fill_(1.0)
    return net


@pytest.fixture(scope="module")
def nets(tmp_path_factory):
    """Micro teacher networks saved as folders (random weights): generator, sharp, blur and face3d encoders."""
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("teachers")
    G = Generator(**stylegan2_config("micro"))
    with torch.no_grad():  # a plausible tracked mean of W
        G.mapping(torch.randn(64, G.z_dim), update_w_avg=True)
    E_s = _random_head(SharpEncoder(num_ws=8, w_dim=32, **encoder_config("micro", "sharp")), 0.3)
    E_s.set_latent_offset(G.mapping.w_avg)
    E_v = _random_head(BlurEncoder(num_frames=5, num_ws=8, w_dim=32, **encoder_config("micro", "blur")), 0.3)
    E_v.set_latent_offset(G.mapping.w_avg)
    E_3d = _random_head(FaceCoefficientEncoder(n_id=SMALL_MODEL["n_id"], n_tex=SMALL_MODEL["n_tex"],
                                               n_exp=SMALL_MODEL["n_exp"], **encoder_config("micro", "face3d")), 0.2)
    return {"generator": save_pretrained(G, root / "generator"),
            "sharp_encoder": save_pretrained(E_s, root / "sharp_encoder"),
            "blur_encoder": save_pretrained(E_v, root / "blur_encoder"),
            "face3d_encoder": save_pretrained(E_3d, root / "face3d_encoder")}


def _config(tmp_path, synth_root, nets, **kw):
    base = {"preset": "micro", "data": str(synth_root), "out": str(tmp_path / "run"), "steps": 4, "m": 4,
            "batch": 4, "sharp_encoder": str(nets["sharp_encoder"]), "generator": str(nets["generator"]),
            "pose_source": "gt", "checkpoint_every": 2, "log_every": 1, "grid": 2, "stats_samples": 8,
            "progress": False, "device": "cpu"}
    return FusionConfig(**{**base, **kw})


# ------------------------------------------------------------------------------------------------- pure parts

def test_order_invariant_latent_loss_takes_the_better_time_order():
    torch.manual_seed(0)
    z = torch.randn(3, 5, 8, 32)
    loss, rev = order_invariant_latent_loss(z, z.clone())
    assert torch.equal(loss, torch.zeros(3)) and not rev.any()
    loss, rev = order_invariant_latent_loss(z.flip(1), z)
    assert torch.allclose(loss, torch.zeros(3)) and rev.all()
    other = z + 0.5
    loss, rev = order_invariant_latent_loss(other, z)  # mean L1 over frames, entries, channels
    assert torch.allclose(loss, torch.full((3,), 0.5)) and not rev.any()
    # mixed batch: sample 1 reversed, the others not; the loss is the min of both orders
    pred = torch.stack([z[0], z[1].flip(0), z[2] + 0.1])
    loss, rev = order_invariant_latent_loss(pred, z)
    assert rev.tolist() == [False, True, False]
    fwd = (pred - z).abs().flatten(1).mean(1)
    bwd = (pred - z.flip(1)).abs().flatten(1).mean(1)
    torch.testing.assert_close(loss, torch.minimum(fwd, bwd))
    with pytest.raises(ValueError):
        order_invariant_latent_loss(z, z[:, :4])


def test_fc3r_starts_as_identity_so_equal_views_cost_nothing():
    torch.manual_seed(1)
    z = torch.randn(4, 5, 8, 32) + 2.0
    for arch, identity in (("FC3R", True), ("FC1R", True), ("FC3", False)):
        F = FusionNetwork(**fusion_config("micro", arch))
        F.set_latent_statistics(z.reshape(-1, 32).mean(0), float(z.std()))
        loss, _ = order_invariant_latent_loss(F(z, torch.zeros(4, 3)), z)  # u == v: Δp = 0, target = input
        if identity:
            assert float(loss.detach().max()) == 0.0
        else:
            assert float(loss.detach().min()) > 0.1  # FC3 (not residual) must learn the identity


def test_angle_helpers():
    a = torch.tensor([0.0, 3.5, -3.5, 2 * math.pi + 0.25])
    torch.testing.assert_close(wrap_angle(a), torch.tensor([0.0, 3.5 - 2 * math.pi, 2 * math.pi - 3.5, 0.25]))
    torch.testing.assert_close(mirror_pose(torch.tensor([0.1, 0.2, 0.3])), torch.tensor([0.1, -0.2, -0.3]))


def test_pairs_cover_all_view_pairs_and_mirror(synth_root):
    synth = SynthBMFD(synth_root, split="train", m=4)
    pairs = FusionPairs(synth, mirror=True)
    assert len(pairs) == len(synth.instants) * 6 * 2  # 4 views: 6 unordered pairs, each also mirrored
    item, flipped = pairs[0], pairs[1]
    assert item["targets"].shape == (2, 5, 3, 32, 32) and item["blurry"].shape == (2, 3, 32, 32)
    assert item["pose"].shape == (2, 3) and item["view"].tolist() == [1, 2]
    assert not bool(item["mirrored"]) and bool(flipped["mirrored"])
    torch.testing.assert_close(flipped["targets"], item["targets"].flip(-1))
    torch.testing.assert_close(flipped["pose"], item["pose"] * torch.tensor([1.0, -1.0, -1.0]))
    # views 1 and 2 of the rig really differ in yaw
    assert abs(float(item["pose"][1, 1] - item["pose"][0, 1])) > math.radians(5)


# ------------------------------------------------------------------------------------------------- runs

def test_micro_run_writes_fusion_and_resumes(tmp_path, synth_root, nets):
    stage = FusionStage(_config(tmp_path, synth_root, nets))
    # the input normalisation comes from the teacher codes, not the defaults
    assert float(stage.F.w_scale) != 1.0 and float(stage.F.w_offset.abs().sum()) > 0
    losses = stage.run()
    assert {"latent", "total", "latent_unrotated", "dp_abs_deg", "dyaw_abs_deg", "reversed"} <= set(losses)
    assert all(np.isfinite(v) for v in losses.values())
    assert losses["dp_abs_deg"] > 1.0  # ground-truth view pairs differ in pose
    run = tmp_path / "run"
    F = load_pretrained("fusion", run / "fusion")
    assert F.arch_name == "FC3R" and (F.num_ws, F.w_dim) == (8, 32)
    assert F(torch.zeros(1, 5, 8, 32), torch.zeros(1, 3)).shape == (1, 5, 8, 32)
    assert list((run / "samples").glob("step-*.png")) and (run / "config.json").is_file()
    config = json.loads((run / "config.json").read_text())
    assert config["stage"] == "fusion" and config["pose_source"] == "gt" and config["arch"] == "FC3R"
    w0 = read_weights(run / "fusion")

    more = FusionStage(_config(tmp_path, synth_root, nets, steps=6, resume=True))
    more.run()
    assert more.trainer.step == 6
    w1 = read_weights(run / "fusion")
    assert torch.equal(w0["w_scale"], w1["w_scale"])  # statistics restored, not recomputed
    assert json.loads((run / "config.json").read_text())["latent_scale"] == config["latent_scale"]
    assert any(not torch.equal(w0[k], w1[k]) for k in w0)  # two more steps moved the weights

    with pytest.raises(UserError, match="another configuration"):
        FusionStage(_config(tmp_path, synth_root, nets, steps=8, resume=True, arch="FC3")).run()


def test_micro_run_with_e3d_poses_and_image_term(tmp_path, synth_root, nets):
    stage = FusionStage(_config(tmp_path, synth_root, nets, pose_source="e3d",
                                face3d_encoder=str(nets["face3d_encoder"]), lambda_image=1.0, steps=2, grid=0))
    assert stage.E_3D is not None
    batch = next(stage.batches(0))
    t = stage.teacher_inputs(batch)
    p = batch["blurry"].shape[0]
    assert t["inputs"].shape == (2 * p, 5, 8, 32) and t["delta_pose"].shape == (2 * p, 3)
    torch.testing.assert_close(t["delta_pose"][p:], -t["delta_pose"][:p])  # the swapped direction
    # Δp comes from E_3D on the blurry images, not from the ground truth
    assert not torch.allclose(t["delta_pose"], t["delta_pose_gt"])
    losses = stage.run()
    assert {"latent", "image", "dp_error_deg"} <= set(losses) and all(np.isfinite(v) for v in losses.values())
    assert (tmp_path / "run" / "fusion" / "model.safetensors").is_file()


def test_blur_input_codes_come_from_e_v(tmp_path, synth_root, nets):
    stage = FusionStage(_config(tmp_path, synth_root, nets, input_codes="blur",
                                blur_encoder=str(nets["blur_encoder"]), grid=0, steps=1))
    batch = next(stage.batches(0))
    t = stage.teacher_inputs(batch)
    p = batch["blurry"].shape[0]
    with torch.no_grad():
        expect = stage.E_v(batch["blurry"][:, 0].float())
    torch.testing.assert_close(t["inputs"][:p], expect)
    assert not torch.allclose(t["inputs"], t["targets"])
    stage.run()


@pytest.mark.parametrize("arch", ["FC3", "FC3R"])
def test_overfitting_one_batch_lowers_the_loss(tmp_path, synth_root, nets, arch):
    torch.manual_seed(0)
    stage = FusionStage(_config(tmp_path, synth_root, nets, arch=arch, lr=1e-2, grid=0))
    assert stage.F.arch_name == arch
    teacher = stage.teacher_inputs(next(stage.batches(0)))  # one batch, its frozen-teacher codes computed once
    before = {k: v.detach().clone() for k, v in stage.F.state_dict().items()}
    first = stage.fusion_step(teacher)
    for _ in range(1, 25):
        last = stage.fusion_step(teacher)
    assert any(not torch.equal(before[k], v) for k, v in stage.F.state_dict().items())
    assert float(last["latent"]) < 0.7 * float(first["latent"])
    assert float(last["latent"]) < float(last["latent_unrotated"])  # better than "no rotation"
    if arch == "FC3R":  # the residual F starts at "no rotation"
        assert float(first["latent"]) == pytest.approx(float(first["latent_unrotated"]), rel=1e-5)


# ------------------------------------------------------------------------------------------------- errors

def test_bad_inputs_are_user_errors(tmp_path, synth_root, nets):
    with pytest.raises(UserError, match="not found"):
        FusionStage(_config(tmp_path, synth_root, nets, sharp_encoder=str(tmp_path / "nope")))
    with pytest.raises(UserError, match="not found"):
        FusionStage(_config(tmp_path, synth_root, nets, pose_source="e3d", face3d_encoder=str(tmp_path / "nope")))
    with pytest.raises(UserError, match="--blur-encoder"):
        FusionStage(_config(tmp_path, synth_root, nets, input_codes="blur"))
    with pytest.raises(UserError, match="--face3d-encoder"):
        FusionStage(_config(tmp_path, synth_root, nets, pose_source="e3d"))
    with pytest.raises(UserError, match="--generator"):
        FusionStage(_config(tmp_path, synth_root, nets, generator=""))
    with pytest.raises(UserError, match="--arch"):
        FusionStage(_config(tmp_path, synth_root, nets, arch="MLP3"))
    with pytest.raises(UserError, match="even"):
        FusionStage(_config(tmp_path, synth_root, nets, batch=3))
    # networks of another preset
    tiny_es = save_pretrained(SharpEncoder(num_ws=10, w_dim=256, **encoder_config("micro", "sharp")),
                              tmp_path / "tiny_es")
    with pytest.raises(UserError, match="num_ws"):
        FusionStage(_config(tmp_path, synth_root, nets, sharp_encoder=str(tiny_es)))
    tiny_g = save_pretrained(Generator(**stylegan2_config("tiny")), tmp_path / "tiny_g")
    with pytest.raises(UserError, match="preset"):
        FusionStage(_config(tmp_path, synth_root, nets, generator=str(tiny_g)))
    with pytest.raises(UserError, match="expected a"):  # an E_s folder given as E_3D
        FusionStage(_config(tmp_path, synth_root, nets, pose_source="e3d",
                            face3d_encoder=str(nets["sharp_encoder"])))
    e3d_64 = tmp_path / "e3d_64"
    save_pretrained(load_pretrained("encoders.face3d", nets["face3d_encoder"]), e3d_64)
    (e3d_64 / "face_model.json").write_text(json.dumps({"input_size": 64}))
    with pytest.raises(UserError, match="64 px"):
        FusionStage(_config(tmp_path, synth_root, nets, pose_source="e3d", face3d_encoder=str(e3d_64)))
    # data that is not a SynthBMFD folder
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UserError):
        FusionStage(_config(tmp_path, empty, nets))


def test_cli_blur_codes_without_blur_encoder(tmp_path, synth_root, nets, capsys):
    code = main(["train", "fusion", "--preset", "micro", "--data", str(synth_root), "--sharp-encoder",
                 str(nets["sharp_encoder"]), "--generator", str(nets["generator"]), "--pose-source", "gt",
                 "--input-codes", "blur", "--out", str(tmp_path / "run"), "--steps", "1", "--m", "4",
                 "--no-progress", "--device", "cpu"])
    assert code == 2
    assert "--blur-encoder" in capsys.readouterr().err


def test_cli_micro_run(tmp_path, synth_root, nets, capsys):
    code = main(["train", "fusion", "--preset", "micro", "--data", str(synth_root), "--sharp-encoder",
                 str(nets["sharp_encoder"]), "--face3d-encoder", str(nets["face3d_encoder"]), "--arch", "fc2",
                 "--out", str(tmp_path / "run"), "--steps", "1", "--batch", "2", "--m", "4", "--grid", "0",
                 "--stats-samples", "4", "--no-progress", "--device", "cpu"])
    assert code == 0
    assert "F written to" in capsys.readouterr().out
    assert load_pretrained("fusion", tmp_path / "run" / "fusion").arch_name == "FC2"


# ------------------------------------------------------------------------------------ data without poses

def _pattern(rng: np.random.Generator, size: int = 40) -> np.ndarray:
    """A smooth, left-right asymmetric uint8 image [size, size, 3] (a face stand-in: F needs no landmarks)."""
    coarse = rng.uniform(0, 255, size=(5, 5, 3))
    image = torch.nn.functional.interpolate(torch.from_numpy(coarse).permute(2, 0, 1)[None], size=(size, size),
                                            mode="bicubic", align_corners=False)[0].permute(1, 2, 0)
    return image.clamp(0, 255).round().to(torch.uint8).numpy()


@pytest.fixture(scope="module")
def stills_root(tmp_path_factory):
    from PIL import Image

    root = tmp_path_factory.mktemp("stills_fusion") / "faces"
    root.mkdir()
    rng = np.random.default_rng(0)
    for k in range(6):
        Image.fromarray(_pattern(rng)).save(root / f"{k:03d}.png")
    return root


@pytest.fixture(scope="module")
def video_root(tmp_path_factory):
    """Two clips of 7 frames each (folders of frames: the 300VW reader's ``video`` kind; auto-detection would
    take them for stills)."""
    from PIL import Image

    root = tmp_path_factory.mktemp("video_fusion") / "clips"
    rng = np.random.default_rng(1)
    for clip in ("a", "b"):
        (root / clip).mkdir(parents=True)
        base = _pattern(rng, 48)
        for t in range(7):
            Image.fromarray(np.ascontiguousarray(base[t // 2:t // 2 + 40, t:t + 40])).save(root / clip / f"{t:05d}.png")
    return root


def _real_config(tmp_path, data, nets, **kw):
    base = {"pose_source": "e3d", "face3d_encoder": str(nets["face3d_encoder"]), "m": None, "grid": 0, "steps": 2}
    return _config(tmp_path, data, nets, **{**base, **kw})


def test_single_view_pairs_mirror_and_e3d_delta_pose(tmp_path, stills_root, nets):
    stage = FusionStage(_real_config(tmp_path, stills_root, nets, grid=2))
    assert stage.data_kind == "images" and not stage.has_pose
    assert isinstance(stage.dataset, ViewPairs) and stage.dataset.second_view == "mirror" and len(stage.dataset) == 6
    batch = next(stage.batches(0))
    p = batch["blurry"].shape[0]
    assert torch.equal(batch["blurry"][:, 1], batch["blurry"][:, 0].flip(-1))  # view v is the mirror of view u
    assert torch.equal(batch["targets"][:, 1], batch["targets"][:, 0].flip(-1))
    assert batch["mirrored"].tolist() == [[False, True]] * p and torch.isnan(batch["pose"]).all()
    t = stage.teacher_inputs(batch)
    with torch.no_grad():
        pose_u, pose_v = stage.E_3D.pose(batch["blurry"][:, 0]), stage.E_3D.pose(batch["blurry"][:, 1])
        mirrored_codes = stage.E_s(batch["targets"][:, 0].flip(-1).flatten(0, 1)).reshape(p, 5, 8, 32)
    # Δp of a mirrored pair without ground truth: E_3D on the blurry image and on its mirror
    torch.testing.assert_close(t["delta_pose"][:p], wrap_angle(pose_v - pose_u))
    torch.testing.assert_close(t["delta_pose"][p:], -t["delta_pose"][:p])
    assert torch.isnan(t["delta_pose_gt"]).all() and float(t["delta_pose"].abs().sum()) > 0
    # the target codes of the mirrored view are E_s of the mirrored sharp frames
    torch.testing.assert_close(t["targets"][:p], mirrored_codes)
    torch.testing.assert_close(t["images"][:p], batch["targets"][:, 0].flip(-1))
    losses = stage.run()
    assert {"latent", "total", "dp_abs_deg"} <= set(losses) and "dp_error_deg" not in losses
    assert all(np.isfinite(v) for v in losses.values())
    run = tmp_path / "run"
    assert (run / "fusion" / "model.safetensors").is_file() and list((run / "samples").glob("step-*.png"))
    config = json.loads((run / "config.json").read_text())
    assert config["kind"] == "images" and config["second_view"] == "mirror" and config["view_pairs"] == []


def test_video_frames_kind_runs(tmp_path, video_root, nets):
    with pytest.raises(UserError, match="7 frames, fewer than the 9 that m=4 needs"):  # 300VW's own m is 4
        FusionStage(_real_config(tmp_path, video_root, nets, kind="video"))
    stage = FusionStage(_real_config(tmp_path, video_root, nets, kind="video", m=2))
    assert stage.config.m == 2 and stage.dataset.second_view == "mirror" and len(stage.dataset) == 2 * 3
    item = stage.dataset[0]
    assert item["targets"].shape == (2, 5, 3, 32, 32)
    assert torch.equal(item["targets"][1], item["targets"][0].flip(-1))
    assert not torch.equal(item["targets"][0, 0], item["targets"][0, 4])  # frames c-m and c+m differ
    losses = stage.run()
    assert all(np.isfinite(v) for v in losses.values())


def test_poseless_data_errors(tmp_path, stills_root, nets, capsys):
    with pytest.raises(UserError, match="--pose-source gt: .* no ground-truth head poses"):
        FusionStage(_config(tmp_path, stills_root, nets, m=None))  # _config uses the ground truth
    with pytest.raises(UserError, match="--no-mirror: .* single-view"):
        FusionStage(_real_config(tmp_path, stills_root, nets, mirror=False))
    with pytest.raises(UserError, match="unknown --kind"):
        FusionStage(_real_config(tmp_path, stills_root, nets, kind="ffhq"))
    code = main(["train", "fusion", "--preset", "micro", "--data", str(stills_root), "--sharp-encoder",
                 str(nets["sharp_encoder"]), "--pose-source", "gt", "--grid", "0", "--out", str(tmp_path / "cli"),
                 "--steps", "1", "--no-progress", "--device", "cpu"])
    assert code == 2 and "no ground-truth head poses" in capsys.readouterr().err


def _bmfd_layout(synth_root, root, keep_meta: bool):
    """Copy SynthBMFD's frames into the bare BMFD layout (no synthbmfd.json / index.json), with or without
    its per-performance meta.npz (the poses)."""
    import shutil

    for subject in ("subject_000", "subject_001"):
        perf = synth_root / subject / "perf_00"
        for view in sorted(perf.glob("view_*")):
            shutil.copytree(view, root / subject / "perf_00" / view.name)
        if keep_meta:
            shutil.copy(perf / "meta.npz", root / subject / "perf_00" / "meta.npz")
    return root


def test_multiview_folder_true_pairs_with_and_without_poses(tmp_path, synth_root, nets):
    bare = _bmfd_layout(synth_root, tmp_path / "bare", keep_meta=False)
    stage = FusionStage(_real_config(tmp_path, bare, nets, m=4, steps=1))
    pairs = stage.dataset
    assert stage.data_kind == "multiview" and pairs.second_view == "true" and not stage.has_pose
    assert len(pairs.pairs) == 6 and pairs.copies == 2 and len(pairs) == len(pairs.instants) * 6 * 2
    item, flipped = pairs[0], pairs[1]
    assert item["view"].tolist() == [1, 2] and flipped["view"].tolist() == [8, 7]  # mirrored copy: v -> 9 - v
    torch.testing.assert_close(flipped["targets"], item["targets"].flip(-1))
    assert not torch.allclose(item["targets"][1], item["targets"][0].flip(-1))  # true views, not mirrors
    stage.run()
    with pytest.raises(UserError, match="no ground-truth head poses"):
        FusionStage(_config(tmp_path, bare, nets, m=4))
    # the same layout with SynthBMFD's meta.npz carries poses: --pose-source gt works, Δp is the truth's
    posed = _bmfd_layout(synth_root, tmp_path / "posed", keep_meta=True)
    stage = FusionStage(_config(tmp_path, posed, nets, m=4, grid=0, out=str(tmp_path / "run2")))
    assert stage.has_pose
    t = stage.teacher_inputs(next(stage.batches(0)))
    torch.testing.assert_close(t["delta_pose"], t["delta_pose_gt"])
    assert float(t["delta_pose"][:, 1].abs().min()) > math.radians(5)  # distinct rig views


def test_init_from_starts_from_a_trained_fusion_network(tmp_path, synth_root, nets):
    FusionStage(_config(tmp_path, synth_root, nets, out=str(tmp_path / "first"), steps=2, grid=0)).run()
    trained = read_weights(tmp_path / "first" / "fusion")
    warm = FusionStage(_config(tmp_path, synth_root, nets, out=str(tmp_path / "warm"), steps=0, grid=0,
                               init_from=str(tmp_path / "first" / "fusion")))
    for net in (warm.F, warm.F_ema):  # weights and input normalisation, in F and its EMA copy
        state = net.state_dict()
        assert all(torch.equal(state[k], trained[k]) for k in trained)
    cold = FusionStage(_config(tmp_path, synth_root, nets, out=str(tmp_path / "cold"), steps=0, grid=0))
    assert any(not torch.equal(cold.F.state_dict()[k], trained[k]) for k in trained)
    with pytest.raises(UserError, match="mlp|shape|key"):  # another architecture: a clear mismatch
        FusionStage(_config(tmp_path, synth_root, nets, out=str(tmp_path / "other"), steps=0, grid=0, arch="FC2R",
                            init_from=str(tmp_path / "first" / "fusion")))
    with pytest.raises(UserError, match="--init-from .* not found"):
        FusionStage(_config(tmp_path, synth_root, nets, out=str(tmp_path / "none"), init_from=str(tmp_path / "no")))

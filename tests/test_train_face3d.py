"""Stage 4 (E_3D): the pure loss terms, a micro run on a tiny SynthBMFD, resume, overfitting, errors, CLI, and
real (ground-truth-free) data: prepared stills paired with their mirror images, and a multi-view folder."""
import argparse
import json

import numpy as np
import pytest
import torch
from conftest import SMALL_MODEL
from PIL import Image

from deblur_rotate.errors import UserError
from deblur_rotate.face3d.loading import load_face3d
from deblur_rotate.face3d.model import CoeffLayout
from deblur_rotate.losses.face3d import (
    coefficient_regularizer,
    identity_chip_loss,
    landmark_loss,
    masked_edge_loss,
    multiview_loss,
    photometric_loss,
    render_coefficients_image,
)
from deblur_rotate.render.camera import pose_error_deg
from deblur_rotate.train.face3d import Face3DConfig, Face3DStage
from deblur_rotate.train.face3d_data import Face3DPairs, open_view_pairs, procedural_model_from
from deblur_rotate.train.face3d_priors import (
    coefficient_prior,
    fit_translation,
    rig_camera_matrix,
    rig_coefficient_prior,
)

# ------------------------------------------------------------------------------------------------- losses

LAYOUT = CoeffLayout(4, 3, 2)


def test_landmark_loss_zero_for_identical_and_in_width_units():
    torch.manual_seed(0)
    pts = torch.rand(3, 68, 2) * 32
    assert landmark_loss(pts, pts.clone(), 32).item() == pytest.approx(0.0, abs=1e-4)
    shifted = pts + torch.tensor([3.0, 4.0])  # every point 5 px away
    assert landmark_loss(shifted, pts, 32).item() == pytest.approx(68 * 5 / 32, rel=1e-5)  # sum over the points
    assert landmark_loss(shifted, pts, 32, reduction="mean").item() == pytest.approx(5 / 32, rel=1e-5)
    assert landmark_loss(shifted, pts, 64, reduction="mean").item() == pytest.approx(5 / 64, rel=1e-5)
    # missing (NaN) ground-truth points are ignored; weights pick points
    gt = pts.clone()
    gt[:, :34] = float("nan")
    half = pts.clone()
    half[:, 34:] += torch.tensor([3.0, 4.0])
    assert landmark_loss(half, gt, 32, reduction="mean").item() == pytest.approx(5 / 32, rel=1e-5)
    assert landmark_loss(half, gt, 32).item() == pytest.approx(34 * 5 / 32, rel=1e-5)
    w = torch.zeros(68)
    w[:34] = 1.0
    assert landmark_loss(half, pts, 32, weights=w).item() == pytest.approx(0.0, abs=1e-4)
    with pytest.raises(ValueError, match="reduction"):
        landmark_loss(pts, pts, 32, reduction="median")


def test_landmark_loss_gradient_moves_points_towards_target():
    pred = torch.zeros(1, 68, 2, requires_grad=True)
    target = torch.ones(1, 68, 2)
    landmark_loss(pred, target, 10).backward()
    assert torch.isfinite(pred.grad).all() and (pred.grad < 0).all()


def test_multiview_loss_and_regularizer():
    torch.manual_seed(0)
    a = torch.randn(5, LAYOUT.size)
    assert multiview_loss(a, a.clone(), LAYOUT).item() == 0.0
    # pose, lighting and translation may differ between views: only id/tex/exp count
    b = a.clone()
    b[:, LAYOUT.n_id + LAYOUT.n_tex + LAYOUT.n_exp:] += 3.0
    assert multiview_loss(a, b, LAYOUT).item() == 0.0
    c = a.clone()
    c[:, 0] += 2.0  # one identity coefficient off by 2 -> 4 per sample
    assert multiview_loss(a, c, LAYOUT).item() == pytest.approx(4.0)
    assert multiview_loss(c, a, LAYOUT).item() == pytest.approx(4.0)

    z = torch.zeros(2, LAYOUT.size)
    z[:, -6:] = 7.0  # pose and translation are not regularised
    assert coefficient_regularizer(z, LAYOUT).item() == 0.0
    z[0, :9] = 1.0  # 9 modes of sample 0 at 1 -> (9 + 0) / 2
    assert coefficient_regularizer(z, LAYOUT).item() == pytest.approx(4.5)
    # the paper's weights are the defaults of the stage's config (their one place)
    assert Face3DConfig(data="d", out="o").weights() == {"data": 5.0, "edge": 30.0, "id": 0.5, "lan": 1.0,
                                                         "mview": 0.25, "c": 1e-4}


def test_pose_error_wraps_around():
    deg = torch.deg2rad
    pred = deg(torch.tensor([[10.0, 179.0, -5.0]]))
    true = deg(torch.tensor([[-20.0, -179.0, -5.0]]))
    torch.testing.assert_close(pose_error_deg(pred, true), torch.tensor([[30.0, 2.0, 0.0]]), atol=1e-4, rtol=0)


def test_image_terms_are_masked_and_pure():
    torch.manual_seed(0)
    target = torch.rand(2, 3, 16, 16) * 2 - 1
    render = target.clone()
    mask = torch.zeros(2, 1, 16, 16)
    mask[..., 4:12, 4:12] = 1.0
    render[..., :2, :] = 1.0  # differs only outside the mask (and far from its edge)
    before = render.clone()
    assert photometric_loss(render, target, mask).item() == 0.0
    assert masked_edge_loss(render, target, mask).item() == pytest.approx(0.0, abs=1e-6)
    assert torch.equal(render, before)  # nothing modified in place
    render[..., 6, 6] += 0.5  # one pixel inside the mask
    l1 = photometric_loss(render, target, mask).item()
    assert l1 == pytest.approx((0.5 * 3 * 2) / (3 * 2 * 64), rel=1e-5)  # mean over masked pixels and channels
    assert masked_edge_loss(render, target, mask).item() > 0
    # skin weights: counting that pixel double raises its share
    w = torch.ones(2, 1, 16, 16)
    w[..., 6, 6] = 2.0
    assert photometric_loss(render, target, mask, w).item() > l1
    # the mask is a weight, not a path for gradients
    m = mask.clone().requires_grad_(True)
    r = render.clone().requires_grad_(True)
    photometric_loss(r, target, m).backward()
    assert m.grad is None and r.grad.abs().sum() > 0


def test_identity_chip_loss_zero_for_identical_faces(small_model):
    from deblur_rotate.models.identity import chip_transforms_from_landmarks, load_dlib_face_recognition

    net = load_dlib_face_recognition()
    k = torch.tensor([[112.0, 0, 15.5], [0, 112.0, 15.5], [0, 0, 1]])
    coeffs = torch.zeros(2, small_model.layout.size)
    coeffs[:, -1] = 100.0  # 1 m in front of the camera
    coeffs[1, :3] = 2.0  # another identity
    rendered = render_coefficients_image(small_model, coeffs, k, 32)
    chips = torch.from_numpy(chip_transforms_from_landmarks(rendered.landmarks[:1]))
    same = identity_chip_loss(rendered.image[:1], rendered.image[:1], chips, net)
    other = identity_chip_loss(rendered.image[:1], rendered.image[1:], chips, net)
    assert same.item() == pytest.approx(0.0, abs=1e-5) and other.item() > same.item() + 1e-4


def test_render_projects_landmarks_and_is_differentiable(small_model):
    k = torch.tensor([[112.0, 0, 15.5], [0, 112.0, 15.5], [0, 0, 1]])
    coeffs = torch.zeros(1, small_model.layout.size)
    coeffs[:, -1] = 100.0
    coeffs.requires_grad_(True)
    out = render_coefficients_image(small_model, coeffs, k, 32)
    assert out.image.shape == (1, 3, 32, 32) and out.mask.shape == (1, 1, 32, 32) and out.landmarks.shape == (1, 68, 2)
    assert out.image.min() >= -1 - 1e-6
    assert out.image[0, :, 0, 0].max().item() == pytest.approx(-1.0)  # black background
    assert out.mask[0, 0, 16, 16].item() == 1.0
    # landmarks are the projected landmark vertices
    from deblur_rotate.render.camera import project

    vertices, _ = small_model(coeffs.detach())
    torch.testing.assert_close(out.landmarks.detach(), project(small_model.landmarks_3d(vertices), k))
    (out.image.mean() + out.landmarks.mean()).backward()
    assert torch.isfinite(coeffs.grad).all() and coeffs.grad[0, -6:].abs().sum() > 0


# ------------------------------------------------------------------------------------------------- stage

@pytest.fixture(scope="module")
def synth_root(tmp_path_factory, small_model):
    from deblur_rotate.data.synthbmfd import SynthConfig, generate

    root = tmp_path_factory.mktemp("synth3d") / "ds"
    config = SynthConfig(subjects=3, test_subjects=1, performances=1, size=32, fps=112.0, seconds=0.12, views=4,
                         supersample=1, model=dict(SMALL_MODEL), seed=3)
    generate(root, config, progress=False, model=small_model)
    return root


def _config(data, out, steps, **kw):
    base = {"preset": "micro", "data": str(data), "out": str(out), "steps": steps, "batch": 4, "m": 4, "lambda_id": 0.0,
            "checkpoint_every": 2, "log_every": 1, "image_every": 2, "grid": 3, "progress": False}
    base.update(kw)
    return Face3DConfig(**base)


def _weights(stage):
    return {k: v.detach().clone() for k, v in stage.E.state_dict().items()}


@pytest.fixture(scope="module")
def straight_run(synth_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("e3d") / "straight"
    stage = Face3DStage(_config(synth_root, out, 4))
    losses = stage.run()
    return out, stage, losses


def test_ground_truth_coefficients_reproduce_the_frames(synth_root, small_model):
    """The losses' minimum sits at the truth: SynthBMFD's own coefficients, rendered in its camera, give its
    middle frames and landmarks; a 6 degree turn raises every term."""
    from deblur_rotate.data.synthbmfd import SynthBMFD

    ds = SynthBMFD(synth_root, split="train", m=4)
    samples = [ds[i] for i in range(0, len(ds), 7)]
    coeffs = torch.stack([s["coeffs"] for s in samples])
    target = torch.stack([s["targets"][2] for s in samples])
    landmarks = torch.stack([s["landmarks"] for s in samples])
    k = torch.from_numpy(np.load(synth_root / "subject_000" / "perf_00" / "meta.npz")["camera_matrix"])
    hard = render_coefficients_image(small_model, coeffs, k, 32, edge_softness_px=0.0)
    assert photometric_loss(hard.image, target, hard.mask).item() < 0.01  # 8-bit rounding only
    soft = render_coefficients_image(small_model, coeffs, k, 32)
    turned = coeffs.clone()
    turned[:, -5] += 0.1  # yaw
    off = render_coefficients_image(small_model, turned, k, 32)
    assert landmark_loss(soft.landmarks, landmarks, 32).item() < 1e-3
    assert landmark_loss(off.landmarks, landmarks, 32).item() > 1.0
    for loss in (photometric_loss, masked_edge_loss):
        assert loss(off.image, target, off.mask) > 1.5 * loss(soft.image, target, soft.mask)


def test_pairs_cover_every_view_pair(synth_root):
    from deblur_rotate.data.synthbmfd import SynthBMFD

    ds = SynthBMFD(synth_root, split="train", m=4)
    pairs = Face3DPairs(ds)
    assert len(pairs) == len(ds.instants) * 6  # 4 views -> 6 unordered pairs
    item = pairs[7]  # instant 1, pair (1, 3)
    assert item["blurry"].shape == (2, 3, 32, 32) and item["target"].shape == (2, 3, 32, 32)
    subject, perf, center = ds.instants[1]
    ref = ds.load(subject, perf, 3, center)
    torch.testing.assert_close(item["target"][1], ref["targets"][2])
    torch.testing.assert_close(item["landmarks"][1], ref["landmarks"])


def test_coefficient_prior_from_data(synth_root, small_model):
    layout = small_model.layout
    offset, scale = coefficient_prior(synth_root, ["subject_000", "subject_001"], layout)
    s = layout.slices()
    meta = np.load(synth_root / "subject_000" / "perf_00" / "meta.npz")["coeffs"]
    assert offset.shape == scale.shape == (layout.size,)
    assert torch.all(offset[: s["light"].start] == 0) and torch.all(offset[s["rotation"]] == 0)
    assert 90 < offset[s["translation"]][2] < 110  # the rig's cameras are 1 m away
    assert abs(offset[s["translation"]][2] - meta[..., -1].mean()) < 5
    assert torch.all(scale[: s["light"].start] == 1) and torch.all(scale > 0)
    assert 0.2 < scale[s["rotation"]][1] < 1.5  # yaw spread of a 120 degree rig, radians


def test_micro_run_writes_everything(straight_run, synth_root):
    out, stage, losses = straight_run
    assert {"total", "data", "edge", "lan", "mview", "c", "pose_err_deg", "lan_px"} <= set(losses)
    assert all(np.isfinite(v) for v in losses.values())
    assert (out / "checkpoints" / "step-00000004" / "E3D" / "model.safetensors").is_file()
    assert (out / "checkpoints" / "step-00000002" / "training_state.safetensors").is_file()
    config = json.loads((out / "config.json").read_text())
    assert config["stage"] == "face3d" and config["lambda_edge"] == 30.0
    assert config["face_model"]["kind"] == "procedural"
    grid = np.asarray(Image.open(out / "samples" / "step-00000004.png"))
    assert grid.shape == (2 + 3 * 34, 2 + 3 * 34, 3)  # rows input / render / target of 3 faces at 32 px
    assert any((out / "tb").iterdir())
    bundle = load_face3d(out / "face3d_encoder")
    for k, v in bundle.encoder.state_dict().items():
        torch.testing.assert_close(v, stage.E.state_dict()[k].cpu(), rtol=0, atol=0)
    assert bundle.image_size == 32 and bundle.input_size == 32 and bundle.face_model.layout == stage.E.layout
    torch.testing.assert_close(bundle.camera_matrix, stage.camera_matrix.cpu())
    # the prior is kept in the saved encoder: the mean translation is ~1 m
    assert 90 < float(bundle.encoder.coeff_offset[-1]) < 110


def test_resume_continues_exactly(straight_run, synth_root, tmp_path):
    _, straight, _ = straight_run
    out = tmp_path / "resumed"
    first = Face3DStage(_config(synth_root, out, 2))
    first.run()
    assert first.trainer.step == 2
    stage = Face3DStage(_config(synth_root, out, 4, resume=True))
    stage.run()
    assert stage.trainer.step == 4 and (out / "checkpoints" / "step-00000004").is_dir()
    a, b = _weights(straight), _weights(stage)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    with pytest.raises(UserError, match="already holds checkpoints"):
        Face3DStage(_config(synth_root, out, 6)).run()


def test_overfitting_one_batch_reduces_landmark_loss(synth_root, tmp_path):
    stage = Face3DStage(_config(synth_root, tmp_path / "overfit", 30, batch=2, lr=3e-3, grid=0,
                                skin_weight=1.0))
    assert stage.identity_net is None
    batch = next(stage.batches(0))
    first = stage.step_fn(batch, 0)
    for step in range(1, 30):
        last = stage.step_fn(batch, step)
    assert "id" not in first
    assert last["lan"] < 0.6 * first["lan"], (first["lan"], last["lan"])
    assert last["pose_err_deg"] < first["pose_err_deg"]


def test_identity_term_in_a_step(synth_root, tmp_path):
    stage = Face3DStage(_config(synth_root, tmp_path / "id", 1, batch=2, lambda_id=0.5, grid=0))
    batch = next(stage.batches(0))
    before = {k: v.clone() for k, v in stage.E.state_dict().items()}
    out = stage.step_fn(batch, 0)
    assert 0 < out["id"].item() < 2
    weights = stage.config.weights()
    total = sum(weights[k] * out[k] for k in ("data", "edge", "id", "lan", "mview", "c"))
    assert out["total"].item() == pytest.approx(total.item(), rel=1e-5)
    assert not torch.equal(before["head.weight"], stage.E.state_dict()["head.weight"])


def test_bfm_model_instead_of_the_procedural_one(synth_root, tmp_path):
    from test_bfm import FAKE, _write_front  # a fabricated BFM_model_front.mat with the real file's structure

    path = _write_front(tmp_path)
    stage = Face3DStage(_config(synth_root, tmp_path / "bfm", 1, batch=2, grid=0, bfm=str(path), bfm_modes=[5, 4, 3]))
    assert (stage.E.layout.n_id, stage.E.layout.n_tex, stage.E.layout.n_exp) == (5, 4, 3)
    assert stage.face_model_spec["kind"] == "bfm" and stage.face_model.layout == stage.E.layout
    out = stage.step_fn(next(stage.batches(0)), 0)
    assert all(torch.isfinite(v) for v in out.values())
    bundle = load_face3d(stage.write_final())
    assert bundle.face_model.layout == stage.E.layout and bundle.face_model.num_vertices == FAKE.num_vertices


def test_bad_data_is_a_user_error(tmp_path, synth_root):
    faces = tmp_path / "faces"
    faces.mkdir()
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(faces / "000.png")
    with pytest.raises(UserError, match="no 68-point landmarks.*deblur-rotate prepare"):  # raw images, unprepared
        Face3DStage(_config(faces, tmp_path / "run", 2))
    with pytest.raises(UserError, match="unknown --kind"):
        Face3DStage(_config(faces, tmp_path / "run", 2, kind="ffhq"))
    with pytest.raises(UserError, match="--m must be an even"):
        Face3DStage(_config(faces, tmp_path / "run", 2, m=3))
    with pytest.raises(UserError, match="--focal-factor sets the camera of real data"):
        Face3DStage(_config(synth_root, tmp_path / "run", 2, focal_factor=3.0))
    with pytest.raises(UserError, match="drop --model-from"):  # SynthBMFD names its own model
        Face3DStage(_config(synth_root, tmp_path / "run", 2, procedural_model={**SMALL_MODEL, "n_id": 5}))
    with pytest.raises(UserError, match="--model-from .*no index.json"):
        procedural_model_from(faces)
    assert procedural_model_from(synth_root) == SMALL_MODEL
    with pytest.raises(UserError, match="does not exist"):
        Face3DStage(_config(tmp_path / "missing", tmp_path / "run", 2))
    with pytest.raises(UserError, match="even"):
        Face3DStage(_config(faces, tmp_path / "run", 2, batch=3))
    with pytest.raises(UserError, match="need --bfm"):
        Face3DStage(_config(faces, tmp_path / "run", 2, bfm_landmarks="x.txt"))


def test_cli_parses_and_reports_errors(synth_root, tmp_path, capsys):
    from deblur_rotate.cli import main
    from deblur_rotate.train.commands import add_train_parser

    parser = argparse.ArgumentParser()
    add_train_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["train", "face3d", "--preset", "micro", "--data", str(synth_root), "--out",
                              str(tmp_path / "r"), "--steps", "3", "--batch", "4", "--lambda-id", "0",
                              "--lambda-edge", "10", "--bfm-modes", "80", "80", "29", "--m", "4", "--resume"])
    assert args.stage == "face3d" and args.lambda_id == 0 and args.lambda_edge == 10 and args.bfm_modes == [80, 80, 29]
    assert args.func.__name__ == "run_face3d" and args.lr == 1e-4 and args.lambda_mview == 0.25
    code = main(["train", "face3d", "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "r2")])
    assert code == 2 and "error:" in capsys.readouterr().err


# ------------------------------------------------------------------------------------ real data (no 3D truth)

STILL_TRANSLATION = (0.0, -3.0, 95.0)  # cm: a little closer than the rig's ~103 cm, as FFHQ-style crops are


@pytest.fixture(scope="module")
def stills_root(tmp_path_factory, small_model):
    """A `prepare --kind images`-style folder: 6 rendered faces (32 px, grey background) under images/, the
    index.json naming them and landmarks.npy [6, 68, 2] (face 1 misses 20 points, face 2 all of them)."""
    root = tmp_path_factory.mktemp("stills") / "faces"
    (root / "images").mkdir(parents=True)
    layout, n = small_model.layout, 6
    g = torch.Generator().manual_seed(5)
    modes = layout.n_id + layout.n_tex + layout.n_exp
    coeffs = torch.zeros(n, layout.size)
    coeffs[:, :modes] = torch.randn(n, modes, generator=g) * 0.7
    coeffs[:, -6:-3] = (torch.rand(n, 3, generator=g) - 0.5) * torch.tensor([0.3, 0.8, 0.2])  # pitch, yaw, roll
    coeffs[:, -3:] = torch.tensor(STILL_TRANSLATION) + torch.randn(n, 3, generator=g) * torch.tensor([0.5, 0.5, 2.0])
    rendered = render_coefficients_image(small_model, coeffs, rig_camera_matrix(32), 32, background=-0.3,
                                         edge_softness_px=0.0)
    landmarks = rendered.landmarks.numpy().astype(np.float32)
    landmarks[1, :20] = np.nan
    landmarks[2] = np.nan
    items = []
    for k in range(n):
        image = ((rendered.image[k].permute(1, 2, 0).clamp(-1, 1) + 1) * 127.5).round().byte().numpy()
        Image.fromarray(image).save(root / "images" / f"{k:03d}.png")
        items.append({"file": f"images/{k:03d}.png", "source": f"{k:03d}.jpg"})
    np.save(root / "landmarks.npy", landmarks)
    (root / "index.json").write_text(json.dumps({"format_version": 1, "kind": "images", "size": 32, "items": items}))
    return root


def _real_config(data, out, steps, **kw):
    return _config(data, out, steps, **{"procedural_model": dict(SMALL_MODEL), "m": None, **kw})


def test_landmark_loss_leaves_images_without_points_out():
    torch.manual_seed(0)
    pred, target = torch.rand(3, 68, 2) * 32, torch.rand(3, 68, 2) * 32
    full = landmark_loss(pred[:2], target[:2], 32)
    target[2] = float("nan")  # the third image has no landmarks: it neither counts nor dilutes the mean
    assert landmark_loss(pred, target, 32).item() == pytest.approx(full.item(), rel=1e-6)
    assert landmark_loss(pred, torch.full_like(target, float("nan")), 32).item() == 0.0


def test_rig_camera_prior_and_translation_fit(small_model):
    k = rig_camera_matrix(64)
    torch.testing.assert_close(k, torch.tensor([[3.5 * 64, 0, 31.5], [0, 3.5 * 64, 31.5], [0, 0, 1.0]]))
    assert rig_camera_matrix(64, 2.0)[0, 0].item() == 128.0
    layout = small_model.layout
    offset, scale = rig_coefficient_prior(layout)
    s = layout.slices()
    assert torch.all(offset[: s["light"].start] == 0) and torch.all(offset[s["rotation"]] == 0)
    assert abs(offset[s["translation"]][0]) < 1 and -5 < offset[s["translation"]][1] < -1  # the rig aims at the
    assert 100 < offset[s["translation"]][2] < 106  # face centre from 1 m
    assert torch.all(scale[: s["light"].start] == 1) and torch.all(scale > 0)
    assert scale[s["rotation"]][1] > scale[s["rotation"]][2]  # heads turn (yaw) more than they roll
    torch.testing.assert_close(rig_coefficient_prior(layout), (offset, scale))  # deterministic
    # the fit recovers where a frontal face was put from its projected landmarks
    coeffs = torch.zeros(1, layout.size)
    coeffs[0, -3:] = torch.tensor([1.5, -2.0, 92.0])
    marks = render_coefficients_image(small_model, coeffs, k, 64).landmarks.detach()
    t = fit_translation(small_model, marks, k)
    torch.testing.assert_close(t, torch.tensor([1.5, -2.0, 92.0]), atol=0.6, rtol=0)
    assert fit_translation(small_model, torch.full((1, 68, 2), float("nan")), k) is None


def test_stills_pair_each_face_with_its_mirror(stills_root):
    from deblur_rotate.data.blur import mirror_landmarks

    pairs = open_view_pairs("images", stills_root, size=32, middle_only=True)
    assert len(pairs) == 6 and pairs.second_view == "mirror" and pairs.pairs == []
    item = pairs[0]
    assert item["blurry"].shape == (2, 3, 32, 32) and item["target"].shape == (2, 3, 32, 32)
    assert torch.equal(item["target"][1], item["target"][0].flip(-1))  # view v is the mirror image
    assert torch.equal(item["blurry"][1], item["blurry"][0].flip(-1))  # blurred by the same kernel, mirrored
    assert not torch.equal(item["target"][1], item["target"][0])
    assert item["mirrored"].tolist() == [False, True] and torch.isnan(item["pose"]).all()
    stored = torch.from_numpy(np.load(stills_root / "landmarks.npy")[0])
    torch.testing.assert_close(item["landmarks"][0], stored)
    torch.testing.assert_close(item["landmarks"][1], mirror_landmarks(stored, 32))  # flipped and renumbered
    assert torch.isnan(pairs[2]["landmarks"]).all()


def test_stills_run_with_the_rig_camera(stills_root, tmp_path):
    out = tmp_path / "run"
    stage = Face3DStage(_real_config(stills_root, out, 2, grid=2))
    assert stage.data_kind == "images" and not stage.has_pose and stage.dataset.second_view == "mirror"
    torch.testing.assert_close(stage.camera_matrix.cpu(), rig_camera_matrix(32))
    assert stage.image_size == 32 and stage.face_model_spec == {"kind": "procedural", **SMALL_MODEL}
    # the translation prior puts the mean face on the data's landmarks: the stills were rendered at ~95 cm
    t = stage.E.coeff_offset[-3:]
    assert abs(float(t[2]) - STILL_TRANSLATION[2]) < 6 and abs(float(t[1]) - STILL_TRANSLATION[1]) < 1.5
    losses = stage.run()
    assert {"total", "data", "edge", "lan", "mview", "c", "lan_px"} <= set(losses) and "pose_err_deg" not in losses
    assert all(np.isfinite(v) for v in losses.values()) and losses["lan"] > 0
    config = json.loads((out / "config.json").read_text())
    assert config["kind"] == "images" and config["m"] is None and config["second_view"] == "mirror"
    assert config["camera"].startswith("fixed")
    bundle = load_face3d(out / "face3d_encoder")
    torch.testing.assert_close(bundle.camera_matrix, rig_camera_matrix(32))
    assert bundle.image_size == 32 and bundle.face_model.layout == stage.E.layout


def test_missing_landmarks_are_skipped_in_a_step(stills_root, tmp_path):
    """Faces 1 (20 points missing) and 2 (none known) in one batch: every term stays finite, the identity
    chips of face 2 follow its rendered landmarks, and the step moves the encoder."""
    stage = Face3DStage(_real_config(stills_root, tmp_path / "nan", 1, batch=4, lambda_id=0.5, grid=0))
    batch = torch.utils.data.default_collate([stage.dataset[1], stage.dataset[2]])
    assert torch.isnan(batch["landmarks"][1]).all() and torch.isnan(batch["landmarks"][0]).any()
    before = stage.E.head.weight.detach().clone()
    out = stage.step_fn(batch, 0)
    assert all(torch.isfinite(v) for v in out.values()), out
    assert out["lan"] > 0 and 0 < out["id"] < 2 and out["lan_px"] > 0
    assert not torch.equal(before, stage.E.head.weight)


@pytest.fixture(scope="module")
def multiview_root(synth_root, tmp_path_factory):
    """The BMFD layout without SynthBMFD's files (no synthbmfd.json, index.json, meta.npz): the frames of the
    train subjects and a prepare-style landmarks.npy per view, as real multi-view video would have."""
    import shutil

    root = tmp_path_factory.mktemp("mv") / "rig"
    for subject in ("subject_000", "subject_001"):
        for view in sorted((synth_root / subject / "perf_00").glob("view_*")):
            dest = root / subject / "perf_00" / view.name
            shutil.copytree(view, dest)
            marks = np.load(synth_root / subject / "perf_00" / "meta.npz")["landmarks"][int(view.name[5:]) - 1]
            np.save(dest / "landmarks.npy", marks.astype(np.float32))
    return root


def test_multiview_folder_gives_true_view_pairs(multiview_root, tmp_path):
    from deblur_rotate.data.readers import detect_kind

    assert detect_kind(multiview_root) == "multiview"
    stage = Face3DStage(_real_config(multiview_root, tmp_path / "mv", 1, m=4, grid=0))
    pairs = stage.dataset
    assert stage.data_kind == "multiview" and pairs.second_view == "true" and not stage.has_pose
    assert len(pairs.pairs) == 6 and len(pairs) == len(pairs.instants) * 6  # 4 views: 6 pairs per instant
    item = pairs[0]
    assert item["mirrored"].tolist() == [False, False] and not torch.allclose(item["target"][1],
                                                                               item["target"][0].flip(-1))
    assert torch.isfinite(item["landmarks"]).all()
    losses = stage.run()
    assert "pose_err_deg" not in losses and all(np.isfinite(v) for v in losses.values())
    assert json.loads((tmp_path / "mv" / "config.json").read_text())["second_view"] == "true"


def test_cli_real_data_run(stills_root, synth_root, tmp_path, capsys):
    from deblur_rotate.cli import main

    common = ["train", "face3d", "--preset", "micro", "--data", str(stills_root), "--steps", "1", "--batch", "2",
              "--lambda-id", "0", "--grid", "0", "--no-progress", "--device", "cpu"]
    code = main([*common, "--kind", "images", "--model-from", str(synth_root), "--focal-factor", "3",
                 "--out", str(tmp_path / "r")])
    assert code == 0 and "E_3D written to" in capsys.readouterr().out
    info = json.loads((tmp_path / "r" / "face3d_encoder" / "face_model.json").read_text())
    assert info["face_model"] == {"kind": "procedural", **SMALL_MODEL}  # the SynthBMFD folder's model
    assert info["camera_matrix"][0][0] == 3 * 32.0  # --focal-factor 3 at 32 px
    code = main([*common, "--model-from", str(stills_root), "--out", str(tmp_path / "r2")])
    assert code == 2 and "--model-from" in capsys.readouterr().err

"""The Table 5 cascade baseline: DirectDeblurNet, its training stage, and the 3DMM texture-warp rotation."""
import json

import pytest
import torch
import torch.nn.functional as F
from conftest import SMALL_MODEL

from deblur_rotate.errors import UserError
from deblur_rotate.evaluate.baselines import DirectDeblurNet, direct_deblur_config, texture_warp_rotate
from deblur_rotate.train.deblur_baseline import DeblurBaselineConfig, DeblurBaselineStage, order_invariant_loss

# ------------------------------------------------------------------------------------------- the network


def test_direct_deblur_shapes_identity_start_and_round_trip(tmp_path):
    from deblur_rotate.models.io import load_pretrained, save_pretrained

    torch.manual_seed(0)
    net = DirectDeblurNet(**direct_deblur_config("micro"))
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    out = net(x)
    assert out.shape == (2, 5, 3, 32, 32)
    torch.testing.assert_close(out, x[:, None].expand_as(out))  # zero head: every frame is the input
    with torch.no_grad():  # give the head weights so the round trip is not trivially the identity
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    y = net(x)
    assert not torch.allclose(y, x[:, None].expand_as(y), atol=1e-3)
    save_pretrained(net, tmp_path / "net")
    assert json.loads((tmp_path / "net" / "config.json").read_text())["_kind"] == "baselines.direct_deblur"
    again = load_pretrained(DirectDeblurNet, tmp_path / "net")
    torch.testing.assert_close(again(x), y, rtol=0, atol=0)
    assert DirectDeblurNet(**direct_deblur_config("tiny"))(torch.zeros(1, 3, 64, 64)).shape == (1, 5, 3, 64, 64)
    with pytest.raises(ValueError, match="divisible by 4"):
        net(torch.zeros(1, 3, 30, 30))
    with pytest.raises(UserError, match="shape mismatch"):  # another preset's weights
        load_pretrained(DirectDeblurNet(**direct_deblur_config("micro", widths=[8, 16, 16])), tmp_path / "net")


def test_order_invariant_loss_takes_the_better_order():
    g = torch.Generator().manual_seed(1)
    target = torch.rand(3, 5, 3, 16, 16, generator=g) * 2 - 1
    pred = target.clone()
    pred[1] = target[1].flip(0)  # perfect, but backwards in time
    pred[2] += 0.1
    loss, rev = order_invariant_loss(pred, target, edge_weight=0.0)
    assert rev.tolist() == [False, True, False]
    assert loss.item() == pytest.approx(0.1 / 3, abs=1e-6)  # only sample 2's constant offset is left
    loss_e, _ = order_invariant_loss(pred, target, edge_weight=1.0)
    assert loss_e.item() == pytest.approx(loss.item(), abs=1e-5)  # a constant offset has no edges
    pred[0] = target[0].flip(-1)  # mirrored image: edges differ
    assert order_invariant_loss(pred, target, 1.0)[0] > order_invariant_loss(pred, target, 0.0)[0]


# --------------------------------------------------------------------------------------------- the stage

@pytest.fixture(scope="module")
def synth_root(tmp_path_factory, small_model):
    from deblur_rotate.data.synthbmfd import SynthConfig, generate

    root = tmp_path_factory.mktemp("synth") / "ds"
    config = SynthConfig(subjects=2, test_subjects=1, performances=1, size=32, fps=112.0, seconds=0.12, views=2,
                         supersample=1, model=dict(SMALL_MODEL), seed=3)
    generate(root, config, progress=False, model=small_model)
    return root


def _config(data, out, steps, **kw):
    base = {"preset": "micro", "data": str(data), "out": str(out), "steps": steps, "batch": 2, "m": 4,
            "checkpoint_every": 2, "log_every": 1, "grid": 2, "lr": 1e-3, "progress": False}
    base.update(kw)
    return DeblurBaselineConfig(**base)


def _weights(stage):
    return {k: v.detach().clone() for k, v in stage.net.state_dict().items()}


@pytest.fixture(scope="module")
def straight_run(synth_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "straight"
    stage = DeblurBaselineStage(_config(synth_root, out, 3))
    before = _weights(stage)
    losses = stage.run()
    return out, stage, before, losses


def test_stage_trains_and_writes_the_run_folder(straight_run):
    import numpy as np
    from PIL import Image

    from deblur_rotate.models.io import load_pretrained

    out, stage, before, losses = straight_run
    assert {"loss", "l1", "reversed"} <= set(losses) and losses["loss"] > 0
    after = _weights(stage)
    assert any(not torch.equal(before[k], after[k]) for k in before)  # the weights moved
    assert (out / "checkpoints" / "step-00000003" / "net" / "model.safetensors").is_file()
    config = json.loads((out / "config.json").read_text())
    assert config["stage"] == "deblur-baseline" and config["preset"] == "micro" and config["resolution"] == 32
    grid = np.asarray(Image.open(out / "samples" / "step-00000002.png"))
    assert grid.shape == (2 + 2 * 34, 2 + 11 * 34, 3)  # 2 rows x (blurry, 5 predicted, 5 targets)
    net = load_pretrained(DirectDeblurNet, out / "deblur_baseline")
    for k, v in net.state_dict().items():
        torch.testing.assert_close(v, after[k], rtol=0, atol=0)


def test_stage_resumes_exactly(straight_run, synth_root, tmp_path):
    _, straight, _, _ = straight_run
    out = tmp_path / "resumed"
    DeblurBaselineStage(_config(synth_root, out, 2)).run()
    with pytest.raises(UserError, match="already holds checkpoints"):
        DeblurBaselineStage(_config(synth_root, out, 3)).run()
    stage = DeblurBaselineStage(_config(synth_root, out, 3, resume=True))
    stage.run()
    a, b = _weights(straight), _weights(stage)
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_stage_errors(straight_run, synth_root, tmp_path):
    out, _, _, _ = straight_run
    with pytest.raises(UserError, match="holds a deblur network.*--preset tiny"):
        DeblurBaselineStage(_config(synth_root, out, 5, preset="tiny", resume=True)).run()
    with pytest.raises(UserError, match="m <= 6"):
        DeblurBaselineStage(_config(synth_root, tmp_path / "r", 1, m=32))
    with pytest.raises(UserError, match="unknown preset"):
        DeblurBaselineStage(_config(synth_root, tmp_path / "r", 1, preset="huge"))
    with pytest.raises(UserError, match="does not exist"):
        DeblurBaselineStage(_config(tmp_path / "missing", tmp_path / "r", 1))


def test_cli(synth_root, tmp_path, capsys):
    from deblur_rotate.cli import main

    out = tmp_path / "cli"
    args = ["train", "deblur-baseline", "--preset", "micro", "--data", str(synth_root), "--out", str(out), "--steps",
            "1", "--batch", "2", "--m", "4", "--grid", "0", "--ema", "0.5", "--no-progress", "--device", "cpu"]
    assert main(args) == 0
    assert (out / "deblur_baseline" / "model.safetensors").is_file()
    assert main(args[:-2] + ["--m", "3"]) == 2  # argparse accepts it, the stage rejects it
    assert "error: --m must be an even number" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------ texture warp

@pytest.fixture(scope="module")
def rendered_faces(small_model):
    """Two synthetic faces at 64 px (zero SH lighting: colours do not depend on the view), their hard masks."""
    from deblur_rotate.render.camera import intrinsics

    size = 64
    camera = intrinsics(size * 3.5, size)  # SynthBMFD's camera: the head about 1 m away
    layout = small_model.layout
    parts = layout.slices()
    g = torch.Generator().manual_seed(0)
    coeffs = torch.zeros(2, layout.size)
    coeffs[:, parts["id"]] = torch.randn(2, layout.n_id, generator=g)
    coeffs[:, parts["tex"]] = torch.randn(2, layout.n_tex, generator=g) * 0.9
    coeffs[:, parts["rotation"]] = torch.tensor([[0.05, 0.3, 0.0], [0.0, -0.2, 0.05]])
    coeffs[:, parts["translation"]] = torch.tensor([0.0, -3.0, 103.0])
    image, mask = _render(small_model, coeffs, camera, size)
    return coeffs, camera, image, mask


def _render(model, coeffs, camera, size):
    from deblur_rotate.render.rasterizer import render

    vertices, colours = model(coeffs)
    out = render(vertices, model.triangles, colours, camera, (size, size), background=0.0, supersample=2,
                 edge_softness_px=0.0)
    return out.image * 2 - 1, (out.mask > 0.999).float()  # [N, 3, S, S] in [-1, 1], [N, 1, S, S]


def _erode(mask):
    return -F.max_pool2d(-mask, 3, 1, 1)


def _iou(a, b):
    return ((a * b).sum((1, 2, 3)) / (a + b).clamp(max=1).sum((1, 2, 3)))


def test_texture_warp_without_rotation_reproduces_the_face(rendered_faces, small_model):
    coeffs, camera, image, mask = rendered_faces
    out, seen = texture_warp_rotate(image, coeffs, small_model, camera, torch.zeros(2, 3), return_seen=True)
    assert out.shape == image.shape and seen.shape == mask.shape
    assert ((seen * mask).sum() / mask.sum()).item() > 0.98  # the whole face is seen
    inner = _erode(mask)  # away from the silhouette, whose pixels mix face and background
    err = ((out - image).abs().mean(1, keepdim=True) * inner).sum() / inner.sum()
    assert err.item() < 0.03
    assert (out[(seen == 0).expand_as(out)] == -1).all()  # unseen: black
    assert (out[:, :, :2, :2] == -1).all()  # the background corner


def test_texture_warp_with_yaw_moves_the_face(rendered_faces, small_model):
    from deblur_rotate.render.camera import euler_to_matrix

    coeffs, camera, image, mask = rendered_faces
    delta = torch.tensor([[0.0, 0.5, 0.0], [0.0, -0.5, 0.0]])
    out, seen = texture_warp_rotate(image, coeffs, small_model, camera, delta, return_seen=True)
    # ground truth: the same head rendered at the new pose, turned about the mean of its vertices
    layout, parts = small_model.layout, small_model.layout.slices()
    centre = small_model.shape(coeffs[:, parts["id"]], coeffs[:, parts["exp"]]).mean(1)  # [2, 3]
    turned = coeffs.clone()
    turned[:, parts["rotation"]] += delta
    old_r, new_r = euler_to_matrix(coeffs[:, parts["rotation"]]), euler_to_matrix(turned[:, parts["rotation"]])
    turned[:, parts["translation"]] += ((old_r - new_r) @ centre[:, :, None])[:, :, 0]
    truth, truth_mask = _render(small_model, turned, camera, image.shape[-1])
    assert (_iou(seen, truth_mask) > 0.9).all()
    assert (_iou(seen, mask) < _iou(seen, truth_mask) - 0.05).all()  # it moved away from the input's face
    both = seen * _erode(truth_mask)
    err_truth = ((out - truth).abs().mean(1, keepdim=True) * both).sum((1, 2, 3)) / both.sum((1, 2, 3))
    err_input = ((out - image).abs().mean(1, keepdim=True) * both).sum((1, 2, 3)) / both.sum((1, 2, 3))
    assert (err_truth < 0.05).all() and (err_truth < 0.5 * err_input).all()
    assert layout.size == coeffs.shape[1]

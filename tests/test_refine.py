"""Blur-consistency refinement of E_v's codes (refine.py): the loss falls, the shared correction is shared,
off means off, settings are validated, and the pipeline, model folders and the CLI carry it."""
import json

import pytest
import torch
from conftest import micro_networks

from deblur_rotate.errors import UserError
from deblur_rotate.losses import blur_consistency_loss
from deblur_rotate.pipeline import DeblurRotatePipeline, assemble_model
from deblur_rotate.refine import RefineSettings, refine_codes


@pytest.fixture(scope="module")
def nets():
    return micro_networks(seed=3)


@pytest.fixture(scope="module")
def blurry():
    torch.manual_seed(2)
    return torch.nn.functional.avg_pool2d(torch.rand(3, 3, 34, 34) * 2 - 1, 3, stride=1).clamp(-1, 1)  # [3,3,32,32]


def _loss(g, codes, blurry):
    with torch.no_grad():
        frames = g.synthesis(codes.flatten(0, 1), noise_mode="const").unflatten(0, codes.shape[:2])
    return blur_consistency_loss(frames, blurry)  # [N]


def test_blur_consistency_loss_is_the_mean_frame_error():
    frames = torch.zeros(2, 4, 3, 8, 8)
    frames[:, :2] = 1.0                                       # mean frame 0.5 everywhere
    blurry = torch.zeros(2, 3, 8, 8)
    blurry[1] = 0.5
    loss = blur_consistency_loss(frames, blurry)
    assert loss.shape == (2,)
    assert loss.tolist() == pytest.approx([0.5, 0.0])
    with pytest.raises(ValueError):
        blur_consistency_loss(frames[:, :, :, :4], blurry)


def test_refinement_lowers_the_loss_and_shares_the_correction(nets, blurry):
    g, ev, _, _ = nets
    with torch.no_grad():
        codes = ev(blurry)                                    # [3, 5, num_ws, w_dim]
    before = _loss(g, codes, blurry)
    refined = refine_codes(g, codes, blurry, RefineSettings(steps=15, lr=0.05, per_frame=False))
    after = _loss(g, refined, blurry)
    assert refined.shape == codes.shape and not refined.requires_grad
    assert (after < before - 1e-3).all(), (before, after)
    delta = refined - codes                                   # one correction shared by the 5 frames
    assert delta.abs().max() > 1e-3
    torch.testing.assert_close(delta, delta[:, :1].expand_as(delta), atol=1e-6, rtol=0)
    # per-frame corrections differ between frames, and G's weights were not touched
    per_frame = refine_codes(g, codes, blurry, RefineSettings(steps=15, lr=0.05, per_frame=True)) - codes
    assert (per_frame - per_frame[:, :1]).abs().max() > 1e-4
    assert all(p.grad is None for p in g.parameters())


def test_refinement_is_per_image_whatever_the_grouping(nets, blurry):
    g, ev, _, _ = nets
    with torch.no_grad():
        codes = ev(blurry)
    settings = RefineSettings(steps=5, lr=0.05)
    together = refine_codes(g, codes, blurry, settings, max_batch=3)
    alone = refine_codes(g, codes, blurry, settings, max_batch=1)
    torch.testing.assert_close(together, alone, atol=1e-4, rtol=0)
    assert refine_codes(g, codes, blurry, RefineSettings(steps=0)) is codes


@pytest.mark.parametrize("bad", [{"steps": -1}, {"steps": 2.5}, {"steps": 5000}, {"lr": 0}, {"lr": "x"},
                                 {"per_frame": 1}, {"step": 3}])
def test_settings_are_validated(bad):
    with pytest.raises(ValueError):
        RefineSettings.from_json(bad)


def test_model_folder_default_and_overrides(nets, blurry, tmp_path):
    g, ev, e3, f = nets
    folder = assemble_model(tmp_path / "m", generator=g, blur_encoder=ev, face3d_encoder=e3, fusion=f,
                            preset="micro", refine=RefineSettings(steps=3, lr=0.05))
    meta = json.loads((folder / "pipeline.json").read_text())
    assert meta["refine"] == {"steps": 3, "lr": 0.05, "per_frame": True}
    pipe = DeblurRotatePipeline.from_pretrained(folder)
    assert pipe.refine == RefineSettings(steps=3, lr=0.05)
    plain = pipe(blurry, refine=0)
    default = pipe(blurry)
    assert not torch.equal(plain.codes, default.codes)
    torch.testing.assert_close(default.codes, refine_codes(g, plain.codes, blurry, RefineSettings(steps=3, lr=0.05)),
                               atol=1e-5, rtol=0)
    with pytest.raises(UserError, match="refine steps"):
        pipe.refine_settings(-2)
    # a bad "refine" in pipeline.json is refused before anything is built, naming the field
    meta["refine"] = {"steps": "many"}
    (folder / "pipeline.json").write_text(json.dumps(meta))
    with pytest.raises(UserError, match="refine"):
        DeblurRotatePipeline.from_pretrained(folder)


def test_run_cli_refine_steps_reach_the_summary(nets, tmp_path):
    import numpy as np
    from PIL import Image

    from deblur_rotate.cli import main

    g, ev, e3, f = nets
    folder = assemble_model(tmp_path / "m", generator=g, blur_encoder=ev, face3d_encoder=e3, fusion=f,
                            preset="micro")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(tmp_path / "face.png")
    for steps in ("0", "2"):
        out = tmp_path / f"out{steps}"
        rc = main(["run", "-i", str(tmp_path / "face.png"), "-o", str(out), "--model", str(folder), "--aligned",
                   "--yaw", "0", "--refine-steps", steps, "--no-progress"])
        assert rc == 0
        record = json.loads((out / "face" / "result.json").read_text())
        assert record["refine"]["steps"] == int(steps)
    assert main(["run", "-i", str(tmp_path / "face.png"), "-o", str(tmp_path / "bad"), "--model", str(folder),
                 "--aligned", "--refine-steps", "-3", "--no-progress"]) == 2

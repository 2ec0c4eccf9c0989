"""Blur-consistency refinement of E_v's codes (refine.py): the loss falls, the shared correction is shared,
off means off, the back-projected residual makes the frames average to the photo and only lowers their error,
settings are validated, and the pipeline, model folders and the CLI carry it."""
import json

import pytest
import torch
from conftest import micro_networks

from deblur_rotate.errors import UserError
from deblur_rotate.losses import blur_consistency_loss
from deblur_rotate.pipeline import DeblurRotatePipeline, assemble_model
from deblur_rotate.refine import RefineSettings, refine, refine_codes


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
    refined = refine_codes(g, codes, blurry, RefineSettings(steps=15, lr=0.05, per_frame=False, max_start_error=2.0))
    after = _loss(g, refined, blurry)
    assert refined.shape == codes.shape and not refined.requires_grad
    assert (after < before - 1e-3).all(), (before, after)
    delta = refined - codes                                   # one correction shared by the 5 frames
    assert delta.abs().max() > 1e-3
    torch.testing.assert_close(delta, delta[:, :1].expand_as(delta), atol=1e-6, rtol=0)
    # per-frame corrections differ between frames, and G's weights were not touched
    per_frame = refine_codes(g, codes, blurry, RefineSettings(steps=15, lr=0.05, per_frame=True, max_start_error=2.0)) - codes
    assert (per_frame - per_frame[:, :1]).abs().max() > 1e-4
    assert all(p.grad is None for p in g.parameters())


def test_refinement_is_per_image_whatever_the_grouping(nets, blurry):
    g, ev, _, _ = nets
    with torch.no_grad():
        codes = ev(blurry)
    settings = RefineSettings(steps=5, lr=0.05, max_start_error=2.0, precision="fp32")
    together = refine_codes(g, codes, blurry, settings, max_batch=3)
    alone = refine_codes(g, codes, blurry, settings, max_batch=1)
    torch.testing.assert_close(together, alone, atol=1e-4, rtol=0)
    assert refine_codes(g, codes, blurry, RefineSettings(steps=0)) is codes


def test_bf16_autocast_gives_nearly_the_same_refinement(nets, blurry):
    g, ev, _, _ = nets
    with torch.no_grad():
        codes = ev(blurry)
    full = refine(g, codes, blurry, RefineSettings(steps=5, lr=0.05, max_start_error=2.0, precision="fp32"))
    half = refine(g, codes, blurry, RefineSettings(steps=5, lr=0.05, max_start_error=2.0, precision="bf16"))
    assert half.applied.all() and (half.end_error < half.start_error).all()
    torch.testing.assert_close(half.end_error, full.end_error, atol=0.02, rtol=0)  # bf16 passes, fp32 errors
    torch.testing.assert_close(half.start_error, full.start_error)                 # measured in fp32 both times


def test_images_the_model_does_not_explain_keep_their_codes(nets, blurry):
    """The guard: an image whose E_v frames average far from it (start error above max_start_error) is not refined."""
    g, ev, _, _ = nets
    with torch.no_grad():
        codes = ev(blurry)
    start = _loss(g, codes, blurry)                           # [3]
    threshold = float(start.sort().values[1])                 # the two smaller errors pass, the largest does not
    result = refine(g, codes, blurry, RefineSettings(steps=5, lr=0.05, max_start_error=threshold))
    worst = int(start.argmax())
    assert result.applied.tolist() == [i != worst for i in range(3)]
    assert torch.equal(result.codes[worst], codes[worst])
    assert not torch.equal(result.codes[1 - worst if worst < 2 else 0], codes[1 - worst if worst < 2 else 0])
    torch.testing.assert_close(result.start_error, start, atol=1e-5, rtol=0)
    assert (result.end_error[result.applied] < result.start_error[result.applied]).all()
    assert result.end_error[worst] == result.start_error[worst]
    records = result.records()
    assert records[worst]["applied"] is False and set(records[0]) == {"applied", "start_error", "end_error"}
    off = refine(g, codes, blurry, RefineSettings(steps=0))
    assert off.codes is codes and not off.applied.any() and torch.isnan(off.start_error).all()


@pytest.mark.parametrize("bad", [{"steps": -1}, {"steps": 2.5}, {"steps": 5000}, {"lr": 0}, {"lr": "x"},
                                 {"per_frame": 1}, {"step": 3}, {"max_start_error": -1},
                                 {"max_start_error": True}, {"precision": "fp16"}, {"residual": 1},
                                 {"residual": "yes"}])
def test_settings_are_validated(bad):
    with pytest.raises(ValueError):
        RefineSettings.from_json(bad)


def test_model_folder_default_and_overrides(nets, blurry, tmp_path):
    g, ev, e3, f = nets
    folder = assemble_model(tmp_path / "m", generator=g, blur_encoder=ev, face3d_encoder=e3, fusion=f,
                            preset="micro", refine=RefineSettings(steps=3, lr=0.05, max_start_error=2.0))
    meta = json.loads((folder / "pipeline.json").read_text())
    assert meta["refine"] == {"steps": 3, "lr": 0.05, "per_frame": True, "max_start_error": 2.0, "precision": "auto",
                              "residual": False}
    pipe = DeblurRotatePipeline.from_pretrained(folder)
    assert pipe.refine == RefineSettings(steps=3, lr=0.05, max_start_error=2.0)
    plain = pipe(blurry, refine=0)
    default = pipe(blurry)
    assert not torch.equal(plain.codes, default.codes)
    torch.testing.assert_close(default.codes, refine_codes(g, plain.codes, blurry, pipe.refine), atol=1e-5, rtol=0)
    assert [r["applied"] for r in default.refine.records()] == [True] * 3
    assert pipe.refine_settings(7) == RefineSettings(steps=7, lr=0.05, max_start_error=2.0)
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
        if steps == "2":  # a random model does not explain a noise photo: refinement skipped, and said so
            face = record["faces"][0]["refine"]
            assert face["applied"] is False and face["start_error"] > 0.15
            assert any("refinement was skipped" in w["warning"] for w in record["warnings"])
        else:
            assert "refine" not in record["faces"][0]
    assert main(["run", "-i", str(tmp_path / "face.png"), "-o", str(tmp_path / "bad"), "--model", str(folder),
                 "--aligned", "--refine-steps", "-3", "--no-progress"]) == 2


def test_residual_makes_the_frames_average_to_the_photo(nets, blurry):
    """With the residual, the refined frames plus r = y - mean_t G(w_t) average to y exactly where the model
    explains the image; r is zero where it does not; the frame-to-frame changes (the motion) are unchanged."""
    g, ev, _, _ = nets
    with torch.no_grad():
        codes = ev(blurry)
    start = _loss(g, codes, blurry)
    threshold = float(start.sort().values[1])                 # the largest start error is not explained
    worst = int(start.argmax())
    for steps in (0, 4):                                      # the residual works without refinement steps too
        result = refine(g, codes, blurry, RefineSettings(steps=steps, lr=0.05, max_start_error=threshold,
                                                         residual=True))
        assert result.residual is not None and result.residual.shape == blurry.shape
        assert result.applied.tolist() == [i != worst for i in range(3)]
        assert torch.equal(result.residual[worst], torch.zeros_like(blurry[worst]))
        torch.testing.assert_close(result.start_error, start, atol=1e-5, rtol=0)
        with torch.no_grad():
            frames = g.synthesis(result.codes.flatten(0, 1), noise_mode="const").unflatten(0, codes.shape[:2])
        out = result.add_residual(frames)                     # [3, 5, 3, R, R]
        ok = result.applied
        torch.testing.assert_close(out[ok].mean(1), blurry[ok], atol=1e-5, rtol=0)
        torch.testing.assert_close(out.diff(dim=1), frames.diff(dim=1), atol=1e-5, rtol=0)
        torch.testing.assert_close(out[worst], frames[worst])
        assert {"residual_added", "residual_mean_abs"} <= set(result.records()[0])
        assert result.records()[worst]["residual_added"] is False
    assert refine(g, codes, blurry, RefineSettings(steps=3, max_start_error=2.0)).residual is None  # off by default


def test_residual_only_lowers_the_error_against_frames_the_photo_averages(nets):
    """The back-projection theorem the residual rests on: if the photo is the mean of the true frames S_t, adding
    r = y - mean_t G_t to every G_t lowers sum_t |G_t - S_t|^2 by T |mean_t (G_t - S_t)|^2, whatever G made."""
    g, ev, _, _ = nets
    torch.manual_seed(5)
    truth = (torch.rand(2, 5, 3, 32, 32) * 2 - 1).clamp(-1, 1)   # [N, T, 3, R, R] some "sharp frames"
    photo = truth.mean(1)                                         # their blur
    with torch.no_grad():
        codes = ev(photo)
    result = refine(g, codes, photo, RefineSettings(steps=2, lr=0.05, max_start_error=2.0, residual=True))
    with torch.no_grad():
        frames = g.synthesis(result.codes.flatten(0, 1), noise_mode="const").unflatten(0, codes.shape[:2])
    before = (frames - truth).pow(2).sum(dim=(1, 2, 3, 4))        # [N]
    after = (result.add_residual(frames) - truth).pow(2).sum(dim=(1, 2, 3, 4))
    shared = 5 * (frames - truth).mean(1).pow(2).sum(dim=(1, 2, 3))
    assert (after < before).all()
    torch.testing.assert_close(before - after, shared, rtol=1e-4, atol=1e-3)


def test_pipeline_adds_the_residual_to_the_input_view_only(nets, blurry, tmp_path):
    g, ev, e3, f = nets
    folder = assemble_model(tmp_path / "m", generator=g, blur_encoder=ev, face3d_encoder=e3, fusion=f,
                            preset="micro", refine=RefineSettings(steps=2, lr=0.05, max_start_error=2.0,
                                                                  residual=True))
    assert json.loads((folder / "pipeline.json").read_text())["refine"]["residual"] is True
    pipe = DeblurRotatePipeline.from_pretrained(folder)
    views = [(0.0, 0.0), (20.0, 0.0)]
    out = pipe(blurry, views=views)                           # frames [3, 2, 5, 3, R, R]
    torch.testing.assert_close(out.frames[:, 0].mean(1), blurry, atol=1e-5, rtol=0)
    plain = pipe.synthesize(out.view_codes)                   # the same codes without the residual
    torch.testing.assert_close(out.frames[:, 1], plain[:, 1])
    assert not torch.allclose(out.frames[:, 0], plain[:, 0])
    torch.testing.assert_close(pipe(blurry, views=[(0.0, 0.0)], to_frontal=True).frames,
                               pipe.synthesize(pipe(blurry, views=[(0.0, 0.0)], to_frontal=True).view_codes))
    off = pipe(blurry, views=views, refine=pipe.refine_settings(None, residual=False))
    assert off.refine.residual is None
    torch.testing.assert_close(off.frames, pipe.synthesize(off.view_codes))
    assert pipe.refine_settings(0, residual=False) == RefineSettings(steps=0, lr=0.05, max_start_error=2.0)


def test_run_cli_no_residual_reaches_the_summary(nets, tmp_path):
    import numpy as np
    from PIL import Image

    from deblur_rotate.cli import main

    g, ev, e3, f = nets
    folder = assemble_model(tmp_path / "m", generator=g, blur_encoder=ev, face3d_encoder=e3, fusion=f,
                            preset="micro", refine=RefineSettings(steps=1, max_start_error=2.0, residual=True))
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(tmp_path / "f.png")
    for flag, expected in (("--residual", True), ("--no-residual", False)):
        out = tmp_path / flag.strip("-")
        assert main(["run", "-i", str(tmp_path / "f.png"), "-o", str(out), "--model", str(folder), "--aligned",
                     "--yaw", "0", flag, "--no-progress"]) == 0
        record = json.loads((out / "f" / "result.json").read_text())
        assert record["refine"]["residual"] is expected
        assert ("residual_added" in record["faces"][0]["refine"]) is expected

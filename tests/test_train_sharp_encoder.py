"""Stage 2 (E_s with G fine-tuned): helpers, a micro run on SynthBMFD, resume, bad input."""
import numpy as np
import pytest
import torch
from conftest import SMALL_MODEL

from deblur_rotate.cli import main
from deblur_rotate.data.synthbmfd import SynthBMFD, SynthConfig, generate
from deblur_rotate.errors import UserError
from deblur_rotate.models.identity import chip_transforms_from_landmarks, extract_face_chips
from deblur_rotate.models.io import load_pretrained, read_weights, save_pretrained
from deblur_rotate.models.stylegan2 import Generator, stylegan2_config
from deblur_rotate.train.sharp_encoder import (
    SharpEncoderConfig,
    SharpEncoderStage,
    SharpFaces,
    central_chip_transform,
    g_weight_at,
    mean_w_norm,
)


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory, small_model):
    root = tmp_path_factory.mktemp("synth_es") / "ds"
    config = SynthConfig(subjects=3, test_subjects=1, performances=1, size=32, fps=112.0, seconds=0.12,
                         supersample=1, model=dict(SMALL_MODEL), seed=5)
    generate(root, config, progress=False, model=small_model)
    return root


@pytest.fixture(scope="module")
def micro_generator(tmp_path_factory):
    torch.manual_seed(0)
    G = Generator(**stylegan2_config("micro"))
    with torch.no_grad():  # a plausible tracked mean of W
        G.mapping(torch.randn(64, G.z_dim), update_w_avg=True)
    return save_pretrained(G, tmp_path_factory.mktemp("g") / "generator")


def test_g_weight_relaxes_linearly_to_zero():
    assert g_weight_at(0, 1.0, 100) == 1.0
    assert g_weight_at(50, 1.0, 100) == pytest.approx(0.5)
    assert g_weight_at(100, 1.0, 100) == 0.0 and g_weight_at(500, 2.0, 100) == 0.0
    assert g_weight_at(0, 1.0, 0) == 0.0


def test_mean_w_norm_matches_mapping():
    torch.manual_seed(1)
    G = Generator(**stylegan2_config("micro"))
    ref = mean_w_norm(G, num=256)
    z = torch.randn(256, G.z_dim)
    norms = G.mapping(z, update_w_avg=False)[:, 0].norm(dim=-1).detach()
    assert ref == pytest.approx(float(norms.mean()), rel=0.2)
    assert ref > 0


def test_central_chip_covers_the_middle():
    a = central_chip_transform(64, chip=150, fraction=0.5)
    corners = np.array([[0, 0, 1], [149, 149, 1]], float) @ a.T
    np.testing.assert_allclose(corners, [[15.75, 15.75], [47.25, 47.25]])


def test_sharp_faces_items_and_mirrored_chips(synth_root):
    base = SynthBMFD(synth_root, split="train", m=4)
    faces = SharpFaces(base, all_frames=True, mirror=True)
    assert len(faces) == len(base) * 10
    item, flipped = faces[0], faces[1]
    assert item["image"].shape == (3, 32, 32) and item["chip"].shape == (2, 3)
    torch.testing.assert_close(flipped["image"], item["image"].flip(-1))
    # the chip follows the landmarks: for the mirrored face its centre is mirrored too
    centre = np.array([74.5, 74.5, 1.0])
    u = item["chip"].double().numpy() @ centre
    u_flip = flipped["chip"].double().numpy() @ centre
    assert abs((31 - u[0]) - u_flip[0]) < 0.5 and abs(u[1] - u_flip[1]) < 0.5
    # the chip from ground-truth landmarks holds the face: brighter than the black background
    chip = extract_face_chips(item["image"][None], item["chip"][None])
    assert chip.mean() > item["image"].mean()


def test_chips_from_landmarks_are_similarity_maps():
    rng = np.random.default_rng(0)
    pts = np.stack([np.linspace(10, 50, 68), 30 + 10 * np.sin(np.linspace(0, 6, 68))], -1)[None]
    pts = pts + rng.normal(0, 0.5, pts.shape)
    a = chip_transforms_from_landmarks(pts)[0]
    lin = a[:, :2]
    assert abs(lin[0, 0] - lin[1, 1]) < 1e-9 and abs(lin[0, 1] + lin[1, 0]) < 1e-9  # rotation * scale
    with pytest.raises(ValueError):
        chip_transforms_from_landmarks(np.zeros((1, 5, 2)))


def _config(tmp_path, synth_root, generator, **kw):
    base = dict(preset="micro", data=str(synth_root), generator=str(generator), out=str(tmp_path / "run"), steps=4, m=4,
                batch=2, checkpoint_every=2, log_every=1, grid=2, lambda_per=0.0, progress=False, device="cpu")
    base.update(kw)
    return SharpEncoderConfig(**base)


def test_micro_run_writes_encoder_generator_and_resumes(tmp_path, synth_root, micro_generator):
    stage = SharpEncoderStage(_config(tmp_path, synth_root, micro_generator))
    losses = stage.run()
    assert {"l1", "edge", "id", "s", "total", "psnr"} <= set(losses)
    assert all(np.isfinite(v) for v in losses.values())
    run = tmp_path / "run"
    for name in ("sharp_encoder", "generator"):
        assert (run / name / "config.json").is_file() and (run / name / "model.safetensors").is_file()
    assert (run / "config.json").is_file() and list((run / "samples").glob("step-*.png"))
    E = load_pretrained("encoders.sharp", run / "sharp_encoder")
    G = load_pretrained("stylegan2.generator", run / "generator")
    x = torch.zeros(1, 3, 32, 32)
    assert G.synthesis(E(x), noise_mode="const").shape == (1, 3, 32, 32)
    # G was fine-tuned: its synthesis weights moved away from the start
    g0 = read_weights(micro_generator)
    g1 = read_weights(run / "generator")
    moved = [k for k in g0 if k.startswith("synthesis") and not torch.equal(g0[k], g1[k])]
    assert moved

    # resume: continue to 6 steps from the step-4 checkpoint
    more = SharpEncoderStage(_config(tmp_path, synth_root, micro_generator, steps=6, resume=True))
    more.run()
    assert more.trainer.step == 6


def test_frozen_generator_stays_put(tmp_path, synth_root, micro_generator):
    stage = SharpEncoderStage(_config(tmp_path, synth_root, micro_generator, steps=2, lr_generator=0.0,
                                      lambda_id=0.0, grid=0))
    stage.run()
    g0, g1 = read_weights(micro_generator), read_weights(tmp_path / "run" / "generator")
    assert all(torch.equal(g0[k], g1[k]) for k in g0 if k.startswith("synthesis"))


def test_init_from_continues_a_decoder_pair(tmp_path, synth_root, micro_generator):
    """Phase 1 trains E_s against a frozen G; phase 2 starts from its E_s and its G (the recipe's warm start)."""
    first = SharpEncoderStage(_config(tmp_path, synth_root, micro_generator, out=str(tmp_path / "first"), steps=2,
                                      lr_generator=0.0, lambda_id=0.0, grid=0))
    first.run()
    trained = read_weights(tmp_path / "first" / "sharp_encoder")
    warm = SharpEncoderStage(_config(tmp_path, synth_root, tmp_path / "first" / "generator",
                                     out=str(tmp_path / "warm"), steps=0, lambda_id=0.0, grid=0,
                                     init_from=str(tmp_path / "first" / "sharp_encoder")))
    assert all(torch.equal(warm.E.state_dict()[k], trained[k]) for k in trained)
    assert all(torch.equal(warm.E_ema.state_dict()[k], trained[k]) for k in trained)
    with pytest.raises(UserError, match="--init-from .* not found"):
        SharpEncoderStage(_config(tmp_path, synth_root, micro_generator, out=str(tmp_path / "x"),
                                  lambda_id=0.0, init_from=str(tmp_path / "nope")))


def test_overfitting_one_batch_improves_reconstruction(tmp_path, synth_root, micro_generator):
    torch.manual_seed(0)
    stage = SharpEncoderStage(_config(tmp_path, synth_root, micro_generator, lambda_id=0.0, grid=0, lr=3e-3,
                                      lr_generator=3e-3, lambda_g=0.0))
    batch = next(stage.batches(0))
    first = stage.step_fn(batch, 0)
    for step in range(1, 40):
        last = stage.step_fn(batch, step)
    assert last["l1"] < 0.7 * first["l1"]
    assert last["psnr"] > first["psnr"] + 1.0


def test_bad_inputs_are_user_errors(tmp_path, synth_root, micro_generator):
    with pytest.raises(UserError, match="not found"):
        SharpEncoderStage(_config(tmp_path, synth_root, tmp_path / "nope"))
    tiny = save_pretrained(Generator(**stylegan2_config("tiny")), tmp_path / "tiny_g")
    with pytest.raises(UserError, match="preset"):
        SharpEncoderStage(_config(tmp_path, synth_root, tiny))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UserError):
        SharpEncoderStage(_config(tmp_path, empty, micro_generator))


def test_cli_reports_missing_generator(tmp_path, synth_root, capsys):
    code = main(["train", "sharp-encoder", "--preset", "micro", "--data", str(synth_root), "--generator",
                 str(tmp_path / "missing"), "--out", str(tmp_path / "run"), "--steps", "1", "--m", "4",
                 "--no-progress"])
    assert code == 2
    assert "generator folder" in capsys.readouterr().err


def test_fresh_generator_trains_as_an_autoencoder_in_bf16(tmp_path, synth_root):
    """--fresh-generator: no G folder, G starts random, lambda_g is forced to 0; bf16 autocast runs on CPU."""
    config = _config(tmp_path, synth_root, "", fresh_generator=True, lambda_id=0.0, grid=0, precision="bf16",
                     lr=3e-3, lr_generator=3e-3, steps=2)
    stage = SharpEncoderStage(config)
    assert stage.config.lambda_g == 0.0 and stage.amp.enabled and stage.amp.dtype == torch.bfloat16
    batch = next(stage.batches(0))
    first = stage.step_fn(batch, 0)
    for step in range(1, 30):
        last = stage.step_fn(batch, step)
    assert "g_drift" not in last
    assert last["l1"] < 0.8 * first["l1"]
    with pytest.raises(UserError, match="fresh-generator"):
        SharpEncoderStage(_config(tmp_path, synth_root, tmp_path / "g", fresh_generator=True))


def test_cli_fresh_generator_and_generator_exclude_each_other(tmp_path, synth_root, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["train", "sharp-encoder", "--preset", "micro", "--data", str(synth_root), "--generator", "g",
              "--fresh-generator", "--out", str(tmp_path / "run")])
    assert exc.value.code == 2 and "not allowed with" in capsys.readouterr().err

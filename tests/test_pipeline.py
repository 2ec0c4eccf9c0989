"""Inference pipeline: model folders, the data flow (E_v -> F -> G), fp16 storage, photos, alignment, paste-back."""
import json
import math

import numpy as np
import pytest
import torch
from conftest import micro_networks
from PIL import Image

from deblur_rotate.data.align import ffhq_transform, transform_points
from deblur_rotate.errors import UserError
from deblur_rotate.faces import alignment_matrix, crop_from_landmarks, face_mask, paste_back, prepare_image
from deblur_rotate.images import read_image
from deblur_rotate.models.fusion import FusionNetwork
from deblur_rotate.models.stylegan2 import Generator, stylegan2_config
from deblur_rotate.pipeline import PIPELINE_FILE, DeblurRotatePipeline, assemble_model, sweep_views


@pytest.fixture(scope="module")
def nets():
    return micro_networks()


@pytest.fixture(scope="module")
def model_dir(nets, tmp_path_factory):
    g, ev, e3, f = nets
    return assemble_model(tmp_path_factory.mktemp("m") / "model", generator=g, blur_encoder=ev, face3d_encoder=e3,
                          fusion=f, preset="micro", extra={"note": "test"})


@pytest.fixture(scope="module")
def pipe(model_dir):
    return DeblurRotatePipeline.from_pretrained(model_dir)


@pytest.fixture(scope="module")
def blurry():
    torch.manual_seed(1)
    x = torch.nn.functional.avg_pool2d(torch.rand(3, 3, 34, 34) * 2 - 1, 3, stride=1)  # smooth-ish, [3, 3, 32, 32]
    return x.clamp(-1, 1)


@pytest.fixture(scope="module")
def finder():
    from deblur_rotate.faces import FaceFinder

    return FaceFinder()  # loads dlib's models once for the module


@pytest.fixture(scope="module")
def astronaut():
    skimage_data = pytest.importorskip("skimage.data")
    return skimage_data.astronaut()  # a real face photo, 512 x 512


# ----------------------------------------------------------------------------------------------- folders


def test_model_folder_layout_and_exact_round_trip(model_dir, nets, pipe):
    meta = json.loads((model_dir / PIPELINE_FILE).read_text())
    assert meta["format_version"] == 1 and meta["kind"] == "deblur-rotate" and meta["preset"] == "micro"
    assert meta["resolution"] == 32 and meta["num_frames"] == 5 and meta["extra"] == {"note": "test"}
    assert meta["crop"]["method"] == "ffhq" and meta["storage_dtype"] == "float32"
    for role, sub in meta["networks"].items():
        assert (model_dir / sub / "config.json").is_file() and (model_dir / sub / "model.safetensors").is_file(), role
    assert not [p for p in model_dir.parent.iterdir() if p.name.startswith(".")]  # temp folder renamed away
    for original, loaded in zip(nets, (pipe.generator, pipe.blur_encoder, pipe.face3d_encoder, pipe.fusion)):
        assert not loaded.training
        a, b = original.state_dict(), loaded.state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_assemble_refuses_existing_folder_and_file(nets, tmp_path, model_dir):
    g, ev, _, _ = nets
    with pytest.raises(UserError, match="not empty"):
        assemble_model(model_dir, generator=g, blur_encoder=ev, preset="micro")
    target = tmp_path / "file"
    target.write_text("x")
    with pytest.raises(UserError, match="is a file"):
        assemble_model(target, generator=g, blur_encoder=ev, preset="micro")
    # networks given as folders work too, and overwrite replaces the whole folder
    out = assemble_model(tmp_path / "m2", generator=model_dir / "generator", blur_encoder=model_dir / "blur_encoder",
                         preset="micro")
    assert sorted(p.name for p in out.iterdir()) == ["blur_encoder", "generator", PIPELINE_FILE]
    (out / "stale.txt").write_text("old")
    assemble_model(out, generator=g, blur_encoder=ev, preset="micro", overwrite=True)
    assert not (out / "stale.txt").exists()


def test_mismatched_networks_are_user_errors(nets, tmp_path, model_dir):
    g, ev, e3, _ = nets
    other_f = FusionNetwork(num_ws=g.num_ws, w_dim=16, num_layers=2, hidden=8)
    with pytest.raises(UserError, match="fusion.*w_dim 16"):
        assemble_model(tmp_path / "bad", generator=g, blur_encoder=ev, fusion=other_f, preset="micro")
    assert not (tmp_path / "bad").exists()
    with pytest.raises(UserError, match="blur_encoder must be a BlurEncoder"):
        assemble_model(tmp_path / "bad", generator=g, blur_encoder=e3, preset="micro")
    # a folder whose pipeline.json points a role at the wrong network
    import shutil

    broken = tmp_path / "swapped"
    shutil.copytree(model_dir, broken)
    meta = json.loads((broken / PIPELINE_FILE).read_text())
    meta["networks"]["fusion"] = "blur_encoder"
    (broken / PIPELINE_FILE).write_text(json.dumps(meta))
    with pytest.raises(UserError, match=r"swapped.*fusion.*encoders\.blur"):
        DeblurRotatePipeline.from_pretrained(broken)
    # truncated weights
    shutil.copytree(model_dir, tmp_path / "trunc")
    weights = tmp_path / "trunc" / "generator" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(UserError, match="trunc.*generator.*safetensors"):
        DeblurRotatePipeline.from_pretrained(tmp_path / "trunc")


def test_missing_or_foreign_folders(tmp_path, model_dir, monkeypatch):
    with pytest.raises(UserError, match="does not exist"):
        DeblurRotatePipeline.from_pretrained(tmp_path / "nope")
    with pytest.raises(UserError, match="single network folder"):
        DeblurRotatePipeline.from_pretrained(model_dir / "generator")
    (tmp_path / "j").mkdir()
    (tmp_path / "j" / PIPELINE_FILE).write_text("{not json")
    with pytest.raises(UserError, match="not readable JSON"):
        DeblurRotatePipeline.from_pretrained(tmp_path / "j")
    (tmp_path / "j" / PIPELINE_FILE).write_text(json.dumps({"kind": "deblur-rotate", "format_version": 99,
                                                            "networks": {}}))
    with pytest.raises(UserError, match="format_version 99"):
        DeblurRotatePipeline.from_pretrained(tmp_path / "j")
    import deblur_rotate.pipeline as pipeline_module

    monkeypatch.setattr(pipeline_module, "bundled_model_dir", lambda: tmp_path / "assets" / "model")
    with pytest.raises(UserError, match="no model is bundled.*deblur-rotate train.*--model"):
        DeblurRotatePipeline.from_pretrained(None)


# --------------------------------------------------------------------------------------------- data flow


def test_views_shapes_and_same_view_is_plain_synthesis(pipe, blurry):
    views = [(0, 0), (30, 0), (0, -20)]
    out = pipe(blurry, views=views)
    assert out.frames.shape == (3, 3, 5, 3, 32, 32) and out.pose.shape == (3, 3)
    assert out.codes.shape == (3, 5, 8, 32) and out.view_codes.shape == (3, 3, 5, 8, 32)
    assert out.views == [(0.0, 0.0), (30.0, 0.0), (0.0, -20.0)]
    with torch.no_grad():
        codes = pipe.blur_encoder(blurry)
        plain = pipe.generator.synthesis(codes.flatten(0, 1), noise_mode="const").reshape(3, 5, 3, 32, 32)
        turned = pipe.fusion(codes, torch.tensor([0.0, math.radians(30), 0.0]))
    torch.testing.assert_close(out.codes, codes)
    torch.testing.assert_close(out.frames[:, 0], plain, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.view_codes[:, 1], turned)
    # different views render different frames, and the frames of one view differ in time
    for a, b in [(0, 1), (0, 2), (1, 2)]:
        assert (out.frames[:, a] - out.frames[:, b]).abs().mean() > 1e-3
    assert (out.frames[:, 0, 0] - out.frames[:, 0, 4]).abs().mean() > 1e-3
    # batching over images changes nothing; a list of [3, R, R] images is accepted
    single = pipe([blurry[2]], views=views)
    torch.testing.assert_close(single.frames[0], out.frames[2], atol=1e-5, rtol=1e-5)


def test_to_frontal_uses_minus_pose(pipe, blurry):
    out = pipe(blurry, views=[(0, 0), (10, 5)], to_frontal=True)
    with torch.no_grad():
        codes = pipe.blur_encoder(blurry)
        pose = pipe.face3d_encoder.pose(blurry)
        assert pose.abs().max() > 0.05  # the test means something only when the pose is not ~0
        frontal = pipe.generator.synthesis(pipe.fusion(codes, -pose).flatten(0, 1), noise_mode="const")
        dp = torch.tensor([math.radians(5), math.radians(10), 0.0]) - pose
        other = pipe.fusion(codes, dp)
    torch.testing.assert_close(out.pose, pose)
    torch.testing.assert_close(out.frames[:, 0].flatten(0, 1), frontal, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.view_codes[:, 1], other)
    assert (out.frames[:, 0] - pipe(blurry).frames[:, 0]).abs().mean() > 1e-3  # frontal != input view


def test_resample_frames_and_sweep(pipe, blurry):
    codes, pose = pipe.encode(blurry)
    nine = pipe.resample_frames(codes, 9)
    assert nine.shape == (3, 9, 8, 32)
    torch.testing.assert_close(nine[:, ::2], codes)  # every second code is an original one
    torch.testing.assert_close(nine[:, 1], (codes[:, 0] + codes[:, 1]) / 2)
    torch.testing.assert_close(pipe.resample_frames(codes, 1)[:, 0], codes[:, 2])
    assert pipe(blurry[:1], num_frames=3).frames.shape == (1, 1, 3, 3, 32, 32)
    orbit = sweep_views(8, 40.0)
    assert orbit[0] == (0.0, 0.0) and max(y for y, _ in orbit) == pytest.approx(40.0)
    assert orbit[6][0] == pytest.approx(-40.0)
    video = pipe.sweep(codes, pose, orbit)
    assert video.shape == (3, 8, 3, 32, 32)
    with torch.no_grad():  # step 2: frame t=2 turned by +40 degrees of yaw
        expect = pipe.generator.synthesis(pipe.fusion(codes[:, 2], torch.tensor([0.0, math.radians(40), 0.0])),
                                          noise_mode="const")
    torch.testing.assert_close(video[:, 2], expect, atol=1e-5, rtol=1e-5)


def test_inputs_are_checked(pipe):
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        pipe(torch.full((1, 3, 32, 32), 200.0))
    with pytest.raises(ValueError, match="square"):
        pipe(torch.zeros(1, 3, 32, 40))
    assert pipe(torch.zeros(2, 3, 64, 64)).frames.shape == (2, 1, 5, 3, 32, 32)  # other sizes are resized


def test_fp16_storage_loads_as_fp32(nets, tmp_path, pipe, blurry):
    from safetensors import safe_open

    g, ev, e3, f = nets
    half = assemble_model(tmp_path / "half", generator=g, blur_encoder=ev, face3d_encoder=e3, fusion=f,
                          preset="micro", dtype=torch.float16)
    with safe_open(str(half / "generator" / "model.safetensors"), "pt") as handle:
        assert {handle.get_tensor(k).dtype for k in handle.keys()} == {torch.float16}  # noqa: SIM118
    assert json.loads((half / PIPELINE_FILE).read_text())["storage_dtype"] == "float16"
    loaded = DeblurRotatePipeline.from_pretrained(half)
    assert all(p.dtype == torch.float32 for p in loaded.generator.parameters())
    assert g.mapping.fc0.weight.dtype == torch.float32  # the caller's network was not cast
    for a, b in zip(nets, (loaded.generator, loaded.blur_encoder, loaded.face3d_encoder, loaded.fusion)):
        sa, sb = a.state_dict(), b.state_dict()
        for k in sa:
            if sa[k].is_floating_point():
                torch.testing.assert_close(sb[k], sa[k].half().float())
    out16, out32 = loaded(blurry, views=[(0, 0), (20, 0)]), pipe(blurry, views=[(0, 0), (20, 0)])
    assert (out16.frames - out32.frames).abs().mean() < 0.02


def test_fp16_halves_the_size(nets, tmp_path):
    g, ev, _, _ = nets
    a = assemble_model(tmp_path / "a", generator=g, blur_encoder=ev, preset="micro")
    b = assemble_model(tmp_path / "b", generator=g, blur_encoder=ev, preset="micro", dtype=torch.float16)
    size = [sum(p.stat().st_size for p in d.rglob("*.safetensors")) for d in (a, b)]
    assert size[1] < 0.6 * size[0]


def test_model_without_fusion_or_face3d(nets, tmp_path, blurry):
    g, ev, _, f = nets
    plain = DeblurRotatePipeline.from_pretrained(assemble_model(tmp_path / "p", generator=g, blur_encoder=ev,
                                                                preset="micro"))
    assert not plain.can_rotate and not plain.has_pose
    out = plain(blurry)
    assert out.pose is None and out.frames.shape == (3, 1, 5, 3, 32, 32)
    with pytest.raises(UserError, match="no fusion network.*only reconstruct the input view"):
        plain(blurry, views=[(0, 0), (30, 0)])
    with pytest.raises(UserError, match="no face3d_encoder"):
        plain(blurry, to_frontal=True)
    # F without E_3D: relative turns work, frontal does not
    turn = DeblurRotatePipeline(g, ev, None, f)
    assert turn(blurry, views=[(15, 0)]).frames.shape == (3, 1, 5, 3, 32, 32)
    with pytest.raises(UserError, match="no face3d_encoder"):
        turn(blurry, to_frontal=True)


# -------------------------------------------------------------------------------------------------- photos


def test_read_image_converts_modes_and_rejects_bad_files(tmp_path):
    grey16 = (np.arange(40 * 50, dtype=np.uint16).reshape(40, 50) * 30).astype(np.uint16)
    Image.fromarray(grey16).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode.startswith("I")
    out = read_image(tmp_path / "g16.png")
    assert out.shape == (40, 50, 3) and out.dtype == np.uint8
    np.testing.assert_allclose(out[..., 0], grey16 / 257.0, atol=0.51)
    assert (out[..., 0] == out[..., 2]).all() and out.max() > 200  # scaled, not clipped at 255
    rgba = np.zeros((20, 20, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 200, 128
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    assert read_image(tmp_path / "a.png")[0, 0].tolist() == [100, 0, 0]  # over black
    Image.fromarray(np.full((20, 30), 77, np.uint8)).convert("P").save(tmp_path / "p.bmp")
    assert read_image(tmp_path / "p.bmp").shape == (20, 30, 3)
    Image.fromarray(np.full((20, 20, 3), 9, np.uint8)).save(tmp_path / "x.webp", lossless=True)
    assert read_image(tmp_path / "x.webp")[5, 5].tolist() == [9, 9, 9]

    (tmp_path / "junk.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg at all")
    with pytest.raises(UserError, match="junk.jpg: not a readable image"):
        read_image(tmp_path / "junk.jpg")
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(tmp_path / "t.png")
    data = (tmp_path / "t.png").read_bytes()
    (tmp_path / "t.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match="t.png: not a readable image"):
        read_image(tmp_path / "t.png")
    Image.fromarray(np.zeros((1, 1, 3), np.uint8)).save(tmp_path / "one.png")
    with pytest.raises(UserError, match="one.png: image is 1x1 pixels, too small"):
        read_image(tmp_path / "one.png")


def test_crop_measured_from_landmarks_reproduces_training_framing(astronaut, finder):
    found = finder.find(astronaut)
    assert found, "dlib finds the astronaut's face"
    lm = found[0][1]
    size = 64
    a0 = ffhq_transform(lm, size)
    # "training images" in which the FFHQ square is 0.6 of the side and centred at (0.45, 0.55)
    k, centre = 0.6, np.array([0.45, 0.55]) * size - 0.5
    s = np.array([[k, 0, centre[0] - k * (size - 1) / 2], [0, k, centre[1] - k * (size - 1) / 2]])
    train = s[:, :2] @ a0
    train = np.concatenate([train[:, :2], (s[:, :2] @ a0[:, 2] + s[:, 2])[:, None]], 1)
    crop = crop_from_landmarks(transform_points(train, lm)[None], size)
    assert crop["face_side"] == pytest.approx(0.6, abs=1e-4)
    np.testing.assert_allclose(crop["face_center"], [0.45, 0.55], atol=1e-4)
    np.testing.assert_allclose(alignment_matrix(lm, size, crop), train, atol=1e-3)
    np.testing.assert_allclose(alignment_matrix(lm, size), a0)  # default: FFHQ framing


def test_prepare_image_and_paste_back(astronaut, finder):
    faces = prepare_image(astronaut, 128, only_center_face=True, finder=finder)
    assert len(faces) == 1
    face = faces[0]
    left, top, right, bottom = face.box
    assert 150 < (left + right) / 2 < 290 and 50 < (top + bottom) / 2 < 190  # the astronaut's face
    assert face.image.shape == (128, 128, 3) and face.tensor().shape == (3, 128, 128)
    eyes = transform_points(face.affine, face.landmarks[36:48])
    assert (eyes[:, 1] < 64).all() and (eyes[:, 1] > 20).all()  # eyes in the upper half of the crop
    assert len(prepare_image(astronaut, 32, finder=finder)) >= 1
    with pytest.raises(UserError, match="flat.png: no face found"):  # HOG, then the CNN fallback
        prepare_image(np.full((48, 48, 3), 128, np.uint8), 32, name="flat.png", finder=finder)
    assert prepare_image(astronaut, 32, aligned=True)[0].image.shape == (32, 32, 3)

    # pasting the crop itself back leaves the photo nearly unchanged; a 2-pixel shift does not
    same = paste_back(astronaut, [(face, face.image)]).astype(int)
    moved = paste_back(astronaut, [(face, np.roll(face.image, 2, axis=1))]).astype(int)
    region = (slice(90, 160), slice(185, 255))
    err_same = np.abs(same - astronaut)[region].mean()
    err_moved = np.abs(moved - astronaut)[region].mean()
    assert err_same < 5.0 and err_same < 0.6 * err_moved, (err_same, err_moved)
    white = paste_back(astronaut, [(face, np.full_like(face.image, 255))])
    assert white[120, 220].min() > 245  # the face centre is replaced
    assert (white[:60, :60] == astronaut[:60, :60]).all() and (white[400:, 400:] == astronaut[400:, 400:]).all()
    mask = face_mask(transform_points(face.affine, face.landmarks), 128)
    assert mask.shape == (128, 128) and mask[64, 64] > 0.99 and mask[0, 0] == 0
    assert ((mask > 0.05) & (mask < 0.95)).any()


def test_assemble_keeps_side_files_of_network_folders(nets, tmp_path):
    """E_3D folders carry face_model.json (morphable model + camera); the model folder keeps it."""
    from deblur_rotate.models.io import save_pretrained

    g, ev, e3, f = nets
    e3_dir = save_pretrained(e3, tmp_path / "e3")
    (e3_dir / "face_model.json").write_text('{"kind": "procedural"}')
    out = assemble_model(tmp_path / "model", generator=g, blur_encoder=ev, face3d_encoder=e3_dir, fusion=f,
                         preset="micro")
    assert json.loads((out / "face3d_encoder" / "face_model.json").read_text()) == {"kind": "procedural"}


@pytest.mark.skipif(not hasattr(__import__("os"), "umask") or __import__("os").name != "posix", reason="POSIX modes")
def test_model_folder_gets_the_umask_modes(nets, tmp_path):
    import os
    import stat

    g, ev, e3, f = nets
    old = os.umask(0o022)
    try:
        out = assemble_model(tmp_path / "shared", generator=g, blur_encoder=ev, face3d_encoder=e3, fusion=f,
                             preset="micro")
    finally:
        os.umask(old)
    assert stat.S_IMODE(out.stat().st_mode) == 0o755  # not mkdtemp's 0700: other users can read the model
    for path in out.rglob("*"):
        assert stat.S_IMODE(path.stat().st_mode) == (0o755 if path.is_dir() else 0o644), path


def _damage(folder, key_of, change):
    """Rewrite ``folder/model.safetensors`` with ``change(tensor)`` for the first key that ``key_of`` accepts;
    returns that key."""
    from safetensors.torch import load_file, save_file

    path = folder / "model.safetensors"
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata()
    state = load_file(str(path))
    key = next(k for k in sorted(state) if key_of(k, state[k]))
    state[key] = change(state[key])
    save_file(state, str(path), metadata=metadata)
    return key


@pytest.mark.parametrize("damage", ["nan", "inf", "integer"])
def test_damaged_weights_are_refused(nets, tmp_path, damage):
    import shutil

    g, ev, e3, f = nets
    out = assemble_model(tmp_path / "m", generator=g, blur_encoder=ev, face3d_encoder=e3, fusion=f, preset="micro")
    DeblurRotatePipeline.from_pretrained(out)  # loads while intact

    def change(t):
        if damage == "integer":
            return t.round().to(torch.int32)
        t = t.clone()
        t.view(-1)[t.numel() // 2] = float("nan") if damage == "nan" else float("inf")
        return t

    key = _damage(out / "generator", lambda k, t: t.is_floating_point() and t.numel() > 4, change)
    with pytest.raises(UserError) as info:
        DeblurRotatePipeline.from_pretrained(out)
    message = str(info.value)
    assert str(out / "generator") in message and key in message
    assert ("integer" in message) if damage == "integer" else ("non-finite" in message)
    # the training-side loader (checkpoint.load_weights) refuses them too
    from deblur_rotate.train.checkpoint import load_weights

    with pytest.raises(UserError, match=key.replace(".", r"\.")):
        load_weights(Generator(**stylegan2_config("micro")), out / "generator")
    shutil.rmtree(out)

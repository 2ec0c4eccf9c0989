"""Readers, mixing sampler and colour jitter, on small folders built here from scikit-image's astronaut."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import write_video

from deblur_rotate.data.blur import IBUG68_MIRROR, apply_kernels, random_motion_kernels
from deblur_rotate.data.mixing import (
    MixedBatchSampler,
    apply_jitter,
    batch_counts,
    jitter_batch,
    mixed_loader,
    sample_jitter,
)
from deblur_rotate.data.readers import (
    MultiViewClips,
    StillImages,
    VideoClips,
    Vidtimit,
    collate_samples,
    detect_kind,
    mirror_sample,
    seed_from,
)
from deblur_rotate.errors import UserError
from deblur_rotate.files import from_uint8, save_png

skimage_data = pytest.importorskip("skimage.data")
ASTRO = skimage_data.astronaut()  # [512, 512, 3] uint8; the face is around x 175..265, y 76..166


def shifted(t: int, size: int = 64, x0: int = 180, y0: int = 80, dx: int = 2, dy: int = 1,
            width: int | None = None) -> np.ndarray:
    """Frame t: a crop of the astronaut moved by (dx * t, dy * t) pixels."""
    x, y = x0 + dx * t, y0 + dy * t
    return ASTRO[y:y + size, x:x + (width or size)].copy()


def write_folder(folder, n, name="frame_{:05d}.png", **kw):
    folder.mkdir(parents=True, exist_ok=True)
    frames = [shifted(t, **kw) for t in range(n)]
    for t, f in enumerate(frames):
        save_png(folder / name.format(t), f)
    return np.stack(frames)


def fake_landmarks(t: int) -> np.ndarray:
    """Distinct landmarks per frame and point: [68, 2]."""
    k = np.arange(68, dtype=np.float32)
    return np.stack([10 + 0.5 * k + t, 5 + 0.25 * k + 2 * t], -1)


def write_pts(path, lm):
    path.parent.mkdir(parents=True, exist_ok=True)
    body = "\n".join(f"{x + 1:.3f} {y + 1:.3f}" for x, y in lm)  # .pts is 1-based
    path.write_text(f"version: 1\nn_points:  68\n{{\n{body}\n}}\n")


def expected_blur(frames: np.ndarray, c: int, m: int) -> torch.Tensor:
    return from_uint8(frames[c - m:c + m + 1]).mean(0)


# ------------------------------------------------------------------------------------------------ stills

def test_still_images_kernel_targets_and_determinism(tmp_path):
    (tmp_path / "sub").mkdir()
    for k in range(3):
        save_png(tmp_path / "sub" / f"{k:05d}.png" if k else tmp_path / f"{k:05d}.png", shifted(k))
    ds = StillImages(tmp_path, size=64, seed=3)
    assert len(ds) == 3
    s = ds[1]
    sharp = from_uint8(shifted(0))  # files sort as 00000.png, sub/00001.png, sub/00002.png
    s0 = ds[0]
    assert s0["targets"].shape == (5, 3, 64, 64)
    assert torch.equal(s0["targets"][0], sharp) and torch.equal(s0["targets"][4], sharp)
    g = torch.Generator().manual_seed(seed_from(3, 0, 0))
    want = apply_kernels(sharp[None], random_motion_kernels(1, g, size=9))[0]
    assert torch.allclose(s0["blurry"], want, atol=1e-6)
    assert s0["view"] == 0 and s0["coeffs"] is None and torch.isnan(s0["landmarks"]).all()
    assert torch.equal(ds[1]["blurry"], s["blurry"])  # deterministic
    ds.set_epoch(1)
    assert not torch.equal(ds[1]["blurry"], s["blurry"])  # a new kernel each epoch


def test_still_images_mirror_pair(tmp_path):
    save_png(tmp_path / "a.png", shifted(0, size=48, width=64))  # non-square: centre-cropped
    ds = StillImages(tmp_path, size=32, mirror="pair")
    s = ds[0]
    assert s["blurry"].shape == (2, 3, 32, 32) and s["targets"].shape == (2, 5, 3, 32, 32)
    assert torch.equal(s["targets"][1], s["targets"][0].flip(-1))
    assert s["mirrored"].tolist() == [False, True]


# ------------------------------------------------------------------------------------------ single view

def test_frame_folder_blur_is_mean_of_window_and_targets(tmp_path):
    frames = write_folder(tmp_path / "clipA", 13)
    ds = VideoClips(tmp_path, m=4, size=64)
    assert [c for _, c in ds.items] == list(range(4, 9))
    s = ds[2]  # centre 6
    assert s["center"] == 6
    assert torch.allclose(s["blurry"], expected_blur(frames, 6, 4), atol=1e-6)
    for k, t in enumerate([2, 4, 6, 8, 10]):
        assert torch.allclose(s["targets"][k], from_uint8(frames[t]), atol=1e-6)
    # resizing commutes with the mean (both linear): a half-size sample is the resized full-size one
    small = VideoClips(tmp_path, m=4, size=32)[2]
    ref = torch.nn.functional.interpolate(expected_blur(frames, 6, 4)[None], size=32, mode="bilinear",
                                          antialias=True, align_corners=False)[0]
    assert torch.allclose(small["blurry"], ref, atol=1e-5)


def test_300vw_video_pts_landmarks_resize_and_mirror(tmp_path):
    frames = np.stack([shifted(t) for t in range(12)])
    write_video(tmp_path / "001" / "vid.avi", frames)
    for t in range(12):
        if t != 5:  # one missing .pts: NaN landmarks for that frame
            write_pts(tmp_path / "001" / "annot" / f"{t + 1:06d}.pts", fake_landmarks(t))
    assert detect_kind(tmp_path) == "300vw"
    ds = VideoClips(tmp_path, m=2, size=64)
    assert len(ds) == 8
    s = ds[ds.items.index((0, 4))]
    assert torch.allclose(s["blurry"], expected_blur(frames, 4, 2), atol=1e-6)  # lossless video: exact
    assert torch.allclose(s["target_landmarks"][0], torch.from_numpy(fake_landmarks(2)), atol=1e-4)
    assert torch.isnan(s["target_landmarks"][3]).all()  # targets are frames 2..6; frame 5 has no .pts
    assert torch.allclose(s["landmarks"], torch.from_numpy(fake_landmarks(4)), atol=1e-4)
    # resize 64 -> 32: u' = (u + 0.5) / 2 - 0.5
    half = VideoClips(tmp_path, m=2, size=32)[ds.items.index((0, 4))]
    assert torch.allclose(half["landmarks"], (torch.from_numpy(fake_landmarks(4)) + 0.5) / 2 - 0.5, atol=1e-4)
    # mirror: images flipped, u -> W - 1 - u, points renumbered (36 <-> 45)
    pair = VideoClips(tmp_path, m=2, size=64, mirror="pair")[ds.items.index((0, 4))]
    assert torch.equal(pair["blurry"][1], pair["blurry"][0].flip(-1))
    lm, mlm = pair["landmarks"][0], pair["landmarks"][1]
    assert torch.allclose(mlm[36], torch.stack([63 - lm[45, 0], lm[45, 1]]))
    assert torch.allclose(mlm, torch.stack([63 - lm[:, 0], lm[:, 1]], -1)[list(IBUG68_MIRROR)])


def test_non_square_frames_crop_landmarks(tmp_path):
    clip = tmp_path / "c"
    write_folder(clip, 5, size=48, width=64)  # H 48, W 64: crop starts at x = 8
    np.save(clip / "landmarks.npy", np.stack([fake_landmarks(t) + [8, 0] for t in range(5)]).astype(np.float32))
    s = VideoClips(tmp_path, m=2, size=48)[0]
    assert torch.allclose(s["landmarks"], torch.from_numpy(fake_landmarks(2)), atol=1e-4)


def test_vidtimit_layout(tmp_path):
    for seq in ("head", "head2", "sa1"):
        write_folder(tmp_path / "fadg0" / "video" / seq, 12, name="{:03d}")  # extension-less, like VIDTIMIT
    ds = Vidtimit(tmp_path, m=2, size=64)
    assert sorted({c.name for c in ds.clips}) == ["fadg0/video/head", "fadg0/video/head2"]
    assert len(ds) == 2 * len(range(2, 10, 5))  # disjoint windows by default
    assert detect_kind(tmp_path) == "vidtimit"


# ------------------------------------------------------------------------------------------- multi-view

def make_multiview(root, n=9, views=(1, 2, 3)):
    out = {}
    for v in views:
        out[v] = write_folder(root / "s01" / "perf_a" / f"view_{v}", n, x0=170 + 3 * v)
    return out


def test_multiview_same_instant_and_pairs(tmp_path):
    frames = make_multiview(tmp_path)
    ds = MultiViewClips(tmp_path, m=2, size=64)
    assert ds.views == [1, 2, 3] and len(ds) == 3 * 5 and len(ds.instants) == 5
    s = ds.load_views("s01/perf_a", 4, [1, 3])
    assert s["blurry"].shape == (2, 3, 64, 64) and s["view"].tolist() == [1, 3]
    for k, v in enumerate([1, 3]):
        assert torch.allclose(s["blurry"][k], expected_blur(frames[v], 4, 2), atol=1e-6)
        assert torch.allclose(s["targets"][k, 2], from_uint8(frames[v][4]), atol=1e-6)
    pairs = MultiViewClips(tmp_path, m=2, size=64, pairs=True, seed=1)
    p = pairs[0]
    assert p["view"][0] != p["view"][1] and p["center"] == 2
    mirrored = MultiViewClips(tmp_path, m=2, size=64, mirror="pair")[0]
    assert mirrored["view"].tolist() == [1, 8]  # view v mirrors to 9 - v


def test_bad_layouts_are_errors_naming_the_expected_layout(tmp_path):
    save_png(tmp_path / "x.png", shifted(0))
    with pytest.raises(UserError, match="BMFD layout"):
        MultiViewClips(tmp_path, m=2)
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="300VW"):
        VideoClips(tmp_path / "empty", m=2)
    write_folder(tmp_path / "short" / "c", 3)
    with pytest.raises(UserError, match="3 frames"):
        VideoClips(tmp_path / "short", m=2)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "vid.avi").write_bytes(b"not a video at all" * 10)
    write_folder(tmp_path / "bad" / "ok", 6)
    ds = VideoClips(tmp_path / "bad", m=2)
    assert len(ds) == 2 and ds.skipped and ds.skipped[0][0] == "vid.avi"


# ----------------------------------------------------------------------------------------------- mixing

def test_batch_counts_follow_the_ratio():
    counts = batch_counts(8, (2, 1, 1), 50)
    assert (counts == [4, 2, 2]).all()
    counts = batch_counts(6, (2, 1, 1), 1000)  # 3, 1.5, 1.5 per batch
    assert (counts.sum(1) == 6).all()
    assert np.abs(counts.sum(0) - np.array([3000, 1500, 1500])).max() <= 1
    assert np.abs(np.cumsum(counts, 0) - np.outer(np.arange(1, 1001), [3, 1.5, 1.5])).max() <= 1


def test_mixed_sampler_ratio_determinism_and_ranks():
    sizes = [100, 37, 20]
    sampler = MixedBatchSampler(sizes, 8, (2, 1, 1), seed=5, batches_per_epoch=400)
    batches = list(sampler)
    assert len(batches) == 400 and all(len(b) == 8 for b in batches)
    src = np.searchsorted([0, 100, 137, 157], np.array(batches), side="right") - 1
    per_source = np.stack([(src == k).sum(1) for k in range(3)], 1)
    assert (per_source == [4, 2, 2]).all()  # every batch exactly 2:1:1
    assert batches == list(MixedBatchSampler(sizes, 8, (2, 1, 1), seed=5, batches_per_epoch=400))
    assert batches != list(MixedBatchSampler(sizes, 8, (2, 1, 1), seed=6, batches_per_epoch=400))
    # every item of a source is seen once per pass
    first = [i for b in batches[:25] for i in b if i < 100]
    assert sorted(first) == list(range(100))
    # DDP: the two ranks draw disjoint items in the first pass of each source
    r0 = list(MixedBatchSampler(sizes, 4, (2, 1, 1), seed=5, rank=0, world_size=2, batches_per_epoch=10))
    r1 = list(MixedBatchSampler(sizes, 4, (2, 1, 1), seed=5, rank=1, world_size=2, batches_per_epoch=10))
    a = [i for b in r0 for i in b if i < 100]
    b = [i for b in r1 for i in b if i < 100]
    assert len(a) == len(b) == 20 and not set(a) & set(b)
    with pytest.raises(UserError, match="ratio"):
        MixedBatchSampler(sizes, 8, (2, 1))


def test_mixed_loader_end_to_end(tmp_path):
    (tmp_path / "stills").mkdir()
    for k in range(4):
        save_png(tmp_path / "stills" / f"{k}.png", shifted(k))
    write_folder(tmp_path / "video" / "c", 9)
    make_multiview(tmp_path / "mv", n=9, views=(1, 2))
    datasets = [StillImages(tmp_path / "stills", size=32), VideoClips(tmp_path / "video", m=2, size=32),
                MultiViewClips(tmp_path / "mv", m=2, size=32)]
    loader = mixed_loader(datasets, batch_size=4, ratio=(2, 1, 1), workers=0, batches_per_epoch=3)
    batches = list(loader)
    assert len(batches) == 3
    b = batches[0]
    assert b["blurry"].shape == (4, 3, 32, 32) and b["targets"].shape == (4, 5, 3, 32, 32)
    assert b["landmarks"].shape == (4, 68, 2) and b["source_index"].tolist() == [0, 0, 1, 2]
    assert b["view"].tolist()[:3] == [0, 0, 0] and b["view"].tolist()[3] in (1, 2)
    assert b["coeffs"] == [None] * 4


# --------------------------------------------------------------------------------------- jitter, mirror

def test_color_jitter_shares_parameters_per_sample():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 3, 16, 16) * 2 - 1
    batch = {"blurry": x, "targets": x[:, None].expand(-1, 5, -1, -1, -1).clone()}
    out = jitter_batch(batch, g)
    assert out["blurry"].shape == x.shape and out["blurry"].abs().max() <= 1
    assert not torch.allclose(out["blurry"], x, atol=1e-3)
    for k in range(5):
        assert torch.allclose(out["targets"][:, k], out["blurry"], atol=1e-5)
    same = jitter_batch(batch, torch.Generator().manual_seed(0))
    assert torch.equal(same["blurry"], out["blurry"])
    identity = apply_jitter(x, sample_jitter(3, g, 0, 0, 0, 0))
    assert torch.allclose(identity, x, atol=1e-4)


def test_mirror_sample_is_an_involution():
    torch.manual_seed(0)
    s = {"blurry": torch.rand(3, 8, 8), "targets": torch.rand(5, 3, 8, 8), "view": 2,
         "pose": torch.tensor([0.1, 0.2, 0.3]), "coeffs": torch.zeros(4), "landmarks": torch.rand(68, 2) * 7,
         "target_landmarks": torch.rand(5, 68, 2) * 7}
    m = mirror_sample(s)
    assert m["view"] == 7 and m["coeffs"] is None and torch.allclose(m["pose"], torch.tensor([0.1, -0.2, -0.3]))
    mm = mirror_sample(m)
    assert torch.equal(mm["blurry"], s["blurry"])
    assert torch.allclose(mm["target_landmarks"], s["target_landmarks"], atol=1e-5)
    assert mm["view"] == 2 and s["coeffs"] is not None


def test_collate_mixed_structures():
    a = {"x": torch.zeros(2), "c": None, "n": 1, "s": "a"}
    b = {"x": torch.ones(2), "c": torch.zeros(3), "n": 2, "s": "b", "extra": 5}
    out = collate_samples([a, b])
    assert out["x"].shape == (2, 2) and out["c"][0] is None and out["n"].tolist() == [1, 2]
    assert out["s"] == ["a", "b"] and out["extra"] == [None, 5]


def test_video_reader_in_worker_processes(tmp_path):
    frames = np.stack([shifted(t) for t in range(10)])
    write_video(tmp_path / "v.avi", frames)
    ds = VideoClips(tmp_path, m=2, size=64)
    ds[0]  # the parent opens the container; forked workers must reopen theirs
    loader = torch.utils.data.DataLoader(ds, batch_size=3, num_workers=2, collate_fn=collate_samples)
    blurry = torch.cat([b["blurry"] for b in loader])
    for k, c in enumerate(range(2, 8)):
        assert torch.allclose(blurry[k], expected_blur(frames, c, 2), atol=1e-5)


def test_multiview_reader_matches_synthbmfd_and_open_dataset(tmp_path):
    from deblur_rotate.data.readers import open_dataset
    from deblur_rotate.data.synthbmfd import SynthBMFD, SynthConfig, generate

    model = {"n_id": 16, "n_exp": 10, "n_tex": 10, "n_lat": 48, "n_lon": 56}
    cfg = SynthConfig(subjects=1, test_subjects=0, performances=1, size=32, seconds=9 / 112, views=2,
                      supersample=1, model=model)
    generate(tmp_path / "s", cfg, progress=False)
    ref = SynthBMFD(tmp_path / "s", m=2)
    mv = MultiViewClips(tmp_path / "s", m=2, size=32)  # the BMFD layout + SynthBMFD's meta.npz
    a, b = ref.load("subject_000", "perf_00", 2, 4), mv.load_view("subject_000/perf_00", 2, 4)
    for key in ("blurry", "targets", "landmarks", "target_landmarks", "pose", "coeffs"):
        assert torch.allclose(a[key], b[key], atol=1e-5), key
    assert isinstance(open_dataset("auto", tmp_path / "s", size=32, m=2), SynthBMFD)
    assert isinstance(open_dataset("multiview", tmp_path / "s", size=32, m=2), MultiViewClips)
    with pytest.raises(UserError, match="unknown dataset kind"):
        open_dataset("ffhq", tmp_path / "s")


def test_training_batches_draw_new_kernels_each_pass(tmp_path):
    """The endless training stream (resumable_batches) hands the epoch to the reader a stage's dataset wraps: a
    still image gets a new blur kernel on every pass over the data, and a resumed stream draws the same batches."""
    from deblur_rotate.train.blur_encoder import BlurSequences
    from deblur_rotate.train.distributed import resumable_batches

    for k in range(2):
        save_png(tmp_path / f"{k:05d}.png", shifted(k))

    def stream(start_step):
        data = BlurSequences(StillImages(tmp_path, size=32, seed=3), mirror=False)  # what `train blur-encoder` uses
        return resumable_batches(data, batch_size=2, seed=0, start_step=start_step, workers=0,
                                 device=torch.device("cpu"))

    full = stream(0)
    passes = [next(full) for _ in range(3)]               # batch = one pass over the 2 images
    def blur_sums(batch):
        return batch["blurry"].sum(dim=(1, 2, 3)).sort().values

    assert torch.allclose(passes[0]["targets"].sum(), passes[1]["targets"].sum())  # the same images ...
    assert not torch.allclose(blur_sums(passes[0]), blur_sums(passes[1]), atol=1e-3)  # ... blurred anew
    assert torch.equal(next(stream(2))["blurry"], passes[2]["blurry"])  # resume: the same batch

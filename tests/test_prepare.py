"""`deblur-rotate prepare`: alignment, landmark caching, skipping bad input, resuming, and reading the result."""
from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
import torch
from conftest import write_video

from deblur_rotate.data.align import FaceAligner, ffhq_transform, transform_points, warp_image
from deblur_rotate.data.prepare import prepare, segment_bounds
from deblur_rotate.data.prepare_options import add_prepare_parser
from deblur_rotate.data.readers import MultiViewClips, StillImages, VideoClips, Vidtimit
from deblur_rotate.data.sources import read_pts
from deblur_rotate.errors import UserError
from deblur_rotate.files import load_png, save_png

skimage_data = pytest.importorskip("skimage.data")
ASTRO = skimage_data.astronaut()  # the face is around x 175..265, y 76..166


def face(t: int = 0, dx: int = 1, dy: int = 1, size: int = 128) -> np.ndarray:
    """A 128 px crop around the astronaut's face, moved by (dx t, dy t) pixels."""
    x, y = 160 + dx * t, 60 + dy * t
    return ASTRO[y:y + size, x:x + size].copy()


class CountingAligner(FaceAligner):
    """dlib aligner that counts detector calls (to check that a resumed run redoes nothing)."""

    calls = 0

    def detect(self, image):
        type(self).calls += 1
        return super().detect(image)


@pytest.fixture(scope="module")
def aligner():
    return CountingAligner()


def test_segment_bounds():
    assert segment_bounds(20, 10) == [(0, 10), (10, 20)]
    assert segment_bounds(23, 10) == [(0, 10), (10, 23)]  # a short remainder joins the last segment
    assert segment_bounds(26, 10) == [(0, 10), (10, 20), (20, 26)]


def test_align_crop_maps_landmarks_with_the_image(aligner):
    image = face(0)
    lm = aligner(image)
    assert lm is not None and lm.shape == (68, 2)
    a = ffhq_transform(lm, 64)
    crop = warp_image(image, a, 64)
    # a bright dot at a landmark lands where transform_points says
    marked = image.copy()
    u, v = np.round(lm[30]).astype(int)
    marked[v - 1:v + 2, u - 1:u + 2] = [255, 0, 255]
    diff = np.abs(warp_image(marked, a, 64).astype(int) - crop.astype(int)).sum(-1)
    peak = np.unravel_index(diff.argmax(), diff.shape)[::-1]
    assert np.abs(np.array(peak) - transform_points(a, np.round(lm[30])[None])[0]).max() <= 1.0
    # the eyes of the FFHQ crop sit level, about 0.3 of the height from the top (the crop is rotation-free here)
    out = transform_points(a, lm)
    assert abs(out[36:42, 1].mean() - out[42:48, 1].mean()) < 1.5


def test_prepare_images_skips_bad_files_and_resumes(tmp_path, aligner):
    src = tmp_path / "src"
    src.mkdir()
    save_png(src / "a.png", face(0))
    (src / "sub").mkdir()
    save_png(src / "sub" / "b.png", face(10, dx=2, dy=1))
    (src / "broken.png").write_bytes(b"this is not a png")
    save_png(src / "noface.png", np.full((96, 96, 3), 128, np.uint8))
    out = tmp_path / "out"
    summary = prepare("images", src, out, size=64, progress=False, aligner=aligner)
    assert summary["usable"] == 2
    reasons = {s["item"]: s["reason"] for s in summary["skipped"]}
    assert reasons["noface.png"] == "no face found" and reasons["broken.png"].startswith("unreadable image")
    index = json.loads((out / "index.json").read_text())
    assert [i["source"] for i in index["items"]] == ["a.png", "sub/b.png"]
    assert len(index["skipped"]) == 2
    crops = [load_png(out / i["file"]).astype(float) for i in index["items"]]
    assert crops[0].shape == (64, 64, 3)
    # alignment undoes the shift of b (compare the face; the borders are reflection padding of each source)
    assert np.abs(crops[0][16:48, 16:48] - crops[1][16:48, 16:48]).mean() < 8
    ds = StillImages(out, size=64)
    s = ds[0]
    assert torch.isfinite(s["landmarks"]).all() and s["landmarks"].min() > 0 and s["landmarks"].max() < 64
    assert np.allclose(np.load(out / "landmarks.npy")[0], s["landmarks"].numpy(), atol=1e-4)
    # resume: nothing is redone
    before = CountingAligner.calls
    again = prepare("images", src, out, size=64, progress=False, aligner=aligner)
    assert CountingAligner.calls == before and again["usable"] == 2
    with pytest.raises(UserError, match="other settings"):
        prepare("images", src, out, size=32, progress=False, aligner=aligner)


def _own_crop(aligner, path, size=64):
    """The crop prepare must write for the image file ``path``, and its landmarks in crop pixels."""
    from deblur_rotate.images import read_image

    image = read_image(path, min_side=1)
    lm = aligner(image)
    a = ffhq_transform(lm, size)
    return warp_image(image, a, size), transform_points(a, lm)


def _check_own_crops(out, src, aligner):
    """Every index item is the crop (and landmarks) of its own source, in a file of its own."""
    index = json.loads((out / "index.json").read_text())
    files = [i["file"] for i in index["items"]]
    assert len(set(f.lower() for f in files)) == len(files), files
    landmarks = np.load(out / "landmarks.npy")
    for item, lm in zip(index["items"], landmarks):
        crop, own_lm = _own_crop(aligner, src / item["source"])
        assert np.array_equal(load_png(out / item["file"]), crop), item
        assert np.allclose(lm, own_lm, atol=1e-3), item
    return index


def test_prepare_images_names_differing_only_in_extension_do_not_collide(tmp_path, aligner):
    src = tmp_path / "src"
    src.mkdir()
    save_png(src / "face.png", face(0))
    from PIL import Image

    Image.fromarray(face(12, dx=2, dy=-1)).save(src / "face.jpg", quality=95)  # another crop of the photo
    out = tmp_path / "out"
    summary = prepare("images", src, out, size=64, progress=False, aligner=aligner)
    assert summary["usable"] == 2
    index = _check_own_crops(out, src, aligner)
    assert sorted(i["file"] for i in index["items"]) == ["images/face.jpg.png", "images/face.png"]
    # a rerun redoes nothing and names stay
    before = CountingAligner.calls
    prepare("images", src, out, size=64, progress=False, aligner=aligner)
    assert CountingAligner.calls == before
    assert json.loads((out / "index.json").read_text())["items"] == index["items"]
    # a source named like another's output (face.jpg.png beside face.jpg) gets a hashed name, with a note
    save_png(src / "face.jpg.png", face(4))
    summary = prepare("images", src, out, size=64, progress=False, aligner=aligner)
    index = _check_own_crops(out, src, aligner)
    files = {i["source"]: i["file"] for i in index["items"]}
    assert files["face.jpg.png"] == "images/face.jpg.png" and files["face.jpg"].startswith("images/face.jpg-")
    assert any(n["item"] == "face.jpg" for n in summary["notes"])


def test_prepare_images_rerun_repairs_a_folder_with_colliding_names(tmp_path, aligner, monkeypatch):
    """A folder prepared when face.png and face.jpg both went to images/face.png is repaired by a rerun;
    items without a collision keep their old names and are not redone."""
    from pathlib import Path

    from PIL import Image

    import deblur_rotate.data.prepare as prepare_module

    src = tmp_path / "src"
    src.mkdir()
    save_png(src / "face.png", face(0))
    Image.fromarray(face(12, dx=2, dy=-1)).save(src / "face.jpg", quality=95)
    Image.fromarray(face(6)).save(src / "solo.jpg", quality=95)
    out = tmp_path / "out"

    def old_names(kind, src_, items):  # the naming of earlier versions: the extension replaced by .png
        return {key: str(Path("images") / Path(key).with_suffix(".png")) for key, _ in items}, []

    monkeypatch.setattr(prepare_module, "_output_names", old_names)
    monkeypatch.setattr(prepare_module, "_write_index", lambda *a, **k: None)  # the old index had no guard
    prepare("images", src, out, size=64, progress=False, aligner=aligner)
    monkeypatch.undo()
    assert sorted(p.name for p in (out / "images").iterdir()) == ["face.png", "solo.png"]  # one file lost

    before = CountingAligner.calls
    summary = prepare("images", src, out, size=64, progress=False, aligner=aligner)
    assert CountingAligner.calls - before == 2  # face.png and face.jpg again; solo.jpg kept
    assert summary["usable"] == 3
    index = _check_own_crops(out, src, aligner)
    assert {i["source"]: i["file"] for i in index["items"]} == {
        "face.jpg": "images/face.jpg.png", "face.png": "images/face.png", "solo.jpg": "images/solo.png"}


def test_prepare_300vw_videos_differing_only_in_extension_do_not_collide(tmp_path, aligner):
    src = tmp_path / "src"
    write_video(src / "001" / "vid.avi", np.stack([face(t) for t in range(10)]))
    write_video(src / "001" / "vid.mov", np.stack([face(t, dx=-1, dy=2) for t in range(10)]))
    write_video(src / "002" / "vid.avi", np.stack([face(t) for t in range(10)]))  # alone: the usual name
    out = tmp_path / "out"
    summary = prepare("300vw", src, out, size=64, segment=10, progress=False, aligner=aligner)
    assert summary["usable"] == 3
    index = json.loads((out / "index.json").read_text())
    paths = {c["source"]: c["path"] for c in index["clips"]}
    assert paths == {"001/vid.avi": "001/vid.avi/seg_000", "001/vid.mov": "001/vid.mov/seg_000",
                     "002/vid.avi": "002/vid/seg_000"}
    a, b = (np.load(out / paths[k] / "landmarks.npy") for k in ("001/vid.avi", "001/vid.mov"))
    assert not np.allclose(a, b)  # each folder holds its own video's crops
    assert np.allclose(a, np.load(out / "002/vid/seg_000/landmarks.npy"))  # same video as 001/vid.avi


def test_prepare_300vw_uses_pts_and_fixed_crop_per_segment(tmp_path, aligner):
    frames = np.stack([face(t) for t in range(20)])
    src = tmp_path / "src"
    write_video(src / "001" / "vid.avi", frames)
    base = aligner(frames[0])
    for t in range(20):
        if t != 3:  # frame 3 has no .pts: dlib fills it in
            pts = base + t  # the face moves by (1, 1) px per frame
            body = "\n".join(f"{x + 1} {y + 1}" for x, y in pts)
            (src / "001" / "annot").mkdir(parents=True, exist_ok=True)
            (src / "001" / "annot" / f"{t + 1:06d}.pts").write_text(f"version: 1\nn_points: 68\n{{\n{body}\n}}\n")
    (src / "002").mkdir()
    (src / "002" / "vid.avi").write_bytes(b"\x00garbage" * 50)  # a damaged video
    out = tmp_path / "out"
    summary = prepare("300vw", src, out, size=64, segment=10, progress=False, aligner=aligner)
    assert [s["item"] for s in summary["skipped"]] == ["002/vid.avi"]
    assert any("without a .pts" in n["note"] for n in summary["notes"])
    index = json.loads((out / "index.json").read_text())
    assert [c["path"] for c in index["clips"]] == ["001/vid/seg_000", "001/vid/seg_001"]
    lm = np.load(out / "001/vid/seg_001/landmarks.npy")
    pts = np.stack([read_pts(src / "001" / "annot" / f"{t + 1:06d}.pts") for t in range(10, 20)])
    a = ffhq_transform(pts.mean(0), 64)  # one crop for the whole segment, from its mean landmarks
    assert np.allclose(lm, transform_points(a, pts), atol=1e-3)
    assert np.abs(np.diff(lm[:, 30], axis=0) - (a[:, :2] @ [1, 1])).max() < 1e-3  # motion kept in the crop
    ds = VideoClips(out, m=2, size=64)
    assert len(ds) == 2 * 6
    s = ds[0]
    assert torch.isfinite(s["target_landmarks"]).all() and s["blurry"].shape == (3, 64, 64)


def test_prepare_multiview_and_vidtimit(tmp_path, aligner):
    src = tmp_path / "mv"
    for v in (1, 2, 3):
        folder = src / "s1" / "p1" / f"view_{v}"
        folder.mkdir(parents=True)
        for t in range(12):
            save_png(folder / f"frame_{t:05d}.png", face(t, dx=v - 2))
    (src / "s1" / "p1" / "view_3" / "frame_00006.png").write_bytes(b"corrupt")  # a damaged frame
    (src / "s1" / "p2").mkdir()  # a performance in the wrong layout (no view folders)
    save_png(src / "s1" / "p2" / "frame_00000.png", face(0))
    out = tmp_path / "mv_out"
    summary = prepare("multiview", src, out, size=64, segment=12, progress=False, aligner=aligner)
    reasons = {s["item"]: s["reason"] for s in summary["skipped"]}
    assert "no view_K folders" in reasons["s1/p2"]
    assert "unreadable frame 6" in reasons["s1/p1/view_3"]
    ds = MultiViewClips(out, m=2, size=64, pairs=True)
    assert ds.views == [1, 2] and len(ds) == 8
    assert sorted(ds[0]["view"].tolist()) == [1, 2]

    vsrc = tmp_path / "vid"
    seq = vsrc / "fadg0" / "video" / "head"
    seq.mkdir(parents=True)
    for t in range(9):
        save_png(seq / f"{t + 1:03d}", face(t))  # VIDTIMIT frames have no extension
    vout = tmp_path / "vid_out"
    summary = prepare("vidtimit", vsrc, vout, size=64, progress=False, aligner=aligner)
    assert summary["usable"] == 1 and summary["faces"] == 9 and summary["faces_per_s"] > 0
    ev = Vidtimit(vout, m=2, size=64)
    assert len(ev) == 1 and ev[0]["item"] == "fadg0/video/head/seg_000"


def test_prepare_errors_name_the_expected_layout(tmp_path, aligner):
    src = tmp_path / "src"
    src.mkdir()
    (src / "bad.png").write_bytes(b"nope")
    with pytest.raises(UserError, match="nothing usable.*expected image files"):
        prepare("images", src, tmp_path / "o1", size=64, progress=False, aligner=aligner)
    with pytest.raises(UserError, match="BMFD layout"):
        prepare("multiview", tmp_path / "o1", tmp_path / "o2", size=64, progress=False, aligner=aligner)
    with pytest.raises(UserError, match="does not exist"):
        prepare("images", tmp_path / "missing", tmp_path / "o3", progress=False, aligner=aligner)


def test_cli_parser(tmp_path, aligner, capsys, monkeypatch):
    src = tmp_path / "src"
    src.mkdir()
    save_png(src / "a.png", face(0))
    parser = argparse.ArgumentParser()
    add_prepare_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["prepare", "--kind", "images", "--src", str(src), "--out", str(tmp_path / "o"),
                              "--size", "64", "--quiet"])
    assert args.func(args) == 0
    assert "prepared 1 images" in capsys.readouterr().out

"""Throughput of the mixed data loader and of face preparation.

Builds small datasets at ``--size`` px from scikit-image's astronaut (moved by known shifts) in a temporary
folder, in the three training layouts (stills, single-view frame folders, BMFD multi-view), then measures:

  * samples/s that ``mixed_loader`` (ratio 2:1:1, ``--workers`` workers, batch ``--batch``) delivers, and the
    same per source (single reader, same loader settings);
  * preparation speed in faces/s for stills (detect + 68 landmarks + crop + PNG write) and for video
    (detector every 5 frames, predictor every frame, crop + write).

Prints ``name: value`` lines.

    python benchmarks/loader_speed.py --size 256 --workers 2 --batches 20
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np


def _frame(astro: np.ndarray, t: int, size: int, dx: int = 1, dy: int = 1) -> np.ndarray:
    """A crop of side ``size`` around the astronaut's face, moved by (dx t, dy t), resized if needed."""
    from PIL import Image

    side = 200
    x, y = 120 + dx * t, 40 + dy * t
    crop = astro[y:y + side, x:x + side]
    return np.asarray(Image.fromarray(crop).resize((size, size), Image.BILINEAR))


def build(root: Path, size: int, frames: int, views: int, stills: int) -> None:
    from skimage import data

    from deblur_rotate.files import save_png

    astro = data.astronaut()
    (root / "stills").mkdir(parents=True)
    for k in range(stills):
        save_png(root / "stills" / f"{k:05d}.png", _frame(astro, k % 40, size))
    clip = root / "video" / "clip0"
    clip.mkdir(parents=True)
    for t in range(min(frames, 40)):
        save_png(clip / f"frame_{t:05d}.png", _frame(astro, t, size))
    for v in range(1, views + 1):
        folder = root / "mv" / "s01" / "p01" / f"view_{v}"
        folder.mkdir(parents=True)
        for t in range(frames):
            save_png(folder / f"frame_{t:05d}.png", _frame(astro, t // 4, size, dx=v % 3))


def loader_rate(datasets, ratio, batch: int, workers: int, batches: int) -> float:
    from deblur_rotate.data.mixing import mixed_loader

    loader = mixed_loader(datasets, batch_size=batch, ratio=ratio, workers=workers, batches_per_epoch=batches + 2,
                          seed=0)
    it = iter(loader)
    next(it)  # worker start-up and first batch are not counted
    next(it)
    start = time.perf_counter()
    n = 0
    for b in it:
        n += b["blurry"].shape[0]
    return n / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--batches", type=int, default=20, help="timed batches per measurement")
    parser.add_argument("--frames", type=int, default=80, help="frames per multi-view clip (m = 32 needs 65)")
    parser.add_argument("--views", type=int, default=2)
    parser.add_argument("--prepare-images", type=int, default=12)
    args = parser.parse_args()

    import torch

    from deblur_rotate.data.prepare import prepare
    from deblur_rotate.data.readers import MultiViewClips, StillImages, VideoClips

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        build(root, args.size, args.frames, args.views, stills=40)
        stills = StillImages(root / "stills", size=args.size)
        video = VideoClips(root / "video", m=4, size=args.size)
        mv = MultiViewClips(root / "mv", m=32, size=args.size)
        print(f"size_px: {args.size}")
        print(f"workers: {args.workers}")
        print(f"batch: {args.batch}")
        rate = loader_rate([stills, video, mv], (2, 1, 1), args.batch, args.workers, args.batches)
        print(f"mixed_2_1_1_samples_per_s: {rate:.1f}")
        for name, ds in (("stills", stills), ("300vw_m4", video), ("multiview_m32", mv)):
            rate = loader_rate([ds], (1,), args.batch, args.workers, max(4, args.batches // 2))
            print(f"{name}_samples_per_s: {rate:.1f}")

        # preparation: stills (512 px sources, as FFHQ-like photos) and a frame-folder clip
        from skimage import data

        from deblur_rotate.files import save_png

        astro = data.astronaut()
        src = root / "prep_src"
        src.mkdir()
        for k in range(args.prepare_images):
            save_png(src / f"{k:03d}.png", np.roll(astro, (k * 3, k * 5), (0, 1)))
        t0 = time.perf_counter()
        from deblur_rotate.data.align import FaceAligner

        aligner = FaceAligner()
        aligner._load()
        load_s = time.perf_counter() - t0
        summary = prepare("images", src, root / "prep_out", size=args.size, progress=False, aligner=aligner)
        print(f"dlib_model_load_s: {load_s:.2f}")
        print(f"prepare_images_512px_faces_per_s: {summary['faces_per_s']:.2f}")
        vsrc = root / "prep_video" / "clip"
        vsrc.mkdir(parents=True)
        for t in range(60):
            save_png(vsrc / f"{t:05d}.png", _frame(astro, t // 2, 480))
        summary = prepare("300vw", root / "prep_video", root / "prep_video_out", size=args.size, segment=30,
                          progress=False, aligner=aligner)
        print(f"prepare_video_480px_faces_per_s: {summary['faces_per_s']:.2f}")


if __name__ == "__main__":
    main()

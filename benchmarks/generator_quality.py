"""Distribution check of a trained generator against the sharp faces it was trained on.

There are no Inception weights offline, so FID proper is out of reach; this is FID's recipe in the
embedding of the ported dlib face-recognition network (a face-trained ResNet, 128-d descriptors):

* ``fd_dlib_generator``: Fréchet distance between descriptors of ``--num`` generator samples
  (truncation 1, noise 'const') and of ``--num`` real sharp frames.
* ``fd_dlib_real_halves``: the same between two disjoint halves of the real frames — the floor the
  generator can reach with this sample size.
* ``fd_dlib_untrained``: an untrained generator of the same preset — the ceiling.
* ``face_detection_rate_generator`` / ``_real``: share of images where dlib's HOG detector finds a
  face (images upscaled to 256 px) — do the samples look like faces to a classical detector?

Descriptors are taken on one fixed chip (the central 90 % of the image, resized to 150 px) for every
image, real or generated, so no detector decides what is compared.

    python benchmarks/generator_quality.py --generator runs/g/generator --data data/synthbmfd --grid docs/g.png
"""
from __future__ import annotations

import argparse

import numpy as np
import scipy.linalg
import torch

from deblur_rotate.data.synthbmfd import SynthBMFD
from deblur_rotate.evaluate.metrics import detect_landmarks
from deblur_rotate.models.identity import extract_face_chips, load_dlib_face_recognition
from deblur_rotate.models.io import load_pretrained
from deblur_rotate.models.stylegan2 import Generator
from deblur_rotate.train.sharp_encoder import central_chip_transform


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to feature sets a [N, D] and b [M, D]."""
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root = np.real(scipy.linalg.sqrtm(cov_a @ cov_b))
    return float(np.square(mu_a - mu_b).sum() + np.trace(cov_a + cov_b - 2 * root))


@torch.no_grad()
def descriptors(images: torch.Tensor, net: torch.nn.Module, batch: int = 64) -> np.ndarray:
    """[N, 3, R, R] in [-1, 1] -> [N, 128] descriptors on the fixed central chip."""
    size = images.shape[-1]
    chip = torch.as_tensor(central_chip_transform(size, fraction=0.9), dtype=torch.float32)
    out = []
    for part in images.split(batch):
        chips = extract_face_chips(part, chip.expand(part.shape[0], 2, 3))
        out.append(net(chips).numpy())
    return np.concatenate(out)


@torch.no_grad()
def samples(G: Generator, num: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(num, G.z_dim, generator=g)
    return torch.cat([G(part, noise_mode="const").clamp(-1, 1) for part in z.split(64)])


def real_frames(root: str, split: str, num: int, seed: int, size: int, m: int) -> torch.Tensor:
    ds = SynthBMFD(root, split=split, m=m, size=size)
    rng = np.random.default_rng(seed)
    idx = rng.choice(len(ds), size=min(num, len(ds)), replace=False)
    frames = []
    for i in idx:
        targets = ds[int(i)]["targets"]
        frames.append(targets[int(rng.integers(0, 5))])
    return torch.stack(frames)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--generator", required=True, help="generator folder (config.json + model.safetensors)")
    ap.add_argument("--data", required=True, help="SynthBMFD folder the generator was trained on")
    ap.add_argument("--split", default="train")
    ap.add_argument("--num", type=int, default=1000, help="images per set (default 1000)")
    ap.add_argument("--m", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--grid", default=None, help="write a PNG grid of 32 samples here")
    args = ap.parse_args()
    torch.manual_seed(args.seed)

    G = load_pretrained("stylegan2.generator", args.generator)
    net = load_dlib_face_recognition()
    fake = samples(G, args.num, args.seed)
    real = real_frames(args.data, args.split, 2 * args.num, args.seed, G.img_resolution, args.m)
    real_a, real_b = real[: len(real) // 2], real[len(real) // 2:]
    untrained = Generator(**{k: v for k, v in G.config.items()})
    with torch.no_grad():  # its truncation centre: the mean W of its own mapping
        untrained.mapping(torch.randn(4096, untrained.z_dim), update_w_avg=True)
    base = samples(untrained, args.num, args.seed)

    d_fake, d_a, d_b, d_base = (descriptors(x, net) for x in (fake, real_a, real_b, base))
    print(f"images_per_set: {len(d_fake)}")
    print(f"fd_dlib_generator: {frechet_distance(d_fake, d_a):.4f}")
    print(f"fd_dlib_real_halves: {frechet_distance(d_b, d_a):.4f}")
    print(f"fd_dlib_untrained: {frechet_distance(d_base, d_a):.4f}")
    n_det = min(200, len(fake))
    found_fake = detect_landmarks(fake[:n_det]).found.float().mean().item()
    found_real = detect_landmarks(real_a[:n_det]).found.float().mean().item()
    print(f"face_detection_rate_generator: {found_fake:.3f}")
    print(f"face_detection_rate_real: {found_real:.3f}")
    if args.grid:
        from torchvision.utils import make_grid

        from deblur_rotate.files import save_png, to_uint8

        save_png(args.grid, to_uint8(make_grid(fake[:32], nrow=8, padding=2, pad_value=-1.0)))
        print(f"grid: {args.grid}")


if __name__ == "__main__":
    main()

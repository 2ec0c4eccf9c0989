"""Reconstruction quality of the sharp encoder E_s with its fine-tuned generator, on held-out subjects.

For sharp SynthBMFD frames of the test split (subjects never seen in training): y -> G(E_s(y)).

* ``es_psnr_db`` / ``es_ssim``: PSNR and SSIM of the reconstruction (evaluate.metrics.PROTOCOL).
* ``es_identity_cosine``: cosine similarity of the ported dlib network's descriptors of reconstruction
  and original, chips aligned from the frame's ground-truth landmarks (1 = same descriptor).
* ``identity_cosine_same_subject_other_frame`` / ``identity_cosine_other_subjects``: the same measure
  between two frames of one subject and between frames of different subjects — the scale to read
  ``es_identity_cosine`` against.
* ``average_face_psnr_db``: G at the encoder's starting point (mean W) — what E_s adds.

    python benchmarks/sharp_encoder_quality.py --run runs/es --data data/synthbmfd --grid docs/es.png
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from deblur_rotate.data.synthbmfd import SynthBMFD
from deblur_rotate.evaluate.metrics import face_descriptors, psnr, ssim
from deblur_rotate.models.io import load_pretrained


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", default=None, help="sharp-encoder run folder (holds sharp_encoder/ and generator/)")
    ap.add_argument("--sharp-encoder", default=None, help="E_s folder (default RUN/sharp_encoder)")
    ap.add_argument("--generator", default=None, help="fine-tuned G folder (default RUN/generator)")
    ap.add_argument("--data", required=True, help="SynthBMFD folder")
    ap.add_argument("--split", default="test")
    ap.add_argument("--num", type=int, default=400, help="frames to evaluate (default 400)")
    ap.add_argument("--m", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--grid", default=None, help="write originals over reconstructions (16) as a PNG here")
    args = ap.parse_args()
    es_dir = Path(args.sharp_encoder or Path(args.run) / "sharp_encoder")
    g_dir = Path(args.generator or Path(args.run) / "generator")
    E = load_pretrained("encoders.sharp", es_dir)
    G = load_pretrained("stylegan2.generator", g_dir)

    ds = SynthBMFD(args.data, split=args.split, m=args.m, size=G.img_resolution)
    rng = np.random.default_rng(args.seed)
    idx = rng.choice(len(ds), size=min(args.num, len(ds)), replace=False)
    frames, marks, subjects = [], [], []
    for i in idx:
        s = ds[int(i)]
        k = int(rng.integers(0, 5))
        frames.append(s["targets"][k])
        marks.append(s["target_landmarks"][k])
        subjects.append(s["subject"])
    y = torch.stack(frames)          # [N, 3, R, R]
    lm = torch.stack(marks).float()  # [N, 68, 2]

    with torch.no_grad():
        recon = torch.cat([G.synthesis(E(part), noise_mode="const").clamp(-1, 1) for part in y.split(32)])
        mean_face = G.synthesis(E.latent_offset.expand(1, G.num_ws, -1), noise_mode="const").clamp(-1, 1)
    d_y = face_descriptors(y, lm)
    d_r = face_descriptors(recon, lm)
    cos = F.cosine_similarity(d_r, d_y, dim=-1)
    # reference scales: same subject (other frame) and other subjects
    subjects_arr = np.array(subjects)
    same, other = [], []
    for i in range(len(y)):
        j_same = np.flatnonzero((subjects_arr == subjects_arr[i]) & (np.arange(len(y)) != i))
        j_other = np.flatnonzero(subjects_arr != subjects_arr[i])
        if len(j_same):
            same.append(F.cosine_similarity(d_y[i], d_y[int(j_same[0])], dim=-1).item())
        if len(j_other):
            other.append(F.cosine_similarity(d_y[i], d_y[int(j_other[0])], dim=-1).item())

    print(f"frames: {len(y)} ({len(set(subjects))} held-out subjects, split {args.split})")
    print(f"es_psnr_db: {psnr(recon, y).mean().item():.3f}")
    print(f"es_ssim: {ssim(recon, y).mean().item():.4f}")
    print(f"es_identity_cosine: {torch.nanmean(cos).item():.4f}")
    print(f"identity_cosine_same_subject_other_frame: {np.mean(same):.4f}")
    print(f"identity_cosine_other_subjects: {np.mean(other):.4f}")
    print(f"average_face_psnr_db: {psnr(mean_face.expand_as(y), y).mean().item():.3f}")
    if args.grid:
        from torchvision.utils import make_grid

        from deblur_rotate.files import save_png, to_uint8

        n = min(16, len(y))
        save_png(args.grid, to_uint8(make_grid(torch.cat([y[:n], recon[:n]]), nrow=n, padding=2, pad_value=-1.0)))
        print(f"grid: {args.grid}")


if __name__ == "__main__":
    main()

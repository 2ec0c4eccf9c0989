"""Quality of a trained 3D encoder E_3D on SynthBMFD test subjects (blurry input, sharp middle frame's truth).

Prints ``name: value`` lines:
  pose_error_deg            mean absolute error of (pitch, yaw, roll), degrees (mean over the three angles)
  yaw_error_deg             mean absolute yaw error, degrees (pitch_error_deg and roll_error_deg likewise)
  landmark_error_px         mean distance between the 68 projected model landmarks and the ground truth, pixels
  landmark_error_pct_width  the same in percent of the image width
  samples, seconds          how many blurry images were evaluated, and the wall time

    python benchmarks/face3d_quality.py --model runs/e3d/face3d_encoder --data data/synthbmfd [--split test]
        [--m 32] [--stride 4] [--max-samples 1000] [--batch 32] [--device cpu|cuda]

Landmarks are compared at the size the encoder was trained at (``face_model.json``), in the test data's
camera (its intrinsics scaled to that size).
"""
from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import numpy as np
import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, type=Path, help="RUN/face3d_encoder folder")
    parser.add_argument("--data", required=True, type=Path, help="SynthBMFD folder")
    parser.add_argument("--split", default="test", help="SynthBMFD split (default test)")
    parser.add_argument("--m", type=int, default=32, help="blur half-window (default 32)")
    parser.add_argument("--stride", type=int, default=4, help="every stride-th centre frame (default 4)")
    parser.add_argument("--max-samples", type=int, default=1000, help="evenly spaced samples at most (default 1000)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    args = parser.parse_args()

    from deblur_rotate.data.synthbmfd import SynthBMFD
    from deblur_rotate.face3d.loading import load_face3d
    from deblur_rotate.render.camera import pose_error_deg, project

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    started = time.time()
    bundle = load_face3d(args.model, device)
    size = bundle.image_size
    ds = SynthBMFD(args.data, split=args.split, m=args.m, size=size, stride=args.stride)
    picks = np.unique(np.linspace(0, len(ds) - 1, min(args.max_samples, len(ds))).round().astype(int))
    subset = torch.utils.data.Subset(ds, picks.tolist())
    keep = ("blurry", "landmarks", "pose")
    loader = torch.utils.data.DataLoader(subset, batch_size=args.batch, num_workers=args.workers,
                                         collate_fn=lambda items: {k: torch.stack([it[k] for it in items])
                                                                   for k in keep})
    subject, perf, *_ = ds.items[0]
    with np.load(Path(args.data) / subject / perf / "meta.npz") as meta:
        k = torch.from_numpy(np.asarray(meta["camera_matrix"], dtype=np.float32))
    s = size / ds.stored_size  # intrinsics at the evaluation size (pixel centres at integers)
    k[:2, :2] *= s
    k[:2, 2] = (k[:2, 2] + 0.5) * s - 0.5
    k = k.to(device)
    rot = bundle.face_model.layout.slices()["rotation"]

    angle_errors, landmark_errors = [], []
    with torch.no_grad():
        for batch in loader:
            coeffs = bundle.predict(batch["blurry"].to(device))  # [B, C]
            angle_errors.append(pose_error_deg(coeffs[:, rot], batch["pose"].to(device)).cpu())  # [B, 3]
            vertices, _ = bundle.face_model(coeffs)
            landmarks = project(bundle.face_model.landmarks_3d(vertices), k)  # [B, 68, 2]
            landmark_errors.append((landmarks - batch["landmarks"].to(device)).norm(dim=-1).cpu())  # [B, 68]
    angles = torch.cat(angle_errors)
    landmarks = torch.cat(landmark_errors)
    lm_px = float(landmarks.nanmean())
    print(f"pose_error_deg: {float(angles.mean()):.3f}")
    print(f"pitch_error_deg: {float(angles[:, 0].mean()):.3f}")
    print(f"yaw_error_deg: {float(angles[:, 1].mean()):.3f}")
    print(f"roll_error_deg: {float(angles[:, 2].mean()):.3f}")
    print(f"landmark_error_px: {lm_px:.3f}")
    print(f"landmark_error_pct_width: {100.0 * lm_px / size:.3f}")
    print(f"samples: {angles.shape[0]}")
    print(f"seconds: {time.time() - started:.1f}")
    if not math.isfinite(lm_px):
        raise SystemExit("no finite landmark errors: is the dataset damaged?")


if __name__ == "__main__":
    main()

"""Realism of SynthBMFD renders against real face instruments (dlib).

Renders random SynthBMFD-style frames (random identity, albedo, expression, lighting; head pose with
|yaw| <= 30 degrees, as seen by the rig cameras) at a size dlib's HOG detector handles, then reports
  detection_rate: fraction of frames where dlib's frontal face detector finds a face
  nme: mean over detected frames of the mean point-to-point error between dlib's 68 landmarks and our
       projected ground truth, divided by the inter-ocular (outer eye corner) distance
Targets (issue 2): detection_rate >= 0.8, nme <= 0.10. Also writes a contact sheet of subjects x views.

    python benchmarks/synth_realism.py [--frames 200] [--size 256] [--sheet docs/synthbmfd_sheet.png]
"""
from __future__ import annotations

import argparse
import math
import os
import time

import numpy as np
import torch


def dlib_models():
    import dlib

    from deblur_rotate.dlib_models import LANDMARKS_68, dlib_model_file

    return dlib.get_frontal_face_detector(), dlib.shape_predictor(str(dlib_model_file(LANDMARKS_68)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=200)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--max-yaw", type=float, default=30.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sheet", default=None, help="write a subjects x views contact sheet here")
    args = parser.parse_args()

    from deblur_rotate.data.synthbmfd import SynthConfig, performance_coefficients, render_coefficients

    detector, predictor = dlib_models()
    config = SynthConfig(size=args.size, supersample=2, seconds=2.0, seed=args.seed)
    from deblur_rotate.face3d.procedural import build_procedural_model

    model = build_procedural_model(**config.model)
    started = time.time()
    # Frames of SynthBMFD performances (all 8 views), keeping those whose head yaw is within the limit.
    rng = np.random.default_rng(args.seed)
    chosen = []
    subject = 0
    while len(chosen) < args.frames:
        coeffs, *_ = performance_coefficients(model, config, subject, 0)  # [V, T, C]
        pose = coeffs[..., model.layout.slices()["rotation"]]
        ok = (pose[..., 1].abs() <= math.radians(args.max_yaw)).nonzero()
        picks = ok[torch.from_numpy(rng.choice(len(ok), size=min(8, len(ok)), replace=False))]
        chosen += [coeffs[v, t] for v, t in picks.tolist()]
        subject += 1
    batch = torch.stack(chosen[: args.frames])
    images, landmarks = render_coefficients(model, batch, config, chunk=8)
    errors, detected = [], 0
    for image, truth in zip(images, landmarks.numpy()):
        found = detector(image, 1)
        if not found:
            continue
        detected += 1
        box = max(found, key=lambda r: r.area())
        shape = predictor(image, box)
        pred = np.array([[shape.part(k).x, shape.part(k).y] for k in range(68)], float)
        errors.append(np.linalg.norm(pred - truth, axis=1).mean() / np.linalg.norm(truth[36] - truth[45]))
    print(f"frames: {len(images)}")
    print(f"image_size: {args.size}")
    print(f"max_abs_yaw_deg: {args.max_yaw}")
    print(f"detection_rate: {detected / len(images):.3f}")
    print(f"nme: {float(np.mean(errors)):.4f}" if errors else "nme: nan")
    print(f"nme_median: {float(np.median(errors)):.4f}" if errors else "nme_median: nan")
    print(f"seconds: {time.time() - started:.1f}")
    if args.sheet:
        write_sheet(model, config, args.sheet)


def write_sheet(model, config, path: str, subjects: int = 4, size: int = 128) -> None:
    """Sharp frames of ``subjects`` subjects x 8 views at the middle of their first performance."""
    from dataclasses import replace

    from deblur_rotate.data.synthbmfd import performance_coefficients, render_coefficients
    from deblur_rotate.demo import contact_sheet

    small = replace(config, size=size)
    rows, labels = [], []
    for s in range(subjects):
        coeffs, *_ = performance_coefficients(model, small, s, 0)
        images, _ = render_coefficients(model, coeffs[:, coeffs.shape[1] // 2], small)
        rows.append(images)
        labels.append(f"subject {s + 1}")
    sheet = contact_sheet(rows, labels, [f"view {v}" for v in range(1, coeffs.shape[0] + 1)])
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    sheet.save(path)
    print(f"sheet: {path}")


if __name__ == "__main__":
    main()

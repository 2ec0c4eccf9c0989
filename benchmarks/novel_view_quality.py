"""Novel-view quality of E_v + F + G on SynthBMFD: one blurry view in, every other view out.

For each instant of the split, the blurry image of ``--input-view`` goes through E_v (5 frame codes); for
every other view k, F turns the codes by Δp = R^k - R^input (pitch, yaw, roll; from E_3D on the blurry images
of both views, as at inference, or the data's ground truth with ``--pose-source gt``) and G renders them. The
5 frames are scored against view k's 5 sharp frames: PSNR (peak 1 on [0, 1] images) and SSIM
(kornia.metrics.ssim, 11 x 11 Gaussian window, on [0, 1] images), see
:data:`deblur_rotate.evaluate.metrics.PROTOCOL`; each video is scored in both time orders and the order with
the better PSNR is kept (SSIM uses the same order).

References printed beside it:

* ``unrotated_*``: the input view's reconstruction G(E_v(x)) scored against view k (F doing nothing);
* ``blurry_psnr_db*``: view k's own blurry image against its 5 sharp frames (what a deblurrer starts from);
* ``same_view_*``: G(E_v(x)) against the input view's own sharp frames (no rotation asked).

Gains and motion, per target view k: ``novel_view_psnr_gain_db`` = novel-view PSNR minus view k's blurry
PSNR (the issue-12 figure: is the rotated output better than the blurry photo a camera at view k would
have taken?), ``novel_view_ssim_gain`` likewise, ``novel_view_motion_ratio`` (frame-to-frame change of the
rotated frames over that of view k's sharp frames, see :func:`deblur_rotate.evaluate.metrics.motion_ratio`),
and ``face_detection_rate_generated`` / ``face_detection_rate_true`` (dlib's HOG detector on the rotated
frames / on view k's sharp frames, upscaled to 256 px; skipped with ``--no-face-detection``).

The data may be any SynthBMFD-layout folder at any stored size (frames are resized to G's resolution);
``--model`` takes a whole model folder instead of the network folders. The input view's codes are refined as
``run`` refines them (``deblur_rotate.refine``; default: the model folder's pipeline.json ``refine``, 0 without
``--model``; ``--refine-steps 0`` is the paper's pipeline); ``refine_steps`` is printed.

Aggregates: over all other views, over the views within ±35° of the input on the rig (``_within_35deg``;
rotations of up to ~30°), and per target view (``_view_<k>``). Prints ``name: value`` lines::

    python benchmarks/novel_view_quality.py --blur-encoder runs/ev/blur_encoder --fusion runs/f/fusion \\
        --generator runs/es/generator --face3d-encoder runs/e3d/face3d_encoder --data data/synthbmfd --limit 24
    python benchmarks/novel_view_quality.py ... --pose-source gt     # ground-truth poses, no E_3D
    python benchmarks/novel_view_quality.py --model src/deblur_rotate/assets/model --data data/seed99 --split all
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

from deblur_rotate.errors import UserError

NEAR_DEG = 35.0  # views within this rig angle of the input count as "near" (rotations up to ~30 degrees)


def _mean(values: list[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return float(np.mean(finite)) if finite else float("nan")


def _load(args):
    """(pipeline, SynthBMFD test split at the generator's resolution, rig yaws by view)."""
    from deblur_rotate.data.synthbmfd import SynthBMFD
    from deblur_rotate.models.io import load_pretrained
    from deblur_rotate.pipeline import DeblurRotatePipeline

    if args.model is not None:
        if not (args.model / "pipeline.json").is_file():
            raise UserError(f"--model {args.model} holds no pipeline.json: give a model folder")
        args.blur_encoder = args.blur_encoder or args.model / "blur_encoder"
        args.fusion = args.fusion or args.model / "fusion"
        args.generator = args.generator or args.model / "generator"
        args.face3d_encoder = args.face3d_encoder or args.model / "face3d_encoder"
    for option in ("blur_encoder", "fusion", "generator"):
        if getattr(args, option) is None:
            raise UserError(f"give --model FOLDER or --{option.replace('_', '-')}")
    if args.pose_source == "e3d" and args.face3d_encoder is None:
        raise UserError("--pose-source e3d needs --face3d-encoder (RUN/face3d_encoder); or pass --pose-source gt")
    device = torch.device(args.device)

    def net(kind: str, folder: Path | None, option: str):
        if folder is None:
            return None
        if not folder.is_dir():
            raise UserError(f"{option} folder {folder} not found")
        return load_pretrained(kind, folder, device)

    pipe = DeblurRotatePipeline(
        net("stylegan2.generator", args.generator, "--generator"),
        net("encoders.blur", args.blur_encoder, "--blur-encoder"),
        net("encoders.face3d", args.face3d_encoder if args.pose_source == "e3d" else None, "--face3d-encoder"),
        net("fusion", args.fusion, "--fusion"), name="benchmark networks", max_batch=args.batch)
    if pipe.num_frames != 5:
        raise UserError(f"E_v predicts {pipe.num_frames} frames; SynthBMFD samples have 5 sharp targets")
    data = SynthBMFD(args.data, split=args.split, m=args.m, size=pipe.resolution)
    if args.input_view not in data.views:
        raise UserError(f"--input-view {args.input_view} is not one of the views {data.views}")
    yaws = dict(zip(data.index["views"], data.index["view_yaws_deg"]))
    return pipe, data, yaws


@torch.no_grad()
def evaluate(args) -> dict[str, float]:
    """All figures of the module docstring, as {name: value}."""
    from deblur_rotate.evaluate.metrics import (
        apply_order,
        detect_landmarks,
        motion_ratio,
        psnr,
        reverse_frames,
        ssim,
        video_metric,
    )
    from deblur_rotate.refine import refine_codes
    from deblur_rotate.render.camera import wrap_angle

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from same_view_quality import model_refine

    refine = model_refine(args.model, args.refine_steps)
    pipe, data, yaws = _load(args)
    device = pipe.device
    instants = data.instants
    if args.limit and args.limit < len(instants):
        picks = np.linspace(0, len(instants) - 1, args.limit).round().astype(int)
        instants = [instants[int(i)] for i in picks]
    views = list(data.views)
    src = views.index(args.input_view)
    others = [k for k in views if k != args.input_view]
    near = {k for k in others if abs(yaws[k] - yaws[args.input_view]) <= NEAR_DEG}
    per_view: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    same_psnr, same_ssim, dp_err = [], [], []
    start = time.perf_counter()
    for subject, perf, center in instants:
        s = data.load_views(subject, perf, center, views)
        blurry = s["blurry"].to(device).float()                      # [V, 3, R, R]
        sharp = s["targets"].to(device).float()                     # [V, 5, 3, R, R]
        pose_gt = s["pose"].to(device).float()                      # [V, 3]
        codes, pose = pipe.encode(blurry, refine=0)                 # [V, 5, num_ws, w_dim], [V, 3] or None
        codes = codes.clone()
        codes[src:src + 1] = refine_codes(pipe.generator, codes[src:src + 1], blurry[src:src + 1], refine)
        pose = pose_gt if pose is None else pose
        idx = [views.index(k) for k in others]
        dp = wrap_angle(pose[idx] - pose[src])                      # [V-1, 3] input -> view k
        dp_gt = wrap_angle(pose_gt[idx] - pose_gt[src])
        dp_err.append(float(wrap_angle(dp - dp_gt).abs().mean()) * 180 / math.pi)
        source = codes[src:src + 1].expand(len(idx), -1, -1, -1)    # [V-1, 5, num_ws, w_dim]
        rotated = pipe.synthesize(pipe.fusion(source, dp)).clamp(-1, 1)  # [V-1, 5, 3, R, R]
        unrotated = pipe.synthesize(codes[src]).clamp(-1, 1)[None]       # [1, 5, 3, R, R]
        target = sharp[idx]

        choice = video_metric(psnr, rotated, target)
        ssim_rot = apply_order(ssim(rotated, target), ssim(reverse_frames(rotated), target), choice.reversed)
        flat = unrotated.expand(len(idx), -1, -1, -1, -1)
        choice_un = video_metric(psnr, flat, target)
        ssim_un = apply_order(ssim(flat, target), ssim(reverse_frames(flat), target), choice_un.reversed)
        blurry_psnr = psnr(blurry[idx, None].expand_as(target), target)     # [V-1, 5]
        blurry_ssim = ssim(blurry[idx, None].expand_as(target), target)     # [V-1, 5]
        motion = motion_ratio(rotated, target)                              # [V-1]
        if args.detect_faces:
            found_gen = detect_landmarks(rotated.cpu()).found.float().mean(1)  # [V-1]
            found_true = detect_landmarks(target.cpu()).found.float().mean(1)
        for j, k in enumerate(others):
            per_view["novel_view_psnr_db"][k].append(float(choice.per_frame[j].mean()))
            per_view["novel_view_ssim"][k].append(float(ssim_rot[j].mean()))
            per_view["unrotated_psnr_db"][k].append(float(choice_un.per_frame[j].mean()))
            per_view["unrotated_ssim"][k].append(float(ssim_un[j].mean()))
            per_view["blurry_psnr_db"][k].append(float(blurry_psnr[j].mean()))
            per_view["blurry_ssim"][k].append(float(blurry_ssim[j].mean()))
            per_view["novel_view_psnr_gain_db"][k].append(float(choice.per_frame[j].mean() - blurry_psnr[j].mean()))
            per_view["novel_view_ssim_gain"][k].append(float(ssim_rot[j].mean() - blurry_ssim[j].mean()))
            per_view["novel_view_motion_ratio"][k].append(float(motion[j]))
            if args.detect_faces:
                per_view["face_detection_rate_generated"][k].append(float(found_gen[j]))
                per_view["face_detection_rate_true"][k].append(float(found_true[j]))
            per_view["dyaw_deg"][k].append(float(dp[j, 1]) * 180 / math.pi)
        same = video_metric(psnr, unrotated, sharp[src:src + 1])
        same_psnr.append(float(same.per_frame.mean()))
        same_ssim.append(float(apply_order(ssim(unrotated, sharp[src:src + 1]),
                                           ssim(reverse_frames(unrotated), sharp[src:src + 1]),
                                           same.reversed).mean()))
    seconds = time.perf_counter() - start

    out: dict[str, float] = {"instants": len(instants), "input_view": args.input_view,
                             "pose_source": args.pose_source, "refine_steps": refine.steps}
    names = ["novel_view_psnr_db", "novel_view_ssim", "unrotated_psnr_db", "unrotated_ssim", "blurry_psnr_db",
             "blurry_ssim", "novel_view_psnr_gain_db", "novel_view_ssim_gain", "novel_view_motion_ratio"]
    if args.detect_faces:
        names += ["face_detection_rate_generated", "face_detection_rate_true"]
    for name in names:
        out[name] = _mean([v for k in others for v in per_view[name][k]])
        out[f"{name}_within_35deg"] = _mean([v for k in others if k in near for v in per_view[name][k]])
    out["same_view_psnr_db"] = _mean(same_psnr)
    out["same_view_ssim"] = _mean(same_ssim)
    if args.pose_source == "e3d":
        out["delta_pose_error_deg"] = _mean(dp_err)
    out["views_within_35deg"] = " ".join(str(k) for k in sorted(near))
    for k in others:
        for name in ("novel_view_psnr_db", "novel_view_ssim", "unrotated_psnr_db", "blurry_psnr_db", "dyaw_deg"):
            out[f"{name}_view_{k}"] = _mean(per_view[name][k])
    out["seconds_per_input"] = seconds / max(1, len(instants))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=None,
                    help="a model folder (pipeline.json + networks), instead of the four network folders")
    ap.add_argument("--blur-encoder", type=Path, default=None, help="E_v folder (RUN/blur_encoder)")
    ap.add_argument("--fusion", type=Path, default=None, help="F folder (RUN/fusion)")
    ap.add_argument("--generator", type=Path, default=None, help="fine-tuned G folder (RUN/generator of E_s)")
    ap.add_argument("--face3d-encoder", type=Path, default=None, help="E_3D folder (RUN/face3d_encoder)")
    ap.add_argument("--pose-source", choices=("e3d", "gt"), default="e3d",
                    help="Δp from E_3D on the blurry views (default) or the ground truth")
    ap.add_argument("--data", type=Path, required=True, help="SynthBMFD folder")
    ap.add_argument("--split", default="test", choices=("train", "test", "all"), help="default test")
    ap.add_argument("--limit", type=int, default=0, help="instants, spread evenly over the split (0: all)")
    ap.add_argument("--input-view", type=int, default=4, help="the blurry input's view (default 4, near frontal)")
    ap.add_argument("--m", type=int, default=32, help="blur half-window in frames (default 32)")
    ap.add_argument("--batch", type=int, default=32, help="images per G.synthesis call (default 32)")
    ap.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--refine-steps", type=int, default=None,
                    help="blur-consistency refinement steps (default: the model folder's pipeline.json, else 0)")
    ap.add_argument("--no-face-detection", dest="detect_faces", action="store_false",
                    help="skip the dlib face-detection rates (the slowest part on a CPU)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        figures = evaluate(args)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for name, value in figures.items():
        print(f"{name}: {value:.4f}" if isinstance(value, float) else f"{name}: {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

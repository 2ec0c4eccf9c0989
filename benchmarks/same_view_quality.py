"""Same-view deblurring quality of E_v + G on held-out data (paper §4, the original-viewpoint case).

For each evaluated sample, the blurry image goes through E_v (5 W+ codes) and G.synthesis
(``noise_mode='const'``) to 5 frames, which are clamped to [-1, 1] and quantised to 8 bits (as they would
be written). They are scored against the 5 sharp targets with :mod:`deblur_rotate.evaluate.metrics`:

* PSNR: 10 log10(1 / MSE) on [0, 1] images (peak 1), dB, per frame;
* SSIM: kornia.metrics.ssim, 11 x 11 Gaussian window, on [0, 1] images, per frame;

per sequence under the better of the forward and the backward order (each metric picks its own order,
the paper's protocol), then averaged over the 5 frames and over the sequences. The blurry input itself,
repeated 5 times, is scored against the same targets (no order question there). Printed ``name: value``:

  samples                 sequences evaluated (spread evenly over the split)
  same_view_psnr_db       PSNR of the decoded frames
  blurry_psnr_db          PSNR of the blurry input
  same_view_ssim, blurry_ssim
  psnr_gain_db            same_view_psnr_db - blurry_psnr_db
  ssim_gain               same_view_ssim - blurry_ssim
  middle_frame_psnr_db    PSNR of the middle decoded frame against the middle target (order-free)
  motion_ratio            mean absolute frame-to-frame change of the decoded frames over that of the targets,
                          per sequence, averaged (1 = as much motion as the truth, 0 = five equal frames;
                          order-free, see deblur_rotate.evaluate.metrics.motion_ratio)
  sharpness_ratio         mean absolute Laplacian of the decoded frames over that of the targets, per sequence,
                          averaged (1 = as much fine detail as the truth; deblur_rotate.evaluate.metrics.sharpness)
  blurry_sharpness_ratio  the same for the blurry input (what a method that did not deblur would score)
  face_detection_rate_generated, face_detection_rate_true
                          share of decoded frames / of true sharp frames in which dlib's HOG frontal detector
                          finds a face (frames upscaled bicubically to 256 px first, as the evaluation does)
  reversed_fraction       share of sequences where the reversed order scored the better PSNR
  ms_per_sample           E_v (+ refinement) + G time per blurry image (batch --batch, --device)
  refine_steps            blur-consistency refinement steps used (deblur_rotate.refine; 0: the paper's pipeline)
  refine_residual         1 when the refinement's residual was added to the frames (back-projection), else 0

``--refine-steps N`` refines E_v's codes as ``run`` does (default: the model folder's pipeline.json
``refine``, 0 without ``--model``), and ``--residual/--no-residual`` adds the residual the refinement leaves (the
blurry input minus the frames' mean) to every frame or not, as ``run`` does on the input view (default: the
model's); ``--refine-steps 0 --no-residual`` gives the plain E_v + G figures.

``--align landmarks`` frames every sample as ``run`` frames a photo's face before the networks see it: the
blurry image and its 5 targets are warped alike (:func:`deblur_rotate.faces.alignment_matrix` with the model's
``pipeline.json`` crop) along the sample's true 68 landmarks of the middle frame, and everything is scored in
that crop (an oracle alignment: the landmarks are the data's, not dlib's detections on the blurry image). For
data framed otherwise than the training data (``synth --focal-factor``); ``--align none`` (default) feeds the
frames as they are stored.

The data may be any SynthBMFD-layout folder at any stored size (``--data``, e.g. new subjects from
``deblur-rotate synth --seed 99``): frames are resized to G's resolution on reading. ``--model`` takes a
whole model folder (``pipeline.json``) instead of ``--blur-encoder`` and ``--generator``.

    python benchmarks/same_view_quality.py --model src/deblur_rotate/assets/model --data data/seed99 \\
        --split all --limit 240
    python benchmarks/same_view_quality.py --blur-encoder runs/ev/blur_encoder --generator runs/es/generator \\
        --data data/synthbmfd --split test --limit 256
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch


def _network_folder(folder: Path, name: str) -> Path:
    """``folder/name`` when ``folder`` is a run folder holding it, else ``folder`` itself."""
    return folder / name if (folder / name / "config.json").is_file() else folder


def model_refine(model: Path | None, steps: int | None, residual: bool | None = None):
    """The refinement ``run`` would use: the model folder's pipeline.json ``refine`` (0 steps without one, or
    without a model folder), with ``steps`` instead of its step count and ``residual`` instead of its residual
    when given; UserError for bad values."""
    import dataclasses
    import json

    from deblur_rotate.errors import UserError
    from deblur_rotate.refine import RefineSettings

    try:
        settings = RefineSettings()
        if model is not None and (model / "pipeline.json").is_file():
            settings = RefineSettings.from_json(json.loads((model / "pipeline.json").read_text()).get("refine"))
        if steps is not None:
            settings = dataclasses.replace(settings, steps=steps)
        if residual is not None:
            settings = dataclasses.replace(settings, residual=bool(residual))
    except ValueError as err:  # a bad --refine-steps or pipeline.json "refine"
        raise UserError(f"refine: {err}") from None
    return settings


def align_sample(blurry: torch.Tensor, targets: torch.Tensor, landmarks: torch.Tensor, crop: dict | None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """The blurry image ``[3, R, R]`` and targets ``[5, 3, R, R]`` (in [-1, 1]) warped into the model's crop along
    ``landmarks [68, 2]`` (pixels of the same images), as ``run`` aligns a detected face."""
    import numpy as np

    from deblur_rotate.data.align import warp_image
    from deblur_rotate.faces import alignment_matrix
    from deblur_rotate.files import from_uint8, to_uint8

    size = blurry.shape[-1]
    a = alignment_matrix(landmarks.double().numpy(), size, crop)
    images = to_uint8(torch.cat([blurry[None], targets]))  # [6, R, R, 3] uint8
    warped = from_uint8(np.stack([warp_image(image, a, size) for image in images]))  # [6, 3, R, R]
    return warped[0], warped[1:]


def model_parts(model: Path | None, blur_encoder: Path | None, generator: Path | None) -> tuple[Path, Path]:
    """(E_v folder, G folder) from a model folder or the two folders given; UserError when neither is."""
    from deblur_rotate.errors import UserError

    if model is not None:
        if not (model / "pipeline.json").is_file():
            raise UserError(f"--model {model} holds no pipeline.json: give a model folder (RUN/model of "
                            "`train all`, or src/deblur_rotate/assets/model)")
        return model / "blur_encoder", model / "generator"
    if blur_encoder is None or generator is None:
        raise UserError("give --model FOLDER, or both --blur-encoder and --generator")
    return blur_encoder, generator


def _aligned_item(dataset, i: int, crop: dict) -> dict[str, torch.Tensor]:
    """Sample ``i`` of a BlurSequences (no mirroring) read once, with its images warped into ``crop`` along its
    middle target's 68 landmarks; UserError when the data has no landmarks."""
    from deblur_rotate.errors import UserError

    sample = dataset.dataset[i]  # the reader's sample: images and landmarks from one read
    blurry, targets = sample["blurry"].float(), sample["targets"].float()
    landmarks = sample.get("landmarks")
    if landmarks is None or not bool(torch.isfinite(torch.as_tensor(landmarks)).all()):
        raise UserError("--align landmarks needs the data's 68 landmarks of every sample (SynthBMFD has them)")
    landmarks = torch.as_tensor(landmarks).float()
    if blurry.dim() == 4:  # a pair of views: the first, as BlurSequences takes it
        blurry, targets, landmarks = blurry[0], targets[0], landmarks[0]
    blurry, targets = align_sample(blurry, targets, landmarks, crop)
    return {"blurry": blurry, "targets": targets}


@torch.no_grad()
def evaluate(blur_encoder: Path, generator: Path, data: Path, split: str = "test", limit: int | None = 256,
             m: int | None = 32, kind: str = "auto", batch: int = 16, device: str = "cpu",
             detect_faces: bool = True, refine=None, align_crop: dict | None = None) -> dict[str, float]:
    """The figures listed in the module docstring, as a dict. ``refine``: RefineSettings (None: off);
    ``align_crop``: a pipeline.json ``crop`` to align every sample to (None: the frames as stored)."""
    from deblur_rotate.errors import UserError
    from deblur_rotate.evaluate.metrics import detect_landmarks, motion_ratio, psnr, sharpness_ratio, ssim, video_metric
    from deblur_rotate.files import from_uint8, to_uint8
    from deblur_rotate.models.io import load_pretrained
    from deblur_rotate.refine import RefineSettings
    from deblur_rotate.refine import refine as run_refinement
    from deblur_rotate.train.blur_encoder import BlurSequences, open_blur_dataset

    refine = refine or RefineSettings()

    dev = torch.device(device)
    E_v = load_pretrained("encoders.blur", _network_folder(blur_encoder, "blur_encoder"), dev)
    G = load_pretrained("stylegan2.generator", _network_folder(generator, "generator"), dev)
    if (E_v.num_ws, E_v.w_dim) != (G.num_ws, G.w_dim):
        raise UserError(f"E_v gives {E_v.num_ws} x {E_v.w_dim} codes but G takes {G.num_ws} x {G.w_dim}: "
                        "give the generator E_v was trained with")
    dataset = BlurSequences(open_blur_dataset(kind, data, G.img_resolution, m, split), mirror=False)
    count = len(dataset) if not limit else min(int(limit), len(dataset))
    picks = torch.linspace(0, len(dataset) - 1, count).round().long().tolist()

    sums = {k: 0.0 for k in ("psnr", "ssim", "blurry_psnr", "blurry_ssim", "middle_psnr", "reversed", "motion",
                             "sharpness", "blurry_sharpness", "found_generated", "found_true")}
    seconds = 0.0
    for start in range(0, count, batch):
        chunk = picks[start:start + batch]
        items = [dataset[i] if align_crop is None else _aligned_item(dataset, i, align_crop) for i in chunk]
        blurry = torch.stack([it["blurry"] for it in items]).to(dev)  # [B, 3, R, R]
        targets = torch.stack([it["targets"] for it in items]).to(dev)  # [B, 5, 3, R, R]
        t0 = time.perf_counter()
        refined = run_refinement(G, E_v(blurry), blurry, refine, max_batch=batch)
        frames = G.synthesis(refined.codes.flatten(0, 1), noise_mode="const")  # [B * 5, 3, R, R]
        frames = refined.add_residual(frames.view_as(targets))  # [B, 5, 3, R, R], + the residual when on
        if dev.type == "cuda":
            torch.cuda.synchronize()
        seconds += time.perf_counter() - t0
        frames = from_uint8(to_uint8(frames.flatten(0, 1))).to(dev).view_as(targets)  # clamped, 8-bit
        by_psnr = video_metric(psnr, frames, targets)
        by_ssim = video_metric(ssim, frames, targets)
        repeated = blurry[:, None].expand_as(targets)
        sums["psnr"] += float(by_psnr.per_frame.double().mean(1).sum())
        sums["ssim"] += float(by_ssim.per_frame.double().mean(1).sum())
        sums["blurry_psnr"] += float(psnr(repeated, targets).double().mean(1).sum())
        sums["blurry_ssim"] += float(ssim(repeated, targets).double().mean(1).sum())
        sums["middle_psnr"] += float(psnr(frames[:, 2], targets[:, 2]).double().sum())
        sums["reversed"] += float(by_psnr.reversed.double().sum())
        sums["motion"] += float(motion_ratio(frames, targets).double().sum())
        sums["sharpness"] += float(sharpness_ratio(frames, targets).double().sum())
        sums["blurry_sharpness"] += float(sharpness_ratio(repeated, targets).double().sum())
        if detect_faces:  # per frame: share of the 5 found, summed over sequences
            sums["found_generated"] += float(detect_landmarks(frames.cpu()).found.double().mean(1).sum())
            sums["found_true"] += float(detect_landmarks(targets.cpu()).found.double().mean(1).sum())
    mean = {k: v / count for k, v in sums.items()}
    return {
        "samples": count,
        "same_view_psnr_db": mean["psnr"],
        "blurry_psnr_db": mean["blurry_psnr"],
        "same_view_ssim": mean["ssim"],
        "blurry_ssim": mean["blurry_ssim"],
        "psnr_gain_db": mean["psnr"] - mean["blurry_psnr"],
        "ssim_gain": mean["ssim"] - mean["blurry_ssim"],
        "middle_frame_psnr_db": mean["middle_psnr"],
        "motion_ratio": mean["motion"],
        "sharpness_ratio": mean["sharpness"],
        "blurry_sharpness_ratio": mean["blurry_sharpness"],
        **({"face_detection_rate_generated": mean["found_generated"],
            "face_detection_rate_true": mean["found_true"]} if detect_faces else {}),
        "reversed_fraction": mean["reversed"],
        "ms_per_sample": 1000.0 * seconds / count,
        "refine_steps": refine.steps,
        "refine_residual": int(refine.residual),
    }


def model_crop(model: Path | None) -> dict:
    """The model folder's pipeline.json ``crop`` (the FFHQ framing, as the pipeline's default, without one)."""
    import json

    from deblur_rotate.faces import DEFAULT_CROP

    if model is None or not (model / "pipeline.json").is_file():
        return dict(DEFAULT_CROP)
    return json.loads((model / "pipeline.json").read_text()).get("crop") or dict(DEFAULT_CROP)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=None,
                        help="a model folder (pipeline.json + networks), instead of --blur-encoder/--generator")
    parser.add_argument("--blur-encoder", type=Path, default=None,
                        help="E_v folder (RUN/blur_encoder of `train blur-encoder`, or the run folder)")
    parser.add_argument("--generator", type=Path, default=None,
                        help="generator folder E_v was trained with (RUN/generator of `train sharp-encoder`)")
    parser.add_argument("--data", required=True, type=Path, help="dataset folder (SynthBMFD or any reader's layout)")
    parser.add_argument("--kind", default="auto", help="dataset kind (default auto-detect)")
    parser.add_argument("--split", default="test", choices=("train", "test", "all"),
                        help="SynthBMFD split (default test: held-out subjects)")
    parser.add_argument("--limit", type=int, default=256, help="sequences to evaluate, spread evenly (0: all)")
    parser.add_argument("--m", type=int, default=32, help="blur half-window in frames (default 32)")
    parser.add_argument("--batch", type=int, default=16, help="sequences per forward pass (default 16)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--no-face-detection", dest="detect_faces", action="store_false",
                        help="skip the dlib face-detection rates (the slowest part on a CPU)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--refine-steps", type=int, default=None,
                        help="blur-consistency refinement steps (default: the model folder's pipeline.json, else 0)")
    parser.add_argument("--residual", action=argparse.BooleanOptionalAction, default=None,
                        help="add the refinement's residual to the frames (default: the model folder's pipeline.json, "
                             "else off)")
    parser.add_argument("--align", choices=("none", "landmarks"), default="none",
                        help="landmarks: warp every sample into the model's crop along its true landmarks, as run "
                             "aligns a photo's face (default none: the frames as stored)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    from deblur_rotate.errors import UserError

    try:
        blur_encoder, generator = model_parts(args.model, args.blur_encoder, args.generator)
        refine = model_refine(args.model, args.refine_steps, args.residual)
        figures = evaluate(blur_encoder, generator, args.data, split=args.split, limit=args.limit,
                           m=args.m, kind=args.kind, batch=max(1, args.batch), device=args.device,
                           detect_faces=args.detect_faces, refine=refine,
                           align_crop=model_crop(args.model) if args.align == "landmarks" else None)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"align: {args.align}")
    for name, value in figures.items():
        print(f"{name}: {value}" if isinstance(value, int) else f"{name}: {value:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

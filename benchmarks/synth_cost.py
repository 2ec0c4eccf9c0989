"""Generation time and disk size of SynthBMFD.

Generates ``--subjects`` subjects with the given settings into a temporary (or given) folder and
prints the measured time and size, plus the figures extrapolated linearly to ``--full-subjects``
(every subject costs the same: same frame count, same views, same image size).

    python benchmarks/synth_cost.py --subjects 2 --size 64 --seconds 1.0 --performances 2 --workers 2
    python benchmarks/synth_cost.py --existing data/synthbmfd     # size and blurriness of a finished folder
"""
from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path


def folder_size(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def blur_stats(root: Path, samples: int = 64) -> None:
    """How blurry the data is: mean PSNR of the blurry image (m = 32) against its sharp middle frame,
    over the whole image and over the face region (pixels not background in either), on ``samples``
    items spread evenly over the dataset."""
    import torch

    from deblur_rotate.data.synthbmfd import SynthBMFD

    ds = SynthBMFD(root, split="all", m=32)
    picks = torch.linspace(0, len(ds) - 1, min(len(ds), samples)).long().tolist()
    psnr_all, psnr_face = [], []
    for i in picks:
        sample = ds[i]
        blurry, sharp = (sample["blurry"] + 1) / 2, (sample["targets"][2] + 1) / 2
        err = (blurry - sharp) ** 2
        face = ((blurry > 0.02) | (sharp > 0.02)).any(0)
        psnr_all.append(-10 * torch.log10(err.mean()).item())
        psnr_face.append(-10 * torch.log10(err[:, face].mean()).item())
    print(f"blur_samples: {len(picks)}")
    print(f"blurry_vs_middle_psnr_db: {sum(psnr_all) / len(psnr_all):.2f}")
    print(f"blurry_vs_middle_face_psnr_db: {sum(psnr_face) / len(psnr_face):.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--subjects", type=int, default=2)
    parser.add_argument("--full-subjects", type=int, default=52)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=1.0)
    parser.add_argument("--performances", type=int, default=2)
    parser.add_argument("--supersample", type=int, default=2)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--out", default=None, help="keep the data here (default: a temporary folder)")
    parser.add_argument("--existing", default=None,
                        help="measure a folder already generated (size and blur only; no timing)")
    args = parser.parse_args()
    if args.existing:
        root = Path(args.existing)
        print(f"megabytes: {folder_size(root) / 2**20:.1f}")
        print(f"png_files: {sum(1 for _ in root.rglob('*.png'))}")
        blur_stats(root)
        return

    from deblur_rotate.data.synthbmfd import SynthConfig, generate
    from deblur_rotate.face3d.procedural import build_procedural_model

    config = SynthConfig(subjects=args.subjects, performances=args.performances, size=args.size,
                         seconds=args.seconds, supersample=args.supersample)
    build_procedural_model(**config.model)  # warm the model cache: not part of the per-subject cost
    root = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="synth_cost_")) / "ds"
    started = time.time()
    generate(root, config, workers=args.workers, progress=False)
    seconds = time.time() - started
    size = folder_size(root)
    frames = args.subjects * args.performances * config.views * config.num_frames
    print(f"subjects: {args.subjects}")
    print(f"image_size: {args.size}")
    print(f"frames: {frames}")
    print(f"workers: {args.workers}")
    print(f"ms_per_frame: {1000 * seconds / frames:.2f}")
    print(f"seconds: {seconds:.1f}")
    print(f"megabytes: {size / 2**20:.1f}")
    scale = args.full_subjects / args.subjects
    print(f"extrapolated_minutes_{args.full_subjects}_subjects: {seconds * scale / 60:.1f}")
    print(f"extrapolated_gigabytes_{args.full_subjects}_subjects: {size * scale / 2**30:.2f}")
    if config.num_frames >= 65:
        blur_stats(root)
    if not args.out:
        shutil.rmtree(root.parent, ignore_errors=True)


if __name__ == "__main__":
    main()

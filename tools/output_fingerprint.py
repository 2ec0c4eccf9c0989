"""Fingerprint what the bundled model writes, to show that a refactoring changed no output bit.

Runs ``deblur-rotate demo`` (the built-in examples, refinement on and off) and ``deblur-rotate run`` on the
astronaut photo (three views, latents, pose, paste-back), each at one thread, then prints one
``relative/path: sha256`` line per output: PNG/GIF pixels as decoded arrays (file metadata aside), NPZ arrays
by name, JSON with the timing and version fields dropped. Compare two prints with ``diff``:

    python tools/output_fingerprint.py --out /tmp/fp_before > before.txt
    ... change the code ...
    python tools/output_fingerprint.py --out /tmp/fp_after > after.txt
    diff before.txt after.txt && echo bit-identical

MP4 files are skipped (the encoder's container metadata is not ours); their frames are the PNGs.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

# JSON fields that carry wall-clock times, versions or absolute paths rather than results
VOLATILE_KEYS = {"seconds", "wall_s", "time_s", "elapsed_s", "timing", "timings", "version", "created", "date",
                 "out", "output", "path", "input", "model", "torch", "python", "platform", "host"}


def _strip(value):
    if isinstance(value, dict):
        return {k: _strip(v) for k, v in sorted(value.items())
                if k not in VOLATILE_KEYS and not k.endswith(("_s", "_seconds", "_path", "_dir"))}
    if isinstance(value, list):
        return [_strip(v) for v in value]
    return value


def file_digest(path: Path) -> str | None:
    """sha256 of what ``path`` holds as a result (None: not fingerprinted)."""
    suffix = path.suffix.lower()
    h = hashlib.sha256()
    if suffix in (".png", ".gif", ".jpg", ".jpeg"):
        import imageio.v3 as iio

        pixels = np.ascontiguousarray(iio.imread(path, index=None))
        h.update(str(pixels.shape).encode())
        h.update(pixels.tobytes())
    elif suffix == ".npz":
        with np.load(path) as arrays:
            for name in sorted(arrays.files):
                h.update(name.encode())
                h.update(np.ascontiguousarray(arrays[name]).tobytes())
    elif suffix == ".json":
        h.update(json.dumps(_strip(json.loads(path.read_text())), sort_keys=True).encode())
    else:
        return None
    return h.hexdigest()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True, help="scratch folder (replaced)")
    ap.add_argument("--model", type=Path, default=None, help="model folder (default: the bundled one)")
    args = ap.parse_args(argv)

    import imageio.v3 as iio
    from skimage import data as skdata  # the astronaut photo ships with scikit-image

    shutil.rmtree(args.out, ignore_errors=True)
    args.out.mkdir(parents=True)
    photo = args.out / "astronaut.png"
    iio.imwrite(photo, skdata.astronaut())
    model = ["--model", str(args.model)] if args.model else []
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    exe = [sys.executable, "-m", "deblur_rotate.cli"]
    jobs = {
        "demo": ["demo", "-o", str(args.out / "demo"), *model],
        "demo_norefine": ["demo", "-o", str(args.out / "demo_norefine"), "--refine-steps", "0", *model],
        "run": ["run", "-i", str(photo), "-o", str(args.out / "run"), "--save-latents", "--save-pose",
                "--paste-back", "--no-progress", *model],
    }
    for name, cmd in jobs.items():
        done = subprocess.run([*exe, *cmd], env=env, capture_output=True, text=True)
        if done.returncode != 0:
            print(f"{name} failed (exit {done.returncode}):\n{done.stderr[-2000:]}", file=sys.stderr)
            return 1
    for path in sorted(p for p in args.out.rglob("*") if p.is_file() and p != photo):
        digest = file_digest(path)
        if digest is not None:
            print(f"{path.relative_to(args.out)}: {digest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""What an evaluation needs, checked before anything is measured: the options of ``deblur-rotate evaluate``,
which of the paper's tables can run with the networks at hand (:func:`plan_tables`, a pure function), the
SynthBMFD split, and the loaded model, optional FC3 and DirectDeblurNet baseline and E_3D's morphable model
(:func:`load_resources`). :mod:`deblur_rotate.evaluate.tables` measures and builds the tables from these.
"""
from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from deblur_rotate.errors import UserError
from deblur_rotate.models.io import check_codes_match

__all__ = ["ALL_TABLES", "TABLE_NEEDS", "Availability", "EvaluateOptions", "Resources", "check_dataset",
           "load_resources", "plan_tables", "select_instants"]

ALL_TABLES = (1, 2, 3, 4, 5)
# What each table needs beyond G and E_v (Availability field names).
TABLE_NEEDS: dict[int, tuple[str, ...]] = {1: (), 2: ("fusion",), 3: ("fusion",), 4: ("fusion", "face3d_model"),
                                           5: ("fusion",)}
_NEED_TEXT = {
    "fusion": "the model has no fusion network (F), so it cannot render other views",
    "face3d_model": "E_3D with its morphable model is needed (texture warp, pose estimates)",
}


# ------------------------------------------------------------------------------------------------ options

@dataclass
class EvaluateOptions:
    """What ``deblur-rotate evaluate`` was asked to do."""

    data: str | os.PathLike                        # SynthBMFD folder
    model: str | os.PathLike | None = None         # model folder; None: the bundled model
    split: str = "test"                            # SynthBMFD split
    fc3: str | os.PathLike | None = None           # a second fusion network (FC3): network, run or model folder
    baseline: str | os.PathLike | None = None      # DirectDeblurNet folder (RUN/deblur_baseline) or its run
    limit: int | None = None                       # evaluate at most this many instants (evenly spread)
    m: int = 32                                    # blur half-window in frames (2m + 1 averaged)
    device: str | None = None                      # cpu / cuda / None (cuda when available)
    tables: Sequence[int] = ALL_TABLES             # which tables to compute
    progress: bool = True                          # tqdm bar over the instants
    figure_instants: int = 3                       # instants shown in figure5.png
    refine_steps: int | None = None                # blur-consistency refinement (None: the model's default, 0: off)
    refine_residual: bool | None = None            # the refinement's residual on the input view (None: the model's)


@dataclass
class Availability:
    """Which optional parts are at hand (input of :func:`plan_tables`)."""

    fusion: bool = False          # the model has F
    fc3: bool = False             # --fc3 was given
    face3d: bool = False          # the model has E_3D
    face3d_model: bool = False    # ... and its morphable model and camera are known
    baseline: bool = False        # --baseline was given


def plan_tables(requested: Sequence[int], have: Availability) -> tuple[list[int], dict[int, str], dict[int, list[str]]]:
    """Which requested tables can run; a pure function.

    Returns ``(run, skipped, partial)``: the tables to compute (sorted), ``{table: reason}`` for the ones that
    cannot run, and ``{table: [notes]}`` for rows left out of tables that do run.
    """
    bad = sorted({int(t) for t in requested} - set(ALL_TABLES))
    if bad:
        raise UserError(f"--tables takes numbers among {' '.join(map(str, ALL_TABLES))}; got {bad}")
    run, skipped, partial = [], {}, defaultdict(list)
    for t in sorted({int(t) for t in requested}):
        missing = [need for need in TABLE_NEEDS[t] if not getattr(have, need)]
        if missing:
            if "face3d_model" in missing and "fusion" not in missing and not have.face3d:
                skipped[t] = "the model has no face3d_encoder (E_3D): " + _NEED_TEXT["face3d_model"]
            else:
                skipped[t] = "; ".join(_NEED_TEXT[m] for m in missing)
            continue
        run.append(t)
        if t in (2, 3) and not have.fc3:
            partial[t].append("FC3 rows skipped: no --fc3 network given")
        if t == 3 and not have.face3d:
            partial[t].append("rows with Δp from E_3D skipped: the model has no face3d_encoder (E_3D)")
        if t == 5 and not have.baseline:
            partial[t].append("cascade rows (DirectDeblurNet + texture warp) skipped: no --baseline network given")
        elif t == 5 and not have.face3d_model:
            partial[t].append("cascade rows skipped: the texture warp needs E_3D with its morphable model")
    return run, skipped, dict(partial)


# ------------------------------------------------------------------------------------------------ loading

def select_instants(total: int, limit: int | None) -> list[int]:
    """Indices of the instants to evaluate: all of them, or ``limit`` evenly spread over ``range(total)``."""
    if limit is None or limit >= total:
        return list(range(total))
    if limit < 1:
        raise UserError(f"--limit must be at least 1 (got {limit})")
    return sorted(set(np.linspace(0, total - 1, limit).round().astype(int).tolist()))


def check_dataset(root: Path, split: str, index: dict) -> list[int]:
    """UserError unless every subject of ``split`` has every view folder and meta.npz; returns the views."""
    views = [int(v) for v in index.get("views", [])]
    if len(views) < 2:
        raise UserError(f"{root} has {len(views)} view(s); the tables need a multi-view SynthBMFD (8 views as the "
                        "paper's rig): generate one with `deblur-rotate synth`")
    subjects = [s for s in index.get("subjects", []) if split == "all" or s.get("split") == split]
    if not subjects:
        raise UserError(f"{root} has no subjects in the {split!r} split; choose another --split or regenerate the "
                        "data with test subjects (`deblur-rotate synth --test-subjects N`)")
    for subject in subjects:
        for perf in subject.get("performances", []):
            folder = root / subject["name"] / perf["name"]
            missing = [v for v in views if not (folder / f"view_{v}").is_dir()]
            if missing:
                raise UserError(f"{folder} lacks view(s) {missing} listed in {root / 'index.json'}; the dataset is "
                                "incomplete: regenerate it (rerun the same `deblur-rotate synth` command)")
            if not (folder / "meta.npz").is_file():
                raise UserError(f"{folder} has no meta.npz (ground-truth poses and landmarks); regenerate the dataset")
    return views


def _load_fusion(path: Path, device: torch.device):
    """A fusion network from a network folder, a fusion run folder (RUN/fusion/) or a model folder."""
    from deblur_rotate.models.io import load_pretrained

    path = Path(path)
    if not path.is_dir():
        raise UserError(f"--fc3 {path}: no such folder; give a fusion network folder (config.json + "
                        "model.safetensors), a fusion run folder or a model folder")
    if (path / "pipeline.json").is_file():
        from deblur_rotate.model_folder import validate_model_folder

        info = validate_model_folder(path)  # the same checks as --model: its files stay inside it
        if "fusion" not in info.networks:
            raise UserError(f"--fc3 {path}: this model folder has no fusion network")
        path = info.networks["fusion"]
    elif not (path / "config.json").is_file() and (path / "fusion" / "config.json").is_file():
        path = path / "fusion"
    return load_pretrained("fusion", path, device)


def _load_baseline(path: Path, device: torch.device):
    """DirectDeblurNet from RUN/deblur_baseline (or the run folder RUN)."""
    from deblur_rotate.models.io import load_pretrained

    path = Path(path)
    if not path.is_dir():
        raise UserError(f"--baseline {path}: no such folder; give RUN/deblur_baseline of "
                        "`deblur-rotate train deblur-baseline`")
    if not (path / "config.json").is_file() and (path / "deblur_baseline" / "config.json").is_file():
        path = path / "deblur_baseline"
    return load_pretrained("baselines.direct_deblur", path, device)


@dataclass
class Resources:
    """The networks and data one evaluation uses (all on ``device``)."""

    pipe: object                        # DeblurRotatePipeline
    model_dir: Path                     # the model folder
    fc3: torch.nn.Module | None         # second fusion network (--fc3)
    face3d: object | None               # Face3DBundle (E_3D + morphable model + camera) or None
    face3d_source: str                  # where the morphable model and camera came from, or why there is none
    baseline: torch.nn.Module | None    # DirectDeblurNet (--baseline)
    dataset: object                     # SynthBMFD at the model's resolution
    instants: list[tuple[str, str, int]]  # evaluated (subject, performance, centre frame)
    total_instants: int                 # instants in the split
    views: list[int]                    # the rig's views 1..V
    pairs: list[tuple[int, int]]        # mirror view pairs
    input_view: int                     # the novel-view tables' input: the nearest-frontal view
    device: torch.device

    @property
    def resolution(self) -> int:
        return int(self.pipe.resolution)

    def availability(self) -> Availability:
        return Availability(fusion=self.pipe.fusion is not None, fc3=self.fc3 is not None,
                            face3d=self.pipe.face3d_encoder is not None, face3d_model=self.face3d is not None,
                            baseline=self.baseline is not None)


def _face3d_bundle(pipe, model_dir: Path, dataset, device: torch.device) -> tuple[object | None, str]:
    """E_3D with its morphable model and camera: from the model's face3d_encoder/face_model.json, else the
    dataset's procedural model and camera (when the layouts agree)."""
    from deblur_rotate.face3d.loading import FACE_MODEL_FILE, Face3DBundle, build_face_model, load_face3d

    if pipe.face3d_encoder is None:
        return None, "the model has no face3d_encoder (E_3D)"
    sub = model_dir / str(pipe.config.get("networks", {}).get("face3d_encoder", "face3d_encoder"))
    if (sub / FACE_MODEL_FILE).is_file():
        return load_face3d(sub, device), f"{sub / FACE_MODEL_FILE}"
    spec = {"kind": "procedural", **{k: int(v) for k, v in dataset.index["model"].items()}}
    face_model = build_face_model(spec).to(device)
    if face_model.layout != pipe.face3d_encoder.layout:
        return None, (f"{sub} has no {FACE_MODEL_FILE}, and the dataset's procedural model ({face_model.layout}) "
                      f"does not fit the encoder ({pipe.face3d_encoder.layout})")
    subject, perf, _ = dataset.instants[0]
    with np.load(dataset.root / subject / perf / "meta.npz") as meta:
        camera = torch.from_numpy(meta["camera_matrix"]).float().to(device)
    bundle = Face3DBundle(encoder=pipe.face3d_encoder, face_model=face_model, camera_matrix=camera,
                          image_size=int(dataset.stored_size), input_size=int(pipe.resolution))
    return bundle, (f"{sub} has no {FACE_MODEL_FILE}: the dataset's procedural model ({spec}) and camera were used")


def load_resources(options: EvaluateOptions) -> Resources:
    """Load the model, the optional networks and the dataset; UserError for anything unusable."""
    from deblur_rotate.data.synthbmfd import SynthBMFD
    from deblur_rotate.pipeline import DeblurRotatePipeline, bundled_model_dir, resolve_device

    device = resolve_device(options.device)
    root = Path(options.data)
    if not root.is_dir():
        raise UserError(f"--data {root}: no such folder; generate a SynthBMFD with `deblur-rotate synth --out {root}`")
    pipe = DeblurRotatePipeline.from_pretrained(options.model, device=device)
    pipe.refine = pipe.refine_settings(options.refine_steps, options.refine_residual)  # None: the model's default
    model_dir = Path(options.model) if options.model is not None else bundled_model_dir()
    dataset = SynthBMFD(root, split=options.split, m=int(options.m), size=pipe.resolution)
    views = check_dataset(root, options.split, dataset.index)
    pairs = [tuple(int(v) for v in p) for p in dataset.index.get("mirror_pairs", [])]
    if not pairs:
        pairs = [(v, len(views) + 1 - v) for v in range(1, len(views) // 2 + 1)]
    input_view = pairs[-1][0]  # the nearest-frontal view (4 of 8)
    fc3 = None
    if options.fc3 is not None:
        fc3 = _load_fusion(Path(options.fc3), device).eval()
        check_codes_match(fc3, pipe.generator.num_ws, pipe.generator.w_dim, f"--fc3 {options.fc3}",
                          "the model's generator", "give an FC3 trained for this model's preset")
    baseline = None
    if options.baseline is not None:
        baseline = _load_baseline(Path(options.baseline), device).eval()
        if pipe.resolution % baseline.multiple:
            raise UserError(f"--baseline {options.baseline}: the network needs image sides divisible by "
                            f"{baseline.multiple}, the model works at {pipe.resolution} px")
    face3d, face3d_source = _face3d_bundle(pipe, model_dir, dataset, device)
    chosen = select_instants(len(dataset.instants), options.limit)
    return Resources(pipe=pipe, model_dir=model_dir, fc3=fc3, face3d=face3d, face3d_source=face3d_source,
                     baseline=baseline, dataset=dataset, instants=[dataset.instants[i] for i in chosen],
                     total_instants=len(dataset.instants), views=views, pairs=pairs, input_view=input_view,
                     device=device)

"""Stage 4: train the 3D encoder E_3D (paper §3.4): blurry face -> 3DMM coefficients.

E_3D (:class:`deblur_rotate.models.encoders.FaceCoefficientEncoder`) sees the BLURRY image, as at
inference. Its coefficients are rendered with the morphable model and our differentiable rasterizer in the
dataset's camera, and compared with the sharp middle frame ``targets[2]`` and its 68 landmarks; the loss
terms are the pure functions of :mod:`deblur_rotate.face3d.losses` (paper weights in ``FACE3D_WEIGHTS``)::

    L = 5 L1_mask + 30 Edge_mask + 0.5 L_id + 1 L_lan + 0.25 L_mview + 1e-4 (|alpha|^2 + |beta|^2 + |delta|^2)

Every batch holds pairs of views u != v of the same instants (all view pairs of every instant are items),
so L_mview compares the identity, albedo and expression predicted from the two views.

The morphable model is the procedural model SynthBMFD was rendered with (its ``index.json`` names the
sizes) or, with ``--bfm``, a Basel Face Model the user holds. The encoder starts at a coefficient prior:
zero modes, the training data's mean lighting and translation, frontal pose; each group learned at its
own scale (1 for the modes, the data's spread for lighting, pose in radians and translation in cm).

Only SynthBMFD has the 3D ground truth this first version needs (camera intrinsics and 68 landmarks);
other dataset kinds are refused with a UserError. Usage::

    stage = Face3DStage(Face3DConfig(preset="tiny", data="data/synthbmfd", out="runs/e3d", steps=20_000))
    stage.run()   # RUN/checkpoints/, RUN/samples/step-XXXXXXXX.png, RUN/tb/, RUN/config.json,
                  # RUN/face3d_encoder/ (config.json + model.safetensors + face_model.json)

``deblur-rotate train face3d --data DIR --out RUN`` on the command line (see :func:`add_parser`).
"""
from __future__ import annotations

import copy
import itertools
import json
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from deblur_rotate.errors import UserError
from deblur_rotate.train import distributed as dist_utils

if TYPE_CHECKING:
    from deblur_rotate.face3d.losses import RenderedFace

__all__ = [
    "FACE_MODEL_FILE",
    "PRESET_DEFAULTS",
    "Face3DBundle",
    "Face3DConfig",
    "Face3DPairs",
    "Face3DStage",
    "add_parser",
    "build_face_model",
    "coefficient_prior",
    "face_model_spec",
    "load_face3d",
    "resize_images",
    "run_face3d",
]

FACE_MODEL_FILE = "face_model.json"  # beside config.json in RUN/face3d_encoder: which model, which camera
_NETWORK = "E3D"  # the network's name in checkpoints

# per-preset default total batch (images; two views per instant, so always even)
PRESET_DEFAULTS: dict[str, dict] = {
    "micro": {"batch": 4},
    "tiny": {"batch": 8},
    "paper": {"batch": 90},  # §3.6
}


# ------------------------------------------------------------------------------------------------- config

@dataclass
class Face3DConfig:
    """Everything that determines an E_3D run (written to RUN/config.json)."""

    preset: str = "tiny"  # encoder preset: micro (32 px input), tiny (64 px), paper (256 px, ResNet-50)
    data: str = ""  # SynthBMFD folder
    out: str = ""  # run folder
    bfm: str | None = None  # Basel Face Model file (01_MorphableModel.mat / BFM_model_front.mat); None: procedural
    bfm_expression: str | None = None  # Exp_Pca.bin (BFM 2009 only)
    bfm_landmarks: str | None = None  # 68 landmark vertex indices of the BFM mesh
    bfm_modes: list[int] | None = None  # [n_id, n_tex, n_exp] kept from the BFM; None: all of them
    split: str = "train"  # SynthBMFD split
    m: int = 32  # blur half-window in frames (2m + 1 frames are averaged; 32 as BMFD)
    stride: int = 1  # take every stride-th centre frame
    steps: int = 1000  # iterations
    batch: int | None = None  # total images per iteration over all processes (even; default per preset)
    lr: float = 1e-4  # Adam learning rate
    lambda_data: float = 5.0  # photometric L1 inside the rendered face mask
    lambda_edge: float = 30.0  # Sobel edge L1 inside the mask
    lambda_id: float = 0.5  # identity loss (dlib descriptors of 150x150 chips); 0 skips the network
    lambda_lan: float = 1.0  # 68-landmark distance / image width
    lambda_mview: float = 0.25  # id/tex/exp agreement across two views
    lambda_c: float = 1e-4  # |alpha|^2 + |beta|^2 + |delta|^2
    skin_weight: float = 2.0  # weight of skin pixels in the image terms (1: no skin weighting)
    edge_softness: float = 0.7  # soft-silhouette sigma of the renderer, pixels
    checkpoint_every: int = 500
    log_every: int = 50
    image_every: int | None = None  # default: checkpoint_every
    grid: int = 8  # faces in the (input, render, target) image grid; 0: none
    seed: int = 0
    device: str | None = None  # cpu / cuda / None (auto)
    precision: str = "fp32"  # fp32, or on CUDA fp16 / bf16 mixed precision for the encoder
    workers: int = 0  # DataLoader workers (0: in-process)
    resume: bool = False
    progress: bool = True
    extra: dict = field(default_factory=dict)  # room for later options

    def resolved(self) -> Face3DConfig:
        """A copy with the preset defaults filled in; UserError on impossible values."""
        from deblur_rotate.models.encoders import ENCODER_PRESETS

        if self.preset not in ENCODER_PRESETS:
            raise UserError(f"unknown preset {self.preset!r}: choose one of {', '.join(ENCODER_PRESETS)}")
        c = copy.deepcopy(self)
        c.batch = PRESET_DEFAULTS[c.preset]["batch"] if c.batch is None else int(c.batch)
        c.image_every = c.checkpoint_every if c.image_every is None else int(c.image_every)
        c.data, c.out = str(c.data), str(c.out)
        for name in ("bfm", "bfm_expression", "bfm_landmarks"):
            if getattr(c, name) is not None:
                setattr(c, name, str(getattr(c, name)))
        if c.bfm is None and (c.bfm_expression or c.bfm_landmarks or c.bfm_modes):
            raise UserError("--bfm-expression, --bfm-landmarks and --bfm-modes need --bfm (the BFM model file)")
        if c.bfm_modes is not None:
            c.bfm_modes = [int(v) for v in c.bfm_modes]
            if len(c.bfm_modes) != 3 or min(c.bfm_modes) < 0:
                raise UserError(f"--bfm-modes takes three counts >= 0 (identity, albedo, expression), "
                                f"got {c.bfm_modes}")
        for name in ("steps", "batch", "checkpoint_every", "log_every", "stride"):
            if getattr(c, name) < (0 if name == "steps" else 1):
                raise UserError(f"--{name.replace('_', '-')} must be positive (got {getattr(c, name)})")
        if c.batch % 2:
            raise UserError(f"--batch counts images, two views per instant, so it must be even (got {c.batch})")
        for name in ("lr", "lambda_data", "lambda_edge", "lambda_id", "lambda_lan", "lambda_mview", "lambda_c",
                     "edge_softness", "grid", "workers", "image_every"):
            if getattr(c, name) < 0:
                raise UserError(f"--{name.replace('_', '-')} must not be negative (got {getattr(c, name)})")
        if c.skin_weight < 1:
            raise UserError(f"--skin-weight must be >= 1 (skin pixels count that many times; got {c.skin_weight})")
        if c.precision not in ("fp32", "fp16", "bf16"):
            raise UserError(f"--precision must be fp32, fp16 or bf16 (got {c.precision!r})")
        return c

    def weights(self) -> dict[str, float]:
        """Loss weights by term name (the keys of ``FACE3D_WEIGHTS``)."""
        return {"data": self.lambda_data, "edge": self.lambda_edge, "id": self.lambda_id, "lan": self.lambda_lan,
                "mview": self.lambda_mview, "c": self.lambda_c}


# ------------------------------------------------------------------------------------------------- model

def face_model_spec(config: Face3DConfig, index: dict) -> dict:
    """JSON description of the morphable model a run uses (what :func:`build_face_model` rebuilds).

    index: the SynthBMFD ``index.json`` (its ``model`` entry holds the procedural model's sizes)."""
    if config.bfm is None:
        return {"kind": "procedural", **{k: int(v) for k, v in index["model"].items()}}
    n_id, n_tex, n_exp = config.bfm_modes if config.bfm_modes is not None else (None, None, None)

    def resolve(p: str | None) -> str | None:
        return None if p is None else str(Path(p).resolve())

    return {"kind": "bfm", "path": resolve(config.bfm), "expression_path": resolve(config.bfm_expression),
            "landmarks_path": resolve(config.bfm_landmarks), "n_id": n_id, "n_tex": n_tex, "n_exp": n_exp}


def build_face_model(spec: dict):
    """The :class:`deblur_rotate.face3d.model.MorphableModel` of a spec from :func:`face_model_spec` (CPU).
    The procedural model is cached on disk after its first build; BFM files are read again."""
    kind = spec.get("kind")
    if kind == "procedural":
        from deblur_rotate.face3d.procedural import build_procedural_model

        return build_procedural_model(**{k: v for k, v in spec.items() if k != "kind"})
    if kind == "bfm":
        from deblur_rotate.face3d.bfm import load_bfm

        return load_bfm(spec["path"], spec.get("expression_path"), spec.get("landmarks_path"), n_id=spec.get("n_id"),
                        n_tex=spec.get("n_tex"), n_exp=spec.get("n_exp"))
    raise UserError(f"unknown morphable model kind {kind!r} (expected procedural or bfm)")


def coefficient_prior(root: str | os.PathLike, subjects: list[str], layout) -> tuple[torch.Tensor, torch.Tensor]:
    """E_3D's starting point and per-coefficient step, from the ground truth of a SynthBMFD split.

    root: the SynthBMFD folder; subjects: subject names whose ``meta.npz`` files are read (all views, frames
    and performances); layout: the :class:`~deblur_rotate.face3d.model.CoeffLayout` of the model in use
    (the data's lighting and pose are the last 33 entries of any layout, so a BFM layout works too).
    Returns (offset [C], scale [C]): offset zero for the modes and the rotation (frontal), the mean lighting
    and mean translation (cm); scale 1 for the modes (they are ~N(0, 1)), the data's standard deviation for
    lighting (>= 0.02), rotation (radians, >= 0.05) and translation (cm, >= 0.5).
    """
    tails = []
    for subject in subjects:
        for meta in sorted((Path(root) / subject).glob("*/meta.npz")):
            with np.load(meta) as data:
                coeffs = data["coeffs"]  # [V, T, C_data]
            tails.append(coeffs.reshape(-1, coeffs.shape[-1])[:, -33:].astype(np.float64))
    if not tails:
        raise UserError(f"{root}: no meta.npz under the subjects {subjects[:3]}...; the dataset is damaged, "
                        "regenerate it with `deblur-rotate synth`")
    tail = np.concatenate(tails)  # [K, 33] light (27) | rotation (3) | translation (3)
    mean, std = tail.mean(0), tail.std(0)
    s = layout.slices()
    offset = torch.zeros(layout.size, dtype=torch.float64)
    scale = torch.ones(layout.size, dtype=torch.float64)
    offset[s["light"]] = torch.from_numpy(mean[:27])
    offset[s["translation"]] = torch.from_numpy(mean[30:])
    scale[s["light"]] = torch.from_numpy(np.maximum(std[:27], 0.02))
    scale[s["rotation"]] = torch.from_numpy(np.maximum(std[27:30], 0.05))
    scale[s["translation"]] = torch.from_numpy(np.maximum(std[30:], 0.5))
    return offset.float(), scale.float()


@dataclass
class Face3DBundle:
    """A trained E_3D with what it needs to be rendered (see :func:`load_face3d`)."""

    encoder: torch.nn.Module  # FaceCoefficientEncoder, eval mode
    face_model: torch.nn.Module  # MorphableModel its coefficients belong to
    camera_matrix: torch.Tensor  # [3, 3] intrinsics of the training renders (pixels at image_size)
    image_size: int  # side of the training renders and landmarks, pixels
    input_size: int  # side of the images the encoder was trained on, pixels

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        """Coefficients [N, C] (float32) of face crops [N, 3, S, S] in [-1, 1] (any S: resized to input_size)."""
        return self.encoder(resize_images(images, self.input_size)).float()


def load_face3d(folder: str | os.PathLike, device: str | torch.device = "cpu") -> Face3DBundle:
    """Load ``RUN/face3d_encoder`` (config.json + model.safetensors + face_model.json) for the pipeline
    and evaluation. UserError when a file is missing or does not fit."""
    from deblur_rotate.models.io import load_pretrained

    folder = Path(folder)
    encoder = load_pretrained("encoders.face3d", folder, device)
    path = folder / FACE_MODEL_FILE
    try:
        info = json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"{folder}: no {FACE_MODEL_FILE} (written by `deblur-rotate train face3d`); it names the "
                        "morphable model and camera the encoder was trained with") from None
    except (OSError, ValueError) as err:
        raise UserError(f"{path}: unreadable ({err})") from None
    face_model = build_face_model(info["face_model"]).to(device)
    if face_model.layout != encoder.layout:
        raise UserError(f"{folder}: the encoder predicts {encoder.layout} but {FACE_MODEL_FILE} names a model with "
                        f"{face_model.layout}")
    return Face3DBundle(encoder=encoder, face_model=face_model,
                        camera_matrix=torch.tensor(info["camera_matrix"], dtype=torch.float32, device=device),
                        image_size=int(info["image_size"]), input_size=int(info["input_size"]))


# ------------------------------------------------------------------------------------------------- data

class Face3DPairs(torch.utils.data.Dataset):
    """Every unordered pair of views {u, v} (u != v) of every instant of a SynthBMFD split.

    Item = ``{"blurry": [2, 3, S, S], "target": [2, 3, S, S] (the sharp middle frames), "landmarks":
    [2, 68, 2] (pixels), "pose": [2, 3] (radians)}`` at the dataset's size. A pure function of the index.
    """

    def __init__(self, dataset):  # dataset: a SynthBMFD with at least two views
        if len(dataset.views) < 2:
            raise UserError("E_3D training needs at least two views per instant (for L_mview)")
        self.dataset = dataset
        self.pairs = list(itertools.combinations(dataset.views, 2))

    def __len__(self) -> int:
        return len(self.dataset.instants) * len(self.pairs)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        instant, pair = divmod(int(i), len(self.pairs))
        subject, perf, center = self.dataset.instants[instant]
        s = self.dataset.load_views(subject, perf, center, list(self.pairs[pair]))
        return {"blurry": s["blurry"], "target": s["targets"][:, 2], "landmarks": s["landmarks"], "pose": s["pose"]}


def resize_images(images: torch.Tensor, size: int) -> torch.Tensor:
    """[N, 3, S, S] -> [N, 3, size, size] (area when shrinking, bilinear when growing; unchanged when S == size)."""
    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    import torch.nn.functional as F

    if images.shape[-1] > size:
        return F.interpolate(images, size=(size, size), mode="area")
    return F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)


# ------------------------------------------------------------------------------------------------- stage

class Face3DStage:
    """Builds everything for stage 4 and runs it through the shared Trainer (see the module docstring).

    Attributes after construction: ``E`` (the bare encoder on the device), ``face_model``, ``camera_matrix``
    ([3, 3] on the device), ``image_size`` (render side), ``input_size`` (encoder side), ``opt``,
    ``identity_net`` (None when lambda_id is 0), ``trainer``, ``config`` (resolved), ``info``.
    """

    def __init__(self, config: Face3DConfig):
        from deblur_rotate.models.encoders import FaceCoefficientEncoder, encoder_config
        from deblur_rotate.models.stylegan2 import stylegan2_config
        from deblur_rotate.train.loop import MixedPrecision, Trainer

        self.config = c = config.resolved()
        self.info = info = dist_utils.setup(c.device)
        if (c.batch // 2) % info.world_size:
            raise UserError(f"--batch {c.batch} holds {c.batch // 2} view pairs, which must be a multiple of the "
                            f"number of processes ({info.world_size})")
        self.pairs_per_rank = c.batch // 2 // info.world_size
        self.out = Path(c.out)
        dev = info.device

        self.synth, self.dataset, camera_matrix = self._open_data()
        self.image_size = int(self.synth.size)  # renders, targets and landmarks stay at the dataset's size
        self.input_size = int(stylegan2_config(c.preset)["img_resolution"])  # what E_3D sees, as in the pipeline
        self.face_model_spec = face_model_spec(c, self.synth.index)
        self.face_model = build_face_model(self.face_model_spec).to(dev)
        layout = self.face_model.layout
        self.camera_matrix = camera_matrix.to(dev)  # [3, 3]

        dist_utils.seed_all(c.seed, per_rank=False)  # the same initial weights on every rank
        self.e_config = dict(n_id=layout.n_id, n_tex=layout.n_tex, n_exp=layout.n_exp,
                             **encoder_config(c.preset, "face3d"))
        self.E = FaceCoefficientEncoder(**self.e_config).to(dev).train()
        self.e_config = dict(self.E.config)  # normalised (lists, ints), as saved
        subjects = sorted({s for s, _, _ in self.synth.instants})
        offset, scale = coefficient_prior(self.synth.root, subjects, layout)
        self.E.set_coefficient_prior(offset, scale)
        self.E_ddp = dist_utils.wrap_ddp(self.E)
        self.opt = torch.optim.Adam(self.E.parameters(), lr=c.lr)
        dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(c.precision, torch.float32)
        self.amp = MixedPrecision(enabled=c.precision != "fp32", device=dev, dtype=dtype)
        self.identity_net = None
        if c.lambda_id > 0:
            from deblur_rotate.models.identity import load_dlib_face_recognition

            self.identity_net = load_dlib_face_recognition(device=dev)
        dist_utils.seed_all(c.seed)  # from here on, per-rank random streams
        self._grid_batch: dict[str, torch.Tensor] | None = None

        run_config = {**asdict(c), "stage": "face3d", "world_size": info.world_size, "encoder": self.e_config,
                      "face_model": self.face_model_spec, "image_size": self.image_size,
                      "input_size": self.input_size, "camera_matrix": camera_matrix.tolist(),
                      "dataset_items": len(self.dataset)}
        run_config.pop("resume", None)
        run_config.pop("progress", None)
        self.trainer = Trainer(
            run_dir=self.out, networks={_NETWORK: self.E}, network_configs={_NETWORK: self.e_config},
            optimizers={_NETWORK: self.opt}, step_fn=self.step_fn, data=self.batches, total_steps=c.steps,
            checkpoint_every=c.checkpoint_every, log_every=c.log_every, amp=self.amp, run_config=run_config,
            image_fn=self.image_fn if c.grid > 0 else None, image_every=c.image_every if c.grid > 0 else 0,
            progress=c.progress)

    # ------------------------------------------------------------------------------------------ data
    def _open_data(self):
        """(SynthBMFD, Face3DPairs, camera matrix [3, 3] at the dataset's size); UserError for other kinds."""
        from deblur_rotate.data.readers import detect_kind
        from deblur_rotate.data.synthbmfd import SynthBMFD

        c = self.config
        if not c.data:
            raise UserError("--data is required: a SynthBMFD folder (`deblur-rotate synth --out DIR`)")
        root = Path(c.data)
        kind = detect_kind(root)
        if kind != "synthbmfd":
            raise UserError(f"{root} looks like a {kind!r} dataset, but `train face3d` supports SynthBMFD folders only "
                            "(they carry the camera intrinsics and 68 ground-truth landmarks E_3D is trained with); "
                            "generate one with `deblur-rotate synth --out DIR`")
        synth = SynthBMFD(root, split=c.split, m=c.m, stride=c.stride)
        subject, perf, _ = synth.instants[0]
        meta = root / subject / perf / "meta.npz"
        try:
            with np.load(meta) as data:
                camera_matrix = torch.from_numpy(np.asarray(data["camera_matrix"], dtype=np.float32))
        except (OSError, KeyError, ValueError) as err:
            raise UserError(f"cannot read the camera intrinsics in {meta} ({err}); regenerate the dataset") from None
        return synth, Face3DPairs(synth), camera_matrix

    def batches(self, start_step: int) -> Iterator[dict]:
        """Batches of ``pairs_per_rank`` view pairs for iterations start_step, start_step + 1, ..."""
        c = self.config
        sampler = dist_utils.InfiniteSampler(len(self.dataset), seed=c.seed, start=start_step * self.pairs_per_rank)
        loader = torch.utils.data.DataLoader(self.dataset, batch_size=self.pairs_per_rank, sampler=sampler,
                                             num_workers=c.workers, pin_memory=self.info.device.type == "cuda",
                                             drop_last=True, persistent_workers=False)
        return iter(loader)

    # ------------------------------------------------------------------------------------------ step
    def predict(self, blurry: torch.Tensor, encoder: torch.nn.Module | None = None) -> torch.Tensor:
        """Coefficients [N, C] (float32) of blurry faces [N, 3, S, S] in [-1, 1] (resized to the encoder's size)."""
        encoder = self.E_ddp if encoder is None else encoder
        with self.amp.autocast():
            return encoder(resize_images(blurry, self.input_size)).float()

    def losses(self, coeffs: torch.Tensor, target: torch.Tensor, landmarks: torch.Tensor
               ) -> tuple[dict[str, torch.Tensor], RenderedFace]:
        """Every loss term (unweighted) of coefficients [2P, C] (pairs of views next to each other) against the
        sharp targets [2P, 3, S, S] and landmarks [2P, 68, 2]; returns (terms, the RenderedFace)."""
        from deblur_rotate.face3d.losses import (
            coefficient_regularizer,
            identity_chip_loss,
            landmark_loss,
            masked_edge_loss,
            multiview_loss,
            photometric_loss,
            render_coefficients_image,
        )
        from deblur_rotate.skin import skin_weights

        c, layout = self.config, self.face_model.layout
        rendered = render_coefficients_image(self.face_model, coeffs, self.camera_matrix, self.image_size,
                                             edge_softness_px=c.edge_softness)
        skin = skin_weights(target, c.skin_weight) if c.skin_weight != 1 else None
        pairs = coeffs.view(-1, 2, coeffs.shape[-1])
        terms = {
            "data": photometric_loss(rendered.image, target, rendered.mask, skin),
            "edge": masked_edge_loss(rendered.image, target, rendered.mask, skin),
            "lan": landmark_loss(rendered.landmarks, landmarks, self.image_size),
            "mview": multiview_loss(pairs[:, 0], pairs[:, 1], layout),
            "c": coefficient_regularizer(coeffs, layout),
        }
        if self.identity_net is not None:
            from deblur_rotate.models.identity import chip_transforms_from_landmarks

            chips = torch.from_numpy(chip_transforms_from_landmarks(landmarks.detach().cpu()))
            terms["id"] = identity_chip_loss(rendered.image, target, chips.to(target), self.identity_net)
        return terms, rendered

    def step_fn(self, batch: dict, step: int) -> dict[str, torch.Tensor]:
        """One Adam step on a batch of view pairs: ``blurry``/``target`` [P, 2, 3, S, S], ``landmarks``
        [P, 2, 68, 2], ``pose`` [P, 2, 3]. Returns the total, every (unweighted) term, and two metrics:
        ``pose_err_deg`` (mean absolute pitch/yaw/roll error, degrees) and ``lan_px`` (mean landmark error, pixels)."""
        from deblur_rotate.face3d.losses import pose_error_deg

        dev = self.info.device
        blurry = batch["blurry"].to(dev, non_blocking=True).float().flatten(0, 1)  # [2P, 3, S, S]
        target = batch["target"].to(dev, non_blocking=True).float().flatten(0, 1)
        landmarks = batch["landmarks"].to(dev).float().flatten(0, 1)  # [2P, 68, 2]
        coeffs = self.predict(blurry)  # [2P, C]
        terms, rendered = self.losses(coeffs, target, landmarks)
        weights = self.config.weights()
        total = sum(weights[k] * v for k, v in terms.items())
        self.opt.zero_grad(set_to_none=True)
        self.amp.backward(total)
        self.amp.step(self.opt)
        out = {"total": total.detach(), **{k: v.detach() for k, v in terms.items()}}
        pose = batch["pose"].to(dev).float().flatten(0, 1)
        out["pose_err_deg"] = pose_error_deg(coeffs.detach()[:, self.face_model.layout.slices()["rotation"]],
                                               pose).mean()  # mean over pitch, yaw, roll
        out["lan_px"] = (rendered.landmarks.detach() - landmarks).norm(dim=-1).nanmean()  # mean landmark error
        return out

    # ------------------------------------------------------------------------------------------ images
    def _grid_inputs(self) -> dict[str, torch.Tensor]:
        """Fixed samples for the image grid (first view of evenly spaced items), loaded once."""
        if self._grid_batch is None:
            n = min(self.config.grid, len(self.dataset))
            picks = np.linspace(0, len(self.dataset) - 1, n).round().astype(int)
            items = [self.dataset[int(i)] for i in picks]
            self._grid_batch = {k: torch.stack([it[k][0] for it in items]) for k in ("blurry", "target")}
        return self._grid_batch

    @torch.no_grad()
    def image_fn(self, step: int) -> dict[str, torch.Tensor]:
        """Writes RUN/samples/step-XXXXXXXX.png: rows input (blurry), render, target; returns it for TensorBoard."""
        from torchvision.utils import make_grid

        from deblur_rotate.face3d.losses import render_coefficients_image
        from deblur_rotate.files import save_png, to_uint8

        dev = self.info.device
        data = self._grid_inputs()
        blurry, target = data["blurry"].to(dev), data["target"].to(dev)
        was_training = self.E.training
        self.E.eval()
        try:
            coeffs = self.predict(blurry, self.E)
        finally:
            self.E.train(was_training)
        rendered = render_coefficients_image(self.face_model, coeffs, self.camera_matrix, self.image_size,
                                             edge_softness_px=self.config.edge_softness)
        rows = torch.cat([blurry, rendered.image.clamp(-1, 1), target]).cpu()
        grid = make_grid(rows, nrow=blurry.shape[0], padding=2, pad_value=-1.0)  # [3, H', W']
        folder = self.out / "samples"
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".step-{step:08d}.png.tmp"
        save_png(tmp, to_uint8(grid), compress_level=6)
        os.replace(tmp, folder / f"step-{step:08d}.png")
        return {"face3d/input_render_target": grid}

    # ------------------------------------------------------------------------------------------ run
    def _check_resume_config(self) -> None:
        """A clear UserError when the checkpoint to resume holds another encoder (preset or model sizes)."""
        from deblur_rotate.models.io import read_config
        from deblur_rotate.train.checkpoint import latest_checkpoint

        folder = latest_checkpoint(self.out / "checkpoints")
        if folder is None or not (folder / _NETWORK).is_dir():
            return
        saved = {k: v for k, v in read_config(folder / _NETWORK).items() if not k.startswith("_")}
        if saved != self.e_config:
            diff = sorted(k for k in set(saved) | set(self.e_config) if saved.get(k) != self.e_config.get(k))
            raise UserError(f"{folder} holds an E_3D of another configuration (differing: {', '.join(diff)}) than "
                            f"--preset {self.config.preset} with this morphable model; resume with the run's own "
                            "options or choose another --out")

    def write_final(self, folder: str | os.PathLike | None = None) -> Path:
        """Write the encoder as ``folder`` (default RUN/face3d_encoder): config.json + model.safetensors +
        face_model.json (the morphable model, camera and sizes :func:`load_face3d` needs)."""
        from deblur_rotate.files import atomic_write_json
        from deblur_rotate.models.io import save_pretrained

        folder = Path(folder) if folder is not None else self.out / "face3d_encoder"
        save_pretrained(self.E, folder)
        atomic_write_json(folder / FACE_MODEL_FILE, {
            "face_model": self.face_model_spec, "camera_matrix": self.camera_matrix.cpu().tolist(),
            "image_size": self.image_size, "input_size": self.input_size, "data": str(self.config.data)})
        return folder

    def run(self) -> dict[str, float]:
        """Train (resuming first when ``config.resume``), then write RUN/face3d_encoder/. Returns the last losses."""
        if self.config.resume:
            self._check_resume_config()
            self.trainer.resume()
        losses = self.trainer.train()
        if self.info.rank == 0:
            self.write_final()
        dist_utils.barrier()
        return losses


# ------------------------------------------------------------------------------------------------- CLI

def add_parser(stages) -> None:
    """Register ``deblur-rotate train face3d``."""
    from deblur_rotate.train.commands import add_common_options

    p = stages.add_parser(
        "face3d", help="stage 4: 3D encoder E_3D (blurry face -> 3DMM coefficients)",
        description="Train E_3D through the differentiable renderer on a SynthBMFD folder (blurry input; sharp "
                    "middle frame and its 68 landmarks as targets; pairs of views for L_mview). Writes "
                    "RUN/face3d_encoder/ at the end. Multi-GPU: launch with torchrun --nproc_per_node N.")
    p.add_argument("--preset", choices=tuple(PRESET_DEFAULTS), default="tiny",
                   help="encoder size (micro 32 px input, tiny 64, paper 256 with ResNet-50; default tiny)")
    p.add_argument("--data", required=True, type=Path, help="SynthBMFD folder (`deblur-rotate synth --out DIR`)")
    p.add_argument("--bfm", type=Path, default=None,
                   help="Basel Face Model file (01_MorphableModel.mat or BFM_model_front.mat) to use instead of "
                        "the built-in procedural model")
    p.add_argument("--bfm-expression", type=Path, default=None, help="Exp_Pca.bin (with 01_MorphableModel.mat)")
    p.add_argument("--bfm-landmarks", type=Path, default=None, help="68 landmark vertex indices of the BFM mesh")
    p.add_argument("--bfm-modes", type=int, nargs=3, metavar=("N_ID", "N_TEX", "N_EXP"), default=None,
                   help="BFM modes kept (default all; the paper uses 199 199 29)")
    p.add_argument("--m", type=int, default=32, help="blur half-window: the mean of 2m+1 frames (default 32)")
    p.add_argument("--stride", type=int, default=1, help="use every stride-th centre frame (default 1)")
    add_common_options(p, batch_help="total images per iteration, two views per instant, so even "
                                     "(default: micro 4, tiny 8, paper 90)")
    p.add_argument("--lr", type=float, default=1e-4, help="Adam learning rate (default 1e-4)")
    p.add_argument("--lambda-data", type=float, default=5.0, help="photometric L1 weight (default 5)")
    p.add_argument("--lambda-edge", type=float, default=30.0, help="edge loss weight (default 30)")
    p.add_argument("--lambda-id", type=float, default=0.5, help="identity loss weight (default 0.5; 0: off)")
    p.add_argument("--lambda-lan", type=float, default=1.0, help="landmark loss weight (default 1)")
    p.add_argument("--lambda-mview", type=float, default=0.25, help="multi-view consistency weight (default 0.25)")
    p.add_argument("--lambda-c", type=float, default=1e-4, help="coefficient regulariser weight (default 1e-4)")
    p.add_argument("--skin-weight", type=float, default=2.0, help="weight of skin pixels (default 2; 1: none)")
    p.add_argument("--image-every", type=int, default=None,
                   help="iterations between image grids (default: --checkpoint-every)")
    p.add_argument("--grid", type=int, default=8, help="faces in the input/render/target grid (default 8; 0: none)")
    p.set_defaults(func=run_face3d)


def run_face3d(args) -> int:
    config = Face3DConfig(
        preset=args.preset, data=str(args.data), out=str(args.out), bfm=args.bfm, bfm_expression=args.bfm_expression,
        bfm_landmarks=args.bfm_landmarks, bfm_modes=args.bfm_modes, m=args.m, stride=args.stride, steps=args.steps,
        batch=args.batch, lr=args.lr, lambda_data=args.lambda_data, lambda_edge=args.lambda_edge,
        lambda_id=args.lambda_id, lambda_lan=args.lambda_lan, lambda_mview=args.lambda_mview, lambda_c=args.lambda_c,
        skin_weight=args.skin_weight, checkpoint_every=args.checkpoint_every, log_every=args.log_every,
        image_every=args.image_every, grid=args.grid, seed=args.seed, device=args.device, precision=args.precision,
        workers=args.workers, resume=args.resume, progress=args.progress)
    try:
        stage = Face3DStage(config)
        losses = stage.run()
        if stage.info.rank == 0:
            terms = ", ".join(f"{k}={v:.4g}" for k, v in losses.items())
            print(f"trained {config.steps} steps ({terms}); E_3D written to {Path(config.out) / 'face3d_encoder'}")
    finally:
        dist_utils.shutdown()
    return 0

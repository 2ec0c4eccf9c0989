"""Stage 4: train the 3D encoder E_3D (paper §3.4): blurry face -> 3DMM coefficients.

E_3D (:class:`deblur_rotate.models.encoders.FaceCoefficientEncoder`) sees the BLURRY image, as at
inference. Its coefficients are rendered with the morphable model and our differentiable rasterizer in the
dataset's camera, and compared with the sharp middle frame ``targets[2]`` and its 68 landmarks; the loss
objective is eq. 3, :func:`deblur_rotate.losses.objectives.face3d_loss`, over the terms of
:mod:`deblur_rotate.losses.face3d` (the paper's weights are the defaults of :class:`Face3DConfig`)::

    L = 5 L1_mask + 30 Edge_mask + 0.5 L_id + 1 L_lan + 0.25 L_mview + 1e-4 (|alpha|^2 + |beta|^2 + |delta|^2)

Every batch holds pairs of views u != v of the same instants, so L_mview compares the identity, albedo and
expression predicted from the two views.

Data: one dataset per run, of any kind the readers of :mod:`deblur_rotate.data.readers` know (``--kind``,
default auto-detected). Mixing several datasets in one run (the paper's 2:1:1) is not supported here.

* SynthBMFD: all unordered view pairs of every instant (:class:`Face3DPairs`); the dataset's own camera
  intrinsics, ground-truth landmarks and poses (``pose_err_deg`` is logged).
* ``multiview`` (the BMFD layout, real multi-view video): the same, true view pairs of one instant
  (:class:`ViewPairs`), landmarks from ``prepare``; no 3D ground truth.
* ``images`` (FFHQ-like stills, blurred with a random motion kernel), ``300vw`` / ``video`` and ``vidtimit``:
  single view; the horizontal mirror of a sample is its second view (paper §4: "for data without multiple
  views, mirrored frames are used as the second view"), with landmarks flipped and renumbered. L_mview then
  asks a face and its mirror for the same identity, albedo and expression, exact for the left-right
  symmetric modes only (see :func:`deblur_rotate.losses.face3d.multiview_loss`).

Real data has no calibrated camera, so it is rendered with a fixed pinhole camera framed like the SynthBMFD
rig (:func:`rig_camera_matrix`): focal length ``focal_factor`` x the image side (3.5, SynthConfig's), the
principal point at the image centre, the head about 1 m away, so the image spans about 29 cm at the head.
The encoder's translation absorbs the data's own framing: an FFHQ-style crop of ``prepare`` is about 10%
tighter than a SynthBMFD frame, i.e. the same as the head at ~0.9 m. Landmarks come from the reader
(``prepare``'s cached dlib landmarks, 300VW ``.pts``); missing (NaN) points and images are left out of L_lan
and the identity term cuts its face chips along the rendered landmarks for them. Data with no landmarks at
all is refused (run ``deblur-rotate prepare`` first).

The morphable model is the procedural model SynthBMFD was rendered with (its ``index.json`` names the
sizes; for real data ``procedural_model`` / ``--model-from``, default SynthConfig's model) or, with
``--bfm``, a Basel Face Model the user holds. The encoder starts at a coefficient prior: zero modes,
frontal pose, the training data's mean lighting and translation (SynthBMFD: from its ground truth; real
data: the lighting a frontal camera of the SynthBMFD rig sees (:func:`rig_coefficient_prior`), and the mean
translation of PnP fits of the mean face to the landmarks of 16 samples, :func:`fit_translation`); each group
learned at its own scale (1 for the modes, the data's spread for lighting, pose in radians and translation in
cm). Usage::

    stage = Face3DStage(Face3DConfig(preset="tiny", data="data/synthbmfd", out="runs/e3d", steps=20_000))
    stage.run()   # RUN/checkpoints/, RUN/samples/step-XXXXXXXX.png, RUN/tb/, RUN/config.json,
                  # RUN/face3d_encoder/ (config.json + model.safetensors + face_model.json)
    Face3DStage(Face3DConfig(preset="tiny", data="data/ffhq_prepared", out="runs/e3d_ffhq")).run()  # real stills

``deblur-rotate train face3d --data DIR --out RUN`` on the command line (options: the fields of
:class:`~deblur_rotate.train.configs.Face3DConfig`).
"""
from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from deblur_rotate.errors import UserError
from deblur_rotate.face3d.loading import (
    FACE_MODEL_FILE,
    build_face_model,
    procedural_sizes,
    resize_images,
)
from deblur_rotate.train import distributed as dist_utils
from deblur_rotate.train.commands import run_stage_cli
from deblur_rotate.train.configs import config_from_args
from deblur_rotate.train.configs.common import DATA_KINDS  # the CLI's choices, re-exported
from deblur_rotate.train.configs.face3d import PRESET_DEFAULTS, Face3DConfig  # re-exported: the stage's settings
from deblur_rotate.train.face3d_data import (
    Face3DPairs,
    open_view_pairs,
    procedural_model_from,
    reader_has_landmarks,
    reader_has_poses,
)
from deblur_rotate.train.face3d_priors import (
    coefficient_prior,
    fit_translation,
    rig_camera_matrix,
    rig_coefficient_prior,
)

if TYPE_CHECKING:
    from deblur_rotate.losses.face3d import RenderedFace

__all__ = [
    "DATA_KINDS",
    "PRESET_DEFAULTS",
    "Face3DConfig",
    "Face3DStage",
    "face_model_spec",
    "run_face3d",
]

_NETWORK = "E3D"  # the network's name in checkpoints


# ------------------------------------------------------------------------------------------------- model

def face_model_spec(config: Face3DConfig, index: dict | None) -> dict:
    """JSON description of the morphable model a run uses (what :func:`build_face_model` rebuilds).

    index: the SynthBMFD ``index.json`` (its ``model`` entry holds the procedural model's sizes), or None for
    real data, which uses ``config.procedural_model`` (default: SynthConfig's model, the one
    ``deblur-rotate synth`` renders with). UserError when both are given and differ."""
    if config.bfm is None:
        if index is not None:
            sizes = procedural_sizes(index["model"], "the SynthBMFD index.json")
            if config.procedural_model is not None and \
                    procedural_sizes(config.procedural_model, "--model-from") != sizes:
                raise UserError(f"the SynthBMFD folder was rendered with the procedural model {sizes}, not "
                                f"{config.procedural_model}; drop --model-from (it is for real data)")
            return {"kind": "procedural", **sizes}
        if config.procedural_model is not None:
            return {"kind": "procedural", **procedural_sizes(config.procedural_model, "--model-from")}
        from deblur_rotate.data.synthbmfd import SynthConfig

        return {"kind": "procedural", **procedural_sizes(SynthConfig().model, "SynthConfig")}
    n_id, n_tex, n_exp = config.bfm_modes if config.bfm_modes is not None else (None, None, None)

    def resolve(p: str | None) -> str | None:
        return None if p is None else str(Path(p).resolve())

    return {"kind": "bfm", "path": resolve(config.bfm), "expression_path": resolve(config.bfm_expression),
            "landmarks_path": resolve(config.bfm_landmarks), "n_id": n_id, "n_tex": n_tex, "n_exp": n_exp}


# ------------------------------------------------------------------------------------------------- stage

class Face3DStage:
    """Builds everything for stage 4 and runs it through the shared Trainer (see the module docstring).

    Attributes after construction: ``E`` (the bare encoder on the device), ``face_model``, ``camera_matrix``
    ([3, 3] on the device), ``image_size`` (render side), ``input_size`` (encoder side), ``opt``,
    ``identity_net`` (None when lambda_id is 0), ``trainer``, ``config`` (resolved; ``kind`` and ``m`` as
    used), ``info``, ``data_kind``, ``reader`` (SynthBMFD or the real-data reader; also ``synth``),
    ``dataset`` (:class:`Face3DPairs` or :class:`ViewPairs`), ``has_pose`` (the data has ground-truth poses:
    ``pose_err_deg`` is logged).
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

        self.input_size = int(stylegan2_config(c.preset)["img_resolution"])  # what E_3D sees, as in the pipeline
        self.reader, self.dataset, camera_matrix = self._open_data()
        self.synth = self.reader  # (older name)
        self.image_size = int(self.reader.size)  # renders, targets and landmarks stay at the dataset's size
        synthetic = self.data_kind == "synthbmfd"
        self.face_model_spec = face_model_spec(c, self.reader.index if synthetic else None)
        self.face_model = build_face_model(self.face_model_spec).to(dev)
        layout = self.face_model.layout
        self.camera_matrix = camera_matrix.to(dev)  # [3, 3]

        dist_utils.seed_all(c.seed, per_rank=False)  # the same initial weights on every rank
        self.e_config = dict(n_id=layout.n_id, n_tex=layout.n_tex, n_exp=layout.n_exp,
                             **encoder_config(c.preset, "face3d"))
        self.E = FaceCoefficientEncoder(**self.e_config).to(dev).train()
        self.e_config = dict(self.E.config)  # normalised (lists, ints), as saved
        if synthetic:
            subjects = sorted({s for s, _, _ in self.reader.instants})
            offset, scale = coefficient_prior(self.reader.root, subjects, layout)
        else:
            offset, scale = rig_coefficient_prior(layout)
            translation = fit_translation(self.face_model, self._probe_landmarks(), camera_matrix)
            if translation is not None:  # the mean PnP translation of the mean face on the data's landmarks
                offset[layout.slices()["translation"]] = translation
        self.E.set_coefficient_prior(offset, scale)
        self.E_ddp = dist_utils.wrap_ddp(self.E)
        self.opt = torch.optim.Adam(self.E.parameters(), lr=c.lr)
        self.amp = MixedPrecision.from_precision(c.precision, dev)
        self.identity_net = None
        if c.lambda_id > 0:
            from deblur_rotate.models.identity import load_dlib_face_recognition

            self.identity_net = load_dlib_face_recognition(device=dev)
        dist_utils.seed_all(c.seed)  # from here on, per-rank random streams
        self._grid_batch: dict[str, torch.Tensor] | None = None

        run_config = {**asdict(c), "stage": "face3d", "world_size": info.world_size, "encoder": self.e_config,
                      "face_model": self.face_model_spec, "image_size": self.image_size,
                      "input_size": self.input_size, "camera_matrix": camera_matrix.tolist(),
                      "camera": "dataset" if synthetic else "fixed (SynthBMFD rig framing)",
                      "second_view": "true" if synthetic else self.dataset.second_view,
                      "dataset_items": len(self.dataset)}
        if not synthetic:  # how real data's start was chosen (SynthBMFD's follows from its ground truth)
            run_config["coefficient_prior"] = {"offset": offset.tolist(), "scale": scale.tolist()}
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
        """(reader, pair dataset, camera matrix [3, 3] at the reader's size); sets ``data_kind``, ``has_pose``,
        ``config.kind`` and ``config.m`` (as used). UserError for unusable data."""
        from deblur_rotate.data.readers import detect_kind
        from deblur_rotate.data.synthbmfd import SynthBMFD

        c = self.config
        if not c.data:
            raise UserError("--data is required: a SynthBMFD folder (`deblur-rotate synth --out DIR`) or real faces "
                            "(images, 300VW, the multi-view layout, VIDTIMIT; see `deblur-rotate prepare`)")
        root = Path(c.data)
        kind = detect_kind(root) if c.kind == "auto" else c.kind
        if not root.is_dir():
            raise UserError(f"dataset folder {root} does not exist")
        self.data_kind = c.kind = kind
        if kind == "synthbmfd":
            if c.focal_factor is not None:
                raise UserError("--focal-factor sets the camera of real data; a SynthBMFD folder has its own camera")
            c.m = 32 if c.m is None else c.m
            synth = SynthBMFD(root, split=c.split, m=c.m, stride=c.stride)
            subject, perf, _ = synth.instants[0]
            meta = root / subject / perf / "meta.npz"
            try:
                with np.load(meta) as data:
                    camera_matrix = torch.from_numpy(np.asarray(data["camera_matrix"], dtype=np.float32))
            except (OSError, KeyError, ValueError) as err:
                raise UserError(f"cannot read the camera intrinsics in {meta} ({err}); regenerate the dataset") \
                    from None
            self.has_pose = True
            return synth, Face3DPairs(synth), camera_matrix
        pairs = open_view_pairs(kind, root, size=self.input_size, m=c.m, stride=c.stride, seed=c.seed,
                                middle_only=True)
        reader = pairs.reader
        c.m = getattr(reader, "m", None)
        if not reader_has_landmarks(reader):
            raise UserError(f"{root} ({kind}) has no 68-point landmarks, which E_3D's landmark loss and identity "
                            f"crops need on real data: run `deblur-rotate prepare --kind {kind} --src {root} --out "
                            "DIR` (it caches dlib landmarks) and train on DIR")
        self.has_pose = reader_has_poses(reader)
        return reader, pairs, rig_camera_matrix(int(reader.size), c.focal_factor)

    def _probe_landmarks(self, samples: int = 16) -> torch.Tensor:
        """Landmarks ``[K, 68, 2]`` (NaN where unknown) of the first view of ``samples`` items spread evenly over
        the dataset (for the translation prior of real data)."""
        n = min(samples, len(self.dataset))
        picks = np.linspace(0, len(self.dataset) - 1, n).round().astype(int)
        return torch.stack([self.dataset[int(i)]["landmarks"][0] for i in picks])

    def batches(self, start_step: int) -> Iterator[dict]:
        """Batches of ``pairs_per_rank`` view pairs for iterations start_step, start_step + 1, ..."""
        c = self.config
        return dist_utils.resumable_batches(self.dataset, self.pairs_per_rank, c.seed, start_step, c.workers,
                                            self.info.device)

    # ------------------------------------------------------------------------------------------ step
    def predict(self, blurry: torch.Tensor, encoder: torch.nn.Module | None = None) -> torch.Tensor:
        """Coefficients [N, C] (float32) of blurry faces [N, 3, S, S] in [-1, 1] (resized to the encoder's size)."""
        encoder = self.E_ddp if encoder is None else encoder
        with self.amp.autocast():
            return encoder(resize_images(blurry, self.input_size)).float()

    def losses(self, coeffs: torch.Tensor, target: torch.Tensor, landmarks: torch.Tensor
               ) -> tuple[torch.Tensor, dict[str, torch.Tensor], RenderedFace]:
        """Eq. 3 for coefficients [2P, C] (pairs of views next to each other) against the sharp targets
        [2P, 3, S, S] and landmarks [2P, 68, 2] (NaN where unknown: left out of L_lan; the identity chips of an
        image without all 68 points are cut along its rendered landmarks instead); returns (the weighted
        total, every term unweighted, the RenderedFace)."""
        from deblur_rotate.losses.face3d import render_coefficients_image
        from deblur_rotate.losses.objectives import face3d_loss
        from deblur_rotate.skin import skin_weights

        c = self.config
        rendered = render_coefficients_image(self.face_model, coeffs, self.camera_matrix, self.image_size,
                                             edge_softness_px=c.edge_softness)
        skin = skin_weights(target, c.skin_weight) if c.skin_weight != 1 else None
        chips = None
        if self.identity_net is not None:
            from deblur_rotate.models.identity import chip_transforms_from_landmarks

            complete = torch.isfinite(landmarks).all(-1).all(-1)  # [2P] every point known
            points = torch.where(complete[:, None, None], landmarks, rendered.landmarks.detach())  # [2P, 68, 2]
            chips = torch.from_numpy(chip_transforms_from_landmarks(points.detach().cpu())).to(target)
        total, terms = face3d_loss(rendered, coeffs, target, landmarks, self.face_model.layout, weights=c.weights(),
                                   image_width=self.image_size, pixel_weights=skin,
                                   identity_net=self.identity_net, chip_to_image=chips)
        return total, terms, rendered

    def step_fn(self, batch: dict, step: int) -> dict[str, torch.Tensor]:
        """One Adam step on a batch of view pairs: ``blurry``/``target`` [P, 2, 3, S, S], ``landmarks``
        [P, 2, 68, 2] (NaN where unknown), ``pose`` [P, 2, 3]. Returns the total, every (unweighted) term, and
        the metrics ``lan_px`` (mean error of the known landmarks, pixels; 0 when the batch has none) and, on
        data with ground-truth poses, ``pose_err_deg`` (mean absolute pitch/yaw/roll error, degrees)."""
        from deblur_rotate.render.camera import pose_error_deg

        dev = self.info.device
        blurry = batch["blurry"].to(dev, non_blocking=True).float().flatten(0, 1)  # [2P, 3, S, S]
        target = batch["target"].to(dev, non_blocking=True).float().flatten(0, 1)
        landmarks = batch["landmarks"].to(dev).float().flatten(0, 1)  # [2P, 68, 2]
        coeffs = self.predict(blurry)  # [2P, C]
        total, terms, rendered = self.losses(coeffs, target, landmarks)
        self.opt.zero_grad(set_to_none=True)
        self.amp.backward(total)
        self.amp.step(self.opt)
        out = {"total": total.detach(), **{k: v.detach() for k, v in terms.items()}}
        if self.has_pose:
            pose = batch["pose"].to(dev).float().flatten(0, 1)
            out["pose_err_deg"] = pose_error_deg(coeffs.detach()[:, self.face_model.layout.slices()["rotation"]],
                                                   pose).mean()  # mean over pitch, yaw, roll
        err = (rendered.landmarks.detach() - landmarks).norm(dim=-1)  # [2P, 68] pixels, NaN where unknown
        known = torch.isfinite(err)
        out["lan_px"] = err.nan_to_num(0.0).sum() / known.sum().clamp_min(1)  # mean over the known points
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
        from deblur_rotate.losses.face3d import render_coefficients_image
        from deblur_rotate.train.loop import write_sample_grid

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
        grid = write_sample_grid(self.out, step, rows, nrow=blurry.shape[0])
        return {"face3d/input_render_target": grid}

    # ------------------------------------------------------------------------------------------ run
    def _check_resume_config(self) -> None:
        """A clear UserError when the checkpoint to resume holds another encoder (preset or model sizes)."""
        from deblur_rotate.train.checkpoint import resumed_config_mismatch

        mismatch = resumed_config_mismatch(self.out, _NETWORK, self.e_config)
        if mismatch is None:
            return
        folder, saved, diff = mismatch
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

def run_face3d(args) -> int:
    procedural = None if args.model_from is None else procedural_model_from(args.model_from)
    config = config_from_args(Face3DConfig, args, procedural_model=procedural)
    return run_stage_cli(Face3DStage, config, f"E_3D written to {Path(config.out) / 'face3d_encoder'}")

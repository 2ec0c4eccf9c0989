"""Stage 5: the fusion network F (paper §3.5): turn the 5 frame codes of a face to a new viewpoint.

F (:class:`deblur_rotate.models.fusion.FusionNetwork`, ``FCx`` or ``FCxR``) is trained on pairs of views
u != v of the same instant, with frozen teachers:

    z^u = E_s(the 5 sharp frames of view u)    (--input-codes sharp, default)
        = E_v(the blurry image of view u)      (--input-codes blur: what the pipeline feeds F)
    z^v = E_s(the 5 sharp frames of view v)    (the target codes)
    Δp  = R^v - R^u  (pitch, yaw, roll; radians) from E_3D on the BLURRY images of u and v (--pose-source e3d,
          as at inference) or the dataset's ground truth (--pose-source gt)

    L = mean_n min( |F(z^u, Δp) - z^v|, |F(z^u, Δp) - reverse(z^v)| )        (forward/backward ambiguity)
      + lambda_image |G.synthesis(F(z^u, Δp)) - y^v|_1                          (optional, default 0)

Every pair is used in both directions (u -> v with Δp, v -> u with -Δp) in the same batch. The L1 of the
latent term is the mean over frames, W+ entries and channels.

Data: one dataset per run (``--kind``, default auto-detected; mixing several datasets in one run is not
supported here):

* SynthBMFD: all view pairs of every instant (:class:`FusionPairs`), with ground-truth poses.
* ``multiview`` (the BMFD layout, real multi-view video): the same, true views of one instant
  (:class:`deblur_rotate.train.face3d.ViewPairs`), usually without poses.
* single-view ``images`` (stills blurred with a random motion kernel), ``300vw`` / ``video``, ``vidtimit``:
  view v is the horizontal mirror of view u (paper §4: "for data without multiple views, mirrored frames are
  used as the second view"). The target codes of the mirrored view are E_s of the mirrored sharp frames, and
  Δp comes from E_3D on the blurry image and its mirror (about (0, -2 yaw, -2 roll) for a consistent E_3D).

Data without ground-truth poses (all real data) needs ``--pose-source e3d``; ``gt`` is a UserError there.

Choices the paper leaves open, made here and written to RUN/config.json:

* The data are all unordered view pairs {u, v} of every instant (not one random pair per instant), with an
  optional horizontal mirror of both views (pose (pitch, yaw, roll) -> (pitch, -yaw, -roll)).
* F's input normalisation (``w_offset``, ``w_scale``) is set once at the start from the teacher codes E_s gives
  on ``stats_samples`` evenly spread training pairs: the mean code and the RMS deviation per element.
* Δp is wrapped to [-pi, pi). The image term compares the frames in the time order the latent term chose.
* ``--batch`` counts training samples (directed view pairs), two per instant, so it is even.
* The EMA copy of F (half-life ``ema_images``) is what RUN/fusion/ holds.

Usage::

    deblur-rotate train fusion --preset tiny --data data/synthbmfd --sharp-encoder runs/es/sharp_encoder \\
        --generator runs/es/generator --face3d-encoder runs/e3d/face3d_encoder --out runs/fusion
"""
from __future__ import annotations

import copy
import itertools
import math
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from deblur_rotate.data.blur import mirror_pose
from deblur_rotate.errors import UserError
from deblur_rotate.losses import order_invariant_latent_loss
from deblur_rotate.render.camera import wrap_angle
from deblur_rotate.train import distributed as dist_utils
from deblur_rotate.train.commands import run_stage_cli
from deblur_rotate.train.configs import config_from_args
from deblur_rotate.train.configs.fusion import PRESET_DEFAULTS, FusionConfig  # re-exported: the stage's settings

__all__ = ["PRESET_DEFAULTS", "FusionConfig", "FusionPairs", "FusionStage", "run_fusion"]

_NETWORK = "F"  # the network's name in checkpoints


# ------------------------------------------------------------------------------------------------- data

class FusionPairs(torch.utils.data.Dataset):
    """Every unordered pair of views {u, v} (u < v) of every instant of a SynthBMFD split, optionally mirrored.

    Item (leading [2] axis = the views u, v)::

        blurry   [2, 3, R, R]     in [-1, 1], the mean of 2m+1 frames
        targets  [2, 5, 3, R, R]  the 5 sharp frames of each view
        pose     [2, 3]           ground-truth (pitch, yaw, roll) of the middle frame in each camera, radians
        view     [2]              view numbers (1..V)
        mirrored []               bool: both views flipped left-right (pose mirrored too)

    A pure function of the index (item ``i`` is pair ``i // 2`` of instant ..., mirrored when ``i`` is odd
    and ``mirror`` is on).
    """

    def __init__(self,
                 dataset,               # a SynthBMFD (at the generator's resolution) with at least two views
                 mirror: bool = True,   # add left-right mirrored copies of every pair
                 ):
        if len(dataset.views) < 2:
            raise UserError("the fusion stage needs at least two views per instant; give a multi-view SynthBMFD "
                            "folder (`deblur-rotate synth --out DIR`)")
        self.dataset = dataset
        self.pairs = list(itertools.combinations(dataset.views, 2))
        self.copies = 2 if mirror else 1

    def __len__(self) -> int:
        return len(self.dataset.instants) * len(self.pairs) * self.copies

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        i, flip = divmod(int(i), self.copies)
        instant, pair = divmod(i, len(self.pairs))
        subject, perf, center = self.dataset.instants[instant]
        s = self.dataset.load_views(subject, perf, center, list(self.pairs[pair]))
        blurry, targets, pose = s["blurry"].float(), s["targets"].float(), s["pose"].float()
        if flip:
            blurry, targets, pose = blurry.flip(-1), targets.flip(-1), mirror_pose(pose)
        return {"blurry": blurry, "targets": targets, "pose": pose, "view": s["view"],
                "mirrored": torch.tensor(bool(flip))}


# ------------------------------------------------------------------------------------------------- stage

class FusionStage:
    """Builds F (with its EMA copy and optimizer), loads the frozen teachers (E_s, optional E_v, E_3D, G)
    and the pair data, and runs them through the shared Trainer. ``run()`` writes RUN/fusion/ (EMA weights).

    Attributes after construction: ``F`` (bare, on the device), ``F_ema``, ``E_s``, ``E_v`` / ``E_3D`` / ``G``
    (None when not used), ``dataset`` (:class:`FusionPairs`, or :class:`deblur_rotate.train.face3d.ViewPairs`
    for real data), ``reader`` (the SynthBMFD or real-data reader; also ``synth``), ``data_kind``,
    ``has_pose`` (the data has ground-truth poses), ``resolution``, ``opt``, ``trainer``, ``config`` (resolved;
    ``kind`` and ``m`` as used), ``info``.
    """

    def __init__(self, config: FusionConfig):
        from deblur_rotate.models.fusion import FusionNetwork, fusion_config
        from deblur_rotate.models.stylegan2 import stylegan2_config
        from deblur_rotate.train.loop import MixedPrecision, Trainer, ema_beta_for, linear_decay

        self.config = c = config.resolved()
        self.info = info = dist_utils.setup(c.device)
        if (c.batch // 2) % info.world_size:
            raise UserError(f"--batch {c.batch} holds {c.batch // 2} view pairs, which must be a multiple of the "
                            f"number of processes ({info.world_size})")
        self.pairs_per_rank = c.batch // 2 // info.world_size
        self.out = Path(c.out)
        dev = info.device

        self.amp = MixedPrecision.from_precision(c.precision, dev)
        self.f_config = fusion_config(c.preset, c.arch)
        self.resolution = int(stylegan2_config(c.preset, "generator")["img_resolution"])
        self.num_ws, self.w_dim = int(self.f_config["num_ws"]), int(self.f_config["w_dim"])
        self.G = self._load_generator() if c.generator else None
        self.E_s = self._load_teacher("encoders.sharp", c.sharp_encoder, "--sharp-encoder",
                                      "RUN/sharp_encoder of `deblur-rotate train sharp-encoder`")
        self.E_v = None
        if c.input_codes == "blur":
            self.E_v = self._load_teacher("encoders.blur", c.blur_encoder, "--blur-encoder",
                                          "RUN/blur_encoder of `deblur-rotate train blur-encoder`")
            if self.E_v.num_frames != 5:
                raise UserError(f"{c.blur_encoder}: E_v predicts {self.E_v.num_frames} frames but the targets are the "
                                "5 sharp frames of a sample; give an E_v with num_frames 5")
        self.E_3D = None
        if c.pose_source == "e3d":
            self.E_3D = self._load_teacher("encoders.face3d", c.face3d_encoder, "--face3d-encoder",
                                           "RUN/face3d_encoder of `deblur-rotate train face3d`")
            self._check_face3d_input_size(Path(c.face3d_encoder))
        self.reader, self.dataset = self._open_data()
        self.synth = self.reader  # (older name)

        dist_utils.seed_all(c.seed, per_rank=False)  # the same initial weights on every rank
        self.F = FusionNetwork(**self.f_config).to(dev).train()
        self.f_config = dict(self.F.config)  # as saved (with index_dim)
        stats = self._checkpoint_statistics() if c.resume else None  # a resumed run keeps its own
        if c.init_from and stats is None:
            self._start_from(Path(c.init_from))  # its weights and the normalisation they were trained with
        else:
            self.F.set_latent_statistics(*(stats or self.latent_statistics(c.stats_samples)))
        self.F_ema = copy.deepcopy(self.F).eval().requires_grad_(False)
        self.F_ddp = dist_utils.wrap_ddp(self.F)
        self.opt = torch.optim.Adam(self.F.parameters(), lr=c.lr, betas=(0.9, 0.999))
        dist_utils.seed_all(c.seed)  # from here on, per-rank random streams
        self._grid_batch: dict[str, torch.Tensor] | None = None

        total_batch = c.batch

        def ema_beta(step: int) -> float:
            return ema_beta_for(total_batch, c.ema_images, 0.05, step)

        run_config = {**asdict(c), "stage": "fusion", "world_size": info.world_size, "fusion": self.f_config,
                      "latent_offset_norm": float(self.F.w_offset.norm()), "latent_scale": float(self.F.w_scale),
                      "sharp_encoder_config": self.E_s.config,
                      "blur_encoder_config": None if self.E_v is None else self.E_v.config,
                      "face3d_encoder_config": None if self.E_3D is None else self.E_3D.config,
                      "generator_config": None if self.G is None else self.G.config,
                      "view_pairs": [list(p) for p in self.dataset.pairs],
                      "second_view": getattr(self.dataset, "second_view", "true"), "dataset_items": len(self.dataset)}
        run_config.pop("resume", None)
        run_config.pop("progress", None)
        grid_on = c.grid > 0
        self.trainer = Trainer(
            run_dir=self.out, networks={_NETWORK: self.F}, network_configs={_NETWORK: self.f_config},
            optimizers={_NETWORK: self.opt}, step_fn=self.step_fn, data=self.batches, total_steps=c.steps,
            checkpoint_every=c.checkpoint_every, log_every=c.log_every, ema={_NETWORK: self.F_ema},
            ema_beta=ema_beta, amp=self.amp, run_config=run_config, image_fn=self.image_fn if grid_on else None,
            image_every=c.image_every if grid_on else 0, progress=c.progress,
            lr_factor=linear_decay(c.steps, c.lr_decay))

    # ------------------------------------------------------------------------------------------ setup
    @staticmethod
    def _folder(value: str, option: str, what: str) -> Path:
        folder = Path(value)
        if not folder.is_dir():
            raise UserError(f"{option} folder {folder} not found; give the folder that holds config.json + "
                            f"model.safetensors ({what})")
        return folder

    def _load_generator(self):
        from deblur_rotate.models.io import load_pretrained
        from deblur_rotate.models.stylegan2 import preset_generator

        c = self.config
        folder = self._folder(c.generator, "--generator", "RUN/generator of `deblur-rotate train sharp-encoder`")
        G = preset_generator(c.preset, folder)
        G = load_pretrained(G, folder, self.info.device)  # UserError naming the preset on a mismatch
        return G.requires_grad_(False)

    def _load_teacher(self, kind: str, value: str, option: str, what: str) -> torch.nn.Module:
        """A frozen network (eval mode, on the device); UserError when missing or of another preset."""
        from deblur_rotate.models.io import check_codes_match, load_pretrained

        folder = self._folder(value, option, what)
        net = load_pretrained(kind, folder, self.info.device).requires_grad_(False)
        if kind != "encoders.face3d":
            check_codes_match(net, self.num_ws, self.w_dim, f"{option} {folder}", f"--preset {self.config.preset}",
                              "give the networks of one preset")
        return net

    def _check_face3d_input_size(self, folder: Path) -> None:
        """UserError when E_3D's face_model.json (written by `train face3d`) says it was trained on images of
        another size than this preset's; folders without that file are taken as they are."""
        import json

        from deblur_rotate.face3d.loading import FACE_MODEL_FILE

        path = folder / FACE_MODEL_FILE
        if not path.is_file():
            return
        try:
            size = int(json.loads(path.read_text())["input_size"])
        except (OSError, ValueError, KeyError, TypeError):
            return
        if size != self.resolution:
            raise UserError(f"--face3d-encoder {folder} was trained on {size} px images but --preset "
                            f"{self.config.preset} works at {self.resolution} px; give the E_3D of this preset")

    def _open_data(self):
        """(reader, pair dataset at the generator's resolution); sets ``data_kind``, ``has_pose``, ``config.kind``
        and ``config.m`` (as used). UserError for unusable data, ``--pose-source gt`` on data without poses and
        ``--no-mirror`` on single-view data."""
        from deblur_rotate.data.readers import detect_kind
        from deblur_rotate.data.synthbmfd import SynthBMFD
        from deblur_rotate.train.face3d_data import SINGLE_VIEW_KINDS, open_view_pairs, reader_has_poses

        c = self.config
        if not c.data:
            raise UserError("--data is required: a multi-view SynthBMFD folder (`deblur-rotate synth --out DIR`) or "
                            "real faces (images, 300VW, the multi-view layout, VIDTIMIT; see `deblur-rotate prepare`)")
        root = Path(c.data)
        kind = detect_kind(root) if c.kind == "auto" else c.kind
        if not root.is_dir():
            raise UserError(f"dataset folder {root} does not exist")
        self.data_kind = c.kind = kind
        if kind == "synthbmfd":
            c.m = 32 if c.m is None else c.m
            synth = SynthBMFD(root, split=c.split, m=c.m, size=self.resolution, stride=c.stride)
            self.has_pose = True
            return synth, FusionPairs(synth, mirror=c.mirror)
        if kind in SINGLE_VIEW_KINDS and not c.mirror:
            raise UserError(f"--no-mirror: {root} holds single-view data ({kind}), whose second view is the mirror "
                            "image (paper §4); drop --no-mirror, or train on multi-view data")
        pairs = open_view_pairs(kind, root, size=self.resolution, m=c.m, stride=c.stride, seed=c.seed,
                                mirror_copies=c.mirror)
        c.m = getattr(pairs.reader, "m", None)
        self.has_pose = reader_has_poses(pairs.reader)
        if c.pose_source == "gt" and not self.has_pose:
            raise UserError(f"--pose-source gt: {root} ({kind}) has no ground-truth head poses (only SynthBMFD and "
                            "multi-view folders with a meta.npz per performance do); use --pose-source e3d with "
                            "--face3d-encoder, which estimates Δp from the blurry images")
        return pairs.reader, pairs

    @torch.no_grad()
    def latent_statistics(self, samples: int) -> tuple[torch.Tensor, float]:
        """Mean code ``[w_dim]`` and RMS deviation per element (scalar) of E_s on the 5 sharp frames of both
        views of ``samples`` view pairs spread evenly over the dataset (deterministic)."""
        n = min(int(samples), len(self.dataset))
        idx = np.linspace(0, len(self.dataset) - 1, n).round().astype(int)
        codes = []
        for chunk in np.array_split(idx, max(1, math.ceil(n / 8))):
            targets = torch.stack([self.dataset[int(i)]["targets"] for i in chunk]).to(self.info.device)
            codes.append(self._sharp_codes(targets).reshape(-1, self.w_dim).float())
        w = torch.cat(codes)                                      # [n * 2 * 5 * num_ws, w_dim]
        offset = w.mean(0)                                        # [w_dim]
        rms = float((w - offset).square().mean().sqrt())
        return offset, rms if rms > 1e-6 else 1.0

    def _start_from(self, folder: Path) -> None:
        """Replace F's initial weights (and input normalisation) by a trained F's (fine-tuning); a resumed run
        overrides them."""
        from deblur_rotate.models.io import load_pretrained

        if not folder.is_dir():
            raise UserError(f"--init-from {folder}: folder not found; give a fusion folder "
                            "(RUN/fusion, or MODEL/fusion of a model folder)")
        load_pretrained(self.F, folder)  # UserError naming keys/shapes if its architecture differs
        self.F.train()

    def _checkpoint_statistics(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """F's input normalisation (``w_offset [w_dim]``, ``w_scale []``) in the newest checkpoint of the run
        folder, or None when there is none (or it holds no such buffers)."""
        from deblur_rotate.models.io import read_weights
        from deblur_rotate.train.checkpoint import latest_checkpoint

        folder = latest_checkpoint(self.out / "checkpoints")
        if folder is None or not (folder / _NETWORK).is_dir():
            return None
        state = read_weights(folder / _NETWORK)
        if "w_offset" not in state or "w_scale" not in state or state["w_offset"].numel() != self.w_dim:
            return None
        return state["w_offset"], state["w_scale"]

    def batches(self, start_step: int) -> Iterator[dict]:
        """Batches of ``pairs_per_rank`` view pairs for iterations start_step, start_step + 1, ..."""
        c = self.config
        return dist_utils.resumable_batches(self.dataset, self.pairs_per_rank, c.seed, start_step, c.workers,
                                            self.info.device)

    # ------------------------------------------------------------------------------------------ teachers
    @torch.no_grad()
    def _sharp_codes(self, targets: torch.Tensor) -> torch.Tensor:
        """E_s codes of sharp frames ``[..., 5, 3, R, R]`` -> ``[..., 5, num_ws, w_dim]`` (float32)."""
        lead = targets.shape[:-3]
        with self.amp.autocast():
            codes = self.E_s(targets.reshape(-1, *targets.shape[-3:]))
        return codes.float().reshape(*lead, self.num_ws, self.w_dim)

    @torch.no_grad()
    def teacher_inputs(self, batch: dict) -> dict[str, torch.Tensor]:
        """Frozen-teacher quantities of a batch of P view pairs, in both directions (2P training samples).

        Returns ``inputs [2P, 5, num_ws, w_dim]`` (codes of the source view), ``targets`` (E_s codes of the
        other view, same shape), ``delta_pose [2P, 3]`` radians (source -> other view, from the pose source),
        ``delta_pose_gt [2P, 3]`` (from the dataset; NaN without poses), ``images [2P, 5, 3, R, R]`` (the other
        view's sharp frames: for a mirrored pair, the mirrored frames) and ``source_images`` (the source view's
        sharp frames); rows 0..P-1 are u -> v, P..2P-1 v -> u.
        """
        dev = self.info.device
        blurry = batch["blurry"].to(dev, non_blocking=True).float()      # [P, 2, 3, R, R]
        frames = batch["targets"].to(dev, non_blocking=True).float()     # [P, 2, 5, 3, R, R]
        pose_gt = batch["pose"].to(dev, non_blocking=True).float()       # [P, 2, 3]
        p = blurry.shape[0]
        target_codes = self._sharp_codes(frames)                          # [P, 2, 5, num_ws, w_dim]
        if self.E_v is not None:
            with self.amp.autocast():
                source_codes = self.E_v(blurry.flatten(0, 1)).float()    # [2P, 5, num_ws, w_dim]
            source_codes = source_codes.reshape(p, 2, *source_codes.shape[1:])
        else:
            source_codes = target_codes
        if self.E_3D is not None:
            with self.amp.autocast():
                pose = self.E_3D.pose(blurry.flatten(0, 1)).float().reshape(p, 2, 3)
        else:
            pose = pose_gt
        dp = wrap_angle(pose[:, 1] - pose[:, 0])                          # [P, 3] u -> v
        dp_gt = wrap_angle(pose_gt[:, 1] - pose_gt[:, 0])

        def both(x: torch.Tensor) -> torch.Tensor:  # [P, 2, ...] -> [2P, ...]: sources u then v
            return torch.cat([x[:, 0], x[:, 1]])

        def other(x: torch.Tensor) -> torch.Tensor:  # [P, 2, ...] -> [2P, ...]: targets v then u
            return torch.cat([x[:, 1], x[:, 0]])

        return {"inputs": both(source_codes), "targets": other(target_codes), "delta_pose": torch.cat([dp, -dp]),
                "delta_pose_gt": torch.cat([dp_gt, -dp_gt]), "images": other(frames), "source_images": both(frames)}

    # ------------------------------------------------------------------------------------------ step
    def synthesize(self, ws: torch.Tensor) -> torch.Tensor:
        """Codes ``[N, T, num_ws, w_dim]`` -> frames ``[N, T, 3, R, R]`` with the frozen G (gradient flows to ws)."""
        with self.amp.autocast():
            images = self.G.synthesis(ws.flatten(0, 1), noise_mode="const").float()
        return images.reshape(*ws.shape[:2], *images.shape[1:])

    def step_fn(self, batch: dict, step: int) -> dict[str, torch.Tensor]:
        """One iteration: F on a batch of view pairs in both directions."""
        return self.fusion_step(self.teacher_inputs(batch))

    def fusion_step(self, t: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """One optimizer step of F on the teacher quantities ``t`` of :meth:`teacher_inputs`; returns the
        logged terms (scalars)."""
        from deblur_rotate.losses.objectives import fusion_loss

        c, amp = self.config, self.amp
        self.opt.zero_grad(set_to_none=True)
        with amp.autocast():
            pred = self.F_ddp(t["inputs"], t["delta_pose"]).float()      # [2P, 5, num_ws, w_dim]
        total, terms, reversed_ = fusion_loss(pred, t["targets"], lambda_image=c.lambda_image,
                                              decode=self.synthesize, target_frames=t["images"])
        amp.backward(total)
        amp.step(self.opt)
        out = {k: v.detach() for k, v in terms.items()}
        out["total"] = total.detach()
        with torch.no_grad():
            out["latent_unrotated"] = order_invariant_latent_loss(t["inputs"], t["targets"])[0].mean()  # F = identity
            out["reversed"] = reversed_.float().mean()
            deg = 180.0 / math.pi
            out["dp_abs_deg"] = t["delta_pose"].abs().mean() * deg
            out["dyaw_abs_deg"] = t["delta_pose"][:, 1].abs().mean() * deg
            if self.E_3D is not None and self.has_pose:  # E_3D's Δp against the ground truth
                out["dp_error_deg"] = wrap_angle(t["delta_pose"] - t["delta_pose_gt"]).abs().mean() * deg
        return out

    # ------------------------------------------------------------------------------------------ images
    def _grid_inputs(self) -> dict[str, torch.Tensor]:
        """A fixed set of ``grid`` (unmirrored) view pairs spread over the dataset, collated, on the device."""
        if self._grid_batch is None:
            n = self.config.grid
            idx = np.linspace(0, len(self.dataset) // self.dataset.copies - 1, n).round().astype(int)
            items = [self.dataset[int(i) * self.dataset.copies] for i in idx]
            self._grid_batch = {k: torch.stack([it[k] for it in items]).to(self.info.device)
                                for k in ("blurry", "targets", "pose")}
        return self._grid_batch

    @torch.no_grad()
    def image_fn(self, step: int) -> dict[str, torch.Tensor]:
        """RUN/samples/step-XXXXXXXX.png: per view pair (u -> v), three rows of 5 frames: view u's sharp
        frames, G(F_ema(z^u, Δp)), view v's sharp frames."""
        from deblur_rotate.train.loop import write_sample_grid

        t = self.teacher_inputs(self._grid_inputs())
        p = t["inputs"].shape[0] // 2
        with self.amp.autocast():
            rotated = self.F_ema(t["inputs"][:p], t["delta_pose"][:p]).float()
        frames = self.synthesize(rotated).clamp(-1, 1)                        # [P, 5, 3, R, R]
        rows = torch.stack([t["source_images"][:p], frames, t["images"][:p]], 1)  # [P, 3, 5, 3, R, R]
        flat = rows.reshape(-1, *frames.shape[2:]).cpu()
        grid = write_sample_grid(self.out, step, flat, nrow=frames.shape[1])
        return {"fusion/input_rotated_target": grid[None]}

    # ------------------------------------------------------------------------------------------ run
    def _check_resume_config(self) -> None:
        """A clear UserError when the checkpoint to resume holds another F (preset or architecture)."""
        from deblur_rotate.train.checkpoint import resumed_config_mismatch

        mismatch = resumed_config_mismatch(self.out, _NETWORK, self.f_config)
        if mismatch is None:
            return
        folder, saved, diff = mismatch
        raise UserError(f"{folder} holds an F of another configuration (differing: {', '.join(diff)}) than "
                        f"--preset {self.config.preset} --arch {self.config.arch}; resume with the run's own "
                        "options or choose another --out")

    def run(self) -> dict[str, float]:
        """Train (resuming first when ``config.resume``), then write RUN/fusion/. Returns the last losses."""
        from deblur_rotate.models.io import save_pretrained

        if self.config.resume:
            self._check_resume_config()
            self.trainer.resume()
        losses = self.trainer.train()
        if self.info.rank == 0:
            save_pretrained(self.F_ema, self.out / "fusion")
        dist_utils.barrier()
        return losses


# ------------------------------------------------------------------------------------------------- CLI

def run_fusion(args) -> int:
    config = config_from_args(FusionConfig, args)
    return run_stage_cli(FusionStage, config, f"F written to {Path(config.out) / 'fusion'}")

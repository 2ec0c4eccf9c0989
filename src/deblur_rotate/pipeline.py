"""Inference (paper Figure 1): one motion-blurred face -> a sharp T-frame video from the same or a new view.

Data flow (all under ``torch.no_grad``)::

    images [N, 3, R, R] in [-1, 1] (aligned faces)
      --E_v-->   codes [N, T, num_ws, w_dim]          one W+ code per sharp frame
      (refine)   codes += d, d minimising |mean_t G(codes_t + d) - image|_1  (refine.py; off unless asked)
      --E_3D-->  pose  [N, 3]                          (pitch, yaw, roll), radians
    per view (dyaw, dpitch) in degrees:
      Δp = (dpitch, dyaw, 0) in radians               (to_frontal: Δp = (dpitch, dyaw, 0) - pose)
      codes' = F(codes, Δp)                            view (0, 0) without to_frontal: codes' = codes, no F
      frames = G.synthesis(codes', noise_mode="const")  [N, V, T, 3, R, R]
      (residual) input view: frames += image - mean_t G(codes_t)  (refine.py residual; off unless asked)

A positive yaw turns the nose to the image's left and a positive pitch tilts the face about the camera's
x axis (README "Conventions"); both are changes relative to the input view, or with ``to_frontal``
relative to the frontal view (the face looking into the camera).

Model folder (format version 1)::

    MODEL/pipeline.json
        {"format_version": 1,
         "kind": "deblur-rotate",
         "preset": "tiny",                 # name of the network sizes (micro / tiny / paper / custom)
         "resolution": 64,                 # R: side of the faces in and out, pixels
         "num_frames": 5,                  # T: sharp frames E_v predicts per blurry image
         "networks": {"generator": "generator", "blur_encoder": "blur_encoder",
                      "face3d_encoder": "face3d_encoder", "fusion": "fusion"},   # role -> sub-folder
         "crop": {"method": "ffhq", "face_side": 1.0, "face_center": [0.5, 0.5], "source": "..."},
         "storage_dtype": "float32",       # or "float16": how the weights are stored (they load as fp32)
         "trained_on_synthetic_only": true,                          # optional: only synthetic faces seen
         "view_range_deg": {"yaw": [-60, 60], "pitch": [-20, 20]},   # optional: the views F was trained on
         "refine": {"steps": 20, "lr": 0.02, "per_frame": true,     # optional: default refinement (refine.py)
                    "max_start_error": 0.15, "precision": "auto", "residual": true},
         "extra": {}}                      # free-form (training runs, notes)
    MODEL/<sub-folder>/config.json + model.safetensors     (models/io.py save_pretrained / load_pretrained)

A model folder is untrusted input: :func:`deblur_rotate.model_folder.validate_model_folder` checks every
file and field of it (containment, JSON/safetensors only, each ``config.json`` against its kind's schema) before
:meth:`DeblurRotatePipeline.from_pretrained` builds anything. The two optional fields drive the warnings of
``run`` and ``serve`` (:func:`deblur_rotate.model_folder.model_warnings`, ``view_warnings``); folders without
them fall back as :func:`deblur_rotate.model_folder.training_facts` says.

``face3d_encoder`` and ``fusion`` may be missing (or null): such a model only reconstructs the input view
(``views=[(0, 0)]``, no ``to_frontal``); a fusion network without E_3D can still turn by relative angles.
The stored weights are the EMA weights of each training stage.

``crop`` says how the faces the networks were trained on are framed, so that real photos are aligned the same
way (the fields are explained in :mod:`deblur_rotate.faces`, which measures them from training landmarks with
``crop_from_landmarks``).

Real photos: :func:`deblur_rotate.images.read_image` (any jpg/png/webp/bmp/tiff, grey, palette, RGBA, 16-bit ->
8-bit RGB), then :mod:`deblur_rotate.faces`: ``prepare_image`` (dlib detection, HOG then CNN fallback, and the
alignment above; or ``aligned=True`` to just resize) and ``paste_back`` (the same-view sharp frame warped back into
the photo with a feathered mask of the face).
"""
from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from deblur_rotate.errors import UserError
from deblur_rotate.faces import DEFAULT_CROP, check_crop
from deblur_rotate.model_folder import FORMAT_VERSION, NETWORK_KINDS, PIPELINE_FILE, TrainingFacts
from deblur_rotate.refine import RefineResult, RefineSettings
from deblur_rotate.refine import refine as run_refinement

__all__ = [
    "FORMAT_VERSION",
    "NETWORK_KINDS",
    "PIPELINE_FILE",
    "DeblurRotatePipeline",
    "PipelineOutput",
    "assemble_model",
    "bundled_model_dir",
    "resolve_device",
    "sweep_views",
]

# PIPELINE_FILE, FORMAT_VERSION, NETWORK_KINDS (role -> registered kind), REQUIRED_ROLES: the model-folder format
# and its validation live in deblur_rotate.model_folder (imported above; no torch there)


# ------------------------------------------------------------------------------------------------ devices


def resolve_device(name: str | torch.device | None) -> torch.device:
    """``None`` -> cuda when available, else cpu; ``"cuda"`` without a GPU is a UserError."""
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for, but this machine has no usable CUDA device; use --device cpu")
    return device


def bundled_model_dir() -> Path:
    """Where the model shipped with the package lives (``deblur_rotate/assets/model/``; may not exist)."""
    return Path(__file__).resolve().parent / "assets" / "model"


# ------------------------------------------------------------------------------------------ model folders


def _check_parts(generator: nn.Module, blur_encoder: nn.Module, face3d_encoder: nn.Module | None,
                 fusion: nn.Module | None, where: str) -> None:
    """UserError unless the networks fit together (same W+ layout everywhere)."""
    from deblur_rotate.models.encoders import BlurEncoder, FaceCoefficientEncoder
    from deblur_rotate.models.fusion import FusionNetwork
    from deblur_rotate.models.io import check_codes_match
    from deblur_rotate.models.stylegan2 import Generator

    expected = {"generator": (generator, Generator), "blur_encoder": (blur_encoder, BlurEncoder),
                "face3d_encoder": (face3d_encoder, FaceCoefficientEncoder), "fusion": (fusion, FusionNetwork)}
    for role, (module, cls) in expected.items():
        if module is not None and not isinstance(module, cls):
            raise UserError(f"{where}: {role} must be a {cls.__name__}, got a {type(module).__name__}")
    for role, module in (("blur_encoder", blur_encoder), ("fusion", fusion)):
        if module is not None:
            check_codes_match(module, generator.num_ws, generator.w_dim, f"{where}: the {role}", "the generator",
                              "the networks come from different presets")


def _as_module(value, role: str, device: str | torch.device = "cpu") -> nn.Module:
    """A network given as a module or as a saved-network folder -> the module (on ``device``)."""
    from deblur_rotate.models.io import load_pretrained

    if isinstance(value, nn.Module):
        return value
    if isinstance(value, (str, os.PathLike)):
        return load_pretrained(NETWORK_KINDS[role], value, device)
    raise TypeError(f"{role}: expected an nn.Module or a network folder, got {type(value).__name__}")


def assemble_model(out: str | os.PathLike, *,
                   generator: nn.Module | str | os.PathLike,             # G (EMA weights): module or folder
                   blur_encoder: nn.Module | str | os.PathLike,          # E_v
                   face3d_encoder: nn.Module | str | os.PathLike | None = None,  # E_3D (needed for to_frontal)
                   fusion: nn.Module | str | os.PathLike | None = None,  # F (needed for any other view)
                   preset: str,                                          # name of the sizes, e.g. "tiny"
                   crop: dict | None = None,                             # framing (crop_from_landmarks); FFHQ
                   dtype: torch.dtype | None = None,                     # torch.float16: half-size storage
                   extra: dict | None = None,                            # free-form JSON (runs, notes)
                   overwrite: bool = False,                              # replace an existing model folder
                   trained_on_synthetic_only: bool | None = None,        # None: inferred from the runs' data
                   view_range_deg: dict | None = None,                   # {"yaw": [lo, hi], "pitch": [lo, hi]}
                   refine: RefineSettings | None = None,                 # default refinement; None: off (none written)
                   ) -> Path:
    """Write a model folder (format in the module docstring) and return its path.

    ``trained_on_synthetic_only`` and ``view_range_deg`` (the absolute views F was trained on, degrees) go to
    pipeline.json for ``run`` and ``serve`` to warn with; when not given they are inferred from the training
    runs the network folders come from (:func:`deblur_rotate.model_folder.infer_training_facts`) and left out
    when unknown.

    The folder is built in a temporary sibling and renamed into place, so ``out`` is either the complete
    new model or untouched. With ``dtype=torch.float16`` the floating-point weights are stored in half
    precision (half the size; they load back as float32). UserError when the networks do not fit together,
    ``out`` is a file, or ``out`` exists and ``overwrite`` is False.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"model output path {out} is a file; give a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise UserError(f"model folder {out} already exists and is not empty; pass overwrite=True or pick a new one")
    if dtype not in (None, torch.float32, torch.float16, torch.bfloat16):
        raise ValueError(f"dtype must be None, torch.float32, torch.float16 or torch.bfloat16, got {dtype}")
    if not isinstance(preset, str) or not preset:
        raise ValueError("preset must be a non-empty name such as 'tiny'")
    check_crop(crop)  # validate
    sources = {"generator": generator, "blur_encoder": blur_encoder, "face3d_encoder": face3d_encoder, "fusion": fusion}
    parts = {"generator": _as_module(generator, "generator"), "blur_encoder": _as_module(blur_encoder, "blur_encoder"),
             "face3d_encoder": None if face3d_encoder is None else _as_module(face3d_encoder, "face3d_encoder"),
             "fusion": None if fusion is None else _as_module(fusion, "fusion")}
    _check_parts(*parts.values(), where=f"model {out}")
    from deblur_rotate.model_folder import _valid_view_range, infer_training_facts

    inferred = infer_training_facts(blur_encoder, fusion)
    if trained_on_synthetic_only is None:
        trained_on_synthetic_only = inferred.synthetic_only
    if view_range_deg is None:
        view_range_deg = inferred.view_range_deg
    if view_range_deg is not None and not _valid_view_range(view_range_deg):
        raise ValueError("view_range_deg must be {'yaw': [lo, hi], 'pitch': [lo, hi]} in degrees, "
                         f"got {view_range_deg}")
    meta = _pipeline_meta(parts, preset, crop, dtype, extra, trained_on_synthetic_only, view_range_deg, refine)
    json.dumps(meta)  # fail on non-JSON extras before writing anything
    from deblur_rotate.files import apply_umask_mode, atomic_write_json, replace_dir

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        apply_umask_mode(tmp, folder=True)  # mkdtemp makes it 0700: give it a plain mkdir's mode
        _write_networks(tmp, parts, sources, dtype)
        atomic_write_json(tmp / PIPELINE_FILE, meta)
        replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _pipeline_meta(parts: dict, preset: str, crop: dict | None, dtype, extra: dict | None,
                   trained_on_synthetic_only: bool | None, view_range_deg: dict | None,
                   refine: RefineSettings | None) -> dict:
    """pipeline.json of :func:`assemble_model` (``parts``: role -> module or None)."""
    meta = {
        "format_version": FORMAT_VERSION,
        "kind": "deblur-rotate",
        "preset": preset,
        "resolution": int(parts["generator"].img_resolution),
        "num_frames": int(parts["blur_encoder"].num_frames),
        "networks": {role: role for role, module in parts.items() if module is not None},
        "crop": dict(DEFAULT_CROP if crop is None else crop),
        "storage_dtype": str(dtype or torch.float32).replace("torch.", ""),
        "extra": dict(extra or {}),
    }
    if trained_on_synthetic_only is not None:
        meta["trained_on_synthetic_only"] = bool(trained_on_synthetic_only)
    if view_range_deg is not None:
        meta["view_range_deg"] = {k: [float(v) for v in pair] for k, pair in view_range_deg.items()}
    if refine is not None:
        meta["refine"] = RefineSettings.from_json(refine.to_json()).to_json()
    return meta


def _write_networks(folder: Path, parts: dict, sources: dict, dtype) -> None:
    """Each network of ``parts`` (role -> module or None) as ``folder/<role>/`` (cast to ``dtype`` when given), with
    the side files (``*.json`` but config.json) of the network folder it came from, if it came from one."""
    from deblur_rotate.files import apply_umask_mode
    from deblur_rotate.models.io import save_pretrained

    for role, module in parts.items():
        if module is None:
            continue
        if dtype is not None and dtype != torch.float32:
            module = copy.deepcopy(module).to(device="cpu", dtype=dtype)  # casts floating tensors only
        save_pretrained(module, folder / role)
        source = sources[role]
        if isinstance(source, (str, os.PathLike)):  # side files of a network folder (E_3D's face_model.json)
            for side in Path(source).glob("*.json"):
                if side.name != "config.json":
                    shutil.copy2(side, folder / role / side.name)
                    apply_umask_mode(folder / role / side.name)  # not the source's mode (maybe 0600)


def _read_pipeline_json(folder: Path) -> dict:
    """The checked pipeline.json of ``folder`` (:func:`deblur_rotate.model_folder.read_pipeline_json`)."""
    from deblur_rotate.model_folder import read_pipeline_json

    return read_pipeline_json(folder)


# ------------------------------------------------------------------------------------------------ results


@dataclass
class PipelineOutput:
    """What :class:`DeblurRotatePipeline` returns (tensors on the pipeline's device)."""

    frames: torch.Tensor                 # [N, V, T, 3, R, R] generator output (+ the refinement's residual on the
    #                                      input view), about [-1, 1], not clamped
    pose: torch.Tensor | None            # [N, 3] (pitch, yaw, roll) radians from E_3D; None without E_3D
    codes: torch.Tensor                  # [N, T, num_ws, w_dim] the input-view codes (after time resampling)
    view_codes: torch.Tensor             # [N, V, T, num_ws, w_dim] the codes G rendered for each view
    views: list[tuple[float, float]] = field(default_factory=list)  # [(dyaw_deg, dpitch_deg)] per view
    to_frontal: bool = False             # views relative to the frontal pose instead of the input view
    refine: RefineResult | None = None   # what the blur-consistency refinement did per image (None: not run)


def _view_list(views: Sequence[Sequence[float]] | None) -> list[tuple[float, float]]:
    if views is None:
        return [(0.0, 0.0)]
    out = []
    for v in views:
        if len(v) != 2 or not all(math.isfinite(float(x)) for x in v):
            raise ValueError(f"a view is (dyaw_deg, dpitch_deg), two finite numbers; got {v!r}")
        out.append((float(v[0]), float(v[1])))
    if not out:
        raise ValueError("views must list at least one (dyaw_deg, dpitch_deg)")
    return out


def sweep_views(steps: int = 36, yaw_deg: float = 45.0, pitch_deg: float = 0.0) -> list[tuple[float, float]]:
    """An orbit: yaw 0 -> +yaw_deg -> 0 -> -yaw_deg -> back (a sine over ``steps`` views), fixed pitch."""
    if steps < 2:
        raise ValueError("a sweep needs at least 2 steps")
    return [(float(yaw_deg * math.sin(2 * math.pi * k / steps)), float(pitch_deg)) for k in range(steps)]


# ----------------------------------------------------------------------------------------------- pipeline


class DeblurRotatePipeline:
    """The four networks of a model folder, in eval mode on one device; no other state.

    ``pipe(images, views=[(dyaw_deg, dpitch_deg), ...])`` runs the data flow of the module docstring.
    Build it with :meth:`from_pretrained` (a model folder) or directly from modules (tests, benchmarks).
    """

    def __init__(self,
                 generator: nn.Module,                     # StyleGAN2 Generator: synthesis(ws) -> [N, 3, R, R]
                 blur_encoder: nn.Module,                  # BlurEncoder E_v: [N, 3, R, R] -> [N, T, num_ws, w_dim]
                 face3d_encoder: nn.Module | None = None,  # FaceCoefficientEncoder E_3D (pose); optional
                 fusion: nn.Module | None = None,          # FusionNetwork F (new views); optional
                 config: dict | None = None,               # the pipeline.json contents (crop, preset, ...)
                 name: str = "model",                      # how errors name this model (its folder)
                 max_batch: int = 32,                      # images per G.synthesis call (memory bound)
                 ):
        _check_parts(generator, blur_encoder, face3d_encoder, fusion, where=name)
        self.generator = generator.eval()
        self.blur_encoder = blur_encoder.eval()
        self.face3d_encoder = None if face3d_encoder is None else face3d_encoder.eval()
        self.fusion = None if fusion is None else fusion.eval()
        self.name = str(name)
        self.max_batch = int(max_batch)
        self.config = dict(config or {})
        self.config.setdefault("resolution", int(generator.img_resolution))
        self.config.setdefault("num_frames", int(blur_encoder.num_frames))
        self.config.setdefault("crop", dict(DEFAULT_CROP))
        if self.config["resolution"] != generator.img_resolution:
            raise UserError(f"{name}: {PIPELINE_FILE} says resolution {self.config['resolution']} but the generator "
                            f"renders {generator.img_resolution} px")
        if self.config["num_frames"] != blur_encoder.num_frames:
            raise UserError(f"{name}: {PIPELINE_FILE} says num_frames {self.config['num_frames']} but the blur "
                            f"encoder predicts {blur_encoder.num_frames}")
        check_crop(self.config["crop"])
        try:  # the default blur-consistency refinement of E_v's codes (off when pipeline.json has none)
            self.refine: RefineSettings = RefineSettings.from_json(self.config.get("refine"))
        except (TypeError, ValueError) as err:
            raise UserError(f"{name}: {PIPELINE_FILE}: refine: {err}") from None
        from deblur_rotate.model_folder import training_facts

        self.facts: TrainingFacts = training_facts(self.config)  # from_pretrained adds the folder's fallbacks
        self.folder: Path | None = None                           # the model folder (from_pretrained)

    # ---------------------------------------------------------------- loading

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike | None = None,
                        device: str | torch.device | None = "cpu") -> DeblurRotatePipeline:
        """Load a model folder (``None``: the model bundled with the package). UserError naming the folder
        and the problem when it is missing, unreadable or its networks do not fit: the whole folder is checked by
        :func:`deblur_rotate.model_folder.validate_model_folder` before any network is built."""
        from deblur_rotate.model_folder import validate_model_folder
        from deblur_rotate.models.io import load_pretrained
        from deblur_rotate.models.schema import ConfigError

        if folder is None:
            folder = bundled_model_dir()
            if not (folder / PIPELINE_FILE).is_file():
                raise UserError(
                    "no model is bundled with this install of deblur-rotate (deblur_rotate/assets/model/ is "
                    "missing); train one (`deblur-rotate train --help`: generator, then the encoders and fusion), "
                    "assemble it with deblur_rotate.pipeline.assemble_model, and pass --model FOLDER")
        folder = Path(folder)
        info = validate_model_folder(folder)  # every file and field, before anything is built
        meta = info.meta
        device = resolve_device(device)
        modules: dict[str, nn.Module | None] = {}
        for role, kind in NETWORK_KINDS.items():
            path = info.networks.get(role)
            if path is None:
                modules[role] = None
                continue
            try:
                modules[role] = load_pretrained(kind, path, device)
            except ConfigError:
                raise  # already worded <folder>/<net>/config.json: <field>: <what is wrong>
            except UserError as err:
                raise UserError(f"model folder {folder}: {role}: {err}") from None
        pipe = cls(modules["generator"], modules["blur_encoder"], modules["face3d_encoder"], modules["fusion"],
                   config=meta, name=f"model folder {folder}")
        pipe.facts = info.facts
        pipe.folder = folder
        return pipe

    # ---------------------------------------------------------------- facts

    @property
    def device(self) -> torch.device:
        return next(self.generator.parameters()).device

    @property
    def resolution(self) -> int:
        """R: side of the faces in and out, pixels."""
        return int(self.generator.img_resolution)

    @property
    def num_frames(self) -> int:
        """T: sharp frames E_v predicts."""
        return int(self.blur_encoder.num_frames)

    @property
    def crop(self) -> dict:
        return self.config["crop"]

    @property
    def can_rotate(self) -> bool:
        """True when the model has F (views other than the input's)."""
        return self.fusion is not None

    @property
    def has_pose(self) -> bool:
        """True when the model has E_3D (pose estimates, to_frontal)."""
        return self.face3d_encoder is not None

    def check_request(self, views: Sequence[tuple[float, float]], to_frontal: bool = False) -> None:
        """UserError when the model lacks a network the request needs (F for new views, E_3D for frontal)."""
        if to_frontal and not self.has_pose:
            raise UserError(f"{self.name} has no face3d_encoder (E_3D), so it cannot estimate the head pose for "
                            "--to-frontal; give views relative to the input (--yaw/--pitch) or use a model with E_3D")
        if (to_frontal or any(v != (0.0, 0.0) for v in views)) and not self.can_rotate:
            raise UserError(f"{self.name} has no fusion network (F): it can only reconstruct the input view; "
                            "use --yaw 0 --pitch 0 (no --to-frontal, no --sweep) or a model with F")

    # ---------------------------------------------------------------- steps

    def _images(self, images: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
        """[N, 3, H, W] or a list of [3, H, W] / [n, 3, H, W] in [-1, 1] -> [N, 3, R, R] float32 on device."""
        if not isinstance(images, torch.Tensor):
            parts = [x if x.ndim == 4 else x.unsqueeze(0) for x in images]
            if not parts:
                raise ValueError("no images given")
            images = torch.cat([p.to(self.device, torch.float32) for p in parts])
        if images.ndim != 4 or images.shape[1] != 3 or images.shape[-1] != images.shape[-2]:
            raise ValueError(f"expected square RGB images [N, 3, H, H], got {tuple(images.shape)}")
        images = images.to(self.device, torch.float32)
        if images.numel() and (images.min() < -1.05 or images.max() > 1.05):
            raise ValueError(f"images must be in [-1, 1] (got [{images.min().item():.3g}, {images.max().item():.3g}]); "
                             "use deblur_rotate.files.from_uint8 for 8-bit pixels")
        if images.shape[-1] != self.resolution:
            images = torch.nn.functional.interpolate(images, size=(self.resolution, self.resolution),
                                                     mode="bilinear", antialias=True, align_corners=False)
        return images

    def refine_settings(self, refine: RefineSettings | int | None = None, residual: bool | None = None
                        ) -> RefineSettings:
        """What :meth:`encode` does for ``refine``: None -> the model's default (``pipeline.json``), an int -> that
        many steps with the model's other settings, a RefineSettings -> itself; ``residual`` (None: as those
        settings say) turns the back-projected residual on or off (:mod:`deblur_rotate.refine`)."""
        settings = self.refine if refine is None else refine
        try:
            if not isinstance(settings, RefineSettings):
                settings = dataclasses.replace(self.refine, steps=settings)
            if residual is not None:
                settings = dataclasses.replace(settings, residual=bool(residual))
        except ValueError as err:
            raise UserError(str(err)) from None
        return settings

    @torch.no_grad()
    def encode(self, images: torch.Tensor | Sequence[torch.Tensor], refine: RefineSettings | int | None = None
               ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Aligned faces -> (codes ``[N, T, num_ws, w_dim]``, pose ``[N, 3]`` radians or None without E_3D).
        ``refine``: the blur-consistency refinement of the codes (:mod:`deblur_rotate.refine`; None: the model's
        default, an int: that many steps, 0: off)."""
        codes, pose, _report = self.encode_with_report(images, refine)
        return codes, pose

    @torch.no_grad()
    def encode_with_report(self, images: torch.Tensor | Sequence[torch.Tensor],
                           refine: RefineSettings | int | None = None
                           ) -> tuple[torch.Tensor, torch.Tensor | None, RefineResult]:
        """:meth:`encode` plus what the refinement did per image (:class:`deblur_rotate.refine.RefineResult`)."""
        x = self._images(images)
        report = run_refinement(self.generator, self.blur_encoder(x), x, self.refine_settings(refine),
                        max_batch=max(1, self.max_batch // self.num_frames))
        pose = None if self.face3d_encoder is None else self.face3d_encoder.pose(x)
        return report.codes, pose, report

    @staticmethod
    def resample_frames(codes: torch.Tensor, num_frames: int) -> torch.Tensor:
        """Codes ``[N, T, num_ws, w_dim]`` -> ``[N, num_frames, ...]`` by linear interpolation in W+ over the
        exposure (frame 1 and T are kept; 1 frame: the middle one). Unchanged when num_frames == T."""
        t = codes.shape[1]
        if num_frames < 1:
            raise ValueError(f"num_frames must be at least 1, got {num_frames}")
        if num_frames == t:
            return codes
        if num_frames == 1:
            pos = torch.tensor([(t - 1) / 2.0])
        else:
            pos = torch.linspace(0, t - 1, num_frames)
        lo = pos.floor().long().clamp(max=t - 1)
        hi = (lo + 1).clamp(max=t - 1)
        w = (pos - lo.float()).to(codes)[None, :, None, None]
        return torch.lerp(codes[:, lo.to(codes.device)], codes[:, hi.to(codes.device)], w)

    def delta_pose(self, views: Sequence[tuple[float, float]], pose: torch.Tensor | None, n: int,
                   to_frontal: bool = False) -> torch.Tensor:
        """Δp ``[N, V, 3]`` radians: (dpitch, dyaw, 0) per view, minus the pose with ``to_frontal``."""
        dp = torch.tensor([[math.radians(p), math.radians(y), 0.0] for y, p in views], device=self.device)
        dp = dp.unsqueeze(0).expand(n, -1, -1)
        if to_frontal:
            if pose is None:
                raise UserError(f"{self.name} has no face3d_encoder (E_3D): to_frontal needs the head pose")
            dp = dp - pose.to(dp).unsqueeze(1)
        return dp

    @torch.no_grad()
    def rotate(self, codes: torch.Tensor, pose: torch.Tensor | None, views: Sequence[tuple[float, float]],
               to_frontal: bool = False) -> torch.Tensor:
        """codes ``[N, T, num_ws, w_dim]`` -> per-view codes ``[N, V, T, num_ws, w_dim]`` (F where Δp is asked)."""
        views = _view_list(views)
        self.check_request(views, to_frontal)
        n = codes.shape[0]
        dp = self.delta_pose(views, pose, n, to_frontal)                           # [N, V, 3]
        out = codes.unsqueeze(1).expand(-1, len(views), -1, -1, -1)                # [N, V, T, num_ws, w_dim]
        turn = [i for i, v in enumerate(views) if to_frontal or v != (0.0, 0.0)]
        if not turn:
            return out
        turned = self.fusion(out[:, turn], dp[:, turn])                            # [N, V', T, num_ws, w_dim]
        if len(turn) == len(views):
            return turned
        out = out.clone()
        out[:, turn] = turned
        return out

    @torch.no_grad()
    def synthesize(self, ws: torch.Tensor) -> torch.Tensor:
        """``[..., num_ws, w_dim]`` -> images ``[..., 3, R, R]``, deterministic noise, in chunks of max_batch."""
        lead = ws.shape[:-2]
        flat = ws.reshape(-1, *ws.shape[-2:])
        chunks = [self.generator.synthesis(flat[i:i + self.max_batch], noise_mode="const")
                  for i in range(0, flat.shape[0], self.max_batch)]
        images = torch.cat(chunks) if chunks else flat.new_zeros(0, 3, self.resolution, self.resolution)
        return images.reshape(*lead, *images.shape[1:])

    @torch.no_grad()
    def __call__(self, images: torch.Tensor | Sequence[torch.Tensor],
                 views: Sequence[Sequence[float]] | None = ((0.0, 0.0),),
                 num_frames: int | None = None, to_frontal: bool = False,
                 refine: RefineSettings | int | None = None) -> PipelineOutput:
        """Aligned blurry faces ``[N, 3, R, R]`` in [-1, 1] (or a list of them; other square sizes are resized)
        -> sharp frames for every view (``views``: (dyaw_deg, dpitch_deg) pairs, relative to the input view,
        or to the frontal view with ``to_frontal``). ``num_frames`` (default T) resamples the codes in time;
        ``refine`` as in :meth:`encode`."""
        views = _view_list(views)
        self.check_request(views, to_frontal)
        codes, pose, report = self.encode_with_report(images, refine)
        codes = self.resample_frames(codes, num_frames or self.num_frames)
        view_codes = self.rotate(codes, pose, views, to_frontal)
        frames = self.add_residual(self.synthesize(view_codes), report, views, to_frontal)
        return PipelineOutput(frames=frames, pose=pose, codes=codes, view_codes=view_codes, views=views,
                              to_frontal=to_frontal, refine=report)

    @staticmethod
    def add_residual(frames: torch.Tensor, report: RefineResult | None, views: Sequence[Sequence[float]],
                     to_frontal: bool = False) -> torch.Tensor:
        """Rendered ``frames [N, V, T, 3, R, R]`` of ``views`` with the refinement's back-projected residual added
        to the input view's (Δp = 0, not ``to_frontal``; :mod:`deblur_rotate.refine`); the others unchanged."""
        if report is None or report.residual is None or to_frontal:
            return frames
        same = [i for i, v in enumerate(_view_list(views)) if v == (0.0, 0.0)]
        if not same:
            return frames
        frames = frames.clone()
        frames[:, same] = report.add_residual(frames[:, same].flatten(1, 2)).view_as(frames[:, same])
        return frames

    @torch.no_grad()
    def sweep(self, codes: torch.Tensor, pose: torch.Tensor | None, views: Sequence[tuple[float, float]],
              to_frontal: bool = False) -> torch.Tensor:
        """An orbit video: step k shows view k at frame t_k, time running back and forth over the exposure
        (0, 1, .., T-1, T-2, .., 1, 0, ..). Every step goes through F, also at Δp = 0, so the orbit is smooth.
        codes ``[N, T, num_ws, w_dim]`` -> ``[N, K, 3, R, R]``."""
        views = _view_list(views)
        if not self.can_rotate:
            raise UserError(f"{self.name} has no fusion network (F): it cannot render a sweep of views")
        self.check_request(views, to_frontal)
        t = codes.shape[1]
        cycle = list(range(t)) + list(range(t - 2, 0, -1)) or [0]
        order = torch.tensor([cycle[k % len(cycle)] for k in range(len(views))], device=codes.device)
        dp = self.delta_pose(views, pose, codes.shape[0], to_frontal)                  # [N, K, 3]
        return self.synthesize(self.fusion(codes[:, order], dp))                       # [N, K, 3, R, R]

"""Priors and rigid fits for E_3D's training: the coefficient prior of a SynthBMFD split (or of the rig's own
performances, for real data), the fixed camera real data is rendered with (framed like the SynthBMFD rig), and
least-squares fits of pose and translation to 68 landmarks.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from deblur_rotate.errors import UserError

__all__ = ["coefficient_prior", "fit_rigid_pose", "fit_translation", "rig_camera_matrix", "rig_coefficient_prior"]


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
    return _prior_from_tails(np.concatenate(tails), layout)


def _prior_from_tails(tail: np.ndarray, layout) -> tuple[torch.Tensor, torch.Tensor]:
    """(offset [C], scale [C]) float32 from example coefficient tails ``[K, 33]`` = light (27) | rotation (3)
    radians | translation (3) cm: see :func:`coefficient_prior` for the rules."""
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


def rig_camera_matrix(size: int, focal_factor: float | None = None) -> torch.Tensor:
    """The fixed pinhole camera ``[3, 3]`` real data is rendered with (its own camera is unknown): the SynthBMFD
    rig's framing, focal length ``focal_factor`` x ``size`` pixels (default ``SynthConfig.focal_factor`` = 3.5;
    the rig's head is ~1 m away, so a ``size``-pixel image spans ~29 cm there) and the principal point at the
    image centre ((size - 1) / 2, pixel centres at integers)."""
    from deblur_rotate.data.synthbmfd import SynthConfig
    from deblur_rotate.render.camera import intrinsics

    factor = SynthConfig.focal_factor if focal_factor is None else float(focal_factor)
    return intrinsics(size * factor, size)


def rig_coefficient_prior(layout, performances: int = 16, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """E_3D's starting point and per-coefficient step for real data (no 3D ground truth): the coefficient tails
    a camera straight in front of the SynthBMFD rig would see over ``performances`` sampled SynthBMFD
    performances (their head motion, translation and world lighting; nothing is rendered).

    layout: the :class:`~deblur_rotate.face3d.model.CoeffLayout` in use. Returns (offset [C], scale [C]) as
    :func:`coefficient_prior`: offset zero for the modes and the rotation, the mean lighting, and the
    translation of the rig's head seen from 1 m (about (0, -3, 103) cm); the scales are the spreads of the
    sampled lighting, rotation (radians) and translation (cm), with the same floors. Deterministic.
    """
    from deblur_rotate.data.motion import MotionConfig, sample_performance
    from deblur_rotate.data.synthbmfd import SynthConfig, _head_pivot, _rig_target
    from deblur_rotate.render.camera import euler_to_matrix

    config = SynthConfig()
    pivot = _head_pivot().double()  # [3] cm, the point the head turns about (model frame)
    camera_t = torch.tensor([0.0, 0.0, config.distance_cm], dtype=torch.float64) - \
        torch.tensor(_rig_target(), dtype=torch.float64)  # frontal camera: p_cam = p_world + camera_t
    tails = []
    for k in range(performances):
        perf = sample_performance(np.random.default_rng([seed, k]), config.num_frames, config.fps, 10,
                                  MotionConfig(), blink_mode=None)
        rotation = torch.from_numpy(perf.rotation).double()  # [T, 3] radians
        head_t = pivot - euler_to_matrix(rotation) @ pivot + torch.from_numpy(perf.translation).double()  # [T, 3]
        tails.append(np.concatenate([perf.light, perf.rotation, (head_t + camera_t).numpy()], 1))
    return _prior_from_tails(np.concatenate(tails).astype(np.float64), layout)


def fit_rigid_pose(face_model, landmarks: torch.Tensor, camera_matrix: torch.Tensor, iterations: int = 40
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per image, the rotation and translation that put the mean face's 68 landmarks on ``landmarks`` (a PnP
    fit: least squares of the reprojection error in pixels over the finite points, L-BFGS from a frontal
    start whose translation comes from a linear solve; identity and expression stay at the mean).

    face_model: the :class:`~deblur_rotate.face3d.model.MorphableModel`; landmarks: ``[K, 68, 2]`` (u, v)
    pixels, NaN where unknown; camera_matrix: ``[3, 3]``. Returns (rotation ``[K, 3]`` (pitch, yaw, roll)
    radians, translation ``[K, 3]`` cm, fitted ``[K]`` bool: at least 6 finite points), float32 on the CPU.
    """
    from deblur_rotate.render.camera import euler_to_matrix, project, transform

    pts = torch.as_tensor(landmarks, dtype=torch.float64).detach().cpu().reshape(-1, 68, 2)  # [K, 68, 2]
    num = pts.shape[0]
    model = face_model.mean_shape[face_model.landmark_indices].detach().double().cpu()  # [68, 3] model frame, cm
    k = torch.as_tensor(camera_matrix, dtype=torch.float64).detach().cpu()
    valid = torch.isfinite(pts).all(-1)  # [K, 68]
    fitted = valid.sum(-1) >= 6  # [K]
    target = pts.nan_to_num(0.0)
    # start: frontal, with the translation of the linear solve of u (Z + tz) - cx (Z + tz) = f (X + tx) per image
    start = torch.zeros(num, 3, dtype=torch.float64)
    start[:, 2] = 100.0
    for i in torch.nonzero(fitted).flatten().tolist():
        d = pts[i, valid[i]] - k[:2, 2]  # [P, 2]
        xyz = model[valid[i]]
        a = torch.zeros(2 * d.shape[0], 3, dtype=torch.float64)
        a[: d.shape[0], 0], a[d.shape[0]:, 1] = k[0, 0], k[1, 1]
        a[:, 2] = -torch.cat([d[:, 0], d[:, 1]])
        b = torch.cat([d[:, 0] * xyz[:, 2] - k[0, 0] * xyz[:, 0], d[:, 1] * xyz[:, 2] - k[1, 1] * xyz[:, 1]])
        t = torch.linalg.lstsq(a, b[:, None]).solution[:, 0]
        if bool(torch.isfinite(t).all()) and float(t[2] + xyz[:, 2].mean()) > 1.0:
            start[i] = t
    angles = torch.zeros(num, 3, dtype=torch.float64, requires_grad=True)
    shift = torch.zeros(num, 3, dtype=torch.float64, requires_grad=True)  # translation change in 10 cm units
    opt = torch.optim.LBFGS([angles, shift], lr=1.0, max_iter=iterations, line_search_fn="strong_wolfe")
    weight = valid.to(torch.float64)[..., None]  # [K, 68, 1]

    def closure() -> torch.Tensor:
        opt.zero_grad()
        cam = transform(model.expand(num, -1, -1), euler_to_matrix(angles), start + 10.0 * shift)
        err = ((project(cam, k) - target).square() * weight).sum() / weight.sum().clamp_min(1.0)
        err.backward()
        return err

    with torch.enable_grad():
        opt.step(closure)
    return angles.detach().float(), (start + 10.0 * shift).detach().float(), fitted


def fit_translation(face_model, landmarks: torch.Tensor, camera_matrix: torch.Tensor) -> torch.Tensor | None:
    """The mean translation ``[3]`` (cm, camera frame) of the faces with ``landmarks [K, 68, 2]`` (pixels, NaN
    where unknown) seen by ``camera_matrix [3, 3]``: the mean over the images of :func:`fit_rigid_pose`, or
    None when no image has 6 finite points. Used as E_3D's starting translation on real data."""
    _, translation, fitted = fit_rigid_pose(face_model, landmarks, camera_matrix)
    if not bool(fitted.any()):
        return None
    t = translation[fitted].mean(0)
    return t if bool(torch.isfinite(t).all()) else None

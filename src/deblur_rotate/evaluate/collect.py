"""The measuring pass of the evaluation: every evaluated instant through the model, the baselines and dlib.

:func:`collect` loads each instant (all views), encodes it once and hands it to one function per table
(``_same_view_sample`` for Table 1, ``_novel_views`` + ``_table3_sample`` / ``_table4_sample`` /
``_table5_sample``, ``_identity_sample`` for Table 2), which store per-sample figures in a :class:`FigureStore`;
:mod:`deblur_rotate.evaluate.tables` reduces them to tables. Images ``[..., 3, R, R]`` in [-1, 1] at the model's
resolution R; angles radians; landmarks pixels of R x R images.
"""
from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from deblur_rotate.evaluate.baselines import texture_warp_rotate
from deblur_rotate.evaluate.inputs import Resources
from deblur_rotate.evaluate.metrics import detect_landmarks, face_descriptors, landmark_error, psnr, ssim
from deblur_rotate.files import to_uint8
from deblur_rotate.refine import RefineResult
from deblur_rotate.render.camera import pose_error_deg, wrap_angle

__all__ = ["CASCADE_LABEL", "IDENTITY_ANGLES_DEG", "FigureStore", "collect", "novel_view_variants", "quantize"]

CASCADE_LABEL = "cascade (DirectDeblurNet + texture warp)"  # Table 5's row name of the cascade baseline
IDENTITY_ANGLES_DEG = (-60.0, -45.0, -30.0, 30.0, 45.0, 60.0)  # Table 2's yaw changes


def quantize(images: torch.Tensor) -> torch.Tensor:
    """Clamp to [-1, 1] and round to 8 bits, as if saved as PNG; same shape and device."""
    from deblur_rotate.files import from_uint8, to_uint8

    return from_uint8(to_uint8(images)).to(images.device)


def _scale_camera(camera: torch.Tensor, from_size: int, to_size: int) -> torch.Tensor:
    """Intrinsics ``[3, 3]`` of a from_size image -> the same field of view at to_size (pixel centres at integers)."""
    from deblur_rotate.render.rasterizer import supersample_camera

    return supersample_camera(camera, to_size / from_size) if to_size != from_size else camera


class FigureStore:
    """Per-instant figures, concatenated along dim 0 at the end."""

    def __init__(self):
        self.data: dict[str, list] = defaultdict(list)

    def add(self, key: str, value) -> None:
        self.data[key].append(value.detach().cpu() if isinstance(value, torch.Tensor) else value)

    def cat(self, key: str) -> torch.Tensor:
        return torch.cat(self.data[key]) if self.data.get(key) else torch.zeros(0)

    def flat(self, key: str) -> list:
        return [x for part in self.data.get(key, []) for x in (part if isinstance(part, list) else [part])]


def novel_view_variants(res: Resources, have_pose: bool) -> list[tuple[str, torch.nn.Module, str]]:
    """(label, fusion network, Δp source 'gt' | 'e3d') of the novel-view reconstructions."""
    out = []
    if res.pipe.fusion is not None:
        out.append((f"ours {res.pipe.fusion.arch_name} (model F)", res.pipe.fusion, "gt"))
    if res.fc3 is not None:
        out.append((f"ours {res.fc3.arch_name} (--fc3)", res.fc3, "gt"))
    if res.pipe.fusion is not None and have_pose:
        out.append((f"ours {res.pipe.fusion.arch_name} (model F), Δp from E_3D", res.pipe.fusion, "e3d"))
    return out


@dataclass
class _Instant:
    """One evaluated instant, every view: what the per-table measurements below share."""

    subject: str
    perf: str
    center: int
    blurry: torch.Tensor         # [V, 3, R, R] in [-1, 1]
    targets: torch.Tensor        # [V, 5, 3, R, R] (PNG frames: already 8-bit)
    gt_lm: torch.Tensor          # [V, 5, 68, 2] projected landmarks, pixels at R
    pose: torch.Tensor           # [V, 3] radians
    codes: torch.Tensor          # [V, 5, num_ws, w_dim] E_v's codes (refined when the model refines)
    refine: RefineResult         # what the refinement did per view (its residual goes onto the same-view frames)
    est_pose: torch.Tensor | None  # [V, 3] E_3D's pose, or None
    iv: int                      # index of the input view
    others: list[int]            # indices of the other views
    dp_gt: torch.Tensor          # [K, 3] ground-truth Δp input view -> each other view


@torch.no_grad()
def collect(res: Resources, tables: Sequence[int], figure_instants: int = 3,
            progress: bool = True) -> tuple[FigureStore, list[dict]]:
    """Run the networks and detectors over the evaluated instants; per-sample figures for ``tables``.

    Returns the store of figures (the keys the ``_table*_sample`` functions write) and the Figure-5 samples.
    """
    from tqdm.auto import tqdm

    pipe, ds, dev = res.pipe, res.dataset, res.device
    tables = set(tables)
    store, figures = FigureStore(), []
    views = res.views
    iv = views.index(res.input_view)
    others = [i for i in range(len(views)) if i != iv]
    other_views = torch.tensor([views[i] for i in others])
    variants = novel_view_variants(res, pipe.face3d_encoder is not None) if tables & {2, 3, 4, 5} else []
    main_label = variants[0][0] if variants else None
    central = [views.index(v) for v in res.pairs[-1]]  # the gallery views of Table 2
    camera = None
    if res.face3d is not None:
        camera = _scale_camera(res.face3d.camera_matrix.to(dev), res.face3d.image_size, res.resolution)

    for subject, perf, center in tqdm(res.instants, desc="evaluate", unit="instant", disable=not progress):
        s = ds.load_views(subject, perf, center, views)
        blurry, pose = s["blurry"].to(dev), s["pose"].to(dev)
        codes, est_pose, refined = pipe.encode_with_report(blurry)
        x = _Instant(subject, perf, center, blurry, s["targets"].to(dev), s["target_landmarks"], pose, codes,
                     refined, est_pose, iv, others, wrap_angle(pose[others] - pose[iv]))
        store.add("dyaw_deg", torch.rad2deg(x.dp_gt[:, 1]))
        store.add("other_views", other_views)
        recon, recon_lm = _same_view_sample(store, res, x, tables)
        recon_iv = recon[0 if 1 not in tables else iv]                       # [5, 3, R, R]
        novel = _novel_views(store, res, x, variants, main_label, tables)
        novel_lm = _table3_sample(store, res, x, novel) if 3 in tables else {}
        if 4 in tables:
            _table4_sample(store, res, x, camera, novel[main_label], novel_lm.get(main_label))
        if 5 in tables:
            _table5_sample(store, res, x, camera, novel[main_label], recon_iv)
        if 2 in tables:
            _identity_sample(store, res, variants, codes[iv, 2], recon_iv[2], x.targets, x.gt_lm, pose, iv, central,
                             subject, detect_landmarks, face_descriptors)
        if len(figures) < figure_instants:
            figures.append(_figure_sample(res, x.blurry[iv], recon_iv, recon_lm[iv] if recon_lm is not None else None,
                                          novel.get(main_label), novel_lm.get(main_label), x.targets, x.dp_gt,
                                          others, subject, perf, center, detect_landmarks, to_uint8))
    return store, figures


def _lm_err(pred: torch.Tensor, gt: torch.Tensor, size: int) -> torch.Tensor:
    """Per-point landmark error in pixels ``[...]`` of ``pred`` against ``gt`` (both ``[..., 68, 2]``)."""
    return landmark_error(pred, gt.to(pred), size).pixels


def _same_view_sample(store: FigureStore, res: Resources, x: _Instant, tables: set[int]):
    """Same-view reconstructions (no F): every view for Table 1 (whose figures it stores), else the input view
    only. Returns (frames ``[V', 5, 3, R, R]``, dlib landmarks ``[V, 5, 68, 2]`` or None without Table 1)."""
    r = res.resolution
    recon_idx = list(range(len(res.views))) if 1 in tables else [x.iv]
    frames = res.pipe.synthesize(x.codes[recon_idx])                       # [V', 5, 3, R, R]
    if x.refine.residual is not None:  # the refinement's residual, as the pipeline adds it to the input view
        frames = frames + x.refine.residual[recon_idx].to(frames)[:, None]
    recon = quantize(frames)
    if 1 not in tables:
        return recon, None
    recon_lm = detect_landmarks(recon).landmarks                          # [V, 5, 68, 2] (NaN: no face)
    gt_det = detect_landmarks(x.targets).landmarks                        # [V, 5, 68, 2]
    store.add("t1_views", torch.tensor(res.views))
    store.add("t1_proj_fwd", _lm_err(recon_lm, x.gt_lm, r))
    store.add("t1_proj_bwd", _lm_err(recon_lm.flip(1), x.gt_lm, r))
    store.add("t1_det_fwd", _lm_err(recon_lm, gt_det, r))
    store.add("t1_det_bwd", _lm_err(recon_lm.flip(1), gt_det, r))
    store.add("t1_detector", _lm_err(gt_det, x.gt_lm, r))
    store.add("t1_psnr_fwd", psnr(recon, x.targets))                       # [V, 5]
    store.add("t1_psnr_bwd", psnr(recon.flip(1), x.targets))
    store.add("t1_blurry_psnr", psnr(quantize(x.blurry)[:, None].expand_as(x.targets), x.targets))  # [V, 5]
    return recon, recon_lm


def _novel_views(store: FigureStore, res: Resources, x: _Instant, variants, main_label: str | None,
                 tables: set[int]) -> dict[str, torch.Tensor]:
    """The input view turned to every other view, ``{label: [K, 5, 3, R, R]}`` per variant that the tables
    need (Tables 3-5; Table 3 every variant, the others the main one)."""
    novel: dict[str, torch.Tensor] = {}
    if not (tables & {3, 4, 5} and variants):
        return novel
    codes, others = x.codes, x.others
    for label, net, source in variants:
        if (source == "e3d" or label != main_label) and 3 not in tables:
            continue
        dp = x.dp_gt if source == "gt" else wrap_angle(x.est_pose[others] - x.est_pose[x.iv])
        turned = net(codes[x.iv].expand(len(others), *codes.shape[1:]), dp)    # [K, 5, num_ws, w_dim]
        novel[label] = quantize(res.pipe.synthesize(turned))
        if source == "e3d":
            store.add("t3_dp_e3d_err_deg", pose_error_deg(dp, x.dp_gt))
    return novel


def _table3_sample(store: FigureStore, res: Resources, x: _Instant, novel: dict) -> dict[str, torch.Tensor]:
    """Table 3: dlib on every variant's novel views against the target views' projected landmarks; returns the
    detected landmarks ``{label: [K, 5, 68, 2]}``."""
    novel_lm = {}
    for label, frames in novel.items():
        lm = detect_landmarks(frames).landmarks                          # [K, 5, 68, 2]
        novel_lm[label] = lm
        store.add(f"t3_fwd/{label}", _lm_err(lm, x.gt_lm[x.others], res.resolution))
        store.add(f"t3_bwd/{label}", _lm_err(lm.flip(1), x.gt_lm[x.others], res.resolution))
    return novel_lm


def _table4_sample(store: FigureStore, res: Resources, x: _Instant, camera, ours: torch.Tensor,
                   ours_lm: torch.Tensor | None) -> None:
    """Table 4: pose and landmark error of the texture warp of the sharp middle frame against ours (middle frame of
    ``ours [K, 5, 3, R, R]``; ``ours_lm``: its Table-3 landmarks, or None)."""
    bundle, others, r = res.face3d, x.others, res.resolution
    rot = bundle.face_model.layout.slices()["rotation"]
    ours_mid = ours[:, 2]                                                # [K, 3, R, R]
    ours_lm = ours_lm[:, 2] if ours_lm is not None else detect_landmarks(ours_mid).landmarks
    sharp = x.targets[x.iv, 2]                                           # [3, R, R]
    coeffs = bundle.predict(sharp[None]).expand(len(others), -1)          # [K, C]
    warp = quantize(texture_warp_rotate(sharp.expand(len(others), -1, -1, -1), coeffs, bundle.face_model,
                                        camera, x.dp_gt))
    warp_lm = detect_landmarks(warp).landmarks                           # [K, 68, 2]
    gt_mid = x.gt_lm[others, 2]                                          # [K, 68, 2]
    true_pose = x.pose[others]
    store.add("t4_warp_lm", _lm_err(warp_lm, gt_mid, r))
    store.add("t4_ours_lm", _lm_err(ours_lm, gt_mid, r))
    store.add("t4_warp_pose", pose_error_deg(bundle.predict(warp)[:, rot], true_pose))
    store.add("t4_ours_pose", pose_error_deg(bundle.predict(ours_mid)[:, rot], true_pose))
    store.add("t4_ref_pose", pose_error_deg(bundle.predict(x.targets[others, 2])[:, rot], true_pose))


def _table5_sample(store: FigureStore, res: Resources, x: _Instant, camera, ours: torch.Tensor,
                   recon_iv: torch.Tensor) -> None:
    """Table 5: PSNR / SSIM against the target views' 5 frames of ours (``[K, 5, 3, R, R]``), the blurry input,
    ours without rotation (``recon_iv [5, 3, R, R]``) and, with a baseline and E_3D, the cascade."""
    bundle, others, r, iv = res.face3d, x.others, res.resolution, x.iv
    gt_frames = x.targets[others]                                        # [K, 5, 3, R, R]
    k = len(others)
    methods = {"ours": ours,
               "blurry input (trivial)": quantize(x.blurry[iv]).expand(k, 5, -1, -1, -1),
               "ours without rotation": recon_iv.expand(k, -1, -1, -1, -1)}
    if res.baseline is not None and bundle is not None:
        deblurred = quantize(res.baseline(x.blurry[iv:iv + 1]))[0]        # [5, 3, R, R]
        coeffs = bundle.predict(deblurred)                               # [5, C]
        rotated = texture_warp_rotate(deblurred.repeat(k, 1, 1, 1), coeffs.repeat(k, 1),
                                      bundle.face_model, camera, x.dp_gt.repeat_interleave(5, 0))
        methods[CASCADE_LABEL] = quantize(rotated).reshape(k, 5, 3, r, r)
    for name, pred in methods.items():
        for metric_name, metric in (("psnr", psnr), ("ssim", ssim)):
            store.add(f"t5_{metric_name}_fwd/{name}", metric(pred, gt_frames))
            store.add(f"t5_{metric_name}_bwd/{name}", metric(pred.flip(1), gt_frames))


def _identity_sample(store: FigureStore, res: Resources, variants, code_mid: torch.Tensor, frontal: torch.Tensor,
                     targets: torch.Tensor, gt_lm: torch.Tensor, pose: torch.Tensor, iv: int, central: list[int],
                     subject: str, detect_landmarks: Callable, face_descriptors: Callable) -> None:
    """Table 2 figures of one instant: descriptors of the frontal and rotated reconstructions (middle frame),
    of the ground-truth frames nearest each angle, and the gallery entries (central views' middle frames)."""
    pipe, dev = res.pipe, res.device
    angles = torch.tensor([[0.0, math.radians(a), 0.0] for a in IDENTITY_ANGLES_DEG], device=dev)  # [A, 3]

    def desc(images):
        return face_descriptors(images, detect_landmarks(images).landmarks.to(images.device)).cpu()

    store.add("t2_subject", [subject])
    store.add("t2_frontal", desc(frontal[None]))                                     # [1, 128]
    for label, net, source in variants:
        if source != "gt":
            continue
        turned = net(code_mid.expand(len(angles), -1, -1), angles)                   # [A, num_ws, w_dim]
        store.add(f"t2_rot/{label}", desc(quantize(pipe.synthesize(turned)))[None])   # [1, A, 128]
    # ground truth: the view whose true yaw change from the input view is nearest each angle
    dyaw = torch.rad2deg(wrap_angle(pose[:, 1] - pose[iv, 1])).cpu()                       # [V]
    dyaw[iv] = float("inf")
    nearest = [int((dyaw - a).abs().argmin()) for a in IDENTITY_ANGLES_DEG]
    store.add("t2_gt_views", torch.tensor([[res.views[i] for i in nearest]]))
    store.add("t2_gt_dyaw", dyaw[nearest][None])
    store.add("t2_gt_frontal", desc(targets[iv, 2][None]))
    store.add("t2_gt_rot", desc(targets[nearest, 2])[None])                           # [1, A, 128]
    gallery = face_descriptors(targets[central, 2], gt_lm[central, 2].to(dev)).cpu()   # projected landmarks
    store.add("t2_gallery", gallery)
    store.add("t2_gallery_labels", [subject] * len(central))


def _figure_sample(res: Resources, blurry, recon, recon_lm, novel, novel_lm, targets, dp_gt, others, subject, perf,
                   center, detect_landmarks, to_uint8) -> dict:
    """uint8 images and dlib landmarks (frames 1 and 5) for one Figure-5 block."""
    def first_last(frames, lm):
        if lm is None:
            lm = detect_landmarks(frames[[0, -1]]).landmarks
        else:
            lm = lm[[0, -1]]
        return [None if torch.isnan(x).any() else x.numpy() for x in lm]

    sample = {"label": f"{subject}/{perf} frame {center}", "input_view": res.input_view,
              "blurry": to_uint8(blurry), "recon": to_uint8(recon), "recon_landmarks": first_last(recon, recon_lm),
              "gt_input": to_uint8(targets[res.views.index(res.input_view)])}
    if novel is not None:
        dyaw = torch.rad2deg(dp_gt[:, 1]).cpu()
        j = int((dyaw.abs() - 45.0).abs().argmin())  # the view turned nearest 45 degrees
        sample.update({"view": res.views[others[j]], "dyaw_deg": float(dyaw[j]), "novel": to_uint8(novel[j]),
                       "novel_landmarks": first_last(novel[j], None if novel_lm is None else novel_lm[j]),
                       "gt_view": to_uint8(targets[others[j]])})
    return sample

"""The paper's tables (§4) on a SynthBMFD split, for one model folder and the baselines.

One pass over the evaluated instants (subject, performance, centre frame) collects every figure the
requested tables need; :func:`build_tables` then reduces them to :class:`Table` objects (rows x columns of
``{"mean", "n", "missing"}`` cells) that :mod:`deblur_rotate.evaluate.report` writes as Markdown, CSV and
JSON. Usage::

    result = evaluate(EvaluateOptions(data="data/synthbmfd", out="report", limit=50))
    for table in result.tables: ...

The tables (V views, input view iv = the nearest-frontal view, 4 on the 8-view rig):

1. same-view landmark error: every view's blurry image -> E_v -> G (no F), dlib's 68 points on the 5
   generated frames against SynthBMFD's projected landmarks and against dlib on the ground-truth frames;
   the detector's own error (dlib on ground truth vs projection) is a row of its own.
2. identity agreement: the blurry iv image reconstructed without rotation ("frontal") and turned by
   Δp = (0, ±30/45/60°, 0) with F (and the --fc3 network); nearest-identity classification in dlib-descriptor
   space against a gallery of the sharp middle frames of the central view pair; agreement = the rotated
   reconstruction is classified as the frontal one was (top-k: among the k nearest identities).
3. novel-view landmark error: blurry iv -> the other V-1 views with Δp = ground-truth pose(k) - pose(iv).
4. novel-view pose and landmark error of the texture-warp rotation of the SHARP iv middle frame (E_3D fit on
   it) against ours from the blurry image (middle frame), with the same Δp.
5. novel-view PSNR/SSIM of ours, the cascade (DirectDeblurNet then texture warp of each frame), the blurry
   input itself, and ours without rotation, against the 5 sharp frames of view k.

Conventions: images ``[..., 3, R, R]`` in [-1, 1] at the model's resolution R; angles radians in code,
degrees in tables; landmarks (u, v) pixels of R x R images.
"""
from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from deblur_rotate.evaluate.collect import (  # collect, quantize: re-exported
    IDENTITY_ANGLES_DEG,
    FigureStore,
    collect,
    novel_view_variants,
    quantize,
)
from deblur_rotate.evaluate.inputs import (
    EvaluateOptions,
    Resources,
    load_resources,
    plan_tables,
)
from deblur_rotate.evaluate.targets import quality_targets
from deblur_rotate.faces import describe_crop

__all__ = [
    "IDENTITY_ANGLES_DEG",
    "TABLE_TITLES",
    "EvaluationResult",
    "Row",
    "Table",
    "build_tables",
    "collect",
    "evaluate",
    "quality_targets",
    "quantize",
]

TABLE_TITLES = {
    1: "Same-view landmark error",
    2: "Identity agreement of rotated reconstructions",
    3: "Novel-view landmark error",
    4: "Novel-view pose and landmark error: texture warp (sharp input) vs ours (blurry input)",
    5: "Novel-view PSNR / SSIM",
}

# ------------------------------------------------------------------------------------------------ results

@dataclass
class Row:
    """One table row: label cells, then one ``{"mean", "n", "missing"}`` dict per value column."""

    labels: list[str]                      # one entry per Table.row_header
    cells: dict[str, dict[str, float]]     # column -> {"mean": value, "n": measured, "missing": not measured}
    fmt: str = "{:.2f}"                    # how report.md prints the mean


@dataclass
class Table:
    """A finished table (numbers only; :mod:`deblur_rotate.evaluate.report` renders it)."""

    number: int                            # 1..5, the paper's table it mirrors
    title: str
    row_header: list[str]                  # names of the label columns
    columns: list[str]                     # names of the value columns
    rows: list[Row]
    notes: list[str] = field(default_factory=list)  # how it was computed, what was left out

    @property
    def key(self) -> str:
        return f"table{self.number}"

    def to_json(self) -> dict:
        return {"number": self.number, "title": self.title, "row_header": self.row_header, "columns": self.columns,
                "rows": [{"labels": r.labels, "cells": r.cells} for r in self.rows], "notes": self.notes}


@dataclass
class EvaluationResult:
    """Everything the report needs: tables, skipped tables with reasons, settings, figure material."""

    tables: list[Table]
    skipped: dict[int, str]                # table number -> why it did not run
    settings: dict                         # model, data, split, resolution, instants, devices, sources
    protocol: list[str]                    # the evaluation protocol, one paragraph per entry
    figure_samples: list[dict]             # Figure-5 material (uint8 images, landmarks), see collect()
    angle_curves: dict[str, dict[str, list[tuple[float, float]]]]  # panel -> method -> [(Δyaw deg, value)]
    quality: list[dict] = field(default_factory=list)  # the bundled model's quality targets, see quality_targets()
    wall_s: float = 0.0


# ------------------------------------------------------------------------------------------------ helpers

def _pair_columns(pairs: Sequence[tuple[int, int]]) -> list[str]:
    return [f"{a},{b}" for a, b in pairs] + ["all"]


def _nearest_identity(query: torch.Tensor, gallery: torch.Tensor, labels: Sequence[str]) -> list[str | None]:
    """Label of the nearest gallery descriptor per query row (None for NaN rows)."""
    dist = torch.cdist(query.double().nan_to_num(0.0), gallery.double())  # [Q, G]
    best = dist.argmin(1).tolist()
    bad = query.isnan().any(1).tolist()
    return [None if b else labels[i] for i, b in zip(best, bad)]


# ------------------------------------------------------------------------------------------------ tables

def _group_pair_rows(per_frame: torch.Tensor, views: torch.Tensor, pairs, labels: list[str], fmt: str,
                     scale: float = 1.0) -> list[Row]:
    """Rows of frame groups x view-pair columns from ``per_frame [N, 5]`` and the samples' ``views [N]``."""
    from deblur_rotate.evaluate.metrics import FRAME_GROUPS, view_pair_summary

    rows = []
    for group, frames in FRAME_GROUPS.items():
        cells = view_pair_summary(per_frame[:, list(frames)] * scale, views, pairs)
        rows.append(Row(labels + [group], cells, fmt))
    return rows


def _landmark_rows(fwd: torch.Tensor, bwd: torch.Tensor | None, views, pairs, label: str, width: int) -> list[Row]:
    """px and % width rows of one measure, under the better time order per sequence (bwd None: no order)."""
    from deblur_rotate.evaluate.metrics import best_order

    per_frame = fwd if bwd is None else best_order(fwd, bwd, higher_is_better=False).per_frame
    return (_group_pair_rows(per_frame, views, pairs, [label, "px"], "{:.2f}")
            + _group_pair_rows(per_frame, views, pairs, [label, "% width"], "{:.2f}", 100.0 / width))


def _table1(store: FigureStore, res: Resources) -> Table:
    views = store.cat("t1_views")
    r = res.resolution
    fwd, bwd = store.cat("t1_proj_fwd"), store.cat("t1_proj_bwd")
    rows = (_landmark_rows(fwd, bwd, views, res.pairs, "ours vs projected ground truth", r)
            + _landmark_rows(store.cat("t1_det_fwd"), store.cat("t1_det_bwd"), views, res.pairs,
                             "ours vs dlib on ground truth", r)
            + _landmark_rows(store.cat("t1_detector"), None, views, res.pairs,
                             "dlib on ground truth vs projected (detector's own error)", r))
    gen_missing = int(fwd.isnan().sum())
    gt_missing = int(store.cat("t1_detector").isnan().sum())
    notes = [(f"Every view's blurry image -> E_v -> G (no F); dlib's 68 points on the 5 generated frames "
             f"({fwd.numel()} frames, {gen_missing} without a detected face) against the ground truth of the same "
             f"view: SynthBMFD's projected landmarks, and dlib on the sharp frames ({gt_missing} of "
             f"{fwd.numel()} without a detected face). Cells with missing frames read 'mean (measured/total)'."),
             ("Forward/backward: per sequence, the generated video is scored as ordered and reversed and the order "
             "with the lower mean error (over the measured frames) is kept, separately for each comparison."),
             f"Columns: the rig's mirror view pairs ({len(res.pairs)} pairs) and all views; % width = pixels / {r} px."]
    return Table(1, TABLE_TITLES[1], ["comparison", "unit", "frames"], _pair_columns(res.pairs), rows, notes)


def _table2(store: FigureStore, res: Resources, variants) -> Table:
    from deblur_rotate.evaluate.metrics import identity_topk

    gallery = store.cat("t2_gallery")
    gallery_labels = store.flat("t2_gallery_labels")
    subjects = store.flat("t2_subject")
    n = len(subjects)
    columns = [f"{a:+.0f}°" for a in IDENTITY_ANGLES_DEG] + ["all"]
    subject_set = sorted(set(gallery_labels))

    def rows_for(name: str, frontal: torch.Tensor, rotated: torch.Tensor) -> list[Row]:
        # frontal [N, 128], rotated [N, A, 128]
        frontal_label = _nearest_identity(frontal, gallery, gallery_labels)
        rot = rotated.clone()
        agree_labels = []
        for i, lab in enumerate(frontal_label):
            if lab is None:
                rot[i] = float("nan")  # no frontal identity to agree with: counted as missing
            agree_labels.append(lab if lab is not None else subjects[i])
        out = []
        for what, labels, desc in (("agreement with the frontal reconstruction", agree_labels, rot),
                                   ("true identity", subjects, rotated)):
            cells_k: dict[str, dict[str, dict]] = {"top1": {}, "top5": {}}
            for c, col in enumerate(columns):
                q = desc[:, c] if col != "all" else desc.reshape(-1, desc.shape[-1])
                ql = labels if col != "all" else [lab for lab in labels for _ in IDENTITY_ANGLES_DEG]
                acc = identity_topk(q, ql, gallery, gallery_labels, k=(1, 5))
                for key in ("top1", "top5"):
                    cells_k[key][col] = {"mean": 100.0 * acc[key], "n": acc["n"] - acc["missing"],
                                         "missing": acc["missing"]}
            out += [Row([name, what, "top-1 (%)"], cells_k["top1"], "{:.1f}"),
                    Row([name, what, "top-5 (%)"], cells_k["top5"], "{:.1f}")]
        return out

    rows = []
    for label, _, source in variants:
        if source == "gt":
            rows += rows_for(label, store.cat("t2_frontal"), store.cat(f"t2_rot/{label}"))
    rows += rows_for("ground truth, nearest views (classifier sensitivity)", store.cat("t2_gt_frontal"),
                     store.cat("t2_gt_rot"))
    gt_views = store.cat("t2_gt_views")
    gt_dyaw = store.cat("t2_gt_dyaw")
    nearest = ", ".join(f"{a:+.0f}° -> view {int(gt_views[:, j].mode().values)} "
                        f"(true Δyaw {float(gt_dyaw[:, j].mean()):+.1f}°)"
                        for j, a in enumerate(IDENTITY_ANGLES_DEG))
    notes = [(f"Input: the blurry image of view {res.input_view} (nearest frontal). Frontal reconstruction: E_v -> G, "
             "middle frame, no rotation; rotated: F(codes, Δp = (0, yaw, 0)), middle frame."),
             (f"Classifier: nearest identity among the {len(subject_set)} evaluated subjects in dlib-descriptor space "
             f"(ported dlib ResNet, chips aligned from dlib's landmarks on the query); gallery: the sharp middle "
             f"frames of views {res.pairs[-1][0]} and {res.pairs[-1][1]} of every evaluated instant "
             f"({len(gallery_labels)} images, chips aligned from SynthBMFD's projected landmarks)."),
             ("Agreement: the rotated reconstruction's k nearest identities include the identity the classifier gives "
             "the frontal one (for ground truth: the sharp frame of the input view, which is in the gallery, so its "
             "identity is the true one). A query without a detected face (or whose frontal image has none) counts "
             "as wrong; cells with such queries read 'accuracy (measured/total)'."),
             f"Ground-truth rows: sharp middle frames of the views nearest each angle ({nearest}).",
             f"{n} instants."]
    if len(subject_set) <= 5:
        notes.append(f"Only {len(subject_set)} subject(s): top-5 is trivially 100% for every measured query.")
    return Table(2, TABLE_TITLES[2], ["reconstruction", "measure", "accuracy"], columns, rows, notes)


def _table3(store: FigureStore, res: Resources, variants) -> Table:
    views = store.cat("other_views")
    rows = []
    for label, _, _ in variants:
        if f"t3_fwd/{label}" in store.data:
            rows += _landmark_rows(store.cat(f"t3_fwd/{label}"), store.cat(f"t3_bwd/{label}"), views, res.pairs,
                                   label, res.resolution)
    dyaw = store.cat("dyaw_deg")
    per_view = ", ".join(f"view {int(v)}: {float(dyaw[views == v].mean()):+.1f}°" for v in views.unique())
    notes = [(f"Input: the blurry image of view {res.input_view}; reconstructions at the other {len(res.views) - 1} "
             f"views with Δp = ground-truth pose(view k) - pose(view {res.input_view}) (pitch, yaw, roll of the "
             f"middle frame, wrapped to ±180°); mean true Δyaw per view: {per_view}."),
             ("dlib's 68 points on the 5 frames against SynthBMFD's projected landmarks of view k; forward/backward: "
             "the better order per sequence (lower mean error). Column (a,b) pools the target views a and b "
             f"(the input view {res.input_view} itself is not a target).")]
    if "t3_dp_e3d_err_deg" in store.data:
        err = store.cat("t3_dp_e3d_err_deg")
        notes.append("'Δp from E_3D': Δp = E_3D(blurry view k) - E_3D(blurry input), as a system without ground "
                     f"truth would estimate it; its mean absolute error against the true Δp: pitch "
                     f"{float(err[:, 0].mean()):.1f}°, yaw {float(err[:, 1].mean()):.1f}°, roll "
                     f"{float(err[:, 2].mean()):.1f}°.")
    return Table(3, TABLE_TITLES[3], ["reconstruction", "unit", "frames"], _pair_columns(res.pairs), rows, notes)


def _table4(store: FigureStore, res: Resources) -> Table:
    from deblur_rotate.evaluate.metrics import view_pair_summary

    views, pairs, r = store.cat("other_views"), res.pairs, res.resolution
    rows = []
    for key, name in (("warp", "texture warp of the sharp input (E_3D fit on it)"),
                      ("ours", "ours from the blurry input (middle frame)")):
        lm = store.cat(f"t4_{key}_lm")
        pose = store.cat(f"t4_{key}_pose")
        rows += [Row([name, "landmark error (px)"], view_pair_summary(lm, views, pairs)),
                 Row([name, "landmark error (% width)"], view_pair_summary(lm * (100.0 / r), views, pairs)),
                 Row([name, "pose error, mean abs. of pitch, yaw, roll (°)"],
                     view_pair_summary(pose.mean(-1), views, pairs)),
                 Row([name, "yaw error (°)"], view_pair_summary(pose[:, 1], views, pairs))]
    ref = store.cat("t4_ref_pose")
    rows += [Row(["E_3D on the sharp ground truth of view k (reference)", ("pose error, mean abs. of pitch, yaw, "
                  "roll (°)")], view_pair_summary(ref.mean(-1), views, pairs)),
             Row(["E_3D on the sharp ground truth of view k (reference)", "yaw error (°)"],
                 view_pair_summary(ref[:, 1], views, pairs))]
    notes = [(f"Both methods turn view {res.input_view} to view k by the same Δp (ground-truth pose difference). "
             f"Texture warp: E_3D's coefficients of the SHARP middle frame, every visible vertex takes the frame's "
             "colour, the mesh is turned by Δp and rendered (unseen surface and background black; no inpainting). "
             "Ours: the BLURRY image -> E_v -> F -> G, middle frame (the same in both time orders)."),
             ("Landmark error: dlib's 68 points against SynthBMFD's projected landmarks of view k's middle frame. Pose "
             "error: E_3D's estimate on the image against view k's true pose, wrapped absolute angles; the reference "
             "rows show E_3D's own error on the true images."),
             f"Morphable model and camera: {res.face3d_source}."]
    return Table(4, TABLE_TITLES[4], ["method", "measure"], _pair_columns(pairs), rows, notes)


def _table5(store: FigureStore, res: Resources) -> Table:
    from deblur_rotate.evaluate.metrics import best_order, nanmean_count, view_pair_summary

    views, pairs = store.cat("other_views"), res.pairs
    columns = [f"frame {t + 1}" for t in range(5)] + ["all frames"] + [f"{a},{b}" for a, b in pairs]
    methods = [key.split("/", 1)[1] for key in store.data if key.startswith("t5_psnr_fwd/")]
    rows = []
    for metric, fmt, unit in (("psnr", "{:.2f}", "PSNR (dB)"), ("ssim", "{:.4f}", "SSIM")):
        for name in methods:
            fwd, bwd = store.cat(f"t5_{metric}_fwd/{name}"), store.cat(f"t5_{metric}_bwd/{name}")
            for order, per_frame in (("as ordered", fwd), ("best of both orders", best_order(fwd, bwd).per_frame)):
                cells = {f"frame {t + 1}": nanmean_count(per_frame[:, t]) for t in range(5)}
                cells["all frames"] = nanmean_count(per_frame)
                by_pair = view_pair_summary(per_frame, views, pairs)
                cells.update({f"{a},{b}": by_pair[f"{a},{b}"] for a, b in pairs})
                rows.append(Row([unit, name, order], cells, fmt))
    notes = [(f"Input: the blurry image of view {res.input_view}; targets: the 5 sharp frames of each other view k, "
             "Δp = ground-truth pose difference. Every image is clamped and rounded to 8 bits before scoring."),
             ("ours: E_v -> F(Δp) -> G. blurry input (trivial): the input image itself against each target frame. "
             "ours without rotation: E_v -> G at the input view. cascade: DirectDeblurNet's 5 frames, each turned "
             "by Δp with the texture warp using E_3D's coefficients of that frame (unseen surface black)."),
             ("Forward/backward: 'as ordered' scores predicted frame t against target frame t; 'best of both orders' "
             "keeps, per sequence, the order with the higher mean over the 5 frames (chosen by the row's own metric)."),
             "Columns: per target frame over all views, all frames, and all frames per view pair (target views)."]
    return Table(5, TABLE_TITLES[5], ["metric", "method", "time order"], columns, rows, notes)


def _angle_curves(store: FigureStore, tables: Sequence[int], variants, res: Resources) -> dict:
    """Per method, (mean true Δyaw of a target view, mean figure) points for the error-vs-angle plot."""
    from deblur_rotate.evaluate.metrics import best_order

    curves: dict[str, dict[str, list[tuple[float, float]]]] = {"landmark error (% width)": {}, "PSNR (dB)": {}}
    if not store.data.get("other_views"):
        return curves
    views, dyaw = store.cat("other_views"), store.cat("dyaw_deg")

    def per_view(values: torch.Tensor) -> list[tuple[float, float]]:
        pts = []
        for v in views.unique():
            sel = views == v
            vals = values[sel].double()
            vals = vals[~vals.isnan()]
            if len(vals):
                pts.append((float(dyaw[sel].mean()), float(vals.mean())))
        return sorted(pts)

    scale = 100.0 / res.resolution
    if 1 in tables:  # the same-view error of the input view (no rotation) at 0 degrees
        t1_views = store.cat("t1_views")
        pf = best_order(store.cat("t1_proj_fwd"), store.cat("t1_proj_bwd"), False).per_frame
        same = pf[t1_views == res.input_view].double()
        same = same[~same.isnan()]
        if len(same):
            curves["landmark error (% width)"]["ours without rotation (Table 1)"] = [(0.0, float(same.mean()) * scale)]
    if 3 in tables:
        for label, _, _ in variants:
            if f"t3_fwd/{label}" in store.data:
                pf = best_order(store.cat(f"t3_fwd/{label}"), store.cat(f"t3_bwd/{label}"), False).per_frame
                curves["landmark error (% width)"][label] = per_view(pf.double().nanmean(1) * scale)
    if 4 in tables:
        curves["landmark error (% width)"]["texture warp, sharp input (middle frame)"] = per_view(
            store.cat("t4_warp_lm") * scale)
    if 5 in tables:
        for key in store.data:
            if key.startswith("t5_psnr_fwd/"):
                name = key.split("/", 1)[1]
                pf = best_order(store.cat(key), store.cat(f"t5_psnr_bwd/{name}")).per_frame
                curves["PSNR (dB)"][name] = per_view(pf.double().mean(1))
    return curves


def build_tables(store: FigureStore, res: Resources, run: Sequence[int],
                 partial: dict[int, list[str]] | None = None) -> list[Table]:
    """The finished tables from the collected figures (``run``: the table numbers that were collected)."""
    variants = novel_view_variants(res, res.pipe.face3d_encoder is not None)
    makers = {1: lambda: _table1(store, res), 2: lambda: _table2(store, res, variants),
              3: lambda: _table3(store, res, variants), 4: lambda: _table4(store, res),
              5: lambda: _table5(store, res)}
    out = []
    for t in run:
        table = makers[t]()
        table.notes += (partial or {}).get(t, [])
        out.append(table)
    return out


def _protocol(res: Resources, options: EvaluateOptions) -> list[str]:
    from deblur_rotate.evaluate.metrics import PROTOCOL

    r, s = res.resolution, res.dataset.stored_size
    return [
        (f"Data: SynthBMFD {Path(options.data)} split {options.split!r}, {len(res.instants)} of "
        f"{res.total_instants} instants (subject, performance, centre frame), evenly spread"
        f"{'' if options.limit is None else f' (--limit {options.limit})'}; {len(res.views)} views, mirror pairs "
        f"{', '.join(f'({a},{b})' for a, b in res.pairs)}. Blurry input = mean of the 2m+1 = {2 * res.dataset.m + 1} "
        f"sharp frames around the centre (m = {res.dataset.m}); targets = frames c-m, c-m/2, c, c+m/2, c+m."),
        (f"Crop and resolution: none beyond the rig camera's own framing: SynthBMFD frames are used whole (black "
        f"background), resized from {s} px to the model's {r} px ({'unchanged' if s == r else 'area / bilinear'}); "
        f"landmarks scaled with them. The model's pipeline.json crop (how its training faces were framed): "
        f"{describe_crop(res.pipe.crop)}."),
        ("Generated and baseline images are clamped to [-1, 1] and rounded to 8 bits (as saved PNGs) before any "
        "metric; ground-truth frames are the dataset's PNGs."),
        PROTOCOL,
        ("Forward/backward: a blurry image does not tell which way time ran. Landmark tables keep, per sequence, the "
        "time order with the lower error; Table 5 reports both 'as ordered' and the better order per sequence "
        "(max of both)."),
        (f"Novel views: the input is the blurry image of view {res.input_view} (the nearest-frontal view); "
        f"Δp = ground-truth pose(view k) - pose(view {res.input_view}) of the middle frame (F's convention)."),
    ]


def evaluate(options: EvaluateOptions) -> EvaluationResult:
    """Load everything, run the requested tables that the model allows, and return the numbers."""
    start = time.time()
    res = load_resources(options)
    run, skipped, partial = plan_tables(options.tables, res.availability())
    if res.face3d is None and res.pipe.face3d_encoder is not None:
        for t in (4,):
            if t in skipped:
                skipped[t] += f" ({res.face3d_source})"
    store, figures = collect(res, run, options.figure_instants, options.progress)
    variants = novel_view_variants(res, res.pipe.face3d_encoder is not None)
    tables = build_tables(store, res, run, partial)
    settings = {
        "model": str(res.model_dir), "preset": res.pipe.config.get("preset"), "data": str(options.data),
        "refine": res.pipe.refine.to_json(),
        "split": options.split, "m": res.dataset.m, "resolution": res.resolution,
        "dataset_size": res.dataset.stored_size, "instants": len(res.instants),
        "instants_in_split": res.total_instants, "subjects": sorted({s for s, _, _ in res.instants}),
        "views": res.views, "mirror_pairs": [list(p) for p in res.pairs], "input_view": res.input_view,
        "device": str(res.device), "fusion": None if res.pipe.fusion is None else res.pipe.fusion.arch_name,
        "fc3": None if options.fc3 is None else str(options.fc3),
        "fc3_arch": None if res.fc3 is None else res.fc3.arch_name,
        "baseline": None if options.baseline is None else str(options.baseline),
        "face3d_encoder": res.pipe.face3d_encoder is not None, "face3d_model_source": res.face3d_source,
        "tables_requested": sorted({int(t) for t in options.tables}), "tables_run": run,
    }
    result = EvaluationResult(tables=tables, skipped=skipped, settings=settings, protocol=_protocol(res, options),
                              figure_samples=figures,
                              angle_curves=_angle_curves(store, run, variants, res),
                              quality=quality_targets(store, res, run))
    result.wall_s = time.time() - start
    return result

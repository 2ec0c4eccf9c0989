"""Build a :class:`~deblur_rotate.face3d.model.MorphableModel` from the Basel Face Model 2009.

We cannot ship BFM; users who hold it point :func:`load_bfm` at their files. Two inputs are understood:

1. The original ``01_MorphableModel.mat`` (BFM 2009, MATLAB v5) plus an expression basis and landmarks.

   * ``01_MorphableModel.mat``: ``shapeMU [3V, 1]``, ``shapePC [3V, K]``, ``shapeEV [K, 1]``, ``texMU [3V, 1]``
     (0..255), ``texPC [3V, K]``, ``texEV [K, 1]``, ``tl [F, 3]`` (1-based triangles); K = 199, V = 53490.
     Lengths in micrometres, x/y/z interleaved per vertex (row 3v + c), frame y up and z towards the viewer.
     The ``EV`` vectors are used as standard deviations (Deep3DFaceRecon multiplies the PCs by them directly).
   * ``Exp_Pca.bin`` (the expression basis of Guo et al., used by 3DDFA and Deep3DFaceRecon): little-endian
     ``int32 K_exp`` (79), then ``float32 expMU [3V']``, then ``float32 expPC`` stored mode after mode
     (``K_exp`` blocks of ``3V'`` values, each interleaved x/y/z per vertex), same unit and frame as BFM.
     Its standard deviations are NOT in the file: they come as ``K_exp`` numbers in a text file
     ``std_exp.txt`` (looked for next to ``Exp_Pca.bin`` unless ``expression_std_path`` is given).
     The basis covers V' = 53215 vertices, a subset of BFM's 53490: the selection is Deep3DFaceRecon's
     ``BFM_exp_idx.mat`` (field ``trimIndex``, 1-based; 3DDFA's ``model_info.mat`` holds the same field),
     looked for next to either file unless ``trim_index_path`` is given. The model is then cut to those
     vertices (triangles touching a removed vertex are dropped).
   * 68 landmark vertex indices in iBUG 300-W order, indexing the vertices of the loaded model (the trimmed
     53215 when a trim index is used, as 3DDFA's ``keypoints`` do): a text file, ``.npy`` or ``.mat``
     (field ``keypoints`` / ``kpt_ind``). 204 integers forming x/y/z coordinate-index triples (3DDFA's
     ``keypoints_sim.npy``) are also accepted.

2. Deep3DFaceRecon's ``BFM_model_front.mat`` (converted BFM, 35709 vertices): ``meanshape [1, 3N]``,
   ``idBase [3N, 80]``, ``exBase [3N, 64]``, ``meantex [1, 3N]`` (0..255), ``texBase [3N, 80]``,
   ``tri [F, 3]`` and ``keypoints [68]`` (both 1-based), plus masks we do not use. Lengths in decimetres
   (BFM / 1e5), the standard deviations already folded into the bases, same axes as BFM.

Conversion to our conventions (see :mod:`deblur_rotate.render.camera`): lengths in centimetres; y and z
negated (a 180-degree rotation about x, so y points down and the face looks along -z; being a rotation it
keeps the triangles' winding); the mean shape centred on the mean of its vertices; albedo divided by 255
to [0, 1]; standard deviations folded into every basis so coefficients are ~N(0, 1). The triangle winding
is checked against the geometry and reversed if the file's triangles turn out clockwise seen from outside,
so that ``cross(v1 - v0, v2 - v0)`` points out of the face (e.g. along -z at the nose tip) either way.

Every problem with the user's files raises :class:`deblur_rotate.errors.UserError` with a one-line message.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from deblur_rotate.errors import UserError
from deblur_rotate.face3d.model import MorphableModel

__all__ = ["BFM2009_FIELDS", "BFM_UNIT_CM", "FRONT_FIELDS", "FRONT_UNIT_CM", "load_bfm"]

log = logging.getLogger(__name__)

BFM_UNIT_CM = 1e-4  # BFM 2009 and Exp_Pca.bin lengths are micrometres
FRONT_UNIT_CM = 10.0  # BFM_model_front.mat lengths are decimetres
BFM2009_FIELDS = ("shapeMU", "shapePC", "shapeEV", "texMU", "texPC", "texEV", "tl")
FRONT_FIELDS = ("meanshape", "idBase", "exBase", "meantex", "texBase", "tri")
_AXIS_FLIP = np.array([1.0, -1.0, -1.0])  # BFM frame (y up, z to the viewer) -> ours (y down, z away)
_HOW_TO_GET = ("01_MorphableModel.mat comes from the Basel Face Model 2009 download "
               "(faces.dmi.unibas.ch), BFM_model_front.mat from Deep3DFaceRecon's conversion of it")


@dataclass
class _Raw:
    """A model as read from the files: BFM frame, file length unit, texture 0..255, 0-based indices."""

    mean_shape: np.ndarray  # [V, 3]
    id_basis: np.ndarray  # [V, 3, n_id], standard deviations folded in
    exp_basis: np.ndarray  # [V, 3, n_exp]
    mean_tex: np.ndarray  # [V, 3]
    tex_basis: np.ndarray  # [V, 3, n_tex]
    triangles: np.ndarray  # [F, 3]
    landmarks: np.ndarray | None  # [68]
    unit_cm: float
    name: str


# ------------------------------------------------------------------------------------------- public API

def load_bfm(
    path: str | Path,
    expression_path: str | Path | None = None,
    landmarks_path: str | Path | None = None,
    n_id: int | None = None,
    n_tex: int | None = None,
    n_exp: int | None = None,
    landmarks_one_based: bool | None = None,
    *,
    expression_std_path: str | Path | None = None,
    trim_index_path: str | Path | None = None,
    add_expression_mean: bool = False,
) -> MorphableModel:
    """Load a Basel Face Model file as a :class:`MorphableModel` (centimetres, our model frame).

    Args:
        path: ``01_MorphableModel.mat`` (BFM 2009) or Deep3DFaceRecon's ``BFM_model_front.mat``; the format
            is recognised from the fields inside.
        expression_path: ``Exp_Pca.bin``; required with BFM 2009 unless ``n_exp=0``; not used with
            ``BFM_model_front.mat`` (it has its own ``exBase``).
        landmarks_path: 68 vertex indices (iBUG 300-W order) of the loaded mesh, as text, ``.npy`` or
            ``.mat``; required with BFM 2009, optional with ``BFM_model_front.mat`` (overrides ``keypoints``).
        n_id, n_tex, n_exp: keep the first modes of each basis (None: all). The paper uses 199, 199, 29
            (460 coefficients with lighting and pose).
        landmarks_one_based: whether the landmark (and trim-index) file counts vertices from 1. None: 1-based
            for ``.mat`` files (MATLAB), 0-based for text and ``.npy``.
        expression_std_path: the expression standard deviations (default: ``std_exp.txt`` beside
            ``Exp_Pca.bin``).
        trim_index_path: the BFM vertices the expression basis covers (default: ``BFM_exp_idx.mat`` beside
            ``Exp_Pca.bin`` or ``path``); only needed when the two vertex counts differ.
        add_expression_mean: add ``expMU`` of ``Exp_Pca.bin`` to the mean shape, as 3DDFA and face3d do, so
            that zero expression coefficients give the data's mean expression. Off by default, as in
            Deep3DFaceRecon, whose zero is BFM's neutral face.

    Returns:
        A :class:`MorphableModel` on the CPU whose ``layout`` is ``(n_id, n_tex, n_exp)``.

    Raises:
        UserError: a missing, unreadable or wrongly structured file, or a request the files cannot meet.
    """
    path = _existing_file(path, "BFM model file", _HOW_TO_GET)
    fields = _mat_fields(path, "BFM model file")
    kind = _detect_format(path, fields)
    for label, value in (("n_id", n_id), ("n_tex", n_tex), ("n_exp", n_exp)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
            raise UserError(f"{label} must be a whole number >= 0 or None (all modes), got {value!r}")
    if kind == "bfm2009":
        raw = _read_bfm2009(path, expression_path, landmarks_path, n_id, n_tex, n_exp, landmarks_one_based,
                            expression_std_path, trim_index_path, add_expression_mean)
    else:
        for label, value in (("expression_path", expression_path), ("expression_std_path", expression_std_path),
                             ("trim_index_path", trim_index_path)):
            if value is not None:
                raise UserError(f"{label} is only used with 01_MorphableModel.mat, but {path} is a "
                                f"BFM_model_front.mat that carries its own expression basis: leave {label} out")
        if add_expression_mean:
            raise UserError(f"add_expression_mean needs Exp_Pca.bin's expMU, which {path} (BFM_model_front.mat) "
                            f"does not carry: leave add_expression_mean out")
        raw = _read_front(path, landmarks_path, n_id, n_tex, n_exp, landmarks_one_based)
    return _to_model(raw)


# ---------------------------------------------------------------------------------------- file helpers

def _existing_file(path: str | Path, what: str, hint: str) -> Path:
    path = Path(path).expanduser()
    if not path.exists():
        raise UserError(f"{what} {path} does not exist: {hint}")
    if not path.is_file():
        raise UserError(f"{what} {path} is not a file: {hint}")
    return path


def _mat_fields(path: Path, what: str) -> dict[str, tuple[int, ...]]:
    """Variable names and shapes of a .mat file, without loading the data."""
    import scipy.io

    try:
        return {name: tuple(shape) for name, shape, _ in scipy.io.whosmat(str(path))}
    except NotImplementedError as exc:  # MATLAB v7.3 (HDF5)
        raise UserError(f"{what} {path} is a MATLAB v7.3 (HDF5) file, which scipy cannot read: re-save it in "
                        f"MATLAB with save(..., '-v7') ({exc})") from None
    except Exception as exc:  # noqa: BLE001 - scipy raises many types for a bad file
        raise UserError(f"cannot read {what} {path} as a MATLAB .mat file ({type(exc).__name__}: {exc}): "
                        f"check the download") from None


def _loadmat(path: Path, names: list[str], what: str) -> dict[str, np.ndarray]:
    import scipy.io

    try:
        data = scipy.io.loadmat(str(path), variable_names=names)
    except MemoryError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise UserError(f"cannot read {what} {path} ({type(exc).__name__}: {exc}): check the download") from None
    missing = [n for n in names if n not in data]
    if missing:
        raise UserError(f"{what} {path} lacks the field(s) {', '.join(missing)}: check the file")
    return data


def _detect_format(path: Path, fields: dict[str, tuple[int, ...]]) -> str:
    names = set(fields)
    if set(BFM2009_FIELDS) <= names:
        return "bfm2009"
    if set(FRONT_FIELDS) <= names:
        return "front"
    found = ", ".join(sorted(names)) or "none"
    if "shapeMU" in names or "shapePC" in names:
        missing = ", ".join(f for f in BFM2009_FIELDS if f not in names)
        raise UserError(f"BFM model file {path} looks like 01_MorphableModel.mat but lacks {missing} "
                        f"(found: {found}): use the unmodified BFM 2009 file")
    if "meanshape" in names or "idBase" in names:
        missing = ", ".join(f for f in FRONT_FIELDS if f not in names)
        raise UserError(f"BFM model file {path} looks like BFM_model_front.mat but lacks {missing} "
                        f"(found: {found}): regenerate it with Deep3DFaceRecon")
    raise UserError(f"BFM model file {path} has neither the fields of 01_MorphableModel.mat "
                    f"({', '.join(BFM2009_FIELDS)}) nor those of BFM_model_front.mat ({', '.join(FRONT_FIELDS)}); "
                    f"found: {found}; {_HOW_TO_GET}")


def _vector(data: dict, field: str, path: Path, length: int | None = None) -> np.ndarray:
    value = np.asarray(data[field])
    if value.ndim > 2 or (value.ndim == 2 and min(value.shape) != 1):
        raise UserError(f"field {field} of {path} has shape {value.shape}, expected a vector: check the file")
    value = value.reshape(-1)
    if length is not None and value.size != length:
        raise UserError(f"field {field} of {path} has {value.size} entries, expected {length}: check the file")
    if not np.issubdtype(value.dtype, np.number):
        raise UserError(f"field {field} of {path} is not numeric: check the file")
    return value


def _matrix(data: dict, field: str, path: Path, rows: int) -> np.ndarray:
    value = np.asarray(data[field])
    if value.ndim != 2 or value.shape[0] != rows or not np.issubdtype(value.dtype, np.number):
        raise UserError(f"field {field} of {path} has shape {value.shape}, expected a numeric [{rows}, K] "
                        f"matrix (3 rows per vertex): check the file")
    return value


def _count(requested: int | None, available: int, label: str, what: str) -> int:
    if requested is None:
        return available
    if requested > available:
        raise UserError(f"{label}={requested} asks for more modes than {what} has ({available}): "
                        f"use {label}={available} or fewer")
    return requested


def _scaled_basis(pcs: np.ndarray, stds: np.ndarray, n: int) -> np.ndarray:
    """``pcs [3V, K]`` x ``stds [K]`` -> ``[V, 3, n]`` float32 (first n modes)."""
    basis = pcs[:, :n].astype(np.float32) * stds[:n].astype(np.float32)
    return basis.reshape(pcs.shape[0] // 3, 3, n)


def _triangles(data: dict, field: str, path: Path, num_vertices: int) -> np.ndarray:
    tri = np.asarray(data[field])
    if tri.ndim == 2 and tri.shape[1] != 3 and tri.shape[0] == 3:
        tri = tri.T
    if tri.ndim != 2 or tri.shape[1] != 3 or tri.shape[0] == 0:
        raise UserError(f"field {field} of {path} has shape {tri.shape}, expected [F, 3] triangles: check the file")
    tri = _integers(tri, f"field {field} of {path}")
    if tri.min() < 1 or tri.max() > num_vertices:
        raise UserError(f"field {field} of {path} holds vertex numbers {tri.min()}..{tri.max()}, expected "
                        f"1-based numbers 1..{num_vertices}: check the file")
    return tri - 1


def _integers(values: np.ndarray, what: str) -> np.ndarray:
    values = np.asarray(values)
    if values.dtype.kind in "iu":
        return values.astype(np.int64)
    if values.dtype.kind != "f" or not np.all(np.isfinite(values)) or not np.all(values == np.round(values)):
        raise UserError(f"{what} must hold whole numbers (vertex indices): check the file")
    return values.astype(np.int64)


def _read_indices(path: Path, what: str, mat_fields: tuple[str, ...]) -> np.ndarray:
    """Flat integer array from a text, .npy or .mat file (the first of ``mat_fields`` present, or the only
    variable)."""
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            values = np.load(path, allow_pickle=False)
        elif suffix == ".mat":
            fields = _mat_fields(path, what)
            names = [f for f in mat_fields if f in fields] or (list(fields) if len(fields) == 1 else [])
            if not names:
                raise UserError(f"{what} {path} has none of the fields {', '.join(mat_fields)} "
                                f"(found: {', '.join(sorted(fields)) or 'none'}): pass a file with one of them")
            values = _loadmat(path, [names[0]], what)[names[0]]
        else:
            text = path.read_text(encoding="utf-8", errors="strict").replace(",", " ").replace(";", " ")
            values = np.array([float(tok) for tok in text.split()], dtype=np.float64)
    except UserError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise UserError(f"cannot read {what} {path} ({type(exc).__name__}: {exc}): expected whole numbers as "
                        f"text, .npy or .mat") from None
    return _integers(np.asarray(values).reshape(-1), f"{what} {path}")


def _one_based_default(path: Path, one_based: bool | None) -> bool:
    return path.suffix.lower() == ".mat" if one_based is None else bool(one_based)


def _read_landmarks(path: str | Path, one_based: bool | None, num_vertices: int) -> np.ndarray:
    path = _existing_file(path, "landmark file",
                          "pass a file with the 68 landmark vertex indices of this mesh in iBUG 300-W order")
    base = 1 if _one_based_default(path, one_based) else 0
    convention = f"{base}-based" + (" (landmarks_one_based=True)" if base else " (landmarks_one_based=False)")
    values = _read_indices(path, "landmark file", ("keypoints", "kpt_ind", "landmarks", "lm_idx"))
    if values.size == 204:  # 3DDFA's keypoints_sim.npy: x, y, z coordinate indices of each landmark
        triples = values.reshape(68, 3)
        if np.all(triples[:, 1] == triples[:, 0] + 1) and np.all(triples[:, 2] == triples[:, 0] + 2) \
                and np.all((triples[:, 0] - base) % 3 == 0):
            values = (triples[:, 0] - base) // 3 + base
    if values.size != 68:
        raise UserError(f"landmark file {path} holds {values.size} indices, expected 68 vertex indices in iBUG "
                        f"300-W order, read as {convention}: pass the 68-point file for this mesh")
    lo, hi = int(values.min()), int(values.max())
    if lo < base or hi > num_vertices - 1 + base:
        hint = ""
        if base == 0 and lo >= 1 and hi <= num_vertices:
            hint = " If the file counts from 1, pass landmarks_one_based=True."
        elif base == 1 and lo >= 0 and hi <= num_vertices - 1:
            hint = " If the file counts from 0, pass landmarks_one_based=False."
        raise UserError(f"landmark file {path} holds indices {lo}..{hi}, read as {convention}, but the model has "
                        f"{num_vertices} vertices ({base}..{num_vertices - 1 + base}): pass the landmarks of this "
                        f"mesh.{hint}")
    return values - base


# ------------------------------------------------------------------------------------------- BFM 2009

def _read_exp_pca(path: Path, n_exp: int | None) -> tuple[np.ndarray, np.ndarray, int]:
    """Exp_Pca.bin -> (expMU [3V'], expPC [3V', n] (first n modes), number of modes in the file)."""
    hint = "expected Exp_Pca.bin: int32 mode count, float32 mean [3V], float32 modes [count x 3V]"
    size = path.stat().st_size
    header = np.fromfile(path, dtype="<i4", count=1)
    if header.size != 1:
        raise UserError(f"expression basis {path} is empty or truncated: {hint}")
    k = int(header[0])
    if not 1 <= k <= 10000:
        raise UserError(f"expression basis {path} starts with a mode count of {k}: {hint}")
    num_floats, rest = divmod(size - 4, 4)
    if rest or num_floats == 0 or num_floats % (3 * (k + 1)):
        raise UserError(f"expression basis {path} has {size} bytes, which is not 4 + 4 * 3V * ({k} + 1) for any "
                        f"vertex count V: {hint}")
    num_coords = num_floats // (k + 1)  # 3V'
    n = _count(n_exp, k, "n_exp", f"expression basis {path}")
    mean = np.fromfile(path, dtype="<f4", count=num_coords, offset=4).astype(np.float64)
    modes = np.fromfile(path, dtype="<f4", count=num_coords * n, offset=4 + 4 * num_coords)
    return mean, modes.reshape(n, num_coords).T, k


def _find_beside(name: str, *paths: Path) -> Path | None:
    for p in paths:
        candidate = p.parent / name
        if candidate.is_file():
            return candidate
    return None


def _read_bfm2009(path, expression_path, landmarks_path, n_id, n_tex, n_exp, one_based, std_path, trim_path,
                  add_expression_mean) -> _Raw:
    data = _loadmat(path, list(BFM2009_FIELDS), "BFM model file")
    shape_mu = _vector(data, "shapeMU", path).astype(np.float64)
    if shape_mu.size % 3:
        raise UserError(f"field shapeMU of {path} has {shape_mu.size} entries, not a multiple of 3 (x, y, z per "
                        f"vertex): check the file")
    num_coords = shape_mu.size
    num_vertices = num_coords // 3
    shape_pc = _matrix(data, "shapePC", path, num_coords)
    shape_ev = _vector(data, "shapeEV", path, shape_pc.shape[1])
    tex_mu = _vector(data, "texMU", path, num_coords).astype(np.float64)
    tex_pc = _matrix(data, "texPC", path, num_coords)
    tex_ev = _vector(data, "texEV", path, tex_pc.shape[1])
    triangles = _triangles(data, "tl", path, num_vertices)
    n_id = _count(n_id, shape_pc.shape[1], "n_id", f"{path} (shapePC)")
    n_tex = _count(n_tex, tex_pc.shape[1], "n_tex", f"{path} (texPC)")
    id_basis = _scaled_basis(shape_pc, shape_ev, n_id)
    tex_basis = _scaled_basis(tex_pc, tex_ev, n_tex)
    del data, shape_pc, tex_pc
    mean_shape = shape_mu.reshape(-1, 3)
    mean_tex = tex_mu.reshape(-1, 3)

    keep = None  # BFM vertices kept when the expression basis covers a subset
    if expression_path is None:
        if n_exp not in (None, 0):
            raise UserError(f"BFM 2009 ({path}) has no expression basis but n_exp={n_exp} was asked: pass "
                            f"expression_path (Exp_Pca.bin, from Deep3DFaceRecon / 3DDFA)")
        if n_exp is None:
            raise UserError(f"BFM 2009 ({path}) has no expression basis: pass expression_path (Exp_Pca.bin, from "
                            f"Deep3DFaceRecon / 3DDFA), or n_exp=0 for a model without expressions")
        exp_basis = np.zeros((num_vertices, 3, 0), dtype=np.float32)
    else:
        expression_path = _existing_file(expression_path, "expression basis",
                                         "pass Exp_Pca.bin (Deep3DFaceRecon's BFM folder / 3DDFA)")
        exp_mu, exp_pc, k_exp = _read_exp_pca(expression_path, n_exp)
        std_file = _existing_file(
            std_path if std_path is not None else expression_path.parent / "std_exp.txt",
            "expression standard deviations",
            f"Exp_Pca.bin stores unit modes; their {k_exp} standard deviations come in std_exp.txt "
            f"(Deep3DFaceRecon's BFM folder): put it beside {expression_path.name} or pass expression_std_path")
        std = _read_std(std_file, k_exp)
        exp_vertices = exp_mu.size // 3
        if exp_vertices != num_vertices:
            keep = _read_trim_index(trim_path, expression_path, path, exp_vertices, num_vertices, one_based)
        exp_basis = _scaled_basis(exp_pc, std, exp_pc.shape[1])
        if add_expression_mean:
            offset = exp_mu.reshape(-1, 3)
            shape_here = mean_shape if keep is None else mean_shape[keep]
            spread = np.sqrt(((shape_here - shape_here.mean(0)) ** 2).mean())
            if np.sqrt((offset ** 2).mean()) > 0.25 * spread:
                raise UserError(f"expMU of {expression_path} is as large as a whole face, not an expression offset: "
                                f"leave add_expression_mean off")
    if keep is not None:
        mean_shape, mean_tex = mean_shape[keep], mean_tex[keep]
        id_basis, tex_basis = id_basis[keep], tex_basis[keep]
        triangles = _subset_triangles(triangles, keep, num_vertices, path)
        num_vertices = keep.size
    if expression_path is not None and add_expression_mean:
        mean_shape = mean_shape + exp_mu.reshape(-1, 3)
    if landmarks_path is None:
        raise UserError(f"BFM 2009 ({path}) carries no landmarks: pass landmarks_path, a file of the 68 vertex "
                        f"indices (iBUG 300-W order) of the {num_vertices}-vertex mesh, e.g. 3DDFA's keypoints")
    landmarks = _read_landmarks(landmarks_path, one_based, num_vertices)
    return _Raw(mean_shape, id_basis, exp_basis, mean_tex, tex_basis, triangles, landmarks, BFM_UNIT_CM,
                "bfm2009")


def _read_std(path: Path, count: int) -> np.ndarray:
    try:
        text = path.read_text(encoding="utf-8").replace(",", " ")
        std = np.array([float(tok) for tok in text.split()], dtype=np.float64)
    except Exception as exc:  # noqa: BLE001
        raise UserError(f"cannot read expression standard deviations {path} ({type(exc).__name__}: {exc}): "
                        f"expected {count} numbers as text") from None
    if std.size != count or not np.all(np.isfinite(std)) or np.any(std < 0):
        raise UserError(f"expression standard deviations {path} hold {std.size} values, expected {count} "
                        f"non-negative numbers (one per mode of the expression basis): check the file")
    return std


def _read_trim_index(trim_path, expression_path: Path, bfm_path: Path, exp_vertices: int, num_vertices: int,
                     one_based: bool | None) -> np.ndarray:
    mismatch = (f"expression basis {expression_path} has {exp_vertices} vertices but {bfm_path} has "
                f"{num_vertices}")
    if trim_path is None:
        trim_path = _find_beside("BFM_exp_idx.mat", expression_path, bfm_path)
        if trim_path is None:
            raise UserError(f"{mismatch}: pass trim_index_path (Deep3DFaceRecon's BFM_exp_idx.mat, field trimIndex, "
                            f"the BFM vertices the basis covers) or an expression basis built on the same mesh")
    trim_path = _existing_file(trim_path, "trim index", "pass Deep3DFaceRecon's BFM_exp_idx.mat (field trimIndex)")
    base = 1 if _one_based_default(trim_path, one_based) else 0
    keep = _read_indices(trim_path, "trim index", ("trimIndex", "trim_index", "idx"))
    if keep.size != exp_vertices:
        raise UserError(f"{mismatch}, and trim index {trim_path} selects {keep.size} vertices, not {exp_vertices}: "
                        f"pass the trim index made for this expression basis")
    keep = keep - base
    if keep.min() < 0 or keep.max() >= num_vertices or np.unique(keep).size != keep.size:
        raise UserError(f"trim index {trim_path} holds indices {keep.min() + base}..{keep.max() + base} read as "
                        f"{base}-based, expected distinct vertex numbers of the {num_vertices}-vertex BFM: "
                        f"check the file")
    return keep


def _subset_triangles(triangles: np.ndarray, keep: np.ndarray, num_vertices: int, path: Path) -> np.ndarray:
    new_index = np.full(num_vertices, -1, dtype=np.int64)
    new_index[keep] = np.arange(keep.size)
    mapped = new_index[triangles]
    mapped = mapped[(mapped >= 0).all(1)]
    if mapped.shape[0] == 0:
        raise UserError(f"no triangle of {path} survives cutting the mesh to the expression basis' vertices: "
                        f"check the trim index")
    return mapped


# -------------------------------------------------------------------------------------- BFM_model_front

def _read_front(path, landmarks_path, n_id, n_tex, n_exp, one_based) -> _Raw:
    fields = _mat_fields(path, "BFM model file")
    names = list(FRONT_FIELDS) + (["keypoints"] if "keypoints" in fields else [])
    data = _loadmat(path, names, "BFM model file")
    mean = _vector(data, "meanshape", path).astype(np.float64)
    if mean.size % 3:
        raise UserError(f"field meanshape of {path} has {mean.size} entries, not a multiple of 3: check the file")
    num_coords = mean.size
    num_vertices = num_coords // 3
    id_base = _matrix(data, "idBase", path, num_coords)
    ex_base = _matrix(data, "exBase", path, num_coords)
    tex_base = _matrix(data, "texBase", path, num_coords)
    mean_tex = _vector(data, "meantex", path, num_coords).astype(np.float64)
    triangles = _triangles(data, "tri", path, num_vertices)
    n_id = _count(n_id, id_base.shape[1], "n_id", f"{path} (idBase)")
    n_tex = _count(n_tex, tex_base.shape[1], "n_tex", f"{path} (texBase)")
    n_exp = _count(n_exp, ex_base.shape[1], "n_exp", f"{path} (exBase)")
    if landmarks_path is not None:
        landmarks = _read_landmarks(landmarks_path, one_based, num_vertices)
    elif "keypoints" in data:
        keypoints = _integers(_vector(data, "keypoints", path), f"field keypoints of {path}")
        if keypoints.size != 68 or keypoints.min() < 1 or keypoints.max() > num_vertices:
            raise UserError(f"field keypoints of {path} should hold 68 1-based vertex numbers 1..{num_vertices}, "
                            f"got {keypoints.size} in {keypoints.min()}..{keypoints.max()}: pass landmarks_path")
        landmarks = keypoints - 1
    else:
        raise UserError(f"{path} has no keypoints field: pass landmarks_path (68 vertex indices, iBUG order)")
    # The bases already carry their standard deviations: scale them by 1.
    return _Raw(mean.reshape(-1, 3), _scaled_basis(id_base, np.ones(n_id), n_id),
                _scaled_basis(ex_base, np.ones(n_exp), n_exp), mean_tex.reshape(-1, 3),
                _scaled_basis(tex_base, np.ones(n_tex), n_tex), triangles, landmarks, FRONT_UNIT_CM, "bfm-front")


# ------------------------------------------------------------------------------------------- conversion

def _outward_triangles(vertices: np.ndarray, triangles: np.ndarray) -> tuple[np.ndarray, bool]:
    """Reverse the winding if ``cross(v1 - v0, v2 - v0)`` points, on balance, towards the inside.

    The test weighs each triangle's area normal against the direction from the vertices' mean to the
    triangle: positive for a face mask (a bowl around its centroid) whose normals point out of the face.
    """
    v0, v1, v2 = (vertices[triangles[:, k]] for k in range(3))
    normals = np.cross(v1 - v0, v2 - v0)
    outwards = (v0 + v1 + v2) / 3.0 - vertices.mean(0)
    if float((normals * outwards).sum()) < 0.0:
        return triangles[:, [0, 2, 1]], True
    return triangles, False


def _to_model(raw: _Raw) -> MorphableModel:
    axis = _AXIS_FLIP * raw.unit_cm  # per-axis factor: unit -> cm and y, z negated
    mean_shape = raw.mean_shape * axis
    mean_shape = mean_shape - mean_shape.mean(0)
    triangles, flipped = _outward_triangles(mean_shape, raw.triangles)
    if flipped:
        log.info("%s: triangles were clockwise seen from outside; winding reversed", raw.name)
    return MorphableModel(
        mean_shape=torch.from_numpy(mean_shape).float(),
        id_basis=torch.from_numpy(raw.id_basis * axis[None, :, None].astype(np.float32)),
        exp_basis=torch.from_numpy(raw.exp_basis * axis[None, :, None].astype(np.float32)),
        mean_albedo=torch.from_numpy(raw.mean_tex / 255.0).float(),
        albedo_basis=torch.from_numpy(raw.tex_basis / np.float32(255.0)),
        triangles=torch.from_numpy(np.ascontiguousarray(triangles)),
        landmark_indices=torch.from_numpy(np.asarray(raw.landmarks, dtype=np.int64)),
        name=raw.name,
    )

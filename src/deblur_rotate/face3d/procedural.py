"""The built-in procedural morphable face model: written by us, no third-party data.

How it is made
--------------
1. The neutral head is a signed distance function (SDF, centimetres) built from smooth unions and
   differences of ellipsoids: cranium, lower face, jaw, chin, cheekbones, brow ridge, nose (bridge, tip,
   wings, nostrils), lips with a mouth slit, eyelid shells with almond openings, ears, and a neck stub.
2. The mesh is a fixed grid of rays (latitude x longitude). Each ray starts on the vertical axis of the
   head and the vertex is the OUTERMOST point where the ray meets the SDF surface. In the face band the
   rays are nearly horizontal (their origins slide down the axis), so thin horizontal features (the
   mouth slit, eye openings) are sampled by several rows; longitudes are denser at the front.
3. Identity modes are anatomical SDF parameters (face length/width, jaw width, nose length/width/
   protrusion, eye spacing, lip thickness, chin, cheekbones, brow ridge, head length) plus smooth random
   bumps: each mode's displacement is the difference between the perturbed and neutral surfaces along
   the SAME rays, so vertex correspondence holds and the model stays linear.
4. Eyeballs are separate sphere meshes (sclera, iris, pupil) that sit behind the eyelid openings.
5. Expression modes are hand-made displacement fields (blendshapes): jaw open (rotation about the
   hinge), smile, brow raise, brow lower, blink (upper lids rotate over the eyeball), pucker, mouth
   stretch, jaw sideways, cheek puff, squint.
6. Albedo: a painted mean (skin, hair cap, brows, lash lines, lips, mouth interior, nostrils, eyes) and
   modes for skin tone, warmth, lip colour, brow darkness, hair colour, iris colour, cheek redness and
   random smooth blotches.
Every basis has its standard deviation folded in: coefficients ~N(0, 1) give plausible faces
(expression coefficients are meant in about [-0.5, 1.5], 1 = the full expression).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from functools import lru_cache

import numpy as np
import torch

from deblur_rotate.face3d.model import MorphableModel

__all__ = ["HeadParams", "head_sdf", "build_procedural_model", "EXPRESSION_NAMES", "IDENTITY_NAMES",
           "ALBEDO_NAMES"]

# ----------------------------------------------------------------------------------------------------
# SDF primitives (numpy float64; points [P, 3])


def _ellipsoid(p: np.ndarray, centre, radii) -> np.ndarray:
    """Approximate signed distance to an axis-aligned ellipsoid (exact on the surface's zero set)."""
    q = (p - np.asarray(centre)) / np.asarray(radii)
    k0 = np.linalg.norm(q, axis=-1)
    k1 = np.linalg.norm(q / np.asarray(radii), axis=-1)
    return k0 * (k0 - 1.0) / np.maximum(k1, 1e-9)


def _rot_x(p: np.ndarray, centre, angle: float) -> np.ndarray:
    """Rotate points about the x axis through ``centre`` by ``angle`` radians (for tilted primitives)."""
    c, s = math.cos(angle), math.sin(angle)
    q = p - np.asarray(centre)
    y = c * q[:, 1] - s * q[:, 2]
    z = s * q[:, 1] + c * q[:, 2]
    return np.stack([q[:, 0], y, z], -1) + np.asarray(centre)


def _smin(a: np.ndarray, b: np.ndarray, k: float) -> np.ndarray:
    """Polynomial smooth minimum (smooth union) with blend width ``k`` cm."""
    h = np.maximum(k - np.abs(a - b), 0.0) / k
    return np.minimum(a, b) - h * h * k * 0.25


def _smax(a: np.ndarray, b: np.ndarray, k: float) -> np.ndarray:
    """Smooth maximum (smooth intersection / difference with -b)."""
    return -_smin(-a, -b, k)


def _mirror_x(p: np.ndarray) -> np.ndarray:
    """Fold the x axis so bilateral features are written once (for x >= 0)."""
    return np.concatenate([np.abs(p[:, :1]), p[:, 1:]], -1)


# ----------------------------------------------------------------------------------------------------
# Anatomy


@dataclass(frozen=True)
class HeadParams:
    """Anatomical parameters of the neutral head (centimetres). y = 0 is the eye line, +y is down,
    the face looks along -z."""

    face_length: float = 1.0  # vertical scale of everything below the eyes
    face_width: float = 1.0  # horizontal scale of the cheeks and lower face
    jaw_width: float = 5.4  # half-width of the jaw mass
    head_length: float = 9.6  # half-depth of the cranium
    nose_length: float = 4.6  # eye line to nose tip, vertical
    nose_width: float = 1.45  # half-width of the nose wings
    nose_protrusion: float = 2.2  # nose tip in front of the cheek plane
    eye_spacing: float = 3.15  # half the distance between the eyeball centres
    eye_opening: float = 0.56  # half-height of the eyelid opening
    lip_thickness: float = 0.62  # vertical half-thickness of each lip
    chin_size: float = 1.0  # scale of the chin mass
    cheekbones: float = 1.0  # prominence of the cheekbones
    brow_ridge: float = 1.0  # prominence of the brow ridge
    ear_size: float = 1.0  # scale of the ears

    # Derived landmarks of the layout (not modes)
    @property
    def mouth_y(self) -> float:
        return 6.9 * self.face_length

    @property
    def eye_centre_z(self) -> float:
        return -6.75

    @property
    def eyeball_radius(self) -> float:
        return 1.2

    @property
    def lid_radius(self) -> float:
        return 1.38


NEUTRAL = HeadParams()


def _eye_opening_sdf(p: np.ndarray, hp: HeadParams, opening: float | None = None) -> np.ndarray:
    """Signed distance (in the x-y plane, extruded along z) to the almond-shaped eyelid opening of the
    eye at x > 0 (use with mirrored points). Negative inside the opening."""
    opening = hp.eye_opening if opening is None else opening
    ex = hp.eye_spacing
    half_w = 1.45
    x = (p[:, 0] - ex) / half_w
    # The almond: top and bottom arcs, the upper one higher, corners slightly tilted up at the outside.
    u = np.clip(x, -1.0, 1.0)
    centre_y = -0.06 * u
    half_h = opening * np.sqrt(np.maximum(1.0 - u * u, 0.0)) * (1.0 - 0.12 * u)
    dy = np.abs(p[:, 1] - centre_y) - half_h
    dx = (np.abs(x) - 1.0) * half_w
    return np.maximum(dx, dy)


def head_sdf(points: np.ndarray, hp: HeadParams = NEUTRAL) -> np.ndarray:
    """Signed distance (cm, negative inside) of the neutral head with parameters ``hp`` at ``points [P, 3]``."""
    p = points
    fl, fw = hp.face_length, hp.face_width
    # Lower-face coordinates: scale y below the eye line by face_length and x by face_width.
    q = p.copy()
    q[:, 1] = np.where(p[:, 1] > 0, p[:, 1] / fl, p[:, 1])
    q[:, 0] = p[:, 0] / fw
    qm = _mirror_x(q)
    pm = _mirror_x(p)

    cranium = _ellipsoid(p, (0.0, -2.0, 1.0), (7.5, 9.5, hp.head_length))
    forehead = _ellipsoid(p, (0.0, -4.0, -3.0), (6.3, 5.0, 5.6))
    lower_face = _ellipsoid(q, (0.0, 3.6, -2.4), (6.1, 6.4, 6.3))
    jaw = _ellipsoid(q, (0.0, 7.0, 0.2), (hp.jaw_width, 3.9, 5.4))
    mandible = _ellipsoid(q, (0.0, 7.4, -3.1), (0.98 * hp.jaw_width, 4.1, 4.95))
    chin_r = (2.2 * hp.chin_size, 1.45 * hp.chin_size, 1.6 * hp.chin_size)
    chin = _ellipsoid(q, (0.0, 10.05, -6.6 - 0.4 * (hp.chin_size - 1.0)), chin_r)
    cheekbone = _ellipsoid(qm, (4.05, 1.9, -5.3 - 0.5 * (hp.cheekbones - 1.0)),
                           (2.3, 1.8 * hp.cheekbones, 2.3 * hp.cheekbones))
    cheek = _ellipsoid(qm, (3.4, 4.6, -4.9), (2.5, 2.6, 2.7))
    brow = _ellipsoid(pm, (2.7, -1.75, -7.05 - 0.35 * (hp.brow_ridge - 1.0)), (2.6, 0.95, 1.45 * hp.brow_ridge))
    glabella = _ellipsoid(p, (0.0, -1.1, -7.3), (1.2, 1.3, 1.2))
    muzzle = _ellipsoid(q, (0.0, 6.2, -5.9), (3.3, 2.6, 2.9))
    neck = _ellipsoid(p, (0.0, 14.0, 1.8), (5.2, 7.0, 5.3))
    neck = _smax(neck, p[:, 1] - 18.0, 0.4)  # flat stub at y = 18

    head = _smin(cranium, forehead, 2.0)
    head = _smin(head, lower_face, 2.5)
    head = _smin(head, jaw, 1.5)
    head = _smin(head, mandible, 1.6)
    head = _smin(head, chin, 1.4)
    head = _smin(head, cheekbone, 1.5)
    head = _smin(head, cheek, 1.5)
    head = _smin(head, brow, 0.9)
    head = _smin(head, glabella, 0.9)
    head = _smin(head, muzzle, 1.3)
    head = _smin(head, neck, 2.2)

    # Nose: bridge (tilted), tip, wings, with nostrils carved underneath.
    tip_y = hp.nose_length * fl
    tip_z = -8.55 - hp.nose_protrusion * 0.95
    bridge_c = (0.0, 0.45 * tip_y, -8.0 - 0.55 * hp.nose_protrusion)
    bridge = _ellipsoid(_rot_x(p, bridge_c, -0.38), bridge_c, (0.62, 0.58 * tip_y, 0.9))
    tip = _ellipsoid(p, (0.0, tip_y - 0.25, tip_z + 0.95), (0.85 * hp.nose_width / 1.45 + 0.1, 0.85, 0.95))
    wing = _ellipsoid(pm, (hp.nose_width - 0.5, tip_y + 0.15, tip_z + 1.85), (0.75, 0.62, 0.8))
    nose = _smin(_smin(bridge, tip, 0.6), wing, 0.4)
    head = _smin(head, nose, 0.7)
    nostril = _ellipsoid(pm, (0.48 * hp.nose_width / 1.45 + 0.05, tip_y + 0.55, tip_z + 1.3), (0.33, 0.16, 0.45))
    head = _smax(head, -nostril, 0.12)

    # Lips and the mouth slit.
    my = hp.mouth_y
    lt = hp.lip_thickness
    upper_lip = _ellipsoid(q, (0.0, my / fl - lt * 0.85, -8.35), (2.35, lt, 0.95))
    lower_lip = _ellipsoid(q, (0.0, my / fl + lt * 0.95, -8.2), (2.15, lt * 1.05, 0.95))
    head = _smin(head, upper_lip, 0.5)
    head = _smin(head, lower_lip, 0.5)
    slit = _ellipsoid(q, (0.0, my / fl, -8.6), (2.45, 0.17, 2.4))
    head = _smax(head, -slit, 0.08)

    # Ears: flattened bumps on the sides.
    ear = _ellipsoid(pm, (7.2, 0.9, 1.6), (0.9 * hp.ear_size, 3.0 * hp.ear_size, 1.8 * hp.ear_size))
    head = _smin(head, ear, 0.6)

    # Eyelid shells around the eyeballs with almond openings.
    eye_c = (hp.eye_spacing, 0.0, hp.eye_centre_z)
    lids = _ellipsoid(pm, eye_c, (hp.lid_radius, hp.lid_radius, hp.lid_radius))
    opening = _eye_opening_sdf(pm, hp)
    lids = _smax(lids, -opening, 0.06)
    head = _smin(head, lids, 0.35)
    # Carve the socket between brow and cheek so the opening shows the eyeball.
    socket = _ellipsoid(pm, (hp.eye_spacing, 0.0, hp.eye_centre_z - 1.9), (1.7, 0.9, 1.6))
    socket = _smax(socket, opening, 0.05)
    head = _smax(head, -socket, 0.1)
    return head


# ----------------------------------------------------------------------------------------------------
# Ray grid


@dataclass(frozen=True)
class GridSpec:
    """Resolution of the ray grid. Vertices = (n_lat - 1) * n_lon + 2 (+ two eyeballs)."""

    n_lat: int = 120  # latitude rows from the top pole to the neck
    n_lon: int = 128  # longitude columns around the head
    eye_lat: int = 14  # eyeball sphere rows
    eye_lon: int = 20  # eyeball sphere columns


def _pchip(xs, ys, x):
    from scipy.interpolate import PchipInterpolator

    return PchipInterpolator(np.asarray(xs, float), np.asarray(ys, float))(x)


def _ray_grid(spec: GridSpec) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Ray origins, unit directions ``[V, 3]`` and triangles ``[F, 3]`` of the head grid.

    Rows s in (0, 1) (poles at s = 0 top and 1 bottom); the face band s in ~[0.2, 0.8] holds most rows.
    """
    s = np.linspace(0.0, 1.0, spec.n_lat + 1)[1:-1]
    # Polar angle of the direction (0 = up, pi = down) and the height of the origin on the axis.
    polar = np.radians(_pchip([0, 0.2, 0.5, 0.8, 1.0], [0, 76, 92, 110, 180], s))
    # Height of the ray origin on the axis, chosen so rows meet the face (about 8 cm out) at
    # y = -6.5, -1.6, 1.6, 5.3, 8.5, 12 for s = 0.2 ... 0.8: denser around the eyes and the mouth.
    # Monotone in s together with the polar angle, so rays in one meridian plane never cross.
    origin_y = _pchip([0.0, 0.2, 0.3, 0.44, 0.55, 0.69, 0.8, 1.0], [-2.5, -2.4, -0.5, 1.6, 4.6, 6.5, 9.1, 13.0], s)
    # Longitudes: phi = 0 faces the camera (-z), denser at the front.
    t = np.linspace(-1.0, 1.0, spec.n_lon, endpoint=False)
    phi = math.pi * (t - 0.62 * np.sin(math.pi * t) / math.pi)
    pol, ph = np.meshgrid(polar, phi, indexing="ij")
    dirs = np.stack([np.sin(pol) * np.sin(ph), -np.cos(pol), -np.sin(pol) * np.cos(ph)], -1).reshape(-1, 3)
    origins = np.zeros_like(dirs)
    origins[:, 1] = np.repeat(origin_y, spec.n_lon)
    origins[:, 2] = 0.8
    # Poles
    dirs = np.concatenate([dirs, [[0.0, -1.0, 0.0], [0.0, 1.0, 0.0]]], 0)
    origins = np.concatenate([origins, [[0.0, -2.5, 0.8], [0.0, 13.0, 0.8]]], 0)

    n_rows, n_lon = len(s), spec.n_lon
    top, bottom = n_rows * n_lon, n_rows * n_lon + 1
    tris = []
    j = np.arange(n_lon)
    jn = (j + 1) % n_lon
    for i in range(n_rows - 1):
        a, b = i * n_lon + j, i * n_lon + jn
        c, d = (i + 1) * n_lon + j, (i + 1) * n_lon + jn
        tris.append(np.stack([a, c, b], -1))
        tris.append(np.stack([b, c, d], -1))
    tris.append(np.stack([np.full(n_lon, top), j, jn], -1))
    last = (n_rows - 1) * n_lon
    tris.append(np.stack([np.full(n_lon, bottom), last + jn, last + j], -1))
    return origins, dirs, np.concatenate(tris, 0)


def _outermost_hit(origins: np.ndarray, dirs: np.ndarray, sdf, r_max: float = 24.0, relax: float = 0.8,
                   min_step: float = 0.015) -> np.ndarray:
    """Distance along each ray to the outermost surface crossing: sphere tracing inward from ``r_max``
    (steps of ``relax * sdf``, at least ``min_step``), then bisection between the last outside and the
    first inside sample."""
    n = len(dirs)
    r = np.full(n, r_max)
    r_out = np.full(n, r_max)
    inside = np.zeros(n, bool)
    active = np.arange(n)
    for _ in range(400):
        if len(active) == 0:
            break
        d = sdf(origins[active] + r[active, None] * dirs[active])
        now_inside = d < 0
        inside[active[now_inside]] = True
        out = active[~now_inside]
        r_out[out] = r[out]
        r[out] = r[out] - np.maximum(relax * d[~now_inside], min_step)
        active = out[r[out] > 0]
    if not inside.all():
        raise RuntimeError("procedural head: some rays never meet the surface")
    lo, hi = r, r_out  # sdf(lo) < 0 <= sdf(hi)
    for _ in range(16):
        mid = 0.5 * (lo + hi)
        now_inside = sdf(origins + mid[:, None] * dirs) < 0
        lo = np.where(now_inside, mid, lo)
        hi = np.where(now_inside, hi, mid)
    return 0.5 * (lo + hi)


def _project_to_surface(points: np.ndarray, sdf, steps: int = 4, max_move: float = 1.5) -> np.ndarray:
    """Move points onto the zero set of ``sdf`` along its gradient (Newton steps), at most ``max_move`` cm.

    Used for identity modes: unlike re-casting the rays, it is continuous at grazing rays (a ray that
    hits the nose in one head and the cheek in the other would make a spike).
    """
    eps = 1e-3
    offsets = np.eye(3) * eps
    q = points.copy()
    for _ in range(steps):
        d = sdf(q)
        grad = np.stack([(sdf(q + o) - sdf(q - o)) / (2 * eps) for o in offsets], -1)
        q = q - (d / np.maximum((grad * grad).sum(-1), 1e-6))[:, None] * grad
    move = q - points
    norm = np.linalg.norm(move, axis=-1, keepdims=True)
    return points + move * np.minimum(1.0, max_move / np.maximum(norm, 1e-12))


def _uv_sphere(n_lat: int, n_lon: int) -> tuple[np.ndarray, np.ndarray]:
    """Unit sphere with its pole on -z (looking at the camera): vertices [V, 3], outward triangles."""
    polar = np.linspace(0, math.pi, n_lat + 1)[1:-1]
    az = np.linspace(0, 2 * math.pi, n_lon, endpoint=False)
    pol, a = np.meshgrid(polar, az, indexing="ij")
    verts = np.stack([np.sin(pol) * np.cos(a), np.sin(pol) * np.sin(a), -np.cos(pol)], -1).reshape(-1, 3)
    verts = np.concatenate([verts, [[0, 0, -1.0], [0, 0, 1.0]]], 0)
    n_rows = len(polar)
    j = np.arange(n_lon)
    jn = (j + 1) % n_lon
    tris = []
    for i in range(n_rows - 1):
        a0, b0, c0, d0 = i * n_lon + j, i * n_lon + jn, (i + 1) * n_lon + j, (i + 1) * n_lon + jn
        tris += [np.stack([a0, c0, b0], -1), np.stack([b0, c0, d0], -1)]
    front, back = n_rows * n_lon, n_rows * n_lon + 1
    tris.append(np.stack([np.full(n_lon, front), j, jn], -1))
    last = (n_rows - 1) * n_lon
    tris.append(np.stack([np.full(n_lon, back), last + jn, last + j], -1))
    return verts, np.concatenate(tris, 0)


def _orient_outward(vertices: np.ndarray, tris: np.ndarray, centre: np.ndarray) -> np.ndarray:
    """Flip the winding of all triangles if most normals point inwards (counter-clockwise from outside)."""
    v0, v1, v2 = vertices[tris[:, 0]], vertices[tris[:, 1]], vertices[tris[:, 2]]
    normals = np.cross(v1 - v0, v2 - v0)
    outward = np.einsum("fc,fc->f", normals, (v0 + v1 + v2) / 3 - centre)
    return tris if (outward > 0).mean() > 0.5 else tris[:, [0, 2, 1]]


# ----------------------------------------------------------------------------------------------------
# Modes

IDENTITY_NAMES = [
    "face_length", "face_width", "jaw_width", "head_length", "nose_length", "nose_width", "nose_protrusion",
    "eye_spacing", "lip_thickness", "chin_size", "cheekbones", "brow_ridge", "ear_size",
]
# One standard deviation of each anatomical parameter.
_IDENTITY_STD = {
    "face_length": 0.06, "face_width": 0.05, "jaw_width": 0.35, "head_length": 0.4, "nose_length": 0.3,
    "nose_width": 0.15, "nose_protrusion": 0.3, "eye_spacing": 0.15, "lip_thickness": 0.12, "chin_size": 0.12,
    "cheekbones": 0.2, "brow_ridge": 0.25, "ear_size": 0.1,
}
EXPRESSION_NAMES = ["jaw_open", "smile", "brow_raise", "brow_lower", "blink", "pucker", "mouth_stretch",
                    "jaw_sideways", "cheek_puff", "squint"]
ALBEDO_NAMES = ["skin_tone", "skin_warmth", "lip_colour", "brow_darkness", "hair_colour", "iris_colour",
                "cheek_redness"]


def _smoothstep(e0: float, e1: float, x: np.ndarray) -> np.ndarray:
    t = np.clip((x - e0) / (e1 - e0), 0.0, 1.0)
    return t * t * (3 - 2 * t)


def _gauss(p: np.ndarray, centre, sigma) -> np.ndarray:
    d = (p - np.asarray(centre)) / np.asarray(sigma)
    return np.exp(-0.5 * (d * d).sum(-1))


def _eyeball_centres(hp: HeadParams) -> np.ndarray:
    return np.array([[-hp.eye_spacing, 0.0, hp.eye_centre_z], [hp.eye_spacing, 0.0, hp.eye_centre_z]])


def _surface(origins, dirs, hp: HeadParams) -> np.ndarray:
    """Head-grid vertices: the outermost hit of each ray on the head with parameters ``hp``."""
    r = _outermost_hit(origins, dirs, lambda x: head_sdf(x, hp))
    return origins + r[:, None] * dirs


def _expression_fields(head: np.ndarray, eyes: np.ndarray, hp: HeadParams, origins, dirs) -> list[np.ndarray]:
    """Displacements ``[V, 3]`` of each expression at full strength (coefficient 1)."""
    v = np.concatenate([head, eyes], 0)
    n_head = len(head)
    x, y, z = v[:, 0], v[:, 1], v[:, 2]
    is_head = np.arange(len(v)) < n_head
    front = _smoothstep(1.0, -3.0, z) * is_head  # 1 on the face, 0 behind the ears
    my = hp.mouth_y
    fields = []

    # jaw_open: rotate the lower face about the hinge axis (in front of the ears).
    # The lip line is a sharp step in the middle of the mouth and a gradual ramp past the corners.
    band = 0.12 + 0.9 * _smoothstep(1.8, 3.6, np.abs(x))
    below = _smoothstep(my - band, my + band, y) * _smoothstep(2.5, -1.0, z) * _smoothstep(14.0, 11.0, y)
    below *= _smoothstep(6.0, 4.5, np.abs(x)) * is_head
    hinge = (0.0, 1.2, 1.0)
    rotated = _rot_x(v, hinge, math.radians(16.0))  # positive: the chin goes down and back
    fields.append((rotated - v) * below[:, None])

    # smile: mouth corners up, out and back; cheeks rise.
    d = np.zeros_like(v)
    for sx in (-1, 1):
        w = _gauss(v, (sx * 2.4, my, -7.6), (1.3, 1.0, 2.0)) * front
        d += w[:, None] * np.array([sx * 0.45, -0.55, 0.35])
        wc = _gauss(v, (sx * 3.4, 3.8, -6.4), (1.6, 1.4, 2.0)) * front
        d += wc[:, None] * np.array([0.0, -0.25, -0.2])
    fields.append(d)

    # brow_raise / brow_lower: the brow band moves up, or the inner brows down and together.
    band = _gauss(v, (0.0, -2.2, -7.5), (4.2, 1.4, 3.0)) * front * (y < -0.5)
    fields.append(band[:, None] * np.array([0.0, -0.55, 0.0]))
    d = np.zeros_like(v)
    for sx in (-1, 1):
        w = _gauss(v, (sx * 1.8, -1.8, -7.8), (1.4, 1.0, 2.0)) * front * (y < -0.4)
        d += w[:, None] * np.array([-sx * 0.25, 0.35, 0.05])
    fields.append(d)

    # blink: the upper lid rotates down over the eyeball (about the eyeball centre's x axis).
    d = np.zeros_like(v)
    lid_angle = math.atan2(hp.eye_opening * 2.0, hp.lid_radius) * 1.05
    for centre in _eyeball_centres(hp):
        rel = v - centre
        dist = np.linalg.norm(rel, axis=-1)
        on_lid = _smoothstep(2.3, 1.5, dist) * is_head * (rel[:, 2] < 0.2)
        upper = _smoothstep(0.0, -0.25, rel[:, 1])  # y < 0 relative to the eye centre: the upper lid
        inside_x = _smoothstep(1.9, 1.3, np.abs(rel[:, 0]))
        w = on_lid * upper * inside_x
        rot = _rot_x(v, centre, lid_angle)  # positive angle about x moves -z points towards +y
        d += (rot - v) * w[:, None]
    fields.append(d)

    # pucker: lips forward and narrower.
    w = _gauss(v, (0.0, my, -8.4), (1.9, 1.2, 1.6)) * front
    d = w[:, None] * np.array([0.0, 0.0, -0.6])
    d[:, 0] += -0.3 * x * w
    fields.append(d)

    # mouth_stretch: corners outward and slightly down.
    d = np.zeros_like(v)
    for sx in (-1, 1):
        w = _gauss(v, (sx * 2.4, my, -7.6), (1.2, 0.9, 2.0)) * front
        d += w[:, None] * np.array([sx * 0.55, 0.12, 0.1])
    fields.append(d)

    # jaw_sideways: the lower face slides sideways.
    fields.append(below[:, None] * np.array([0.6, 0.0, 0.0]))

    # cheek_puff: cheeks outward along their normal direction (approximated by the ray direction).
    d = np.zeros_like(v)
    head_dirs = np.concatenate([dirs, np.zeros((len(eyes), 3))], 0)
    for sx in (-1, 1):
        w = _gauss(v, (sx * 3.8, 5.0, -5.6), (1.5, 1.5, 2.0)) * is_head
        d += w[:, None] * head_dirs * 0.55
    fields.append(d)

    # squint: the lower lid rises a little and the cheek under the eye follows.
    d = np.zeros_like(v)
    for centre in _eyeball_centres(hp):
        w = _gauss(v, centre + np.array([0.0, 1.1, -1.0]), (1.5, 0.6, 1.0)) * is_head
        d += w[:, None] * np.array([0.0, -0.3, -0.05])
    fields.append(d)
    return fields


def _albedo(v: np.ndarray, n_head: int, eye_local: np.ndarray, hp: HeadParams, rng: np.random.Generator,
            n_blotch: int) -> tuple[np.ndarray, list[np.ndarray]]:
    """Mean albedo ``[V, 3]`` and albedo modes (list of ``[V, 3]``)."""
    x, y, z = v[:, 0], v[:, 1], v[:, 2]
    n = len(v)
    is_head = np.arange(n) < n_head
    is_eye = ~is_head
    skin = np.array([0.80, 0.58, 0.47])
    albedo = np.tile(skin, (n, 1))

    # Hair cap: hairline high on the forehead, lower at the sides, at the nape behind.
    horiz = np.maximum(np.hypot(x, z - 0.5), 1e-6)
    frontness = -(z - 0.5) / horiz  # 1 at the face, -1 at the back
    hairline = np.interp(frontness, [-1.0, -0.2, 0.35, 0.7, 1.0], [8.0, 2.5, -2.0, -5.4, -6.1])
    hair = _smoothstep(0.8, -0.8, y - hairline) * is_head
    hair_colour = np.array([0.16, 0.11, 0.08])

    # Brows: arcs above the eyes.
    brow = np.zeros(n)
    for sx in (-1, 1):
        u = (x * sx - 2.9) / 2.1
        arc_y = -1.75 - 0.35 * (1 - u ** 2) + 0.15 * u
        w = np.exp(-0.5 * ((y - arc_y) / 0.3) ** 2) * _smoothstep(1.15, 0.8, np.abs(u)) * (1.0 - 0.35 * u)
        brow = np.maximum(brow, w * (z < -6.0) * is_head)
    # Lash lines: along the eyelid openings.
    pm = np.concatenate([np.abs(v[:, :1]), v[:, 1:]], -1)
    opening = _eye_opening_sdf(pm, hp)
    lash = np.exp(-0.5 * ((opening - 0.03) / 0.07) ** 2) * (z < -7.0) * is_head * (np.abs(y) < 1.5)
    # Lips, mouth interior, nostrils.
    q = v.copy()
    my = hp.mouth_y
    lips = np.maximum(_gauss(v, (0, my - 0.5, -8.4), (2.0, 0.55, 1.5)),
                      _gauss(v, (0, my + 0.55, -8.3), (1.8, 0.6, 1.5)))
    lips = _smoothstep(0.35, 0.6, lips) * is_head
    slit = _ellipsoid(q, (0.0, my, -8.6), (2.45, 0.17, 2.4))
    mouth_inside = _smoothstep(0.25, 0.02, slit) * is_head * (z > -8.8)
    # The inner faces of the lips (deep behind the lip fronts) darken towards the mouth cavity.
    inner_lip = _smoothstep(-8.2, -7.4, z) * (np.abs(y - my) < 0.6) * (np.abs(x) < 2.4) * is_head
    mouth_inside = np.maximum(mouth_inside, inner_lip)
    tip_y = hp.nose_length
    nostril = np.zeros(n)
    for sx in (-1, 1):
        nostril = np.maximum(nostril, _gauss(v, (sx * 0.55, tip_y + 0.55, -9.3), (0.3, 0.2, 0.5)))
    nostril = _smoothstep(0.3, 0.7, nostril) * is_head

    albedo = albedo * (1 - hair[:, None]) + hair_colour * hair[:, None]
    albedo = albedo * (1 - 0.85 * brow[:, None]) + np.array([0.17, 0.12, 0.09]) * 0.85 * brow[:, None]
    albedo = albedo * (1 - 0.7 * lash[:, None]) + np.array([0.12, 0.08, 0.07]) * 0.7 * lash[:, None]
    albedo = albedo * (1 - lips[:, None]) + np.array([0.72, 0.38, 0.38]) * lips[:, None]
    albedo = albedo * (1 - mouth_inside[:, None]) + np.array([0.25, 0.06, 0.06]) * mouth_inside[:, None]
    albedo = albedo * (1 - nostril[:, None]) + np.array([0.3, 0.15, 0.12]) * nostril[:, None]

    # Eyeballs: sclera, iris, pupil by the angle from the eyeball's forward pole.
    cos_pole = np.zeros(n)
    cos_pole[is_eye] = np.tile(-eye_local[:, 2], 2)
    iris = (cos_pole > math.cos(math.radians(33))) & is_eye
    pupil = (cos_pole > math.cos(math.radians(14))) & is_eye
    albedo[is_eye] = np.array([0.88, 0.86, 0.82])
    albedo[iris] = np.array([0.36, 0.23, 0.13])
    albedo[pupil] = np.array([0.03, 0.03, 0.03])

    skin_mask = is_head * (1 - hair) * (1 - lips) * (1 - mouth_inside) * (1 - brow)
    face = skin_mask[:, None]
    modes = [
        face * skin * 0.16,  # skin_tone: lighter/darker
        face * np.array([0.04, 0.0, -0.04]),  # skin_warmth
        lips[:, None] * np.array([0.1, -0.05, -0.02]),  # lip_colour
        (brow + lash)[:, None] * np.array([-0.06, -0.05, -0.04]),  # brow_darkness
        hair[:, None] * np.array([0.12, 0.09, 0.05]),  # hair_colour (dark <-> brown)
        (iris & ~pupil)[:, None] * np.array([-0.06, 0.02, 0.12]),  # iris_colour (brown <-> blue/green)
    ]
    cheeks = sum(_gauss(v, (sx * 3.8, 3.5, -6.8), (1.4, 1.3, 2.0)) for sx in (-1, 1)) * skin_mask
    modes.append(cheeks[:, None] * np.array([0.06, -0.02, -0.01]))
    for _ in range(n_blotch):  # smooth random blotches on the skin, random colour direction
        centres = rng.normal(size=(6, 3)) * np.array([4.0, 5.0, 2.0]) + np.array([0.0, 2.0, -7.0])
        signs = rng.choice([-1.0, 1.0], size=6)
        field_ = sum(s * _gauss(v, c, (1.2, 1.2, 1.5)) for s, c in zip(signs, centres))
        colour = rng.normal(size=3) * 0.02 + np.array([0.03, 0.02, 0.015])
        modes.append((field_ * skin_mask)[:, None] * colour)
    return albedo, modes


def _landmark_targets(hp: HeadParams) -> np.ndarray:
    """68 iBUG landmark target points ``[68, 2]`` (x, y) on the frontal view; index 0 is the subject's
    right (image left, x < 0)."""
    pts = []
    # Jaw 0..16: from in front of the right ear down round the chin to the left. These directions were
    # calibrated once against the iBUG annotation convention (dlib's 68-point predictor on frontal renders
    # of the mean face): the vertex taken is the frontal silhouette point in each direction.
    jaw_right = [(-6.66, 0.52), (-6.68, 2.21), (-6.38, 3.47), (-5.87, 5.19), (-5.35, 6.76), (-4.71, 8.61),
                 (-3.48, 10.06), (-2.03, 11.05)]
    pts += jaw_right + [(0.0, 11.45)] + [(-x, y) for x, y in reversed(jaw_right)]
    # Brows 17..21 (right brow, outer to inner), 22..26 (left brow, inner to outer).
    for u in np.linspace(-1, 1, 5):
        pts.append((-(2.9 - u * 2.0), -1.75 - 0.35 * (1 - u ** 2) - 0.15 * u))
    for u in np.linspace(1, -1, 5):
        pts.append(((2.9 - u * 2.0), -1.75 - 0.35 * (1 - u ** 2) - 0.15 * u))
    # Nose bridge 27..30 (30 = tip), nose bottom 31..35.
    tip = hp.nose_length * hp.face_length
    for f in np.linspace(0.0, 1.0, 4):
        pts.append((0.0, -0.3 + f * (tip - 0.05 + 0.3)))
    for xx in (-1.15, -0.6, 0.0, 0.6, 1.15):
        pts.append((xx * hp.nose_width / 1.45, tip + 0.62 + (0.1 if xx == 0 else 0.0) - 0.12 * abs(xx)))
    # Eyes: 36..41 right eye (outer corner, upper outer, upper inner, inner corner, lower inner, lower outer).
    ex = hp.eye_spacing
    def eye(sign):
        out = []
        for u, upper in ((1.0, None), (0.42, True), (-0.42, True), (-1.0, None), (-0.42, False), (0.42, False)):
            xx = ex + u * 1.4
            cy = -0.06 * u
            h = hp.eye_opening * math.sqrt(max(1 - u * u, 0)) * (1 - 0.12 * u)
            yy = cy if upper is None else (cy - h if upper else cy + h)
            out.append((sign * xx, yy))
        return out
    pts += eye(-1)  # right eye: outer corner (36) at x < 0 ... inner corner (39)
    # Left eye 42..47: inner corner? No: iBUG 42 = left eye inner corner, 45 = outer corner.
    left = eye(1)  # (outer, upper outer, upper inner, inner, lower inner, lower outer)
    pts += [left[3], left[2], left[1], left[0], left[5], left[4]]
    # Mouth outer 48..59 and inner 60..67.
    my = hp.mouth_y
    w_out, w_in = 2.45, 2.15
    lt = hp.lip_thickness
    outer = [(-w_out, my), (-1.5, my - 1.05 * lt * 1.6), (-0.55, my - 1.7 * lt * 1.3), (0.0, my - 1.55 * lt * 1.3),
             (0.55, my - 1.7 * lt * 1.3), (1.5, my - 1.05 * lt * 1.6), (w_out, my),
             (1.4, my + 1.5 * lt * 1.4), (0.6, my + 1.95 * lt * 1.4), (0.0, my + 2.0 * lt * 1.4),
             (-0.6, my + 1.95 * lt * 1.4), (-1.4, my + 1.5 * lt * 1.4)]
    inner = [(-w_in, my), (-0.8, my - 0.12), (0.0, my - 0.12), (0.8, my - 0.12), (w_in, my),
             (0.8, my + 0.12), (0.0, my + 0.12), (-0.8, my + 0.12)]
    pts += outer + inner
    return np.asarray(pts, dtype=np.float64)


def _pick_landmarks(head: np.ndarray, normals: np.ndarray, hp: HeadParams) -> np.ndarray:
    """Vertex indices of the 68 landmarks: for each frontal (x, y) target the front-most visible head
    vertex nearby; jaw points take the frontal silhouette instead."""
    targets = _landmark_targets(hp)
    idx = []
    front_facing = normals[:, 2] < 0.0
    for k, (tx, ty) in enumerate(targets):
        d2 = (head[:, 0] - tx) ** 2 + (head[:, 1] - ty) ** 2
        if k <= 16:
            # Frontal silhouette: among vertices near the target direction from the face centre, the one
            # furthest out in the image plane whose normal is close to perpendicular to the view.
            centre = np.array([0.0, 3.0])
            direction = np.array([tx, ty]) - centre
            direction /= np.linalg.norm(direction)
            rel = head[:, :2] - centre
            along = rel @ direction
            across = np.abs(rel @ np.array([-direction[1], direction[0]]))
            # In front of the ears at the sides, on the chin's edge (not the neck) at the bottom.
            z_max = (-1.0, -1.0, -1.5, -2.5, -4.0, -5.0, -5.5, -6.0, -6.0)[min(k, 16 - k)]
            ok = (across < 0.4) & (head[:, 2] < z_max) & (head[:, 1] < 11.9) & (np.abs(normals[:, 2]) < 0.6)
            cand = np.where(ok, along, -np.inf)
            idx.append(int(np.argmax(cand)))
        else:
            # Front-most vertex near the target (inside 0.3 cm in x-y), so occluded folds are skipped.
            side = np.ones(len(head), bool)
            if 61 <= k <= 63:  # inner upper lip: stay above the mouth line
                side = head[:, 1] < hp.mouth_y
            elif 65 <= k <= 67:  # inner lower lip: below it
                side = head[:, 1] > hp.mouth_y
            near = (d2 < 0.3 ** 2) & side
            score = np.where(near & front_facing, head[:, 2], np.inf)
            if not np.isfinite(score).any():  # coarse grids: the nearest allowed vertex
                score = np.where(front_facing & side, d2, np.inf)
            idx.append(int(np.argmin(score)))
    return np.asarray(idx, dtype=np.int64)


def _random_bump_fields(head: np.ndarray, dirs: np.ndarray, hp: HeadParams, rng: np.random.Generator,
                        n: int) -> list[np.ndarray]:
    """Smooth random identity modes: sums of Gaussian bumps along the ray directions, tapered to zero
    around the eyes (so eyelids never cut into the eyeballs)."""
    fields = []
    eye_taper = np.ones(len(head))
    for c in _eyeball_centres(hp):
        eye_taper *= _smoothstep(1.6, 3.2, np.linalg.norm(head - c, axis=-1))
    for _ in range(n):
        centres = rng.normal(size=(5, 3)) * np.array([5.0, 6.0, 5.0]) + np.array([0.0, 2.0, -3.0])
        amps = rng.normal(size=5) * 0.35
        f = sum(a * _gauss(head, c, (2.5, 2.5, 2.5)) for a, c in zip(amps, centres))
        fields.append((f * eye_taper)[:, None] * dirs)
    return fields


def _np_vertex_normals(v: np.ndarray, tris: np.ndarray) -> np.ndarray:
    fn = np.cross(v[tris[:, 1]] - v[tris[:, 0]], v[tris[:, 2]] - v[tris[:, 0]])
    vn = np.zeros_like(v)
    for k in range(3):
        np.add.at(vn, tris[:, k], fn)
    return vn / np.maximum(np.linalg.norm(vn, axis=-1, keepdims=True), 1e-12)


@lru_cache(maxsize=4)
def _build_arrays(n_id: int, n_exp: int, n_tex: int, spec: GridSpec, seed: int):
    rng = np.random.default_rng(seed)
    hp = NEUTRAL
    origins, dirs, head_tris = _ray_grid(spec)
    head = _surface(origins, dirs, hp)
    n_head = len(head)

    eye_local, eye_tris = _uv_sphere(spec.eye_lat, spec.eye_lon)
    centres = _eyeball_centres(hp)
    eyes = np.concatenate([c + hp.eyeball_radius * eye_local for c in centres], 0)
    n_eye = len(eye_local)
    eye_tris = _orient_outward(eye_local, eye_tris, np.zeros(3))
    tris = np.concatenate([
        _orient_outward(head, head_tris, np.array([0.0, 2.0, 0.5])),
        eye_tris + n_head,
        eye_tris + n_head + n_eye,
    ], 0)
    vertices = np.concatenate([head, eyes], 0)

    # Identity: anatomical SDF modes (difference along the same rays) + random bumps.
    id_fields = []
    for name in IDENTITY_NAMES[: min(n_id, len(IDENTITY_NAMES))]:
        hp2 = replace(hp, **{name: getattr(hp, name) + _IDENTITY_STD[name]})
        head2 = _project_to_surface(head, lambda x, hp2=hp2: head_sdf(x, hp2))
        eyes2 = np.concatenate([c + hp.eyeball_radius * eye_local for c in _eyeball_centres(hp2)], 0)
        id_fields.append(np.concatenate([head2 - head, eyes2 - eyes], 0))
    n_random = max(0, n_id - len(id_fields))
    for f in _random_bump_fields(head, dirs, hp, rng, n_random):
        id_fields.append(np.concatenate([f, np.zeros_like(eyes)], 0))

    exp_fields = _expression_fields(head, eyes, hp, origins, dirs)
    while len(exp_fields) < n_exp:  # extra expression modes: weaker random mixtures of the named ones
        w = rng.normal(size=len(exp_fields[:10])) * 0.4
        exp_fields.append(sum(wi * f for wi, f in zip(w, exp_fields[:10])))
    exp_fields = exp_fields[:n_exp]

    n_named_tex = len(ALBEDO_NAMES)
    mean_albedo, tex_fields = _albedo(vertices, n_head, eye_local, hp, rng, max(0, n_tex - n_named_tex))
    tex_fields = tex_fields[:n_tex]

    normals = _np_vertex_normals(vertices, tris)
    landmarks = _pick_landmarks(head, normals[:n_head], hp)

    def stack(fields, k):
        if k == 0:
            return np.zeros((len(vertices), 3, 0))
        return np.stack(fields, -1)

    return (vertices, stack(id_fields, n_id), stack(exp_fields, n_exp), mean_albedo,
            stack(tex_fields, n_tex), tris, landmarks)


def _cache_path(key: str):
    import hashlib
    import os
    from pathlib import Path

    source = Path(__file__).read_bytes()
    digest = hashlib.sha256(source + key.encode()).hexdigest()[:16]
    root = Path(os.environ.get("DEBLUR_ROTATE_CACHE", Path.home() / ".cache" / "deblur_rotate"))
    return root / f"procedural-{digest}.npz"


def _load_or_build(n_id: int, n_exp: int, n_tex: int, spec: GridSpec, seed: int):
    """Arrays of the model from the on-disk cache (keyed by this file's source and the arguments), or
    built (about 15 s at the default size) and cached atomically. A broken cache file is rebuilt."""
    import os

    names = ("vertices", "id_basis", "exp_basis", "mean_albedo", "albedo_basis", "triangles", "landmarks")
    path = _cache_path(f"{n_id},{n_exp},{n_tex},{spec},{seed}")
    if path.exists():
        try:
            with np.load(path) as data:
                return tuple(data[n] for n in names)
        except Exception:  # noqa: BLE001 - a damaged cache is rebuilt, never trusted
            pass
    arrays = _build_arrays(n_id, n_exp, n_tex, spec, seed)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}.npz")
        np.savez(tmp, **dict(zip(names, arrays)))
        os.replace(tmp, path)
    except OSError:  # a read-only home is fine: the model is just rebuilt next time
        pass
    return arrays


def build_procedural_model(n_id: int = 16, n_exp: int = 10, n_tex: int = 10, n_lat: int = 120, n_lon: int = 128,
                           seed: int = 0) -> MorphableModel:
    """Build the procedural morphable model.

    n_id: identity modes (the first 13 anatomical, the rest smooth random bumps);
    n_exp: expression modes (the first 10 named in ``EXPRESSION_NAMES``; more are random mixtures);
    n_tex: albedo modes (the first 7 named in ``ALBEDO_NAMES``, the rest random blotches);
    n_lat, n_lon: head grid resolution ((n_lat - 1) * n_lon + 2 head vertices plus two 282-vertex eyeballs);
    seed: seed of the random modes. Deterministic; cached per process.
    """
    if min(n_id, n_exp, n_tex) < 0 or n_lat < 8 or n_lon < 8:
        raise ValueError("mode counts must be >= 0 and the grid at least 8 x 8")
    arrays = _load_or_build(int(n_id), int(n_exp), int(n_tex), GridSpec(n_lat, n_lon), int(seed))
    v, idb, exb, alb, texb, tris, lms = (torch.from_numpy(np.asarray(a)) for a in arrays)
    return MorphableModel(
        mean_shape=v.float(), id_basis=idb.float(), exp_basis=exb.float(), mean_albedo=alb.float(),
        albedo_basis=texb.float(), triangles=tris.long(), landmark_indices=lms.long(),
        name=f"procedural-v1(id={n_id},exp={n_exp},tex={n_tex},grid={n_lat}x{n_lon},seed={seed})",
    )

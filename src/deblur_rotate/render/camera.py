"""Camera and rotation conventions shared by every module.

Frames
------
* Model frame (the morphable model's own coordinates, centimetres): x to the image's right when the face
  is frontal, y down, z away from the camera. A frontal face looks along -z (its nose has the most
  negative z).
* Camera frame: OpenCV (x right, y down, z forward). A model point p goes to the camera frame as
  ``p_cam = R @ p + t``.
* Image: pixel (row i, column j) has its centre at continuous coordinates (u=j, v=i) (OpenCV / dlib
  convention), so an image of width W spans u in [-0.5, W-0.5]. Landmarks are (u, v) = (x, y) pixels.

Rotations
---------
Pose is (pitch, yaw, roll) in radians: rotations about the camera's x, y and z axes, composed as
``R = R_z(roll) @ R_y(yaw) @ R_x(pitch)`` (pitch applied first). With this convention a positive yaw
turns a frontal face's nose towards the image's left (-x), a positive pitch tilts the nose down (+y),
and a positive roll turns the face clockwise in the image.
"""
from __future__ import annotations

import math

import torch

__all__ = [
    "wrap_angle",
    "pose_error_deg",
    "euler_to_matrix",
    "matrix_to_euler",
    "intrinsics",
    "project",
    "transform",
    "look_at_rig",
]


def wrap_angle(angles: torch.Tensor) -> torch.Tensor:
    """Angles (radians, any shape) wrapped to [-pi, pi)."""
    return torch.remainder(angles + math.pi, 2 * math.pi) - math.pi


def pose_error_deg(pred: torch.Tensor, true: torch.Tensor) -> torch.Tensor:
    """Absolute angle errors in degrees, wrapped to [0, 180]: pred, true [..., 3] (pitch, yaw, roll) radians
    -> [..., 3] (no reduction)."""
    return wrap_angle(pred - true).abs() * (180.0 / math.pi)


def euler_to_matrix(angles: torch.Tensor) -> torch.Tensor:
    """(pitch, yaw, roll) in radians ``[..., 3]`` -> rotation matrices ``[..., 3, 3]``.

    ``R = R_z(roll) @ R_y(yaw) @ R_x(pitch)``. Differentiable.
    """
    pitch, yaw, roll = angles.unbind(-1)
    cx, sx = torch.cos(pitch), torch.sin(pitch)
    cy, sy = torch.cos(yaw), torch.sin(yaw)
    cz, sz = torch.cos(roll), torch.sin(roll)
    one, zero = torch.ones_like(cx), torch.zeros_like(cx)
    rx = torch.stack([one, zero, zero, zero, cx, -sx, zero, sx, cx], -1).unflatten(-1, (3, 3))
    ry = torch.stack([cy, zero, sy, zero, one, zero, -sy, zero, cy], -1).unflatten(-1, (3, 3))
    rz = torch.stack([cz, -sz, zero, sz, cz, zero, zero, zero, one], -1).unflatten(-1, (3, 3))
    return rz @ ry @ rx


def matrix_to_euler(rotation: torch.Tensor) -> torch.Tensor:
    """Rotation matrices ``[..., 3, 3]`` -> (pitch, yaw, roll) radians ``[..., 3]``; inverse of
    :func:`euler_to_matrix` for |yaw| < 90 degrees (yaw is returned in [-pi/2, pi/2])."""
    # R = Rz Ry Rx  =>  R[2,0] = -sin(yaw), R[2,1] = cos(yaw) sin(pitch), R[2,2] = cos(yaw) cos(pitch),
    #                   R[1,0] = sin(roll) cos(yaw), R[0,0] = cos(roll) cos(yaw)
    yaw = torch.asin((-rotation[..., 2, 0]).clamp(-1.0, 1.0))
    pitch = torch.atan2(rotation[..., 2, 1], rotation[..., 2, 2])
    roll = torch.atan2(rotation[..., 1, 0], rotation[..., 0, 0])
    return torch.stack([pitch, yaw, roll], -1)


def intrinsics(focal: float, width: int, height: int | None = None) -> torch.Tensor:
    """Pinhole intrinsics ``[3, 3]``: focal length in pixels, principal point at the image centre
    ((W-1)/2, (H-1)/2) under the pixel-centre-at-integer convention."""
    height = width if height is None else height
    return torch.tensor(
        [[focal, 0.0, (width - 1) / 2.0], [0.0, focal, (height - 1) / 2.0], [0.0, 0.0, 1.0]],
        dtype=torch.float32,
    )


def transform(points: torch.Tensor, rotation: torch.Tensor, translation: torch.Tensor) -> torch.Tensor:
    """Rigid transform ``R @ p + t``.

    points ``[N, V, 3]``, rotation ``[N, 3, 3]``, translation ``[N, 3]`` -> ``[N, V, 3]``.
    """
    return points @ rotation.transpose(-1, -2) + translation.unsqueeze(-2)


def project(points_cam: torch.Tensor, camera_matrix: torch.Tensor) -> torch.Tensor:
    """Pinhole projection of camera-frame points ``[N, V, 3]`` (z > 0) with intrinsics ``[3, 3]`` or
    ``[N, 3, 3]`` -> pixel coordinates (u, v) ``[N, V, 2]``."""
    if camera_matrix.dim() == 2:
        camera_matrix = camera_matrix.expand(points_cam.shape[0], 3, 3)
    z = points_cam[..., 2:3].clamp_min(1e-6)
    xy = points_cam[..., :2] / z
    focal = torch.stack([camera_matrix[:, 0, 0], camera_matrix[:, 1, 1]], -1).unsqueeze(1)  # [N, 1, 2]
    centre = camera_matrix[:, :2, 2].unsqueeze(1)  # [N, 1, 2]
    return xy * focal + centre


def look_at_rig(view_yaws_deg: list[float], distance: float, target: tuple[float, float, float]):
    """Extrinsics of cameras on a horizontal circle around ``target`` (world = model frame of a
    frontal head), all looking at ``target``.

    A camera at rig angle ``a`` sits at ``target + distance * (sin a, 0, -cos a)``: positive angles are
    on the image's right of the frontal camera. Returns ``(rotations [K, 3, 3], translations [K, 3])``
    with ``p_cam = R @ p_world + t``. A frontal head seen from the camera at angle ``a`` has yaw ``a``
    (its nose turns to that camera's left).
    """
    angles = torch.tensor([math.radians(a) for a in view_yaws_deg], dtype=torch.float32)
    zeros = torch.zeros_like(angles)
    # The camera looks along +z of its frame towards the target; rotating the world by yaw=a about y
    # brings the camera at angle a onto the optical axis.
    rotations = euler_to_matrix(torch.stack([zeros, angles, zeros], -1))
    target_t = torch.tensor(target, dtype=torch.float32)
    # p_cam = R (p - target) + (0, 0, distance)
    translations = -(rotations @ target_t) + torch.tensor([0.0, 0.0, distance])
    return rotations, translations

import math

import torch

from deblur_rotate.render.camera import euler_to_matrix, intrinsics, look_at_rig, matrix_to_euler, project


def test_euler_round_trip_and_orthonormal():
    angles = (torch.rand(200, 3) * 2 - 1) * torch.tensor([1.2, 1.4, 1.2])
    rot = euler_to_matrix(angles)
    assert torch.allclose(rot @ rot.transpose(-1, -2), torch.eye(3).expand(200, 3, 3), atol=1e-5)
    assert torch.allclose(torch.linalg.det(rot), torch.ones(200), atol=1e-5)
    assert torch.allclose(matrix_to_euler(rot), angles, atol=1e-4)


def test_sign_conventions():
    nose = torch.tensor([0.0, 0.0, -1.0])
    yawed = euler_to_matrix(torch.tensor([0.0, 0.3, 0.0])) @ nose
    assert yawed[0] < 0  # positive yaw turns the nose to the image's left
    pitched = euler_to_matrix(torch.tensor([0.3, 0.0, 0.0])) @ nose
    assert pitched[1] > 0  # positive pitch tilts the nose down (y down)


def test_projection_principal_point_and_rig():
    k = intrinsics(100.0, 64)
    uv = project(torch.tensor([[[0.0, 0.0, 10.0], [1.0, -2.0, 10.0]]]), k)[0]
    assert torch.allclose(uv[0], torch.tensor([31.5, 31.5]))
    assert torch.allclose(uv[1], torch.tensor([41.5, 11.5]))
    rot, trans = look_at_rig([-40.0, 0.0, 40.0], 100.0, (0.0, 3.0, -3.0))
    target = torch.tensor([0.0, 3.0, -3.0])
    cam_target = (rot @ target) + trans
    assert torch.allclose(cam_target, torch.tensor([0.0, 0.0, 100.0]).expand(3, 3), atol=1e-4)
    # The camera at +40 degrees sees a frontal head with yaw +40 degrees.
    assert math.isclose(float(matrix_to_euler(rot[2])[1]), math.radians(40.0), abs_tol=1e-5)

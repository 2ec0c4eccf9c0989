"""The cascade baseline of the paper's Table 5: "Jin et al. + Zhou et al." (deblur, then rotate).

* :class:`DirectDeblurNet` stands in for Jin et al. (CVPR 2018, "Learning to extract a video sequence from a
  single motion-blurred image"): a compact U-Net that regresses the 5 sharp frames ``[N, 5, 3, R, R]``
  straight from the blurry image ``[N, 3, R, R]``, trained on the same data as our model with the
  forward/backward min (``deblur-rotate train deblur-baseline``). Jin et al. chain several networks (middle
  frame first, then the outer pairs); one U-Net with 5 x 3 output channels is the compact version of the
  same direct regression.
* :func:`texture_warp_rotate` stands in for Zhou et al. (CVPR 2020, "Rotate-and-Render"): the fitted 3DMM
  mesh (E_3D's coefficients) is projected into the image, each vertex visible in the image takes the
  image's colour there, the head is turned by ``delta_pose`` about its centre and the coloured mesh is
  rendered at the new pose. Rotate-and-Render then repairs the holes with a GAN; we do not: **pixels of
  the new view whose surface was never seen in the input (and the background) stay black.**

A full baseline run is ``frames = DirectDeblurNet(blurry)`` then ``texture_warp_rotate`` on each frame with
the coefficients E_3D fits to that frame (or to the blurry input).
"""
from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from deblur_rotate.models.io import register

__all__ = [
    "DIRECT_DEBLUR_PRESETS",
    "DirectDeblurNet",
    "direct_deblur_config",
    "preset_resolution",
    "texture_warp_rotate",
    "vertex_visibility",
]

# Constructor arguments per preset (the training resolution is in "resolution", not a network argument:
# the network is fully convolutional).
DIRECT_DEBLUR_PRESETS: dict[str, dict] = {
    "micro": {"resolution": 32, "widths": [8, 16, 32]},  # tests, a few thousand parameters
    "tiny": {"resolution": 64, "widths": [32, 64, 128, 256]},  # CPU, ~2.4M parameters
    "paper": {"resolution": 256, "widths": [64, 128, 256, 512, 512]},  # GPU
}


def direct_deblur_config(preset: str, **overrides) -> dict:
    """Constructor arguments of :class:`DirectDeblurNet` for ``preset`` (micro, tiny, paper)."""
    if preset not in DIRECT_DEBLUR_PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(DIRECT_DEBLUR_PRESETS)}")
    cfg = {"in_channels": 3, "num_frames": 5, "widths": list(DIRECT_DEBLUR_PRESETS[preset]["widths"])}
    cfg.update(overrides)
    return cfg


def preset_resolution(preset: str) -> int:
    """Training image side of ``preset``, pixels (the generator's resolution of the same preset)."""
    if preset not in DIRECT_DEBLUR_PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(DIRECT_DEBLUR_PRESETS)}")
    return int(DIRECT_DEBLUR_PRESETS[preset]["resolution"])


class _DoubleConv(nn.Sequential):
    """3x3 conv, LeakyReLU(0.2), 3x3 conv, LeakyReLU(0.2); keeps H x W."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(nn.Conv2d(in_channels, out_channels, 3, padding=1), nn.LeakyReLU(0.2, inplace=True),
                         nn.Conv2d(out_channels, out_channels, 3, padding=1), nn.LeakyReLU(0.2, inplace=True))


@register("baselines.direct_deblur")
class DirectDeblurNet(nn.Module):
    """Blurry image ``[N, 3, R, R]`` in [-1, 1] -> its sharp frames ``[N, T, 3, R, R]`` (T = ``num_frames``).

    A U-Net: ``len(widths)`` levels, each a double 3x3 conv; stride-2 conv down, bilinear x2 up + concat of
    the skip. The output is residual: frame t = blurry + head(features)[t], and the head starts at zero, so
    an untrained network returns the blurry image for every frame. Frames are in time order up to the
    forward/backward ambiguity (trained with the min of both orders). R must be divisible by
    ``2 ** (len(widths) - 1)``. Outputs are not clamped.
    """

    def __init__(self,
                 in_channels: int = 3,  # channels of the blurry input (RGB)
                 num_frames: int = 5,  # T: sharp frames regressed per blurry image
                 widths: Sequence[int] = (32, 64, 128, 256),  # channels per U-Net level, finest first
                 ):
        super().__init__()
        widths = [int(w) for w in widths]
        if len(widths) < 1 or min(widths) < 1:
            raise ValueError(f"widths must be a non-empty list of positive channel counts, got {widths}")
        if num_frames < 1:
            raise ValueError(f"num_frames must be >= 1, got {num_frames}")
        self.config = {"in_channels": int(in_channels), "num_frames": int(num_frames), "widths": widths}
        self.num_frames, self.in_channels = int(num_frames), int(in_channels)
        self.inp = _DoubleConv(in_channels, widths[0])
        self.down = nn.ModuleList()  # level k -> k+1: stride-2 conv then double conv
        for a, b in itertools.pairwise(widths):
            self.down.append(nn.Sequential(nn.Conv2d(a, b, 3, stride=2, padding=1), nn.LeakyReLU(0.2, inplace=True),
                                           _DoubleConv(b, b)))
        self.up = nn.ModuleList()  # level k+1 -> k: upsample, concat skip (widths[k]), double conv
        for a, b in zip(reversed(widths[1:]), reversed(widths[:-1])):
            self.up.append(_DoubleConv(a + b, b))
        self.head = nn.Conv2d(widths[0], num_frames * in_channels, 3, padding=1)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    @property
    def multiple(self) -> int:
        """Input sides must be divisible by this."""
        return 2 ** len(self.down)

    def forward(self, blurry: torch.Tensor) -> torch.Tensor:
        """blurry ``[N, C, H, W]`` in [-1, 1] -> frames ``[N, T, C, H, W]``."""
        if blurry.dim() != 4 or blurry.shape[1] != self.in_channels:
            raise ValueError(f"expected blurry images [N, {self.in_channels}, H, W], got {tuple(blurry.shape)}")
        h, w = blurry.shape[-2:]
        if h % self.multiple or w % self.multiple:
            raise ValueError(f"image sides must be divisible by {self.multiple}, got {h}x{w}")
        x = self.inp(blurry)
        skips = [x]  # [N, widths[k], H / 2^k, W / 2^k]
        for down in self.down:
            x = down(x)
            skips.append(x)
        for up, skip in zip(self.up, reversed(skips[:-1])):
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = up(torch.cat([x, skip], 1))
        delta = self.head(x).unflatten(1, (self.num_frames, self.in_channels))  # [N, T, C, H, W]
        return blurry.unsqueeze(1) + delta


# ------------------------------------------------------------------------------------------ texture warp

def vertex_visibility(vertices_cam: torch.Tensor, triangles: torch.Tensor, camera_matrix: torch.Tensor,
                      image_size: tuple[int, int], supersample: int = 2,
                      depth_tolerance: float = 0.005) -> torch.Tensor:
    """Which mesh vertices the camera sees, from the rasterizer's z-buffer. No gradients.

    vertices_cam: ``[N, V, 3]`` camera-frame vertices; triangles ``[F, 3]``; camera_matrix ``[3, 3]`` or
    ``[N, 3, 3]`` intrinsics of an image of ``image_size`` (H, W).
    supersample: the z-buffer is rasterized at this factor (finer than the image: small triangles show).
    depth_tolerance: a vertex counts as visible when its depth is within this fraction of the z-buffer depth
                     at its pixel (0.005: 0.5 cm at 1 m).
    A vertex is visible when it projects inside the image and either (a) a triangle it belongs to is the
    front-most one at some pixel, or (b) its depth passes the z-buffer test at its (nearest) pixel.
    Returns ``[N, V]`` bool.
    """
    from deblur_rotate.render.camera import project
    from deblur_rotate.render.rasterizer import rasterize, supersample_camera

    with torch.no_grad():
        n, num_vertices = vertices_cam.shape[:2]
        h, w = int(image_size[0]), int(image_size[1])
        k = int(supersample)
        camera = camera_matrix.to(vertices_cam).expand(n, 3, 3)  # [N, 3, 3]
        cam_hi = supersample_camera(camera, k)
        tris = triangles.to(device=vertices_cam.device, dtype=torch.int64)
        frags = rasterize(vertices_cam, tris, cam_hi, (h * k, w * k))
        # (a) vertices of triangles that won a pixel
        tri_seen = torch.zeros(n, tris.shape[0] + 1, dtype=torch.bool, device=vertices_cam.device)
        tri_seen.scatter_(1, frags.triangle_id.flatten(1) + 1, True)  # column 0 collects the background
        tri_seen = tri_seen[:, 1:].to(torch.float32)  # [N, F]
        seen = torch.zeros(n, num_vertices, device=vertices_cam.device)
        seen.scatter_reduce_(1, tris.flatten().expand(n, -1), tri_seen.repeat_interleave(3, 1), "amax")
        # (b) z-buffer test at each vertex's nearest high-resolution pixel
        px = project(vertices_cam, cam_hi).round().long()  # [N, V, 2]
        flat = px[..., 1].clamp(0, h * k - 1) * (w * k) + px[..., 0].clamp(0, w * k - 1)  # [N, V]
        zbuf = frags.depth.flatten(1).gather(1, flat)  # [N, V], 0 on background
        z = vertices_cam[..., 2]
        depth_ok = (zbuf > 0) & (z <= zbuf * (1.0 + depth_tolerance))
        # inside the image
        uv = project(vertices_cam, camera)  # [N, V, 2] output pixels
        in_image = (uv[..., 0] >= -0.5) & (uv[..., 0] <= w - 0.5) & (uv[..., 1] >= -0.5) & (uv[..., 1] <= h - 0.5)
        return ((seen > 0) | depth_ok) & in_image & (z > 0)


def texture_warp_rotate(image: torch.Tensor, coeffs: torch.Tensor, morphable_model: nn.Module,
                        camera_matrix: torch.Tensor, delta_pose: torch.Tensor, *, supersample: int = 2,
                        depth_tolerance: float = 0.005, min_seen: float = 0.5,
                        return_seen: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Rotate the face in ``image`` by ``delta_pose`` with a 3DMM texture warp (Rotate-and-Render style).

    image: ``[N, 3, R, R]`` in [-1, 1] (any H x W works).
    coeffs: ``[N, C]`` morphable-model coefficients fitted to ``image`` (E_3D), layout
            ``[id | tex | exp | 27 SH | R | t]``; only shape (id, exp) and pose (R, t) are used.
    morphable_model: the :class:`~deblur_rotate.face3d.model.MorphableModel` of those coefficients.
    camera_matrix: ``[3, 3]`` or ``[N, 3, 3]`` intrinsics of ``image``, pixels (the camera E_3D was trained with,
                   scaled to the image's size).
    delta_pose: ``[N, 3]`` (Δpitch, Δyaw, Δroll) radians; the new pose is ``R + delta_pose`` (the same Δp as the
                fusion network F takes), turned about the head's centre (the mean of its vertices), which
                stays where it is in the camera frame.
    supersample: z-buffer resolution factor for the visibility test; depth_tolerance: see
                 :func:`vertex_visibility`.
    min_seen: an output pixel gets a colour when at least this fraction (barycentric weight) of its surface
              point comes from vertices seen in the input; its colour is the visibility-weighted mean of those.
    return_seen: also return the ``[N, 1, R, R]`` float mask (1 where a colour was placed).
    Returns the rotated image ``[N, 3, R, R]`` in [-1, 1]; background and never-seen surface are black (-1).
    Differentiable w.r.t. ``image`` (the geometry and visibility are not).
    """
    from deblur_rotate.render.camera import euler_to_matrix, project, transform
    from deblur_rotate.render.rasterizer import render

    if image.dim() != 4 or image.shape[1] != 3:
        raise ValueError(f"expected images [N, 3, H, W], got {tuple(image.shape)}")
    n, _, h, w = image.shape
    if coeffs.shape != (n, morphable_model.layout.size):
        raise ValueError(f"expected coeffs [{n}, {morphable_model.layout.size}], got {tuple(coeffs.shape)}")
    if delta_pose.shape != (n, 3):
        raise ValueError(f"expected delta_pose [{n}, 3], got {tuple(delta_pose.shape)}")
    dev = image.device
    coeffs = coeffs.to(dev, torch.float32)
    delta_pose = delta_pose.to(dev, torch.float32)
    cam = camera_matrix.to(dev, torch.float32)
    cam_n = cam.expand(n, 3, 3) if cam.dim() == 2 else cam

    with torch.no_grad():
        parts = morphable_model.layout.split(coeffs)
        shape = morphable_model.shape(parts["id"], parts["exp"])  # [N, V, 3] model frame
        rotation = euler_to_matrix(parts["rotation"])  # [N, 3, 3]
        source = transform(shape, rotation, parts["translation"])  # [N, V, 3] camera frame (= model(coeffs)[0])
        centre = shape.mean(1)  # [N, 3] model frame
        centre_cam = transform(centre[:, None], rotation, parts["translation"])[:, 0]  # [N, 3]
        new_rotation = euler_to_matrix(parts["rotation"] + delta_pose)
        target = transform(shape - centre[:, None], new_rotation, centre_cam)  # [N, V, 3]
        visible = vertex_visibility(source, morphable_model.triangles, cam_n, (h, w), supersample,
                                    depth_tolerance)  # [N, V]
        uv = project(source, cam_n)  # [N, V, 2] pixels of the input
        grid = torch.stack([uv[..., 0] / max(w - 1, 1), uv[..., 1] / max(h - 1, 1)], -1) * 2 - 1  # align_corners

    colours = F.grid_sample((image.float() + 1) / 2, grid[:, None], mode="bilinear", padding_mode="border",
                            align_corners=True)[:, :, 0].transpose(1, 2)  # [N, V, 3] in [0, 1]
    weight = visible.to(colours.dtype)[..., None]  # [N, V, 1]
    attributes = torch.cat([colours * weight, weight], -1)  # [N, V, 4]
    out = render(target, morphable_model.triangles, attributes, cam_n, (h, w), background=0.0,
                 edge_softness_px=0.0, supersample=1)
    rgb_w, seen_w = out.image[:, :3], out.image[:, 3:4]  # [N, 3, H, W], [N, 1, H, W]
    seen = (seen_w >= min_seen).to(rgb_w.dtype)
    rgb = rgb_w / seen_w.clamp_min(1e-6)
    result = (rgb * seen) * 2 - 1
    return (result, seen) if return_seen else result

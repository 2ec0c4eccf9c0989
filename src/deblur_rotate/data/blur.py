"""Blur synthesis and mirroring (paper §3 and §4).

Video data
    The blurry image ``x_i`` is the mean of the ``2m + 1`` sharp frames ``i - m .. i + m``
    (:func:`window_indices`, :func:`blur_from_frames`), and its 5 targets are the frames
    ``[i - m, i - m/2, i, i + m/2, i + m]`` (:func:`target_indices`). BMFD uses m = 32 (65 frames at 112 fps),
    300VW m = 4 (9 frames).
Still images
    FFHQ stills get a random 9 x 9 motion kernel (:func:`random_motion_kernels`, :func:`apply_kernels`).
Mirroring
    A horizontal flip is a second view of single-view data: :func:`mirror_images`, :func:`mirror_landmarks`
    (coordinates AND the iBUG 68-point left/right permutation), :func:`mirror_pose`, :func:`mirror_view`.

Conventions (docs/DESIGN.md): images are float32 in [-1, 1], ``[N, 3, H, W]``; videos ``[N, T, 3, H, W]``;
landmarks ``[..., 68, 2]`` as (u, v) pixels with pixel centres at integer coordinates, so a horizontal flip
maps ``u -> W - 1 - u``. Every random function takes an explicit :class:`torch.Generator`; nothing here
touches the global RNG.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from kornia.filters import filter2d, get_motion_kernel2d

__all__ = [
    "IBUG68_MIRROR",
    "NUM_TARGETS",
    "apply_kernels",
    "blur_from_frames",
    "blur_sample",
    "linear_to_srgb",
    "mirror_images",
    "mirror_landmarks",
    "mirror_pose",
    "mirror_view",
    "random_motion_kernel",
    "random_motion_kernels",
    "srgb_to_linear",
    "target_indices",
    "valid_centers",
    "window_indices",
]

NUM_TARGETS = 5  # sharp frames predicted per blurry image


# ----------------------------------------------------------------------------------------------- windows

def _check_half_window(m: int, *, need_even: bool) -> None:
    if isinstance(m, bool) or not isinstance(m, int):
        raise ValueError(f"m (half the blur window, in frames) must be an int, got {m!r}")  # noqa: TRY004
    if need_even and (m < 2 or m % 2):
        raise ValueError(f"m must be even and >= 2 so that the targets i - m/2 and i + m/2 are whole frames, got m={m}")
    if m < 1:
        raise ValueError(f"m (half the blur window, in frames) must be >= 1, got m={m}")


def window_indices(center: int, m: int) -> list[int]:
    """Frame indices ``[center - m, ..., center + m]`` (2m + 1 of them) averaged into the blurry image.

    Raises ValueError when ``m < 1`` or the window starts before frame 0.
    """
    _check_half_window(m, need_even=False)
    if center - m < 0:
        raise ValueError(f"the blur window of centre {center} and m={m} starts at frame {center - m} < 0; "
                         f"centres must be >= m (see valid_centers)")
    return list(range(center - m, center + m + 1))


def target_indices(center: int, m: int) -> list[int]:
    """The 5 target frame indices ``[center - m, center - m/2, center, center + m/2, center + m]``.

    ``m`` must be even and >= 2 (ValueError otherwise).
    """
    _check_half_window(m, need_even=True)
    if center - m < 0:
        raise ValueError(f"the targets of centre {center} and m={m} start at frame {center - m} < 0; "
                         f"centres must be >= m (see valid_centers)")
    h = m // 2
    return [center - m, center - h, center, center + h, center + m]


def valid_centers(num_frames: int, m: int) -> range:
    """Centres ``i`` whose whole window ``i - m .. i + m`` lies inside a clip of ``num_frames`` frames:
    ``range(m, num_frames - m)``. ValueError if the clip is shorter than ``2m + 1`` frames."""
    _check_half_window(m, need_even=False)
    if num_frames < 2 * m + 1:
        raise ValueError(f"m={m} needs clips of at least {2 * m + 1} frames (2m + 1), this one has {num_frames}: "
                         f"use a smaller m or longer clips")
    return range(m, num_frames - m)


# -------------------------------------------------------------------------------------------- averaging

def srgb_to_linear(x: torch.Tensor) -> torch.Tensor:
    """sRGB-encoded values in [0, 1] -> linear light in [0, 1] (IEC 61966-2-1 curve)."""
    x = x.clamp(0.0, 1.0)
    return torch.where(x <= 0.04045, x / 12.92, ((x + 0.055) / 1.055) ** 2.4)


def linear_to_srgb(x: torch.Tensor) -> torch.Tensor:
    """Linear light in [0, 1] -> sRGB-encoded values in [0, 1]; inverse of :func:`srgb_to_linear`."""
    x = x.clamp(0.0, 1.0)
    return torch.where(x <= 0.0031308, 12.92 * x, 1.055 * x.clamp_min(1e-12) ** (1.0 / 2.4) - 0.055)


def blur_from_frames(frames: torch.Tensor, linearize: bool = False) -> torch.Tensor:
    """Blurry image from the sharp frames of one exposure.

    frames ``[N, T, C, H, W]`` (T = 2m + 1 frames, values in [-1, 1]) -> ``[N, C, H, W]`` in [-1, 1].

    ``linearize=False`` (the default, what the paper describes) averages the pixel values as they are: no
    gamma linearisation, the mean is taken on the [-1, 1] values in float32 (float64 inputs stay float64).
    ``linearize=True`` treats the frames as sRGB-encoded: it decodes them to linear light, averages there
    (what a sensor integrates) and re-encodes; values are clamped to [-1, 1] first.
    """
    if frames.dim() != 5:
        raise ValueError(f"frames must be [N, T, C, H, W], got shape {tuple(frames.shape)}")
    if frames.shape[1] < 1:
        raise ValueError("frames has no frame to average (T = 0)")
    x = frames if frames.is_floating_point() else frames.float()
    if not linearize:
        return x.mean(dim=1)
    linear = srgb_to_linear((x + 1.0) * 0.5)
    return linear_to_srgb(linear.mean(dim=1)) * 2.0 - 1.0


def blur_sample(video: torch.Tensor, center: int, m: int, linearize: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """One training pair from a video ``[N, T, C, H, W]``: (blurry ``[N, C, H, W]`` = mean of frames
    ``center - m .. center + m``, targets ``[N, 5, C, H, W]`` = frames :func:`target_indices`)."""
    if video.dim() != 5:
        raise ValueError(f"video must be [N, T, C, H, W], got shape {tuple(video.shape)}")
    valid = valid_centers(video.shape[1], m)
    if center not in valid:
        raise ValueError(f"centre {center} is outside the valid centres {valid.start}..{valid.stop - 1} of a "
                         f"{video.shape[1]}-frame clip with m={m}")
    targets = video[:, target_indices(center, m)]
    return blur_from_frames(video[:, center - m:center + m + 1], linearize=linearize), targets


# ---------------------------------------------------------------------------------------------- kernels

def _uniform(generator: torch.Generator, shape, low: float, high: float) -> torch.Tensor:
    return low + (high - low) * torch.rand(shape, generator=generator)


def _trajectory_kernels(n: int, generator: torch.Generator, size: int, num_steps: int, inertia: float,
                        jerk_prob: float, min_extent: float, max_extent: float) -> torch.Tensor:
    """Camera-shake kernels ``[n, size, size]`` from random walks with inertia, splatted bilinearly."""
    # Random walk: the velocity keeps a fraction `inertia` of itself and takes a Gaussian kick each step;
    # now and then the kick is a jerk, 4 times as strong (hand shake is smooth with occasional jolts).
    angle0 = _uniform(generator, (n,), 0.0, 2 * math.pi)
    velocity = torch.stack([torch.cos(angle0), torch.sin(angle0)], -1)  # [n, 2] unit speed, x then y
    kicks = torch.randn((num_steps - 1, n, 2), generator=generator)
    jerks = torch.rand((num_steps - 1, n, 1), generator=generator) < jerk_prob
    kicks = torch.where(jerks, 4.0 * kicks, kicks)
    points = [torch.zeros(n, 2)]
    for step in range(num_steps - 1):
        velocity = inertia * velocity + (1.0 - inertia) * kicks[step]
        points.append(points[-1] + velocity)
    path = torch.stack(points, 1)  # [n, num_steps, 2]
    # The camera moves continuously and the shutter integrates uniformly in time: resample the walk densely
    # (linear in time) so that consecutive splats are much less than a pixel apart.
    dense = F.interpolate(path.transpose(1, 2), size=num_steps * 16, mode="linear", align_corners=True)
    dense = dense.transpose(1, 2)  # [n, P, 2]
    # Centre on the centroid (the kernel's centre of mass is its middle pixel, so blurring does not shift
    # the image on average), then scale to a random extent and shrink if needed to fit inside the kernel.
    dense = dense - dense.mean(1, keepdim=True)
    extent = (dense.amax(1) - dense.amin(1)).amax(-1).clamp_min(1e-6)  # [n] longest side of the bounding box
    target = _uniform(generator, (n,), min_extent, max_extent)
    half = (size - 1) / 2.0
    reach = dense.abs().amax(dim=(1, 2)).clamp_min(1e-6)
    scale = torch.minimum(target / extent, half / reach)
    coords = (dense * scale[:, None, None] + half).clamp(0.0, size - 1.0)  # [n, P, 2] pixel (x, y)
    # Bilinear splatting with equal weight per time sample.
    base = coords.floor()
    frac = coords - base
    base = base.long()
    flat = torch.zeros(n, size * size)
    for dx in (0, 1):
        for dy in (0, 1):
            wx = frac[..., 0] if dx else 1.0 - frac[..., 0]
            wy = frac[..., 1] if dy else 1.0 - frac[..., 1]
            x = (base[..., 0] + dx).clamp(max=size - 1)
            y = (base[..., 1] + dy).clamp(max=size - 1)
            flat.scatter_add_(1, y * size + x, wx * wy)
    kernels = flat.view(n, size, size)
    return kernels / kernels.sum(dim=(1, 2), keepdim=True)


def _linear_kernels(n: int, generator: torch.Generator, size: int) -> torch.Tensor:
    """Linear motion kernels ``[n, size, size]`` of random odd length 3..size, angle and direction
    (kornia's :func:`~kornia.filters.get_motion_kernel2d`), zero-padded to ``size``."""
    lengths = 3 + 2 * torch.randint(0, (size - 3) // 2 + 1, (n,), generator=generator)
    angles = _uniform(generator, (n,), 0.0, 360.0)
    directions = _uniform(generator, (n,), -1.0, 1.0)
    out = torch.zeros(n, size, size)
    for length in lengths.unique().tolist():
        sel = (lengths == length).nonzero().flatten()
        k = get_motion_kernel2d(int(length), angles[sel], directions[sel])  # [b, length, length]
        pad = (size - int(length)) // 2
        out[sel] = F.pad(k, (pad, pad, pad, pad))
    out = out.clamp_min(0.0)
    return out / out.sum(dim=(1, 2), keepdim=True)


def random_motion_kernels(
    n: int,
    generator: torch.Generator,
    size: int = 9,
    linear_prob: float = 0.25,  # share of straight-line kernels; the rest are camera-shake trajectories
    min_extent: float = 3.0,  # pixels, longest side of a trajectory's bounding box (before fitting)
    max_extent: float | None = None,  # pixels; default size - 1 (the whole kernel)
    num_steps: int = 32,  # random-walk steps of a trajectory
    inertia: float = 0.85,  # 0: Brownian jitter, -> 1: straight lines
    jerk_prob: float = 0.05,  # chance per step of a 4x stronger kick
) -> torch.Tensor:
    """``n`` random motion-blur kernels ``[n, size, size]`` (float32, non-negative, each sums to 1).

    Most kernels are camera-shake trajectories: a 2D random walk with inertia, resampled densely in time,
    centred on its centroid, scaled to a random extent in ``[min_extent, max_extent]`` pixels (shrunk if it
    would leave the kernel) and rasterised by bilinear splatting. A share ``linear_prob`` are straight
    lines from :func:`kornia.filters.get_motion_kernel2d` with random odd length 3..size, angle in [0, 360)
    degrees and direction in [-1, 1] (weight ramp along the line).

    Kernels are point-spread functions: :func:`apply_kernels` convolves with them, so a single bright pixel
    is painted as the kernel itself. Deterministic for a given generator state; ``size`` must be odd >= 3.
    """
    if size < 3 or size % 2 == 0:
        raise ValueError(f"kernel size must be odd and >= 3, got {size}")
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if not 0.0 <= linear_prob <= 1.0:
        raise ValueError(f"linear_prob must be in [0, 1], got {linear_prob}")
    max_extent = float(size - 1) if max_extent is None else float(max_extent)
    if not 0.0 <= min_extent <= max_extent:
        raise ValueError(f"need 0 <= min_extent <= max_extent, got {min_extent} and {max_extent}")
    if num_steps < 2:
        raise ValueError(f"num_steps must be >= 2, got {num_steps}")
    if n == 0:
        return torch.zeros(0, size, size)
    use_linear = torch.rand((n,), generator=generator) < linear_prob
    kernels = _trajectory_kernels(n, generator, size, num_steps, inertia, jerk_prob, min_extent, max_extent)
    if linear_prob > 0.0:
        linear = _linear_kernels(n, generator, size)
        kernels = torch.where(use_linear[:, None, None], linear, kernels)
    return kernels


def random_motion_kernel(generator: torch.Generator, size: int = 9, **kwargs) -> torch.Tensor:
    """One random motion kernel ``[size, size]``; see :func:`random_motion_kernels` for the options."""
    return random_motion_kernels(1, generator, size=size, **kwargs)[0]


def apply_kernels(images: torch.Tensor, kernels: torch.Tensor) -> torch.Tensor:
    """Blur ``images [N, C, H, W]`` with ``kernels`` ``[N, k, k]`` (one per image), ``[1, k, k]`` or
    ``[k, k]`` (shared); k odd.

    True convolution (kornia ``filter2d`` with ``behaviour='conv'``, i.e. the kernel flipped before the
    correlation), so kernels act as point-spread functions: a single bright pixel at (row r, col c) becomes
    ``kernel`` centred on (r, c), with kernel row i landing on image row ``r + i - k // 2``. Borders are
    reflected (needs H, W > k // 2). Output has the input's shape and dtype; a kernel that sums to 1 keeps
    the [-1, 1] range.
    """
    if images.dim() != 4:
        raise ValueError(f"images must be [N, C, H, W], got shape {tuple(images.shape)}")
    if kernels.dim() == 2:
        kernels = kernels.unsqueeze(0)
    if kernels.dim() != 3 or kernels.shape[-1] != kernels.shape[-2] or kernels.shape[-1] % 2 == 0:
        raise ValueError(f"kernels must be square with an odd size, [k, k], [1, k, k] or [N, k, k]; "
                         f"got {tuple(kernels.shape)}")
    if kernels.shape[0] not in (1, images.shape[0]):
        raise ValueError(f"got {kernels.shape[0]} kernels for {images.shape[0]} images")
    return filter2d(images, kernels.to(images), border_type="reflect", behaviour="conv")


# -------------------------------------------------------------------------------------------- mirroring

def _ibug68_mirror() -> tuple[int, ...]:
    """Left/right permutation of the iBUG 300-W 68 landmarks (0-based): mirrored[k] = original[perm[k]].

    Points are numbered from the subject's right (the image's left) for the paired parts.
    """
    perm = list(range(68))

    def swap(a: int, b: int) -> None:
        perm[a], perm[b] = b, a

    for k in range(8):  # jaw 0..16, 8 is the chin
        swap(k, 16 - k)
    for k in range(17, 22):  # right brow 17..21 (outer -> inner) <-> left brow 26..22
        swap(k, 43 - k)
    # nose bridge 27..30 lies on the midline: unchanged
    swap(31, 35)  # nose bottom 31..35, 33 is the tip of the columella
    swap(32, 34)
    # right eye: 36 outer corner, 37 38 upper lid, 39 inner corner, 40 41 lower lid (clockwise in the image);
    # left eye: 42 inner corner, 43 44 upper lid, 45 outer corner, 46 47 lower lid.
    for a, b in ((36, 45), (37, 44), (38, 43), (39, 42), (40, 47), (41, 46)):
        swap(a, b)
    # outer lips: 48 right corner, 49 50 upper right, 51 upper middle, 52 53 upper left, 54 left corner,
    # 55 56 lower left, 57 lower middle, 58 59 lower right.
    for a, b in ((48, 54), (49, 53), (50, 52), (55, 59), (56, 58)):
        swap(a, b)
    # inner lips: 60 right corner, 61 upper right, 62 upper middle, 63 upper left, 64 left corner,
    # 65 lower left, 66 lower middle, 67 lower right.
    for a, b in ((60, 64), (61, 63), (65, 67)):
        swap(a, b)
    return tuple(perm)


IBUG68_MIRROR: tuple[int, ...] = _ibug68_mirror()
"""Index permutation for a horizontal flip of iBUG 68 landmarks; an involution (applying it twice is the
identity). ``mirrored = landmarks[..., IBUG68_MIRROR, :]`` after flipping u."""


def mirror_images(images: torch.Tensor) -> torch.Tensor:
    """Horizontal flip of the last (width) axis: images ``[N, C, H, W]``, videos ``[N, T, C, H, W]`` or any
    ``[..., H, W]``."""
    return images.flip(-1)


def mirror_landmarks(landmarks: torch.Tensor, width: int) -> torch.Tensor:
    """Landmarks ``[..., 68, 2]`` (u, v) pixels of an image ``width`` pixels wide -> the landmarks of the
    mirrored image: ``u -> width - 1 - u`` and points renumbered with :data:`IBUG68_MIRROR` so that, e.g.,
    point 36 (right eye, outer corner) of the result is the mirror of the original point 45."""
    if landmarks.dim() < 2 or landmarks.shape[-2:] != (68, 2):
        raise ValueError(f"landmarks must be [..., 68, 2], got shape {tuple(landmarks.shape)}")
    flipped = torch.stack([(width - 1) - landmarks[..., 0], landmarks[..., 1]], -1)
    index = torch.tensor(IBUG68_MIRROR, device=landmarks.device)
    return flipped.index_select(-2, index)


def mirror_pose(pose: torch.Tensor | Sequence[float]) -> torch.Tensor:
    """Pose ``[..., 3]`` (pitch, yaw, roll) radians of a face -> the pose of its mirror image:
    (pitch, -yaw, -roll). (A flip of the camera's x axis, S = diag(-1, 1, 1), turns R into S R S, which
    keeps rotations about x and reverses those about y and z.) Translations, if needed, map x -> -x."""
    pose = torch.as_tensor(pose)
    if pose.shape[-1:] != (3,):
        raise ValueError(f"pose must be [..., 3] (pitch, yaw, roll), got shape {tuple(pose.shape)}")
    sign = torch.tensor([1.0, -1.0, -1.0], dtype=pose.dtype if pose.is_floating_point() else torch.float32,
                        device=pose.device)
    return pose * sign


def mirror_view(view: int | torch.Tensor) -> int | torch.Tensor:
    """Rig view number 1..8 -> the view on the other side, ``9 - view`` ((1, 8), (2, 7), (3, 6), (4, 5)).
    Accepts an int or an integer tensor; ValueError outside 1..8."""
    if isinstance(view, torch.Tensor):
        if view.numel() and (int(view.min()) < 1 or int(view.max()) > 8):
            raise ValueError(f"views are numbered 1..8, got values in {int(view.min())}..{int(view.max())}")
        return 9 - view
    if isinstance(view, bool) or not isinstance(view, int) or not 1 <= view <= 8:
        raise ValueError(f"views are numbered 1..8, got {view!r}")
    return 9 - view

"""Blur-consistency refinement of E_v's codes at inference: an option beyond the paper.

A motion-blurred photo is the mean of the sharp frames over the exposure (:mod:`deblur_rotate.data.blur`). E_v
predicts T codes whose decoded frames should therefore average to the photo; they do only roughly, because
E_v and G were trained on other faces and E_v cannot see everything the photo holds (the decoded faces are an
average of the training identities). A few Adam steps on a correction of the codes bring the mean of the decoded
frames to the photo:

    min_d  L_blur(d) = | mean_t G(w_t + d) - y |_1                         (``losses.blur_consistency_loss``)

with ``d`` one W+ correction per frame ``[N, T, num_ws, w_dim]`` (default) or, with ``per_frame=False``, one
``[N, 1, num_ws, w_dim]`` shared by the T frames. The blur pins down the face's appearance (identity, colour,
lighting) well and the motion only loosely, so the result depends on E_v's start; measured on new SynthBMFD subjects
with the bundled tiny model (16 sequences of ``seed99``, 20 steps, lr 0.02, PSNR of the 5 frames against the sharp
truth, the blurry input at 25.61 dB): E_v alone 23.98 dB, a shared correction 25.31 dB, per-frame corrections
25.93 dB (and the motion ratio 0.76 -> 0.88; 40 steps: 25.95 dB). G's weights stay fixed; the noise is G's constant
noise, as in the pipeline. The refined codes go on through F like E_v's own, so new views get the correction too.

Cost: ``steps`` forward and backward passes of G over the T frames of every image (about 0.1 s per step and image
at the tiny preset on 2 CPU cores). ``steps = 0`` is the paper's pipeline, unchanged.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is imported where it is used: model_folder validates "refine" without it
    import torch
    from torch import nn

__all__ = ["RefineSettings", "add_refine_argument", "refine_codes"]


@dataclass(frozen=True)
class RefineSettings:
    """How the codes are refined; ``steps == 0`` is off. A model folder's ``pipeline.json`` may hold these
    fields under ``"refine"`` as its default (measured for that model), and ``run`` / ``demo`` / ``serve`` take
    ``--refine-steps``."""

    steps: int = 0            # Adam steps on the correction (0: off; the bundled tiny model uses 20)
    lr: float = 0.02          # Adam learning rate on the W+ correction (W+ entries are O(1))
    per_frame: bool = True    # one correction per frame [N, T, ...]; False: one shared by the frames [N, 1, ...]

    def __post_init__(self):
        if not isinstance(self.steps, int) or isinstance(self.steps, bool) or not 0 <= self.steps <= 1000:
            raise ValueError(f"refine steps must be an integer from 0 to 1000, got {self.steps!r}")
        if not isinstance(self.lr, (int, float)) or isinstance(self.lr, bool) or not 0.0 < float(self.lr) <= 1.0:
            raise ValueError(f"refine lr must be a number in (0, 1], got {self.lr!r}")
        if not isinstance(self.per_frame, bool):
            raise ValueError(f"refine per_frame must be true or false, got {self.per_frame!r}")  # noqa: TRY004

    @classmethod
    def from_json(cls, value: dict | None) -> RefineSettings:
        """``pipeline.json``'s ``"refine"`` object (or None: off) -> settings; ValueError naming a bad field."""
        if value is None:
            return cls()
        if not isinstance(value, dict):
            raise ValueError(f"must be an object {{\"steps\": n, \"lr\": x, \"per_frame\": false}}, got {value!r}")  # noqa: TRY004
        unknown = set(value) - {"steps", "lr", "per_frame"}
        if unknown:
            raise ValueError(f"unknown field(s) {', '.join(sorted(unknown))}; known: steps, lr, per_frame")
        return cls(**value)

    def to_json(self) -> dict:
        return asdict(self)


def refine_codes(generator: nn.Module,      # StyleGAN2 Generator: synthesis(ws [B, num_ws, w_dim]) -> [B, 3, R, R]
                 codes: torch.Tensor,       # [N, T, num_ws, w_dim] E_v's codes
                 blurry: torch.Tensor,      # [N, 3, R, R] the blurry faces in [-1, 1], as E_v saw them
                 settings: RefineSettings,
                 max_batch: int = 16,       # images refined together (memory: T frames each)
                 ) -> torch.Tensor:
    """The codes after ``settings.steps`` Adam steps on :func:`deblur_rotate.losses.blur_consistency_loss`,
    ``[N, T, num_ws, w_dim]``, detached. Deterministic (no noise, no sampling); the images are refined in groups
    of ``max_batch``, each group's correction on its own (the loss is summed over the images, so the grouping
    does not change the result beyond floating-point summation order)."""
    import torch

    from deblur_rotate.losses import blur_consistency_loss

    if settings.steps == 0 or codes.shape[0] == 0:
        return codes
    if codes.dim() != 4 or blurry.dim() != 4 or codes.shape[0] != blurry.shape[0]:
        raise ValueError(f"expected codes [N, T, num_ws, w_dim] and blurry [N, 3, R, R], got {tuple(codes.shape)} "
                         f"and {tuple(blurry.shape)}")
    out = []
    with torch.enable_grad():
        for start in range(0, codes.shape[0], max(1, int(max_batch))):
            c0 = codes[start:start + max_batch].detach()                       # [B, T, num_ws, w_dim]
            y = blurry[start:start + max_batch].detach()                       # [B, 3, R, R]
            b, t = c0.shape[:2]
            shape = (b, t if settings.per_frame else 1, *c0.shape[2:])
            correction = torch.zeros(shape, device=c0.device, dtype=c0.dtype, requires_grad=True)
            opt = torch.optim.Adam([correction], lr=float(settings.lr))
            for _ in range(settings.steps):
                ws = (c0 + correction).flatten(0, 1)                            # [B * T, num_ws, w_dim]
                frames = generator.synthesis(ws, noise_mode="const")           # [B * T, 3, R, R]
                # summed over the images: each image's correction sees its own gradient, whatever the group
                loss = blur_consistency_loss(frames.view(b, t, *frames.shape[1:]), y).sum()
                (grad,) = torch.autograd.grad(loss, [correction])
                correction.grad = grad
                opt.step()
            out.append((c0 + correction).detach())
    return torch.cat(out)


def add_refine_argument(parser) -> None:
    """``--refine-steps N`` for the commands that run a model (run, demo, serve)."""
    parser.add_argument("--refine-steps", type=int, default=None, metavar="N",
                        help="blur-consistency refinement: N Adam steps that bring the mean of the sharp frames "
                             "to the blurry input (0: off, the paper's pipeline; default: the model's pipeline.json "
                             "\"refine\", off when it has none; video input: off). Each step costs one G pass over "
                             "the frames")

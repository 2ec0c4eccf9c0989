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

Only images the model already explains are refined: where E_v's frames average to something far from the photo
(``blur_consistency_loss`` above ``max_start_error``, default 0.15 on [-1, 1] images), the model does not know this
kind of face and the refinement would paint the photo's colours into the codes without making a face (seen on real
photos with the synthetic-only bundled model: start errors about 0.76 against 0.02-0.06 on new SynthBMFD subjects);
those images keep E_v's codes, and :class:`RefineResult` says so per image.

The residual (``residual=True``): after the steps, what the mean frame still misses of the photo,
``r = y - mean_t G(w_t)`` ``[N, 3, R, R]``, is added to every frame of the input view (back-projection, as in
Irani & Peleg's iterative back-projection for super-resolution): the frames then average to the photo exactly.
Where the photo is the mean of the true sharp frames ``S_t``, the error of frame t, ``e_t = G_t - S_t``, becomes
``e_t - mean_t e_t``, so the MSE over the frames can only fall (by the square of the error the frames share: the
identity's details, colour and shape that W+ cannot hold); the frame-to-frame changes, the motion, are untouched.
Measured with the bundled tiny model (24 held-out ``synth120`` sequences, 20 steps): PSNR gain over the blurry
input +1.61 -> +2.10 dB, dlib's face detection on the frames 0.58 -> 0.71 (0.72 on the true frames), Laplacian
sharpness 0.71 -> 0.80 of the true frames'; a Gaussian-low-passed residual (sigma 1-5 px) gained less. It is only
added where the refinement applies (the model explains the photo), and only to the input view: a new view
(through F) shows the face from elsewhere, where the photo's residual does not belong.

Cost: ``steps`` forward and backward passes of G over the T frames of every image (about 0.1 s per step and image
at the tiny preset on 2 CPU cores), plus one forward pass for the errors (and the residual).
``steps = 0`` without the residual is the paper's pipeline, unchanged.
"""
from __future__ import annotations

import argparse
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is imported where it is used: model_folder validates "refine" without it
    import torch
    from torch import nn

__all__ = ["PRECISIONS", "RefineResult", "RefineSettings", "add_refine_argument", "refine", "refine_codes", "use_bf16"]


PRECISIONS = ("auto", "fp32", "bf16")


def use_bf16(precision: str, device) -> bool:
    """Whether :func:`refine` runs its G passes under bf16 autocast on ``device`` (a torch.device)."""
    from deblur_rotate.precision import resolve_precision

    return resolve_precision(precision, device) == "bf16"


@dataclass(frozen=True)
class RefineSettings:
    """How the codes are refined; ``steps == 0`` is off. A model folder's ``pipeline.json`` may hold these
    fields under ``"refine"`` as its default (measured for that model), and ``run`` / ``demo`` / ``serve`` take
    ``--refine-steps``."""

    steps: int = 0            # Adam steps on the correction (0: off; the bundled tiny model uses 20)
    lr: float = 0.02          # Adam learning rate on the W+ correction (W+ entries are O(1))
    per_frame: bool = True    # one correction per frame [N, T, ...]; False: one shared by the frames [N, 1, ...]
    max_start_error: float = 0.15  # refine only images E_v's frames already explain: start error at most this
    precision: str = "auto"   # the Adam steps' G passes: "bf16" autocast, "fp32", or "auto" (bf16 where the
    #                           hardware has it: CUDA with bf16, CPUs with AVX-512 BF16 or AMX; 1.75x on this CPU)
    residual: bool = False    # add y - mean_t G(w_t) left after the steps to every input-view frame (back-projection)

    def __post_init__(self):
        if not isinstance(self.steps, int) or isinstance(self.steps, bool) or not 0 <= self.steps <= 1000:
            raise ValueError(f"refine steps must be an integer from 0 to 1000, got {self.steps!r}")
        if not isinstance(self.lr, (int, float)) or isinstance(self.lr, bool) or not 0.0 < float(self.lr) <= 1.0:
            raise ValueError(f"refine lr must be a number in (0, 1], got {self.lr!r}")
        if not isinstance(self.max_start_error, (int, float)) or isinstance(self.max_start_error, bool) \
                or not 0.0 <= float(self.max_start_error) <= 2.0:
            raise ValueError(f"refine max_start_error must be a number in [0, 2], got {self.max_start_error!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"refine precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if not isinstance(self.per_frame, bool):
            raise ValueError(f"refine per_frame must be true or false, got {self.per_frame!r}")  # noqa: TRY004
        if not isinstance(self.residual, bool):
            raise ValueError(f"refine residual must be true or false, got {self.residual!r}")  # noqa: TRY004

    @property
    def active(self) -> bool:
        """Whether :func:`refine` does anything (steps, or the residual)."""
        return self.steps > 0 or self.residual

    @classmethod
    def from_json(cls, value: dict | None) -> RefineSettings:
        """``pipeline.json``'s ``"refine"`` object (or None: off) -> settings; ValueError naming a bad field."""
        if value is None:
            return cls()
        if not isinstance(value, dict):
            raise ValueError(f"must be an object {{\"steps\": n, \"lr\": x, \"per_frame\": false}}, got {value!r}")  # noqa: TRY004
        known = {"steps", "lr", "per_frame", "max_start_error", "precision", "residual"}
        unknown = set(value) - known
        if unknown:
            raise ValueError(f"unknown field(s) {', '.join(sorted(unknown))}; known: {', '.join(sorted(known))}")
        return cls(**value)

    def to_json(self) -> dict:
        return asdict(self)


@dataclass
class RefineResult:
    """What :func:`refine` did, per image."""

    codes: torch.Tensor         # [N, T, num_ws, w_dim] refined codes (E_v's own where not applied)
    start_error: torch.Tensor   # [N] blur-consistency error of E_v's codes (losses.blur_consistency_loss)
    end_error: torch.Tensor     # [N] the same after refinement (= start_error where not applied)
    applied: torch.Tensor       # [N] bool: refined (False: off, or E_v's frames did not explain the image)
    residual: torch.Tensor | None = None  # [N, 3, R, R] y - mean_t G(codes_t), 0 where not applied; None: off

    def records(self) -> list[dict]:
        """One JSON-ready dict per image (for result.json / summaries)."""
        out = []
        for k, (a, s, e) in enumerate(zip(self.applied.tolist(), self.start_error.tolist(),
                                           self.end_error.tolist())):
            record = {"applied": bool(a), "start_error": round(float(s), 4), "end_error": round(float(e), 4)}
            if self.residual is not None:  # what the residual added to the frames, mean |r| on [-1, 1] images
                record["residual_added"] = bool(a)
                record["residual_mean_abs"] = round(float(self.residual[k].abs().mean()), 4)
            out.append(record)
        return out

    def add_residual(self, frames: torch.Tensor) -> torch.Tensor:
        """Input-view frames ``[N, T, 3, R, R]`` (any T: the residual is the same for every frame) plus the
        residual; unchanged when it is off."""
        if self.residual is None:
            return frames
        return frames + self.residual.to(frames)[:, None]


def refine(generator: nn.Module,      # StyleGAN2 Generator: synthesis(ws [B, num_ws, w_dim]) -> [B, 3, R, R]
           codes: torch.Tensor,       # [N, T, num_ws, w_dim] E_v's codes
           blurry: torch.Tensor,      # [N, 3, R, R] the blurry faces in [-1, 1], as E_v saw them
           settings: RefineSettings,
           max_batch: int = 16,       # images refined together (memory: T frames each)
           ) -> RefineResult:
    """``settings.steps`` Adam steps on :func:`deblur_rotate.losses.blur_consistency_loss` for every image whose
    E_v frames already explain it (start error at most ``settings.max_start_error``); the others keep E_v's codes.
    With ``settings.residual``, also the residual ``blurry - mean_t G(codes_t)`` of the refined codes (zero for the
    images not refined). Deterministic (no noise, no sampling); the images are refined in groups of ``max_batch``,
    each image's correction on its own (the loss is summed over the images, so the grouping does not change the
    result beyond floating-point summation order). Off (no steps, no residual): E_v's codes, errors not measured
    (NaN)."""
    import torch

    n = codes.shape[0]
    if not settings.active or n == 0:
        nan = torch.full((n,), float("nan"))
        residual = blurry.new_zeros(blurry.shape) if settings.residual else None
        return RefineResult(codes, nan, nan.clone(), torch.zeros(n, dtype=torch.bool), residual)
    if codes.dim() != 4 or blurry.dim() != 4 or n != blurry.shape[0]:
        raise ValueError(f"expected codes [N, T, num_ws, w_dim] and blurry [N, 3, R, R], got {tuple(codes.shape)} "
                         f"and {tuple(blurry.shape)}")
    group = max(1, int(max_batch))
    parts = [_refine_group(generator, codes[first:first + group].detach(), blurry[first:first + group].detach(),
                           settings) for first in range(0, n, group)]
    refined, starts, ends, applied, residuals = (list(x) for x in zip(*parts))
    return RefineResult(torch.cat(refined), torch.cat(starts).cpu(), torch.cat(ends).cpu(), torch.cat(applied).cpu(),
                        torch.cat(residuals) if settings.residual else None)


def _frames(generator: nn.Module, ws: torch.Tensor) -> torch.Tensor:
    """The frames G makes of ``ws [B, T, num_ws, w_dim]``: ``[B, T, 3, R, R]`` (fp32, constant noise)."""
    frames = generator.synthesis(ws.flatten(0, 1), noise_mode="const").float()    # [B * T, 3, R, R]
    return frames.view(*ws.shape[:2], *frames.shape[1:])


def _refine_group(generator: nn.Module, c0: torch.Tensor, y: torch.Tensor, settings: RefineSettings):
    """:func:`refine` on one group: codes ``c0 [B, T, num_ws, w_dim]``, blurry ``y [B, 3, R, R]`` ->
    (codes, start error [B], end error [B], applied [B], residual [B, 3, R, R])."""
    import torch

    from deblur_rotate.losses import blur_consistency_loss

    with torch.no_grad():
        frames0 = _frames(generator, c0)                                       # [B, T, 3, R, R]
    start = blur_consistency_loss(frames0, y.float())                          # [B]
    ok = start <= settings.max_start_error                                     # [B]
    refined, end, mean = c0, start, frames0.mean(1)                            # mean: [B, 3, R, R]
    if ok.any() and settings.steps > 0:
        c_ok, y_ok = c0[ok], y[ok].float()
        shape = (c_ok.shape[0], c_ok.shape[1] if settings.per_frame else 1, *c_ok.shape[2:])
        correction = torch.zeros(shape, device=c0.device, dtype=c0.dtype, requires_grad=True)
        opt = torch.optim.Adam([correction], lr=float(settings.lr))
        bf16 = use_bf16(settings.precision, c0.device)
        with torch.enable_grad(), torch.autocast(c0.device.type, dtype=torch.bfloat16, enabled=bf16):
            for _ in range(settings.steps):
                # summed over the images: each image's correction sees its own gradient, whatever the group
                loss = blur_consistency_loss(_frames(generator, c_ok + correction), y_ok).sum()
                (grad,) = torch.autograd.grad(loss, [correction])
                correction.grad = grad
                opt.step()
        refined, end, mean = c0.clone(), start.clone(), mean.clone()
        refined[ok] = (c_ok + correction).detach()
        with torch.no_grad():
            frames_ok = _frames(generator, refined[ok])                        # [B', T, 3, R, R]
        end[ok] = blur_consistency_loss(frames_ok, y_ok)
        mean[ok] = frames_ok.mean(1)
    residual = torch.where(ok[:, None, None, None], y.float() - mean, torch.zeros_like(mean)).to(y.dtype)
    return refined, start, end, ok, residual


def refine_codes(generator: nn.Module, codes: torch.Tensor, blurry: torch.Tensor, settings: RefineSettings,
                 max_batch: int = 16) -> torch.Tensor:
    """:func:`refine`'s codes ``[N, T, num_ws, w_dim]`` only (detached; E_v's own where it did not apply)."""
    return refine(generator, codes, blurry, settings, max_batch).codes


def add_refine_argument(parser) -> None:
    """``--refine-steps N`` and ``--residual/--no-residual`` for the commands that run a model (run, demo, serve,
    evaluate); ``args.refine_steps`` and ``args.refine_residual`` are None when not given (the model's default)."""
    parser.add_argument("--refine-steps", type=int, default=None, metavar="N",
                        help="blur-consistency refinement: N Adam steps that bring the mean of the sharp frames "
                             "to the blurry input (0: no steps; default: the model's pipeline.json \"refine\", "
                             "off when it has none; video input: 0). Each step costs one G pass over the frames")
    parser.add_argument("--residual", dest="refine_residual", action=argparse.BooleanOptionalAction, default=None,
                        help="add what the frames' mean still misses of the blurry input to every input-view frame "
                             "(back-projection; only where the model explains the face; default: the model's "
                             "pipeline.json \"refine\"). --refine-steps 0 --no-residual is the paper's pipeline")

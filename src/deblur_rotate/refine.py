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

Cost: ``steps`` forward and backward passes of G over the T frames of every image (about 0.1 s per step and image
at the tiny preset on 2 CPU cores). ``steps = 0`` is the paper's pipeline, unchanged.
"""
from __future__ import annotations

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

    @classmethod
    def from_json(cls, value: dict | None) -> RefineSettings:
        """``pipeline.json``'s ``"refine"`` object (or None: off) -> settings; ValueError naming a bad field."""
        if value is None:
            return cls()
        if not isinstance(value, dict):
            raise ValueError(f"must be an object {{\"steps\": n, \"lr\": x, \"per_frame\": false}}, got {value!r}")  # noqa: TRY004
        known = {"steps", "lr", "per_frame", "max_start_error", "precision"}
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

    def records(self) -> list[dict]:
        """One JSON-ready dict per image (for result.json / summaries)."""
        return [{"applied": bool(a), "start_error": round(float(s), 4), "end_error": round(float(e), 4)}
                for a, s, e in zip(self.applied.tolist(), self.start_error.tolist(), self.end_error.tolist())]


def refine(generator: nn.Module,      # StyleGAN2 Generator: synthesis(ws [B, num_ws, w_dim]) -> [B, 3, R, R]
           codes: torch.Tensor,       # [N, T, num_ws, w_dim] E_v's codes
           blurry: torch.Tensor,      # [N, 3, R, R] the blurry faces in [-1, 1], as E_v saw them
           settings: RefineSettings,
           max_batch: int = 16,       # images refined together (memory: T frames each)
           ) -> RefineResult:
    """``settings.steps`` Adam steps on :func:`deblur_rotate.losses.blur_consistency_loss` for every image whose
    E_v frames already explain it (start error at most ``settings.max_start_error``); the others keep E_v's codes.
    Deterministic (no noise, no sampling); the images are refined in groups of ``max_batch``, each image's
    correction on its own (the loss is summed over the images, so the grouping does not change the result beyond
    floating-point summation order). Off (``steps == 0``): E_v's codes, errors not measured (NaN)."""
    import torch

    from deblur_rotate.losses import blur_consistency_loss

    n = codes.shape[0]
    if settings.steps == 0 or n == 0:
        nan = torch.full((n,), float("nan"))
        return RefineResult(codes, nan, nan.clone(), torch.zeros(n, dtype=torch.bool))
    if codes.dim() != 4 or blurry.dim() != 4 or n != blurry.shape[0]:
        raise ValueError(f"expected codes [N, T, num_ws, w_dim] and blurry [N, 3, R, R], got {tuple(codes.shape)} "
                         f"and {tuple(blurry.shape)}")

    def error(ws: torch.Tensor, y: torch.Tensor) -> torch.Tensor:  # [B, T, num_ws, w_dim], [B, 3, R, R] -> [B]
        frames = generator.synthesis(ws.flatten(0, 1), noise_mode="const").float()    # [B * T, 3, R, R]
        return blur_consistency_loss(frames.view(*ws.shape[:2], *frames.shape[1:]), y)

    bf16 = use_bf16(settings.precision, codes.device)

    out, starts, ends, applied = [], [], [], []
    step = max(1, int(max_batch))
    for first in range(0, n, step):
        c0 = codes[first:first + step].detach()                                # [B, T, num_ws, w_dim]
        y = blurry[first:first + step].detach()                                # [B, 3, R, R]
        with torch.no_grad():
            start = error(c0, y)                                               # [B]
        ok = start <= settings.max_start_error                                 # [B]
        refined, end = c0, start
        if ok.any():
            c_ok, y_ok = c0[ok], y[ok]
            shape = (c_ok.shape[0], c_ok.shape[1] if settings.per_frame else 1, *c_ok.shape[2:])
            correction = torch.zeros(shape, device=c0.device, dtype=c0.dtype, requires_grad=True)
            opt = torch.optim.Adam([correction], lr=float(settings.lr))
            with torch.enable_grad(), torch.autocast(codes.device.type, dtype=torch.bfloat16, enabled=bf16):
                for _ in range(settings.steps):
                    # summed over the images: each image's correction sees its own gradient, whatever the group
                    (grad,) = torch.autograd.grad(error(c_ok + correction, y_ok).sum(), [correction])
                    correction.grad = grad
                    opt.step()
            refined, end = c0.clone(), start.clone()
            refined[ok] = (c_ok + correction).detach()
            with torch.no_grad():
                end[ok] = error(refined[ok], y_ok)
        out.append(refined)
        starts.append(start)
        ends.append(end)
        applied.append(ok)
    return RefineResult(torch.cat(out), torch.cat(starts).cpu(), torch.cat(ends).cpu(), torch.cat(applied).cpu())


def refine_codes(generator: nn.Module, codes: torch.Tensor, blurry: torch.Tensor, settings: RefineSettings,
                 max_batch: int = 16) -> torch.Tensor:
    """:func:`refine`'s codes ``[N, T, num_ws, w_dim]`` only (detached; E_v's own where it did not apply)."""
    return refine(generator, codes, blurry, settings, max_batch).codes


def add_refine_argument(parser) -> None:
    """``--refine-steps N`` for the commands that run a model (run, demo, serve)."""
    parser.add_argument("--refine-steps", type=int, default=None, metavar="N",
                        help="blur-consistency refinement: N Adam steps that bring the mean of the sharp frames "
                             "to the blurry input (0: off, the paper's pipeline; default: the model's pipeline.json "
                             "\"refine\", off when it has none; video input: off). Each step costs one G pass over "
                             "the frames")

"""Training-data mixing (the paper's 2:1:1 of FFHQ, 300VW and BMFD per batch) and colour jitter of whole samples
(the blurry image and its targets alike, kornia), as pure functions of their seeds.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from deblur_rotate.data.samples import collate_samples, seed_from
from deblur_rotate.errors import UserError

__all__ = ["MixedBatchSampler", "MixedDataset", "apply_jitter", "batch_counts", "jitter_batch", "mixed_loader",
           "sample_jitter"]


# ------------------------------------------------------------------------------------------------- mixing

class MixedDataset(torch.utils.data.Dataset):
    """Several datasets behind one index space (dataset k's item j is global index offsets[k] + j);
    every sample gets ``source_index`` (int k) so a batch can be split by source."""

    def __init__(self, datasets: Sequence[torch.utils.data.Dataset]):
        if not datasets:
            raise UserError("mixing needs at least one dataset")
        self.datasets = list(datasets)
        self.sizes = [len(d) for d in self.datasets]
        self.offsets = np.concatenate([[0], np.cumsum(self.sizes)]).astype(int).tolist()

    def __len__(self) -> int:
        return self.offsets[-1]

    def locate(self, i: int) -> tuple[int, int]:
        k = int(np.searchsorted(self.offsets, i, side="right") - 1)
        return k, i - self.offsets[k]

    def set_epoch(self, epoch: int) -> None:
        for d in self.datasets:
            if hasattr(d, "set_epoch"):
                d.set_epoch(epoch)

    def __getitem__(self, i: int) -> dict:
        k, j = self.locate(int(i))
        sample = dict(self.datasets[k][j])
        sample["source_index"] = k
        return sample


def batch_counts(batch_size: int, ratio: Sequence[float], num_batches: int) -> np.ndarray:
    """Samples per source in each of ``num_batches`` batches: ``[num_batches, K]`` ints, every row summing to
    ``batch_size``. Each row holds floor(B r_k / sum r); the leftover slots go to the sources furthest behind
    their share so far, so that over many batches the counts follow the ratio to within one sample."""
    r = np.asarray(ratio, dtype=np.float64)
    if r.ndim != 1 or r.size < 1 or (r < 0).any() or r.sum() <= 0:
        raise UserError(f"mixing ratio must be non-negative numbers with a positive sum (got {list(ratio)})")
    if batch_size < 1:
        raise UserError(f"batch size must be >= 1 (got {batch_size})")
    quota = batch_size * r / r.sum()
    base = np.floor(quota).astype(int)
    left = batch_size - base.sum()
    owed = np.zeros_like(quota)
    out = np.zeros((num_batches, r.size), dtype=int)
    for b in range(num_batches):
        owed += quota - base
        counts = base.copy()
        if left:
            order = np.lexsort((np.arange(r.size), -owed))  # most owed first, ties to the lower source
            chosen = order[:left]
            counts[chosen] += 1
            owed[chosen] -= 1
        out[b] = counts
    return out


class MixedBatchSampler(torch.utils.data.Sampler):
    """Batches of global indices into a :class:`MixedDataset`, with ``batch_size`` samples per rank per
    batch split among the sources by ``ratio`` (default 2:1:1, the paper's FFHQ : 300VW : BMFD).

    Each source is read as an endless stream of shuffled passes (a fresh permutation per pass, seeded by
    (seed, epoch, source, pass)); under DDP, rank r takes stream positions r, r + W, r + 2W, ... (W =
    world_size), so ranks see disjoint samples and the whole is a pure function of
    (seed, epoch, rank, world_size). Use as ``DataLoader(mixed, batch_sampler=sampler, collate_fn=collate_samples)``.
    """

    def __init__(self, sizes: Sequence[int],  # len() of each source, in MixedDataset order
                 batch_size: int,  # samples per batch on this rank
                 ratio: Sequence[float] = (2, 1, 1),  # relative share of each source in every batch
                 seed: int = 0,
                 rank: int = 0,  # this process's rank under DDP
                 world_size: int = 1,  # number of DDP processes
                 batches_per_epoch: int | None = None):  # default: ceil(sum(sizes) / (batch_size * world_size))
        self.sizes, self.ratio = [int(s) for s in sizes], list(ratio)
        if len(self.sizes) != len(self.ratio):
            raise UserError(f"{len(self.sizes)} datasets but a mixing ratio of {len(self.ratio)} numbers "
                            f"({':'.join(map(str, self.ratio))}); give one number per dataset")
        for k, (n, r) in enumerate(zip(self.sizes, self.ratio)):
            if r > 0 and n == 0:
                raise UserError(f"dataset {k} of the mix is empty but has ratio {r}")
        if not 0 <= rank < world_size:
            raise UserError(f"rank {rank} is outside 0..{world_size - 1}")
        self.batch_size, self.seed, self.rank, self.world_size = int(batch_size), int(seed), int(rank), int(world_size)
        self.batches_per_epoch = batches_per_epoch or max(1, math.ceil(sum(self.sizes) / (batch_size * world_size)))
        self.epoch = 0
        self.counts = batch_counts(self.batch_size, self.ratio, self.batches_per_epoch)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.batches_per_epoch

    def _stream(self, k: int):
        n, w, pass_no, position = self.sizes[k], self.world_size, 0, 0
        while True:
            g = torch.Generator().manual_seed(seed_from(self.seed, self.epoch, k, pass_no))
            perm = torch.randperm(n, generator=g).tolist()
            for j in perm:
                if position % w == self.rank:
                    yield j
                position += 1
            pass_no += 1

    def __iter__(self):
        offsets = np.concatenate([[0], np.cumsum(self.sizes)]).astype(int)
        streams = [self._stream(k) if self.sizes[k] else None for k in range(len(self.sizes))]
        for counts in self.counts:
            batch = []
            for k, c in enumerate(counts):
                batch.extend(int(offsets[k] + next(streams[k])) for _ in range(c))
            yield batch


def mixed_loader(datasets: Sequence[torch.utils.data.Dataset], batch_size: int, ratio: Sequence[float] = (2, 1, 1),
                 seed: int = 0, rank: int = 0, world_size: int = 1, workers: int = 2,
                 batches_per_epoch: int | None = None, **loader_kwargs) -> torch.utils.data.DataLoader:
    """A DataLoader of mixed batches (see :class:`MixedBatchSampler`); collated by :func:`collate_samples`."""
    mixed = MixedDataset(datasets)
    sampler = MixedBatchSampler(mixed.sizes, batch_size, ratio, seed=seed, rank=rank, world_size=world_size,
                                batches_per_epoch=batches_per_epoch)
    return torch.utils.data.DataLoader(mixed, batch_sampler=sampler, collate_fn=collate_samples, num_workers=workers,
                                       **loader_kwargs)


# ------------------------------------------------------------------------------------------ colour jitter

def sample_jitter(n: int, generator: torch.Generator, brightness: float = 0.2, contrast: float = 0.2,
                  saturation: float = 0.2, hue: float = 0.05) -> dict[str, torch.Tensor]:
    """Jitter parameters for ``n`` samples, each ``[n]``: brightness offset in [-b, b] (on [0, 1] images),
    contrast and saturation factors in [1 - c, 1 + c], hue shift in [-h, h] of a full turn (converted to
    radians)."""
    def u(spread):
        return (torch.rand(n, generator=generator) * 2 - 1) * spread
    return {"brightness": u(brightness), "contrast": 1 + u(contrast), "saturation": 1 + u(saturation),
            "hue": u(hue) * 2 * math.pi}


def apply_jitter(images: torch.Tensor, params: dict[str, torch.Tensor]) -> torch.Tensor:
    """Colour jitter with kornia on ``images [N, ..., 3, H, W]`` in [-1, 1]: every image of sample i (all the
    axes between N and 3: targets, views) gets the same parameters ``params[*][i]``. Order: brightness,
    contrast, saturation, hue. Output has the input's shape, in [-1, 1]."""
    from kornia.enhance import adjust_brightness, adjust_contrast, adjust_hue, adjust_saturation

    shape = images.shape
    n = shape[0]
    per = int(np.prod(shape[1:-3])) if images.dim() > 4 else 1
    x = ((images.reshape(n * per, *shape[-3:]) + 1) * 0.5).clamp(0, 1)

    def rep(key):
        return params[key].to(x).repeat_interleave(per)
    x = adjust_brightness(x, rep("brightness"))
    x = adjust_contrast(x, rep("contrast"))
    x = adjust_saturation(x, rep("saturation"))
    x = adjust_hue(x, rep("hue"))
    return (x.clamp(0, 1) * 2 - 1).reshape(shape)


def jitter_batch(batch: dict, generator: torch.Generator, **spreads: float) -> dict:
    """A collated batch with ``blurry`` and ``targets`` colour-jittered alike per sample (see
    :func:`sample_jitter` for the spreads). Pure: returns a new dict."""
    params = sample_jitter(batch["blurry"].shape[0], generator, **spreads)
    out = dict(batch)
    out["blurry"] = apply_jitter(batch["blurry"], params)
    out["targets"] = apply_jitter(batch["targets"], params)
    return out

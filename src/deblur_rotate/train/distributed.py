"""One process or many (torchrun): process group, device, rank helpers, per-rank seeding.

Launch with ``torchrun --nproc_per_node N -m ...`` for N GPUs; torchrun sets ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``. Without torchrun everything here works for a single
process and no process group is created (every collective is then a no-op).

Usage, once per process, at the edge of a training command::

    info = setup()                  # reads the env, inits the group, picks the device
    model = wrap_ddp(model.to(info.device))
    ...
    shutdown()

The process group uses NCCL when the device is CUDA and gloo on CPU.
"""
from __future__ import annotations

import os
import random
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from deblur_rotate.errors import UserError

__all__ = [
    "DistInfo",
    "setup",
    "info",
    "shutdown",
    "is_main",
    "barrier",
    "all_reduce_mean",
    "all_gather_objects",
    "wrap_ddp",
    "unwrap",
    "seed_all",
    "rank_generator",
    "InfiniteSampler",
    "EpochTaggedDataset",
    "resumable_batches",
]


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits: its rank among ``world_size`` processes and its device."""

    rank: int  # global rank, 0..world_size-1; rank 0 is the one that writes files
    world_size: int  # number of processes; 1 without torchrun
    local_rank: int  # rank on this machine; the CUDA device index
    device: torch.device  # cuda:LOCAL_RANK or cpu
    backend: str | None  # "nccl" / "gloo" when a process group exists, else None

    @property
    def distributed(self) -> bool:
        return self.backend is not None


_INFO: DistInfo | None = None
_OWN_GROUP = False  # whether setup() created the process group (then shutdown() destroys it)


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise UserError(f"environment variable {name}={value!r} is not an integer") from None


def setup(device: str | torch.device | None = None) -> DistInfo:
    """Read the torchrun environment, create the process group if there is more than one process,
    and choose this process's device. Idempotent: later calls return the first answer.

    device: None picks ``cuda:LOCAL_RANK`` when CUDA is available, else ``cpu``; ``"cpu"`` forces CPU
            (gloo) even on a CUDA machine; ``"cuda"`` requires CUDA and becomes ``cuda:LOCAL_RANK``.
    """
    global _INFO, _OWN_GROUP
    if _INFO is not None:
        return _INFO
    rank = _env_int("RANK", 0)
    world_size = _env_int("WORLD_SIZE", 1)
    local_rank = _env_int("LOCAL_RANK", rank)
    if not 0 <= rank < world_size:
        raise UserError(f"RANK={rank} is outside 0..WORLD_SIZE-1 (WORLD_SIZE={world_size})")

    want = torch.device(device) if device is not None else None
    if want is None:
        use_cuda = torch.cuda.is_available()
    elif want.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError("--device cuda was asked for but CUDA is not available on this machine")
        use_cuda = True
    elif want.type == "cpu":
        use_cuda = False
    else:
        raise UserError(f"unsupported device {str(want)!r}: use cpu or cuda")
    if use_cuda:
        if world_size > 1 and local_rank >= torch.cuda.device_count():
            raise UserError(f"LOCAL_RANK={local_rank} but only {torch.cuda.device_count()} CUDA devices are visible")
        index = local_rank if world_size > 1 else (want.index if want is not None and want.index is not None else 0)
        dev = torch.device("cuda", index)
        torch.cuda.set_device(dev)
    else:
        dev = torch.device("cpu")

    backend = None
    if world_size > 1:
        backend = "nccl" if use_cuda else "gloo"
        if not dist.is_initialized():
            for name in ("MASTER_ADDR", "MASTER_PORT"):
                if name not in os.environ:
                    raise UserError(f"WORLD_SIZE={world_size} but {name} is not set; launch with torchrun")
            kwargs = {"device_id": dev} if use_cuda else {}
            dist.init_process_group(backend=backend, init_method="env://", rank=rank, world_size=world_size, **kwargs)
            _OWN_GROUP = True
        else:
            backend = dist.get_backend()
    _INFO = DistInfo(rank=rank, world_size=world_size, local_rank=local_rank, device=dev, backend=backend)
    return _INFO


def info() -> DistInfo:
    """The answer of :func:`setup` (calling it with defaults if nobody did yet)."""
    return _INFO if _INFO is not None else setup()


def shutdown() -> None:
    """Destroy the process group created by :func:`setup` (if any) and forget the setup."""
    global _INFO, _OWN_GROUP
    if _OWN_GROUP and dist.is_initialized():
        dist.destroy_process_group()
    _OWN_GROUP = False
    _INFO = None


def _group_active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def is_main() -> bool:
    """True on rank 0 (and in a single process): the one process that writes files and logs."""
    if _INFO is not None:
        return _INFO.rank == 0
    return not _group_active() or dist.get_rank() == 0


def barrier() -> None:
    """Wait for every rank; a no-op in a single process."""
    if _group_active():
        if dist.get_backend() == "nccl":
            dist.barrier(device_ids=[torch.cuda.current_device()])
        else:
            dist.barrier()


def all_reduce_mean(tensor: torch.Tensor) -> torch.Tensor:
    """Mean of ``tensor`` over all ranks (a new tensor, same shape/dtype/device; floating point).
    In a single process it returns a detached copy."""
    out = tensor.detach().clone()
    if _group_active():
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        out /= dist.get_world_size()
    return out


def all_gather_objects(obj) -> list:
    """Every rank's ``obj`` as a list indexed by rank (``[obj]`` in a single process).

    Uses torch's object collective, which pickles between *our own* processes; nothing read from disk."""
    if not _group_active():
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def wrap_ddp(module: nn.Module, **ddp_kwargs) -> nn.Module:
    """Wrap ``module`` (already on this rank's device) in DistributedDataParallel when there is more
    than one process; return it unchanged otherwise. ``ddp_kwargs`` go to DDP (e.g.
    ``find_unused_parameters=True``, ``broadcast_buffers=False``)."""
    if not _group_active():
        return module
    dev = info().device
    if dev.type == "cuda":
        ddp_kwargs.setdefault("device_ids", [dev.index])
        ddp_kwargs.setdefault("output_device", dev.index)
    return nn.parallel.DistributedDataParallel(module, **ddp_kwargs)


def unwrap(module: nn.Module) -> nn.Module:
    """The bare module inside a DDP / DataParallel wrapper (or the module itself)."""
    while isinstance(module, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
        module = module.module
    return module


def _rank() -> int:
    if _INFO is not None:
        return _INFO.rank
    return dist.get_rank() if _group_active() else 0


def seed_all(seed: int, per_rank: bool = True) -> int:
    """Seed python ``random``, numpy and torch (CPU and every CUDA device). With ``per_rank`` each
    rank gets ``seed + 1_000_003 * rank`` (different noise per rank, reproducible). Returns the seed used."""
    s = int(seed) + (1_000_003 * _rank() if per_rank else 0)
    random.seed(s)
    np.random.seed(s % 2**32)
    torch.manual_seed(s)  # also seeds every CUDA device
    return s


def rank_generator(seed: int, *, step: int = 0, device: str | torch.device = "cpu") -> torch.Generator:
    """A torch.Generator seeded from (seed, rank, step): independent streams per rank and per step,
    so a batch drawn for step k is the same whether or not the run was interrupted before it."""
    g = torch.Generator(device=device)
    g.manual_seed((int(seed) * 1_000_003 + _rank() * 7_919 + int(step) * 104_729) % 2**63)
    return g


class InfiniteSampler(torch.utils.data.Sampler):
    """Endless, resumable, rank-split index stream for a ``DataLoader(sampler=...)``.

    The global stream is the concatenation of epoch permutations (epoch e shuffled by a generator
    seeded with ``seed + e``, or in order when ``shuffle=False``); rank r takes positions r, r+W, r+2W...
    ``start`` is the number of indices this rank already consumed (``step * batch_size`` per rank), so a
    resumed run sees exactly the batches the uninterrupted run would have seen.
    """

    def __init__(
        self,
        length: int,  # number of items in the dataset (> 0)
        *,
        seed: int = 0,  # shuffling seed; the same on every rank
        shuffle: bool = True,  # False: 0, 1, 2, ... repeated
        start: int = 0,  # indices already consumed by this rank (resume point)
        rank: int | None = None,  # defaults to this process's rank
        world_size: int | None = None,  # defaults to the number of processes
        tag_epoch: bool = False,  # yield epoch * length + index (for EpochTaggedDataset) instead of index
    ):
        if length <= 0:
            raise UserError("the dataset is empty: nothing to train on")
        self.length = int(length)
        self.seed = int(seed)
        self.shuffle = shuffle
        self.start = int(start)
        self.rank = _rank() if rank is None else int(rank)
        self.world_size = (dist.get_world_size() if _group_active() else 1) if world_size is None else int(world_size)
        self.tag_epoch = bool(tag_epoch)

    def _order(self, epoch: int) -> torch.Tensor:
        if not self.shuffle:
            return torch.arange(self.length)
        g = torch.Generator().manual_seed(self.seed + epoch)
        return torch.randperm(self.length, generator=g)

    def __iter__(self) -> Iterator[int]:
        pos = self.start * self.world_size + self.rank
        epoch, order = -1, None
        while True:
            e, offset = divmod(pos, self.length)
            if e != epoch:
                epoch, order = e, self._order(e)
            yield int(order[offset]) + (epoch * self.length if self.tag_epoch else 0)
            pos += self.world_size


class EpochTaggedDataset(torch.utils.data.Dataset):
    """Hands the epoch to a reader whose randomness is a function of (seed, epoch, index) (blur kernels of
    still images, random mirroring; see ``data.readers``) under an endless sampler, which never calls
    ``set_epoch``: item ``epoch * len(base) + i`` is ``base[i]`` drawn after ``reader.set_epoch(epoch)``.
    ``reader`` is ``base`` itself or the reader a training stage's dataset wraps (its ``.dataset``). Works in
    DataLoader workers too (each item sets the epoch its copy of the reader needs)."""

    def __init__(self, base: torch.utils.data.Dataset,  # what the batches are drawn from (has __len__)
                 reader=None):                          # the object with set_epoch(epoch); default: base
        self.base = base
        self.reader = base if reader is None else reader
        self.length = len(base)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, tagged: int):
        epoch, index = divmod(int(tagged), self.length)
        if getattr(self.reader, "epoch", None) != epoch:
            self.reader.set_epoch(epoch)
        return self.base[index]


def epoch_reader(dataset, depth: int = 4):
    """The object that takes ``set_epoch`` in ``dataset`` or in the readers it wraps (``.dataset``
    attributes, up to ``depth`` levels), or None."""
    for _ in range(depth):
        if dataset is None:
            return None
        if callable(getattr(dataset, "set_epoch", None)):
            return dataset
        dataset = getattr(dataset, "dataset", None)
    return None


def resumable_batches(dataset: torch.utils.data.Dataset, batch_size: int, seed: int, start_step: int,
                      workers: int, device: torch.device):
    """An endless iterator of this rank's batches (``batch_size`` items each) for iterations ``start_step``,
    ``start_step + 1``, ... exactly as an uninterrupted run would draw them (:class:`InfiniteSampler`).
    A dataset (or the reader it wraps) with ``set_epoch`` gets each pass's epoch: new blur kernels and flips
    on every pass over the data."""
    reader = epoch_reader(dataset)
    sampler = InfiniteSampler(len(dataset), seed=seed, start=start_step * batch_size, tag_epoch=reader is not None)
    if reader is not None:
        dataset = EpochTaggedDataset(dataset, reader)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=workers,
                                         pin_memory=device.type == "cuda", drop_last=True, persistent_workers=False)
    return iter(loader)

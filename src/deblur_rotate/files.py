"""Small file helpers: atomic writes, 8-bit PNG I/O in the project's tensor conventions."""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import threading
from pathlib import Path

import numpy as np
import torch
from PIL import Image

__all__ = ["atomic_write_bytes", "atomic_write_json", "save_png", "load_png", "to_uint8", "from_uint8",
           "current_umask", "apply_umask_mode", "disk_full", "replace_dir"]

_UMASK_LOCK = threading.Lock()


def current_umask() -> int:
    """The process's umask, read without changing it where the system allows (Linux: /proc/self/status);
    elsewhere it is set and restored at once, under a lock."""
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as handle:
            for line in handle:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _UMASK_LOCK:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def disk_full(err: BaseException) -> bool:
    """Whether ``err`` is an OSError saying the disk (or the user's quota) is full (ENOSPC, EDQUOT)."""
    import errno

    return isinstance(err, OSError) and err.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))


def apply_umask_mode(path: str | os.PathLike, folder: bool = False) -> None:
    """Give ``path`` the mode a plain ``open``/``mkdir`` would have: ``0o666 & ~umask`` for a file,
    ``0o777 & ~umask`` for a folder (mkstemp/mkdtemp make them 0600/0700, readable by their owner only)."""
    os.chmod(path, (0o777 if folder else 0o666) & ~current_umask())


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and a rename, so a reader
    never sees a half-written file. The file gets the umask's usual mode (``0o666 & ~umask``), set on the
    temporary file, so it is in place when the name appears."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        apply_umask_mode(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def replace_dir(new: str | os.PathLike, dest: str | os.PathLike) -> None:
    """Move the finished folder ``new`` to ``dest``, replacing what is there (old one removed last): a reader
    sees the old folder or the new one, never a half-written one. Both must be on one file system."""
    new, dest = Path(new), Path(dest)
    if dest.exists():
        trash = dest.with_name(f".{dest.name}.old-{os.getpid()}")
        shutil.rmtree(trash, ignore_errors=True)
        os.replace(dest, trash)
        os.replace(new, dest)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(new, dest)


def atomic_write_json(path: str | os.PathLike, obj) -> None:
    """Atomically write ``obj`` as indented JSON."""
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode())


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """[N, 3, H, W] or [3, H, W] float in [-1, 1] -> uint8 [N, H, W, 3] / [H, W, 3]."""
    x = ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.movedim(-3, -1).cpu().numpy()


def from_uint8(array: np.ndarray) -> torch.Tensor:
    """uint8 [..., H, W, 3] -> float [..., 3, H, W] in [-1, 1]."""
    return torch.from_numpy(np.array(array, copy=True)).movedim(-1, -3).float() / 127.5 - 1.0


def save_png(path: str | os.PathLike, image_uint8: np.ndarray, compress_level: int = 1) -> None:
    """Write an 8-bit RGB PNG ([H, W, 3] uint8). Fast compression by default (datasets are large)."""
    Image.fromarray(image_uint8).save(path, format="PNG", compress_level=compress_level)


def load_png(path: str | os.PathLike) -> np.ndarray:
    """Read an image file as uint8 RGB [H, W, 3]."""
    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"))

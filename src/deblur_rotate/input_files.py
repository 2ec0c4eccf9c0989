"""Which image files ``deblur-rotate run`` reads: files, folders (natural order) and globs (``**`` walks each real
folder once, so symlink loops are not followed), resolved and deduplicated (a file reached twice, by a symlink, a
folder and a glob, is done once). Torch-free."""
from __future__ import annotations

import glob
import os
import re
from pathlib import Path

from deblur_rotate.images import IMAGE_EXTS, natural_key

__all__ = ["list_inputs"]


def _glob_regex(pattern: str) -> re.Pattern:
    """A glob pattern with ``**`` (any number of folders) as a regex over ``/``-separated paths; ``*``, ``?`` and
    ``[...]`` do not cross a ``/``, and, as in :mod:`glob`, do not match a leading dot."""
    out, i = [], 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append(r"(?:[^/.][^/]*/)*")
            i += 3
        elif pattern.startswith("**", i):
            out.append(r"(?:[^/.][^/]*(?:/[^/.][^/]*)*)?")
            i += 2
        elif pattern[i] == "*":
            start = i == 0 or pattern[i - 1] == "/"
            out.append(r"(?:[^/.][^/]*)?" if start else r"[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append(r"[^/]")
            i += 1
        elif pattern[i] == "[" and "]" in pattern[i + 2:]:
            j = pattern.index("]", i + 2)
            body = pattern[i + 1:j]
            out.append("[" + ("^" + body[1:] if body.startswith("!") else body).replace("\\", "\\\\") + "]")
            i = j + 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(out) + r"\Z")


def _walk_glob(spec: str) -> list[Path]:
    """The files a recursive (``**``) glob pattern matches, walking each real folder once: a symlink loop
    (a folder linking to itself or a parent) is not followed round and round as :func:`glob.glob` does."""
    parts = spec.replace(os.sep, "/").split("/")
    fixed = []
    for part in parts:
        if any(ch in part for ch in "*?["):
            break
        fixed.append(part)
    base = "/".join(fixed) or "."
    if spec.startswith("/") and not fixed[1:]:
        base = "/"
    if not os.path.isdir(base):
        return []
    regex = _glob_regex(spec.replace(os.sep, "/"))
    seen: set[tuple[int, int]] = set()
    found = []
    for folder, dirs, files in os.walk(base, followlinks=True):
        try:
            st = os.stat(folder)
        except OSError:
            dirs[:] = []
            continue
        if (st.st_dev, st.st_ino) in seen:  # this real folder was listed already (a symlink loop or a twin)
            dirs[:] = []
            continue
        seen.add((st.st_dev, st.st_ino))
        dirs.sort()
        for name in files:
            path = os.path.join(folder, name)
            rel = path[2:] if base == "." and path.startswith("./") and not spec.startswith("./") else path
            if regex.match(rel.replace(os.sep, "/")):
                found.append(Path(rel))
    return found


def _real(path: Path) -> str:
    """The path with every symlink resolved (what tells two spellings of one file apart)."""
    try:
        return os.path.realpath(path)
    except (OSError, ValueError):
        return str(path)


def list_inputs(specs: list[str]) -> tuple[list[Path], list[tuple[str, str]]]:
    """Expand ``-i`` arguments (files, folders, globs) -> (image paths in order, [(spec, why it gave nothing)]).

    Folders are listed without recursion; folders and globs keep files with an image extension; a file named
    explicitly is kept whatever its extension (reading it decides). Recursive globs (``**``) walk every real
    folder once (symlink loops are not followed round), and a file reached twice (the same file through a
    symlink, a folder and a glob, ``a.png`` and ``./a.png``) is kept once, under the first name it came by."""
    paths: list[Path] = []
    problems: list[tuple[str, str]] = []
    for spec in specs:
        p = Path(spec)
        if p.is_dir():
            found = sorted((f for f in p.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_EXTS), key=natural_key)
            if not found:
                problems.append((spec, f"folder has no images ({', '.join(sorted(IMAGE_EXTS))})"))
        elif p.is_file():
            found = [p]
        elif any(ch in spec for ch in "*?["):
            matches = _walk_glob(spec) if "**" in spec else (Path(f) for f in glob.glob(spec))
            found = sorted((f for f in matches if f.is_file() and f.suffix.lower() in IMAGE_EXTS), key=natural_key)
            if not found:
                problems.append((spec, "the pattern matches no image files"))
        else:
            found = []
            problems.append((spec, "no such file or folder"))
        paths.extend(found)
    unique: dict[str, Path] = {}
    for path in paths:
        unique.setdefault(_real(path), path)
    return list(unique.values()), problems


# ------------------------------------------------------------------------------------------------ processing

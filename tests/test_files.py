"""Atomic writes: whole files only, and the modes a plain open/mkdir would give (the umask's, not 0600)."""
import os
import stat

import pytest

from deblur_rotate.files import atomic_write_bytes, atomic_write_json


@pytest.fixture
def umask():
    """Set the process umask for one test, then restore it."""
    old = os.umask(0o022)
    os.umask(old)
    yield lambda mask: os.umask(mask)
    os.umask(old)


@pytest.mark.skipif(os.name != "posix", reason="POSIX file modes")
@pytest.mark.parametrize("mask", [0o022, 0o002, 0o077])
def test_atomic_writes_get_the_umask_modes(tmp_path, umask, mask):
    umask(mask)
    atomic_write_bytes(tmp_path / "a.bin", b"data")
    atomic_write_json(tmp_path / "deep" / "b.json", {"x": 1})
    plain = tmp_path / "plain.txt"
    plain.write_text("reference")  # what open() gives under this umask
    for path in (tmp_path / "a.bin", tmp_path / "deep" / "b.json"):
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode == 0o666 & ~mask == stat.S_IMODE(plain.stat().st_mode), oct(mode)
    assert (tmp_path / "a.bin").read_bytes() == b"data"
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []  # no temporary file left

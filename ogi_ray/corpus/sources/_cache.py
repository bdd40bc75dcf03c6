"""The builders' on-disk cache: where expensive products live and how they are written.

Rendering emoji, synthesizing speech, rolling out simulators and unpacking an sdist take
seconds to minutes, and every Ray worker would repeat them, so builders keep their
products under ``$OGI_CACHE_DIR/<builder>`` (default ``~/.cache/ogi_ray``):

    key_digest(settings) ─► file name ─► load_npz(path) hit? ─► arrays
                                            │ miss
                                            ▼
                              compute ─► save_npz / atomic_write ─► arrays

Files are written to a temporary name in the same folder and renamed over the final
one (``os.replace`` is atomic on one filesystem), so concurrent workers and killed runs
never leave a half-written file that a later build would read as data. The key covers
every parameter and library version that changes the product, so a stale file is
never reused.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import numpy as np


def cache_dir(name: str) -> Path:
    """``$OGI_CACHE_DIR/<name>`` (default ``~/.cache/ogi_ray/<name>``); not created here."""
    return Path(os.environ.get("OGI_CACHE_DIR", "~/.cache/ogi_ray")).expanduser() / name


def key_digest(settings: Any, n: int = 16) -> str:
    """First ``n`` hex digits of the SHA-256 of ``settings`` as sorted-key JSON."""
    blob = json.dumps(settings, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:n]


def atomic_write(path: Path, write: Callable[[IO[bytes]], object]) -> None:
    """Create ``path`` with ``write(binary_file)``; readers see the whole file or none."""
    from ogi_ray.storage import Store

    with Store(path.parent).open_output(path.name) as f:
        write(f)


def load_npz(path: Path) -> dict[str, np.ndarray] | None:
    """The arrays of a cached .npz, or None when it is absent."""
    if not path.is_file():
        return None
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


def save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    atomic_write(path, lambda f: np.savez(f, **arrays))


def cached_npz(path: Path, compute: Callable[[], dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Arrays from the cache file ``path``, computing and saving them on a miss."""
    hit = load_npz(path)
    if hit is not None:
        return hit
    out = compute()
    save_npz(path, out)
    return out


def atomic_dir(final: Path, fill: Callable[[Path], object]) -> Path:
    """Create folder ``final`` by ``fill(tmp_folder)`` then a rename; returns ``final``.

    If another process created ``final`` first, its copy is kept and ours discarded.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}-"))
    try:
        fill(tmp)
        try:
            os.rename(tmp, final)
        except OSError:  # another process won the race
            if not final.is_dir():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final

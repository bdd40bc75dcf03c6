"""Run tiny linear algebra on one BLAS thread.

scipy's L-BFGS-B calls LAPACK/BLAS on 5x5-sized problems thousands of times per fit. With
OpenBLAS's default threading, each call wakes helper threads that spin; on a busy 2-core
machine (Ray workers beside us) a fit then ran ~15x slower in wall time and burnt ~10x the CPU
(measured: 51 s vs 3.7 s for the same 32-start fit). Pinning OpenBLAS to one thread for the
duration of the fit removes that and costs nothing, since the matrices are tiny.

Uses threadpoolctl when installed; otherwise finds loaded OpenBLAS builds in /proc/self/maps
(Linux) and calls their ``*_set_num_threads``. Anything else is a silent no-op.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

# (getter, setter) pairs across OpenBLAS builds: plain, 64-bit-int, scipy/numpy wheel prefixes.
_SYMBOLS = [
    (f"{prefix}_get_num_threads{suffix}", f"{prefix}_set_num_threads{suffix}")
    for prefix in ("scipy_openblas", "openblas")
    for suffix in ("", "64_")
]


def _openblas_controls() -> list[tuple[Any, Any]]:
    try:
        with open(f"/proc/{os.getpid()}/maps", encoding="utf-8") as fh:
            paths = {line.split()[-1] for line in fh if "openblas" in line.lower()}
    except OSError:
        return []
    controls = []
    for path in sorted(paths):
        if not os.path.isfile(path):
            continue
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for get_name, set_name in _SYMBOLS:
            getter, setter = getattr(lib, get_name, None), getattr(lib, set_name, None)
            if getter is not None and setter is not None:
                getter.restype = ctypes.c_int
                setter.argtypes = [ctypes.c_int]
                controls.append((getter, setter))
                break
    return controls


@contextmanager
def single_threaded_blas() -> Iterator[None]:
    """Limit BLAS to one thread inside the block; restore the previous counts after."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        threadpool_limits = None
    if threadpool_limits is not None:
        with threadpool_limits(limits=1, user_api="blas"):
            yield
        return
    controls = _openblas_controls()
    previous = [getter() for getter, _ in controls]
    for _, setter in controls:
        setter(1)
    try:
        yield
    finally:
        for (_, setter), n in zip(controls, previous, strict=True):
            setter(n)


def blas_thread_counts() -> list[int]:
    """Current thread count of each loaded OpenBLAS (for tests and diagnostics)."""
    return [getter() for getter, _ in _openblas_controls()]

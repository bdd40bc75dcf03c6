"""Exact mixing over effective tokens: which rows of each source, how many times.

Pure function of (per-source row effective tokens, target shares, seed, rules):

    total T = configured, or the largest total every source can meet within max_repeat
    target_i = share_i · T
    source i: whole passes over its rows while a full pass still fits under target_i
              (up-sampling, counted), then rows in a seeded permutation, each taken only
              if it brings the running sum closer to target_i (down-sampling)

So each source's effective tokens land within half of one row's tokens of its target
(at most one row), the same seed gives the same selection, and a source that cannot
reach its target within ``max_repeat`` passes is an error unless shortfall is allowed.

The order of the mixed stream is a seeded shuffle: every copy (source, row_key, repeat)
gets ``order_key`` = SHA-256 of "seed|source|row_key|repeat"; copies sorted by it are
numbered 0, 1, 2, ... (``position``). ``mixed_order`` computes this on the driver from the
small per-row columns, so the build only sorts by an integer it already knows.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np


class MixingError(ValueError):
    pass


@dataclass
class SourcePlan:
    name: str
    counts: np.ndarray  # (n_rows,) int: copies of each row in the mix
    target: float
    realized: float
    available: float  # one pass over the source
    shortfall: float  # target − realized when allowed, else 0

    @property
    def repeats(self) -> float:
        return self.realized / self.available if self.available else 0.0


def _seed_for(seed: int, name: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}:{name}".encode()).digest()[:8], "little")


def plan_mixture(
    eff: dict[str, np.ndarray],
    shares: dict[str, float],
    *,
    seed: int,
    max_repeat: float,
    total: float | None = None,
    allow_shortfall: bool = False,
) -> dict[str, SourcePlan]:
    """Choose row counts per source so effective-token shares match ``shares``."""
    for name, e in eff.items():
        if len(e) == 0 or float(np.sum(e)) <= 0:
            raise MixingError(f"source {name!r} produced no tokens")
    avail = {n: float(np.sum(e)) for n, e in eff.items()}
    cap_total = min(max_repeat * avail[n] / shares[n] for n in eff)
    if total is None:
        total = cap_total
    plans = {}
    for name, e in eff.items():
        e = np.asarray(e, dtype=np.float64)
        target = shares[name] * total
        reachable = max_repeat * avail[name]
        shortfall = 0.0
        goal = target
        if target > reachable * (1 + 1e-12):
            if not allow_shortfall:
                raise MixingError(
                    f"source {name!r} cannot reach its share: needs {target:.0f} effective "
                    f"tokens, has {avail[name]:.0f} × max_repeat {max_repeat} = {reachable:.0f}"
                )
            goal, shortfall = reachable, target - reachable
        counts = np.zeros(len(e), dtype=np.int64)
        full = int(goal // avail[name])
        # Never take a full pass that would overshoot; the remainder is chosen row by row.
        counts += full
        acc = full * avail[name]
        perm = np.random.default_rng(_seed_for(seed, name)).permutation(len(e))
        for i in perm:
            if abs(acc + e[i] - goal) < abs(acc - goal):
                counts[i] += 1
                acc += e[i]
        plans[name] = SourcePlan(name, counts, target, acc, avail[name], shortfall)
    return plans


def order_key(seed: int, source: str, row_key: str, repeat: int) -> str:
    """Deterministic position of one row copy in the mixed stream (a seeded shuffle)."""
    return hashlib.sha256(f"{seed}|{source}|{row_key}|{repeat}".encode()).hexdigest()


def mixed_order(
    keys: list[tuple[str, str]], counts: list[int], seed: int
) -> dict[str, tuple[list[int], list[int]]]:
    """Positions of every copy in the mixed stream.

    ``keys[i]`` = (source, row_key) of a row taken ``counts[i]`` times. Returns
    ``"source|row_key" -> (repeats, positions)``; positions are 0..N-1, N = Σ counts.
    """
    copies = [
        (order_key(seed, s, k, r), f"{s}|{k}", r)
        for (s, k), c in zip(keys, counts, strict=True)
        for r in range(int(c))
    ]
    copies.sort()
    out: dict[str, tuple[list[int], list[int]]] = {}
    for pos, (_, key, r) in enumerate(copies):
        reps, poss = out.setdefault(key, ([], []))
        reps.append(r)
        poss.append(pos)
    return out

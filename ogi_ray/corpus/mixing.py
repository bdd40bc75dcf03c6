"""Exact mixing over effective tokens from per-source totals: no per-row list on the driver.

Every train row of source s has a selection hash h = H(seed, "select", s, row_key) (64
bits) and a bucket = the top ``BUCKET_BITS`` bits of h. The build aggregates, per source
and bucket, the row count and the raw tokens per modality (exact integers); from those:

    total T = configured, or the largest total every source can meet within max_repeat
    target_s = share_s · T;   goal_s = target_s (or, with allow_shortfall, what is reachable)
    full_s  = ⌊goal_s / available_s⌋ whole passes (up-sampling; never overshoots)
    remainder R_s = goal_s − full_s · available_s, filled by the rows of smallest h:
        buckets in order while their whole sum stays ≤ R_s; in the crossing bucket the
        rows in (h, row_key) order (fetched: a handful) while each brings the sum closer

so each source lands within half of one row's tokens of its goal (DESIGN decision 1),
a row's copies are decided by its hash alone (``copies``), and the same seed and rows
give the same selection whatever the blocks or CPUs. The mixed order is another hash,
``order_key`` = H(seed, source, row_key, repeat): copies sorted by it are numbered 0, 1,
2, ... (``position``); a copy's shard is its key's range.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

BUCKET_BITS = 14  # 16,384 buckets per source: a crossing bucket holds ~rows/16k rows


class MixingError(ValueError):
    pass


def hash63(text: str) -> int:
    """First 63 bits of SHA-256(text): a non-negative int64."""
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big") >> 1


def select_hash(seed: int, source: str, row_key: str) -> int:
    return hash63(f"{seed}|select|{source}|{row_key}")


def order_key(seed: int, source: str, row_key: str, repeat: int) -> int:
    """Deterministic position of one row copy in the mixed stream (a seeded shuffle)."""
    return hash63(f"{seed}|{source}|{row_key}|{repeat}")


def bucket_of(h: int | np.ndarray) -> int | np.ndarray:
    return h >> (63 - BUCKET_BITS)


def shard_of(key: int, n_shards: int) -> int:
    """The shard of an order key: n_shards equal ranges of [0, 2^63)."""
    return (key * n_shards) >> 63


@dataclass
class SourcePlan:
    name: str
    target: float
    goal: float
    available: float  # effective tokens of one pass over the source's train rows
    full: int  # whole passes
    remainder: float  # goal − full · available, filled by the rows of smallest hash
    shortfall: float  # target − goal when allowed, else 0
    bucket: int = -1  # remainder rows: buckets < bucket, and in it (h, row_key) <= upto
    upto: tuple[int, str] | None = None
    prefix_rows: int = 0  # rows of the crossing bucket taken (those up to ``upto``)
    selected: float = 0.0  # effective tokens of the remainder rows taken

    @property
    def realized(self) -> float:
        return self.full * self.available + self.selected

    @property
    def repeats(self) -> float:
        return self.realized / self.available if self.available else 0.0

    def copies(self, h: int, row_key: str) -> int:
        """Copies of a train row with selection hash ``h`` in the mix."""
        b = bucket_of(h)
        extra = b < self.bucket or (b == self.bucket and self.upto is not None and (h, row_key) <= self.upto)
        return self.full + int(extra)


def plan_totals(
    available: dict[str, float], shares: dict[str, float], *, max_repeat: float,
    total: float | None = None, allow_shortfall: bool = False,
) -> dict[str, SourcePlan]:  # fmt: skip
    """Targets, whole passes and remainders of every source from its available tokens."""
    for name, a in available.items():
        if a <= 0:
            raise MixingError(f"source {name!r} produced no tokens")
    if total is None:
        total = min(max_repeat * available[n] / shares[n] for n in available)
    plans = {}
    for name, avail in available.items():
        target = shares[name] * total
        reachable = max_repeat * avail
        goal, shortfall = target, 0.0
        if target > reachable * (1 + 1e-12):
            if not allow_shortfall:
                raise MixingError(
                    f"source {name!r} cannot reach its share: needs {target:.0f} effective "
                    f"tokens, has {avail:.0f} × max_repeat {max_repeat} = {reachable:.0f}"
                )
            goal, shortfall = reachable, target - reachable
        full = int(goal // avail)
        plans[name] = SourcePlan(name, target, goal, avail, full, goal - full * avail, shortfall)
    return plans


def crossing_bucket(bucket_eff: np.ndarray, remainder: float) -> tuple[int, float]:
    """(first bucket whose inclusion would pass ``remainder``, sum of the buckets before).

    ``bucket_eff``: effective tokens per bucket (index = bucket). When every bucket fits,
    returns (n_buckets, their sum): nothing to refine."""
    cum = np.cumsum(bucket_eff)
    b = int(np.searchsorted(cum, remainder, side="right"))
    before = float(cum[b - 1]) if b > 0 else 0.0
    return b, before


def take_prefix(row_eff: list[float], start: float, goal: float) -> int:
    """How many of the rows (in hash order) to take so the sum gets closest to ``goal``:
    each row is taken while it brings the running sum strictly closer."""
    acc, k = start, 0
    for e in row_eff:
        if abs(acc + e - goal) < abs(acc - goal):
            acc += e
            k += 1
        else:
            break
    return k

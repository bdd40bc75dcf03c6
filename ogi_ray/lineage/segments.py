"""Which training segments to replay, chosen so that a forger cannot predict them.

Segment i ends at record i of the chain: segment 0 runs from the seeded initialisation
(step 0) to the first checkpoint, segment i ≥ 1 from record i−1's checkpoint to record
i's. A forger who fabricates checkpoint j must make both segments touching it (j and
j+1) reproduce, which costs as much as training them. ``--replay N`` replays N segments:

    1. the last one, always: a fabricated checkpoint whose successor is the real one (or
       the HEAD itself) never survives it;
    2. then, alternately, the largest remaining weight update (Jia et al., PoL, S&P 2021:
       a spoofed history hides its work where the weights move most), and a segment
       drawn uniformly from the rest by a seed the verifier draws and prints (the prover
       supplies every checkpoint, so any rule computed from them alone is predictable:
       a fabricated middle checkpoint with small updates around it dodged rule 2 alone).

Update sizes are the L2 norm of the difference of two checkpoints' floating-point
tensors, read with numpy (no torch; sharded weights assembled per tensor,
lineage/weights.py); the initial segment has none (its start is computed by training
code) and is reached by the random draw. Ties go to the earlier segment.

The replay itself re-runs training steps, so it lives on the training side and is handed
to ``verify.verify_run(..., replay_fn=...)``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ogi_ray.lineage.weights import Weights
from ogi_ray.storage import Store


def update_norms(run: Store, records: list[dict[str, Any]]) -> list[float]:
    """L2 norm of the weight change of each segment (len(records) - 1 values), one tensor
    of two checkpoints in memory at a time."""
    norms: list[float] = []
    prev = Weights(run, records[0]) if records else None
    for rec in records[1:]:
        cur, sq = Weights(run, rec), 0.0
        for name in sorted(set(prev.names()) & set(cur.names())):  # type: ignore[union-attr]
            a, b = prev.float_array(name), cur.float_array(name)  # type: ignore[union-attr]
            if a is not None and b is not None and a.shape == b.shape:
                sq += float(np.sum((b - a) ** 2))
        norms.append(sq**0.5)
        prev = cur
    return norms


def choose_segments(run: Store, records: list[dict[str, Any]], n: int, seed: int) -> list[tuple[int, str]]:
    """(segment index, why) of the ``n`` segments to replay, in order (see module)."""
    import random

    count = len(records)  # segments 0 … count-1
    if n <= 0 or count == 0:
        return []
    chosen = {count - 1: "the last segment"}
    norms = update_norms(run, records) if count >= 2 else []
    by_update = [i + 1 for i in sorted(range(len(norms)), key=lambda i: (-norms[i], i))]
    rng = random.Random(seed)
    turn = 0
    while len(chosen) < min(n, count):
        rest = [i for i in range(count) if i not in chosen]
        biggest = [i for i in by_update if i not in chosen]
        if turn % 2 == 0 and biggest:
            chosen[biggest[0]] = "the largest weight update left"
        else:
            chosen[rng.choice(rest)] = f"drawn with seed {seed}"
        turn += 1
    return sorted(chosen.items())

"""Learning-rate schedule: linear warm-up over the first ``warmup_frac`` of steps, then
cosine from η_max to η_min (the seed's η_t = η_min + ½(η_max − η_min)(1 + cos πt/T),
with t and T counted from the end of warm-up).

    W = max(1, ceil(warmup_frac · S))            S = total steps, step s ∈ [0, S)
    s < W:  η = η_max · (s + 1) / W              (the first step already learns)
    s ≥ W:  p = (s − W) / max(1, S − W − 1) ∈ [0, 1]
            η = η_min + ½ (η_max − η_min)(1 + cos πp)   (last step lands on η_min)
"""

from __future__ import annotations

import math


def warmup_steps(total_steps: int, warmup_frac: float) -> int:
    return max(1, math.ceil(warmup_frac * total_steps))


def lr_at(step: int, *, total_steps: int, max_lr: float, min_lr: float, warmup_frac: float) -> float:
    w = warmup_steps(total_steps, warmup_frac)
    if step < w:
        return max_lr * (step + 1) / w
    p = min(1.0, (step - w) / max(1, total_steps - w - 1))
    return min_lr + 0.5 * (max_lr - min_lr) * (1 + math.cos(math.pi * p))

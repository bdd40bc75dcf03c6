"""Replay recorded raw per-objective gradient norms through the tuner math, for a grid of
settings, and print how often the smoothed weighted norms stay balanced (max/min ≤ 2).

    python benchmarks/tuner_replay.py NORMS.jsonl [--warmup 20]

NORMS.jsonl: one JSON object per step with the raw norm of each objective present, as
written by ``benchmarks/bare_loop.py --norms-out`` (keys ``lm``, ``vision``, ...) or a
run's ``metrics.jsonl`` (keys ``gradnorm_raw/<name>``). The raw norms are of the
*unweighted* losses, so λ changes them only through the training trajectory: replaying a
recording reproduces the closed-loop balance of the run it came from exactly and
estimates it for other settings. The defaults' line is marked.
"""

from __future__ import annotations

import argparse
import itertools
import json

from ogi_ray.train.tuner import OBJECTIVES, TunerConfig, imbalance, init_state, tuner_update


def load_norms(path: str) -> list[dict[str, float]]:
    steps = []
    with open(path) as f:
        for line in f:
            row = json.loads(line)
            norms = {}
            for k in OBJECTIVES:
                v = row.get(k, row.get(f"gradnorm_raw/{k}", 0.0))
                if v and v > 0:
                    norms[k] = float(v)
            steps.append(norms)
    return steps


def balance(steps: list[dict[str, float]], cfg: TunerConfig) -> tuple[float, float]:
    """(fraction of post-warm-up steps with imbalance ≤ 2, median imbalance)."""
    state, ratios = init_state(cfg), []
    for norms in steps:
        state = tuner_update(state, norms, cfg)
        if state.phase_updates > cfg.warmup:
            ratios.append(imbalance(state))
    ratios.sort()
    return sum(r <= 2 for r in ratios) / max(1, len(ratios)), ratios[len(ratios) // 2] if ratios else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("norms")
    ap.add_argument("--warmup", type=int, default=20)
    args = ap.parse_args()
    steps = load_norms(args.norms)
    base = TunerConfig(warmup=args.warmup)
    print(f"{len(steps)} steps from {args.norms}; warm-up {args.warmup}")
    print(f"{'ema':>5} {'dual_lr':>7} {'max_step':>8}  {'≤2':>6}  median")
    for ema, dual_lr, max_step in itertools.product((0.9, 0.95, 0.98), (0.5, 1.0, 1.5, 1.9), (1.1, 1.2, 1.5)):
        cfg = TunerConfig(warmup=args.warmup, ema=ema, dual_lr=dual_lr, max_step=max_step)
        frac, med = balance(steps, cfg)
        mark = "  <- defaults" if (ema, dual_lr, max_step) == (base.ema, base.dual_lr, base.max_step) else ""
        print(f"{ema:5.2f} {dual_lr:7.2f} {max_step:8.2f}  {frac:6.3f}  {med:.3f}{mark}")
    off = balance(steps, TunerConfig(warmup=args.warmup, enabled=False))
    print(f"tuner off: ≤2 in {off[0]:.3f}, median {off[1]:.3f}")


if __name__ == "__main__":
    main()

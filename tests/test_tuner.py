"""Loss-weight tuner: balance on synthetic gradient norms, the invariants of every update
(sum, positivity, bounded change, absent objectives), JSON state, and the real Ray actor."""

from __future__ import annotations

import json
import math
import random

import pytest

from ogi_ray.train.tuner import (
    LossWeightTuner,
    TunerConfig,
    TunerState,
    imbalance,
    init_state,
    tuner_update,
    weighted_norms,
)

# Raw per-objective gradient-norm scales spanning 100× (lm smallest, embod largest).
SCALES = {"lm": 1.0, "vision": 3.0, "align": 10.0, "world": 30.0, "embod": 100.0}


def synthetic_norms(rng: random.Random, scales: dict[str, float] = SCALES) -> dict[str, float]:
    """A fixed scale per objective times log-normal noise (σ = 0.25)."""
    return {k: s * rng.lognormvariate(0.0, 0.25) for k, s in scales.items()}


def run(cfg: TunerConfig, n: int, seed: int = 0) -> tuple[list[float], list[TunerState]]:
    """Imbalance after each post-warm-up update, and every state (the initial one first)."""
    rng, state = random.Random(seed), init_state(cfg)
    ratios, states = [], [state]
    for _ in range(n):
        state = tuner_update(state, synthetic_norms(rng), cfg)
        states.append(state)
        if state.phase_updates > cfg.warmup:
            ratios.append(imbalance(state))
    return ratios, states


def test_balances_weighted_norms_and_disabled_does_not():
    cfg = TunerConfig(warmup=20)
    ratios, states = run(cfg, 500)
    frac = sum(r <= 2.0 for r in ratios) / len(ratios)
    assert frac >= 0.9, frac
    assert max(ratios[-100:]) <= 2.0
    # equilibrium bound (1+ε)/(1−(K−1)ε), plus a little noise
    assert sum(ratios[-100:]) / 100 <= (1 + cfg.epsilon) / (1 - 4 * cfg.epsilon) * 1.1
    lam = states[-1].lambdas  # the largest raw norm gets the smallest weight
    assert lam["embod"] < lam["world"] < lam["align"] < lam["vision"] < lam["lm"]

    off, off_states = run(TunerConfig(warmup=20, enabled=False), 500)
    assert sum(r <= 2.0 for r in off) == 0
    mean_off = sum(off) / len(off)
    assert 60 < mean_off < 160  # the raw scale ratio (100) times noise
    assert all(s.lambdas == off_states[0].lambdas for s in off_states)


def test_update_invariants_sum_positive_bounded_warmup():
    cfg = TunerConfig(warmup=5, max_step=1.1, initial={"lm": 2.0, "embod": 0.5})
    _, states = run(cfg, 200, seed=1)
    k = len(cfg.objectives)
    assert states[0].lambdas["lm"] == pytest.approx(4 * states[0].lambdas["embod"])
    for prev, cur in zip(states, states[1:], strict=False):
        assert sum(cur.lambdas.values()) == pytest.approx(k, rel=1e-9)
        for name in cfg.objectives:
            r = cur.lambdas[name] / prev.lambdas[name]
            assert cur.lambdas[name] > 0
            assert 1 / cfg.max_step - 1e-9 <= r <= cfg.max_step + 1e-9
            assert cur.multipliers[name] >= 0
        if cur.phase_updates <= cfg.warmup:
            assert cur.lambdas == prev.lambdas  # frozen during warm-up
    assert all(len(s.smoothed) == k for s in states[1:])  # norms smoothed from the first update
    assert states[-1].lambdas != states[cfg.warmup].lambdas


def test_ema_smoothing_of_norms():
    cfg = TunerConfig(ema=0.9, warmup=100)
    s = tuner_update(init_state(cfg), {"lm": 1.0}, cfg)
    assert s.smoothed == {"lm": 1.0}  # first observation initialises
    s = tuner_update(s, {"lm": 11.0}, cfg)
    assert s.smoothed["lm"] == pytest.approx(0.9 * 1.0 + 0.1 * 11.0)


def test_absent_objectives_keep_lambda_and_norm():
    cfg = TunerConfig(warmup=0)
    rng, state = random.Random(2), init_state(cfg)
    for _ in range(30):
        state = tuner_update(state, synthetic_norms(rng), cfg)
    before = state
    partial = {k: v for k, v in synthetic_norms(rng).items() if k in ("lm", "align", "embod")}
    partial["world"] = float("nan")  # unusable measurement: treated as absent
    for _ in range(20):
        state = tuner_update(state, partial, cfg)
    for k in ("vision", "world"):
        assert state.lambdas[k] == before.lambdas[k]
        assert state.smoothed[k] == before.smoothed[k]
        assert state.multipliers[k] == before.multipliers[k]
    assert sum(state.lambdas.values()) == pytest.approx(5.0)
    assert state.lambdas["embod"] != before.lambdas["embod"]
    # the present objectives are balanced among themselves
    w = weighted_norms(state)
    present = [w[k] for k in ("lm", "align", "embod")]
    assert max(present) / min(present) < 2.0
    with pytest.raises(ValueError, match="unknown"):
        tuner_update(state, {"speech": 1.0}, cfg)


def test_state_round_trips_through_json():
    cfg = TunerConfig(warmup=3)
    _, states = run(cfg, 40)
    s = states[-1]
    back = TunerState.from_dict(json.loads(json.dumps(s.to_dict())))
    assert back == s
    rng = random.Random(9)
    g = synthetic_norms(rng)
    assert tuner_update(back, g, cfg) == tuner_update(s, g, cfg)
    assert tuner_update(s, g, cfg) is not s and states[-1] == s  # pure: input untouched


def test_config_validation():
    with pytest.raises(ValueError, match="epsilon"):
        TunerConfig(epsilon=0.3).validate()  # ≥ 1/(K−1) for K = 5: no balance guarantee
    with pytest.raises(ValueError, match="max_step"):
        TunerConfig(max_step=1.0).validate()
    with pytest.raises(ValueError, match="dual_lr.*oscillates"):
        TunerConfig(dual_lr=2.0).validate()
    with pytest.raises(ValueError, match="initial"):
        TunerConfig(initial={"lm": -1.0}).validate()
    with pytest.raises(ValueError, match="unknown fields"):
        TunerConfig.from_dict({"epsilonn": 0.1})
    assert TunerConfig.from_dict({"warmup": 3}).warmup == 3


def test_actor_class_dedups_steps_and_sets_phase():
    t = LossWeightTuner(TunerConfig(warmup=0))
    rng = random.Random(3)
    for step in range(20):
        t.report(step, synthetic_norms(rng))
    w, n = t.weights(), t.state_dict()["state"]["updates"]
    t.report(19, synthetic_norms(rng))  # a retry
    t.report(5, synthetic_norms(rng))  # a late duplicate
    assert t.weights() == w and t.state_dict()["state"]["updates"] == n
    assert math.isclose(sum(w.values()), 5.0) and "tuner/imbalance" in t.metrics()
    t.set_phase({"lm": 3.0, "vision": 1.0, "align": 1.0, "world": 1.0, "embod": 1.0})
    assert (
        t.weights()["lm"] == pytest.approx(15 / 7) and t.state_dict()["state"]["phase_updates"] == 0
    )
    with pytest.raises(ValueError):
        t.set_phase({"lm": 0.0})
    # Phase 2 with no weights of its own starts from the config's initial λ (all 1 here).
    assert t.set_phase(None, 2) == {k: 1.0 for k in SCALES} and t.state_dict()["state"]["phase"] == 2


def test_dual_step_near_two_oscillates_and_one_does_not():
    """dual_lr = 1 moves log λ by the log violation itself; near 2 it overshoots by as
    much as it corrects, so the imbalance keeps swinging (why validate stops at 2)."""
    frac, last = {}, {}
    for lr in (1.0, 1.99):
        cfg = TunerConfig(warmup=20, dual_lr=lr, ema=0.0)
        state, ok = init_state(cfg), []
        for _ in range(300):
            state = tuner_update(state, dict(SCALES), cfg)  # noiseless
            if state.phase_updates > cfg.warmup:
                ok.append(imbalance(state) <= 2.0)
        frac[lr], last[lr] = sum(ok) / len(ok), imbalance(state)
    assert frac[1.0] >= 0.9 and frac[1.99] < frac[1.0] - 0.1, frac
    assert last[1.0] <= (1 + 0.05) / (1 - 4 * 0.05) + 1e-9  # settles at the equilibrium bound

"""Batch size: DeepSeek default, critical-batch cap, and the two-batch noise-scale estimator
checked on simulated gradients whose true |G|^2 and tr(Sigma) are known."""

import json
import math

import numpy as np
import pytest

from ogi_ray.config import ConfigError, from_dict
from ogi_ray.scaling.batch import (
    GradientNoiseScale,
    NoiseScaleConfig,
    cap_batch,
    choose_batch,
    deepseek_batch_tokens,
)


def test_deepseek_default_scales_with_compute():
    # DeepSeek LLM (arXiv 2401.02954): B_opt = 0.2920 * C^0.3271 tokens.
    for c in (1e20, 5.76e23, 1e25):
        assert deepseek_batch_tokens(c) == pytest.approx(0.292 * c**0.3271, rel=1e-12)
    # 10x compute -> 10^0.3271 = 2.12x batch.
    assert deepseek_batch_tokens(1e24) / deepseek_batch_tokens(1e23) == pytest.approx(
        2.124, abs=1e-3
    )


def test_critical_batch_caps_the_default():
    default = deepseek_batch_tokens(5.76e23)
    uncapped = choose_batch(5.76e23)
    assert uncapped.tokens == round(default) and uncapped.critical_tokens is None
    capped = choose_batch(5.76e23, critical_tokens=default / 4)
    assert capped.tokens == round(default / 4)
    assert "critical" in capped.rule
    roomy = choose_batch(5.76e23, critical_tokens=default * 4)
    assert roomy.tokens == round(default)
    assert cap_batch(1000.0, 400.0) == 400.0
    assert cap_batch(1000.0, None) == 1000.0
    with pytest.raises(ValueError):
        choose_batch(5.76e23, critical_tokens=-1.0)


def simulate(gns, rng, steps, *, b=32, ranks=8, dim=200, b_noise=500.0):
    """Per-rank batch means G + xi_r with Cov(xi_r) = Sigma/b; the global batch averages ranks.

    True values: |G|^2 = 1, tr(Sigma) = b_noise, so B_noise = b_noise (in examples).
    """
    g = rng.normal(size=dim)
    g /= np.linalg.norm(g)
    var = rng.uniform(0.5, 1.5, dim)
    var *= b_noise / var.sum()
    raw, est = [], None
    for _ in range(steps):
        xi = rng.normal(size=(ranks, dim)) * np.sqrt(var / b)
        small, big = g + xi[0], g + xi.mean(axis=0)
        s2, b2 = float(small @ small), float(big @ big)
        raw.append(gns.estimates(s2, b2, b, b * ranks))
        est = gns.update(s2, b2, b, b * ranks)
    return est, np.array(raw)


def test_two_batch_estimates_are_unbiased_and_ratio_converges():
    gns = GradientNoiseScale(NoiseScaleConfig(ema_decay=0.99, min_updates=10))
    est, raw = simulate(gns, np.random.default_rng(0), 2000)
    g2_mean, trace_mean = raw.mean(axis=0)
    assert g2_mean == pytest.approx(1.0, rel=0.03)
    assert trace_mean == pytest.approx(500.0, rel=0.03)
    # Single-step |G|^2 estimates are noisy (here ~37 % std, some negative): that is why each
    # part is smoothed before the ratio is taken.
    assert raw[:, 0].std() > 0.2
    assert (raw[:, 0] < 0).any()
    assert est == pytest.approx(500.0, rel=0.15)
    assert gns.grad_sq_norm == pytest.approx(1.0, rel=0.15)
    assert gns.trace_sigma == pytest.approx(500.0, rel=0.15)


def test_no_estimate_until_defined():
    gns = GradientNoiseScale(NoiseScaleConfig(ema_decay=0.9, min_updates=3))
    # Both squared norms equal: tr(Sigma) estimate is 0, so no ratio yet.
    assert gns.update(1.0, 1.0, 8, 64) is None
    assert gns.update(2.0, 1.0, 8, 64) is None  # only 2 updates < min_updates
    assert gns.update(2.0, 1.0, 8, 64) is not None
    # A big-batch norm above the small one drives tr(Sigma) negative: None, not nonsense.
    neg = GradientNoiseScale(NoiseScaleConfig(min_updates=1))
    assert neg.update(1.0, 2.0, 8, 64) is None


def test_single_step_formulas():
    # |G_small|^2 = |G|^2 + tr/B_small, |G_big|^2 = |G|^2 + tr/B_big in expectation.
    g2, trace, bs, bb = 3.0, 120.0, 4, 32
    est_g2, est_trace = GradientNoiseScale.estimates(g2 + trace / bs, g2 + trace / bb, bs, bb)
    assert est_g2 == pytest.approx(g2)
    assert est_trace == pytest.approx(trace)


def test_state_dict_round_trip_through_json():
    rng = np.random.default_rng(1)
    a = GradientNoiseScale(NoiseScaleConfig(ema_decay=0.9, min_updates=2))
    simulate(a, rng, 50)
    state = json.loads(json.dumps(a.state_dict()))
    b = GradientNoiseScale()
    b.load_state_dict(state)
    assert b.config == a.config and b.updates == a.updates
    for _ in range(20):
        s2, b2 = float(rng.uniform(2, 3)), float(rng.uniform(1, 2))
        assert a.update(s2, b2, 16, 128) == b.update(s2, b2, 16, 128)


def test_bad_state_and_inputs():
    gns = GradientNoiseScale()
    with pytest.raises(ValueError, match="missing"):
        gns.load_state_dict({"version": 1})
    for args in [
        (1.0, 1.0, 64, 64),
        (1.0, 1.0, 0, 64),
        (-1.0, 1.0, 8, 64),
        (math.nan, 1.0, 8, 64),
        (1.0, math.inf, 8, 64),
    ]:
        with pytest.raises(ValueError):
            gns.update(*args)
    assert gns.updates == 0  # rejected inputs leave the state alone


def test_config_loads_through_project_loader():
    cfg = from_dict(NoiseScaleConfig, {"ema_decay": 0.98}, file="train.yaml", prefix="gns")
    assert cfg == NoiseScaleConfig(ema_decay=0.98)
    with pytest.raises(ConfigError, match="gns.ema_decay"):
        from_dict(NoiseScaleConfig, {"ema_decay": 1.5}, file="train.yaml", prefix="gns")

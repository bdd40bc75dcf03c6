"""The exchange-rate fitter (pure math): data drawn from the law itself, with known rates.

A math test, so random data is fine here: tokens per modality are drawn like a swarm's
(each modality group's budget multiplied by 4^u), the metric is the saturating law in
T_eff with *known* rates, plus Gaussian noise. The fitter must give back those rates.
"""

import math

import numpy as np
import pytest

from ogi_ray.config import ConfigError
from ogi_ray.scaling.ratefit import bootstrap_law, fit_law, tie_columns

MODS = ["text", "image", "video", "audio", "proprio", "action"]
TRUE = {"text": 1.0, "image": 0.4, "video": 0.2, "audio": 0.1, "proprio": 0.15, "action": 0.3}
BASE = {"text": 8000.0, "image": 3000.0, "video": 12000.0, "audio": 3000.0, "proprio": 400.0, "action": 400.0}
E, A, ALPHA, T_SCALE = 0.5, 2.0, 0.4, 10_000.0


def swarm(n: int, seed: int, noise: float) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    mult = 4.0 ** rng.uniform(-1, 1, size=(n, 5))  # text, image, video, audio, embodied steps
    cols = [0, 1, 2, 3, 4, 4]  # proprio and action: one per timestep, always together
    tokens = np.array([[BASE[m] * mult[i, cols[j]] for j, m in enumerate(MODS)] for i in range(n)])
    t_eff = tokens @ np.array([TRUE[m] for m in MODS])
    metric = E + A * (t_eff / T_SCALE) ** -ALPHA
    return tokens, metric + rng.normal(0.0, noise, n)


def test_noiseless_recovers_the_generating_rates_exactly():
    tokens, metric = swarm(16, 1, 0.0)
    groups = tie_columns(tokens, MODS, prior={"proprio": 0.15, "action": 0.3})
    fit = fit_law(tokens, metric, MODS, groups=groups)
    for m in MODS:
        assert fit.rates()[m] == pytest.approx(TRUE[m], rel=1e-6), m
    assert fit.E == pytest.approx(E, rel=1e-6)
    assert fit.alpha == pytest.approx(ALPHA, rel=1e-6)
    assert fit.rmse < 1e-9


def test_noisy_rates_lie_inside_their_bootstrap_intervals():
    # 1 % noise on a metric of ~1: what a tiny proxy's held-out loss carries.
    tokens, metric = swarm(16, 7, 0.01)
    groups = tie_columns(tokens, MODS, prior={"proprio": 0.15, "action": 0.3})
    fit = bootstrap_law(fit_law(tokens, metric, MODS, groups=groups), tokens, metric, MODS, samples=100, seed=0)
    rates, iv = fit.rates(), fit.rate_intervals()
    for m in ("image", "video", "audio", "proprio", "action"):
        lo, hi = iv[m]
        assert lo <= TRUE[m] <= hi, (m, TRUE[m], iv[m])
        assert hi - lo < 1.0, (m, iv[m])  # an interval that says something
    assert rates["video"] == pytest.approx(TRUE["video"], rel=0.15)
    assert iv["text"] == (1.0, 1.0)


def test_proportional_modalities_are_tied_and_split_by_the_prior():
    tokens, _ = swarm(8, 2, 0.0)
    groups = tie_columns(tokens, MODS, prior={"proprio": 0.125, "action": 0.25})
    assert [g for g in groups.members if len(g) > 1] == [("proprio", "action")]
    assert groups.split["action"] == pytest.approx(2.0)
    # Independent modalities are never tied.
    assert ("text",) in groups.members and ("image",) in groups.members


def test_transfer_is_the_derivative_of_the_law():
    tokens, metric = swarm(16, 3, 0.0)
    fit = fit_law(tokens, metric, MODS, groups=tie_columns(tokens, MODS, prior=TRUE))
    at = tokens[0]
    t_eff = at @ np.array([TRUE[m] for m in MODS])
    # d/dT_m of E + A (T_eff/T)^-alpha, by hand:
    expected = -ALPHA * A * (t_eff / T_SCALE) ** (-ALPHA - 1) / T_SCALE
    got = fit.transfer(at, MODS)
    for m in MODS:
        assert got[m] == pytest.approx(expected * TRUE[m], rel=1e-5), m


def test_too_few_trials_and_unmeasurable_modalities_are_errors():
    tokens, metric = swarm(6, 4, 0.0)
    with pytest.raises(ConfigError, match="trials cannot fit"):
        fit_law(tokens, metric, MODS, groups=tie_columns(tokens, MODS))
    tokens[:, 3] = 0.0
    with pytest.raises(ConfigError, match="tokens.audio"):
        tie_columns(tokens, MODS)


def test_configured_rates_as_one_column_fit_worse_than_the_true_ones():
    """The measure report compares the hand-set rates: fitting with them fixed must not
    beat fitting with the generating ones (a check that the comparison means something)."""
    from ogi_ray.scaling.ratefit import Groups

    tokens, metric = swarm(16, 5, 0.002)
    wrong = {"text": 1.0, "image": 0.5, "video": 0.3, "audio": 0.1, "proprio": 0.125, "action": 0.25}
    fixed = {name: Groups(members=(tuple(MODS),), split=r) for name, r in (("true", TRUE), ("wrong", wrong))}
    rmse = {name: fit_law(tokens, metric, MODS, groups=g).rmse for name, g in fixed.items()}
    assert rmse["true"] < rmse["wrong"]
    assert math.isclose(rmse["true"], 0.002, rel_tol=0.6)

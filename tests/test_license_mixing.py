from pathlib import Path

import numpy as np
import pytest

from ogi_ray.corpus.license import LicensePolicy, check_license, load_policy
from ogi_ray.corpus.mixing import MixingError, plan_mixture

POLICY = Path(__file__).parents[1] / "datasets" / "policy.yaml"


def test_policy_verdicts():
    p = load_policy(POLICY)
    assert check_license("PSF-2.0", p).allowed
    nc = check_license("CC-BY-NC-4.0", p)
    assert not nc.allowed and "denied" in nc.reason
    assert not check_license(None, p).allowed
    assert "missing" in check_license("", p).reason
    assert not check_license("NOT-A-LICENSE-9", p).allowed
    assert check_license("MIT OR CC-BY-NC-4.0", p).allowed  # a usable choice exists
    assert not check_license("MIT AND CC-BY-NC-4.0", p).allowed
    assert check_license("GPL-2.0+", LicensePolicy(allowed=["GPL-2.0-or-later"])).allowed  # alias
    assert check_license("LicenseRef-PublicDomain", p).allowed


def test_bad_policy_entry_is_rejected(tmp_path):
    from ogi_ray.config import ConfigError

    f = tmp_path / "p.yaml"
    f.write_text("allowed: [MIT, NOPE-LICENSE-1]\n")
    with pytest.raises(ConfigError) as e:
        load_policy(f)
    assert e.value.field == "allowed"


def _rows(rng, n, lo, hi):
    return rng.integers(lo, hi, size=n).astype(float)


def test_mixing_hits_shares_within_one_row():
    rng = np.random.default_rng(1)
    eff = {"a": _rows(rng, 500, 10, 200), "b": _rows(rng, 40, 50, 300), "c": _rows(rng, 200, 1, 20)}
    shares = {"a": 0.5, "b": 0.3, "c": 0.2}
    plans = plan_mixture(eff, shares, seed=7, max_repeat=4.0)
    total = sum(p.realized for p in plans.values())
    for name, p in plans.items():
        assert abs(p.realized - p.target) <= eff[name].max() / 2 + 1e-9
        assert p.realized == pytest.approx(float((p.counts * eff[name]).sum()))
        assert abs(p.realized / total - shares[name]) < 0.01
        assert p.counts.max() <= 5  # up-sampling is capped (max_repeat 4 + one partial pass)
    again = plan_mixture(eff, shares, seed=7, max_repeat=4.0)
    assert all((again[n].counts == plans[n].counts).all() for n in eff)
    other = plan_mixture(eff, shares, seed=8, max_repeat=4.0)
    assert any((other[n].counts != plans[n].counts).any() for n in eff)


def test_mixing_shortfall_is_an_error_unless_allowed():
    eff = {"a": np.full(10, 10.0), "b": np.full(10, 10.0)}
    with pytest.raises(MixingError, match="cannot reach"):
        plan_mixture(eff, {"a": 0.5, "b": 0.5}, seed=0, max_repeat=1.0, total=1000.0)
    plans = plan_mixture(eff, {"a": 0.5, "b": 0.5}, seed=0, max_repeat=1.0, total=1000.0,
                         allow_shortfall=True)
    assert plans["a"].shortfall == pytest.approx(400.0)
    with pytest.raises(MixingError, match="no tokens"):
        plan_mixture({"a": np.zeros(0)}, {"a": 1.0}, seed=0, max_repeat=2.0)

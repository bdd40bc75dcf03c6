from pathlib import Path

import numpy as np
import pytest

from ogi_ray.corpus.license import LicensePolicy, check_license, load_policy
from ogi_ray.corpus.mixing import MixingError

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


def test_invalid_spdx_is_reported_with_the_parsers_message():
    from ogi_ray.corpus.license import row_verdict, spdx_error

    p = load_policy(POLICY)
    assert spdx_error("MIT") is None and "Unknown license key" in spdx_error("NOT-A-LICENSE-9")
    assert row_verdict("", p) == "missing license" and row_verdict(None, p) == "missing license"
    assert row_verdict("MIT AND (", p) == "invalid SPDX expression"
    assert row_verdict("MIT", p) is None and "denied" in row_verdict("CC-BY-NC-4.0", p)


def _plan_with_rows(eff, shares, seed, **kw):
    """plan_totals + the hash-ordered remainder cut, on explicit rows (what the build does
    with bucket histograms and the crossing bucket's rows)."""
    from ogi_ray.corpus.mixing import plan_totals, select_hash, take_prefix

    plans = plan_totals({n: float(e.sum()) for n, e in eff.items()}, shares, **kw)
    counts = {}
    for n, e in eff.items():
        order = sorted(range(len(e)), key=lambda i: select_hash(seed, n, f"r{i}"))
        k = take_prefix([float(e[i]) for i in order], 0.0, plans[n].remainder)
        c = np.full(len(e), plans[n].full)
        c[order[:k]] += 1
        counts[n] = c
    return plans, counts


def test_mixing_hits_shares_within_half_a_row():
    rng = np.random.default_rng(1)
    eff = {"a": rng.integers(10, 200, 500).astype(float), "b": rng.integers(50, 300, 40).astype(float),
           "c": rng.integers(1, 20, 200).astype(float)}  # fmt: skip
    shares = {"a": 0.5, "b": 0.3, "c": 0.2}
    plans, counts = _plan_with_rows(eff, shares, 7, max_repeat=4.0)
    realized = {n: float((counts[n] * eff[n]).sum()) for n in eff}
    total = sum(realized.values())
    for name, p in plans.items():
        assert abs(realized[name] - p.target) <= eff[name].max() / 2 + 1e-9
        assert abs(realized[name] / total - shares[name]) < 0.01
        assert counts[name].max() <= 5  # up-sampling is capped (max_repeat 4 + one partial pass)
    _, other = _plan_with_rows(eff, shares, 8, max_repeat=4.0)
    assert any((other[n] != counts[n]).any() for n in eff)


def test_crossing_bucket_and_copies_follow_the_hash():
    from ogi_ray.corpus.mixing import BUCKET_BITS, SourcePlan, bucket_of, crossing_bucket

    b, before = crossing_bucket(np.array([5.0, 0.0, 7.0, 3.0]), 9.0)
    assert (b, before) == (2, 5.0)  # bucket 2 would pass 9: it is the one to refine
    assert crossing_bucket(np.array([1.0, 2.0]), 10.0) == (2, 3.0)
    p = SourcePlan("s", 0, 0, 1, full=2, remainder=0, shortfall=0, bucket=3, upto=None)
    h = lambda b: b << (63 - BUCKET_BITS)  # noqa: E731 - the first hash of bucket b
    assert bucket_of(h(3)) == 3
    assert [p.copies(h(x), "k") for x in (0, 2, 3, 4)] == [3, 3, 2, 2]
    p.upto = (h(3) + 5, "m")
    assert [p.copies(h(3) + 5, "a"), p.copies(h(3) + 5, "z"), p.copies(h(3) + 6, "a")] == [3, 2, 2]


def test_mixing_shortfall_is_an_error_unless_allowed():
    from ogi_ray.corpus.mixing import plan_totals

    with pytest.raises(MixingError, match="cannot reach"):
        plan_totals({"a": 100.0, "b": 100.0}, {"a": 0.5, "b": 0.5}, max_repeat=1.0, total=1000.0)
    plans = plan_totals({"a": 100.0, "b": 100.0}, {"a": 0.5, "b": 0.5}, max_repeat=1.0, total=1000.0,
                        allow_shortfall=True)
    assert plans["a"].shortfall == pytest.approx(400.0)
    with pytest.raises(MixingError, match="no tokens"):
        plan_totals({"a": 0.0}, {"a": 1.0}, max_repeat=2.0)

"""The Approach-3 fitter recovers known generating constants; bad CSVs fail clearly."""

import numpy as np
import pytest

from ogi_ray.scaling.errors import ScalingInputError
from ogi_ray.scaling.fit import RunsData, bootstrap_law, fit_law, initial_grid, read_runs_csv
from ogi_ray.scaling.report import plot_fit

EPOCH = {"E": 1.8172, "A": 482.01, "B": 2085.43, "alpha": 0.3478, "beta": 0.3658}
HOFFMANN = {"E": 1.69, "A": 406.4, "B": 410.7, "alpha": 0.34, "beta": 0.28}


def true_loss(c, n, d):
    return c["E"] + c["A"] / n ** c["alpha"] + c["B"] / d ** c["beta"]


def isoflop_runs(c, noise, seed):
    """Hoffmann-style IsoFLOP design: 9 budgets 6e18..3e21, 9 sizes around each optimum.

    The optimum is located from the generating constants' closed form, written out here.
    """
    rng = np.random.default_rng(seed)
    g = (c["alpha"] * c["A"] / (c["beta"] * c["B"])) ** (1 / (c["alpha"] + c["beta"]))
    a = c["beta"] / (c["alpha"] + c["beta"])
    n, d = [], []
    for compute in np.geomspace(6e18, 3e21, 9):
        n0 = g * (compute / 6) ** a
        for f in np.geomspace(1 / 8, 8, 9):
            n.append(n0 * f)
            d.append(compute / (6 * n0 * f))
    n, d = np.array(n), np.array(d)
    loss = true_loss(c, n, d) * np.exp(rng.normal(0.0, noise, n.size))
    return RunsData(n, d, loss)


@pytest.mark.parametrize("c", [EPOCH, HOFFMANN], ids=["epoch", "hoffmann"])
def test_recovers_constants_without_noise(c):
    fit = fit_law(isoflop_runs(c, 0.0, 0))
    for key, value in c.items():
        assert getattr(fit.law, key) == pytest.approx(value, rel=1e-3), key


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_recovers_epoch_constants_with_noise(seed):
    # 0.3 % multiplicative noise on the loss, 81 runs.
    fit = fit_law(isoflop_runs(EPOCH, 0.003, seed))
    for key in ("E", "alpha", "beta"):
        assert getattr(fit.law, key) == pytest.approx(EPOCH[key], rel=0.05), key
    a_true = EPOCH["beta"] / (EPOCH["alpha"] + EPOCH["beta"])
    assert fit.law.exponent_n == pytest.approx(a_true, rel=0.05)


def test_bootstrap_intervals_cover_truth():
    data = isoflop_runs(EPOCH, 0.003, 7)
    fit = bootstrap_law(data, fit_law(data), samples=20, seed=3)
    assert fit.bootstrap_samples == 20
    for key in ("E", "alpha", "beta"):
        lo, hi = fit.intervals[key]
        assert lo < hi
        assert lo <= getattr(fit.law, key) <= hi
        # Loose: 20 resamples of a 95 % interval, widened by 20 % of its width.
        pad = 0.2 * (hi - lo)
        assert lo - pad <= EPOCH[key] <= hi + pad, key


def test_all_grid_starts_agree_with_top_k():
    # Hoffmann's grid: 6 x 6 values of a, b; 5 of e; 5 x 5 of alpha, beta.
    grid = initial_grid()
    assert grid.shape == (4500, 5) and len(np.unique(grid, axis=0)) == 4500
    data = isoflop_runs(EPOCH, 0.003, 4)
    best_k = fit_law(data, n_starts=8)
    wider = fit_law(data, n_starts=64)
    assert wider.n_starts == 64
    assert best_k.objective <= wider.objective * (1 + 1e-6)
    assert best_k.law.alpha == pytest.approx(wider.law.alpha, rel=1e-4)


def test_plot_is_a_png(tmp_path):
    data = isoflop_runs(EPOCH, 0.003, 0)
    out = plot_fit(data, fit_law(data, n_starts=4), tmp_path / "sub" / "fit.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in out.parent.iterdir()] == ["fit.png"]  # no temp file left


# --- CSV input -----------------------------------------------------------------------------


def write(tmp_path, text, name="runs.csv"):
    f = tmp_path / name
    f.write_text(text)
    return f


GOOD_ROWS = "".join(
    f"{n},{d},{true_loss(EPOCH, n, d)},x\n" for n in (1e8, 1e9, 1e10) for d in (1e10, 1e11)
)


def test_reads_required_columns_and_ignores_others(tmp_path):
    f = write(tmp_path, "N,D,loss,comment\n" + GOOD_ROWS + "\n")
    data = read_runs_csv(f)
    assert len(data) == 6
    assert data.n_params[0] == 1e8 and data.tokens[1] == 1e11


@pytest.mark.parametrize(
    "text,field,message",
    [
        ("N,tokens,loss\n" + GOOD_ROWS, "D", "missing"),
        ("N,D,loss\n1e9,abc,2.5\n" + GOOD_ROWS, "line 2, column D", "not a number"),
        ("N,D,loss\n1e9,1e10,-2.5\n" + GOOD_ROWS, "line 2, column loss", "> 0"),
        ("N,D,loss\n" + GOOD_ROWS + "0,1e10,2.5\n", "line 8, column N", "> 0"),
        ("N,D,loss\n" + GOOD_ROWS + "1e9,,2.5\n", "line 8, column D", "missing"),
        ("N,D,loss\n1e9,inf,2.5\n" + GOOD_ROWS, "line 2, column D", "finite"),
        ("N,D,loss\n1e8,1e10,3\n1e9,1e11,2.5\n", "rows", "at least"),
        ("N,D,loss\n" + "".join(f"1e9,{d},2.5\n" for d in (1, 2, 3, 4, 5, 6)), "N", "distinct"),
        ("", "", "empty"),
    ],
)
def test_bad_csv_names_file_and_place(tmp_path, text, field, message):
    f = write(tmp_path, text)
    with pytest.raises(ScalingInputError) as err:
        read_runs_csv(f)
    assert err.value.field == field
    assert str(f) in str(err.value)
    assert message in str(err.value)


def test_missing_file(tmp_path):
    with pytest.raises(ScalingInputError, match="cannot read"):
        read_runs_csv(tmp_path / "nope.csv")


def test_fit_pins_blas_to_one_thread_and_restores():
    from ogi_ray.scaling.blas import blas_thread_counts, single_threaded_blas

    before = blas_thread_counts()
    with single_threaded_blas():
        assert all(n == 1 for n in blas_thread_counts())
    assert blas_thread_counts() == before

"""Fit L(N, D) = E + A/N^alpha + B/D^beta to training runs, as in Hoffmann et al. Approach 3.

    RUNS.csv (N, D, loss) ──read_runs_csv──► RunsData ──fit_law──► FitResult(law, ...)
                                                    └──bootstrap_law──► confidence intervals

The objective is Hoffmann's: with x = (a, b, e, alpha, beta),

    log L_hat = LSE(a - alpha log N, b - beta log D, e),   A = e^a, B = e^b, E = e^e
    min_x  sum_i Huber_delta(log L_hat_i - log L_i),       delta = 1e-3

minimised with L-BFGS (scipy, analytic gradient) from Hoffmann's initialisation grid
(alpha, beta in {0, .5, .., 2}, e in {-1, -.5, .., 1}, a, b in {0, 5, .., 25}: 4,500 points).
Every grid point is scored (one vectorised pass) and L-BFGS runs from the ``n_starts`` best
(default 32; ``None`` runs all 4,500, about a minute); the best optimum is kept.
The objective is a *sum*, not a mean, and the tolerances are tight: Besiroglu et al. 2024
trace Hoffmann's implausibly narrow intervals to an optimizer that stopped early because
the loss scale was tiny.
"""

from __future__ import annotations

import csv
import itertools
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy.optimize import minimize

from ogi_ray.scaling.blas import single_threaded_blas
from ogi_ray.scaling.errors import ScalingInputError
from ogi_ray.scaling.law import ScalingLaw

HUBER_DELTA = 1e-3
REQUIRED_COLUMNS = ("N", "D", "loss")
# Five free constants; one more row than that is the least that leaves a residual.
MIN_ROWS = 6

_LBFGS_OPTIONS = {"maxiter": 5000, "ftol": 1e-15, "gtol": 1e-12}
# alpha, beta >= 0 keeps the law monotone; a, b, e are free (they are logs).
_BOUNDS = [(None, None), (None, None), (None, None), (0.0, 10.0), (0.0, 10.0)]


@dataclass(frozen=True)
class RunsData:
    """Observed runs: parameters, tokens and final loss (1-D arrays of equal length)."""

    n_params: np.ndarray
    tokens: np.ndarray
    loss: np.ndarray
    source: str = "<memory>"

    def __len__(self) -> int:
        return len(self.loss)


@dataclass(frozen=True)
class FitResult:
    """The fitted law and how it was obtained."""

    law: ScalingLaw
    objective: float  # summed Huber loss at the optimum
    n_rows: int
    n_starts: int
    converged: bool
    # name -> (low, high) percentile interval; empty when no bootstrap was run.
    intervals: dict[str, tuple[float, float]] = field(default_factory=dict)
    bootstrap_samples: int = 0
    confidence: float = 0.95

    def as_dict(self) -> dict[str, object]:
        law = self.law
        out: dict[str, object] = {
            **_derived(law),
            "G": law.G,
            "objective": self.objective,
            "huber_delta": HUBER_DELTA,
            "n_rows": self.n_rows,
            "n_starts": self.n_starts,
            "converged": self.converged,
        }
        if self.intervals:
            out["bootstrap"] = {
                "samples": self.bootstrap_samples,
                "confidence": self.confidence,
                "intervals": {k: [lo, hi] for k, (lo, hi) in self.intervals.items()},
            }
        return out


# --- input ---------------------------------------------------------------------------


def _find_column(header: list[str], name: str, path: Path) -> int:
    if name in header:
        return header.index(name)
    matches = [i for i, h in enumerate(header) if h.lower() == name.lower()]
    if len(matches) == 1:
        return matches[0]
    raise ScalingInputError(
        path, name, f"required column is missing (header has: {', '.join(header) or 'nothing'})"
    )


def read_runs_csv(path: str | Path) -> RunsData:
    """Read columns ``N``, ``D``, ``loss`` (others ignored); every value finite and > 0."""
    path = Path(path)
    try:
        with path.open(newline="", encoding="utf-8") as fh:
            rows = list(csv.reader(fh))
    except OSError as e:
        raise ScalingInputError(path, "", f"cannot read file ({e.strerror})") from e
    except UnicodeDecodeError as e:
        raise ScalingInputError(path, "", f"not UTF-8 text ({e.reason})") from e
    if not rows:
        raise ScalingInputError(path, "", "empty file; expected a header with N, D, loss")
    header = [h.strip() for h in rows[0]]
    cols = {name: _find_column(header, name, path) for name in REQUIRED_COLUMNS}
    values: dict[str, list[float]] = {name: [] for name in REQUIRED_COLUMNS}
    for line_no, row in enumerate(rows[1:], start=2):  # line 1 is the header
        if not any(cell.strip() for cell in row):
            continue  # blank line
        for name, idx in cols.items():
            where = f"line {line_no}, column {name}"
            if idx >= len(row) or not row[idx].strip():
                raise ScalingInputError(path, where, "value is missing")
            raw = row[idx].strip()
            try:
                value = float(raw)
            except ValueError:
                raise ScalingInputError(path, where, f"not a number: {raw!r}") from None
            if not math.isfinite(value) or value <= 0:
                raise ScalingInputError(path, where, f"must be a finite number > 0, got {raw!r}")
            values[name].append(value)
    n_rows = len(values["loss"])
    if n_rows < MIN_ROWS:
        raise ScalingInputError(
            path,
            "rows",
            f"{n_rows} data rows; the fit has 5 constants and needs at least {MIN_ROWS}",
        )
    for name in ("N", "D"):
        if len(set(values[name])) < 2:
            raise ScalingInputError(
                path, name, "needs at least 2 distinct values, or its exponent is undetermined"
            )
    return RunsData(
        n_params=np.asarray(values["N"]),
        tokens=np.asarray(values["D"]),
        loss=np.asarray(values["loss"]),
        source=str(path),
    )


# --- objective -----------------------------------------------------------------------


def initial_grid() -> np.ndarray:
    """Hoffmann's 4,500 starting points as rows of (a, b, e, alpha, beta)."""
    ab = np.arange(0.0, 30.0, 5.0)
    e = np.arange(-1.0, 1.5, 0.5)
    ex = np.arange(0.0, 2.5, 0.5)
    return np.array(list(itertools.product(ab, ab, e, ex, ex)), dtype=float)


def _huber(r: np.ndarray, delta: float) -> np.ndarray:
    ar = np.abs(r)
    return np.where(ar <= delta, 0.5 * r * r, delta * (ar - 0.5 * delta))


def _grid_objective(
    x: np.ndarray, ln_n: np.ndarray, ln_d: np.ndarray, ln_l: np.ndarray, delta: float
) -> np.ndarray:
    """Objective for many parameter rows at once: x (k, 5) -> (k,)."""
    a, b, e, alpha, beta = (x[:, i : i + 1] for i in range(5))
    t1 = a - alpha * ln_n
    t2 = b - beta * ln_d
    t3 = np.broadcast_to(e, t1.shape)
    lse = np.logaddexp(np.logaddexp(t1, t2), t3)
    return _huber(lse - ln_l, delta).sum(axis=1)


def _objective_and_grad(
    x: np.ndarray, ln_n: np.ndarray, ln_d: np.ndarray, ln_l: np.ndarray, delta: float
) -> tuple[float, np.ndarray]:
    a, b, e, alpha, beta = x
    t = np.stack([a - alpha * ln_n, b - beta * ln_d, np.full_like(ln_n, e)])
    m = t.max(axis=0)
    ex = np.exp(t - m)
    s = ex.sum(axis=0)
    w = ex / s  # softmax weights = d LSE / d t_k
    r = m + np.log(s) - ln_l
    psi = np.clip(r, -delta, delta)  # Huber derivative
    pw = psi * w
    grad = np.array(
        [pw[0].sum(), pw[1].sum(), pw[2].sum(), -(pw[0] * ln_n).sum(), -(pw[1] * ln_d).sum()]
    )
    return float(_huber(r, delta).sum()), grad


def _minimise(
    starts: np.ndarray, logs: tuple[np.ndarray, np.ndarray, np.ndarray], delta: float
) -> tuple[np.ndarray, float, bool]:
    best_x, best_f, best_ok = starts[0], math.inf, False
    # L-BFGS-B makes thousands of tiny BLAS calls; threaded OpenBLAS makes them crawl on a
    # busy machine (see blas.py).
    with single_threaded_blas():
        for x0 in starts:
            res = minimize(
                _objective_and_grad,
                x0,
                args=(*logs, delta),
                jac=True,
                method="L-BFGS-B",
                bounds=_BOUNDS,
                options=_LBFGS_OPTIONS,
            )
            if np.isfinite(res.fun) and res.fun < best_f:
                best_x, best_f, best_ok = res.x, float(res.fun), bool(res.success)
    return best_x, best_f, best_ok


def _law_from_x(x: np.ndarray, name: str) -> ScalingLaw:
    a, b, e, alpha, beta = (float(v) for v in x)
    return ScalingLaw(
        E=math.exp(e), A=math.exp(a), B=math.exp(b), alpha=alpha, beta=beta, name=name
    )


def _logs(data: RunsData) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return np.log(data.n_params), np.log(data.tokens), np.log(data.loss)


def fit_law(
    data: RunsData, *, n_starts: int | None = 32, delta: float = HUBER_DELTA, name: str = "fit"
) -> FitResult:
    """Fit the five constants; raises ScalingInputError if the data cannot pin them down."""
    if len(data) < MIN_ROWS:
        raise ScalingInputError(
            data.source, "rows", f"need at least {MIN_ROWS} rows, got {len(data)}"
        )
    logs = _logs(data)
    grid = initial_grid()
    if n_starts is not None and n_starts < len(grid):
        scores = _grid_objective(grid, *logs, delta)
        grid = grid[np.argsort(scores, kind="stable")[: max(1, n_starts)]]
    x, obj, ok = _minimise(grid, logs, delta)
    law = _law_from_x(x, name)
    # alpha or beta at the lower bound means the data carried no signal for that term.
    for key in ("alpha", "beta"):
        if getattr(law, key) < 1e-6:
            raise ScalingInputError(
                data.source, key, "fitted to 0: the runs do not vary enough in N and D to fit it"
            )
    return FitResult(law=law, objective=obj, n_rows=len(data), n_starts=len(grid), converged=ok)


def _derived(law: ScalingLaw) -> dict[str, float]:
    return {
        "E": law.E,
        "A": law.A,
        "B": law.B,
        "alpha": law.alpha,
        "beta": law.beta,
        "exponent_n": law.exponent_n,
        "exponent_d": law.exponent_d,
    }


def bootstrap_law(
    data: RunsData,
    fit: FitResult,
    *,
    samples: int = 100,
    seed: int = 0,
    confidence: float = 0.95,
    starts_per_sample: int = 4,
    delta: float = HUBER_DELTA,
) -> FitResult:
    """Percentile bootstrap over runs (rows resampled with replacement).

    Each resample starts L-BFGS from the full-data optimum plus its own best few grid
    points, which is where the full-data search ends anyway and is ~10x cheaper.
    """
    if samples < 2:
        raise ValueError(f"bootstrap needs at least 2 samples, got {samples}")
    rng = np.random.default_rng(seed)
    grid = initial_grid()
    x_full = np.array(
        [math.log(fit.law.A), math.log(fit.law.B), math.log(fit.law.E), fit.law.alpha, fit.law.beta]
    )
    draws: dict[str, list[float]] = {k: [] for k in _derived(fit.law)}
    n = len(data)
    for _ in range(samples):
        idx = rng.integers(0, n, size=n)
        logs = tuple(v[idx] for v in _logs(data))
        scores = _grid_objective(grid, *logs, delta)
        starts = np.vstack([x_full, grid[np.argsort(scores, kind="stable")[:starts_per_sample]]])
        x, _, _ = _minimise(starts, logs, delta)  # type: ignore[arg-type]
        law = _law_from_x(x, "boot")
        if law.alpha + law.beta <= 0:
            continue  # a degenerate resample (e.g. one model size drawn) has no exponents
        for k, v in _derived(law).items():
            draws[k].append(v)
    if len(draws["E"]) < 2:
        raise ScalingInputError(data.source, "rows", "bootstrap resamples were all degenerate")
    tail = 100.0 * (1.0 - confidence) / 2.0
    intervals = {
        k: (float(np.percentile(v, tail)), float(np.percentile(v, 100.0 - tail)))
        for k, v in draws.items()
    }
    return FitResult(
        law=fit.law,
        objective=fit.objective,
        n_rows=fit.n_rows,
        n_starts=fit.n_starts,
        converged=fit.converged,
        intervals=intervals,
        bootstrap_samples=samples,
        confidence=confidence,
    )

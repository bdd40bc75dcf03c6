"""Exchange rates from proxy runs: fit a saturating law in effective tokens (pure numpy/scipy).

    trial table: tokens T (n trials × k modalities, raw tokens the model trained on),
                 metric M (n,) (lower is better)
        ──tie_columns──► groups: modalities that only ever occur in one fixed proportion
                         (the swarm cannot tell them apart) share one weight
        ──fit_law──► LawFit: nonlinear least squares (scipy trf, analytic Jacobian),
                     a few starts, the best kept
        ──bootstrap_law──► percentile intervals over trials resampled with replacement
        ──LawFit.rates("text")──► r_m = w_m / w_text;  LawFit.transfer(T0) = ∂M/∂T_m

The law, with X_g = T_g / T_ref (T_ref a fixed scale: the median trial's raw total):

    M = E + exp(−α · s),   s = ln Σ_g w_g X_g = LSE_g(θ_g + ln X_g),   w_g = e^θ_g

which is E + (Σ_g w_g X_g)^−α, i.e. E + A·(T_eff / T_ref)^−α with T_eff = Σ_g r_g T_g,
r_g = w_g / w_unit and A = w_unit^−α. Fitting the weights (not the rates) keeps one form
for every metric, also for one whose value text tokens do not move (a transfer fit).
The log-sum-exp form is Hoffmann's Approach-3 parametrisation (fit.py) applied to tokens.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import least_squares

from ogi_ray.scaling.blas import single_threaded_blas
from ogi_ray.scaling.errors import ScalingInputError

THETA_BOUND = 60.0  # |θ| ≤ 60: weights from e^-60 (nothing) to e^60
ALPHA_BOUNDS = (0.01, 5.0)
TIE_TOLERANCE = 1e-3  # relative spread of T_b/T_a under which a and b are one column
_STARTS_ALPHA = (0.1, 0.3, 1.0)
_STARTS_RATE = (0.1, 0.5, 1.0)
# Far below any metric's noise (a proxy's held-out loss carries ~1e-2); a resample whose
# law is degenerate (a flat objective) stops at the evaluation cap instead of crawling.
_TOL = 1e-10
_MAX_NFEV = 1000


@dataclass(frozen=True)
class Groups:
    """How modalities map to fitted columns. ``members[g]`` are the modalities of group g;
    ``split[m]`` is m's rate relative to its group's first member (1 when alone)."""

    members: tuple[tuple[str, ...], ...]
    split: dict[str, float]

    @property
    def names(self) -> list[str]:
        return [ms[0] for ms in self.members]

    def group_of(self, modality: str) -> int:
        for g, ms in enumerate(self.members):
            if modality in ms:
                return g
        raise KeyError(modality)

    def columns(self, tokens: np.ndarray, modalities: list[str]) -> np.ndarray:
        """Raw tokens per modality (n, k) → the fitted columns (n, G): Σ split_m T_m."""
        out = np.zeros((tokens.shape[0], len(self.members)))
        for j, m in enumerate(modalities):
            out[:, self.group_of(m)] += self.split[m] * tokens[:, j]
        return out


@dataclass(frozen=True)
class LawFit:
    """M = E + (Σ_g w_g T_g / t_ref)^−α over the columns of ``groups``."""

    E: float
    alpha: float
    theta: np.ndarray  # (G,) log weights
    t_ref: float
    groups: Groups
    rmse: float
    n: int
    converged: bool
    # Filled by bootstrap_law: one row (E, alpha, theta...) per resample that fitted.
    draws: np.ndarray | None = None
    bootstrap_samples: int = 0
    confidence: float = 0.95
    notes: list[str] = field(default_factory=list)

    @property
    def x(self) -> np.ndarray:
        return np.concatenate([[self.E, self.alpha], self.theta])

    def predict(self, tokens: np.ndarray, modalities: list[str]) -> np.ndarray:
        cols = self.groups.columns(np.atleast_2d(tokens), modalities) / self.t_ref
        return _model(self.x, _log_cols(cols))

    def predict_draws(self, tokens: np.ndarray, modalities: list[str]) -> np.ndarray:
        """Predictions of every bootstrap draw: (draws, n) (empty without a bootstrap)."""
        if self.draws is None:
            return np.zeros((0, np.atleast_2d(tokens).shape[0]))
        log_x = _log_cols(self.groups.columns(np.atleast_2d(tokens), modalities) / self.t_ref)
        return np.array([_model(d, log_x) for d in self.draws])

    def rates(self, unit: str = "text") -> dict[str, float]:
        """r_m = w_m / w_unit for every modality (tied members through their split)."""
        return _rates_from_theta(self.theta, self.groups, unit)

    def rate_intervals(self, unit: str = "text") -> dict[str, tuple[float, float]]:
        if self.draws is None:
            return {}
        per = [_rates_from_theta(d[2:], self.groups, unit) for d in self.draws]
        return _percentiles(per, self.confidence)

    def transfer(self, at_tokens: np.ndarray, modalities: list[str]) -> dict[str, float]:
        """∂M/∂T_m at ``at_tokens`` (one trial's raw tokens), per token of modality m."""
        return _transfer(self.x, self.groups, self.t_ref, at_tokens, modalities)

    def transfer_intervals(
        self, at_tokens: np.ndarray, modalities: list[str]
    ) -> dict[str, tuple[float, float]]:
        if self.draws is None:
            return {}
        per = [_transfer(d, self.groups, self.t_ref, at_tokens, modalities) for d in self.draws]
        return _percentiles(per, self.confidence)


# --- columns ---------------------------------------------------------------------------


def tie_columns(
    tokens: np.ndarray,
    modalities: list[str],
    prior: dict[str, float] | None = None,
    *,
    source: str = "<trials>",
    tol: float = TIE_TOLERANCE,
) -> Groups:
    """Group modalities whose token counts are proportional in every trial.

    Such modalities (the shipped corpus' proprio and action: one of each per embodied
    timestep) move together in any mixture of these sources, so only their combined
    value is measurable; the group gets one weight, split among its members in the
    ratio of ``prior`` (e.g. the configured rates; equal when absent). A modality with no
    tokens in any trial cannot be measured at all and is an error.
    """
    tokens = np.asarray(tokens, float)
    prior = prior or {}
    for j, m in enumerate(modalities):
        if not np.any(tokens[:, j] > 0):
            raise ScalingInputError(source, f"tokens.{m}", "no trial trained on this modality; its rate cannot be measured")
    members: list[list[str]] = []
    for j, m in enumerate(modalities):
        for group in members:
            a = tokens[:, modalities.index(group[0])]
            b = tokens[:, j]
            if np.array_equal(a > 0, b > 0):
                ratio = b[a > 0] / a[a > 0]
                if ratio.max() - ratio.min() <= tol * abs(ratio.mean()):
                    group.append(m)
                    break
        else:
            members.append([m])
    split: dict[str, float] = {}
    for group in members:
        ref = prior.get(group[0], 1.0)
        for m in group:
            split[m] = prior.get(m, 1.0) / ref
    return Groups(members=tuple(tuple(g) for g in members), split=split)


def _log_cols(cols: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore"):
        return np.log(cols)  # zero tokens → −inf: that column adds nothing to the sum


# --- model -----------------------------------------------------------------------------


def _lse(theta: np.ndarray, log_x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """s_i = LSE_g(θ_g + ln X_ig) and the softmax weights π_ig."""
    z = theta[None, :] + log_x
    m = np.max(z, axis=1, keepdims=True)
    e = np.exp(z - m)
    tot = e.sum(axis=1, keepdims=True)
    return (m + np.log(tot))[:, 0], e / tot


def _model(x: np.ndarray, log_x: np.ndarray) -> np.ndarray:
    s, _ = _lse(x[2:], log_x)
    return x[0] + np.exp(-x[1] * s)


def _residuals(x: np.ndarray, log_x: np.ndarray, metric: np.ndarray) -> np.ndarray:
    return _model(x, log_x) - metric


def _jacobian(x: np.ndarray, log_x: np.ndarray, metric: np.ndarray) -> np.ndarray:
    alpha = x[1]
    s, pi = _lse(x[2:], log_x)
    amp = np.exp(-alpha * s)
    jac = np.empty((len(s), len(x)))
    jac[:, 0] = 1.0
    jac[:, 1] = -s * amp
    jac[:, 2:] = (-alpha * amp)[:, None] * pi
    return jac


def _bounds(metric: np.ndarray, n_groups: int) -> tuple[np.ndarray, np.ndarray]:
    # E ≥ 0: the metric is a loss (or a mean of normalised losses), so is its asymptote.
    lo = np.array([0.0, ALPHA_BOUNDS[0], *([-THETA_BOUND] * n_groups)])
    hi = np.array([max(float(metric.max()), 1e-12), ALPHA_BOUNDS[1], *([THETA_BOUND] * n_groups)])
    return lo, hi


def _starts(log_x: np.ndarray, metric: np.ndarray, unit: int) -> list[np.ndarray]:
    """Starting points: α and a common relative weight on a small grid; E at half the
    best metric; the common log-weight shift solved so the mean amplitude matches."""
    e0 = 0.5 * float(metric.min())
    amp = max(float(np.mean(metric - e0)), 1e-9)
    out = []
    g = log_x.shape[1]
    for alpha in _STARTS_ALPHA:
        for r in _STARTS_RATE:
            rel = np.full(g, math.log(r))
            rel[unit] = 0.0
            s0, _ = _lse(rel, log_x)
            shift = -math.log(amp) / alpha - float(np.mean(s0))
            theta = np.clip(rel + shift, -THETA_BOUND + 1, THETA_BOUND - 1)
            out.append(np.array([e0, alpha, *theta]))
    return out


def _solve(
    starts: list[np.ndarray], log_x: np.ndarray, metric: np.ndarray
) -> tuple[np.ndarray, float, bool]:
    lo, hi = _bounds(metric, log_x.shape[1])
    best, best_cost, ok = starts[0], math.inf, False
    with single_threaded_blas():  # tiny problems: threaded BLAS only adds wake-ups (blas.py)
        for x0 in starts:
            res = least_squares(
                _residuals, np.clip(x0, lo + 1e-12, hi - 1e-12), jac=_jacobian, bounds=(lo, hi),
                args=(log_x, metric), method="trf", x_scale="jac", ftol=_TOL, xtol=_TOL,
                gtol=_TOL, max_nfev=_MAX_NFEV,
            )  # fmt: skip
            if np.isfinite(res.cost) and res.cost < best_cost:
                best, best_cost, ok = res.x, float(res.cost), bool(res.success)
    return best, best_cost, ok


def fit_law(
    tokens: np.ndarray,
    metric: np.ndarray,
    modalities: list[str],
    *,
    groups: Groups | None = None,
    unit: str = "text",
    source: str = "<trials>",
) -> LawFit:
    """Least-squares fit of the law to trials (rows of ``tokens`` and ``metric``)."""
    tokens = np.asarray(tokens, float)
    metric = np.asarray(metric, float)
    if tokens.ndim != 2 or tokens.shape != (len(metric), len(modalities)):
        raise ValueError(f"tokens must be (n, {len(modalities)}), metric (n,): got {tokens.shape}, {metric.shape}")
    if not (np.all(np.isfinite(tokens)) and np.all(tokens >= 0)):
        raise ScalingInputError(source, "tokens", "token counts must be finite and >= 0")
    if not np.all(np.isfinite(metric)):
        raise ScalingInputError(source, "metric", "metric values must be finite")
    groups = groups or tie_columns(tokens, modalities, source=source)
    n_params = 2 + len(groups.members)
    if len(metric) < n_params + 1:
        raise ScalingInputError(
            source, "trials",
            f"{len(metric)} trials cannot fit {n_params} parameters (E, alpha and one weight per "
            f"modality group {groups.names}); run at least {n_params + 1}",
        )  # fmt: skip
    cols = groups.columns(tokens, modalities)
    if np.any(cols.sum(axis=1) <= 0):
        raise ScalingInputError(source, "tokens", "a trial has no tokens at all")
    t_ref = float(np.median(cols.sum(axis=1)))
    log_x = _log_cols(cols / t_ref)
    unit_g = groups.group_of(unit) if unit in groups.split else 0
    x, cost, ok = _solve(_starts(log_x, metric, unit_g), log_x, metric)
    rmse = math.sqrt(2.0 * cost / len(metric))
    return LawFit(E=float(x[0]), alpha=float(x[1]), theta=np.array(x[2:]), t_ref=t_ref,
                  groups=groups, rmse=rmse, n=len(metric), converged=ok)  # fmt: skip


def bootstrap_law(
    fit: LawFit,
    tokens: np.ndarray,
    metric: np.ndarray,
    modalities: list[str],
    *,
    samples: int = 200,
    seed: int = 0,
    confidence: float = 0.95,
) -> LawFit:
    """Percentile bootstrap over trials (case resampling), as fit.bootstrap_law does for
    runs. Each resample starts from the full-data optimum and from the grid's best start;
    a resample with fewer distinct trials than parameters + 1 is skipped (counted)."""
    if samples < 2:
        raise ValueError(f"bootstrap needs at least 2 samples, got {samples}")
    tokens = np.asarray(tokens, float)
    metric = np.asarray(metric, float)
    log_x = _log_cols(fit.groups.columns(tokens, modalities) / fit.t_ref)
    rng = np.random.default_rng(seed)
    n, n_params = len(metric), len(fit.x)
    draws, skipped = [], 0
    for _ in range(samples):
        idx = rng.integers(0, n, size=n)
        if len(set(idx.tolist())) < n_params + 1:
            skipped += 1
            continue
        x, _, _ = _solve([fit.x], log_x[idx], metric[idx])
        draws.append(x)
    if len(draws) < 2:
        raise ScalingInputError("<trials>", "trials", "bootstrap resamples were all degenerate")
    notes = list(fit.notes)
    if skipped:
        notes.append(f"{skipped} of {samples} resamples had too few distinct trials and were skipped")
    return LawFit(E=fit.E, alpha=fit.alpha, theta=fit.theta, t_ref=fit.t_ref, groups=fit.groups,
                  rmse=fit.rmse, n=fit.n, converged=fit.converged, draws=np.array(draws),
                  bootstrap_samples=samples, confidence=confidence, notes=notes)  # fmt: skip


# --- derived quantities ----------------------------------------------------------------


def _rates_from_theta(theta: np.ndarray, groups: Groups, unit: str) -> dict[str, float]:
    ref = theta[groups.group_of(unit)] + math.log(groups.split[unit])
    out = {}
    for g, ms in enumerate(groups.members):
        for m in ms:
            out[m] = math.exp(min(theta[g] + math.log(groups.split[m]) - ref, 700.0))
    return out


def _transfer(
    x: np.ndarray, groups: Groups, t_ref: float, at_tokens: np.ndarray, modalities: list[str]
) -> dict[str, float]:
    cols = groups.columns(np.atleast_2d(np.asarray(at_tokens, float)), modalities) / t_ref
    log_x = _log_cols(cols)
    alpha, theta = x[1], x[2:]
    s, _ = _lse(theta, log_x)
    total = math.exp(float(s[0]))  # Σ_g w_g X_g
    dm_dsum = -alpha * math.exp(-alpha * float(s[0])) / total
    return {m: dm_dsum * math.exp(theta[groups.group_of(m)]) * groups.split[m] / t_ref for m in modalities}


def _percentiles(per: list[dict[str, float]], confidence: float) -> dict[str, tuple[float, float]]:
    tail = 100.0 * (1.0 - confidence) / 2.0
    out = {}
    for k in per[0]:
        v = np.array([d[k] for d in per])
        out[k] = (float(np.percentile(v, tail)), float(np.percentile(v, 100.0 - tail)))
    return out

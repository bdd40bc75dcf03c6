"""The target metric of a swarm (pure): per-proxy held-out losses → one number per proxy.

    per proxy {objective: {source: loss}} ──objective_matrix──► L (n proxies × O objectives):
        each objective's loss averaged over the held-out sources it is evaluated on
        (the same sources in every proxy: the held-out split does not depend on shares),
        weighted where ``weights`` says so: lm by the held-out text tokens of each source,
        so it is the held-out LM loss over tokens (five-token emoji names and four-token
        robot instructions would otherwise count as much as a page of code)
    L ──target_metric──► M (n,) = mean over objectives of L_io / c_o, with c_o the
        untrained model's loss (normalise: untrained), mean_i L_io (swarm_mean) or 1
        (none); and the c_o used

Dividing by the untrained loss puts every objective on one scale whatever its units
(log-perplexity in nats, MSE, InfoNCE): the fraction of the starting loss a proxy has
left. Dividing by the swarm mean instead weighs relative changes, which lets an objective
whose loss collapses toward 0 (the world model's latent prediction does in tiny proxies:
0.0002 to 0.007 across mixtures) dominate the metric. The normalisers are part of the
metric's definition and are written into the rates file, so a later proxy is scored on
the same scale.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ogi_ray.rates.config import MetricConfig

# The model's objectives in the order the trainer lists them (model/config.py); an eval
# name outside this list sorts after them.
ORDER = ("lm", "vision", "align", "world", "embod")


class MetricError(ValueError):
    """The proxies' evals cannot be combined into the configured metric."""


def objective_matrix(
    losses: list[dict[str, dict[str, float]]], objectives: list[str],
    weights: dict[str, dict[str, float]] | None = None,
) -> tuple[list[str], np.ndarray, dict[str, list[str]]]:
    """(objectives used, L (n, O), the held-out sources of each objective).
    ``weights[objective][source]``: a weighted mean over sources (else equal weights)."""  # fmt: skip
    present = sorted(set.intersection(*(set(d) for d in losses)), key=lambda o: (ORDER.index(o) if o in ORDER else len(ORDER), o))
    chosen = objectives or present
    missing = [o for o in chosen if o not in present]
    if missing:
        raise MetricError(f"metric.objectives: {missing} not evaluated by every proxy (evaluated: {present})")
    sources: dict[str, list[str]] = {}
    for o in chosen:
        sets = [tuple(sorted(d[o])) for d in losses]
        if len(set(sets)) != 1:
            raise MetricError(f"objective {o!r} is evaluated on different held-out sources across proxies: {sorted(set(sets))}")
        sources[o] = list(sets[0])
    w = {o: np.array([(weights or {}).get(o, {}).get(s, 1.0 if o not in (weights or {}) else 0.0)
                      for s in sources[o]]) for o in chosen}  # fmt: skip
    for o in chosen:
        if not w[o].sum() > 0:
            raise MetricError(f"objective {o!r}: its held-out sources {sources[o]} have no weight")
    mat = np.array([[np.average([d[o][s] for s in sources[o]], weights=w[o]) for o in chosen] for d in losses])
    if not np.all(np.isfinite(mat)):
        raise MetricError("a proxy's held-out loss is not finite (diverged?)")
    return list(chosen), mat, sources


def target_metric(mat: np.ndarray, normalise: str, normalisers: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """M per proxy and the normalisers used (given ones are reused, e.g. from a rates file)."""
    if normalisers is None:
        if normalise == "untrained":
            raise MetricError("normalise: untrained needs the untrained model's losses (the 'untrained' trial)")
        normalisers = mat.mean(axis=0) if normalise == "swarm_mean" else np.ones(mat.shape[1])
    if np.any(normalisers <= 0):
        raise MetricError(f"normalisers must be > 0, got {normalisers.tolist()}")
    return (mat / normalisers).mean(axis=1), normalisers


def definition(
    cfg: MetricConfig, objectives: list[str], sources: dict[str, list[str]], normalisers: np.ndarray,
    weights: dict[str, dict[str, float]] | None = None,
) -> dict[str, Any]:  # fmt: skip
    """The metric as the rates file records it."""
    norm = {o: float(c) for o, c in zip(objectives, normalisers, strict=True)}
    how = {"untrained": "divided by the untrained model's loss on the same rows (the initial weights every "
                        "proxy starts from)",
           "swarm_mean": "divided by its mean over the swarm's proxies",
           "none": "as is (not normalised)"}[cfg.normalise]  # fmt: skip
    return {
        "name": "mean_normalised_heldout_loss" if len(objectives) > 1 else f"heldout_loss/{objectives[0]}",
        "definition": (
            "mean over objectives of the objective's held-out loss (lm: log-perplexity, nats, pooled over "
            "the held-out text tokens of its sources; the others: their training losses on held-out rows, "
            f"averaged over their held-out sources), {how}; lower is better"
        ),
        "objectives": objectives,
        "sources": sources,
        "normalise": cfg.normalise,
        "normalisers": norm,
        "source_weights": weights or {},
    }

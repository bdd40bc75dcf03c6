"""From a swarm's trial table to the rates file (``ogi rates measure``'s fitting half).

    OUT/swarm.json trials (tokens per modality, eval scores per proxy)
        ──observe.objective_losses + metric.objective_matrix──► L (proxies × objectives)
        ──metric.target_metric──► M per proxy (+ the normalisers)
        ──ratefit.tie_columns / fit_law / bootstrap_law──► rates r_m with 95 % intervals
        ──the same law per objective──► per-objective rates and the transfer table
                                         ∂(normalised loss)/∂T_m at the base proxy
        ──the configured rates, fixed──► how well the hand-set rates explain the swarm
        ──► rates body (corpus.rates_file.write_rates_file seals and writes it)

No Ray here: the swarm has run; this is arithmetic on its table.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ogi_ray.canonical import hash_canonical
from ogi_ray.corpus.config import MODALITIES
from ogi_ray.rates import observe
from ogi_ray.rates.config import SwarmConfig
from ogi_ray.rates.metric import definition, objective_matrix, target_metric
from ogi_ray.scaling.ratefit import Groups, LawFit, bootstrap_law, fit_law, tie_columns

PER_TOKENS = 1000.0  # the transfer table is per 1,000 tokens of a modality
_RATE_LIMIT = 1e6  # a per-objective rate beyond this means text does not move that objective


def trial_arrays(
    trials: list[dict[str, Any]], cfg: SwarmConfig, untrained: dict[str, Any] | None = None,
    heldout: dict[str, dict[str, float]] | None = None,
) -> dict[str, Any]:
    """Tokens (n, k) over the modalities some proxy trained on, L, M and the metric's parts
    (``untrained``: the untrained trial's report, for ``normalise: untrained``; ``heldout``:
    per-objective source weights, {"lm": held-out text tokens per source})."""  # fmt: skip
    mods = [m for m in MODALITIES if any(t["tokens"].get(m, 0) > 0 for t in trials)]
    tokens = np.array([[t["tokens"].get(m, 0.0) for m in mods] for t in trials], float)
    losses = [observe.objective_losses(t["eval"]) for t in trials]
    given = None
    if cfg.metric.normalise == "untrained" and untrained is not None:
        losses = [observe.objective_losses(untrained["eval"]), *losses]
    weights = {"lm": weights_lm} if (weights_lm := (heldout or {}).get("lm")) else None
    objectives, mat, sources = objective_matrix(losses, cfg.metric.objectives, weights)
    if len(losses) > len(trials):
        given, mat = mat[0], mat[1:]
    metric, norms = target_metric(mat, cfg.metric.normalise, given)
    return {"modalities": mods, "tokens": tokens, "objectives": objectives, "losses": mat,
            "metric": metric, "normalisers": norms, "sources": sources, "weights": weights}  # fmt: skip


def _fit(tokens: np.ndarray, y: np.ndarray, mods: list[str], groups: Groups, cfg: SwarmConfig, unit: str) -> LawFit:
    fit = fit_law(tokens, y, mods, groups=groups, unit=unit, source=cfg.file or "<swarm>")
    if cfg.fit.bootstrap:
        fit = bootstrap_law(fit, tokens, y, mods, samples=cfg.fit.bootstrap, seed=cfg.seed, confidence=cfg.fit.confidence)
    return fit


def _finite_or_none(x: float) -> float | None:
    return x if math.isfinite(x) and abs(x) < _RATE_LIMIT else None


_NEGLIGIBLE = 25.0  # a log weight this far below the largest is a weight of ~1e-11: none


def _objective_rates(f: LawFit, unit: str, mods: list[str]) -> dict[str, float | None]:
    """Per-objective rates: 0 for a modality whose weight vanished, None for every one
    when the unit's did (the unit does not move the objective, so no ratio exists)."""
    top = float(np.max(f.theta))
    dead = {m for m in mods if f.theta[f.groups.group_of(m)] < top - _NEGLIGIBLE}
    if unit in dead:
        return {m: (1.0 if m == unit else None) for m in mods}
    r = f.rates(unit)
    return {m: 0.0 if m in dead else _finite_or_none(r[m]) for m in mods}


def _tiny_to_zero(x: float) -> float:
    return 0.0 if abs(x) < 1e-12 else x


def _r2(fit: LawFit, tokens: np.ndarray, y: np.ndarray, mods: list[str]) -> float:
    resid = fit.predict(tokens, mods) - y
    spread = float(((y - y.mean()) ** 2).sum())
    return 1.0 - float((resid**2).sum()) / spread if spread > 0 else float("nan")


def base_index(trials: list[dict[str, Any]], cfg: SwarmConfig) -> int:
    """The proxy the transfer table is evaluated at: the base mixture if the design has it,
    else the proxy with the median metric."""
    return 0 if cfg.design.include_base else len(trials) // 2


def fit_swarm(cfg: SwarmConfig, swarm: dict[str, Any]) -> dict[str, Any]:
    """The rates body for ``swarm`` (swarm.json's content)."""
    trials = swarm["trials"]
    a = trial_arrays(trials, cfg, swarm.get("untrained"), swarm.get("heldout_weights"))
    mods, tokens, metric = a["modalities"], a["tokens"], a["metric"]
    configured = {m: float(r) for m, r in swarm["reference"]["exchange_rates"].items()}
    groups = tie_columns(tokens, mods, prior=configured, source=cfg.file or "<swarm>")
    unit = cfg.fit.unit
    if unit not in mods:
        raise ValueError(f"fit.unit: no proxy trained on {unit!r}")
    fit = _fit(tokens, metric, mods, groups, cfg, unit)
    rates, intervals = fit.rates(unit), fit.rate_intervals(unit)
    floored = sorted(m for m in mods if rates[m] < cfg.fit.min_rate)
    written = {m: max(rates[m], cfg.fit.min_rate) for m in mods}
    at = tokens[base_index(trials, cfg)]

    per_objective: dict[str, Any] = {}
    for j, o in enumerate(a["objectives"]):
        y = a["losses"][:, j] / a["normalisers"][j]
        f = _fit(tokens, y, mods, groups, cfg, unit)
        tr, tri = f.transfer(at, mods), f.transfer_intervals(at, mods)
        ri = f.rate_intervals(unit)
        per_objective[o] = {
            "rates": _objective_rates(f, unit, mods),
            "intervals": {m: [_finite_or_none(lo), _finite_or_none(hi)] for m, (lo, hi) in ri.items()},
            "transfer": {m: _tiny_to_zero(tr[m] * PER_TOKENS) for m in mods},
            "transfer_intervals": {m: [_tiny_to_zero(lo * PER_TOKENS), _tiny_to_zero(hi * PER_TOKENS)]
                                   for m, (lo, hi) in tri.items()},  # fmt: skip
            "law": _law_doc(f, tokens, y, mods),
        }  # fmt: skip

    conf_groups = Groups(members=(tuple(mods),), split={m: configured[m] / configured[mods[0]] for m in mods})
    conf_fit = fit_law(tokens, metric, mods, groups=conf_groups, unit=mods[0])
    ties = [list(ms) for ms in groups.members if len(ms) > 1]
    notes = list(fit.notes)
    for ms in ties:
        notes.append(f"{' and '.join(ms)} occur only in one fixed proportion in every proxy: their joint value is "
                     f"measured and split in the configured ratio {':'.join(str(configured[m]) for m in ms)}")  # fmt: skip
    for m in floored:
        notes.append(f"{m}: fitted {rates[m]:.3g} < min_rate; written as {cfg.fit.min_rate}")
    cfg_doc = {k: v for k, v in _plain(cfg).items() if k != "file"}
    return {
        "name": cfg.name,
        "unit": unit,
        "modalities": mods,
        "rates": written,
        "intervals": {m: list(intervals.get(m, (rates[m], rates[m]))) for m in mods},
        "fitted_rates": rates,
        "confidence": cfg.fit.confidence,
        "bootstrap": {"samples": cfg.fit.bootstrap, "used": 0 if fit.draws is None else len(fit.draws),
                      "resampling": "trials (cases), percentile intervals", "seed": cfg.seed},
        "identification": {"tied": ties, "floored": floored, "min_rate": cfg.fit.min_rate},
        "law": _law_doc(fit, tokens, metric, mods),
        "configured": {"rates": configured, "law": _law_doc(conf_fit, tokens, metric, mods)},
        "metric": definition(cfg.metric, a["objectives"], a["sources"], a["normalisers"], a["weights"]),
        "per_objective": per_objective,
        "transfer": {"at": trials[base_index(trials, cfg)]["proxy"], "at_tokens": dict(zip(mods, at.tolist(), strict=True)),
                     "unit": f"change in the objective's normalised held-out loss per {PER_TOKENS:.0f} tokens"},
        "trials": [_trial_doc(t, metric[i], a, i) for i, t in enumerate(trials)],
        "untrained": swarm.get("untrained"),
        "heldout_weights": swarm.get("heldout_weights"),
        "sources": swarm["sources"],
        "groups": swarm["groups"],
        "proxy": {"config": cfg_doc, "config_sha256": hash_canonical(cfg_doc), "base_job": swarm["base_job"],
                  "reference": swarm["reference"]},
        "notes": notes,
    }  # fmt: skip


def _law_doc(fit: LawFit, tokens: np.ndarray, y: np.ndarray, mods: list[str]) -> dict[str, Any]:
    return {
        "form": "M = E + (sum_g w_g T_g / T_ref)^-alpha  (T_g: raw tokens of group g fed to the model)",
        "E": fit.E, "alpha": fit.alpha, "log_weights": dict(zip(fit.groups.names, fit.theta.tolist(), strict=True)),
        "groups": [list(g) for g in fit.groups.members], "T_ref": fit.t_ref,
        "rmse": fit.rmse, "r2": _finite_or_none(_r2(fit, tokens, y, mods)), "n": fit.n, "converged": fit.converged,
    }  # fmt: skip


def _trial_doc(t: dict[str, Any], metric: float, a: dict[str, Any], i: int) -> dict[str, Any]:
    keep = ("proxy", "steps", "rows", "tokens_seen", "shares", "multipliers", "tokens", "eval",
            "manifest_hash", "final_record", "wall_s", "reused")  # fmt: skip
    doc = {k: t[k] for k in keep}
    doc["objective_losses"] = dict(zip(a["objectives"], a["losses"][i].tolist(), strict=True))
    doc["metric"] = float(metric)
    return doc


def _plain(cfg: SwarmConfig) -> dict[str, Any]:
    from ogi_ray.config import to_dict

    return to_dict(cfg)


def _num(x: float) -> str:
    """A bound for the table: beyond 1e4 the data do not bound the rate; say so."""
    return f"{x:.3f}" if x < 1e4 else ">1e4"


def rates_table(body: dict[str, Any]) -> str:
    """The rates, their intervals and the configured ones (and, for a file from
    ``measure``, the law, the per-objective rates and the transfer table), as printed."""
    conf = body.get("configured", {}).get("rates", {})
    ident = body.get("identification", {})
    pct = f"{100 * body['confidence']:.0f} %"
    used = body.get("bootstrap", {}).get("used", "?")
    lines = [f"exchange rates ({body['unit']} = 1), metric {body['metric'].get('name', '?')}, "
             f"{len(body.get('trials', []))} proxies, {used} bootstrap resamples",
             f"{'modality':<10}{'rate':>9}   {pct + ' interval':<22}{'configured':>11}"]  # fmt: skip
    for m in body["modalities"]:
        lo, hi = body["intervals"][m]
        flag = " (floored)" if m in ident.get("floored", []) else ""
        tied = next((g for g in ident.get("tied", []) if m in g), None)
        flag += f" (tied: {'+'.join(tied)})" if tied else ""
        iv = f"[{_num(lo)}, {_num(hi)}]"
        lines.append(f"{m:<10}{body['rates'][m]:>9.3f}   {iv:<22}{conf.get(m, float('nan')):>11.3f}{flag}")
    if "law" in body and "configured" in body:
        law, cl = body["law"], body["configured"]["law"]
        r2, cr2 = (f"{x:.3f}" if x is not None else "n/a" for x in (law["r2"], cl["r2"]))
        lines.append(f"law: E {law['E']:.4f}, alpha {law['alpha']:.3f}, rmse {law['rmse']:.4g}, R2 {r2}; "
                     f"with the configured rates fixed: rmse {cl['rmse']:.4g}, R2 {cr2}")  # fmt: skip
    mods = body["modalities"]
    per = body.get("per_objective", {})
    if per:
        lines.append(f"per-objective rates ({body['unit']} = 1; '-' where {body['unit']} does not move the objective):")
        lines.append(f"{'objective':<10}" + "".join(f"{m:>11}" for m in mods))
        for o, d in per.items():
            lines.append(f"{o:<10}" + "".join(f"{_num(r) if r is not None else '-':>11}" for r in (d["rates"][m] for m in mods)))
        lines.append("transfer (" + body["transfer"]["unit"] + f", at {body['transfer']['at']}):")
        lines.append(f"{'objective':<10}" + "".join(f"{m:>11}" for m in mods))
        for o, d in per.items():
            lines.append(f"{o:<10}" + "".join(f"{d['transfer'][m]:>11.2e}" for m in mods))
    return "\n".join(lines + [f"note: {n}" for n in body.get("notes", [])])

"""``ogi rates propose``: the source shares a swarm predicts best at a token budget.

    RATES.json (trials, per-source token profile, metric, measured rates)
        ──refit: the law per objective (measure.py's fits, same seed)──► mixing law
              M̂(T) = mean over objectives of  E_o + (Σ_g w_og T_g / T_ref)^−α_o
        ──tokens(P, B): group shares P of B effective tokens (measured rates) → raw tokens
              per modality fed to the model, through each source's tokens per row
        ──SLSQP over P on the simplex, inside the range of shares the proxies saw──►
              proposed P; predicted M̂ and gain over the base shares, bootstrap intervals
        ──write_proposal──► MIXTURE.yaml: the base mixture with the proposed shares (in the
              base mixture's own accounting, so it builds as is) and how to confirm it

Each objective saturates in its own effective tokens, so the mixture matters at a fixed
budget even though the target metric's own rates put every mixture of equal T_eff on
one curve: that is the difference between the exchange rate (one aggregate) and a mixing
law (RegMix, Data Mixing Laws). Within a group (sources with the same modalities) the
law cannot tell sources apart, so their base proportions are kept.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from scipy.optimize import minimize

from ogi_ray.config import ConfigError, from_dict, load_yaml
from ogi_ray.corpus.rates_file import RatesFile
from ogi_ray.rates.config import SwarmConfig
from ogi_ray.rates.measure import _fit, base_index, trial_arrays
from ogi_ray.scaling.ratefit import tie_columns

_ROUND = 6  # significant digits of the rates written into the proposed mixture


def _round(x: float) -> float:
    return float(f"{x:.{_ROUND}g}")


class Profile:
    """Tokens per row of each source: raw (what the build counts) and fed (what the model
    gets, within its slots), and the effective tokens per row under a set of rates."""

    def __init__(self, sources: dict[str, Any], mods: list[str]) -> None:
        self.names = list(sources)
        self.mods = mods
        self.raw = np.array([[sources[s]["raw_per_row"][m] for m in mods] for s in self.names])
        self.fed = np.array([[sources[s]["fed_per_row"][m] for m in mods] for s in self.names])

    def eff(self, which: str, rates: dict[str, float]) -> np.ndarray:
        r = np.array([rates[m] for m in self.mods])
        return (self.raw if which == "raw" else self.fed) @ r

    def convert(self, shares: np.ndarray, rates_from: dict[str, float], from_: str,
                rates_to: dict[str, float], to: str) -> np.ndarray:  # fmt: skip
        """Shares of effective tokens in one accounting → the same rows in another."""
        rows = shares / self.eff(from_, rates_from)
        out = rows * self.eff(to, rates_to)
        return out / out.sum()

    def tokens(self, fed_shares: np.ndarray, budget: float, rates: dict[str, float]) -> np.ndarray:
        """Raw tokens per modality fed to the model when ``budget`` fed effective tokens
        are split as ``fed_shares`` over sources."""
        rows = budget * fed_shares / self.eff("fed", rates)
        return rows @ self.fed


def propose(rf: RatesFile, budget: float | None = None) -> dict[str, Any]:
    """The proposal (JSON-ready): group shares, predicted metric and gain with intervals."""
    doc = rf.doc
    cfg = from_dict(SwarmConfig, {**doc["proxy"]["config"], "file": rf.path}, file=rf.path)
    trials = doc["trials"]
    a = trial_arrays(trials, cfg, doc.get("untrained"), doc.get("heldout_weights"))
    mods, tokens = a["modalities"], a["tokens"]
    configured = doc["proxy"]["reference"]["exchange_rates"]
    measured = {m: _round(doc["rates"][m]) for m in doc["modalities"]}
    groups = tie_columns(tokens, mods, prior=configured)
    fits = [_fit(tokens, a["losses"][:, j] / a["normalisers"][j], mods, groups, cfg, cfg.fit.unit)
            for j in range(len(a["objectives"]))]  # fmt: skip
    prof = Profile(doc["sources"], mods)
    group_of = {s: g for g, members in doc["groups"].items() for s in members}
    gnames = list(doc["groups"])
    member = np.array([[group_of[s] == g for s in prof.names] for g in gnames], float)  # (G, S)

    def fed_shares_of(build_shares: dict[str, float]) -> np.ndarray:
        v = np.array([build_shares[s] for s in prof.names])
        return prof.convert(v, configured, "raw", measured, "fed")

    base_fed = fed_shares_of(trials[base_index(trials, cfg)]["shares"])
    within = base_fed / (member.T @ (member @ base_fed))  # share of its group, at base
    seen = np.array([member @ fed_shares_of(t["shares"]) for t in trials])  # (n, G)
    lo = np.maximum(seen.min(axis=0), cfg.propose.min_share)
    hi = seen.max(axis=0)
    if budget is None:
        budget = cfg.propose.budget_tokens or float(tokens[base_index(trials, cfg)] @ [measured[m] for m in mods])
    if not (budget > 0 and math.isfinite(budget)):
        raise ConfigError(rf.path, "--budget", f"must be a finite number of effective tokens > 0, got {budget}")

    def shares_from(p: np.ndarray) -> np.ndarray:
        return within * (member.T @ p)

    def predict(p: np.ndarray) -> float:
        t = prof.tokens(shares_from(p), budget, measured)
        return float(np.mean([f.predict(t, mods)[0] for f in fits]))

    p_base = member @ base_fed
    # From the base shares and the three proxies the law scores best (each clipped inside).
    ranked = sorted((np.clip(s, lo, hi) for s in seen), key=predict)[:3]
    starts = [np.clip(p_base, lo, hi), *ranked]
    best, best_val = p_base, predict(p_base)
    for x0 in starts:
        res = minimize(predict, x0 / x0.sum(), method="SLSQP", bounds=list(zip(lo, hi, strict=True)),
                       constraints=[{"type": "eq", "fun": lambda p: p.sum() - 1.0}], options={"ftol": 1e-12, "maxiter": 500})  # fmt: skip
        if res.success and abs(res.x.sum() - 1) < 1e-6 and np.all(res.x >= lo - 1e-9) and res.fun < best_val:
            best, best_val = res.x, float(res.fun)
    t_base = prof.tokens(shares_from(p_base), budget, measured)
    t_prop = prof.tokens(shares_from(best), budget, measured)
    draws_b = np.mean([f.predict_draws(t_base, mods)[:, 0] for f in fits], axis=0)
    draws_p = np.mean([f.predict_draws(t_prop, mods)[:, 0] for f in fits], axis=0)
    tail = 50.0 * (1.0 - cfg.fit.confidence)

    def interval(v: np.ndarray) -> list[float] | None:
        return [float(np.percentile(v, tail)), float(np.percentile(v, 100 - tail))] if len(v) else None

    # Written in the base mixture's own accounting (its configured rates), so the proposal
    # builds as it is (the corpus caps rates at 10; measured ones may exceed that) and its
    # rows have the proposed composition.
    build = prof.convert(shares_from(best), measured, "fed", configured, "raw")
    rows_per_step = _rows_per_step(doc["proxy"]["base_job"])
    rows = {k: float(budget * (s / prof.eff("fed", measured)).sum()) for k, s in
            (("proposed", shares_from(best)), ("base", shares_from(p_base)))}  # fmt: skip
    return {
        "rates_file": rf.path, "rates_sha256": rf.sha256, "budget_effective_tokens": budget,
        "rates": measured, "build_rates": dict(configured), "metric": doc["metric"]["name"],
        "groups": {g: {"base": float(p_base[i]), "proposed": float(best[i]), "range": [float(lo[i]), float(hi[i])]}
                   for i, g in enumerate(gnames)},
        "sources": {s: {"build_share": float(build[i]), "fed_share": float(shares_from(best)[i])}
                    for i, s in enumerate(prof.names)},
        "predicted": {"base": predict(p_base), "proposed": best_val, "gain": predict(p_base) - best_val,
                      "base_interval": interval(draws_b), "proposed_interval": interval(draws_p),
                      "gain_interval": interval(draws_b - draws_p), "confidence": cfg.fit.confidence},
        "tokens": {"base": dict(zip(mods, t_base.tolist(), strict=True)), "proposed": dict(zip(mods, t_prop.tolist(), strict=True))},
        "confirm": {"rows": rows, "steps": {k: math.ceil(v / rows_per_step) for k, v in rows.items()},
                    "rows_per_step": rows_per_step, "base_mixture": cfg.base_mixture},
    }  # fmt: skip


def _rows_per_step(job: dict[str, Any]) -> int:
    data = job.get("data", {})
    workers = job.get("workers", {})
    return int(data.get("batch_size", 8)) * int(data.get("accum_steps", 2)) * max(1, int(workers.get("num_workers", 2)))


def write_proposal(rf: RatesFile, prop: dict[str, Any], out: str | Path) -> None:
    """The base mixture with the proposed shares and the measured rates, as YAML."""
    base_path = prop["confirm"]["base_mixture"]
    mix = load_yaml(base_path)
    shares = {s: v["build_share"] for s, v in prop["sources"].items()}
    admitted = [s for s in mix["sources"] if s["name"] in shares]
    for s in admitted:
        s["share"] = float(f"{shares[s['name']]:.12g}")
    gap = 1.0 - math.fsum(s["share"] for s in admitted)
    max(admitted, key=lambda s: s["share"])["share"] += gap
    mix["name"] = f"{mix.get('name', 'mixture')}-proposed"
    mix["exchange_rates"] = dict(prop["build_rates"])
    p = prop["predicted"]
    gi = p["gain_interval"]
    header = [
        f"Proposed by `ogi rates propose {rf.path}` (rates file sha256 {rf.sha256}).",
        f"Base mixture: {base_path}. Shares are in the base mixture's own accounting (its exchange_rates,",
        "below), so that the rows built have the proposed composition; the budget and the prediction use",
        "the measured rates: " + ", ".join(f"{m} {r:g}" for m, r in prop["rates"].items()) + ".",
        f"Budget {prop['budget_effective_tokens']:.6g} effective tokens: predicted {prop['metric']} "
        f"{p['base']:.4f} (base shares) -> {p['proposed']:.4f}, gain {p['gain']:.4f}"
        + (f" [{gi[0]:.4f}, {gi[1]:.4f}] ({100 * p['confidence']:.0f} %)" if gi else ""),
        f"Confirm: train the proxy job on this mixture for {prop['confirm']['steps']['proposed']} steps and on the "
        f"base mixture for {prop['confirm']['steps']['base']} (the same effective tokens), score both on the same held-out rows.",
    ]  # fmt: skip
    text = "".join(f"# {line}\n" for line in header) + yaml.safe_dump(mix, sort_keys=False)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(text, encoding="utf-8")


def proposal_table(prop: dict[str, Any]) -> str:
    p = prop["predicted"]
    lines = [f"budget {prop['budget_effective_tokens']:.6g} effective tokens (measured rates); metric {prop['metric']}",
             f"{'group':<28}{'base':>8}{'proposed':>10}   range seen by the swarm"]  # fmt: skip
    for g, d in prop["groups"].items():
        lines.append(f"{g:<28}{d['base']:>8.3f}{d['proposed']:>10.3f}   [{d['range'][0]:.3f}, {d['range'][1]:.3f}]")

    def iv(x: list[float] | None) -> str:
        return f" [{x[0]:.4f}, {x[1]:.4f}]" if x else ""

    lines += [f"predicted: base {p['base']:.4f}{iv(p['base_interval'])}, proposed {p['proposed']:.4f}"
              f"{iv(p['proposed_interval'])}, gain {p['gain']:.4f}{iv(p['gain_interval'])}",
              f"confirm: {prop['confirm']['steps']['proposed']} steps on the proposal vs "
              f"{prop['confirm']['steps']['base']} on the base mixture (same effective tokens)"]  # fmt: skip
    return "\n".join(lines)

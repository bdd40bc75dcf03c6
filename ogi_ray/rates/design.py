"""The swarm's design: which mixtures the proxies train on (pure; no Ray, no torch).

    base mixture (admitted sources, their shares, their modalities)
        ──source_groups──► groups: sources with the same modalities (vary: groups)
        ──sample_design──► ProxySpec per proxy: group multipliers spread^u (u in [-1, 1]
                           from a seeded Latin hypercube), renormalised source shares,
                           a step count log-uniform in [min, max]
        ──derived_mixture──► the base mixture's mapping with those shares (and the
                             swarm's held-out fraction and tokenizer reuse): one YAML each

Why this design (docs/rates.md): a rate is identified by how the metric moves when one
modality's tokens change while others do not. Modalities only reach the model through
sources, so the directions a swarm can move are the source groups; a Latin hypercube
gives every group's multiplier n distinct strata over [1/spread, spread] (each rate sees
the whole range, with no two proxies alike), unlike random Dirichlet draws (RegMix's
choice) which at n = 16 often leave a group barely varied. The step dimension varies the
total, which pins the law's curvature.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.stats import qmc

from ogi_ray.corpus.config import MODALITIES
from ogi_ray.rates.config import DesignConfig


@dataclass(frozen=True)
class ProxySpec:
    index: int
    name: str  # "proxy-00" …: its mixture file, corpus folder and run name
    steps: int
    shares: dict[str, float]  # admitted source -> share of effective tokens (sum 1)
    multipliers: dict[str, float]  # group -> factor applied to its base share


def group_key(modalities: list[str]) -> str:
    """A group's name: its modalities in canonical order, joined by '+'."""
    return "+".join(m for m in MODALITIES if m in modalities)


def source_groups(sources: list[dict[str, Any]], vary: str) -> dict[str, list[str]]:
    """Group name -> admitted source names (mixture order). ``sources``: name, modalities."""
    groups: dict[str, list[str]] = {}
    for s in sources:
        key = group_key(s["modalities"]) if vary == "groups" else s["name"]
        groups.setdefault(key, []).append(s["name"])
    return groups


def sample_design(
    base_shares: dict[str, float], groups: dict[str, list[str]], n: int, design: DesignConfig, seed: int
) -> list[ProxySpec]:
    """``n`` proxies: the base mixture first (if ``include_base``), then a Latin hypercube."""
    names = list(groups)
    s_lo, s_hi = design.steps
    vary_steps = s_hi > s_lo
    specs: list[ProxySpec] = []
    if design.include_base:
        specs.append(_spec(0, base_shares, groups, dict.fromkeys(names, 1.0), s_hi))
    k = n - len(specs)
    if k > 0:
        dims = len(names) + (1 if vary_steps else 0)
        u = qmc.LatinHypercube(d=dims, rng=seed, optimization="random-cd").random(k)
        for row in u:
            mult = {g: design.spread ** (2.0 * row[j] - 1.0) for j, g in enumerate(names)}
            steps = s_hi
            if vary_steps:
                steps = int(round(math.exp(math.log(s_lo) + row[-1] * (math.log(s_hi) - math.log(s_lo)))))
            specs.append(_spec(len(specs), base_shares, groups, mult, steps))
    return specs


def _spec(
    index: int, base: dict[str, float], groups: dict[str, list[str]], mult: dict[str, float], steps: int
) -> ProxySpec:
    raw = {s: base[s] * mult[g] for g, members in groups.items() for s in members}
    total = math.fsum(raw.values())
    shares = {s: float(raw[s] / total) for s in base}  # base order
    mult = {g: float(v) for g, v in mult.items()}
    return ProxySpec(index=index, name=f"proxy-{index:02d}", steps=int(steps), shares=shares, multipliers=mult)


def derived_mixture(
    base: dict[str, Any], spec: ProxySpec, *, heldout_fraction: float | None, tokenizer: str | None
) -> dict[str, Any]:
    """The base mixture mapping with the proxy's shares (12 significant digits) for the
    admitted sources; excluded sources keep their entries (the gate excludes them again).
    ``tokenizer``: a built corpus whose tokenizer.json every proxy reuses (one vocabulary)."""
    out = copy.deepcopy(base)
    out["name"] = f"{base.get('name', 'mixture')}-{spec.name}"
    for src in out["sources"]:
        if src["name"] in spec.shares:
            src["share"] = float(f"{spec.shares[src['name']]:.12g}")
    if heldout_fraction is not None:
        out["heldout_fraction"] = heldout_fraction
    if tokenizer:
        out.setdefault("text_tokenizer", {})["reuse"] = tokenizer
    _fix_rounding(out, spec)
    return out


def _fix_rounding(out: dict[str, Any], spec: ProxySpec) -> None:
    """Rounded shares may miss 1 by ~1e-12; put the difference on the largest share so the
    corpus build's sum check (1e-6) never depends on rounding."""
    admitted = [s for s in out["sources"] if s["name"] in spec.shares]
    gap = 1.0 - math.fsum(s["share"] for s in admitted)
    biggest = max(admitted, key=lambda s: s["share"])
    biggest["share"] = float(np.float64(biggest["share"] + gap))

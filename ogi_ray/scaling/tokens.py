"""Modality-aware token budgets: turn D (effective tokens) into raw tokens per modality/source.

D in the law counts *effective* tokens (design decision 1):

    effective = sum over modalities of raw tokens x exchange rate

so a plan of D effective tokens needs, for source s with share w_s of the effective tokens,

    raw_{s,m} = D * w_s * (raw tokens of modality m per effective token of source s)

The last factor comes from one of two inputs, told apart by suffix:

* ``.json``: a corpus manifest (``exchange_rates``; ``sources`` with ``name``, ``target_share``,
  ``effective_tokens``, ``tokens_by_modality``). The source's *realised* proportions are used:
  raw_m / sum_k(raw_k x rate_k).
* ``.yaml`` / ``.yml``: a mixture (``exchange_rates``; ``sources`` with ``name``, ``share``,
  ``modalities``). Nothing is known about proportions, so each source's effective tokens are
  split *equally* among its listed modalities; the output says so.

The rates are the ones the corpus build uses: a mixture's ``exchange_rates``, or the
measured rates of the file its ``exchange_rates_file`` pins (``rates.mixture_rates``);
``rates_file=`` (``ogi plan --rates``) replaces either with a rates file's. The budget
names where its rates came from (``exchange_rates_source``).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ogi_ray.config import load_yaml
from ogi_ray.corpus.rates_file import load_rates_file, mixture_rates
from ogi_ray.scaling.errors import ScalingInputError

MODALITIES = ("text", "image", "video", "audio", "proprio", "action")
# A manifest's effective_tokens may be rounded; beyond this we say it disagrees.
_EFFECTIVE_MISMATCH = 1e-3


@dataclass(frozen=True)
class SourceMix:
    name: str
    share: float  # of effective tokens, normalised so that shares sum to 1
    raw_per_effective: dict[str, float]  # modality -> raw tokens per effective token


@dataclass(frozen=True)
class Mixture:
    path: str
    kind: str  # "manifest" or "mixture"
    method: str  # how raw_per_effective was obtained, in words
    exchange_rates: dict[str, float]
    sources: list[SourceMix]
    notes: list[str] = field(default_factory=list)
    rates_source: dict[str, Any] = field(default_factory=lambda: {"kind": "configured"})


def _number(value: Any, path: Path, where: str, *, positive: bool = False) -> float:
    # YAML reads 1e9 (no dot) as a string; accept numeric strings, reject booleans.
    if isinstance(value, bool):
        raise ScalingInputError(path, where, f"expected a number, got {value!r}")
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise ScalingInputError(path, where, f"expected a number, got {value!r}") from None
    if not math.isfinite(x) or x < 0 or (positive and x == 0):
        bound = "> 0" if positive else ">= 0"
        raise ScalingInputError(path, where, f"must be a finite number {bound}, got {value!r}")
    return x


def _modality(name: Any, path: Path, where: str) -> str:
    if name not in MODALITIES:
        raise ScalingInputError(
            path, where, f"unknown modality {name!r} (known: {', '.join(MODALITIES)})"
        )
    return name


def _rates(data: dict[str, Any], path: Path) -> dict[str, float]:
    raw = data.get("exchange_rates")
    if raw is None:
        raise ScalingInputError(path, "exchange_rates", "required key is missing")
    if not isinstance(raw, dict) or not raw:
        raise ScalingInputError(
            path, "exchange_rates", "must be a non-empty mapping modality -> rate"
        )
    return {
        _modality(k, path, f"exchange_rates.{k}"): _number(v, path, f"exchange_rates.{k}")
        for k, v in raw.items()
    }


def _sources(data: dict[str, Any], path: Path) -> list[dict[str, Any]]:
    sources = data.get("sources")
    if sources is None:
        raise ScalingInputError(path, "sources", "required key is missing")
    if not isinstance(sources, list) or not sources:
        raise ScalingInputError(path, "sources", "must be a non-empty list")
    for i, s in enumerate(sources):
        if not isinstance(s, dict):
            raise ScalingInputError(path, f"sources[{i}]", "expected a mapping")
        if not isinstance(s.get("name"), str) or not s["name"]:
            raise ScalingInputError(path, f"sources[{i}].name", "required non-empty string")
    return sources


def _require(s: dict[str, Any], key: str, path: Path, i: int) -> Any:
    if key not in s:
        raise ScalingInputError(path, f"sources[{i}].{key}", "required key is missing")
    return s[key]


def _from_manifest(data: dict[str, Any], path: Path, rates: dict[str, float] | None) -> Mixture:
    rates = rates or _rates(data, path)
    notes: list[str] = []
    out: list[tuple[str, float, dict[str, float]]] = []
    for i, s in enumerate(_sources(data, path)):
        share = _number(_require(s, "target_share", path, i), path, f"sources[{i}].target_share")
        stated = _number(
            _require(s, "effective_tokens", path, i), path, f"sources[{i}].effective_tokens"
        )
        counts = _require(s, "tokens_by_modality", path, i)
        if not isinstance(counts, dict):
            raise ScalingInputError(path, f"sources[{i}].tokens_by_modality", "expected a mapping")
        raw: dict[str, float] = {}
        for m, v in counts.items():
            where = f"sources[{i}].tokens_by_modality.{m}"
            _modality(m, path, where)
            if m not in rates:
                raise ScalingInputError(path, where, "no exchange rate for this modality")
            raw[m] = _number(v, path, where)
        effective = sum(raw[m] * rates[m] for m in raw)
        if share > 0 and effective <= 0:
            raise ScalingInputError(
                path,
                f"sources[{i}].tokens_by_modality",
                f"source {s['name']!r} has share {share} but no effective tokens to take proportions from",
            )
        if effective > 0 and abs(stated - effective) > _EFFECTIVE_MISMATCH * effective:
            notes.append(
                f"{s['name']}: effective_tokens {stated:.6g} != sum(raw x rate) "
                f"{effective:.6g}; used the latter"
            )
        per_eff = {m: r / effective for m, r in raw.items()} if effective > 0 else {}
        out.append((str(s["name"]), share, per_eff))
    method = "realised modality proportions of each source (manifest tokens_by_modality)"
    return _finish(path, "manifest", method, rates, out, notes, "target_share")


def _from_mixture(data: dict[str, Any], path: Path, rates: dict[str, float] | None) -> Mixture:
    rates = rates or _rates(data, path)
    out: list[tuple[str, float, dict[str, float]]] = []
    for i, s in enumerate(_sources(data, path)):
        share = _number(_require(s, "share", path, i), path, f"sources[{i}].share")
        mods = _require(s, "modalities", path, i)
        if not isinstance(mods, list) or not mods:
            raise ScalingInputError(
                path, f"sources[{i}].modalities", "must be a non-empty list of modality names"
            )
        mods = [_modality(m, path, f"sources[{i}].modalities[{j}]") for j, m in enumerate(mods)]
        mods = list(dict.fromkeys(mods))  # a repeated name would double its share
        per_eff: dict[str, float] = {}
        for m in mods:
            where = f"sources[{i}].modalities"
            if m not in rates:
                raise ScalingInputError(path, where, f"no exchange rate for modality {m!r}")
            if rates[m] == 0:
                raise ScalingInputError(
                    path,
                    where,
                    f"modality {m!r} has exchange rate 0 and cannot carry an equal "
                    "share of effective tokens",
                )
            per_eff[m] = 1.0 / (len(mods) * rates[m])
        out.append((str(s["name"]), share, per_eff))
    method = (
        "equal split: each source's effective tokens are divided equally among its listed "
        "modalities (the mixture file gives no proportions; pass a corpus manifest for "
        "realised ones)"
    )
    return _finish(path, "mixture", method, rates, out, [], "share")


def _finish(
    path: Path,
    kind: str,
    method: str,
    rates: dict[str, float],
    rows: list[tuple[str, float, dict[str, float]]],
    notes: list[str],
    share_key: str,
) -> Mixture:
    names = [r[0] for r in rows]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ScalingInputError(path, "sources", f"duplicate source names: {', '.join(dupes)}")
    total = sum(r[1] for r in rows)
    if total <= 0:
        raise ScalingInputError(path, f"sources[].{share_key}", "shares sum to 0")
    if abs(total - 1.0) > 1e-6:
        notes.append(f"{share_key} values sum to {total:.6g}; normalised to 1")
    sources = [SourceMix(name=n, share=w / total, raw_per_effective=p) for n, w, p in rows]
    return Mixture(
        path=str(path), kind=kind, method=method, exchange_rates=rates, sources=sources, notes=notes
    )


def _read(path: Path) -> dict[str, Any]:
    if path.suffix == ".json":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except OSError as e:
            raise ScalingInputError(path, "", f"cannot read file ({e.strerror})") from e
        except json.JSONDecodeError as e:
            raise ScalingInputError(path, "", f"malformed JSON at line {e.lineno}: {e.msg}") from e
        if not isinstance(data, dict):
            raise ScalingInputError(path, "", "top level must be an object")
        return data
    if path.suffix in (".yaml", ".yml"):
        return load_yaml(path)
    raise ScalingInputError(path, "", "mixture must be a manifest .json or a mixture .yaml/.yml")


def _used_modalities(data: dict[str, Any], path: Path) -> list[str]:
    key = "tokens_by_modality" if path.suffix == ".json" else "modalities"
    out: list[str] = []
    for s in _sources(data, path):
        names = s.get(key) or []
        out += [m for m in names if m not in out]
    return out


def load_mixture(path: str | Path, rates_file: str | Path | None = None) -> Mixture:
    """Read a corpus manifest (.json) or a mixture (.yaml/.yml); ``rates_file``: use the
    measured rates of that rates file instead of the ones the file names."""
    path = Path(path)
    data = _read(path)
    if rates_file is not None:
        rf = load_rates_file(rates_file, require=_used_modalities(data, path))
        rates: dict[str, float] | None = dict(rf.rates)
        source = {"kind": "measured", "file": str(rates_file), "sha256": rf.sha256, "name": rf.name}
    elif path.suffix == ".json":
        rates, source = None, data.get("exchange_rates_source") or {"kind": "configured"}
    else:  # a mixture's configured rates (validated below) or its pinned rates file's
        measured, source = mixture_rates(path, data)
        rates = measured if source["kind"] == "measured" else None
    build = _from_manifest if path.suffix == ".json" else _from_mixture
    mix = build(data, path, rates)
    return replace(mix, rates_source=dict(source))


def token_budget(mixture: Mixture, effective_tokens: float) -> dict[str, Any]:
    """Raw tokens per modality (total and per source) that ``effective_tokens`` requires."""
    by_modality: dict[str, float] = {}
    by_source: dict[str, dict[str, Any]] = {}
    for s in mixture.sources:
        eff = effective_tokens * s.share
        raw = {m: eff * k for m, k in s.raw_per_effective.items()}
        by_source[s.name] = {"share": s.share, "effective_tokens": eff, "raw_by_modality": raw}
        for m, v in raw.items():
            by_modality[m] = by_modality.get(m, 0.0) + v
    return {
        "source_file": mixture.path,
        "kind": mixture.kind,
        "method": mixture.method,
        "exchange_rates": dict(mixture.exchange_rates),
        "exchange_rates_source": dict(mixture.rates_source),
        "effective_tokens": effective_tokens,
        "raw_tokens_by_modality": {m: by_modality[m] for m in MODALITIES if m in by_modality},
        "by_source": by_source,
        "notes": list(mixture.notes),
    }

"""The rates file: measured exchange rates, their intervals, and how they were measured.

    ogi rates measure ──► seal_rates(body) ──► RATES.json  (body + "sha256" of its canonical JSON)
    RATES.json ──load_rates_file(path, require=..., expected_sha256=...)──► RatesFile
    mixture {exchange_rates: {...}}                     ──mixture_rates──► rates, {"kind": "configured"}
    mixture {exchange_rates_file: {path, sha256}}       ──mixture_rates──► rates, {"kind": "measured",
                                                                                  "file", "sha256", "name"}

``mixture_rates`` is the one place that decides which rates a mixture uses: `ogi plan
--mixture` and the corpus build (``corpus.config.load_mixture``) call it; the manifest records the
second value as ``exchange_rates_source``, so a checkpoint's lineage names the rates
file its data budget used, or says the rates were configured by hand.

The hash is SHA-256 of the canonical JSON (``ogi_ray.canonical``, RFC 8785 subset) of
every top-level key except ``sha256``, as for the corpus manifest. Every error is a
:class:`ConfigError` naming the file and the field. Pure Python: no torch, no ray.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ogi_ray.canonical import canonical_json, hash_canonical
from ogi_ray.config import ConfigError, from_dict
from ogi_ray.corpus.config import MODALITIES

SCHEMA = "ogi-rates/1"
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class RatesFile:
    """A loaded, verified rates file (``doc`` is the whole JSON document)."""

    path: str
    sha256: str
    name: str
    unit: str
    rates: dict[str, float]
    intervals: dict[str, tuple[float, float]]
    confidence: float
    metric: dict[str, Any]
    doc: dict[str, Any]


@dataclass(kw_only=True)
class RatesRef:
    """A mixture's ``exchange_rates_file``: the file (relative to the mixture) and its hash."""

    path: str
    sha256: str

    def validate(self) -> None:
        if not self.path:
            raise ValueError("path: must name the rates file (relative to the mixture file)")
        if not _HEX64.match(self.sha256):
            raise ValueError(f"sha256: must be 64 lowercase hex digits, got {self.sha256!r}")


def rates_hash(doc: dict[str, Any]) -> str:
    """SHA-256 of the canonical JSON of every key but ``sha256``."""
    return hash_canonical({k: v for k, v in doc.items() if k != "sha256"})


def seal_rates(body: dict[str, Any]) -> dict[str, Any]:
    """``body`` with its ``sha256`` added (``schema`` set to the current one)."""
    body = {**body, "schema": SCHEMA}
    body.pop("sha256", None)
    return {**body, "sha256": rates_hash(body)}


def write_rates_file(path: str | Path, body: dict[str, Any]) -> dict[str, Any]:
    """Seal and write ``body`` atomically (``storage.write_file``); returns the sealed document."""
    doc = seal_rates(body)
    canonical_json(doc)  # fails before writing on NaN/inf or a non-JSON value
    from ogi_ray.storage import write_file

    write_file(path, (json.dumps(doc, indent=2, ensure_ascii=False) + "\n").encode("utf-8"))
    return doc


def _finite(value: Any, path: Path, where: str, *, positive: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(path, where, f"expected a number, got {value!r}")
    x = float(value)
    if not math.isfinite(x):
        raise ConfigError(path, where, f"must be finite, got {value!r}")
    if x < 0 or (positive and x == 0):
        raise ConfigError(path, where, f"must be {'> 0' if positive else '>= 0'}, got {value!r}")
    return x


def _mapping(doc: dict[str, Any], key: str, path: Path) -> dict[str, Any]:
    value = doc.get(key)
    if not isinstance(value, dict):
        raise ConfigError(path, key, "required mapping is missing" if value is None else "must be a mapping")
    return value


def load_rates_file(
    path: str | Path, *, require: list[str] | tuple[str, ...] = (), expected_sha256: str | None = None
) -> RatesFile:
    """Read and verify a rates file.

    Rejected, naming the file and the field: unreadable or non-JSON files, another schema,
    a ``sha256`` that does not match the content (or ``expected_sha256``), a modality
    listed in ``modalities`` without a rate or interval, an unknown modality, a rate that
    is negative, zero or not finite, an interval that is not ``[low, high]`` with
    0 <= low <= high, a unit whose rate is not 1, and a modality in ``require`` (the
    modalities a mixture's sources use) that the file does not measure.
    """
    path = Path(path)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise ConfigError(path, "", f"cannot read rates file ({e.strerror})") from e
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(path, "", f"not a JSON rates file ({e})") from e
    if not isinstance(doc, dict):
        raise ConfigError(path, "", "top level must be an object")
    if doc.get("schema") != SCHEMA:
        raise ConfigError(path, "schema", f"expected {SCHEMA!r}, got {doc.get('schema')!r}")
    mods = doc.get("modalities")
    if not isinstance(mods, list) or not mods:
        raise ConfigError(path, "modalities", "required: a non-empty list of modality names")
    for i, m in enumerate(mods):
        if m not in MODALITIES:
            raise ConfigError(path, f"modalities[{i}]", f"unknown modality {m!r} (known: {', '.join(MODALITIES)})")
    raw_rates = _mapping(doc, "rates", path)
    raw_iv = _mapping(doc, "intervals", path)
    for m in raw_rates:
        if m not in mods:
            raise ConfigError(path, f"rates.{m}", f"not one of the file's modalities {mods}")
    rates, intervals = {}, {}
    for m in mods:
        if m not in raw_rates:
            raise ConfigError(path, f"rates.{m}", "missing modality: every modality in 'modalities' needs a rate")
        rates[m] = _finite(raw_rates[m], path, f"rates.{m}", positive=True)
        iv = raw_iv.get(m)
        if not (isinstance(iv, list) and len(iv) == 2):
            raise ConfigError(path, f"intervals.{m}", "missing modality: needs [low, high]" if iv is None else "must be [low, high]")
        lo = _finite(iv[0], path, f"intervals.{m}[0]", positive=False)
        hi = _finite(iv[1], path, f"intervals.{m}[1]", positive=False)
        if lo > hi:
            raise ConfigError(path, f"intervals.{m}", f"low {lo} > high {hi}")
        intervals[m] = (lo, hi)
    unit = doc.get("unit")
    if unit not in rates:
        raise ConfigError(path, "unit", f"must be one of the file's modalities, got {unit!r}")
    if rates[unit] != 1.0:
        raise ConfigError(path, f"rates.{unit}", f"the unit's rate must be 1, got {rates[unit]}")
    for m in require:
        if m not in rates:
            raise ConfigError(path, f"rates.{m}", f"missing modality: the mixture's sources use {m!r} and this file does not measure it")
    confidence = _finite(doc.get("confidence", 0.95), path, "confidence", positive=True)
    metric = doc.get("metric")
    if not isinstance(metric, dict):
        raise ConfigError(path, "metric", "required: the metric's definition")
    # The hash last: a bad value is reported at its field, an edit that keeps every value
    # valid by the hash.
    stated = doc.get("sha256")
    if not isinstance(stated, str) or not _HEX64.match(stated):
        raise ConfigError(path, "sha256", "required: 64 lowercase hex digits")
    try:
        actual = rates_hash(doc)
    except (TypeError, ValueError) as e:
        raise ConfigError(path, "", f"cannot hash the content ({e})") from e
    if actual != stated:
        raise ConfigError(path, "sha256", f"does not match the content (recomputed {actual}): the file changed after it was written")
    if expected_sha256 is not None and stated != expected_sha256:
        raise ConfigError(path, "sha256", f"is {stated}, expected {expected_sha256}")
    return RatesFile(path=str(path), sha256=stated, name=str(doc.get("name", "")), unit=str(unit),
                     rates=rates, intervals=intervals, confidence=confidence, metric=metric, doc=doc)  # fmt: skip


def _source_modalities(data: dict[str, Any]) -> list[str]:
    out: list[str] = []
    for s in data.get("sources") or []:
        if isinstance(s, dict):
            out += [m for m in s.get("modalities") or [] if isinstance(m, str) and m not in out]
    return out


def mixture_rates(
    mixture_path: str | Path, data: dict[str, Any]
) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    """The exchange rates a mixture mapping uses, and where they come from.

    ``exchange_rates: {modality: rate}`` → (those rates, {"kind": "configured"}); the
    caller validates them as it always has. ``exchange_rates_file: {path, sha256}`` →
    the rates of that file (``path`` relative to the mixture file; verified, and its hash
    must equal the pinned one) and {"kind": "measured", "file": path as written,
    "sha256": hash, "name": the file's name}. Both keys at once is an error.
    """
    ref = data.get("exchange_rates_file")
    if ref is None:
        return data.get("exchange_rates"), {"kind": "configured"}
    if data.get("exchange_rates") is not None:
        raise ConfigError(mixture_path, "exchange_rates_file", "give exchange_rates or exchange_rates_file, not both")
    pinned = from_dict(RatesRef, ref, file=mixture_path, prefix="exchange_rates_file")
    file = Path(mixture_path).parent / pinned.path
    rf = load_rates_file(file, require=_source_modalities(data))
    if rf.sha256 != pinned.sha256:
        raise ConfigError(
            mixture_path, "exchange_rates_file.sha256",
            f"pins {pinned.sha256} but {file} has {rf.sha256}: re-pin it after re-measuring",
        )  # fmt: skip
    return dict(rf.rates), {"kind": "measured", "file": pinned.path, "sha256": rf.sha256, "name": rf.name}

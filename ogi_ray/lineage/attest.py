"""Eval attestations: what the eval suite measured on a checkpoint, committed beside the
chain of checkpoint records without ever delaying one (docs/lineage.md §4).

An attestation is a JSON object, content-addressed like a record, and chained to the
attestation before it (a second chain, in the order the evals finished):

    {"schema": "ogi-attest/1", "run": str, "parent": hex | "", "record": hex, "step": int,
     "threads": int, "environment": {str: str},
     "benchmarks": [{"name", "version", "data_sha256", "config": {...}}, ...],
     "scores": {str: decimal str ("%.6f")}, "skipped": {str: str}}

    attestation_hash = SHA-256(canonical_json(attestation))

``record`` is the hash of the checkpoint record whose weights were evaluated (its
``step`` repeated for readers); ``benchmarks`` say exactly which data and settings ran
(``evals/suite.py`` re-runs them from this alone); ``environment`` names the torch
build and CPU the bits belong to. Storage, under the lineage folder:
``attestations/<hash>.json`` (canonical bytes, written first) and ``ATTEST_HEAD`` (the
newest hash + "\\n", written last). Pure Python: no torch, no Ray.
"""

from __future__ import annotations

import copy
import json
from typing import Any

from ogi_ray.canonical import canonical_json, hash_canonical
from ogi_ray.lineage.record import DECIMAL, HEX64, RecordError, _store
from ogi_ray.storage import Store

SCHEMA = "ogi-attest/1"
FOLDER = "attestations"
HEAD = "ATTEST_HEAD"
FIELDS = {"schema": str, "run": str, "parent": str, "record": str, "step": int, "threads": int,
          "environment": dict, "benchmarks": list, "scores": dict, "skipped": dict}  # fmt: skip
DESCRIPTOR = {"name": str, "version": str, "data_sha256": str, "config": dict}


def check_attestation(att: Any, where: str = "attestation") -> None:
    """Schema check: exact keys and types, hex digests, "%.6f" scores, descriptors."""
    if not isinstance(att, dict):
        raise RecordError(f"{where}: an attestation is a JSON object, got {type(att).__name__}")
    if att.get("schema") != SCHEMA:
        raise RecordError(f"{where}: schema {att.get('schema')!r} is not {SCHEMA!r}")
    missing, extra = sorted(set(FIELDS) - set(att)), sorted(set(att) - set(FIELDS))
    if missing or extra:
        raise RecordError(f"{where}: missing fields {missing}, unknown fields {extra}")
    for key, tp in FIELDS.items():
        if not isinstance(att[key], tp) or isinstance(att[key], bool):
            raise RecordError(f"{where}: field {key!r} must be {tp.__name__}, got {att[key]!r}")
    if not HEX64.fullmatch(att["record"]):
        raise RecordError(f"{where}: field 'record' must be 64 lowercase hex digits")
    if att["parent"] and not HEX64.fullmatch(att["parent"]):
        raise RecordError(f"{where}: field 'parent' must be empty or 64 lowercase hex digits")
    for k, v in att["scores"].items():
        if not isinstance(v, str) or not DECIMAL.fullmatch(v):
            raise RecordError(f"{where}: scores.{k} must be a decimal string with six decimals (\"%.6f\"), got {v!r}")
    for k, v in {**att["environment"], **att["skipped"]}.items():
        if not isinstance(v, str):
            raise RecordError(f"{where}: {k}: must be a string")
    for i, d in enumerate(att["benchmarks"]):
        if not isinstance(d, dict) or set(d) != set(DESCRIPTOR):
            raise RecordError(f"{where}: benchmarks[{i}] must have exactly the keys {sorted(DESCRIPTOR)}")
        for key, tp in DESCRIPTOR.items():
            if not isinstance(d[key], tp):
                raise RecordError(f"{where}: benchmarks[{i}].{key} must be {tp.__name__}")
        if not HEX64.fullmatch(d["data_sha256"]):
            raise RecordError(f"{where}: benchmarks[{i}].data_sha256 must be 64 lowercase hex digits")


def make_attestation(*, run: str, parent: str, record: str, step: int, threads: int,
                     result: dict[str, Any], env: dict[str, str]) -> dict[str, Any]:  # fmt: skip
    """A checked attestation from a suite result (``SuiteResult.to_json()``)."""
    att = {"schema": SCHEMA, "run": run, "parent": parent, "record": record, "step": int(step),
           "threads": int(threads), "environment": dict(env),
           "benchmarks": copy.deepcopy(result["benchmarks"]), "scores": dict(result["scores"]),
           "skipped": dict(result.get("skipped", {}))}  # fmt: skip
    check_attestation(att)
    return att


def attestation_hash(att: dict[str, Any]) -> str:
    return hash_canonical(att)


def write_attestation(lineage_dir: str | Store, att: dict[str, Any]) -> str:
    h = attestation_hash(att)
    _store(lineage_dir).write_atomic(f"{FOLDER}/{h}.json", canonical_json(att))
    return h


def read_attestation(lineage_dir: str | Store, h: str) -> dict[str, Any]:
    store = _store(lineage_dir)
    rel = f"{FOLDER}/{h}.json"
    try:
        raw = store.read_bytes(rel)
    except FileNotFoundError as e:
        raise RecordError(f"{store.where(rel)}: attestation {h} is missing") from e
    try:
        att = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RecordError(f"{store.where(rel)}: not valid JSON ({e})") from e
    check_attestation(att, store.where(rel))
    if raw != canonical_json(att):
        raise RecordError(f"{store.where(rel)}: not in canonical form (the bytes were edited)")
    if attestation_hash(att) != h:
        raise RecordError(f"{store.where(rel)}: content hashes to {attestation_hash(att)}, not its name")
    return att


def read_attest_head(lineage_dir: str | Store) -> str:
    store = _store(lineage_dir)
    return store.read_bytes(HEAD).decode("utf-8", "replace").strip() if store.is_file(HEAD) else ""


def write_attest_head(lineage_dir: str | Store, h: str) -> None:
    _store(lineage_dir).write_atomic(HEAD, (h + "\n").encode())


def attestation_chain(lineage_dir: str | Store) -> list[tuple[str, dict[str, Any]]]:
    """(hash, attestation) from the first to ATTEST_HEAD; RecordError on a broken link
    or a loop."""
    out, seen = [], set()
    h = read_attest_head(lineage_dir)
    while h:
        if h in seen:
            raise RecordError(f"{_store(lineage_dir).where(HEAD)}: the attestation chain loops at {h}")
        seen.add(h)
        att = read_attestation(lineage_dir, h)
        out.append((h, att))
        h = att["parent"]
    return out[::-1]


def unattested(lineage_dir: str | Store) -> list[tuple[int, str]]:
    """(step, record hash) of the chain's records that no attestation names, by step."""
    from ogi_ray.lineage.record import read_head, read_record

    attested = {att["record"] for _, att in attestation_chain(lineage_dir)}
    out, h = [], read_head(lineage_dir)
    while h:
        rec = read_record(lineage_dir, h)
        if h not in attested:
            out.append((int(rec["step"]), h))
        h = rec["parent"]
    return sorted(out)

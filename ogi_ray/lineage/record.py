"""Lineage records: one per checkpoint, content-addressed, chained by parent hash.

A record is a JSON object of strings and integers only (floats such as eval scores are
written as decimal strings), so its canonical JSON is the same in every language:

    {"schema": 1, "run": str, "step": int, "parent": hex | "", "checkpoint": str,
     "weights_root": hex, "weights_hash": "sha256-merkle-v1", "weights_file": str,
     "manifest_hash": hex, "config_hash": hex, "data_cursor": {str: int},
     "rng": hex, "eval": {str: decimal str}}

    record_hash = SHA-256(canonical_json(record))

Files live in ``<run>/lineage/records/<record_hash>.json``; ``<run>/lineage/HEAD`` holds
the newest hash. Every write goes to a temporary name first, then an atomic rename.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ogi_ray.canonical import canonical_json, hash_canonical

SCHEMA = 1
FIELDS = {
    "schema": int, "run": str, "step": int, "parent": str, "checkpoint": str,
    "weights_root": str, "weights_hash": str, "weights_file": str, "manifest_hash": str,
    "config_hash": str, "data_cursor": dict, "rng": str, "eval": dict,
}  # fmt: skip


class RecordError(ValueError):
    pass


def check_record(rec: dict[str, Any], where: str = "record") -> None:
    """Schema check: exact key set, types, and only strings/ints inside the maps."""
    missing = sorted(set(FIELDS) - set(rec))
    extra = sorted(set(rec) - set(FIELDS))
    if missing or extra:
        raise RecordError(f"{where}: missing fields {missing}, unknown fields {extra}")
    for key, tp in FIELDS.items():
        v = rec[key]
        if not isinstance(v, tp) or isinstance(v, bool):
            raise RecordError(f"{where}: field {key!r} must be {tp.__name__}, got {v!r}")
    for k, v in rec["data_cursor"].items():
        if not isinstance(v, int) or isinstance(v, bool):
            raise RecordError(f"{where}: data_cursor.{k} must be an integer")
    for k, v in rec["eval"].items():
        if not isinstance(v, str):
            raise RecordError(f"{where}: eval.{k} must be a decimal string")


def make_record(**fields: Any) -> dict[str, Any]:
    rec = {"schema": SCHEMA, **fields}
    rec["eval"] = {k: v if isinstance(v, str) else f"{float(v):.6f}" for k, v in rec["eval"].items()}
    check_record(rec)
    return rec


def record_hash(rec: dict[str, Any]) -> str:
    return hash_canonical(rec)


def atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_record(lineage_dir: Path, rec: dict[str, Any]) -> str:
    """Store ``rec`` under its hash (canonical bytes on disk); returns the hash."""
    h = record_hash(rec)
    atomic_write(Path(lineage_dir) / "records" / f"{h}.json", canonical_json(rec))
    return h


def read_record(lineage_dir: Path, h: str) -> dict[str, Any]:
    path = Path(lineage_dir) / "records" / f"{h}.json"
    if not path.is_file():
        raise RecordError(f"{path}: record {h} is missing")
    try:
        rec = json.loads(path.read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RecordError(f"{path}: not valid JSON ({e})") from e
    check_record(rec, str(path))
    return rec


def read_head(lineage_dir: Path) -> str:
    path = Path(lineage_dir) / "HEAD"
    return path.read_text().strip() if path.is_file() else ""


def write_head(lineage_dir: Path, h: str) -> None:
    atomic_write(Path(lineage_dir) / "HEAD", (h + "\n").encode())

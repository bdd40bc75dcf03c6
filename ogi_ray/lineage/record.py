"""Lineage records: one per checkpoint, content-addressed, chained by parent hash.

A record is a JSON object of strings and integers only (floats such as eval scores are
written as decimal strings), so its canonical JSON is the same in every language:

    {"schema": 2, "run": str, "step": int, "parent": hex | "", "checkpoint": str,
     "weights_root": hex, "weights_hash": "sha256-merkle-v1", "weights_file": str,
     "manifest_hash": hex, "config_hash": hex, "data_cursor": {str: int},
     "rng": hex, "eval": {str: decimal str}, "files": {relpath: sha256 hex}}

    record_hash = SHA-256(canonical_json(record))

``files`` (schema 2) covers every file of the checkpoint folder except ``lineage.json``
(which holds the record itself); schema 1 records (no ``files``) are still read.

Storage (store.Store: a local folder or any pyarrow.fs URI), under the lineage folder:
``records/<record_hash>.json`` (the canonical bytes) and ``HEAD`` (newest hash + "\\n").
Every write goes to a temporary name first, then moves onto the final name.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

from ogi_ray.canonical import canonical_json, hash_canonical
from ogi_ray.lineage.store import Store

SCHEMA = 2
MARKER = "lineage.json"  # the record's copy inside its checkpoint folder (not in `files`)
FIELDS_V1 = {
    "schema": int, "run": str, "step": int, "parent": str, "checkpoint": str,
    "weights_root": str, "weights_hash": str, "weights_file": str, "manifest_hash": str,
    "config_hash": str, "data_cursor": dict, "rng": str, "eval": dict,
}  # fmt: skip
FIELDS_BY_SCHEMA = {1: FIELDS_V1, 2: {**FIELDS_V1, "files": dict}}
FIELDS = FIELDS_BY_SCHEMA[SCHEMA]
HEX64 = re.compile(r"[0-9a-f]{64}")
# Python's "%.6f"; nan/inf are allowed so that a diverged eval does not stop training.
DECIMAL = re.compile(r"-?(0|[1-9][0-9]*)(\.[0-9]+)?|nan|-?inf")


class RecordError(ValueError):
    pass


def check_record(rec: dict[str, Any], where: str = "record") -> None:
    """Schema check: exact key set, types, hex digests, and only strings/ints in the maps."""
    if not isinstance(rec, dict):
        raise RecordError(f"{where}: a record is a JSON object, got {type(rec).__name__}")
    schema = rec.get("schema")
    if schema not in FIELDS_BY_SCHEMA or isinstance(schema, bool):
        raise RecordError(f"{where}: unknown schema {schema!r} (known: {sorted(FIELDS_BY_SCHEMA)})")
    fields = FIELDS_BY_SCHEMA[schema]
    missing, extra = sorted(set(fields) - set(rec)), sorted(set(rec) - set(fields))
    if missing or extra:
        raise RecordError(f"{where}: missing fields {missing}, unknown fields {extra}")
    for key, tp in fields.items():
        v = rec[key]
        if not isinstance(v, tp) or isinstance(v, bool):
            raise RecordError(f"{where}: field {key!r} must be {tp.__name__}, got {v!r}")
    for key in ("weights_root", "manifest_hash", "config_hash", "rng"):
        if not HEX64.fullmatch(rec[key]):
            raise RecordError(f"{where}: field {key!r} must be 64 lowercase hex digits")
    if rec["parent"] and not HEX64.fullmatch(rec["parent"]):
        raise RecordError(f"{where}: field 'parent' must be empty or 64 lowercase hex digits")
    for k, v in rec["data_cursor"].items():
        if not isinstance(v, int) or isinstance(v, bool):
            raise RecordError(f"{where}: data_cursor.{k} must be an integer")
    for k, v in rec["eval"].items():
        if not isinstance(v, str) or not DECIMAL.fullmatch(v):
            raise RecordError(f"{where}: eval.{k} must be a decimal string")
    for k, v in rec.get("files", {}).items():
        if not isinstance(v, str) or not HEX64.fullmatch(v):
            raise RecordError(f"{where}: files.{k} must be a SHA-256 hex digest")
        if k == MARKER or k.startswith("/") or ".." in k.split("/"):
            raise RecordError(f"{where}: files.{k}: not a relative path inside the checkpoint")


def make_record(**fields: Any) -> dict[str, Any]:
    """A checked record from its fields; ``eval`` floats become decimal strings. With
    ``files`` (see ``checkpoint_files``) the record is schema 2, without it schema 1."""
    rec = {"schema": SCHEMA if "files" in fields else 1, **fields}
    rec["eval"] = {k: v if isinstance(v, str) else f"{float(v):.6f}" for k, v in rec["eval"].items()}
    check_record(rec)
    return rec


def record_hash(rec: dict[str, Any]) -> str:
    return hash_canonical(rec)


def _sha256_stream(store: Store, rel: str, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with store.fs.open_input_stream(store.path(rel)) as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def checkpoint_files(ckpt_dir: str | Path) -> dict[str, str]:
    """relpath → SHA-256 hex of every file in a checkpoint folder (recursively, '/'
    separators), except ``lineage.json`` and hidden names: the record's ``files`` field.
    Call it after the checkpoint is fully written and before building the record."""
    store = Store(ckpt_dir)
    if not store.is_dir():
        raise FileNotFoundError(f"{ckpt_dir}: checkpoint folder not found")
    return {rel: _sha256_stream(store, rel) for rel in store.list_files(recursive=True) if rel != MARKER}


def _store(lineage_dir: str | Path | Store) -> Store:
    return lineage_dir if isinstance(lineage_dir, Store) else Store(lineage_dir)


def atomic_write(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` (local path or pyarrow URI) via a temporary name + move."""
    parent, _, name = str(path).rstrip("/").rpartition("/")
    Store(parent or ".").write_atomic(name, data)


def write_record(lineage_dir: str | Path | Store, rec: dict[str, Any]) -> str:
    """Store ``rec`` under its hash (canonical bytes); returns the hash."""
    h = record_hash(rec)
    _store(lineage_dir).write_atomic(f"records/{h}.json", canonical_json(rec))
    return h


def has_record(lineage_dir: str | Path | Store, h: str) -> bool:
    return _store(lineage_dir).is_file(f"records/{h}.json")


def read_record(lineage_dir: str | Path | Store, h: str) -> dict[str, Any]:
    store = _store(lineage_dir)
    where = store.path(f"records/{h}.json")
    try:
        raw = store.read_bytes(f"records/{h}.json")
    except FileNotFoundError as e:
        raise RecordError(f"{where}: record {h} is missing") from e
    try:
        rec = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RecordError(f"{where}: not valid JSON ({e})") from e
    check_record(rec, where)
    return rec


def read_head(lineage_dir: str | Path | Store) -> str:
    store = _store(lineage_dir)
    return store.read_bytes("HEAD").decode("utf-8", "replace").strip() if store.is_file("HEAD") else ""


def write_head(lineage_dir: str | Path | Store, h: str) -> None:
    _store(lineage_dir).write_atomic("HEAD", (h + "\n").encode())

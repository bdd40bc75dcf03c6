"""Lineage records: one per checkpoint, content-addressed, chained by parent hash.

A record is a JSON object of strings and integers only (floats such as eval scores are
written as decimal strings), so its canonical JSON is the same in every language:

    {"schema": 2, "run": str, "step": int, "parent": hex | "", "checkpoint": str,
     "weights_root": hex, "weights_hash": "sha256-merkle-v1", "weights_file": str,
     "manifest_hash": hex, "config_hash": hex, "data_cursor": {str: int},
     "rng": hex, "eval": {str: decimal str}, "files": {relpath: sha256 hex}}

    record_hash = SHA-256(canonical_json(record))

``files`` (schema 2) covers every file of the checkpoint folder except ``lineage.json``
(which holds the record itself); schema 1 records (no ``files``) are still read. Schema 3
adds ``weights_format``: ``"safetensors"`` (``weights_file`` is one file of the logical
tensors) or ``"safetensors-sharded-v1"`` (``weights_file`` is a folder of per-rank
safetensors shards, each tensor's pieces placed by the ``DCP_SHARDING_INFO`` offsets in
the shard headers; docs/lineage.md §2); schemas 1 and 2 imply ``"safetensors"``.

Storage (``ogi_ray.storage.Store``: a local folder or any pyarrow.fs URI), under the
lineage folder: ``records/<record_hash>.json`` (the canonical bytes, content-addressed:
written first) and ``HEAD`` (newest hash + "\\n": written last, one PUT on object stores).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from ogi_ray.canonical import canonical_json, hash_canonical
from ogi_ray.storage import Store

SCHEMA = 3
MARKER = "lineage.json"  # the record's copy inside its checkpoint folder (not in `files`)
FIELDS_V1 = {
    "schema": int, "run": str, "step": int, "parent": str, "checkpoint": str,
    "weights_root": str, "weights_hash": str, "weights_file": str, "manifest_hash": str,
    "config_hash": str, "data_cursor": dict, "rng": str, "eval": dict,
}  # fmt: skip
FIELDS_BY_SCHEMA = {1: FIELDS_V1, 2: {**FIELDS_V1, "files": dict},
                    3: {**FIELDS_V1, "files": dict, "weights_format": str}}  # fmt: skip
FIELDS = FIELDS_BY_SCHEMA[SCHEMA]
WEIGHTS_FORMATS = ("safetensors", "safetensors-sharded-v1")
HEX64 = re.compile(r"[0-9a-f]{64}")
# Python's "%.6f": exactly six decimals; nan/inf are allowed so that a diverged eval does
# not stop training.
DECIMAL = re.compile(r"-?(0|[1-9][0-9]*)\.[0-9]{6}|nan|-?inf")


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
            raise RecordError(f"{where}: eval.{k} must be a decimal string with six decimals (\"%.6f\"), got {v!r}")
    if rec.get("weights_format", "safetensors") not in WEIGHTS_FORMATS:
        raise RecordError(f"{where}: field 'weights_format' must be one of {list(WEIGHTS_FORMATS)}")
    for k, v in rec.get("files", {}).items():
        if not isinstance(v, str) or not HEX64.fullmatch(v):
            raise RecordError(f"{where}: files.{k} must be a SHA-256 hex digest")
        if k == MARKER or k.startswith("/") or ".." in k.split("/"):
            raise RecordError(f"{where}: files.{k}: not a relative path inside the checkpoint")


def weights_format(rec: dict[str, Any]) -> str:
    """How the record's weights are stored (schemas 1 and 2: one safetensors file)."""
    return str(rec.get("weights_format", "safetensors"))


def make_record(**fields: Any) -> dict[str, Any]:
    """A checked record from its fields; ``eval`` floats become decimal strings. The
    schema follows from the fields: 3 with ``weights_format``, 2 with ``files``, else 1."""
    schema = 3 if "weights_format" in fields else 2 if "files" in fields else 1
    rec = {"schema": schema, **fields}
    rec["eval"] = {k: v if isinstance(v, str) else f"{float(v):.6f}" for k, v in rec["eval"].items()}
    check_record(rec)
    return rec


def record_hash(rec: dict[str, Any]) -> str:
    return hash_canonical(rec)


def checkpoint_files(ckpt_dir: str | Path | Store) -> dict[str, str]:
    """relpath → SHA-256 hex of every file in a checkpoint folder (recursively, '/'
    separators), except ``lineage.json`` and hidden names: the record's ``files`` field.
    (The trainer hashes each file as it writes it instead: ``train/checkpoint.py``.)"""
    store = ckpt_dir if isinstance(ckpt_dir, Store) else Store(ckpt_dir)
    if not store.is_dir():
        raise FileNotFoundError(f"{store.uri}: checkpoint folder not found")
    return {rel: store.sha256(rel) for rel in store.list_files(recursive=True) if rel != MARKER}


def _store(lineage_dir: str | Path | Store) -> Store:
    return lineage_dir if isinstance(lineage_dir, Store) else Store(lineage_dir)


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

"""Records from the files a user brings: JSONL (plain or compressed) and Parquet, row by row.

    file URI ─► records(uri, fmt, fields) ─► (row label, dict) per row, or a BadRow
                (malformed JSON line, missing field) naming the line or row number

Shared by the ``text`` kind and by the JSONL/Parquet indexes of the media kinds. JSONL
is read line by line so a bad line is reported by number (and skipped, when the source
says so) instead of failing the whole file; Parquet is read in record batches of the
needed columns only.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from ogi_ray.corpus import fsio
from ogi_ray.corpus.sources import BadRow

JSONL = (".jsonl", ".jsonl.gz", ".jsonl.bz2", ".jsonl.zst", ".json", ".ndjson")
PARQUET = (".parquet", ".pq")


def file_format(uri: str, fmt: str) -> str:
    """``fmt`` unless it is "auto": then jsonl / parquet / txt from the file name."""
    if fmt != "auto":
        return fmt
    name = uri.lower()
    if name.endswith(JSONL):
        return "jsonl"
    if name.endswith(PARQUET):
        return "parquet"
    return "txt"


def relpath(uri: str, root: str) -> str:
    """``uri`` relative to the source's ``root`` (its own name when root is the file)."""
    root = root.rstrip("/")
    if uri == root:
        return uri.rsplit("/", 1)[-1]
    return uri[len(root) :].lstrip("/") if uri.startswith(root + "/") else uri


def records(uri: str, fmt: str, required: tuple[str, ...] = ()) -> Iterator[tuple[str, dict | BadRow]]:
    """(row label, record) for every row of a JSONL or Parquet file, or BadRow entries."""
    rows = _jsonl(uri) if fmt == "jsonl" else _parquet(uri, required)
    for label, rec in rows:
        if isinstance(rec, dict):
            missing = [f for f in required if rec.get(f) in (None, "")]
            if missing:
                rec = BadRow(f"missing field {missing[0]!r}", f"field {missing[0]!r} is missing or empty", label)
        yield label, rec


def _jsonl(uri: str) -> Iterator[tuple[str, dict | BadRow]]:
    with fsio.open_input(uri, stream=True) as f:
        buf, n = b"", 0
        while True:
            chunk = f.read(1 << 20)
            lines = (buf + chunk).split(b"\n")
            buf = lines.pop() if chunk else b""
            for line in lines:
                n += 1
                if line.strip():
                    yield f"line {n}", _parse(line, f"line {n}")
            if not chunk:
                break


def _parse(line: bytes, label: str) -> dict | BadRow:
    try:
        rec = json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        return BadRow("malformed JSON line", f"not valid JSON ({e})", label)
    if not isinstance(rec, dict):
        return BadRow("malformed JSON line", f"a JSON {type(rec).__name__}, not an object", label)
    return rec


def _parquet(uri: str, columns: tuple[str, ...]) -> Iterator[tuple[str, dict | BadRow]]:
    import pyarrow.parquet as pq

    with fsio.open_input(uri) as f:
        pf = pq.ParquetFile(f)
        names = set(pf.schema_arrow.names)
        missing = [c for c in columns if c not in names]
        if missing:
            yield "schema", BadRow(f"missing field {missing[0]!r}", f"no column {missing[0]!r} (columns: {sorted(names)})", "schema")
            return
        n = 0
        for batch in pf.iter_batches(batch_size=1024):
            for rec in batch.to_pylist():
                yield f"row {n}", rec
                n += 1


def meta_of(rec: dict[str, Any], fields: list[str]) -> dict[str, Any]:
    """The configured metadata fields of a record (absent ones as null), JSON-safe."""
    return {k: _jsonable(rec.get(k)) for k in fields}


def _jsonable(v: Any) -> Any:
    if isinstance(v, bytes):
        return v.hex()
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_jsonable(x) for x in v]
    return v if isinstance(v, str | int | float | bool) or v is None else str(v)

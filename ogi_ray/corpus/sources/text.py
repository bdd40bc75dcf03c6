"""User text: JSONL (plain or compressed), Parquet or plain-text files on any pyarrow.fs URI.

    path (file or folder) ─► items: every matching file, sorted, with its size
    one file ─► records (JSONL/Parquet: one per line/row; txt: the whole file) ─► samples
               {doc_id, text, license?, meta?}; a malformed line or a missing field is a
               BadRow naming the line/row (the build fails, or counts it with on_error: skip)

``doc_id`` is the record's ``id_field`` when set, else ``<file relative to path>:<row>``
(txt: the relative path). ``license_field`` names a field holding each row's SPDX
expression (per-row gating). ``metadata_fields`` are kept in the row's ``meta`` column.
Files are grouped into Ray tasks by size (the source's ``task_mb``), so small documents
pack into full rows.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

from ogi_ray.corpus import fsio
from ogi_ray.corpus.sources import BadRow, RawSample
from ogi_ray.corpus.sources._records import JSONL, PARQUET, file_format, meta_of, records, relpath

TASK_ITEMS = 4096  # small files: a task takes many (bounded by the source's task_mb)
TXT = (".txt", ".md", ".rst", ".py")


@dataclass(kw_only=True)
class Params:
    path: str  # a file or a folder (recursive), local path or URI
    format: Literal["auto", "jsonl", "parquet", "txt"] = "auto"
    suffixes: list[str] = field(default_factory=list)  # default: by format
    text_field: str = "text"
    id_field: str = ""
    license_field: str = ""
    metadata_fields: list[str] = field(default_factory=list)
    encoding_errors: Literal["strict", "replace"] = "replace"  # txt files that are not UTF-8

    def validate(self) -> None:
        if not self.path:
            raise ValueError("path: required")


def prepare(params: Params, base: str) -> Params:
    return prepare_paths(params, base)


def check(params: Params) -> None:
    check_paths(params)


def prepare_paths(params: Any, base: str, keys: tuple[str, ...] = ("path",)) -> Any:
    """``params`` with each set path field in ``keys`` made absolute against ``base``."""
    for key in keys:
        if getattr(params, key):
            setattr(params, key, fsio.absolute(getattr(params, key), base))
    return params


def check_paths(params: Any, keys: tuple[str, ...] = ("path",)) -> None:
    """``path`` must exist; the other fields in ``keys`` must exist when they are set."""
    for key in keys:
        if key == "path" or getattr(params, key):
            check_path(getattr(params, key), key)


def check_path(uri: str, key: str = "path") -> None:
    """ValueError naming ``key`` when ``uri`` does not exist or cannot be reached."""
    try:
        found = fsio.exists(uri)
    except OSError as e:
        raise ValueError(f"{key}: cannot reach {uri}: {e}") from e
    if not found:
        raise ValueError(f"{key}: {uri} does not exist")


def _suffixes(params: Params) -> tuple[str, ...]:
    if params.suffixes:
        return tuple(s.lower() for s in params.suffixes)
    return {"jsonl": JSONL, "parquet": PARQUET, "txt": TXT}.get(params.format, JSONL + PARQUET + TXT)


def items(params: Params) -> list[tuple[str, int]]:
    return fsio.list_files(params.path, _suffixes(params))


def read(item: str, params: Params) -> Iterator[RawSample | BadRow]:
    rel = relpath(item, params.path)
    fmt = file_format(item, params.format)
    if fmt == "txt":
        with fsio.open_input(item, stream=True) as f:  # .gz/.bz2/.zst decompressed (man pages)
            raw = f.read()
        try:
            text = raw.decode("utf-8", errors=params.encoding_errors)
        except UnicodeDecodeError as e:
            yield BadRow("not UTF-8", str(e), "file")
            return
        if text.strip():
            yield {"doc_id": rel, "text": text}
        return
    wanted = tuple(f for f in (params.text_field, params.id_field) if f)
    for label, rec in records(item, fmt, wanted):
        if isinstance(rec, BadRow):
            yield rec
            continue
        text = rec[params.text_field]
        if not isinstance(text, str):
            yield BadRow(f"field {params.text_field!r} not a string", f"got {type(text).__name__}", label)
            continue
        sample: RawSample = {"doc_id": str(rec[params.id_field]) if params.id_field else f"{rel}:{label.split()[-1]}",
                             "text": text}  # fmt: skip
        if params.license_field:
            sample["license"] = rec.get(params.license_field) or ""
        if params.metadata_fields:
            sample["meta"] = meta_of(rec, params.metadata_fields)
        yield sample

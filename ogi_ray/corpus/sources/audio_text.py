"""User speech or sound with transcripts: wav/flac/ogg files with ``.txt`` sidecars, or a
JSONL/Parquet index of (audio file, transcript) rows, on any pyarrow.fs URI.

    path ─► items: every audio file (sidecar mode) or every index row (``index`` set)
    one item ─► soundfile decode (from a pyarrow input file: no local copy) ─► mono float32
               at the file's rate ─► {doc_id, audio, audio_rate, text}

The tokenizer resamples to the corpus rate (``patches.audio_rate``). A missing
transcript and an undecodable file are BadRows naming the file.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from ogi_ray.corpus import fsio
from ogi_ray.corpus.sources import BadRow, RawSample
from ogi_ray.corpus.sources._records import file_format, records, relpath
from ogi_ray.corpus.sources.text import check_paths, prepare_paths

AUDIO = (".wav", ".flac", ".ogg")


@dataclass(kw_only=True)
class Params:
    path: str  # folder of audio files (+ sidecars), or the folder the index paths are relative to
    index: str = ""  # JSONL/Parquet with audio_field and text_field per row
    audio_field: str = "audio"
    text_field: str = "text"
    license_field: str = ""

    def validate(self) -> None:
        if not self.path:
            raise ValueError("path: required")


def prepare(params: Params, base: str) -> Params:
    return prepare_paths(params, base, ("path", "index"))


def check(params: Params) -> None:
    check_paths(params, ("path", "index"))


def index_items(index: str, root: str, media: str, text: str, license_field: str) -> Iterator[str | tuple]:
    """Items of an index file: JSON strings {file, text, license, row}; bad rows raise."""
    for label, rec in records(index, file_format(index, "auto"), (media, text)):
        if isinstance(rec, BadRow):
            raise ValueError(f"{index}: {rec.row}: {rec.message}")
        f = rec[media]
        # Relative paths in the index are relative to ``root`` (a local folder or a URI).
        item = {"file": f if fsio.is_uri(f) or f.startswith("/") else fsio.join(root, f),
                "text": rec[text], "row": label}  # fmt: skip
        if license_field:
            item["license"] = rec.get(license_field) or ""
        yield json.dumps(item, sort_keys=True)


def sidecar_text(uri: str) -> str | None:
    """The ``.txt`` next to a media file (same stem), or None."""
    side = uri.rsplit(".", 1)[0] + ".txt"
    try:
        return fsio.read_bytes(side).decode("utf-8", "replace").strip()
    except (FileNotFoundError, OSError):
        return None


def items(params: Params) -> list:
    if params.index:
        return sorted(index_items(params.index, params.path, params.audio_field, params.text_field,
                                  params.license_field))  # fmt: skip
    return fsio.list_files(params.path, AUDIO)


def _entry(item: str, params: Params) -> tuple[str, str | None, dict]:
    if params.index:
        e = json.loads(item)
        return e["file"], e["text"], e
    return item, sidecar_text(item), {}


def read(item: str, params: Params) -> Iterator[RawSample | BadRow]:
    import soundfile as sf

    uri, text, entry = _entry(item, params)
    if not text:
        yield BadRow("missing transcript", f"no transcript for {uri}", "file")
        return
    try:
        with fsio.open_input(uri) as f:
            audio, rate = sf.read(f, dtype="float32", always_2d=True)
    except Exception as e:  # noqa: BLE001 - libsndfile errors, missing files
        yield BadRow("undecodable audio", f"{uri}: {type(e).__name__}: {e}", "file")
        return
    s: RawSample = {"doc_id": relpath(uri, params.path), "audio": np.ascontiguousarray(audio.mean(axis=1)),
                    "audio_rate": int(rate), "text": text}  # fmt: skip
    if params.license_field:
        s["license"] = entry.get("license", "")
    yield s

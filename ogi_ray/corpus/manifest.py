"""The corpus manifest: what a build produced, and the hash that names it.

``manifest.json`` sits at the root of a corpus folder next to ``shards/``,
``heldout/`` and ``tokenizer.json``. Its ``manifest_hash`` is the SHA-256 of the
canonical JSON (ogi_ray.canonical: sorted keys, no spaces, UTF-8, JCS numbers) of
every other top-level key. ``verify_corpus`` re-derives it and every shard's content
hash from the files alone. Schema: docs/corpus.md.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ogi_ray.canonical import file_sha256, hash_canonical

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"


class CorpusError(ValueError):
    """A corpus folder is missing a file or a file does not match the manifest."""


def seal(manifest: dict[str, Any]) -> dict[str, Any]:
    """Return ``manifest`` with ``manifest_hash`` set over all other keys."""
    body = {k: v for k, v in manifest.items() if k != "manifest_hash"}
    return {**body, "manifest_hash": hash_canonical(body)}


def load_manifest(corpus_dir: str | Path) -> dict[str, Any]:
    path = Path(corpus_dir) / MANIFEST
    if not path.is_file():
        raise CorpusError(f"{path}: missing (is {corpus_dir} a corpus folder?)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise CorpusError(f"{path}: not valid JSON ({e})") from e
    for key in ("sources", "shards", "manifest_hash", "tokenizers", "exchange_rates", "seed"):
        if key not in data:
            raise CorpusError(f"{path}: field {key!r} is missing")
    return data


def verify_corpus(corpus_dir: str | Path, *, check_shards: bool = True) -> dict[str, Any]:
    """Re-derive the manifest hash and each file hash; raise CorpusError naming a mismatch."""
    corpus_dir = Path(corpus_dir)
    m = load_manifest(corpus_dir)
    recomputed = seal(m)["manifest_hash"]
    if recomputed != m["manifest_hash"]:
        raise CorpusError(
            f"{corpus_dir / MANIFEST}: field 'manifest_hash' is {m['manifest_hash']} but the "
            f"content hashes to {recomputed}"
        )
    if check_shards:
        files = list(m["shards"]) + list(m.get("heldout_shards", []))
        files.append({"path": m["tokenizers"]["text"]["file"], "sha256": m["tokenizers"]["text"]["sha256"]})
        for entry in files:
            path = corpus_dir / entry["path"]
            if not path.is_file():
                raise CorpusError(f"{path}: listed in manifest 'shards' but missing")
            digest = file_sha256(path)
            if digest != entry["sha256"]:
                raise CorpusError(
                    f"{path}: content hash {digest} differs from the manifest's {entry['sha256']}"
                )
    return m


def shard_paths(corpus_dir: str | Path, split: str = "train") -> list[str]:
    """Absolute paths of a verified corpus' shards (``train`` or ``heldout``)."""
    m = load_manifest(corpus_dir)
    key = "shards" if split == "train" else "heldout_shards"
    return [str((Path(corpus_dir) / s["path"]).resolve()) for s in m.get(key, [])]

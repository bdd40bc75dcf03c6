"""The corpus manifest: what a build produced, and the hash that names it.

``manifest.json`` sits at the root of a corpus folder (a local path or any pyarrow.fs
URI: ``s3://bucket/corpus``) next to ``shards/``, ``heldout/`` and the text tokenizer's
file. Its ``manifest_hash`` is the SHA-256 of the canonical JSON (ogi_ray.canonical:
sorted keys, no spaces, UTF-8, JCS numbers) of every other top-level key.
``verify_corpus`` re-derives it and every file's content hash from the files alone.
Schema: docs/corpus.md.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ogi_ray.canonical import hash_canonical

SCHEMA_VERSION = 2
MANIFEST = "manifest.json"


class CorpusError(ValueError):
    """A corpus folder is missing a file or a file does not match the manifest."""


def seal(manifest: dict[str, Any]) -> dict[str, Any]:
    """Return ``manifest`` with ``manifest_hash`` set over all other keys."""
    body = {k: v for k, v in manifest.items() if k != "manifest_hash"}
    return {**body, "manifest_hash": hash_canonical(body)}


def _root(corpus_dir: str | Path) -> str:
    from ogi_ray.corpus import fsio

    return fsio.absolute(corpus_dir)


def load_manifest(corpus_dir: str | Path) -> dict[str, Any]:
    from ogi_ray.corpus import fsio

    path = fsio.join(_root(corpus_dir), MANIFEST)
    try:
        raw = fsio.read_bytes(path)
    except FileNotFoundError:
        raise CorpusError(f"{path}: missing (is {corpus_dir} a corpus folder?)") from None
    except OSError as e:
        raise CorpusError(f"{path}: cannot read ({e})") from e
    try:
        data = json.loads(raw.decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CorpusError(f"{path}: not valid JSON ({e})") from e
    for key in ("sources", "shards", "manifest_hash", "tokenizers", "exchange_rates", "seed"):
        if key not in data:
            raise CorpusError(f"{path}: field {key!r} is missing")
    return data


def verify_corpus(corpus_dir: str | Path, *, check_shards: bool = True) -> dict[str, Any]:
    """Re-derive the manifest hash and each file hash; raise CorpusError naming a mismatch."""
    from ogi_ray.corpus import fsio

    root = _root(corpus_dir)
    m = load_manifest(root)
    recomputed = seal(m)["manifest_hash"]
    if recomputed != m["manifest_hash"]:
        raise CorpusError(
            f"{fsio.join(root, MANIFEST)}: field 'manifest_hash' is {m['manifest_hash']} but the "
            f"content hashes to {recomputed}"
        )
    if check_shards:
        files = list(m["shards"]) + list(m.get("heldout_shards", []))
        files.append({"path": m["tokenizers"]["text"]["file"], "sha256": m["tokenizers"]["text"]["sha256"]})
        for entry in files:
            path = fsio.join(root, entry["path"])
            try:
                digest = fsio.sha256_of(path)
            except FileNotFoundError:
                raise CorpusError(f"{path}: listed in manifest 'shards' but missing") from None
            if digest != entry["sha256"]:
                raise CorpusError(f"{path}: content hash {digest} differs from the manifest's {entry['sha256']}")
    return m


def shard_paths(corpus_dir: str | Path, split: str = "train") -> list[str]:
    """Absolute paths (or URIs) of a corpus' shards, ``train`` or ``heldout``, in global order."""
    from ogi_ray.corpus import fsio

    root = _root(corpus_dir)
    m = load_manifest(root)
    key = "shards" if split == "train" else "heldout_shards"
    return [fsio.join(root, s["path"]) for s in m.get(key, [])]

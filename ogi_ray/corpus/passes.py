"""Pass 1 of the corpus build, run inside Ray Data tasks: list, read, gate, tokenize, pack.

    one row per source ──list_units──► work units: consecutive items of the source's
        listing (files, clips, episodes), ``task_items`` / ``task_mb`` at a time
    unit ──read_unit──► token rows (ROW_SCHEMA + ``heldout``, ``h_sel``) and status rows:
        per (reason) counts of license-excluded and skipped bad rows, or one error row
        naming the source, the file and the row

Inside a unit, in listing order: each sample's license is gated (when it carries one);
its document is held out or not by a hash of (seed, source, doc_id); media are tokenized;
text-only documents are packed per split into rows of ``max_tokens``; captions are cut.
Nothing depends on which task or block a unit lands in, so the rows are a pure function
of the inputs, the mixture and the seed.

Errors are returned as rows instead of raised: an exception raised in a Ray task reaches
the driver wrapped with the original type lost, while an error row lets the driver raise
one clean ``SourceDataError`` naming the mixture file, the source, the file and the row.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from ogi_ray.corpus.config import MODALITIES, PatchConfig, SourceConfig, TextTokenizerConfig
from ogi_ray.corpus.license import LicensePolicy, row_verdict
from ogi_ray.corpus.mixing import hash63, select_hash
from ogi_ray.corpus.sources import BadRow, kind_of
from ogi_ray.corpus.text_tokenizer import TextTokenizer
from ogi_ray.corpus.tokenize import SourceDataError, media_rows, pack_rows, text_rows

# The columns of a token row (docs/corpus.md: meaning and byte layout of each).
ROW_SCHEMA = pa.schema(
    [("source", pa.string()), ("doc_id", pa.string()), ("chunk", pa.int64()),
     ("row_key", pa.string()), ("raw_hash", pa.string()), ("modality", pa.string()),
     ("text_tokens", pa.binary()), ("text_doc_lens", pa.binary()), ("image_patches", pa.binary()),
     ("video_tubelets", pa.binary()), ("audio_frames", pa.binary()),
     ("proprio", pa.binary()), ("action", pa.binary()),
     ("proprio_dim", pa.int64()), ("action_dim", pa.int64()), ("meta", pa.string())]
    + [(f"tokens_{m}", pa.int64()) for m in MODALITIES]
    + [("effective_tokens", pa.float64())]
)  # fmt: skip
# A shard row: a token row plus its copy number and its index in the mixed order.
SHARD_SCHEMA = ROW_SCHEMA.append(pa.field("repeat", pa.int64())).append(pa.field("position", pa.int64()))
# Pass-1 rows: token rows (status "ok") and status rows (counts, errors) in one table.
STATUS = [("status", pa.string()), ("reason", pa.string()), ("count", pa.int64()), ("unit", pa.int64()),
          ("item", pa.string()), ("where", pa.string()), ("heldout", pa.bool_()), ("h_sel", pa.int64())]  # fmt: skip
STAGE_SCHEMA = pa.schema(list(ROW_SCHEMA) + [pa.field(n, t) for n, t in STATUS])


@dataclass(frozen=True)
class BuildSpec:
    """Everything a pass-1 task needs, shipped once per operator."""

    sources: dict[str, SourceConfig]
    patches: PatchConfig
    text: TextTokenizerConfig
    tokenizer: TextTokenizer | None  # None: the BPE sample pass (text only, raw)
    rates: dict[str, float]
    seed: int
    heldout_fraction: float
    policy: LicensePolicy


def list_units(row: dict[str, Any], spec: BuildSpec) -> list[dict[str, Any]]:
    """A source's listing cut into work units; a listing failure is one error unit."""
    name = row["source"]
    s = spec.sources[name]
    kind = kind_of(s.kind)
    per = s.task_items or kind.task_items
    units, cur, size = [], [], 0
    try:
        for it in kind.items(s.params):
            item, nbytes = (it if isinstance(it, tuple) else (it, 0))
            cur.append(str(item))
            size += int(nbytes)
            if len(cur) >= per or size >= s.task_mb * 2**20:
                units.append(cur)
                cur, size = [], 0
    except Exception as e:  # noqa: BLE001 - becomes an error row (module docstring)
        return [{"source": name, "unit": -1, "items": [], "error": f"cannot list items: {type(e).__name__}: {e}"}]
    if cur:
        units.append(cur)
    return [{"source": name, "unit": i, "items": u, "error": ""} for i, u in enumerate(units)]


def _status(source: str, status: str, reason: str, count: int, unit: int, item: str = "", where: str = "") -> dict:
    return {"source": source, "status": status, "reason": reason, "count": count, "unit": unit,
            "item": item, "where": where}  # fmt: skip


def _samples(s: SourceConfig, items: list[str], spec: BuildSpec, counts: dict, on_error: str = "") -> Any:
    """(item, sample) of a unit in order, license-gated; BadRows fail or are counted."""
    kind = kind_of(s.kind)
    for item in items:
        for obj in _read(kind, s, item):
            if isinstance(obj, BadRow):
                if (on_error or s.on_error) == "fail":
                    raise SourceDataError(s.name, item, None, f"{obj.reason}: {obj.message}", row=obj.row)
                counts[("skipped", obj.reason)] = counts.get(("skipped", obj.reason), 0) + 1
                continue
            if "license" in obj:
                why = row_verdict(obj.pop("license"), spec.policy)
                if why is not None:
                    counts[("excluded", why)] = counts.get(("excluded", why), 0) + 1
                    continue
            yield item, obj


def _read(kind: Any, s: SourceConfig, item: str) -> Any:
    """``kind.read`` with any failure turned into a SourceDataError naming the item."""
    try:
        yield from kind.read(item, s.params)
    except SourceDataError as e:
        e.item = e.item or item
        raise
    except Exception as e:  # noqa: BLE001 - the item that failed is what the user needs
        raise SourceDataError(s.name, item, None, f"{type(e).__name__}: {e}") from e


def _heldout(spec: BuildSpec, source: str, doc_id: str) -> bool:
    return hash63(f"{spec.seed}|heldout|{source}|{doc_id}") < spec.heldout_fraction * 2**63


def read_unit(row: dict[str, Any], spec: BuildSpec) -> list[dict[str, Any]]:
    """One work unit → its token rows and status rows (or one error row)."""
    name, unit = row["source"], int(row["unit"])
    if row["error"]:
        return [_status(name, "error", row["error"], 1, unit, "", "listing")]
    s = spec.sources[name]
    counts: dict[tuple[str, str], int] = {}
    item = ""
    try:
        media, docs = [], []
        for item, sample in _samples(s, list(row["items"]), spec, counts):
            held = _heldout(spec, name, str(sample["doc_id"]))
            for r in media_rows(sample, source=name, patch_cfg=spec.patches):
                made = {m for m in MODALITIES if r[f"tokens_{m}"]} | ({"text"} if r["text"] else set())
                if extra := made - set(s.modalities):
                    raise SourceDataError(name, item, "modalities",
                                          f"produced {sorted(extra)}, not declared in {sorted(s.modalities)}")  # fmt: skip
                r["heldout"] = held
                (docs if r["text_only"] and spec.text.pack else media).append(r)
        out = _tokenized(media, docs, spec, name, unit)
    except Exception as e:  # noqa: BLE001 - every failure becomes an error row (module docstring)
        if isinstance(e, SourceDataError):
            return [_status(name, "error", e.message, 1, unit, e.item or item, e.row or (f"field {e.field}" if e.field else ""))]
        return [_status(name, "error", f"{type(e).__name__}: {e}", 1, unit, item, "")]
    for (status, reason), n in sorted(counts.items()):
        out.append(_status(name, status, reason, n, unit))
    return out


def _tokenized(media: list[dict], docs: list[dict], spec: BuildSpec, name: str, unit: int) -> list[dict]:
    """Text ids for every row, packed text rows, keys and selection hashes."""
    tok = spec.tokenizer
    eos = np.int32(tok.eos_id)
    ids = tok.encode_batch([r["text"] for r in media + docs])
    out = []
    for r, i in zip(media, ids[: len(media)], strict=True):
        for f in text_rows(r, np.append(i, eos) if r["text"] else i, text_cfg=spec.text, rates=spec.rates):
            f["row_key"] = f"{unit:06d}/{f['doc_id']}/{f['chunk']}"
            out.append(f)
    for held in (False, True):
        mine = [{"doc_id": r["doc_id"], "ids": np.append(i, eos), "raw_hash": r["raw_hash"],
                 "meta": json.loads(r["meta"]) if r["meta"] else None, "heldout": held}
                for r, i in zip(docs, ids[len(media):], strict=True) if r["heldout"] == held]  # fmt: skip
        for f in pack_rows(mine, spec.text.max_tokens, spec.rates):
            f.update(source=name, heldout=held)
            f["row_key"] = f"{unit:06d}/{'heldout' if held else 'pack'}/{f['chunk']:06d}"
            out.append(f)
    for f in out:
        f.update(status="ok", reason="", count=1, unit=unit, item="", where="",
                 h_sel=select_hash(spec.seed, f["source"], f["row_key"]))  # fmt: skip
        for k in ("text", "text_only"):
            f.pop(k, None)
    return out


def read_units(batch: pa.Table, spec: BuildSpec) -> pa.Table:
    """``map_batches`` form of ``read_unit``: a fixed schema whatever the rows are."""
    return pa.Table.from_pylist([r for u in batch.to_pylist() for r in read_unit(u, spec)], schema=STAGE_SCHEMA)


def sample_texts(s: SourceConfig, spec: BuildSpec, budget: int) -> list[str]:
    """The first ``budget`` characters of a source's text, in listing order, license-gated
    and bad rows left out: the bounded sample a BPE is trained on."""
    kind = kind_of(s.kind)
    out: list[str] = []
    for it in kind.items(s.params):
        item = it[0] if isinstance(it, tuple) else it
        try:
            for _, sample in _samples(s, [str(item)], spec, {}, on_error="skip"):
                text = sample.get("text") or ""
                if text:
                    out.append(text[:budget])
                    budget -= len(out[-1])
                if budget <= 0:
                    return out
        except Exception:  # noqa: BLE001, S112 - an unreadable item fails pass 1, naming it
            continue
    return out

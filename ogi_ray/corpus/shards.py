"""Pass 2 of the corpus build, run inside Ray Data tasks: totals, copies, shards.

    pass-1 rows ──block_stats──► one small partial per block (per source: token sums by
        modality, row counts, bucket histogram of the selection hash, input fingerprint;
        status counts; the first errors) ─► summed on the driver, one block at a time
    ok rows ──bucket_rows──► the few rows of each source's crossing bucket (mixing.py)
    ok rows ──copies──► every copy in the mix (train: ``full`` passes + the selected
        remainder; held-out: once) with its order key and part (split, shard by key range)
        ──part_counts──► rows per part (driver: offsets, so positions are global)
        ──groupby(part).map_groups(write_part)──► each part sorted by order key, numbered
        from its offset, written as Parquet at its final name under the staging folder and
        hashed by the worker that wrote it; the driver gets one small row per shard

Nothing here depends on blocks or task timing: a row's copies come from its hashes and
the per-source plan, its part from its order key, and a part's order from the keys.
"""

from __future__ import annotations

import hashlib
import json
import math
import pickle
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ogi_ray.corpus import fsio
from ogi_ray.corpus.config import MODALITIES
from ogi_ray.corpus.mixing import BUCKET_BITS, SourcePlan, bucket_of, order_key, shard_of
from ogi_ray.corpus.passes import SHARD_SCHEMA

TOKENS = [f"tokens_{m}" for m in MODALITIES]
HELDOUT_PART = 1 << 32  # part = split · 2^32 + shard
ROW_GROUP = 1024  # rows per Parquet row group: the trainer seeks to row groups
MAX_ERRORS = 5


@dataclass
class SourceTotals:
    train_rows: int = 0
    train_tok: np.ndarray = field(default_factory=lambda: np.zeros(len(MODALITIES), np.int64))
    held_rows: int = 0
    held_tok: np.ndarray = field(default_factory=lambda: np.zeros(len(MODALITIES), np.int64))
    fingerprint: int = 0  # Σ SHA-256(row_key, raw_hash) mod 2^256: order-free input hash
    # (bucket, [rows, tokens per modality]) of train rows by selection-hash bucket
    hist: np.ndarray = field(default_factory=lambda: np.zeros((1 << BUCKET_BITS, 1 + len(MODALITIES)), np.int64))


@dataclass
class Totals:
    sources: dict[str, SourceTotals] = field(default_factory=dict)
    counts: dict[tuple[str, str, str], int] = field(default_factory=dict)  # (source, status, reason)
    errors: list[tuple] = field(default_factory=list)  # (source, unit, item, where, message), sorted
    n_errors: int = 0

    def add(self, part: dict) -> None:
        for name, p in part["sources"].items():
            t = self.sources.setdefault(name, SourceTotals())
            t.train_rows += p["train_rows"]
            t.held_rows += p["held_rows"]
            t.train_tok += p["train_tok"]
            t.held_tok += p["held_tok"]
            t.fingerprint = (t.fingerprint + p["fingerprint"]) % (1 << 256)
            np.add.at(t.hist, p["buckets"], p["hist"])
        for k, n in part["counts"].items():
            self.counts[k] = self.counts.get(k, 0) + n
        merged = self.errors + part["errors"]
        self.errors = [e for name in sorted({e[0] for e in merged}) for e in sorted(x for x in merged if x[0] == name)[:MAX_ERRORS]]
        self.n_errors += part["n_errors"]


def _blob(obj: Any) -> pa.Table:
    return pa.table({"blob": [pickle.dumps(obj)]})


def block_stats(batch: pa.Table) -> pa.Table:
    """A block's partial totals (one row): what the driver sums instead of reading rows."""
    d = batch.select(["source", "status", "reason", "count", "unit", "item", "where", "heldout", "h_sel",
                      "row_key", "raw_hash", *TOKENS]).to_pydict()  # fmt: skip
    out: dict[str, Any] = {"sources": {}, "counts": {}, "errors": [], "n_errors": 0}
    ok = np.asarray([s == "ok" for s in d["status"]], bool)
    for i in np.flatnonzero(~ok):
        key = (d["source"][i], d["status"][i], d["reason"][i])
        if d["status"][i] == "error":
            out["errors"].append((d["source"][i], d["unit"][i], d["item"][i], d["where"][i], d["reason"][i]))
            out["n_errors"] += 1
        else:
            out["counts"][key] = out["counts"].get(key, 0) + d["count"][i]
    # The first few errors of each source: the driver reports the first in mixture order.
    out["errors"] = [e for name in sorted({e[0] for e in out["errors"]})
                     for e in sorted(x for x in out["errors"] if x[0] == name)[:MAX_ERRORS]]  # fmt: skip
    src = np.asarray(d["source"], object)
    tok = np.stack([np.asarray(d[c], dtype=object) for c in TOKENS], 1) if len(src) else np.zeros((0, 6))
    held = np.asarray([bool(x) for x in d["heldout"]], bool)
    for name in sorted(set(src[ok])):
        mine = ok & (src == name)
        tr, he = mine & ~held, mine & held
        tr_tok = tok[tr].astype(np.int64)
        # Summed per bucket here: a partial is O(buckets), never one entry per row.
        b, inv = np.unique(bucket_of(np.asarray([d["h_sel"][i] for i in np.flatnonzero(tr)], np.int64)),
                           return_inverse=True)  # fmt: skip
        hist = np.zeros((len(b), 1 + len(MODALITIES)), np.int64)
        np.add.at(hist, inv, np.concatenate([np.ones((len(inv), 1), np.int64), tr_tok.reshape(len(inv), len(TOKENS))], 1))
        fp = sum(int.from_bytes(hashlib.sha256(f"{d['row_key'][i]}\0{d['raw_hash'][i]}".encode()).digest(), "big")
                 for i in np.flatnonzero(mine))  # fmt: skip
        out["sources"][name] = {
            "train_rows": int(tr.sum()), "held_rows": int(he.sum()),
            "train_tok": tr_tok.sum(0), "held_tok": tok[he].astype(np.int64).sum(0),
            "fingerprint": fp % (1 << 256), "buckets": b,
            "hist": hist,
        }  # fmt: skip
    return _blob(out)


def bucket_rows(batch: pa.Table, wanted: dict[str, int]) -> pa.Table:
    """Train rows of each source's crossing bucket ``wanted[source]``: key, hash, tokens."""
    t = batch.filter(pc.and_(pc.equal(batch["status"], "ok"), pc.invert(batch["heldout"])))
    t = t.select(["source", "row_key", "h_sel", *TOKENS])
    keep = [wanted.get(s) == bucket_of(h) for s, h in zip(t["source"].to_pylist(), t["h_sel"].to_pylist(), strict=True)]
    return t.filter(pa.array(keep, pa.bool_()))


@dataclass(frozen=True)
class CopyPlan:
    """What a copies task needs: per source (full, bucket, upto); shard counts; seed."""

    plans: dict[str, SourcePlan]
    n_train: int  # shards of the train split
    n_held: int
    seed: int


def _copies(batch: pa.Table, cp: CopyPlan) -> tuple[pa.Table, list[int], list[int], list[int], list[int]]:
    t = batch.filter(pc.equal(batch["status"], "ok"))
    idx, reps, keys, parts = [], [], [], []
    cols = zip(t["source"].to_pylist(), t["row_key"].to_pylist(), t["h_sel"].to_pylist(),
               t["heldout"].to_pylist(), strict=True)  # fmt: skip
    for i, (s, k, h, held) in enumerate(cols):
        n = 1 if held else cp.plans[s].copies(h, k)
        for r in range(n):
            key = order_key(cp.seed, s, k, r)
            idx.append(i)
            reps.append(r)
            keys.append(key)
            parts.append(HELDOUT_PART + shard_of(key, cp.n_held) if held else shard_of(key, cp.n_train))
    return t, idx, reps, keys, parts


def part_counts(batch: pa.Table, cp: CopyPlan) -> pa.Table:
    """Copies per part in this block (one row): the driver sums them into offsets."""
    _, _, _, _, parts = _copies(batch, cp)
    u, n = np.unique(np.asarray(parts, np.int64), return_counts=True)
    return _blob(dict(zip(u.tolist(), n.tolist(), strict=True)))


def copies(batch: pa.Table, cp: CopyPlan) -> pa.Table:
    """Every copy of the block's rows in the mix, with ``repeat``, ``okey`` and ``part``."""
    t, idx, reps, keys, parts = _copies(batch, cp)
    out = t.select([f.name for f in SHARD_SCHEMA if f.name not in ("repeat", "position")]).take(pa.array(idx, pa.int64()))
    return (out.append_column("repeat", pa.array(reps, pa.int64()))
               .append_column("okey", pa.array(keys, pa.int64()))
               .append_column("part", pa.array(parts, pa.int64())))  # fmt: skip


def part_path(part: int) -> str:
    folder = "heldout" if part >= HELDOUT_PART else "shards"
    return f"{folder}/part-{part % HELDOUT_PART:05d}.parquet"


def write_part(group: pa.Table, offsets: dict[int, int], staging: str) -> pa.Table:
    """One shard: rows sorted by order key, numbered from the part's offset, written as
    Parquet (zstd, row groups of ROW_GROUP) at ``staging/<path>`` and hashed here."""
    import pyarrow.parquet as pq

    part = int(group["part"][0].as_py())
    t = group.sort_by([("okey", "ascending"), ("source", "ascending"), ("row_key", "ascending"), ("repeat", "ascending")])
    t = t.drop_columns(["okey", "part"])
    t = t.append_column("position", pa.array(np.arange(t.num_rows, dtype=np.int64) + offsets[part]))
    # One chunk per column and a fixed column order: the bytes must not depend on blocks.
    t = t.select(sorted(t.column_names)).combine_chunks()
    sink = pa.BufferOutputStream()
    pq.write_table(t, sink, compression="zstd", row_group_size=ROW_GROUP)
    data = sink.getvalue().to_pybytes()
    rel = part_path(part)
    digest = fsio.write_bytes(fsio.join(staging, rel), data)
    d = t.select(["source", "repeat", *TOKENS]).to_pydict()
    stats: dict[str, dict[str, int]] = {}
    for i, s in enumerate(d["source"]):
        e = stats.setdefault(s, {"rows": 0, "unique_rows": 0, **{c: 0 for c in TOKENS}})
        e["rows"] += 1
        e["unique_rows"] += int(d["repeat"][i] == 0)  # a row's first copy: rows taken at least once
        for c in TOKENS:
            n = d[c][i]
            e[c] += n
            if n:  # the length histogram: what a model with fewer slots would be fed
                e[f"len/{c}/{n}"] = e.get(f"len/{c}/{n}", 0) + 1
    entry = {"part": part, "path": rel, "sha256": digest, "rows": t.num_rows,
             "effective_tokens": math.fsum(t["effective_tokens"].to_pylist()),  # exact: order-free
             "stats": json.dumps(stats, sort_keys=True)}  # fmt: skip
    return pa.Table.from_pylist([entry])

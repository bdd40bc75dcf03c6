"""Corpus build on Ray Data: mixture YAML → license gate → tokenize → mix → shards + manifest.

    mixture.yaml ─► license gate (policy) ─► items (one per file/clip/episode/batch)
        ▼
    pass 1 (flat_map, one read per item): media tokenized (patches, tubelets, audio
        frames, per-step vectors, cut in time), text kept raw ─► materialize
        driver: error rows? raise naming file, source, item, field
                text prefixes, fixed per-source budget ─► BPE (deterministic)
        ▼
    pass 2 (map_batches): BPE ids, text-only docs split into rows, counts,
        effective_tokens ─► materialize
        driver: small columns only ─► held-out split (seeded hash) ─► plan_mixture
                (exact shares) ─► mixed_order: every copy's global ``position``
        ▼
    pass 3: rows in mixed order, ``shard_rows`` at a time ─► Parquet shards written in
        order ─► manifest.json (+ manifest_hash). The order is known, so nothing is
        sampled: a small corpus is gathered by the driver (which writes every byte
        anyway) and each shard is one ``take``; a large one is expanded to its copies
        and range-partitioned by ``position`` at shard edges by Ray Data's sort.

Everything is written under ``OUT.tmp-<pid>`` and renamed to ``OUT`` at the end, so a
failed build leaves nothing half-written (and an older ``OUT`` intact). The same
mixture, seed and inputs give the same bytes in every shard and the same
``manifest_hash``, whatever the number of CPUs or blocks: every order is fixed by keys,
never by task timing.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ogi_ray.canonical import file_sha256, hash_canonical, sha256_hex
from ogi_ray.config import ConfigError, to_dict
from ogi_ray.corpus.config import MODALITIES, MixtureConfig, load_mixture
from ogi_ray.corpus.license import gate_sources, load_policy
from ogi_ray.corpus.manifest import SCHEMA_VERSION, seal
from ogi_ray.corpus.mixing import MixingError, mixed_order, plan_mixture
from ogi_ray.corpus.passes import copies_batch, driver_view, encode_batch, read_item
from ogi_ray.corpus.sources import BUILDERS
from ogi_ray.corpus.tokenize import SourceDataError, load_bpe, train_bpe

log = logging.getLogger(__name__)
DEFAULT_POLICY = Path(__file__).resolve().parents[2] / "datasets" / "policy.yaml"
PART_BYTES = 256 << 20  # bytes per sorted partition: a small corpus sorts as one block
# Token rows up to this size are put in mixed order by the driver (see _ordered_batches).
DRIVER_ORDER_BYTES = 1 << 30


def _gate(
    cfg: MixtureConfig, path: str | Path, policy_path: str | Path
) -> tuple[list, list, dict, dict[str, float]]:
    policy = load_policy(policy_path)
    included, excluded = gate_sources(cfg.sources, policy, file=path)
    if not included:
        raise ConfigError(path, "sources", "the license gate excluded every source")
    total = sum(s.share for s in included)
    if cfg.mixing.renormalize_after_gate:
        shares = {s.name: s.share / total for s in included}
    elif abs(total - 1.0) > 1e-6:
        names = ", ".join(f"{e['name']} ({e['reason']})" for e in excluded) or "none"
        raise ConfigError(
            path, "sources",
            f"shares of the admitted sources must sum to 1, they sum to {total:.6f} "
            f"(excluded by license: {names}; set mixing.renormalize_after_gate to rescale)",
        )  # fmt: skip
    else:
        shares = {s.name: s.share for s in included}
    info = {"policy": policy.name, "policy_sha256": file_sha256(policy_path)}
    return included, excluded, info, shares


def _items(included: list, path: str | Path) -> list[dict[str, Any]]:
    """Item rows, interleaved across sources so every block mixes cheap and costly items."""
    per_source = []
    for s in included:
        try:
            its = BUILDERS[s.kind].items(s.params)
        except Exception as e:
            raise SourceDataError(s.name, None, "params", f"cannot list items: {e}", file=path) from e
        if not its:
            raise ConfigError(path, f"sources.{s.name}", "source lists no items (empty source)")
        per_source.append([{"source": s.name, "item": it, "item_index": i} for i, it in enumerate(its)])
    rows = [r for group in per_source for r in group]
    return sorted(rows, key=lambda r: (r["item_index"], r["source"]))


def _raise_errors(view: Any, path: str | Path) -> None:
    errs = view[view["error"] != ""].sort_values(["source", "item_index"])
    if len(errs):
        e = errs.iloc[0]
        more = f" (and {len(errs) - 1} more failing items)" if len(errs) > 1 else ""
        raise SourceDataError(e["source"], e["item"], e["error_field"] or None,
                              e["error"] + more, file=str(path))  # fmt: skip


def _bpe_texts(view: Any, cfg: MixtureConfig, included: list) -> list[str]:
    """A fixed prefix of each source's text, in item order: the same text every build."""
    texts = view[view["text"] != ""].sort_values(["source", "item_index", "seq", "chunk"])
    budget = {s.name: cfg.text_tokenizer.train_chars for s in included}
    out = []
    for source, text in zip(texts["source"], texts["text"], strict=True):
        if budget[source] > 0:
            out.append(text[: budget[source]])
            budget[source] -= len(out[-1])
    return out


def _reused_tokenizer(mixture_path: str | Path, cfg: MixtureConfig) -> str:
    """The tokenizer JSON named by ``text_tokenizer.reuse`` (a corpus folder or a file)."""
    field = "text_tokenizer.reuse"
    path = Path(mixture_path).parent / cfg.text_tokenizer.reuse
    if path.is_dir():
        path = path / "tokenizer.json"
    if not path.is_file():
        raise ConfigError(mixture_path, field, f"{path} does not exist")
    tok_json = path.read_text(encoding="utf-8")
    try:
        size = load_bpe(tok_json).get_vocab_size()
    except Exception as e:  # tokenizers raises its own exception types
        raise ConfigError(mixture_path, field, f"{path} is not a tokenizer ({e})") from e
    if size > cfg.text_tokenizer.vocab_size:
        raise ConfigError(mixture_path, "text_tokenizer.vocab_size",
                          f"{cfg.text_tokenizer.vocab_size} < the reused tokenizer's {size} ids ({path})")  # fmt: skip
    return tok_json


def _range_sorted(ds: Any, copies: dict, n_rows: int, shard_rows: int, est_bytes: float) -> Any:
    """``ds`` expanded to its copies and sorted by ``position``.

    The positions are known, so the sort gets its boundaries instead of sampling them,
    at shard edges, and as few partitions as the data size needs: a SortShuffle with one
    partition per input block (dozens) cost most of a small build.
    """
    n_shards = max(1, math.ceil(n_rows / shard_rows))
    n_parts = max(1, min(n_shards, math.ceil(est_bytes / PART_BYTES)))
    per = math.ceil(n_shards / n_parts) * shard_rows
    bounds = [per * k for k in range(1, n_parts)] or [n_rows]  # [] would mean "sample"
    expanded = ds.map_batches(copies_batch, fn_args=(copies,), batch_format="pyarrow")
    return expanded.sort("position", boundaries=bounds)


def _ordered_batches(
    ds: Any, copies: dict, n_rows: int, shard_rows: int, unique_bytes: float
) -> Iterator[Any]:
    """Shard-sized Arrow tables of ``ds``'s copies, in ``position`` order.

    Every byte of the shards passes through the driver, which writes them, so a corpus
    whose unique rows fit ``DRIVER_ORDER_BYTES`` is ordered there: its blocks are
    gathered once and each shard is one ``take`` of known row indices, with no shuffle.
    Larger corpora go through Ray Data's range-partitioned sort (``_range_sorted``).
    Both give the same rows in the same order, so the same bytes.
    """
    import numpy as np
    import pyarrow as pa
    import ray

    if unique_bytes > DRIVER_ORDER_BYTES:
        sorted_ds = _range_sorted(ds, copies, n_rows, shard_rows, unique_bytes * n_rows / max(1, ds.count()))
        yield from sorted_ds.iter_batches(batch_size=shard_rows, batch_format="pyarrow")
        return
    table = pa.concat_tables(ray.get(ds.to_arrow_refs()))
    row_of = np.full(n_rows, -1, np.int64)  # position -> row index in ``table``
    repeat_of = np.zeros(n_rows, np.int64)
    keys = zip(table["source"].to_pylist(), table["row_key"].to_pylist(), strict=True)
    for i, (s, k) in enumerate(keys):
        reps, poss = copies.get(f"{s}|{k}", ((), ()))
        row_of[list(poss)] = i
        repeat_of[list(poss)] = reps
    if (row_of < 0).any():
        raise RuntimeError(f"{int((row_of < 0).sum())} planned rows are missing from the token rows")
    for lo in range(0, n_rows, shard_rows):
        hi = min(lo + shard_rows, n_rows)
        part = table.take(pa.array(row_of[lo:hi]))
        part = part.append_column("repeat", pa.array(repeat_of[lo:hi]))
        yield part.append_column("position", pa.array(np.arange(lo, hi, dtype=np.int64)))


def build_corpus(
    mixture_path: str | Path,
    out_dir: str | Path,
    *,
    policy_path: str | Path | None = None,
    seed: int | None = None,
) -> dict[str, Any]:
    """Build the corpus described by ``mixture_path`` into ``out_dir``; returns the manifest.

    Ray must be initialised by the caller (the CLI does ``ray.init()``).
    """
    import pyarrow.parquet as pq
    import ray

    cfg = load_mixture(mixture_path)
    if seed is not None:
        cfg.seed = seed
    policy_path = Path(policy_path or DEFAULT_POLICY)
    included, excluded, policy_info, shares = _gate(cfg, mixture_path, policy_path)
    specs = {s.name: (s.kind, s.params) for s in included}
    declared = {s.name: list(s.modalities) for s in included}

    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True  # determinism: order never depends on timing

    item_rows = _items(included, mixture_path)
    cpus = int(ray.cluster_resources().get("CPU", 1))
    n_blocks = max(1, min(len(item_rows), 4 * cpus))
    items_ds = ray.data.from_items(item_rows, override_num_blocks=n_blocks)

    t0 = time.perf_counter()
    # Pass 1: read each item once; everything but text is tokenized here.
    stage1 = items_ds.flat_map(read_item, fn_args=(specs, to_dict(cfg.patches), declared))
    stage1 = stage1.materialize()
    view = stage1.map_batches(driver_view, batch_format="pyarrow").to_pandas()
    _raise_errors(view, mixture_path)
    if cfg.text_tokenizer.reuse:
        tok_json = _reused_tokenizer(mixture_path, cfg)
    else:
        train_texts = _bpe_texts(view, cfg, included)
        if not train_texts:
            raise ConfigError(mixture_path, "sources", "no source has text to train the tokenizer on")
        tok_json = train_bpe(train_texts, cfg.text_tokenizer)
        del train_texts
    del view
    t1 = time.perf_counter()
    log.info("corpus pass 1 (read, media tokens, BPE): %.1f s", t1 - t0)

    # Pass 2: text ids, text-only rows split, counts.
    rows_ds = stage1.map_batches(
        encode_batch, batch_format="pyarrow",
        fn_args=(tok_json, to_dict(cfg.text_tokenizer), cfg.exchange_rates),
    ).materialize()  # fmt: skip
    del stage1
    count_cols = [f"tokens_{m}" for m in MODALITIES]
    stats = rows_ds.select_columns(["source", "row_key", "raw_hash", "effective_tokens", *count_cols])
    # Sorted by key: the plan must not depend on the order blocks came back in.
    stats = stats.to_pandas().sort_values(["source", "row_key"], ignore_index=True)
    for s in included:
        if not (stats["source"] == s.name).any():
            raise ConfigError(mixture_path, f"sources.{s.name}", "source produced no rows (empty source)")

    # Held-out documents (for evals) are chosen by a seeded hash of the document's key
    # (the row key without its chunk number), so no document is split between the
    # splits; held-out rows are never mixed.
    h = stats["row_key"].map(
        lambda k: int(sha256_hex(f"{cfg.seed}|heldout|{k.rsplit('/', 1)[0]}".encode())[:8], 16)
    )
    stats["heldout"] = (h / 0xFFFFFFFF) < cfg.heldout_fraction
    train = stats[~stats["heldout"]]
    by_source = {s.name: train[train["source"] == s.name] for s in included}
    eff = {n: t["effective_tokens"].to_numpy() for n, t in by_source.items()}
    try:
        plans = plan_mixture(
            eff, shares, seed=cfg.seed, max_repeat=cfg.mixing.max_repeat,
            total=cfg.mixing.total_effective_tokens, allow_shortfall=cfg.mixing.allow_shortfall,
        )  # fmt: skip
    except MixingError as e:
        raise ConfigError(mixture_path, "mixing", str(e)) from e
    keys, counts = [], []
    for name, t in by_source.items():
        keys += [(name, k) for k in t["row_key"]]
        counts += plans[name].counts.tolist()
    copies = mixed_order(keys, counts, cfg.seed)
    n_train = sum(counts)
    t2 = time.perf_counter()
    log.info("corpus pass 2 (text tokens, counts, plan): %.1f s", t2 - t1)
    held = stats[stats["heldout"]]  # already in (source, row_key) order: its own order
    held_copies = {f"{s}|{k}": ([0], [i]) for i, (s, k) in enumerate(zip(held["source"], held["row_key"], strict=True))}

    out_dir = Path(out_dir)
    tmp = out_dir.with_name(f"{out_dir.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "shards").mkdir(parents=True)
    try:
        (tmp / "tokenizer.json").write_text(tok_json, encoding="utf-8")
        unique_bytes = rows_ds.size_bytes()

        def write_split(ds: Any, folder: str, n_rows: int) -> list[dict[str, Any]]:
            (tmp / folder).mkdir(exist_ok=True)
            which = held_copies if folder == "heldout" else copies
            batches = _ordered_batches(ds, which, n_rows, cfg.shard_rows, unique_bytes)
            entries, offset = [], 0
            for i, batch in enumerate(batches):
                # One chunk per column: the Parquet bytes must not depend on how Ray cut blocks.
                table = batch.combine_chunks()
                # position: the row's global index in the mixed order (the data cursor unit).
                if table["position"][0].as_py() != offset:
                    raise RuntimeError(f"{folder}: rows out of order at position {offset}")
                offset += table.num_rows
                table = table.select(sorted(table.column_names))  # stable column order
                rel = f"{folder}/part-{i:05d}.parquet"
                pq.write_table(table, tmp / rel, compression="zstd")
                entries.append({
                    "path": rel, "sha256": file_sha256(tmp / rel), "rows": table.num_rows,
                    # fsum: exact, so the total does not depend on summation order
                    "effective_tokens": math.fsum(table["effective_tokens"].to_pylist()),
                })  # fmt: skip
            if offset != n_rows:
                raise RuntimeError(f"{folder}: wrote {offset} rows, the plan has {n_rows}")
            return entries

        shards = write_split(rows_ds, "shards", n_train)
        heldout = write_split(rows_ds, "heldout", len(held)) if len(held) else []
        log.info("corpus pass 3 (expand, sort, write): %.1f s", time.perf_counter() - t2)
        manifest = _manifest(cfg, mixture_path, included, excluded, policy_info, shares, plans,
                             stats, shards, heldout, tok_json)  # fmt: skip
        text = json.dumps(manifest, indent=2, sort_keys=True, ensure_ascii=False)
        (tmp / "manifest.json").write_text(text, encoding="utf-8")
        if out_dir.exists():
            trash = out_dir.with_name(f"{out_dir.name}.old-{os.getpid()}")
            out_dir.rename(trash)
            tmp.rename(out_dir)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            tmp.rename(out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


def _manifest(
    cfg: MixtureConfig, mixture_path: Any, included: list, excluded: list, policy_info: dict,
    shares: dict[str, float], plans: dict, stats: Any, shards: list, heldout: list, tok_json: str,
) -> dict[str, Any]:  # fmt: skip
    total_eff = sum(p.realized for p in plans.values())
    sources = []
    for s in included:
        p = plans[s.name]
        mine_all = stats[stats["source"] == s.name]
        mine = mine_all[~mine_all["heldout"]]
        mix_counts = p.counts
        by_mod = {m: int((mine[f"tokens_{m}"].to_numpy() * mix_counts).sum()) for m in s.modalities}
        digest = hashlib.sha256()
        for k, rh in sorted(zip(mine_all["row_key"], mine_all["raw_hash"], strict=True)):
            digest.update(f"{k}\0{rh}\n".encode())
        sources.append({
            "name": s.name, "kind": s.kind, "license": s.license, "location": s.location,
            "modalities": list(s.modalities), "params_hash": hash_canonical(s.params),
            "declared_share": round(s.share, 12), "target_share": round(shares[s.name], 12),
            "realized_share": round(p.realized / total_eff, 12),
            "effective_tokens": round(p.realized, 6), "available_effective_tokens": round(p.available, 6),
            "target_effective_tokens": round(p.target, 6), "shortfall_effective_tokens": round(p.shortfall, 6),
            "repeat_factor": round(p.repeats, 9), "rows": int(mix_counts.sum()),
            "unique_rows": int((mix_counts > 0).sum()), "heldout_rows": int(mine_all["heldout"].sum()),
            "heldout_effective_tokens": round(math.fsum(mine_all.loc[mine_all["heldout"], "effective_tokens"]), 6),
            "tokens_by_modality": by_mod, "input_hash": digest.hexdigest(),
            "effective_by_modality": {m: round(n * cfg.exchange_rates[m], 6) for m, n in by_mod.items()},
        })  # fmt: skip
    pc = cfg.patches
    tokenizers = {
        "text": {"name": "bpe-bytelevel (HF tokenizers)", "vocab_size": cfg.text_tokenizer.vocab_size,
                 "file": "tokenizer.json", "sha256": sha256_hex(tok_json.encode("utf-8")),
                 "max_tokens": cfg.text_tokenizer.max_tokens, "dtype": "int32"},
        "image": {"name": "rgb-patch", "size": pc.size, "patch": pc.patch, "dtype": "uint8", "dim": pc.patch * pc.patch * 3},
        "video": {"name": "rgb-tubelet", "size": pc.size, "patch": pc.patch, "frames": pc.frames_per_tubelet,
                  "dtype": "uint8", "dim": pc.frames_per_tubelet * pc.patch * pc.patch * 3,
                  "max_tubelets": pc.max_tubelets},
        "audio": {"name": "pcm-frame", "rate": pc.audio_rate, "frame": pc.audio_frame, "dtype": "float32",
                  "dim": pc.audio_frame, "max_frames": pc.max_audio_frames},
        "proprio": {"name": "timestep-vector", "dtype": "float32", "max_steps": pc.max_steps},
        "action": {"name": "timestep-vector", "dtype": "float32", "max_steps": pc.max_steps},
    }  # fmt: skip
    for t in tokenizers.values():
        t.setdefault("sha256", hash_canonical(t))
    body = {
        "schema_version": SCHEMA_VERSION, "hash_algorithm": "sha256", "name": cfg.name,
        "mixture_sha256": file_sha256(mixture_path), "seed": cfg.seed,
        "exchange_rates": dict(sorted(cfg.exchange_rates.items())), **policy_info,
        "mixing": to_dict(cfg.mixing), "heldout_fraction": cfg.heldout_fraction,
        "sources": sources, "excluded": excluded, "shards": shards, "heldout_shards": heldout,
        "tokenizers": tokenizers, "total_effective_tokens": round(total_eff, 6),
        "total_rows": sum(e["rows"] for e in shards),
    }  # fmt: skip
    return seal(body)

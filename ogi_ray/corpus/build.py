"""Corpus build on Ray Data: mixture YAML → license gate → tokenize → mix → shards + manifest.

    mixture.yaml ─► license gate (policy) ─► items (one per file/clip/episode)
        │                                         │ Ray Data flat_map, one task per block
        │  pass 1: text of every item ─► BPE trained on a fixed per-source prefix
        ▼                                         ▼
    pass 2: read + tokenize ─► rows (raw counts, effective_tokens, raw_hash) ─► materialize
        ▼
    driver: per-source effective tokens (small columns only) ─► held-out split ─►
            plan_mixture (exact shares) ─► row counts
        ▼
    pass 3: expand rows by count, key each copy by a seeded hash ─► sort ─► shards of
            ``shard_rows`` rows written in order ─► manifest.json (+ manifest_hash)

Everything is written under ``OUT.tmp-<pid>`` and renamed to ``OUT`` at the end, so a
failed build leaves nothing half-written. The same mixture, seed and inputs give the
same bytes in every shard and the same ``manifest_hash``.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from ogi_ray.canonical import file_sha256, hash_canonical, sha256_hex
from ogi_ray.config import ConfigError, to_dict
from ogi_ray.corpus.config import MODALITIES, MixtureConfig, load_mixture
from ogi_ray.corpus.license import gate_sources, load_policy
from ogi_ray.corpus.manifest import SCHEMA_VERSION, seal
from ogi_ray.corpus.mixing import MixingError, order_key, plan_mixture
from ogi_ray.corpus.sources import BUILDERS
from ogi_ray.corpus.tokenize import load_bpe, tokenize_sample, train_bpe

DEFAULT_POLICY = Path(__file__).resolve().parents[2] / "datasets" / "policy.yaml"
TEXT_PREFIX_PER_ITEM = 20_000  # characters per item offered to BPE training


def _read_text(batch_row: dict[str, Any], specs: dict[str, tuple[str, dict]]) -> list[dict]:
    kind, params = specs[batch_row["source"]]
    out = []
    for seq, sample in enumerate(BUILDERS[kind].read(batch_row["item"], params)):
        if sample.get("text"):
            out.append({
                "source": batch_row["source"], "item_index": batch_row["item_index"],
                "seq": seq, "text": sample["text"][:TEXT_PREFIX_PER_ITEM],
            })  # fmt: skip
    return out


def _tokenize(
    batch_row: dict[str, Any], specs: dict[str, tuple[str, dict]], tok_json: str, cfg_dict: dict
) -> list[dict]:
    from ogi_ray.config import from_dict
    from ogi_ray.corpus.config import PatchConfig, TextTokenizerConfig

    source, item = batch_row["source"], batch_row["item"]
    kind, params = specs[source]
    declared = set(cfg_dict["modalities"][source])
    bpe = load_bpe(tok_json)
    text_cfg = from_dict(TextTokenizerConfig, cfg_dict["text_tokenizer"])
    patch_cfg = from_dict(PatchConfig, cfg_dict["patches"])
    rows = []
    for sample in BUILDERS[kind].read(item, params):
        for row in tokenize_sample(
            sample, source=source, bpe=bpe, text_cfg=text_cfg, patch_cfg=patch_cfg,
            rates=cfg_dict["exchange_rates"],
        ):  # fmt: skip
            extra = set(row["modality"].split("+")) - declared
            if extra:
                raise ValueError(
                    f"source {source!r} item {item!r} produced modalities {sorted(extra)} "
                    f"not declared in its 'modalities' {sorted(declared)}"
                )
            row["text_tokens"] = np.asarray(row["text_tokens"], "<i4").tobytes()
            row["row_key"] = f"{batch_row['item_index']:06d}/{row['doc_id']}/{row['chunk']}"
            rows.append(row)
    return rows


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
        names = ", ".join(e["name"] for e in excluded) or "none"
        raise ConfigError(
            path, "sources",
            f"shares of the admitted sources must sum to 1, they sum to {total:.6f} "
            f"(excluded by license: {names}; set mixing.renormalize_after_gate to rescale)",
        )  # fmt: skip
    else:
        shares = {s.name: s.share for s in included}
    info = {"policy": policy.name, "policy_sha256": file_sha256(policy_path)}
    return included, excluded, info, shares


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
    import pyarrow as pa
    import pyarrow.parquet as pq
    import ray

    cfg = load_mixture(mixture_path)
    if seed is not None:
        cfg.seed = seed
    policy_path = Path(policy_path or DEFAULT_POLICY)
    included, excluded, policy_info, shares = _gate(cfg, mixture_path, policy_path)
    specs = {s.name: (s.kind, s.params) for s in included}

    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True  # determinism: order never depends on timing

    item_rows: list[dict[str, Any]] = []
    for s in included:
        its = BUILDERS[s.kind].items(s.params)
        if not its:
            raise ConfigError(mixture_path, f"sources.{s.name}", "source lists no items (empty source)")
        item_rows += [{"source": s.name, "item": it, "item_index": i} for i, it in enumerate(its)]
    n_blocks = max(1, min(len(item_rows), 64))
    items_ds = ray.data.from_items(item_rows, override_num_blocks=n_blocks)

    # Pass 1: the BPE's training text, a fixed prefix of each source (deterministic order).
    texts = items_ds.flat_map(_read_text, fn_args=(specs,)).take_all()
    texts.sort(key=lambda r: (r["source"], r["item_index"], r["seq"]))
    budget = {s.name: cfg.text_tokenizer.train_chars for s in included}
    train_texts = []
    for r in texts:
        if budget[r["source"]] > 0:
            train_texts.append(r["text"][: budget[r["source"]]])
            budget[r["source"]] -= len(train_texts[-1])
    if not train_texts:
        raise ConfigError(mixture_path, "sources", "no source has text to train the tokenizer on")
    tok_json = train_bpe(train_texts, cfg.text_tokenizer)

    # Pass 2: read + tokenize every item.
    cfg_dict = {
        "modalities": {s.name: s.modalities for s in included},
        "text_tokenizer": to_dict(cfg.text_tokenizer),
        "patches": to_dict(cfg.patches),
        "exchange_rates": cfg.exchange_rates,
    }
    rows_ds = items_ds.flat_map(_tokenize, fn_args=(specs, tok_json, cfg_dict)).materialize()
    count_cols = [f"tokens_{m}" for m in MODALITIES]
    stats = rows_ds.select_columns(["source", "row_key", "raw_hash", "effective_tokens", *count_cols]).to_pandas()
    for s in included:
        if not (stats["source"] == s.name).any():
            raise ConfigError(mixture_path, f"sources.{s.name}", "source produced no rows (empty source)")

    # Held-out rows (for evals) are chosen by a seeded hash of the row key, never mixed.
    h = stats["row_key"].map(lambda k: int(sha256_hex(f"{cfg.seed}|heldout|{k}".encode())[:8], 16))
    stats["heldout"] = (h / 0xFFFFFFFF) < cfg.heldout_fraction
    train = stats[~stats["heldout"]]
    eff = {s.name: train.loc[train["source"] == s.name, "effective_tokens"].to_numpy() for s in included}
    try:
        plans = plan_mixture(
            eff, shares, seed=cfg.seed, max_repeat=cfg.mixing.max_repeat,
            total=cfg.mixing.total_effective_tokens, allow_shortfall=cfg.mixing.allow_shortfall,
        )  # fmt: skip
    except MixingError as e:
        raise ConfigError(mixture_path, "mixing", str(e)) from e
    counts: dict[str, int] = {}
    for s in included:
        keys = train.loc[train["source"] == s.name, "row_key"].to_numpy()
        for k, c in zip(keys, plans[s.name].counts, strict=True):
            if c:
                counts[f"{s.name}|{k}"] = int(c)
    heldout_keys = {f"{r.source}|{r.row_key}" for r in stats[stats["heldout"]].itertuples()}

    seed_ = cfg.seed

    def expand(row: dict[str, Any]) -> list[dict[str, Any]]:
        n = counts.get(f"{row['source']}|{row['row_key']}", 0)
        return [{**row, "repeat": r, "order": order_key(seed_, row["source"], row["row_key"], r)} for r in range(n)]

    def keep_heldout(row: dict[str, Any]) -> bool:
        return f"{row['source']}|{row['row_key']}" in heldout_keys

    out_dir = Path(out_dir)
    tmp = out_dir.with_name(f"{out_dir.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "shards").mkdir(parents=True)
    try:
        (tmp / "tokenizer.json").write_text(tok_json, encoding="utf-8")

        def write_split(ds: Any, folder: str) -> list[dict[str, Any]]:
            (tmp / folder).mkdir(exist_ok=True)
            entries, offset = [], 0
            for i, batch in enumerate(ds.iter_batches(batch_size=cfg.shard_rows, batch_format="pyarrow")):
                table = batch.drop_columns([c for c in ("order",) if c in batch.column_names])
                # position: the row's global index in the mixed order (the data cursor unit).
                table = table.append_column("position", pa.array(range(offset, offset + table.num_rows), pa.int64()))
                offset += table.num_rows
                table = table.select(sorted(table.column_names))  # stable column order
                rel = f"{folder}/part-{i:05d}.parquet"
                pq.write_table(table, tmp / rel, compression="zstd")
                entries.append({
                    "path": rel, "sha256": file_sha256(tmp / rel), "rows": table.num_rows,
                    "effective_tokens": float(pa.compute.sum(table["effective_tokens"]).as_py()),
                })  # fmt: skip
            return entries

        shards = write_split(rows_ds.flat_map(expand).sort("order"), "shards")
        heldout = []
        if heldout_keys:
            heldout = write_split(rows_ds.filter(keep_heldout).sort("row_key"), "heldout")

        manifest = _manifest(cfg, mixture_path, included, excluded, policy_info, shares, plans,
                             stats, shards, heldout, tok_json)  # fmt: skip
        import json

        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True), encoding="utf-8")
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
        mine = stats[(stats["source"] == s.name) & (~stats["heldout"])]
        mix_counts = p.counts
        by_mod = {m: int((mine[f"tokens_{m}"].to_numpy() * mix_counts).sum()) for m in s.modalities}
        digest = hashlib.sha256()
        for k, rh in sorted(zip(stats.loc[stats["source"] == s.name, "row_key"], stats.loc[stats["source"] == s.name, "raw_hash"], strict=True)):
            digest.update(f"{k}\0{rh}\n".encode())
        sources.append({
            "name": s.name, "kind": s.kind, "license": s.license, "location": s.location,
            "modalities": list(s.modalities), "params_hash": hash_canonical(s.params),
            "declared_share": round(s.share, 12), "target_share": round(shares[s.name], 12),
            "realized_share": round(p.realized / total_eff, 12),
            "effective_tokens": round(p.realized, 6), "available_effective_tokens": round(p.available, 6),
            "target_effective_tokens": round(p.target, 6), "shortfall_effective_tokens": round(p.shortfall, 6),
            "repeat_factor": round(p.repeats, 9), "rows": int(mix_counts.sum()),
            "unique_rows": int((mix_counts > 0).sum()), "heldout_rows": int(((stats["source"] == s.name) & stats["heldout"]).sum()),
            "tokens_by_modality": by_mod, "input_hash": digest.hexdigest(),
        })  # fmt: skip
    pc = cfg.patches
    tokenizers = {
        "text": {"name": "bpe-bytelevel (HF tokenizers)", "vocab_size": cfg.text_tokenizer.vocab_size,
                 "file": "tokenizer.json", "sha256": sha256_hex(tok_json.encode("utf-8")),
                 "max_tokens": cfg.text_tokenizer.max_tokens},
        "image": {"name": "rgb-patch", "size": pc.size, "patch": pc.patch, "dtype": "uint8", "dim": pc.patch * pc.patch * 3},
        "video": {"name": "rgb-tubelet", "size": pc.size, "patch": pc.patch, "frames": pc.frames_per_tubelet,
                  "dtype": "uint8", "dim": pc.frames_per_tubelet * pc.patch * pc.patch * 3},
        "audio": {"name": "pcm-frame", "rate": pc.audio_rate, "frame": pc.audio_frame, "dtype": "float32"},
        "proprio": {"name": "timestep-vector", "dtype": "float32"},
        "action": {"name": "timestep-vector", "dtype": "float32"},
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

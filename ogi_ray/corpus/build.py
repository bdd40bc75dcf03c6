"""Corpus build on Ray Data: mixture → license gate → tokenize → exact mix → shards + manifest.

    prepare_build (driver, no Ray): mixture, policy, every source's params and inputs, the
        pretrained tokenizer and the output folder are loaded and checked ─► BuildPlan
        (so a typo fails in a second, not after a cluster start)
    run_build (Ray):
      [bpe only] one task per source reads its first ``train_chars`` of text ─► BPE
      pass 1: one task per source lists its items into units; Ray Data reads every unit:
          row licenses gated, media tokenized, text encoded and packed, documents held out
          by hash ─► token rows + status rows, materialized (object store, spilled)
      totals: one partial per block (passes/shards.py) summed on the driver, one block at a
          time ─► per-source token sums, bucket histograms, excluded/skipped counts, errors
      plan (driver): shares → full passes + remainder per source (mixing.py); the few rows
          of each crossing bucket are fetched to place the cut exactly
      pass 2: copies of every row by hash ─► rows per shard (offsets) ─► groupby(shard)
          ─► workers sort, number, write and hash each Parquet shard in the staging folder
      driver: one entry per shard ─► manifest ─► commit (output.py)

The driver holds per-source totals and one entry per shard, never a row or a per-row
statistic: its memory is O(sources + shards). Shard bytes, and so the manifest hash, are
a pure function of the inputs, the mixture and the seed: every order is a hash, never
task timing, so any number of CPUs, nodes or blocks gives the same corpus.
"""

from __future__ import annotations

import json
import logging
import math
import pickle
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ogi_ray.canonical import file_sha256, hash_canonical
from ogi_ray.config import ConfigError, to_dict
from ogi_ray.corpus import output
from ogi_ray.corpus.config import MODALITIES, MixtureConfig, load_mixture
from ogi_ray.corpus.license import LicensePolicy, gate_sources, load_policy
from ogi_ray.corpus.manifest import SCHEMA_VERSION, seal
from ogi_ray.corpus.mixing import MixingError, SourcePlan, crossing_bucket, plan_totals, take_prefix
from ogi_ray.corpus.passes import BuildSpec, list_units, read_units, sample_texts
from ogi_ray.corpus.shards import (
    HELDOUT_PART,
    TOKENS,
    CopyPlan,
    Totals,
    block_stats,
    bucket_rows,
    copies,
    part_counts,
    write_part,
)
from ogi_ray.corpus.sources import kind_of
from ogi_ray.corpus.text_tokenizer import TextTokenizer, load_pretrained, manifest_entry, train_bpe
from ogi_ray.corpus.tokenize import SourceDataError

log = logging.getLogger(__name__)
DEFAULT_POLICY = Path(__file__).resolve().parents[2] / "datasets" / "policy.yaml"


@dataclass
class BuildPlan:
    """A validated build, ready to run on Ray."""

    cfg: MixtureConfig
    mixture: str
    policy: LicensePolicy
    policy_info: dict[str, str]
    included: list
    excluded: list[dict[str, Any]]
    shares: dict[str, float]
    out: output.OutDir
    tokenizer: TextTokenizer | None  # None: a BPE is trained on a sample


def _shares(cfg: MixtureConfig, path: str, included: list, excluded: list) -> dict[str, float]:
    if not included:
        raise ConfigError(path, "sources", "the license gate excluded every source")
    total = sum(s.share for s in included)
    if cfg.mixing.renormalize_after_gate:
        return {s.name: s.share / total for s in included}
    if abs(total - 1.0) > 1e-6:
        names = ", ".join(f"{e['name']} ({e['reason']})" for e in excluded) or "none"
        raise ConfigError(path, "sources",
                          f"shares of the admitted sources must sum to 1, they sum to {total:.6f} "
                          f"(excluded by license: {names}; set mixing.renormalize_after_gate to rescale)")  # fmt: skip
    return {s.name: s.share for s in included}


def prepare_build(
    mixture_path: str | Path, out_dir: str | Path, *, policy_path: str | Path | None = None,
    seed: int | None = None, overwrite: bool = False,
) -> BuildPlan:  # fmt: skip
    """Load and check everything a build needs, without Ray; ConfigError names the field."""
    path = str(mixture_path)
    cfg = load_mixture(path)
    if seed is not None:
        cfg.seed = seed
    policy_path = Path(policy_path or DEFAULT_POLICY)
    policy = load_policy(policy_path)
    gated = [s for s in cfg.sources if s.license is not None]
    ok, excluded = gate_sources(gated, policy, file=path)
    included = [s for s in cfg.sources if s.license is None or s in ok]
    shares = _shares(cfg, path, included, excluded)
    index = {id(s): i for i, s in enumerate(cfg.sources)}
    for s in included:  # inputs exist and are reachable (excluded sources are never read)
        try:
            kind_of(s.kind).check(s.params)
        except ValueError as e:
            key, _, msg = str(e).partition(": ")
            raise ConfigError(path, f"sources[{index[id(s)]}].params.{key}", msg or str(e)) from e
    tokenizer = None if cfg.text_tokenizer.kind == "bpe" and not cfg.text_tokenizer.reuse else load_pretrained(cfg.text_tokenizer, path)
    out = output.check_out(str(out_dir), overwrite)
    info = {"policy": policy.name, "policy_sha256": file_sha256(policy_path)}
    return BuildPlan(cfg, path, policy, info, included, excluded, shares, out, tokenizer)


def build_corpus(
    mixture_path: str | Path, out_dir: str | Path, *, policy_path: str | Path | None = None,
    seed: int | None = None, overwrite: bool = False,
) -> dict[str, Any]:  # fmt: skip
    """Build the corpus of ``mixture_path`` into ``out_dir`` (a path or URI); returns the
    manifest. Ray must be initialised by the caller (the CLI does it after validating)."""
    return run_build(prepare_build(mixture_path, out_dir, policy_path=policy_path, seed=seed, overwrite=overwrite))


def _spec(plan: BuildPlan, tokenizer: TextTokenizer | None) -> BuildSpec:
    c = plan.cfg
    return BuildSpec({s.name: s for s in plan.included}, c.patches, c.text_tokenizer, tokenizer,
                     dict(c.exchange_rates), c.seed, c.heldout_fraction, plan.policy)  # fmt: skip


def _train_tokenizer(plan: BuildPlan) -> TextTokenizer:
    """A BPE on each source's first ``train_chars`` characters (one Ray task per source)."""
    import ray

    spec, budget = _spec(plan, None), plan.cfg.text_tokenizer.train_chars
    task = ray.remote(sample_texts)
    texts = ray.get([task.remote(s, spec, budget) for s in plan.included])  # mixture order
    flat = [t for per_source in texts for t in per_source]
    if not flat:
        raise ConfigError(plan.mixture, "sources", "no source has text to train the tokenizer on")
    return train_bpe(flat, plan.cfg.text_tokenizer.vocab_size)


def _pass1(plan: BuildPlan, spec: BuildSpec) -> Any:
    import ray

    units = ray.data.from_items([{"source": s.name} for s in plan.included]).flat_map(list_units, fn_args=(spec,))
    units = units.materialize()
    n = units.count()
    cpus = int(ray.cluster_resources().get("CPU", 1))
    units = units.repartition(max(1, min(n, 4 * cpus)))
    rows = units.map_batches(read_units, batch_size=1, batch_format="pyarrow", fn_args=(spec,))
    return rows.materialize()


def _totals(rows: Any) -> Totals:
    totals = Totals()
    for r in rows.map_batches(block_stats, batch_size=None, batch_format="pyarrow").iter_rows():
        totals.add(pickle.loads(r["blob"]))  # one block's partial at a time
    return totals


def _raise_errors(plan: BuildPlan, totals: Totals) -> None:
    if totals.errors:
        order = {s.name: i for i, s in enumerate(plan.included)}
        source, _unit, item, where, message = min(totals.errors, key=lambda e: (order[e[0]], *e[1:]))
        more = f" (and {totals.n_errors - 1} more)" if totals.n_errors > 1 else ""
        raise SourceDataError(source, item or None, None, message + more, file=plan.mixture, row=where or None)
    for s in plan.included:
        t = totals.sources.get(s.name)
        if t is None or t.train_rows == 0:
            why = ", ".join(f"{st} {r!r}: {n}" for (src, st, r), n in sorted(totals.counts.items()) if src == s.name)
            raise ConfigError(plan.mixture, f"sources.{s.name}",
                              f"source produced no rows (empty source){': ' + why if why else ''}")  # fmt: skip


def _plan(plan: BuildPlan, totals: Totals, rows: Any) -> tuple[dict[str, SourcePlan], dict[str, np.ndarray]]:
    """Per-source plans with the remainder cut placed exactly; and the selected raw tokens."""
    rates = np.asarray([plan.cfg.exchange_rates.get(m, 0.0) for m in MODALITIES])
    avail = {s.name: float(totals.sources[s.name].train_tok @ rates) for s in plan.included}
    m = plan.cfg.mixing
    try:
        plans = plan_totals(avail, plan.shares, max_repeat=m.max_repeat, total=m.total_effective_tokens,
                            allow_shortfall=m.allow_shortfall)  # fmt: skip
    except MixingError as e:
        raise ConfigError(plan.mixture, "mixing", str(e)) from e
    selected, wanted, before = {}, {}, {}
    for name, p in plans.items():
        hist = totals.sources[name].hist  # (buckets, 1 + modalities): rows, tokens
        b, acc = crossing_bucket(hist[:, 1:] @ rates, p.remainder)
        p.bucket, selected[name] = b, hist[:b, 1:].sum(0)
        if b < len(hist) and hist[b, 0] == 1:  # one row: decide without looking at it
            e = float(hist[b, 1:] @ rates)
            if abs(acc + e - p.remainder) < abs(acc - p.remainder):
                p.bucket, selected[name] = b + 1, selected[name] + hist[b, 1:]
        elif b < len(hist):
            wanted[name], before[name] = b, acc
    if wanted:
        found = rows.map_batches(bucket_rows, batch_format="pyarrow", fn_args=(wanted,)).take_all()
        for name in wanted:
            mine = sorted((r["h_sel"], r["row_key"], np.asarray([r[c] for c in TOKENS], np.int64))
                          for r in found if r["source"] == name)  # fmt: skip
            k = take_prefix([float(t @ rates) for _, _, t in mine], before[name], plans[name].remainder)
            if k:
                plans[name].upto, plans[name].prefix_rows = (mine[k - 1][0], mine[k - 1][1]), k
                selected[name] = selected[name] + sum(t for _, _, t in mine[:k])
    for name, p in plans.items():
        p.selected = float(selected[name] @ rates)
    return plans, selected


def run_build(plan: BuildPlan) -> dict[str, Any]:
    """Run a prepared build on the current Ray cluster; returns the sealed manifest."""
    import ray

    ctx = ray.data.DataContext.get_current()
    saved = ctx.shuffle_strategy
    # Sort-based shuffle for the one groupby: on small clusters the hash shuffle's
    # aggregator actors cost seconds to start (measured: docs/ray-notes.md).
    ctx.shuffle_strategy = "sort_shuffle_pull_based"
    try:
        return _run(plan)
    finally:
        ctx.shuffle_strategy = saved


def _run(plan: BuildPlan) -> dict[str, Any]:
    cfg = plan.cfg
    t0 = time.perf_counter()
    tok = plan.tokenizer or _train_tokenizer(plan)
    spec = _spec(plan, tok)
    rows = _pass1(plan, spec)
    totals = _totals(rows)
    _raise_errors(plan, totals)
    plans, selected = _plan(plan, totals, rows)
    t1 = time.perf_counter()
    log.info("corpus pass 1 (read, gate, tokenize, pack, totals, plan): %.1f s", t1 - t0)
    if cfg.heldout_fraction > 0:
        for name in sorted(n for n, t in totals.sources.items() if t.held_rows == 0):
            # The split is per document by hash: a source of few documents may get none.
            log.warning("source %s: no document fell in the held-out split (heldout_fraction %.3g): its held-out "
                        "scores will be missing; raise heldout_fraction or give it more documents",
                        name, cfg.heldout_fraction)  # fmt: skip
    n_train = sum(p.full * totals.sources[n].train_rows + _selected_rows(p, totals.sources[n].hist) for n, p in plans.items())
    n_held = sum(t.held_rows for t in totals.sources.values())
    cp = CopyPlan(plans, max(1, math.ceil(n_train / cfg.shard_rows)), max(1, math.ceil(n_held / cfg.shard_rows)), cfg.seed)
    counts: dict[int, int] = {}
    for r in rows.map_batches(part_counts, batch_size=None, batch_format="pyarrow", fn_args=(cp,)).iter_rows():
        for part, n in pickle.loads(r["blob"]).items():
            counts[part] = counts.get(part, 0) + n
    offsets, acc = {}, {False: 0, True: 0}
    for part in sorted(counts):  # global positions: shards in order, each split from 0
        held = part >= HELDOUT_PART
        offsets[part], acc[held] = acc[held], acc[held] + counts[part]
    stage = output.staging(plan.out)
    try:
        from ogi_ray.corpus import fsio

        fsio.write_bytes(fsio.join(stage, tok.file), tok.data)
        written = (rows.map_batches(copies, batch_format="pyarrow", fn_args=(cp,))
                   .groupby("part").map_groups(write_part, batch_format="pyarrow", fn_args=(offsets, stage))
                   .take_all())  # fmt: skip
        written.sort(key=lambda e: e["part"])
        if sum(e["rows"] for e in written) != n_train + n_held:
            raise RuntimeError(f"wrote {sum(e['rows'] for e in written)} rows, the plan has {n_train + n_held}")
        log.info("corpus pass 2 (copies, shuffle, write): %.1f s", time.perf_counter() - t1)
        manifest = _manifest(plan, tok, plans, selected, totals, written)
        text = json.dumps(manifest, indent=2, sort_keys=True, ensure_ascii=False)
        files = [e["path"] for e in written] + [tok.file]
        output.commit(plan.out, stage, files, text)
    except BaseException:
        output.abort(plan.out, stage)
        raise
    return manifest


def _selected_rows(p: SourcePlan, hist: np.ndarray) -> int:
    """Remainder rows taken: whole buckets below the cut, plus the crossing bucket's prefix."""
    return int(hist[: p.bucket, 0].sum()) + (p.prefix_rows if p.upto is not None else 0)


def _manifest(
    plan: BuildPlan, tok: TextTokenizer, plans: dict[str, SourcePlan], selected: dict[str, np.ndarray],
    totals: Totals, written: list[dict[str, Any]],
) -> dict[str, Any]:  # fmt: skip
    cfg, rates = plan.cfg, plan.cfg.exchange_rates
    mixed: dict[str, dict[str, int]] = {}  # per source, from the shards as written
    for e in written:
        if e["part"] < HELDOUT_PART:
            for name, st in json.loads(e["stats"]).items():
                acc = mixed.setdefault(name, {})
                for k, v in st.items():
                    acc[k] = acc.get(k, 0) + v
    eff = {n: sum(mixed[n][f"tokens_{m}"] * rates.get(m, 0.0) for m in MODALITIES) for n in plans}
    total_eff = sum(eff.values())
    sources = []
    for s in plan.included:
        p, t, got = plans[s.name], totals.sources[s.name], mixed[s.name]
        if not math.isclose(eff[s.name], p.realized, rel_tol=1e-9, abs_tol=1e-6):
            raise RuntimeError(f"source {s.name}: shards hold {eff[s.name]} effective tokens, the plan {p.realized}")
        by_mod = {m: int(got[f"tokens_{m}"]) for m in s.modalities}
        held = {m: int(x) for m, x in zip(MODALITIES, t.held_tok, strict=True)}
        counts = {st: {r: n for (src, st2, r), n in sorted(totals.counts.items()) if src == s.name and st2 == st}
                  for st in ("excluded", "skipped")}  # fmt: skip
        sources.append({
            "name": s.name, "kind": s.kind, "license": s.license or "", "location": s.location,
            "license_field": getattr(s.params, "license_field", "") or "", "on_error": s.on_error,
            "modalities": list(s.modalities), "params_hash": hash_canonical(to_dict(s.params)),
            "declared_share": round(s.share, 12), "target_share": round(plan.shares[s.name], 12),
            "realized_share": round(eff[s.name] / total_eff, 12), "effective_tokens": round(eff[s.name], 6),
            "available_effective_tokens": round(p.available, 6), "target_effective_tokens": round(p.target, 6),
            "shortfall_effective_tokens": round(p.shortfall, 6), "repeat_factor": round(p.repeats, 9),
            "rows": got["rows"], "unique_rows": got["unique_rows"], "heldout_rows": t.held_rows,
            "heldout_effective_tokens": round(sum(held[m] * rates.get(m, 0.0) for m in MODALITIES), 6),
            "tokens_by_modality": by_mod, "effective_by_modality": {m: round(n * rates[m], 6) for m, n in by_mod.items()},
            "token_lengths": _lengths(got, s.modalities),
            "input_hash": f"{t.fingerprint:064x}", "excluded_rows": counts["excluded"], "skipped_rows": counts["skipped"],
        })  # fmt: skip
    shards = [{k: e[k] for k in ("path", "sha256", "rows", "effective_tokens")} for e in written]
    body = {
        "schema_version": SCHEMA_VERSION, "hash_algorithm": "sha256", "name": cfg.name,
        "mixture_sha256": file_sha256(plan.mixture), "seed": cfg.seed,
        "exchange_rates": dict(sorted(rates.items())), "exchange_rates_source": dict(cfg.exchange_rates_source),
        **plan.policy_info,
        "mixing": to_dict(cfg.mixing), "heldout_fraction": cfg.heldout_fraction, "shard_rows": cfg.shard_rows,
        "sources": sources, "excluded": plan.excluded,
        "shards": [e for e, w in zip(shards, written, strict=True) if w["part"] < HELDOUT_PART],
        "heldout_shards": [e for e, w in zip(shards, written, strict=True) if w["part"] >= HELDOUT_PART],
        "tokenizers": _tokenizers(cfg, tok), "total_effective_tokens": round(total_eff, 6),
    }  # fmt: skip
    body["total_rows"] = sum(e["rows"] for e in body["shards"])
    return seal(body)


def _lengths(stats: dict[str, int], modalities: list[str]) -> dict[str, dict[str, int]]:
    """Per modality, {tokens in a row: rows with that many} (rows without it left out):
    enough to count exactly what a model with any slot budget is fed
    (train/accounting.py)."""
    out: dict[str, dict[str, int]] = {}
    for m in modalities:
        prefix = f"len/tokens_{m}/"
        hist = {int(k[len(prefix) :]): v for k, v in stats.items() if k.startswith(prefix)}
        out[m] = {str(n): hist[n] for n in sorted(hist)}
    return out


def _tokenizers(cfg: MixtureConfig, tok: TextTokenizer) -> dict[str, Any]:
    pc = cfg.patches
    out = {
        "text": manifest_entry(tok, cfg.text_tokenizer),
        "image": {"name": "rgb-patch", "size": pc.size, "patch": pc.patch, "dtype": "uint8", "dim": pc.patch * pc.patch * 3},
        "video": {"name": "rgb-tubelet", "size": pc.size, "patch": pc.patch, "frames": pc.frames_per_tubelet,
                  "dtype": "uint8", "dim": pc.frames_per_tubelet * pc.patch * pc.patch * 3,
                  "max_tubelets": pc.max_tubelets},
        "audio": {"name": "pcm-frame", "rate": pc.audio_rate, "frame": pc.audio_frame, "dtype": "float32",
                  "dim": pc.audio_frame, "max_frames": pc.max_audio_frames},
        "proprio": {"name": "timestep-vector", "dtype": "float32", "max_steps": pc.max_steps},
        "action": {"name": "timestep-vector", "dtype": "float32", "max_steps": pc.max_steps},
    }  # fmt: skip
    for t in out.values():
        t.setdefault("sha256", hash_canonical(t))
    return out

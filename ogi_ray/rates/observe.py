"""What a finished proxy trained on and how it scored: the adapters between the training
stack and the swarm. Everything the swarm reads from a run goes through this module, so
when the trainer's accounting or eval suite changes, only this file changes.

    run_dir/lineage ──final_record──► the head record (data cursor, eval scores)
    record / train() summary ──final_eval──► {eval name: float}   (summary["final_eval"]
                                  when the trainer provides it, else the head record's eval)
    eval names ──objective_losses──► {objective: {source: held-out loss}}
                                  ("perplexity/<source>" → lm as log-perplexity;
                                   "recall@1/…" is a score, not a loss: left out)
    record + job + corpus ──trained_tokens──► {modality: raw tokens in the model's slots}
                                  (summary["tokens_by_modality"] when the trainer counts
                                   them, else recounted from the shards, checked against
                                   the trainer's own text count)
    corpus + job ──source_profile──► per source: rows, mean raw and in-slot tokens per row
    corpus + job ──heldout_text_tokens──► per source: the held-out text tokens the lm eval
                                  scores (the rows the eval reads, cut to the text slots)
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from ogi_ray.corpus.config import MODALITIES

NOT_LOSSES = ("recall@1",)  # eval scores where higher is better
_TOKEN_COLUMNS = [f"tokens_{m}" for m in MODALITIES]


class ProxyObservationError(RuntimeError):
    """A proxy's run cannot be read as the swarm needs it."""


def read_manifest(corpus_dir: str | Path) -> dict[str, Any]:
    """The corpus manifest (docs/corpus.md, "Manifest schema")."""
    path = Path(corpus_dir) / "manifest.json"
    return json.loads(path.read_text(encoding="utf-8"))


def final_record(run_dir: str | Path) -> dict[str, Any] | None:
    """The run's head lineage record, or None when it has none yet."""
    from ogi_ray.lineage.record import read_head, read_record

    lineage = Path(run_dir) / "lineage"
    head = read_head(lineage) if lineage.is_dir() else ""
    return read_record(lineage, head) if head else None


def final_eval(record: dict[str, Any], summary: dict[str, Any] | None = None) -> dict[str, float]:
    """The last checkpoint's eval scores as floats."""
    if summary and summary.get("final_eval"):
        return {k: float(v) for k, v in summary["final_eval"].items()}
    return {k: float(v) for k, v in record["eval"].items()}


def objective_losses(scores: dict[str, float]) -> dict[str, dict[str, float]]:
    """{objective: {source: loss}} from eval names ``<objective>/<source>``."""
    out: dict[str, dict[str, float]] = {}
    for name, value in scores.items():
        objective, _, source = name.partition("/")
        if not source or objective in NOT_LOSSES:
            continue
        if objective == "perplexity":  # the eval reports lm as exp(loss)
            objective, value = "lm", math.log(value)
        out.setdefault(objective, {})[source] = float(value)
    return out


def model_slots(job: Any, manifest: dict[str, Any]) -> dict[str, int]:
    """Slots per row the model has for each modality: what collate keeps of a row."""
    from ogi_ray.train.accounting import model_slots as slots_of  # the trainer's own rule
    from ogi_ray.train.launch import fit_model_to_corpus  # the launch plan's own layout rule

    return slots_of(fit_model_to_corpus(job, manifest).model)


def _token_table(corpus_dir: str | Path, manifest: dict[str, Any]) -> dict[str, np.ndarray]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    parts = [pq.read_table(Path(corpus_dir) / s["path"], columns=["position", "source", *_TOKEN_COLUMNS])
             for s in manifest["shards"]]  # fmt: skip
    t = pa.concat_tables(parts)
    order = np.argsort(t["position"].to_numpy())
    cols = {c: t[c].to_numpy()[order] for c in _TOKEN_COLUMNS}
    cols["source"] = np.asarray(t["source"].to_pylist(), dtype=object)[order]
    return cols


def trained_tokens(
    record: dict[str, Any], job: Any, corpus_dir: str | Path, summary: dict[str, Any] | None = None
) -> dict[str, float]:
    """Raw tokens per modality the proxy's model was fed.

    Today's trainer reads rows 0, 1, … of the corpus order (wrapping over epochs; the
    record's ``data_cursor.rows`` says how many) and collate keeps at most the model's
    slots of each modality per row. The text count must equal the record's
    ``tokens_seen`` (the trainer's own count); a mismatch means this recount no longer
    matches the trainer and is an error rather than a wrong rate.
    """
    if summary and summary.get("tokens_by_modality"):
        return {m: float(summary["tokens_by_modality"].get(m, 0.0)) for m in MODALITIES}
    manifest = read_manifest(corpus_dir)
    slots = model_slots(job, manifest)
    table = _token_table(corpus_dir, manifest)
    n = len(table["source"])
    rows = int(record["data_cursor"]["rows"])
    counts = np.full(n, rows // n, dtype=np.int64)
    counts[: rows % n] += 1
    out = {m: float((np.minimum(table[f"tokens_{m}"], slots[m]) * counts).sum()) for m in MODALITIES}
    seen = float(record["data_cursor"]["tokens_seen"])
    if out["text"] != seen:
        raise ProxyObservationError(
            f"{corpus_dir}: recounted {out['text']:.0f} text tokens in the first {rows} rows, the "
            f"trainer counted {seen:.0f}: the trainer no longer feeds rows as observe.py assumes"
        )
    return out


def source_profile(corpus_dir: str | Path, job: Any) -> dict[str, dict[str, Any]]:
    """Per source: copies in the corpus, and mean raw and in-slot tokens per row of each
    modality. The mixing law turns shares into tokens with these (propose.py)."""
    manifest = read_manifest(corpus_dir)
    slots = model_slots(job, manifest)
    table = _token_table(corpus_dir, manifest)
    out: dict[str, dict[str, Any]] = {}
    for s in manifest["sources"]:
        mask = table["source"] == s["name"]
        rows = int(mask.sum())
        raw = {m: float(table[f"tokens_{m}"][mask].mean()) if rows else 0.0 for m in MODALITIES}
        fed = {m: float(np.minimum(table[f"tokens_{m}"][mask], slots[m]).mean()) if rows else 0.0
               for m in MODALITIES}  # fmt: skip
        out[s["name"]] = {"rows": rows, "modalities": list(s["modalities"]), "raw_per_row": raw, "fed_per_row": fed}
    return out


def heldout_text_tokens(corpus_dir: str | Path, job: Any) -> dict[str, float]:
    """Text tokens per source in the held-out rows the eval reads: the first
    ``data.eval_rows_per_source`` rows of each source in held-out order (as
    train/data.py ``read_heldout`` takes them), each cut to the model's text slots."""
    import pyarrow.parquet as pq

    manifest = read_manifest(corpus_dir)
    slots = model_slots(job, manifest)["text"]
    per = int(job.data.eval_rows_per_source)
    seen: dict[str, int] = {}
    out: dict[str, float] = {}
    for shard in manifest.get("heldout_shards", []):
        t = pq.read_table(Path(corpus_dir) / shard["path"], columns=["source", "tokens_text"]).to_pydict()
        for source, n in zip(t["source"], t["tokens_text"], strict=True):
            if seen.get(source, 0) < per:
                seen[source] = seen.get(source, 0) + 1
                out[source] = out.get(source, 0.0) + float(min(n, slots))
    return out

"""Training phases: a run as a sequence of (corpus, token budget, starting λ).

The seed tunes the loss weights and targets the compute-optimal point per phase. A job's
``phases:`` list names, for each phase, its corpus (default ``data.corpus``), its budget
and its starting loss weights. ``resolve_phases`` turns that into fixed step ranges once,
before launch, so the lr schedule, the optimizer, the data cursor and the lineage chain
run straight through the boundaries:

    PhaseConfig[] ─► phase_corpora: verify each corpus once
      ─► merged_manifest: one tokenizer per used modality (else ConfigError) ─► model
      ─► resolve_phases: budget → tokens (``tokens``, or ``optimal_fraction`` × the
         planner's compute-optimal D for the model's N) → steps
      ─► Phase(start, steps, corpus, manifest, λ⁰) ...   loop.steps = Σ steps

Budgets are in text tokens (what ``batch_tokens`` counts). A phase's steps are fixed at
launch from its corpus' mean text tokens per row (truncated to ``data.seq_len``, as the
model sees them) × rows per step at the configured accumulation, so the realised tokens
follow the batch controller (the summary reports both). Without ``phases:`` the run is
one phase over ``data.corpus`` with ``tuner.initial``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ogi_ray.config import ConfigError


@dataclass(kw_only=True)
class PhaseConfig:
    name: str
    corpus: str = ""  # a built corpus folder; "" = data.corpus
    steps: int = 0  # the phase's length: exactly one of steps, tokens, optimal_fraction
    tokens: int = 0  # text-token budget
    optimal_fraction: float = 0.0  # × the planner's compute-optimal tokens for the model
    constants: str = "epoch"  # scaling-law constants for optimal_fraction
    lambdas: dict[str, float] | None = None  # starting λ (normalised); None = tuner.initial

    def validate(self) -> None:
        if not self.name:
            raise ValueError("name: must be non-empty")
        given = [k for k in ("steps", "tokens", "optimal_fraction") if getattr(self, k)]
        if len(given) != 1:
            raise ValueError(f"steps: give exactly one of steps, tokens, optimal_fraction (got {given or 'none'})")
        if self.steps < 0 or self.tokens < 0 or not (0 <= self.optimal_fraction < math.inf):
            raise ValueError("steps: budgets must be >= 0")
        for k, v in (self.lambdas or {}).items():
            if not (math.isfinite(v) and v > 0):
                raise ValueError(f"lambdas: {k} must be finite and > 0, got {v}")


@dataclass(kw_only=True)
class Phase:
    """One resolved phase: what the worker needs, JSON-friendly."""

    index: int
    name: str
    start: int  # first step (global step numbering)
    steps: int
    corpus: str  # absolute path
    manifest_hash: str
    total_rows: int
    lambdas: dict[str, float] | None
    token_budget: int | None = None  # None when the phase was given in steps

    @property
    def end(self) -> int:
        return self.start + self.steps


def text_tokens_per_row(corpus: str | Path, seq_len: int) -> float:
    """Mean text tokens a training row of ``corpus`` feeds the model: min(row's text
    tokens, seq_len), as the collate step truncates (read from the shards' counts)."""
    import numpy as np
    import pyarrow.parquet as pq

    from ogi_ray.corpus.manifest import shard_paths

    counts = [pq.read_table(p, columns=["tokens_text"]).column(0).to_numpy() for p in shard_paths(corpus)]
    n = np.concatenate(counts) if counts else np.zeros(0)
    return float(np.minimum(n, seq_len).mean()) if n.size else 0.0


def merged_manifest(manifests: list[dict[str, Any]], where: list[str]) -> dict[str, Any]:
    """One view of several corpora for sizing the model: every source (so the layout has
    slots for every modality any phase uses) and, per modality, the tokenizer of the
    corpora that use it. Those must agree (text always), or the embeddings would change
    meaning at a phase boundary."""
    tokenizers: dict[str, dict[str, Any]] = {}
    owner: dict[str, str] = {}
    for m, field_name in zip(manifests, where, strict=True):
        used = {"text"} | {mod for s in m["sources"] for mod in s["modalities"]}
        for mod in sorted(used):
            tok = m["tokenizers"].get(mod, {})
            if mod not in tokenizers:
                tokenizers[mod], owner[mod] = tok, field_name
            elif tok.get("sha256") != tokenizers[mod].get("sha256"):
                hint = " (build it with text_tokenizer.reuse: the first corpus)" if mod == "text" else ""
                raise ConfigError(None, field_name, f"its {mod} tokenizer differs from {owner[mod]}'s{hint}")
    # Modalities no phase uses keep the first corpus' (unused) settings: the layout
    # gives them no slots.
    tokenizers = {**manifests[0]["tokenizers"], **tokenizers}
    return {**manifests[0], "tokenizers": tokenizers, "sources": [s for m in manifests for s in m["sources"]]}


def phase_corpora(
    phases: list[PhaseConfig], default_corpus: str, *, file: str | Path | None = None, mixture: str = "",
) -> list[tuple[str, dict[str, Any]]]:  # fmt: skip
    """(absolute folder or URI, verified manifest) of each phase's corpus (one entry
    without phases), checked once here: the manifest and every shard hash. A missing
    corpus names the config field and the command that builds it (``mixture``: the
    mixture file the config says it is built from)."""
    from ogi_ray.corpus.manifest import MANIFEST, CorpusError, verify_corpus
    from ogi_ray.storage import Store, absolute

    out = []
    for i, p in enumerate(phases or [None]):
        folder = (p.corpus if p else "") or default_corpus
        where = f"phases[{i}].corpus" if p and p.corpus else "data.corpus"
        build = f"ogi corpus build {mixture or 'MIXTURE.yaml'} --out {folder or 'DIR'}"
        if not folder:
            raise ConfigError(file, where, f"no corpus folder given: set it to a built corpus (`{build}`)")
        if not Store(folder).is_file(MANIFEST):
            raise ConfigError(file, where, f"{folder} is not a built corpus (no {MANIFEST}): build it first "
                              f"with `{build}`")  # fmt: skip
        try:
            out.append((absolute(folder), verify_corpus(folder)))
        except CorpusError as e:
            raise ConfigError(file, where, str(e)) from None
    return out


def resolve_phases(
    phases: list[PhaseConfig], corpora: list[tuple[str, dict[str, Any]]], *,
    default_lambdas: dict[str, float] | None, rows_per_step: int, total_steps: int,
    n_params: float, seq_len: int,
) -> list[Phase]:  # fmt: skip
    """Fixed step ranges for the phases (one phase of ``total_steps`` when empty);
    ``corpora`` comes from ``phase_corpora``."""
    from ogi_ray.scaling.law import load_law

    if not phases:
        phases = [PhaseConfig(name="main", steps=total_steps, lambdas=default_lambdas)]
    out: list[Phase] = []
    start = 0
    for i, (p, (folder, m)) in enumerate(zip(phases, corpora, strict=True)):
        budget: int | None = None
        if p.steps:
            steps = p.steps
        else:
            try:
                law = load_law(p.constants)
            except Exception as e:
                raise ConfigError(None, f"phases[{i}].constants", str(e)) from e
            budget = p.tokens or int(p.optimal_fraction * law.optimal_tokens(n_params))
            per_step = text_tokens_per_row(folder, seq_len) * rows_per_step
            steps = max(1, math.ceil(budget / max(per_step, 1e-9)))
        out.append(Phase(
            index=i, name=p.name, start=start, steps=steps, corpus=folder,
            manifest_hash=m["manifest_hash"], total_rows=int(m["total_rows"]),
            lambdas=p.lambdas if p.lambdas is not None else default_lambdas, token_budget=budget,
        ))  # fmt: skip
        start += steps
    return out


def phase_at(phases: list[Phase], step: int) -> Phase:
    """The phase a (global) step belongs to; the last phase beyond the end."""
    for p in phases:
        if step < p.end:
            return p
    return phases[-1]


def with_total_steps(job: Any, phases: list[Phase]) -> Any:
    """The job with ``loop.steps`` = the phases' total (the schedule spans all phases)."""
    return replace(job, loop=replace(job.loop, steps=phases[-1].end))

"""Verify a run's eval attestations (lineage/attest.py, docs/lineage.md §4), and re-run
some of them.

    ATTEST_HEAD ─► attestation ─► parent ─► … (file name == SHA-256 of its canonical
      bytes; schema); each names a record on the checkpoint chain, at that record's step,
      and no record twice; nothing in attestations/ off this chain
    --evals K: the last attestation and K − 1 more drawn with a seed the prover cannot
      know, re-run through ``eval_fn(run, attestation, corpus)`` (supplied by the eval side; this
      package never imports ``ogi_ray.evals`` or torch), which must reproduce every data
      hash and every score string
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

from ogi_ray.lineage.attest import FOLDER, HEAD, attestation_chain
from ogi_ray.lineage.record import HEX64, RecordError
from ogi_ray.storage import Store

EvalFn = Callable[[Any, dict[str, Any], str | None], list[str]]


def check_attestations(ldir: Store, chain: list[tuple[str, dict[str, Any]]],
                       problems: list[str]) -> list[tuple[str, dict[str, Any]]]:  # fmt: skip
    """The attestation chain, checked against the record chain; problems appended."""
    if not ldir.is_file(HEAD):
        for rel in ldir.list_files(FOLDER):
            problems.append(f"{ldir.where(f'{FOLDER}/{rel}')}: attestation without an {HEAD}")
        return []
    head = ldir.read_bytes(HEAD)
    if not HEX64.fullmatch(head.decode("utf-8", "replace").strip()) or not head.endswith(b"\n") or len(head) != 65:
        problems.append(f"{ldir.where(HEAD)}: must be 64 lowercase hex digits and a newline")
        return []
    try:
        atts = attestation_chain(ldir)
    except RecordError as e:
        problems.append(str(e))
        return []
    steps = {h: rec["step"] for h, rec in chain}
    seen: set[str] = set()
    for h, att in atts:
        where = f"attestation of step {att['step']} ({h[:12]})"
        if att["record"] not in steps:
            problems.append(f"{where}: names record {att['record'][:12]}, which is not on the chain")
        elif steps[att["record"]] != att["step"]:
            problems.append(f"{where}: its record is at step {steps[att['record']]}")
        if att["record"] in seen:
            problems.append(f"{where}: a second attestation of record {att['record'][:12]}")
        seen.add(att["record"])
    on_chain = {h for h, _ in atts}
    for rel in ldir.list_files(FOLDER):
        if rel.removesuffix(".json") not in on_chain:
            problems.append(f"{ldir.where(f'{FOLDER}/{rel}')}: attestation is not on the chain from {HEAD}")
    return atts


def choose_attestations(n: int, total: int, seed: int) -> list[int]:
    """Indices to re-run: the last one, then draws from ``seed`` among the rest."""
    if total == 0 or n <= 0:
        return []
    rest = list(range(total - 1))
    random.Random(seed).shuffle(rest)
    return sorted([total - 1, *rest[: n - 1]])


def recheck(run: Store, atts: list[tuple[str, dict[str, Any]]], n: int, eval_fn: EvalFn | None,
            notes: list[str], seed: int | None, corpus: str | None = None) -> list[str]:  # fmt: skip
    """Re-run ``n`` attestations (``corpus``: where the held-out data is, when not where
    the recorded config says); problems named by step and attestation hash."""
    import secrets

    if eval_fn is None:
        return [f"re-running {n} eval vectors asked, but no eval function was supplied"]
    if not atts:
        return [f"re-running {n} eval vectors asked, but the run has no attestations"]
    seed = secrets.randbits(32) if seed is None else seed
    notes.append(f"eval seed {seed} (rerun with --evals-seed {seed} to re-run the same vectors)")
    problems = []
    for i in choose_attestations(n, len(atts), seed):
        h, att = atts[i]
        try:
            got = list(eval_fn(run.local_path() or run.uri, att, corpus))
        except Exception as e:  # noqa: BLE001 — a checkpoint or corpus that cannot be read is a finding
            got = [f"cannot re-run: {type(e).__name__}: {e}"]
        problems += [f"eval of step {att['step']} ({h[:12]}): {p}" for p in got]
        notes.append(f"re-ran the eval vector of step {att['step']} ({len(att['scores'])} scores): "
                     f"{'ok' if not got else 'FAILED'}")  # fmt: skip
    return problems

"""The run's metrics log on any storage, and the per-step reduction that feeds it.

Object stores cannot append, so the log is a folder of chunks, each one whole object:

    RUN/metrics/<first step, 9 digits>-<wall-clock ns, 20 digits>.jsonl
        one JSON object per step (rank 0's reduced row); a chunk per flush (every
        ``log_every`` steps and at every checkpoint), written off the training thread
    RUN/tensorboard/events.out.tfevents.*   the same rows for TensorBoard, a file per chunk

Read back in name order, the chunks are the log in the order it was written: a run
resumed from a checkpoint writes its redone steps again, in later chunks (``read_rows``
keeps every row, ``by_step`` the last of each step). Runs written before the chunked log
have one ``metrics.jsonl``, read first. A truncated last line (a local file a killed
process was writing) is skipped and reported.
"""

from __future__ import annotations

import json
import time
from typing import Any

import torch
import torch.distributed as dist

from ogi_ray.storage import Store

FOLDER = "metrics"
LEGACY = "metrics.jsonl"


class MetricsLog:
    """Rank 0's buffer of metric rows, flushed to ``store`` as one chunk per flush (and,
    with ``tensorboard``, one TensorBoard event file per chunk: train/progress.py). The
    writes run on one background thread, off the training step, in flush order."""

    def __init__(self, store: Store, tensorboard: bool = True) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self.store, self.tensorboard = store, tensorboard
        self._rows: list[dict[str, Any]] = []
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ogi-metrics")
        self._last: Any = None

    def add(self, row: dict[str, Any]) -> None:
        self._rows.append(row)

    def flush(self) -> None:
        if not self._rows:
            return
        rows, self._rows = self._rows, []
        name = f"{FOLDER}/{int(rows[0]['step']):09d}-{time.time_ns():020d}.jsonl"
        self._last = self._pool.submit(self._write, name, rows)

    def _write(self, name: str, rows: list[dict[str, Any]]) -> None:
        self.store.write_atomic(name, "".join(json.dumps(r) + "\n" for r in rows).encode())
        if self.tensorboard:
            from ogi_ray.train.progress import tensorboard_chunk

            tensorboard_chunk(self.store, rows)

    def close(self) -> None:
        """Flush, and wait until every chunk is written (re-raising a failed write)."""
        self.flush()
        self._pool.shutdown(wait=True)
        if self._last is not None:
            self._last.result()


def _lines(raw: bytes, where: str, notes: list[str]) -> list[dict[str, Any]]:
    rows, lines = [], raw.decode("utf-8", "replace").splitlines()
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if i == len(lines) - 1:
                notes.append(f"{where}: last line is cut short (a killed run?): skipped")
                continue
            raise ValueError(f"{where}: line {i + 1} is not JSON") from None
    return rows


def read_rows(run: Store, notes: list[str] | None = None) -> list[dict[str, Any]]:
    """Every logged row, in the order written (repeats of redone steps kept)."""
    notes = notes if notes is not None else []
    rows: list[dict[str, Any]] = []
    if run.is_file(LEGACY):
        rows += _lines(run.read_bytes(LEGACY), run.where(LEGACY), notes)
    for name in run.list_files(FOLDER):
        rows += _lines(run.read_bytes(f"{FOLDER}/{name}"), run.where(f"{FOLDER}/{name}"), notes)
    return rows


def by_step(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per step, the last written, in step order."""
    last: dict[int, dict[str, Any]] = {}
    for r in rows:
        last[int(r["step"])] = r
    return [last[s] for s in sorted(last)]


def reduce_metrics(metrics: dict[str, Any], objectives: list[str],
                   counts: list[float]) -> tuple[dict[str, float], list[float]]:  # fmt: skip
    """Mean of each objective's loss and raw grad norm over the ranks that had it (ranks
    differ in which objectives their rows feed), and the ``counts`` (token counts: text
    tokens, then the accounting vector) summed over ranks.

    One all-reduce of a small float64 host tensor: the process group has a CPU backend
    on every device (``parallel.device.process_group_backend``), so it never needs NCCL."""
    keys = [f"{p}/{n}" for n in objectives for p in ("loss", "gradnorm_raw")]
    vals: list[float] = []
    for k in keys:
        vals += [metrics.get(k, 0.0), 1.0 if k in metrics else 0.0]
    t = torch.tensor(vals + list(counts), dtype=torch.float64)
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t)
    pairs = t[: len(vals)].view(-1, 2).tolist()
    return {k: s / c for k, (s, c) in zip(keys, pairs, strict=True) if c > 0}, t[len(vals) :].tolist()

"""This dp rank's training rows and held-out batches for the worker (train/trainer.py).

    WorkerSpec.orders[phase] ─► RowReader (pyarrow, per-rank shard reads) ─► RankStream
      (this rank's slice of the rows at the cursor; collated in the step's thread on CPU,
      ahead on a background thread on CUDA) ─► get(phase, step, cursor, accum): the
      step's micro-batches; counts(step): their raw/fed token vector (accounting)
    WorkerSpec.heldout[phase] ─► read_heldout ─► heldout(phase): {source: batch}, once
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from ogi_ray.train.accounting import model_slots
from ogi_ray.train.data import COLUMNS, collate, collate_step, read_heldout, seeded_generator
from ogi_ray.train.stream import RankStream, RowReader

if TYPE_CHECKING:
    from ogi_ray.train.trainer import WorkerSpec


class Feed:
    """This dp rank's collated micro-batches from each phase's corpus."""

    def __init__(self, spec: WorkerSpec, dp_rank: int, dp: int, *, prefetch: bool) -> None:
        self.spec, self.dp_rank, self.dp, self.prefetch = spec, dp_rank, dp, prefetch
        self.streams: dict[int, RankStream] = {}
        self._heldout: dict[int, dict[str, Any]] = {}
        self._slots = model_slots(spec.job.model)
        self._counts: dict[int, list[float]] = {}  # step → this rank's raw/fed token vector
        self._phase = 0

    def _collate(self, rows: list[dict[str, Any]], step: int) -> list[dict[str, torch.Tensor]]:
        # The stream may collate the next step ahead (prefetch): counts wait by step.
        acc = self.spec.accounting[self._phase]
        vec = [0.0] * acc.size()
        for r in rows:
            vec = [a + b for a, b in zip(vec, acc.count(r, self._slots), strict=True)]
        self._counts[step] = vec
        return collate_step(rows, self.spec.job.model, self.spec.job.loop.seed, step, self.dp_rank)

    def get(self, phase: int, step: int, cursor: int, accum: int) -> list[dict[str, torch.Tensor]]:
        if phase not in self.streams:
            for s in self.streams.values():  # the previous phase's reader is done
                s.close()
            self._phase, self._counts = phase, {}
            reader = RowReader(self.spec.orders[phase], COLUMNS)
            self.streams = {phase: RankStream(reader, self.dp_rank, self.dp, self.spec.batch_size, self._collate,
                                              prefetch=self.prefetch)}  # fmt: skip
        return self.streams[phase].get(step, cursor, accum)

    def counts(self, step: int) -> list[float]:
        """The raw/fed token vector of ``step``'s rows on this rank (accounting.Consumption)."""
        return self._counts.pop(step)

    def heldout(self, phase: int) -> dict[str, dict[str, torch.Tensor]]:
        """The phase corpus' held-out rows per source, collated once."""
        if phase not in self._heldout:
            job = self.spec.job
            rows = read_heldout(self.spec.heldout[phase], job.data.eval_rows_per_source)
            self._heldout[phase] = {s: collate(r, job.model, seeded_generator(job.loop.seed, -1, 0))
                                    for s, r in rows.items()}  # fmt: skip
        return self._heldout[phase]

    def close(self) -> None:
        for s in self.streams.values():
            s.close()

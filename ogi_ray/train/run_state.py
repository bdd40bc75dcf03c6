"""The run's progress counters (what a checkpoint's train_state.json holds besides the
optimizer), and which checkpoint a restarted worker group resumes from.

    RunState: step, the data cursor (rows of the current phase's corpus), rows and
      tokens over all phases, phase, per-phase tokens, λ, accumulation, GNS, RNG, tuner,
      the tokens fed per (source, modality) of each phase (train/accounting.py)
    resume_point: the newer of Ray Train's latest checkpoint and the lineage HEAD's
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from ogi_ray.storage import Store
from ogi_ray.train.checkpoint import TRAIN_STATE


@dataclass
class RunState:
    step: int = 0
    cursor: int = 0  # global rows consumed from the current phase's corpus
    rows: int = 0  # global rows consumed over all phases
    tokens_seen: int = 0
    phase: int = 0
    phase_tokens: dict[str, int] = field(default_factory=dict)
    lambdas: dict[str, float] = field(default_factory=dict)
    accum: int = 1
    gns: dict[str, Any] | None = None
    consumed: dict[str, Any] = field(default_factory=dict)  # per phase name: accounting.Consumption state

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunState:
        keys = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in d.items() if k in keys})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def data_cursor(self) -> dict[str, int]:
        """The lineage record's data cursor."""
        return {"rows": self.rows, "tokens_seen": self.tokens_seen, "phase": self.phase}


def resume_point(run: Store, ray_checkpoint: str | None, head_checkpoint: str | None) -> str | None:
    """The checkpoint folder (a name under ``run``) to resume from: the newer of Ray
    Train's latest and the lineage HEAD's.

    After a worker failure Ray Train may restart the group before its controller has
    registered the checkpoint the workers last reported (seen on a loaded 2-core machine:
    the restarted run began again at step 0). The lineage HEAD moves only after the
    checkpoint is durable, so it is a lower bound; Ray's can be newer (a crash between
    its registration and the append, which the worker then completes)."""
    steps = []
    for name in {n for n in (ray_checkpoint, head_checkpoint) if n}:
        if run.is_file(f"{name}/{TRAIN_STATE}"):
            steps.append((int(json.loads(run.read_bytes(f"{name}/{TRAIN_STATE}"))["step"]), name))
    return max(steps)[1] if steps else None

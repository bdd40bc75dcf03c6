"""The lineage side of a checkpoint: the record, the marker, the registry append.

    checkpoint.save ─► Saved (weights root, every rank's {file: sha256}, rank 0)
      ─► rank 0: segment.json (per-step λ, cursor, micro-batches since the last record,
         for replay) ─► the record (lineage/record.py, schema 3: sharded weights) over
         every file's hash ─► lineage.json marker {"record_hash", "record"}
      ─► (Ray Train registers the checkpoint) ─► LineageRegistry.append (the chain's HEAD
         moves only now, after every file is durable: the resume lower bound)
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from ogi_ray.canonical import canonical_json
from ogi_ray.lineage.record import MARKER, make_record, record_hash
from ogi_ray.storage import Store
from ogi_ray.train.checkpoint import WEIGHTS_DIR, WEIGHTS_FORMAT, Saved

SEGMENT = "segment.json"


def checkpoint_name(step: int) -> str:
    return f"step_{step:06d}"


def call_actor(obj: Any, method: str, *args: Any) -> Any:
    """``obj.method(*args)`` on a Ray actor handle (waiting for it) or a plain object."""
    fn = getattr(obj, method)
    if hasattr(fn, "remote"):
        import ray

        return ray.get(fn.remote(*args))
    return fn(*args)


@dataclass
class LineageHook:
    """Rank 0's half of the lineage per checkpoint. ``registry`` holds the chain: the
    LineageRegistry actor's handle in a run, or a plain LineageRegistry (tests)."""

    registry: Any
    run_name: str
    config_hash: str
    segment: list[dict[str, Any]] = field(default_factory=list)  # steps since the last record
    last_record: str = ""

    def note_step(self, entry: dict[str, Any]) -> None:
        """What a replay needs of one step: step, cursor, phase, λ, micro-batch count."""
        self.segment.append(entry)

    def take_segment(self) -> list[dict[str, Any]]:
        """The steps since the last checkpoint (the new segment starts empty)."""
        seg, self.segment = self.segment, []
        return seg

    def record(self, store: Store, saved: Saved, *, step: int, manifest_hash: str, cursor: dict[str, int],
               scores: dict[str, float], segment: list[dict[str, Any]], rng: str) -> dict[str, Any]:  # fmt: skip
        """Write segment.json and the marker into the checkpoint folder ``store`` and
        return the record's fields (rank 0; the append waits until Ray has the
        checkpoint)."""
        seg = json.dumps(segment).encode()
        store.write_atomic(SEGMENT, seg)
        files = {**saved.files, SEGMENT: hashlib.sha256(seg).hexdigest()}
        fields = {
            "run": self.run_name, "step": step, "parent": call_actor(self.registry, "get_head"),
            "checkpoint": checkpoint_name(step), "weights_root": saved.root, "weights_hash": "sha256-merkle-v1",
            "weights_file": WEIGHTS_DIR, "weights_format": WEIGHTS_FORMAT, "manifest_hash": manifest_hash,
            "config_hash": self.config_hash, "rng": rng, "eval": scores,
            "data_cursor": dict(cursor), "files": dict(sorted(files.items())),
        }  # fmt: skip
        rec = make_record(**fields)
        store.write_atomic(MARKER, canonical_json({"record_hash": record_hash(rec), "record": rec}))
        return fields

    def append(self, fields: dict[str, Any]) -> str:
        """Move the chain's HEAD to the record (idempotent: a retried append of the same
        record returns its hash)."""
        self.last_record = call_actor(self.registry, "append", fields)
        return self.last_record

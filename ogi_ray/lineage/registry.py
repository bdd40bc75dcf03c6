"""LineageRegistry: the single writer of a run's chain (wrapped in ``ray.remote`` where
it is launched; here a plain class, tested without Ray).

    append(fields) ─► parent must equal HEAD (else rejected, unless fork=True)
                  ─► record written under its hash, then HEAD moved (both atomic)
    a retried append of the same content returns the existing hash: no second record

State is only the files, so a restarted registry reloads HEAD from storage.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ogi_ray.lineage.record import (
    RecordError,
    make_record,
    read_head,
    read_record,
    record_hash,
    write_head,
    write_record,
)


class LineageRegistry:
    def __init__(self, lineage_dir: str) -> None:
        self.dir = Path(lineage_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.head = read_head(self.dir)

    def get_head(self) -> str:
        return self.head

    def head_record(self) -> dict[str, Any] | None:
        return read_record(self.dir, self.head) if self.head else None

    def append(self, fields: dict[str, Any], fork: bool = False) -> str:
        """Append a record whose ``parent`` must be the current head; returns its hash."""
        rec = make_record(**fields)
        h = record_hash(rec)
        if (self.dir / "records" / f"{h}.json").is_file():
            return h  # idempotent retry
        if rec["parent"] != self.head and not fork:
            raise RecordError(
                f"parent {rec['parent'] or '(none)'} is not the head {self.head or '(none)'} "
                f"of {self.dir}: refusing to fork the chain (step {rec['step']})"
            )
        if self.head:
            prev = read_record(self.dir, self.head)
            if rec["step"] <= prev["step"] and not fork:
                raise RecordError(f"step {rec['step']} does not follow head step {prev['step']}")
        write_record(self.dir, rec)
        write_head(self.dir, h)
        self.head = h
        return h

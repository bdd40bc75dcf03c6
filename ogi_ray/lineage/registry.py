"""LineageRegistry: the single writer of a run's chain (wrapped in ``ray.remote`` where it
is launched, named and with ``max_restarts``; a plain class here, so it is testable
without Ray).

    append(fields) ─► parent must equal HEAD (else rejected, unless fork=True)
                  ─► record written under its hash, then HEAD moved (both atomic)
    a retried append of the same content returns the existing hash: no second record
    attest(fields) ─► an eval attestation of a stored record, chained to ATTEST_HEAD
                  (lineage/attest.py), written the same way

State is only the files in the store (a local folder or any pyarrow.fs URI, see
store.py), so a restarted registry (Ray restarts the actor by re-running ``__init__``)
reloads HEAD from storage and carries on.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ogi_ray.lineage.record import (
    RecordError,
    has_record,
    make_record,
    read_head,
    read_record,
    record_hash,
    write_head,
    write_record,
)
from ogi_ray.storage import Store


class LineageRegistry:
    def __init__(self, lineage_dir: str | Path) -> None:
        self.store = Store(lineage_dir)
        self.dir = self.store.uri
        self.store.fs.create_dir(self.store.root, recursive=True)
        self.head = read_head(self.store)

    def get_head(self) -> str:
        return self.head

    def head_record(self) -> dict[str, Any] | None:
        return read_record(self.store, self.head) if self.head else None

    def append(self, fields: dict[str, Any], fork: bool = False) -> str:
        """Append a record whose ``parent`` must be the current head; returns its hash.
        ``fork=True`` accepts any stored parent (or none) and moves HEAD to the new record
        (the old branch's records become orphans, which ``verify`` reports)."""
        rec = make_record(**fields)
        h = record_hash(rec)
        if has_record(self.store, h):
            return h  # idempotent retry (e.g. after a crash between report and append)
        if not fork:
            if rec["parent"] != self.head:
                raise RecordError(
                    f"parent {rec['parent'] or '(none)'} is not the head {self.head or '(none)'} "
                    f"of {self.dir}: refusing to fork the chain (step {rec['step']})"
                )
            if self.head:
                prev = read_record(self.store, self.head)
                if rec["step"] <= prev["step"]:
                    raise RecordError(f"step {rec['step']} does not follow head step {prev['step']}")
        elif rec["parent"] and not has_record(self.store, rec["parent"]):
            raise RecordError(f"fork parent {rec['parent']} is not a stored record of {self.dir}")
        write_record(self.store, rec)
        write_head(self.store, h)
        self.head = h
        return h

    def attest(self, fields: dict[str, Any]) -> str:
        """Commit an eval attestation (``make_attestation`` fields less ``parent``) of a
        stored record; returns its hash. A retry of the same content returns the hash it
        was stored under."""
        from ogi_ray.lineage.attest import (
            attestation_chain,
            attestation_hash,
            make_attestation,
            read_attest_head,
            write_attest_head,
            write_attestation,
        )

        if not has_record(self.store, fields["record"]):
            raise RecordError(f"{self.dir}: attestation of record {fields['record']}, which is not stored")
        same = {k: v for k, v in make_attestation(parent="", **fields).items() if k != "parent"}
        for h, att in attestation_chain(self.store):
            if {k: v for k, v in att.items() if k != "parent"} == same:
                return h  # idempotent retry (an eval task re-run after an actor restart)
        att = make_attestation(parent=read_attest_head(self.store), **fields)
        h = attestation_hash(att)
        write_attestation(self.store, att)
        write_attest_head(self.store, h)
        return h

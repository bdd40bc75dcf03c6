"""Where a run's corpora are, as its recorded config says, kept out of the hashes.

The config hash (and so every record hash) must not depend on where a run happened to
be written: the same training in two checkouts gives the same chain. So the recorded
config holds locations relative to the run folder whenever both are local paths
(``../../corpus`` for ``ogi demo``'s OUT/corpus beside OUT/train/demo), a URI as it was
given otherwise, and no storage path at all (the run is wherever its files are):

    writing (the launch):  recorded_location(corpus, run_uri) ─► config["data"]["corpus"]
    reading (verify, replay): corpus_location(config, phase, run) ─► a path or URI

A run folder copied elsewhere together with its corpus therefore finds the copy, not the
original: verification checks the corpus that is actually there.
"""

from __future__ import annotations

import os
import posixpath
from typing import Any

from ogi_ray.storage import Store, is_uri


def recorded_location(target: str, run_uri: str) -> str:
    """``target`` (an absolute path or URI) as the config records it for ``run_uri``."""
    if not target or is_uri(target) or is_uri(run_uri):
        return target
    return os.path.relpath(target, run_uri)


def corpus_location(job: dict[str, Any], phase: int, run: Store) -> str:
    """The corpus folder a recorded run's ``phase`` read: its phase entry's corpus, else
    ``data.corpus``, resolved against the run folder ("" when none is recorded)."""
    phases = job.get("phases") or []
    where = ""
    if phase < len(phases) and phases[phase].get("corpus"):
        where = str(phases[phase]["corpus"])
    else:
        where = str((job.get("data") or {}).get("corpus") or "")
    if not where or is_uri(where) or os.path.isabs(where):
        return where
    if run.is_local:
        return os.path.normpath(os.path.join(run.root, where))
    # A relative corpus beside a remote run (a local run uploaded with its corpus) is in
    # the same store: resolve ".." on the store's path, keep its scheme.
    scheme = run.uri[: len(run.uri) - len(run.root)]
    return scheme + posixpath.normpath(posixpath.join(run.root, where))

"""Whether a job may write into its run folder, checked before any worker starts.

    storage_path/name ─► absent or empty: a fresh run
      ─► holds a run (lineage/, checkpoints, metrics): refused unless ``resume``, with a
         message naming the run, its step and both ways forward
      ─► resume: the recorded config of the chain's HEAD against this job, field by
         field where a difference would break the checkpoint or its meaning: the model's
         shape, the objectives, each phase's corpus manifest (else refused, naming them)
      ─► anything else there (not written by ``ogi train``): refused

Changing the optimizer's settings, the step budget or the layout on a resume is allowed
(a checkpoint reshards to any layout; the lineage records each segment's config).
"""

from __future__ import annotations

import json
from typing import Any

from ogi_ray.config import ConfigError
from ogi_ray.lineage.record import read_head, read_record
from ogi_ray.storage import Store

# Sections of the recorded job config that must not change on a resume: the model's
# architecture and token layout (which also decide its objectives) and the tuner's
# objectives derived from them.
FIXED = ("model", "tuner.objectives")


def run_status(run: Store) -> dict[str, Any] | None:
    """None for an absent or empty folder; else what it holds: whether it is a run,
    its HEAD record (or None before the first checkpoint) and its checkpoints."""
    if not run.exists() or not run.list_files(recursive=True):
        return None
    is_run = run.is_dir("lineage") or run.is_dir("metrics") or run.is_file("tuner_state.json")
    head = read_head(run.sub("lineage")) if run.is_dir("lineage") else ""
    return {"is_run": is_run, "head": read_record(run.sub("lineage"), head) if head else None,
            "head_hash": head, "checkpoints": [d for d in run.list_dirs() if d.startswith("step_")]}  # fmt: skip


def _get(d: dict[str, Any], dotted: str) -> Any:
    for part in dotted.split("."):
        d = d.get(part, {}) if isinstance(d, dict) else {}
    return d


def _differences(old: dict[str, Any], new: dict[str, Any], prefix: str) -> list[str]:
    out = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k), new.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _differences(a, b, f"{prefix}.{k}")
        elif a != b:
            out.append(f"{prefix}.{k}: {a!r} in the run, {b!r} now")
    return out


def check_run_folder(job: Any, job_dict: dict[str, Any], manifests: list[dict[str, Any]], *, resume: bool) -> None:
    """Raise ConfigError unless the job may start (or, with ``resume``, continue) in
    its run folder."""
    run = Store(job.run.run_uri)
    status = run_status(run)
    if status is None:
        return
    if not status["is_run"]:
        raise ConfigError(None, "run.storage_path", f"{run.uri} holds files that no `ogi train` wrote "
                          "(no lineage/, no metrics/): choose an empty or new folder (--out, run.name)")  # fmt: skip
    head = status["head"]
    at = f"at step {head['step']} (record {status['head_hash'][:12]})" if head else "with no checkpoint yet"
    if not resume:
        raise ConfigError(None, "run.name", f"{run.uri} already holds run {job.run.name!r} {at}: continue it "
                          "with --resume, or start a fresh run elsewhere (--out DIR or run.name=NEW)")  # fmt: skip
    if head is None:
        return
    old = json.loads(run.read_bytes(f"lineage/configs/{head['config_hash']}.json"))
    problems = []
    for key in FIXED:
        a, b = _get(old, key), _get(job_dict, key)
        problems += _differences(a, b, key) if isinstance(a, dict) and isinstance(b, dict) else (
            [f"{key}: {a!r} in the run, {b!r} now"] if a != b else [])  # fmt: skip
    if head["manifest_hash"] not in {m["manifest_hash"] for m in manifests}:
        problems.append(f"data.corpus: the run trained on manifest {head['manifest_hash'][:12]}, "
                        f"this job's corpora are {[m['manifest_hash'][:12] for m in manifests]}")  # fmt: skip
    if problems:
        raise ConfigError(None, "--resume", f"{run.uri} {at} cannot be resumed by this job: " + "; ".join(problems))

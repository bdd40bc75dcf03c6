"""Shared by the ``jobs/`` entry points: connect to Ray, and refuse output paths that a
submitted job would lose.

``ray job submit --working-dir .`` runs the entrypoint in a temporary unpacked copy of
the working directory (deleted when the job's runtime env is garbage-collected), so a
relative output path would land there. Outputs must be absolute paths that the driver
and every worker can reach: the same host locally, a shared file system on a cluster.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

# Set by Ray's job supervisor for every submitted entrypoint.
IN_SUBMITTED_JOB = bool(os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR"))
DEFAULT_STORAGE = os.environ.get("OGI_STORAGE", "~/ogi-runs")


def init_ray() -> None:
    """Join the job's cluster (RAY_ADDRESS, set by ``ray job submit``); run by hand without
    it, start a private local cluster instead of joining whatever cluster
    /tmp/ray/ray_current_cluster last pointed at."""
    import ray

    if os.environ.get("RAY_ADDRESS"):
        ray.init()
    else:
        ray.init(address="local")


def output_path(path: str | None, default_name: str, what: str = "--out") -> str:
    """An absolute output path or an object-store URI (s3://, gs://: every node reaches
    those); relative paths are refused inside a submitted job."""
    if path is None:
        return str(Path(os.path.expanduser(DEFAULT_STORAGE)).resolve() / default_name)
    if "://" in path:
        return path
    p = Path(os.path.expanduser(path))
    if not p.is_absolute() and IN_SUBMITTED_JOB:
        fail(f"{what} {path!r} is relative: a submitted job runs in a temporary copy of the "
             "working dir; give an absolute path that every node can reach")  # fmt: skip
    return str(p.resolve())


def fail(message: str) -> None:
    print(f"{Path(sys.argv[0]).name}: error: {message}", file=sys.stderr)
    sys.exit(2)


def print_summary(summary: dict[str, Any]) -> None:
    """One JSON line the submitter can pick out of ``ray job logs``."""
    print("OGI_SUMMARY " + json.dumps(summary, sort_keys=True, default=str), flush=True)

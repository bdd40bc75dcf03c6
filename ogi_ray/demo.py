"""``ogi demo``: the vertical slice on a local Ray cluster.

    OUT must be empty, absent, or a previous demo's output (replaced with ``overwrite``)
    jobs/configs/demo.yaml + overrides ─► validated (before Ray starts: ``prepare_demo``)
    datasets/demo.yaml ─► build_corpus ─► OUT/corpus      (Ray Data)
    the job ─► train ─► OUT/train/demo                    (Ray Train, 2 gloo workers)
    verify_run(OUT) ─► summary (steps, tokens, loss first → last, checkpoints, record hash)
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from ogi_ray.config import ConfigError

ROOT = Path(__file__).resolve().parents[1]
DEMO_MIXTURE = ROOT / "datasets" / "demo.yaml"
DEMO_JOB = ROOT / "jobs" / "configs" / "demo.yaml"
OURS = ("corpus", "train")  # what a demo writes into OUT


def check_out(out: Path, overwrite: bool) -> None:
    """OUT may be absent, empty, or a previous demo's output (only with ``overwrite``);
    anything else is refused, so no user file is ever replaced."""
    if not out.exists() or not any(out.iterdir()):
        return
    others = sorted(p.name for p in out.iterdir() if p.name not in OURS)
    if others:
        raise ConfigError(None, "--out", f"{out} is not empty and not a demo output (it holds "
                          f"{', '.join(others[:5])}): choose an empty or new folder")  # fmt: skip
    if not overwrite:
        raise ConfigError(None, "--out", f"{out} holds a previous demo: pass --overwrite to replace it, "
                          "or choose another folder")  # fmt: skip


def prepare_demo(out: str | Path, overrides: list[str] | None = None, *, overwrite: bool = False) -> Any:
    """Every check that needs no Ray: OUT, the demo job with its overrides; returns the job."""
    from ogi_ray.train.config import RunConfig, load_job

    out = Path(out).resolve()
    check_out(out, overwrite)
    job = load_job(DEMO_JOB, overrides)
    return replace(job, data=replace(job.data, corpus=str(out / "corpus")),
                   run=RunConfig(name="demo", storage_path=str(out / "train")))  # fmt: skip


def run_demo(out: str | Path, overrides: list[str] | None = None, *, overwrite: bool = False) -> dict[str, Any]:
    import shutil

    from ogi_ray.corpus.build import build_corpus
    from ogi_ray.lineage.verify import verify_run
    from ogi_ray.storage import Store
    from ogi_ray.train.driver import train
    from ogi_ray.train.resume import run_status

    job = prepare_demo(out, overrides, overwrite=overwrite)
    out = Path(out).resolve()
    previous = Store(job.run.run_uri)
    if run_status(previous) is not None:  # checked to be a demo's above (overwrite given)
        if not run_status(previous)["is_run"]:
            raise ConfigError(None, "--out", f"{previous.uri} is not a run folder: not replaced")
        shutil.rmtree(previous.uri)
    t0 = time.perf_counter()
    manifest = build_corpus(DEMO_MIXTURE, out / "corpus")
    t1 = time.perf_counter()
    summary = train(job)
    t2 = time.perf_counter()
    problems = verify_run(summary["run_dir"])
    return {
        **summary, "manifest_hash": manifest["manifest_hash"], "verify_problems": problems,
        "corpus_seconds": t1 - t0, "train_seconds": t2 - t1, "out": str(out),
    }  # fmt: skip

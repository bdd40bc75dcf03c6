"""``ogi demo``: the vertical slice on a local Ray cluster.

    datasets/demo.yaml ─► build_corpus ─► OUT/corpus      (Ray Data)
    jobs/configs/demo.yaml ─► train ─► OUT/train/demo     (Ray Train, 2 gloo workers)
    verify_run(OUT) ─► summary (steps, tokens, loss first → last, checkpoints, record hash)
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DEMO_MIXTURE = ROOT / "datasets" / "demo.yaml"
DEMO_JOB = ROOT / "jobs" / "configs" / "demo.yaml"


def run_demo(out: str | Path, overrides: list[str] | None = None) -> dict[str, Any]:
    from ogi_ray.corpus.build import build_corpus
    from ogi_ray.lineage.verify import verify_run
    from ogi_ray.train.config import RunConfig, load_job
    from ogi_ray.train.driver import train

    out = Path(out).resolve()
    t0 = time.perf_counter()
    manifest = build_corpus(DEMO_MIXTURE, out / "corpus")
    t1 = time.perf_counter()
    job = load_job(DEMO_JOB, overrides)
    job = replace(job, data=replace(job.data, corpus=str(out / "corpus")),
                  run=RunConfig(name="demo", storage_path=str(out / "train")))  # fmt: skip
    summary = train(job)
    t2 = time.perf_counter()
    problems = verify_run(summary["run_dir"])
    return {
        **summary, "manifest_hash": manifest["manifest_hash"], "verify_problems": problems,
        "corpus_seconds": t1 - t0, "train_seconds": t2 - t1, "out": str(out),
    }  # fmt: skip

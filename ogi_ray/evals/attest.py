"""The eval runner: evaluates checkpoints from storage while training goes on, and
commits each score vector to the lineage as an attestation (lineage/attest.py).

    trainer rank 0, after a checkpoint's record is on the chain
      ─► runner.evaluate.remote(step, record_hash)         (returns at once: no wait)
    EvalRunner (an actor on the CPU tier; one call at a time, in submission order)
      ─► load.load_run(run, step): the checkpoint's files ─► run_suite(lm, suite)
      ─► registry.attest(fields) ─► attestations/<hash>.json, ATTEST_HEAD
    driver, after training ─► runner.drain.remote(): every queued eval is done

A plain class (no Ray here): ``train/launch.py`` wraps it with ``ray.remote`` where it is
launched, with the registry's actor handle; tests drive it with a plain registry. With
``priority="idle"`` (the default of ``evals.priority``) the runner's process drops to
SCHED_IDLE before it computes anything: an eval sharing a node with training ranks then
runs only in the cycles the ranks leave (their gloo and data waits, the end of the run).
"""

from __future__ import annotations

import os
import platform
from dataclasses import replace
from typing import Any

from ogi_ray.evals.suite import QUICK, SuiteConfig, config_from_json, run_suite
from ogi_ray.train.lineage_hook import call_actor

SUITES = {"quick": QUICK, "full": SuiteConfig()}


def suite_config(name: str, benchmarks: list[str] | None = None, threads: int = 1) -> SuiteConfig:
    """A named suite ("quick": seconds on a CPU; "full": the whole benchmarks), optionally
    restricted to some benchmarks."""
    if name not in SUITES:
        raise ValueError(f"evals.suite: {name!r} is not one of {sorted(SUITES)}")
    cfg = replace(SUITES[name], threads=threads)
    if benchmarks:
        cfg = replace(cfg, benchmarks=list(benchmarks))
    cfg.validate()
    return cfg


def environment() -> dict[str, str]:
    """What the bits of a CPU eval depend on besides the weights and the data."""
    import torch

    return {"torch": torch.__version__, "python": platform.python_version(),
            "machine": platform.machine(), "processor": platform.processor() or platform.machine()}  # fmt: skip


def lower_priority() -> str:
    """Put every thread of this process, and the threads it starts later (they inherit
    the policy: torch's intra-op pool is created on first use), under Linux's SCHED_IDLE;
    where the OS has no such class, at nice 19. Returns what was applied."""
    if hasattr(os, "sched_setscheduler") and os.path.isdir("/proc/self/task"):
        for tid in os.listdir("/proc/self/task"):
            try:
                os.sched_setscheduler(int(tid), os.SCHED_IDLE, os.sched_param(0))
            except ProcessLookupError:  # a thread that ended meanwhile
                pass
        return "SCHED_IDLE"
    os.nice(19 - os.nice(0))
    return "nice 19"


class EvalRunner:
    def __init__(self, run_uri: str, run_name: str, registry: Any, suite: str = "quick",
                 benchmarks: list[str] | None = None, threads: int = 1, priority: str = "normal") -> None:  # fmt: skip
        if priority == "idle":
            lower_priority()
        if isinstance(registry, str):  # a named actor (so a restarted runner finds it again)
            import ray

            registry = ray.get_actor(registry)
        self.run_uri, self.run_name, self.registry = run_uri, run_name, registry
        self.suite = suite_config(suite, benchmarks, threads)
        self.done: list[str] = []
        self.failed: list[str] = []

    def evaluate(self, step: int, record: str) -> str | None:
        """Evaluate checkpoint ``step`` (whose record hash is ``record``) and attest it;
        an eval that fails is reported by ``drain``, never raised into training."""
        from ogi_ray.evals.load import load_run

        try:
            lm = load_run(self.run_uri, step)
            cfg = replace(self.suite, heldout=replace(self.suite.heldout, seed=lm.seed))
            result = run_suite(lm, cfg)
            h = call_actor(self.registry, "attest", {
                "run": self.run_name, "record": record, "step": step, "threads": cfg.threads,
                "result": result.to_json(), "env": environment()})  # fmt: skip
        except Exception as e:  # noqa: BLE001 — a broken eval must not stop training
            self.failed.append(f"step {step}: {type(e).__name__}: {e}")
            return None
        self.done.append(h)
        return h

    def drain(self) -> dict[str, Any]:
        """What this runner did (called after the queue: every eval is finished)."""
        return {"attested": len(self.done), "failed": list(self.failed)}


def recheck(run: Any, att: dict[str, Any], corpus: str | None = None) -> list[str]:
    """Re-run one attestation's benchmarks on its checkpoint (``corpus``: the corpus
    folder, default the recorded one); [] when every data hash and score string repeats
    (``ogi lineage verify --evals``)."""
    from ogi_ray.evals.load import load_run
    from ogi_ray.evals.suite import check_recorded

    config_from_json(att["benchmarks"], att["threads"])  # unknown benchmark or version: named
    lm = load_run(run, att["step"], corpus=corpus)
    return check_recorded(lm, att, att["threads"])

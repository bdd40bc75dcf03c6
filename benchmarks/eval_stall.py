"""The training-time stall the eval suite causes (goal: < 2 % of step time).

    python benchmarks/eval_stall.py --corpus runs/demo-corpus [--steps 40] [--every 10]
        [--num-cpus 2] [--suite quick]

Runs the demo job twice on one local Ray cluster, evals off then on (the eval actor
evaluates every checkpoint while training goes on; the driver then waits for the evals
still queued, ``eval_wait_s`` in the summary), and prints, as ratios against the
evals-off run measured in the same process:

* ``dispatch``: what evals add to the hot path by design — the trainer's one
  ``evaluate.remote(...)`` per checkpoint — timed directly over 200 calls on an actor,
  over the median step time;
* ``contention``: the median step time with evals running beside training over the
  median without. On one machine the eval actor competes for the same cores (on a
  cluster it sits on the CPU tier, placement.actor_tier, and this term vanishes);
* the wall time of training and the time the evals needed after it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def step_times(run: Path) -> list[float]:
    """Seconds per step from the metrics log, checkpoint steps left out."""
    from ogi_ray.storage import Store
    from ogi_ray.train.metrics_log import read_rows

    rows = read_rows(Store(run))
    return [r["batch_tokens"] / r["tokens_per_s"] for r in rows[1:] if r.get("tokens_per_s")]


def run_job(corpus: str, out: Path, name: str, steps: int, every: int, evals: bool,
            suite: str) -> tuple[float, float, Path]:  # fmt: skip
    from ogi_ray.config import load_yaml
    from ogi_ray.train.config import job_from_dict
    from ogi_ray.train.driver import train

    raw = load_yaml(ROOT / "jobs" / "configs" / "demo.yaml")
    raw["data"]["corpus"] = corpus
    raw["loop"].update(steps=steps, checkpoint_every=every)
    raw["evals"] = {"enabled": evals, "suite": suite}
    raw["run"] = {"name": name, "storage_path": str(out)}
    t0 = time.perf_counter()
    summary = train(job_from_dict(raw), quiet=True)
    wait = float(summary.get("eval_wait_s", 0.0))
    return time.perf_counter() - t0 - wait, wait, out / name


def dispatch_seconds(n: int = 200) -> float:
    """Median seconds of one ``.remote()`` call on an actor (the trainer's eval dispatch)."""
    import ray

    @ray.remote(num_cpus=0)
    class Sink:
        def evaluate(self, step: int, record: str) -> None:
            return None

    sink = Sink.remote()
    ray.get(sink.evaluate.remote(0, ""))
    times = []
    for i in range(n):
        t0 = time.perf_counter()
        sink.evaluate.remote(i, "ab" * 32)
        times.append(time.perf_counter() - t0)
    ray.kill(sink)
    return statistics.median(times)


def main() -> None:
    import tempfile

    import ray

    ap = argparse.ArgumentParser()
    ap.add_argument("--corpus", required=True)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--every", type=int, default=10)
    ap.add_argument("--num-cpus", type=int, default=2)
    ap.add_argument("--suite", default="quick", choices=["quick", "full"])
    args = ap.parse_args()
    ray.init(num_cpus=args.num_cpus, include_dashboard=False, log_to_driver=False)
    out = Path(tempfile.mkdtemp(prefix="eval-stall-"))
    wall_off, _, run_off = run_job(args.corpus, out, "off", args.steps, args.every, False, args.suite)
    wall_on, after, run_on = run_job(args.corpus, out, "on", args.steps, args.every, True, args.suite)
    off, on = statistics.median(step_times(run_off)), statistics.median(step_times(run_on))
    dispatch = dispatch_seconds()
    print(json.dumps({
        "steps": args.steps, "checkpoint_every": args.every, "suite": args.suite, "num_cpus": args.num_cpus,
        "step_s_evals_off": round(off, 4), "step_s_evals_on": round(on, 4),
        "dispatch_s_per_checkpoint": round(dispatch, 6),
        "dispatch_over_step": round(dispatch / args.every / off, 6),
        "contention_ratio": round(on / off, 4),
        "train_wall_s_off": round(wall_off, 1), "train_wall_s_on": round(wall_on, 1),
        "evals_after_training_s": round(after, 1),
    }, indent=1))  # fmt: skip
    ray.shutdown()


if __name__ == "__main__":
    main()

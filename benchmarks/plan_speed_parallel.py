"""How long the (dp, tp, pp, micro-batches) planner takes, up to a 10,000-GPU topology.

    python benchmarks/plan_speed_parallel.py [--repeat 20]

For each case: the bundled topology, the model, how many layouts were scored, how many fit,
the chosen layout, and the best and median wall time of ``planner.plan`` over ``--repeat``
runs (the model description is built once, outside the timing). The target is < 1 s for
10,000 GPUs. Cases:
  * GPT-3 175B on 1,024 A100s and on 512 H100s (the published-practice checks);
  * a 181B-parameter model shaped to factor 10,000 GPUs exactly (GPT-3's width, 100 layers,
    batch 4000; a 1T model does not fit this runtime's fp32 state on 80 GB H100s);
  * GPT-3 175B (10 %) and Megatron's 1T model (20 %) on 10,000 GPUs with devices left idle
    (their batches cannot use exactly 10,000 = 2^4·5^4 devices): the widest search.
"""

from __future__ import annotations

import argparse
import statistics
import time

from ogi_ray.parallel.planner import model_spec, plan
from ogi_ray.parallel.shapes import ModelSpec
from ogi_ray.parallel.topology import load_topology

WIDE_10K = ModelSpec(name="181b-10k", params=181e9, layers=100, hidden=12288, heads=96,
                     seq_len=2048, global_batch=4000, vocab=51200)

CASES = [
    ("a100-selene-128x8", "gpt3-175b", 0.0),
    ("h100-nvlink-ib-64x8", "gpt3-175b", 0.0),
    ("h100-10k-1250x8", WIDE_10K, 0.0),
    ("h100-10k-1250x8", "gpt3-175b", 0.1),
    ("h100-10k-1250x8", "megatron-1t", 0.2),
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=20)
    args = ap.parse_args()
    print(f"{'topology':22s} {'model':12s} {'idle':>5s} {'layouts':>8s} {'fit':>6s} "
          f"{'best (dp,tp,pp,m)':>20s} {'MFU':>6s} {'best ms':>8s} {'median ms':>9s}")
    for topo_name, model, idle in CASES:
        topo = load_topology(topo_name)
        spec = model if isinstance(model, ModelSpec) else model_spec(model)
        times, result = [], None
        for _ in range(args.repeat):
            t = time.perf_counter()
            result = plan(spec, topo, max_idle=idle)
            times.append(time.perf_counter() - t)
        b = result.best.plan
        layout = f"({b.dp},{b.tp},{b.pp},{b.microbatches})"
        print(f"{topo_name:22s} {spec.name:12s} {idle:5.0%} {result.candidates:8d} "
              f"{result.feasible:6d} {layout:>20s} {result.best.mfu:6.1%} {min(times) * 1e3:8.2f} "
              f"{statistics.median(times) * 1e3:9.2f}")


if __name__ == "__main__":
    main()

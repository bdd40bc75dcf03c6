"""The 16-proxy exchange-rate swarm on the shipped mixture, end to end, with its wall time.

    python benchmarks/rates_swarm.py [--config jobs/configs/rates.yaml] [--out runs/rates/bench]
        [--num-cpus N] [--proxies N] [--write RATES.json]

Starts a local Ray cluster, runs `ogi rates measure` (corpora for every proxy mixture,
one Ray Tune trial per proxy, the fit with bootstrap intervals), and prints the fitted
rates with their intervals next to the configured ones and the seed's "0.3-0.6x for an
image patch", the transfer table, the load average and the wall time of each stage. A
second run on the same --out resumes: finished proxies are not trained again.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default="jobs/configs/rates.yaml")
    ap.add_argument("--out", default="runs/rates/bench")
    ap.add_argument("--num-cpus", type=int, default=None, help="logical CPUs of the local cluster (default: the cores)")
    ap.add_argument("--proxies", type=int, default=None, help="override the config's proxy count")
    ap.add_argument("--write", default=None, help="rates file (default OUT/rates.json)")
    args = ap.parse_args()

    import ray

    from ogi_ray.corpus.rates_file import write_rates_file
    from ogi_ray.rates.config import load_swarm
    from ogi_ray.rates.measure import fit_swarm, rates_table
    from ogi_ray.rates.swarm import run_swarm

    t0 = time.perf_counter()
    load0 = os.getloadavg()
    resumed = (Path(args.out) / "tune").is_dir()
    cfg = load_swarm(args.config)
    if args.proxies:
        cfg.proxies = args.proxies
    ray.init(address="local", num_cpus=args.num_cpus, include_dashboard=False, log_to_driver=False)
    t1 = time.perf_counter()
    swarm = run_swarm(cfg, args.out)
    t2 = time.perf_counter()
    body = fit_swarm(cfg, swarm)
    t3 = time.perf_counter()
    body["timing"] = {**swarm["timing"], "fit_s": t3 - t2}
    path = Path(args.write or Path(args.out) / "rates.json")
    doc = write_rates_file(path, body)
    ray.shutdown()
    print(rates_table(doc))
    lo, hi = doc["intervals"]["image"]
    bound = f"[{lo:.3f}, {hi:.3f}]" if hi < 1e4 else f"[{lo:.3f}, not bounded above]"
    print(f"seed: an image patch contributes ~0.3-0.6x a text token; measured image rate {doc['rates']['image']:.3f} {bound}")
    walls = sorted(t["wall_s"] for t in swarm["trials"])
    print(json.dumps({
        "proxies": len(swarm["trials"]), "resumed": resumed, "steps": [t["steps"] for t in swarm["trials"]],
        "ray_init_s": round(t1 - t0, 1), "corpora_s": round(swarm["timing"]["prepare_s"], 1),
        "tune_s": round(swarm["timing"]["tune_s"], 1), "fit_s": round(t3 - t2, 1),
        "proxy_wall_s_median": round(walls[len(walls) // 2], 1), "wall_s": round(time.perf_counter() - t0, 1),
        "loadavg_start": [round(x, 1) for x in load0], "loadavg_end": [round(x, 1) for x in os.getloadavg()],
        "rates_file": str(path), "sha256": doc["sha256"],
    }, indent=1))  # fmt: skip


if __name__ == "__main__":
    main()

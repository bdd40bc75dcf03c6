"""How long the scaling planner takes: closed form, inference-aware solve, a full plan, a fit.

    .venv/bin/python benchmarks/plan_speed.py

Pure CPU (numpy/scipy); numbers depend on the machine and its load.
"""

import time

import numpy as np

from ogi_ray.scaling.fit import RunsData, bootstrap_law, fit_law
from ogi_ray.scaling.inference import inference_aware_size
from ogi_ray.scaling.law import PRESETS
from ogi_ray.scaling.plan import make_plan


def timed(label, fn, repeat=1):
    t = time.perf_counter()
    for _ in range(repeat):
        out = fn()
    dt = (time.perf_counter() - t) / repeat
    print(f"{label:<44} {dt * 1e3:10.3f} ms")
    return out


def isoflop_runs(law, noise=0.003, seed=0):
    rng = np.random.default_rng(seed)
    n, d = [], []
    for c in np.geomspace(6e18, 3e21, 9):
        n0 = law.compute_optimal(c).n_params
        for f in np.geomspace(1 / 8, 8, 9):
            n.append(n0 * f)
            d.append(c / (6 * n0 * f))
    n, d = np.array(n), np.array(d)
    return RunsData(n, d, law.loss(n, d) * np.exp(rng.normal(0, noise, n.size)))


def main():
    law = PRESETS["epoch"]
    timed("compute_optimal(5.76e23)", lambda: law.compute_optimal(5.76e23), repeat=10_000)
    timed(
        "inference_aware_size(T = 1e13)",
        lambda: inference_aware_size(law, 5.76e23, 1e13),
        repeat=200,
    )
    timed(
        "make_plan (no mixture)", lambda: make_plan(law, 5.76e23, inference_tokens=1e13), repeat=200
    )
    data = isoflop_runs(law)
    fit = timed("fit_law, 81 runs, 32 starts", lambda: fit_law(data), repeat=3)
    timed("bootstrap_law, 20 resamples", lambda: bootstrap_law(data, fit, samples=20))
    timed("fit_law, 81 runs, all 4,500 starts", lambda: fit_law(data, n_starts=None))


if __name__ == "__main__":
    main()

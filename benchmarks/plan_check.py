"""The planner's predictions against measurements, layout by layout: step time (and its
ranking) and peak memory per rank, for the real model on this machine.

    python benchmarks/plan_check.py [--model tiny] [--steps 6]
        [--layout dp=2 --layout tp=2,rows=16 ...]   (keys as memory_model_check.py)

1. Probe this machine at the model's own GEMM shapes (``calibrate.probe_calibration``:
   GEMMs at tp 1 and 2, copy, op overhead, masked attention, one real block's
   element-wise chain, the LM head and loss, DTensor/FSDP2 wrapper cost, a gloo
   all-reduce) and put the result on the ``cpu-2`` topology: the planner's inputs.
2. For each layout: run it (memory_model_check.measure: its own gloo group, one process
   per rank, one thread each, the trainer's build_stepper and step objects), take the
   busiest rank's peak tensor memory on the traced step and the median wall-clock and
   CPU seconds of ``--steps`` more steps; predict the same plan's step time and peak.
3. Print one row per layout with both rankings, then whether the predicted fastest is the
   measured fastest (wall clock and CPU time), the memory errors, and
   ``fit_calibration``'s step error after fitting compute/comm scales to the wall times.

Every layout's global batch is the same (rows × micro-batches × dp), so the rankings
compare the same work. Wall clock on a shared host swings with other load (see
docs/parallel.md); the CPU-time ranking is printed beside it for that reason.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import replace

from memory_model_check import measure, parse_layout

DEFAULT_LAYOUTS = {
    "tiny": ["dp=1,rows=16", "dp=2", "tp=2,rows=16", "pp=2,mbs=2", "dp=2,ac=full", "dp=2,mbs=2,rows=4"],
    "small": ["dp=1,rows=8", "dp=2,rows=4", "tp=2,rows=8", "pp=2,mbs=2,rows=4", "dp=2,ac=full,rows=4"],
    "base": ["dp=1,rows=4", "dp=2,rows=2", "tp=2,rows=4", "pp=2,mbs=2,rows=2"],
}


def _plan(lay: dict):
    from ogi_ray.parallel.plan import ParallelPlan

    return ParallelPlan(dp=lay["dp"], tp=lay["tp"], pp=lay["pp"], microbatches=lay["mbs"],
                        micro_batch_rows=lay["rows"], activation_checkpoint=lay["ac"],
                        sequence_parallel=lay["sp"], reshard_after_forward=lay["reshard"])  # fmt: skip


def _ranks(xs: list[float]) -> list[int]:
    order = sorted(range(len(xs)), key=lambda i: xs[i])
    out = [0] * len(xs)
    for r, i in enumerate(order):
        out[i] = r + 1
    return out


def main() -> None:
    from ogi_ray.model.config import preset
    from ogi_ray.parallel.calibrate import Measurement, fit_calibration, probe_calibration
    from ogi_ray.parallel.cost import predict_step_time
    from ogi_ray.parallel.memory import predict_peak_memory
    from ogi_ray.parallel.planner import model_spec
    from ogi_ray.parallel.topology import load_topology

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="tiny", help="ogi preset (tiny, small, base)")
    ap.add_argument("--steps", type=int, default=6, help="timed steps per layout (after 2 untimed)")
    ap.add_argument("--layout", action="append", default=None, help="e.g. dp=2,rows=4 (repeatable)")
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    # The probes must run at the ranks' thread count (memory_model_check: one each). torch
    # is imported already (by memory_model_check), so the variable alone is too late: the
    # probes took both cores and read every rate about 2x too fast.
    import torch

    torch.set_num_threads(1)
    texts = args.layout or DEFAULT_LAYOUTS[args.model]
    lays = [dict(parse_layout(t), steps=args.steps) for t in texts]
    plans = [_plan(lay) for lay in lays]
    if len({p.global_batch for p in plans}) != 1:
        raise SystemExit(f"layouts differ in global batch: {[p.global_batch for p in plans]}")
    cfg = preset(args.model)
    rows = min(p.micro_batch_rows for p in plans)
    cal = probe_calibration(model_spec(cfg, global_batch=plans[0].global_batch), rows, tp=(1, 2), collective=True)
    topo = replace(load_topology("cpu-2"), calibration=cal)
    print(f"calibration: gemm {cal.gemm_tflops:.3f} TFLOP/s, attention {cal.attn_tflops:.3f} TFLOP/s, "
          f"element-wise {cal.elem_gb_per_s:.2f} GB/s, LM loss {cal.loss_gb_per_s:.2f} GB/s, "
          f"copy {cal.copy_gb_per_s:.1f} GB/s, op "
          f"{cal.op_overhead_us:.1f} us, tp module {cal.tp_module_overhead_us:.0f} us, fsdp group "
          f"{cal.fsdp_group_overhead_us:.0f} us, dp group {cal.dp_group_overhead_us:.0f} us, gloo {cal.intra_bus_gbps:.1f} Gbit/s + {cal.intra_latency_us:.0f} us",
          flush=True)  # fmt: skip
    got, pred_t, pred_m = [], [], []
    for lay, plan in zip(lays, plans, strict=True):
        got.append(measure(args.model, lay))
        pred_t.append(predict_step_time(plan, cfg, topo, precision=lay["precision"]).step_time_s)
        pred_m.append(predict_peak_memory(plan, cfg, precision=lay["precision"]).peak_bytes)
    wall, cpu = [g[1] for g in got], [g[2] for g in got]
    rp, rw, rc = _ranks(pred_t), _ranks(wall), _ranks(cpu)
    print(f"\n{'layout':30s} {'pred ms':>8s} {'wall ms':>8s} {'CPU ms':>7s}  rank p/w/c  "
          f"{'pred MiB':>9s} {'meas MiB':>9s} {'error':>7s}")
    for i, text in enumerate(texts):
        print(f"{text:30s} {pred_t[i] * 1e3:8.1f} {wall[i] * 1e3:8.1f} {cpu[i] * 1e3:7.1f}  "
              f"{rp[i]:>4d}/{rw[i]}/{rc[i]}  {pred_m[i] / 2**20:9.2f} {got[i][0] / 2**20:9.2f} "
              f"{pred_m[i] / got[i][0] - 1:+7.1%}")
    fastest = rp.index(1)
    print(f"\npredicted fastest: {texts[fastest]}; measured fastest by wall clock: {texts[rw.index(1)]} "
          f"({'right' if rw[fastest] == 1 else 'wrong'}), by CPU time: {texts[rc.index(1)]} "
          f"({'right' if rc[fastest] == 1 else 'wrong'})")
    print(f"memory: worst error {max(abs(pred_m[i] / got[i][0] - 1) for i in range(len(got))):.1%}")
    _, rep = fit_calibration([Measurement(p, w, g[0]) for p, w, g in zip(plans, wall, got, strict=True)],
                             model_spec(cfg, global_batch=plans[0].global_batch), topo)  # fmt: skip
    print(f"after fitting compute/comm scales to the wall times: step errors "
          f"{', '.join(f'{e:+.0%}' for e in rep.step_error)}; fastest right: {rep.fastest_right}")


if __name__ == "__main__":
    main()

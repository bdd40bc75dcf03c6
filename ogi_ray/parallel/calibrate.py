"""Calibration of the cost model: probes of this machine, and a fit to measured steps.

    ModelSpec + micro-batch rows + tp ──gemm_shapes──► the model's own GEMMs
        ──probe_gemms (torch, timed)──► fit_gemm ──► gemm_tflops, gemm_overhead_us
    probe_copy ──► copy_gb_per_s;   probe_op_overhead ──► op_overhead_us
    probe_wrapper_overheads (one-process gloo) ──► tp_module_overhead_us, fsdp_group_overhead_us
    probe_collective (gloo ring between local processes) ──► intra_bus_gbps, intra_latency_us
        ──probe_calibration──► Calibration ──► Topology.calibration ──► cost / memory

    [Measurement(plan, step_time_s, peak_bytes)] + ModelSpec + Topology
        ──fit_calibration──► Calibration with compute_scale, comm_scale, step_overhead_s
                             (least squares: cost.evaluate is linear in them), memory_scale
                             and memory_overhead_mib (affine), and a FitReport of the errors

The probes import torch inside the functions, so importing this module stays cheap; the
fit is numpy only. The lead's benchmark feeds ``fit_calibration`` real runs.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from ogi_ray.parallel.shapes import Layouts, ModelSpec
from ogi_ray.parallel.topology import Calibration, Topology


def gemm_shapes(spec: ModelSpec, rows: int, tp: int = 1) -> list[tuple[int, int, int]]:
    """(M, K, N) of the forward matmuls one rank runs for one micro-batch of ``rows``
    rows: per block q, k, v (h → h/t), o (h/t → h), the MLP in (h → f/t) and out
    (f/t → h); then the LM head over the text slots (h → V, replicated over tp)."""
    h, f = spec.hidden, spec.ffn
    M = rows * spec.seq_len
    block = [(M, h, h // tp)] * 3 + [(M, h // tp, h)] + [(M, h, f // tp)] * spec.mlp_in + [(M, f // tp, h)]
    head = [(rows * spec.text_tokens, h, spec.vocab)] if spec.vocab else []
    return block + head


def fit_gemm(shapes: list[tuple[int, int, int]], seconds: list[float]) -> tuple[float, float]:
    """(TFLOP/s, overhead µs) of t = α + 2MKN / R, least squares over the probed shapes;
    with one shape (or a negative α) the rate alone."""
    flops = np.array([2.0 * m * k * n for m, k, n in shapes])
    t = np.asarray(seconds, dtype=np.float64)
    if len(set(flops)) > 1:
        (inv_rate, alpha), *_ = np.linalg.lstsq(np.stack([flops, np.ones_like(flops)], 1), t, rcond=None)
        if alpha >= 0 and inv_rate > 0:
            return 1 / inv_rate / 1e12, alpha * 1e6
    return float(flops.sum() / t.sum() / 1e12), 0.0


def _timed(fn: Any, repeats: int, sync: Any) -> float:
    """Best of ``repeats`` timings of ``fn()`` after one warm-up (shared machines are noisy;
    the best is the least disturbed)."""
    fn()
    sync()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        best = min(best, time.perf_counter() - t0)
    return best


def _torch_env(device: str, precision: str) -> tuple[Any, Any, Any]:
    import torch

    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    sync = (lambda: torch.cuda.synchronize()) if device == "cuda" else (lambda: None)
    return torch, dtype, sync


def probe_gemms(shapes: list[tuple[int, int, int]], *, device: str = "cpu", precision: str = "bf16",
                repeats: int = 5) -> list[float]:
    """Seconds of one (M×K)@(K×N) matmul per shape, in the step's compute dtype."""
    torch, dtype, sync = _torch_env(device, precision)
    out = []
    for m, k, n in shapes:
        a = torch.randn(m, k, device=device, dtype=dtype)
        b = torch.randn(k, n, device=device, dtype=dtype)
        out.append(_timed(lambda a=a, b=b: a @ b, repeats, sync))
    return out


def probe_copy(*, device: str = "cpu", mib: int = 64, repeats: int = 5) -> float:
    """Copy bandwidth (read + write) in GB/s of a ``mib`` MiB tensor."""
    torch, _, sync = _torch_env(device, "fp32")
    x = torch.ones(mib * 2**18, device=device)
    y = torch.empty_like(x)
    return 2 * x.nbytes / _timed(lambda: y.copy_(x), repeats, sync) / 1e9


def probe_op_overhead(*, ops: int = 200, repeats: int = 5) -> float:
    """Microseconds per eager op with autograd recording, on tiny tensors (what an op of
    a small model costs beyond its arithmetic): a chain of multiplications, forward and
    backward, divided by the number of dispatched ops (two per link)."""
    torch, _, sync = _torch_env("cpu", "fp32")
    x = torch.ones(8, requires_grad=True)

    def chain() -> None:
        y = x
        for _ in range(ops):
            y = y * 1.0001
        y.sum().backward()

    return _timed(chain, repeats, sync) / (2 * ops) * 1e6


def probe_wrapper_overheads(*, repeats: int = 5, calls: int = 50) -> tuple[float, float]:
    """(µs per TP-parallelised linear, µs per FSDP2 group) of a forward + backward, on a
    one-process gloo group: the Python cost DTensor dispatch and FSDP2's hooks add to an
    8×8 linear, whose arithmetic is negligible. Needs torch.distributed uninitialised."""
    import torch
    import torch.distributed as dist

    if dist.is_initialized():
        raise RuntimeError("probe_wrapper_overheads: torch.distributed is already initialised")
    import socket

    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor.parallel import ColwiseParallel, parallelize_module

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    try:
        mesh = init_device_mesh("cpu", (1,))
        x = torch.randn(2, 8, requires_grad=True)
        lin = lambda: torch.nn.Linear(8, 8, bias=False)  # noqa: E731

        def per_call(mod: Any) -> float:
            def run() -> None:
                for _ in range(calls):
                    mod(x).sum().backward()
            return _timed(run, repeats, lambda: None) / calls

        plain = per_call(lin())
        tp = per_call(parallelize_module(lin(), mesh, ColwiseParallel()))
        groups = torch.nn.Sequential(*[lin() for _ in range(4)])
        for m in groups:
            fully_shard(m, mesh=mesh)
        fully_shard(groups, mesh=mesh)
        plain4 = per_call(torch.nn.Sequential(*[lin() for _ in range(4)]))
        fsdp = (per_call(groups) - plain4) / 5
        return max(tp - plain, 0.0) * 1e6, max(fsdp, 0.0) * 1e6
    finally:
        dist.destroy_process_group()


def _collective_worker(rank: int, world: int, port: int, sizes: list[int], out: Any) -> None:
    import torch
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        times = []
        for n in sizes:
            x = torch.ones(n // 4)
            times.append(_timed(lambda x=x: dist.all_reduce(x), 5, lambda: None))
        if rank == 0:
            out.put(times)
    finally:
        dist.destroy_process_group()


def probe_collective(world: int = 2, sizes: tuple[int, ...] = (4096, 4 * 2**20)) -> tuple[float, float]:
    """(bus Gbit/s, alpha µs per ring step) of a gloo all-reduce among ``world`` local
    processes: t = 2(n−1)·α + 2(n−1)/n·S/B, solved from a small and a large message."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    q = ctx.SimpleQueue()
    mp.start_processes(_collective_worker, args=(world, port, list(sizes), q), nprocs=world,
                       start_method="spawn")
    t_small, t_big = q.get()
    f = 2 * (world - 1) / world
    bw = f * (sizes[1] - sizes[0]) / max(t_big - t_small, 1e-9)
    alpha = max(t_small - f * sizes[0] / bw, 0.0) / (2 * (world - 1))
    return bw * 8 / 1e9, alpha * 1e6


def probe_calibration(spec: ModelSpec, rows: int, *, tp: tuple[int, ...] = (1,), device: str = "cpu",
                      precision: str = "bf16", collective: bool = False,
                      wrappers: bool = True) -> Calibration:
    """Probe this machine at the model's own GEMM shapes for micro-batches of ``rows``
    rows under each tensor-parallel degree in ``tp`` (plus copy, op overhead, with
    ``wrappers`` the DTensor/FSDP2 Python cost, and with ``collective`` a two-process gloo
    all-reduce). Run it where the workers run, before torch.distributed is set up."""
    shapes = [s for t in tp for s in gemm_shapes(spec, rows, t)]
    tflops, alpha = fit_gemm(shapes, probe_gemms(shapes, device=device, precision=precision))
    tp_us, fsdp_us = probe_wrapper_overheads() if wrappers else (0.0, 0.0)
    cal = Calibration(gemm_tflops=round(tflops, 5), gemm_overhead_us=round(alpha, 2),
                      copy_gb_per_s=round(probe_copy(device=device), 2),
                      op_overhead_us=round(probe_op_overhead(), 2) if device == "cpu" else 0.0,
                      tp_module_overhead_us=round(tp_us, 1), fsdp_group_overhead_us=round(fsdp_us, 1),
                      source=f"probed {time.strftime('%Y-%m-%d %H:%M:%S')}: {spec.name} GEMMs "
                             f"({rows} rows, tp {list(tp)}, {precision}), copy, op overhead")
    if collective:
        bus, a = probe_collective()
        cal = replace(cal, intra_bus_gbps=round(bus, 3), intra_latency_us=round(a, 1),
                      source=cal.source + ", gloo all-reduce")
    return cal


# --- fitting to measured steps ----------------------------------------------------------


@dataclass
class Measurement:
    plan: Any  # ParallelPlan
    step_time_s: float | None = None  # measured seconds per optimizer step
    peak_bytes: float | None = None  # measured peak bytes on the busiest rank


@dataclass
class FitReport:
    step_error: list[float] = field(default_factory=list)  # relative, after the fit
    memory_error: list[float] = field(default_factory=list)
    fastest_right: bool | None = None  # the predicted fastest is the measured fastest

    def worst_memory_error(self) -> float:
        return max((abs(e) for e in self.memory_error), default=float("nan"))


def _predict(spec: ModelSpec, topo: Topology, plans: list[Any], precision: str,
             cal: Calibration) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Time and memory predictions per plan, each on ``topo`` cut to its world size."""
    from ogi_ray.parallel.cost import evaluate
    from ogi_ray.parallel.memory import evaluate_memory
    from ogi_ray.parallel.planner import topology_for_world

    times, mems = [], []
    for p in plans:
        t = replace(topology_for_world(topo, p.world_size), calibration=cal)
        lay = Layouts.from_plans([p])
        times.append(evaluate(spec, t, lay, precision))
        mems.append(evaluate_memory(spec, lay, precision, foreach=topo.gpu != "cpu", calibration=cal))
    join = lambda rs: {k: np.concatenate([r[k] for r in rs]) for k in rs[0]}  # noqa: E731
    return join(times), join(mems)


def _fit_step_scales(y: np.ndarray, C: np.ndarray, K: np.ndarray, overhead: bool) -> tuple[float, float, float]:
    """(compute_scale, comm_scale, step_overhead_s) for y ≈ a·C + b·K + c.

    Few, noisy steps of similar layouts cannot separate all three (C and the constant
    are nearly collinear), and a free fit then zeroes one scale. So: a and b by
    non-negative least squares when the layouts' communication varies and there are ≥ 3
    steps, else a alone with b = 1; c only when asked (``overhead``); a solution that
    drives a scale below 0.1 falls back to the next simpler fit."""
    from scipy.optimize import nnls

    fits = []
    if len(y) >= 3 and np.ptp(K) > 0.05 * np.mean(C):
        fits.append(("ck", np.stack([C, K] + ([np.ones_like(C)] if overhead else []), 1)))
    fits.append(("c", np.stack([C] + ([np.ones_like(C)] if overhead else []), 1)))
    for kind, A in fits:
        target = y if kind == "ck" else y - K
        x, _ = nnls(A, target)
        scales = x[:2] if kind == "ck" else x[:1]
        if np.all(scales >= 0.1):
            a = float(x[0])
            b = float(x[1]) if kind == "ck" else 1.0
            c = float(x[-1]) if overhead else 0.0
            return a, b, c
    a = float(np.sum(y * C) / np.sum(C * C))  # through the origin, communication ignored
    return max(a, 1e-6), 1.0, 0.0


def fit_calibration(measurements: list[Measurement], spec: ModelSpec, topo: Topology, *,
                    precision: str = "bf16", overhead: bool = False) -> tuple[Calibration, FitReport]:
    """Fit compute_scale and comm_scale (and step_overhead_s with ``overhead``) to the
    measured step times (``_fit_step_scales``), and memory_scale and memory_overhead_mib
    (affine least squares over the measured peaks; the overhead alone from one peak), on
    top of ``topo.calibration``'s probed constants. All measurements share the model
    (``spec``, any global batch: each plan's own is used), the hardware and the precision;
    ``topo`` is cut to each plan's world size. Step times should be wall-clock seconds on
    otherwise idle machines: the model predicts a dedicated machine's step."""
    base = replace(topo.calibration, compute_scale=1.0, comm_scale=1.0, step_overhead_s=0.0,
                   memory_scale=1.0, memory_overhead_mib=0.0)
    plans = [x.plan for x in measurements]
    t, mem = _predict(spec, topo, plans, precision, base)
    cal = base
    timed = [i for i, x in enumerate(measurements) if x.step_time_s is not None]
    if timed:
        y = np.array([measurements[i].step_time_s for i in timed])
        a, b, c = _fit_step_scales(y, t["compute_part_s"][timed], t["comm_part_s"][timed], overhead)
        cal = replace(cal, compute_scale=a, comm_scale=b, step_overhead_s=c)
    peaks = [i for i, x in enumerate(measurements) if x.peak_bytes is not None]
    if peaks:
        y = np.array([measurements[i].peak_bytes for i in peaks])
        p = mem["peak_bytes"][peaks]
        if len(peaks) >= 2 and np.ptp(p) > 0:
            (scale, off), *_ = np.linalg.lstsq(np.stack([p, np.ones_like(p)], 1), y, rcond=None)
        else:
            scale, off = 1.0, float(np.mean(y - p))
        cal = replace(cal, memory_scale=max(float(scale), 1e-6), memory_overhead_mib=max(float(off), 0.0) / 2**20)
    return cal, report(measurements, spec, topo, precision, cal)


def report(measurements: list[Measurement], spec: ModelSpec, topo: Topology, precision: str,
           cal: Calibration) -> FitReport:
    """Relative errors of the predictions under ``cal``, and whether the fastest is right."""
    t, mem = _predict(spec, topo, [x.plan for x in measurements], precision, cal)
    rep = FitReport()
    steps = [(i, x.step_time_s) for i, x in enumerate(measurements) if x.step_time_s is not None]
    rep.step_error = [float(t["step_time_s"][i] / y - 1) for i, y in steps]
    rep.memory_error = [float(mem["peak_bytes"][i] / x.peak_bytes - 1)
                        for i, x in enumerate(measurements) if x.peak_bytes is not None]
    if len(steps) >= 2:
        idx = [i for i, _ in steps]
        rep.fastest_right = int(np.argmin(t["step_time_s"][idx])) == int(np.argmin([y for _, y in steps]))
    return rep

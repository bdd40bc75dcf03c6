"""Calibration of the cost model: probes of this machine, and a fit to measured steps.

    ModelSpec + micro-batch rows + tp ──gemm_shapes──► the model's own GEMMs
        ──probe_gemms (torch, timed)──► fit_gemm ──► gemm_tflops, gemm_overhead_us
    probe_copy ──► copy_gb_per_s;   probe_op_overhead ──► op_overhead_us
    ModelSpec + rows (tp 1) ──probe_attention──► attn_s (masked SDPA, forward + backward)
                            ──probe_block──────► block_s (one real Block, forward + backward)
        ──fit_block_rates: attention = 3·cost.block_attention_flops / attn_s;
          block_s − GEMMs − attn_s − op overhead = element-wise residual
          ──► attn_tflops, elem_gb_per_s = 3·cost.block_elementwise_bytes / residual
    ModelSpec + rows ──probe_lm_head (head GEMM + lm_loss)──► fit_loss_rate ──► loss_gb_per_s
    probe_wrapper_overheads (one-process gloo) ──► tp_module_overhead_us, fsdp_group_overhead_us
    probe_ranks.probe_collective (gloo ring between local processes) ──► intra_bus_gbps, intra_latency_us
    probe_ranks.probe_fsdp (2 busy ranks, real blocks) ──► dp_group_overhead_us
    probe_ranks.probe_tp (the same, tensor-parallel) ──► tp_module_overhead_us (replaces the above)
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

from ogi_ray.parallel.cost import (
    OPS_PER_BLOCK,
    block_attention_flops,
    block_elementwise_bytes,
    lm_loss_bytes,
)
from ogi_ray.parallel.memory import act_bytes
from ogi_ray.parallel.shapes import Layouts, ModelSpec
from ogi_ray.parallel.topology import Calibration, Topology


def block_gemm_shapes(spec: ModelSpec, rows: int, tp: int = 1) -> list[tuple[int, int, int]]:
    """(M, K, N) of one block's forward matmuls on one rank for ``rows`` rows: q, k, v
    (h → h/t), o (h/t → h), the MLP in (h → f/t) and out (f/t → h)."""
    h, f = spec.hidden, spec.ffn
    M = rows * spec.seq_len
    return [(M, h, h // tp)] * 3 + [(M, h // tp, h)] + [(M, h, f // tp)] * spec.mlp_in + [(M, f // tp, h)]


def gemm_shapes(spec: ModelSpec, rows: int, tp: int = 1) -> list[tuple[int, int, int]]:
    """(M, K, N) of the forward matmuls one rank runs for one micro-batch of ``rows``
    rows: one block's (``block_gemm_shapes``), then the LM head over the text slots
    (h → V, replicated over tp)."""
    head = [(rows * spec.text_tokens, spec.hidden, spec.vocab)] if spec.vocab else []
    return block_gemm_shapes(spec, rows, tp) + head


def fit_gemm(shapes: list[tuple[int, int, int]], seconds: list[float]) -> tuple[float, float]:
    """(TFLOP/s, overhead µs) of t = α + 2MKN / R, least squares over the probed shapes;
    with one shape (or a negative α) the rate alone. Plain floats (YAML cannot dump numpy's)."""
    flops = np.array([2.0 * m * k * n for m, k, n in shapes])
    t = np.asarray(seconds, dtype=np.float64)
    if len(set(flops)) > 1:
        (inv_rate, alpha), *_ = np.linalg.lstsq(np.stack([flops, np.ones_like(flops)], 1), t, rcond=None)
        if alpha >= 0 and inv_rate > 0:
            return float(1 / inv_rate / 1e12), float(alpha * 1e6)
    return float(flops.sum() / t.sum() / 1e12), 0.0


def best_time(fn: Any, repeats: int, sync: Any) -> float:
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
        out.append(best_time(lambda a=a, b=b: a @ b, repeats, sync))
    return out


def probe_copy(*, device: str = "cpu", mib: int = 64, repeats: int = 5) -> float:
    """Copy bandwidth (read + write) in GB/s of a ``mib`` MiB tensor."""
    torch, _, sync = _torch_env(device, "fp32")
    x = torch.ones(mib * 2**18, device=device)
    y = torch.empty_like(x)
    return 2 * x.nbytes / best_time(lambda: y.copy_(x), repeats, sync) / 1e9


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

    return best_time(chain, repeats, sync) / (2 * ops) * 1e6


def _packed_mask(torch: Any, rows: int, seq_len: int, device: str, docs: int = 4) -> Any:
    """(rows, 1, S, S) bool: causal inside ``docs`` equal documents, what the ogi model's
    packed text rows look like (layout.row_mask); the diagonal is always True, so no
    softmax row is empty. The dense kernel's cost does not depend on the pattern."""
    doc = torch.arange(seq_len, device=device) * docs // seq_len  # (S,) document of each slot
    pos = torch.arange(seq_len, device=device)
    m = (doc[:, None] == doc[None, :]) & (pos[None, :] <= pos[:, None])  # (S, S)
    return m.expand(rows, 1, seq_len, seq_len).clone()


def _fwd_bwd(torch: Any, fn: Any, inputs: list[Any]) -> Any:
    """A closure running ``fn()`` and its backward into ``inputs`` (autograd.grad: fresh
    gradients each call, as after zero_grad(set_to_none=True), no accumulation)."""
    grad = torch.randn_like(fn())  # the output's shape and dtype

    def run() -> None:
        torch.autograd.grad(fn(), inputs, grad)

    return run


def probe_attention(spec: ModelSpec, rows: int, *, tp: int = 1, device: str = "cpu",
                    precision: str = "bf16", repeats: int = 5) -> float:
    """Best seconds of forward + backward of one block's dense masked attention on one
    rank: ``scaled_dot_product_attention`` of q, k, v (rows, heads/tp, S, hd) in the
    compute dtype under a packed-document boolean mask (rows, 1, S, S)."""
    torch, dtype, sync = _torch_env(device, precision)
    S, hd = spec.seq_len, spec.hidden // spec.heads
    q, k, v = (torch.randn(rows, spec.heads // tp, S, hd, device=device, dtype=dtype, requires_grad=True)
               for _ in range(3))  # fmt: skip
    mask = _packed_mask(torch, rows, S, device)
    attend = lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # noqa: E731
    return best_time(_fwd_bwd(torch, attend, [q, k, v]), repeats, sync)


def ogi_block_config(spec: ModelSpec) -> Any:
    """The ogi ModelConfig whose Block has ``spec``'s shape; ValueError for a block the ogi
    model cannot express (no gated MLP, or an MLP width ModelConfig cannot produce)."""
    from ogi_ray.model.config import ModelConfig

    # ModelConfig.hidden_dim is 2/3 · mlp_ratio · dim rounded up to a multiple of 64.
    cfg = ModelConfig(dim=spec.hidden, n_heads=spec.heads, mlp_ratio=1.5 * spec.ffn / spec.hidden)
    cfg.validate()
    if not spec.gated_mlp or cfg.hidden_dim != spec.ffn:
        raise ValueError(f"probe_block: {spec.name} is not an ogi block (gated MLP, width a multiple of 64)")
    return cfg


def block_inputs(spec: ModelSpec, rows: int, device: str = "cpu") -> tuple[Any, Any, Any, Any]:
    """x (rows, S, h) fp32 requiring grad, the rotary cos and sin (S, hd/2) and a packed
    document mask (rows, 1, S, S): what a Block's forward takes."""
    import torch

    from ogi_ray.model.transformer import rotary_tables

    cfg = ogi_block_config(spec)
    S = spec.seq_len
    cos, sin = (t.to(device) for t in rotary_tables(S, cfg.head_dim, cfg.rope_theta))
    x = torch.randn(rows, S, spec.hidden, device=device, requires_grad=True)
    return x, cos, sin, _packed_mask(torch, rows, S, device)


def autocast_context(device: str, precision: str) -> Any:
    """The train step's autocast: bf16 over fp32 parameters for "bf16", none for "fp32"."""
    from contextlib import nullcontext

    import torch

    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16) if precision == "bf16" else nullcontext()


def probe_block(spec: ModelSpec, rows: int, *, device: str = "cpu", precision: str = "bf16",
                repeats: int = 3) -> float:
    """Best seconds of forward + backward of one real ``ogi_ray.model.transformer.Block``
    (fp32 parameters, under bf16 autocast for "bf16" as the train step runs it) on x
    (rows, S, h) fp32 with the model's rotary tables and a packed-document mask: GEMMs,
    attention, the element-wise chain and eager op overhead together. Needs the ogi
    block's shape: a gated MLP whose width ModelConfig can express."""
    from ogi_ray.model.transformer import Block

    torch, _, sync = _torch_env(device, precision)
    block = Block(ogi_block_config(spec)).to(device)
    x, cos, sin, mask = block_inputs(spec, rows, device)

    def forward() -> Any:
        with autocast_context(device, precision):
            return block(x, cos, sin, mask)  # (rows, S, h) fp32: x + bf16 sublayer outputs

    return best_time(_fwd_bwd(torch, forward, [x, *block.parameters()]), repeats, sync)


def fit_block_rates(spec: ModelSpec, rows: int, block_s: float, attn_s: float, gemm_tflops: float,
                    gemm_overhead_us: float, op_overhead_us: float, precision: str) -> tuple[float, float]:
    """(attn_tflops, elem_gb_per_s) of one block probed at tp 1, in the cost model's counts.

    Both times are forward + backward, and the cost model charges backward as 2 × forward,
    hence the 3s. Attention: 3 · block_attention_flops / attn_s. Element-wise: what the
    block's time leaves after its GEMMs (3 × Σ (2MKN / R + α) over block_gemm_shapes at the
    fitted rate R and overhead α), the attention and the eager op overhead (forward +
    backward ops × op overhead); bandwidth = 3 · block_elementwise_bytes / residual. A
    residual ≤ 0 (noise: the parts were timed apart from the block) gives 0.0, which the
    cost model reads as "not measured" and falls back to copy bandwidth."""
    if not (gemm_tflops > 0 and attn_s > 0):
        raise ValueError(f"fit_block_rates: needs gemm_tflops and attn_s > 0, got {gemm_tflops}, {attn_s}")
    attn_tflops = 3 * float(block_attention_flops(spec, rows, 1)) / attn_s / 1e12
    gemm = 3 * sum(2.0 * m * k * n / (gemm_tflops * 1e12) + gemm_overhead_us * 1e-6
                   for m, k, n in block_gemm_shapes(spec, rows))  # fmt: skip
    ops = (OPS_PER_BLOCK["fwd"] + OPS_PER_BLOCK["bwd"]) * op_overhead_us * 1e-6
    residual = float(block_s - gemm - attn_s - ops)
    if residual <= 0:
        return attn_tflops, 0.0
    nbytes = float(block_elementwise_bytes(spec, rows, 1, False, act_bytes(precision)))
    return attn_tflops, 3 * nbytes / residual / 1e9


def probe_lm_head(spec: ModelSpec, rows: int, *, device: str = "cpu", precision: str = "bf16",
                  repeats: int = 3) -> float:
    """Best seconds of forward + backward of the LM head and loss for ``rows`` rows: h
    (rows, T, hidden) fp32 through an fp32 (V, hidden) weight under bf16 autocast, then
    the model's own ``lm_loss`` (fp32 cross-entropy over the (rows·T, V) logits)."""
    from ogi_ray.model.objectives import lm_loss

    torch, _, sync = _torch_env(device, precision)
    T, V = spec.text_tokens, spec.vocab
    h = torch.randn(rows, T, spec.hidden, device=device, requires_grad=True)
    w = torch.nn.Parameter(torch.randn(V, spec.hidden, device=device) / spec.hidden**0.5)
    targets = torch.randint(0, V, (rows, T), device=device)

    def forward() -> Any:
        with autocast_context(device, precision):
            return lm_loss(torch.nn.functional.linear(h, w), targets)  # () fp32

    return best_time(_fwd_bwd(torch, forward, [h, w]), repeats, sync)


def fit_loss_rate(spec: ModelSpec, rows: int, head_s: float, gemm_tflops: float, gemm_overhead_us: float) -> float:
    """loss_gb_per_s: ``lm_loss_bytes`` over what the probed head leaves after its three
    GEMMs (forward, and the two of backward, at the fitted rate and overhead). The cost
    model charges the loss time forward + backward in one term, so no factor 3 here; a
    residual ≤ 0 gives 0.0 (copy bandwidth)."""
    gemm = 3 * (2.0 * rows * spec.text_tokens * spec.hidden * spec.vocab / (gemm_tflops * 1e12) + gemm_overhead_us * 1e-6)
    residual = head_s - gemm
    return float(lm_loss_bytes(spec, rows)) / residual / 1e9 if residual > 0 else 0.0


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
            return best_time(run, repeats, lambda: None) / calls

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


def probe_calibration(spec: ModelSpec, rows: int, *, tp: tuple[int, ...] = (1,), device: str = "cpu",
                      precision: str = "bf16", collective: bool = False,
                      wrappers: bool = True, block: bool = True) -> Calibration:
    """Probe this machine at the model's own GEMM shapes for micro-batches of ``rows``
    rows under each tensor-parallel degree in ``tp`` (plus copy, op overhead, with
    ``block`` the attention rate and element-wise bandwidth of one real block at tp 1
    (``fit_block_rates``; rates carry over to tp > 1) and, with a vocabulary, the LM
    loss bandwidth (``fit_loss_rate``), with ``wrappers`` the DTensor/FSDP2
    Python cost, and with ``collective`` a two-process gloo all-reduce and, on a CPU with
    ``block``, FSDP2 at the model's block size over two busy ranks (probe_ranks.probe_fsdp:
    dp_group_overhead_us) and, with 2 in ``tp``, TP over them (probe_tp: it replaces the
    wrapper probe's tp_module_overhead_us). Run it where the workers run, before
    torch.distributed is set up."""
    shapes = [s for t in tp for s in gemm_shapes(spec, rows, t)]
    tflops, alpha = fit_gemm(shapes, probe_gemms(shapes, device=device, precision=precision))
    op_us = probe_op_overhead() if device == "cpu" else 0.0
    tp_us, fsdp_us = probe_wrapper_overheads() if wrappers else (0.0, 0.0)
    cal = Calibration(gemm_tflops=round(tflops, 5), gemm_overhead_us=round(alpha, 2),
                      copy_gb_per_s=round(probe_copy(device=device), 2), op_overhead_us=round(op_us, 2),
                      tp_module_overhead_us=round(tp_us, 1), fsdp_group_overhead_us=round(fsdp_us, 1),
                      source=f"probed {time.strftime('%Y-%m-%d %H:%M:%S')}: {spec.name} GEMMs "
                             f"({rows} rows, tp {list(tp)}, {precision}), copy, op overhead")
    if block:
        attn_s = probe_attention(spec, rows, device=device, precision=precision)
        block_s = probe_block(spec, rows, device=device, precision=precision)
        attn, elem = fit_block_rates(spec, rows, block_s, attn_s, tflops, alpha, op_us, precision)
        cal = replace(cal, attn_tflops=round(attn, 5), elem_gb_per_s=round(elem, 2),
                      source=cal.source + ", masked attention and one block (tp 1)")
        if spec.vocab:
            head_s = probe_lm_head(spec, rows, device=device, precision=precision)
            cal = replace(cal, loss_gb_per_s=round(fit_loss_rate(spec, rows, head_s, tflops, alpha), 2),
                          source=cal.source + ", LM head and loss")
    if collective:
        from ogi_ray.parallel.probe_ranks import (
            fit_fsdp_overhead,
            fit_tp_overhead,
            probe_collective,
            probe_fsdp,
            probe_tp,
        )

        bus, a = probe_collective()
        cal = replace(cal, intra_bus_gbps=round(bus, 3), intra_latency_us=round(a, 1),
                      source=cal.source + ", gloo all-reduce")
        if block and device == "cpu":  # FSDP2 groups at the model's sizes, both ranks busy
            sharded, plain = probe_fsdp(spec, rows, precision=precision)
            dp_us = fit_fsdp_overhead(spec, 2, 2, sharded, plain, bus, a, cal.fsdp_group_overhead_us)
            cal = replace(cal, dp_group_overhead_us=round(dp_us, 1),
                          source=cal.source + ", FSDP2 over 2 ranks at the model's block size")
            if 2 in tp:  # TP over 2 busy ranks, less the model's compute and all-reduces
                tp_us = fit_tp_overhead(spec, rows, 2, probe_tp(spec, rows, precision=precision), cal, precision)
                cal = replace(cal, tp_module_overhead_us=round(tp_us, 1), source=cal.source + " and TP")
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

"""Analytic step-time model of the program docs/parallel.md describes, vectorised over layouts.

    ModelSpec, Topology (+ its Calibration), Layouts, precision
        ──rates──► GEMM rate and per-call time, attention rate, element-wise and copy
                   bandwidth, per-op time, link bandwidths
        ──evaluate──► per candidate: compute (GEMM roofline
                        + block_attention_flops at the attention rate
                        + block_elementwise_bytes at the element-wise bandwidth
                        + lm_loss_bytes at the loss bandwidth
                        + eager op overhead, recompute for AC), TP collectives, 1F1B slots
                      and bubble, pipeline sends, FSDP2 all-gathers / reduce-scatters and
                      the part compute cannot hide, AdamW and gradient clipping ─► step time

Links use the alpha-beta ring model: an all-reduce of S bytes over n ranks costs
2(n−1)/n·S/B + 2(n−1)·α, an all-gather or reduce-scatter (n−1)/n·S/B + (n−1)·α (Patarasuk &
Yuan 2009; NCCL's "bus bandwidth"; Alpa's per-mesh-axis model). B is the bandwidth one
group gets: a data-parallel group that leaves the node shares the node's NICs with the
other tp groups crossing them at the same time (``dp_group_bandwidth``).

Constants come from the topology's Calibration (probes, fitted steps); where nothing was
measured, from the datasheet times the published efficiencies ``DEFAULT_*`` (attention at
the GEMM rate, element-wise work at copy bandwidth). ``calibrate.fit_block_rates`` fits the
attention rate and the element-wise bandwidth with the two count functions used here. No
torch here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ogi_ray.parallel.shapes import AC_MODES, GIB, Layouts, ModelSpec  # noqa: F401 (re-export)
from ogi_ray.parallel.topology import Calibration, Topology

# Fallbacks when the calibration has no measurement (docs/parallel.md gives the sources).
DEFAULT_MATMUL_EFFICIENCY = 0.75  # large bf16 GEMMs reach 70–90 % of dense peak
DEFAULT_HBM_EFFICIENCY = 0.8  # STREAM-like copies reach ~80 % of datasheet HBM bandwidth
DEFAULT_LINK_EFFICIENCY = 0.8  # NCCL bus bandwidth / line rate (nccl-tests: 46–48 of 50 GB/s NDR)
DEFAULT_OVERLAP = {"gpu": 0.8, "cpu": 0.0}  # GPUs overlap on streams; CPU ranks share cores
# Eager dispatches per block and micro-batch, counted with a TorchDispatchMode on the ogi
# model (torch 2.13): forward, backward, and what selective AC recomputes (all but the 7
# matmuls, attention and their views).
OPS_PER_BLOCK = {"fwd": 104.0, "bwd": 159.0, "selective": 90.0}
OPS_ROOT_PER_MICROBATCH = 100.0  # embeddings, final norm, heads, losses, the all-heads anchor
OPS_PER_PARAM_TENSOR = 11.0  # per step: AdamW's per-tensor loop, norms for clipping and GNS
# AdamW over fp32 state: read param, grad, m, v (16 B), write param, m, v (12 B).
OPTIMIZER_BYTES_PER_PARAM = 28.0
GEMMS_PER_BLOCK = 7  # wq, wk, wv, wo, w1, w3, w2 (6 without a gate)


def ring_factor(n: Any) -> Any:
    """Bytes each rank sends in a ring all-reduce, per byte of buffer: 2(n − 1)/n."""
    return 2 * (n - 1) / n


def bubble_fraction(pp: Any, microbatches: Any) -> Any:
    """Idle fraction of a 1F1B (or GPipe) pipeline step: (p − 1) / (m + p − 1)."""
    return (pp - 1) / (microbatches + pp - 1)


def all_reduce_time(n: Any, nbytes: Any, bw: Any, alpha: Any) -> np.ndarray:
    return np.where(n > 1, ring_factor(n) * nbytes / bw + 2 * (n - 1) * alpha, 0.0)


def gather_time(n: Any, nbytes: Any, bw: Any, alpha: Any) -> np.ndarray:
    """All-gather (or reduce-scatter) of a buffer of ``nbytes`` (the unsharded size)."""
    return np.where(n > 1, (n - 1) / n * nbytes / bw + (n - 1) * alpha, 0.0)


@dataclass(frozen=True)
class Rates:
    flops: float  # GEMM FLOP/s
    gemm_s: float  # fixed time per GEMM call
    attn: float  # attention FLOP/s (block_attention_flops per second)
    attn_s: float  # fixed time per attention call (0 when probed: the rate includes it)
    copy: float  # bytes/s of memory traffic: GEMM roofline, loss, AdamW (0: no memory term)
    elem: float  # bytes/s of one block's element-wise chain (block_elementwise_bytes; 0: none)
    loss: float  # bytes/s of the LM loss over the logits (lm_loss_bytes; 0: none)
    op_s: float  # fixed time per eager op
    tp_module_s: float  # per TP/SP-parallelised module and micro-batch
    fsdp_group_s: float  # per FSDP2 group and micro-batch
    dp_group_s: float  # per FSDP2 group and micro-batch, only when dp > 1
    intra: float  # bus bytes/s per device inside a node
    inter: float  # bus bytes/s per device between nodes (per NIC share)
    a_intra: float
    a_inter: float
    overlap: float
    cal: Calibration


def rates(topo: Topology, precision: str = "bf16") -> Rates:
    """The constants one evaluation uses: measured ones from ``topo.calibration``, else
    datasheet × DEFAULT_* efficiency. ``precision`` only matters for the fallback of a CPU
    (whose peak is an fp32 probe)."""
    cal = topo.calibration
    eff = topo.matmul_efficiency or DEFAULT_MATMUL_EFFICIENCY
    flops = cal.gemm_tflops * 1e12 or topo.peak_tflops * 1e12 * eff
    copy = cal.copy_gb_per_s * 1e9 or topo.hbm_gb_per_s * 1e9 * DEFAULT_HBM_EFFICIENCY
    intra = cal.intra_bus_gbps or topo.intra_node_gbps * DEFAULT_LINK_EFFICIENCY
    inter = cal.inter_bus_gbps or topo.inter_node_gbps * DEFAULT_LINK_EFFICIENCY
    kind = "cpu" if topo.gpu == "cpu" else "gpu"
    gemm_s = cal.gemm_overhead_us * 1e-6
    # Unprobed attention is priced as one more GEMM call (rate and per-call time).
    attn, attn_s = (cal.attn_tflops * 1e12, 0.0) if cal.attn_tflops else (flops, gemm_s)
    return Rates(
        flops=flops, gemm_s=gemm_s, attn=attn, attn_s=attn_s, copy=copy,
        elem=cal.elem_gb_per_s * 1e9 or copy, loss=cal.loss_gb_per_s * 1e9 or copy,
        op_s=cal.op_overhead_us * 1e-6,
        tp_module_s=cal.tp_module_overhead_us * 1e-6, fsdp_group_s=cal.fsdp_group_overhead_us * 1e-6,
        dp_group_s=cal.dp_group_overhead_us * 1e-6,
        intra=max(intra, 1e-9) * 1e9 / 8, inter=max(inter, 1e-9) * 1e9 / 8,
        a_intra=(cal.intra_latency_us or topo.intra_latency_us) * 1e-6,
        a_inter=(cal.inter_latency_us or topo.inter_latency_us) * 1e-6,
        overlap=DEFAULT_OVERLAP[kind] if cal.overlap is None else cal.overlap, cal=cal,
    )


def dp_group_bandwidth(topo: Topology, r: Rates, dp: Any, tp: Any) -> tuple[np.ndarray, np.ndarray]:
    """Bus bandwidth (bytes/s) and alpha of one data-parallel group's ring.

    Mesh order (pp, dp, tp): a node holds g consecutive ranks, so once dp·tp > g a DP
    group has g/tp members in each node and tp groups cross the node's NICs at once. The
    node's inter-node bandwidth is g × the per-device figure, so each group gets its
    1/tp share, (g/tp) × per device: NCCL spreads one group's ring over that many NICs
    (one channel per NIC). The ring is also no faster than its intra-node hops."""
    g = topo.gpus_per_node
    crosses = dp * tp > g
    share = np.minimum(r.inter * np.maximum(g / tp, 1.0), r.intra)
    return np.where(crosses, share, r.intra), np.where(crosses, r.a_inter, r.a_intra)


def _gemm(rows: Any, k: Any, n: Any, r: Rates, e: float) -> tuple[np.ndarray, np.ndarray]:
    """Roofline time of one (rows × k) @ (k × n) matmul, and its FLOPs."""
    flops = 2.0 * rows * k * n
    t = flops / r.flops
    if r.copy > 0:
        t = np.maximum(t, e * (rows * k + k * n + rows * n) / r.copy)
    return t + r.gemm_s, flops


def block_attention_flops(spec: ModelSpec, rows: Any, tp: Any) -> np.ndarray:
    """Forward FLOPs of one block's dense masked attention for ``rows`` rows on one rank:
    QKᵀ and PV over the whole (S, S) product (the kernel skips nothing masked), 2·S²·hd
    each per head, h/tp of the head width per rank: 4·rows·S²·h/tp."""
    s = float(spec.seq_len)
    return np.asarray(4.0 * rows * s * s * spec.hidden / tp, dtype=np.float64)


def block_elementwise_bytes(spec: ModelSpec, rows: Any, tp: Any, sp: Any, e: float) -> np.ndarray:
    """Forward bytes of one block's element-wise traffic for ``rows`` rows on one rank, at
    ``e`` bytes per value. Per token: norms and residual adds 20h (split by tp under SP),
    rotary and casts 8h/tp, the MLP activation 2(mlp_in + 1)·f/tp; each value written
    once and read once."""
    h, f = float(spec.hidden), float(spec.ffn)
    rr = np.where(sp, tp, 1.0)
    per_token = 20 * h / rr + 8 * h / tp + 2 * (spec.mlp_in + 1) * f / tp
    return np.asarray(rows * spec.seq_len * e * per_token, dtype=np.float64)


def lm_loss_bytes(spec: ModelSpec, rows: Any) -> np.ndarray:
    """Bytes the LM loss moves for ``rows`` rows, forward and backward: the fp32 copy of
    the (rows·T, V) logits, log-softmax, its backward and the gradient cast back, about
    8 logit-sized fp32 passes (memory.py's buffers), 32 bytes per logit; 0 without a vocab."""
    return np.asarray(32.0 * rows * spec.text_tokens * spec.vocab, dtype=np.float64)


def _block_compute(spec: ModelSpec, lay: Layouts, r: Rates, e: float) -> dict[str, np.ndarray]:
    """Forward time of one block for one micro-batch on one rank, split by kind."""
    h, f = float(spec.hidden), float(spec.ffn)
    tp = lay.tp
    tokens = lay.rows * spec.seq_len
    gemm = np.zeros_like(tokens)
    for k, n, count in ((h, h / tp, 3), (h / tp, h, 1), (h, f / tp, spec.mlp_in), (f / tp, h, 1)):
        gemm = gemm + count * _gemm(tokens, k, n, r, e)[0]
    attn = block_attention_flops(spec, lay.rows, tp) / r.attn + r.attn_s
    elem_bytes = block_elementwise_bytes(spec, lay.rows, tp, lay.sp, e)
    elem = elem_bytes / r.elem if r.elem > 0 else np.zeros_like(tokens)
    return {"gemm": gemm, "attn": attn, "elem": elem}


def _tp_time(spec: ModelSpec, lay: Layouts, r: Rates, e: float) -> tuple[np.ndarray, np.ndarray]:
    """TP collectives of one block per micro-batch: (forward, backward) seconds.

    Without SP each sublayer all-reduces the row-parallel output (e bytes per value)
    forward and the column-parallel input gradient backward. With SP the forward
    all-gathers the fp32 norm output and reduce-scatters the output; backward does the
    reverse: the same ring volume per dtype, but the gathered side is fp32."""
    msg = lay.rows * spec.seq_len * spec.hidden
    ar = all_reduce_time(lay.tp, e * msg, r.intra, r.a_intra)
    sp_pair = gather_time(lay.tp, 4 * msg, r.intra, r.a_intra) + gather_time(lay.tp, e * msg, r.intra, r.a_intra)
    one = np.where(lay.sp, sp_pair, ar)
    return 2 * one, 2 * one


def block_seconds(spec: ModelSpec, rows: int, tp: int, cal: Calibration, precision: str = "bf16") -> tuple[float, float]:
    """(compute, TP communication) seconds of one block's forward + backward for ``rows``
    rows on one of ``tp`` ranks of a CPU node (no SP, no AC, no wrapper cost), at ``cal``'s
    constants: what probe_ranks.fit_tp_overhead subtracts from a measured TP block. The
    node's datasheet figures are placeholders, used only for constants ``cal`` lacks."""
    from ogi_ray.parallel.memory import act_bytes
    from ogi_ray.parallel.plan import ParallelPlan

    node = Topology(nodes=1, gpus_per_node=tp, gpu="cpu", hbm_gib=1.0, peak_tflops=1.0, intra_node_gbps=1.0,
                    inter_node_gbps=0.0, calibration=cal)  # fmt: skip
    lay = Layouts.from_plans([ParallelPlan(tp=tp, micro_batch_rows=rows)])
    r, e = rates(node, precision), act_bytes(precision)
    blk = _block_compute(spec, lay, r, e)
    compute = 3 * (blk["gemm"] + blk["attn"] + blk["elem"]) + (OPS_PER_BLOCK["fwd"] + OPS_PER_BLOCK["bwd"]) * r.op_s
    f, b = _tp_time(spec, lay, r, e)
    return float(compute[0]), float((f + b)[0])


def evaluate(spec: ModelSpec, topo: Topology, lay: Layouts, precision: str = "bf16") -> dict[str, np.ndarray]:
    """Predicted step time (s) and its parts per candidate; see docs/parallel.md."""
    from ogi_ray.parallel.memory import NORMS_BACKWARD_RESHARDS, act_bytes

    r = rates(topo, precision)
    e = act_bytes(precision)
    cal = r.cal
    dp, tp, pp, m, b = lay.dp, lay.tp, lay.pp, lay.m, lay.rows
    s, h, V, T = float(spec.seq_len), float(spec.hidden), float(spec.vocab), float(spec.text_tokens)
    L_first, L_last = lay.stage_layers(spec.layers)

    # --- compute of one block, one micro-batch; backward = 2 × forward; AC recomputes
    blk = _block_compute(spec, lay, r, e)
    fwd = blk["gemm"] + blk["attn"] + blk["elem"] + OPS_PER_BLOCK["fwd"] * r.op_s
    bwd = 2 * (blk["gemm"] + blk["attn"] + blk["elem"]) + OPS_PER_BLOCK["bwd"] * r.op_s
    recompute = np.select([lay.ac == 1, lay.ac == 2],
                          [blk["elem"] + OPS_PER_BLOCK["selective"] * r.op_s, fwd], 0.0)
    tp_f, tp_b = _tp_time(spec, lay, r, e)
    # Full AC re-runs the forward's collectives; selective saves all-reduce and
    # reduce-scatter outputs but re-gathers the SP norm outputs (fp32) in backward.
    regather = 2 * gather_time(tp, 4 * b * s * h, r.intra, r.a_intra)
    tp_re = np.select([lay.ac == 2, (lay.ac == 1) & lay.sp], [tp_f, regather], 0.0)
    # Heads are replicated over tp: every tp rank runs the whole LM head. The loss
    # (forward + backward) at the loss bandwidth (calibrate.probe_lm_head), else copy's.
    head_t = _gemm(b * T, h, V, r, e)[0] if V else np.zeros_like(b)
    loss_t = lm_loss_bytes(spec, b) / r.loss if (V and r.loss > 0) else np.zeros_like(b)
    root = 3 * head_t + loss_t + OPS_ROOT_PER_MICROBATCH * r.op_s
    # The tuner's ‖∂L_i/∂h‖ (first micro-batch, last stage): one more backward through the
    # head and the loss, outside the pipeline's slots.
    norms = head_t + loss_t / 2
    # Python-side wrappers: the block's TP modules (7 linears; SP adds 2 norms and 2 input
    # re-layouts) and one FSDP2 group per block plus the root.
    tp_modules = np.where(tp > 1, GEMMS_PER_BLOCK - (0 if spec.gated_mlp else 1) + 4.0 * lay.sp, 0.0)
    group = np.where(lay.world > 1, r.fsdp_group_s, 0.0) + np.where(dp > 1, r.dp_group_s, 0.0)
    wrappers = tp_modules * r.tp_module_s + group
    root = root + group
    stage = lambda L, extra: L * (fwd + bwd + recompute + wrappers) + extra  # noqa: E731
    compute_first = stage(L_first, np.where(pp == 1, root, 0.0))
    compute_last = stage(L_last, root)
    tp_first, tp_last = L_first * (tp_f + tp_b + tp_re), L_last * (tp_f + tp_b + tp_re)

    # --- PP: 1F1B, (m + p − 1) slots paced by the slower end stage; each slot sends the
    # fp32 residual stream forward and its gradient back (1/tp of it under SP).
    multi_node = lay.world > topo.gpus_per_node
    p2p_bw = np.where(multi_node, r.inter, r.intra)
    p2p_a = np.where(multi_node, r.a_inter, r.a_intra)
    act = 4.0 * b * s * h / np.where(lay.sp, tp, 1.0)
    p2p = np.where(pp > 1, 2 * (p2p_a + act / p2p_bw), 0.0)
    last_slower = compute_last + tp_last > compute_first + tp_first
    slot_c = np.where(last_slower, compute_last, compute_first)
    slot_k = np.where(last_slower, tp_last, tp_first) + p2p
    slots = m + pp - 1

    # --- DP: FSDP2 over fp32 parameters. Without a pipeline each micro-batch gathers every
    # group in forward (again in backward when resharded) and reduce-scatters its
    # gradients; a pipeline stage gathers once and reduce-scatters once per step.
    blk = spec.layer_params / tp + 2 * h
    P = np.maximum(L_first * blk + np.where(pp == 1, spec.root_params, spec.embed_params),
                   L_last * blk + spec.head_params)
    groups = L_first + 1
    # (reshard_after_forward=False still re-gathers once: memory.NORMS_BACKWARD_RESHARDS)
    regather_once = 1.0 if NORMS_BACKWARD_RESHARDS else 0.0
    per_pass = np.where(pp == 1, np.where(lay.raf, 3.0 * m, 2.0 * m + regather_once), 2.0)
    bw, a = dp_group_bandwidth(topo, r, dp, tp)
    dp_time = np.where(dp > 1, per_pass * ((dp - 1) / dp * 4 * P / bw + groups * (dp - 1) * a), 0.0)
    window = np.where(pp == 1, m, 1.0) * slot_c
    # The first gather and the last reduce-scatter have nothing to hide behind.
    exposed = np.where(dp > 1, np.maximum(dp_time - r.overlap * window, dp_time / groups), 0.0)

    # --- AdamW over the local shard; clipping and the GNS norms read the gradients 3 times.
    shard = np.where(lay.world > 1, dp, 1.0)
    tensors = L_first * (GEMMS_PER_BLOCK - (0 if spec.gated_mlp else 1) + 2) + 4
    opt_bytes = (OPTIMIZER_BYTES_PER_PARAM + 12.0) * P / shard
    optimizer = (opt_bytes / r.copy if r.copy > 0 else 0.0) + tensors * OPS_PER_PARAM_TENSOR * r.op_s

    # The step is linear in the fitted constants (calibrate.fit_calibration relies on it).
    compute_part = slots * slot_c + optimizer + norms
    comm_part = slots * slot_k + exposed
    step = cal.compute_scale * compute_part + cal.comm_scale * comm_part + cal.step_overhead_s
    cs, ks = cal.compute_scale, cal.comm_scale
    return {
        "step_time_s": step,
        "compute_part_s": compute_part,  # before compute_scale
        "comm_part_s": comm_part,  # before comm_scale
        "compute_s": cs * m * slot_c,
        "recompute_s": cs * m * np.maximum(L_first, L_last) * recompute,
        "tp_comm_s": ks * m * np.where(last_slower, tp_last, tp_first),
        "pp_p2p_s": ks * m * p2p,
        "pp_bubble_s": (pp - 1) * (cs * slot_c + ks * slot_k),
        "bubble_fraction": bubble_fraction(pp, m),
        "dp_comm_s": ks * dp_time,
        "dp_exposed_s": ks * exposed,
        "optimizer_s": cs * optimizer,
        "norms_s": cs * norms,
        "overhead_s": np.full_like(dp, cal.step_overhead_s),
        "mfu": spec.flops_per_step() / (step * lay.world * topo.peak_tflops * 1e12),
    }


@dataclass
class StepTimePrediction:
    step_time_s: float
    parts: dict[str, float] = field(default_factory=dict)


def predict_step_time(plan: Any, model: Any, topo: Topology, *, seq_len: int | None = None,
                      precision: str = "bf16") -> StepTimePrediction:
    """Predicted seconds of one optimizer step of ``plan`` (a ParallelPlan) for ``model``
    (ogi ModelConfig or preset, ModelSpec, or reference name) on ``topo`` (cut to the
    plan's world size), with the breakdown of ``evaluate``."""
    from ogi_ray.parallel.planner import model_spec, topology_for_world

    spec = model_spec(model, global_batch=plan.global_batch, seq_len=seq_len)
    res = evaluate(spec, topology_for_world(topo, plan.world_size), Layouts.from_plans([plan]), precision)
    return StepTimePrediction(float(res["step_time_s"][0]),
                              {k: float(v[0]) for k, v in res.items() if k != "step_time_s"})

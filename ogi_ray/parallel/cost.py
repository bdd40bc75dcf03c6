"""Analytic cost model of one optimizer step for a (dp, tp, pp, micro-batches) layout.

Everything is vectorised over candidate layouts, so the planner scores thousands at once:

    ModelSpec, Topology, CostParams, arrays dp, tp, pp, m, fsdp, full_recompute
        ──evaluate──► dict of arrays: step time and its parts, bytes per device, MFU, HBM use

Assumptions (docs/parallel.md gives the derivations and sources):
  * bf16 compute, fp32 master weights and Adam moments; TP uses sequence parallelism
    (Korthikanti et al. 2022), so norms and element-wise work are split over tp too;
    attention is a fused (flash) kernel: the s×s scores are never stored.
  * Compute: each GEMM of a layer costs max(FLOPs / (eff·peak), bytes / (eff·HBM bw))
    (a roofline), attention 4·b·s²·h/t FLOPs, element-wise ops their HBM traffic;
    backward = 2 × forward, full recomputation adds one forward.
  * TP: 4 all-reduces (or all-gather + reduce-scatter pairs, same volume) of b·s·h bf16
    activations per layer per micro-batch, 6 with full recomputation; ring cost
    2(t−1)/t · bytes / link + 2(t−1)·alpha over the intra-node link; not overlapped.
  * PP: 1F1B; the step takes (m + p − 1) micro-batch slots, of which p − 1 are the bubble,
    fraction (p − 1)/(m + p − 1) (Narayanan et al. 2021). Each slot sends one activation
    and receives one gradient of b·s·h/t bf16 values (scatter-gather optimisation).
  * DP, "zero1" (Megatron distributed optimizer): bf16 weights and fp32 gradients stay
    whole on each replica, the 12 B/param of fp32 master + Adam moments are sharded
    (6 + 12/d bytes per parameter); once per step a reduce-scatter of fp32 gradients and an
    all-gather of bf16 weights, overlapped with one micro-batch of compute (the last
    backward, the first forward).
    "fsdp" (FSDP2 / ZeRO-3): 16/d bytes per parameter plus two unsharded layers; every
    micro-batch all-gathers weights twice (forward, backward) and reduce-scatters
    gradients, overlapped with all compute of the step. Only ``overlap_efficiency`` (0.8)
    of a window hides communication.
  * Memory: weights/gradients/optimizer state as above over the device's N/(t·p)
    parameters; activations per layer s·b·(18h + 4f)/t bytes (GELU MLP of width f; 34·s·b·h/t
    for f = 4h, Korthikanti's selective-recomputation figure), 6f for a gated MLP,
    2·s·b·h/t with full recomputation; the first stage holds min(m, p) micro-batches.

No torch here: planning must import in milliseconds.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ogi_ray.parallel.topology import Topology

GIB = 2**30
# Adam step over the local shard: read fp32 grad, master, m, v (16 B), write master, m, v
# and the bf16 weight (14 B).
OPTIMIZER_BYTES_PER_PARAM = 30.0


@dataclass(kw_only=True)
class ModelSpec:
    params: float  # total parameters N
    layers: int
    hidden: int
    heads: int
    seq_len: int
    global_batch: int  # sequences per optimizer step
    vocab: int = 0  # 0: unknown (no logits term)
    ffn_hidden: int = 0  # 0: 4 · hidden
    gated_mlp: bool = False  # SwiGLU: three MLP matrices instead of two
    name: str = "custom"

    def validate(self) -> None:
        for key in ("layers", "hidden", "heads", "seq_len", "global_batch"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key}: must be >= 1, got {getattr(self, key)}")
        if not self.params > 0:
            raise ValueError(f"params: must be > 0, got {self.params}")
        if self.hidden % self.heads:
            raise ValueError(f"heads: {self.heads} must divide hidden {self.hidden}")
        for key in ("vocab", "ffn_hidden"):
            if getattr(self, key) < 0:
                raise ValueError(f"{key}: must be >= 0, got {getattr(self, key)}")

    @property
    def ffn(self) -> int:
        return self.ffn_hidden or 4 * self.hidden

    @property
    def layer_params(self) -> float:
        return 4 * self.hidden**2 + (3 if self.gated_mlp else 2) * self.hidden * self.ffn

    @property
    def matmul_params(self) -> float:
        """Parameters that take part in a matmul: all but the input embedding (a lookup)."""
        emb = self.vocab * self.hidden
        return self.params - emb if emb < self.params else self.params

    def flops_per_token(self) -> float:
        """Training FLOPs per token: 6·N + 12·L·h·s for attention (PaLM, Chowdhery et al. 2022)."""
        return 6 * self.matmul_params + 12 * self.layers * self.hidden * self.seq_len

    def flops_per_step(self) -> float:
        return self.flops_per_token() * self.global_batch * self.seq_len


@dataclass(kw_only=True)
class CostParams:
    matmul_efficiency: float = 0.75  # large bf16 GEMMs reach 70–90 % of dense peak
    hbm_efficiency: float = 0.8  # of the datasheet memory bandwidth
    link_efficiency: float = 0.8  # NCCL bus bandwidth / line rate
    memory_fraction: float = 0.9  # of HBM usable: CUDA context, NCCL buffers, fragmentation
    grad_reduce_bytes: int = 4  # fp32 gradient reduction (torchtitan and Megatron default)
    tp_overlap: float = 0.0  # fraction of TP communication hidden (async TP); 0 = none
    # Fraction of the overlap window that hides DP traffic: NCCL kernels take SMs and HBM
    # bandwidth from the compute they overlap, and each pass's first all-gather and last
    # reduce-scatter have nothing to hide behind.
    overlap_efficiency: float = 0.8

    def validate(self) -> None:
        for key in ("matmul_efficiency", "hbm_efficiency", "link_efficiency", "memory_fraction"):
            if not 0 < getattr(self, key) <= 1:
                raise ValueError(f"{key}: must be in (0, 1], got {getattr(self, key)}")
        for key in ("tp_overlap", "overlap_efficiency"):
            if not 0 <= getattr(self, key) <= 1:
                raise ValueError(f"{key}: must be in [0, 1], got {getattr(self, key)}")


def bubble_fraction(pp: int | np.ndarray, microbatches: int | np.ndarray) -> np.ndarray | float:
    """Idle fraction of a 1F1B (or GPipe) pipeline step: (p − 1) / (m + p − 1)."""
    return (pp - 1) / (microbatches + pp - 1)


def ring_factor(n: int | np.ndarray) -> np.ndarray | float:
    """Bytes each rank sends in a ring all-reduce, per byte of buffer: 2(n − 1)/n."""
    return 2 * (n - 1) / n


def activation_bytes_per_layer(
    spec: ModelSpec, micro_batch: float, tp: int | np.ndarray, full_recompute: bool | np.ndarray = False
) -> np.ndarray | float:
    """Stored activations of one layer for one micro-batch (bf16, sequence-parallel TP)."""
    s, h = spec.seq_len, spec.hidden
    # Attention 11sbh + two norms 4sbh + MLP input and dropout mask 3sbh = 18sbh; the MLP
    # keeps its width-f intermediates: 2 tensors of 2 B (GELU) or 3 (SwiGLU).
    inner = (6 if spec.gated_mlp else 4) * spec.ffn
    selective = s * micro_batch * (18 * h + inner) / tp
    return np.where(full_recompute, 2 * s * micro_batch * h / tp, selective)


def _gemm(rows: np.ndarray, k: np.ndarray | float, n: np.ndarray | float,
          flops_rate: float, bytes_rate: float) -> tuple[np.ndarray, np.ndarray]:
    """Roofline time and HBM bytes of a (rows × k) @ (k × n) bf16 matmul."""
    flops = 2.0 * rows * k * n
    nbytes = 2.0 * (rows * k + k * n + rows * n)
    t = flops / flops_rate
    if bytes_rate > 0:
        t = np.maximum(t, nbytes / bytes_rate)
    return t, nbytes


def evaluate(
    spec: ModelSpec,
    topo: Topology,
    dp: np.ndarray,
    tp: np.ndarray,
    pp: np.ndarray,
    m: np.ndarray,
    fsdp: np.ndarray,
    full_recompute: np.ndarray,
    params: CostParams | None = None,
) -> dict[str, np.ndarray]:
    """Predicted step time (s), its parts, bytes per device and utilisation, per candidate."""
    cp = params or CostParams()
    dp, tp, pp, m = (np.asarray(x, dtype=np.float64) for x in (dp, tp, pp, m))
    fsdp = np.asarray(fsdp, dtype=bool)
    full = np.asarray(full_recompute, dtype=bool)
    s, h, L, V = spec.seq_len, float(spec.hidden), spec.layers, spec.vocab
    f = float(spec.ffn)
    gate = 2.0 if spec.gated_mlp else 1.0
    b = spec.global_batch / (dp * m)  # micro-batch size (sequences)
    rows = b * s

    peak = topo.peak_tflops * 1e12
    flops_rate = peak * (topo.matmul_efficiency or cp.matmul_efficiency)
    hbm = topo.hbm_gb_per_s * 1e9
    bytes_rate = hbm * cp.hbm_efficiency

    # --- compute: one layer's forward pass on one device, for one micro-batch
    layer_t = np.zeros_like(dp)
    layer_bytes = np.zeros_like(dp)
    for k, n in ((h, 3 * h / tp), (h / tp, h), (h, gate * f / tp), (f / tp, h)):
        t, nb = _gemm(rows, k, n, flops_rate, bytes_rate)
        layer_t += t
        layer_bytes += nb
    layer_t += 4.0 * b * s * s * h / tp / flops_rate  # QK^T and AV, fused kernel
    # Element-wise HBM traffic, bytes per token: 2 norms (8h), 2 residual adds (12h),
    # rotary on q, k (8h), the MLP activation (4f; 6f gated).
    elem = rows * (28 * h + (6 if spec.gated_mlp else 4) * f) / tp
    layer_bytes += elem + 8.0 * rows * h / tp  # + q, k, v, o streamed by the fused kernel
    if bytes_rate > 0:
        layer_t += elem / bytes_rate
    head_t, head_bytes = (_gemm(rows, h, V / tp, flops_rate, bytes_rate) if V
                          else (np.zeros_like(dp), np.zeros_like(dp)))
    passes = 3.0 + full  # forward, backward (2×), recomputed forward
    compute_mb = (L / pp) * layer_t * passes + 3.0 * head_t

    # --- links (bytes/s) and latencies (s)
    g = topo.gpus_per_node
    intra = topo.intra_node_gbps * 1e9 / 8 * cp.link_efficiency
    inter = topo.inter_node_gbps * 1e9 / 8 * cp.link_efficiency
    a_intra, a_inter = topo.intra_latency_us * 1e-6, topo.inter_latency_us * 1e-6
    world = dp * tp * pp
    act_msg = 2.0 * rows * h  # one bf16 activation tensor of the micro-batch

    # --- TP: ring collectives inside the node (tp divides gpus_per_node)
    n_coll = 4.0 + 2.0 * full
    tp_layer = np.where(
        tp > 1,
        n_coll * (2 * (tp - 1) * a_intra + ring_factor(tp) * act_msg / max(intra, 1e-9)),
        0.0,
    ) * (1 - cp.tp_overlap)
    tp_mb = (L / pp) * tp_layer
    t_mb = compute_mb + tp_mb

    # --- PP: mesh order (pp, dp, tp): stages are dp·tp ranks apart, so any layout larger
    # than one node has stage boundaries that cross nodes; the slowest boundary paces all.
    multi_node = world > g
    pp_bw = np.where(multi_node, inter, intra)
    pp_a = np.where(multi_node, a_inter, a_intra)
    p2p = np.where(pp > 1, 2 * (pp_a + act_msg / tp / np.maximum(pp_bw, 1e-9)), 0.0)
    slot = t_mb + p2p
    pipeline = (m + pp - 1) * slot
    bubble = (pp - 1) * slot

    # --- DP: the group spans nodes once dp·tp exceeds one node
    p_dev = spec.params / (tp * pp)
    dp_bw = np.where(dp * tp > g, inter, intra)
    dp_a = np.where(dp * tp > g, a_inter, a_intra)
    frac = (dp - 1) / dp
    gather, reduce = 2.0, float(cp.grad_reduce_bytes)
    dp_bytes = np.where(fsdp, m * frac * p_dev * (2 * gather + reduce), frac * p_dev * (gather + reduce))
    dp_colls = np.where(fsdp, 3 * m, 2.0)
    dp_time = np.where(dp > 1, dp_bytes / np.maximum(dp_bw, 1e-9) + dp_colls * (dp - 1) * dp_a, 0.0)
    window = np.where(fsdp, m * t_mb, t_mb) * cp.overlap_efficiency
    dp_exposed = np.maximum(dp_time - window, 0.0)

    opt_bytes = OPTIMIZER_BYTES_PER_PARAM * p_dev / dp
    opt_time = opt_bytes / bytes_rate if bytes_rate > 0 else np.zeros_like(dp)
    step = pipeline + dp_exposed + opt_time

    # --- memory per device (bytes)
    layer_dev = spec.layer_params / tp
    weights = np.where(fsdp, 4.0 * p_dev / dp + 2.0 * 2 * layer_dev, 2.0 * p_dev)
    grads = np.where(fsdp, 4.0 * p_dev / dp + 2.0 * 4 * layer_dev, 4.0 * p_dev)
    optim = np.where(fsdp, 8.0, 12.0) * p_dev / dp  # fsdp's fp32 master is in `weights`
    act_full = activation_bytes_per_layer(spec, b, tp, False)
    stored = activation_bytes_per_layer(spec, b, tp, full)
    recompute_buf = np.where(full, act_full, 0.0)  # the layer being recomputed
    first = stored * (L / pp) * np.minimum(m, pp) + recompute_buf
    last = stored * (L / pp) + recompute_buf + 4.0 * rows * V / tp  # fp32 logits
    activations = np.maximum(first, last)
    memory = weights + grads + optim + activations
    capacity = topo.hbm_gib * GIB * cp.memory_fraction

    hbm_bytes = m * ((L / pp) * layer_bytes * passes + 3 * head_bytes) + opt_bytes
    return {
        "step_time_s": step,
        "compute_s": m * compute_mb,
        "tp_comm_s": m * tp_mb,
        "pp_p2p_s": m * p2p,
        "pp_bubble_s": bubble,
        "bubble_fraction": bubble_fraction(pp, m),
        "dp_comm_s": dp_time,
        "dp_exposed_s": dp_exposed,
        "optimizer_s": opt_time,
        "micro_batch": b,
        "weights_bytes": weights,
        "grads_bytes": grads,
        "optimizer_bytes": optim,
        "activation_bytes": activations,
        "memory_bytes": memory,
        "fits": memory <= capacity,
        "capacity_bytes": np.full_like(dp, capacity),
        "mfu": spec.flops_per_step() / (step * world * peak),
        "hbm_util": hbm_bytes / (step * hbm) if hbm > 0 else np.full_like(dp, np.nan),
    }

"""Per-rank peak memory of one optimizer step, for the program docs/parallel.md describes
("The program the predictions assume"): fp32 parameters and AdamW state, FSDP2 per block
and at the root, Megatron TP on the block matmuls (heads replicated), optional DTensor
sequence parallelism on the norms, activation checkpointing per block, 1F1B pipelines.

    ModelSpec, Layouts, precision ──► per stage: parameters, Adam moments, gradients,
        FSDP unsharded buffers, autocast bf16 weight copies, stored activations, the
        head and the loss, pipeline buffers
    ──► at four moments of the step: end of forward ("forward"), the loss's backward
        ("loss"), the backward of the first block ("backward"), the optimizer ("optimizer")
    ──► peak = the largest moment of the larger of the first and last stage, with its parts

Every coefficient is a count of the tensors the program keeps alive, taken from the
model code and checked against a live-tensor trace of real steps (docs/parallel.md,
"Memory model"). Bytes are tensor storage, what ``torch.cuda.max_memory_allocated``
counts; the allocator's slack and the runtime are the calibration's affine correction.
No torch here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ogi_ray.parallel.shapes import AC_MODES, PRECISIONS, Layouts, ModelSpec
from ogi_ray.parallel.topology import Calibration

MOMENTS = ("forward", "norms", "loss", "backward", "optimizer")
# train_step measures ‖∂L_i/∂h‖ with autograd.grad on the first micro-batch before its
# backward; that call ends with FSDP2's final callback, which reshards every group, so the
# backward that follows gathers again even with reshard_after_forward=False (cost.py
# charges that gather). Set False if the runtime stops doing so.
NORMS_BACKWARD_RESHARDS = True
PARTS = ("params", "optimizer", "grads", "fsdp_unsharded", "autocast_copies", "activations",
         "head", "loss", "pipeline_buffers")
NONE, SELECTIVE, FULL = range(3)


def act_bytes(precision: str) -> float:
    """Bytes of one activation value between matmuls: bf16 under autocast, else fp32."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision: must be one of {list(PRECISIONS)}, got {precision!r}")
    return 2.0 if precision == "bf16" else 4.0


def stored_per_token(spec: ModelSpec, tp: Any, sp: Any, ac: Any, e: float) -> np.ndarray:
    """Bytes one block keeps for backward per token (row slot), by checkpointing mode.

    No checkpointing: the fp32 residual stream around the two norms (block input, the
    mid-block residual, x·rsqrt products, rsqrt: 16h + 8, split over tp by SP); the
    linears' inputs (under autocast one bf16 cast per linear, 2h each; in fp32 one shared
    norm output per sublayer, 4h); rotated q and k, v, the attention output and its copy
    into (B, S, D) (5e·h/t) and the fp32 log-sum-exp per head; the MLP's w1/w3 outputs,
    the SiLU output and the product (4e·f/t; 2e·f/t ungated).
    Full: the block input only. Selective: the block input plus the outputs of the
    matmuls, attention and collectives the policy saves (docs/parallel.md).
    """
    h, f, a = float(spec.hidden), float(spec.ffn), float(spec.heads)
    t = np.asarray(tp, dtype=np.float64)
    r = np.where(sp, t, 1.0)
    k_in = spec.mlp_in
    casts = (3 + k_in) * 2 * h if e == 2 else 8 * h
    none = (16 * h + 8) / r + casts + 5 * e * h / t + 4 * a / t + 2 * k_in * e * f / t
    collectives = np.where(t > 1, np.where(sp, 2 * e * h / t, 2 * e * h), 0.0)  # AR / RS outputs
    selective = 4 * h / r + e * (4 * h / t + 2 * h + k_in * f / t) + 4 * a / t + collectives
    full = 4 * h / r
    return np.select([ac == NONE, ac == SELECTIVE], [none, selective], full)


def _loss_bytes(spec: ModelSpec, rows: np.ndarray, e: float, moment: str) -> np.ndarray:
    """Logit-sized buffers of the LM loss (per micro-batch of ``rows`` rows).

    "forward", at log_softmax: the logits (e), their flattened copy and fp32 upcast over
    the T−1 predicting slots, the fp32 log-probabilities. "norms" (∂L_lm/∂h) at
    log_softmax's backward: logits, the saved log-probabilities, the NLL gradient and
    log_softmax's input gradient (fp32 each). "loss": the same plus the logits' gradient
    from the all-heads anchor term (e); in fp32 the upcast is a no-op and the anchor's
    gradient is the fp32 slice_backward buffer, in both backward moments."""
    if not spec.vocab:
        return np.zeros_like(rows)
    T, V = spec.text_tokens, spec.vocab
    per_row = {
        "forward": (2 * T + 10 * (T - 1)) if e == 2 else (4 * T + 8 * (T - 1)),
        "norms": (2 * T + 12 * (T - 1)) if e == 2 else (8 * T + 8 * (T - 1)),
        "loss": (4 * T + 12 * (T - 1)) if e == 2 else (8 * T + 8 * (T - 1)),
    }[moment]
    return rows * per_row * V


def _stage_moments(spec: ModelSpec, lay: Layouts, e: float, foreach: bool,
                   first: bool) -> dict[str, np.ndarray]:
    """Parts × moments for the first (``first``) or the last pipeline stage; with pp = 1
    both are the whole model. Returns {part: array of shape (len(MOMENTS), candidates)}."""
    h, s, T = float(spec.hidden), float(spec.seq_len), float(spec.text_tokens)
    dp, tp, pp, m, b = lay.dp, lay.tp, lay.pp, lay.m, lay.rows
    single = pp == 1
    has_head = single | (not first)
    r = np.where(lay.sp, tp, 1.0)
    L = lay.stage_layers(spec.layers)[0 if first else 1]
    blk_mm = spec.layer_params / tp
    blk = blk_mm + 2 * h
    root = np.where(single, spec.root_params, spec.embed_params if first else spec.head_params)
    P = L * blk + root
    head_mm = np.where(has_head, spec.head_matmul_params, 0.0)
    fsdp = lay.world > 1
    shard = np.where(fsdp, dp, 1.0)
    zero = np.zeros_like(dp)
    later_mb = single & (m > 1)  # a later micro-batch of gradient accumulation

    # Persistent fp32 state, sharded by FSDP2 (ZeRO-3): parameters and the two Adam moments.
    params, optim = 4 * P / shard, 8 * P / shard
    # Gradient accumulation without a pipeline keeps reduced shards between micro-batches;
    # a pipeline stage accumulates unsharded gradients and reduces once, after the last.
    grads = 4 * P / shard
    grads_fwd = np.where(later_mb, grads, 0.0)
    grads_bwd = np.where(single, grads, 0.0)

    # FSDP2 unsharded parameters and gradients (fp32, this rank's whole TP shard).
    # pp = 1: kept after forward only without resharding; the norms' autograd.grad
    # reshards everything, so the first micro-batch's loss backward starts resharded.
    # pp > 1: parameters and accumulated gradients stay unsharded all step.
    kept = np.where(single, np.where(lay.raf, 0.0, 4 * P), 8 * P)
    at_loss = np.where(single & ~later_mb & NORMS_BACKWARD_RESHARDS, 0.0, kept)
    # In a block's backward: the root (gathered since the heads' backward) with the
    # heads' gradients waiting for the root's reduce-scatter, the block's parameters,
    # its unsharded gradient and the reduce-scatter input.
    at_bwd = np.where(single, 4 * (root + blk) + 4 * spec.head_params + 8 * blk, 8 * P)
    unsharded = [np.where(fsdp, x, 0.0) for x in (kept, kept, at_loss, at_bwd, zero)]

    # torch.autocast caches one bf16 copy per matmul weight; autograd keeps it until the
    # weight's backward unless the block is checkpointed. A pipeline runs the whole
    # schedule under one autocast region, so its cache lives all step.
    copies_all = 2 * (L * blk_mm + head_mm)
    copies_loss = np.where(single & (lay.ac != NONE), 2 * head_mm, copies_all)
    copies_bwd = np.where(single, 2 * blk_mm, copies_all)
    copies = [copies_all, copies_loss, copies_loss, copies_bwd, zero] if e == 2 else [zero] * 5

    tokens = b * s
    inflight = np.where(single, 1.0, np.minimum(m, pp) if first else 1.0)
    mask = s * s * e if spec.dense_mask else 0.0
    stored = tokens * stored_per_token(spec, tp, lay.sp, lay.ac, e) + np.where(lay.ac == NONE, mask, 0.0)
    per_mb = L * stored
    working = tokens * stored_per_token(spec, tp, lay.sp, np.zeros_like(lay.ac), e) + mask + 8 * tokens * h / r
    acts = [inflight * per_mb] * 3 + [(inflight - 1) * per_mb + working, zero]

    # Final norm (its fp32 input, x·rsqrt product and output) and the LM head's input.
    lm_in = b * T * (2 * h if e == 2 else (4 * h if T < s else 0.0))
    head_region = np.where(has_head, tokens * (12 * h + 4) + lm_in, 0.0)
    loss = [np.where(has_head, _loss_bytes(spec, b, e, k), 0.0) for k in ("forward", "norms", "loss")]

    # 1F1B: one receive buffer per micro-batch (activations into a non-first stage,
    # gradients into a non-last one) and the stage outputs kept for their backward.
    pp_buf = np.where(single, 0.0, (m + (inflight if first else 0.0)) * 4 * tokens * h / r)
    largest = np.maximum(spec.vocab * h, h * spec.ffn / tp)
    temps = 4 * P / shard if foreach else 8 * largest / shard
    return {
        "params": np.stack([params] * 5),
        "optimizer": np.stack([optim] * 4 + [optim + temps]),
        "grads": np.stack([grads_fwd, np.zeros_like(dp), grads_fwd, grads_bwd, grads]),
        "fsdp_unsharded": np.stack(unsharded),
        "autocast_copies": np.stack(copies),
        "activations": np.stack(acts),
        "head": np.stack([head_region] * 3 + [zero, zero]),
        "loss": np.stack(loss + [zero, zero]),
        "pipeline_buffers": np.stack([pp_buf] * 4 + [zero]),
    }


def evaluate_memory(spec: ModelSpec, lay: Layouts, precision: str = "bf16", *,
                    foreach: bool = False, calibration: Calibration | None = None) -> dict[str, np.ndarray]:
    """Peak bytes per rank for every candidate, with the parts at the peak.

    ``foreach``: AdamW's multi-tensor kernels (the default on CUDA) allocate one
    parameter-sized temporary; the per-tensor loop (CPU) allocates two of the largest
    tensor. Returns {"peak_bytes", "moment" (index into MOMENTS), "first_stage" (bool),
    each of PARTS}; ``calibration`` applies its fitted scale and per-process overhead."""
    e = act_bytes(precision)
    out: dict[str, np.ndarray] = {}
    best = None
    for first in (True, False):
        parts = _stage_moments(spec, lay, e, foreach, first)
        total = sum(parts.values())  # (moments, candidates)
        moment = np.argmax(total, axis=0)
        idx = (moment, np.arange(lay.size))
        cand = {k: v[idx] for k, v in parts.items()} | {"peak_bytes": total[idx], "moment": moment}
        if best is None:
            best, out = cand["peak_bytes"], cand | {"first_stage": np.ones(lay.size, dtype=bool)}
            continue
        take = cand["peak_bytes"] > best
        out = {k: np.where(take, cand[k], out[k]) for k in cand} | {"first_stage": ~take}
    cal = calibration or Calibration()
    out["peak_bytes"] = out["peak_bytes"] * cal.memory_scale + cal.memory_overhead_mib * 2**20
    return out


@dataclass
class MemoryPrediction:
    peak_bytes: float
    moment: str  # when the peak happens (one of MOMENTS)
    stage: str  # "first" or "last" pipeline stage ("first" when pp == 1)
    parts: dict[str, float] = field(default_factory=dict)  # bytes at the peak, before calibration

    @property
    def peak_gib(self) -> float:
        return self.peak_bytes / 2**30


def predict_peak_memory(plan: Any, model: Any, *, seq_len: int | None = None,
                        precision: str = "bf16", device: str = "cpu",
                        calibration: Calibration | None = None) -> MemoryPrediction:
    """Predicted peak tensor bytes on the busiest rank of ``plan`` (a ParallelPlan) for
    ``model`` (an ogi ModelConfig or preset name, a ModelSpec, or a reference model name).
    ``device`` "cuda" means AdamW's foreach kernels."""
    from ogi_ray.parallel.planner import model_spec  # the planner imports this module

    if plan.activation_checkpoint not in AC_MODES:
        raise ValueError(f"activation_checkpoint: {plan.activation_checkpoint!r}")
    spec = model_spec(model, global_batch=plan.global_batch, seq_len=seq_len)
    res = evaluate_memory(spec, Layouts.from_plans([plan]), precision,
                          foreach=device == "cuda", calibration=calibration)
    return MemoryPrediction(
        peak_bytes=float(res["peak_bytes"][0]), moment=MOMENTS[int(res["moment"][0])],
        stage="first" if bool(res["first_stage"][0]) else "last",
        parts={k: float(res[k][0]) for k in PARTS},
    )

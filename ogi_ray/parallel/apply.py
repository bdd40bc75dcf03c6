"""Apply the parallel plan to the plain model from outside (torchtitan-style).

    ParallelPlan (parallel/plan.py) ─► ParallelDims ─► build_mesh ─► DeviceMesh (pp, dp, tp)
    model (or one pipeline stage, parallel/pipeline.py), usually on the meta device
      ─► apply_tp(model, mesh["tp"])    per Block: wq/wk/wv/w1/w3 column-parallel,
                                        wo/w2 row-parallel (Megatron split: one all-reduce
                                        after attention, one after the MLP, per block);
                                        with sequence_parallel, norms on the sequence
                                        shard and reduce-scatter / all-gather instead
      ─► checkpoint_blocks(model, ac)   activation checkpointing (checkpointing.py)
      ─► compile_blocks                 torch.compile per block (device.compile)
      ─► apply_fsdp(model, mesh["dp"])  FSDP2 fully_shard per Block, then the root, with
                                        the plan's reshard_after_forward

Embeddings, norms and heads stay replicated over tp (every tp rank computes them on the
same replicated activations, so their gradients agree without communication); FSDP
shards them over dp. With TP, FSDP's block parameters are 2-D DTensors (Shard(0) on dp,
the TP placement on tp); the rest are 1-D DTensors on the dp mesh.

``parallelize(model, mesh, plan)`` does all of it for a model or a stage; ``apply`` is the
same without pipeline stages. Pipelines are built with
``ogi_ray.parallel.pipeline.build_pipeline``.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from ogi_ray.parallel.dims import ParallelDims, axis_size, build_mesh, dp_rank_and_size

__all__ = ["ParallelDims", "apply", "apply_fsdp", "apply_tp", "build_mesh", "checkpoint_blocks",
           "clip_grad_norm_", "dp_rank_and_size", "grad_sq_norm", "parallelize", "tp_plan"]  # fmt: skip


def _blocks(model: nn.Module) -> list[nn.Module]:
    """The transformer blocks this module holds (a pipeline stage holds only some: the
    others are parameterless placeholders, skipped here)."""
    return [b for b in model.layers if any(True for _ in b.parameters())]  # type: ignore[attr-defined]


def tp_plan(sequence_parallel: bool = False) -> dict[str, Any]:
    """Block-relative module name → TP style. Colwise output stays sharded (local heads /
    local hidden units), Rowwise takes that shard and all-reduces to a replicated output.

    With ``sequence_parallel`` (torchtitan's block plan) the residual stream is the
    sequence shard (B, S/tp, D): the norms run on it (``SequenceParallel``), attention
    and the MLP all-gather their input to the full sequence (``PrepareModuleInput``), and
    wo / w2 reduce-scatter back to the shard instead of all-reducing."""
    from torch.distributed.tensor import Replicate, Shard
    from torch.distributed.tensor.parallel import (
        ColwiseParallel,
        PrepareModuleInput,
        RowwiseParallel,
        SequenceParallel,
    )

    col, row = ColwiseParallel, RowwiseParallel
    if not sequence_parallel:
        return {"attn.wq": col(), "attn.wk": col(), "attn.wv": col(), "attn.wo": row(),
                "mlp.w1": col(), "mlp.w3": col(), "mlp.w2": row()}  # fmt: skip
    # attn(x, cos, sin, mask): only x is sequence-sharded; the tables and the mask stay whole.
    gather = PrepareModuleInput(input_layouts=(Shard(1), None, None, None),
                                desired_input_layouts=(Replicate(), None, None, None))  # fmt: skip
    return {
        "attn_norm": SequenceParallel(), "attn": gather, "attn.wq": col(), "attn.wk": col(),
        "attn.wv": col(), "attn.wo": row(output_layouts=Shard(1)),
        "mlp_norm": SequenceParallel(),
        "mlp": PrepareModuleInput(input_layouts=(Shard(1),), desired_input_layouts=(Replicate(),)),
        "mlp.w1": col(), "mlp.w3": col(), "mlp.w2": row(output_layouts=Shard(1)),
    }  # fmt: skip


def _sequence_edges(model: nn.Module, tp_mesh: Any) -> None:
    """Where the sequence shard starts and ends on this model or pipeline stage: its first
    block takes the full (B, S, D) activations on the first stage (each rank keeps its
    S/tp slots: a slice, no communication) or the previous stage's shard; its last block
    hands the next stage its shard, or, on the last stage, all-gathers the sequence for
    the final norm and the heads."""
    from torch.distributed.tensor import Replicate, Shard
    from torch.distributed.tensor.parallel import (
        PrepareModuleInput,
        PrepareModuleOutput,
        parallelize_module,
    )

    blocks = _blocks(model)
    first, last = getattr(model, "is_first", True), getattr(model, "is_last", True)
    # The residual stream between blocks is the plain local shard (B, S/tp, D), as in
    # torchtitan: the norms' SequenceParallel wraps it, wo and w2 return it.
    if first:
        parallelize_module(blocks[0], tp_mesh, PrepareModuleInput(
            input_layouts=(Replicate(), None, None, None), desired_input_layouts=(Shard(1), None, None, None),
            use_local_output=True))  # fmt: skip
    parallelize_module(blocks[-1], tp_mesh, PrepareModuleOutput(
        output_layouts=Shard(1), desired_output_layouts=Replicate() if last else Shard(1), use_local_output=True))  # fmt: skip


def check_tp(cfg: Any, tp: int) -> None:
    """Raise unless every tp rank gets whole heads and an equal share of the MLP."""
    if cfg.n_heads % tp:
        raise ValueError(f"tp: {tp} must divide n_heads {cfg.n_heads} (each rank holds whole heads)")
    if cfg.hidden_dim % tp:
        raise ValueError(f"tp: {tp} must divide the MLP hidden size {cfg.hidden_dim}")


def apply_tp(model: nn.Module, tp_mesh: Any, *, sequence_parallel: bool = False) -> nn.Module:
    """Tensor-parallelise every block in place over the 1-D ``tp_mesh``; returns ``model``.

    Attention: q/k/v (D → D) column-split gives each rank n_heads/tp heads of (B, S, H/tp,
    hd) (attention views with -1 heads), wo row-split sums the partial (B, S, D) outputs.
    MLP: w1/w3 (D → F) column-split to (B, S, F/tp), w2 row-split back to (B, S, D).
    ``sequence_parallel``: see ``tp_plan``; needs tp | S (the layout's slots)."""
    from torch.distributed.tensor.parallel import parallelize_module

    tp = tp_mesh.size()
    if tp == 1:
        if sequence_parallel:
            raise ValueError("sequence_parallel: needs tp > 1")
        return model
    check_tp(model.cfg, tp)  # type: ignore[attr-defined]
    if sequence_parallel and model.cfg.max_seq_len % tp:  # type: ignore[attr-defined]
        raise ValueError(f"sequence_parallel: tp {tp} must divide the layout's {model.cfg.max_seq_len} slots")  # type: ignore[attr-defined]
    for block in _blocks(model):
        parallelize_module(block, tp_mesh, tp_plan(sequence_parallel))
    if sequence_parallel:
        _sequence_edges(model, tp_mesh)
    return model


def apply_fsdp(model: nn.Module, dp_mesh: Any, *, reshard_after_forward: bool = True) -> nn.Module:
    """FSDP2 ``fully_shard`` of each block, then the root (embeddings, norm, heads and
    whatever else the root holds form one group), over the 1-D ``dp_mesh``, each with
    ``reshard_after_forward`` passed explicitly (the plan's choice: True frees the
    gathered parameters after a forward, ZeRO-3; False keeps them to the backward).

    Under pipeline parallelism it must be False (torchtitan's default there): every
    micro-batch would otherwise all-gather each block twice."""
    from torch.distributed.fsdp import fully_shard

    for block in _blocks(model):
        fully_shard(block, mesh=dp_mesh, reshard_after_forward=reshard_after_forward)
    fully_shard(model, mesh=dp_mesh, reshard_after_forward=reshard_after_forward)
    return model


def compile_blocks(model: nn.Module) -> nn.Module:
    """``torch.compile`` each block in place (``nn.Module.compile``: parameter names and
    the state dict stay as they are, so checkpoints and weight roots do not change).
    Blocks are identical, so one compiled graph serves them all."""
    for block in _blocks(model):
        block.compile()
    return model


def checkpoint_blocks(model: nn.Module, mode: str) -> nn.Module:
    """Activation checkpointing of every block this model or stage holds (checkpointing.py)."""
    from ogi_ray.parallel.checkpointing import checkpoint_block

    for block in _blocks(model):
        checkpoint_block(block, mode)
    return model


def parallelize(model: nn.Module, mesh: Any, plan: Any, *, compile: bool = False) -> nn.Module:
    """The plan's wrappers on ``model`` (or one pipeline stage) in place, in torchtitan's
    order: TP (with SP) over "tp" → activation checkpointing → ``torch.compile`` per block
    → FSDP2 over "dp" with the plan's reshard mode. FSDP is applied whenever the mesh has
    more than one rank, even at dp == 1: it then only wraps every parameter as a DTensor,
    which keeps the optimizer's and the clipping's tensors uniformly DTensors."""
    if mesh is not None:
        apply_tp(model, mesh["tp"], sequence_parallel=plan.sequence_parallel)
    checkpoint_blocks(model, plan.activation_checkpoint)
    if compile:
        compile_blocks(model)
    if mesh is not None and mesh.size() > 1:
        apply_fsdp(model, mesh["dp"], reshard_after_forward=plan.reshard_after_forward)
    return model


def apply(model: nn.Module, mesh: Any, plan: Any = None, *, compile: bool = False) -> nn.Module:
    """``parallelize`` without pipeline stages (``plan`` None: the defaults, no AC, no SP,
    reshard after forward); mesh None (one process) applies only AC and compile."""
    from ogi_ray.parallel.plan import ParallelPlan

    if axis_size(mesh, "pp") > 1:
        raise ValueError("apply: the mesh has pp > 1; build stages with "
                         "ogi_ray.parallel.pipeline.build_pipeline instead")  # fmt: skip
    return parallelize(model, mesh, plan or ParallelPlan(), compile=compile)


# ── gradient norms over any layout ─────────────────────────────────────────────────────


def grad_sq_norm(params: Any, pp_group: Any = None) -> torch.Tensor:
    """‖g‖² over all gradients of ``params`` as a float64 0-dim tensor, identical on every
    rank, correct for any mix of plain tensors and DTensors on different meshes.

    torch's ``clip_grad_norm_`` stacks per-parameter norms, which fails once TP blocks
    (2-D (dp, tp) DTensors) sit beside FSDP-only parameters (1-D dp DTensors) or plain
    tensors. Here gradients are grouped by (mesh, placements); each group's norm is one
    DTensor reduction (``full_tensor``: replicated axes are not double counted); plain
    tensors are replicas, counted once. Under pipeline parallelism each stage holds other
    parameters, so the squared norms are summed over ``pp_group`` (torchtitan does the
    same)."""
    from torch.distributed.tensor import DTensor

    groups: dict[Any, list[torch.Tensor]] = {}
    for p in params:
        g = p.grad
        if g is None:
            continue
        key = (g.device_mesh, tuple(g.placements)) if isinstance(g, DTensor) else ("local", g.device)
        groups.setdefault(key, []).append(g)
    total = torch.zeros((), dtype=torch.float64)
    for grads in groups.values():
        n = torch.nn.utils.get_total_norm(grads, 2.0, foreach=True)
        if isinstance(n, DTensor):
            n = n.full_tensor()
        total = total + n.detach().double().cpu() ** 2
    if pp_group is not None and dist.get_world_size(pp_group) > 1:
        dev = next((g[0].device for g in groups.values()), torch.device("cpu"))
        t = total.to(dev)
        dist.all_reduce(t, group=pp_group)
        total = t.cpu()
    return total


def clip_grad_norm_(params: Any, max_norm: float, pp_group: Any = None) -> float:
    """Scale all gradients so their global L2 norm is ≤ ``max_norm`` (torch's rule:
    coef = max_norm / (norm + 1e-6), capped at 1); returns the norm before clipping.
    Collective over every mesh the gradients live on and over ``pp_group``."""
    params = [p for p in params if p.grad is not None]
    norm = float(grad_sq_norm(params, pp_group).sqrt())
    if not math.isfinite(norm):
        raise FloatingPointError(f"gradient norm is {norm}")
    coef = max_norm / (norm + 1e-6)
    if coef < 1.0:
        with torch.no_grad():
            for p in params:
                p.grad.mul_(coef)  # DTensor: scales the local shard, placements unchanged
    return norm

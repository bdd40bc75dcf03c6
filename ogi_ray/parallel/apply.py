"""Apply tensor and data parallelism to the plain model from outside (torchtitan-style).

    ParallelDims(dp, tp, pp) ─► build_mesh ─► DeviceMesh (pp, dp, tp)   (parallel/dims.py)
    model (or one pipeline stage, parallel/pipeline.py)
      ─► apply_tp(model, mesh["tp"])    per Block: wq/wk/wv/w1/w3 column-parallel,
                                        wo/w2 row-parallel (Megatron split: one all-reduce
                                        after attention, one after the MLP, per block)
      ─► apply_fsdp(model, mesh["dp"])  FSDP2 fully_shard per Block, then the root

Embeddings, norms and heads stay replicated over tp (every tp rank computes them on the
same replicated activations, so their gradients agree without communication); FSDP
shards them over dp. With TP, FSDP's block parameters are 2-D DTensors (Shard(0) on dp,
the TP placement on tp); the rest are 1-D DTensors on the dp mesh.

``apply(model, mesh)`` does both for a 3-D mesh without pipeline stages (``build_mesh``,
re-exported from dims.py). Pipelines are built with
``ogi_ray.parallel.pipeline.build_pipeline``.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from ogi_ray.parallel.dims import ParallelDims, axis_size, build_mesh, dp_rank_and_size

__all__ = ["ParallelDims", "apply", "apply_fsdp", "apply_tp", "build_mesh", "clip_grad_norm_",
           "dp_rank_and_size", "grad_sq_norm", "tp_plan"]  # fmt: skip


def _blocks(model: nn.Module) -> list[nn.Module]:
    """The transformer blocks this module holds (a pipeline stage holds only some: the
    others are parameterless placeholders, skipped here)."""
    return [b for b in model.layers if any(True for _ in b.parameters())]  # type: ignore[attr-defined]


def tp_plan() -> dict[str, Any]:
    """Block-relative module name → TP style. Colwise output stays sharded (local heads /
    local hidden units), Rowwise takes that shard and all-reduces to a replicated output."""
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel

    col, row = ColwiseParallel, RowwiseParallel
    return {"attn.wq": col(), "attn.wk": col(), "attn.wv": col(), "attn.wo": row(),
            "mlp.w1": col(), "mlp.w3": col(), "mlp.w2": row()}  # fmt: skip


def check_tp(cfg: Any, tp: int) -> None:
    """Raise unless every tp rank gets whole heads and an equal share of the MLP."""
    if cfg.n_heads % tp:
        raise ValueError(f"tp: {tp} must divide n_heads {cfg.n_heads} (each rank holds whole heads)")
    if cfg.hidden_dim % tp:
        raise ValueError(f"tp: {tp} must divide the MLP hidden size {cfg.hidden_dim}")


def apply_tp(model: nn.Module, tp_mesh: Any) -> nn.Module:
    """Tensor-parallelise every block in place over the 1-D ``tp_mesh``; returns ``model``.

    Attention: q/k/v (D → D) column-split gives each rank n_heads/tp heads of (B, S, H/tp,
    hd) (attention views with -1 heads), wo row-split sums the partial (B, S, D) outputs.
    MLP: w1/w3 (D → F) column-split to (B, S, F/tp), w2 row-split back to (B, S, D)."""
    from torch.distributed.tensor.parallel import parallelize_module

    tp = tp_mesh.size()
    if tp == 1:
        return model
    check_tp(model.cfg, tp)  # type: ignore[attr-defined]
    for block in _blocks(model):
        parallelize_module(block, tp_mesh, tp_plan())
    return model


def apply_fsdp(model: nn.Module, dp_mesh: Any, *, reshard_after_forward: bool = True) -> nn.Module:
    """FSDP2 ``fully_shard`` of each block, then the root (embeddings, norm, heads and
    whatever else the root holds form one group), over the 1-D ``dp_mesh``.

    Under pipeline parallelism pass ``reshard_after_forward=False`` (torchtitan's default
    there): every micro-batch would otherwise all-gather each block twice."""
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


def apply(model: nn.Module, mesh: Any, *, compile: bool = False) -> nn.Module:
    """Apply TP, then ``torch.compile`` per block (``compile``), then FSDP to ``model``
    in place for ``mesh``; returns the model.

    mesh None (one process) → unchanged; 3-D from ``build_mesh(device, ParallelDims)``
    with pp == 1 → TP over "tp", FSDP over "dp". FSDP is applied whenever the mesh has
    more than one rank, even at dp == 1: it then only wraps every parameter as a DTensor,
    which keeps the optimizer's and the clipping's tensors uniformly DTensors (plain
    tensors beside TP DTensors are not)."""
    if mesh is None:
        return compile_blocks(model) if compile else model
    if axis_size(mesh, "pp") > 1:
        raise ValueError("apply: the mesh has pp > 1; build stages with "
                         "ogi_ray.parallel.pipeline.build_pipeline instead")  # fmt: skip
    apply_tp(model, mesh["tp"])
    if compile:
        compile_blocks(model)
    if mesh.size() > 1:
        apply_fsdp(model, mesh["dp"])
    return model


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

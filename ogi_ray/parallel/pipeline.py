"""Pipeline parallelism for the plain model: stages, the 1F1B schedule, the step, eval.

    full model (same seed on every rank)
      ─► build_stage(model, pp_rank, pp_size): a copy that keeps only its own parts
           first stage: embedders + its blocks      forward(*batch tensors) → x (B, S, D)
           middle:      its blocks                  forward(x) → x
           last:        its blocks + norm + heads   forward(x) → (h, *heads in fixed order)
      ─► apply_tp / apply_fsdp on the stage (parallel/apply.py)
      ─► PipelineStage + Schedule1F1B over the "pp" process group  (build_pipeline)

One step (``pipeline_train_step``, the contract of ``train.loop.train_step``):

    micro-batches ─► one global batch (rows concatenated) ─► schedule.step:
        first stage gets the batch tensors (keys sorted, dim 0 = rows) as positional args,
        last stage gets target = arange(B): the rows each micro-batch holds
        per micro-batch on the last stage, loss_fn(output, rows): rebuild the heads dict,
        compute_losses on those rows, Σ λ_i L_i + 0·anchor, record losses and (first
        micro-batch) ‖∂L_i/∂h‖; the schedule divides gradients by n_microbatches
    ─► per-objective metrics broadcast from the last stage to every pp rank
    ─► ‖g‖ over all stages (DTensor norms per mesh, then Σ over pp) ─► clip ─► AdamW
    ─► scheduler ─► EMA target encoder from the first stage's vid_embed (broadcast)

Parameter names (FQNs) are those of the full model on every stage (blocks another stage
owns become parameterless placeholders), so full state dicts of all stages merge into the
single-process state dict (``gather_full_state_dict`` in parallel/apply.py).
Gradient accumulation over several ``schedule.step`` calls is not done: the micro-batches
of a step are the schedule's micro-batches, and the GNS small-batch norm is not measured
(``gns_small_sq`` is None).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from ogi_ray.model.config import ModelConfig
from ogi_ray.model.objectives import representation_grad_norms
from ogi_ray.model.transformer import MultimodalTransformer
from ogi_ray.parallel.apply import (
    apply_fsdp,
    apply_tp,
    clip_grad_norm_,
    compile_blocks,
    grad_sq_norm,
)
from ogi_ray.parallel.device import Placement
from ogi_ray.parallel.dims import axis_rank, axis_size
from ogi_ray.train.loop import autocast, to_device
from ogi_ray.train.losses import compute_losses

# Parts of the model outside the blocks: who owns them.
EMBED_PARTS = ("tok_embed", "img_embed", "vid_embed", "aud_embed", "prop_embed", "act_embed",
               "time_embed", "seg_embed", "absent", "mask_token")  # fmt: skip
HEAD_PARTS = ("norm", "lm_head", "mae_head", "align_img", "align_txt", "logit_scale",
              "world_head", "null_action", "embod_head")  # fmt: skip


def stage_layers(n_layers: int, pp_rank: int, pp_size: int) -> range:
    """Contiguous block indices of one stage; the first ``n_layers % pp_size`` stages take
    one extra block each (e.g. 7 layers over 3 stages: 0-2, 3-4, 5-6), so the last stage,
    which also runs the norm, the heads and the losses, never gets the extra block."""
    if not 0 <= pp_rank < pp_size:
        raise ValueError(f"pp_rank: {pp_rank} not in [0, {pp_size})")
    if n_layers < pp_size:
        raise ValueError(f"pp: {pp_size} stages need at least as many layers, got {n_layers}")
    base, extra = divmod(n_layers, pp_size)
    start = pp_rank * base + min(pp_rank, extra)
    return range(start, start + base + (pp_rank < extra))


class _Elsewhere(nn.Module):
    """Placeholder for a block another stage owns: no parameters, passes x through, and
    keeps the ModuleList indices (hence the parameter names) of the full model."""

    def forward(self, x: torch.Tensor, *_: Any) -> torch.Tensor:
        return x


class PipelineStageModel(MultimodalTransformer):
    """One pipeline stage: the model's class with a stage forward (never constructed
    directly; ``build_stage`` converts a copy of a full model)."""

    is_first: bool
    is_last: bool
    input_keys: tuple[str, ...]  # batch keys the first stage receives, in arg order
    head_keys: tuple[str, ...]  # names of the heads in the last stage's output tuple

    def forward(self, *args: torch.Tensor) -> Any:  # type: ignore[override]
        if self.is_first:
            x = self.embed(dict(zip(self.input_keys, args, strict=True)))  # (B, S, D)
        else:
            (x,) = args
        for layer in self.layers:
            x = layer(x, self.rope_cos, self.rope_sin, self.attn_mask)
        if not self.is_last:
            return x
        h = self.norm(x)  # (B, S, D): the shared representation
        out = self.heads(h)
        self.head_keys = tuple(out)
        return (h, *out.values())


def build_stage(model: nn.Module, pp_rank: int, pp_size: int, device: torch.device) -> nn.Module:
    """A copy of ``model`` (plain, before TP/FSDP) holding only stage ``pp_rank``'s parts:
    the embedders on the first stage, blocks ``stage_layers(...)``, norm and heads on the
    last. ``model`` itself is left untouched."""
    if not isinstance(model, MultimodalTransformer) or type(model) is not MultimodalTransformer:
        raise TypeError("build_stage: expects a plain MultimodalTransformer (apply TP/FSDP after)")
    stage = copy.deepcopy(model)
    keep = stage_layers(len(stage.layers), pp_rank, pp_size)
    for i in range(len(stage.layers)):
        if i not in keep:
            stage.layers[i] = _Elsewhere()
    stage.is_first, stage.is_last = pp_rank == 0, pp_rank == pp_size - 1
    for name in (() if stage.is_first else EMBED_PARTS) + (() if stage.is_last else HEAD_PARTS):
        setattr(stage, name, None)
    stage.__class__ = PipelineStageModel
    stage.input_keys, stage.head_keys = (), ()
    return stage.to(device)


def batch_keys(batch: dict[str, torch.Tensor]) -> tuple[str, ...]:
    """Keys of tensors with a batch dimension (dim 0 = rows), in the fixed (sorted) order
    the first stage receives them; 0-dim counters such as ``n_tokens`` are left out."""
    rows = batch["tokens"].shape[0]
    return tuple(sorted(k for k, v in batch.items() if v.dim() >= 1 and v.shape[0] == rows))


@dataclass
class Pipeline:
    """A built pipeline on this rank: ``module`` (the stage, TP/FSDP applied; build the
    optimizer from it), its ``PipelineStage`` and schedule, and the step's loss state."""

    module: nn.Module
    stage: Any
    schedule: Any
    pp_group: Any
    pp_rank: int
    pp_size: int
    n_microbatches: int
    cfg: ModelConfig
    # Set for one step by pipeline_train_step, read by the loss function.
    _batch: dict[str, torch.Tensor] = field(default_factory=dict)
    _lambdas: dict[str, float] = field(default_factory=dict)
    _world_target: nn.Module | None = None
    _records: list[dict[str, dict[str, float]]] = field(default_factory=list)

    @property
    def is_first(self) -> bool:
        return self.pp_rank == 0

    @property
    def is_last(self) -> bool:
        return self.pp_rank == self.pp_size - 1

    def loss_fn(self, output: tuple[torch.Tensor, ...], rows: torch.Tensor) -> torch.Tensor:
        """Last stage, one micro-batch: output = (h (b, S, D), *heads), rows (b,) indices
        of this micro-batch in the step's batch → Σ λ_i L_i (+ 0·anchor)."""
        h, *heads = output
        out = dict(zip(self.module.head_keys, heads, strict=True))
        b = {k: v[rows] for k, v in self._batch.items()}
        losses = compute_losses(out, b, self.cfg, self._world_target)
        # Touch every head so every rank runs the same backward graph (see loop.train_step).
        anchor = 0.0 * sum(o.float().sum() for o in out.values())
        norms: dict[str, float] = {}
        if int(rows[0]) == 0:  # the step's first micro-batch, as train_step measures it
            every = {n: losses.get(n, anchor) for n in self.cfg.objectives}
            norms = {n: v for n, v in representation_grad_norms(every, h).items() if n in losses}
        self._records.append({"loss": {n: float(v.detach()) for n, v in losses.items()}, "norm": norms})
        return sum(self._lambdas.get(n, 1.0) * v for n, v in losses.items()) + anchor


def build_pipeline(
    model: nn.Module, mesh: Any, cfg: ModelConfig, n_microbatches: int, device: torch.device,
    *, compile: bool = False,
) -> Pipeline:  # fmt: skip
    """This rank's stage of ``model`` (plain, identical on every rank) for the 3-D mesh:
    build_stage → TP over "tp" → torch.compile per block (``compile``) → FSDP over "dp"
    → PipelineStage + Schedule1F1B over "pp", the order ``apply.apply`` uses.
    ``n_microbatches`` ≥ pp (1F1B) and ≤ the rows of a step's global batch per dp rank."""
    from torch.distributed.pipelining import PipelineStage, Schedule1F1B

    pp_rank, pp_size = axis_rank(mesh, "pp"), axis_size(mesh, "pp")
    if n_microbatches < pp_size:
        raise ValueError(f"n_microbatches: {n_microbatches} must be >= pp {pp_size} (1F1B)")
    module = build_stage(model, pp_rank, pp_size, device)
    apply_tp(module, mesh["tp"])
    if compile:  # only this stage's blocks: placeholders of other stages are skipped
        compile_blocks(module)
    if mesh.size() > 1:  # FSDP even at dp == 1: uniform DTensors, see apply.apply
        apply_fsdp(module, mesh["dp"], reshard_after_forward=False)
    pp_group = mesh["pp"].get_group()
    stage = PipelineStage(module, pp_rank, pp_size, device, group=pp_group)
    pipe = Pipeline(module=module, stage=stage, schedule=None, pp_group=pp_group, pp_rank=pp_rank,
                    pp_size=pp_size, n_microbatches=n_microbatches, cfg=cfg)  # fmt: skip
    # scale_grads: the loss is a per-micro-batch mean, so gradients are averaged over them.
    pipe.schedule = Schedule1F1B(stage, n_microbatches, loss_fn=pipe.loss_fn, scale_grads=True)
    return pipe


def _concat(micro: list[dict[str, torch.Tensor]], device: torch.device) -> dict[str, torch.Tensor]:
    keys = batch_keys(micro[0])
    return {k: torch.cat([m[k] for m in micro]).to(device) for k in keys}


def _broadcast_metrics(pipe: Pipeline, records: list[dict[str, dict[str, float]]]) -> tuple[dict, dict]:
    """Mean loss per objective over micro-batches and first-micro-batch norms, computed
    on the last stage and broadcast to every pp rank: (losses, norms)."""
    names = pipe.cfg.objectives
    t = torch.zeros(len(names), 4, dtype=torch.float64)  # Σ loss, count, norm, has norm
    if pipe.is_last:
        for i, n in enumerate(names):
            vals = [r["loss"][n] for r in records if n in r["loss"]]
            t[i, 0], t[i, 1] = sum(vals), len(vals)
            if n in records[0]["norm"]:
                t[i, 2], t[i, 3] = records[0]["norm"][n], 1.0
    if pipe.pp_size > 1:
        dev = next(pipe.module.buffers()).device  # gloo: CPU; NCCL: the stage's GPU
        t = t.to(dev)
        dist.broadcast(t, group=pipe.pp_group, group_src=pipe.pp_size - 1)
        t = t.cpu()
    losses = {n: float(t[i, 0] / t[i, 1]) for i, n in enumerate(names) if t[i, 1] > 0}
    norms = {n: float(t[i, 2]) for i, n in enumerate(names) if t[i, 3] > 0}
    return losses, norms


@torch.no_grad()
def update_world_target(pipe: Pipeline, world_target: nn.Module | None, decay: float) -> None:
    """EMA of the first stage's tubelet embedder into every rank's target encoder: the
    weights are gathered (FSDP/TP) on the first stage and broadcast over pp."""
    if world_target is None:
        return
    w, b = world_target.weight, world_target.bias
    if pipe.is_first:
        emb = pipe.module.vid_embed
        w_new = emb.weight.full_tensor() if hasattr(emb.weight, "full_tensor") else emb.weight
        b_new = emb.bias.full_tensor() if hasattr(emb.bias, "full_tensor") else emb.bias
        w_new, b_new = w_new.detach().to(w.device).clone(), b_new.detach().to(b.device).clone()
    else:
        w_new, b_new = torch.empty_like(w), torch.empty_like(b)
    if pipe.pp_size > 1:
        dist.broadcast(w_new, group=pipe.pp_group, group_src=0)
        dist.broadcast(b_new, group=pipe.pp_group, group_src=0)
    w.lerp_(w_new, 1 - decay)
    b.lerp_(b_new, 1 - decay)


def pipeline_train_step(
    pipe: Pipeline, opt: torch.optim.Optimizer, sched: Any, micro: list[dict[str, torch.Tensor]],
    *, cfg: ModelConfig, placement: Placement, grad_clip: float, lambdas: dict[str, float],
    world_target: nn.Module | None,
) -> dict[str, Any]:  # fmt: skip
    """One optimizer step through the pipeline; same arguments (``pipe`` for the model)
    and metrics as ``loop.train_step``. The ``micro`` batches are concatenated and the
    schedule splits them into ``pipe.n_microbatches`` (equal to len(micro) → the same
    micro-batches, hence the same losses, as train_step's gradient accumulation)."""
    batch = _concat(micro, placement.device)
    n_rows = batch["tokens"].shape[0]
    if n_rows < pipe.n_microbatches:
        raise ValueError(f"batch: {n_rows} rows cannot fill {pipe.n_microbatches} micro-batches")
    keys = batch_keys(batch)
    pipe.module.input_keys = keys
    pipe._batch, pipe._lambdas, pipe._world_target, pipe._records = batch, dict(lambdas), world_target, []
    opt.zero_grad(set_to_none=True)
    args = tuple(batch[k] for k in keys) if pipe.is_first else ()
    target = torch.arange(n_rows, device=placement.device) if pipe.is_last else None
    with autocast(placement):
        pipe.schedule.step(*args, target=target, return_outputs=False)
    # The first step's metadata inference also calls loss_fn once (on placeholder
    # activations): keep the records of the real micro-batches only.
    records = pipe._records[-pipe.n_microbatches :]
    pipe._batch, pipe._records = {}, []
    losses, norms = _broadcast_metrics(pipe, records)
    params = list(pipe.module.parameters())
    big_sq = float(grad_sq_norm(params, pipe.pp_group))
    grad_norm = clip_grad_norm_(params, grad_clip, pipe.pp_group)
    lr = opt.param_groups[0]["lr"]
    opt.step()
    sched.step()
    update_world_target(pipe, world_target, cfg.ema_decay)
    from ogi_ray.train.loop import step_metrics

    return step_metrics(lr, grad_norm, big_sq, None, losses, norms)


@torch.no_grad()
def pipeline_evaluate(
    pipe: Pipeline, batches: dict[str, dict[str, torch.Tensor]], cfg: ModelConfig,
    placement: Placement, world_target: nn.Module | None,
) -> dict[str, float]:  # fmt: skip
    """``loop.evaluate`` through the stages, one batch per source (no schedule: a plain
    forward handing x (B, S, D) from stage to stage); scores broadcast to every pp rank."""
    from ogi_ray.train.loop import evaluate

    module = pipe.module
    module.eval()
    scores: dict[str, float] = {}
    prev, nxt = pipe.pp_rank - 1, pipe.pp_rank + 1
    for source, batch in sorted(batches.items()):
        b = to_device(batch, placement.device)
        keys = batch_keys(b)
        module.input_keys = keys
        shape = (b["tokens"].shape[0], cfg.max_seq_len, cfg.dim)
        with autocast(placement):
            if pipe.is_first:
                x = module(*(b[k] for k in keys))
            else:
                x = torch.empty(shape, dtype=torch.float32, device=placement.device)
                dist.recv(x, group=pipe.pp_group, group_src=prev)
                x = module(x)
        if not pipe.is_last:
            dist.send(x.float().contiguous(), group=pipe.pp_group, group_dst=nxt)
            continue
        h, *heads = x
        out = dict(zip(module.head_keys, heads, strict=True))
        scores.update(evaluate(_Fixed(h, out), {source: b}, cfg, placement, world_target))
    module.train()
    if pipe.pp_size > 1:
        box = [scores]
        dist.broadcast_object_list(box, group=pipe.pp_group, group_src=pipe.pp_size - 1)
        scores = box[0]
    return scores


class _Fixed(nn.Module):
    """Returns precomputed (h, heads) whatever the batch: lets loop.evaluate score the
    last stage's outputs with the single-process code."""

    def __init__(self, h: torch.Tensor, out: dict[str, torch.Tensor]) -> None:
        super().__init__()
        self.h, self.out = h, out

    def forward(self, _batch: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return self.h, self.out

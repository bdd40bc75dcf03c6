"""Pipeline parallelism for the plain model: stages and the 1F1B schedule (only building
them: the step that runs them is train/step.py, this package never imports train).

    full model, usually on the meta device (the same on every rank)
      ─► build_stage(model, pp_rank, pp_size): a copy that keeps only its own parts
           first stage: embedders + its blocks      forward(*batch tensors) → x (B, S, D)
           middle:      its blocks                  forward(x) → x
           last:        its blocks + norm + heads   forward(x) → (h, *heads in fixed order)
      ─► apply_tp / compile / apply_fsdp on the stage (parallel/apply.py)
      ─► PipelineStage + Schedule1F1B over the "pp" process group, with the caller's loss
         function (build_pipeline); materialised afterwards (parallel/materialize.py)

The schedule takes the step's global batch (micro-batches concatenated): the first stage
gets the batch tensors (keys sorted, dim 0 = rows) as positional args, every stage the
document ids ``text_doc`` as a keyword (its attention mask needs them), the last stage
gets target = arange(B), the rows each micro-batch holds, so the loss function can pick
them out of the batch it was given.

Parameter names (FQNs) are those of the full model on every stage (blocks another stage
owns become parameterless placeholders), so every stage's shards together are exactly the
single-process state dict.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ogi_ray.model.transformer import MultimodalTransformer
from ogi_ray.parallel.apply import parallelize
from ogi_ray.parallel.dims import axis_rank, axis_size

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

    def forward(self, *args: torch.Tensor, text_doc: torch.Tensor | None = None) -> Any:  # type: ignore[override]
        # text_doc (B, T) comes to every stage as a keyword (each rank's schedule.step
        # splits it into the same micro-batches); stages pass each other only x.
        if self.is_first:
            x = self.embed(dict(zip(self.input_keys, args, strict=True)))  # (B, S, D)
        else:
            (x,) = args
        mask = self.attention_mask(text_doc)
        for layer in self.layers:
            x = layer(x, self.rope_cos, self.rope_sin, mask)
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
    return stage if any(p.is_meta for p in stage.parameters()) else stage.to(device)


STAGE_KWARGS = ("text_doc",)  # batch tensors every stage receives, as keywords


def batch_keys(batch: dict[str, torch.Tensor]) -> tuple[str, ...]:
    """Keys of tensors with a batch dimension (dim 0 = rows), in the fixed (sorted) order
    the first stage receives them; 0-dim counters such as ``n_tokens`` and the keywords
    of every stage (``STAGE_KWARGS``) are left out."""
    rows = batch["tokens"].shape[0]
    return tuple(sorted(k for k, v in batch.items()
                        if v.dim() >= 1 and v.shape[0] == rows and k not in STAGE_KWARGS))  # fmt: skip


def stage_kwargs(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: batch[k] for k in STAGE_KWARGS if k in batch}


@dataclass
class Pipeline:
    """A built pipeline on this rank: ``module`` (the stage, TP/FSDP applied; build the
    optimizer from it), its ``PipelineStage`` and schedule."""

    module: nn.Module
    stage: Any
    schedule: Any
    pp_group: Any
    pp_rank: int
    pp_size: int
    n_microbatches: int

    @property
    def is_first(self) -> bool:
        return self.pp_rank == 0

    @property
    def is_last(self) -> bool:
        return self.pp_rank == self.pp_size - 1


def build_pipeline(
    model: nn.Module, mesh: Any, plan: Any, device: torch.device,
    loss_fn: Callable[..., torch.Tensor], *, compile: bool = False,
) -> Pipeline:  # fmt: skip
    """This rank's stage of ``model`` (plain, identical on every rank, meta or real) for
    the 3-D mesh: build_stage → the plan's wrappers (apply.parallelize: TP with SP, AC,
    compile, FSDP; only this stage's blocks) → PipelineStage + Schedule1F1B over "pp"
    with ``plan.microbatches`` micro-batches and ``loss_fn(output, target)`` on the last
    stage. With SP the stages pass each other their sequence shards (B, S/tp, D)."""
    from torch.distributed.pipelining import PipelineStage, Schedule1F1B

    pp_rank, pp_size = axis_rank(mesh, "pp"), axis_size(mesh, "pp")
    n_microbatches = plan.microbatches
    if n_microbatches < pp_size:
        raise ValueError(f"n_microbatches: {n_microbatches} must be >= pp {pp_size} (1F1B)")
    if plan.reshard_after_forward:
        raise ValueError("reshard_after_forward: must be false with pp > 1")
    module = parallelize(build_stage(model, pp_rank, pp_size, device), mesh, plan, compile=compile)
    pp_group = mesh["pp"].get_group()
    stage = PipelineStage(module, pp_rank, pp_size, device, group=pp_group)
    # scale_grads: the loss is a per-micro-batch mean, so gradients are averaged over them.
    schedule = Schedule1F1B(stage, n_microbatches, loss_fn=loss_fn, scale_grads=True)
    return Pipeline(module=module, stage=stage, schedule=schedule, pp_group=pp_group, pp_rank=pp_rank,
                    pp_size=pp_size, n_microbatches=n_microbatches)  # fmt: skip

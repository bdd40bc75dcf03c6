"""The model, its layout and its step for one (dp, tp, pp) layout, built in one place for
the Ray worker and the lineage replay.

    model on the meta device (nothing allocated) + ParallelPlan (parallel/plan.py)
      ─► 3-D mesh (None for one process)
      ─► pp > 1: build_pipeline (stage → TP/SP → AC → compile → FSDP → 1F1B schedule
                 whose loss is train/step.py's PipelineLoss)
         else:   parallel.apply (TP/SP → AC → compile → FSDP with the plan's reshard mode)
      ─► materialize: each rank allocates and initialises only its own shards (from the
         model's per-tensor rule, or left for a checkpoint load to fill)
      ─► Stepper: the mesh, the module the optimizer and checkpoints see, and the step
         object (PlainStep | PipelineStep: ``train`` and ``evaluate``)

A replay must rebuild exactly the layout that trained (another layout reduces in another
order, so the low bits differ); sharing this builder makes that hold by construction.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ogi_ray.model import build
from ogi_ray.model.config import ModelConfig
from ogi_ray.model.transformer import initial_value
from ogi_ray.parallel import apply as par
from ogi_ray.parallel.device import Placement, attention_kernel
from ogi_ray.parallel.dims import ParallelDims
from ogi_ray.parallel.materialize import materialize
from ogi_ray.parallel.pipeline import build_pipeline
from ogi_ray.parallel.plan import ParallelPlan
from ogi_ray.train.step import PipelineLoss, PipelineStep, PlainStep


@dataclass
class Stepper:
    mesh: Any  # the 3-D DeviceMesh, None for one process
    module: nn.Module  # this rank's model or pipeline stage (optimizer, checkpoints)
    step: PlainStep | PipelineStep
    n_microbatches: int  # schedule micro-batches per step under pp; 0 without a pipeline
    plan: ParallelPlan  # what was built


def build_stepper(
    cfg: ModelConfig, plan: ParallelPlan, placement: Placement, *, seed: int | None, compile: bool,
    grad_clip: float,
) -> Stepper:  # fmt: skip
    """This rank's part of the model for ``plan``, materialised from the init rule for
    ``seed`` (None: uninitialised shards, for a checkpoint to fill)."""
    device = placement.device
    dims = ParallelDims.from_plan(plan)
    with torch.device("meta"):
        model = build(cfg)
    model.attention_kernel = attention_kernel(device)  # stages are copies: they inherit it
    mesh = par.build_mesh(device.type, dims) if dims.world_size > 1 else None
    init = None if seed is None else (lambda name, shape: initial_value(cfg, name, shape, seed))
    if dims.pp > 1:
        loss = PipelineLoss(cfg)
        pipe = build_pipeline(model, mesh, plan, device, loss, compile=compile)
        materialize(pipe.module, device, init)
        step: PlainStep | PipelineStep = PipelineStep(pipe, loss, cfg, placement, grad_clip,
                                                      seq_split=plan.tp if plan.sequence_parallel else 1)  # fmt: skip
        return Stepper(mesh, pipe.module, step, pipe.n_microbatches, plan)
    module = materialize(par.apply(model, mesh, plan, compile=compile), device, init)
    return Stepper(mesh, module, PlainStep(module, cfg, placement, grad_clip), 0, plan)

"""The training step of one (dp, tp, pp) layout, built in one place for the Ray worker
and the lineage replay.

    plain model (identical on every rank) + ParallelDims
      ─► 3-D mesh (None for one process)
      ─► pp > 1: build_pipeline (stage → TP → compile → FSDP → 1F1B schedule)
         else:   parallel.apply (TP → compile → FSDP)
      ─► Stepper: the module the optimizer and checkpoints see, and the step and
         evaluate functions with the object they take

A replay must rebuild exactly the layout that trained (another layout reduces in another
order, so the low bits differ); sharing this builder makes that hold by construction.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ogi_ray.model.config import ModelConfig
from ogi_ray.parallel import apply as par
from ogi_ray.parallel.dims import ParallelDims
from ogi_ray.parallel.pipeline import build_pipeline, pipeline_evaluate, pipeline_train_step
from ogi_ray.train import loop


@dataclass
class Stepper:
    mesh: Any  # the 3-D DeviceMesh, None for one process
    module: nn.Module  # this rank's model or pipeline stage (optimizer, checkpoints)
    target: Any  # what ``step`` and ``evaluate`` take: the module, or the Pipeline
    step: Callable[..., dict[str, Any]]  # loop.train_step or pipeline_train_step
    evaluate: Callable[..., dict[str, float]]  # loop.evaluate or pipeline_evaluate
    n_microbatches: int  # schedule micro-batches per step under pp; 0 without a pipeline


def build_stepper(
    model: nn.Module, dims: ParallelDims, cfg: ModelConfig, device: torch.device,
    *, n_microbatches: int, compile: bool,
) -> Stepper:  # fmt: skip
    """Apply ``dims`` to ``model`` (in place, or as this rank's stage when pp > 1)."""
    mesh = par.build_mesh(device.type, dims) if dims.world_size > 1 else None
    if dims.pp > 1:
        pipe = build_pipeline(model, mesh, cfg, n_microbatches, device, compile=compile)
        return Stepper(mesh, pipe.module, pipe, pipeline_train_step, pipeline_evaluate, pipe.n_microbatches)
    module = par.apply(model, mesh, compile=compile)
    return Stepper(mesh, module, module, loop.train_step, loop.evaluate, 0)

"""The pure PyTorch training step and evaluation (no Ray): forward, objectives, backward,
clip, AdamW, schedule. The Ray worker (``worker.py``) feeds batches and handles
reporting and checkpoints through the callbacks.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from typing import Any

import torch
from torch import nn

from ogi_ray.model.objectives import lm_loss
from ogi_ray.parallel.device import Placement
from ogi_ray.train.optim import clip_grad_norm


def _to(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def _autocast(placement: Placement) -> Any:
    if placement.autocast_dtype is None:
        return nullcontext()
    return torch.autocast(placement.device.type, dtype=placement.autocast_dtype)


def train_step(
    model: nn.Module, opt: torch.optim.Optimizer, sched: Any, batch: dict[str, torch.Tensor],
    placement: Placement, grad_clip: float,
) -> dict[str, float]:  # fmt: skip
    batch = _to(batch, placement.device)
    with _autocast(placement):
        _, logits = model(batch["tokens"], batch["patches"], batch["has_image"])
        loss = lm_loss(logits, batch["targets"])
    opt.zero_grad(set_to_none=True)
    loss.backward()
    grad_norm = clip_grad_norm(model, grad_clip)
    lr = opt.param_groups[0]["lr"]
    opt.step()
    sched.step()
    value = float(loss.detach())
    if not math.isfinite(value):
        raise FloatingPointError(f"loss is {value}")
    return {"loss/lm": value, "grad_norm": grad_norm, "lr": lr}


@torch.no_grad()
def evaluate(model: nn.Module, batches: dict[str, dict[str, torch.Tensor]], placement: Placement) -> dict[str, float]:
    """Mean LM loss per held-out source: {"lm_loss/<source>": value}."""
    model.eval()
    out = {}
    for source, batch in sorted(batches.items()):
        b = _to(batch, placement.device)
        with _autocast(placement):
            _, logits = model(b["tokens"], b["patches"], b["has_image"])
            out[f"lm_loss/{source}"] = float(lm_loss(logits, b["targets"]))
    model.train()
    return out


def run(
    model: nn.Module, opt: torch.optim.Optimizer, sched: Any, batches: Iterator[dict[str, torch.Tensor]],
    *, placement: Placement, grad_clip: float, start_step: int, total_steps: int,
    on_step: Callable[[int, dict[str, float], dict[str, torch.Tensor]], None],
) -> int:  # fmt: skip
    """Train from ``start_step`` to ``total_steps``; ``on_step(step, metrics, batch)`` after each."""
    step = start_step
    model.train()
    while step < total_steps:
        batch = next(batches)
        metrics = train_step(model, opt, sched, batch, placement, grad_clip)
        on_step(step, metrics, batch)
        step += 1
    return step

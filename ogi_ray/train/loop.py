"""The pure PyTorch training step and evaluation (no Ray).

One optimizer step over ``k`` micro-batches (gradient accumulation):

    for each micro-batch: forward ─► h, heads ─► losses L_i (train/losses.py)
        first micro-batch: ‖∂L_i/∂h‖ per objective (for the loss-weight tuner)
        backward of Σ λ_i L_i / k
        after the first: ‖g‖² of one micro-batch over all dp ranks (small batch, GNS)
    ‖g‖² of the whole step (big batch, GNS) ─► clip at grad_clip ─► AdamW ─► schedule
    ─► EMA update of the world-model target encoder

The Ray worker (``worker.py``) supplies batches and λ, and handles reporting and
checkpoints; the same function replays a recorded step for lineage proofs.
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from typing import Any

import torch
from torch import nn

from ogi_ray.model.config import ModelConfig
from ogi_ray.model.objectives import representation_grad_norms
from ogi_ray.parallel.device import Placement
from ogi_ray.train.losses import compute_losses
from ogi_ray.train.optim import clip_grad_norm, total_grad_sq_norm


def to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def autocast(placement: Placement) -> Any:
    if placement.autocast_dtype is None:
        return nullcontext()
    return torch.autocast(placement.device.type, dtype=placement.autocast_dtype)


def _full(t: torch.Tensor) -> torch.Tensor:
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def make_world_target(model: nn.Module) -> nn.Module | None:
    """A replicated copy of the tubelet embedder: the EMA target encoder (stop-gradient)."""
    emb = getattr(model, "vid_embed", None)
    if emb is None or getattr(model, "world_head", None) is None:
        return None
    target = nn.Linear(emb.in_features, emb.out_features)
    with torch.no_grad():
        target.weight.copy_(_full(emb.weight.detach()))
        target.bias.copy_(_full(emb.bias.detach()))
    return target.requires_grad_(False).to(_full(emb.weight).device)


@torch.no_grad()
def update_world_target(target: nn.Module | None, model: nn.Module, decay: float) -> None:
    if target is None:
        return
    target.weight.lerp_(_full(model.vid_embed.weight.detach()), 1 - decay)
    target.bias.lerp_(_full(model.vid_embed.bias.detach()), 1 - decay)


def train_step(
    model: nn.Module, opt: torch.optim.Optimizer, sched: Any, micro: list[dict[str, torch.Tensor]],
    *, cfg: ModelConfig, placement: Placement, grad_clip: float, lambdas: dict[str, float],
    world_target: nn.Module | None,
) -> dict[str, Any]:  # fmt: skip
    """One optimizer step; returns metrics (losses, raw grad norms at h, GNS inputs)."""
    k = len(micro)
    opt.zero_grad(set_to_none=True)
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}
    norms: dict[str, float] = {}
    small_sq = None
    for i, batch in enumerate(micro):
        b = to_device(batch, placement.device)
        with autocast(placement):
            h, out = model(b)
            losses = compute_losses(out, b, cfg, world_target)
        # Touch every head even when its objective is absent from this rank's rows, so
        # all ranks run the same backward graph: FSDP's hooks issue collectives per
        # backward pass, and a rank that skipped one would deadlock or abort the others.
        anchor = 0.0 * sum(o.float().sum() for o in out.values())
        if i == 0:
            every = {n: losses.get(n, anchor) for n in cfg.objectives}
            norms = {n: v for n, v in representation_grad_norms(every, h).items() if n in losses}
        total = sum(lambdas.get(n, 1.0) * v for n, v in losses.items()) / k + anchor
        total.backward()
        for n, v in losses.items():
            sums[n] = sums.get(n, 0.0) + float(v.detach())
            counts[n] = counts.get(n, 0) + 1
        if i == 0 and k > 1:
            small_sq = total_grad_sq_norm(model) * k * k  # undo the 1/k of one micro-batch
    big_sq = total_grad_sq_norm(model)
    grad_norm = clip_grad_norm(model, grad_clip)
    lr = opt.param_groups[0]["lr"]
    opt.step()
    sched.step()
    update_world_target(world_target, model, cfg.ema_decay)
    return step_metrics(lr, grad_norm, big_sq, small_sq, {n: sums[n] / counts[n] for n in sums}, norms)


def step_metrics(
    lr: float, grad_norm: float, big_sq: float, small_sq: float | None,
    losses: dict[str, float], norms: dict[str, float],
) -> dict[str, Any]:  # fmt: skip
    """The metrics dict every step function returns (plain and pipelined alike)."""
    metrics: dict[str, Any] = {"lr": lr, "grad_norm": grad_norm, "gns_big_sq": big_sq, "gns_small_sq": small_sq}
    for n, value in losses.items():
        if not math.isfinite(value):
            raise FloatingPointError(f"loss/{n} is {value}")
        metrics[f"loss/{n}"] = value
        metrics[f"gradnorm_raw/{n}"] = norms.get(n, 0.0)
    return metrics


@torch.no_grad()
def evaluate(
    model: nn.Module, batches: dict[str, dict[str, torch.Tensor]], cfg: ModelConfig,
    placement: Placement, world_target: nn.Module | None,
) -> dict[str, float]:  # fmt: skip
    """Per held-out source and objective: {"<objective>/<source>": loss}; LM as perplexity.

    Retrieval recall@1 for alignment is added by the eval suite when rows allow it."""
    from ogi_ray.model.objectives import recall_at_1
    from ogi_ray.train.losses import _masked_mean

    model.eval()
    scores: dict[str, float] = {}
    for source, batch in sorted(batches.items()):
        b = to_device(batch, placement.device)
        with autocast(placement):
            _, out = model(b)
            losses = compute_losses(out, b, cfg, world_target)
        for n, v in losses.items():
            scores[f"{n}/{source}"] = math.exp(min(float(v), 50.0)) if n == "lm" else float(v)
        if "img_lat" in out:
            rows = b["img_present"].any(1) & b["text_valid"].any(1)
            if int(rows.sum()) >= 2:
                zi = _masked_mean(out["img_lat"][rows], b["img_present"][rows]).float()
                zt = _masked_mean(out["txt_lat"][rows], b["text_valid"][rows]).float()
                scores[f"recall@1/{source}"] = float(recall_at_1(zi, zt))
    model.train()
    return {("perplexity/" + k[3:] if k.startswith("lm/") else k): v for k, v in scores.items()}

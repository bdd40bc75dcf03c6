"""AdamW with decoupled weight decay only on matrices of the backbone and heads (never on
norms, biases or embeddings), and the warm-up + cosine schedule. (Global-norm clipping
over sharded DTensors is ``parallel.apply.clip_grad_norm_``.)"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ogi_ray.train.schedule import lr_at


@dataclass(kw_only=True)
class OptimConfig:
    lr: float = 3e-3
    min_lr: float = 3e-4
    warmup_frac: float = 0.02
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    grad_clip: float = 1.0

    def validate(self) -> None:
        if not 0 < self.lr < 1:
            raise ValueError(f"lr: must be in (0, 1), got {self.lr}")
        if not 0 <= self.min_lr <= self.lr:
            raise ValueError("min_lr: must be in [0, lr]")
        if not 0 <= self.warmup_frac < 1:
            raise ValueError("warmup_frac: must be in [0, 1)")
        if self.grad_clip <= 0:
            raise ValueError("grad_clip: must be > 0")


NO_DECAY_MARKERS = ("norm", "bias", "embed", "no_image")


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.dim() < 2 or any(m in name for m in NO_DECAY_MARKERS) else decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def build_optimizer(
    model: nn.Module, cfg: OptimConfig, total_steps: int
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    opt = torch.optim.AdamW(
        param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps
    )

    def factor(step: int) -> float:
        return lr_at(step, total_steps=total_steps, max_lr=cfg.lr, min_lr=cfg.min_lr,
                     warmup_frac=cfg.warmup_frac) / cfg.lr  # fmt: skip

    return opt, torch.optim.lr_scheduler.LambdaLR(opt, factor)

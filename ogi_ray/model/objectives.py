"""Training objectives as pure functions of model outputs and batch tensors.

``lm``: next-token cross-entropy on text and code (captions included); padding
positions carry the target ``IGNORE`` and are excluded from the mean.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE = -100


def lm_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """logits (B, T, V), targets (B, T) with IGNORE for padding → mean CE over real tokens."""
    return F.cross_entropy(
        logits.flatten(0, 1).float(), targets.flatten(), ignore_index=IGNORE, reduction="mean"
    )

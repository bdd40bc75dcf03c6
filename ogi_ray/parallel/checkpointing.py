"""Activation checkpointing per block, applied from outside the model.

    plan.activation_checkpoint
      "none"       blocks keep every activation their backward needs
      "full"       each block's forward runs under torch.utils.checkpoint: the block keeps
                   its input only and re-runs its forward in the backward
      "selective"  the same, with a selective policy (torchtitan's op-level SAC save list,
                   without its every-second-matmul rule): outputs of matmuls, the SDPA ops
                   and the TP/SP reductions are saved, everything else (norms, rotary,
                   SiLU, casts, copies, SP all-gathers) is recomputed

The block's ``forward`` is wrapped in place (an instance attribute), not the block: a
``checkpoint_wrapper`` module would put ``_checkpoint_wrapped_module`` into every
parameter name, changing state-dict keys and weight roots. Applied after TP and before
``torch.compile`` and FSDP, as torchtitan orders them (docs/parallel.md, "The program the
predictions assume", item 7).
"""

from __future__ import annotations

import functools
from typing import Any

import torch
from torch import nn

from ogi_ray.parallel.shapes import AC_MODES


def _save_list() -> set[Any]:
    """The ops whose outputs selective checkpointing keeps (the rest is recomputed)."""
    aten = torch.ops.aten
    ops = {aten.mm.default, aten.addmm.default, aten.bmm.default}
    for name in ("_scaled_dot_product_flash_attention", "_scaled_dot_product_efficient_attention",
                 "_scaled_dot_product_flash_attention_for_cpu", "_scaled_dot_product_cudnn_attention"):  # fmt: skip
        if hasattr(aten, name):
            ops.add(getattr(aten, name).default)
    c10d = getattr(torch.ops, "_c10d_functional", None)
    if c10d is not None:
        ops |= {c10d.all_reduce.default, c10d.reduce_scatter_tensor.default}
    return ops


def _selective_context() -> Any:
    from torch.utils.checkpoint import CheckpointPolicy, create_selective_checkpoint_contexts

    save = _save_list()

    def policy(ctx: Any, op: Any, *args: Any, **kwargs: Any) -> Any:
        return CheckpointPolicy.MUST_SAVE if op in save else CheckpointPolicy.PREFER_RECOMPUTE

    return create_selective_checkpoint_contexts(policy)


def checkpoint_block(block: nn.Module, mode: str) -> nn.Module:
    """Make ``block``'s forward checkpointed (``mode`` "full" or "selective") in place."""
    from torch.utils.checkpoint import checkpoint

    if mode not in AC_MODES:
        raise ValueError(f"activation_checkpoint: must be one of {list(AC_MODES)}, got {mode!r}")
    if mode == "none":
        return block
    inner = block.forward  # the class's forward, bound to this block
    kwargs: dict[str, Any] = {"use_reentrant": False}
    if mode == "selective":
        kwargs["context_fn"] = _selective_context

    @functools.wraps(inner)
    def forward(*args: Any) -> Any:
        return checkpoint(inner, *args, **kwargs)

    block.forward = forward  # type: ignore[method-assign]
    block.ogi_activation_checkpoint = mode  # what was applied (tests, the launch print)
    return block

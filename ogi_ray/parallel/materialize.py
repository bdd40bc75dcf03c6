"""Materialise a model built on the meta device, shard by shard, so that no rank ever
allocates the full model (DESIGN decision 13).

    with torch.device("meta"): model = build(cfg)        no memory
      ─► TP / FSDP2 / pipeline stage applied (parallel/apply.py, pipeline.py): parameters
         become DTensors (still meta) holding only their placements
      ─► materialize(module, device, init_fn):
           to_empty(device)          each rank allocates its own shards only
           module.init_buffers()     the constant buffers (rotary tables, masks)
           per parameter, in name order: full = init_fn(name, logical shape) on the host
           (one tensor at a time), this rank's box of it copied into its local shard

``init_fn`` gives the same values for a name whatever the layout (the model draws them
from a generator seeded by (seed, name)), so a dp2×tp2 run starts from exactly the
weights a single process would, and the layout-invariant weights root holds from step 0.
Peak host memory: this rank's shards plus the largest single tensor.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

InitFn = Callable[[str, tuple[int, ...]], torch.Tensor]

# Wrappers that prefix parameter names (activation checkpointing, compile): the init rule
# is keyed by the plain model's names.
WRAPPER_PREFIXES = ("_checkpoint_wrapped_module.", "_orig_mod.", "_fsdp_wrapped_module.")


def plain_name(name: str) -> str:
    for p in WRAPPER_PREFIXES:
        name = name.replace(p, "")
    return name


def local_box(p: Any) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(offset, shape) of this rank's shard of ``p`` in the logical tensor."""
    from torch.distributed.tensor import DTensor

    if not isinstance(p, DTensor):
        return (0,) * p.dim(), tuple(p.shape)
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

    shape, offset = compute_local_shape_and_global_offset(p.shape, p.device_mesh, p.placements)
    return tuple(int(o) for o in offset), tuple(int(d) for d in shape)


def copy_box(p: Any, full: torch.Tensor) -> None:
    """Copy this rank's box of the logical tensor ``full`` into ``p``'s local shard."""
    offset, shape = local_box(p)
    local = p.to_local() if hasattr(p, "to_local") else p
    if tuple(local.shape) != shape:
        raise RuntimeError(f"local shard {tuple(local.shape)} is not the box {shape} of {tuple(full.shape)}")
    if local.numel():
        box = tuple(slice(o, o + n) for o, n in zip(offset, shape, strict=True))
        local.copy_(full[box])


@torch.no_grad()
def materialize(module: nn.Module, device: torch.device, init_fn: InitFn | None) -> nn.Module:
    """Allocate ``module``'s (meta) parameters on ``device`` and fill each rank's shard
    from ``init_fn`` (None: leave them uninitialised, a checkpoint load follows)."""
    module.to_empty(device=device)
    init_buffers = getattr(module, "init_buffers", None)
    if init_buffers is not None:
        init_buffers()
    if init_fn is not None:
        for name, p in module.named_parameters():
            # The full value stays on the host; only this rank's box moves to the device.
            copy_box(p, init_fn(plain_name(name), tuple(int(d) for d in p.shape)))
    return module

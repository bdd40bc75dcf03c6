"""Apply data parallelism to the plain model from outside (torchtitan-style).

``apply(model, mesh)`` shards every transformer block, then the root, with FSDP2
``fully_shard`` over the mesh's ``dp`` axis; with one rank it returns the model unchanged.
Later axes (tp, pp) are applied here too, never inside the model.
"""

from __future__ import annotations

import torch.distributed as dist
from torch import nn


def build_mesh(device_type: str, dp: int) -> object | None:
    """A 1-D ("dp",) DeviceMesh over the current process group, or None for one process."""
    if not dist.is_available() or not dist.is_initialized() or dist.get_world_size() == 1:
        return None
    from torch.distributed.device_mesh import init_device_mesh

    return init_device_mesh(device_type, (dp,), mesh_dim_names=("dp",))


def apply(model: nn.Module, mesh: object | None) -> nn.Module:
    if mesh is None:
        return model
    from torch.distributed.fsdp import fully_shard

    for block in model.layers:  # type: ignore[attr-defined]
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model

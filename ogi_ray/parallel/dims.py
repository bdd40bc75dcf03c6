"""The (dp, tp, pp) degrees of one run and the DeviceMesh built from them.

    ParallelDims(dp, tp, pp) ─► validate(world) ─► build_mesh(device_type, dims)
        ─► DeviceMesh of shape (pp, dp, tp), axes named ("pp", "dp", "tp")

Axis order is DESIGN decision 5: ``tp`` innermost, so its ranks are consecutive (one node,
NVLink); ``pp`` outermost, so stages sit on different nodes and only activations cross
the slow links; ``dp`` over the rest. Global rank r has coordinates
``pp = r // (dp·tp)``, ``dp = (r // tp) % dp``, ``tp = r % tp``.

Data is sharded by dp rank, never by world rank: the tp and pp ranks of one dp replica
must read the same rows (``dp_rank_and_size``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch.distributed as dist

MESH_AXES = ("pp", "dp", "tp")


@dataclass(frozen=True)
class ParallelDims:
    dp: int = 1
    tp: int = 1
    pp: int = 1

    def __post_init__(self) -> None:
        for name in ("dp", "tp", "pp"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{name}: must be a positive integer, got {v!r}")

    @property
    def world_size(self) -> int:
        return self.dp * self.tp * self.pp

    def validate(self, world_size: int) -> None:
        """Raise unless dp·tp·pp equals the number of ranks."""
        if self.world_size != world_size:
            raise ValueError(
                f"parallel dims: dp·tp·pp = {self.dp}·{self.tp}·{self.pp} = {self.world_size} "
                f"must equal the world size {world_size}"
            )

    @classmethod
    def from_plan(cls, plan: Any) -> ParallelDims:
        """From anything with dp/tp/pp attributes (``planner.Plan``) or keys (a dict)."""
        get = plan.get if isinstance(plan, dict) else lambda k, d: getattr(plan, k, d)
        return cls(dp=int(get("dp", 1)), tp=int(get("tp", 1)), pp=int(get("pp", 1)))


def build_mesh(device_type: str, dims: ParallelDims) -> Any:
    """A 3-D DeviceMesh (pp, dp, tp) over the current process group (every rank calls it).

    Size-1 axes are kept, so ``mesh["tp"]`` etc. always exist."""
    from torch.distributed.device_mesh import init_device_mesh

    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError("build_mesh: torch.distributed is not initialised (one process needs no mesh)")
    dims.validate(dist.get_world_size())
    return init_device_mesh(device_type, (dims.pp, dims.dp, dims.tp), mesh_dim_names=MESH_AXES)


def axis_size(mesh: Any, axis: str) -> int:
    """Size of a named mesh axis; 1 when the mesh is None or lacks the axis."""
    if mesh is None or axis not in (mesh.mesh_dim_names or ()):
        return 1
    return mesh[axis].size()


def axis_rank(mesh: Any, axis: str) -> int:
    """This rank's coordinate on a named mesh axis; 0 when the mesh is None or lacks it."""
    if mesh is None or axis not in (mesh.mesh_dim_names or ()):
        return 0
    return mesh[axis].get_local_rank()


def dp_rank_and_size(mesh: Any) -> tuple[int, int]:
    """(dp_rank, dp_size) for slicing data: ranks that differ only in tp/pp get the same
    rows. Works for the 3-D mesh and None (one process)."""
    return axis_rank(mesh, "dp"), axis_size(mesh, "dp")

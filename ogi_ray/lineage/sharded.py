"""Merkle leaves of a sharded model (FSDP2 / TP DTensors) without gathering it on one rank.

The weight hash (merkle.py) is defined over logical, unsharded tensors, so every parallel
layout holding the same weights must give the same root. Gathering the whole model on
rank 0 (what ``get_model_state_dict(full_state_dict=True)`` does) does not scale, so:

    1. every rank describes what it holds: for each tensor name, the global shape, dtype
       and the box (offset, shape) of its local shard in the global tensor
       ─► one ``all_gather_object`` of these descriptions (metadata only)
    2. tensor i (canonical name order) is owned by ``holders[i % len(holders)]``
       (with no pipeline stages every rank holds every name: owner = i % world)
    3. for each tensor, the lowest rank holding each distinct box sends it point-to-point
       to the owner, which writes it into one CPU buffer of the full tensor, hashes it
       (merkle.leaf_hash) and frees it; non-owners never hold more than their own shard
    4. ``all_gather_object`` of the owners' (name, leaf) pairs: every rank returns the
       same name-sorted list, whose ``merkle_root`` is the single-process root

Peak memory: the owner of a tensor holds that full tensor on the host plus one received
shard; a rank holds at most one full tensor at a time (the largest one it owns).

The boxes come from ``compute_local_shape_and_global_offset`` (what DCP uses). Every rank
checks, from the gathered metadata alone (so all ranks decide alike), that the distinct
boxes tile the tensor exactly; if they do not (a placement whose local shard is not a
box, e.g. an interleaved strided shard, or Partial) that tensor falls back to
``full_tensor()``, which materialises it on every rank for the time of one hash.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from ogi_ray.lineage.merkle import TORCH_TO_ST, leaf_hash, tensor_leaves
from ogi_ray.lineage.shards import Box, boxes_tile


def canonical_order(names: list[str] | set[str]) -> list[str]:
    """Tensor names sorted by their UTF-8 bytes (the Merkle leaf order)."""
    return sorted(names, key=lambda n: n.encode("utf-8"))


def _state_dict(model_or_state_dict: nn.Module | dict[str, Any]) -> dict[str, Any]:
    if isinstance(model_or_state_dict, nn.Module):
        # get_model_state_dict strips wrapper prefixes (torch.compile, checkpoint wrappers),
        # so names are the plain model's FQNs — the names single-process hashing uses.
        from torch.distributed.checkpoint.state_dict import get_model_state_dict

        return get_model_state_dict(model_or_state_dict)
    return dict(model_or_state_dict)


def _describe(t: Any) -> dict[str, Any]:
    """Global shape, dtype and the local box of one state-dict entry (metadata only)."""
    from torch.distributed.tensor import DTensor, Partial

    if isinstance(t, DTensor):
        shape = tuple(int(d) for d in t.shape)
        desc = {"shape": shape, "dtype": TORCH_TO_ST[str(t.dtype)], "dtensor": True}
        if any(isinstance(p, Partial) for p in t.placements):
            return {**desc, "box": None}
        from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

        lshape, offset = compute_local_shape_and_global_offset(t.shape, t.device_mesh, t.placements)
        if tuple(lshape) != tuple(t.to_local().shape) or len(offset) != len(shape):
            return {**desc, "box": None}  # rank outside the mesh or an unexpected layout
        return {**desc, "box": (tuple(int(o) for o in offset), tuple(int(d) for d in lshape))}
    if isinstance(t, torch.Tensor):
        shape = tuple(int(d) for d in t.shape)
        return {"shape": shape, "dtype": TORCH_TO_ST[str(t.dtype)], "dtensor": False,
                "box": ((0,) * len(shape), shape)}  # fmt: skip
    raise TypeError(f"state dict entry of type {type(t).__name__} is not a tensor")


def _as_bytes(t: torch.Tensor) -> torch.Tensor:
    t = t.detach().contiguous()
    return t.view(-1).view(torch.uint8) if t.numel() else torch.empty(0, dtype=torch.uint8, device=t.device)


def _hash_full(name: str, dtype: str, full: torch.Tensor) -> bytes:
    data = _as_bytes(full.cpu()).numpy()  # little-endian on x86/ARM; hashlib reads the buffer
    return leaf_hash(name, dtype, full.shape, data)


def _local(t: Any) -> torch.Tensor:
    from torch.distributed.tensor import DTensor

    return t.to_local() if isinstance(t, DTensor) else t


def sharded_weights_leaves(
    model_or_state_dict: nn.Module | dict[str, Any], group: Any = None,
    stats: dict[str, int] | None = None,
) -> list[tuple[str, bytes]]:
    """(name, leaf) in canonical order for a model or state dict of DTensors and/or plain
    tensors, identical on every rank of ``group``; equals ``merkle.tensor_leaves`` of the
    unsharded weights. Collective: every rank of ``group`` must call it. Without an
    initialised process group it is ``tensor_leaves`` (every tensor must be local).
    ``stats`` (optional) counts how each tensor was handled: "boxes" (assembled from
    shards), "fallback" (full_tensor), and "bytes_max" (largest tensor this rank held)."""
    stats = stats if stats is not None else {}
    stats.update(boxes=0, fallback=0, bytes_max=0)
    state = _state_dict(model_or_state_dict)
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size(group) == 1:
        from torch.distributed.tensor import DTensor

        return tensor_leaves({k: v.full_tensor() if isinstance(v, DTensor) else v for k, v in state.items()})

    world, me = dist.get_world_size(group), dist.get_rank(group)
    mine = {name: _describe(t) for name, t in state.items()}
    everyone: list[dict[str, dict[str, Any]] | None] = [None] * world
    dist.all_gather_object(everyone, mine, group=group)

    owned: list[tuple[str, bytes]] = []
    for i, name in enumerate(canonical_order({n for d in everyone for n in d})):  # type: ignore[union-attr]
        descs = {r: d[name] for r, d in enumerate(everyone) if name in d}  # type: ignore[index,operator]
        holders = sorted(descs)
        first = descs[holders[0]]
        for r, d in descs.items():
            if (d["shape"], d["dtype"]) != (first["shape"], first["dtype"]):
                raise ValueError(f"tensor {name!r}: rank {r} holds {d['shape']} {d['dtype']}, "
                                 f"rank {holders[0]} holds {first['shape']} {first['dtype']}")  # fmt: skip
        owner = holders[i % len(holders)]
        shape, dtype = tuple(first["shape"]), first["dtype"]
        boxes = [descs[r]["box"] for r in holders]
        if any(b is None for b in boxes) or not boxes_tile(shape, [tuple(map(tuple, b)) for b in boxes]):
            # Fallback (collective on the tensor's mesh): everyone materialises, owner hashes.
            full = state[name].full_tensor() if name in state and descs[me]["dtensor"] else None
            stats["fallback"] += 1
            if full is not None:
                stats["bytes_max"] = max(stats["bytes_max"], full.numel() * full.element_size())
            if me == owner:
                owned.append((name, _hash_full(name, dtype, full if full is not None else state[name])))
            del full
            continue
        # One sender per distinct box: the lowest rank holding it.
        senders: dict[Box, int] = {}
        for r in holders:
            b = (tuple(descs[r]["box"][0]), tuple(descs[r]["box"][1]))
            if math.prod(b[1]) > 0:
                senders.setdefault(b, r)
        stats["boxes"] += 1
        if me == owner:
            full = torch.empty(shape, dtype=_local(state[name]).dtype)
            stats["bytes_max"] = max(stats["bytes_max"], full.numel() * full.element_size())
            for (offset, bshape), r in senders.items():
                idx = tuple(slice(o, o + n) for o, n in zip(offset, bshape, strict=True))
                if r == me:
                    full[idx] = _local(state[name]).detach().cpu()
                    continue
                dev = _local(state[name]).device
                buf = torch.empty(math.prod(bshape) * full.element_size(), dtype=torch.uint8, device=dev)
                dist.recv(buf, group=group, group_src=r)
                full[idx] = buf.cpu().view(full.dtype).view(bshape)
                del buf
            owned.append((name, _hash_full(name, dtype, full)))
            del full
        elif me in senders.values():
            # Blocking sends in one global order (tensor, then sender rank): cannot deadlock.
            dist.send(_as_bytes(_local(state[name])), group=group, group_dst=owner)
    gathered: list[list[tuple[str, bytes]] | None] = [None] * world
    dist.all_gather_object(gathered, owned, group=group)
    leaves = dict(pair for part in gathered for pair in part)  # type: ignore[union-attr]
    return [(n, leaves[n]) for n in canonical_order(leaves)]

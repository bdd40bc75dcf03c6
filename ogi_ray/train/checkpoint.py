"""Sharded checkpoints through pyarrow.fs: each rank writes only its own shards, loading
reshards to any layout, and the weights root is computed without gathering.

    RUN/step_000010/                 (a folder of the run's Store: local or s3://…)
      model/shard-<r+1>-….safetensors   global rank r's chunks of the logical weights
      optim/shard-<r+1>-….safetensors   its chunks of the AdamW state, as tensors named
                                        "<param>.exp_avg", "<param>.exp_avg_sq", "<param>.step"
      world_target.safetensors          the EMA target encoder (small, replicated; rank 0)
      leaves.json                       tensor name → Merkle leaf (names a tampered tensor)
      train_state.json                  step, data cursor, RNG, λ, tuner, GNS, optimizer
                                        hyper-parameters, scheduler (rank 0)
      segment.json, lineage.json        written by train/lineage_hook.py

    save: every rank ─► DCP save plan (replicas written once) ─► ShardWriter (its own
          files, hashed as they are written; ``save_async``: staged host copies written
          by a thread while training goes on) ─► sharded_weights_leaves (one owner per
          tensor hashes it, lineage/sharded.py) ─► root ─► rank 0's small files ─► every
          rank's {file: sha256} gathered on rank 0 (the record's ``files``)
    load: shard headers read once on rank 0 and broadcast ─► DCP load plan against this
          rank's (DTensor) shards ─► ShardReader range reads ─► the same for the optimizer

Peak host memory on a rank: its own shards plus one tensor (a chunk being written or
read, or the full tensor it owns while hashing), whatever the model size.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import random
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from ogi_ray.lineage.merkle import merkle_root
from ogi_ray.lineage.shards import shard_index
from ogi_ray.storage import Store
from ogi_ray.train.shard_io import ShardReader, ShardWriter

WEIGHTS_DIR = "model"
OPTIM_DIR = "optim"
WEIGHTS_FORMAT = "safetensors-sharded-v1"
TRAIN_STATE = "train_state.json"
LEAVES = "leaves.json"
WORLD_TARGET = "world_target.safetensors"


def _dist() -> bool:
    return dist.is_available() and dist.is_initialized()


def _rank() -> int:
    return dist.get_rank() if _dist() else 0


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """``obj`` from global rank ``src`` on every rank (CPU object collective)."""
    if not _dist() or dist.get_world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def gather_to_rank0(obj: Any) -> list[Any]:
    """Every rank's ``obj`` as a list on rank 0; [] elsewhere."""
    if not _dist() or dist.get_world_size() == 1:
        return [obj]
    out: list[Any] | None = [None] * dist.get_world_size() if _rank() == 0 else None
    dist.gather_object(obj, out, dst=0)
    return out or []


# ── RNG ─────────────────────────────────────────────────────────────────────────────


def seed_globals(seed: int, rank: int) -> None:
    """Seed the process-wide RNGs (torch, numpy, python) from (seed, rank). The step
    draws nothing from them (every random number comes from a generator seeded by
    (seed, step, dp rank): train/data.py), so this only keeps any library that does
    reproducible."""
    s = (seed * 1_000_003 + rank) % 2**32
    torch.manual_seed(s)
    np.random.seed(s)
    random.seed(s)


def rng_commitment(seed: int) -> str:
    """The record's commitment to the run's randomness: SHA-256 of the canonical rule
    every random draw follows (the seed, the per-step data generators, the per-tensor
    initialisation). Two runs with the same seed commit to the same randomness; a state
    snapshot of a generator the step never uses would commit to nothing."""
    from ogi_ray.canonical import hash_canonical

    return hash_canonical({
        "seed": seed, "data": "torch.Generator().manual_seed((seed * 1000003 + step) * 1009 + dp_rank)",
        "init": "torch.Generator().manual_seed(int.from_bytes(sha256(f'{seed}|{name}')[:8], 'little'))",
    })  # fmt: skip


# ── state dicts as flat tensor maps ─────────────────────────────────────────────────


def model_state(module: nn.Module) -> dict[str, Any]:
    """The module's weights by plain-model name, as they live on this rank (DTensor
    shards under FSDP/TP; a pipeline stage has only its own names)."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    return get_model_state_dict(module)


def optim_state(module: nn.Module, opt: torch.optim.Optimizer) -> tuple[dict[str, Any], dict[str, Any]]:
    """(tensors, nested): the AdamW state as flat tensors ``"<param>.<key>"`` sharded like
    the parameters, and the nested dict they came from (to set back after loading in
    place). On a fresh optimizer torch initialises the state first, so its shapes exist."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    nested = get_optimizer_state_dict(module, opt)
    flat = {f"{p}.{k}": v for p, st in nested["state"].items() for k, v in st.items() if isinstance(v, torch.Tensor)}
    return flat, nested


def _hyper(nested: dict[str, Any]) -> list[dict[str, Any]]:
    """Optimizer hyper-parameters per param group (the lr the schedule set, betas, ...)."""
    return [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items() if k != "params"}
            for g in nested["param_groups"]]  # fmt: skip


# ── save ────────────────────────────────────────────────────────────────────────────


@dataclass
class Saved:
    root: str  # weights Merkle root (every rank)
    leaves: list[tuple[str, bytes]]  # (name, leaf) in canonical order (every rank)
    files: dict[str, str] = field(default_factory=dict)  # relpath → SHA-256, rank 0 only


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """DCP warns on every single-process save/load that it assumes one process: it is."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        yield


@dataclass
class Pending:
    """A checkpoint whose shards may still be being written in the background:
    ``result()`` (collective: every rank calls it at the same step) waits for them and
    gathers every rank's file hashes on rank 0."""

    root: str
    leaves: list[tuple[str, bytes]]
    files: dict[str, str]  # this rank's files written so far (the small ones)
    writers: list[tuple[str, ShardWriter]]  # (folder, writer)

    def result(self) -> Saved:
        files = dict(self.files)
        for folder, w in self.writers:
            w.join()
            files |= {f"{folder}/{k}": v for k, v in w.written.items()}
        merged: dict[str, str] = {}
        for part in gather_to_rank0(files):
            merged |= part
        return Saved(root=self.root, leaves=self.leaves, files=merged)


def _save_tensors(store: Store, folder: str, tensors: dict[str, Any], background: bool) -> ShardWriter:
    import torch.distributed.checkpoint as dcp

    writer = ShardWriter(store.sub(folder), _rank(), background=background)
    with _quiet():
        dcp.save(tensors, storage_writer=writer, no_dist=not _dist())
    return writer


def _small_file(store: Store, rel: str, data: bytes) -> dict[str, str]:
    store.write_atomic(rel, data)
    return {rel: hashlib.sha256(data).hexdigest()}


def save(
    store: Store, module: nn.Module, opt: torch.optim.Optimizer, sched: Any, *,
    train_state: dict[str, Any], world_target: nn.Module | None,
) -> Saved:  # fmt: skip
    """Write the checkpoint folder ``store`` (collective: every rank calls it)."""
    return save_async(store, module, opt, sched, train_state=train_state, world_target=world_target,
                      background=False).result()  # fmt: skip


def save_async(
    store: Store, module: nn.Module, opt: torch.optim.Optimizer, sched: Any, *,
    train_state: dict[str, Any], world_target: nn.Module | None, background: bool = True,
) -> Pending:  # fmt: skip
    """``save``, returning once the state is staged (collective). With ``background`` the
    shards are written by threads while training goes on; the weights root is computed
    now, before the next optimizer step changes the weights."""
    from safetensors.torch import save as st_save

    from ogi_ray.lineage.sharded import sharded_weights_leaves

    weights = model_state(module)
    writers = [(WEIGHTS_DIR, _save_tensors(store, WEIGHTS_DIR, weights, background))]
    flat, nested = optim_state(module, opt)
    writers.append((OPTIM_DIR, _save_tensors(store, OPTIM_DIR, flat, background)))
    leaves = sharded_weights_leaves(weights)
    files: dict[str, str] = {}
    if _rank() == 0:
        state = {**train_state, "optim_groups": _hyper(nested), "sched": sched.state_dict()}
        files |= _small_file(store, TRAIN_STATE, json.dumps(state).encode())
        files |= _small_file(store, LEAVES, json.dumps({n: v.hex() for n, v in leaves}, indent=0).encode())
        if world_target is not None:
            wt = {k: v.detach().cpu().contiguous() for k, v in world_target.state_dict().items()}
            files |= _small_file(store, WORLD_TARGET, st_save(wt))
    return Pending(root=merkle_root([leaf for _, leaf in leaves]), leaves=leaves, files=files, writers=writers)


# ── load ────────────────────────────────────────────────────────────────────────────


def read_train_state(store: Store) -> dict[str, Any]:
    return json.loads(store.read_bytes(TRAIN_STATE))


def _load_tensors(store: Store, tensors: dict[str, Any]) -> None:
    import torch.distributed.checkpoint as dcp

    index = broadcast_object(shard_index(store) if _rank() == 0 else None)
    with _quiet():
        dcp.load(tensors, storage_reader=ShardReader(store, index), no_dist=not _dist())


def load_weights(store: Store, module: nn.Module) -> None:
    """The checkpoint's weights into ``module``'s layout (any layout: DCP reshards)."""
    from torch.distributed.checkpoint.state_dict import set_model_state_dict

    weights = model_state(module)
    _load_tensors(store.sub(WEIGHTS_DIR), weights)
    set_model_state_dict(module, weights)


def load(
    store: Store, module: nn.Module, opt: torch.optim.Optimizer, sched: Any, world_target: nn.Module | None,
) -> dict[str, Any]:  # fmt: skip
    """Load a checkpoint written by ``save`` (at any world size and layout) into this
    rank's module, optimizer, scheduler and EMA target; returns the train state."""
    from safetensors.torch import load as st_load
    from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

    load_weights(store, module)
    flat, nested = optim_state(module, opt)
    _load_tensors(store.sub(OPTIM_DIR), flat)  # in place: ``nested`` holds the same tensors
    state = read_train_state(store)
    for group, hyper in zip(nested["param_groups"], state["optim_groups"], strict=True):
        group.update({k: (tuple(v) if k == "betas" else v) for k, v in hyper.items()})
    set_optimizer_state_dict(module, opt, nested)
    sched.load_state_dict(state["sched"])
    if world_target is not None and store.is_file(WORLD_TARGET):
        world_target.load_state_dict(st_load(store.read_bytes(WORLD_TARGET)))
    return state

"""Checkpoint save/load from full (unsharded) state dicts, whatever the parallel layout.

    model.safetensors   logical fp32 weights (what the lineage hashes and verifies)
    leaves.json         name → Merkle leaf hash (names a tampered tensor on verify)
    optim.pt            full optimizer + scheduler state
    train_state.json    step, data cursor, RNG states (torch, numpy, python)

All ranks take part in gathering (collectives); only rank 0 writes.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ogi_ray.lineage.merkle import merkle_root, tensor_leaves

WEIGHTS_FILE = "model.safetensors"



def rng_state() -> dict[str, Any]:
    """JSON-serialisable RNG states (torch CPU, numpy, python) of this process."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_py = random.getstate()
    return {
        "torch": torch.get_rng_state().tolist(),
        "numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(gauss)],
        "python": [version, list(internal), gauss_py],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_py = state["python"]
    random.setstate((version, tuple(internal), gauss_py))


def rng_commitment() -> str:
    import hashlib

    return hashlib.sha256(torch.get_rng_state().numpy().tobytes()).hexdigest()


def save(
    ckpt_dir: Path, model: nn.Module, opt: torch.optim.Optimizer, sched: Any,
    train_state: dict[str, Any], rank: int, mesh: Any = None,
) -> str:  # fmt: skip
    """Write the checkpoint (rank 0) and return the weights Merkle root (rank 0; "" elsewhere).

    The full logical state is gathered on global rank 0 whatever the layout (FSDP, TP,
    pipeline stages): the file format is the single-process one, so a checkpoint loads
    into any other layout."""
    from safetensors.torch import save_file

    from ogi_ray.parallel.apply import gather_full_optimizer_state, gather_full_state_dict

    state = gather_full_state_dict(model, mesh)
    optim_state = gather_full_optimizer_state(model, opt, mesh)
    if rank != 0:
        return ""
    leaves = tensor_leaves(state)
    root = merkle_root([leaf for _, leaf in leaves])
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(ckpt_dir / WEIGHTS_FILE))
    (ckpt_dir / "leaves.json").write_text(json.dumps({n: leaf.hex() for n, leaf in leaves}, indent=0))
    torch.save({"optim": optim_state, "sched": sched.state_dict()}, ckpt_dir / "optim.pt")
    (ckpt_dir / "train_state.json").write_text(json.dumps(train_state))
    return root


def load(ckpt_dir: Path, model: nn.Module, opt: torch.optim.Optimizer, sched: Any) -> dict[str, Any]:
    """Load a checkpoint written by ``save`` into any layout; every rank passes the full
    dicts and each module (stage, shard) takes its own part."""
    from safetensors.torch import load_file

    from ogi_ray.parallel.apply import load_full_optimizer_state, load_full_state_dict

    load_full_state_dict(model, load_file(str(ckpt_dir / WEIGHTS_FILE)))
    extra = torch.load(ckpt_dir / "optim.pt", weights_only=False)
    load_full_optimizer_state(model, opt, extra["optim"])
    sched.load_state_dict(extra["sched"])
    return json.loads((ckpt_dir / "train_state.json").read_text())

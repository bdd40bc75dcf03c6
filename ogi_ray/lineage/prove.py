"""Merkle inclusion proofs: one tensor of one checkpoint against its record's weights root.

    prove(run, step, tensor)
      record at ``step`` on the chain from HEAD ─► its weights file (safetensors bytes)
      ─► every leaf recomputed from the bytes ─► sibling path of ``tensor``'s leaf
      ─► {leaf, path, root, ok: path folds the leaf to record.weights_root}

Someone holding only the tensor's bytes (``pieces`` say in which files and byte ranges
they sit, so HTTP range reads are enough), the proof and the record can check it: hash the leaf
(docs/lineage.md, "Leaf"), fold the path (``check_proof``), compare with the record's
``weights_root``, and the record hash with the chain.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from ogi_ray.lineage.merkle import merkle_proof, merkle_root
from ogi_ray.lineage.record import read_head, read_record
from ogi_ray.lineage.verify import run_store
from ogi_ray.lineage.weights import Weights


class ProofError(LookupError):
    pass


def fold(leaf_hex: str, path: list[dict[str, str]]) -> str:
    """The root that ``path`` folds ``leaf_hex`` to (node = SHA-256(0x01 ‖ left ‖ right))."""
    node = bytes.fromhex(leaf_hex)
    for step in path:
        sib = bytes.fromhex(step["hash"])
        pair = sib + node if step["side"] == "L" else node + sib
        node = hashlib.sha256(b"\x01" + pair).digest()
    return node.hex()


def check_proof(proof: dict[str, Any]) -> bool:
    """True when the proof's path folds its leaf to its root."""
    return fold(proof["leaf"], proof["path"]) == proof["root"]


def _record(store: Any, step: int) -> tuple[str, dict[str, Any]]:
    ldir = store.sub("lineage")
    h = read_head(ldir)
    while h:
        rec = read_record(ldir, h)
        if rec["step"] == step:
            return h, rec
        h = rec["parent"]
    raise ProofError(f"{ldir.uri}: no record at step {step} on the chain")


def tensor_names(run: str | Path, step: int) -> list[str]:
    """The tensors of the checkpoint recorded at ``step``, in canonical order."""
    store = run_store(run)
    return Weights(store, _record(store, step)[1]).names()


def prove(run: str | Path, step: int, tensor: str) -> dict[str, Any]:
    """Inclusion proof of ``tensor`` in the checkpoint recorded at ``step`` (JSON-ready);
    ``ok`` says whether it checks against the record's ``weights_root``."""
    store = run_store(run)
    h, rec = _record(store, step)
    weights = Weights(store, rec)
    named = list(weights.leaves())
    names, leaves = [n for n, _ in named], [leaf for _, leaf in named]
    if tensor not in names:
        raise ProofError(f"{weights.where}: no tensor {tensor!r} (it has {len(names)}: {', '.join(names)})")
    i = names.index(tensor)
    dtype, shape = weights.info(tensor)
    path = merkle_proof(leaves, i)
    proof = {
        "run": rec["run"], "step": step, "record_hash": h, "checkpoint": rec["checkpoint"],
        "weights_file": rec["weights_file"], "weights_format": weights.format, "tensor": tensor,
        "dtype": dtype, "shape": list(shape), "nbytes": len(memoryview(weights.data(tensor)).cast("B")),
        "pieces": weights.pieces(tensor), "index": i, "leaves": len(leaves), "leaf": leaves[i].hex(),
        "path": path, "root": rec["weights_root"],
    }  # fmt: skip
    proof["ok"] = check_proof(proof) and merkle_root(leaves) == rec["weights_root"]
    return proof

"""Layout-invariant weight hash: a Merkle root over logical tensors in name order.

    leaf_i = SHA-256(0x00 ‖ name ‖ 0x00 ‖ dtype ‖ 0x00 ‖ shape ‖ 0x00 ‖ little-endian bytes)
             name UTF-8; dtype a safetensors code (F32, BF16, ...); shape "d0,d1,..."
    node   = SHA-256(0x01 ‖ left ‖ right)          (RFC 6962-style domain separation)
    an odd node at the end of a level is carried up unchanged

Leaves are sorted by tensor name (byte order of UTF-8). The root depends only on the
logical (unsharded) tensors, so any parallel layout holding the same weights hashes
the same. ``leaves_from_safetensors`` reads a saved file without torch, which is what a
third-party verifier does (docs/lineage.md).
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Iterable
from pathlib import Path

import numpy as np

TORCH_TO_ST = {
    "torch.float32": "F32", "torch.float16": "F16", "torch.bfloat16": "BF16",
    "torch.float64": "F64", "torch.int64": "I64", "torch.int32": "I32",
    "torch.int16": "I16", "torch.int8": "I8", "torch.uint8": "U8", "torch.bool": "BOOL",
}  # fmt: skip


def leaf_hash(name: str, dtype: str, shape: Iterable[int], data: bytes | memoryview) -> bytes:
    h = hashlib.sha256()
    h.update(b"\x00" + name.encode("utf-8") + b"\x00" + dtype.encode() + b"\x00")
    h.update(",".join(str(int(d)) for d in shape).encode() + b"\x00")
    h.update(data)
    return h.digest()


def merkle_levels(leaves: list[bytes]) -> list[list[bytes]]:
    """All levels, leaves first, root last (a single-element list)."""
    if not leaves:
        return [[hashlib.sha256(b"").digest()]]
    levels = [list(leaves)]
    while len(levels[-1]) > 1:
        cur, nxt = levels[-1], []
        for i in range(0, len(cur) - 1, 2):
            nxt.append(hashlib.sha256(b"\x01" + cur[i] + cur[i + 1]).digest())
        if len(cur) % 2:
            nxt.append(cur[-1])
        levels.append(nxt)
    return levels


def merkle_root(leaves: list[bytes]) -> str:
    return merkle_levels(leaves)[-1][0].hex()


def merkle_proof(leaves: list[bytes], index: int) -> list[dict[str, str]]:
    """Sibling path proving ``leaves[index]``: [{"side": "L"|"R", "hash": hex}, ...]."""
    path = []
    for level in merkle_levels(leaves)[:-1]:
        sib = index ^ 1
        if sib < len(level):
            path.append({"side": "L" if sib < index else "R", "hash": level[sib].hex()})
        index //= 2
    return path


def verify_proof(leaf: bytes, proof: list[dict[str, str]], root_hex: str) -> bool:
    node = leaf
    for step in proof:
        sib = bytes.fromhex(step["hash"])
        node = hashlib.sha256(b"\x01" + (sib + node if step["side"] == "L" else node + sib)).digest()
    return node.hex() == root_hex


def tensor_leaves(state: dict) -> list[tuple[str, bytes]]:
    """(name, leaf) for a state dict of full (unsharded) CPU torch tensors, name-sorted."""
    out = []
    for name in sorted(state, key=lambda n: n.encode("utf-8")):
        t = state[name].detach().cpu().contiguous()
        dtype = TORCH_TO_ST[str(t.dtype)]
        # view as bytes: works for bf16, which numpy cannot represent. x86/ARM are LE.
        data = t.view(-1).view(__import__("torch").uint8).numpy().tobytes() if t.numel() else b""
        out.append((name, leaf_hash(name, dtype, t.shape, data)))
    return out


def weights_root(state: dict) -> str:
    return merkle_root([leaf for _, leaf in tensor_leaves(state)])


def leaves_from_safetensors(path: str | Path) -> list[tuple[str, bytes]]:
    """(name, leaf) for every tensor of a .safetensors file, computed from its bytes alone."""
    raw = Path(path).read_bytes()
    if len(raw) < 8:
        raise ValueError(f"{path}: truncated safetensors file")
    (n,) = struct.unpack("<Q", raw[:8])
    try:
        header = json.loads(raw[8 : 8 + n])
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: corrupt safetensors header ({e})") from e
    body = memoryview(raw)[8 + n :]
    out = []
    for name in sorted((k for k in header if k != "__metadata__"), key=lambda k: k.encode()):
        info = header[name]
        start, end = info["data_offsets"]
        if not (0 <= start <= end <= len(body)):
            raise ValueError(f"{path}: tensor {name!r} offsets out of range")
        out.append((name, leaf_hash(name, info["dtype"], info["shape"], body[start:end])))
    return out


def as_numpy_bytes(arr: np.ndarray) -> bytes:
    return np.ascontiguousarray(arr).astype(arr.dtype.newbyteorder("<")).tobytes()

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
DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1,
               "U8": 1, "BOOL": 1}  # fmt: skip


def leaf_hash(name: str, dtype: str, shape: Iterable[int], data: bytes | memoryview | np.ndarray) -> bytes:
    """SHA-256(0x00 ‖ name ‖ 0x00 ‖ dtype ‖ 0x00 ‖ shape ‖ 0x00 ‖ data); ``data`` any buffer."""
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
    """(name, leaf) for a state dict of full (unsharded) torch tensors, name-sorted."""
    import torch

    out = []
    for name in sorted(state, key=lambda n: n.encode("utf-8")):
        t = state[name].detach().cpu().contiguous()
        dtype = TORCH_TO_ST[str(t.dtype)]
        # A uint8 view of the storage (works for bf16, which numpy lacks) handed to hashlib
        # as a buffer: no copy of the bytes. x86/ARM are little-endian.
        data = t.view(-1).view(torch.uint8).numpy() if t.numel() else b""
        out.append((name, leaf_hash(name, dtype, t.shape, data)))
    return out


def weights_root(state: dict) -> str:
    return merkle_root([leaf for _, leaf in tensor_leaves(state)])


def leaves_from_safetensors(path: str | Path | bytes) -> list[tuple[str, bytes]]:
    """(name, leaf) for every tensor of a .safetensors file (a path, or its bytes),
    computed from the bytes alone, name-sorted."""
    raw = path if isinstance(path, bytes) else Path(path).read_bytes()
    where = "safetensors bytes" if isinstance(path, bytes) else str(path)
    return [(name, leaf_hash(name, dt, shape, data)) for name, dt, shape, data in read_safetensors(raw, where)]


def parse_header(raw: bytes | memoryview, data_size: int, where: str = "safetensors") -> tuple[dict, list[tuple[str, str, list[int], int, int]]]:
    """The header of a safetensors file from its JSON bytes ``raw`` (the N bytes after
    the u64 length) and the size of its data area: (``__metadata__`` or {}, entries
    (name, dtype, shape, start, end) name-sorted, offsets relative to the data area).

    Checked: offsets in range, byte lengths match dtype × shape, and the tensors tile the
    data area exactly (no unhashed gap, overlap or trailing bytes)."""
    try:
        header = json.loads(bytes(raw))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{where}: corrupt safetensors header ({e})") from e
    if not isinstance(header, dict):
        raise ValueError(f"{where}: safetensors header is not a JSON object")
    meta = header.get("__metadata__") or {}
    if not isinstance(meta, dict):
        raise ValueError(f"{where}: __metadata__ is not a JSON object")
    out, spans = [], []
    for name in sorted((k for k in header if k != "__metadata__"), key=lambda k: k.encode()):
        info = header[name]
        try:
            start, end = (int(x) for x in info["data_offsets"])
            dtype, shape = str(info["dtype"]), [int(d) for d in info["shape"]]
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{where}: tensor {name!r} has a malformed header entry ({e})") from e
        if not (0 <= start <= end <= data_size):
            raise ValueError(f"{where}: tensor {name!r} offsets out of range")
        width = DTYPE_BYTES.get(dtype)
        need = None if width is None else width * int(np.prod(shape, dtype=np.int64))
        if need is not None and end - start != need:
            raise ValueError(f"{where}: tensor {name!r} has {end - start} bytes, {dtype}{shape} needs {need}")
        spans.append((start, end))
        out.append((name, dtype, shape, start, end))
    covered = 0
    for start, end in sorted(spans):
        if start != covered:
            raise ValueError(f"{where}: data area has a gap or overlap at byte {covered}")
        covered = end
    if covered != data_size:
        raise ValueError(f"{where}: {data_size - covered} bytes after the last tensor")
    return meta, out


def header_length(first8: bytes, file_size: int, where: str) -> int:
    """N from the u64 little-endian prefix, checked against the file size."""
    if len(first8) < 8 or file_size < 8:
        raise ValueError(f"{where}: truncated safetensors file")
    (n,) = struct.unpack("<Q", first8[:8])
    if 8 + n > file_size:
        raise ValueError(f"{where}: header length {n} runs past the end of the file")
    return n


def read_safetensors(raw: bytes, where: str = "safetensors") -> list[tuple[str, str, list[int], memoryview]]:
    """(name, dtype, shape, data) of every tensor of a whole file's bytes, name-sorted,
    checking the header (``parse_header``)."""
    n = header_length(raw[:8], len(raw), where)
    body = memoryview(raw)[8 + n :]
    _, entries = parse_header(memoryview(raw)[8 : 8 + n], len(body), where)
    return [(name, dtype, shape, body[start:end]) for name, dtype, shape, start, end in entries]


def as_numpy_bytes(arr: np.ndarray) -> bytes:
    return np.ascontiguousarray(arr).astype(arr.dtype.newbyteorder("<")).tobytes()

"""Sharded safetensors weights, read without torch: what the trainer writes per rank and
what a third-party verifier re-hashes (format: docs/lineage.md §2).

A sharded weights folder holds one or more ``*.safetensors`` files (one per rank that
held parameters: ``shard-00001-model-00001-of-00001.safetensors`` …, the Hugging Face
DCP layout that torch's ``HuggingFaceStorageReader`` also reads). Each file's
``__metadata__`` carries ``DCP_SHARDING_INFO``, a JSON object giving, for every tensor
in that file, ``saved_offsets``: where the stored piece sits in the logical tensor.

    folder ─► every file's header (one range read each: 8 bytes, then N bytes)
      ─► ShardIndex: tensor name ─► logical shape = max(offset + piece shape) per dim,
         dtype, pieces [(file, offset, shape, byte range)]; the pieces must tile the
         logical tensor exactly (no gap, no overlap) and share one dtype
      ─► assemble(name): a buffer of the full tensor's bytes in C order, each piece copied
         into its box (one tensor in memory at a time) ─► Merkle leaf (merkle.leaf_hash)

``read_rows`` returns a contiguous run of a piece's rows (dim 0), the unit a resharding
loader needs: a box of the piece is a slice of those rows.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

import numpy as np

from ogi_ray.lineage.merkle import DTYPE_BYTES, header_length, leaf_hash, parse_header
from ogi_ray.storage import Store

SUFFIX = ".safetensors"
SHARDING_KEY = "DCP_SHARDING_INFO"
OFFSETS_KEY = "saved_offsets"


class ShardError(ValueError):
    """A sharded weights folder does not follow the format (names the file and tensor)."""


@dataclass(frozen=True)
class Piece:
    file: str  # name of the shard file inside the folder
    offset: tuple[int, ...]  # where the piece starts in the logical tensor
    shape: tuple[int, ...]
    begin: int  # byte range of its data in the file (absolute offsets)
    end: int


@dataclass
class TensorInfo:
    name: str
    dtype: str
    shape: tuple[int, ...] = ()
    pieces: list[Piece] = field(default_factory=list)

    @property
    def nbytes(self) -> int:
        return DTYPE_BYTES[self.dtype] * math.prod(self.shape)


def _read_header(store: Store, rel: str) -> tuple[dict, list, int]:
    where = store.where(rel)
    size = store.size(rel)
    with store.open_input(rel) as f:
        n = header_length(f.read_at(8, 0), size, where)
        meta, entries = parse_header(f.read_at(n, 8), size - 8 - n, where)
    return meta, entries, 8 + n


def _offsets(meta: dict, names: list[str], where: str) -> dict[str, tuple[int, ...]]:
    raw = meta.get(SHARDING_KEY)
    if raw is None:
        raise ShardError(f"{where}: __metadata__ has no {SHARDING_KEY} (not a sharded weights file)")
    try:
        info = json.loads(raw)
        offs = {k: tuple(int(o) for o in v[OFFSETS_KEY]) for k, v in info.items()}
    except (TypeError, ValueError, KeyError, AttributeError) as e:
        raise ShardError(f"{where}: {SHARDING_KEY} is malformed ({e})") from e
    if set(offs) != set(names):
        raise ShardError(f"{where}: {SHARDING_KEY} lists {sorted(set(offs) ^ set(names))} differently from the header")
    return offs


Box = tuple[tuple[int, ...], tuple[int, ...]]  # (offset, shape) in the logical tensor


def boxes_tile(shape: tuple[int, ...], boxes: list[Box], *, dedup: bool = True) -> bool:
    """True when the non-empty ``boxes`` lie inside ``shape``, do not overlap and cover it
    exactly. ``dedup``: identical boxes count once (replicated shards of a live model);
    pieces read from files pass ``dedup=False``, so a duplicated piece is an overlap."""
    numel = math.prod(shape)
    boxes = [b for b in (dict.fromkeys(boxes) if dedup else boxes) if math.prod(b[1]) > 0]
    if numel == 0:
        return True
    if not boxes:
        return False
    lo = np.array([b[0] for b in boxes], dtype=np.int64).reshape(len(boxes), len(shape))
    hi = lo + np.array([b[1] for b in boxes], dtype=np.int64).reshape(len(boxes), len(shape))
    if (lo < 0).any() or (hi > np.array(shape, dtype=np.int64)).any():
        return False
    if int(np.prod(hi - lo, axis=1).sum()) != numel:
        return False
    # Equal total volume and no pairwise overlap ⇔ an exact cover. Boxes i != j overlap
    # when they overlap on every axis (vectorised over all pairs).
    over = ((lo[:, None, :] < hi[None, :, :]) & (lo[None, :, :] < hi[:, None, :])).all(axis=2)
    np.fill_diagonal(over, False)
    return not over.any()


def shard_index(store: Store) -> dict[str, TensorInfo]:
    """name → TensorInfo for the sharded weights folder ``store`` (checked, see module)."""
    files = [f for f in store.list_files() if f.endswith(SUFFIX)]
    if not files:
        raise ShardError(f"{store.uri}: no {SUFFIX} shard files")
    tensors: dict[str, TensorInfo] = {}
    for rel in files:
        meta, entries, data_start = _read_header(store, rel)
        offs = _offsets(meta, [e[0] for e in entries], store.where(rel))
        for name, dtype, shape, start, end in entries:
            if len(offs[name]) != len(shape):
                raise ShardError(f"{store.where(rel)}: tensor {name!r}: offsets {list(offs[name])} for shape {shape}")
            t = tensors.setdefault(name, TensorInfo(name, dtype))
            if t.dtype != dtype:
                raise ShardError(f"{store.where(rel)}: tensor {name!r} is {dtype} here, {t.dtype} in {t.pieces[0].file}")
            t.pieces.append(Piece(rel, offs[name], tuple(shape), data_start + start, data_start + end))
    for t in tensors.values():
        t.shape = tuple(max(p.offset[d] + p.shape[d] for p in t.pieces) for d in range(len(t.pieces[0].shape)))
        if not boxes_tile(t.shape, [(p.offset, p.shape) for p in t.pieces], dedup=False):
            raise ShardError(f"{store.uri}: tensor {t.name!r}: its pieces do not tile {list(t.shape)} exactly")
    return dict(sorted(tensors.items(), key=lambda kv: kv[0].encode("utf-8")))


def read_rows(store: Store, t: TensorInfo, piece: Piece, lo: int, hi: int) -> np.ndarray:
    """Rows [lo, hi) of ``piece`` (dim 0, relative to the piece) as raw bytes of shape
    (hi - lo, *piece.shape[1:], itemsize) in uint8: one contiguous range read."""
    itemsize = DTYPE_BYTES[t.dtype]
    row = itemsize * math.prod(piece.shape[1:])
    if not piece.shape:  # a 0-dim tensor is one element
        lo, hi, row = 0, 1, itemsize
    with store.open_input(piece.file) as f:
        buf = f.read_at((hi - lo) * row, piece.begin + lo * row)
    data = np.frombuffer(buf, dtype=np.uint8)
    return data.reshape((hi - lo, *piece.shape[1:], itemsize)) if piece.shape else data.reshape(itemsize)


def assemble(store: Store, t: TensorInfo) -> np.ndarray:
    """The logical tensor's bytes in C order (uint8, length t.nbytes), from its pieces."""
    itemsize = DTYPE_BYTES[t.dtype]
    full = np.empty((*t.shape, itemsize), dtype=np.uint8)
    for p in t.pieces:
        if not math.prod(p.shape):
            continue
        box = tuple(slice(o, o + n) for o, n in zip(p.offset, p.shape, strict=True))
        full[box] = read_rows(store, t, p, 0, p.shape[0] if p.shape else 1)
    return full.reshape(-1)


def leaves_from_shards(store: Store) -> list[tuple[str, bytes]]:
    """(name, Merkle leaf) of every logical tensor of the folder, name-sorted; one full
    tensor in memory at a time."""
    return [(t.name, leaf_hash(t.name, t.dtype, t.shape, assemble(store, t))) for t in shard_index(store).values()]

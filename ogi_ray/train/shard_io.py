"""torch.distributed.checkpoint storage for sharded safetensors on any pyarrow.fs URI.

DCP plans which rank saves which chunk of which tensor (deduplicating replicas) and,
on load, which stored chunk overlaps which local shard (resharding to any layout).
These two classes only move bytes, through ``ogi_ray.storage.Store``:

    ShardWriter: rank r's planned chunks ─► ``shard-{r+1:05d}-model-00001-of-00001.safetensors``
        header first (computed from the chunk shapes), then each chunk's bytes streamed one
        tensor at a time (no second copy of the shard), SHA-256 computed as written
    ShardReader: every shard header (lineage.shards.shard_index) ─► DCP Metadata; each
        ReadItem ─► one range read of the rows it needs ─► copied into the local shard

The files are the Hugging Face DCP layout (``DCP_SHARDING_INFO`` offsets in the
``__metadata__``), which torch's own ``HuggingFaceStorageReader`` reads from a local
folder too; docs/lineage.md §2 specifies them for verifiers without torch.
"""

from __future__ import annotations

import hashlib
import json
import threading
from typing import Any

import numpy as np
import torch
from torch.distributed.checkpoint.metadata import (
    ChunkStorageMetadata,
    Metadata,
    MetadataIndex,
    StorageMeta,
    TensorProperties,
    TensorStorageMetadata,
)
from torch.distributed.checkpoint.planner import (
    LoadPlan,
    LoadPlanner,
    SavePlan,
    SavePlanner,
    WriteItemType,
)
from torch.distributed.checkpoint.storage import StorageReader, StorageWriter, WriteResult
from torch.futures import Future

from ogi_ray.lineage.merkle import TORCH_TO_ST
from ogi_ray.lineage.shards import OFFSETS_KEY, SHARDING_KEY, TensorInfo, read_rows, shard_index
from ogi_ray.storage import Store

ST_TO_TORCH = {v: getattr(torch, k.removeprefix("torch.")) for k, v in TORCH_TO_ST.items()}


def shard_file_name(rank: int) -> str:
    """The Hugging Face DCP name of global rank ``rank``'s file."""
    return f"shard-{rank + 1:05d}-model-00001-of-00001.safetensors"


def _header(items: list[tuple[str, torch.Tensor, tuple[int, ...]]]) -> bytes:
    """Safetensors header bytes (u64 length + JSON padded to 8 bytes) for the chunks
    ``(fqn, tensor, offsets)`` laid out in that order."""
    header: dict[str, Any] = {}
    pos = 0
    for fqn, t, _ in items:
        n = t.numel() * t.element_size()
        header[fqn] = {"dtype": TORCH_TO_ST[str(t.dtype)], "shape": list(t.shape), "data_offsets": [pos, pos + n]}
        pos += n
    header["__metadata__"] = {
        SHARDING_KEY: json.dumps({fqn: {OFFSETS_KEY: list(off)} for fqn, _, off in items}),
        "DCP_VERSION": "1.0", "format": "pt",
    }  # fmt: skip
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # safetensors pads the header to 8-byte alignment
    return len(raw).to_bytes(8, "little") + raw


def _tensor_bytes(t: torch.Tensor) -> memoryview:
    """A little-endian byte view of a CPU tensor's elements (no copy when contiguous)."""
    t = t.detach().contiguous()
    return memoryview(t.view(-1).view(torch.uint8).numpy()) if t.numel() else memoryview(b"")


class ShardWriter(StorageWriter):
    """Writes this rank's planned chunks as one safetensors shard into ``store``; after
    ``dcp.save`` (and ``join()`` when ``background``), ``written`` maps the file's name
    to its SHA-256.

    ``background``: the chunks are staged as host copies (one more copy of this rank's
    shard in memory) and written by a thread while training goes on; DCP's save returns
    as soon as they are staged (its write results are metadata, known up front)."""

    def __init__(self, store: Store, rank: int, background: bool = False) -> None:
        super().__init__()
        self.store, self.rank, self.background = store, rank, background
        self.written: dict[str, str] = {}
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def reset(self, checkpoint_id: Any = None) -> None:
        self.written = {}

    def join(self) -> None:
        """Wait for a background write; re-raise its error here."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            raise self._error

    def set_up_storage_writer(self, is_coordinator: bool, *args: Any, **kwargs: Any) -> None:
        pass

    def prepare_local_plan(self, plan: SavePlan) -> SavePlan:
        return plan

    def prepare_global_plan(self, plans: list[SavePlan]) -> list[SavePlan]:
        return plans

    def write_data(self, plan: SavePlan, planner: SavePlanner) -> Future[list[WriteResult]]:
        fut: Future = Future()
        items = []
        for wi in plan.items:
            if wi.type == WriteItemType.BYTE_IO:
                raise TypeError(f"{wi.index.fqn}: only tensors go into safetensors shards")
            # resolve_data: this rank's chunk (a view of the local shard), moved to the host
            # one tensor at a time; offsets: where the chunk starts in the logical tensor.
            items.append((wi.index.fqn, planner.resolve_data(wi), tuple(wi.tensor_data.chunk.offsets)))
        if not items:
            fut.set_result([])
            return fut
        items.sort(key=lambda x: x[0].encode("utf-8"))
        name = shard_file_name(self.rank)
        results = [WriteResult(index=MetadataIndex(fqn, torch.Size(off)), size_in_bytes=t.numel() * t.element_size(),
                               storage_data={"file": name}) for fqn, t, off in items]  # fmt: skip
        if self.background:
            staged = [(fqn, t.detach().to("cpu", copy=True), off) for fqn, t, off in items]
            self._thread = threading.Thread(target=self._write_guarded, args=(name, staged), daemon=True)
            self._thread.start()
        else:
            self._write(name, items)
        fut.set_result(results)
        return fut

    def _write(self, name: str, items: list[tuple[str, torch.Tensor, tuple[int, ...]]]) -> None:
        digest = hashlib.sha256()
        with self.store.open_output(name) as f:
            head = _header(items)
            f.write(head)
            digest.update(head)
            for _, t, _ in items:  # one tensor on the host at a time
                data = _tensor_bytes(t.cpu())
                f.write(data)
                digest.update(data)
        self.written[name] = digest.hexdigest()

    def _write_guarded(self, name: str, items: list[tuple[str, torch.Tensor, tuple[int, ...]]]) -> None:
        try:
            self._write(name, items)
        except BaseException as e:  # noqa: BLE001 - re-raised by join() on the trainer's thread
            self._error = e

    def finish(self, metadata: Metadata, results: list[list[WriteResult]]) -> None:
        pass  # no central metadata file: every shard's header describes its own pieces

    @classmethod
    def validate_checkpoint_id(cls, checkpoint_id: Any) -> bool:
        return True

    def storage_meta(self) -> StorageMeta | None:
        return None


class ShardReader(StorageReader):
    """Reads the shards of ``store`` into whatever layout the caller's state dict has.
    ``index`` (``lineage.shards.shard_index`` of the folder) may be passed in, so that one
    rank reads the headers and broadcasts them instead of every rank reading every file."""

    def __init__(self, store: Store, index: dict[str, TensorInfo] | None = None) -> None:
        super().__init__()
        self.store = store
        self.index = index
        self.pieces: dict[tuple[str, tuple[int, ...]], tuple[TensorInfo, Any]] = {}

    def reset(self, checkpoint_id: Any = None) -> None:
        self.pieces = {}

    def read_metadata(self, *args: Any, **kwargs: Any) -> Metadata:
        if self.index is None:
            self.index = shard_index(self.store)
        md: dict[str, TensorStorageMetadata] = {}
        for name, t in self.index.items():
            chunks = [ChunkStorageMetadata(offsets=torch.Size(p.offset), sizes=torch.Size(p.shape)) for p in t.pieces]
            md[name] = TensorStorageMetadata(properties=TensorProperties(dtype=ST_TO_TORCH[t.dtype]),
                                             size=torch.Size(t.shape), chunks=chunks)  # fmt: skip
            for p in t.pieces:
                self.pieces[(name, tuple(p.offset))] = (t, p)
        meta = Metadata(state_dict_metadata=md)
        meta.storage_meta = StorageMeta()
        return meta

    def set_up_storage_reader(self, metadata: Metadata, is_coordinator: bool, *args: Any, **kwargs: Any) -> None:
        if not self.pieces:
            self.read_metadata()

    def prepare_local_plan(self, plan: LoadPlan) -> LoadPlan:
        return plan

    def prepare_global_plan(self, plans: list[LoadPlan]) -> list[LoadPlan]:
        return plans

    def read_data(self, plan: LoadPlan, planner: LoadPlanner) -> Future[None]:
        for req in plan.items:
            t, piece = self.pieces[(req.storage_index.fqn, tuple(req.storage_index.offset))]
            off, n = list(req.storage_offsets), list(req.lengths)
            if piece.shape:
                raw = read_rows(self.store, t, piece, off[0], off[0] + n[0])  # (rows, *rest, itemsize) u8
                # Rows first (one range read), then the box's other dimensions in memory.
                raw = raw[(slice(None), *(slice(o, o + k) for o, k in zip(off[1:], n[1:], strict=True)))]
                src = torch.from_numpy(np.array(raw, copy=True)).view(ST_TO_TORCH[t.dtype]).reshape(n)
            else:
                src = torch.from_numpy(read_rows(self.store, t, piece, 0, 1).copy()).view(ST_TO_TORCH[t.dtype])[0]
            target = planner.resolve_tensor(req).detach()
            if target.shape != src.shape:
                raise RuntimeError(f"{self.store.where(piece.file)}: {req.storage_index.fqn} box {n} "
                                   f"does not fit the target {list(target.shape)}")  # fmt: skip
            target.copy_(src)
            planner.commit_tensor(req, target)
        fut: Future = Future()
        fut.set_result(None)
        return fut

    @classmethod
    def validate_checkpoint_id(cls, checkpoint_id: Any) -> bool:
        return True


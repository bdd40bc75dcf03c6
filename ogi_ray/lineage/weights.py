"""The logical tensors of a record's weights, whatever their storage (no torch).

    record.weights_format
      "safetensors"             weights_file is one safetensors file of logical tensors
                                (records of schemas 1 and 2, and ``ogi export`` output)
      "safetensors-sharded-v1"  weights_file is a folder of per-rank shards (shards.py):
                                each tensor assembled from its pieces on demand

``Weights`` gives the same view of both: names in canonical order, each tensor's dtype
and shape, its bytes (one tensor in memory at a time for shards) and its Merkle leaf.
Verification, segment selection, proofs and export all read weights through it.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from ogi_ray.lineage.merkle import leaf_hash, read_safetensors
from ogi_ray.lineage.record import weights_format
from ogi_ray.lineage.shards import TensorInfo, assemble, shard_index
from ogi_ray.storage import Store


class Weights:
    """Read-only view of one record's weights under the run ``run``."""

    def __init__(self, run: Store, rec: dict[str, Any]) -> None:
        self.run, self.rel = run, f"{rec['checkpoint']}/{rec['weights_file']}"
        self.format = weights_format(rec)
        self._single: dict[str, tuple[str, list[int], memoryview]] | None = None
        self._index: dict[str, TensorInfo] | None = None
        if self.format == "safetensors":
            raw = run.read_bytes(self.rel)
            self._single = {n: (dt, shape, data) for n, dt, shape, data in read_safetensors(raw, run.where(self.rel))}
        else:
            self._index = shard_index(run.sub(self.rel))

    @property
    def where(self) -> str:
        return self.run.where(self.rel)

    def names(self) -> list[str]:
        """Tensor names in canonical (UTF-8 byte) order."""
        keys = self._single if self._single is not None else self._index
        return sorted(keys or {}, key=lambda n: n.encode("utf-8"))

    def info(self, name: str) -> tuple[str, tuple[int, ...]]:
        """(safetensors dtype code, logical shape)."""
        if self._single is not None:
            dt, shape, _ = self._single[name]
            return dt, tuple(shape)
        t = self._index[name]  # type: ignore[index]
        return t.dtype, t.shape

    def data(self, name: str) -> Any:
        """The logical tensor's little-endian bytes in C order (a buffer)."""
        if self._single is not None:
            return self._single[name][2]
        return assemble(self.run.sub(self.rel), self._index[name])  # type: ignore[index]

    def pieces(self, name: str) -> list[dict[str, Any]]:
        """Where the tensor's bytes are stored: [{file, offset, shape, bytes: [begin, end]}]."""
        if self._single is not None:
            return [{"file": self.rel, "offset": [0] * len(self._single[name][1]), "shape": self._single[name][1]}]
        return [{"file": f"{self.rel}/{p.file}", "offset": list(p.offset), "shape": list(p.shape),
                 "bytes": [p.begin, p.end]} for p in self._index[name].pieces]  # type: ignore[index]  # fmt: skip

    def leaves(self) -> Iterator[tuple[str, bytes]]:
        for name in self.names():
            dt, shape = self.info(name)
            yield name, leaf_hash(name, dt, shape, self.data(name))

    def float_array(self, name: str) -> np.ndarray | None:
        """The tensor as float64 (bf16 widened exactly), None for non-float tensors."""
        dt, shape = self.info(name)
        data = self.data(name)
        if dt == "BF16":  # bf16 is the top half of an f32: shift the 16 bits up
            arr = (np.frombuffer(data, dtype="<u2").astype(np.uint32) << 16).view("<f4")
        elif dt in ("F64", "F32", "F16"):
            arr = np.frombuffer(data, dtype={"F64": "<f8", "F32": "<f4", "F16": "<f2"}[dt])
        else:
            return None
        return arr.astype(np.float64).reshape(shape)

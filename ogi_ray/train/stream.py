"""Each data-parallel rank reads only its own rows of the corpus' global order, and
seeks to any data cursor in constant time (DESIGN decision 14).

The corpus fixes one global row order: its train shards in manifest order, each shard's
rows sorted by ``position`` (0 … total_rows − 1 across shards). A step of the run
consumes ``accum`` global micro-batches of G = dp · batch rows from the data cursor c
(wrapping over epochs); micro-batch j of dp rank r is rows

    c + j·G + r·batch  …  + batch − 1        (mod total_rows)

so the cursor is one global row number whatever the layout, and a resume at cursor c
starts there directly:

    CorpusOrder (paths + per-shard row counts, from the manifest)
      ─► locate(row): shard by binary search on the prefix sums, then the Parquet row
         group by the file's footer (read once per shard, through pyarrow.fs)
      ─► RowReader.read(start, n): only the row groups holding those rows (a small
         cache keeps the last few, which neighbouring ranks' rows share)
      ─► RankStream.get(step, cursor, accum): this rank's micro-batches of the step,
         collated (train/data.py) with the step's seeded generator; the next step's are
         read and collated in a background thread while this one trains

Ray Data does the heavy preprocessing once, at corpus build time (decode, tokenise,
mix, on CPU nodes); training reads pre-tokenised rows, so ingest scales with ranks:
each rank reads 1/dp of every step's rows (docs/cluster.md).
"""

from __future__ import annotations

import bisect
import threading
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from ogi_ray.storage import Store


@dataclass(frozen=True)
class CorpusOrder:
    """The global row order of one corpus: its train shards, in order, with row counts."""

    paths: tuple[str, ...]  # absolute local paths or URIs, one per shard
    rows: tuple[int, ...]

    @classmethod
    def of(cls, corpus: str, manifest: dict[str, Any], split: str = "train") -> CorpusOrder:
        shards = manifest["shards" if split == "train" else "heldout_shards"]
        base = Store(corpus)
        return cls(tuple(base.where(s["path"]) for s in shards), tuple(int(s["rows"]) for s in shards))

    def __post_init__(self) -> None:
        starts, acc = [], 0
        for n in self.rows:
            starts.append(acc)
            acc += n
        object.__setattr__(self, "starts", tuple(starts))  # prefix sums, for locate
        object.__setattr__(self, "total", acc)

    starts: tuple[int, ...] = field(init=False, default=())
    total: int = field(init=False, default=0)

    def locate(self, row: int) -> tuple[int, int]:
        """(shard index, row within the shard) of global row ``row`` (< total)."""
        i = bisect.bisect_right(self.starts, row) - 1
        return i, row - self.starts[i]


@dataclass
class _Shard:
    file: Any  # pq.ParquetFile over a pyarrow.fs random-access file
    group_starts: list[int]  # first row of each row group


@dataclass
class ReadStats:
    row_groups: int = 0  # row groups decoded (cache misses)
    rows_decoded: int = 0


class RowReader:
    """Rows of a CorpusOrder by global index, reading only the row groups that hold them."""

    def __init__(self, order: CorpusOrder, columns: list[str], cache_groups: int = 4) -> None:
        if order.total == 0:
            raise ValueError("corpus has no training rows")
        self.order, self.columns = order, list(columns)
        self._shards: dict[int, _Shard] = {}
        self._groups: OrderedDict[tuple[int, int], pa.Table] = OrderedDict()
        self._cache = cache_groups
        self._lock = threading.Lock()  # the prefetch thread and the trainer share it
        self.stats = ReadStats()

    def _shard(self, i: int) -> _Shard:
        if i not in self._shards:
            path = self.order.paths[i]
            parent, _, name = path.rpartition("/")
            f = pq.ParquetFile(Store(parent).open_input(name))
            starts, acc = [], 0
            for k in range(f.metadata.num_row_groups):
                starts.append(acc)
                acc += f.metadata.row_group(k).num_rows
            if acc != self.order.rows[i]:
                raise ValueError(f"{path}: {acc} rows, the manifest says {self.order.rows[i]}")
            self._shards[i] = _Shard(f, starts)
        return self._shards[i]

    def _group(self, i: int, k: int) -> pa.Table:
        key = (i, k)
        if key in self._groups:
            self._groups.move_to_end(key)
            return self._groups[key]
        t = self._shard(i).file.read_row_group(k, columns=self.columns)
        self.stats.row_groups += 1
        self.stats.rows_decoded += t.num_rows
        self._groups[key] = t
        while len(self._groups) > self._cache:
            self._groups.popitem(last=False)
        return t

    def _run(self, start: int, n: int) -> list[pa.Table]:
        """Rows [start, start + n) with start + n ≤ total, as table slices in order."""
        out = []
        while n > 0:
            i, off = self.order.locate(start)
            shard = self._shard(i)
            k = bisect.bisect_right(shard.group_starts, off) - 1
            t = self._group(i, k)
            lo = off - shard.group_starts[k]
            take = min(n, t.num_rows - lo)
            out.append(t.slice(lo, take))
            start, n = start + take, n - take
        return out

    def read(self, start: int, n: int) -> pa.Table:
        """Rows start … start + n − 1 of the global order, wrapping at the end."""
        total = self.order.total
        parts, pos, left = [], start % total, n
        with self._lock:
            while left > 0:
                take = min(left, total - pos)
                parts += self._run(pos, take)
                pos, left = 0, left - take
        table = pa.concat_tables(parts).combine_chunks()
        if "position" in table.column_names:
            got = table.column("position")[0].as_py()
            if got != start % total:  # the cursor means nothing unless rows follow the order
                raise RuntimeError(f"data order broken: row {got}, expected {start % total}")
        return table


def micro_starts(cursor: int, accum: int, global_rows: int, dp_rank: int, batch: int) -> list[int]:
    """First global row of each of this dp rank's micro-batches of a step."""
    return [cursor + j * global_rows + dp_rank * batch for j in range(accum)]


@dataclass
class RankStream:
    """This dp rank's collated micro-batches, step by step, one step read ahead."""

    reader: RowReader
    dp_rank: int
    dp: int
    batch: int
    collate: Callable[[list[dict[str, Any]], int], list[Any]]  # (micro rows, step) → batches
    prefetch: bool = True
    _pool: ThreadPoolExecutor | None = field(default=None, init=False, repr=False)
    _ahead: tuple[tuple[int, int, int], Future] | None = field(default=None, init=False, repr=False)

    @property
    def global_rows(self) -> int:
        return self.dp * self.batch

    def rows(self, cursor: int, accum: int) -> list[dict[str, Any]]:
        """This rank's raw rows of the step at ``cursor`` (pydicts, one per micro-batch)."""
        return [self.reader.read(s, self.batch).to_pydict()
                for s in micro_starts(cursor, accum, self.global_rows, self.dp_rank, self.batch)]  # fmt: skip

    def _load(self, step: int, cursor: int, accum: int) -> list[Any]:
        return self.collate(self.rows(cursor, accum), step)

    def get(self, step: int, cursor: int, accum: int) -> list[Any]:
        """The step's micro-batches; schedules the next step's (same ``accum``)."""
        key = (step, cursor, accum)
        if self._ahead is not None and self._ahead[0] == key:
            out = self._ahead[1].result()
        else:
            if self._ahead is not None:
                self._ahead[1].result()  # never two readers at once; discard it
            out = self._load(*key)
        self._ahead = None
        if self.prefetch:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ogi-prefetch")
            nxt = (step + 1, cursor + accum * self.global_rows, accum)
            self._ahead = (nxt, self._pool.submit(self._load, *nxt))
        return out

    def close(self) -> None:
        if self._ahead is not None:
            self._ahead[1].cancel()
        if self._pool is not None:
            self._pool.shutdown(wait=True)
        self._ahead, self._pool = None, None

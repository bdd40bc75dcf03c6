"""How long a resumed rank waits for its first batch, at an early and at a late data
cursor: the per-rank seek (train/stream.py) against reading the stream from row 0 and
skipping to the cursor (what the trainer did before), over the same shards, same run.

    python benchmarks/resume_seek.py --corpus DIR [--dp 2] [--batch 8] [--repeat 3]

Cursors: the first row, the middle, and the last global micro-batch of the corpus (and
the same in the third epoch). Printed per cursor: seconds to the first collated step of
dp rank 1, row groups decoded, and late/early ratios for both methods.
"""

from __future__ import annotations

import argparse
import json
import time

import pyarrow as pa
import pyarrow.parquet as pq

from ogi_ray.corpus.manifest import load_manifest
from ogi_ray.train.data import COLUMNS
from ogi_ray.train.stream import CorpusOrder, RankStream, RowReader


def seek_first(order: CorpusOrder, cursor: int, dp: int, batch: int) -> tuple[float, int]:
    """Seconds to rank 1's rows at ``cursor`` by seeking, and row groups decoded."""
    t0 = time.perf_counter()
    reader = RowReader(order, COLUMNS)
    RankStream(reader, 1 % dp, dp, batch, lambda rows, step: rows, prefetch=False).rows(cursor, 1)
    return time.perf_counter() - t0, reader.stats.row_groups


def skip_first(order: CorpusOrder, cursor: int, dp: int, batch: int) -> tuple[float, int]:
    """The old way: every rank streams the global order from row 0 (wrapping over
    epochs) and drops what lies before the cursor. Ray Data's ``iter_batches`` hands
    over decoded blocks, so every row group up to the cursor is read and decoded."""
    t0 = time.perf_counter()
    need, pos, groups = cursor + dp * batch, 0, 0
    carry: list[pa.Table] = []
    while pos < need:
        for path in order.paths:
            f = pq.ParquetFile(path)
            for k in range(f.metadata.num_row_groups):
                t = f.read_row_group(k, columns=COLUMNS)
                groups += 1
                if pos + t.num_rows > cursor:
                    carry.append(t)
                pos += t.num_rows
                if pos >= need:
                    break
            if pos >= need:
                break
    table = pa.concat_tables(carry)
    start = cursor - (pos - table.num_rows)
    table.slice(start + (1 % dp) * batch, batch).to_pydict()
    return time.perf_counter() - t0, groups


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--corpus", required=True)
    ap.add_argument("--dp", type=int, default=2)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    order = CorpusOrder.of(args.corpus, load_manifest(args.corpus))
    g = args.dp * args.batch
    last = (order.total // g - 1) * g
    cursors = {"first": 0, "middle": order.total // 2 // g * g, "last": last, "last, epoch 3": 2 * order.total + last}
    out: dict[str, dict[str, float]] = {}
    for name, cursor in cursors.items():
        seek = min(seek_first(order, cursor, args.dp, args.batch) for _ in range(args.repeat))
        skip = min(skip_first(order, cursor, args.dp, args.batch) for _ in range(args.repeat))
        out[name] = {"cursor": cursor, "seek_s": round(seek[0], 5), "seek_row_groups": seek[1],
                     "skip_s": round(skip[0], 5), "skip_row_groups": skip[1]}  # fmt: skip
    early, late = out["first"], out["last, epoch 3"]
    print(json.dumps({
        "corpus_rows": order.total, "shards": len(order.paths), "dp": args.dp, "batch": args.batch,
        "per_cursor": out,
        "seek_late_over_early": round(late["seek_s"] / early["seek_s"], 2),
        "skip_late_over_early": round(late["skip_s"] / early["skip_s"], 2),
        "skip_over_seek_at_late": round(late["skip_s"] / late["seek_s"], 1),
    }, indent=1))  # fmt: skip


if __name__ == "__main__":
    main()

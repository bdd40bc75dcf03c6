"""Per-rank reads of the global row order (train/stream.py), the chunked metrics log, and
the resume choice: each part of the worker alone, without Ray.

The shards are real Parquet files in the corpus' layout (``position`` sorted, small row
groups), holding lines of a stdlib source file; what matters is which rows come back."""

from __future__ import annotations

import inspect
import json
import json.decoder

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ogi_ray.storage import Store
from ogi_ray.train.metrics_log import MetricsLog, by_step, read_rows
from ogi_ray.train.run_state import resume_point
from ogi_ray.train.stream import CorpusOrder, RankStream, RowReader, micro_starts

ROWS = [23, 8, 30]  # three shards of uneven size
GROUP = 5  # rows per Parquet row group


@pytest.fixture(scope="module")
def order(tmp_path_factory):
    lines = inspect.getsource(json.decoder).splitlines()
    folder = tmp_path_factory.mktemp("shards")
    paths, pos = [], 0
    for i, n in enumerate(ROWS):
        t = pa.table({"position": list(range(pos, pos + n)), "text": lines[pos : pos + n]})
        pq.write_table(t, folder / f"part-{i:05d}.parquet", row_group_size=GROUP)
        paths.append(str(folder / f"part-{i:05d}.parquet"))
        pos += n
    return CorpusOrder(tuple(paths), tuple(ROWS))


def _positions(table):
    return table.column("position").to_pylist()


def test_read_returns_the_global_rows_and_wraps(order):
    reader = RowReader(order, ["position", "text"])
    total = sum(ROWS)
    assert order.total == total and order.locate(23) == (1, 0) and order.locate(60) == (2, 29)
    assert _positions(reader.read(20, 6)) == [20, 21, 22, 23, 24, 25]  # across a shard edge
    assert _positions(reader.read(58, 7)) == [58, 59, 60, 0, 1, 2, 3]  # wraps to the next epoch
    assert _positions(reader.read(total + 4, 2)) == [4, 5]  # a cursor in the second epoch
    lines = inspect.getsource(json.decoder).splitlines()
    assert reader.read(31, 2).column("text").to_pylist() == lines[31:33]


def test_ranks_split_each_step_disjointly_and_cover_it(order):
    """dp 2 × batch 3, 2 micro-batches: rank r's micro-batch j is rows
    cursor + j·6 + r·3 … + 2, and the two ranks together read exactly the step's rows."""
    readers = [RowReader(order, ["position"]) for _ in range(2)]
    cursor, accum, batch, dp = 17, 2, 3, 2
    got = [RankStream(readers[r], r, dp, batch, lambda rows, step: rows, prefetch=False).rows(cursor, accum)
           for r in range(dp)]  # fmt: skip
    assert [m["position"] for m in got[0]] == [[17, 18, 19], [23, 24, 25]]
    assert [m["position"] for m in got[1]] == [[20, 21, 22], [26, 27, 28]]
    assert sorted(p for ms in got for m in ms for p in m["position"]) == list(range(17, 29))
    assert micro_starts(cursor, accum, dp * batch, 1, batch) == [20, 26]


def test_seek_cost_does_not_grow_with_the_cursor(order):
    """A resume at any cursor decodes only the row groups that hold its rows."""
    early, late = RowReader(order, ["position"]), RowReader(order, ["position"])
    early.read(0, 4)
    late.read(sum(ROWS) - 5, 4)  # rows 56-59: the last row group of the last shard
    assert early.stats.row_groups == late.stats.row_groups == 1
    assert late.stats.rows_decoded <= GROUP


def test_prefetch_gives_the_same_batches_and_follows_a_changed_accumulation(order):
    def collate(rows, step):
        return [(step, m["position"]) for m in rows]

    ahead = RankStream(RowReader(order, ["position"]), 0, 1, 4, collate, prefetch=True)
    plain = RankStream(RowReader(order, ["position"]), 0, 1, 4, collate, prefetch=False)
    cursor = 0
    for step, accum in enumerate([1, 1, 2, 2, 1]):  # the batch controller changes accum
        assert ahead.get(step, cursor, accum) == plain.get(step, cursor, accum)
        cursor += accum * 4
    ahead.close()


def test_rows_out_of_order_are_refused(tmp_path):
    pq.write_table(pa.table({"position": [0, 1, 5, 3]}), tmp_path / "bad.parquet")
    reader = RowReader(CorpusOrder((str(tmp_path / "bad.parquet"),), (4,)), ["position"])
    with pytest.raises(RuntimeError, match="row 5, expected 2"):
        reader.read(2, 1)
    with pytest.raises(ValueError, match="manifest says 9"):
        RowReader(CorpusOrder((str(tmp_path / "bad.parquet"),), (9,)), ["position"]).read(0, 1)


def test_metrics_log_chunks_keep_redone_steps_and_skip_a_cut_last_line(tmp_path):
    run = Store(tmp_path / "run")
    log = MetricsLog(run)
    for s in range(4):
        log.add({"step": s, "loss": float(s)})
        if s % 2:
            log.flush()
    log.add({"step": 2, "loss": 20.0})  # a resumed run redoes step 2
    log.close()  # flushes write on a background thread: wait for them before reading
    rows = read_rows(run)
    assert [r["step"] for r in rows] == [0, 1, 2, 3, 2]
    assert [r["loss"] for r in by_step(rows)] == [0.0, 1.0, 20.0, 3.0]
    (tmp_path / "run" / "metrics.jsonl").write_text('{"step": 9, "loss": 1}\n{"step": 10, "lo')
    notes: list[str] = []
    assert [r["step"] for r in read_rows(run, notes)][:2] == [9, 0]  # the legacy file first
    assert notes and "cut short" in notes[0]


def test_resume_point_is_the_newer_of_rays_and_the_lineage_heads(tmp_path):
    run = Store(tmp_path)
    for step in (4, 8):
        run.write_atomic(f"step_{step:06d}/train_state.json", json.dumps({"step": step}).encode())
    assert resume_point(run, "step_000004", "step_000008") == "step_000008"
    assert resume_point(run, "step_000008", "step_000004") == "step_000008"
    assert resume_point(run, None, "step_000004") == "step_000004"
    assert resume_point(run, "step_000012", None) is None  # not a complete checkpoint
    assert resume_point(run, None, None) is None


def test_lineage_hook_records_every_file_and_appends(tmp_path):
    """A real single-process checkpoint, the hook's record over its files (hashes
    checked by hand), the marker, and the chain's append through a plain registry."""
    import hashlib

    from ogi_ray.lineage.record import read_head, read_record
    from ogi_ray.lineage.registry import LineageRegistry
    from ogi_ray.model import build, preset
    from ogi_ray.train import checkpoint as ckpt
    from ogi_ray.train.lineage_hook import LineageHook
    from ogi_ray.train.optim import OptimConfig, build_optimizer

    model = build(preset("tiny", vocab_size=64, n_text=8), seed=1)
    opt, sched = build_optimizer(model, OptimConfig(), 10)
    run = Store(tmp_path / "run")
    saved = ckpt.save(run.sub("step_000002"), model, opt, sched, train_state={"step": 2}, world_target=None)
    hook = LineageHook(LineageRegistry(run.where("lineage")), "r", "c" * 64)
    hook.note_step({"step": 0})
    hook.note_step({"step": 1})
    fields = hook.record(run.sub("step_000002"), saved, step=2, manifest_hash="a" * 64, cursor={"rows": 16},
                         scores={"perplexity/x": 3.5}, segment=hook.take_segment(), rng="b" * 64)  # fmt: skip
    assert hook.segment == []
    folder = tmp_path / "run" / "step_000002"
    on_disk = {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
               for p in folder.rglob("*") if p.is_file() and p.name != "lineage.json"}  # fmt: skip
    assert fields["files"] == on_disk and "model/shard-00001-model-00001-of-00001.safetensors" in on_disk
    assert json.loads((folder / "segment.json").read_text()) == [{"step": 0}, {"step": 1}]
    h = hook.append(fields)
    assert read_head(run.sub("lineage")) == h == hook.last_record
    marker = json.loads((folder / "lineage.json").read_text())
    assert marker == {"record_hash": h, "record": read_record(run.sub("lineage"), h)}

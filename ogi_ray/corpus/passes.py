"""The row-level work of the corpus build, run inside Ray Data tasks (driven by build.py).

    item row ──read_item──► stage-1 rows: media tokenized, text raw   (one read per item)
                            or one error row naming source, item, field
    stage-1 ──driver_view─► what the driver needs: errors + text prefixes for the BPE
    stage-1 ──encode_batch► final rows: BPE ids, text chunks, counts, row_key (ROW_SCHEMA)
    final ────copies_batch► each row's copies in the mix with their global ``position``

Errors are returned as rows instead of raised: an exception raised in a Ray task reaches
the driver wrapped twice with the original type lost, while an error row lets the
driver raise one clean ``SourceDataError`` that names the mixture file, the source, the
item and the field.
"""

from __future__ import annotations

import functools
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from ogi_ray.corpus.config import MODALITIES, PatchConfig, TextTokenizerConfig
from ogi_ray.corpus.sources import BUILDERS
from ogi_ray.corpus.tokenize import (
    SourceDataError,
    empty_row,
    encode_texts,
    load_bpe,
    media_rows,
    text_rows,
)

TEXT_PREFIX_PER_ITEM = 20_000  # characters of each sample offered to BPE training

# The columns of a token row (docs/corpus.md: meaning and byte layout of each).
ROW_SCHEMA = pa.schema(
    [("source", pa.string()), ("doc_id", pa.string()), ("chunk", pa.int64()),
     ("row_key", pa.string()), ("raw_hash", pa.string()), ("modality", pa.string()),
     ("text_tokens", pa.binary()), ("image_patches", pa.binary()),
     ("video_tubelets", pa.binary()), ("audio_frames", pa.binary()),
     ("proprio", pa.binary()), ("action", pa.binary()),
     ("proprio_dim", pa.int64()), ("action_dim", pa.int64())]
    + [(f"tokens_{m}", pa.int64()) for m in MODALITIES]
    + [("effective_tokens", pa.float64())]
)  # fmt: skip
# A shard row: a token row plus its copy number and its index in the mixed order.
SHARD_SCHEMA = ROW_SCHEMA.append(pa.field("repeat", pa.int64())).append(
    pa.field("position", pa.int64())
)
_STAGE1_EXTRA = ("item", "item_index", "seq", "text", "text_only", "error", "error_field")


def _error_row(source: str, item: str, item_index: int, field: str, message: str) -> dict:
    row = empty_row()
    del row["text_tokens"]
    row.update(source=source, item=item, item_index=item_index, seq=-1, doc_id="", chunk=0,
               raw_hash="", text="", text_only=False, error=message or "error",
               error_field=field)  # fmt: skip
    return row


def read_item(
    row: dict[str, Any], specs: dict[str, tuple[str, dict]], patch: dict, declared: dict
) -> list[dict[str, Any]]:
    """One item (``source``, ``item``, ``item_index``) → its stage-1 rows, or one error row."""
    source, item, index = row["source"], row["item"], int(row["item_index"])
    kind, params = specs[source]
    patch_cfg = PatchConfig(**patch)
    out = []
    try:
        for seq, sample in enumerate(BUILDERS[kind].read(item, params)):
            for r in media_rows(sample, source=source, patch_cfg=patch_cfg):
                del r["text_tokens"]  # set by encode_batch
                made = {m for m in MODALITIES if r[f"tokens_{m}"]} | ({"text"} if r["text"] else set())
                extra = made - set(declared[source])
                if extra:
                    raise SourceDataError(
                        source, item, "modalities",
                        f"produced {sorted(extra)}, not declared in {sorted(declared[source])}",
                    )  # fmt: skip
                r.update(item=item, item_index=index, seq=seq, error="", error_field="")
                out.append(r)
    except Exception as e:  # noqa: BLE001 - every failure becomes an error row (see docstring)
        if isinstance(e, SourceDataError):
            return [_error_row(source, item, index, e.field or "", e.message)]
        return [_error_row(source, item, index, "", f"{type(e).__name__}: {e}")]
    return out


def driver_view(batch: pa.Table) -> pa.Table:
    """Error rows, and text prefixes for the BPE: all the driver reads of stage 1."""
    t = batch.select(["source", "item", "item_index", "seq", "chunk", "text", "error", "error_field"])
    t = t.filter(pc.or_(pc.not_equal(t["error"], ""), pc.not_equal(t["text"], "")))
    prefix = pc.utf8_slice_codeunits(t["text"], 0, TEXT_PREFIX_PER_ITEM)
    return t.set_column(t.schema.get_field_index("text"), "text", prefix)


@functools.lru_cache(maxsize=2)
def _bpe(tok_json: str) -> Any:
    return load_bpe(tok_json)  # once per worker process, not once per batch


def encode_batch(batch: pa.Table, tok_json: str, text: dict, rates: dict[str, float]) -> pa.Table:
    """Stage-1 rows → final token rows (ROW_SCHEMA)."""
    rows = batch.to_pylist()
    text_cfg = TextTokenizerConfig(**text)
    ids = encode_texts(_bpe(tok_json), [r["text"] for r in rows])
    out = []
    for r, i in zip(rows, ids, strict=True):
        for f in text_rows(r, i, text_cfg=text_cfg, rates=rates):
            f["text_tokens"] = f["text_tokens"].astype("<i4").tobytes()
            f["row_key"] = f"{r['item_index']:06d}/{f['doc_id']}/{f['chunk']}"
            for k in _STAGE1_EXTRA:
                f.pop(k, None)
            out.append(f)
    return pa.Table.from_pylist(out, schema=ROW_SCHEMA)


def copies_batch(batch: pa.Table, copies: dict[str, tuple[list[int], list[int]]]) -> pa.Table:
    """Each row repeated once per copy in the mix, with ``repeat`` and ``position`` added.

    ``copies`` maps ``source|row_key`` to (repeat numbers, positions); rows not in it
    (dropped by the mixer, or held out) vanish.
    """
    idx, reps, pos = [], [], []
    keys = zip(batch["source"].to_pylist(), batch["row_key"].to_pylist(), strict=True)
    for i, (s, k) in enumerate(keys):
        r, p = copies.get(f"{s}|{k}", ((), ()))
        idx += [i] * len(r)
        reps += r
        pos += p
    out = batch.take(pa.array(idx, pa.int64()))
    out = out.append_column("repeat", pa.array(reps, pa.int64()))
    return out.append_column("position", pa.array(pos, pa.int64()))

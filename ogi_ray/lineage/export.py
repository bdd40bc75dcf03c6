"""``ogi export RUN [--step N] --out DIR``: a checkpoint's logical weights as standard,
consolidated safetensors, checked against its lineage record.

    the record at step N on the chain (default: HEAD) ─► its weights (one file, or the
      per-rank shards: lineage/weights.py) ─► DIR/model.safetensors, or, above
      ``max_file_bytes``, DIR/model-0000k-of-0000n.safetensors + the Hugging Face
      ``model.safetensors.index.json`` (weight_map) ─► each file's header written first,
      then every tensor assembled and streamed in (one tensor in memory at a time)
      ─► DIR/config.json: the model config from the run's recorded job config, the
      record hash, step and weights root
      ─► the Merkle root re-derived from the written files == the record's weights_root
         (else the export is removed and an error raised)

DIR may be a local folder or any pyarrow URI. It must be empty or absent unless
``overwrite``; nothing but the files above is ever written or deleted there.
"""

from __future__ import annotations

import json
from typing import Any

from ogi_ray.lineage.merkle import DTYPE_BYTES, header_length, leaf_hash, merkle_root, parse_header
from ogi_ray.lineage.record import RecordError, read_head, read_record
from ogi_ray.lineage.weights import Weights
from ogi_ray.storage import Store

INDEX = "model.safetensors.index.json"
CONFIG = "config.json"
MAX_FILE_BYTES = 5 << 30  # the Hugging Face convention: files of at most ~5 GB


class ExportError(ValueError):
    pass


def record_at(ldir: Store, step: int | None) -> tuple[str, dict[str, Any]]:
    """(hash, record) at ``step`` on the chain from HEAD (None: HEAD itself)."""
    h = read_head(ldir)
    while h:
        rec = read_record(ldir, h)
        if step is None or rec["step"] == step:
            return h, rec
        h = rec["parent"]
    raise RecordError(f"{ldir.uri}: no record at step {step} on the chain" if step is not None
                      else f"{ldir.uri}: the chain is empty (no HEAD)")  # fmt: skip


def _header(entries: list[tuple[str, str, tuple[int, ...]]], meta: dict[str, str]) -> bytes:
    header: dict[str, Any] = {"__metadata__": meta}
    pos = 0
    for name, dtype, shape in entries:
        n = DTYPE_BYTES[dtype]
        for d in shape:
            n *= d
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [pos, pos + n]}
        pos += n
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    return len(raw).to_bytes(8, "little") + raw


def _split(weights: Weights, max_bytes: int) -> list[list[str]]:
    """Tensor names in canonical order, cut into files of at most ``max_bytes``."""
    files: list[list[str]] = [[]]
    size = 0
    for name in weights.names():
        dtype, shape = weights.info(name)
        n = DTYPE_BYTES[dtype]
        for d in shape:
            n *= d
        if files[-1] and size + n > max_bytes:
            files.append([])
            size = 0
        files[-1].append(name)
        size += n
    return files


def _check_out(out: Store, overwrite: bool) -> None:
    existing = out.list_files(recursive=True) if out.exists() else []
    if existing and not overwrite:
        raise ExportError(f"{out.uri}: not empty ({len(existing)} files, e.g. {existing[0]}); "
                          "pass --overwrite to replace the export there")  # fmt: skip
    if overwrite:
        ours = {CONFIG, INDEX, "model.safetensors"}
        for f in existing:
            if f in ours or (f.startswith("model-") and f.endswith(".safetensors")):
                out.delete_file(f)


def export(run: Store, out: Store, step: int | None = None, *, overwrite: bool = False,
           max_file_bytes: int = MAX_FILE_BYTES) -> dict[str, Any]:  # fmt: skip
    """Write the export of ``run``'s checkpoint at ``step`` into ``out``; returns a summary."""
    h, rec = record_at(run.sub("lineage"), step)
    weights = Weights(run, rec)
    _check_out(out, overwrite)
    groups = _split(weights, max_file_bytes)
    names = ["model.safetensors"] if len(groups) == 1 else [
        f"model-{i + 1:05d}-of-{len(groups):05d}.safetensors" for i in range(len(groups))]  # fmt: skip
    meta = {"format": "pt", "ogi_record": h, "ogi_weights_root": rec["weights_root"]}
    written: list[str] = []
    try:
        for fname, group in zip(names, groups, strict=True):
            entries = [(n, *weights.info(n)) for n in group]
            with out.open_output(fname) as f:
                f.write(_header(entries, meta))
                for n in group:  # header order = canonical order: one tensor at a time
                    f.write(memoryview(weights.data(n)).cast("B"))
            written.append(fname)
        if len(names) > 1:
            weight_map = {n: fname for fname, group in zip(names, groups, strict=True) for n in group}
            out.write_atomic(INDEX, json.dumps({"metadata": {"ogi_record": h}, "weight_map": weight_map}, indent=1).encode())
            written.append(INDEX)
        out.write_atomic(CONFIG, json.dumps(_config(run, rec, h), indent=1, sort_keys=True).encode())
        written.append(CONFIG)
        root = exported_root(out, names)
    except BaseException:
        for fname in written:
            out.delete_file(fname)
        raise
    if root != rec["weights_root"]:
        for fname in written:
            out.delete_file(fname)
        raise ExportError(f"{out.uri}: exported weights hash to {root}, the record says {rec['weights_root']}")
    return {"record": h, "step": rec["step"], "weights_root": root, "files": written, "out": out.uri}


def _config(run: Store, rec: dict[str, Any], h: str) -> dict[str, Any]:
    job = json.loads(run.read_bytes(f"lineage/configs/{rec['config_hash']}.json"))
    return {"ogi_model": job["model"], "run": rec["run"], "step": rec["step"], "record_hash": h,
            "weights_root": rec["weights_root"], "weights_hash": rec["weights_hash"]}  # fmt: skip


def exported_root(out: Store, files: list[str]) -> str:
    """The Merkle root of an export's tensors, re-read from its files by range reads
    (one tensor in memory at a time)."""
    leaves = []
    for f in files:
        size = out.size(f)
        with out.open_input(f) as fh:
            n = header_length(fh.read_at(8, 0), size, out.where(f))
            _, entries = parse_header(fh.read_at(n, 8), size - 8 - n, out.where(f))
            for name, dt, shape, start, end in entries:
                leaves.append((name, leaf_hash(name, dt, shape, fh.read_at(end - start, 8 + n + start))))
    leaves.sort(key=lambda x: x[0].encode("utf-8"))
    return merkle_root([leaf for _, leaf in leaves])

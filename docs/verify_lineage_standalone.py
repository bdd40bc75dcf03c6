#!/usr/bin/env python3
"""Verify an OGI-Ray run's checkpoint lineage with the Python standard library only.

    python verify_lineage_standalone.py RUN_DIR [--corpus DIR]
    python verify_lineage_standalone.py RUN_DIR --explain STEP TENSOR

Written from docs/lineage.md alone (it imports nothing of ogi_ray), as a check that the
format is specified well enough for a third party. Exit 0: every hash re-derived and
the chain holds; 1: problems (printed one per line); 2: bad usage. ``--explain`` prints
how the leaf of one tensor and the path to the record's weights root are computed.
Signatures and segment replay are not covered here (they need ed25519 and training).
"""

import argparse
import hashlib
import json
import math
import os
import re
import struct
import sys

HEX64 = re.compile(r"[0-9a-f]{64}")
LINEAGE_NAMES = re.compile(r"(records|manifests|configs|attestations)/[0-9a-f]{64}\.json|signatures/[0-9a-f]{64}\.sig"
                           r"|HEAD|ATTEST_HEAD")
RECORD_KEYS_V1 = {"schema", "run", "step", "parent", "checkpoint", "weights_root", "weights_hash",
                  "weights_file", "manifest_hash", "config_hash", "data_cursor", "rng", "eval"}
RECORD_KEYS = {1: RECORD_KEYS_V1, 2: RECORD_KEYS_V1 | {"files"}, 3: RECORD_KEYS_V1 | {"files", "weights_format"}}
RECORD_TYPES = {"step": int, "files": dict, "data_cursor": dict, "eval": dict, "weights_format": str}
ITEMSIZE = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}
RECORD_TYPES.update({k: str for k in RECORD_KEYS_V1 - {"schema", "step", "data_cursor", "eval"}})
DECIMAL = re.compile(r"-?(0|[1-9][0-9]*)\.[0-9]{6}|nan|-?inf")  # eval scores: Python's "%.6f"


def record_ok(rec: object) -> bool:
    """Exactly the schema's keys with their types (no bool for int), integer cursor
    counters and six-decimal eval strings."""
    if not isinstance(rec, dict) or set(rec) != RECORD_KEYS.get(rec.get("schema"), set()):
        return False
    if not all(isinstance(rec[k], t) and not isinstance(rec[k], bool) for k, t in RECORD_TYPES.items() if k in rec):
        return False
    if type(rec["schema"]) is not int:
        return False
    cursor_ok = all(type(v) is int for v in rec["data_cursor"].values())
    return cursor_ok and all(isinstance(v, str) and DECIMAL.fullmatch(v) for v in rec["eval"].values())


# ---- canonical JSON (RFC 8785 subset) ------------------------------------------------
def number(x: float) -> str:
    """ECMAScript Number.prototype.toString of a finite double."""
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        raise TypeError(x)
    if isinstance(x, int):
        return str(x)
    if not math.isfinite(x):
        raise ValueError("NaN/Infinity are not JSON")
    if x == 0:
        return "0"
    if x < 0:
        return "-" + number(-x)
    # Shortest round-trip digits d1..dk and exponent n with value = 0.d1..dk * 10^n.
    mant, _, exp = repr(x).partition("e")
    whole, _, frac = mant.partition(".")
    digits = (whole + frac).lstrip("0")
    n = len(whole) + int(exp or 0) - (len(whole + frac) - len((whole + frac).lstrip("0")))
    digits = digits.rstrip("0")
    k = len(digits)
    if k <= n <= 21:
        return digits + "0" * (n - k)
    if 0 < n <= 21:
        return digits[:n] + "." + digits[n:]
    if -6 < n <= 0:
        return "0." + "0" * -n + digits
    e = n - 1
    return (digits[0] + ("." + digits[1:] if k > 1 else "")) + "e" + ("+" if e >= 0 else "-") + str(abs(e))


def canonical(obj: object) -> str:
    if obj is None or obj is True or obj is False:
        return json.dumps(obj)
    if isinstance(obj, (int, float)):
        return number(obj)
    if isinstance(obj, str):
        return json.dumps(obj, ensure_ascii=False)
    if isinstance(obj, list):
        return "[" + ",".join(canonical(v) for v in obj) + "]"
    if isinstance(obj, dict):
        keys = sorted(obj, key=lambda s: s.encode("utf-16-be"))
        return "{" + ",".join(json.dumps(k, ensure_ascii=False) + ":" + canonical(obj[k]) for k in keys) + "}"
    raise TypeError(type(obj))


def cbytes(obj: object) -> bytes:
    return canonical(obj).encode("utf-8")


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def accepted_forms(obj: object, indents: tuple, sort_keys: bool = True) -> list:
    return [cbytes(obj)] + [json.dumps(obj, indent=i, sort_keys=sort_keys).encode() for i in indents]


# ---- weights: safetensors leaves and the Merkle tree ---------------------------------
def safetensors_leaves(raw: bytes) -> list:
    """[(name, dtype, shape, leaf bytes)] sorted by UTF-8 name; raises ValueError."""
    if len(raw) < 8:
        raise ValueError("truncated")
    (n,) = struct.unpack("<Q", raw[:8])
    if 8 + n > len(raw):
        raise ValueError("header runs past the end")
    header = json.loads(raw[8:8 + n])
    body = raw[8 + n:]
    out, spans = [], []
    for name in sorted((k for k in header if k != "__metadata__"), key=lambda s: s.encode("utf-8")):
        start, end = header[name]["data_offsets"]
        dtype, shape = header[name]["dtype"], header[name]["shape"]
        if not 0 <= start <= end <= len(body):
            raise ValueError(f"tensor {name!r} out of range")
        spans.append((start, end))
        pre = b"\x00" + name.encode("utf-8") + b"\x00" + dtype.encode() + b"\x00" + ",".join(map(str, shape)).encode() + b"\x00"
        out.append((name, dtype, shape, hashlib.sha256(pre + body[start:end]).digest()))
    pos = 0
    for start, end in sorted(spans):
        if start != pos:
            raise ValueError("gap or overlap in the data area")
        pos = end
    if pos != len(body):
        raise ValueError("bytes after the last tensor")
    return out


def safetensors_header(raw: bytes) -> tuple:
    """(header dict, data area) of a safetensors file, tiling checked; raises ValueError."""
    if len(raw) < 8:
        raise ValueError("truncated")
    (n,) = struct.unpack("<Q", raw[:8])
    if 8 + n > len(raw):
        raise ValueError("header runs past the end")
    header, body = json.loads(raw[8:8 + n]), raw[8 + n:]
    pos = 0
    for start, end in sorted(tuple(v["data_offsets"]) for k, v in header.items() if k != "__metadata__"):
        if start != pos:
            raise ValueError("gap or overlap in the data area")
        pos = end
    if pos != len(body):
        raise ValueError("bytes after the last tensor")
    return header, body


def sharded_tensors(folder: str) -> dict:
    """name -> (dtype, logical shape, [(offset, shape, bytes)]) of a sharded weights folder:
    every *.safetensors file, each piece placed by DCP_SHARDING_INFO; raises ValueError."""
    tensors = {}
    files = sorted(f for f in os.listdir(folder) if f.endswith(".safetensors") and not f.startswith("."))
    if not files:
        raise ValueError("no shard files")
    for f in files:
        header, body = safetensors_header(read(os.path.join(folder, f)))
        offsets = json.loads((header.get("__metadata__") or {})["DCP_SHARDING_INFO"])
        names = {k for k in header if k != "__metadata__"}
        if set(offsets) != names:
            raise ValueError(f"{f}: DCP_SHARDING_INFO does not list exactly the file's tensors")
        for name in names:
            info, off = header[name], [int(x) for x in offsets[name]["saved_offsets"]]
            start, end = info["data_offsets"]
            if len(off) != len(info["shape"]) or end - start != ITEMSIZE[info["dtype"]] * math.prod(info["shape"]):
                raise ValueError(f"{f}: tensor {name!r} has a malformed entry")
            dt, _, pieces = tensors.setdefault(name, (info["dtype"], None, []))
            if dt != info["dtype"]:
                raise ValueError(f"tensor {name!r}: dtypes differ between shards")
            pieces.append((off, info["shape"], body[start:end]))
    out = {}
    for name, (dt, _, pieces) in tensors.items():
        shape = [max(o[d] + s[d] for o, s, _ in pieces) for d in range(len(pieces[0][1]))]
        if sum(math.prod(s) for _, s, _ in pieces) != math.prod(shape) or any(
            all(a[0][d] < b[0][d] + b[1][d] and b[0][d] < a[0][d] + a[1][d] for d in range(len(shape)))
            for i, a in enumerate(pieces) for b in pieces[i + 1:] if math.prod(a[1]) and math.prod(b[1])
        ):
            raise ValueError(f"tensor {name!r}: pieces do not tile {shape} exactly")
        out[name] = (dt, shape, pieces)
    return out


def assemble(dtype: str, shape: list, pieces: list) -> bytes:
    """The logical tensor's C-order bytes from its pieces (one row run at a time)."""
    size = ITEMSIZE[dtype]
    full = bytearray(size * math.prod(shape))
    strides = [size * math.prod(shape[d + 1:]) for d in range(len(shape))]
    for off, pshape, data in pieces:
        if not shape:
            full[:] = data
            continue
        run = size * pshape[-1]  # one contiguous run along the last dimension
        for k in range(math.prod(pshape[:-1])):
            idx, rest = [], k
            for d in reversed(pshape[:-1]):
                idx.append(rest % d)
                rest //= d
            idx = idx[::-1]
            dst = sum((off[d] + idx[d]) * strides[d] for d in range(len(shape) - 1)) + off[-1] * size
            full[dst:dst + run] = data[k * run:(k + 1) * run]
    return bytes(full)


def weight_leaves(path: str, fmt: str) -> list:
    """[(name, dtype, shape, leaf)] of a record's weights (a file, or a shard folder)."""
    if fmt == "safetensors":
        return safetensors_leaves(read(path))
    out = []
    for name, (dt, shape, pieces) in sorted(sharded_tensors(path).items(), key=lambda kv: kv[0].encode("utf-8")):
        pre = b"\x00" + name.encode("utf-8") + b"\x00" + dt.encode() + b"\x00" + ",".join(map(str, shape)).encode() + b"\x00"
        out.append((name, dt, shape, hashlib.sha256(pre + assemble(dt, shape, pieces)).digest()))
    return out


def tree(leaves: list) -> list:
    levels = [list(leaves)] if leaves else [[hashlib.sha256(b"").digest()]]
    while len(levels[-1]) > 1:
        cur = levels[-1]
        nxt = [hashlib.sha256(b"\x01" + cur[i] + cur[i + 1]).digest() for i in range(0, len(cur) - 1, 2)]
        levels.append(nxt + ([cur[-1]] if len(cur) % 2 else []))
    return levels


# ---- the checks ------------------------------------------------------------------------
def files_under(folder: str) -> set:
    out = set()
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for f in filenames:
            if not f.startswith("."):
                out.add(os.path.relpath(os.path.join(dirpath, f), folder).replace(os.sep, "/"))
    return out


def guard(where: str, problems: list, fn: object, *args: object) -> None:
    """Run a check; any unexpected error is a finding, not a crash."""
    try:
        fn(*args)
    except Exception as e:  # noqa: BLE001
        problems.append(f"{where}: cannot be checked ({type(e).__name__}: {e})")


def load_json(raw: bytes, where: str, problems: list) -> object:
    try:
        return json.loads(raw)
    except ValueError as e:
        problems.append(f"{where}: not JSON ({e})")
        return None


def check_corpus(folder: str, names: set, problems: list) -> None:
    mpath = os.path.join(folder, "manifest.json")
    raw = read(mpath)
    m = load_json(raw, mpath, problems)
    if not isinstance(m, dict):
        return
    body = {k: v for k, v in m.items() if k != "manifest_hash"}
    if sha(cbytes(body)) != m.get("manifest_hash"):
        problems.append(f"{mpath}: content hashes to {sha(cbytes(body))}, not its manifest_hash")
    if raw not in accepted_forms(m, (2,)):
        problems.append(f"{mpath}: bytes edited")
    entries = list(m.get("shards", [])) + list(m.get("heldout_shards", []))
    entries.append({"path": m["tokenizers"]["text"]["file"], "sha256": m["tokenizers"]["text"]["sha256"]})
    for e in entries:
        p = os.path.join(folder, e["path"])
        if not os.path.isfile(p):
            problems.append(f"{p}: missing")
        elif sha(read(p)) != e["sha256"]:
            problems.append(f"{p}: SHA-256 {sha(read(p))} differs from the manifest's {e['sha256']}")
    for h in sorted(set(names) - {m.get("manifest_hash")}):
        problems.append(f"corpus {folder}: is not manifest {h[:12]} that the records name")


def check_checkpoint(run: str, h: str, rec: dict, manifests: dict, configs: dict, problems: list) -> None:
    where, ck = f"record step {rec['step']} ({h[:12]})", os.path.join(run, rec["checkpoint"])
    if rec["manifest_hash"] not in manifests or rec["config_hash"] not in configs:
        problems.append(f"{where}: its manifest or config is missing from lineage/")
    wpath = os.path.join(ck, rec["weights_file"])
    fmt = rec.get("weights_format", "safetensors")
    try:
        if fmt not in ("safetensors", "safetensors-sharded-v1"):
            raise ValueError(f"unknown weights_format {fmt!r}")
        leaves = weight_leaves(wpath, fmt)
    except (OSError, ValueError, KeyError, TypeError) as e:
        problems.append(f"{where}: {wpath}: {e}")
        leaves = None
    if leaves is not None:
        if tree([x[3] for x in leaves])[-1][0].hex() != rec["weights_root"] or rec["weights_hash"] != "sha256-merkle-v1":
            problems.append(f"{where}: {wpath} does not hash to weights_root {rec['weights_root']}")
        lpath = os.path.join(ck, "leaves.json")
        if os.path.isfile(lpath):
            listed = load_json(read(lpath), lpath, problems) or {}
            for name, _, _, leaf in leaves:
                if listed.get(name) != leaf.hex():
                    problems.append(f"{where}: tensor {name!r} differs from leaves.json")
            if set(listed) != {x[0] for x in leaves}:
                problems.append(f"{where}: leaves.json names other tensors than {wpath}")
    if "files" in rec:
        present = files_under(ck) - {"lineage.json"} if os.path.isdir(ck) else set()
        for rel in sorted(present | set(rec["files"])):
            p = os.path.join(ck, rel)
            if rel not in rec["files"] or rel not in present:
                problems.append(f"{where}: {p} is missing or not covered by the record")
            elif sha(read(p)) != rec["files"][rel]:
                problems.append(f"{where}: {p} has SHA-256 {sha(read(p))}, record says {rec['files'][rel]}")
    mpath = os.path.join(ck, "lineage.json")
    if os.path.isfile(mpath):
        raw = read(mpath)
        marker = load_json(raw, mpath, problems)
        held = marker.get("record") if isinstance(marker, dict) else None
        if (not record_ok(held) or cbytes(held) != cbytes(rec) or marker != {"record_hash": h, "record": rec}
                or raw not in accepted_forms(marker, (1,), sort_keys=False)):
            problems.append(f"{mpath}: does not hold exactly record {h[:12]}")
    elif "files" in rec:
        problems.append(f"{where}: {mpath} is missing")


ATTEST_KEYS = {"schema", "run", "parent", "record", "step", "threads", "environment", "benchmarks", "scores", "skipped"}


def check_attestations(lin: str, chain: list, problems: list) -> None:
    """docs/lineage.md §4: ATTEST_HEAD → attestation → parent …; canonical bytes named by
    their SHA-256; each names a record on the chain at its step, none twice; no orphans."""
    adir, head_path = os.path.join(lin, "attestations"), os.path.join(lin, "ATTEST_HEAD")
    names = {n[:-5] for n in os.listdir(adir) if not n.startswith(".")} if os.path.isdir(adir) else set()
    steps = {h: rec["step"] for h, rec in chain}
    h = read(head_path).decode("ascii", "replace") if os.path.isfile(head_path) else ""
    if h and (not h.endswith("\n") or not HEX64.fullmatch(h.strip())):
        problems.append(f"{head_path}: not 64 hex digits and a newline")
        return
    h, seen, attested = h.strip(), [], set()
    while h:
        path = os.path.join(adir, h + ".json")
        if h in seen or not os.path.isfile(path):
            problems.append(f"{path}: missing or looping (attestation chain broken)")
            return
        raw = read(path)
        att = load_json(raw, path, problems)
        if not isinstance(att, dict) or set(att) != ATTEST_KEYS or att.get("schema") != "ogi-attest/1":
            problems.append(f"{path}: not an ogi-attest/1 attestation")
            return
        if sha(raw) != h or cbytes(att) != raw:
            problems.append(f"{path}: bytes hash to {sha(raw)}, not its name (or not canonical)")
        if any(not isinstance(v, str) or not DECIMAL.fullmatch(v) for v in att["scores"].values()):
            problems.append(f"{path}: a score is not a \"%.6f\" decimal string")
        if steps.get(att["record"]) != att["step"] or att["record"] in attested:
            problems.append(f"{path}: its record is not on the chain at step {att['step']}, or is attested twice")
        seen.append(h)
        attested.add(att["record"])
        h = att["parent"]
    for name in sorted(names - set(seen)):
        problems.append(f"{adir}/{name}.json: not on the chain from ATTEST_HEAD")


def verify(run: str, corpus: str | None = None) -> list:
    problems = []
    lin = os.path.join(run, "lineage")
    raw_head = read(os.path.join(lin, "HEAD")) if os.path.isfile(os.path.join(lin, "HEAD")) else b""
    head = raw_head.decode("ascii", "replace").strip()
    if not HEX64.fullmatch(head) or raw_head != (head + "\n").encode():
        return [f"{lin}/HEAD: not 64 hex digits and a newline"]
    for rel in sorted(files_under(lin)):
        if not LINEAGE_NAMES.fullmatch(rel):
            problems.append(f"{lin}/{rel}: not part of the lineage format")
    for dirpath, dirnames, _ in os.walk(lin):
        for d in dirnames:
            rel = os.path.relpath(os.path.join(dirpath, d), lin).replace(os.sep, "/")
            if not d.startswith(".") and rel not in ("records", "manifests", "configs", "signatures", "attestations"):
                problems.append(f"{lin}/{rel}: folder not part of the lineage format")
    manifests, configs = {}, {}
    for kind in ("manifests", "configs"):
        d = os.path.join(lin, kind)
        for name in sorted(os.listdir(d)) if os.path.isdir(d) else []:
            if name.startswith("."):
                continue
            where = f"{d}/{name}"
            try:
                raw, stem, where = read(os.path.join(d, name)), name[:-5], f"{d}/{name}"
                obj = load_json(raw, where, problems)
                if not isinstance(obj, dict):
                    continue
                if kind == "configs":
                    if sha(raw) != stem or cbytes(obj) != raw:
                        problems.append(f"{where}: bytes hash to {sha(raw)}, not its name (or not canonical)")
                    else:
                        configs[stem] = obj
                else:
                    body = {k: v for k, v in obj.items() if k != "manifest_hash"}
                    if sha(cbytes(body)) != stem or obj.get("manifest_hash") != stem or raw not in accepted_forms(obj, (1,)):
                        problems.append(f"{where}: content does not hash to its name (or bytes edited)")
                    else:
                        manifests[stem] = obj
            except Exception as e:  # noqa: BLE001
                problems.append(f"{where}: cannot be checked ({type(e).__name__}: {e})")

    chain, h, newer = [], head, None
    while h:
        rpath = os.path.join(lin, "records", h + ".json")
        if not HEX64.fullmatch(h) or not os.path.isfile(rpath) or h in [c[0] for c in chain]:
            problems.append(f"{rpath}: missing, malformed or looping (chain broken)")
            break
        raw = read(rpath)
        rec = load_json(raw, rpath, problems)
        if sha(raw) != h:
            problems.append(f"{rpath}: bytes hash to {sha(raw)}, not its name")
        if not record_ok(rec):
            problems.append(f"{rpath}: not a schema 1/2/3 record")
            break
        if cbytes(rec) != raw:
            problems.append(f"{rpath}: not canonical JSON")
        where = f"record step {rec['step']} ({h[:12]})"
        if newer is not None and (rec["step"] >= newer["step"] or rec["run"] != newer["run"]):
            problems.append(f"{where}: step does not increase, or the run name changes")
        if newer is not None and any(k not in newer["data_cursor"] or newer["data_cursor"][k] < v
                                     for k, v in rec["data_cursor"].items()):
            problems.append(f"{where}: a data_cursor counter goes back or is dropped in the next record")
        chain.append((h, rec))
        newer, h = rec, rec["parent"]
    for h, rec in chain:
        guard(f"record {h[:12]}", problems, check_checkpoint, run, h, rec, manifests, configs, problems)
    on_chain = {h for h, _ in chain}
    rdir = os.path.join(lin, "records")
    for name in sorted(os.listdir(rdir)) if os.path.isdir(rdir) else []:
        if not name.startswith(".") and name[:-5] not in on_chain:
            problems.append(f"{rdir}/{name}: not on the chain from HEAD")
    named = {rec["checkpoint"]: h for h, rec in chain}
    for name in sorted(os.listdir(run)):
        mpath = os.path.join(run, name, "lineage.json")
        if os.path.isfile(mpath):
            marker = load_json(read(mpath), mpath, [])
            if not isinstance(marker, dict) or marker.get("record_hash") not in on_chain:
                problems.append(f"{os.path.join(run, name)}: checkpoint's record is not on the chain")
            elif named.get(name) != marker["record_hash"]:
                problems.append(f"{os.path.join(run, name)}: holds the marker of another checkpoint's record")
    guard("attestations", problems, check_attestations, lin, chain, problems)
    folders = {}
    for _, rec in chain:
        folder = corpus or (configs.get(rec["config_hash"], {}).get("data") or {}).get("corpus")
        if folder:
            folders.setdefault(folder, set()).add(rec["manifest_hash"])
    for folder, names in sorted(folders.items()):
        if os.path.isfile(os.path.join(folder, "manifest.json")):
            guard(f"corpus {folder}", problems, check_corpus, folder, names, problems)
        else:
            print(f"note: corpus {folder} not present, shards not checked", file=sys.stderr)
    return problems


def explain(run: str, step: int, tensor: str) -> None:
    lin = os.path.join(run, "lineage")
    h = read(os.path.join(lin, "HEAD")).decode().strip()
    while h:
        rec = json.loads(read(os.path.join(lin, "records", h + ".json")))
        if rec["step"] == step:
            break
        h = rec["parent"]
    else:
        raise SystemExit(f"no record at step {step}")
    wpath = os.path.join(run, rec["checkpoint"], rec["weights_file"])
    print(f"record {h} (step {step}), weights_root {rec['weights_root']}")
    if rec.get("weights_format", "safetensors") == "safetensors":
        raw = read(wpath)
        (n,) = struct.unpack("<Q", raw[:8])
        info = json.loads(raw[8:8 + n])[tensor]
        s, e = info["data_offsets"]
        data = raw[8 + n + s:8 + n + e]
        print(f"file {rec['checkpoint']}/{rec['weights_file']}: header length {n}, tensor {tensor!r} {info}")
        print(f"data bytes [{8 + n + s}, {8 + n + e}) of the file, first 16: {data[:16].hex()}")
        leaves = safetensors_leaves(raw)
    else:
        dt, shape, pieces = sharded_tensors(wpath)[tensor]
        info = {"dtype": dt, "shape": shape}
        print(f"folder {rec['checkpoint']}/{rec['weights_file']}: tensor {tensor!r} {info} in {len(pieces)} piece(s)")
        for off, pshape, _ in pieces:
            print(f"  piece at offset {off}, shape {pshape}")
        data = assemble(dt, shape, pieces)
        print(f"assembled data, first 16 bytes: {data[:16].hex()}")
        leaves = weight_leaves(wpath, "safetensors-sharded-v1")
    pre = b"\x00" + tensor.encode() + b"\x00" + info["dtype"].encode() + b"\x00" + ",".join(map(str, info["shape"])).encode() + b"\x00"
    i = [x[0] for x in leaves].index(tensor)
    levels = tree([x[3] for x in leaves])
    if info["dtype"] == "F32" and len(data) >= 16:
        print(f"  as little-endian float32: {struct.unpack('<4f', data[:16])}")
    print(f"leaf prefix (hex): {pre.hex()}")
    print(f"leaf = SHA-256(prefix || data) = {hashlib.sha256(pre + data).hexdigest()}")
    print(f"leaf index {i} of {len(leaves)} (names sorted by UTF-8 bytes); level sizes {[len(x) for x in levels]}")
    node, idx = hashlib.sha256(pre + data).digest(), i
    for level in levels[:-1]:
        sib = idx ^ 1
        if sib < len(level):
            pair = level[sib] + node if sib < idx else node + level[sib]
            side = "L" if sib < idx else "R"
            node = hashlib.sha256(b"\x01" + pair).digest()
            print(f"  sibling {side} {level[sib].hex()} -> node {node.hex()}")
        else:
            print("  (last node of an odd level: carried up unchanged)")
        idx //= 2
    print(f"root {node.hex()} == weights_root: {node.hex() == rec['weights_root']}")


def main(argv: list | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run")
    p.add_argument("--corpus", default=None)
    p.add_argument("--explain", nargs=2, metavar=("STEP", "TENSOR"))
    a = p.parse_args(argv)
    if a.explain:
        explain(a.run, int(a.explain[0]), a.explain[1])
        return 0
    problems = verify(a.run, a.corpus)
    for line in problems:
        print(line)
    print("lineage ok" if not problems else f"lineage FAILED ({len(problems)} problems)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())

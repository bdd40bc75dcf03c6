"""Verify a run's lineage from its files alone.

    HEAD ─► record ─► parent ─► … ─► start (parent "")
      for each record: file name == SHA-256 of its canonical JSON; schema; steps increase;
      checkpoint/<weights_file> leaves recomputed from bytes == leaves.json;
      Merkle root of those leaves == record.weights_root;
      manifest copy's hash == record.manifest_hash; run config's hash == record.config_hash
    then: every record file and every checkpoint folder is on the chain (nothing orphaned)

Returns a list of problems; empty means everything holds.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ogi_ray.canonical import canonical_json, hash_canonical, sha256_hex
from ogi_ray.lineage.merkle import leaves_from_safetensors, merkle_root
from ogi_ray.lineage.record import RecordError, check_record, read_head

LEAVES_FILE = "leaves.json"


def find_run_dir(path: str | Path) -> Path:
    """Accept a run folder, or a demo output folder holding one run under ``train/``."""
    p = Path(path)
    if (p / "lineage").is_dir():
        return p
    runs = sorted(q.parent.parent for q in p.glob("*/*/lineage/HEAD")) + sorted(
        q.parent for q in p.glob("*/lineage/HEAD")
    )  # fmt: skip
    if len(runs) == 1:
        return runs[0]
    if not runs:
        raise FileNotFoundError(f"{p}: no lineage/ folder found (is this a run folder?)")
    raise FileNotFoundError(f"{p}: several runs found, name one: {[str(r) for r in runs]}")


def _check_weights(run: Path, rec: dict[str, Any], where: str) -> list[str]:
    ckpt = run / rec["checkpoint"]
    wfile = ckpt / rec["weights_file"]
    if not wfile.is_file():
        return [f"{where}: weights file {wfile} is missing"]
    try:
        leaves = leaves_from_safetensors(wfile)
    except (ValueError, KeyError, TypeError) as e:
        return [f"{where}: {e}"]
    problems = []
    listed_path = ckpt / LEAVES_FILE
    if listed_path.is_file():
        listed = json.loads(listed_path.read_text())
        mine = {n: leaf.hex() for n, leaf in leaves}
        for name in sorted(set(listed) | set(mine)):
            if listed.get(name) != mine.get(name):
                problems.append(f"{where}: tensor {name!r} in {wfile} differs from its recorded leaf hash")
    root = merkle_root([leaf for _, leaf in leaves])
    if root != rec["weights_root"]:
        problems.append(f"{where}: weights root of {wfile} is {root}, record says {rec['weights_root']}")
    return problems


def verify_run(path: str | Path) -> list[str]:
    run = find_run_dir(path)
    ldir = run / "lineage"
    problems: list[str] = []
    head = read_head(ldir)
    if not head:
        return [f"{ldir}/HEAD: missing or empty"]
    manifests = {}
    for mpath in sorted((ldir / "manifests").glob("*.json")):
        body = {k: v for k, v in json.loads(mpath.read_text()).items() if k != "manifest_hash"}
        h = hash_canonical(body)
        if mpath.stem != h:
            problems.append(f"{mpath}: manifest content hashes to {h}, not its name")
        manifests[mpath.stem] = h
    config_hashes = {}
    for cpath in sorted((ldir / "configs").glob("*.json")):
        h = sha256_hex(canonical_json(json.loads(cpath.read_text())))
        if cpath.stem != h:
            problems.append(f"{cpath}: config content hashes to {h}, not its name")
        config_hashes[cpath.stem] = h

    chain: list[str] = []
    h, next_step = head, None
    while h:
        rpath = ldir / "records" / f"{h}.json"
        where = f"record {h[:12]}"
        if not rpath.is_file():
            problems.append(f"{rpath}: missing (chain broken after {len(chain)} records)")
            break
        raw = rpath.read_bytes()
        if sha256_hex(raw) != h:
            problems.append(f"{rpath}: content hash {sha256_hex(raw)} differs from its name")
        try:
            rec = json.loads(raw)
            check_record(rec, str(rpath))
        except (json.JSONDecodeError, UnicodeDecodeError, RecordError) as e:
            problems.append(f"{rpath}: {e}")
            break
        if canonical_json(rec) != raw:
            problems.append(f"{rpath}: not in canonical JSON form")
        where = f"record step {rec['step']} ({h[:12]})"
        if next_step is not None and rec["step"] >= next_step:
            problems.append(f"{where}: step does not increase along the chain")
        if rec["manifest_hash"] not in manifests:
            problems.append(f"{where}: manifest {rec['manifest_hash'][:12]} not found in {ldir / 'manifests'}")
        if rec["config_hash"] not in config_hashes:
            problems.append(f"{where}: config {rec['config_hash'][:12]} not found in {ldir / 'configs'}")
        problems += _check_weights(run, rec, where)
        marker = run / rec["checkpoint"] / "lineage.json"
        if marker.is_file() and json.loads(marker.read_text()).get("record_hash") != h:
            problems.append(f"{marker}: names a different record than the chain ({h[:12]})")
        chain.append(h)
        next_step, h = rec["step"], rec["parent"]

    on_chain = set(chain)
    for rpath in sorted((ldir / "records").glob("*.json")):
        if rpath.stem not in on_chain:
            problems.append(f"{rpath}: record is not on the chain from HEAD (orphan or fork)")
    for marker in sorted(run.glob("*/lineage.json")):
        rh = json.loads(marker.read_text()).get("record_hash", "")
        if rh not in on_chain:
            problems.append(f"{marker.parent}: checkpoint's record {rh[:12]} is not on the chain")
    return problems

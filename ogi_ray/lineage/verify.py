"""Verify a run's lineage from its files alone (format: docs/lineage.md).

    HEAD ("<hex>\\n") ─► record ─► parent ─► … ─► start (parent "")
      each record: file name == SHA-256 of its bytes, which are its canonical JSON; schema;
        steps increase; data cursors never go back; one run name
      weights: <checkpoint>/<weights_file> (one safetensors file, or a folder of per-rank
        shards, lineage/weights.py) tensors re-hashed from the bytes == leaves.json
        (names the tensor that differs); their Merkle root == record.weights_root
      files (schema 2): every file of the checkpoint folder but lineage.json is listed,
        and each SHA-256 matches; lineage.json holds exactly this record
      manifest copy and run config exist under lineage/ and hash to their names
    then: nothing orphaned (records, checkpoint folders) and no unknown file in lineage/
    corpus: the folder named by the config's data.corpus (or ``corpus=``), when present,
      is re-verified shard by shard (ogi_ray.corpus.manifest.verify_corpus) and must be
      the manifest the records name
    eval attestations (ATTEST_HEAD, attestations/): lineage/verify_attest.py
    optional: ed25519 signatures (``pubkey``), and segment replay through ``replay_fn``
      (supplied by the training side; this package never imports ``ogi_ray.train``),
      of segments the verifier chooses with a seed the prover cannot know, and eval
      vectors re-run through ``eval_fn`` (supplied by the eval side) chosen the same way

Returns a list of problems; empty means everything holds. ``notes`` (if a list is given)
receives what was checked or skipped.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ogi_ray.canonical import canonical_json, hash_canonical, sha256_hex
from ogi_ray.lineage.attest import FOLDER as ATTEST_FOLDER
from ogi_ray.lineage.attest import HEAD as ATTEST_HEAD
from ogi_ray.lineage.merkle import merkle_root
from ogi_ray.lineage.record import HEX64, MARKER, RecordError, check_record, weights_format
from ogi_ray.lineage.verify_attest import EvalFn, check_attestations, recheck
from ogi_ray.storage import Store

LEAVES_FILE = "leaves.json"
WEIGHTS_HASH = "sha256-merkle-v1"
ReplayFn = Callable[[Any, dict[str, Any] | None, dict[str, Any], str | None], list[str]]
_LINEAGE_NAME = re.compile(r"(records|manifests|configs)/[0-9a-f]{64}\.json|signatures/[0-9a-f]{64}\.sig|HEAD")


def find_run_dir(path: str | Path) -> Path:
    """Accept a run folder, or a folder holding one run at most two levels down: the
    ``--out`` of ``ogi train`` (OUT/<run.name>) or of ``ogi demo`` (OUT/train/demo)."""
    p = Path(path)
    if (p / "lineage").is_dir():
        return p
    if not p.is_dir():
        raise FileNotFoundError(f"{p}: no such folder")
    runs = sorted({q.parent.parent for pattern in ("*/lineage/HEAD", "*/*/lineage/HEAD") for q in p.glob(pattern)})
    if len(runs) == 1:
        return runs[0]
    if not runs:
        raise FileNotFoundError(f"{p}: no run found (a run folder holds lineage/HEAD; none here or in the "
                                "two levels below)")  # fmt: skip
    raise FileNotFoundError(f"{p}: {len(runs)} runs found, name one: {', '.join(str(r) for r in runs)}")


def run_store(path: str | Path) -> Store:
    """A run folder as a Store: pyarrow URIs are taken as the run folder itself."""
    return Store(path) if "://" in str(path) else Store(find_run_dir(path))


def serialisations(obj: Any, indents: tuple[int, ...] = (), sort_keys: bool = True) -> list[bytes]:
    """The byte forms a JSON file may take: canonical JSON, or Python's ``json.dumps`` with
    one of ``indents`` (what the writers of manifests and markers use). Any other bytes
    (an edited space, a changed escape) are a tampering even if the content is equal."""
    forms = [canonical_json(obj)]
    forms += [json.dumps(obj, indent=i, sort_keys=sort_keys).encode() for i in indents]
    return forms


def _guarded(where: str, fn: Callable[..., list[str]], *args: Any) -> list[str]:
    """Run one check; an unexpected error (a file mangled in a way no rule names) is a
    problem of that check, never a crash of the verifier."""
    try:
        return fn(*args)
    except Exception as e:  # noqa: BLE001 - any failure to re-derive a hash is a finding
        return [f"{where}: cannot be checked ({type(e).__name__}: {e})"]


def _load_json(raw: bytes, where: str, problems: list[str]) -> Any:
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        problems.append(f"{where}: not valid JSON ({e})")
        return None


def _check_weights(run: Store, rec: dict[str, Any], where: str) -> list[str]:
    from ogi_ray.lineage.shards import ShardError
    from ogi_ray.lineage.weights import Weights

    ckpt, wrel = rec["checkpoint"], f"{rec['checkpoint']}/{rec['weights_file']}"
    if rec["weights_hash"] != WEIGHTS_HASH:
        return [f"{where}: unknown weights_hash {rec['weights_hash']!r} (expected {WEIGHTS_HASH})"]
    sharded = weights_format(rec) != "safetensors"
    if not (run.is_dir(wrel) if sharded else run.is_file(wrel)):
        return [f"{where}: weights {'folder' if sharded else 'file'} {run.where(wrel)} is missing"]
    try:
        leaves = list(Weights(run, rec).leaves())
    except (ValueError, ShardError) as e:
        return [f"{where}: {e}"]
    problems: list[str] = []
    if run.is_file(f"{ckpt}/{LEAVES_FILE}"):
        listed = _load_json(run.read_bytes(f"{ckpt}/{LEAVES_FILE}"), run.where(f"{ckpt}/{LEAVES_FILE}"), problems)
        if isinstance(listed, dict):
            mine = {n: leaf.hex() for n, leaf in leaves}
            for name in sorted(set(listed) | set(mine)):
                if listed.get(name) != mine.get(name):
                    problems.append(f"{where}: tensor {name!r} in {run.where(wrel)} differs from its leaf in {LEAVES_FILE}")
    root = merkle_root([leaf for _, leaf in leaves])
    if root != rec["weights_root"]:
        problems.append(f"{where}: weights root of {run.where(wrel)} is {root}, record says {rec['weights_root']}")
    return problems


def _check_files(run: Store, rec: dict[str, Any], h: str, where: str) -> list[str]:
    ckpt, problems = rec["checkpoint"], []
    if "files" in rec:
        present = {f for f in run.list_files(ckpt, recursive=True) if f != MARKER}
        for rel in sorted(present | set(rec["files"])):
            path = run.path(f"{ckpt}/{rel}")
            if rel not in rec["files"]:
                problems.append(f"{where}: {path} is not covered by the record's files")
            elif rel not in present:
                problems.append(f"{where}: {path} is missing (listed in the record's files)")
            elif (got := sha256_hex(run.read_bytes(f"{ckpt}/{rel}"))) != rec["files"][rel]:
                problems.append(f"{where}: {path} has SHA-256 {got}, record says {rec['files'][rel]}")
    mrel = f"{ckpt}/{MARKER}"
    if not run.is_file(mrel):
        if "files" in rec:  # schema ≥ 2 writes it with every checkpoint
            problems.append(f"{where}: {run.where(mrel)} is missing (every checkpoint holds its record)")
        return problems
    raw = run.read_bytes(mrel)
    marker = _load_json(raw, run.where(mrel), problems)
    if marker is None:
        return problems
    held = marker.get("record") if isinstance(marker, dict) else None
    try:  # the marker's copy must be a record in its own right (e.g. "step": 10.0 is not)
        check_record(held, run.where(mrel))
    except RecordError as e:
        return problems + [str(e)]
    if marker != {"record_hash": h, "record": rec} or canonical_json(held) != canonical_json(rec):
        problems.append(f"{run.where(mrel)}: does not hold record {h[:12]} of the chain")
    elif raw not in serialisations(marker, (1,), sort_keys=False):
        problems.append(f"{run.where(mrel)}: bytes are not a serialisation of its content (edited)")
    return problems


def _check_manifest(ldir: Store, name: str, manifests: dict[str, dict]) -> list[str]:
    where, raw, problems = ldir.path(f"manifests/{name}"), ldir.read_bytes(f"manifests/{name}"), []
    m = _load_json(raw, where, problems)
    if not isinstance(m, dict):
        return problems or [f"{where}: not a JSON object"]
    stem = name.removesuffix(".json")
    if (h := hash_canonical({k: v for k, v in m.items() if k != "manifest_hash"})) != stem:
        return [f"{where}: manifest content hashes to {h}, not its name"]
    if m.get("manifest_hash") != stem:
        return [f"{where}: field 'manifest_hash' is {m.get('manifest_hash')!r}, not its name"]
    if raw not in serialisations(m, (1,)):
        return [f"{where}: bytes are not a serialisation of its content (edited)"]
    manifests[stem] = m
    return []


def _check_config(ldir: Store, name: str, configs: dict[str, dict]) -> list[str]:
    where, raw, problems = ldir.path(f"configs/{name}"), ldir.read_bytes(f"configs/{name}"), []
    if (h := sha256_hex(raw)) != name.removesuffix(".json"):
        return [f"{where}: config bytes hash to {h}, not its name"]
    c = _load_json(raw, where, problems)
    if not isinstance(c, dict) or canonical_json(c) != raw:
        return problems or [f"{where}: not a canonical JSON object"]
    configs[h] = c
    return []


def _check_store_objects(ldir: Store, problems: list[str]) -> tuple[dict[str, dict], dict[str, dict]]:
    """Manifest copies and run configs under lineage/, each checked against its name."""
    manifests: dict[str, dict] = {}
    configs: dict[str, dict] = {}
    for name in ldir.list_files("manifests"):
        problems += _guarded(ldir.path(f"manifests/{name}"), _check_manifest, ldir, name, manifests)
    for name in ldir.list_files("configs"):
        problems += _guarded(ldir.path(f"configs/{name}"), _check_config, ldir, name, configs)
    return manifests, configs


def _walk_chain(ldir: Store, head: str, problems: list[str]) -> list[tuple[str, dict]]:
    """Records from HEAD back to the start, checked one by one; returned oldest first."""
    chain: list[tuple[str, dict]] = []
    h, newer = head, None
    while h:
        rrel, where = f"records/{h}.json", f"record {h[:12]}"
        if any(h == seen for seen, _ in chain):
            problems.append(f"{ldir.path(rrel)}: the chain loops")
            break
        if not HEX64.fullmatch(h):
            problems.append(f"{where}: parent {h!r} is not a record hash")
            break
        if not ldir.is_file(rrel):
            problems.append(f"{ldir.path(rrel)}: missing (chain broken after {len(chain)} records)")
            break
        raw = ldir.read_bytes(rrel)
        if sha256_hex(raw) != h:
            problems.append(f"{ldir.path(rrel)}: content hash {sha256_hex(raw)} differs from its name")
        try:
            rec = json.loads(raw)
            check_record(rec, ldir.path(rrel))
        except (json.JSONDecodeError, UnicodeDecodeError, RecordError) as e:
            problems.append(f"{ldir.path(rrel)}: {e}")
            break
        if canonical_json(rec) != raw:
            problems.append(f"{ldir.path(rrel)}: not in canonical JSON form")
        where = f"record step {rec['step']} ({h[:12]})"
        if newer is not None:
            if rec["step"] >= newer["step"]:
                problems.append(f"{where}: step does not increase along the chain")
            if rec["run"] != newer["run"]:
                problems.append(f"{where}: run {rec['run']!r} differs from the next record's {newer['run']!r}")
            for k, v in rec["data_cursor"].items():
                if k not in newer["data_cursor"]:
                    problems.append(f"{where}: data_cursor.{k} is dropped by the next record")
                elif newer["data_cursor"][k] < v:
                    problems.append(f"{where}: data_cursor.{k} goes back in the next record")
        chain.append((h, rec))
        newer, h = rec, rec["parent"]
    return chain[::-1]


def _check_corpus(run: Store, chain: list[tuple[str, dict]], configs: dict[str, dict],
                  manifests: dict[str, dict], corpus: str | Path | None, notes: list[str]) -> list[str]:  # fmt: skip
    """Each corpus the records name, at ``corpus`` or where the recorded config says
    (relative to the run: a copied run with its corpus checks the copy). A corpus that is
    not there is a problem: pass ``corpus=`` (where it is) or ``check_corpus=False``."""
    from ogi_ray.corpus.manifest import MANIFEST, CorpusError, verify_corpus
    from ogi_ray.lineage.locations import corpus_location

    problems: list[str] = []
    wanted: dict[str, set[str]] = {}  # corpus folder -> manifest hashes records name
    for _, rec in chain:
        cfg = configs.get(rec["config_hash"], {})
        phase = int((rec.get("data_cursor") or {}).get("phase", 0))
        folder = str(corpus) if corpus else corpus_location(cfg, phase, run)
        if folder:
            wanted.setdefault(folder, set()).add(rec["manifest_hash"])
    for folder, hashes in sorted(wanted.items()):
        store = Store(folder)
        if not store.is_file(MANIFEST):
            problems.append(f"corpus {store.uri}: not found (the records name manifest {sorted(hashes)[0][:12]}): "
                            "give its folder with --corpus DIR, or skip it with --no-corpus")  # fmt: skip
            continue
        try:
            m = verify_corpus(folder)
        except CorpusError as e:
            problems.append(f"corpus: {e}")
            continue
        except (ValueError, KeyError, TypeError) as e:  # e.g. a byte that is not UTF-8
            problems.append(f"corpus {store.where(MANIFEST)}: cannot be read ({type(e).__name__}: {e})")
            continue
        if store.read_bytes(MANIFEST) not in serialisations(m, (2,)):
            problems.append(f"{store.where(MANIFEST)}: bytes are not a serialisation of its content (edited)")
        for h in sorted(hashes - {m["manifest_hash"]}):
            problems.append(f"corpus {folder}: manifest {m['manifest_hash'][:12]} is not the {h[:12]} the records name")
        if m["manifest_hash"] in manifests and manifests[m["manifest_hash"]] != m:
            problems.append(f"corpus {folder}: manifest.json differs from the run's copy")
        notes.append(f"corpus {store.uri}: manifest and {len(m['shards']) + len(m.get('heldout_shards', []))} shards verified")
    return problems


def verify_run(
    path: str | Path, replay: int = 0, replay_fn: ReplayFn | None = None, *,
    pubkey: str | Path | None = None, corpus: str | Path | None = None, check_corpus: bool = True,
    notes: list[str] | None = None, replay_seed: int | None = None,
    evals: int = 0, eval_fn: EvalFn | None = None, evals_seed: int | None = None,
) -> list[str]:  # fmt: skip
    """All problems with the run at ``path`` (a folder, a demo output folder, or a pyarrow
    URI of a run folder). ``replay`` > 0 replays that many segments, chosen by
    lineage/segments.py (the last one, the largest updates, and draws from
    ``replay_seed``: a fresh random seed when None), with ``replay_fn(run_dir, rec_prev,
    rec, corpus)`` (``rec_prev`` None: from the seeded initialisation). Eval
    attestations are checked (lineage/verify_attest.py); ``evals`` > 0 re-runs that many
    through ``eval_fn(run_dir, attestation, corpus)``."""
    notes = notes if notes is not None else []
    run = run_store(path)
    ldir = run.sub("lineage")
    problems: list[str] = []
    if not ldir.is_file("HEAD"):
        return [f"{ldir.path('HEAD')}: missing"]
    raw_head = ldir.read_bytes("HEAD")
    head = raw_head.decode("utf-8", "replace").strip()
    if not HEX64.fullmatch(head) or raw_head != (head + "\n").encode():
        # The root cause: everything else hangs off HEAD, so nothing more is reported.
        text = json.dumps(raw_head[:80].decode("utf-8", "replace"), ensure_ascii=False)
        return [f"{ldir.where('HEAD')}: must be 64 lowercase hex digits and a newline, got {text}"]
    manifests, configs = _check_store_objects(ldir, problems)
    chain = _walk_chain(ldir, head, problems)
    for h, rec in chain:
        where = f"record step {rec['step']} ({h[:12]})"
        if rec["manifest_hash"] not in manifests:
            problems.append(f"{where}: manifest {rec['manifest_hash'][:12]} not found (or not valid) in {ldir.path('manifests')}")
        if rec["config_hash"] not in configs:
            problems.append(f"{where}: config {rec['config_hash'][:12]} not found (or not valid) in {ldir.path('configs')}")
        problems += _guarded(where, _check_weights, run, rec, where)
        problems += _guarded(where, _check_files, run, rec, h, where)
        if "files" not in rec:
            notes.append(f"{where}: schema 1, only the weights file of {rec['checkpoint']} is covered")
    atts = check_attestations(ldir, chain, problems)
    on_chain = {h for h, _ in chain}
    for rel in ldir.list_files(recursive=True):
        if rel.startswith(f"{ATTEST_FOLDER}/") or rel == ATTEST_HEAD:
            continue  # check_attestations
        if not _LINEAGE_NAME.fullmatch(rel):
            problems.append(f"{ldir.path(rel)}: not part of the lineage format")
        elif rel.startswith("records/") and rel[8:72] not in on_chain:
            problems.append(f"{ldir.path(rel)}: record is not on the chain from HEAD (orphan or fork)")
    for sub in ldir.list_dirs():  # lineage/ holds the four kinds of files and HEAD, nothing else
        if sub not in ("records", "manifests", "configs", "signatures", ATTEST_FOLDER) or ldir.list_dirs(sub):
            problems.append(f"{ldir.where(sub)}: folder not part of the lineage format")
    named = {rec["checkpoint"]: h for h, rec in chain}
    for folder in run.list_dirs():
        if run.is_file(f"{folder}/{MARKER}"):
            marker = _load_json(run.read_bytes(f"{folder}/{MARKER}"), run.where(f"{folder}/{MARKER}"), [])
            rh = marker.get("record_hash", "") if isinstance(marker, dict) else ""
            if not isinstance(rh, str) or rh not in on_chain:
                problems.append(f"{run.where(folder)}: checkpoint's record {str(rh)[:12]} is not on the chain")
            elif named.get(folder) != rh:  # a checkpoint copied under another step's name
                problems.append(f"{run.where(folder)}: holds the marker of record {rh[:12]}, whose checkpoint is "
                                f"{next(r['checkpoint'] for x, r in chain if x == rh)}")  # fmt: skip
    if check_corpus:
        problems += _guarded("corpus", _check_corpus, run, chain, configs, manifests, corpus, notes)
    else:
        notes.append("corpus not checked (--no-corpus)")
    if pubkey is not None:
        from ogi_ray.lineage.sign import verify_signatures

        problems += verify_signatures(ldir, [h for h, _ in chain], pubkey)
        notes.append(f"signatures of {len(chain)} records checked against {pubkey}")
    if atts:
        notes.append(f"{len(atts)} eval attestations checked")
    if replay:
        problems += _replay(run, chain, replay, replay_fn, notes, replay_seed, corpus)
    if evals:
        problems += recheck(run, atts, evals, eval_fn, notes, evals_seed, str(corpus) if corpus else None)
    return problems


def _replay(run: Store, chain: list[tuple[str, dict]], n: int, replay_fn: ReplayFn | None,
            notes: list[str], seed: int | None, corpus: str | Path | None) -> list[str]:  # fmt: skip
    import secrets

    from ogi_ray.lineage.segments import choose_segments

    if replay_fn is None:
        return [f"replay of {n} segments asked, but no replay function was supplied"]
    seed = secrets.randbits(32) if seed is None else seed  # the prover cannot know it
    notes.append(f"replay seed {seed} (rerun with --replay-seed {seed} to replay the same segments)")
    problems = []
    run_dir = run.local_path() or run.uri
    for i, why in choose_segments(run, [rec for _, rec in chain], n, seed):
        (h1, r1) = chain[i]
        r0 = chain[i - 1][1] if i else None
        start = f"{r0['step']} ({chain[i - 1][0][:12]})" if r0 else "0 (the seeded initialisation)"
        got = list(replay_fn(run_dir, r0, r1, str(corpus) if corpus else None))
        problems += [f"replay steps {start}→{r1['step']} ({h1[:12]}): {p}" for p in got]
        notes.append(f"replayed steps {r0['step'] if r0 else 0}→{r1['step']} ({why}): {'ok' if not got else 'FAILED'}")
    return problems

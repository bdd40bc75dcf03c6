"""Tampering with a real run is detected, by ``verify_run`` and by the standalone verifier.

One small real run (corpus build + 4 training steps on 2 pipeline stages, checkpoints at
2 and 4, each rank writing its own weight and optimizer shards) is copied once; each test
changes the copy, verifies, and restores it. Files outside the lineage (metrics/, Ray's
checkpoint_manager_snapshot.json, .validate_storage_marker) are not tampered with:
docs/lineage.md lists them as not covered.
"""

import hashlib
import importlib.util
import json
import random
import shutil
import struct
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest

from ogi_ray.corpus.output import MARKER
from ogi_ray.lineage.verify import verify_run

ROOT = Path(__file__).resolve().parents[1]
STANDALONE = ROOT / "docs" / "verify_lineage_standalone.py"
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def demo(tmp_path_factory, ray_local):
    from ogi_ray.demo import run_demo

    out = tmp_path_factory.mktemp("lineage-tamper") / "out"
    # Two pipeline stages (pp = 2): each stage's rank writes the shards of its own tensors,
    # and the real replay below rebuilds the stages (tests/test_fault_tolerance.py: dp = 2).
    summary = run_demo(out, ["loop.steps=4", "loop.checkpoint_every=2", "parallel.dp=1", "parallel.tp=1",
                             "parallel.pp=2"])  # fmt: skip
    assert summary["verify_problems"] == []
    copy = tmp_path_factory.mktemp("lineage-tamper-copy") / "out"
    shutil.copytree(out, copy)
    return copy


def _run(demo):
    return demo / "train" / "demo"


def _verify(demo, **kw):
    return verify_run(_run(demo), corpus=demo / "corpus", **kw)


def _standalone():
    spec = importlib.util.spec_from_file_location("verify_lineage_standalone", STANDALONE)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def covered_files(demo):
    """Every file the lineage covers: lineage/, each checkpoint folder, the corpus."""
    run = _run(demo)
    files = [p for p in (run / "lineage").rglob("*") if p.is_file()]
    for ck in run.glob("step_*"):
        files += [p for p in ck.rglob("*") if p.is_file()]
    # The corpus, less the build's ownership marker (a fixed text that only says the folder
    # may be rebuilt into; it holds no data and no manifest entry names it).
    files += [p for p in (demo / "corpus").rglob("*") if p.is_file() and p.name != MARKER]
    return sorted(files)


@contextmanager
def flipped(path, offset, mask=0x01):
    raw = bytearray(path.read_bytes())
    raw[offset] ^= mask
    path.write_bytes(bytes(raw))
    try:
        yield
    finally:
        raw[offset] ^= mask
        path.write_bytes(bytes(raw))


def _head(demo):
    return (_run(demo) / "lineage" / "HEAD").read_text().strip()


def test_untouched_copy_verifies_in_both_verifiers(demo):
    notes = []
    assert _verify(demo, notes=notes) == []
    assert any("shards verified" in n for n in notes)
    assert _standalone().verify(str(_run(demo)), str(demo / "corpus")) == []


SHARD = "shard-{:05d}-model-00001-of-00001.safetensors"


def test_records_cover_every_checkpoint_file(demo):
    """Every rank's shards and rank 0's small files are in the record's ``files``."""
    run = _run(demo)
    h = _head(demo)
    while h:
        rec = json.loads((run / "lineage" / "records" / f"{h}.json").read_bytes())
        ck = run / rec["checkpoint"]
        expect = {p.relative_to(ck).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
                  for p in ck.rglob("*") if p.is_file() and p.name != "lineage.json"}
        assert rec["schema"] == 3 and rec["weights_format"] == "safetensors-sharded-v1"
        assert rec.get("files") == expect
        shards = {f"{d}/{SHARD.format(r)}" for d in ("model", "optim") for r in (1, 2)}  # 2 stages
        assert shards | {"train_state.json", "leaves.json", "segment.json"} <= set(expect)
        h = rec["parent"]


def _piece(ck, name):
    """(shard file, absolute byte offset) of the first piece of tensor ``name``."""
    for path in sorted((ck / "model").glob("*.safetensors")):
        raw = path.read_bytes()
        (n,) = struct.unpack("<Q", raw[:8])
        header = json.loads(raw[8 : 8 + n])
        if name in header:
            return path, 8 + n + header[name]["data_offsets"][0]
    raise KeyError(name)


@pytest.mark.parametrize("target", ["weights", "manifest copy", "corpus shard", "corpus manifest",
                                    "record", "optim", "train_state", "config", "HEAD", "marker"])
def test_one_changed_byte_fails_and_names_the_file(demo, target):
    run = _run(demo)
    ck = run / "step_000002"
    lin = run / "lineage"
    wpath, woff = _piece(ck, "norm.weight")
    path, offset, expect = {
        "weights": (wpath, woff + 1, "'norm.weight'"),
        "manifest copy": (next((lin / "manifests").iterdir()), 40, "manifests/"),
        "corpus shard": (demo / "corpus" / "shards" / "part-00001.parquet", 5000, "part-00001.parquet"),
        "corpus manifest": (demo / "corpus" / "manifest.json", 30, "manifest.json"),
        "record": (next((lin / "records").iterdir()), 30, "records/"),
        "optim": (ck / "optim" / SHARD.format(1), 1000, SHARD.format(1)),
        "train_state": (ck / "train_state.json", 3, "train_state.json"),
        "config": (next((lin / "configs").iterdir()), 10, "configs/"),
        "HEAD": (lin / "HEAD", 0, "HEAD"),
        "marker": (ck / "lineage.json", 20, "lineage.json"),
    }[target]  # fmt: skip
    with flipped(path, offset):
        problems = _verify(demo)
        assert problems and any(expect in p for p in problems), problems
        assert _standalone().verify(str(run), str(demo / "corpus"))
    assert _verify(demo) == []


def test_reordered_or_deleted_records_fail(demo):
    lin = _run(demo) / "lineage"
    head = _head(demo)
    rec = json.loads((lin / "records" / f"{head}.json").read_bytes())
    first, second = lin / "records" / f"{rec['parent']}.json", lin / "records" / f"{head}.json"
    a, b = first.read_bytes(), second.read_bytes()
    try:  # swap the two records' contents: both names stop matching
        first.write_bytes(b)
        second.write_bytes(a)
        assert any("differs from its name" in p for p in _verify(demo))
    finally:
        first.write_bytes(a)
        second.write_bytes(b)
    head_raw = (lin / "HEAD").read_bytes()
    try:  # HEAD moved back: the newest record is orphaned
        (lin / "HEAD").write_text(rec["parent"] + "\n")
        assert any("not on the chain" in p for p in _verify(demo))
    finally:
        (lin / "HEAD").write_bytes(head_raw)
    first.rename(first.with_suffix(".bak"))
    try:  # the oldest record deleted: the chain is broken
        problems = _verify(demo)
        assert any("missing (chain broken" in p for p in problems), problems
    finally:
        first.with_suffix(".bak").rename(first)
    optim = _run(demo) / "step_000004" / "optim" / SHARD.format(2)
    optim.rename(optim.with_name(".bak"))
    try:
        assert any(f"optim/{SHARD.format(2)} is missing" in p for p in _verify(demo))
    finally:
        optim.with_name(".bak").rename(optim)
    assert _verify(demo) == []


def test_hundred_random_single_byte_tamperings_all_detected(demo):
    rng = random.Random(20260)
    files = covered_files(demo)
    assert len(files) >= 15
    standalone = _standalone()
    missed, by_file = [], {}
    for _ in range(100):
        path = rng.choice(files)
        offset, mask = rng.randrange(path.stat().st_size), rng.randrange(1, 256)
        with flipped(path, offset, mask):
            ok_pkg = not _verify(demo)
            ok_alone = not standalone.verify(str(_run(demo)), str(demo / "corpus"))
            if ok_pkg or ok_alone:
                missed.append((str(path.relative_to(demo)), offset, mask, ok_pkg, ok_alone))
        by_file[path.name] = by_file.get(path.name, 0) + 1
    assert missed == [], missed
    assert _verify(demo) == []
    print(f"100 tamperings over {len(files)} files, all detected: {sorted(by_file.items())}")


def test_standalone_script_cli_and_stdlib_only(demo):
    import ast

    tree = ast.parse(STANDALONE.read_text())
    mods = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    mods |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert mods <= set(sys.stdlib_module_names), mods - set(sys.stdlib_module_names)
    cmd = [sys.executable, str(STANDALONE), str(_run(demo)), "--corpus", str(demo / "corpus")]
    assert subprocess.run(cmd, capture_output=True).returncode == 0
    shard = demo / "corpus" / "heldout" / "part-00000.parquet"
    with flipped(shard, 100):
        res = subprocess.run(cmd, capture_output=True, text=True)
        assert res.returncode == 1 and "part-00000.parquet" in res.stdout
    ex = subprocess.run([sys.executable, str(STANDALONE), str(_run(demo)), "--explain", "4", "norm.weight"],
                        capture_output=True, text=True)  # fmt: skip
    assert ex.returncode == 0 and "== weights_root: True" in ex.stdout


def test_prove_one_tensor_against_the_record(demo):
    from ogi_ray.lineage.prove import check_proof, prove

    run = _run(demo)
    proof = prove(run, 4, "norm.weight")
    assert proof["ok"] and check_proof(proof)
    # The leaf by hand from the shard bytes the proof points at (a 1-D tensor: its pieces
    # concatenated in offset order): 0x00 name 0x00 dtype 0x00 shape 0x00 data.
    data = b"".join((run / p["file"]).read_bytes()[p["bytes"][0] : p["bytes"][1]]
                    for p in sorted(proof["pieces"], key=lambda p: p["offset"]))  # fmt: skip
    pre = b"\x00norm.weight\x00" + proof["dtype"].encode() + b"\x00" + ",".join(map(str, proof["shape"])).encode() + b"\x00"
    assert proof["leaf"] == hashlib.sha256(pre + data).hexdigest()
    rec = json.loads((run / "lineage" / "records" / f"{proof['record_hash']}.json").read_bytes())
    assert proof["root"] == rec["weights_root"] and rec["step"] == 4
    bad = dict(proof, leaf=hashlib.sha256(b"x").hexdigest())
    assert not check_proof(bad)
    # Another tensor changed in its shard: the proof no longer reaches the record's root.
    with flipped(*_piece(run / "step_000004", "tok_embed.weight")):
        assert not prove(run, 4, "norm.weight")["ok"]


def test_replay_hook_gets_consecutive_records(demo):
    calls = []

    def replay_fn(run_dir, rec, nxt, corpus):
        calls.append((Path(run_dir), rec["step"] if rec else 0, nxt["step"], nxt["parent"], corpus))
        return [] if len(calls) == 1 else ["weights differ after replay"]

    notes = []
    assert _verify(demo, replay=1, replay_fn=replay_fn, notes=notes) == []
    head_rec = json.loads((_run(demo) / "lineage" / "records" / f"{_head(demo)}.json").read_bytes())
    # --replay 1 is the last segment; the corpus the verifier checked goes to the replay.
    assert calls == [(_run(demo), 2, 4, head_rec["parent"], str(demo / "corpus"))]
    assert any(n.startswith("replay seed ") for n in notes)
    problems = _verify(demo, replay=1, replay_fn=replay_fn)
    assert problems == [f"replay steps 2 ({head_rec['parent'][:12]})→4 ({_head(demo)[:12]}): weights differ after replay"]
    assert any("no replay function" in p for p in _verify(demo, replay=1))
    calls.clear()
    _verify(demo, replay=2, replay_fn=lambda *a: calls.append(a) or [])
    assert [(c[1]["step"] if c[1] else 0, c[2]["step"]) for c in calls] == [(0, 2), (2, 4)]  # from the init too


def test_real_replay_reproduces_the_segment_and_catches_a_changed_lambda(demo):
    """The training side's replay (train/replay.py: the 2 pipeline stages rebuilt in 2 gloo
    ranks, from the step-2 checkpoint, the recorded data cursor and λ) reproduces the
    step-4 weights root bit for bit; the same replay with one recorded λ doubled does not."""
    from ogi_ray.train.replay import replay_segment

    run = _run(demo)
    notes = []
    assert _verify(demo, replay=1, replay_fn=replay_segment, notes=notes) == []
    head = json.loads((run / "lineage" / "records" / f"{_head(demo)}.json").read_bytes())
    parent = json.loads((run / "lineage" / "records" / f"{head['parent']}.json").read_bytes())
    seg = run / head["checkpoint"] / "segment.json"
    original = seg.read_bytes()
    entries = json.loads(original)
    name = sorted(entries[0]["lambdas"])[0]
    entries[0]["lambdas"][name] *= 2.0
    seg.write_text(json.dumps(entries))
    try:
        problems = replay_segment(run, parent, head)
    finally:
        seg.write_bytes(original)
    assert len(problems) == 1 and "differs from the record's" in problems[0], problems
    # The first segment, from the seeded initialisation (never replayed before), is
    # reproduced too: weights, optimizer state and EMA target.
    assert replay_segment(run, None, parent) == []


def test_replay_catches_a_rebuilt_chain_with_a_fabricated_next_to_last_checkpoint(demo, tmp_path):
    """A forger replaces the step-2 checkpoint's weights (one ulp of one tensor: any
    fabrication will do) and rebuilds a self-consistent chain (new leaves, records, marker,
    HEAD). Every hash verifies; --replay 1 replays the last segment from the fabricated
    checkpoint and does not reach the recorded step-4 weights."""
    import struct as _struct

    from ogi_ray.canonical import canonical_json, hash_canonical
    from ogi_ray.lineage.merkle import merkle_root
    from ogi_ray.lineage.weights import Weights
    from ogi_ray.storage import Store
    from ogi_ray.train.replay import replay_segment

    forged = tmp_path / "forged"
    shutil.copytree(demo, forged)
    run = _run(forged)
    lin = run / "lineage"
    head = json.loads((lin / "records" / f"{_head(forged)}.json").read_bytes())
    first = json.loads((lin / "records" / f"{head['parent']}.json").read_bytes())
    path, off = _piece(run / first["checkpoint"], "norm.weight")
    raw = bytearray(path.read_bytes())
    (x,) = _struct.unpack_from("<f", raw, off)
    _struct.pack_into("<f", raw, off, x * (1 + 2**-20))  # a few ulps: "close enough" to a forger
    path.write_bytes(bytes(raw))
    leaves = list(Weights(Store(run), first).leaves())
    (run / first["checkpoint"] / "leaves.json").write_text(json.dumps({n: v.hex() for n, v in leaves}, indent=0))

    def sha(p):
        return hashlib.sha256(p.read_bytes()).hexdigest()

    ck = run / first["checkpoint"]
    first["weights_root"] = merkle_root([v for _, v in leaves])
    first["files"] = {k: sha(ck / k) for k in first["files"]}
    h1 = hash_canonical(first)
    head["parent"] = h1
    h2 = hash_canonical(head)
    for p in (lin / "records").iterdir():
        p.unlink()
    for h, rec in ((h1, first), (h2, head)):
        (lin / "records" / f"{h}.json").write_bytes(canonical_json(rec))
        (run / rec["checkpoint"] / "lineage.json").write_bytes(canonical_json({"record_hash": h, "record": rec}))
    (lin / "HEAD").write_text(h2 + "\n")
    # The eval attestations name the genuine records; a forger drops them (an unattested
    # checkpoint is not a finding: evals may be off or still running).
    shutil.rmtree(lin / "attestations")
    (lin / "ATTEST_HEAD").unlink()
    assert verify_run(run, corpus=forged / "corpus") == []  # every hash holds
    problems = verify_run(run, corpus=forged / "corpus", replay=1, replay_fn=replay_segment)
    assert problems and "differs from the record's" in problems[0], problems


def test_export_writes_consolidated_safetensors_whose_root_is_the_records(demo, tmp_path, capsys):
    """``ogi export``: the sharded step-4 weights as one standard file (and split into
    several with an index), loadable by safetensors, rooted as the record says; a
    non-empty --out is refused, and a tampered shard makes the export fail and vanish."""
    from safetensors.numpy import load_file

    from ogi_ray.cli import main
    from ogi_ray.lineage.export import ExportError, export
    from ogi_ray.lineage.merkle import leaf_hash, merkle_root
    from ogi_ray.storage import Store

    run = _run(demo)
    head = json.loads((run / "lineage" / "records" / f"{_head(demo)}.json").read_bytes())
    assert main(["export", str(demo), "--out", str(tmp_path / "one")]) == 0
    arrays = load_file(str(tmp_path / "one" / "model.safetensors"))
    st = {"float32": "F32", "float64": "F64", "int64": "I64"}
    leaves = sorted((n, leaf_hash(n, st[str(a.dtype)], a.shape, a.tobytes())) for n, a in arrays.items())
    assert merkle_root([leaf for _, leaf in leaves]) == head["weights_root"]
    config = json.loads((tmp_path / "one" / "config.json").read_text())
    assert config["step"] == 4 and config["ogi_model"]["dim"] == 64 and config["record_hash"] == _head(demo)
    assert main(["export", str(demo), "--out", str(tmp_path / "one")]) == 2  # not empty
    assert "not empty" in capsys.readouterr().err
    split = export(Store(run), Store(tmp_path / "split"), 2, max_file_bytes=200_000)
    assert split["step"] == 2 and len([f for f in split["files"] if f.startswith("model-")]) > 1
    index = json.loads((tmp_path / "split" / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"]) == set(arrays)
    path, offset = _piece(run / "step_000004", "norm.weight")
    with flipped(path, offset):
        with pytest.raises(ExportError, match="record says"):
            export(Store(run), Store(tmp_path / "bad"))
    assert not list((tmp_path / "bad").glob("*"))


def test_format_rules_the_independent_verifier_found_lax(demo):
    """Each accepted before, each now a problem in both verifiers (docs/lineage.md §5)."""
    run = _run(demo)
    standalone = _standalone()
    marker = run / "step_000002" / "lineage.json"
    original = marker.read_bytes()

    def both_reject(expect):
        problems = _verify(demo)
        assert any(expect in p for p in problems), problems
        assert standalone.verify(str(run), str(demo / "corpus"))

    marker.unlink()  # a checkpoint without its record
    try:
        both_reject("lineage.json is missing")
    finally:
        marker.write_bytes(original)
    m = json.loads(original)  # "step": 10.0 in a Python-layout marker
    m["record"]["step"] = float(m["record"]["step"])
    marker.write_text(json.dumps(m, indent=1))
    try:
        both_reject("'step' must be int")
    finally:
        marker.write_bytes(original)
    shutil.copytree(run / "step_000004", run / "step_000006")  # a checkpoint under a new step name
    try:
        both_reject("holds the marker of record")
    finally:
        shutil.rmtree(run / "step_000006")
    (run / "lineage" / "extra").mkdir()  # an empty folder inside lineage/
    try:
        both_reject("folder not part of the lineage format")
    finally:
        (run / "lineage" / "extra").rmdir()
    assert _verify(demo) == [] and standalone.verify(str(run), str(demo / "corpus")) == []


def test_a_copied_run_verifies_the_corpus_beside_it_and_a_missing_one_fails(demo, tmp_path):
    """The recorded config names the corpus relative to the run: a copy of the demo
    folder checks its own corpus copy (a tampered shard there is caught), and a corpus
    that is not there fails unless --no-corpus."""
    copy = tmp_path / "moved"
    shutil.copytree(demo, copy)
    notes: list[str] = []
    assert verify_run(_run(copy), notes=notes) == []
    assert any(n.startswith(f"corpus {copy / 'corpus'}:") for n in notes), notes
    with flipped(copy / "corpus" / "shards" / "part-00001.parquet", 5000):
        assert any("part-00001.parquet" in p for p in verify_run(_run(copy)))
    shutil.rmtree(copy / "corpus")
    problems = verify_run(_run(copy))
    assert problems and "not found" in problems[0] and "--no-corpus" in problems[0]
    assert verify_run(_run(copy), check_corpus=False) == []


def test_the_same_demo_elsewhere_gives_the_same_chain(demo, tmp_path, ray_local):
    """Two checkouts, one job: the recorded config holds no location, so the same
    training gives byte-identical records (the same hashes) wherever it ran."""
    from ogi_ray.train.config import load_job
    from ogi_ray.train.driver import train

    other = tmp_path / "elsewhere" / "out"
    shutil.copytree(demo / "corpus", other / "corpus")  # what the other checkout builds (same hash)
    job = load_job(ROOT / "jobs" / "configs" / "demo.yaml",
                   ["loop.steps=4", "loop.checkpoint_every=2", "parallel.dp=1", "parallel.tp=1", "parallel.pp=2",
                    f"data.corpus={other / 'corpus'}", "run.name=demo", f"run.storage_path={other / 'train'}"])  # fmt: skip
    summary = train(job, quiet=True)
    assert summary["head"] == _head(demo)
    assert sorted(p.name for p in (other / "train" / "demo" / "lineage" / "records").iterdir()) == sorted(
        p.name for p in (_run(demo) / "lineage" / "records").iterdir())  # fmt: skip

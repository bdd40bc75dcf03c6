"""Record storage through pyarrow.fs (local path, file:// URI, and S3 on localhost),
checkpoint file hashes, and the LineageRegistry as a real, restarted Ray actor."""

import hashlib
import json

import pytest
from _actors import actor_pid, kill_and_wait_restart

from ogi_ray.lineage.record import (
    RecordError,
    checkpoint_files,
    make_record,
    read_head,
    read_record,
)
from ogi_ray.lineage.registry import LineageRegistry
from ogi_ray.storage import Store


def _fields(step, parent, files=True):
    f = {"run": "r", "step": step, "parent": parent, "checkpoint": f"step_{step:06d}",
         "weights_root": "ab" * 32, "weights_hash": "sha256-merkle-v1",
         "weights_file": "model.safetensors", "manifest_hash": "cd" * 32,
         "config_hash": "ef" * 32, "data_cursor": {"rows": step * 8}, "rng": "00" * 32,
         "eval": {"lm": 1.25}}
    if files:
        f["files"] = {"optim.pt": hashlib.sha256(b"o%d" % step).hexdigest()}
    return f


def _canonical_record_hash(rec):
    # Independent of ogi_ray.canonical: sorted keys, no spaces; the fields are ASCII
    # strings, ints and flat maps of them, for which json.dumps is the canonical form.
    return hashlib.sha256(json.dumps(rec, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


@pytest.mark.parametrize("uri", [False, True], ids=["path", "file-uri"])
def test_registry_through_pyarrow_store(tmp_path, uri):
    ldir = tmp_path / "run" / "lineage"
    where = f"file://{ldir}" if uri else str(ldir)
    reg = LineageRegistry(where)
    h1 = reg.append(_fields(2, ""))
    h2 = reg.append(_fields(4, h1))
    assert reg.append(_fields(4, h1)) == h2  # idempotent retry
    with pytest.raises(RecordError):
        reg.append(_fields(6, h1))  # parent is not the head
    # Same local layout whatever the address: records/<hash>.json and HEAD.
    assert sorted(p.name for p in (ldir / "records").iterdir()) == sorted([f"{h1}.json", f"{h2}.json"])
    assert (ldir / "HEAD").read_bytes() == (h2 + "\n").encode()
    raw = (ldir / "records" / f"{h2}.json").read_bytes()
    rec = json.loads(raw)
    assert hashlib.sha256(raw).hexdigest() == h2 == _canonical_record_hash(rec)
    assert rec["schema"] == 2 and rec["files"] == _fields(4, h1)["files"]
    assert not [p for p in ldir.rglob("*") if ".tmp-" in p.name]  # temporaries moved away
    assert LineageRegistry(where).get_head() == h2 == read_head(where)
    assert read_record(where, h1)["step"] == 2


def test_fork_needs_flag_and_a_stored_parent(tmp_path):
    reg = LineageRegistry(str(tmp_path))
    h1 = reg.append(_fields(1, ""))
    h2 = reg.append(_fields(2, h1))
    with pytest.raises(RecordError):
        reg.append(_fields(3, "12" * 32), fork=True)  # unknown parent
    h3 = reg.append(_fields(3, h1), fork=True)
    assert reg.get_head() == h3 != h2


def test_registry_on_s3_writes_records_then_head_and_no_temporaries(s3_server):
    """On an object store there is no rename: records (content-addressed) are put under
    their final keys directly and HEAD last, each one PUT; nothing temporary is left."""
    where = f"{s3_server.bucket('reg')}/run/lineage"
    reg = LineageRegistry(where)
    h1 = reg.append(_fields(2, ""))
    h2 = reg.append(_fields(4, h1))
    keys = [k.split("/lineage/", 1)[1] for k in s3_server.keys(where)]
    assert sorted(keys) == sorted(["HEAD", f"records/{h1}.json", f"records/{h2}.json"])
    assert LineageRegistry(where).get_head() == h2 == read_head(where)
    assert read_record(where, h1)["step"] == 2


def test_schema_1_still_accepted_and_bad_fields_rejected():
    rec = make_record(**_fields(1, "", files=False))
    assert rec["schema"] == 1 and "files" not in rec
    sharded = make_record(**_fields(1, ""), weights_format="safetensors-sharded-v1")
    assert sharded["schema"] == 3
    with pytest.raises(RecordError, match="weights_format"):
        make_record(**_fields(1, ""), weights_format="pickle")
    for bad in ({"weights_root": "AB" * 32}, {"eval": {"lm": "1,5"}}, {"parent": "x"},
                {"files": {"../etc/passwd": "00" * 32}}, {"files": {"lineage.json": "00" * 32}},
                {"files": {"optim.pt": "zz"}}):
        with pytest.raises(RecordError):
            make_record(**{**_fields(1, ""), **bad})


def test_checkpoint_files_hashes_every_file_but_the_marker(tmp_path):
    ck = tmp_path / "step_000002"
    (ck / "sub").mkdir(parents=True)
    content = {"optim.pt": b"\x00\x01opt", "train_state.json": b'{"step":2}', "sub/x.bin": b"x" * 5000}
    for rel, data in content.items():
        (ck / rel).write_bytes(data)
    (ck / "lineage.json").write_bytes(b"{}")
    expect = {rel: hashlib.sha256(data).hexdigest() for rel, data in content.items()}
    assert checkpoint_files(ck) == expect
    assert checkpoint_files(f"file://{ck}") == expect


def test_store_atomic_write_and_listing(tmp_path):
    s = Store(f"file://{tmp_path}")
    s.write_atomic("a/b.json", b"1")
    s.write_atomic("a/b.json", b"22")  # replaces
    (tmp_path / "a" / ".hidden").write_bytes(b"")
    assert s.read_bytes("a/b.json") == b"22"
    assert s.list_files("a") == ["b.json"] and s.list_files("missing") == []
    with pytest.raises(FileNotFoundError):
        s.read_bytes("nope")


def test_registry_actor_reloads_head_after_restart(tmp_path, ray_local):
    ray = ray_local
    actor = ray.remote(LineageRegistry).options(max_restarts=1, max_task_retries=-1, num_cpus=0)
    reg = actor.remote(f"file://{tmp_path / 'lineage'}")
    pid = actor_pid(ray, reg)
    h1 = ray.get(reg.append.remote(_fields(2, "")))
    h2 = ray.get(reg.append.remote(_fields(4, h1)))
    assert kill_and_wait_restart(ray, reg) != pid
    # The restarted actor is a new process whose __init__ read HEAD back from storage:
    # it accepts a child of h2 and would have refused it with an empty head.
    assert ray.get(reg.get_head.remote()) == h2
    h3 = ray.get(reg.append.remote(_fields(6, h2)))
    assert read_head(tmp_path / "lineage") == h3
    assert read_record(tmp_path / "lineage", h3)["parent"] == h2

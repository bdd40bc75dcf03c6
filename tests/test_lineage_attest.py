"""Eval attestations (lineage/attest.py): format, the registry's second chain, and the
verifier's rules (lineage/verify_attest.py). No torch, no Ray: records and scores are
made up here; the demo's real attestations are checked in test_readme.py."""

import hashlib
import json

import pytest

from ogi_ray.lineage.attest import (
    FOLDER,
    attestation_chain,
    check_attestation,
    make_attestation,
    read_attestation,
    unattested,
)
from ogi_ray.lineage.record import RecordError, read_record
from ogi_ray.lineage.registry import LineageRegistry
from ogi_ray.lineage.verify_attest import check_attestations, choose_attestations, recheck
from ogi_ray.storage import Store

DESC = {"name": "digits", "version": "1", "data_sha256": "aa" * 32, "config": {"max_samples": 200}}
ENV = {"torch": "2.13.0", "python": "3.11", "machine": "x86_64", "processor": "x86_64"}


def _record(step, parent):
    return {"run": "r", "step": step, "parent": parent, "checkpoint": f"step_{step:06d}",
            "weights_root": "ab" * 32, "weights_hash": "sha256-merkle-v1", "weights_file": "model",
            "manifest_hash": "cd" * 32, "config_hash": "ef" * 32, "data_cursor": {"rows": step * 8},
            "rng": "00" * 32, "eval": {}, "files": {}, "weights_format": "safetensors-sharded-v1"}  # fmt: skip


def _att(record, step, acc="0.500000"):
    return {"run": "r", "record": record, "step": step, "threads": 1, "env": ENV,
            "result": {"benchmarks": [DESC], "scores": {"digits/probe_acc": acc}, "skipped": {}}}  # fmt: skip


@pytest.fixture
def chain(tmp_path):
    """A registry with records at steps 10, 20, 30 and attestations of 10 and 20."""
    reg = LineageRegistry(tmp_path / "lineage")
    hashes, parent = [], ""
    for step in (10, 20, 30):
        parent = reg.append(_record(step, parent))
        hashes.append(parent)
    atts = [reg.attest(_att(hashes[0], 10)), reg.attest(_att(hashes[1], 20, "0.750000"))]
    ldir = Store(tmp_path / "lineage")
    records = [(h, read_record(ldir, h)) for h in hashes]
    return reg, ldir, records, atts


def test_attestations_chain_in_order_and_a_retry_is_not_a_second_one(chain):
    reg, ldir, records, atts = chain
    got = attestation_chain(ldir)
    assert [h for h, _ in got] == atts and got[0][1]["parent"] == "" and got[1][1]["parent"] == atts[0]
    assert got[1][1]["scores"] == {"digits/probe_acc": "0.750000"} and got[1][1]["record"] == records[1][0]
    # The bytes are canonical and named by their SHA-256 (checked independently here).
    raw = ldir.read_bytes(f"{FOLDER}/{atts[1]}.json")
    assert hashlib.sha256(raw).hexdigest() == atts[1]
    assert raw == json.dumps(json.loads(raw), sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    assert reg.attest(_att(records[1][0], 20, "0.750000")) == atts[1]  # the same eval again
    assert len(attestation_chain(ldir)) == 2
    assert unattested(ldir) == [(30, records[2][0])]
    with pytest.raises(RecordError, match="not stored"):
        reg.attest(_att("12" * 32, 40))


@pytest.mark.parametrize(("edit", "match"), [
    (lambda a: a["scores"].__setitem__("digits/probe_acc", "0.75"), r'"%.6f"'),
    (lambda a: a.pop("environment"), "missing fields"),
    (lambda a: a["benchmarks"][0].pop("data_sha256"), r"benchmarks\[0\]"),
    (lambda a: a.__setitem__("record", "xyz"), "'record'"),
    (lambda a: a.__setitem__("step", 10.0), "'step'"),
])  # fmt: skip
def test_malformed_attestations_are_named(edit, match):
    att = make_attestation(parent="", **_att("ab" * 32, 10))
    check_attestation(att)
    edit(att)
    with pytest.raises(RecordError, match=match):
        check_attestation(att)


def test_verifier_names_a_bad_link_a_wrong_step_a_second_vote_and_an_orphan(chain):
    reg, ldir, records, atts = chain
    problems: list[str] = []
    assert len(check_attestations(ldir, records, problems)) == 2 and problems == []
    # An attestation of a record off the chain (here: the chain without its last records).
    problems = []
    check_attestations(ldir, records[:1], problems)
    assert any("names record" in p and "not on the chain" in p for p in problems)
    # A second attestation of step 10's record, and a stray file in attestations/.
    reg.attest(_att(records[0][0], 10, "0.100000"))
    ldir.write_atomic(f"{FOLDER}/{'77' * 32}.json", b"{}")
    problems = []
    check_attestations(ldir, records, problems)
    assert any("a second attestation" in p for p in problems)
    assert any("77777777" in p and "not on the chain" in p for p in problems)
    # An edited score (file renamed to its new hash is caught by the chain link instead).
    h = atts[0]
    body = json.loads(ldir.read_bytes(f"{FOLDER}/{h}.json"))
    body["scores"]["digits/probe_acc"] = "0.999999"
    ldir.write_atomic(f"{FOLDER}/{h}.json", json.dumps(body, sort_keys=True, separators=(",", ":")).encode())
    with pytest.raises(RecordError, match="hashes to"):
        read_attestation(ldir, h)


def test_rerun_choice_always_has_the_last_and_follows_the_seed():
    assert choose_attestations(1, 5, 0) == [4]
    picks = {tuple(choose_attestations(2, 5, s)) for s in range(40)}
    assert all(p[-1] == 4 for p in picks) and len(picks) == 4  # every earlier one gets drawn
    assert choose_attestations(2, 5, 7) == choose_attestations(2, 5, 7)
    assert choose_attestations(9, 3, 1) == [0, 1, 2]


def test_rerun_reports_what_the_eval_function_finds(chain):
    _, ldir, records, _ = chain
    atts = check_attestations(ldir, records, [])
    notes: list[str] = []
    seen = []

    def eval_fn(run, att, corpus):
        seen.append(att["step"])
        return ["digits/probe_acc: re-run gives 0.500001, recorded 0.750000"] if att["step"] == 20 else []

    problems = recheck(Store(ldir.root.rsplit("/", 1)[0]), atts, 1, eval_fn, notes, seed=3)
    assert seen == [20] and problems == [f"eval of step 20 ({atts[1][0][:12]}): digits/probe_acc: re-run "
                                         "gives 0.500001, recorded 0.750000"]  # fmt: skip
    assert any("eval seed 3" in n for n in notes)
    assert recheck(Store(ldir.root), [], 1, eval_fn, [], 0) == ["re-running 1 eval vectors asked, but the run has "
                                                                 "no attestations"]  # fmt: skip

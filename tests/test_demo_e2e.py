"""End to end: `ogi demo` at its smallest size on a local Ray cluster, then the CLI's
`ogi lineage verify` on the result, accepting it and rejecting a flipped weight byte."""

import json
import shutil

import pytest

from ogi_ray.cli import main
from ogi_ray.demo import run_demo
from ogi_ray.storage import Store
from ogi_ray.train.metrics_log import read_rows


@pytest.fixture(scope="module")
def demo_run(ray_local, tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    summary = run_demo(out, ["loop.steps=6", "loop.checkpoint_every=3", "loop.log_every=2"])
    return out, summary


@pytest.mark.slow
def test_demo_trains_and_chains(demo_run):
    out, s = demo_run
    assert s["verify_problems"] == []
    assert s["checkpoints"] == ["step_000003", "step_000006"]
    assert s["tokens_seen"] > 0 and s["loss_first"] > 0
    run = out / "train" / "demo"
    rows = read_rows(Store(run))
    assert [r["step"] for r in rows] == list(range(6))
    assert all(r["grad_norm"] > 0 for r in rows)
    # All five objectives train on the demo corpus (code, photos, video, robot demos).
    for n in ("lm", "vision", "align", "world", "embod"):
        assert any(f"loss/{n}" in r for r in rows), n
        assert any(r.get(f"gradnorm_raw/{n}", 0) > 0 for r in rows), n
    # The chain: two records, the second pointing at the first, HEAD at the second.
    head = (run / "lineage" / "HEAD").read_text().strip()
    assert head == s["head"] == s["final_record"]
    rec = json.loads((run / "lineage" / "records" / f"{head}.json").read_text())
    assert rec["step"] == 6 and rec["parent"]
    parent = json.loads((run / "lineage" / "records" / f"{rec['parent']}.json").read_text())
    assert parent["step"] == 3 and parent["parent"] == ""
    assert rec["manifest_hash"] == s["manifest_hash"]
    # The eval vector: held-out perplexity per source, vision and alignment on photos.
    assert {"perplexity/code", "perplexity/photos", "vision/photos", "align/photos"} <= set(rec["eval"])
    # World-model eval on the held-out video clip (the 6 robot episodes have no held-out
    # one at this size: held-out rows are whole documents, 5 % of them).
    assert "world/video" in rec["eval"]
    assert float(rec["eval"]["perplexity/code"]) > 1.0


@pytest.mark.slow
def test_cli_verify_accepts_then_rejects_flipped_weight(demo_run, tmp_path, capsys):
    out, _ = demo_run
    assert main(["lineage", "verify", str(out)]) == 0
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    weights = copy / "train" / "demo" / "step_000003" / "model" / "shard-00002-model-00001-of-00001.safetensors"
    raw = bytearray(weights.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    weights.write_bytes(bytes(raw))
    capsys.readouterr()
    assert main(["lineage", "verify", str(copy)]) == 1
    err = capsys.readouterr().err
    assert "step 3" in err and "shard-00002-model-00001-of-00001.safetensors" in err

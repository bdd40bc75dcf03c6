"""The README's commands, run as written, end to end: every ``.venv/bin/ogi`` line of its
bash blocks (``make demo`` and ``make test`` are CI's and fresh-clone-check's), in a
scratch folder that holds only the checkout's ``datasets/``, ``jobs/`` and ``.venv``.

Then what that run must be: valid JSON on stdout and a live progress line on stderr; all
five objectives trained on the demo corpus; a linear chain; held-out scores per source;
a verify that rejects a flipped weight byte; TensorBoard event files beside the metrics.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from ogi_ray.cli import main
from ogi_ray.storage import Store
from ogi_ray.train.metrics_log import read_rows

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def readme_commands() -> list[str]:
    blocks = re.findall(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)
    return [line.strip() for b in blocks for line in b.splitlines() if line.strip().startswith(".venv/bin/ogi")]


@pytest.fixture(scope="module")
def readme_run(tmp_path_factory):
    """Each README command in order; returns the scratch folder, each one's stderr and
    each one's stdout."""
    here = tmp_path_factory.mktemp("readme")
    for name in ("datasets", "jobs", ".venv"):
        (here / name).symlink_to(ROOT / name)
    env = {**os.environ, "RAY_DEDUP_LOGS": "0"}
    env.pop("RAY_ADDRESS", None)
    errs, outs = {}, {}
    for cmd in readme_commands():
        res = subprocess.run(["bash", "-c", cmd], cwd=here, env=env, capture_output=True, text=True, timeout=900)
        assert res.returncode == 0, f"README command failed: {cmd}\n{res.stderr[-3000:]}"
        errs[cmd], outs[cmd] = res.stderr, res.stdout
    return here, errs, outs


def test_the_readme_shows_these_commands():
    cmds = readme_commands()
    assert any(c.startswith(".venv/bin/ogi train --config jobs/configs/demo.yaml") for c in cmds), cmds
    assert any(c.startswith(".venv/bin/ogi lineage verify") for c in cmds)


def test_train_prints_json_on_stdout_and_progress_on_stderr(readme_run):
    here, errs, _ = readme_run
    summary = json.loads((here / "runs" / "result.json").read_text())  # nothing else on stdout
    assert summary["steps"] == 4 and summary["checkpoints"] == ["step_000002", "step_000004"]
    train_err = next(e for c, e in errs.items() if " train " in c)
    assert re.search(r"step 4/4 \(100%\) \| loss .*lm [0-9.]+ .*tok/s \| last checkpoint step_00000[24]", train_err)
    assert "plan       dp=2 tp=1 pp=1" in train_err  # the launch plan, printed before training


def test_the_run_trains_every_objective_and_chains(readme_run):
    here, _, _ = readme_run
    run = here / "runs" / "demo"
    rows = read_rows(Store(run))
    assert [r["step"] for r in rows] == list(range(4))
    assert all(r["grad_norm"] > 0 for r in rows)
    for n in ("lm", "vision", "align", "world", "embod"):  # code, photos, video, robot demos
        assert any(f"loss/{n}" in r for r in rows), n
        assert any(r.get(f"gradnorm_raw/{n}", 0) > 0 for r in rows), n
    head = (run / "lineage" / "HEAD").read_text().strip()
    rec = json.loads((run / "lineage" / "records" / f"{head}.json").read_text())
    parent = json.loads((run / "lineage" / "records" / f"{rec['parent']}.json").read_text())
    assert rec["step"] == 4 and parent["step"] == 2 and parent["parent"] == ""
    assert {"perplexity/code", "perplexity/photos", "vision/photos", "align/photos"} <= set(rec["eval"])
    assert float(rec["eval"]["perplexity/code"]) > 1.0
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    assert (run / "report.md").is_file() and (here / "runs" / "demo-export" / "model.safetensors").is_file()


def test_a_second_train_into_the_run_is_refused_before_ray_starts(readme_run, capsys):
    here, _, _ = readme_run
    cfg = str(ROOT / "jobs" / "configs" / "demo.yaml")
    out = str(here / "runs")
    assert main(["train", "--config", cfg, "--out", out, f"data.corpus={here / 'runs' / 'demo-corpus'}"]) == 2
    err = capsys.readouterr().err
    assert "already holds run 'demo' at step 4" in err and "--resume" in err
    # A resume whose model differs is refused too, naming the field, before any worker.
    assert main(["train", "--config", cfg, "--out", out, "--resume", "model.dim=32",
                 f"data.corpus={here / 'runs' / 'demo-corpus'}"]) == 2  # fmt: skip
    err = capsys.readouterr().err
    assert "cannot be resumed" in err and "model.dim: 64 in the run, 32 now" in err


def test_verify_rejects_a_flipped_weight_byte(readme_run, tmp_path, capsys):
    here, _, _ = readme_run
    copy = tmp_path / "copy"
    shutil.copytree(here / "runs" / "demo", copy)
    weights = copy / "step_000002" / "model" / "shard-00002-model-00001-of-00001.safetensors"
    raw = bytearray(weights.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    weights.write_bytes(bytes(raw))
    capsys.readouterr()
    assert main(["lineage", "verify", str(copy)]) == 1
    err = capsys.readouterr().err
    assert "step 2" in err and "shard-00002-model-00001-of-00001.safetensors" in err


def test_every_checkpoint_is_attested_and_verify_reruns_the_evals(readme_run):
    """The demo's checkpoints carry the five benchmarks' scores in attestations (committed
    by the eval actor, not the trainer); the README's verify --evals 2 re-ran both."""
    from ogi_ray.lineage.attest import attestation_chain

    here, errs, _ = readme_run
    run = here / "runs" / "demo"
    atts = attestation_chain(Store(run / "lineage"))
    assert [a["step"] for _, a in atts] == [2, 4]
    summary = json.loads((here / "runs" / "result.json").read_text())
    assert summary["attestations"] == 2 and summary["eval_failures"] == []
    for _, att in atts:
        assert [d["name"] for d in att["benchmarks"]] == ["heldout", "humaneval", "digits", "world", "metaworld"]
        assert {"humaneval/canonical_loss", "digits/probe_acc", "world/error_ratio", "metaworld/success",
                "heldout/perplexity/code"} <= set(att["scores"])  # fmt: skip
    verify_err = next(e for c, e in errs.items() if "lineage verify" in c)
    assert verify_err.count("re-ran the eval vector of step") == 2 and "FAILED" not in verify_err


def test_an_edited_and_rehashed_score_fails_the_eval_rerun(readme_run, tmp_path, capsys):
    """A forger edits the last attestation's score and re-hashes it (a consistent-looking
    chain): only re-running the eval catches it."""
    from ogi_ray.canonical import canonical_json, hash_canonical
    from ogi_ray.lineage.attest import attestation_chain

    here, _, _ = readme_run
    copy = tmp_path / "copy"
    shutil.copytree(here / "runs" / "demo", copy)
    ldir = copy / "lineage"
    (h, att), = attestation_chain(Store(ldir))[-1:]
    att["scores"]["digits/probe_acc"] = "0.999999"
    (ldir / "attestations" / f"{h}.json").unlink()
    new = hash_canonical(att)
    (ldir / "attestations" / f"{new}.json").write_bytes(canonical_json(att))
    (ldir / "ATTEST_HEAD").write_text(new + "\n")
    capsys.readouterr()
    corpus = str(here / "runs" / "demo-corpus")  # the copy left its corpus behind: name it
    assert main(["lineage", "verify", str(copy), "--corpus", corpus]) == 0  # every hash holds
    assert main(["lineage", "verify", str(copy), "--corpus", corpus, "--evals", "1"]) == 1
    err = capsys.readouterr().err
    assert "eval of step 4" in err and "digits/probe_acc: re-run gives" in err and "recorded 0.999999" in err


def test_ogi_sample_prints_a_continuation_and_an_action_chunk(readme_run):
    _, _, outs = readme_run
    out = next(o for c, o in outs.items() if " sample " in c)
    assert out.startswith("[text] T=0.8 top-k=40 seed=0 max 16 tokens\ndef ")
    assert "[action chunk]" in out and "sampled action" in out

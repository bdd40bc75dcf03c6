"""Data a user brings: all five kinds, some on an S3 API on localhost (moto's server mode),
built on a real local Ray cluster with a pretrained tokenizer.json; the same manifest
hash from another run with one CPU; row-level license gating; bad input named by file
and row, or skipped and counted.

Fixtures write the packaged real data into the user formats (tests/_user_data.py).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import _user_data as ud
import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
RATES = {"text": 1.0, "image": 0.5, "video": 0.3, "audio": 0.1, "proprio": 0.125, "action": 0.25}


@pytest.fixture(scope="module")
def ray2(s3_server):
    """A 2-CPU local cluster started after the S3 server, so its workers see it."""
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield s3_server
    ray.shutdown()


@pytest.fixture(scope="module")
def data(s3_server, tmp_path_factory):
    """User data: local files and objects in a fresh S3 bucket; returns paths and labels."""
    from ogi_ray.corpus.pretrained_files import ensure

    local = tmp_path_factory.mktemp("user")
    bucket = s3_server.bucket("user")
    fs, b = s3_server.filesystem(), bucket.removeprefix("s3://")
    labels = ud.wiki_jsonl(local / "wiki" / "articles.jsonl.gz")
    ud.code_parquet(fs, f"{b}/code/stdlib.parquet", ["bisect.py", "colorsys.py", "keyword.py", "shlex.py"])
    ud.webdataset(fs, f"{b}/images/photos-000.tar", ud.photos())
    ud.webdataset(fs, f"{b}/images/emoji-000.tar", ud.emoji())
    ud.speech(fs, f"{b}/speech")
    ud.video_clips(local / "video")
    lengths = ud.lerobot(local / "robot", ["button-press-v3:seed0", "drawer-open-v3:seed1"])
    try:
        tok = ensure("anthropic-tokenizer.json")
    except FileNotFoundError as e:
        pytest.fail(f"pretrained tokenizer missing: {e} (scripts/setup_data.sh fetches it)")
    return {"local": local, "bucket": bucket, "labels": labels, "lengths": lengths, "tokenizer": tok}


def mixture(data: dict, path: Path, **over) -> Path:
    b, loc = data["bucket"], data["local"]
    m = {
        "name": "user", "seed": 1, "exchange_rates": RATES, "shard_rows": 64, "heldout_fraction": 0.1,
        "text_tokenizer": {"kind": "hf", "file": str(data["tokenizer"]), "bos_token": "<SOS>",
                           "eos_token": "<EOT>", "pad_token": "<EOT>", "max_tokens": 64},
        "patches": {"size": 32, "patch": 8, "max_tubelets": 64, "max_audio_frames": 64, "max_steps": 16},
        "sources": [
            {"name": "wiki", "kind": "text", "share": 0.4, "modalities": ["text"],
             "params": {"path": str(loc / "wiki"), "id_field": "id", "license_field": "license",
                        "metadata_fields": ["title"]}},
            {"name": "code", "kind": "text", "share": 0.1, "modalities": ["text"], "license": "PSF-2.0",
             "params": {"path": f"{b}/code", "id_field": "path"}},
            {"name": "images", "kind": "image_text", "share": 0.15, "modalities": ["image", "text"],
             "license": "CC0-1.0 AND OFL-1.1 AND Apache-2.0 AND Unicode-DFS-2016", "params": {"path": f"{b}/images"}},
            {"name": "video", "kind": "video_text", "share": 0.15, "modalities": ["video", "audio", "text"],
             "license": "CC-BY-3.0 AND BSD-3-Clause",
             "params": {"path": str(loc / "video"), "fps": 5, "size": 32, "frames_per_chunk": 8}},
            {"name": "speech", "kind": "audio_text", "share": 0.1, "modalities": ["audio", "text"],
             "license": "CC-BY-SA-3.0", "params": {"path": f"{b}/speech"}},
            {"name": "robot", "kind": "lerobot", "share": 0.1, "modalities": ["video", "proprio", "action", "text"],
             "license": "MIT AND Apache-2.0", "params": {"path": str(loc / "robot"), "size": 32}},
        ],
    }  # fmt: skip
    m.update(over)
    path.write_text(yaml.safe_dump(m, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def built(ray2, data, tmp_path_factory):
    from ogi_ray.corpus.build import build_corpus

    mix = mixture(data, tmp_path_factory.mktemp("mix") / "user.yaml")
    out = f"{data['bucket']}/corpus"
    return mix, out, build_corpus(mix, out)


def _read_all(paths: list[str], columns: list[str]) -> dict:
    import pyarrow.fs as pafs

    cols: dict = {c: [] for c in columns}
    for p in paths:
        fs, key = pafs.FileSystem.from_uri(p)
        with fs.open_input_file(key) as f:
            for c, v in pq.read_table(f, columns=columns).to_pydict().items():
                cols[c] += v
    return cols


def test_five_kinds_on_s3_build_the_same_hash_with_one_cpu(built, data, tmp_path):
    from ogi_ray.corpus.manifest import shard_paths, verify_corpus

    mix, out, m = built
    assert verify_corpus(out) == m and all(p.startswith(out + "/shards/") for p in shard_paths(out))
    assert {s["kind"] for s in m["sources"]} == {"text", "image_text", "video_text", "audio_text", "lerobot"}
    t = _read_all(shard_paths(out), ["source", "position", "modality", "text_tokens", "text_doc_lens", "tokens_text"])
    assert t["position"] == list(range(m["total_rows"]))
    mods = {x for s in t["modality"] for x in s.split("+")}
    assert mods == set(RATES)  # every modality, audio from the clip's own track and the FLACs
    # The tokenizer's own ids: <EOT> (id 0) ends every packed document, not a fixed id.
    tok = m["tokenizers"]["text"]
    assert (tok["kind"], tok["eos_id"], tok["bos_id"], tok["vocab_size"]) == ("hf", 0, 4, 65000)
    wiki = [i for i, s in enumerate(t["source"]) if s == "wiki"]
    for i in wiki:
        ids, lens = np.frombuffer(t["text_tokens"][i], "<i4"), np.frombuffer(t["text_doc_lens"][i], "<i4")
        ends = np.cumsum(lens)[:-1] - 1
        assert lens.sum() == t["tokens_text"][i] and (ids[ends] == 0).all()
    # Another run, another cluster with one CPU, through the CLI: the same bytes.
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    out2 = f"{data['bucket']}/corpus-1cpu"
    proc = subprocess.run([sys.executable, "-m", "ogi_ray.cli", "--num-cpus", "1", "corpus", "build", str(mix),
                           "--out", out2], capture_output=True, text=True, env=env, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    again = verify_corpus(out2)
    assert again["manifest_hash"] == m["manifest_hash"] and m["manifest_hash"] in proc.stdout
    robot = next(s for s in m["sources"] if s["name"] == "robot")
    assert robot["tokens_by_modality"]["action"] > 0 and robot["unique_rows"] >= 2


def test_row_licenses_exclude_exactly_the_denied_rows(built, data):
    from ogi_ray.corpus.manifest import shard_paths

    _, out, m = built
    wiki = next(s for s in m["sources"] if s["name"] == "wiki")
    labels = {r: len(v) for r, v in data["labels"].items() if r != "kept"}
    assert wiki["excluded_rows"] == labels and wiki["license_field"] == "license"
    assert wiki["repeat_factor"] >= 1.0, {s["name"]: s["repeat_factor"] for s in m["sources"]}
    t = _read_all(shard_paths(out) + shard_paths(out, "heldout"), ["source", "meta"])
    titles = {d["title"] for s, meta in zip(t["source"], t["meta"], strict=True) if s == "wiki"
              for d in json.loads(meta) if d}  # fmt: skip
    assert titles == set(data["labels"]["kept"])  # every kept article, and no other


def test_bad_rows_fail_naming_file_and_row_or_are_counted(ray2, data, tmp_path):
    """A malformed JSONL line, a truncated tar and an undecodable image: the build stops
    naming the source, the file and the row; with on_error: skip it counts them."""
    from ogi_ray.corpus.build import build_corpus
    from ogi_ray.corpus.tokenize import SourceDataError

    bad = tmp_path / "bad"
    (bad / "text").mkdir(parents=True)
    good = [json.dumps({"text": t}) for t in ("The cat sat on the mat. " * 40, "A second line of prose. " * 40)]
    (bad / "text" / "a.jsonl").write_text("\n".join([good[0], '{"text": "unterminated', good[1], '{"txt": "no text"}']) + "\n")
    import pyarrow.fs as pafs

    fs = pafs.LocalFileSystem()
    (bad / "img").mkdir()
    ud.webdataset(fs, str(bad / "img" / "a.tar"), ud.photos(4), bad_key="cat_1")
    ud.webdataset(fs, str(bad / "img" / "b.tar"), ud.photos(4), truncate=True)
    srcs = [{"name": "t", "kind": "text", "share": 0.5, "modalities": ["text"], "license": "MIT",
             "params": {"path": str(bad / "text")}},
            {"name": "i", "kind": "image_text", "share": 0.5, "modalities": ["image", "text"], "license": "CC0-1.0",
             "params": {"path": str(bad / "img")}}]  # fmt: skip
    tiktoken = {"kind": "tiktoken", "file": str(data["tokenizer"].parent / "gpt2.tiktoken"), "pattern": "r50k_base",
                "special_tokens": {"<|endoftext|>": 50256}, "bos_token": "<|endoftext|>",
                "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>", "max_tokens": 32}  # fmt: skip
    mix = mixture(data, tmp_path / "bad.yaml", sources=srcs, text_tokenizer=tiktoken, heldout_fraction=0.0)
    with pytest.raises(SourceDataError) as e:
        build_corpus(mix, tmp_path / "out")
    assert (e.value.source, e.value.item, e.value.row) == ("t", str(bad / "text" / "a.jsonl"), "line 2")  # mixture order
    assert "malformed JSON line" in str(e.value) and str(mix) in str(e.value) and "more" in str(e.value)
    for s in srcs:
        s["on_error"] = "skip"
    m = build_corpus(mixture(data, tmp_path / "skip.yaml", sources=srcs, text_tokenizer=tiktoken, heldout_fraction=0.0),
                     tmp_path / "out")  # fmt: skip
    got = {s["name"]: s["skipped_rows"] for s in m["sources"]}
    assert got == {"t": {"malformed JSON line": 1, "missing field 'text'": 1},
                   "i": {"undecodable image": 1, "truncated tar": 1}}  # fmt: skip
    assert m["tokenizers"]["text"]["eos_id"] == 50256 and m["tokenizers"]["text"]["vocab_size"] == 50257


def test_unreachable_or_missing_inputs_fail_before_ray(data, tmp_path):
    from ogi_ray.config import ConfigError
    from ogi_ray.corpus.build import prepare_build

    for path, message in ((str(data["local"] / "nope"), "does not exist"), ("s3://no-such-bucket-ogi/x", "")):
        srcs = [{"name": "t", "kind": "text", "share": 1.0, "modalities": ["text"], "license": "MIT", "params": {"path": path}}]
        with pytest.raises(ConfigError) as e:
            prepare_build(mixture(data, tmp_path / "m.yaml", sources=srcs), tmp_path / "out")
        assert e.value.field == "sources[0].params.path" and path in e.value.message and message in e.value.message


def test_the_pretrained_tokenizer_corpus_trains_with_its_own_eos_and_pad(built, data):
    """The S3 corpus built with tokenizer.json trains (2 workers, run on S3 too): the model
    pads with the tokenizer's PAD, and the attention boundaries fall after its EOS."""
    from dataclasses import replace

    import torch

    from ogi_ray.config import ConfigError
    from ogi_ray.lineage.verify import verify_run
    from ogi_ray.storage import Store
    from ogi_ray.train.config import job_from_dict
    from ogi_ray.train.data import COLUMNS, collate
    from ogi_ray.train.driver import train
    from ogi_ray.train.launch import plan_launch
    from ogi_ray.train.metrics_log import read_rows

    _, corpus, m = built
    tok = m["tokenizers"]["text"]
    storage = f"{data['bucket']}/runs"
    job = job_from_dict({
        "model": {"preset": "tiny", "vocab_size": tok["vocab_size"]},
        "data": {"corpus": corpus, "batch_size": 4, "seq_len": 64, "accum_steps": 1, "max_audio_frames": 64},
        "loop": {"steps": 2, "checkpoint_every": 2, "log_every": 1},
        "workers": {"num_workers": 2, "cpus_per_worker": 0.5},
        "run": {"name": "hf-tok", "storage_path": storage},
    })  # fmt: skip
    model_cfg = plan_launch(job).job.model
    assert model_cfg.pad_id == tok["pad_id"] == 0  # <EOT> here, the tokenizer's choice
    from ogi_ray.corpus.manifest import shard_paths

    rows = _read_all(shard_paths(corpus)[:1], COLUMNS)
    batch = collate(rows, model_cfg, torch.Generator().manual_seed(0))
    tokens, doc, valid = batch["tokens"], batch["text_doc"], batch["text_valid"]
    cut = (doc[:, 1:] != doc[:, :-1]) & valid[:, 1:]  # a new document starts at t+1
    assert cut.any(), "no packed row holds two documents"
    assert (tokens[:, :-1][cut] == tok["eos_id"]).all()  # ... right after the EOS
    # Fewer audio slots than the rows hold would shift the shares: refused, named.
    with pytest.raises(ConfigError, match=r"modality audio.*audio 16 of 64"):
        plan_launch(replace(job, data=replace(job.data, max_audio_frames=16)))
    summary = train(job, quiet=True)
    logged = read_rows(Store(f"{storage}/hf-tok"))
    assert [r["step"] for r in logged] == [0, 1] and all(np.isfinite(r["loss/lm"]) for r in logged)
    assert summary["steps"] == 2
    # What was fed, counted by the trainer: text equals its own token count, and nothing
    # is cut (the slots hold whole rows), so fed = raw for every modality.
    last = logged[-1]
    assert last["tokens_fed/text"] == last["tokens_seen"] == summary["tokens_by_modality"]["text"]
    assert all(last[f"tokens_fed/{m}"] == last[f"tokens_raw/{m}"] for m in RATES if f"tokens_raw/{m}" in last)
    assert sum(last[f"share/{s['name']}"] for s in m["sources"]) == pytest.approx(1.0)
    assert verify_run(f"{storage}/hf-tok") == []

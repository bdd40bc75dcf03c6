"""A 2-trial proxy swarm on real Ray Tune, end to end, and its resumption.

Real parts only: a local Ray cluster, real corpus builds from stdlib code and skimage
photos, real `ogi train` proxies (tiny model, 2-3 steps, Ray Train local mode inside a
Tune trial). Two proxies cannot fit rates (the math is tested in test_rates_fit.py); the
test checks the trial table the fit would get, and that running again reuses every
finished proxy instead of training it again.
"""

import shutil
import sysconfig
import time
from pathlib import Path

import pytest
import yaml

from ogi_ray.config import ConfigError

pytestmark = pytest.mark.slow

STDLIB = Path(sysconfig.get_paths()["stdlib"])
CODE_FILES = ["bisect.py", "colorsys.py", "keyword.py", "reprlib.py", "this.py", "shlex.py"]


@pytest.fixture(scope="module")
def swarm_config(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("swarm")
    (tmp / "code").mkdir()
    for f in CODE_FILES:
        shutil.copy(STDLIB / f, tmp / "code" / f)
    mixture = {
        "name": "mini", "seed": 3, "exchange_rates": {"text": 1.0, "image": 0.5},
        "text_tokenizer": {"vocab_size": 400, "train_chars": 200000, "max_tokens": 64},
        "patches": {"size": 32, "patch": 8}, "shard_rows": 64,
        "sources": [
            {"name": "code", "kind": "python_stdlib", "share": 0.6, "modalities": ["text"],
             "license": "PSF-2.0", "params": {"root": str(tmp / "code")}},
            {"name": "photos", "kind": "skimage_captions", "share": 0.4, "modalities": ["text", "image"],
             "license": "CC0-1.0", "params": {"names": ["cat", "coffee", "rocket", "moon", "astronaut", "camera"], "views": 3}},
        ],
    }  # fmt: skip
    job = {"model": {"preset": "tiny", "dim": 32, "n_heads": 2, "n_layers": 1},
           "data": {"batch_size": 2, "accum_steps": 1, "seq_len": 32, "eval_rows_per_source": 4,
                    "accept_share_difference_pp": 100},  # as proxy.yaml: the swarm counts what was fed
           "workers": {"num_workers": 0, "threads": 1}, "tuner": {"enabled": False}}  # fmt: skip
    swarm = {"name": "mini", "base_job": "job.yaml", "base_mixture": "mix.yaml", "proxies": 2, "seed": 0,
             "design": {"steps": [2, 3], "spread": 4.0, "heldout_fraction": 0.3},
             "metric": {"normalise": "swarm_mean"},  # no untrained trial: two trials at once, one round
             "fit": {"bootstrap": 0}, "resources": {"cpus_per_trial": 0.5, "max_concurrent": 2}}  # fmt: skip
    for name, doc in (("mix.yaml", mixture), ("job.yaml", job), ("swarm.yaml", swarm)):
        (tmp / name).write_text(yaml.safe_dump(doc))
    return tmp / "swarm.yaml"


def test_two_trial_swarm_runs_and_resumes(ray_local, swarm_config, tmp_path):
    from ogi_ray.rates.config import load_swarm
    from ogi_ray.rates.measure import fit_swarm, trial_arrays
    from ogi_ray.rates.observe import final_record, read_manifest
    from ogi_ray.rates.swarm import run_swarm

    cfg = load_swarm(swarm_config)
    out = tmp_path / "out"
    doc = run_swarm(cfg, out)
    trials = doc["trials"]
    assert [t["proxy"] for t in trials] == ["proxy-00", "proxy-01"]
    assert [t["steps"] for t in trials][0] == 3 and not any(t["reused"] for t in trials)
    # proxy-00 trains on the base shares (the reference corpus), proxy-01 on its own mixture.
    assert trials[0]["corpus"] == str(out / "corpora" / "reference")
    assert trials[1]["corpus"] == str(out / "corpora" / "proxy-01")
    assert trials[0]["shares"] != trials[1]["shares"]
    held = [read_manifest(t["corpus"])["heldout_shards"] for t in trials]
    assert held[0] == held[1] and held[0], "both proxies are scored on the same held-out rows"
    for t in trials:
        # The recount of the rows fed to the model agrees with the trainer's own text count.
        assert t["tokens"]["text"] == t["tokens_seen"] > 0
        assert t["tokens"]["image"] > 0 and t["tokens"]["video"] == 0
        assert t["rows"] == t["steps"] * 2  # batch 2, one micro-batch, one rank
        assert t["manifest_hash"] == read_manifest(t["corpus"])["manifest_hash"]
        assert any(k.startswith("perplexity/") for k in t["eval"])
        assert (out / "tune" / t["proxy"]).is_dir()  # each proxy was a Ray Tune trial
    a = trial_arrays(trials, cfg)
    assert a["objectives"][0] == "lm" and a["metric"].shape == (2,)
    assert abs(a["metric"].mean() - 1.0) < 1e-12  # normalised by the swarm mean
    with pytest.raises(ConfigError, match="trials cannot fit"):
        fit_swarm(cfg, doc)

    heads = [final_record(t["run_dir"]) for t in trials]
    t0 = time.perf_counter()
    again = run_swarm(cfg, out)  # the Tune experiment is restored, nothing trains again
    assert all(t["reused"] or t["final_record"] == a["final_record"] for t, a in zip(again["trials"], trials, strict=True))
    assert [final_record(t["run_dir"]) for t in again["trials"]] == heads
    assert [t["eval"] for t in again["trials"]] == [t["eval"] for t in trials]
    assert time.perf_counter() - t0 < 60

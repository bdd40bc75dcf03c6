"""measure's fit and propose's mixing law on a synthetic swarm table (math; no Ray).

Two objectives that each saturate in their own modality (lm in text tokens, vision in
image tokens) make the best split of a fixed budget an interior one; the proposal must
find the split that brute force finds on the generating law, the predicted gain over a
lopsided base must be positive, and the written mixture must load as a corpus mixture.
"""

import math

import numpy as np
import pytest
import yaml

from ogi_ray.corpus.rates_file import load_rates_file, write_rates_file
from ogi_ray.rates.config import SwarmConfig
from ogi_ray.rates.measure import fit_swarm
from ogi_ray.rates.propose import propose, write_proposal

# Per row: web 100 text tokens; photos 20 text + 64 image tokens (raw = fed: no slot cuts).
PROFILE = {"web": {"text": 100.0, "image": 0.0}, "photos": {"text": 20.0, "image": 64.0}}
CONF = {"text": 1.0, "image": 0.5}
LM = (3.0, 30.0, 0.3)  # E, A, alpha of lm (nats) in text tokens / 1e4
VIS = (0.5, 2.0, 0.5)  # vision in image tokens / 1e4
UNTRAINED = (4096.0, 3.0)  # the untrained model: perplexity (= vocabulary), vision loss


def law(e, a, alpha, t):
    return e + a * (t / 1e4) ** -alpha


def tokens_for(rows_web, rows_photos):
    text = rows_web * PROFILE["web"]["text"] + rows_photos * PROFILE["photos"]["text"]
    return text, rows_photos * PROFILE["photos"]["image"]


def synthetic_swarm(n=16, seed=0):
    rng = np.random.default_rng(seed)
    trials = []
    for i in range(n):
        rows = rng.uniform(100, 400, size=2) if i else np.array([300.0, 60.0])  # proxy-00: text-heavy base
        text, image = tokens_for(*rows)
        lm = law(*LM, text) * (1 + rng.normal(0, 0.002))
        vis = law(*VIS, image) * (1 + rng.normal(0, 0.002))
        eff = {s: sum(CONF[m] * v for m, v in PROFILE[s].items()) for s in PROFILE}
        shares = {s: r * eff[s] for s, r in zip(PROFILE, rows, strict=True)}
        tot = sum(shares.values())
        trials.append({
            "proxy": f"proxy-{i:02d}", "steps": 10, "rows": int(rows.sum()), "tokens_seen": int(text),
            "shares": {s: v / tot for s, v in shares.items()}, "multipliers": {}, "wall_s": 1.0, "reused": False,
            "tokens": {"text": text, "image": image, "video": 0.0, "audio": 0.0, "proprio": 0.0, "action": 0.0},
            "eval": {"perplexity/web": math.exp(lm), "vision/photos": vis, "recall@1/photos": 0.5},
            "manifest_hash": "0" * 64, "final_record": "1" * 64, "corpus": "/nowhere",
        })  # fmt: skip
    return {
        "trials": trials,
        "reference": {"exchange_rates": CONF, "manifest_hash": "0" * 64, "heldout_sha256": [], "corpus": "/nowhere"},
        "sources": {s: {"rows": 100, "modalities": ["text"] + (["image"] if p["image"] else []),
                        "raw_per_row": {**dict.fromkeys(("video", "audio", "proprio", "action"), 0.0), **p},
                        "fed_per_row": {**dict.fromkeys(("video", "audio", "proprio", "action"), 0.0), **p}}
                    for s, p in PROFILE.items()},
        "groups": {"text": ["web"], "text+image": ["photos"]},
        "untrained": {"proxy": "untrained", "eval": {"perplexity/web": UNTRAINED[0], "vision/photos": UNTRAINED[1]}},
        "base_job": {"data": {"batch_size": 4, "accum_steps": 2}, "workers": {"num_workers": 0}},
    }  # fmt: skip


def test_fit_and_proposal_match_brute_force_on_the_generating_law(tmp_path):
    base = tmp_path / "base.yaml"
    base.write_text(yaml.safe_dump({"name": "syn", "exchange_rates": CONF, "sources": [
        {"name": "web", "kind": "gensim_web", "share": 0.8, "modalities": ["text"], "license": "CC-BY-SA-3.0"},
        {"name": "photos", "kind": "skimage_captions", "share": 0.2, "modalities": ["text", "image"], "license": "CC0-1.0"},
    ]}))  # fmt: skip
    cfg = SwarmConfig(name="syn", base_job="job.yaml", base_mixture=str(base))
    cfg.fit.bootstrap = 20
    swarm = synthetic_swarm()
    body = fit_swarm(cfg, swarm)
    assert body["modalities"] == ["text", "image"] and body["metric"]["objectives"] == ["lm", "vision"]
    # Transfer: text moves lm and not vision, image the other way round.
    tr = {o: d["transfer"] for o, d in body["per_objective"].items()}
    assert tr["lm"]["text"] < 0 and abs(tr["lm"]["image"]) < 1e-3 * abs(tr["lm"]["text"])
    assert tr["vision"]["image"] < 0 and abs(tr["vision"]["text"]) < 1e-3 * abs(tr["vision"]["image"])
    rf = load_rates_file(write_rates_file(tmp_path / "r.json", body) and tmp_path / "r.json")

    budget = 40_000.0
    prop = propose(rf, budget=budget)
    # Brute force on the generating law, in the same normalised metric, over the photos share.
    norms = [math.log(UNTRAINED[0]), UNTRAINED[1]]  # normalise: untrained (the default)
    r_img = prop["rates"]["image"]
    eff_photos = PROFILE["photos"]["text"] + r_img * PROFILE["photos"]["image"]
    best = None
    for p in np.linspace(0.005, 0.995, 991):
        rows_web, rows_photos = budget * (1 - p) / PROFILE["web"]["text"], budget * p / eff_photos
        text, image = tokens_for(rows_web, rows_photos)
        m = (law(*LM, text) / norms[0] + law(*VIS, image) / norms[1]) / 2
        if best is None or m < best[1]:
            best = (p, m)
    lo, hi = prop["groups"]["text+image"]["range"]
    expected = min(max(best[0], lo), hi)  # the proposal stays inside the shares the swarm saw
    assert prop["groups"]["text+image"]["proposed"] == pytest.approx(expected, abs=0.02)
    assert prop["predicted"]["proposed"] == pytest.approx(best[1], rel=0.01)
    assert prop["predicted"]["gain"] > 0 and prop["predicted"]["gain_interval"][0] > 0

    from ogi_ray.corpus.config import load_mixture

    out = tmp_path / "proposed.yaml"
    write_proposal(rf, prop, out)
    mix = load_mixture(out)  # a valid corpus mixture
    assert math.fsum(s.share for s in mix.sources) == pytest.approx(1.0, abs=1e-9)
    assert mix.exchange_rates == CONF  # written in the base mixture's own accounting
    # The rows it builds have the proposed composition: photos' share of rows, by hand.
    eff_conf = {s: sum(CONF[m] * v for m, v in PROFILE[s].items()) for s in PROFILE}
    shares = {s.name: s.share for s in mix.sources}
    rows = {s: shares[s] / eff_conf[s] for s in PROFILE}
    eff_meas = {"web": PROFILE["web"]["text"], "photos": eff_photos}
    fed = {s: rows[s] * eff_meas[s] for s in PROFILE}
    assert fed["photos"] / sum(fed.values()) == pytest.approx(prop["groups"]["text+image"]["proposed"], rel=1e-6)
    assert rf.sha256 in out.read_text()

"""The swarm's design and metric (pure): group multipliers stratified over their range,
shares that sum to 1, derived mixtures the corpus loader accepts, eval names read right,
and the normalised metric computed by hand."""

import math
from pathlib import Path

import numpy as np
import pytest
import yaml

from ogi_ray.config import ConfigError, load_yaml
from ogi_ray.rates.config import DesignConfig, MetricConfig, load_swarm
from ogi_ray.rates.design import derived_mixture, sample_design, source_groups
from ogi_ray.rates.metric import MetricError, objective_matrix, target_metric
from ogi_ray.rates.observe import objective_losses

ROOT = Path(__file__).resolve().parents[1]
SOURCES = [
    {"name": "web", "modalities": ["text"]}, {"name": "code", "modalities": ["text"]},
    {"name": "video", "modalities": ["video", "audio", "text"]},
    {"name": "emoji", "modalities": ["image", "text"]}, {"name": "photos", "modalities": ["text", "image"]},
]  # fmt: skip
BASE = {"web": 0.4, "code": 0.2, "video": 0.2, "emoji": 0.1, "photos": 0.1}


def test_groups_follow_modalities_not_order():
    groups = source_groups(SOURCES, "groups")
    assert groups == {"text": ["web", "code"], "text+video+audio": ["video"], "text+image": ["emoji", "photos"]}
    assert list(source_groups(SOURCES, "sources")) == [s["name"] for s in SOURCES]


def test_latin_hypercube_design():
    groups = source_groups(SOURCES, "groups")
    design = DesignConfig(spread=4.0, steps=[32, 64], include_base=True)
    specs = sample_design(BASE, groups, 16, design, seed=0)
    assert specs[0].shares == BASE and specs[0].steps == 64
    for spec in specs:
        assert math.isclose(sum(spec.shares.values()), 1.0, rel_tol=1e-12)
        # Within a group the base proportions are kept.
        assert spec.shares["web"] / spec.shares["code"] == pytest.approx(2.0)
        assert 32 <= spec.steps <= 64
    # Every group's log-multiplier takes one value in each of the 15 strata of [-1, 1].
    for g in groups:
        u = np.array([math.log(s.multipliers[g], 4.0) for s in specs[1:]])
        strata = np.floor((u + 1.0) / 2.0 * 15).astype(int)
        assert sorted(strata.tolist()) == list(range(15)), g
    # Same seed, same design; another seed, another one.
    again = sample_design(BASE, groups, 16, design, seed=0)
    assert [s.shares for s in again] == [s.shares for s in specs]
    assert sample_design(BASE, groups, 16, design, seed=1)[1].shares != specs[1].shares


def test_derived_mixture_is_a_valid_corpus_mixture(tmp_path):
    from ogi_ray.corpus.config import load_mixture

    base = load_yaml(ROOT / "datasets" / "mixture.yaml")
    admitted = {s["name"]: s["share"] for s in base["sources"] if s["name"] != "nc_example"}
    groups = source_groups([s for s in base["sources"] if s["name"] in admitted], "groups")
    spec = sample_design(admitted, groups, 3, DesignConfig(), seed=5)[2]
    mix = derived_mixture(base, spec, heldout_fraction=0.1, tokenizer="/elsewhere/corpus")
    path = tmp_path / "m.yaml"
    path.write_text(yaml.safe_dump(mix))
    cfg = load_mixture(path)
    shares = {s.name: s.share for s in cfg.sources}
    assert math.fsum(v for k, v in shares.items() if k != "nc_example") == pytest.approx(1.0, abs=1e-12)
    assert shares["nc_example"] == 0.05  # the gate's example keeps its entry
    assert shares["web"] == pytest.approx(spec.shares["web"], rel=1e-9)
    assert cfg.heldout_fraction == 0.1 and cfg.text_tokenizer.reuse == "/elsewhere/corpus"
    assert cfg.exchange_rates == base["exchange_rates"]


def test_eval_names_become_objective_losses():
    scores = {"perplexity/web": math.e**6, "vision/emoji": 1.5, "recall@1/emoji": 0.25, "world/video": 0.03}
    assert objective_losses(scores) == {"lm": {"web": pytest.approx(6.0)}, "vision": {"emoji": 1.5}, "world": {"video": 0.03}}


def test_normalised_metric_by_hand():
    losses = [
        {"lm": {"web": 6.0, "code": 4.0}, "vision": {"emoji": 1.0}},
        {"lm": {"web": 5.0, "code": 3.0}, "vision": {"emoji": 3.0}},
    ]
    objectives, mat, sources = objective_matrix(losses, [])
    assert objectives == ["lm", "vision"] and sources == {"lm": ["code", "web"], "vision": ["emoji"]}
    metric, norms = target_metric(mat, "swarm_mean")
    # lm: 5 and 4 (mean 4.5); vision: 1 and 3 (mean 2).
    assert norms.tolist() == [4.5, 2.0]
    assert metric.tolist() == pytest.approx([(5 / 4.5 + 1 / 2) / 2, (4 / 4.5 + 3 / 2) / 2])
    assert target_metric(mat, "none")[0].tolist() == pytest.approx([3.0, 3.5])
    with pytest.raises(MetricError, match="different held-out sources"):
        objective_matrix([losses[0], {"lm": {"web": 5.0}, "vision": {"emoji": 3.0}}], [])
    with pytest.raises(MetricError, match="embod"):
        objective_matrix(losses, ["lm", "embod"])
    assert MetricConfig().normalise == "untrained"
    # Normalised by given (untrained) losses: lm 8 nats, vision 4.
    assert target_metric(mat, "untrained", np.array([8.0, 4.0]))[0].tolist() == pytest.approx(
        [(5 / 8 + 1 / 4) / 2, (4 / 8 + 3 / 4) / 2])
    with pytest.raises(MetricError, match="untrained"):
        target_metric(mat, "untrained")


def test_swarm_config_errors_name_file_and_field(tmp_path):
    cfg = load_swarm(ROOT / "jobs" / "configs" / "rates.yaml")
    assert cfg.proxies >= 16 and Path(cfg.base_mixture).name == "mixture.yaml"
    bad = yaml.safe_load((ROOT / "jobs" / "configs" / "rates.yaml").read_text())
    for key, value, field in (("design", {"spread": 0.5}, "design.spread"), ("base_job", "nope.yaml", "base_job"),
                              ("fit", {"unit": "smell"}, "fit.unit"), ("proxies", 1, "proxies")):  # fmt: skip
        doc = {**bad, "base_job": str(ROOT / "jobs/configs/proxy.yaml"), "base_mixture": str(ROOT / "datasets/mixture.yaml"),
               key: value}  # fmt: skip
        p = tmp_path / "s.yaml"
        p.write_text(yaml.safe_dump(doc))
        with pytest.raises(ConfigError) as e:
            load_swarm(p)
        assert (e.value.file, e.value.field) == (str(p), field)

from dataclasses import dataclass, field

import pytest

from ogi_ray.config import ConfigError, apply_overrides, from_dict, load_yaml
from ogi_ray.train.config import load_job


@dataclass(kw_only=True)
class Inner:
    steps: int = 1
    rate: float = 0.5

    def validate(self):
        if self.steps < 1:
            raise ValueError("steps: must be >= 1")


@dataclass(kw_only=True)
class Outer:
    name: str
    inner: Inner = field(default_factory=Inner)
    tags: list[str] = field(default_factory=list)


def test_unknown_key_names_file_and_field():
    with pytest.raises(ConfigError) as e:
        from_dict(Outer, {"name": "x", "inner": {"stepz": 3}}, file="f.yaml")
    assert e.value.file == "f.yaml" and e.value.field == "inner.stepz"
    assert "f.yaml: inner.stepz" in str(e.value)


def test_wrong_type_and_validate_are_named():
    with pytest.raises(ConfigError) as e:
        from_dict(Outer, {"name": "x", "inner": {"steps": "three"}}, file="f.yaml")
    assert e.value.field == "inner.steps"
    with pytest.raises(ConfigError) as e:
        from_dict(Outer, {"name": "x", "inner": {"steps": 0}}, file="f.yaml")
    assert e.value.field == "inner.steps" and ">= 1" in e.value.message
    with pytest.raises(ConfigError) as e:
        from_dict(Outer, {"name": "x", "tags": ["a", 3]}, file="f.yaml")
    assert e.value.field == "tags[1]"
    with pytest.raises(ConfigError) as e:
        from_dict(Outer, {}, file="f.yaml")
    assert e.value.field == "name"


def test_bool_is_not_an_int_and_floats_accept_ints():
    with pytest.raises(ConfigError):
        from_dict(Inner, {"steps": True})
    assert from_dict(Inner, {"rate": 2}).rate == 2.0


def test_malformed_yaml(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("a: [1, 2\nb: 3\n")
    with pytest.raises(ConfigError) as e:
        load_yaml(p)
    assert str(p) in str(e.value) and "malformed YAML" in str(e.value)


def test_overrides_and_job_loading(tmp_path):
    p = tmp_path / "job.yaml"
    p.write_text("model: {preset: tiny}\nloop: {steps: 5}\n")
    job = load_job(p, ["loop.steps=7", "optim.lr=0.001", "model.n_layers=3"])
    assert job.loop.steps == 7 and job.optim.lr == 0.001 and job.model.n_layers == 3
    assert job.model.dim == 64  # from the preset
    with pytest.raises(ConfigError) as e:
        load_job(p, ["loop.stepz=1"])
    assert e.value.field == "loop.stepz"
    with pytest.raises(ConfigError):
        apply_overrides({}, ["novalue"])
    with pytest.raises(ConfigError) as e:
        load_job(p, ["model.preset=huge"])
    assert e.value.field == "model.preset"


def test_shipped_job_configs_load():
    """Every shipped config loads with its own loader: a swarm config (``ogi rates
    measure``) names a ``base_job``; every other file is a job."""
    from pathlib import Path

    import yaml

    from ogi_ray.rates.config import load_swarm

    kinds = {}
    for path in sorted(Path(__file__).parents[1].glob("jobs/configs/*.yaml")):
        swarm = "base_job" in yaml.safe_load(path.read_text())
        (load_swarm if swarm else load_job)(path)
        kinds[path.name] = "swarm" if swarm else "job"
    assert kinds["rates.yaml"] == "swarm" and kinds["demo.yaml"] == "job"


def test_eval_priority_is_checked_and_idle_by_default():
    from ogi_ray.train.config import EvalsConfig

    assert from_dict(EvalsConfig, {}).priority == "idle"
    with pytest.raises(ConfigError) as e:
        from_dict(EvalsConfig, {"priority": "low"}, file="job.yaml")
    assert e.value.field == "priority" and "'idle' or 'normal'" in e.value.message

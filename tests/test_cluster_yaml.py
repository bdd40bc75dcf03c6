"""cluster.yaml passes Ray's own autoscaler schema (offline) and carries the tier labels
that ogi_ray.train.placement selects on."""

from __future__ import annotations

import copy
import re
import shlex
from pathlib import Path

import jsonschema
import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

from ogi_ray.train import placement as pl

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "cluster.yaml"


@pytest.fixture(scope="module")
def raw() -> dict:
    return yaml.safe_load(CLUSTER.read_text())


@pytest.fixture(scope="module")
def prepared(raw) -> dict:
    conf = prepare_config(copy.deepcopy(raw))
    validate_config(conf)
    return conf


def test_ray_schema_accepts_it(prepared):
    assert prepared["provider"]["type"] == "aws"
    assert prepared["head_node_type"] in prepared["available_node_types"]


def test_schema_is_strict_enough_to_matter(raw):
    # A non-string label value must be rejected, or this test file proves nothing.
    bad = copy.deepcopy(raw)
    bad["available_node_types"]["worker.h100"]["labels"]["ogi.io/gpus-per-node"] = 8
    with pytest.raises(jsonschema.ValidationError):
        validate_config(prepare_config(bad))


def test_every_node_type_has_a_configured_tier(prepared):
    types = prepared["available_node_types"]
    tiers = {name: t["labels"][pl.LABEL_KEY] for name, t in types.items()}
    default_order = pl.PlacementConfig().tiers
    assert set(tiers.values()) == set(default_order), tiers
    head = types[prepared["head_node_type"]]
    assert head["labels"] == {pl.LABEL_KEY: "cpu", "ogi.io/role": "head"}
    for name, t in types.items():
        assert all(isinstance(v, str) for v in t["labels"].values()), name
        if t["labels"][pl.LABEL_KEY] in ("h100", "a100"):
            assert t["resources"]["GPU"] == 8 and t["resources"]["CPU"] >= 96, name
    instance = {t["labels"][pl.LABEL_KEY]: t["node_config"]["InstanceType"]
                for n, t in types.items() if n != prepared["head_node_type"]}  # fmt: skip
    assert instance == {"h100": "p5.48xlarge", "a100": "p4d.24xlarge", "cpu": "m7i.8xlarge"}


def test_min_le_max_and_global_bound(prepared):
    types = prepared["available_node_types"]
    for name, t in types.items():
        assert 0 <= t["min_workers"] <= t["max_workers"], name
    assert types[prepared["head_node_type"]]["max_workers"] == 0
    workers = [t for n, t in types.items() if n != prepared["head_node_type"]]
    assert sum(t["max_workers"] for t in workers) <= prepared["max_workers"]


def test_head_start_command_labels_match_the_node_type(prepared):
    head = prepared["available_node_types"][prepared["head_node_type"]]
    cmd = " ".join(prepared["head_start_ray_commands"])
    m = re.search(r"--labels=(\S+)", cmd)
    assert m, cmd
    labels = dict(kv.split("=", 1) for kv in m.group(1).split(","))
    assert labels == head["labels"]
    # placement.py reads the launchable node types from the file this flag names.
    assert f"--autoscaling-config={pl.BOOTSTRAP_CONFIG}" in cmd
    assert "RAY_AUTH_MODE=token" in cmd and "RAY_AUTH_MODE=token" in " ".join(
        prepared["worker_start_ray_commands"])  # fmt: skip
    assert not any("--labels" in c for c in prepared["worker_start_ray_commands"])


def test_setup_installs_the_project(prepared):
    cmds = prepared["worker_setup_commands"]  # setup_commands merged in by prepare_config
    setup = [c for c in cmds if "scripts/setup.sh" in c]
    assert setup, cmds
    argv = shlex.split(setup[0].split("&&")[-1])
    assert argv == ["bash", "scripts/setup.sh", "python3.11", ".venv"]
    assert any("boto3" in c for c in prepared["head_setup_commands"])
    for remote, local in prepared["file_mounts"].items():
        if remote.startswith("~/ogi-ray/"):
            assert (ROOT / local).exists(), local
            assert remote == f"~/ogi-ray/{local}"
    mounted = {Path(r).name for r in prepared["file_mounts"]}
    assert {"ogi_ray", "jobs", "datasets", "scripts", "pyproject.toml", "README.md"} <= mounted


def test_placement_reads_launchable_tiers_from_it(raw):
    cfg = pl.PlacementConfig(autoscaler_config=str(CLUSTER))
    types = pl.launchable_types(cfg)
    assert set(types) == {"h100", "a100", "cpu"}  # the head type is never launched
    # 8 nodes x 8 GPUs; a worker of 1 GPU + 24 CPUs also fits 8 per p5 (192 CPUs).
    assert pl.launchable_capacity(cfg, "h100", {"GPU": 1}) == 64
    assert pl.launchable_capacity(cfg, "h100", {"GPU": 1, "CPU": 24}) == 64
    assert pl.launchable_capacity(cfg, "a100", {"GPU": 1, "CPU": 24}) == 32  # 96 CPUs / 24
    assert pl.launchable_capacity(cfg, "cpu", {"GPU": 1}) == 0

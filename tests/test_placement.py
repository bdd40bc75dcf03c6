"""Tier placement on a real multi-node local cluster (ray.cluster_utils.Cluster, no mocks).

    head: tier a100, 1 CPU (lower tier; hosts the actors)   h100 x2: 1 CPU each

A 2-worker TorchTrainer with the chosen tier's label_selector must land only on h100
nodes; a missing tier must fail with TierUnavailableError inside its timeout, and an
impossible Ray Train placement must fail (bounded start) instead of retrying forever.
"""

from __future__ import annotations

import json
import time

import pytest

from ogi_ray.train import placement as pl
from ogi_ray.train.placement import PlacementConfig, TierUnavailableError

KEY = pl.LABEL_KEY


def test_config_validation_and_autoscaler_types(tmp_path):
    with pytest.raises(ValueError, match="duplicates"):
        PlacementConfig(tiers=["h100", "h100"]).validate()
    with pytest.raises(ValueError, match="tiers"):
        PlacementConfig(tiers=[]).validate()
    conf = tmp_path / "autoscaler.yaml"
    conf.write_text(
        "head_node_type: head\n"
        "available_node_types:\n"
        "  head: {resources: {CPU: 4}, labels: {ogi.io/tier: cpu}, node_config: {}}\n"
        "  gpu: {resources: {CPU: 192, GPU: 8}, labels: {ogi.io/tier: h100},"
        " node_config: {}, min_workers: 0, max_workers: 4}\n"
        "  off: {resources: {CPU: 8}, labels: {ogi.io/tier: a100}, node_config: {}, max_workers: 0}\n"
    )
    types = pl.launchable_types(PlacementConfig(autoscaler_config=str(conf)))
    assert set(types) == {"h100"}  # the head is never launched; max_workers 0 never is
    cfg = PlacementConfig(autoscaler_config=str(conf))
    assert pl.launchable_capacity(cfg, "h100", {"GPU": 1}) == 32
    assert pl.launchable_capacity(cfg, "h100", {"GPU": 1, "CPU": 48}) == 16
    assert pl.launchable_types(PlacementConfig(autoscaler_config=str(tmp_path / "none"))) == {}


@pytest.fixture(scope="module")
def tiered():
    import ray
    from ray.cluster_utils import Cluster

    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 1, "labels": {KEY: "a100"}, "include_dashboard": False},
    )
    try:
        h100 = [cluster.add_node(num_cpus=1, labels={KEY: "h100"}) for _ in range(2)]
        ray.init(address=cluster.address, log_to_driver=False)
        cluster.wait_for_nodes()
        yield {"cluster": cluster, "h100": {n.node_id for n in h100}}
    finally:
        ray.shutdown()
        cluster.shutdown()


def test_no_node_with_the_label_key_is_unconstrained(tiered):
    # What a plain local ray.init() looks like to placement: no node carries the key
    # (only Ray's own ray.io/* labels), so no tier and no selector; `ogi demo` runs as is.
    cfg = PlacementConfig(label_key="ogi.io/absent", autoscaler_config=None)
    assert pl.alive_tiers(cfg.label_key) == {}
    assert pl.choose_tier(cfg) is None
    assert pl.resolve_for_job(cfg, 2, {"CPU": 0.5}) == (None, {})
    assert pl.actor_options(cfg) == {}
    assert pl.resolve_for_job(PlacementConfig(autoscaler_config=None), 0, {"CPU": 1}) == (None, {})


def test_tiers_and_capacity(tiered):
    tiers = pl.alive_tiers()
    assert {n.node_id for n in tiers["h100"]} == tiered["h100"]
    assert len(tiers["a100"]) == 1 and tiers["a100"][0].is_head
    assert pl.tier_capacity("h100", {"CPU": 0.5}) == 4
    assert pl.tier_capacity("h100", {"CPU": 1}) == 2
    assert pl.tier_capacity("h100", {"CPU": 0.3}) == 6  # 3 per node, never across nodes
    assert pl.tier_capacity("h100", {"CPU": 0.5, "GPU": 1}) == 0
    assert pl.tier_capacity("a100", {"CPU": 0.5}) == 2
    assert pl.tier_capacity("tpu", {"CPU": 0.5}) == 0


def test_choose_tier_honours_configured_order(tiered):
    cfg = PlacementConfig(autoscaler_config=None)
    assert pl.choose_tier(cfg) == "h100"  # default [h100, a100, cpu]
    assert pl.choose_tier(PlacementConfig(tiers=["a100", "h100"], autoscaler_config=None)) == "a100"
    assert pl.choose_tier(PlacementConfig(tiers=["tpu", "cpu", "a100", "h100"], autoscaler_config=None)) == "a100"
    assert pl.choose_tier(PlacementConfig(require_tier="a100", autoscaler_config=None)) == "a100"
    with pytest.raises(TierUnavailableError, match="none of the configured tiers"):
        pl.choose_tier(PlacementConfig(tiers=["tpu", "v100"], autoscaler_config=None))
    tier, kwargs = pl.resolve_for_job(cfg, 2, {"CPU": 0.5})
    assert (tier, kwargs) == ("h100", {"label_selector": {KEY: "h100"}})
    # Elastic + labels is pinned to a fixed count (Ray 2.60 elastic ignores labels).
    assert pl.resolve_for_job(cfg, (1, 8), {"CPU": 0.5})[1]["num_workers"] == 4


def test_missing_tier_fails_within_timeout(tiered):
    t0 = time.monotonic()
    with pytest.raises(TierUnavailableError) as e:
        pl.wait_for_capacity("tpu", 2, {"CPU": 0.5}, timeout_s=3)
    waited = time.monotonic() - t0
    assert 3 <= waited < 15, waited
    assert e.value.tier == "tpu" and e.value.capacity == 0 and e.value.requested == 2
    assert "'tpu'" in str(e.value) and "2 worker(s)" in str(e.value)
    # The tier exists but is too small: the error says what fits.
    with pytest.raises(TierUnavailableError, match="fit 4") as e:
        pl.resolve_for_job(PlacementConfig(timeout_s=2, autoscaler_config=None), 5, {"CPU": 0.5})
    assert e.value.capacity == 4 and e.value.requested == 5


def test_actor_options_follow_the_actor_tier(tiered):
    import ray

    assert pl.actor_options(PlacementConfig(actor_tier="cpu")) == {}  # absent: no selector
    opts = pl.actor_options(PlacementConfig(actor_tier="a100"))
    assert opts == {"label_selector": {KEY: "a100"}}

    @ray.remote(num_cpus=0)
    class Where:
        def node(self) -> str:
            return ray.get_runtime_context().get_node_id()

    a = Where.options(**opts).remote()
    head = pl.alive_tiers()["a100"][0].node_id
    assert ray.get(a.node.remote(), timeout=60) == head
    ray.kill(a)


def _where_fn():
    # Built inside a function so cloudpickle ships it by value: Ray's workers cannot
    # import this test module.
    def where(config: dict) -> None:
        import ray
        import ray.train

        rank = ray.train.get_context().get_world_rank()
        rc = ray.get_runtime_context()
        out = {"node": rc.get_node_id(), "labels": rc.get_node_labels()}
        with open(f"{config['dir']}/rank{rank}.json", "w") as f:
            json.dump(out, f)

    return where


def test_trainer_workers_land_on_top_tier_only(tiered, tmp_path):
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    cfg = PlacementConfig(timeout_s=30, autoscaler_config=None)
    tier, kwargs = pl.resolve_for_job(cfg, 2, {"CPU": 0.5})
    assert tier == "h100"
    trainer = TorchTrainer(
        _where_fn(), train_loop_config={"dir": str(tmp_path)},
        # SPREAD: one worker per h100 node, so both top-tier nodes are exercised.
        scaling_config=ScalingConfig(num_workers=2, resources_per_worker={"CPU": 0.5},
                                     placement_strategy="SPREAD", **kwargs),
        run_config=RunConfig(name="placement", storage_path=str(tmp_path / "store"),
                             failure_config=FailureConfig(controller_failure_limit=0)),
    )  # fmt: skip
    trainer.fit()
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert {r["node"] for r in ranks} == tiered["h100"]
    for r in ranks:
        tier_label = r["labels"][KEY]
        assert tier_label in ("h100", ["h100"]), r["labels"]


def test_impossible_trainer_placement_fails_not_hangs(tiered, tmp_path, monkeypatch):
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    # The driver's env reaches Ray Train's controller (ENV_VARS_TO_PROPAGATE).
    monkeypatch.setenv(pl.START_TIMEOUT_ENV, "3")
    trainer = TorchTrainer(
        _where_fn(), train_loop_config={"dir": str(tmp_path)},
        scaling_config=ScalingConfig(num_workers=2, resources_per_worker={"CPU": 0.5},
                                     label_selector={KEY: "tpu"}),
        run_config=RunConfig(name="impossible", storage_path=str(tmp_path / "store"),
                             failure_config=FailureConfig(controller_failure_limit=0)),
    )  # fmt: skip
    t0 = time.monotonic()
    with pytest.raises(Exception, match="(?i)timed out|startup") as e:
        trainer.fit()
    assert time.monotonic() - t0 < 60, e.value
    assert not list(tmp_path.glob("rank*.json"))

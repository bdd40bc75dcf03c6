"""On-demand tier scale-up with Ray's fake multi-node provider (autoscaler v2, no mocks).

    head (tier cpu, 0 CPUs, started here as a subprocess on free ports, private temp dir)
    autoscaler config: worker.h100 and worker.a100 types, 0 nodes each at start

A TorchTrainer selecting ogi.io/tier=h100 makes the autoscaler launch an h100 node and
trains there (no a100 node is launched); placement.resolve_for_job asks the autoscaler
for an a100 node and returns once it is up. The fake nodes are started by the head's
autoscaler process, not by the head's `ray start`: cleanup finds every process by the
private temp dir this test created (never `ray stop`).
"""

from __future__ import annotations

import json
import os
import time

import pytest
import yaml
from _ray_head import LocalHead

from ogi_ray.train import placement as pl

pytestmark = pytest.mark.slow

KEY = pl.LABEL_KEY
HEAD_ID = "f" * 51 + "00000"  # the fake provider's id scheme: 56 hex digits, head ends 00000
PROVIDER = "ray.autoscaler._private.fake_multi_node.node_provider.FakeMultiNodeProvider"


def _worker_type(tier: str) -> dict:
    return {"resources": {"CPU": 1, "object_store_memory": 80 * 1024 * 1024},
            "labels": {KEY: tier}, "node_config": {}, "min_workers": 0, "max_workers": 2}  # fmt: skip


class _Head(LocalHead):
    """The head with the fake multi-node provider (no dashboard, 0 CPUs, tier cpu)."""

    def __init__(self, ip: str) -> None:
        super().__init__("ogias")
        config = {
            "cluster_name": "ogi-fake", "max_workers": 4, "upscaling_speed": 1.0,
            "idle_timeout_minutes": 5,
            "provider": {"type": "external", "module": PROVIDER, "use_node_id_as_ip": True,
                         "disable_node_updaters": True, "disable_launch_config_check": True,
                         "launch_multiple": True, "head_node_id": HEAD_ID,
                         # The provider starts nodes against ip:6379 unless told otherwise.
                         "gcs_address": f"{ip}:{self.port}"},
            "auth": {"ssh_user": ""},
            "available_node_types": {
                "ray.head.default": {"resources": {"CPU": 0}, "labels": {KEY: "cpu"},
                                     "node_config": {}, "max_workers": 0},
                "worker.h100": _worker_type("h100"),
                "worker.a100": _worker_type("a100"),
            },
            "head_node_type": "ray.head.default",
            "file_mounts": {}, "cluster_synced_files": [], "initialization_commands": [],
            "setup_commands": [], "head_setup_commands": [], "worker_setup_commands": [],
            "head_start_ray_commands": [], "worker_start_ray_commands": [],
        }  # fmt: skip
        self.config = self.tmp / "autoscaler.yaml"
        self.config.write_text(yaml.safe_dump(config))
        env = {**os.environ, "RAY_FAKE_CLUSTER": "1", "RAY_enable_autoscaler_v2": "1",
               "AUTOSCALER_UPDATE_INTERVAL_S": "1", "RAY_CLOUD_INSTANCE_ID": HEAD_ID,
               "RAY_OVERRIDE_NODE_ID_FOR_TESTING": HEAD_ID}  # fmt: skip
        self.launch(["--num-cpus=0", f"--labels={KEY}=cpu", f"--autoscaling-config={self.config}",
                     "--include-dashboard=false"], env)  # fmt: skip


@pytest.fixture
def fake_cluster():
    import ray

    ip = ray.util.get_node_ip_address()
    head, failures = None, []
    try:
        # Two tries: on an overloaded machine the head's raylet can miss Ray's fixed 30 s
        # registration wait ("The current node timed out during startup").
        for _ in range(2):
            head = _Head(ip)
            if head.started(timeout_s=120):
                break
            failures.append(head.log_path.read_text(errors="replace")[-2000:])
            head.stop()
            head = None
        assert head is not None, "\n----\n".join(failures)
        # address="auto" (found through our temp dir's ray_current_cluster) is the only
        # form for which ray.init turns token auth on by itself; an explicit "ip:port" or
        # RAY_ADDRESS needs RAY_AUTH_MODE=token in the environment before Ray is imported.
        ray.init(address="auto", _temp_dir=str(head.tmp), log_to_driver=False)
        # "auto" also scans for other clusters on the host: make sure it picked ours.
        assert ray.get_runtime_context().gcs_address == f"{ip}:{head.port}"
        yield {"config": head.config, "tmp": head.tmp}
    finally:
        ray.shutdown()
        if head is not None:
            head.stop()


def _where_fn():
    # Built inside a function so cloudpickle ships it by value to the fake nodes' workers.
    def where(config: dict) -> dict:
        import ray
        import ray.train
        import torch
        import torch.distributed as dist

        rank = ray.train.get_context().get_world_rank()
        t = torch.ones(1) * (rank + 1)
        dist.all_reduce(t)  # a real collective across the two workers
        rc = ray.get_runtime_context()
        out = {"node": rc.get_node_id(), "labels": rc.get_node_labels(), "sum": t.item()}
        with open(f"{config['dir']}/rank{rank}.json", "w") as f:
            json.dump(out, f)
        return out

    return where


def _tier_of(labels: dict) -> str:
    v = labels[KEY]
    return v[0] if isinstance(v, list) else v


def test_trainer_scales_up_its_tier_on_demand(fake_cluster, tmp_path, monkeypatch):
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    t0 = time.monotonic()
    cfg = pl.PlacementConfig(autoscaler_config=str(fake_cluster["config"]), timeout_s=60)
    assert set(pl.alive_tiers()) == {"cpu"}  # only the head is up
    assert pl.choose_tier(cfg) == "h100"  # launchable counts as present
    # Can never fit: the h100 type tops out at 2 nodes x 1 CPU -> fail at once, no wait.
    with pytest.raises(pl.TierUnavailableError, match="at most 2"):
        pl.wait_for_capacity("h100", 3, {"CPU": 1}, 60, cfg=cfg)
    assert time.monotonic() - t0 < 10

    monkeypatch.setenv(pl.START_TIMEOUT_ENV, "60")
    trainer = TorchTrainer(
        _where_fn(), train_loop_config={"dir": str(tmp_path)},
        scaling_config=ScalingConfig(num_workers=2, resources_per_worker={"CPU": 0.5},
                                     label_selector=pl.label_selector(cfg, "h100")),
        run_config=RunConfig(name="fake", storage_path=str(tmp_path / "store"),
                             failure_config=FailureConfig(controller_failure_limit=2)),
    )  # fmt: skip
    result = trainer.fit()
    assert result.return_value["sum"] == 3.0
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    tiers = pl.alive_tiers()
    h100 = {n.node_id for n in tiers.get("h100", [])}
    assert h100 and {r["node"] for r in ranks} <= h100
    assert all(_tier_of(r["labels"]) == "h100" for r in ranks)
    assert "a100" not in tiers  # the selector launched only its own tier
    t_train = time.monotonic() - t0

    # The placement path: resolve_for_job asks the autoscaler and waits for the node.
    a100 = pl.PlacementConfig(autoscaler_config=str(fake_cluster["config"]),
                              require_tier="a100", timeout_s=60)  # fmt: skip
    tier, kwargs = pl.resolve_for_job(a100, 1, {"CPU": 1})
    assert (tier, kwargs) == ("a100", {"label_selector": {KEY: "a100"}})
    assert pl.tier_capacity("a100", {"CPU": 1}) >= 1
    print(f"\nscale-up + train on h100: {t_train:.0f} s; a100 via placement: "
          f"{time.monotonic() - t0 - t_train:.0f} s")  # fmt: skip

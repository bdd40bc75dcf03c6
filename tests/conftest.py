"""Shared fixtures. Ray: one local cluster per test module that needs it, started with
``address="local"`` (never joins a stale cluster) and more logical CPUs than cores, so
Ray Data's read tasks are not starved by fractional-CPU training workers."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("RAY_DEDUP_LOGS", "0")
os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")


@pytest.fixture(scope="module")
def ray_local():
    import ray

    ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()

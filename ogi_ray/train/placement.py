"""Hardware-tier placement: which labelled nodes the training workers and actors go to.

Every node of a cluster carries a tier label (``ogi.io/tier: h100``, set with
``ray start --labels`` or ``labels:`` per node type in ``cluster.yaml``). The order of
tiers is configuration, highest first; pretraining workers select the highest tier that
the cluster has, through ``ScalingConfig(label_selector=...)``:

    ray.nodes() labels ──► alive_tiers ─┐
    autoscaler config node types ───────┴► choose_tier (first of cfg.tiers present)
        ──► wait_for_capacity (alive nodes of that tier fit n workers, else ask the
            autoscaler and wait up to timeout_s, else TierUnavailableError naming the tier)
        ──► {"label_selector": {label_key: tier}} for ScalingConfig

A cluster without any tier label (a plain local ``ray.init()``) has no tier: placement
is unconstrained, so ``ogi demo`` runs unchanged.

Capacity counts each node's *total* resources: it answers "can this tier ever hold the
job", not "is it idle now"; a busy tier is Ray Train's business (its worker-group start
timeout, ``RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S``, bounds that wait).
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

LABEL_KEY = "ogi.io/tier"
# `ray up` copies the cluster config here on the head node (ray.autoscaler commands.py),
# and the head's `ray start --autoscaling-config` reads it: it lists the node types the
# autoscaler can still launch, which ray.nodes() cannot know.
BOOTSTRAP_CONFIG = "~/ray_bootstrap_config.yaml"
START_TIMEOUT_ENV = "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S"
HEAD_RESOURCE = "node:__internal_head__"

log = logging.getLogger(__name__)


class TierUnavailableError(RuntimeError):
    """The chosen tier cannot hold the requested workers (within the timeout)."""

    def __init__(self, tier: str, message: str, *, capacity: int = 0, requested: int = 0,
                 resources_per_worker: dict[str, float] | None = None) -> None:  # fmt: skip
        self.tier = tier
        self.capacity = capacity
        self.requested = requested
        self.resources_per_worker = dict(resources_per_worker or {})
        super().__init__(message)


@dataclass(kw_only=True)
class PlacementConfig:
    label_key: str = LABEL_KEY
    tiers: list[str] = field(default_factory=lambda: ["h100", "a100", "cpu"])  # highest first
    require_tier: str | None = None  # pin the workers to this tier (no fallback to a lower one)
    actor_tier: str | None = "cpu"  # tuner / registry actors; ignored when no node has it
    timeout_s: float = 600.0  # wait for the tier's nodes (cloud launches take minutes)
    # Node types the autoscaler can launch count as present; missing file = none.
    autoscaler_config: str | None = BOOTSTRAP_CONFIG

    def validate(self) -> None:
        if not self.label_key:
            raise ValueError("label_key: must not be empty")
        if not self.tiers:
            raise ValueError("tiers: list at least one tier, highest first")
        if len(set(self.tiers)) != len(self.tiers):
            raise ValueError(f"tiers: duplicates in {self.tiers}")
        if self.timeout_s < 0:
            raise ValueError("timeout_s: must be >= 0")


@dataclass(frozen=True)
class NodeInfo:
    node_id: str
    address: str
    resources: dict[str, float]  # totals, as the node registered them
    labels: dict[str, str]

    @property
    def is_head(self) -> bool:
        return HEAD_RESOURCE in self.resources


@dataclass(frozen=True)
class NodeType:
    """A node type of the autoscaler config that carries a tier label."""

    name: str
    resources: dict[str, float]
    labels: dict[str, str]
    max_workers: int


# ---------------------------------------------------------------------------- discovery


def alive_nodes() -> list[NodeInfo]:
    """Alive nodes of the connected cluster with their total resources and labels."""
    import ray

    return [
        NodeInfo(node_id=n["NodeID"], address=n.get("NodeManagerAddress", ""),
                 resources=dict(n.get("Resources") or {}), labels=dict(n.get("Labels") or {}))
        for n in ray.nodes() if n.get("Alive")
    ]  # fmt: skip


def alive_tiers(label_key: str = LABEL_KEY) -> dict[str, list[NodeInfo]]:
    """Tier value -> alive nodes carrying it; nodes without the label are left out."""
    out: dict[str, list[NodeInfo]] = {}
    for node in alive_nodes():
        tier = node.labels.get(label_key)
        if tier:
            out.setdefault(tier, []).append(node)
    return out


def launchable_types(cfg: PlacementConfig) -> dict[str, list[NodeType]]:
    """Tier -> worker node types the autoscaler can launch (from ``cfg.autoscaler_config``).

    Empty when there is no such file: then only alive nodes count.
    """
    if not cfg.autoscaler_config:
        return {}
    path = Path(os.path.expanduser(cfg.autoscaler_config))
    if not path.is_file():
        return {}
    import yaml

    conf = yaml.safe_load(path.read_text()) or {}
    head_type = conf.get("head_node_type")
    out: dict[str, list[NodeType]] = {}
    for name, spec in (conf.get("available_node_types") or {}).items():
        labels = {str(k): str(v) for k, v in (spec.get("labels") or {}).items()}
        tier = labels.get(cfg.label_key)
        # The head is never launched by the autoscaler; an alive head is counted in ray.nodes().
        max_workers = int(spec.get("max_workers", conf.get("max_workers", 0)) or 0)
        if name == head_type or not tier or max_workers <= 0:
            continue
        res = {str(k): float(v) for k, v in (spec.get("resources") or {}).items()}
        out.setdefault(tier, []).append(NodeType(name, res, labels, max_workers))
    return out


# ---------------------------------------------------------------------------- choice


def choose_tier(cfg: PlacementConfig) -> str | None:
    """The tier the workers go to: ``require_tier`` if set, else the first of ``cfg.tiers``
    that has an alive node or a launchable node type; None when no node carries the label
    key at all (unconstrained placement). Labelled nodes but none of the configured tiers
    is a configuration error, not a silent fallback."""
    if cfg.require_tier:
        return cfg.require_tier
    alive = alive_tiers(cfg.label_key)
    launchable = launchable_types(cfg)
    for tier in cfg.tiers:
        if tier in alive or tier in launchable:
            return tier
    if not alive and not launchable:
        return None
    found = sorted(set(alive) | set(launchable))
    raise TierUnavailableError(
        cfg.tiers[0],
        f"nodes carry {cfg.label_key} in {found}, none of the configured tiers {cfg.tiers}",
    )


def label_selector(cfg: PlacementConfig, tier: str) -> dict[str, str]:
    """The Ray label selector that pins a task, actor or train worker to ``tier``."""
    return {cfg.label_key: tier}


def _fits(node_resources: dict[str, float], per_worker: dict[str, float]) -> int:
    """How many workers of shape ``per_worker`` fit in ``node_resources`` (totals)."""
    need = {k: float(v) for k, v in per_worker.items() if float(v) > 0}
    if not need:
        need = {"CPU": 1.0}  # Ray Train's default worker shape
    # Small epsilon: Ray stores resources in fixed point, 0.1 * 10 must give 10, not 9.
    return min(int(math.floor(node_resources.get(k, 0.0) / v + 1e-9)) for k, v in need.items())


def tier_capacity(tier: str, resources_per_worker: dict[str, float], *,
                  label_key: str = LABEL_KEY) -> int:  # fmt: skip
    """How many workers of that shape fit on the tier's alive nodes (total resources;
    a worker never spans nodes)."""
    nodes = alive_tiers(label_key).get(tier, [])
    return sum(_fits(n.resources, resources_per_worker) for n in nodes)


def launchable_capacity(cfg: PlacementConfig, tier: str, resources_per_worker: dict[str, float]) -> int:
    """Upper bound of workers the autoscaler could add on ``tier`` (max_workers of each type)."""
    return sum(t.max_workers * _fits(t.resources, resources_per_worker)
               for t in launchable_types(cfg).get(tier, []))  # fmt: skip


def _request(tier: str, n: int, per_worker: dict[str, float], key: str) -> None:
    """Ask the autoscaler for n bundles on the tier (n == 0 clears the request). A no-op
    on clusters without an autoscaler; the request persists until replaced, so clear it."""
    from ray.autoscaler.sdk import request_resources
    from ray.autoscaler.v2.utils import is_autoscaler_v2

    # request_resources picks the v1 or v2 channel from a per-process cache filled the
    # first time it is asked: a process that met another cluster first would send a v2
    # autoscaler's request down the v1 channel, where it is ignored. Ask this cluster.
    is_autoscaler_v2(fetch_from_server=True)
    bundles = [dict(per_worker) for _ in range(n)]
    request_resources(bundles=bundles, bundle_label_selectors=[{key: tier} for _ in range(n)])


def wait_for_capacity(tier: str, n_workers: int, resources_per_worker: dict[str, float],
                      timeout_s: float, *, cfg: PlacementConfig | None = None,
                      poll_s: float = 1.0) -> int:  # fmt: skip
    """Block until the tier's alive nodes can hold ``n_workers``; returns the capacity.

    Asks the autoscaler for the missing nodes (label-selected bundles) while waiting.
    Raises TierUnavailableError naming the tier, the capacity found and what was asked:
    at once when the autoscaler config shows the tier can never hold the job, else after
    ``timeout_s``.
    """
    cfg = cfg or PlacementConfig()
    key = cfg.label_key
    shape = dict(resources_per_worker) or {"CPU": 1.0}
    ask = f"{n_workers} worker(s) of {shape} on {key}={tier}"
    have = tier_capacity(tier, shape, label_key=key)
    if have >= n_workers:
        return have
    extra = launchable_capacity(cfg, tier, shape)
    if launchable_types(cfg) and have + extra < n_workers:
        raise TierUnavailableError(
            tier, f"tier {tier!r} cannot hold {ask}: alive nodes fit {have}, the autoscaler "
            f"node types of that tier add at most {extra}", capacity=have + extra,
            requested=n_workers, resources_per_worker=shape)  # fmt: skip
    t0 = time.monotonic()
    log.info("placement: waiting up to %.0f s for %s (alive nodes fit %d)", timeout_s, ask, have)
    _request(tier, n_workers, shape, key)
    try:
        while True:
            time.sleep(min(poll_s, max(0.0, timeout_s - (time.monotonic() - t0))))
            have = tier_capacity(tier, shape, label_key=key)
            if have >= n_workers:
                log.info("placement: tier %s fits %d after %.0f s", tier, have, time.monotonic() - t0)
                return have
            if time.monotonic() - t0 >= timeout_s:
                nodes = len(alive_tiers(key).get(tier, []))
                raise TierUnavailableError(
                    tier, f"tier {tier!r} has no capacity for {ask} after {timeout_s:.0f} s: "
                    f"{nodes} alive node(s) with that label fit {have}", capacity=have,
                    requested=n_workers, resources_per_worker=shape)  # fmt: skip
    finally:
        _request(tier, 0, shape, key)  # the nodes stay while the trainer claims them


# ---------------------------------------------------------------------------- for the driver


def actor_options(cfg: PlacementConfig) -> dict[str, Any]:
    """``.options(**actor_options(cfg))`` for the tuner and registry actors: the actor tier's
    label selector, or nothing when no alive node carries that tier (an unsatisfiable
    selector would leave the actor pending forever)."""
    if cfg.actor_tier and cfg.actor_tier in alive_tiers(cfg.label_key):
        return {"label_selector": label_selector(cfg, cfg.actor_tier)}
    return {}


def resolve_for_job(cfg: PlacementConfig, num_workers: int | tuple[int, int],
                    resources_per_worker: dict[str, float]) -> tuple[str | None, dict[str, Any]]:  # fmt: skip
    """Choose the tier, wait for its capacity, and return ``(tier, scaling_kwargs)`` to merge
    into ``ScalingConfig(**scaling_kwargs)``; ``(None, {})`` on an unlabelled cluster or for
    ``num_workers=0`` (the train function then runs in the driver).

    Elastic ``(min, max)`` with a tier is pinned to a fixed count, ``min(max, capacity)``,
    returned as ``scaling_kwargs["num_workers"]``: in Ray 2.60 the elastic policy counts
    CPUs on every node, ignoring labels, and a labelled elastic group retries forever.
    """
    n_max = num_workers[1] if isinstance(num_workers, tuple) else num_workers
    n_min = num_workers[0] if isinstance(num_workers, tuple) else num_workers
    if n_max == 0:
        return None, {}
    tier = choose_tier(cfg)
    if tier is None:
        return None, {}
    have = wait_for_capacity(tier, max(n_min, 1), resources_per_worker, cfg.timeout_s, cfg=cfg)
    kwargs: dict[str, Any] = {"label_selector": label_selector(cfg, tier)}
    if isinstance(num_workers, tuple):
        kwargs["num_workers"] = min(n_max, have)
        log.warning("placement: elastic num_workers=%s with a label selector is pinned to %d "
                    "(Ray 2.60's elastic policy ignores labels)", num_workers, kwargs["num_workers"])  # fmt: skip
    return tier, kwargs


def start_timeout_env(cfg: PlacementConfig) -> dict[str, str]:
    """Environment for the driver so Ray Train's worker-group start gives up (and, with
    ``FailureConfig(controller_failure_limit=k)``, fails after k retries) instead of
    retrying a placement that no longer fits. Ray Train propagates it to its controller."""
    return {START_TIMEOUT_ENV: str(max(cfg.timeout_s, 1.0))}

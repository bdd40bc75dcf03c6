"""Typed configuration of a proxy swarm (``ogi rates measure CONFIG``), validated once.

    CONFIG.yaml ──load_swarm──► SwarmConfig (paths resolved against the CONFIG's folder)
        base_job      the proxy's training job (jobs/configs/proxy.yaml): every proxy is this
                      job with its own corpus, step count, run name and storage folder
        base_mixture  the mixture whose rates are measured (datasets/mixture.yaml)
        proxies, seed, design (how mixtures vary), metric, fit, propose, resources
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from ogi_ray.config import ConfigError, from_dict, load_yaml
from ogi_ray.corpus.config import MODALITIES


@dataclass(kw_only=True)
class DesignConfig:
    """How proxy mixtures vary (docs/rates.md, "The design").

    Sources are grouped (``vary: groups``: sources with the same modalities move together,
    so each group is one direction in modality space; ``sources``: each source alone).
    Proxy i multiplies group g's base share by ``spread ** u_ig``, u in [-1, 1] from a
    Latin hypercube, and renormalises; its step count is log-uniform in ``steps``.
    """

    vary: Literal["groups", "sources"] = "groups"
    spread: float = 4.0
    steps: list[int] = field(default_factory=lambda: [32, 64])
    include_base: bool = True  # proxy 0: the base shares at the largest step count
    # Held-out documents for the eval, the same in every proxy (a seeded hash of the
    # document key, independent of shares). None keeps the base mixture's fraction.
    heldout_fraction: float | None = 0.1

    def validate(self) -> None:
        if not self.spread >= 1.0:
            raise ValueError(f"spread: must be >= 1, got {self.spread}")
        if len(self.steps) != 2 or not 1 <= self.steps[0] <= self.steps[1]:
            raise ValueError(f"steps: must be [min, max] with 1 <= min <= max, got {self.steps}")
        if self.heldout_fraction is not None and not 0.0 < self.heldout_fraction < 0.5:
            raise ValueError("heldout_fraction: must be in (0, 0.5) (every proxy needs held-out rows)")


@dataclass(kw_only=True)
class MetricConfig:
    """The target metric: the mean over ``objectives`` (all the eval reports when empty)
    of each objective's held-out loss averaged over sources, divided by the untrained
    model's loss on the same rows (``normalise: untrained``: one extra 1-step trial at a
    vanishing learning rate scores the initial weights every proxy starts from), by its
    mean over the swarm (``swarm_mean``), or as is (``none``)."""

    objectives: list[str] = field(default_factory=list)
    normalise: Literal["untrained", "swarm_mean", "none"] = "untrained"


@dataclass(kw_only=True)
class FitConfig:
    unit: str = "text"
    bootstrap: int = 200
    confidence: float = 0.95
    # A rate under this is written as this and flagged: a mixture needs a positive rate to
    # express a share of a source whose tokens are all of that modality.
    min_rate: float = 0.01

    def validate(self) -> None:
        if self.unit not in MODALITIES:
            raise ValueError(f"unit: unknown modality {self.unit!r}")
        if self.bootstrap != 0 and self.bootstrap < 2:
            raise ValueError("bootstrap: 0 (off) or at least 2 resamples")
        if not 0.5 <= self.confidence < 1.0:
            raise ValueError("confidence: must be in [0.5, 1)")
        if not 0.0 < self.min_rate < 1.0:
            raise ValueError("min_rate: must be in (0, 1)")


@dataclass(kw_only=True)
class ProposeConfig:
    """Defaults of ``ogi rates propose``: the effective-token budget (0: the base proxy's)
    and how far from the swarm's sampled shares a proposal may go (it stays inside the
    range of shares the proxies saw; the mixing law is not trusted outside it)."""

    budget_tokens: float = 0.0
    min_share: float = 0.005

    def validate(self) -> None:
        if self.budget_tokens < 0:
            raise ValueError("budget_tokens: must be >= 0 (0: the base proxy's effective tokens)")


@dataclass(kw_only=True)
class ResourcesConfig:
    """Per trial: one Ray Tune trial holds ``cpus_per_trial`` CPUs for its proxy's
    driver (with ``workers.num_workers: 0`` in the proxy job, the training itself);
    ``max_concurrent`` trials at once; a failed trial is retried ``max_failures`` times."""

    cpus_per_trial: float = 0.5
    max_concurrent: int = 2
    max_failures: int = 1

    def validate(self) -> None:
        if self.cpus_per_trial < 0:
            raise ValueError("cpus_per_trial: must be >= 0")
        if self.max_concurrent < 1:
            raise ValueError("max_concurrent: must be >= 1")
        if self.max_failures < 0:
            raise ValueError("max_failures: must be >= 0")


@dataclass(kw_only=True)
class SwarmConfig:
    name: str
    base_job: str
    base_mixture: str
    policy: str = ""  # license policy for the builds ("" = the corpus default)
    proxies: int = 16
    seed: int = 0
    # key.path=value overrides applied to the base job for every proxy.
    job_overrides: list[str] = field(default_factory=list)
    design: DesignConfig = field(default_factory=DesignConfig)
    metric: MetricConfig = field(default_factory=MetricConfig)
    fit: FitConfig = field(default_factory=FitConfig)
    propose: ProposeConfig = field(default_factory=ProposeConfig)
    resources: ResourcesConfig = field(default_factory=ResourcesConfig)
    file: str = ""  # the CONFIG file itself (set by load_swarm)

    def validate(self) -> None:
        if not self.name or not self.name.replace("-", "").replace("_", "").isalnum():
            raise ValueError(f"name: must be a non-empty identifier, got {self.name!r}")
        if self.proxies < 2:
            raise ValueError("proxies: must be >= 2")


def load_swarm(path: str | Path) -> SwarmConfig:
    """Load and validate CONFIG; ``base_job``, ``base_mixture`` and ``policy`` are
    resolved against the CONFIG's folder and must exist."""
    path = Path(path)
    cfg = from_dict(SwarmConfig, load_yaml(path), file=path)
    root = path.resolve().parent
    for key in ("base_job", "base_mixture", "policy"):
        value = getattr(cfg, key)
        if not value:
            continue
        full = (root / value).resolve()
        if not full.is_file():
            raise ConfigError(path, key, f"{full} does not exist")
        setattr(cfg, key, str(full))
    cfg.file = str(path.resolve())
    return cfg

"""The training job's configuration: one dataclass per component, composed here.

    model: ModelConfig   data: DataConfig   optim: OptimConfig   loop: LoopConfig
    workers: WorkersConfig   device: DeviceConfig   tuner: TunerConfig
    placement: PlacementConfig   parallel: ParallelConfig   run: RunConfig
    phases: [PhaseConfig] (train/phases.py)

``load_job`` reads YAML (+ ``key=value`` overrides) and validates everything once; the
driver hands each component only its own section.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ogi_ray.config import ConfigError, apply_overrides, blame_overrides, from_dict, load_yaml
from ogi_ray.model.config import PRESETS, ModelConfig
from ogi_ray.parallel.device import DeviceConfig
from ogi_ray.parallel.plan import ParallelConfig
from ogi_ray.train.optim import OptimConfig
from ogi_ray.train.phases import PhaseConfig
from ogi_ray.train.placement import PlacementConfig
from ogi_ray.train.tuner import TunerConfig


@dataclass(kw_only=True)
class DataConfig:
    corpus: str = ""  # corpus folder or URI (manifest.json + shards/)
    # The mixture file the corpus is built from: only named in the error (with the exact
    # build command) when the corpus folder does not exist yet.
    mixture: str = ""
    batch_size: int = 8  # rows per data-parallel rank per micro-batch
    accum_steps: int = 2  # micro-batches per optimizer step at the start (>= 2 gives the GNS estimate)
    max_accum_steps: int = 8
    # Batch-size control: grow accumulation toward this many tokens per step (for example
    # the planner's compute-scaled batch_tokens), never past the estimated critical batch.
    # 0 keeps accum_steps fixed.
    target_batch_tokens: int = 0
    seq_len: int = 128  # text slots per row (rows hold at most the corpus' max_tokens)
    max_video_tubelets: int = 64  # video slots (whole time chunks)
    max_audio_frames: int = 32  # audio slots
    max_steps: int = 16  # embodied timesteps per row (proprio and action slots)
    eval_rows_per_source: int = 16
    # The launch refuses a model whose slots would cut rows so that the effective share
    # it is fed of some (source, modality) differs from the manifest's by more than
    # 0.5 pp (train/accounting.py); a larger value here accepts that much, on the record.
    accept_share_difference_pp: float = 0.0

    def validate(self) -> None:
        if self.batch_size < 1:
            raise ValueError("batch_size: must be >= 1")
        if not 0.0 <= self.accept_share_difference_pp <= 100.0:
            raise ValueError("accept_share_difference_pp: must be in [0, 100]")
        if not 1 <= self.accum_steps <= self.max_accum_steps:
            raise ValueError("accum_steps: must be in [1, max_accum_steps]")


@dataclass(kw_only=True)
class LoopConfig:
    steps: int = 40
    checkpoint_every: int = 10
    log_every: int = 5
    seed: int = 0
    # Write checkpoint shards in the background (host copies staged, one more copy of a
    # rank's shard in memory) and record the checkpoint one step later. Off by default:
    # on 2 CPU cores the write competes with the step (benchmarks/checkpoint_io.py).
    checkpoint_async: bool = False

    def validate(self) -> None:
        if self.steps < 1:
            raise ValueError("steps: must be >= 1")
        if self.checkpoint_every < 1:
            raise ValueError("checkpoint_every: must be >= 1")


@dataclass(kw_only=True)
class WorkersConfig:
    num_workers: int = 2
    cpus_per_worker: float = 0.5  # < 1 so Ray Data's read tasks are not starved on 2 cores
    # torch intra-op threads per worker; 0 keeps Ray's OMP_NUM_THREADS (the CPUs asked
    # for, at least 1), which for cpus_per_worker < 1 is one thread.
    threads: int = 0
    # A failed worker group is restarted from the latest checkpoint this many times.
    max_failures: int = 2
    # An impossible placement fails after this many controller retries instead of
    # retrying forever (Ray's default is unlimited).
    controller_failure_limit: int = 3
    # After Ray's in-place restarts are spent, the driver re-plans the worker count from
    # the tier's live capacity and relaunches from the latest checkpoint this many times.
    max_relaunches: int = 1

    def validate(self) -> None:
        if self.num_workers < 0:
            raise ValueError("num_workers: must be >= 0 (0 runs in the driver)")
        if self.threads < 0:
            raise ValueError("threads: must be >= 0 (0: Ray's default)")


@dataclass(kw_only=True)
class RunConfig:
    name: str = "run"
    # Where runs live: a local folder or any pyarrow.fs URI (s3://bucket/prefix, gs://…).
    # Everything the run writes goes there (checkpoints, lineage, metrics, tuner state).
    storage_path: str = "runs"

    def validate(self) -> None:
        if not self.name or "/" in self.name or self.name.startswith("."):
            raise ValueError(f"name: a plain folder name, got {self.name!r}")

    @property
    def run_uri(self) -> str:
        """The run folder: storage_path/name, a URI or an absolute local path."""
        from ogi_ray.storage import absolute, join

        return join(absolute(self.storage_path), self.name)


@dataclass(kw_only=True)
class EvalsConfig:
    """The eval suite on checkpoints, off the training path (evals/attest.py): an actor on
    the placement's actor tier reads each checkpoint from storage and commits the scores
    to the lineage as an attestation."""

    enabled: bool = False
    suite: str = "quick"  # "quick" (seconds on a CPU) or "full" (evals/suite.py)
    benchmarks: list[str] = field(default_factory=list)  # a subset; empty = all that apply
    every: int = 1  # evaluate every k-th checkpoint (the last one always)
    threads: int = 1  # torch threads of the eval (recorded: part of what makes the bits repeat)
    # The eval actor's CPU reservation. 0 (default) places it wherever its tier has room
    # for an actor (as the tuner and registry), fine on one machine; on a cluster give it
    # the CPUs of a node of the CPU tier (placement.actor_tier), so it never competes.
    cpus: float = 0.0
    # "idle": the eval actor runs under SCHED_IDLE (evals/attest.lower_priority), so on a
    # node it shares with training ranks it only takes cycles they leave unused and never
    # slows a step; alone on a node it runs at full speed. "normal": an ordinary process.
    priority: str = "idle"

    def validate(self) -> None:
        if self.priority not in ("idle", "normal"):
            raise ValueError(f"priority: {self.priority!r} is not 'idle' or 'normal'")
        if self.suite not in ("quick", "full"):
            raise ValueError(f"suite: {self.suite!r} is not 'quick' or 'full'")
        known = ("heldout", "humaneval", "digits", "world", "metaworld")
        if unknown := [b for b in self.benchmarks if b not in known]:
            raise ValueError(f"benchmarks: unknown {unknown} (known: {list(known)})")
        if self.every < 1 or self.threads < 1 or self.cpus < 0:
            raise ValueError("every and threads: must be >= 1; cpus: >= 0")

    def wants(self, step: int, checkpoint_every: int, total_steps: int) -> bool:
        """Whether the checkpoint at ``step`` is evaluated: every ``every``-th checkpoint
        by step, and the last (a rule of the step alone, so a resumed run agrees)."""
        return self.enabled and (step == total_steps or (step // checkpoint_every) % self.every == 0)


@dataclass(kw_only=True)
class JobConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    loop: LoopConfig = field(default_factory=LoopConfig)
    workers: WorkersConfig = field(default_factory=WorkersConfig)
    device: DeviceConfig = field(default_factory=DeviceConfig)
    tuner: TunerConfig = field(default_factory=TunerConfig)
    placement: PlacementConfig = field(default_factory=PlacementConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    run: RunConfig = field(default_factory=RunConfig)
    evals: EvalsConfig = field(default_factory=EvalsConfig)
    # A run as a sequence of phases (corpus, budget, starting λ); empty = one phase over
    # data.corpus of loop.steps steps. With phases, loop.steps is their total.
    phases: list[PhaseConfig] = field(default_factory=list)

    def validate(self) -> None:
        names = [p.name for p in self.phases]
        if len(set(names)) != len(names):
            raise ValueError(f"phases: names must be unique, got {names}")


def job_from_dict(data: dict[str, Any], file: str | Path | None = None) -> JobConfig:
    # A model preset fills in the architecture; explicit keys override it.
    model = dict(data.get("model") or {})
    name = model.get("preset", "tiny")
    if name not in PRESETS:
        raise ConfigError(file, "model.preset", f"unknown preset {name!r} (known: {sorted(PRESETS)})")
    data = {**data, "model": {**PRESETS[name], **model}}
    return from_dict(JobConfig, data, file=file)


def load_job(path: str | Path, overrides: list[str] | None = None) -> JobConfig:
    """The job in YAML file ``path`` with ``key=value`` overrides; every problem is
    reported at once, those of an override blamed on the command line."""
    data = load_yaml(path)
    apply_overrides(data, overrides or [])
    try:
        return job_from_dict(data, file=path)
    except ConfigError as e:
        raise blame_overrides(e, overrides or []) from None

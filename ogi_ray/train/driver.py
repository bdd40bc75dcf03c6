"""Ray Train driver: verify the corpus, set up lineage, launch the TorchTrainer.

    JobConfig ─► verify each phase's corpus (manifest + shard hashes) ─► model dims from
      the corpora ─► launch shape (tier, workers, dp/tp/pp) ─► phases as fixed step ranges
      ─► run_dir/lineage/{manifests,configs}/<hash>.json (what records point to)
      ─► LineageRegistry actor (ray.remote here, named, restartable)
      ─► TorchTrainer(train_func, datasets={"train": read_parquet(shards)})
      ─► summary (rank 0's return value + checkpoints on disk)
"""

from __future__ import annotations

import logging
import os
import uuid
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from ogi_ray.canonical import canonical_json, hash_canonical
from ogi_ray.config import ConfigError, to_dict
from ogi_ray.corpus.manifest import shard_paths
from ogi_ray.lineage.record import atomic_write
from ogi_ray.lineage.registry import LineageRegistry
from ogi_ray.parallel.device import use_gpu
from ogi_ray.train import phases as phases_mod
from ogi_ray.train import placement
from ogi_ray.train.config import JobConfig
from ogi_ray.train.data import COLUMNS
from ogi_ray.train.tuner import LossWeightTuner
from ogi_ray.train.worker import train_func

log = logging.getLogger(__name__)


def fit_model_to_corpus(job: JobConfig, manifest: dict[str, Any]) -> JobConfig:
    """Fill the model's token layout from the corpus' tokenizers and modalities, and the
    tuner's objectives from the layout (unless the config names them)."""
    tok = manifest["tokenizers"]
    mods = {m for s in manifest["sources"] for m in s["modalities"]}
    vocab = int(tok["text"]["vocab_size"])
    if job.model.vocab_size < vocab:
        raise ConfigError(None, "model.vocab_size", f"{job.model.vocab_size} < corpus vocabulary {vocab}")
    d = job.data
    grid = (int(tok["image"]["size"]) // int(tok["image"]["patch"])) ** 2
    vgrid = (int(tok["video"]["size"]) // int(tok["video"]["patch"])) ** 2
    model = replace(
        job.model,
        n_text=d.seq_len,
        n_img=grid if "image" in mods else 0, img_dim=int(tok["image"]["dim"]),
        n_vid=(d.max_video_tubelets // vgrid) * vgrid if "video" in mods else 0,
        vid_group=vgrid, vid_dim=int(tok["video"]["dim"]),
        n_aud=d.max_audio_frames if "audio" in mods else 0, aud_dim=int(tok["audio"]["frame"]),
        n_steps=d.max_steps if mods & {"proprio", "action"} else 0,
    )  # fmt: skip
    model.validate()
    if model.n_vid and "world" not in model.objectives:
        log.warning("data.max_video_tubelets=%d holds one time chunk of %d tubelets: the world objective "
                    "(next chunk from the previous ones) is off; give at least %d", d.max_video_tubelets,
                    vgrid, 2 * vgrid)  # fmt: skip
    tuner = job.tuner
    if set(tuner.objectives) != set(model.objectives):
        tuner = replace(tuner, objectives=model.objectives,
                        initial={k: v for k, v in (tuner.initial or {}).items() if k in model.objectives} or None)  # fmt: skip
        tuner.validate()
    return replace(job, model=model, tuner=tuner)


def parallel_plan(job: JobConfig, world: int, tier: str | None = None) -> dict[str, int]:
    """The (dp, tp, pp, microbatches) the workers apply for ``world`` ranks.

    ``parallel.topology: discover`` runs topology discovery on the chosen tier's nodes
    (Ray tasks; needs a running cluster) and plans on what it finds."""
    par = job.parallel
    if par.dp:
        dims = {"dp": par.dp, "tp": par.tp, "pp": par.pp}
        if par.dp * par.tp * par.pp != world:
            raise ConfigError(None, "parallel", f"dp·tp·pp = {par.dp * par.tp * par.pp} but {world} workers")
    elif par.topology:
        from ogi_ray.parallel.planner import plan_for_world
        from ogi_ray.parallel.topology import load_topology

        if par.topology == "discover":
            from ogi_ray.parallel.discover import discover, to_topology

            topo = to_topology(discover(tier, probe=True), name=f"discovered-{tier or 'all'}")
        else:
            topo = load_topology(par.topology)
        best = plan_for_world(job.model, world, topo, global_batch=job.data.batch_size * world)
        dims = {"dp": best.dp, "tp": best.tp, "pp": best.pp}
        par = replace(par, microbatches=par.microbatches or best.microbatches)
    else:
        dims = {"dp": world, "tp": 1, "pp": 1}
    return {**dims, "microbatches": par.microbatches or dims["pp"]}


def _launch_shape(job: JobConfig, res: dict[str, float], attempt: int) -> tuple[str | None, dict[str, Any], dict[str, int]]:
    """(tier, ScalingConfig kwargs, parallel plan) for one launch. A relaunch shrinks (or
    grows back) to what the tier holds now."""
    tier, extra = placement.resolve_for_job(job.placement, job.workers.num_workers, res)
    scaling = {"num_workers": job.workers.num_workers, "use_gpu": "GPU" in res, "resources_per_worker": res}
    if attempt:
        cap = placement.tier_capacity(tier, res) if tier else job.workers.num_workers
        scaling["num_workers"] = max(1, min(job.workers.num_workers, cap))
    scaling.update(extra)
    plan = parallel_plan(job, max(int(scaling["num_workers"]), 1), tier)  # may probe: once per launch
    return tier, scaling, plan


def _phase_lambdas(job: JobConfig) -> JobConfig:
    """Phase λ restricted to the model's objectives (as fit_model_to_corpus does for
    tuner.initial); a name that is no objective at all is a config error."""
    from ogi_ray.train.tuner import OBJECTIVES

    phases = []
    for i, p in enumerate(job.phases):
        if p.lambdas is None:
            phases.append(p)
            continue
        bad = sorted(set(p.lambdas) - set(OBJECTIVES))
        if bad:
            raise ConfigError(None, f"phases[{i}].lambdas", f"unknown objectives {bad} (known: {list(OBJECTIVES)})")
        phases.append(replace(p, lambdas={k: v for k, v in p.lambdas.items() if k in job.model.objectives} or None))
    return replace(job, phases=phases)


def train(job: JobConfig) -> dict[str, Any]:
    """Run a training job on the connected Ray cluster; returns the run summary."""
    import ray
    import torch
    from ray.train import DataConfig, FailureConfig, RunConfig, ScalingConfig, TrainingFailedError
    from ray.train.torch import TorchConfig, TorchTrainer

    from ogi_ray.model import build

    corpora = phases_mod.phase_corpora(job.phases, job.data.corpus)  # verified once
    where = [f"phases[{i}].corpus" for i in range(len(job.phases))] or ["data.corpus"]
    job = fit_model_to_corpus(job, phases_mod.merged_manifest([m for _, m in corpora], where))
    job = _phase_lambdas(job)
    gpu = use_gpu(job.device)
    res = {"CPU": job.workers.cpus_per_worker, **({"GPU": 1} if gpu else {})}
    for key, value in placement.start_timeout_env(job.placement).items():
        os.environ.setdefault(key, value)  # Ray Train passes it to its controller
    tier, scaling, plan = _launch_shape(job, res, 0)
    # batch_size per data-parallel rank × the first plan's dp; relaunches keep it.
    global_rows = job.data.batch_size * plan["dp"]
    with torch.device("meta"):  # parameter count for compute-optimal budgets, no memory
        n_params = build(job.model).num_params()
    phases = phases_mod.resolve_phases(
        job.phases, corpora, default_lambdas=job.tuner.initial, total_steps=job.loop.steps,
        rows_per_step=global_rows * job.data.accum_steps, n_params=n_params, seq_len=job.data.seq_len,
    )  # fmt: skip
    job = phases_mod.with_total_steps(job, phases)

    run_dir = job.run.run_dir
    lineage_dir = run_dir / "lineage"
    job_dict = to_dict(job)
    if job.data.corpus:
        job_dict["data"]["corpus"] = str(Path(job.data.corpus).resolve())
    for p, ph in zip(job_dict["phases"], phases, strict=False):
        p["corpus"] = ph.corpus  # resolved: records and replay find the phase's shards
    config_hash = hash_canonical(job_dict)
    for _, m in corpora:
        atomic_write(lineage_dir / "manifests" / f"{m['manifest_hash']}.json", canonical_json(m))
    atomic_write(lineage_dir / "configs" / f"{config_hash}.json", canonical_json(job_dict))

    actor_opts = placement.actor_options(job.placement)  # e.g. the head / CPU tier
    name = f"ogi-lineage-{uuid.uuid4().hex[:8]}"
    registry = (
        ray.remote(LineageRegistry)
        .options(name=name, num_cpus=0, max_restarts=-1, max_task_retries=3, **actor_opts)
        .remote(str(lineage_dir))
    )
    ray.get(registry.get_head.remote())
    tuner_name = f"ogi-tuner-{uuid.uuid4().hex[:8]}"
    # Restartable: a killed tuner comes back with the state of its last report (its file).
    tuner = (
        ray.remote(LossWeightTuner)
        .options(name=tuner_name, num_cpus=0, max_restarts=-1, max_task_retries=-1, **actor_opts)
        .remote(to_dict(job.tuner), str(run_dir / "tuner_state.json"))
    )
    ray.get(tuner.weights.remote())

    # Keep the corpus order through Ray Data: the data cursor counts rows in that order.
    ray.data.DataContext.get_current().execution_options.preserve_order = True
    datasets = {phases_mod.dataset_key(ph.index): ray.data.read_parquet(shard_paths(ph.corpus)).select_columns(COLUMNS)
                for ph in phases}  # fmt: skip
    phase_specs = [{**asdict(ph), "heldout": shard_paths(ph.corpus, split="heldout")} for ph in phases]

    # Ray Train restarts a failed group in place (max_failures). Under a tier selector its
    # own elastic mode loops forever (RAY-NOTES), so elasticity is done here: when a fit
    # fails, re-read the tier's live capacity, re-plan the worker count and relaunch from
    # the latest checkpoint, keeping the global batch (and so the data cursor) unchanged.
    for attempt in range(job.workers.max_relaunches + 1):
        if attempt:
            tier, scaling, plan = _launch_shape(job, res, attempt)
        if global_rows % plan["dp"]:
            raise ConfigError(None, "workers.num_workers", f"dp {plan['dp']} cannot split the global batch of {global_rows} rows")
        trainer = TorchTrainer(
            train_func,
            train_loop_config={
                "job": job_dict, "run_dir": str(run_dir), "run_name": job.run.name,
                "registry": name, "tuner": tuner_name, "batch_size": global_rows // plan["dp"],
                "parallel": plan, "phases": phase_specs, "config_hash": config_hash,
            },  # fmt: skip
            scaling_config=ScalingConfig(**scaling),
            run_config=RunConfig(
                name=job.run.name, storage_path=str(Path(job.run.storage_path).resolve()),
                failure_config=FailureConfig(max_failures=job.workers.max_failures,
                                             controller_failure_limit=job.workers.controller_failure_limit),
            ),  # fmt: skip
            datasets=datasets,
            # Not split: every rank reads the same global order and takes its dp slice, so
            # the data cursor is one global row number whatever the world size.
            dataset_config=DataConfig(datasets_to_split=[]),
            torch_config=TorchConfig(backend="nccl" if gpu else "gloo"),
        )
        try:
            result = trainer.fit()
            break
        except TrainingFailedError:
            if attempt == job.workers.max_relaunches:
                raise
    summary = dict(result.return_value or {})
    summary["run_dir"] = str(run_dir)
    summary["checkpoints"] = sorted(p.name for p in run_dir.glob("step_*") if p.is_dir())
    summary["head"] = ray.get(registry.get_head.remote())
    summary["tier"] = tier
    summary["num_workers"] = int(scaling["num_workers"])
    summary["parallel"] = plan
    ray.kill(registry)
    ray.kill(tuner)
    return summary

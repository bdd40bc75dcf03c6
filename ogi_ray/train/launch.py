"""A training job resolved into one launch plan, printed, then launched on Ray Train.

    JobConfig ─► plan_launch (once, before any worker starts):
        corpora: every phase's manifest and shard hashes verified
        model fit: token layout and objectives from the corpora's tokenizers/modalities
        placement: the tier (node labels), worker count, resources per worker
        parallel plan: (dp, tp, pp, micro-batches), fixed or from the planner
        phases: fixed step ranges; storage: the run's URI; backend: NCCL-safe
      ─► LaunchPlan (plain data: ``describe()`` prints it, tests inspect it)
      ─► launch: lineage/{manifests,configs} written ─► LineageRegistry and tuner actors
         ─► TorchTrainer(train_func, storage_path=the run's storage) ─► on failure after
         Ray's in-place restarts: re-plan the worker count from the tier's live capacity
         and relaunch from the latest checkpoint (same global batch, so the same cursor)

Workers read their rows straight from the corpus shards (train/stream.py), so the
trainer is handed no Ray Dataset.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from ogi_ray.canonical import canonical_json, hash_canonical
from ogi_ray.config import ConfigError, to_dict
from ogi_ray.lineage.attest import attestation_chain, unattested
from ogi_ray.parallel.device import process_group_backend, use_gpu
from ogi_ray.storage import Store, absolute
from ogi_ray.train import accounting, placement
from ogi_ray.train import phases as phases_mod
from ogi_ray.train.config import JobConfig
from ogi_ray.train.phases import Phase
from ogi_ray.train.stream import CorpusOrder

log = logging.getLogger(__name__)


# ── the pieces of the plan (pure functions of the job and the corpora) ──────────────


def fit_model_to_corpus(job: JobConfig, manifest: dict[str, Any]) -> JobConfig:
    """Fill the model's token layout (and the text tokenizer's PAD) from the corpus'
    tokenizers and modalities, and the tuner's objectives from the layout (unless the
    config names them)."""
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
        n_text=d.seq_len, pad_id=int(tok["text"]["pad_id"]),
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


def phase_lambdas(job: JobConfig) -> JobConfig:
    """Phase λ restricted to the model's objectives (as fit_model_to_corpus does for
    tuner.initial); a name that is no objective at all is a config error."""
    from ogi_ray.train.tuner import OBJECTIVES

    out = []
    for i, p in enumerate(job.phases):
        if p.lambdas is not None:
            bad = sorted(set(p.lambdas) - set(OBJECTIVES))
            if bad:
                raise ConfigError(None, f"phases[{i}].lambdas", f"unknown objectives {bad} (known: {list(OBJECTIVES)})")
            p = replace(p, lambdas={k: v for k, v in p.lambdas.items() if k in job.model.objectives} or None)
        out.append(p)
    return replace(job, phases=out)


def _precision(job: JobConfig) -> str:
    """The precision the workers will run at, resolved as parallel.device.resolve does."""
    from ogi_ray.parallel.device import cpu_has_bf16

    p = job.device.precision
    return p if p != "auto" else ("bf16" if use_gpu(job.device) or cpu_has_bf16() else "fp32")


def parallel_plan(job: JobConfig, world: int, tier: str | None = None, global_rows: int | None = None) -> Any:
    """The ParallelPlan for ``world`` ranks (parallel/plan.py): the job's fixed fields, the
    planner's choice for the rest when ``parallel.topology`` names one (``discover``
    probes the chosen tier's nodes: Ray tasks), else plain data parallelism with
    ``data.batch_size`` rows per micro-batch and ``data.accum_steps`` micro-batches
    (pp of them under a pipeline). ``global_rows`` (a relaunch at another world size)
    keeps the rows per global micro-batch, and so the data cursor's meaning."""
    from ogi_ray.parallel.plan import default_plan, load_plan_topology, resolve_plan

    par, d = job.parallel, job.data
    fixed = par.fixed()
    topology = load_plan_topology(par, tier)
    if topology is not None and global_rows is None:
        return resolve_plan(par, job.model, world, topology, d.batch_size * d.accum_steps * world,
                            precision=_precision(job))  # fmt: skip
    tp, pp = fixed.get("tp", 1), fixed.get("pp", 1)
    if "dp" not in fixed and world % (tp * pp):
        raise ConfigError(None, "parallel.tp", f"tp·pp = {tp * pp} does not divide the {world} workers")
    dp = fixed.get("dp", world // (tp * pp))
    if global_rows is not None and global_rows % dp:
        raise ConfigError(None, "workers.num_workers", f"dp {dp} cannot split the global batch of {global_rows} rows")
    rows = global_rows // dp if global_rows is not None else fixed.get("micro_batch_rows", d.batch_size)
    m = fixed.get("microbatches", d.accum_steps if pp == 1 else pp)
    return default_plan({**fixed, "micro_batch_rows": rows, "microbatches": m}, world, dp * m * rows)


def launch_shape(job: JobConfig, res: dict[str, float], attempt: int,
                 global_rows: int | None = None) -> tuple[str | None, dict[str, Any], Any]:  # fmt: skip
    """(tier, ScalingConfig kwargs, ParallelPlan) for one launch. A relaunch shrinks (or
    grows back) to what the tier holds now, keeping ``global_rows``."""
    tier, extra = placement.resolve_for_job(job.placement, job.workers.num_workers, res)
    scaling = {"num_workers": job.workers.num_workers, "use_gpu": "GPU" in res, "resources_per_worker": res}
    if attempt:
        cap = placement.tier_capacity(tier, res) if tier else job.workers.num_workers
        scaling["num_workers"] = max(1, min(job.workers.num_workers, cap))
    scaling.update(extra)
    return tier, scaling, parallel_plan(job, max(int(scaling["num_workers"]), 1), tier, global_rows)


# ── the plan ────────────────────────────────────────────────────────────────────────


@dataclass
class LaunchPlan:
    """Everything a launch needs, resolved before any worker starts."""

    job: JobConfig  # fitted: layout, objectives, phase λ, total steps
    job_dict: dict[str, Any]  # the recorded (hashed) config
    config_hash: str
    run_uri: str
    phases: list[Phase]
    manifests: list[dict[str, Any]]
    orders: list[CorpusOrder]
    heldout: list[list[str]]
    resources: dict[str, float]  # per worker
    tier: str | None
    scaling: dict[str, Any]
    parallel: Any  # the ParallelPlan
    global_rows: int  # rows per global micro-batch (fixed for the run: the cursor's unit)
    backend: str
    n_params: int
    notes: list[str] = field(default_factory=list)

    def describe(self) -> str:
        j, p = self.job, self.parallel
        lines = [
            f"run        {self.run_uri}",
            f"model      {j.model.preset}: {self.n_params / 1e6:.1f} M params, {j.model.layout.seq_len} slots, "
            f"objectives {', '.join(j.model.objectives)}",
            f"workers    {self.scaling['num_workers']} × {self.resources} on tier {self.tier or '(any node)'}, "
            f"backend {self.backend}",
            f"plan       {p.describe()}",
        ]
        for ph in self.phases:
            lines.append(f"phase      {ph.name}: steps {ph.start}–{ph.end - 1} on {ph.corpus} "
                         f"({ph.total_rows} rows, manifest {ph.manifest_hash[:12]})")  # fmt: skip
        return "\n".join(lines + [f"note       {n}" for n in self.notes])

    def worker_config(self, registry: str, tuner: str | None, parallel: Any) -> dict[str, Any]:
        """train_func's config (plain data: Ray ships it to every worker)."""
        return {
            "job": self.job_dict, "run_uri": self.run_uri, "run_name": self.job.run.name,
            "config_hash": self.config_hash, "registry": registry, "tuner": tuner,
            "batch_size": parallel.micro_batch_rows, "plan": parallel.to_dict(),
            "phases": [asdict(p) for p in self.phases],
            "orders": [{"paths": list(o.paths), "rows": list(o.rows)} for o in self.orders],
            "heldout": self.heldout,
            "accounting": [asdict(accounting.Consumption.of(m)) for m in self.manifests],
        }  # fmt: skip


def _phases_for(job: JobConfig, corpora: list[tuple[str, dict[str, Any]]], global_rows: int,
                microbatches: int, n_params: int) -> tuple[JobConfig, list[Phase]]:  # fmt: skip
    phases = phases_mod.resolve_phases(
        job.phases, corpora, default_lambdas=job.tuner.initial, total_steps=job.loop.steps,
        rows_per_step=global_rows * microbatches, n_params=n_params, seq_len=job.data.seq_len,
    )  # fmt: skip
    return phases_mod.with_total_steps(job, phases), phases


def _recorded(job: JobConfig, phases: list[Phase]) -> dict[str, Any]:
    """The job config as recorded (and hashed) for the lineage, with no location in it
    that depends on where the run was written (lineage/locations.py): corpora relative to
    the run folder, no storage path. Replay and verify find the phases' shards from it."""
    from ogi_ray.lineage.locations import recorded_location

    run_uri = job.run.run_uri
    job_dict = to_dict(job)
    job_dict["run"]["storage_path"] = ""
    if job.data.corpus:
        job_dict["data"]["corpus"] = recorded_location(absolute(job.data.corpus), run_uri)
    for p, ph in zip(job_dict["phases"], phases, strict=False):
        p["corpus"] = recorded_location(ph.corpus, run_uri)
    return job_dict


def prepare_launch(job: JobConfig, *, resume: bool = False, config_file: str | None = None) -> LaunchPlan:
    """Everything that needs no Ray cluster, checked before one starts: the corpora
    (manifests and shard hashes), the model fit, the phases, the run folder (a run there
    is resumed only with ``resume``, and only if compatible). Placement (the tier) comes
    from ``place`` once Ray is up."""
    import torch

    from ogi_ray.model import build
    from ogi_ray.train.resume import check_run_folder

    corpora = phases_mod.phase_corpora(job.phases, job.data.corpus, file=config_file,
                                       mixture=job.data.mixture)  # verified once  # fmt: skip
    where = [f"phases[{i}].corpus" for i in range(len(job.phases))] or ["data.corpus"]
    job = phase_lambdas(fit_model_to_corpus(job, phases_mod.merged_manifest([m for _, m in corpora], where)))
    slots = accounting.model_slots(job.model)
    for (folder, m), field_name in zip(corpora, where, strict=False):
        accounting.check_shares(m, slots, job.data.accept_share_difference_pp, f"{field_name} {folder}")
    res = {"CPU": job.workers.cpus_per_worker, **({"GPU": 1} if use_gpu(job.device) else {})}
    n = max(job.workers.num_workers, 1)
    # A discovered topology needs the cluster: until ``place``, plan as plain dp.
    par = parallel_plan(replace(job, parallel=replace(job.parallel, topology="")) if job.parallel.topology == "discover"
                        else job, n)  # fmt: skip
    with torch.device("meta"):  # parameter count for compute-optimal budgets, no memory
        n_params = build(job.model).num_params()
    job, phases = _phases_for(job, corpora, par.dp * par.micro_batch_rows, par.microbatches, n_params)
    job_dict = _recorded(job, phases)
    check_run_folder(job, job_dict, [m for _, m in corpora], resume=resume)
    return LaunchPlan(
        job=job, job_dict=job_dict, config_hash=hash_canonical(job_dict), run_uri=job.run.run_uri,
        phases=phases, manifests=[m for _, m in corpora],
        orders=[CorpusOrder.of(folder, m) for folder, m in corpora],
        heldout=[CorpusOrder.of(folder, m, "heldout").paths for folder, m in corpora],
        resources=res, tier=None, scaling={"num_workers": n, "use_gpu": "GPU" in res, "resources_per_worker": res},
        parallel=par, global_rows=par.dp * par.micro_batch_rows, backend=process_group_backend("GPU" in res),
        n_params=n_params,
    )  # fmt: skip


def place(plan: LaunchPlan) -> LaunchPlan:
    """The plan on the connected cluster: the tier and its capacity (placement.py), and
    the parallel plan when ``parallel.topology: discover`` probes the tier's nodes."""
    job = plan.job
    for key, value in placement.start_timeout_env(job.placement).items():
        os.environ.setdefault(key, value)  # Ray Train passes it to its controller
    tier, scaling, par = launch_shape(job, plan.resources, 0)
    if par == plan.parallel:
        return replace(plan, tier=tier, scaling=scaling)
    corpora = [(ph.corpus, m) for ph, m in zip(plan.phases, plan.manifests, strict=True)]
    job, phases = _phases_for(job, corpora, par.dp * par.micro_batch_rows, par.microbatches, plan.n_params)
    job_dict = _recorded(job, phases)
    return replace(plan, job=job, job_dict=job_dict, config_hash=hash_canonical(job_dict), phases=phases,
                   tier=tier, scaling=scaling, parallel=par, global_rows=par.dp * par.micro_batch_rows)  # fmt: skip


def plan_launch(job: JobConfig, *, resume: bool = False) -> LaunchPlan:
    """``prepare_launch`` then ``place`` (on the connected Ray cluster)."""
    return place(prepare_launch(job, resume=resume))


# ── the launch ──────────────────────────────────────────────────────────────────────


def _write_lineage_objects(plan: LaunchPlan) -> None:
    """What every record points to: the manifests and the run config, by hash."""
    ldir = Store(plan.run_uri).sub("lineage")
    for m in plan.manifests:
        ldir.write_atomic(f"manifests/{m['manifest_hash']}.json", canonical_json(m))
    ldir.write_atomic(f"configs/{plan.config_hash}.json", canonical_json(plan.job_dict))


def _actors(plan: LaunchPlan) -> tuple[Any, str, Any, str]:
    import ray

    from ogi_ray.lineage.registry import LineageRegistry
    from ogi_ray.train.tuner import LossWeightTuner

    opts = placement.actor_options(plan.job.placement)  # e.g. the head / CPU tier
    reg_name, tuner_name = f"ogi-lineage-{uuid.uuid4().hex[:8]}", f"ogi-tuner-{uuid.uuid4().hex[:8]}"
    registry = (ray.remote(LineageRegistry)
                .options(name=reg_name, num_cpus=0, max_restarts=-1, max_task_retries=3, **opts)
                .remote(Store(plan.run_uri).where("lineage")))  # fmt: skip
    # Restartable: a killed tuner comes back with the state of its last report (its file).
    tuner = (ray.remote(LossWeightTuner)
             .options(name=tuner_name, num_cpus=0, max_restarts=-1, max_task_retries=-1, **opts)
             .remote(to_dict(plan.job.tuner), Store(plan.run_uri).where("tuner_state.json")))  # fmt: skip
    ray.get([registry.get_head.remote(), tuner.weights.remote()])
    return registry, reg_name, tuner, tuner_name


def _evaluator(plan: LaunchPlan, registry: str) -> tuple[Any, str | None]:
    """The eval actor (evals/attest.py) on the actor tier, when ``evals.enabled``, given
    the registry actor's name (a handle as a constructor argument would not survive the
    actor's restart: ray-project/ray#53727); the
    chain's checkpoints the eval policy covers and nothing attests yet (a run resumed
    after its driver died with evals queued) are queued first."""
    ev = plan.job.evals
    if not ev.enabled:
        return None, None
    import ray

    from ogi_ray.evals.attest import EvalRunner

    name = f"ogi-evals-{uuid.uuid4().hex[:8]}"
    runner = (ray.remote(EvalRunner)
              .options(name=name, num_cpus=ev.cpus, max_restarts=-1, max_task_retries=3,
                       **placement.actor_options(plan.job.placement))
              .remote(plan.run_uri, plan.job.run.name, registry, ev.suite, ev.benchmarks, ev.threads,
                      ev.priority))  # fmt: skip
    loop = plan.job.loop
    for step, h in unattested(Store(plan.run_uri).sub("lineage")):
        if ev.wants(step, loop.checkpoint_every, loop.steps):
            runner.evaluate.remote(step, h)
    return runner, name


def _trainer(plan: LaunchPlan, config: dict[str, Any], scaling: dict[str, Any]) -> Any:
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from ogi_ray.train.trainer import train_func

    w = plan.job.workers
    return TorchTrainer(
        train_func, train_loop_config=config, scaling_config=ScalingConfig(**scaling),
        run_config=RunConfig(name=plan.job.run.name, storage_path=absolute(plan.job.run.storage_path),
                             failure_config=FailureConfig(max_failures=w.max_failures,
                                                          controller_failure_limit=w.controller_failure_limit)),
        torch_config=TorchConfig(backend=plan.backend),
    )  # fmt: skip


def launch(plan: LaunchPlan, *, progress: bool = False) -> dict[str, Any]:
    """Run the plan on the connected Ray cluster; returns the run summary. ``progress``:
    a live line on stderr (train/progress.py) while it trains."""
    import ray
    from ray.train import TrainingFailedError

    from ogi_ray.train.progress import Progress

    _write_lineage_objects(plan)
    registry, reg_name, tuner, tuner_name = _actors(plan)
    evaluator, eval_name = _evaluator(plan, reg_name)
    watch = Progress(Store(plan.run_uri), plan.job.loop.steps).start() if progress else None
    tier, scaling, par = plan.tier, plan.scaling, plan.parallel
    job = plan.job
    # Ray Train restarts a failed group in place (max_failures). Under a tier selector its
    # own elastic mode loops forever (RAY-NOTES), so elasticity is done here.
    try:
        for attempt in range(job.workers.max_relaunches + 1):
            if attempt:
                tier, scaling, par = launch_shape(job, plan.resources, attempt, plan.global_rows)
            config = {**plan.worker_config(reg_name, tuner_name, par), "evaluator": eval_name}
            try:
                result = _trainer(plan, config, scaling).fit()
                break
            except TrainingFailedError:
                if attempt == job.workers.max_relaunches:
                    raise
        run = Store(plan.run_uri)
        summary = dict(result.return_value or {})
        if evaluator is not None:  # the actor dies with this driver: let the queued evals finish
            t0 = time.perf_counter()
            done = ray.get(evaluator.drain.remote())  # its calls run in order: every queued eval is done
            for line in done["failed"]:
                log.warning("eval failed (no attestation): %s", line)
            summary.update(eval_failures=done["failed"], eval_wait_s=round(time.perf_counter() - t0, 3))
        summary.update(run_dir=plan.run_uri, head=ray.get(registry.get_head.remote()), tier=tier,
                       num_workers=int(scaling["num_workers"]), parallel=par.to_dict(),
                       checkpoints=sorted(d for d in run.list_dirs() if d.startswith("step_")),
                       attestations=len(attestation_chain(run.sub("lineage"))))  # fmt: skip
        return summary
    finally:
        if watch is not None:
            watch.stop()
        for actor in (registry, tuner, evaluator):
            if actor is not None:
                ray.kill(actor)

"""The Ray boundary of training: ``train_func(config)`` runs once per Ray Train worker and
composes named parts, each with one job:

    WorkerSpec (the launch plan's worker half) ─► placement (device, threads)
      ─► Stepper: meta model ─► layout ─► this rank's shards only (train/stepper.py)
      ─► resume: newer of Ray's checkpoint and the lineage HEAD ─► checkpoint.load
         (any layout: it reshards) ─► RunState
      ─► Trainer.run, per step:
           Feed: this dp rank's rows of the phase corpus at the cursor (train/feed.py)
           Lambdas: λ from the tuner actor, never blocking the step
           Stepper.step.train ─► reduce_metrics ─► MetricsLog (rank 0)
           every checkpoint: held-out scores, the sources split over dp (train/heldout.py)
             ─► checkpoint.save (every rank its shards)
             ─► LineageHook.record ─► ray.train.report (NO_UPLOAD: already in storage)
             ─► LineageHook.append ─► (evals on) the eval actor, not waited on

Only this module touches ``ray.train``; the step itself is plain PyTorch (step.py).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from ogi_ray.parallel.device import (
    Placement,
    linear_gemm_shapes,
    peak_flops,
    prefetch_batches,
    resolve,
)
from ogi_ray.parallel.dims import ParallelDims, axis_rank, dp_rank_and_size
from ogi_ray.parallel.plan import ParallelPlan
from ogi_ray.scaling.batch import GradientNoiseScale, cap_batch
from ogi_ray.storage import Store
from ogi_ray.train import checkpoint as ckpt
from ogi_ray.train.accounting import Consumption
from ogi_ray.train.config import JobConfig, job_from_dict
from ogi_ray.train.feed import Feed
from ogi_ray.train.heldout import heldout_scores
from ogi_ray.train.lineage_hook import LineageHook, call_actor, checkpoint_name
from ogi_ray.train.metrics_log import MetricsLog, reduce_metrics
from ogi_ray.train.optim import build_optimizer
from ogi_ray.train.phases import Phase, phase_at
from ogi_ray.train.run_state import RunState, resume_point
from ogi_ray.train.step import make_world_target
from ogi_ray.train.stepper import Stepper, build_stepper
from ogi_ray.train.stream import CorpusOrder
from ogi_ray.train.tuner import normalise


@dataclass
class WorkerSpec:
    """What every worker needs, sent by the driver (train/launch.py) as plain data."""

    job: JobConfig
    run_uri: str  # the run folder (storage_path/name): local path or URI
    run_name: str
    config_hash: str
    registry: str  # named actors
    tuner: str | None
    batch_size: int  # rows per dp rank per micro-batch
    plan: dict[str, Any]  # the ParallelPlan (parallel/plan.py) as a dict
    phases: list[Phase]
    orders: list[CorpusOrder]  # per phase: the corpus' global row order
    heldout: list[list[str]]  # per phase: held-out shard paths
    accounting: list[Consumption]  # per phase: its sources, rates and target shares (empty counts)
    evaluator: str | None = None  # the eval actor (evals/attest.py), when evals are on

    @classmethod
    def from_config(cls, c: dict[str, Any]) -> WorkerSpec:
        return cls(job=job_from_dict(c["job"]), run_uri=c["run_uri"], run_name=c["run_name"],
                   config_hash=c["config_hash"], registry=c["registry"], tuner=c.get("tuner"),
                   batch_size=int(c["batch_size"]), plan=dict(c["plan"]),
                   phases=[Phase(**p) for p in c["phases"]],
                   orders=[CorpusOrder(tuple(o["paths"]), tuple(o["rows"])) for o in c["orders"]],
                   heldout=[list(h) for h in c["heldout"]],
                   accounting=[Consumption(**a) for a in c["accounting"]], evaluator=c.get("evaluator"))  # fmt: skip


def broadcast_floats(values: list[float]) -> list[float]:
    """Rank 0's ``values`` on every rank: one small host-tensor broadcast (no pickling)."""
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return values
    t = torch.tensor(values, dtype=torch.float64)
    dist.broadcast(t, src=0)
    return t.tolist()


class Lambdas:
    """λ for every step, deterministically: rank 0 reports step s's raw norms to the
    tuner actor and uses, at step s + LAG, the λ the actor computed from the reports up
    to s. The reply normally arrives within a step, so nothing waits; when the actor
    lags more than LAG steps the trainer waits for it rather than letting the timing of
    replies decide λ (two runs of the same job then give the same weights). All ranks get
    rank 0's λ."""

    LAG = 2

    def __init__(self, tuner: Any, objectives: list[str], rank: int) -> None:
        self.tuner, self.objectives, self.rank = tuner, objectives, rank
        self.current = {n: 1.0 for n in objectives}
        self.pending: list[tuple[int, Any]] = []  # (step reported, its reply)

    def start_phase(self, ph: Phase) -> None:
        import ray

        if self.rank == 0:
            if self.tuner is not None:
                ray.get([f for _, f in self.pending])  # earlier reports land before the switch
                self.pending = []  # their λ would undo it
                self.current = ray.get(self.tuner.set_phase.remote(ph.lambdas, ph.index))
            else:
                self.current = normalise(ph.lambdas or {}, self.objectives)

    def after_step(self, step: int, row: dict[str, Any]) -> None:
        """Report ``step``; take the λ computed LAG steps ago (into ``row`` as well)."""
        import ray

        if self.rank != 0 or self.tuner is None:
            return
        raw = {n: row[f"gradnorm_raw/{n}"] for n in self.objectives if f"gradnorm_raw/{n}" in row}
        self.pending.append((step, self.tuner.report.remote(step, raw)))
        while self.pending and self.pending[0][0] <= step + 1 - self.LAG:
            tm = ray.get(self.pending.pop(0)[1])
            self.current = {n: tm.get(f"tuner/lambda/{n}", self.current.get(n, 1.0)) for n in self.objectives}
            for n in self.objectives:
                if f"tuner/gnorm/{n}" in tm:
                    row[f"gradnorm/{n}"] = self.current[n] * tm[f"tuner/gnorm/{n}"]
            row["tuner/imbalance"] = tm.get("tuner/imbalance")

    def sync(self, accum: int) -> int:
        """Rank 0's λ and accumulation on every rank; returns the accumulation."""
        vals = broadcast_floats([self.current.get(n, 1.0) for n in self.objectives] + [float(accum)])
        self.current = dict(zip(self.objectives, vals[:-1], strict=True))
        return int(vals[-1])


class Trainer:
    """The step loop of one worker (every rank runs it; rank 0 also logs and records)."""

    def __init__(self, spec: WorkerSpec, rank: int, world: int, placement: Placement, stepper: Stepper,
                 tuner: Any, registry: Any, evaluator: Any = None) -> None:  # fmt: skip
        job = spec.job
        self.spec, self.job, self.rank, self.world, self.placement = spec, job, rank, world, placement
        self.stepper, self.mcfg = stepper, job.model
        self.run = Store(spec.run_uri)
        self.opt, self.sched = build_optimizer(stepper.module, job.optim, job.loop.steps)
        self.world_target = make_world_target(job.model, job.loop.seed, placement.device)
        dp_rank, self.dp = dp_rank_and_size(stepper.mesh)
        self.feed = Feed(spec, dp_rank, self.dp, prefetch=prefetch_batches(placement.device))
        self.lambdas = Lambdas(tuner, job.model.objectives, rank)
        self.hook = LineageHook(registry, spec.run_name, spec.config_hash) if rank == 0 else None
        self.evaluator = evaluator if rank == 0 else None
        self.log = MetricsLog(self.run) if rank == 0 else None
        # Tokens are counted once per dp replica (tp and pp ranks see the same rows).
        self.counts_tokens = axis_rank(stepper.mesh, "tp") == 0 and axis_rank(stepper.mesh, "pp") == 0
        self.gns = GradientNoiseScale()
        self.state = RunState(accum=stepper.plan.microbatches, lambdas=dict(self.lambdas.current))
        self.history: list[dict[str, Any]] = []
        self.start_step, self.scores = 0, {}
        self._accounts: dict[int, Consumption] = {}  # per phase index
        self._pending: dict[str, Any] | None = None  # a checkpoint whose shards are being written
        # Seconds this rank spent on checkpoints, by part (the summary's checkpoint_s).
        self.ckpt_s = {"count": 0, "heldout_eval": 0.0, "save": 0.0, "record": 0.0}
        with torch.device("meta"):  # the full model's count, not this rank's stage
            from ogi_ray.model import build

            full = build(job.model)
            self.flops_per_token = full.flops_per_token()
            # The GEMMs of one micro-batch at logical (unsharded) shapes, for the peak probe.
            self._gemms = linear_gemm_shapes(full, spec.batch_size * job.model.layout.seq_len)
        self.peak = 0.0

    # ── resume ──────────────────────────────────────────────────────────────────────

    def resume(self, ray_checkpoint: str | None) -> None:
        """Load the newest durable checkpoint (any layout) and finish its registry append
        if a crash came between Ray's registration and the append."""
        import ray

        name = None
        if self.rank == 0:
            head = call_actor(self.hook.registry, "head_record")  # type: ignore[union-attr]
            name = resume_point(self.run, ray_checkpoint, head["checkpoint"] if head else None)
        name = ckpt.broadcast_object(name)
        if name is not None:
            state = ckpt.load(self.run.sub(name), self.stepper.module, self.opt, self.sched, self.world_target)
            self.state = RunState.from_dict(state)
            if state.get("gns"):
                self.gns.load_state_dict(state["gns"])
            if self.rank == 0:
                if self.lambdas.tuner is not None and state.get("tuner"):
                    ray.get(self.lambdas.tuner.load_state_dict.remote(state["tuner"]))
                    # What an unbroken run would have pending: the reply to the last step
                    # before the checkpoint, used LAG steps after it.
                    self.lambdas.pending = [(self.state.step - 1, self.lambdas.tuner.metrics.remote())]
                marker = json.loads(self.run.read_bytes(f"{name}/lineage.json"))
                self.hook.append({k: v for k, v in marker["record"].items() if k != "schema"})  # type: ignore[union-attr]
        self.lambdas.current = dict(self.state.lambdas) or self.lambdas.current
        self.start_step = self.state.step
        self._drop_later_checkpoints()

    def _drop_later_checkpoints(self) -> None:
        """Folders of steps after the resume point are incomplete or off the chain (a
        crash mid-save, or a registration the append never followed): rank 0 removes
        them before any rank writes a checkpoint again."""
        if self.rank == 0:
            for d in self.run.list_dirs():
                if d.startswith("step_") and d[5:].isdigit() and int(d[5:]) > self.start_step:
                    self.run.delete_dir(d)
        if dist.is_initialized():
            dist.barrier()

    # ── the loop ────────────────────────────────────────────────────────────────────

    def run_steps(self) -> dict[str, Any]:
        job, st = self.job, self.state
        phases = self.spec.phases
        ph = phase_at(phases, st.step)
        if ph.index != st.phase:  # resumed exactly at a phase boundary: its corpus from row 0
            st.phase, st.cursor = ph.index, 0
        peak = self.peak = self._peak()
        t_last = time.perf_counter()
        for step in range(self.start_step, job.loop.steps):
            if (nxt := phase_at(phases, step)).index != ph.index:  # next phase: its corpus from row 0
                ph, st.phase, st.cursor = nxt, nxt.index, 0
            if step == ph.start:
                self.lambdas.start_phase(ph)
                self.lambdas.sync(st.accum)
            row, t_last = self._step(step, ph, peak, t_last)
            done = step + 1
            if self._pending is not None and self._pending["step"] < done:
                self.finish_checkpoint()  # a background save: written while this step ran
            if done % job.loop.checkpoint_every == 0 or done == job.loop.steps or done == ph.end:
                self._checkpoint(done, ph, row)
            elif self.log is not None and done % job.loop.log_every == 0:
                self.log.flush()
        self.finish_checkpoint()
        self.feed.close()
        if self.log is not None:
            self.log.close()
        return self.summary()

    def _peak(self) -> float:
        """One peak FLOP/s per device for the whole run: rank 0's (a datasheet entry, else
        the best of several probes at the model's GEMM shapes), broadcast, so every rank's
        MFU and the summary use the same figure."""
        return broadcast_floats([peak_flops(self.placement, self._gemms) if self.rank == 0 else 0.0])[0]

    def _step(self, step: int, ph: Phase, peak: float, t_last: float) -> tuple[dict[str, Any], float]:
        job, st, g_rows = self.job, self.state, self.dp * self.spec.batch_size
        t0 = time.perf_counter()
        micro = self.feed.get(ph.index, step, st.cursor, st.accum)
        t_wait = time.perf_counter() - t0
        accum = st.accum
        if self.hook is not None:
            self.hook.note_step({"step": step, "cursor": st.cursor, "phase": ph.index,
                                 "lambdas": dict(self.lambdas.current), "accum": accum})  # fmt: skip
        metrics = self.stepper.step.train(self.opt, self.sched, micro, lambdas=self.lambdas.current,
                                          world_target=self.world_target)  # fmt: skip
        st.step, st.cursor, st.rows = step + 1, st.cursor + accum * g_rows, st.rows + accum * g_rows
        counts = self.feed.counts(step)
        ntok = float(sum(int(m["n_tokens"]) for m in micro))
        if not self.counts_tokens:
            ntok, counts = 0.0, [0.0] * len(counts)
        row, summed = reduce_metrics(metrics, self.mcfg.objectives, [ntok, *counts])
        batch_tokens = int(round(summed[0]))
        acc = self._consumption(ph)
        acc.add_vector(summed[1:])
        st.consumed[ph.name] = acc.state_dict()
        row.update(acc.metrics())
        st.tokens_seen += batch_tokens
        st.phase_tokens[ph.name] = st.phase_tokens.get(ph.name, 0) + batch_tokens
        now = time.perf_counter()
        dt = max(now - t_last, 1e-9)
        row.update(step=step, lr=metrics["lr"], grad_norm=metrics["grad_norm"], batch_tokens=batch_tokens,
                   tokens_seen=st.tokens_seen, tokens_per_s=batch_tokens / dt, cursor=st.cursor,
                   accum_steps=accum, phase=ph.index, data_wait_fraction=t_wait / dt, peak_flops=peak,
                   # Every layout slot is computed: model FLOPs count rows × slots.
                   mfu=accum * g_rows * self.mcfg.layout.seq_len / dt * self.flops_per_token / (peak * self.world),
                   **{f"lambda/{n}": self.lambdas.current.get(n, 1.0) for n in self.mcfg.objectives})  # fmt: skip
        row["critical_batch_tokens"] = self._control_batch(metrics, batch_tokens, accum)
        row["target_batch_tokens"] = job.data.target_batch_tokens or None
        self.lambdas.after_step(step, row)
        st.accum = self.lambdas.sync(st.accum)
        st.lambdas = dict(self.lambdas.current)
        self.history.append(row)
        if self.log is not None:
            self.log.add(row)
        return row, now

    def _consumption(self, ph: Phase) -> Consumption:
        """The phase's cumulative count of tokens fed, continued from the RunState (so a
        resumed run goes on counting where its checkpoint stopped)."""
        if ph.index not in self._accounts:
            a = self.spec.accounting[ph.index]
            self._accounts[ph.index] = acc = Consumption(sources=a.sources, rates=a.rates, target=a.target)
            acc.load_state_dict(self.state.consumed.get(ph.name))
        return self._accounts[ph.index]

    def _control_batch(self, metrics: dict[str, Any], batch_tokens: int, accum: int) -> float | None:
        """Gradient noise scale (one global micro-batch vs the whole step) and, with a
        target, one micro-batch more or less per step toward it, capped by B_noise."""
        data, st = self.job.data, self.state
        b_noise = None
        if metrics["gns_small_sq"] is not None and batch_tokens > 0:
            b_noise = self.gns.update(metrics["gns_small_sq"], metrics["gns_big_sq"], batch_tokens / accum, batch_tokens)
        if data.target_batch_tokens and self.stepper.n_microbatches == 0:
            want = cap_batch(float(data.target_batch_tokens), b_noise)
            ideal = round(want / max(batch_tokens / accum, 1.0))
            # At least 2 micro-batches keep the estimate alive.
            st.accum = max(min(2, data.max_accum_steps), min(data.max_accum_steps, accum + (ideal > accum) - (ideal < accum)))
        return b_noise

    def _checkpoint(self, done: int, ph: Phase, row: dict[str, Any]) -> None:
        """Evaluate and save (every rank its shards); the record, Ray's registration and
        the chain's append follow when the shards are written: now, or with
        ``loop.checkpoint_async`` at the end of the next step (``finish_checkpoint``)."""
        import ray

        self.finish_checkpoint()  # one background save at a time
        t0 = time.perf_counter()
        self.scores = heldout_scores(self.stepper.step, self.feed.heldout(ph.index), self.world_target,
                                     dp_rank=self.feed.dp_rank, dp=self.dp, split=self.stepper.n_microbatches == 0)  # fmt: skip
        t1 = time.perf_counter()
        tuner = self.lambdas.tuner
        train_state = {**self.state.to_dict(), "gns": self.gns.state_dict(),
                       "tuner": ray.get(tuner.state_dict.remote()) if (self.rank == 0 and tuner) else None,
                       "world_size": self.world, "batch_size": self.spec.batch_size,
                       "parallel": self.stepper.plan.to_dict(),
                       "threads": torch.get_num_threads()}  # fmt: skip
        store = self.run.sub(checkpoint_name(done))
        pending = ckpt.save_async(store, self.stepper.module, self.opt, self.sched, train_state=train_state,
                                  world_target=self.world_target, background=self.job.loop.checkpoint_async)  # fmt: skip
        self._pending = {"pending": pending, "store": store, "step": done, "row": row, "scores": dict(self.scores),
                         "manifest_hash": ph.manifest_hash, "cursor": self.state.data_cursor(),
                         "segment": self.hook.take_segment() if self.hook else [],
                         "rng": ckpt.rng_commitment(self.job.loop.seed)}  # fmt: skip
        self.ckpt_s["count"] += 1
        self.ckpt_s["heldout_eval"] += t1 - t0
        self.ckpt_s["save"] += time.perf_counter() - t1  # the shards themselves, unless async
        if not self.job.loop.checkpoint_async:
            self.finish_checkpoint()

    def finish_checkpoint(self) -> None:
        """Complete the pending checkpoint (collective): its record and marker (rank 0),
        Ray Train's registration (NO_UPLOAD: the files are already in storage), then the
        chain's append, which makes it the resume point."""
        import ray.train
        from ray.train import CheckpointUploadMode

        if self._pending is None:
            return
        p, self._pending = self._pending, None
        t0 = time.perf_counter()
        saved = p["pending"].result()
        name, fields, report = checkpoint_name(p["step"]), None, None
        if self.hook is not None:
            fields = self.hook.record(p["store"], saved, step=p["step"], manifest_hash=p["manifest_hash"],
                                      cursor=p["cursor"], scores=p["scores"], segment=p["segment"], rng=p["rng"])  # fmt: skip
            self.log.flush()  # type: ignore[union-attr]
            report = _ray_checkpoint(name)
        ray.train.report({**p["row"], **p["scores"]}, checkpoint=report, checkpoint_dir_name=name,
                         checkpoint_upload_mode=CheckpointUploadMode.NO_UPLOAD)  # fmt: skip
        if self.hook is not None:
            h = self.hook.append(fields)  # type: ignore[arg-type]
            loop = self.job.loop
            if self.evaluator is not None and self.job.evals.wants(p["step"], loop.checkpoint_every, loop.steps):
                self.evaluator.evaluate.remote(p["step"], h)  # off the hot path: never waited on here
        self.ckpt_s["record"] += time.perf_counter() - t0  # the shards' wait, record, report, append

    def _tokens_by_modality(self) -> dict[str, float]:
        """Tokens fed per modality over every phase (what observe.py's rates count)."""
        states = []
        for ph in self.spec.phases:
            c = Consumption(sources=self.spec.accounting[ph.index].sources, rates={}, target={})
            c.load_state_dict(self.state.consumed.get(ph.name))
            states.append(c)
        return _sum_modalities(states)

    def summary(self) -> dict[str, Any]:
        def first_last(key: str) -> tuple[float | None, float | None]:
            vals = [h[key] for h in self.history if key in h]
            return (vals[0], vals[-1]) if vals else (None, None)

        objectives = self.mcfg.objectives
        losses = {n: first_last(f"loss/{n}") for n in objectives}
        st = self.state
        return {
            "steps": self.job.loop.steps, "start_step": self.start_step, "tokens_seen": st.tokens_seen,
            "loss_first": losses["lm"][0], "loss_last": losses["lm"][1], "losses": losses,
            "final_record": self.hook.last_record if self.hook else "", "final_eval": dict(self.scores),
            "objectives": objectives, "peak_flops": self.peak,
            "checkpoint_s": {k: round(v, 3) for k, v in self.ckpt_s.items()},
            "tokens_by_modality": self._tokens_by_modality(),
            "phases": [{"name": p.name, "start": p.start, "steps": p.steps, "token_budget": p.token_budget,
                        "tokens": st.phase_tokens.get(p.name, 0)} for p in self.spec.phases],
        }  # fmt: skip


def _sum_modalities(states: list[Consumption]) -> dict[str, float]:
    out: dict[str, float] = {}
    for c in states:
        for m, v in c.tokens_by_modality().items():
            out[m] = out.get(m, 0.0) + v
    return out


def _ray_checkpoint(name: str) -> Any:
    """The pointer Ray Train registers for a checkpoint already in storage; None in Ray
    Train's local mode (``num_workers: 0``), which manages no checkpoints (the lineage
    HEAD is the resume point there)."""
    import ray.train
    from ray.train import Checkpoint

    try:
        storage = ray.train.get_context().get_storage()
    except NotImplementedError:
        return None
    return Checkpoint(path=f"{storage.experiment_fs_path}/{name}", filesystem=storage.storage_filesystem)


def _placement(spec: WorkerSpec, local_rank: int) -> Placement:
    placement = resolve(spec.job.device, local_rank)
    if spec.job.workers.threads:
        torch.set_num_threads(spec.job.workers.threads)
    return placement


def _mark_worker(run: Store, rank: int, world: int) -> None:
    """Who is running where (diagnostics; fault-injection tests read the pids)."""
    run.write_atomic(f"workers/rank{rank}.json", json.dumps({"pid": os.getpid(), "world": world}).encode())


def train_func(config: dict[str, Any]) -> dict[str, Any]:
    import ray
    import ray.train

    spec = WorkerSpec.from_config(config)
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    placement = _placement(spec, ctx.get_local_rank())
    ckpt.seed_globals(spec.job.loop.seed, rank)
    _mark_worker(Store(spec.run_uri), rank, world)
    plan = ParallelPlan.from_dict(spec.plan)
    ParallelDims.from_plan(plan).validate(world)
    ray_ckpt = ray.train.get_checkpoint()
    stepper = build_stepper(spec.job.model, plan, placement, seed=spec.job.loop.seed,
                            compile=spec.job.device.compile, grad_clip=spec.job.optim.grad_clip)  # fmt: skip
    tuner = ray.get_actor(spec.tuner) if spec.tuner else None
    registry = ray.get_actor(spec.registry) if rank == 0 else None
    evaluator = ray.get_actor(spec.evaluator) if (rank == 0 and spec.evaluator) else None
    trainer = Trainer(spec, rank, world, placement, stepper, tuner, registry, evaluator)
    trainer.resume(ray_ckpt.path.rstrip("/").rpartition("/")[2] if ray_ckpt is not None else None)
    return trainer.run_steps()

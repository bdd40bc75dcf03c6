"""The proxy swarm on Ray Tune: one trial per proxy, each a small ``ogi train``.

    SwarmConfig ──► OUT/mixtures/reference.yaml: the base mixture with the swarm's held-out
                    fraction ──build_corpus──► OUT/corpora/reference (its tokenizer.json is
                    every proxy's vocabulary; its sources and shares seed the design)
        ──design.sample_design──► OUT/mixtures/proxy-NN.yaml ──build_corpus──► OUT/corpora/…
                    (proxies with the base shares train on the reference corpus; every
                    corpus' held-out shards must equal the reference's: one eval set)
        ──Ray Tune: one trial per proxy (cpus_per_trial, max_concurrent, max_failures)──►
                    ProxyTrial: base job + {corpus, steps, run name} ──train(job)──►
                    OUT/runs/proxy-NN; tune.report(tokens per modality, eval scores, …)
        ──► OUT/swarm.json: the trial table measure.py fits (rows in proxy order)
    with normalise: untrained, one more trial: the base job for 1 step at lr 1e-12 on the
    reference corpus, whose eval is the untrained model's loss (the metric's normaliser)

Resuming ``measure`` on the same OUT: corpora whose mixture file is unchanged are kept,
the Tune experiment OUT/tune is restored (finished trials keep their results, errored
and unfinished ones run again) and a trial whose proxy already has its final lineage
record reads it instead of training again. OUT/design.json pins the design; another
design in the same OUT is refused.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import yaml

from ogi_ray.canonical import file_sha256, hash_canonical
from ogi_ray.config import ConfigError, apply_overrides, load_yaml, to_dict
from ogi_ray.rates import observe
from ogi_ray.rates.config import SwarmConfig
from ogi_ray.rates.design import ProxySpec, derived_mixture, sample_design, source_groups

log = logging.getLogger(__name__)
REFERENCE = "reference"


UNTRAINED = "untrained"
# The untrained reference: one step at a learning rate that moves no weight measurably
# (Adam's first step is ~lr per weight), so its eval scores the initial weights that every
# proxy starts from (the same loop.seed), on the same held-out rows.
UNTRAINED_OVERRIDES = ["optim.lr=1.0e-12", "optim.min_lr=0.0", "optim.weight_decay=0.0"]


def proxy_job(
    cfg: SwarmConfig, spec: ProxySpec, corpus: Path, out: Path, extra: list[str] | None = None
) -> dict[str, Any]:
    """The proxy's job mapping: the base job (+ overrides) on its corpus for its steps,
    one checkpoint (and eval) at the end, its own run folder."""
    from ogi_ray.train.config import job_from_dict

    data = apply_overrides(load_yaml(cfg.base_job), [*cfg.job_overrides, *(extra or [])])
    if data.get("phases"):
        raise ConfigError(cfg.base_job, "phases", "a proxy is one phase: remove phases from the proxy job")
    data.setdefault("data", {})["corpus"] = str(corpus)
    loop = data.setdefault("loop", {})
    loop.update(steps=spec.steps, checkpoint_every=spec.steps, log_every=min(int(loop.get("log_every", 5)), spec.steps))
    data["run"] = {"name": spec.name, "storage_path": str(out / "runs")}
    job_from_dict(data, file=cfg.base_job)  # validated here, not in a trial
    return data


def _write_yaml(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    text = yaml.safe_dump(data, sort_keys=False)
    if not path.is_file() or path.read_text(encoding="utf-8") != text:
        path.write_text(text, encoding="utf-8")


def _build(mixture: Path, corpus: Path, policy: str) -> dict[str, Any]:
    """Build unless ``corpus`` already holds the build of exactly this mixture file."""
    from ogi_ray.corpus.build import build_corpus

    if (corpus / "manifest.json").is_file():
        m = observe.read_manifest(corpus)
        if m.get("mixture_sha256") == file_sha256(mixture):
            return m
    t0 = time.perf_counter()
    m = build_corpus(mixture, corpus, policy_path=policy or None)
    log.info("built %s in %.1f s", corpus.name, time.perf_counter() - t0)
    return m


def prepare(cfg: SwarmConfig, out: Path) -> tuple[list[ProxySpec], dict[str, Path], dict[str, Any]]:
    """Mixtures and corpora of every proxy; returns (specs, corpus per proxy, reference manifest)."""
    base = load_yaml(cfg.base_mixture)
    from ogi_ray.corpus.config import load_mixture

    load_mixture(cfg.base_mixture)  # a bad base mixture fails here, naming its file
    ref_mix = out / "mixtures" / f"{REFERENCE}.yaml"
    ref = _relocated(base, Path(cfg.base_mixture))
    if cfg.design.heldout_fraction:
        ref["heldout_fraction"] = cfg.design.heldout_fraction
    _write_yaml(ref_mix, ref)
    ref_dir = out / "corpora" / REFERENCE
    ref_manifest = _build(ref_mix, ref_dir, cfg.policy)
    shares = {s["name"]: float(s["target_share"]) for s in ref_manifest["sources"]}
    groups = source_groups(ref_manifest["sources"], cfg.design.vary)
    specs = sample_design(shares, groups, cfg.proxies, cfg.design, cfg.seed)
    _pin_design(cfg, out, specs, groups)
    corpora: dict[str, Path] = {}
    for spec in specs:
        if all(abs(spec.shares[s] - shares[s]) < 1e-12 for s in shares):
            corpora[spec.name] = ref_dir
            continue
        mix = out / "mixtures" / f"{spec.name}.yaml"
        _write_yaml(mix, derived_mixture(ref, spec, heldout_fraction=None, tokenizer=str(ref_dir)))
        m = _build(mix, out / "corpora" / spec.name, cfg.policy)
        if [h["sha256"] for h in m["heldout_shards"]] != [h["sha256"] for h in ref_manifest["heldout_shards"]]:
            raise RuntimeError(f"{spec.name}: held-out shards differ from the reference corpus'; proxies would be scored on different rows")
        corpora[spec.name] = out / "corpora" / spec.name
    return specs, corpora, ref_manifest


def _relocated(base: dict[str, Any], path: Path) -> dict[str, Any]:
    """The base mixture as a file in another folder says the same: paths relative to the
    mixture (a reused tokenizer) made absolute, and a pinned rates file replaced by the
    rates it pins (its folder does not move with the copy)."""
    from ogi_ray.corpus.rates_file import mixture_rates

    out = dict(base)
    rates, source = mixture_rates(path, base)
    if source["kind"] == "measured":
        out.pop("exchange_rates_file")
        out["exchange_rates"] = rates
    reuse = (base.get("text_tokenizer") or {}).get("reuse")
    if reuse:
        out["text_tokenizer"] = {**base["text_tokenizer"], "reuse": str((path.parent / reuse).resolve())}
    return out


def _pin_design(cfg: SwarmConfig, out: Path, specs: list[ProxySpec], groups: dict[str, list[str]]) -> None:
    """What decides the trials (not the metric or fit settings, which apply afterwards)."""
    c = to_dict(cfg)
    doc = {"config": {k: c[k] for k in ("base_job", "base_mixture", "policy", "proxies", "seed", "job_overrides", "design")},
           "base_job_sha256": file_sha256(cfg.base_job), "groups": groups, "proxies": [asdict(s) for s in specs]}  # fmt: skip
    path = out / "design.json"
    if path.is_file():
        old = json.loads(path.read_text(encoding="utf-8"))
        if hash_canonical(old) != hash_canonical(json.loads(json.dumps(doc))):
            raise ConfigError(cfg.file, "", f"{out} holds a swarm of another design (design.json differs); use another --out")
        return
    path.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")


def run_proxy(job_dict: dict[str, Any]) -> dict[str, Any]:
    """Train one proxy (or read it back when its final record exists) and observe it."""
    from ogi_ray.train.config import job_from_dict
    from ogi_ray.train.driver import train

    job = job_from_dict(job_dict)
    run_dir = job.run.run_uri  # a local folder: proxies run beside their swarm
    record = observe.final_record(run_dir)
    summary = None
    t0 = time.perf_counter()
    reused = record is not None and record["step"] == job.loop.steps
    if not reused:
        # A proxy is the unit of resumption: a partial run (killed mid-way) starts over.
        shutil.rmtree(run_dir, ignore_errors=True)
        summary = train(job, quiet=True)
        record = observe.final_record(run_dir)
        if record is None or record["step"] != job.loop.steps:
            raise RuntimeError(f"{run_dir}: training ended without a final lineage record")
    corpus = job.data.corpus
    return {
        "proxy": job.run.name, "steps": job.loop.steps, "rows": int(record["data_cursor"]["rows"]),
        "tokens_seen": int(record["data_cursor"]["tokens_seen"]), "final_record": record_hash(record),
        "manifest_hash": record["manifest_hash"], "run_dir": str(run_dir), "reused": reused,
        "wall_s": time.perf_counter() - t0,
        "tokens": observe.trained_tokens(record, job, corpus, summary),
        "eval": observe.final_eval(record, summary),
    }  # fmt: skip


def record_hash(record: dict[str, Any]) -> str:
    from ogi_ray.lineage.record import record_hash as _h

    return _h(record)


def _trial_class() -> type:
    """The Tune trainable: one proxy, one result, then done.

    A class trainable, not a function: Ray 2.60 refuses ``ray.train.get_context()`` inside
    a Tune *function* session, which is where Ray Train's local mode (``num_workers: 0``)
    would run the proxy; a class trainable has no such session, so the proxy trains in
    the trial's own process (no worker group to start). ``num_workers >= 1`` proxies run
    a Ray Train worker group from the trial as usual."""
    from ray import tune

    class ProxyTrial(tune.Trainable):
        def setup(self, config: dict[str, Any]) -> None:
            self.job = config["proxy"]["job"]
            self.result: dict[str, Any] | None = None

        def reset_config(self, new_config: dict[str, Any]) -> bool:
            """Reused for the next proxy (reuse_actors): a new process would import torch
            and Ray Train again, which costs more than a tiny proxy's steps."""
            self.setup(new_config)
            return True

        def step(self) -> dict[str, Any]:
            if self.result is None:  # a restored trial already has its result
                self.result = run_proxy(self.job)
            return {**self.result, "done": True}

        def save_checkpoint(self, checkpoint_dir: str) -> None:
            Path(checkpoint_dir, "proxy.json").write_text(json.dumps(self.result), encoding="utf-8")

        def load_checkpoint(self, checkpoint_dir: str) -> None:
            self.result = json.loads(Path(checkpoint_dir, "proxy.json").read_text(encoding="utf-8"))

    return ProxyTrial


def check_resources(cfg: SwarmConfig, job: dict[str, Any]) -> None:
    """Refuse a swarm that would starve: the trials at once, with their proxies' Ray Train
    workers, must leave one whole CPU for Ray Data's read tasks (each asks for 1 CPU; with
    less free, every proxy waits for its first batch forever, as RAY-NOTES records)."""
    import ray

    workers = _job(job).workers
    per_trial = cfg.resources.cpus_per_trial + workers.num_workers * workers.cpus_per_worker
    held = cfg.resources.max_concurrent * per_trial
    cpus = float(ray.cluster_resources().get("CPU", 0.0))
    if held + 1.0 > cpus + 1e-9:
        raise ConfigError(
            cfg.file, "resources",
            f"{cfg.resources.max_concurrent} trials x ({cfg.resources.cpus_per_trial} + {workers.num_workers} workers x "
            f"{workers.cpus_per_worker}) = {held:g} CPUs leave {cpus - held:g} of {cpus:g} for Ray Data's read tasks, "
            "which need 1: lower max_concurrent or cpus_per_trial, or start Ray with more CPUs (ogi --num-cpus N)",
        )  # fmt: skip


def run_tune(cfg: SwarmConfig, out: Path, jobs: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """One Tune trial per proxy; returns each trial's report, in proxy order."""
    from ray import tune

    check_resources(cfg, next(iter(jobs.values())))

    trainable = tune.with_resources(_trial_class(), {"CPU": cfg.resources.cpus_per_trial})
    path = out / "tune"
    if tune.Tuner.can_restore(str(path)):
        tuner = tune.Tuner.restore(str(path), trainable=trainable, resume_unfinished=True, restart_errored=True)
    else:
        space = {"proxy": tune.grid_search([{"name": n, "job": j} for n, j in jobs.items()])}
        tuner = tune.Tuner(
            trainable, param_space=space,
            tune_config=tune.TuneConfig(
                max_concurrent_trials=cfg.resources.max_concurrent, reuse_actors=True,
                trial_name_creator=lambda t: t.config["proxy"]["name"],
                trial_dirname_creator=lambda t: t.config["proxy"]["name"],
            ),
            run_config=tune.RunConfig(
                name="tune", storage_path=str(out), verbose=1,
                failure_config=tune.FailureConfig(max_failures=cfg.resources.max_failures),
            ),
        )  # fmt: skip
    grid = tuner.fit()
    reports: dict[str, dict[str, Any]] = {}
    errors = []
    for result in grid:
        name = result.config["proxy"]["name"]
        if result.error is not None or not result.metrics or "tokens" not in result.metrics:
            errors.append(f"{name}: {result.error or 'no report'}")
            continue
        reports[name] = {k: result.metrics[k] for k in
                         ("proxy", "steps", "rows", "tokens_seen", "final_record", "manifest_hash",
                          "run_dir", "reused", "wall_s", "tokens", "eval")}  # fmt: skip
    if errors:
        raise RuntimeError(f"{len(errors)} proxy trial(s) failed (run measure again to retry them):\n  " + "\n  ".join(errors))
    return [reports[n] for n in jobs]


def run_swarm(cfg: SwarmConfig, out: str | Path) -> dict[str, Any]:
    """Prepare corpora, run every proxy on Ray Tune, write and return OUT/swarm.json."""
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    specs, corpora, ref_manifest = prepare(cfg, out)
    t1 = time.perf_counter()
    jobs = {s.name: proxy_job(cfg, s, corpora[s.name], out) for s in specs}
    if cfg.metric.normalise == "untrained":
        ref = ProxySpec(index=-1, name=UNTRAINED, steps=1, shares=specs[0].shares, multipliers={})
        jobs = {UNTRAINED: proxy_job(cfg, ref, out / "corpora" / REFERENCE, out, UNTRAINED_OVERRIDES), **jobs}
    reports = dict(zip(jobs, run_tune(cfg, out, jobs), strict=True))
    t2 = time.perf_counter()
    trials = []
    for spec in specs:
        rep = reports[spec.name]
        trials.append({**rep, "shares": spec.shares, "multipliers": spec.multipliers,
                       "corpus": str(corpora[spec.name])})  # fmt: skip
    base_job = jobs[specs[0].name]
    doc = {
        "name": cfg.name, "out": str(out), "trials": trials, "untrained": reports.get(UNTRAINED),
        "reference": {"corpus": str(out / "corpora" / REFERENCE), "manifest_hash": ref_manifest["manifest_hash"],
                      "exchange_rates": ref_manifest["exchange_rates"],
                      "heldout_sha256": [h["sha256"] for h in ref_manifest["heldout_shards"]]},
        "sources": observe.source_profile(out / "corpora" / REFERENCE, _job(base_job)),
        "heldout_weights": {"lm": observe.heldout_text_tokens(out / "corpora" / REFERENCE, _job(base_job))},
        "groups": source_groups(ref_manifest["sources"], cfg.design.vary),
        "base_job": base_job,
        "timing": {"prepare_s": t1 - t0, "tune_s": t2 - t1},
    }  # fmt: skip
    (out / "swarm.json").write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    return doc


def _job(data: dict[str, Any]) -> Any:
    from ogi_ray.train.config import job_from_dict

    return job_from_dict(data)

"""The ``ogi`` command: thin argument parsing over the library (no logic of its own).

    ogi demo [--out DIR]
    ogi corpus build MIXTURE --out DIR|URI [--policy FILE] [--seed N] [--overwrite]
    ogi corpus inspect DIR|URI [--no-verify]
    ogi train --config FILE [--out DIR] [key=value ...]
    ogi lineage verify RUN
    ogi lineage show RUN
    ogi report RUN
    ogi export RUN [--step N] --out DIR
    ogi plan ...            (scaling planner, when installed: ogi_ray.scaling.cli)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time


def _init_ray(num_cpus: int | None = None) -> None:
    import ray

    if ray.is_initialized():
        return
    # Inside `ray job submit` RAY_ADDRESS points at the cluster; locally start a fresh one.
    if os.environ.get("RAY_ADDRESS"):
        ray.init(log_to_driver=False)
    else:
        ray.init(address="local", num_cpus=num_cpus, log_to_driver=False)


def _cmd_demo(args: argparse.Namespace) -> int:
    from ogi_ray.demo import prepare_demo, run_demo

    out = args.out or f"runs/demo-{time.strftime('%Y%m%d-%H%M%S')}"
    prepare_demo(out, args.overrides, overwrite=args.overwrite)  # bad input fails before Ray starts
    _init_ray(args.num_cpus)
    s = run_demo(out, args.overrides, overwrite=args.overwrite)
    print("\n=== ogi demo summary ===")
    print(f"out:             {s['out']}")
    print(f"corpus:          manifest_hash {s['manifest_hash']}  ({s['corpus_seconds']:.0f} s)")
    print(f"steps:           {s['steps']}  ({s['train_seconds']:.0f} s)")
    print(f"tokens seen:     {s['tokens_seen']}")
    for name, (first, last) in s["losses"].items():  # first and last step of each objective
        if first is not None:
            print(f"loss ({name}):{' ' * (9 - len(name))}{first:.4g} -> {last:.4g}")
    print(f"checkpoints:     {len(s['checkpoints'])} ({', '.join(s['checkpoints'])})")
    print(f"final record:    {s['head']}")
    if s["verify_problems"]:
        print("lineage verify:  FAILED\n  " + "\n  ".join(s["verify_problems"]))
        return 1
    print(f"lineage verify:  ok  (ogi lineage verify {s['out']})")
    return 0


def _cmd_corpus_build(args: argparse.Namespace) -> int:
    from ogi_ray.corpus.build import prepare_build, run_build
    from ogi_ray.corpus.inspect import table

    # Everything that can be checked without Ray is checked first: a typo fails at once.
    plan = prepare_build(args.mixture, args.out, policy_path=args.policy, seed=args.seed, overwrite=args.overwrite)
    _init_ray(args.num_cpus)
    m = run_build(plan)
    print(table(args.out, manifest=m, verified="built and hashed by this command"))
    return 0


def _cmd_corpus_inspect(args: argparse.Namespace) -> int:
    from ogi_ray.corpus.inspect import table
    from ogi_ray.corpus.manifest import verify_corpus

    m = verify_corpus(args.dir, check_shards=not args.no_verify)
    n = len(m["shards"]) + len(m.get("heldout_shards", [])) + 1
    verified = "manifest hash only (--no-verify)" if args.no_verify else f"manifest hash and all {n} files' SHA-256"
    print(table(args.dir, manifest=m, verified=verified))
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from ogi_ray.train.config import load_job
    from ogi_ray.train.launch import launch, place, prepare_launch

    job = load_job(args.config, args.overrides)
    if args.out:
        job = replace(job, run=replace(job.run, storage_path=args.out))
    # The config, the corpora and the run folder are checked before Ray starts.
    plan = prepare_launch(job, resume=args.resume, config_file=args.config)
    _init_ray(args.num_cpus)
    plan = place(plan)
    print(plan.describe(), file=sys.stderr, flush=True)
    print(json.dumps(launch(plan, progress=True), indent=2))  # stdout: only this JSON
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from ogi_ray.lineage.verify import run_store
    from ogi_ray.storage import Store
    from ogi_ray.train.report import write_report

    run = run_store(args.run)
    notes: list[str] = []
    out = write_report(run, warmup=args.warmup, out=Store(args.out) if args.out else None,
                       overwrite=args.overwrite, notes=notes)  # fmt: skip
    for n in notes:
        print(f"note: {n}", file=sys.stderr)
    print(Store(out.rpartition("/")[0]).read_text("report.md"))
    print(f"written: {out} and its PNG plots")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from ogi_ray.lineage.export import export
    from ogi_ray.lineage.verify import run_store
    from ogi_ray.storage import Store

    s = export(run_store(args.run), Store(args.out), args.step, overwrite=args.overwrite)
    print(f"exported step {s['step']} (record {s['record'][:16]}) to {s['out']}: {', '.join(s['files'])}")
    print(f"weights root {s['weights_root']} == the record's")
    return 0


NUM_CPUS_HELP = "CPUs of the local Ray cluster this command starts (ignored inside `ray job submit`)"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ogi", description="OGI-Ray pretraining")
    p.add_argument("--num-cpus", type=int, default=None, help=NUM_CPUS_HELP)
    # Also accepted after the subcommand (``ogi train --num-cpus 4 ...``).
    ray_opts = argparse.ArgumentParser(add_help=False)
    ray_opts.add_argument("--num-cpus", type=int, default=argparse.SUPPRESS, help=NUM_CPUS_HELP)
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("demo", parents=[ray_opts], help="build a small real corpus, train, verify lineage")
    d.add_argument("--out", default=None, help="output folder (default runs/demo-<time>); empty, new, or a previous demo")
    d.add_argument("--overwrite", action="store_true", help="replace a previous demo's output in --out")
    d.add_argument("overrides", nargs="*", help="job config overrides key.path=value (jobs/configs/demo.yaml)")
    d.set_defaults(func=_cmd_demo)

    c = sub.add_parser("corpus", help="build or inspect a corpus").add_subparsers(dest="sub", required=True)
    cb = c.add_parser("build", parents=[ray_opts], help="build a corpus from a mixture file (Ray Data)",
                      description="Build the corpus a mixture file describes: license gate, tokenizers, exact "
                                  "mix, Parquet shards and a hashed manifest. The mixture, policy, every "
                                  "source's params and inputs and the output folder are checked before Ray starts.")  # fmt: skip
    cb.add_argument("mixture", help="mixture YAML (e.g. datasets/mixture.yaml; docs/corpus.md)")
    cb.add_argument("--out", required=True,
                    help="corpus folder: a local path or a pyarrow.fs URI (s3://bucket/prefix); created, or "
                         "replaced once the new corpus is complete if it holds a corpus this command wrote")  # fmt: skip
    cb.add_argument("--policy", default=None, help="license policy YAML (default: datasets/policy.yaml)")
    cb.add_argument("--seed", type=int, default=None, help="override the mixture's seed")
    cb.add_argument("--overwrite", action="store_true",
                    help="also write into a non-empty folder that is not a corpus (its other files stay)")
    cb.set_defaults(func=_cmd_corpus_build)
    ci = c.add_parser("inspect", help="verify a corpus and print target vs realised shares")
    ci.add_argument("dir", help="corpus folder or URI")
    ci.add_argument("--no-verify", action="store_true", help="check the manifest hash only, not every file's SHA-256")
    ci.set_defaults(func=_cmd_corpus_inspect)

    t = sub.add_parser("train", parents=[ray_opts], help="run a training job (live progress on stderr, the summary as JSON on stdout)")
    t.add_argument("--config", required=True, help="job YAML, e.g. jobs/configs/demo.yaml")
    t.add_argument("--out", default=None, help="run.storage_path: a folder or URI holding the run at OUT/<run.name>")
    t.add_argument("--resume", action="store_true",
                   help="continue the run already in OUT/<run.name> (refused when its model or corpus differ)")
    t.add_argument("overrides", nargs="*", help="job config overrides key.path=value")
    t.set_defaults(func=_cmd_train)

    r = sub.add_parser("report", help="PNG plots and a Markdown summary of a run")
    r.add_argument("run", help="run folder, demo output folder, or pyarrow URI of a run folder")
    r.add_argument("--warmup", type=int, default=None,
                   help="steps excluded from the tuner-balance figure (default: the run's tuner.warmup)")
    r.add_argument("--out", default=None, help="folder for report.md and the plots (default: the run folder)")
    r.add_argument("--overwrite", action="store_true", help="replace a previous report in --out")
    r.set_defaults(func=_cmd_report)

    e = sub.add_parser("export", help="consolidated safetensors + config of one checkpoint, root checked")
    e.add_argument("run", help="run folder, demo output folder, or pyarrow URI of a run folder")
    e.add_argument("--step", type=int, default=None, help="the checkpoint's step (default: the newest record)")
    e.add_argument("--out", required=True, help="output folder (local or URI); must be empty or absent")
    e.add_argument("--overwrite", action="store_true", help="replace a previous export in --out")
    e.set_defaults(func=_cmd_export)

    from ogi_ray.evals import sample_cli

    sample_cli.register(sub, "ogi_ray.evals.load:load_run")

    lin = sub.add_parser("lineage", help="checkpoint lineage").add_subparsers(dest="sub", required=True)
    from ogi_ray.lineage import cli as lineage_cli

    # Segment replay re-runs training steps, so it lives in train; the CLI composes them.
    lineage_cli.register(lin, replay="ogi_ray.train.replay:replay_segment", evals="ogi_ray.evals.attest:recheck")

    from ogi_ray.parallel import cli as parallel_cli
    from ogi_ray.rates import cli as rates_cli
    from ogi_ray.scaling import cli as scaling_cli

    scaling_cli.register(sub)
    rates_cli.register(sub)
    parallel_cli.register(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    from ogi_ray.config import ConfigError
    from ogi_ray.corpus.manifest import CorpusError
    from ogi_ray.lineage.export import ExportError
    from ogi_ray.lineage.record import RecordError
    from ogi_ray.train.placement import TierUnavailableError

    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ConfigError, CorpusError, RecordError, TierUnavailableError, FileNotFoundError, FileExistsError,
            ExportError) as e:
        print(f"ogi: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

"""``ogi parallel``: discovery and the 3D-parallel planner on the command line (parsing and
printing only; the work is in topology, discover, planner).

    ogi parallel plan (--topology FILE|NAME | --discover [--tier NAME])
                      (--model NAME | --params N --layers L --hidden H --heads A --seq S
                       --global-batch B) [--vocab V] [--ffn F] [--gated] [--max-idle F]
                      [--precision bf16|fp32] [--memory-gib G] [--fix FIELD=VALUE ...]
                      [--json] [--top K]
    ogi parallel discover [--tier NAME] [--no-probe] [--allreduce] [--write FILE.yaml] [--json]
    ogi parallel topologies

The top-level ``ogi`` parser calls :func:`register`, then ``args.func(args)``, which returns
the exit code: 0 on success, 2 on bad input or when no layout fits.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from dataclasses import asdict
from typing import Any

import yaml

from ogi_ray.config import ConfigError, from_dict, to_dict
from ogi_ray.parallel.plan import PLAN_FIELDS, ParallelConfig
from ogi_ray.parallel.planner import REFERENCE_MODELS, format_table, model_spec, plan
from ogi_ray.parallel.topology import Topology, bundled_topologies, dump_topology, load_topology

EXPLICIT = ("params", "layers", "hidden", "heads", "seq", "global_batch")


def _positive(kind: type) -> Any:
    def parse(text: str) -> int | float:
        try:
            x = kind(float(text)) if kind is int and "e" in text.lower() else kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a{'n integer' if kind is int else ' number'}: {text!r}") from None
        if not (math.isfinite(x) and x > 0):
            raise argparse.ArgumentTypeError(f"must be > 0, got {text!r}")
        return x

    return parse


def _init_ray(num_cpus: int | None) -> None:
    import ray

    if ray.is_initialized():
        return
    # Inside `ray job submit` RAY_ADDRESS names the cluster; otherwise a fresh local one.
    if os.environ.get("RAY_ADDRESS"):
        ray.init(log_to_driver=False)
    else:
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)


def _discovered(args: argparse.Namespace) -> Topology:
    from ogi_ray.parallel.discover import discover, to_topology, with_probed_links

    _init_ray(getattr(args, "num_cpus", None))
    reports = discover(args.tier, tier_key=args.tier_key, probe=not args.no_probe)
    topo = to_topology(reports, name=f"discovered-{args.tier}" if args.tier else "discovered")
    if getattr(args, "allreduce", False):
        topo = with_probed_links(topo, reports)
    return topo


def _model(args: argparse.Namespace) -> Any:
    if args.model:
        given = [k for k in EXPLICIT if getattr(args, k) is not None and k not in ("seq", "global_batch")]
        if given:
            raise ConfigError("<arguments>", f"--{given[0].replace('_', '-')}",
                              "give either --model or the explicit shape, not both")
        return args.model
    missing = [f"--{k.replace('_', '-')}" for k in EXPLICIT if getattr(args, k) is None]
    if missing:
        raise ConfigError("<arguments>", missing[0],
                          f"required without --model (missing: {' '.join(missing)})")
    return {"params": args.params, "layers": args.layers, "hidden": args.hidden,
            "heads": args.heads, "seq_len": args.seq, "global_batch": args.global_batch,
            "vocab": args.vocab or 0, "ffn_hidden": args.ffn or 0, "gated_mlp": args.gated}


def _fixed(items: list[str]) -> dict[str, Any]:
    """``--fix tp=8 --fix activation_checkpoint=full`` → the fields, checked as the job
    config's ``parallel`` section would check them."""
    data = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or key not in PLAN_FIELDS:
            raise ConfigError("<arguments>", f"--fix {item}", f"expected FIELD=VALUE with FIELD in {list(PLAN_FIELDS)}")
        data[key] = yaml.safe_load(value)
    return from_dict(ParallelConfig, data, file="<arguments>", prefix="--fix").fixed()


def cmd_plan(args: argparse.Namespace) -> int:
    try:
        topo = _discovered(args) if args.discover else load_topology(args.topology)
        spec = model_spec(_model(args), global_batch=args.global_batch, seq_len=args.seq,
                          world_size=topo.world_size)
        memory = args.memory_gib * 2**30 if args.memory_gib else None
        result = plan(spec, topo, top_k=args.top, max_idle=args.max_idle, precision=args.precision,
                      fixed=_fixed(args.fix), memory_bytes=memory)
    except (ConfigError, RuntimeError) as e:
        print(f"ogi parallel plan: error: {e}", file=sys.stderr)
        return 2
    if args.json:
        doc = result.best.to_dict()
        doc.update(model=asdict(result.model), topology=to_dict(result.topology),
                   alternatives=[p.to_dict() for p in result.alternatives],
                   candidates=result.candidates, feasible=result.feasible,
                   planning_s=result.seconds)
        print(json.dumps(doc, indent=2))
    else:
        print(format_table(result))
    return 0


def cmd_discover(args: argparse.Namespace) -> int:
    try:
        topo = _discovered(args)
    except (ConfigError, RuntimeError) as e:
        print(f"ogi parallel discover: error: {e}", file=sys.stderr)
        return 2
    text = json.dumps(to_dict(topo), indent=2) if args.json else dump_topology(topo)
    if args.write:
        from ogi_ray.parallel.topology import save_topology

        save_topology(topo, args.write)
    print(text, end="" if text.endswith("\n") else "\n")
    return 0


def cmd_topologies(args: argparse.Namespace) -> int:
    for name in bundled_topologies():
        t = load_topology(name)
        print(f"{name:24s} {t.nodes:>5} x {t.gpus_per_node} {t.gpu}  "
              f"({t.world_size} devices, {t.peak_tflops:g} TFLOP/s each)")
    return 0


def _discovery_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tier", default=None, metavar="NAME",
                   help="only nodes labelled <tier-key>=NAME (default: every alive node)")
    p.add_argument("--tier-key", default="ogi.io/tier", help="tier label key (default ogi.io/tier)")
    p.add_argument("--no-probe", action="store_true", help="skip the matmul/copy probes")
    p.add_argument("--allreduce", action="store_true",
                   help="measure a gloo all-reduce and use it for the link it crosses")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``parallel`` (``plan``, ``discover``, ``topologies``) to the ``ogi`` subparsers."""
    par = subparsers.add_parser("parallel", help="topology discovery and the (dp, tp, pp) planner")
    sub = par.add_subparsers(dest="parallel_command", required=True)

    p = sub.add_parser(
        "plan", help="choose a parallel plan (dp, tp, pp, micro-batches, AC, SP, reshard) for a model",
        description="Score every parallel plan the runtime implements (dp, tp, pp, "
        "micro-batches, activation checkpointing, sequence parallelism, FSDP2 reshard mode) "
        "with an analytic cost model (compute roofline, TP collectives, PP bubble and sends, "
        "FSDP all-gathers/reduce-scatters) and a memory model, and print the fastest that "
        "fits memory, with runners-up.",
    )
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--topology", metavar="FILE|NAME",
                       help=f"topology YAML, or a bundled one: {', '.join(bundled_topologies())}")
    where.add_argument("--discover", action="store_true", help="discover the Ray cluster")
    _discovery_args(p)
    p.add_argument("--model", metavar="NAME",
                   help=f"ogi preset (tiny, small, base) or {', '.join(REFERENCE_MODELS)}")
    p.add_argument("--params", type=_positive(float), metavar="N", help="parameters, e.g. 175e9")
    p.add_argument("--layers", type=_positive(int), metavar="L", help="transformer blocks (with --params)")
    p.add_argument("--hidden", type=_positive(int), metavar="H", help="model width (with --params)")
    p.add_argument("--heads", type=_positive(int), metavar="A", help="attention heads (with --params)")
    p.add_argument("--seq", type=_positive(int), metavar="S", help="sequence length (tokens)")
    p.add_argument("--global-batch", type=_positive(int), metavar="B",
                   help="sequences per optimizer step")
    p.add_argument("--vocab", type=_positive(int), metavar="V", help="vocabulary (logits term)")
    p.add_argument("--ffn", type=_positive(int), metavar="F", help="MLP width (default 4·H)")
    p.add_argument("--gated", action="store_true", help="SwiGLU MLP (three matrices)")
    p.add_argument("--max-idle", type=float, default=0.0, metavar="F",
                   help="allow layouts that leave up to this fraction of devices idle (default 0)")
    p.add_argument("--precision", choices=("bf16", "fp32"), default="bf16",
                   help="bf16: autocast over fp32 parameters (default); fp32: no autocast")
    p.add_argument("--memory-gib", type=_positive(float), metavar="G",
                   help="per-device memory budget (default: 90%% of the topology's)")
    p.add_argument("--fix", action="append", default=[], metavar="FIELD=VALUE",
                   help=f"fix a plan field ({', '.join(PLAN_FIELDS)}); repeatable")
    p.add_argument("--top", type=_positive(int), default=5, metavar="K", help="alternatives shown")
    p.add_argument("--json", action="store_true", help="print the plan as JSON")
    p.set_defaults(func=cmd_plan)

    d = sub.add_parser("discover", help="report the cluster's topology (YAML) from Ray tasks")
    _discovery_args(d)
    d.add_argument("--write", metavar="FILE.yaml", help="also write the topology YAML here")
    d.add_argument("--json", action="store_true", help="print JSON instead of YAML")
    d.set_defaults(func=cmd_discover)

    t = sub.add_parser("topologies", help="list the bundled example topologies")
    t.set_defaults(func=cmd_topologies)


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry (``python -m ogi_ray.parallel.cli plan ...``)."""
    parser = argparse.ArgumentParser(prog="ogi")
    parser.add_argument("--num-cpus", type=int, default=None)
    register(parser.add_subparsers(dest="command", required=True))
    rest = list(sys.argv[1:] if argv is None else argv)
    head = []  # global options come before the command: --num-cpus N plan ...
    while rest and rest[0].startswith("--num-cpus"):
        head.append(rest.pop(0))
        if "=" not in head[-1] and rest:
            head.append(rest.pop(0))
    args = parser.parse_args([*head, "parallel", *rest])
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())

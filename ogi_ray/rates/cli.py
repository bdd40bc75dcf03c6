"""``ogi rates``: exchange rates measured from proxy runs (argument parsing and printing only).

    ogi rates measure CONFIG [--out DIR] [--write RATES.json] [--json]
    ogi rates propose RATES.json [--budget T_EFF] [--out MIXTURE.yaml] [--json]
    ogi rates show RATES.json

The top-level ``ogi`` parser calls :func:`register` and then ``args.func(args)``, which
returns the exit code: 0 on success, 2 on bad input (the message names file and field).
``measure`` starts a local Ray cluster (``ogi --num-cpus N`` sizes it) or joins the one
``RAY_ADDRESS`` names, as every other ``ogi`` command does.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from ogi_ray.config import ConfigError


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``rates`` (measure, propose, show) to the ``ogi`` subparsers."""
    p = subparsers.add_parser(
        "rates", help="exchange rates measured from a swarm of proxy runs (Ray Tune)",
        description="Measure per-modality exchange rates from proxy trainings on Ray Tune, "
        "and propose source shares from the same swarm (docs/rates.md).",
    )  # fmt: skip
    sub = p.add_subparsers(dest="rates_command", required=True, metavar="{measure,propose,show}")
    m = sub.add_parser("measure", help="run the proxy swarm, fit the rates, write the rates file")
    m.add_argument("config", metavar="CONFIG", help="swarm config YAML (jobs/configs/rates.yaml)")
    m.add_argument("--out", default=None, help="swarm folder (default runs/rates/<name>); reusing it resumes")
    m.add_argument("--write", default=None, metavar="RATES.json", help="rates file (default OUT/rates.json)")
    m.add_argument("--json", action="store_true", help="print the rates file instead of the table")
    m.set_defaults(func=run_measure)
    pr = sub.add_parser("propose", help="source shares that minimise the predicted metric at a budget")
    pr.add_argument("rates", metavar="RATES.json", help="a rates file written by ogi rates measure")
    pr.add_argument("--budget", type=float, default=None, metavar="T_EFF",
                    help="effective tokens (measured rates) to plan for; default the config's, else the base proxy's")
    pr.add_argument("--out", default=None, metavar="MIXTURE.yaml", help="write the proposed mixture here")
    pr.add_argument("--json", action="store_true", help="print the proposal as JSON")
    pr.set_defaults(func=run_propose)
    sh = sub.add_parser("show", help="verify a rates file and print its rates")
    sh.add_argument("rates", metavar="RATES.json", help="the rates file to check and print")
    sh.set_defaults(func=run_show)


def _fail(err: Exception) -> int:
    print(f"ogi rates: error: {err}", file=sys.stderr)
    return 2


def run_measure(args: argparse.Namespace) -> int:
    from ogi_ray.cli import _init_ray
    from ogi_ray.corpus.rates_file import write_rates_file
    from ogi_ray.rates.config import load_swarm
    from ogi_ray.rates.measure import fit_swarm, rates_table
    from ogi_ray.rates.swarm import run_swarm

    t0 = time.perf_counter()
    try:
        cfg = load_swarm(args.config)
        out = Path(args.out or f"runs/rates/{cfg.name}")
        _init_ray(getattr(args, "num_cpus", None))
        swarm = run_swarm(cfg, out)
        body = fit_swarm(cfg, swarm)
        body["timing"] = {**swarm["timing"], "fit_s": time.perf_counter() - t0 - sum(swarm["timing"].values())}
        path = Path(args.write or out / "rates.json")
        doc = write_rates_file(path, body)
    except ConfigError as e:
        return _fail(e)
    if args.json:
        print(json.dumps(doc, indent=2))
    else:
        print(rates_table(doc))
        print(f"wrote {path} (sha256 {doc['sha256']}); wall {time.perf_counter() - t0:.0f} s")
    return 0


def run_propose(args: argparse.Namespace) -> int:
    from ogi_ray.corpus.rates_file import load_rates_file
    from ogi_ray.rates.propose import proposal_table, propose, write_proposal

    try:
        rf = load_rates_file(args.rates)
        prop = propose(rf, budget=args.budget)
        if args.out:
            write_proposal(rf, prop, args.out)
    except ConfigError as e:
        return _fail(e)
    if args.json:
        print(json.dumps(prop, indent=2))
    else:
        print(proposal_table(prop))
        if args.out:
            print(f"wrote {args.out}")
    return 0


def run_show(args: argparse.Namespace) -> int:
    from ogi_ray.corpus.rates_file import load_rates_file
    from ogi_ray.rates.measure import rates_table

    try:
        rf = load_rates_file(args.rates)
    except ConfigError as e:
        return _fail(e)
    print(rates_table(rf.doc))
    print(f"{rf.path}: sha256 {rf.sha256} (verified)")
    return 0

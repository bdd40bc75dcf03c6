"""``ogi plan``: the scaling planner's command line (argument parsing and printing only).

    ogi plan --compute C [--constants hoffmann|epoch|FILE.yaml] [--inference-tokens T]
             [--mixture FILE.json|FILE.yaml [--rates RATES.json]] [--critical-batch TOKENS] [--json]
             [--write PLAN.yaml]
    ogi plan fit RUNS.csv [--json] [--plot PNG] [--bootstrap K] [--starts K|all] [--seed S]
             [--write-constants FILE.yaml]

The top-level ``ogi`` parser calls :func:`register` and then ``args.func(args)``, which
returns the exit code: 0 on success, 2 on bad input (message names the file and field).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

import yaml

from ogi_ray.config import ConfigError
from ogi_ray.humanize import human
from ogi_ray.scaling.fit import bootstrap_law, fit_law, read_runs_csv
from ogi_ray.scaling.law import PRESETS, load_law
from ogi_ray.scaling.plan import make_plan, plan_document
from ogi_ray.scaling.report import fit_table, plan_table, plot_fit
from ogi_ray.scaling.tokens import load_mixture

DEFAULT_CONSTANTS = "epoch"


def _number(*, positive: bool) -> Any:
    def parse(text: str) -> float:
        try:
            x = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if not math.isfinite(x) or x < 0 or (positive and x == 0):
            raise argparse.ArgumentTypeError(
                f"must be a finite number {'> 0' if positive else '>= 0'}, got {text!r}"
            )
        return x

    return parse


def _starts(text: str) -> int | None:
    if text == "all":
        return None
    try:
        k = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a count or 'all', got {text!r}") from None
    if k < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {text!r}")
    return k


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``plan`` (and its ``fit`` sub-form) to the ``ogi`` subparsers."""
    p = subparsers.add_parser(
        "plan",
        help="compute-optimal model size, tokens, batch (Chinchilla law)",
        description="Size a pretraining run from a FLOP budget with L = E + A/N^alpha + B/D^beta "
        "and C = 6ND; 'ogi plan fit RUNS.csv' fits the constants to your own runs.",
    )
    p.add_argument(
        "--compute",
        type=_number(positive=True),
        metavar="C",
        help="training budget in FLOPs, e.g. 5.76e23",
    )
    p.add_argument(
        "--constants",
        default=DEFAULT_CONSTANTS,
        metavar="NAME|FILE",
        help=f"preset ({', '.join(PRESETS)}; default {DEFAULT_CONSTANTS}: Hoffmann's "
        "rounded constants are biased per Besiroglu et al. 2024) or a YAML file with "
        "E, A, B, alpha, beta",
    )
    p.add_argument(
        "--inference-tokens",
        type=_number(positive=False),
        default=0.0,
        metavar="T",
        help="lifetime inference tokens; sizes the model for least training + "
        "inference FLOPs at the compute-optimal loss (Sardana et al. 2023)",
    )
    p.add_argument(
        "--mixture",
        metavar="FILE",
        help="corpus manifest (.json) or mixture (.yaml/.yml) to split D into raw "
        "tokens per modality and source",
    )
    p.add_argument(
        "--rates",
        metavar="RATES.json",
        help="measured exchange rates (a file from 'ogi rates measure') to use instead of the "
        "mixture's own",
    )
    p.add_argument(
        "--critical-batch",
        type=_number(positive=True),
        metavar="TOKENS",
        help="measured critical batch (gradient noise scale, tokens) to cap the batch",
    )
    p.add_argument("--json", action="store_true", help="print the plan as JSON")
    p.add_argument("--write", metavar="PLAN.yaml", help="write the plan as YAML (atomically)")
    p.set_defaults(func=run_plan)

    sub = p.add_subparsers(dest="plan_command", metavar="{fit}")
    f = sub.add_parser(
        "fit",
        help="fit E, A, B, alpha, beta to runs (Hoffmann Approach 3)",
        description="Fit the law to RUNS.csv (columns N, D, loss; others "
        "ignored): Huber(1e-3) on log loss, L-BFGS from Hoffmann's grid.",
    )
    f.add_argument("runs", metavar="RUNS.csv", help="CSV of finished runs: params, tokens, loss (one row each)")
    f.add_argument("--json", action="store_true", help="print the fit as JSON")
    f.add_argument("--plot", metavar="PNG", help="write a plot of data, fit and frontier")
    f.add_argument(
        "--bootstrap",
        type=int,
        default=100,
        metavar="K",
        help="bootstrap resamples for 95 %% intervals (0 = none; default 100)",
    )
    f.add_argument(
        "--starts",
        type=_starts,
        default=32,
        metavar="K|all",
        help="L-BFGS starts: the K best of Hoffmann's 4,500-point grid (default 32)",
    )
    f.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    f.add_argument(
        "--write-constants",
        metavar="FILE.yaml",
        help="write the fitted constants for 'ogi plan --constants FILE.yaml'",
    )
    f.set_defaults(func=run_fit)


def _fail(err: Exception) -> int:
    print(f"ogi plan: error: {err}", file=sys.stderr)
    return 2


def _write_yaml_atomic(path: str | Path, data: Any) -> None:
    """Readers see the old file or the new, never half (``storage.write_file``)."""
    from ogi_ray.storage import write_file

    write_file(path, yaml.safe_dump(data, sort_keys=False).encode("utf-8"))


def run_plan(args: argparse.Namespace) -> int:
    if args.compute is None:
        return _fail(ValueError("--compute is required (or use 'ogi plan fit RUNS.csv')"))
    try:
        law = load_law(args.constants)
        if args.rates and not args.mixture:
            raise ConfigError("<arguments>", "--rates", "needs --mixture (the rates split D over its modalities)")
        mixture = load_mixture(args.mixture, rates_file=args.rates) if args.mixture else None
        plan = make_plan(
            law,
            args.compute,
            inference_tokens=args.inference_tokens,
            mixture=mixture,
            critical_batch=args.critical_batch,
        )
        if args.write:
            _write_yaml_atomic(args.write, plan_document(plan))
    except (ConfigError, OSError) as e:
        return _fail(e)
    for w in plan_warnings(plan):
        print(f"ogi plan: warning: {w}", file=sys.stderr)
    if args.json:
        print(json.dumps(plan, indent=2))
    else:
        print(plan_table(plan))
        if args.write:
            print(f"wrote {args.write}")
    return 0


# The smallest models the shipped constants were fitted on: Hoffmann et al. (2022) and
# Epoch AI's replication used models from 44 M to 16 B parameters.
FITTED_MIN_PARAMS = 44e6


def plan_warnings(plan: dict[str, Any]) -> list[str]:
    """What makes a plan an extrapolation: a budget whose optimal model is far smaller
    than any model the law's constants were fitted on."""
    n = float(plan["n_params"])
    if n < FITTED_MIN_PARAMS / 10:
        # C = 6·N·D with D = (tokens per parameter)·N at this law's optimum.
        c_fit = 6 * FITTED_MIN_PARAMS * float(plan["tokens_per_param"]) * FITTED_MIN_PARAMS
        return [f"--compute {plan['compute']:.3g} FLOPs gives a compute-optimal model of {human(n)} parameters, "
                f"far below the {human(FITTED_MIN_PARAMS)} smallest model the constants were fitted on: the "
                f"loss and sizes are an extrapolation, not a plan (a {human(FITTED_MIN_PARAMS)} model needs "
                f"about {c_fit:.1g} FLOPs)"]
    return []


def run_fit(args: argparse.Namespace) -> int:
    try:
        if args.bootstrap < 0 or args.bootstrap == 1:
            raise ConfigError(
                "<arguments>",
                "--bootstrap",
                f"must be 0 (off) or at least 2 resamples, got {args.bootstrap}",
            )
        data = read_runs_csv(args.runs)
        fit = fit_law(data, n_starts=args.starts, name=f"fit:{Path(args.runs).name}")
        if args.bootstrap:
            fit = bootstrap_law(data, fit, samples=args.bootstrap, seed=args.seed)
        if args.plot:
            plot_fit(data, fit, args.plot)
        if args.write_constants:
            law = fit.law
            _write_yaml_atomic(
                args.write_constants,
                {
                    "name": law.name,
                    "E": law.E,
                    "A": law.A,
                    "B": law.B,
                    "alpha": law.alpha,
                    "beta": law.beta,
                },
            )
    except (ConfigError, OSError) as e:
        return _fail(e)
    if args.json:
        print(json.dumps({"source": str(args.runs), **fit.as_dict()}, indent=2))
    else:
        print(fit_table(fit))
        for what, where in (("plot", args.plot), ("constants", args.write_constants)):
            if where:
                print(f"wrote {what} {where}")
    return 0

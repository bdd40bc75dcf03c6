"""The ``ogi lineage`` subcommands; ``ogi_ray.cli`` calls ``register`` on its subparsers.

    ogi lineage verify RUN [--pubkey PUB.pem] [--replay N] [--evals K] [--corpus DIR] [--no-corpus]
    ogi lineage show RUN
    ogi lineage prove RUN STEP TENSOR      (JSON proof on stdout; exit 0 when it checks)
    ogi lineage sign RUN --key KEY.pem
    ogi lineage keygen KEY.pem PUB.pem

Handlers return the exit code: 0 ok, 1 verification failed, 2 bad input. Segment replay
re-runs training and ``--evals`` the eval suite, which this package must not import:
``register(..., replay=..., evals=...)`` take callables or "module:function" paths
resolved only when the option is used.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from collections.abc import Callable
from typing import Any

from ogi_ray.lineage.verify import ReplayFn


def _resolve(replay: ReplayFn | str | None) -> ReplayFn | None:
    if replay is None or callable(replay):
        return replay
    module, _, fn = replay.partition(":")
    return getattr(importlib.import_module(module), fn)


def _cmd_verify(args: argparse.Namespace) -> int:
    from ogi_ray.lineage.verify import run_store, verify_run

    notes: list[str] = []
    replay_fn = _resolve(args.replay_fn) if args.replay else None
    eval_fn = _resolve(args.eval_fn) if args.evals else None
    problems = verify_run(args.run, args.replay, replay_fn, pubkey=args.pubkey, corpus=args.corpus,
                          check_corpus=not args.no_corpus, notes=notes, replay_seed=args.replay_seed,
                          evals=args.evals, eval_fn=eval_fn, evals_seed=args.evals_seed)  # fmt: skip
    where = run_store(args.run).uri
    for n in notes:
        print(f"  note: {n}", file=sys.stderr)
    if problems:
        print(f"lineage verify FAILED for {where}:", file=sys.stderr)
        for p in problems:
            print(f"  {p}", file=sys.stderr)
        return 1
    print(f"lineage verify ok: {where}")
    return 0


def _cmd_show(args: argparse.Namespace) -> int:
    from ogi_ray.lineage.record import read_head, read_record
    from ogi_ray.lineage.verify import run_store

    ldir = run_store(args.run).sub("lineage")
    h = read_head(ldir)
    while h:
        r = read_record(ldir, h)
        evals = " ".join(f"{k}={v}" for k, v in sorted(r["eval"].items()))
        print(f"step {r['step']:>6}  {h[:16]}  weights {r['weights_root'][:16]}  "
              f"files {len(r.get('files', {}))}  {evals}")  # fmt: skip
        h = r["parent"]
    return 0


def _cmd_prove(args: argparse.Namespace) -> int:
    from ogi_ray.lineage.prove import ProofError, prove, tensor_names

    try:
        if args.tensor is None:
            names = tensor_names(args.run, args.step)
            print(f"step {args.step} has {len(names)} tensors; name one of them:\n  " + "\n  ".join(names))
            return 2
        proof = prove(args.run, args.step, args.tensor)
    except ProofError as e:
        print(f"ogi: error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(proof, indent=1))
    return 0 if proof["ok"] else 1


def _cmd_sign(args: argparse.Namespace) -> int:
    from ogi_ray.lineage.sign import sign_run
    from ogi_ray.lineage.verify import run_store

    signed = sign_run(run_store(args.run).sub("lineage"), args.key)
    print(f"signed {len(signed)} record(s)" + "".join(f"\n  {h}" for h in signed))
    return 0


def _cmd_keygen(args: argparse.Namespace) -> int:
    from ogi_ray.lineage.sign import generate_keypair

    generate_keypair(args.private, args.public)
    print(f"wrote {args.private} (keep it secret) and {args.public}")
    return 0


def register(lineage_subparsers: Any, replay: Callable[..., list[str]] | str | None = None,
             evals: Callable[..., list[str]] | str | None = None) -> None:  # fmt: skip
    """Add verify/show/prove/sign/keygen to the ``ogi lineage`` subparsers object."""
    run_help = "run folder, a folder holding one run (ogi train/demo --out), or the pyarrow URI of a run folder"
    v = lineage_subparsers.add_parser("verify", help="re-derive every hash of a run")
    v.add_argument("run", help=run_help)
    v.add_argument("--pubkey", default=None, help="ed25519 public key (PEM): every record must be signed")
    v.add_argument("--replay", type=int, default=0, metavar="N",
                   help="replay N segments: the last, then the largest updates and random draws")  # fmt: skip
    v.add_argument("--replay-seed", type=int, default=None, metavar="S",
                   help="seed of the random draws (default: a fresh one, printed)")  # fmt: skip
    v.add_argument("--evals", type=int, default=0, metavar="K",
                   help="re-run K recorded eval vectors from the checkpoint files (the last, then random "
                        "draws) and check every score string exactly (CPU)")  # fmt: skip
    v.add_argument("--evals-seed", type=int, default=None, metavar="S",
                   help="seed of the eval draws (default: a fresh one, printed)")  # fmt: skip
    v.add_argument("--corpus", default=None,
                   help="corpus folder (default: the recorded config's, found relative to the run)")  # fmt: skip
    v.add_argument("--no-corpus", action="store_true", help="do not re-verify the corpus shards")
    v.set_defaults(func=_cmd_verify, replay_fn=replay, eval_fn=evals)
    s = lineage_subparsers.add_parser("show", help="list the chain, newest first")
    s.add_argument("run", help=run_help)
    s.set_defaults(func=_cmd_show)
    p = lineage_subparsers.add_parser("prove", help="Merkle proof of one tensor against a record")
    p.add_argument("run", help=run_help)
    p.add_argument("step", type=int, help="the record's step")
    p.add_argument("tensor", nargs="?", default=None, help="tensor name (omit it to list the names)")
    p.set_defaults(func=_cmd_prove)
    g = lineage_subparsers.add_parser("sign", help="ed25519-sign every unsigned record of the chain")
    g.add_argument("run", help=run_help)
    g.add_argument("--key", required=True, help="ed25519 private key (PEM, PKCS#8)")
    g.set_defaults(func=_cmd_sign)
    k = lineage_subparsers.add_parser("keygen", help="write a new ed25519 key pair (PEM)")
    k.add_argument("private", help="where the private key goes (keep it secret)")
    k.add_argument("public", help="where the public key goes (for verify --pubkey)")
    k.set_defaults(func=_cmd_keygen)

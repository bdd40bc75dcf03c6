"""A corpus build (Ray Data) as a Ray job.

    ray job submit --working-dir . --runtime-env jobs/runtime_env.yaml -- \\
        python jobs/build_corpus.py --mixture datasets/<x>.yaml --out /shared/corpora/<x>

The mixture and policy files are read from the uploaded working dir; ``--out`` must be an
absolute path every node can reach.
"""

from __future__ import annotations

import argparse
import sys

from _common import init_ray, output_path, print_summary


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="jobs/build_corpus.py", description=__doc__.splitlines()[0])
    p.add_argument("--mixture", required=True, help="mixture YAML, e.g. datasets/demo.yaml")
    p.add_argument("--out", required=True, help="absolute output folder for shards + manifest")
    p.add_argument("--policy", default=None, help="license policy YAML")
    p.add_argument("--seed", type=int, default=None)
    args = p.parse_args(argv)
    out = output_path(args.out, "corpus")
    from ogi_ray.corpus.build import prepare_build, run_build
    from ogi_ray.corpus.inspect import table

    plan = prepare_build(args.mixture, out, policy_path=args.policy, seed=args.seed)  # before Ray: fails fast
    init_ray()
    manifest = run_build(plan)
    print(table(out, manifest=manifest))
    print_summary({"out": out, "manifest_hash": manifest["manifest_hash"]})
    return 0


if __name__ == "__main__":
    sys.exit(main())

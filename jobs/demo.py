"""``ogi demo`` as a Ray job: build the demo corpus, train, verify lineage.

    ray job submit --working-dir . --runtime-env jobs/runtime_env.yaml -- \\
        python jobs/demo.py --out /shared/ogi-runs/demo [key=value ...]

Overrides are job-config keys, e.g. ``loop.steps=6 loop.checkpoint_every=3``. Exit status
1 when lineage verification finds problems.
"""

from __future__ import annotations

import argparse
import sys
import time

from _common import init_ray, output_path, print_summary


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="jobs/demo.py", description=__doc__.splitlines()[0])
    p.add_argument("--out", default=None, help="absolute output folder (default $OGI_STORAGE/demo-<time>)")
    p.add_argument("overrides", nargs="*", help="job config overrides key.path=value")
    args = p.parse_args(argv)
    out = output_path(args.out, f"demo-{time.strftime('%Y%m%d-%H%M%S')}")
    init_ray()
    import ogi_ray
    from ogi_ray.demo import run_demo

    summary = run_demo(out, args.overrides)
    summary["ogi_ray_from"] = ogi_ray.__file__  # the uploaded working dir, not an install
    print_summary(summary)
    return 1 if summary["verify_problems"] else 0


if __name__ == "__main__":
    sys.exit(main())

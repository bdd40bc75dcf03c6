"""Lineage verification of a run as a Ray job: ``python jobs/verify.py RUN``.

RUN is a run folder (or a demo output folder holding one run). Verification only reads
files, so it starts no Ray workers; as a submitted job it runs on the head node, which
must see RUN (a shared file system). Exit status 1 lists the problems found.
"""

from __future__ import annotations

import argparse
import sys

from _common import fail, print_summary


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="jobs/verify.py", description=__doc__.splitlines()[0])
    p.add_argument("run", help="run folder or demo output folder")
    args = p.parse_args(argv)
    from ogi_ray.lineage.verify import find_run_dir, verify_run

    try:
        run = str(find_run_dir(args.run)) if "://" not in args.run else args.run
    except FileNotFoundError as e:
        fail(str(e))
    problems = verify_run(args.run)
    for problem in problems:
        print(f"  {problem}", file=sys.stderr)
    print(f"lineage verify {'FAILED' if problems else 'ok'}: {run}")
    print_summary({"run": run, "problems": problems})
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())

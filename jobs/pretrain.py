"""A pretraining run as a Ray job.

    ray job submit --working-dir . --runtime-env jobs/runtime_env.yaml -- \\
        python jobs/pretrain.py --config jobs/configs/<name>.yaml [--out DIR] [key=value ...]

``--out`` sets ``run.storage_path``; inside a submitted job the storage path and
``data.corpus`` must be object-store URIs (s3://…) or absolute paths every node can reach.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

from _common import IN_SUBMITTED_JOB, fail, init_ray, output_path, print_summary


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="jobs/pretrain.py", description=__doc__.splitlines()[0])
    p.add_argument("--config", required=True, help="job YAML, e.g. jobs/configs/demo.yaml")
    p.add_argument("--out", default=None, help="storage folder for the run (run.storage_path)")
    p.add_argument("overrides", nargs="*", help="job config overrides key.path=value")
    args = p.parse_args(argv)

    from ogi_ray.config import ConfigError
    from ogi_ray.train.config import load_job
    from ogi_ray.train.driver import train

    try:
        job = load_job(args.config, args.overrides)
    except ConfigError as e:
        fail(str(e))
    storage = output_path(args.out or job.run.storage_path, job.run.name, "run.storage_path")
    job = replace(job, run=replace(job.run, storage_path=storage))
    corpus = job.data.corpus
    if IN_SUBMITTED_JOB and corpus and "://" not in corpus and not Path(corpus).is_absolute():
        fail(f"data.corpus {job.data.corpus!r} is relative: give the absolute corpus folder")
    init_ray()
    summary = train(job)
    print(json.dumps(summary, indent=2, default=str))
    print_summary(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())

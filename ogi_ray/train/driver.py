"""``train(job)``: the public entry of a training run on the connected Ray cluster.

    JobConfig ─► launch.plan_launch (corpora, model fit, placement, parallel plan, phases,
      storage) ─► the plan printed (stderr) ─► launch.launch ─► the run summary
"""

from __future__ import annotations

import sys
from typing import Any

from ogi_ray.train.config import JobConfig
from ogi_ray.train.launch import LaunchPlan, launch, plan_launch

__all__ = ["LaunchPlan", "train"]


def train(job: JobConfig, *, resume: bool = False, quiet: bool = False) -> dict[str, Any]:
    """Run a training job on the connected Ray cluster; returns the run summary. A run
    already in the job's run folder is continued only with ``resume``."""
    plan = plan_launch(job, resume=resume)
    if not quiet:
        print(plan.describe(), file=sys.stderr, flush=True)
    return launch(plan, progress=not quiet)

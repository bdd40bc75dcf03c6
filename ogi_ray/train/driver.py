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


def train(job: JobConfig, *, quiet: bool = False) -> dict[str, Any]:
    """Run a training job on the connected Ray cluster; returns the run summary."""
    plan = plan_launch(job)
    if not quiet:
        print(plan.describe(), file=sys.stderr, flush=True)
    return launch(plan)

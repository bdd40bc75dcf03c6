"""Helpers for tests that kill Ray actors: ``ray.kill`` returns before the actor is
gone, so a call right after it may still reach the old process."""

from __future__ import annotations

import os
import time
from typing import Any


def actor_pid(ray: Any, actor: Any) -> int:
    return ray.get(actor.__ray_call__.remote(lambda self: os.getpid()))


def kill_and_wait_restart(ray: Any, actor: Any, timeout_s: float = 120.0) -> int:
    """Kill ``actor`` (letting Ray restart it) and return the new process's pid."""
    old = actor_pid(ray, actor)
    ray.kill(actor, no_restart=False)
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        try:
            pid = actor_pid(ray, actor)
        except ray.exceptions.RayActorError:
            pid = old
        if pid != old:
            return pid
        time.sleep(0.2)
    raise TimeoutError(f"actor was not restarted within {timeout_s} s")

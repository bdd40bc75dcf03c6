"""Embodied demonstrations: Meta-World v3 scripted expert policies, rendered headless (MIT).

Data: rollouts of the expert policies that metaworld ships
(``metaworld.policies.ENV_POLICY_MAP``) in the goal-observable v3 environments, simulated
with MuJoCo and rendered offscreen with ``MUJOCO_GL=egl`` (Mesa llvmpipe on a CPU box),
shadows and reflections off (4-5x faster on llvmpipe), from the ``corner`` camera, whose
images come out upside down and are flipped with ``np.flipud``. An episode ends at
success or after ``max_steps`` steps. Environment and reset are seeded from the item's
seed, so an item always gives the same episode.

Each episode is one sample: ``video`` (T×size×size×3 uint8, the frame seen before each
action), ``proprio`` (T×4 float32: hand xyz + gripper opening, ``obs[:4]``), ``action``
(T×4 float32: hand dxyz + gripper, in [-1, 1]) and ``text``, the task as an instruction
("pick place"). Rollouts are cached as .npz under ``$OGI_CACHE_DIR/metaworld`` (default
``~/.cache/ogi_ray``), keyed by task, seed, params and library versions.

License: metaworld MIT, mujoco Apache-2.0. Needs EGL (``libegl1``, ``libegl-mesa0``,
``libgl1-mesa-dri``; on the base image); there is no fallback renderer.

Items: ``<task>:seed<k>``, e.g. ``pick-place-v3:seed0``.
params: ``tasks`` (list of v3 task names, default ``DEFAULT_TASKS``), ``seeds`` (int count,
default 2), ``max_steps`` (default 150), ``size`` (frame side in px, default 64),
``camera`` (default "corner").
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ogi_ray.corpus.sources import RawSample
from ogi_ray.corpus.sources._cache import cache_dir, cached_npz, key_digest
from ogi_ray.corpus.tokenize import SourceDataError

# MuJoCo picks its GL backend when first imported; without this it tries GLFW, which needs
# a display. setdefault keeps an explicit choice (e.g. osmesa) made by the caller.
os.environ.setdefault("MUJOCO_GL", "egl")

DEFAULT_TASKS = ["button-press-v3", "drawer-open-v3", "pick-place-v3"]


@dataclass(kw_only=True)
class Params:
    tasks: list[str] = field(default_factory=lambda: list(DEFAULT_TASKS))
    seeds: int = 2
    max_steps: int = 150
    size: int = 64
    camera: str = "corner"

    def validate(self) -> None:
        for k in ("seeds", "max_steps", "size"):
            if getattr(self, k) < 1:
                raise ValueError(f"{k}: must be >= 1")
        if not self.tasks:
            raise ValueError("tasks: at least one task")


def _settings(params: Params) -> dict:
    return {"max_steps": params.max_steps, "size": params.size, "camera": params.camera}


def items(params: Params) -> list[str]:
    return sorted(f"{t}:seed{s}" for t in params.tasks for s in range(params.seeds))


def instruction(task: str) -> str:
    """'pick-place-v3' -> 'pick place'."""
    return task.removesuffix("-v3").replace("-", " ")


def make_env(task: str, seed: int) -> object:
    """The seeded goal-observable v3 environment of ``task`` (not yet reset)."""
    import metaworld
    from metaworld.policies import ENV_POLICY_MAP

    envs = metaworld.ALL_V3_ENVIRONMENTS_GOAL_OBSERVABLE
    if task not in ENV_POLICY_MAP or f"{task}-goal-observable" not in envs:
        raise ValueError(
            f"metaworld_demos: unknown task {task!r} (known: {sorted(ENV_POLICY_MAP)})"
        )
    return envs[f"{task}-goal-observable"](seed=seed)


def make_renderer(env: object, size: int) -> object:
    """An offscreen ``mujoco.Renderer`` (EGL) without shadows and reflections."""
    import mujoco

    try:
        renderer = mujoco.Renderer(env.model, size, size)
    except Exception as e:  # no EGL/GL context: say what to install instead of a GL trace
        env.close()
        raise RuntimeError(
            f"metaworld_demos: cannot render offscreen with MUJOCO_GL={os.environ.get('MUJOCO_GL')}"
            f" ({e}); install EGL: apt-get install libegl1 libegl-mesa0 libgl1-mesa-dri"
        ) from e
    renderer.scene.flags[mujoco.mjtRndFlag.mjRND_SHADOW] = False
    renderer.scene.flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = False
    return renderer


def render(renderer: object, env: object, camera: str) -> np.ndarray:
    """The (size, size, 3) uint8 frame the agent sees now (corner cameras flipped upright)."""
    renderer.update_scene(env.data, camera=camera)
    frame = renderer.render()
    return np.flipud(frame) if camera.startswith("corner") else frame


def rollout(task: str, seed: int, max_steps: int, size: int, camera: str) -> dict[str, np.ndarray]:
    """Run the expert for one seeded episode; returns video, proprio, action, success."""
    from metaworld.policies import ENV_POLICY_MAP

    env = make_env(task, seed)
    policy = ENV_POLICY_MAP[task]()
    renderer = make_renderer(env, size)
    frames, proprio, actions, success = [], [], [], False
    try:
        obs, _ = env.reset(seed=seed)
        with warnings.catch_warnings():
            # The shipped policies warn that their gains exceed [-1, 1]; the env clips.
            warnings.simplefilter("ignore", UserWarning)
            for _ in range(max_steps):
                action = np.clip(policy.get_action(obs), -1.0, 1.0)
                frames.append(render(renderer, env, camera))
                proprio.append(obs[:4])
                actions.append(action)
                obs, _reward, terminated, truncated, info = env.step(action)
                if info.get("success", 0.0) > 0.5:
                    success = True
                    break
                if terminated or truncated:
                    break
    finally:
        renderer.close()  # without it EGL prints an error at interpreter exit
        env.close()
    return {
        "video": np.ascontiguousarray(np.stack(frames), dtype=np.uint8),
        "proprio": np.asarray(proprio, dtype=np.float32),
        "action": np.asarray(actions, dtype=np.float32),
        "success": np.asarray(success),
    }


def cache_path(task: str, seed: int, settings: dict) -> Path:
    """The cache file of one rollout, keyed by task, seed, settings and library versions."""
    import metaworld
    import mujoco

    key = {"task": task, "seed": seed, **settings, "mujoco": mujoco.__version__,
           "metaworld": getattr(metaworld, "__version__", "?")}  # fmt: skip
    return cache_dir("metaworld") / f"{task}-seed{seed}-{key_digest(key)}.npz"


def _cached_rollout(task: str, seed: int, settings: dict) -> dict[str, np.ndarray]:
    return cached_npz(cache_path(task, seed, settings), lambda: rollout(task, seed, **settings))


def read(item: str, params: Params) -> Iterator[RawSample]:
    task, _, seed_s = item.partition(":seed")
    if not seed_s.isdigit():
        raise ValueError(f"metaworld_demos: item {item!r} is not '<task>:seed<k>'")
    ep = _cached_rollout(task, int(seed_s), _settings(params))
    for key in ("proprio", "action"):
        if not np.isfinite(ep[key]).all():
            raise SourceDataError("metaworld_demos", item, key, "NaN or inf")
    yield {
        "doc_id": item,
        "text": instruction(task),
        "video": ep["video"],
        "proprio": ep["proprio"],
        "action": ep["action"],
    }

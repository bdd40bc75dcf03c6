"""Meta-World: the flow-matching policy in closed loop, and its action error on experts.

Tasks: the Meta-World tasks the corpus trained on (the ``doc_id`` of its
``metaworld_demos`` rows, ``<task>:seed<k>``), on held-out seeds (``seeds``; refused if a
trained episode used one). The expert episodes of those seeds are rolled out by the
corpus builder's own code (``metaworld_demos.rollout``, cached) with the builder's render
settings; ``data_sha256`` hashes them (task, seed, frames, states, actions), so a
verifier whose MuJoCo or renderer gives other pixels sees another data hash.

    action error: expert episode ─► corpus rows (tokenize.media_rows: the training rows'
        cut and tubelets) ─► collate ─► sample.sample_actions (Euler, seeded noise)
        ─► MSE over real steps and dims against the expert's actions
    success: one environment per (task, seed), stepped in lockstep
        each step: render the frame ─► history (frames + hand/gripper states) of the last
        max_steps steps ─► the last corpus row of that history (as in training: the
        row's video and states, the current step last) ─► action chunk ─► the action of
        the current step (the chunk's last slot), clipped to [-1, 1] ─► env.step
        ─► success = Meta-World's ``info["success"]`` before ``max_steps``

Why only the chunk's last action is executed: the embod layout gives every action slot
the states of the whole chunk (a row's actions sit beside states before and after them),
so a chunk's later actions lean on states the closed loop has not seen yet. The history
window puts the current step last, where training rows also have no later state.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ogi_ray.corpus.tokenize import media_rows
from ogi_ray.evals.common import EvalError, LoadedModel, patch_config, sha256_bytes, sources_of_kind
from ogi_ray.evals.forward import model_batch, rows
from ogi_ray.evals.sample import sample_actions

NAME = "metaworld"
VERSION = "1"
KIND = "metaworld_demos"
COLUMNS = ("video_tubelets", "proprio", "action", "proprio_dim", "action_dim")


@dataclass(kw_only=True)
class Config:
    tasks: list[str] | None = None  # None: every task the corpus trained on
    seeds: list[int] = field(default_factory=lambda: [1000, 1001])  # held-out episode seeds
    max_steps: int = 150  # episode limit (the builder's default)
    size: int = 64  # render side in px: the builder's default, which the shipped mixtures use
    camera: str = "corner"
    euler_steps: int = 10  # π0 samples with 10
    seed: int = 0
    success: bool = True  # closed-loop episodes (the slow part)
    action_error: bool = True


def trained_episodes(lm: LoadedModel) -> list[tuple[str, int]]:
    """(task, seed) of every Meta-World episode in the corpus' training shards."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from ogi_ray.corpus.manifest import shard_paths

    names = sources_of_kind(lm.manifest, KIND)
    out = set()
    for path in shard_paths(lm.corpus_dir):
        t = pq.read_table(path, columns=["source", "doc_id"])
        mine = t.filter(pc.is_in(t["source"], value_set=pa.array(names, pa.string())))
        for doc in pc.unique(mine["doc_id"]).to_pylist():
            task, _, seed = doc.partition(":seed")
            if not seed.isdigit():
                raise EvalError(f"{path}: doc_id {doc!r} of a {KIND} source is not '<task>:seed<k>'")
            out.add((task, int(seed)))
    return sorted(out)


def skip_reason(lm: LoadedModel, config: Config) -> str | None:
    if not lm.cfg.n_steps:
        return "the model has no proprio/action slots (n_steps = 0)"
    if not sources_of_kind(lm.manifest, KIND):
        return f"the corpus has no {KIND} source"
    if not lm.corpus_dir:
        return "no corpus folder to read the trained tasks from"
    return None


def episodes(lm: LoadedModel, config: Config) -> list[tuple[str, int]]:
    """The held-out (task, seed) pairs, checked against the trained episodes."""
    trained = trained_episodes(lm)
    tasks = config.tasks or sorted({t for t, _ in trained})
    clash = sorted({(t, s) for t, s in trained if t in tasks and s in config.seeds})
    if clash:
        raise EvalError(f"metaworld.seeds: {clash} were trained on; held-out seeds must differ")
    return [(t, s) for t in tasks for s in config.seeds]


def expert(task: str, seed: int, config: Config) -> dict[str, np.ndarray]:
    """The scripted expert's episode, exactly as the corpus builder renders and caches it."""
    from ogi_ray.corpus.sources.metaworld_demos import _cached_rollout

    return _cached_rollout(task, seed, {"max_steps": config.max_steps, "size": config.size, "camera": config.camera})


def data_sha256(lm: LoadedModel, config: Config) -> str:
    parts = []
    for task, seed in episodes(lm, config):
        ep = expert(task, seed, config)
        parts.append(f"{task}:seed{seed}\0".encode())
        parts += [np.ascontiguousarray(ep[k]).tobytes() for k in ("video", "proprio", "action")]
    return sha256_bytes(b"".join(parts))


def episode_rows(sample: dict[str, Any], lm: LoadedModel) -> list[dict[str, Any]]:
    """A raw episode (video, proprio, action) → its corpus rows (media columns only)."""
    out = media_rows({"doc_id": "eval", **sample}, source="eval", patch_cfg=patch_config(lm.manifest))
    return [{c: r[c] for c in COLUMNS} for r in out]


def batch_of(row_list: list[dict[str, Any]], lm: LoadedModel) -> dict[str, torch.Tensor]:
    return model_batch(rows(len(row_list), **{c: [r[c] for r in row_list] for c in COLUMNS}), lm.cfg)


def action_error(lm: LoadedModel, eps: list[tuple[str, int]], config: Config) -> dict[str, float]:
    """MSE of sampled against expert actions (real steps and dims), and of all-zero actions."""
    row_list, seeds = [], []
    for e, (task, seed) in enumerate(eps):
        ep = expert(task, seed, config)
        for j, r in enumerate(episode_rows({k: ep[k] for k in ("video", "proprio", "action")}, lm)):
            row_list.append(r)
            seeds.append((config.seed * 1_000_003 + e) * 1009 + j)
    b = batch_of(row_list, lm)
    pred = sample_actions(lm.model, b, seeds=seeds, steps=config.euler_steps)  # (B, n_steps, act_dim)
    m = (b["step_present"][..., None] & b["act_dims"][:, None, :]).double()  # real (step, dim) cells
    n = m.sum()
    return {"metaworld/action_mse": float(((pred.double() - b["act"].double()) ** 2 * m).sum() / n),
            "metaworld/action_mse_zero": float((b["act"].double() ** 2 * m).sum() / n)}  # fmt: skip


def current_row(frames: list[np.ndarray], states: list[np.ndarray], lm: LoadedModel) -> dict[str, Any]:
    """The last corpus row of the recent history: its last step is the current one."""
    k = int(lm.manifest["tokenizers"]["proprio"]["max_steps"])
    video, prop = np.stack(frames[-k:]), np.stack(states[-k:]).astype(np.float32)
    return episode_rows({"video": video, "proprio": prop, "action": np.zeros_like(prop)}, lm)[-1]


def closed_loop(lm: LoadedModel, eps: list[tuple[str, int]], config: Config) -> list[bool]:
    """Run the policy in every episode's environment; whether each one succeeded."""
    from ogi_ray.corpus.sources import metaworld_demos as mw

    envs = [mw.make_env(t, s) for t, s in eps]
    renderers = [mw.make_renderer(env, config.size) for env in envs]
    try:
        obs = [env.reset(seed=s)[0] for env, (_, s) in zip(envs, eps, strict=True)]
        frames: list[list[np.ndarray]] = [[] for _ in eps]
        states: list[list[np.ndarray]] = [[] for _ in eps]
        success, active = [False] * len(eps), list(range(len(eps)))
        for t in range(config.max_steps):
            for i in active:
                frames[i].append(mw.render(renderers[i], envs[i], config.camera))
                states[i].append(np.asarray(obs[i][:4], np.float32))
            b = batch_of([current_row(frames[i], states[i], lm) for i in active], lm)
            seeds = [(config.seed * 1_000_003 + i) * 1009 + t for i in active]
            chunk = sample_actions(lm.model, b, seeds=seeds, steps=config.euler_steps)  # (b, n_steps, act_dim)
            still = []
            for j, i in enumerate(active):
                now = int(b["step_present"][j].sum()) - 1  # the current step's slot
                a = np.clip(chunk[j, now, : envs[i].action_space.shape[0]].double().numpy(), -1.0, 1.0)
                obs[i], _r, terminated, truncated, info = envs[i].step(a)
                success[i] = info.get("success", 0.0) > 0.5
                if not (success[i] or terminated or truncated):
                    still.append(i)
            active = still
            if not active:
                break
    finally:
        for r, env in zip(renderers, envs, strict=True):
            r.close()
            env.close()
    return success


def run(lm: LoadedModel, config: Config) -> dict[str, float]:
    eps = episodes(lm, config)
    scores: dict[str, float] = {}
    if config.action_error:
        scores.update(action_error(lm, eps, config))
    if config.success:
        ok = closed_loop(lm, eps, config)
        scores["metaworld/success"] = sum(ok) / len(ok)
        scores["metaworld/expert_success"] = float(np.mean([bool(expert(t, s, config)["success"]) for t, s in eps]))
        for task in sorted({t for t, _ in eps}):
            mine = [o for o, (t, _) in zip(ok, eps, strict=True) if t == task]
            scores[f"metaworld/success/{task}"] = sum(mine) / len(mine)
    return scores

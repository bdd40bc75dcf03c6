"""Held-out loss per source: today's training-side eval, run here from the checkpoint.

Data: the first ``rows_per_source`` held-out rows of each source (train/data.read_heldout),
collated with the worker's generator (seed, step −1, rank 0), scored by
the workers' own ``PlainStep.evaluate`` (train/step.py): ``<objective>/<source>`` losses, ``perplexity/<source>`` for lm,
``recall@1/<source>`` for captioned images. Scores are prefixed ``heldout/``.
``data_sha256``: the held-out shard files (common.heldout_sha256).

The random parts of a collated batch (MAE mask, second view, flow-matching time and
noise) come from that fixed generator, so these are the figures the training workers
record (for the same layout and threads), and deterministic.
"""

from __future__ import annotations

from dataclasses import dataclass

from ogi_ray.evals.common import LoadedModel, heldout_paths, heldout_sha256

NAME = "heldout"
VERSION = "1"


@dataclass(kw_only=True)
class Config:
    rows_per_source: int = 16  # DataConfig.eval_rows_per_source's default
    seed: int = 0  # the run's loop.seed (the worker collates held-out rows with it)


def skip_reason(lm: LoadedModel, config: Config) -> str | None:
    if not lm.corpus_dir or not lm.manifest.get("heldout_shards"):
        return "the corpus has no held-out shards"
    return None


def data_sha256(lm: LoadedModel, config: Config) -> str:
    return heldout_sha256(lm)


def run(lm: LoadedModel, config: Config) -> dict[str, float]:
    from ogi_ray.parallel.device import DeviceConfig, resolve
    from ogi_ray.train.data import collate, read_heldout, seeded_generator
    from ogi_ray.train.step import PlainStep

    rows = read_heldout(heldout_paths(lm), config.rows_per_source)
    batches = {src: collate(r, lm.cfg, seeded_generator(config.seed, -1, 0)) for src, r in rows.items()}
    placement = resolve(DeviceConfig(device="cpu", precision="fp32"))
    scores = PlainStep(lm.model, lm.cfg, placement, grad_clip=0.0).evaluate(batches, lm.world_target)
    lm.model.eval()  # evaluate() leaves the model in train mode
    return {f"heldout/{k}": v for k, v in scores.items()}

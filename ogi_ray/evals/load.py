"""Load one checkpoint of a run (a local folder or any pyarrow URI) into a ``LoadedModel``
for evals and sampling, on CPU, whatever layout wrote it.

    RUN/step_NNNNNN/lineage.json ─► record: config_hash, checkpoint folder
    RUN/lineage/configs/<config_hash>.json ─► the job (model section = the fitted layout)
    RUN/step_NNNNNN/model/ (per-rank DCP safetensors shards) ─► checkpoint.load_weights
      into a plain model built on CPU (DCP reassembles any dp/tp/pp layout) ─► eval mode
    RUN/step_NNNNNN/world_target.safetensors ─► the world-model target encoder, when present
    the recorded corpus (lineage/locations.py: relative to the run when stored inside it)
      ─► manifest.json, the tokenizer file

The whole model is assembled in this one process: evals and ``ogi sample`` need a model
that fits one host's memory (a sharded eval would keep the training layout instead).
``load_run(run, step)`` is the ``load_fn`` that ``sample_cli.register`` and the suite
take.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from ogi_ray.evals.common import EvalError, LoadedModel
from ogi_ray.storage import Store

STEP_DIR = re.compile(r"step_(\d{6})$")


def _run(run: str | Path | Store) -> Store:
    from ogi_ray.lineage.verify import run_store

    return run if isinstance(run, Store) else run_store(run)


def checkpoint_steps(run: str | Path | Store) -> list[int]:
    """The steps of RUN's checkpoints (folders step_NNNNNN with a lineage marker), sorted."""
    store = _run(run)
    if not store.is_dir():
        raise EvalError(f"{store.uri}: not a run folder")
    return sorted(int(m.group(1)) for d in store.list_dirs() if (m := STEP_DIR.match(d))
                  and store.is_file(f"{d}/lineage.json"))  # fmt: skip


def checkpoint_dir(run: str | Path | Store, step: int | None) -> Store:
    """RUN/step_NNNNNN for ``step``, or the newest one."""
    steps = checkpoint_steps(run)
    store = _run(run)
    if not steps:
        raise EvalError(f"{store.uri}: no checkpoint (step_NNNNNN/lineage.json)")
    if step is None:
        step = steps[-1]
    if step not in steps:
        raise EvalError(f"{store.uri}: no checkpoint for step {step} (have {steps})")
    return store.sub(f"step_{step:06d}")


def load_run(run: str | Path | Store, step: int | None = None, *, corpus: str | None = None) -> LoadedModel:
    """The model of checkpoint ``step`` (None: the newest) of the run ``run``; ``corpus``
    overrides where the recorded config says its corpus is."""
    from safetensors.torch import load as st_load

    from ogi_ray.corpus.manifest import load_manifest
    from ogi_ray.corpus.text_tokenizer import from_corpus
    from ogi_ray.lineage.locations import corpus_location
    from ogi_ray.model import build
    from ogi_ray.train import checkpoint
    from ogi_ray.train.config import job_from_dict
    from ogi_ray.train.step import make_world_target

    store = _run(run)
    ckpt = checkpoint_dir(store, step)
    record = json.loads(ckpt.read_bytes("lineage.json"))["record"]
    cfg_rel = f"lineage/configs/{record['config_hash']}.json"
    if not store.is_file(cfg_rel):
        raise EvalError(f"{store.where(cfg_rel)}: missing (the run config named by {ckpt.where('lineage.json')})")
    job_dict = json.loads(store.read_bytes(cfg_rel))
    job = job_from_dict(job_dict, file=store.where(cfg_rel))
    state = checkpoint.read_train_state(ckpt)
    corpus = corpus or corpus_location(job_dict, int(state.get("phase", 0)), store)
    model = build(job.model, seed=job.loop.seed)
    try:
        checkpoint.load_weights(ckpt, model)
    except (FileNotFoundError, RuntimeError, ValueError, KeyError) as e:
        raise EvalError(f"{ckpt.where(checkpoint.WEIGHTS_DIR)}: cannot load the weights ({e})") from e
    model.eval()
    target = make_world_target(job.model, job.loop.seed, torch.device("cpu"))
    if target is not None and ckpt.is_file(checkpoint.WORLD_TARGET):
        target.load_state_dict(st_load(ckpt.read_bytes(checkpoint.WORLD_TARGET)))
    manifest = load_manifest(corpus)
    return LoadedModel(model=model, cfg=job.model, manifest=manifest, tokenizer=from_corpus(corpus),
                       corpus_dir=str(corpus), world_target=target, seed=job.loop.seed)  # fmt: skip

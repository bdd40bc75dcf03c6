"""Load a checkpoint of today's run format into a ``LoadedModel`` for evals and sampling.

    RUN/step_NNNNNN/lineage.json ─► record: config_hash, checkpoint folder
    RUN/lineage/configs/<config_hash>.json ─► the job (model section = the fitted layout)
    RUN/step_NNNNNN/model.safetensors ─► weights (fp32, full tensors) ─► model.eval() on CPU
    RUN/step_NNNNNN/world_target.pt ─► the EMA world-model target encoder, when present
    job's data.corpus (or its phase's corpus) ─► manifest.json, tokenizer.json

Kept small and apart from the benchmarks: when checkpoints become sharded safetensors
only this module changes. ``load_run(run, step)`` is the ``load_fn`` that
``sample_cli.register`` and the suite take.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from ogi_ray.evals.common import EvalError, LoadedModel

STEP_DIR = re.compile(r"step_(\d{6})$")


def checkpoint_steps(run: str | Path) -> list[int]:
    """The steps of RUN's checkpoints (folders step_NNNNNN with a lineage marker), sorted."""
    run = Path(run)
    if not run.is_dir():
        raise EvalError(f"{run}: not a run folder")
    return sorted(int(m.group(1)) for p in run.iterdir() if (m := STEP_DIR.match(p.name))
                  and (p / "lineage.json").is_file())  # fmt: skip


def checkpoint_dir(run: str | Path, step: int | None) -> Path:
    """RUN/step_NNNNNN for ``step``, or the newest one."""
    steps = checkpoint_steps(run)
    if not steps:
        raise EvalError(f"{run}: no checkpoint (step_NNNNNN/lineage.json)")
    if step is None:
        step = steps[-1]
    if step not in steps:
        raise EvalError(f"{run}: no checkpoint for step {step} (have {steps})")
    return Path(run) / f"step_{step:06d}"


def load_run(run: str, step: int | None = None) -> LoadedModel:
    """The model of checkpoint ``step`` (None: the newest) of run folder ``run``."""
    from safetensors.torch import load_file

    from ogi_ray.corpus.manifest import load_manifest
    from ogi_ray.model import build
    from ogi_ray.train.config import job_from_dict
    from ogi_ray.train.loop import make_world_target
    from ogi_ray.train.phases import corpus_of

    ckpt = checkpoint_dir(run, step)
    record = json.loads((ckpt / "lineage.json").read_text())["record"]
    cfg_path = Path(run) / "lineage" / "configs" / f"{record['config_hash']}.json"
    if not cfg_path.is_file():
        raise EvalError(f"{cfg_path}: missing (the run config named by {ckpt / 'lineage.json'})")
    job_dict = json.loads(cfg_path.read_text())
    job = job_from_dict(job_dict, file=cfg_path)
    state = json.loads((ckpt / "train_state.json").read_text())
    corpus = corpus_of(job_dict, int(state.get("phase", 0)))
    model = build(job.model)
    missing, unexpected = model.load_state_dict(load_file(str(ckpt / "model.safetensors")), strict=False)
    if missing or unexpected:
        raise EvalError(f"{ckpt / 'model.safetensors'}: tensors missing {missing[:5]} / unexpected {unexpected[:5]}")
    model.eval()
    target = make_world_target(model)
    if target is not None and (ckpt / "world_target.pt").is_file():
        target.load_state_dict(torch.load(ckpt / "world_target.pt", weights_only=True))
    manifest = load_manifest(corpus)
    tok = Path(corpus) / manifest["tokenizers"]["text"]["file"]
    return LoadedModel(model=model, cfg=job.model, manifest=manifest, tokenizer_json=tok.read_text(),
                       corpus_dir=str(corpus), world_target=target)  # fmt: skip

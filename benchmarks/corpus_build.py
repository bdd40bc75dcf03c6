"""Effective tokens per second: the Ray Data corpus build against a plain loop, in one run.

    python benchmarks/corpus_build.py [--mixture datasets/mixture.yaml] [--num-cpus N]

1. Ray Data: ``build_corpus`` of the mixture on a fresh local cluster, end to end (read,
   tokenize, BPE training, mixing plan, sort, Parquet shards, manifest). Its per-pass
   times come from the build's log.
2. Plain: one process, no Ray, the same sources the license gate admits, the same
   library functions (``BUILDERS[kind].items/read`` + ``tokenize_sample``) with the
   tokenizer the build used (``text_tokenizer.from_corpus``): read + tokenize only,
   unpacked (so the plain loop's token count is its own), nothing written.

The numerator of both rates is the same: the effective tokens of every row tokenized
(each source's ``available`` + ``heldout`` effective tokens in the manifest); the plain
loop's own sum is checked against it. Builders cache renders, TTS and rollouts
(``$OGI_CACHE_DIR``): the build runs first and pays for a cold cache; run twice for warm
numbers on both sides.
"""

from __future__ import annotations

import argparse
import logging
import math
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


class _Passes(logging.Handler):
    """Collects the build's "corpus pass N (...): S s" log lines."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def ray_build(mixture: Path, out: Path, num_cpus: int | None) -> tuple[float, dict, list[str]]:
    import ray

    from ogi_ray.corpus.build import build_corpus

    passes = _Passes()
    logger = logging.getLogger("ogi_ray.corpus.build")
    logger.setLevel(logging.INFO)
    logger.addHandler(passes)
    ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)
    try:
        t0 = time.perf_counter()
        manifest = build_corpus(mixture, out)
        seconds = time.perf_counter() - t0
    finally:
        ray.shutdown()
        logger.removeHandler(passes)
    return seconds, manifest, passes.lines


def plain(mixture: Path, tok) -> tuple[float, float, int]:
    from ogi_ray.corpus.build import DEFAULT_POLICY
    from ogi_ray.corpus.config import load_mixture
    from ogi_ray.corpus.license import gate_sources, load_policy
    from ogi_ray.corpus.sources import BUILDERS
    from ogi_ray.corpus.tokenize import tokenize_sample

    cfg = load_mixture(mixture)
    included, _ = gate_sources(cfg.sources, load_policy(DEFAULT_POLICY))
    effective, rows = [], 0
    t0 = time.perf_counter()
    for s in included:
        b = BUILDERS[s.kind]
        for item in b.items(s.params):
            for sample in b.read(item, s.params):
                for row in tokenize_sample(sample, source=s.name, tokenizer=tok, text_cfg=cfg.text_tokenizer,
                                           patch_cfg=cfg.patches, rates=cfg.exchange_rates):  # fmt: skip
                    effective.append(row["effective_tokens"])
                    rows += 1
    return time.perf_counter() - t0, math.fsum(effective), rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mixture", type=Path, default=ROOT / "datasets" / "mixture.yaml")
    p.add_argument("--num-cpus", type=int, default=None, help="Ray CPUs (default: all cores)")
    args = p.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "corpus"
        t_ray, m, passes = ray_build(args.mixture, out, args.num_cpus)
        from ogi_ray.corpus.text_tokenizer import from_corpus

        tok = from_corpus(out)
    tokenized = sum(s["available_effective_tokens"] + s["heldout_effective_tokens"] for s in m["sources"])
    rows = sum(s["unique_rows"] for s in m["sources"])
    t_plain, eff_plain, rows_plain = plain(args.mixture, tok)
    if not math.isclose(eff_plain, tokenized, rel_tol=1e-9):
        raise SystemExit(f"plain loop tokenized {eff_plain} effective tokens, the build {tokenized}")

    print(f"mixture {args.mixture} ({len(m['sources'])} sources admitted), manifest_hash {m['manifest_hash'][:16]}")
    print(f"tokenized: {tokenized:,.0f} effective tokens in {rows_plain:,} rows "
          f"({rows:,} of them mixed); mix: {m['total_effective_tokens']:,.0f} effective "
          f"tokens in {m['total_rows']:,} rows")  # fmt: skip
    r_ray, r_plain = tokenized / t_ray, eff_plain / t_plain
    print(f"Ray Data build, end to end : {t_ray:7.1f} s  {r_ray:10,.0f} effective tokens/s")
    for line in passes:
        print(f"    {line}")
    print(f"plain read + tokenize      : {t_plain:7.1f} s  {r_plain:10,.0f} effective tokens/s")
    print(f"ratio Ray / plain          : {r_ray / r_plain:7.2f}x")


if __name__ == "__main__":
    main()

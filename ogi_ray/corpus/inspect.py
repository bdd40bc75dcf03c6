"""Human-readable view of a built corpus: target vs realised shares, tokens by modality."""

from __future__ import annotations

from pathlib import Path

from ogi_ray.corpus.config import MODALITIES
from ogi_ray.corpus.manifest import load_manifest


def table(corpus_dir: str | Path) -> str:
    m = load_manifest(corpus_dir)
    mods = [x for x in MODALITIES if any(x in s["tokens_by_modality"] for s in m["sources"])]
    head = f"{'source':<14}{'license':<34}{'target':>8}{'realised':>10}{'effective':>12}{'repeat':>8}" + "".join(
        f"{x:>10}" for x in mods
    )
    lines = [f"corpus {m['name']}  manifest_hash {m['manifest_hash']}", head, "-" * len(head)]
    for s in m["sources"]:
        lines.append(
            f"{s['name']:<14}{s['license'][:33]:<34}{100 * s['target_share']:>7.2f}%"
            f"{100 * s['realized_share']:>9.2f}%{s['effective_tokens']:>12.0f}{s['repeat_factor']:>8.2f}"
            + "".join(f"{s['tokens_by_modality'].get(x, 0):>10}" for x in mods)
        )
    for e in m.get("excluded", []):
        lines.append(f"{e['name']:<14}{e['license'][:33]:<34}  EXCLUDED: {e['reason']}")
    lines.append(f"rates {m['exchange_rates']}; {m['total_rows']} rows in {len(m['shards'])} shards; "
                 f"{len(m.get('heldout_shards', []))} held-out shards; seed {m['seed']}")  # fmt: skip
    return "\n".join(lines)

"""Human-readable view of a built corpus: target vs realised shares, tokens by modality,
rows excluded by license and skipped as bad, and what was verified. Columns are as wide
as their longest value: nothing is cut."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ogi_ray.corpus.config import MODALITIES
from ogi_ray.corpus.manifest import load_manifest


def _grid(rows: list[list[str]], right: set[int]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    fmt = [(str.rjust if i in right else str.ljust) for i in range(len(widths))]
    lines = ["  ".join(f(c, w) for f, c, w in zip(fmt, r, widths, strict=True)).rstrip() for r in rows]
    return [lines[0], "-" * len(lines[0]), *lines[1:]]


def table(corpus_dir: str | Path, *, manifest: dict[str, Any] | None = None, verified: str = "") -> str:
    m = manifest or load_manifest(corpus_dir)
    mods = [x for x in MODALITIES if any(x in s["tokens_by_modality"] for s in m["sources"])]
    rows = [["source", "license", "target", "realised", "effective", "repeat", *mods]]
    for s in m["sources"]:
        lic = s["license"] or ""
        if s.get("license_field"):
            lic = (lic + " + " if lic else "") + f"per row ({s['license_field']})"
        rows.append([s["name"], lic, f"{100 * s['target_share']:.2f}%", f"{100 * s['realized_share']:.2f}%",
                     f"{s['effective_tokens']:.0f}", f"{s['repeat_factor']:.2f}",
                     *(str(s["tokens_by_modality"].get(x, 0)) for x in mods)])  # fmt: skip
    lines = [f"corpus {m['name']}  manifest_hash {m['manifest_hash']}", *_grid(rows, set(range(2, len(rows[0]))))]
    for e in m.get("excluded", []):
        lines.append(f"EXCLUDED source {e['name']} ({e['license']}): {e['reason']}")
    for s in m["sources"]:
        for key, label in (("excluded_rows", "rows excluded by license"), ("skipped_rows", "bad rows skipped")):
            for reason, n in sorted(s.get(key, {}).items()):
                lines.append(f"{s['name']}: {n} {label}: {reason}")
    lines.append(f"rates {m['exchange_rates']}; {m['total_rows']} rows in {len(m['shards'])} shards; "
                 f"{len(m.get('heldout_shards', []))} held-out shards; seed {m['seed']}")  # fmt: skip
    if verified:
        lines.append(f"verified: {verified}")
    return "\n".join(lines)

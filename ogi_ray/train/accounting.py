"""Token accounting true to what the model trains on (docs/rates.md §3).

A corpus row holds ``tokens_m`` tokens of modality m (the manifest's units: text tokens,
image patches, video tubelets, audio frames, proprio and action steps); collate keeps
``min(tokens_m, slots_m)`` of them (train/data.py). One rule, ``fed``, serves the three
places that need it:

    launch   check_shares(manifest, slots, tolerance): the consumed effective share of
             every (source, modality) over an epoch, counted exactly from the manifest's
             length histograms (``token_lengths``), against the manifest's own shares;
             beyond the tolerance the launch is refused, naming both
    trainer  Consumption: the rows each step reads, raw and fed tokens per (source,
             modality), summed over dp ranks; cumulative shares logged next to the
             manifest's targets (``share/<source>``, ``share_target/<source>``)
    rates    observe.py: what a proxy's model was fed

Shares are effective: e_{s,m} = r_m · T_{s,m} / Σ r·T, with the manifest's rates.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ogi_ray.config import ConfigError
from ogi_ray.corpus.config import MODALITIES

DEFAULT_TOLERANCE_PP = 0.5  # percentage points of effective share


def model_slots(model: Any) -> dict[str, int]:
    """Slots per row the (corpus-fitted) model config has for each modality."""
    return {"text": model.n_text, "image": model.n_img, "video": model.n_vid, "audio": model.n_aud,
            "proprio": model.n_steps, "action": model.n_steps}  # fmt: skip


def fed(tokens: int, slots: int) -> int:
    """Tokens of one modality of one row that collate keeps."""
    return min(int(tokens), int(slots))


# ── the launch check ────────────────────────────────────────────────────────────────


def target_shares(manifest: dict[str, Any]) -> dict[tuple[str, str], float]:
    """The manifest's effective share of each (source, modality)."""
    rates = manifest["exchange_rates"]
    eff = {(s["name"], m): n * rates.get(m, 0.0) for s in manifest["sources"]
           for m, n in s["tokens_by_modality"].items()}  # fmt: skip
    total = sum(eff.values()) or 1.0
    return {k: v / total for k, v in eff.items()}


def consumed_shares(manifest: dict[str, Any], slots: dict[str, int]) -> dict[tuple[str, str], float]:
    """The effective share of each (source, modality) a model with ``slots`` is fed over
    one pass of the corpus (exact: Σ_rows min(tokens, slots) from ``token_lengths``)."""
    rates = manifest["exchange_rates"]
    eff = {}
    for s in manifest["sources"]:
        hists = s.get("token_lengths")
        if hists is None:
            raise ConfigError(None, "data.corpus", f"the manifest of {manifest.get('name')!r} has no token_lengths "
                              "(built by an older version): rebuild it to check what the model is fed")  # fmt: skip
        for m in s["tokens_by_modality"]:
            n = sum(fed(int(k), slots[m]) * c for k, c in hists.get(m, {}).items())
            eff[(s["name"], m)] = n * rates.get(m, 0.0)
    total = sum(eff.values()) or 1.0
    return {k: v / total for k, v in eff.items()}


def row_limits(manifest: dict[str, Any]) -> dict[str, int]:
    """The most tokens of each modality one row of the corpus may hold."""
    t = manifest["tokenizers"]
    grid = (int(t["image"]["size"]) // int(t["image"]["patch"])) ** 2
    return {"text": int(t["text"]["max_tokens"]), "image": grid, "video": int(t["video"]["max_tubelets"]),
            "audio": int(t["audio"]["max_frames"]), "proprio": int(t["proprio"]["max_steps"]),
            "action": int(t["action"]["max_steps"])}  # fmt: skip


def share_gaps(manifest: dict[str, Any], slots: dict[str, int]) -> dict[tuple[str, str], float]:
    """Consumed minus target effective share per (source, modality), in percentage
    points; all zero without computing when no row can exceed the slots."""
    target = target_shares(manifest)
    used = {m for s in manifest["sources"] for m in s["tokens_by_modality"]}
    limits = row_limits(manifest)
    if all(slots[m] >= limits[m] for m in used):
        return dict.fromkeys(target, 0.0)
    got = consumed_shares(manifest, slots)
    return {k: 100.0 * (got[k] - target[k]) for k in target}


def check_shares(manifest: dict[str, Any], slots: dict[str, int], accept_pp: float, where: str) -> float:
    """The largest |gap| in pp; ConfigError naming the worst (source, modality) when it
    exceeds both DEFAULT_TOLERANCE_PP and the difference the job accepts (``accept_pp``)."""
    gaps = share_gaps(manifest, slots)
    if not gaps:
        return 0.0
    (src, mod), worst = max(gaps.items(), key=lambda kv: abs(kv[1]))
    if abs(worst) <= max(DEFAULT_TOLERANCE_PP, accept_pp):
        return abs(worst)
    limits = row_limits(manifest)
    cut = ", ".join(f"{m} {slots[m]} of {limits[m]}" for m in MODALITIES if slots[m] < limits[m])
    raise ConfigError(None, "data.accept_share_difference_pp", (
        f"{where}: the model would be fed {worst:+.2f} pp of effective share off the manifest's for source "
        f"{src!r}, modality {mod} (target {100 * target_shares(manifest)[(src, mod)]:.2f} %), because rows are "
        f"cut to the model's slots ({cut}). Give the model the slots (data.seq_len, data.max_video_tubelets, "
        f"data.max_audio_frames, data.max_steps), build the corpus with rows that fit them (text_tokenizer."
        f"max_tokens, patches.max_*), or accept the difference: data.accept_share_difference_pp: "
        f"{abs(worst):.2f} (recorded in the run's config)"))  # fmt: skip


# ── the trainer's count ─────────────────────────────────────────────────────────────


@dataclass
class Consumption:
    """Raw and fed tokens per (source, modality) of the rows trained on, cumulative over
    a phase; ``vector``/``add_vector`` carry one step's count through an all-reduce."""

    sources: list[str]
    rates: dict[str, float]
    target: dict[str, float]  # per source: the manifest's effective share
    raw: dict[str, dict[str, float]] = field(default_factory=dict)
    fed: dict[str, dict[str, float]] = field(default_factory=dict)

    @classmethod
    def of(cls, manifest: dict[str, Any]) -> Consumption:
        sources = sorted(s["name"] for s in manifest["sources"])
        shares = target_shares(manifest)
        target = {s: sum(v for (src, _), v in shares.items() if src == s) for s in sources}
        return cls(sources=sources, rates=dict(manifest["exchange_rates"]), target=target)

    def count(self, rows: dict[str, list[Any]], slots: dict[str, int]) -> list[float]:
        """One micro-batch of rows (column lists) → the flat [raw..., fed...] vector."""
        idx = {s: i for i, s in enumerate(self.sources)}
        n = len(self.sources) * len(MODALITIES)
        out = [0.0] * (2 * n)
        for r, src in enumerate(rows["source"]):
            base = idx[src] * len(MODALITIES)
            for j, m in enumerate(MODALITIES):
                t = int(rows[f"tokens_{m}"][r])
                out[base + j] += t
                out[n + base + j] += fed(t, slots[m])
        return out

    def add_vector(self, vec: list[float]) -> None:
        n = len(self.sources) * len(MODALITIES)
        for i, s in enumerate(self.sources):
            for j, m in enumerate(MODALITIES):
                k = i * len(MODALITIES) + j
                if vec[k] or vec[n + k]:
                    self.raw.setdefault(s, {}).setdefault(m, 0.0)
                    self.fed.setdefault(s, {}).setdefault(m, 0.0)
                    self.raw[s][m] += vec[k]
                    self.fed[s][m] += vec[n + k]

    def size(self) -> int:
        return 2 * len(self.sources) * len(MODALITIES)

    def metrics(self) -> dict[str, float]:
        """Cumulative effective shares of what was fed, per source, beside the targets;
        fed and raw tokens per modality (their ratio: what the slots cut)."""
        eff = {s: sum(v * self.rates.get(m, 0.0) for m, v in self.fed.get(s, {}).items()) for s in self.sources}
        total = sum(eff.values()) or 1.0
        out = {f"share/{s}": eff[s] / total for s in self.sources}
        out |= {f"share_target/{s}": self.target[s] for s in self.sources}
        for m in MODALITIES:
            f_m = sum(d.get(m, 0.0) for d in self.fed.values())
            r_m = sum(d.get(m, 0.0) for d in self.raw.values())
            if r_m:
                out[f"tokens_fed/{m}"], out[f"tokens_raw/{m}"] = f_m, r_m
        return out

    def tokens_by_modality(self) -> dict[str, float]:
        return {m: sum(d.get(m, 0.0) for d in self.fed.values()) for m in MODALITIES}

    def state_dict(self) -> dict[str, Any]:
        return {"raw": self.raw, "fed": self.fed}

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        state = state or {}
        self.raw = {s: dict(v) for s, v in state.get("raw", {}).items()}
        self.fed = {s: dict(v) for s, v in state.get("fed", {}).items()}

"""``ogi report RUN``: PNG plots and a Markdown summary of a run, from its metrics log.

    RUN/metrics/*.jsonl (train/metrics_log.py; a restarted run repeats some steps, the
    last occurrence wins) ─► losses.png, lambdas.png, gradnorms.png, lr.png, batch.png,
    throughput.png ─► report.md (first/last-10 % loss means, tuner balance, throughput),
    all written into the run folder (a local folder or any pyarrow URI)
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

from ogi_ray.storage import Store
from ogi_ray.train.metrics_log import by_step, read_rows

PLOTS = ("losses", "lambdas", "gradnorms", "lr", "batch", "throughput", "shares")
EVAL_PLOTS = ("heldout", "humaneval", "digits", "world", "metaworld")  # eval_<benchmark>.png
REPORT_FILES = ("report.md", *(f"{p}.png" for p in PLOTS), *(f"eval_{b}.png" for b in EVAL_PLOTS))


def load_metrics(run: Store, notes: list[str] | None = None) -> list[dict[str, Any]]:
    return by_step(read_rows(run, notes))


def check_out(out: Store, run: Store, overwrite: bool) -> None:
    """The run folder itself takes its report; another folder must be empty or hold only
    a previous report (replaced with ``overwrite``): no other file is ever replaced."""
    if out.uri == run.uri or not out.exists():
        return
    files = out.list_files(recursive=True)
    others = [f for f in files if f not in REPORT_FILES]
    if others:
        raise FileExistsError(f"{out.uri}: holds files that are not a report ({', '.join(others[:3])}): "
                              "choose an empty or new folder for --out")  # fmt: skip
    if files and not overwrite:
        raise FileExistsError(f"{out.uri}: holds a previous report: pass --overwrite to replace it")


def _series(rows: list[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
    pts = [(r["step"], r[key]) for r in rows if r.get(key) is not None]
    return [p[0] for p in pts], [float(p[1]) for p in pts]


def phase_starts(rows: list[dict[str, Any]]) -> list[tuple[int, int]]:
    """(phase index, first step) for each phase the metrics show, in order."""
    out: list[tuple[int, int]] = []
    for r in rows:
        p = int(r.get("phase", 0))
        if not out or out[-1][0] != p:
            out.append((p, int(r["step"])))
    return out


def _plot(path: tuple[Store, str], rows: list[dict[str, Any]], keys: list[str], title: str, log: bool = False) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for k in keys:
        x, y = _series(rows, k)
        if x:
            ax.plot(x, y, label=k)
    for _, start in phase_starts(rows)[1:]:  # phase boundaries
        ax.axvline(start, color="grey", linestyle="--", linewidth=0.8)
    ax.set_title(title)
    ax.set_xlabel("step")
    if log:
        ax.set_yscale("log")
    if len(keys) > 1:
        ax.legend(fontsize=8)
    _save(fig, path)


def _save(fig: Any, path: tuple[Store, str]) -> None:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, dpi=90, format="png")
    plt.close(fig)
    path[0].write_atomic(path[1], buf.getvalue())


def eval_series(run: Store) -> dict[str, dict[str, list[tuple[int, float]]]]:
    """Per benchmark, per score: (step, value) from the run's eval attestations."""
    from ogi_ray.lineage.attest import attestation_chain

    out: dict[str, dict[str, list[tuple[int, float]]]] = {}
    for _, att in attestation_chain(run.sub("lineage")):
        for name, value in att["scores"].items():
            bench = name.split("/", 1)[0]
            out.setdefault(bench, {}).setdefault(name, []).append((att["step"], float(value)))
    return out


def _plot_evals(out: Store, series: dict[str, dict[str, list[tuple[int, float]]]]) -> list[str]:
    """One plot per benchmark (its scores over steps); returns the file names."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = []
    for bench, scores in sorted(series.items()):
        fig, ax = plt.subplots(figsize=(7, 4))
        for name, points in sorted(scores.items()):
            ax.plot([s for s, _ in points], [v for _, v in points], marker="o", label=name.split("/", 1)[1])
        ax.set_title(f"eval: {bench} (attested)")
        ax.set_xlabel("step")
        ax.legend(fontsize=6, ncol=2)
        _save(fig, (out, f"eval_{bench}.png"))
        names.append(f"eval_{bench}.png")
    return names


def share_sources(rows: list[dict[str, Any]]) -> list[str]:
    return sorted({k.split("/", 1)[1] for r in rows for k in r if k.startswith("share/")})


def _plot_shares(path: tuple[Store, str], rows: list[dict[str, Any]]) -> None:
    """Cumulative effective share fed per source (solid) and the manifest's (dashed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for i, src in enumerate(share_sources(rows)):
        color = f"C{i % 10}"
        for key, style in ((f"share/{src}", "-"), (f"share_target/{src}", "--")):
            x, y = _series(rows, key)
            ax.plot(x, y, style, color=color, label=src if style == "-" else None, linewidth=1)
    ax.set_title("effective share fed (solid) vs manifest (dashed)")
    ax.set_xlabel("step")
    ax.legend(fontsize=7, ncol=2)
    _save(fig, path)


def share_table(rows: list[dict[str, Any]]) -> list[str]:
    """Markdown: per source, the share fed so far, the manifest's and the gap in pp."""
    last = rows[-1]
    out = ["| source | fed | manifest | gap (pp) |", "|---|---|---|---|"]
    for src in share_sources(rows):
        fed, target = last.get(f"share/{src}"), last.get(f"share_target/{src}")
        if fed is not None and target is not None:
            out.append(f"| {src} | {100 * fed:.2f} % | {100 * target:.2f} % | {100 * (fed - target):+.2f} |")
    return out


def balance(rows: list[dict[str, Any]], after: int = 0) -> tuple[float | None, list[float]]:
    """Fraction of steps (≥ ``after``) whose smoothed weighted grad norms have max/min ≤ 2."""
    ratios = []
    for r in rows:
        vals = [v for k, v in r.items() if k.startswith("gradnorm/") and v]
        if r["step"] >= after and len(vals) >= 2:
            ratios.append(max(vals) / min(vals))
    if not ratios:
        return None, ratios
    return sum(x <= 2.0 for x in ratios) / len(ratios), ratios


def run_tuner_warmup(run: Store, default: int = 10) -> int:
    """The tuner warm-up of the run's saved job config(s) (the largest, if several)."""
    found = []
    for name in run.list_files("lineage/configs"):
        try:
            found.append(int(json.loads(run.read_bytes(f"lineage/configs/{name}"))["tuner"]["warmup"]))
        except (ValueError, KeyError, TypeError):
            continue
    return max(found) if found else default


def write_report(run_dir: str | Path | Store, warmup: int | None = None, *, out: Store | None = None,
                 overwrite: bool = False, notes: list[str] | None = None) -> str:  # fmt: skip
    """``warmup``: steps excluded from the balance figure; None = the run's tuner.warmup.
    ``out``: where the report goes (default: the run folder). Returns where report.md
    was written. ``notes`` receives what was skipped (e.g. a cut-short last line)."""
    run = run_dir if isinstance(run_dir, Store) else Store(run_dir)
    out = out or run
    check_out(out, run, overwrite)
    warmup = run_tuner_warmup(run) if warmup is None else warmup
    rows = load_metrics(run, notes)
    if not rows:
        raise FileNotFoundError(f"{run.where('metrics')}: no metrics log (no training step was logged in this run)")
    objs = sorted({k.split("/", 1)[1] for r in rows for k in r if k.startswith("loss/")})
    _plot((out, "losses.png"), rows, [f"loss/{o}" for o in objs], "loss per objective", log=True)
    _plot((out, "lambdas.png"), rows, [f"lambda/{o}" for o in objs], "loss weights λ")
    _plot((out, "gradnorms.png"), rows, [f"gradnorm/{o}" for o in objs], "smoothed weighted grad norm at h", log=True)
    _plot((out, "lr.png"), rows, ["lr"], "learning rate")
    _plot((out, "batch.png"), rows, ["batch_tokens", "critical_batch_tokens", "target_batch_tokens"], "batch (tokens)")
    _plot((out, "throughput.png"), rows, ["tokens_per_s"], "tokens/s")
    if share_sources(rows):
        _plot_shares((out, "shares.png"), rows)
    n = len(rows)
    k = max(1, n // 10)
    lines = [f"# Run report: {run.uri.rpartition('/')[2]}", "", f"{n} steps, {rows[-1].get('tokens_seen', 0)} tokens.", "",
             "| objective | mean loss, first 10 % | mean loss, last 10 % | fell |", "|---|---|---|---|"]  # fmt: skip
    for o in objs:
        first = [r[f"loss/{o}"] for r in rows[:k] if f"loss/{o}" in r]
        last = [r[f"loss/{o}"] for r in rows[-k:] if f"loss/{o}" in r]
        if first and last:
            a, b = sum(first) / len(first), sum(last) / len(last)
            lines.append(f"| {o} | {a:.4f} | {b:.4f} | {'yes' if b < a else 'NO'} |")
    starts = phase_starts(rows)
    if len(starts) > 1:
        lines += ["", "Phases (dashed lines in the plots): " + ", ".join(
            f"phase {p} from step {s}" for p, s in starts) + "."]  # fmt: skip
    frac, ratios = balance(rows, warmup)
    if frac is not None:
        lines += ["", f"Tuner balance after step {warmup}: max/min of the smoothed weighted gradient "
                  f"norms ≤ 2 in {100 * frac:.1f} % of {len(ratios)} steps (median ratio "
                  f"{sorted(ratios)[len(ratios) // 2]:.2f})."]  # fmt: skip
    tps = [r["tokens_per_s"] for r in rows[1:] if r.get("tokens_per_s")]
    mfu = [r["mfu"] for r in rows[1:] if r.get("mfu")]
    if tps:
        lines += ["", f"Throughput: median {sorted(tps)[len(tps) // 2]:.0f} text tokens/s"
                  + (f", median MFU {100 * sorted(mfu)[len(mfu) // 2]:.2f} %." if mfu else ".")]  # fmt: skip
    if share_sources(rows):
        lines += ["", f"Effective shares fed up to step {rows[-1]['step']} (a short run samples the corpus "
                  "order; over an epoch they are the manifest's unless the launch accepted a gap):", "",
                  *share_table(rows)]  # fmt: skip
    evals = eval_series(run)
    plots = _plot_evals(out, evals)
    if evals:
        last = {name: pts[-1] for scores in evals.values() for name, pts in scores.items()}
        lines += ["", "Eval suite (attested scores, off the training path; docs/evals.md), last value per score:",
                  "", "| score | step | value |", "|---|---|---|",
                  *(f"| {n} | {s} | {v:.6f} |" for n, (s, v) in sorted(last.items())),
                  "", " ".join(f"![{p[:-4]}]({p})" for p in plots)]  # fmt: skip
    lines += ["", "![losses](losses.png) ![lambdas](lambdas.png) ![gradnorms](gradnorms.png)",
              "![lr](lr.png) ![batch](batch.png) ![throughput](throughput.png)"
              + (" ![shares](shares.png)" if share_sources(rows) else ""), ""]  # fmt: skip
    out.write_atomic("report.md", "\n".join(lines).encode())
    return out.where("report.md")

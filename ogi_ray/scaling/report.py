"""Human-readable output: the plan table and the fit plot (matplotlib, Agg backend)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np

from ogi_ray.humanize import human
from ogi_ray.scaling.fit import FitResult, RunsData
from ogi_ray.scaling.law import TRAIN_FLOPS_PER_PARAM_TOKEN


def plan_table(plan: dict[str, Any]) -> str:
    c = plan["constants"]
    ia = plan["inference_aware"]
    lines = [
        f"constants      {c['name']}: E={c['E']:.4g} A={c['A']:.4g} B={c['B']:.4g} "
        f"alpha={c['alpha']:.4g} beta={c['beta']:.4g}",
        f"               ({c['source']})",
        f"compute        {plan['compute']:.4g} FLOPs (C = 6 N D)",
        f"exponents      N_opt ~ C^{plan['exponent_n']:.4f}   D_opt ~ C^{plan['exponent_d']:.4f}",
        "",
        f"{'':26}{'compute-optimal':>18}{'inference-aware':>18}",
        f"{'parameters N':26}{human(plan['n_params']):>18}{human(ia['n_params']):>18}",
        f"{'tokens D (effective)':26}{human(plan['tokens']):>18}{human(ia['tokens']):>18}",
        f"{'tokens per parameter':26}{plan['tokens_per_param']:>18.1f}{ia['tokens_per_param']:>18.1f}",
        f"{'predicted loss':26}{plan['loss']:>18.4f}{ia['loss']:>18.4f}",
        f"{'training FLOPs':26}{plan['compute']:>18.4g}{ia['training_flops']:>18.4g}",
        f"{'total FLOPs (+2NT)':26}{ia['total_flops_compute_optimal']:>18.4g}{ia['total_flops']:>18.4g}",
        f"{'batch tokens':26}{human(plan['batch_tokens']):>18}{human(ia['batch_tokens']):>18}",
        "",
        f"inference      {human(ia['inference_tokens'])} lifetime tokens: {ia['verdict']}",
        f"batch          {plan['batch']['rule']}",
        "",
        "seed rule (20-40 % smaller than compute-optimal), priced at this budget:",
        f"  {'shrink':>6} {'N':>10} {'dLoss @ same C':>15} {'train FLOPs @ same L':>21} "
        f"{'total vs inf.-aware':>20} {'total vs compute-opt.':>22}",
    ]
    for s in ia["seed_rule_costs"]:
        train = s["training_flops_at_equal_loss"]
        lines.append(
            f"  {100 * s['shrink']:>5.0f}% {human(s['n_params']):>10} "
            f"{s['delta_loss_at_equal_compute']:>+15.5f} "
            f"{(train / plan['compute'] - 1) * 100 if train else float('nan'):>+20.2f}% "
            f"{100 * s['total_vs_inference_aware']:>+19.2f}% "
            f"{100 * s['total_vs_compute_optimal']:>+21.2f}%"
        )
    which = "inference_aware" if plan["recommended"] == "inference_aware" else None
    budget = (ia if which else plan)["token_budget"]
    if budget:
        lines += [
            "",
            f"raw tokens for the {plan['recommended'].replace('_', '-')} D "
            f"({budget['kind']} {budget['source_file']}):",
            f"  method: {budget['method']}",
        ]
        src = budget.get("exchange_rates_source") or {"kind": "configured"}
        if src.get("kind") == "measured":
            lines.append(f"  rates: measured, {src['file']} (sha256 {src['sha256'][:16]}…)")
        else:
            lines.append("  rates: configured (hand-set in the file)")
        for m, v in budget["raw_tokens_by_modality"].items():
            rate = budget["exchange_rates"][m]
            lines.append(f"  {m:<10} {human(v):>10} raw  (rate {rate:g})")
        for name, s in budget["by_source"].items():
            parts = ", ".join(f"{m} {human(v)}" for m, v in s["raw_by_modality"].items())
            lines.append(f"  {name:<28} {100 * s['share']:5.1f}%  {parts}")
        lines += [f"  note: {n}" for n in budget["notes"]]
    lines += [f"note: {n}" for n in plan["notes"]]
    return "\n".join(lines)


def fit_table(fit: FitResult) -> str:
    law = fit.law
    rows = [
        ("E", law.E),
        ("A", law.A),
        ("B", law.B),
        ("alpha", law.alpha),
        ("beta", law.beta),
        ("exponent_n", law.exponent_n),
        ("exponent_d", law.exponent_d),
    ]
    head = f"{'constant':<12}{'value':>12}"
    if fit.intervals:
        head += f"   {int(100 * fit.confidence)} % interval ({fit.bootstrap_samples} bootstrap)"
    lines = [head]
    for k, v in rows:
        line = f"{k:<12}{v:>12.5g}"
        if k in fit.intervals:
            lo, hi = fit.intervals[k]
            line += f"   [{lo:.5g}, {hi:.5g}]"
        lines.append(line)
    lines.append(
        f"rows {fit.n_rows}, L-BFGS starts {fit.n_starts}, Huber objective "
        f"{fit.objective:.4g}, converged {fit.converged}"
    )
    lines.append(f"compute-optimal: N_opt ~ C^{law.exponent_n:.4f}, D_opt ~ C^{law.exponent_d:.4f}")
    return "\n".join(lines)


def plot_fit(data: RunsData, fit: FitResult, path: str | Path) -> Path:
    """Loss vs compute: runs (coloured by N), the fitted law per model size, the frontier."""
    import matplotlib

    matplotlib.use("Agg")  # no display on cluster nodes
    import matplotlib.pyplot as plt

    law = fit.law
    compute = TRAIN_FLOPS_PER_PARAM_TOKEN * data.n_params * data.tokens
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(12, 5))
    sc = ax.scatter(
        compute, data.loss, c=np.log10(data.n_params), cmap="viridis", s=18, label="runs"
    )
    fig.colorbar(sc, ax=ax, label="log10 N")
    c_lo, c_hi = compute.min() / 2, compute.max() * 2
    cmap = plt.get_cmap("viridis")
    sizes = np.unique(data.n_params)
    if len(sizes) > 12:  # one curve per size gets unreadable; sample them
        sizes = sizes[np.linspace(0, len(sizes) - 1, 12).round().astype(int)]
    lo_n, hi_n = np.log10(data.n_params.min()), np.log10(data.n_params.max())
    for n in sizes:
        d = np.geomspace(c_lo, c_hi, 100) / (TRAIN_FLOPS_PER_PARAM_TOKEN * n)
        frac = (np.log10(n) - lo_n) / max(hi_n - lo_n, 1e-9)
        ax.plot(
            TRAIN_FLOPS_PER_PARAM_TOKEN * n * d, law.loss(n, d), color=cmap(frac), lw=0.8, alpha=0.7
        )
    cs = np.geomspace(c_lo, c_hi, 200)
    frontier = [law.compute_optimal(c).loss for c in cs]
    ax.plot(
        cs, frontier, "k--", lw=1.5, label=f"compute-optimal frontier (N ~ C^{law.exponent_n:.3f})"
    )
    ax.set(
        xscale="log",
        xlabel="training FLOPs 6ND",
        ylabel="loss",
        title=f"fit: E={law.E:.3g} A={law.A:.3g} B={law.B:.3g} "
        f"alpha={law.alpha:.3g} beta={law.beta:.3g}",
    )
    ax.legend(loc="upper right", fontsize=8)
    pred = law.loss(data.n_params, data.tokens)
    ax2.scatter(pred, data.loss, s=14)
    lims = [min(pred.min(), data.loss.min()), max(pred.max(), data.loss.max())]
    ax2.plot(lims, lims, "k--", lw=1)
    ax2.set(xlabel="predicted loss", ylabel="observed loss", title="parity")
    fig.tight_layout()
    from ogi_ray.storage import write_file

    path = Path(path)
    png = io.BytesIO()
    try:
        fig.savefig(png, dpi=110, format="png")
    finally:
        plt.close(fig)
    write_file(path, png.getvalue())  # a reader never sees half a PNG
    return path

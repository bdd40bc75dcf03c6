"""Numbers for people: one formatter for every table the CLI prints."""

from __future__ import annotations


def human(x: float | None, unit: str = "") -> str:
    """1.23e10 -> '12.3 B', 91_250_000 -> '91.2 M'; keeps tables readable across 20
    orders of magnitude."""
    if x is None:
        return "n/a"
    for scale, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= scale and abs(x) < 1e15:
            return f"{x / scale:.3g} {suffix}{unit}"
    return f"{x:.3g} {unit}".rstrip()

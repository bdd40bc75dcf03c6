"""What a person watching a run sees: a live progress line on stderr, and TensorBoard
event files beside the metrics log.

    RUN/metrics/*.jsonl (written by rank 0, train/metrics_log.py), RUN/lineage/HEAD
      ─► Progress (a thread in the driver, polling storage every few seconds, reading
         only chunks it has not seen) ─► one line: step / total, loss per objective,
         tokens/s, ETA, last checkpoint; rewritten in place on a terminal, one line per
         update otherwise
    each flushed chunk of rows ─► tensorboard_chunk ─► RUN/tensorboard/events.out.tfevents.…
         (torch's SummaryWriter into a temporary folder, then one whole-object write, so
         it works on object stores; ``tensorboard --logdir RUN/tensorboard`` reads them)

Reading from storage keeps the driver independent of where the workers run and costs
the training processes nothing.
"""

from __future__ import annotations

import json
import math
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, TextIO

from ogi_ray.storage import Store
from ogi_ray.train.metrics_log import FOLDER

TB_FOLDER = "tensorboard"


def _fmt_duration(seconds: float) -> str:
    s = int(round(seconds))
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s" if m else f"{s}s"


def progress_line(row: dict[str, Any], total: int, rate_steps_s: float | None, checkpoint: str | None) -> str:
    """One progress line for the newest metrics row (pure: the thread only feeds it)."""
    done = int(row["step"]) + 1
    losses = " ".join(f"{k[5:]} {v:.4g}" for k, v in sorted(row.items()) if k.startswith("loss/"))
    parts = [f"step {done}/{total} ({100 * done / max(total, 1):.0f}%)", f"loss {losses}" if losses else ""]
    if row.get("tokens_per_s"):
        parts.append(f"{row['tokens_per_s']:.0f} tok/s")
    if rate_steps_s and rate_steps_s > 0 and done < total:
        parts.append(f"ETA {_fmt_duration((total - done) / rate_steps_s)}")
    parts.append(f"last checkpoint {checkpoint or '-'}")
    return " | ".join(p for p in parts if p)


class Progress:
    """Polls a run's metrics log and prints ``progress_line`` updates to ``out``."""

    def __init__(self, run: Store, total_steps: int, out: TextIO | None = None, every_s: float = 3.0) -> None:
        self.run, self.total, self.out, self.every_s = run, total_steps, out or sys.stderr, every_s
        self.tty = bool(getattr(self.out, "isatty", lambda: False)())
        self._seen: set[str] = set()
        self._last: dict[str, Any] | None = None
        self._first: tuple[float, int] | None = None  # (time, step) of the first row seen
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.lines: list[str] = []

    def poll(self) -> str | None:
        """Read new chunks; the line for the newest row, or None when nothing is new."""
        new = [n for n in self.run.list_files(FOLDER) if n not in self._seen]
        rows = []
        for name in sorted(new):
            self._seen.add(name)
            for line in self.run.read_bytes(f"{FOLDER}/{name}").decode("utf-8", "replace").splitlines():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:
                    continue
        if not rows:
            return None
        self._last = rows[-1]
        now, step = time.monotonic(), int(self._last["step"])
        if self._first is None:
            self._first = (now, step)
        t0, s0 = self._first
        rate = (step - s0) / (now - t0) if now > t0 and step > s0 else None
        return progress_line(self._last, self.total, rate, self._checkpoint())

    def _checkpoint(self) -> str | None:
        ckpts = [d for d in self.run.list_dirs() if d.startswith("step_") and self.run.is_file(f"{d}/lineage.json")]
        return ckpts[-1] if ckpts else None

    def _show(self, line: str) -> None:
        self.lines.append(line)
        self.out.write(("\r\033[K" + line) if self.tty else line + "\n")
        self.out.flush()

    def _loop(self) -> None:
        while not self._stop.wait(self.every_s):
            try:
                line = self.poll()
            except OSError:  # storage hiccup: try again at the next tick
                continue
            if line:
                self._show(line)

    def start(self) -> Progress:
        self._thread = threading.Thread(target=self._loop, name="ogi-progress", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        line = self.poll() if self.run.exists() else None
        if line:
            self._show(line)
        if self.tty and self.lines:
            self.out.write("\n")
            self.out.flush()


def tensorboard_chunk(run: Store, rows: list[dict[str, Any]]) -> str | None:
    """Write ``rows``' numeric metrics as one TensorBoard event file under
    RUN/tensorboard/ (a new file per chunk: object stores cannot append); returns its
    name, or None when the rows hold nothing to plot."""
    from torch.utils.tensorboard import SummaryWriter

    with tempfile.TemporaryDirectory(prefix="ogi-tb-") as tmp:
        w = SummaryWriter(tmp, flush_secs=3600)
        n = 0
        for r in rows:
            for k, v in r.items():
                if k != "step" and isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v):
                    w.add_scalar(k, float(v), int(r["step"]))
                    n += 1
        w.close()
        if not n:
            return None
        (path,) = Path(tmp).glob("events.out.tfevents.*")
        # Sortable names: TensorBoard reads a folder's event files in name order.
        name = f"{TB_FOLDER}/events.out.tfevents.{time.time_ns():020d}.{int(rows[0]['step']):09d}.ogi"
        run.write_atomic(name, path.read_bytes())
        return name

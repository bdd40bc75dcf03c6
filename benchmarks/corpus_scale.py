"""Scale of the distributed corpus build: a `text` source over real text files on this
machine, at two input sizes 4x apart, against a single-process loop in the same run.

    python benchmarks/corpus_scale.py [--large-mb 1050] [--num-cpus 2]

Input: the .py, .pyi, .rst, .txt, .md, .html, .h, .c, .js, .pm/.pl and man-page (.gz)
files under the Python installations, /usr/lib, /usr/include and /usr/share, sorted by
path; the small size is a prefix of the large one (linked into a folder per size).

For each size:
1. Ray Data: ``ogi corpus build`` of a one-source mixture (packed rows of 1,024 tokens,
   GPT-2's pretrained tiktoken BPE, so no BPE is trained) in a fresh subprocess on a fresh
   local cluster of ``--num-cpus`` CPUs. The subprocess reports the driver's peak RSS
   (VmHWM, and its RSS sampled every 20 ms per phase) and samples every Ray worker's RSS
   every 0.2 s (their peak; it counts the object store's shared pages a worker maps).
2. Plain: one process, no Ray, the same files, the same tokenizer, the same packing and
   Parquet writing (zstd, the same rows per shard).
Printed: input MB/s, output tokens/s, the throughput ratio Ray / plain, driver and
worker peak RSS. Run on an otherwise idle machine for stable figures.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXTS = (".py", ".pyi", ".rst", ".txt", ".md", ".html", ".h", ".c", ".js", ".pm", ".pl")
ROOTS = ["/usr/lib", "/usr/include", "/usr/share", str(Path(sys.base_prefix) / "lib"), str(Path(sys.prefix) / "lib")]
MAX_TOKENS, SHARD_ROWS = 1024, 4096


def text_files() -> list[tuple[str, int]]:
    """(path, size) of every real text file under ROOTS, each inode once, sorted."""
    seen, out = set(), []
    for root in ROOTS:
        for dp, _, names in os.walk(root):
            for n in names:
                p = os.path.join(dp, n)
                man = n.endswith(".gz") and "/man/" in dp
                if not (n.endswith(EXTS) or man) or os.path.islink(p):
                    continue
                st = os.stat(p)
                if st.st_ino not in seen and 0 < st.st_size < 20 << 20:
                    seen.add(st.st_ino)
                    out.append((p, st.st_size))
    return sorted(out)


def link_prefix(files: list[tuple[str, int]], mb: float, folder: Path) -> tuple[list[str], int]:
    """Symlinks to the first files totalling ``mb`` MB, in ``folder``; (paths, bytes)."""
    folder.mkdir(parents=True)
    chosen, total = [], 0
    for i, (p, size) in enumerate(files):
        if total >= mb * 1e6:
            break
        (folder / f"{i:07d}-{Path(p).name}").symlink_to(p)
        chosen.append(p)
        total += size
    return chosen, total


def tokenizer_cfg(file: str) -> dict:
    eot = "<|endoftext|>"
    return {"kind": "tiktoken", "file": file, "pattern": "r50k_base", "special_tokens": {eot: 50256},
            "bos_token": eot, "eos_token": eot, "pad_token": eot, "max_tokens": MAX_TOKENS}


def mixture(folder: Path, tokenizer: str, path: Path) -> Path:
    m = {"name": "scale", "seed": 0, "exchange_rates": {"text": 1.0}, "shard_rows": SHARD_ROWS,
         "text_tokenizer": tokenizer_cfg(tokenizer),
         "mixing": {"max_repeat": 1.0},
         "sources": [{"name": "files", "kind": "text", "share": 1.0, "modalities": ["text"], "license": "MIT",
                      "params": {"path": str(folder), "format": "txt", "suffixes": [*EXTS, ".gz"]}}]}  # fmt: skip
    path.write_text(json.dumps(m))  # JSON is YAML
    return path


CHILD = r"""
import json, sys, threading, time
import psutil, ray
from ogi_ray.corpus.build import prepare_build
def hwm():
    # VmHWM: this process' peak RSS since its exec. (ru_maxrss is not: after fork + exec
    # it keeps the parent's RSS at the fork, which here grew with the previous size.)
    line = next(x for x in open("/proc/self/status") if x.startswith("VmHWM:"))
    return int(line.split()[1]) * 1024
peak, done, phase, driver, raylet = {}, threading.Event(), ["prepare"], {}, []
def watch_driver():  # every 20 ms: transient peaks show up in their phase
    me = psutil.Process()
    while not done.is_set():
        driver[phase[0]] = max(driver.get(phase[0], 0), me.memory_info().rss)
        time.sleep(0.02)
threading.Thread(target=watch_driver, daemon=True).start()
plan = prepare_build(sys.argv[1], sys.argv[2])
phase[0] = "ray.init"
ray.init(address="local", num_cpus=int(sys.argv[3]), include_dashboard=False, log_to_driver=False)
ray.data.DataContext.get_current().enable_progress_bars = False
raylet = psutil.Process(ray._private.worker._global_node.all_processes["raylet"][0].process.pid)
def sample():
    while not done.is_set():
        for c in raylet.children(recursive=True):
            try:
                if c.name().startswith("ray::") or "default_worker" in " ".join(c.cmdline()):
                    peak[c.pid] = max(peak.get(c.pid, 0), c.memory_info().rss)
            except psutil.Error:
                pass
        time.sleep(0.2)
threading.Thread(target=sample, daemon=True).start()
import logging
from ogi_ray.corpus.build import run_build
me = psutil.Process()
marks = {"ray.init": me.memory_info().rss}
class Mark(logging.Handler):  # the driver's RSS when each pass ends
    def emit(self, rec):
        marks[rec.getMessage().split(" (")[0]] = me.memory_info().rss
        phase[0] = "after " + rec.getMessage().split(" (")[0]
log = logging.getLogger("ogi_ray.corpus.build")
log.setLevel(logging.INFO)
log.addHandler(Mark())
t0 = time.perf_counter()
phase[0] = "pass 1"
m = run_build(plan)
marks["end"] = me.memory_info().rss
seconds = time.perf_counter() - t0
done.set()
print(json.dumps({"seconds": seconds, "tokens": sum(s["tokens_by_modality"]["text"] for s in m["sources"]),
                  "rows": m["total_rows"], "driver_rss": hwm(),
                  "worker_rss": max(peak.values() or [0]), "workers": len(peak), "shards": len(m["shards"]),
                  "marks": {k: v // 2**20 for k, v in marks.items()},
                  "phase_peaks": {k: v // 2**20 for k, v in driver.items()}}))
"""


def ray_build(mix: Path, out: Path, cpus: int) -> dict:
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    proc = subprocess.run([sys.executable, "-c", CHILD, str(mix), str(out), str(cpus)], capture_output=True,
                          text=True, env=env)  # fmt: skip
    if proc.returncode != 0:
        raise SystemExit(proc.stderr[-4000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def plain(paths: list[str], tokenizer_file: str, out: Path) -> dict:
    """The same read, tokenize, pack and Parquet writing in one process, no Ray."""
    import gzip

    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from ogi_ray.corpus.config import TextTokenizerConfig
    from ogi_ray.corpus.passes import ROW_SCHEMA
    from ogi_ray.corpus.text_tokenizer import load_pretrained
    from ogi_ray.corpus.tokenize import pack_rows, raw_hash

    cfg = TextTokenizerConfig(**tokenizer_cfg(tokenizer_file))
    tok = load_pretrained(cfg, out / "x.yaml")
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    pending, tokens, n_shard = [], 0, 0
    for lo in range(0, len(paths), 256):  # a task's worth of documents at a time
        texts = []
        for p in paths[lo : lo + 256]:
            raw = gzip.open(p).read() if p.endswith(".gz") else Path(p).read_bytes()
            texts.append(raw.decode("utf-8", errors="replace"))
        docs = [{"doc_id": p, "ids": np.append(ids, np.int32(tok.eos_id)), "raw_hash": raw_hash({"doc_id": p, "text": t}),
                 "meta": None} for p, t, ids in zip(paths[lo : lo + 256], texts, tok.encode_batch(texts), strict=True) if t.strip()]  # fmt: skip
        for r in pack_rows(docs, MAX_TOKENS, {"text": 1.0}):
            r.update(source="files", row_key=f"{lo}/{r['chunk']}")
            pending.append(r)
            tokens += r["tokens_text"]
        while len(pending) >= SHARD_ROWS or (pending and lo + 256 >= len(paths)):
            t = pa.Table.from_pylist(pending[:SHARD_ROWS], schema=ROW_SCHEMA)
            pq.write_table(t, out / f"part-{n_shard:05d}.parquet", compression="zstd", row_group_size=1024)
            pending, n_shard = pending[SHARD_ROWS:], n_shard + 1
    return {"seconds": time.perf_counter() - t0, "tokens": tokens}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--large-mb", type=float, default=1050.0, help="the larger input size (the smaller is 1/4)")
    p.add_argument("--num-cpus", type=int, default=2)
    p.add_argument("--tokenizer", default=None, help="a tiktoken BPE file (default: GPT-2's, fetched by setup_data)")
    args = p.parse_args()
    sys.path.insert(0, str(ROOT))
    from ogi_ray.corpus.pretrained_files import ensure

    tokenizer = args.tokenizer or str(ensure("gpt2.tiktoken"))
    files = text_files()
    print(f"{len(files):,} text files, {sum(s for _, s in files) / 1e6:,.0f} MB on disk; {os.cpu_count()} cores, "
          f"Ray --num-cpus {args.num_cpus}")  # fmt: skip
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for mb in (args.large_mb / 4, args.large_mb):
            d = Path(tmp) / f"{mb:.0f}"
            paths, nbytes = link_prefix(files, mb, d / "in")
            r = ray_build(mixture(d / "in", tokenizer, d / "mix.yaml"), d / "out", args.num_cpus)
            q = plain(paths, tokenizer, d / "plain")
            rows.append((nbytes, len(paths), r, q))
            print(f"{nbytes / 1e6:8.0f} MB {len(paths):7,} files | Ray {r['seconds']:6.1f} s "
                  f"{nbytes / 1e6 / r['seconds']:6.2f} MB/s {r['tokens'] / r['seconds']:9,.0f} tok/s | plain "
                  f"{q['seconds']:6.1f} s {nbytes / 1e6 / q['seconds']:6.2f} MB/s {q['tokens'] / q['seconds']:9,.0f} tok/s"
                  f" | ratio {q['seconds'] / r['seconds']:.2f}x | driver peak RSS {r['driver_rss'] / 2**20:5.0f} MiB"
                  f" | worker peak RSS {r['worker_rss'] / 2**20:5.0f} MiB ({r['workers']} workers) | {r['shards']} shards")  # fmt: skip
            print(f"  driver RSS (MiB) when each pass ended: {r['marks']}; peak in each phase: {r['phase_peaks']}")
            if r["tokens"] != q["tokens"]:
                print(f"  note: tokens differ (Ray {r['tokens']:,}, plain {q['tokens']:,}): packing is per task")
    (s0, _, r0, _), (s1, _, r1, q1) = rows
    print(f"input {s1 / s0:.1f}x larger: driver peak RSS {r1['driver_rss'] / r0['driver_rss']:.2f}x, "
          f"Ray throughput ratio at the larger size {q1['seconds'] / r1['seconds']:.2f}x the single process")  # fmt: skip


if __name__ == "__main__":
    main()

"""Spawned gloo ranks for tests: ``run_distributed(fn, world, *args)`` runs
``fn(rank, world, *args)`` in ``world`` processes with a process group of ``backend``
and returns their results (a failing rank fails the test with its traceback)."""

from __future__ import annotations

import os
import socket
import sys
import tempfile
import time
import traceback
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(rank, world, port, out_dir, fn, args, backend):
    import faulthandler

    import torch.distributed as dist

    # A C++ abort (gloo, std::terminate) leaves no Python traceback: faulthandler writes
    # every thread's Python stack to this file on SIGABRT/SIGSEGV, for the failure report.
    fault = open(Path(out_dir) / f"rank{rank}.fault", "w")  # noqa: SIM115 (open until _exit)
    faulthandler.enable(file=fault, all_threads=True)
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    try:
        from datetime import timedelta

        dist.init_process_group(backend, rank=rank, world_size=world, timeout=timedelta(seconds=300))
        result = fn(rank, world, *args)
        torch.save(result, Path(out_dir) / f"rank{rank}.pt")
        dist.destroy_process_group()
    except BaseException:
        (Path(out_dir) / f"rank{rank}.err").write_text(traceback.format_exc())
        raise SystemExit(1) from None
    # The result is on disk and the groups are destroyed. Skip interpreter finalization:
    # gloo's worker threads can still hold async work whose tensors' teardown then aborts
    # the process ("terminate called without an active exception", pytorch#179291); one
    # CI run lost a passing pp2 rank that way.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _why(out: Path, rank: int) -> str:
    """The failed rank's Python traceback, else its faulthandler dump (a C++ abort)."""
    err, fault = out / f"rank{rank}.err", out / f"rank{rank}.fault"
    if err.exists():
        return err.read_text()
    saved = "after" if (out / f"rank{rank}.pt").exists() else "before"
    dump = fault.read_text() if fault.exists() else ""
    return f"no Python exception; died {saved} saving its result\n" + (dump or "no faulthandler dump")


def run_distributed(fn, world_size, *args, timeout=600.0, backend="gloo"):
    """Run ``fn(rank, world_size, *args)`` on ``world_size`` spawned gloo ranks; returns
    the list of their results. A rank that raises, dies or outlives ``timeout`` fails
    the test with its traceback (the other ranks are then terminated)."""
    ctx = mp.get_context("spawn")
    port = _free_port()
    with tempfile.TemporaryDirectory(prefix="ogi-dist-") as out:
        procs = [ctx.Process(target=_entry, args=(r, world_size, port, out, fn, args, backend))
                 for r in range(world_size)]  # fmt: skip
        for p in procs:
            p.start()
        deadline = time.monotonic() + timeout
        failed = None
        while any(p.is_alive() for p in procs) and failed is None:
            failed = next((r for r, p in enumerate(procs) if p.exitcode not in (None, 0)), None)
            if time.monotonic() > deadline:
                break
            time.sleep(0.2)
        failed = next((r for r, p in enumerate(procs) if p.exitcode not in (None, 0)), failed)
        alive = [r for r, p in enumerate(procs) if p.is_alive()]
        for p in procs:
            if p.is_alive():
                p.terminate()
            p.join(10)
        if failed is not None:
            pytest.fail(f"rank {failed} failed (exit code {procs[failed].exitcode}):\n" + _why(Path(out), failed))
        if alive:
            pytest.fail(f"ranks {alive} still running after {timeout:.0f} s")
        return [torch.load(Path(out) / f"rank{r}.pt", weights_only=False) for r in range(world_size)]

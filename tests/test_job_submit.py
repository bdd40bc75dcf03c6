"""`ray job submit` end to end: a head started here, the demo submitted through the CLI
with the repo root as working dir, SUCCEEDED, and `ogi lineage verify` on its output.

The head is this test's own subprocess (free ports, private temp dir, tier label cpu) and
is stopped by terminating its process group, never `ray stop`. The CLI talks to a
token-authenticated cluster, so RAY_AUTH_MODE=token is exported to it; the venv's bin
goes first on PATH so the job's `python` is the project's interpreter.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _kill_by_marker(marker: str) -> None:
    """SIGKILL every process whose command line names ``marker`` (our private temp dir)."""
    for pid_s in os.listdir("/proc"):
        if not pid_s.isdigit() or int(pid_s) == os.getpid():
            continue
        try:
            cmd = Path(f"/proc/{pid_s}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if marker in cmd:
            try:
                os.kill(int(pid_s), signal.SIGKILL)
            except ProcessLookupError:
                pass


def _dashboard_up(url: str) -> bool:
    try:
        urllib.request.urlopen(f"{url}/api/version", timeout=5)
        return True
    except urllib.error.HTTPError:  # 401 without a token: the server is up
        return True
    except OSError:
        return False


class _Head:
    """`ray start --head --block` in its own process group and private temp dir;
    ``stop()`` ends it and every process naming that dir (job supervisor, workers)."""

    def __init__(self, env: dict[str, str]) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="ogijs", dir="/tmp"))  # short: socket paths
        port, dash, client, agent, grpc, metrics, rt_env = _free_ports(7)
        self.url = f"http://127.0.0.1:{dash}"
        cmd = [str(BIN / "ray"), "start", "--head", "--block", "--labels=ogi.io/tier=cpu",
               "--num-cpus=4", f"--port={port}", f"--dashboard-port={dash}",
               f"--temp-dir={self.tmp}", "--include-dashboard=true",
               f"--ray-client-server-port={client}", f"--dashboard-agent-listen-port={agent}",
               f"--dashboard-agent-grpc-port={grpc}", f"--metrics-export-port={metrics}",
               f"--runtime-env-agent-port={rt_env}", "--disable-usage-stats"]  # fmt: skip
        self.log_path = self.tmp / "head.log"
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(cmd, env=env, stdout=self._log, stderr=subprocess.STDOUT,
                                     start_new_session=True)  # fmt: skip

    def started(self, timeout_s: float) -> bool:
        """True once `ray start` reports the runtime up and the dashboard (the job API)
        answers; False if the head died or timed out."""
        deadline = time.monotonic() + timeout_s
        while "Ray runtime started" not in self.log_path.read_text(errors="replace") or (
            not _dashboard_up(self.url)
        ):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                return False
            time.sleep(0.5)
        return True

    def stop(self) -> None:
        try:  # a head drains for up to 30 s on SIGTERM; a test cluster need not
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=5)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass
        _kill_by_marker(str(self.tmp))
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self._log.close()
        shutil.rmtree(self.tmp, ignore_errors=True)


@pytest.fixture
def head():
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(RAY_AUTH_MODE="token", PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}")
    h, failures = None, []
    try:
        # Two tries: on an overloaded machine the head's raylet can miss Ray's fixed 30 s
        # registration wait ("The current node timed out during startup").
        for _ in range(2):
            h = _Head(env)
            if h.started(timeout_s=150):
                break
            failures.append(h.log_path.read_text(errors="replace")[-2000:])
            h.stop()
            h = None
        assert h is not None, "\n----\n".join(failures)
        yield {"url": h.url, "env": env, "tmp": h.tmp}
    finally:
        if h is not None:
            h.stop()


def test_demo_through_ray_job_submit(head):
    out = head["tmp"] / "demo"  # absolute, and the driver and workers share this host
    sid = f"ogi-demo-{uuid.uuid4().hex[:8]}"
    submit = [str(BIN / "ray"), "job", "submit", "--address", head["url"],
              "--submission-id", sid, "--working-dir", ".",
              "--runtime-env", "jobs/runtime_env.yaml", "--",
              "python", "jobs/demo.py", "--out", str(out),
              "loop.steps=6", "loop.checkpoint_every=3"]  # fmt: skip
    t0 = time.monotonic()
    done = subprocess.run(submit, cwd=ROOT, env=head["env"], capture_output=True, text=True, timeout=480)
    took = time.monotonic() - t0
    text = done.stdout + done.stderr
    assert done.returncode == 0, text[-6000:]

    status = subprocess.run([str(BIN / "ray"), "job", "status", "--address", head["url"], sid],
                            env=head["env"], capture_output=True, text=True, timeout=120)  # fmt: skip
    # The CLI renders JobStatus.SUCCEEDED as "Job '<id>' succeeded".
    assert f"Job '{sid}' succeeded" in status.stdout + status.stderr, status.stdout + status.stderr

    # The full driver log (the submit command's live tail can end before the last lines).
    logs = subprocess.run([str(BIN / "ray"), "job", "logs", "--address", head["url"], sid],
                          env=head["env"], capture_output=True, text=True, timeout=120)  # fmt: skip
    lines = [ln for ln in logs.stdout.splitlines() if "OGI_SUMMARY " in ln]
    assert lines, logs.stdout[-6000:] + logs.stderr[-2000:]
    line = lines[-1][lines[-1].index("OGI_SUMMARY "):]
    summary = json.loads(line.removeprefix("OGI_SUMMARY "))
    assert summary["verify_problems"] == []
    assert summary["steps"] == 6 and summary["checkpoints"] == ["step_000003", "step_000006"]
    # ogi_ray came from the uploaded working dir (Ray puts it first on PYTHONPATH), not
    # from the repo checkout the venv's editable install points at.
    assert "working_dir_files" in summary["ogi_ray_from"], summary["ogi_ray_from"]
    assert not summary["ogi_ray_from"].startswith(str(ROOT))

    verify = subprocess.run([str(BIN / "ogi"), "lineage", "verify", str(out)], env=head["env"],
                            capture_output=True, text=True, timeout=300)  # fmt: skip
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert "lineage verify ok" in verify.stdout
    print(f"\nray job submit (demo, 6 steps): {took:.0f} s")

"""A Ray head that a test owns: `ray start --head --block` in its own process group and
private temp dir (never `ray stop`, which would end every Ray process on the host).
``stop()`` ends it and every process naming that dir (job supervisors, workers, the fake
autoscaler's nodes, which outlive the head)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BIN = Path(sys.executable).parent


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def kill_by_marker(marker: str) -> None:
    """SIGKILL every process whose command line names ``marker`` (our private temp dir)."""
    me = os.getpid()
    for pid_s in os.listdir("/proc"):
        if not pid_s.isdigit() or int(pid_s) == me:
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


class LocalHead:
    """Ports and temp dir are chosen at construction (a config may need them); ``launch``
    starts the head with extra ``ray start`` arguments."""

    def __init__(self, prefix: str) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))  # short: socket paths
        self.port, self.dash, client, agent, grpc, metrics, rt_env = free_ports(7)
        self._service_args = [
            f"--port={self.port}", f"--temp-dir={self.tmp}", f"--ray-client-server-port={client}",
            f"--dashboard-agent-listen-port={agent}", f"--dashboard-agent-grpc-port={grpc}",
            f"--metrics-export-port={metrics}", f"--runtime-env-agent-port={rt_env}",
        ]  # fmt: skip
        self.log_path = self.tmp / "head.log"
        self._log = None
        self.proc: subprocess.Popen | None = None

    def launch(self, args: list[str], env: dict[str, str]) -> None:
        cmd = [str(BIN / "ray"), "start", "--head", "--block", *self._service_args, *args,
               "--disable-usage-stats"]  # fmt: skip
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(cmd, env=env, stdout=self._log, stderr=subprocess.STDOUT,
                                     start_new_session=True)  # fmt: skip

    def ready(self) -> bool:
        """Extra readiness beyond `ray start`'s own message (subclasses)."""
        return True

    def started(self, timeout_s: float) -> bool:
        """True once `ray start` reports the runtime up and ``ready()``; False if the head
        died or timed out (ray.init against a GCS that is not up blocks a minute per try)."""
        deadline = time.monotonic() + timeout_s
        while "Ray runtime started" not in self.log_path.read_text(errors="replace") or not self.ready():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                return False
            time.sleep(0.5)
        return True

    def stop(self) -> None:
        if self.proc is not None:
            try:  # a head drains for up to 30 s on SIGTERM; a test cluster need not
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(timeout=5)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                pass
        kill_by_marker(str(self.tmp))
        if self.proc is not None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if self._log is not None:
            self._log.close()
        shutil.rmtree(self.tmp, ignore_errors=True)

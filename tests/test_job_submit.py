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
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest
from _ray_head import BIN, LocalHead

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]


def _dashboard_up(url: str) -> bool:
    try:
        urllib.request.urlopen(f"{url}/api/version", timeout=5)
        return True
    except urllib.error.HTTPError:  # 401 without a token: the server is up
        return True
    except OSError:
        return False


class _Head(LocalHead):
    """The job head: dashboard (the job API) on, labelled tier cpu, 4 CPUs."""

    def __init__(self, env: dict[str, str]) -> None:
        super().__init__("ogijs")
        self.url = f"http://127.0.0.1:{self.dash}"
        self.launch(["--labels=ogi.io/tier=cpu", "--num-cpus=4", f"--dashboard-port={self.dash}",
                     "--include-dashboard=true"], env)  # fmt: skip

    def ready(self) -> bool:
        return _dashboard_up(self.url)


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

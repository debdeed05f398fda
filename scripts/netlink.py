"""A rate-limited network link to a SeaweedFS of its own, for the peer benchmark.

`rate_limited_seaweedfs("1gbit")` makes a network namespace, joins it to this
one with a veth pair on a private /30 (10.231.X.4k+1 here, 10.231.X.4k+2
there, chosen not to clash with any address or route this machine has),
limits both directions with tc's tbf (the host end's egress carries uploads,
the namespace end's egress carries downloads), and starts `weed server`
inside the namespace, bound to its address only. Every client in this
namespace then reaches S3 through the link, and the link's byte counters
say what the store served.

    with rate_limited_seaweedfs("1gbit") as link:
        link.server.endpoint     # http://10.231.X.Y:PORT, like tests/seaweed.py's SeaweedFS
        link.served_bytes()      # bytes that came out of the namespace so far

Everything it made (weed, the namespace, the veth pair) is removed on leaving,
on an error and on Ctrl-C too; `remove_stale()` removes what a run that was
killed outright left behind (the namespace's name holds the pid that made it).

Caveats:
- Needs root, `ip` and `tc` with the tbf qdisc (this kernel has no netem, so the
  link adds no delay of its own: round trips stay about those of a veth).
- The counters count every byte on the wire, TCP/IP headers (about 3%) included.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

NETNS_PREFIX = "mfsbench-"  # mfsbench-PID-HEX: the pid says whether its run is still alive
SUBNET = ipaddress.ip_network("10.231.0.0/16")  # /30s are taken from here
START_TIMEOUT_S = 30.0


def _tests_dir() -> str:
    return str(Path(__file__).resolve().parent.parent / "tests")


def _ip(*args: str, ns: str | None = None) -> str:
    """Run `ip ARGS` (inside ns if given); RuntimeError with its output if it fails."""
    argv = ["ip", *args] if ns is None else ["ip", "netns", "exec", ns, "ip", *args]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {proc.returncode}: {proc.stderr.strip()}")
    return proc.stdout


def _tc(*args: str, ns: str | None = None) -> None:
    argv = ["tc", *args] if ns is None else ["ip", "netns", "exec", ns, "tc", *args]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {proc.returncode}: {proc.stderr.strip()}")


def parse_rate(text: str) -> int:
    """tc's rate words (SI, as tc reads them): '200mbit', '1gbit', '10gbit' -> bits per second."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(bit|kbit|mbit|gbit|tbit)\s*", text.lower())
    if not m:
        raise ValueError(f"not a rate tc understands (like 200mbit, 1gbit): {text!r}")
    scale = {"bit": 1, "kbit": 10**3, "mbit": 10**6, "gbit": 10**9, "tbit": 10**12}[m.group(2)]
    bits = int(float(m.group(1)) * scale)
    if bits < 10**6:
        raise ValueError(f"{text!r}: a link slower than 1mbit would take all day")
    return bits


def tbf_sizes(bits_per_s: int) -> tuple[int, int]:
    """tbf's burst and queue limit (bytes) for a rate.

    The burst must hold what arrives between two dequeues and more than a 64 KiB
    GSO packet of the veth (or tbf splits packets): 8 ms of the rate, at least
    1 MiB. The queue: 30 ms of the rate more, at least 4 MiB. Measured at 1 Gbit/s
    (boto3, 128 MiB down): 118 MB/s with these, 110-113 MB/s with bursts of
    64-500 kB and queues of 1-7 MB; the most a 1 Gbit/s wire carries is 125 MB/s
    less TCP/IP headers.
    """
    rate = bits_per_s // 8
    burst = max(1 << 20, rate * 8 // 1000)
    limit = burst + max(4 << 20, rate * 30 // 1000)
    return burst, limit


def namespaces_available() -> str | None:
    """None where a network namespace with a veth pair and tbf can be made here, else why not."""
    name = f"{NETNS_PREFIX}{os.getpid()}-probe{secrets.token_hex(2)}"
    host_if = "mfbp" + secrets.token_hex(3)
    try:
        _ip("netns", "add", name)
        try:
            _ip("link", "add", host_if, "type", "veth", "peer", "name", host_if + "n")
            _ip("link", "set", host_if + "n", "netns", name)
            _tc("qdisc", "add", "dev", host_if, "root", "tbf", "rate", "100mbit",
                "burst", "256k", "limit", "4m")  # fmt: skip
        finally:
            subprocess.run(["ip", "link", "del", host_if], capture_output=True)
            subprocess.run(["ip", "netns", "del", name], capture_output=True)
    except (OSError, RuntimeError, subprocess.TimeoutExpired) as e:
        return f"cannot make a rate-limited network namespace here: {e}"
    return None


def remove_stale() -> list[str]:
    """Delete the namespaces (and the processes in them) of benchmark runs that are gone."""
    removed = []
    try:
        names = [line.split()[0] for line in _ip("netns", "list").splitlines() if line.strip()]
    except (OSError, RuntimeError):
        return removed
    for name in names:
        m = re.fullmatch(re.escape(NETNS_PREFIX) + r"(\d+)-\w+", name)
        if not m or Path(f"/proc/{m.group(1)}").exists():
            continue
        _kill_namespace_processes(name)
        subprocess.run(["ip", "netns", "del", name], capture_output=True)
        # The kernel deletes the pair with the namespace, but later: delete it now.
        subprocess.run(["ip", "link", "del", f"mfb{name.rsplit('-', 1)[1]}h"], capture_output=True)
        removed.append(name)
    return removed


def _kill_namespace_processes(ns: str) -> None:
    proc = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True)
    for pid in proc.stdout.split():
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid), signal.SIGKILL)


def _used_networks() -> list[ipaddress.IPv4Network]:
    """Every IPv4 network this namespace has an address in or a route to."""
    nets = []
    for line in _ip("-4", "-o", "addr", "show").splitlines():
        m = re.search(r"inet (\S+)", line)
        if m:
            nets.append(ipaddress.ip_interface(m.group(1)).network)
    for line in _ip("-4", "route", "show", "table", "all").splitlines():
        word = line.split()[0] if line.split() else ""
        if word in ("local", "broadcast", "unreachable", "prohibit", "blackhole"):
            word = line.split()[1]
        if word == "default":
            continue  # the default route covers everything; a /30 inside it is fine
        with contextlib.suppress(ValueError):
            nets.append(ipaddress.ip_network(word, strict=False))
    return nets


def _free_slash30() -> ipaddress.IPv4Network:
    used = _used_networks()
    for _ in range(1000):
        base = int(SUBNET.network_address) + 4 * secrets.randbelow(SUBNET.num_addresses // 4)
        net = ipaddress.ip_network(f"{ipaddress.ip_address(base)}/30")
        if not any(net.overlaps(u) for u in used if u.version == 4):
            return net
    raise RuntimeError(f"no free /30 in {SUBNET}: every one clashes with an address or route")


@dataclass
class Link:
    """A veth pair from here into namespace `ns`, rate-limited both ways by tbf."""

    ns: str
    host_if: str
    ns_if: str
    host_addr: str
    ns_addr: str
    rate: str  # as given, e.g. "1gbit"
    bits_per_s: int
    burst: int
    limit: int
    server: Any = None  # the SeaweedFS inside, once started

    def _counter(self, name: str) -> int:
        return int(Path(f"/sys/class/net/{self.host_if}/statistics/{name}").read_text())

    def served_bytes(self) -> int:
        """Bytes that have come out of the namespace (what the store sent), on the wire."""
        return self._counter("rx_bytes")

    def sent_bytes(self) -> int:
        """Bytes that went into the namespace (what clients uploaded), on the wire."""
        return self._counter("tx_bytes")

    def describe(self) -> dict[str, Any]:
        return {
            "rate": self.rate, "bits_per_s": self.bits_per_s, "tbf_burst_bytes": self.burst,
            "tbf_limit_bytes": self.limit, "host": f"{self.host_addr}/30 on {self.host_if}",
            "namespace": f"{self.ns_addr}/30 on {self.ns_if} in netns {self.ns}",
        }  # fmt: skip

    def probe(self, nbytes: int) -> dict[str, Any]:
        """The throughput the link gives: a plain boto3 upload and download of nbytes."""
        assert self.server is not None
        client = self.server.client()
        bucket = self.server.new_bucket()
        body = os.urandom(1 << 20) * (nbytes >> 20)  # incompressible enough for a wire
        before = self.sent_bytes()
        t0 = time.perf_counter()
        client.put_object(Bucket=bucket, Key="probe", Body=body)
        up = time.perf_counter() - t0
        wire_up = self.sent_bytes() - before
        del body
        before = self.served_bytes()
        t0 = time.perf_counter()
        stream = client.get_object(Bucket=bucket, Key="probe")["Body"]
        got = 0
        while chunk := stream.read(16 << 20):
            got += len(chunk)
        down = time.perf_counter() - t0
        wire_down = self.served_bytes() - before
        client.delete_object(Bucket=bucket, Key="probe")
        client.delete_bucket(Bucket=bucket)
        return {
            "bytes": got,
            "upload_mb_per_s": nbytes / up / 1e6,
            "download_mb_per_s": got / down / 1e6,
            "upload_mbit_on_wire": wire_up * 8 / up / 1e6,
            "download_mbit_on_wire": wire_down * 8 / down / 1e6,
            "configured_mbit": self.bits_per_s / 1e6,
        }


@contextlib.contextmanager
def rate_limited_link(rate: str) -> Iterator[Link]:
    """A namespace joined to this one by a veth pair limited to `rate` each way; removed after."""
    bits = parse_rate(rate)
    burst, limit = tbf_sizes(bits)
    token = secrets.token_hex(3)
    ns = f"{NETNS_PREFIX}{os.getpid()}-{token}"
    host_if, ns_if = f"mfb{token}h", f"mfb{token}n"
    net = _free_slash30()
    host_addr, ns_addr = (str(a) for a in list(net.hosts())[:2])
    link = Link(ns, host_if, ns_if, host_addr, ns_addr, rate, bits, burst, limit)
    try:
        _ip("netns", "add", ns)
        _ip("link", "add", host_if, "type", "veth", "peer", "name", ns_if)
        _ip("link", "set", ns_if, "netns", ns)
        _ip("addr", "add", f"{host_addr}/30", "dev", host_if)
        _ip("link", "set", host_if, "up")
        _ip("addr", "add", f"{ns_addr}/30", "dev", ns_if, ns=ns)
        _ip("link", "set", ns_if, "up", ns=ns)
        _ip("link", "set", "lo", "up", ns=ns)  # weed's own parts talk over it
        for dev, where in ((host_if, None), (ns_if, ns)):
            _tc("qdisc", "add", "dev", dev, "root", "tbf", "rate", str(bits),
                "burst", str(burst), "limit", str(limit), ns=where)  # fmt: skip
        yield link
    finally:
        _kill_namespace_processes(ns)
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        # Deleting the namespace deletes its end of the pair and so the pair; in case the
        # namespace was never made, the host end goes by name.
        subprocess.run(["ip", "link", "del", host_if], capture_output=True)


def start_seaweedfs_in(link: Link, root: Path, sockets: Path) -> Any:
    """`weed server` inside link's namespace, every listener on its address there.

    The same server as tests/seaweed.py starts on loopback (one identity from a
    config file, AWS_* kept out of its environment), returned as its SeaweedFS,
    so that stop() and client() work alike. Its unix sockets go in `sockets`, a
    short path (a socket's path must fit in 108 bytes; a deep work dir does not).
    """
    sys.path.insert(0, _tests_dir())
    from seaweed import SeaweedFS, weed_binary

    host = link.ns_addr
    access_key, secret_key = "modelfs-test", uuid.uuid4().hex
    (root / "data").mkdir(parents=True)
    s3_config = root / "s3.json"
    identity = {"name": access_key, "actions": ["Admin", "Read", "List", "Tagging", "Write"],
                "credentials": [{"accessKey": access_key, "secretKey": secret_key}]}  # fmt: skip
    s3_config.write_text(json.dumps({"identities": [identity]}))
    s3_config.chmod(0o600)
    names = ["master", "master.grpc", "volume", "volume.grpc", "filer", "filer.grpc", "s3",
             "s3.grpc"]  # fmt: skip
    # Ports free on this side's loopback are free in the new namespace too, and weed names a
    # unix socket in /tmp after each gRPC port: these cannot clash with a loopback weed's.
    ports = dict(zip(names, _free_loopback_ports(len(names)), strict=True))
    command = [
        weed_binary(), "server", f"-dir={root / 'data'}", f"-ip={host}", f"-ip.bind={host}",
        f"-master.port={ports['master']}", f"-master.port.grpc={ports['master.grpc']}",
        "-master.volumeSizeLimitMB=64",
        f"-volume.port={ports['volume']}", f"-volume.port.grpc={ports['volume.grpc']}",
        "-volume.max=0", "-volume.preStopSeconds=0",
        "-filer", f"-filer.port={ports['filer']}", f"-filer.port.grpc={ports['filer.grpc']}",
        f"-filer.localSocket={sockets / 'filer.sock'}",
        "-s3", f"-s3.port={ports['s3']}", f"-s3.port.grpc={ports['s3.grpc']}",
        f"-s3.ip.bind={host}", f"-s3.localSocket={sockets / 's3.sock'}",
        "-s3.port.iceberg=0", "-s3.port.lance=0", "-s3.iam=false", f"-s3.config={s3_config}",
    ]  # fmt: skip
    with open(root / "weed.log", "wb") as log:
        process = subprocess.Popen(
            ["ip", "netns", "exec", link.ns, *command], cwd=root,
            env={k: v for k, v in os.environ.items() if not k.startswith("AWS_")},
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    server = SeaweedFS(root, process, f"http://{host}:{ports['s3']}", access_key, secret_key,
                       command, master=f"http://{host}:{ports['master']}", ports=ports)  # fmt: skip
    try:
        _wait_until_s3_answers(server)
    except BaseException as e:
        tail = server.log_tail()
        server.stop()
        raise RuntimeError(f"SeaweedFS did not start in {link.ns}: {e}\n{tail}") from e
    return server


def _free_loopback_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _wait_until_s3_answers(server: Any) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    last: Exception | None = None
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"weed exited with status {server.process.returncode}")
        try:
            bucket = server.new_bucket()  # needs master, volume and filer, not just the gateway
            client = server.client()
            client.put_object(Bucket=bucket, Key="probe", Body=b"ok")
            client.delete_object(Bucket=bucket, Key="probe")
            client.delete_bucket(Bucket=bucket)
            return
        except Exception as e:  # not up yet: connection refused, 5xx, no writable volume
            last = e
            time.sleep(0.2)
    raise TimeoutError(f"S3 at {server.endpoint} not ready after {START_TIMEOUT_S:.0f} s: {last}")


@contextlib.contextmanager
def rate_limited_seaweedfs(rate: str, workdir: Path | None = None) -> Iterator[Link]:
    """A SeaweedFS in a namespace of its own, reached through a link of `rate` each way."""
    root = Path(tempfile.mkdtemp(prefix="modelfs-seaweed-link-", dir=workdir))
    sockets = Path(tempfile.mkdtemp(prefix="mfsbench-"))
    try:
        with rate_limited_link(rate) as link:
            link.server = start_seaweedfs_in(link, root, sockets)
            try:
                yield link
            finally:
                link.server.stop()  # also removes root
    finally:
        shutil.rmtree(root, ignore_errors=True)
        shutil.rmtree(sockets, ignore_errors=True)


if __name__ == "__main__":  # a check by hand: python scripts/netlink.py 1gbit [MB]
    rate = sys.argv[1] if len(sys.argv) > 1 else "1gbit"
    mb = int(sys.argv[2]) if len(sys.argv) > 2 else 256
    with rate_limited_seaweedfs(rate) as link:
        print(json.dumps({**link.describe(), **link.probe(mb << 20)}, indent=2))

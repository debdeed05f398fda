"""A loopback TCP proxy in front of a real server, to cut the network on demand.

Tests point a mount (or a client) at the proxy instead of SeaweedFS, then call
`down()`: open connections are reset and new ones are reset as soon as they
are accepted, as when a server dies or a link drops. `up()` heals it. Bytes
pass through untouched, so S3 request signatures (which cover the Host
header) stay valid; nothing about S3 is imitated.

With `latency` (seconds), each chunk is delivered that long after it was
received, in each direction (a round trip costs 2 * latency): a long pipe of
ample bandwidth, not a throttle. Each direction has a reader thread that
stamps chunks into a queue and a writer thread that sends each when its time
comes, so chunks in flight overlap instead of waiting for one another. The
queue is unbounded (the ends here read all they are sent); a new connection's
handshake is not delayed, only what flows on it.
"""

from __future__ import annotations

import queue
import socket
import struct
import threading
import time
from urllib.parse import urlparse

HOST = "127.0.0.1"


def _reset(sock: socket.socket) -> None:
    """Close with a TCP reset, not a clean FIN: the peer sees 'connection reset'."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        # Wakes a thread blocked reading it (close alone would not), and the peer at once.
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()


class FaultProxy:
    def __init__(self, upstream_url: str, latency: float = 0.0) -> None:
        if latency < 0:
            raise ValueError(f"latency must not be negative: {latency}")
        self.latency = latency
        parsed = urlparse(upstream_url)
        self.upstream = (parsed.hostname or HOST, parsed.port or 80)
        self._listener = socket.create_server((HOST, 0))
        self.port = self._listener.getsockname()[1]
        self.endpoint = f"{parsed.scheme}://{HOST}:{self.port}"
        self._down = threading.Event()
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self._closed = False
        self.connections = 0
        self._thread = threading.Thread(target=self._accept_loop, daemon=True)
        self._thread.start()

    @property
    def is_down(self) -> bool:
        return self._down.is_set()

    def down(self) -> None:
        """Cut the link: reset every open connection and every new one."""
        self._down.set()
        with self._lock:
            socks, self._open = list(self._open), set()
        for s in socks:
            _reset(s)

    def up(self) -> None:
        self._down.clear()

    def close(self) -> None:
        self._closed = True
        self.down()
        try:
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept()
        except OSError:
            pass
        self._listener.close()
        self._thread.join(timeout=5)

    def __enter__(self) -> FaultProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _accept_loop(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # closed
            if self._down.is_set():
                _reset(client)
                continue
            try:
                server = socket.create_connection(self.upstream, timeout=5)
                server.settimeout(None)
            except OSError:
                _reset(client)
                continue
            with self._lock:
                self.connections += 1
                self._open.update((client, server))
            pump = self._pump_delayed if self.latency else self._pump
            for src, dst in ((client, server), (server, client)):
                threading.Thread(target=pump, args=(src, dst), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while chunk := src.recv(1 << 16):
                dst.sendall(chunk)
        except OSError:
            pass
        finally:
            self._finish(src, dst)

    def _pump_delayed(self, src: socket.socket, dst: socket.socket) -> None:
        """The reader of one direction: stamp each chunk with its delivery time."""
        q: queue.SimpleQueue[tuple[float, bytes]] = queue.SimpleQueue()
        threading.Thread(target=self._deliver, args=(q, src, dst), daemon=True).start()
        try:
            while chunk := src.recv(1 << 16):
                q.put((time.monotonic() + self.latency, chunk))
        except OSError:
            pass
        q.put((time.monotonic() + self.latency, b""))  # the end (EOF or error) comes late too

    def _deliver(
        self, q: queue.SimpleQueue[tuple[float, bytes]], src: socket.socket, dst: socket.socket
    ) -> None:
        """The writer of one direction: send each chunk when its time comes, in order."""
        try:
            while True:
                due, chunk = q.get()
                if (wait := due - time.monotonic()) > 0:
                    time.sleep(wait)
                if not chunk:
                    break
                dst.sendall(chunk)
        except OSError:
            pass
        finally:
            self._finish(src, dst)  # wakes this direction's reader if it still waits

    def _finish(self, src: socket.socket, dst: socket.socket) -> None:
        """End a connection from one direction: both sockets shut, src closed."""
        with self._lock:
            self._open.discard(src)
            self._open.discard(dst)
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        src.close()  # each socket is the source of exactly one direction

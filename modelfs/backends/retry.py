"""Retries, in one place: a Backend wrapper that retries temporary failures.

A call that fails with BackendError(temporary=True) (throttling, 5xx, a
dropped connection) is tried again after an exponentially growing, fully
jittered delay, until it succeeds or `max_elapsed` seconds have passed since
the first try; then the last error is raised, saying how long it was tried.
Every other error (missing key, lost compare-and-swap, refused credentials)
is raised at once. Backends themselves never retry (the S3 backend turns
botocore's own retries off), so this is the only place that waits.

Once a call has failed for the whole bound, the store counts as unavailable:
later calls get one try each and fail at once, instead of every queued
request waiting out the bound again (a mount's reads return EIO promptly).
The first success clears it.

Caveats:
- A conditional put whose success reply was lost is retried and then reports
  that the blob exists (or changed). For content-addressed objects that is
  success; for a ref it makes the writer append its version again, so a
  version may appear twice in a history, never go missing.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Iterator
from typing import TypeVar

from ..errors import BackendError
from .base import Backend, BlobInfo, ByteRange, Data

log = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_MAX_ELAPSED = 60.0


class RetryingBackend(Backend):
    def __init__(
        self,
        inner: Backend,
        *,
        max_elapsed: float = DEFAULT_MAX_ELAPSED,
        base_delay: float = 0.1,
        max_delay: float = 5.0,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.inner = inner
        self.url = inner.url
        self.max_elapsed = max_elapsed
        self.base_delay = base_delay
        self.max_delay = max_delay
        self._sleep = sleep
        self._clock = clock
        self.retries = 0  # temporary failures retried, for stats
        self._unavailable_since: float | None = None
        self._state_lock = threading.Lock()

    @property
    def time_resolution(self) -> float:
        return self.inner.time_resolution

    @property
    def max_key_bytes(self) -> int | None:
        return self.inner.max_key_bytes

    @property
    def key_limit_reason(self) -> str:
        return self.inner.key_limit_reason

    @property
    def unavailable(self) -> bool:
        """Whether a call has failed for the whole bound and none has succeeded since."""
        return self._unavailable_since is not None

    def _call(self, what: str, key: str, fn: Callable[[], T]) -> T:
        started = self._clock()
        attempt = 0
        while True:
            try:
                result = fn()
            except BackendError as e:
                if not e.temporary:
                    raise
                attempt += 1
                elapsed = self._clock() - started
                since = self._unavailable_since
                if since is not None:
                    raise BackendError(
                        f"{what} {key!r} failed: the store has not answered for "
                        f"{self._clock() - since + self.max_elapsed:.0f} s: {e}",
                        temporary=True,
                    ) from e
                delay = random.uniform(0, min(self.max_delay, self.base_delay * 2**attempt))
                if elapsed + delay > self.max_elapsed:
                    self._set_unavailable(e)
                    raise BackendError(
                        f"{what} {key!r} failed for {elapsed:.1f} s ({attempt} tries): {e}",
                        temporary=True,
                    ) from e
                self.retries += 1
                log.info("%s %r failed (%s); retry %d in %.2f s", what, key, e, attempt, delay)
                self._sleep(delay)
            else:
                if self._unavailable_since is not None:
                    self._set_available()
                return result

    def _set_unavailable(self, error: BackendError) -> None:
        with self._state_lock:
            if self._unavailable_since is None:
                self._unavailable_since = self._clock()
                log.warning(
                    "%s has not answered for %.0f s (%s); failing requests until it answers",
                    self.url, self.max_elapsed, error,
                )  # fmt: skip

    def _set_available(self) -> None:
        with self._state_lock:
            if self._unavailable_since is not None:
                self._unavailable_since = None
                log.warning("%s answers again", self.url)

    def get(self, key: str, byte_range: ByteRange | None = None) -> bytes:
        return self._call("get", key, lambda: self.inner.get(key, byte_range))

    def get_with_etag(self, key: str) -> tuple[bytes, str]:
        return self._call("get", key, lambda: self.inner.get_with_etag(key))

    def head(self, key: str) -> BlobInfo:
        return self._call("head", key, lambda: self.inner.head(key))

    def put(self, key: str, data: Data) -> str:
        return self._call("put", key, lambda: self.inner.put(key, data))

    def put_if_absent(self, key: str, data: Data) -> str:
        return self._call("put", key, lambda: self.inner.put_if_absent(key, data))

    def put_if_match(self, key: str, data: Data, etag: str) -> str:
        return self._call("put", key, lambda: self.inner.put_if_match(key, data, etag))

    def list(self, prefix: str = "") -> Iterator[str]:
        return iter(self._call("list", prefix, lambda: list(self.inner.list(prefix))))

    def list_info(self, prefix: str = "") -> Iterator[BlobInfo]:
        return iter(self._call("list", prefix, lambda: list(self.inner.list_info(prefix))))

    def delete(self, key: str) -> None:
        self._call("delete", key, lambda: self.inner.delete(key))

    def request_counts(self) -> dict[str, int]:
        return self.inner.request_counts()

    def close(self) -> None:
        self.inner.close()

"""The retry wrapper: temporary failures are waited out within a bound, others raised at once.

The flaky backend below is a MemoryBackend that fails on purpose: the layer
under test is the wrapper, not storage (the S3 backend itself is tested
against SeaweedFS in test_s3.py and test_backends.py).
"""

from __future__ import annotations

import pytest

from modelfs.backends import MemoryBackend, RetryingBackend
from modelfs.errors import BackendError, ConflictError, NotFoundError


class FlakyBackend(MemoryBackend):
    """Fails the next `failures` calls of get/put with the given error."""

    def __init__(self, failures: int, error: BackendError) -> None:
        super().__init__()
        self.failures = failures
        self.error = error
        self.calls = 0

    def _maybe_fail(self) -> None:
        self.calls += 1
        if self.failures > 0:
            self.failures -= 1
            raise self.error

    def get(self, key, byte_range=None):
        self._maybe_fail()
        return super().get(key, byte_range)

    def put(self, key, data):
        self._maybe_fail()
        return super().put(key, data)


def no_sleep(_: float) -> None:
    pass


def test_temporary_failures_are_retried_until_the_call_succeeds() -> None:
    inner = FlakyBackend(3, BackendError("503 SlowDown", temporary=True))
    backend = RetryingBackend(inner, sleep=no_sleep)
    backend.put("k", b"v")
    assert backend.get("k") == b"v"
    assert inner.calls == 5 and backend.retries == 3


def test_permanent_failures_and_missing_keys_are_not_retried() -> None:
    inner = FlakyBackend(1, BackendError("403 AccessDenied", temporary=False))
    backend = RetryingBackend(inner, sleep=no_sleep)
    with pytest.raises(BackendError, match="AccessDenied"):
        backend.put("k", b"v")
    assert inner.calls == 1
    with pytest.raises(NotFoundError):
        backend.get("missing")
    assert inner.calls == 2 and backend.retries == 0


def test_a_lost_compare_and_swap_is_not_retried() -> None:
    backend = RetryingBackend(MemoryBackend(), sleep=no_sleep)
    backend.put("ref", b"1")
    with pytest.raises(ConflictError):
        backend.put_if_match("ref", b"2", "stale-etag")
    assert backend.get("ref") == b"1" and backend.retries == 0


def test_retrying_stops_within_the_time_bound_with_a_clear_error(expect_warnings) -> None:
    expect_warnings("has not answered")
    slept: list[float] = []
    inner = FlakyBackend(10**9, BackendError("connection refused", temporary=True))
    backend = RetryingBackend(inner, max_elapsed=2.0, sleep=slept.append, clock=lambda: sum(slept))
    with pytest.raises(
        BackendError, match=r"failed for .* s \(\d+ tries\): connection refused"
    ) as e:
        backend.get("k")
    assert e.value.temporary
    # Backoff grows and is jittered, but never sleeps past the bound in all.
    assert sum(slept) <= 2.0 and len(slept) >= 1
    assert all(0 <= d <= 5.0 for d in slept)


def test_once_the_bound_is_spent_calls_fail_fast_until_the_store_answers(expect_warnings) -> None:
    expect_warnings("has not answered", "answers again")
    slept: list[float] = []
    inner = FlakyBackend(10**9, BackendError("connection refused", temporary=True))
    backend = RetryingBackend(inner, max_elapsed=2.0, sleep=slept.append, clock=lambda: sum(slept))
    with pytest.raises(BackendError):
        backend.get("k")
    assert backend.unavailable
    waited, calls = sum(slept), inner.calls
    # Queued reads do not each wait out the bound again: one try, then EIO.
    for _ in range(5):
        with pytest.raises(BackendError, match="has not answered for"):
            backend.get("k")
    assert sum(slept) == waited and inner.calls == calls + 5
    # The store comes back: the next call succeeds and normal retrying resumes.
    inner.failures = 0
    MemoryBackend.put(inner, "k", b"v")
    assert backend.get("k") == b"v" and not backend.unavailable
    inner.failures = 2
    assert backend.get("k") == b"v" and inner.calls == calls + 5 + 1 + 3


class UnconditionalBackend(MemoryBackend):
    """A server that ignores If-None-Match and If-Match, as some S3 look-alikes do."""

    def put_if_absent(self, key, data):
        return self.put(key, data)

    def put_if_match(self, key, data, etag):
        return self.put(key, data)


def test_a_server_that_ignores_conditional_writes_is_refused_at_init() -> None:
    from modelfs.errors import ModelfsError
    from modelfs.store import Store

    backend = UnconditionalBackend()
    with pytest.raises(ModelfsError, match="ignores conditional writes"):
        Store.create(backend)
    assert list(backend.list()) == []  # no store, no probe left behind
    Store.create(backend, unsafe_single_writer=True)
    assert list(backend.list()) == ["config"]

"""Compare-and-swap of one mutable object: the only way refs and name records change.

update() reads the object with its etag, asks `change` for the new body, and
writes it with put_if_absent (no object yet) or put_if_match (the etag read).
A writer that loses the race reads again and asks again, so concurrent
changes all land, one after the other, and none is lost; one that keeps
losing gives up with ConflictError (EAGAIN), leaving the object as it was.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable

from ..backends.base import Backend
from ..errors import AlreadyExistsError, ConflictError, NotFoundError

log = logging.getLogger(__name__)

ATTEMPTS = 50


class DeadlinePassed(ConflictError):
    """A write that makes new references would start after the writer's commit window:
    what it checked about collections may be stale (see condemned.py)."""


def update(
    backend: Backend,
    key: str,
    change: Callable[[bytes | None], bytes | None],
    action: str,
    *,
    deadline: float | None = None,
) -> None:
    """Replace the object at key by change(current bytes, None if absent); a change that
    returns None writes nothing. `action` says what the change does, for log lines and
    errors: "publish a version of bert/model.safetensors". deadline (time.monotonic()):
    no write is sent after it (DeadlinePassed); the caller checks again and retries."""
    limit = backend.max_key_bytes
    for attempt in range(1, ATTEMPTS + 1):
        try:
            if limit is not None and len(key) > limit:
                raise NotFoundError(key)  # none can be there; asking is an error on some backends
            data, etag = backend.get_with_etag(key)
        except NotFoundError:
            data, etag = None, ""
        body = change(data)
        if body is None:
            return
        if deadline is not None and time.monotonic() > deadline:
            raise DeadlinePassed(f"could not {action} within the store's commit window")
        try:
            if data is None:
                backend.put_if_absent(key, body)
            else:
                backend.put_if_match(key, body, etag)
            return
        except (ConflictError, AlreadyExistsError):
            log.info("could not %s: changed under us (attempt %d); retrying", action, attempt)
            if attempt < ATTEMPTS:
                time.sleep(random.uniform(0, min(1.0, 0.01 * 2 ** (attempt - 1))))
    raise ConflictError(
        f"could not {action}: {key} changed under us {ATTEMPTS} times in a row "
        "(other writers are changing it); try again"
    )

"""The FUSE boundary: every error becomes an errno here, and only here.

Handlers raise ModelfsError subclasses (each names its errno) or FUSEError;
anything else is a bug, logged with its traceback and answered with EIO, so
the kernel always gets an answer and the daemon never dies of one request.
"""

from __future__ import annotations

import errno
import functools
import inspect
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import pyfuse3

from ..errors import ModelfsError

log = logging.getLogger(__name__)

T = TypeVar("T")


def to_fuse_errors(fn: Callable[..., Awaitable[T]]) -> Callable[..., Awaitable[T]]:
    @functools.wraps(fn)
    async def wrapper(*args: Any, **kwargs: Any) -> T:
        try:
            return await fn(*args, **kwargs)
        except pyfuse3.FUSEError:
            raise
        except ModelfsError as e:
            if e.errno == errno.EIO:
                log.error("%s: %s", fn.__name__, e)
            elif e.errno == errno.ENOENT:
                log.debug("%s: %s (ENOENT)", fn.__name__, e)
            else:  # a refusal: say why once, in words, not only the errno
                log.info(
                    "%s refused: %s (%s)", fn.__name__, e, errno.errorcode.get(e.errno, e.errno)
                )
            raise pyfuse3.FUSEError(e.errno) from None
        except OSError as e:  # local staging files: disk full, I/O error
            log.error("%s: %s", fn.__name__, e)
            raise pyfuse3.FUSEError(e.errno or errno.EIO) from None
        except Exception:
            log.exception("%s failed unexpectedly", fn.__name__)
            raise pyfuse3.FUSEError(errno.EIO) from None

    return wrapper


def fuse_error_boundary(cls: type) -> type:
    """Wrap every request handler that the class defines itself."""
    for name, member in list(vars(cls).items()):
        if inspect.iscoroutinefunction(member) and not name.startswith("_"):
            setattr(cls, name, to_fuse_errors(member))
    return cls

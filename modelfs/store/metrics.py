"""Metrics: typed values (numbers and strings) recorded for a version.

A metric name is what a where-clause can name bare (query.py's NAME): a letter
or '_', then letters, digits, '_', '.', '-'; at most 128 characters, and none
of the fields every version has (version, time, size, path, content_hash,
message), which selection puts beside the metrics. A value is a finite int or
float (JSON has no NaN or infinity; bool is refused, it is not a measurement)
or a string of at most 1,024 bytes of UTF-8.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping

from ..errors import InvalidArgumentError

Value = int | float | str
Metrics = Mapping[str, Value]

BUILTIN_FIELDS = ("path", "version", "time", "size", "content_hash", "message")
NAME_MAX = 128
VALUE_MAX = 1024
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-]*")
_NUMBER = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_QUERY_KEYWORDS = frozenset({"and", "or", "not", "in", "has"})
_NON_FINITE = frozenset({"nan", "inf", "infinity"})


def check_name(name: object) -> str:
    if not isinstance(name, str) or not _NAME.fullmatch(name) or len(name) > NAME_MAX:
        raise InvalidArgumentError(
            f"metric name {name!r} is not allowed: use a letter or '_', then letters, digits, "
            f"'_', '.' or '-', at most {NAME_MAX} characters (e.g. accuracy, eval.f1)"
        )
    if name in BUILTIN_FIELDS or name in _QUERY_KEYWORDS:
        raise InvalidArgumentError(
            f"metric name {name!r} is reserved: every version has a {name} field"
            if name in BUILTIN_FIELDS
            else f"metric name {name!r} is reserved: it is a where-clause keyword"
        )
    return name


def check_value(name: str, value: object) -> Value:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise InvalidArgumentError(f"metric {name}: {value!r} is not a number or a string")
    if isinstance(value, float) and not math.isfinite(value):
        raise InvalidArgumentError(f"metric {name}: {value!r} is not a finite number")
    if isinstance(value, str) and len(value.encode("utf-8", "surrogatepass")) > VALUE_MAX:
        raise InvalidArgumentError(f"metric {name}: a string value is at most {VALUE_MAX} bytes")
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidArgumentError(f"metric {name}: its value is not valid text") from None
    return value


def check_metrics(metrics: Mapping[str, object] | None) -> dict[str, Value]:
    """The metrics, checked; InvalidArgumentError naming the first that is not allowed."""
    if not metrics:
        return {}
    if not isinstance(metrics, Mapping):
        raise InvalidArgumentError("metrics must be a mapping of names to numbers or strings")
    return {check_name(k): check_value(k, v) for k, v in metrics.items()}


def parse_value(text: str) -> Value:
    """A value given as text (CLI, xattr): a number if it reads as one, else the string."""
    if _NUMBER.fullmatch(text.strip()):
        t = text.strip()
        number = float(t) if any(c in t for c in ".eE") else int(t)
        if isinstance(number, float) and not math.isfinite(number):
            return text
        return number
    return text


def parse_assignment(text: str) -> tuple[str, Value]:
    """NAME=VALUE from the command line, checked."""
    name, sep, value = text.partition("=")
    if not sep:
        raise InvalidArgumentError(f"metric {text!r} is not NAME=VALUE (e.g. accuracy=0.913)")
    name = check_name(name.strip())
    t = value.strip().lower().lstrip("+-")
    if t in _NON_FINITE or (_NUMBER.fullmatch(t) and isinstance(parse_value(t), str)):
        # Meant as a number, but not a finite one: refused rather than kept as a string.
        raise InvalidArgumentError(f"metric {name}: {value!r} is not a finite number")
    return name, check_value(name, parse_value(value))


def format_value(value: Value) -> str:
    return value if isinstance(value, str) else repr(value)

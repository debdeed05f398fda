"""File paths inside a store, and the ref keys they map to.

A stored path is relative, '/'-separated, with no empty, '.' or '..'
components, no NUL, each name at most 255 bytes (NAME_MAX) and the whole at
most 1024 bytes (PATH_MAX of object keys). Ref keys percent-encode each name
so that any name is a safe blob key; a file's ref key ends in '~', which never
appears unescaped in an encoded name, so a file's key can never be a prefix
directory of another path's key. A directory made empty on purpose (mkdir)
is marked by the key "refs/<encoded dir>/~".
"""

from __future__ import annotations

from urllib.parse import quote, unquote

from ..errors import InvalidPathError, NameTooLongError

NAME_MAX = 255
PATH_MAX = 1024
REFS_PREFIX = "refs/"
# A lone "~" name: encoded names are never empty, so no file's key ends in "/~".
DIR_MARKER = "~"
_SAFE = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-"


def normalize_path(path: str) -> str:
    """The canonical form of a stored path; InvalidPathError names what is wrong."""
    if not isinstance(path, str):
        raise InvalidPathError(f"path must be a string, not {type(path).__name__}")
    if "\0" in path:
        raise InvalidPathError(f"path {path!r} contains a NUL byte")
    try:
        path.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        raise InvalidPathError(f"path {path!r} is not valid Unicode (a lone surrogate)") from None
    parts = [p for p in path.strip("/").split("/")]
    if parts == [""]:
        raise InvalidPathError("empty path")
    for part in parts:
        if part == "":
            raise InvalidPathError(f"path {path!r} has an empty component")
        if part in (".", ".."):
            raise InvalidPathError(f"path {path!r} contains {part!r}")
        if len(part.encode("utf-8", "surrogateescape")) > NAME_MAX:
            raise NameTooLongError(f"name {part[:40]!r}... is longer than {NAME_MAX} bytes")
    norm = "/".join(parts)
    if len(norm.encode("utf-8", "surrogateescape")) > PATH_MAX:
        raise NameTooLongError(f"path {norm[:60]!r}... is longer than {PATH_MAX} bytes")
    return norm


def normalize_prefix(prefix: str) -> str:
    """A directory prefix for listing: '' for the root, else a normalized path."""
    return "" if prefix.strip("/") == "" else normalize_path(prefix)


def _encode_name(name: str) -> str:
    # '.' is escaped too, so no encoded name starts with '.' (backends reject that),
    # and '~' so that it only ever ends a file's key. quote() never escapes "_.-~"
    # whatever `safe` says, hence the replaces; its output has no other '.' or '~'.
    encoded = quote(name.encode("utf-8", "surrogateescape"), safe=_SAFE)
    return encoded.replace(".", "%2E").replace("~", "%7E")


def ref_key(path: str) -> str:
    names = [_encode_name(p) for p in normalize_path(path).split("/")]
    names[-1] += "~"
    for name in names:
        # Local directories cap a name at 255 bytes; escaping can triple a name's length.
        if len(name) > NAME_MAX:
            raise NameTooLongError(f"name {unquote(name)[:40]!r}... is too long once escaped")
    key = REFS_PREFIX + "/".join(names)
    if len(key) > PATH_MAX:
        raise NameTooLongError(f"path {path[:60]!r}... is too long once escaped")
    return key


def dir_ref_prefix(prefix: str) -> str:
    norm = normalize_prefix(prefix)
    if not norm:
        return REFS_PREFIX
    return REFS_PREFIX + "/".join(_encode_name(p) for p in norm.split("/")) + "/"


def dir_marker_key(path: str) -> str:
    """The key whose presence makes a directory exist although no file is in it (mkdir)."""
    return dir_ref_prefix(normalize_path(path)) + DIR_MARKER


def is_dir_marker_key(key: str) -> bool:
    return key.startswith(REFS_PREFIX) and key.endswith("/" + DIR_MARKER)


def path_from_ref_key(key: str) -> str:
    if not key.startswith(REFS_PREFIX) or not key.endswith("~") or is_dir_marker_key(key):
        raise InvalidPathError(f"{key!r} is not a file's ref key")
    encoded = key[len(REFS_PREFIX) : -1]
    return "/".join(unquote(p, errors="surrogateescape") for p in encoded.split("/"))


def path_from_dir_marker_key(key: str) -> str:
    if not is_dir_marker_key(key):
        raise InvalidPathError(f"{key!r} is not a directory marker key")
    encoded = key[len(REFS_PREFIX) : -len(DIR_MARKER) - 1]
    return "/".join(unquote(p, errors="surrogateescape") for p in encoded.split("/"))

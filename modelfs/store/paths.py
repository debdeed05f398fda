"""File paths inside a store, and the ref keys they map to.

A stored path is relative, '/'-separated, with no empty, '.' or '..'
components, no NUL, each name at most 255 bytes (NAME_MAX) and the whole at
most 1024 bytes. Ref keys percent-encode each name so that any name is a safe
blob key; a file's ref key ends in '~', which never appears unescaped in an
encoded name, so a file's key can never be a prefix directory of another
path's key. A directory made empty on purpose (mkdir) is marked by the key
"refs/<encoded dir>/~", whose body holds the directory's path.

A key component must fit in 255 bytes (the local backend makes each one a
file or directory name). A name whose encoded component would not fit is
shortened: the start of its encoding, '.', and the BLAKE3-256 of the name's
bytes. The shortened form depends on the name alone, so a directory has one
key prefix whatever lies under it; as '.' is always escaped in an encoded
name, shortened components never equal ordinary ones. They cannot be decoded:
the path of such a key is read from the ref (or marker) stored there, and a
reader checks that it maps back to that key.

A key's whole length is not bounded here: that limit is the backend's
(Backend.max_key_bytes), and the store checks it before it creates a key
(Store.check_new_path).
"""

from __future__ import annotations

from urllib.parse import quote, unquote

import blake3

from ..errors import FormatError, InvalidPathError, NameTooLongError
from .format import canonical_json, parse_json

NAME_MAX = 255
PATH_MAX = 1024
COMPONENT_MAX = 255  # bytes of one key component, with the '~' that ends a file's key
# Of a shortened component, the encoded name's first bytes kept to be read by people.
# 120 lets a shortened name sit under three unshortened 255-byte directory names in at
# most 5 + 3 * 256 + (120 + 1 + 64) + 2 = 960 bytes (a marker's key): within S3's 1,024
# under a prefix of up to 64 bytes. Part of the format: changing it would change keys.
SHORT_PREFIX = 120
REFS_PREFIX = "refs/"
META_PREFIX = "meta/"  # as long as REFS_PREFIX: a path whose ref fits has a names key that fits
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
        size = len(part.encode("utf-8", "surrogateescape"))
        if size > NAME_MAX:
            raise NameTooLongError(
                f"name {part[:40]!r}... is too long: {size} bytes, longer than {NAME_MAX} bytes"
            )
    norm = "/".join(parts)
    size = len(norm.encode("utf-8", "surrogateescape"))
    if size > PATH_MAX:
        raise NameTooLongError(
            f"path {norm[:60]!r}... is too long: {size} bytes, longer than {PATH_MAX} bytes"
        )
    return norm


def live_address(path: str) -> str:
    """The address (store/addresses.py) of a stored path as it is now, taken literally:
    each name holding an '@' gets an explicit @latest, so no part of it reads as a
    selector."""
    return "/".join(p + "@latest" if "@" in p else p for p in path.split("/"))


def version_address(path: str, selector: object) -> str:
    """The address of one version (a number, a name, blake3:<hex>) of a stored path,
    whatever '@'s its names hold: `odd@dir/m.bin` version 3 is `odd@dir@latest/m.bin@3`."""
    parent, _, base = path.rpartition("/")
    return (live_address(parent) + "/" if parent else "") + f"{base}@{selector}"


def normalize_prefix(prefix: str) -> str:
    """A directory prefix for listing: '' for the root, else a normalized path."""
    return "" if prefix.strip("/") == "" else normalize_path(prefix)


def _encode_name(name: str, *, is_file: bool) -> str:
    """The key component of a name, without the '~' a file's gets."""
    raw = name.encode("utf-8", "surrogateescape")
    # '.' is escaped too, so no encoded name starts with '.' (backends reject that)
    # and shortened forms stand apart, and '~' so that it only ever ends a file's
    # key. quote() never escapes "_.-~" whatever `safe` says, hence the replaces.
    encoded = quote(raw, safe=_SAFE).replace(".", "%2E").replace("~", "%7E")
    if len(encoded) + (1 if is_file else 0) <= COMPONENT_MAX:
        return encoded  # as version 1 wrote it
    cut = SHORT_PREFIX
    if "%" in encoded[cut - 2 : cut]:  # never split an escape
        cut = encoded.rindex("%", cut - 2, cut)
    return f"{encoded[:cut]}.{blake3.blake3(raw).hexdigest()}"


def _encode_path(norm: str, *, is_file: bool) -> str:
    names = norm.split("/")
    last = len(names) - 1
    return "/".join(_encode_name(n, is_file=is_file and i == last) for i, n in enumerate(names))


def ref_key(path: str) -> str:
    """The key of path's ref (whether the backend can hold a key that long is the store's
    check: Store.check_new_path)."""
    return REFS_PREFIX + _encode_path(normalize_path(path), is_file=True) + "~"


def dir_ref_prefix(prefix: str) -> str:
    """The key prefix of everything under a directory ('' for the root)."""
    norm = normalize_prefix(prefix)
    if not norm:
        return REFS_PREFIX
    return REFS_PREFIX + _encode_path(norm, is_file=False) + "/"


def dir_marker_key(path: str) -> str:
    """The key whose presence makes a directory exist although no file is in it (mkdir)."""
    return dir_ref_prefix(normalize_path(path)) + DIR_MARKER


def names_key(path: str, *, is_dir: bool) -> str:
    """The key of a path's names record (tags, aliases, metrics; a directory's snapshots):
    under meta/ exactly as its ref (a file) or its marker (a directory) is under refs/."""
    if is_dir:
        return META_PREFIX + _encode_path(normalize_path(path), is_file=False) + "/" + DIR_MARKER
    return META_PREFIX + _encode_path(normalize_path(path), is_file=True) + "~"


def names_prefix(prefix: str) -> str:
    """The key prefix of the names records of everything under a directory."""
    norm = normalize_prefix(prefix)
    return META_PREFIX + _encode_path(norm, is_file=False) + "/" if norm else META_PREFIX


def is_dir_marker_key(key: str) -> bool:
    return key.startswith(REFS_PREFIX) and key.endswith("/" + DIR_MARKER)


def is_file_ref_key(key: str) -> bool:
    return key.startswith(REFS_PREFIX) and key.endswith("~") and not is_dir_marker_key(key)


def is_shortened_key(key: str) -> bool:
    """Whether a ref or marker key has a shortened component (needs format version 2)."""
    return "." in key[len(REFS_PREFIX) :] if key.startswith(REFS_PREFIX) else False


def _decode(encoded: str, key: str) -> str:
    if "." in encoded:
        raise InvalidPathError(f"{key!r} holds a shortened name: its path is in the object")
    return "/".join(unquote(p, errors="surrogateescape") for p in encoded.split("/"))


def path_from_ref_key(key: str) -> str:
    """The path of a file's ref key; InvalidPathError for a shortened key (read the ref)."""
    if not is_file_ref_key(key):
        raise InvalidPathError(f"{key!r} is not a file's ref key")
    return _decode(key[len(REFS_PREFIX) : -1], key)


def path_from_dir_marker_key(key: str) -> str:
    """The path of a marker key; InvalidPathError for a shortened key (read the marker)."""
    if not is_dir_marker_key(key):
        raise InvalidPathError(f"{key!r} is not a directory marker key")
    return _decode(key[len(REFS_PREFIX) : -len(DIR_MARKER) - 1], key)


def describe_key(key: str) -> str:
    """A path to name a ref or marker by in messages: decoded where it can be, else the key."""
    try:
        if is_dir_marker_key(key):
            return path_from_dir_marker_key(key)
        return path_from_ref_key(key)
    except InvalidPathError:
        return key


def path_stored_at(doc_path: object, key: str, what: str, *, marker: bool = False) -> str:
    """The path a ref or marker names, checked to map back to the key it was read from."""
    try:
        if not isinstance(doc_path, str) or normalize_path(doc_path) != doc_path:
            raise InvalidPathError(f"{doc_path!r} is not a normalized path")
        expected = (dir_marker_key if marker else ref_key)(doc_path)
    except InvalidPathError as e:
        raise FormatError(f"{what} names an invalid path: {e}") from None
    if expected != key:
        raise FormatError(f"{what} names {doc_path!r}, whose key is not {key!r}")
    return doc_path


def marker_body(path: str) -> bytes:
    """What a directory marker holds: the directory's path (version-1 markers hold {})."""
    return canonical_json({"path": normalize_path(path)})


def marker_path(key: str, data: bytes) -> str:
    """The directory a marker marks: from its body, or from its key for a version-1 '{}'."""
    what = f"directory marker {describe_key(key)}"
    doc = parse_json(data, what)
    if not isinstance(doc, dict):
        raise FormatError(f"{what} is not a JSON object")
    if "path" in doc:
        return path_stored_at(doc["path"], key, what, marker=True)
    try:
        return path_from_dir_marker_key(key)
    except InvalidPathError:
        raise FormatError(f"{what} holds no path and its key has a shortened name") from None

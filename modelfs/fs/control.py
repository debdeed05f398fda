"""The `.modelfs/` directory of a mount: files that show the mount itself.

`.modelfs/stats` holds the mount's figures as JSON (cache hit rate, bytes
fetched and served, commits, errors, store requests), made afresh at each
open. The directory cannot be written, renamed or removed.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass

CONTROL_DIR = ".modelfs"
STATS_FILE = ".modelfs/stats"


def is_control(path: str) -> bool:
    """Whether path is the control directory or inside it."""
    return path.split("/")[0] == CONTROL_DIR


@dataclass
class VirtualHandle:
    """An open control file: its bytes as of the open."""

    data: bytes


class Control:
    def __init__(self, stats: Callable[[], dict[str, object]]) -> None:
        self._stats = stats

    def entries(self) -> list[tuple[str, str]]:
        """(name, path) of each file in the control directory."""
        return [("stats", STATS_FILE)]

    def content(self, path: str) -> bytes:
        if path != STATS_FILE:
            raise KeyError(path)
        return (json.dumps(self._stats(), indent=2) + "\n").encode()

"""When an inbox file is complete: renamed in from a temporary name, or size and mtime unchanged
for ``ingest.stable_seconds``. Writers that follow the usual convention (a hidden or ``.tmp`` /
``.part`` name, then a rename) are picked up at once; the others after they stop growing.

:class:`CompletionTracker` is the service's mutable bookkeeping of inbox paths (owned by one thread).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from appliance.config import IngestSettings


def is_candidate(path: Path, settings: IngestSettings, root: Path | None = None) -> bool:
    """False for temporaries (by name), sidecar JSON, and files in hidden folders below ``root``."""
    name = path.name
    if not name or name.startswith(settings.temporary_prefixes):
        return False
    lower = name.lower()
    if lower.endswith(tuple(s.lower() for s in settings.temporary_suffixes)) or lower.endswith(".json"):
        return False
    if root is None:
        return True
    try:
        folders = path.relative_to(root).parts[:-1]
    except ValueError:
        return False  # not inside the inbox at all
    return not any(part.startswith(".") for part in folders)


@dataclass
class _Entry:
    size: int
    mtime_ns: int
    since: float
    renamed: bool
    deferred: bool = False  # read failed as possibly incomplete; retry when the file changes


class CompletionTracker:
    """Remembers inbox paths until they are complete; :meth:`ready` lists those that are."""

    def __init__(
        self, settings: IngestSettings, root: Path, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._settings = settings
        self._root = root
        self._clock = clock
        self._entries: dict[Path, _Entry] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def pending(self) -> int:
        """Paths not yet ready and not deferred."""
        return sum(1 for e in self._entries.values() if not e.deferred)

    def observe(self, path: Path, *, renamed: bool = False) -> None:
        if path.name.lower().endswith(".json"):
            self._sidecar_arrived(path)
            return
        if not is_candidate(path, self._settings, self._root):
            return
        try:
            st = os.stat(path)
        except OSError:
            self._entries.pop(path, None)
            return
        entry = self._entries.get(path)
        if entry is None or (st.st_size, st.st_mtime_ns) != (entry.size, entry.mtime_ns):
            self._entries[path] = _Entry(st.st_size, st.st_mtime_ns, self._clock(), renamed)
        elif renamed:
            entry.renamed = True

    def _sidecar_arrived(self, sidecar: Path) -> None:
        """A sidecar JSON may complete an image deferred for lack of it: read that image again."""
        base = sidecar.with_suffix("")  # "a.png.json" -> "a.png"; "a.json" -> "a"
        for path, entry in self._entries.items():
            if entry.deferred and (path == base or path.with_suffix("") == base):
                entry.deferred = False

    def forget(self, path: Path) -> None:
        self._entries.pop(path, None)

    def defer(self, path: Path) -> None:
        entry = self._entries.get(path)
        if entry is not None:
            entry.deferred = True

    def ready(self) -> list[Path]:
        """Paths whose size and mtime held still long enough (or that were renamed in), oldest first."""
        now = self._clock()
        out: list[tuple[float, Path]] = []
        for path, entry in list(self._entries.items()):
            try:
                st = os.stat(path)
            except OSError:
                del self._entries[path]
                continue
            if (st.st_size, st.st_mtime_ns) != (entry.size, entry.mtime_ns):
                self._entries[path] = _Entry(st.st_size, st.st_mtime_ns, now, False)
                continue
            if entry.deferred:
                continue
            if entry.renamed or now - entry.since >= self._settings.stable_seconds:
                out.append((entry.since, path))
        return [p for _, p in sorted(out)]

    def release_deferred_older_than(self, grace_seconds: float) -> None:
        """Un-defer entries whose file has not changed for the grace time (they are then final)."""
        wall = time.time()
        for entry in self._entries.values():
            if entry.deferred and wall - entry.mtime_ns / 1e9 >= grace_seconds:
                entry.deferred = False

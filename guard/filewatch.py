"""Notice when files change, by looking at them (no inotify: it works on every filesystem)."""

from __future__ import annotations

import os

__all__ = ["FileWatch"]


class FileWatch:
    """Notices when any of a few files changes (mtime, size, inode)."""

    def __init__(self, paths: list[str]) -> None:
        self.paths = [p for p in paths if p]
        self.seen = self._stat()

    def _stat(self) -> tuple[tuple[int, int, int] | None, ...]:
        out: list[tuple[int, int, int] | None] = []
        for p in self.paths:
            try:
                st = os.stat(p)
                out.append((st.st_mtime_ns, st.st_size, st.st_ino))
            except OSError:
                out.append(None)
        return tuple(out)

    def changed(self) -> bool:
        now = self._stat()
        if now == self.seen:
            return False
        self.seen = now
        return True

"""The audit folder read back: one task's trail, the trails it holds, the records since a time.

Each task's durable copy is `<dir>/<task_id>.jsonl`, one JSON line per record (see writer.py).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

__all__ = ["list_trails", "parse_since", "read_trail", "records_since", "trail_path"]

_TASK_ID = re.compile(r"^[A-Za-z0-9_-]{1,128}$")


def trail_path(directory: str | Path, task_id: str) -> Path:
    if not _TASK_ID.match(task_id):
        raise ValueError("bad task id")
    return Path(directory) / f"{task_id}.jsonl"


def read_trail(directory: str | Path, task_id: str) -> list[dict[str, Any]]:
    """The records of a task from the audit folder, in seq order (instances may interleave)."""
    path = trail_path(directory, task_id)
    if not path.exists():
        return []
    records: list[dict[str, Any]] = []
    seen: set[int] = set()
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except ValueError:
                rec = {"seq": None, "unparseable_line": lineno}
            seq = rec.get("seq")
            if isinstance(seq, int) and seq in seen:
                continue  # the same record written by a retry
            if isinstance(seq, int):
                seen.add(seq)
            records.append(rec)
    records.sort(key=lambda r: r["seq"] if isinstance(r.get("seq"), int) else 1 << 62)
    return records


def list_trails(directory: str | Path) -> Iterator[str]:
    d = Path(directory)
    if d.is_dir():
        for p in sorted(d.glob("*.jsonl")):
            yield p.stem


def parse_since(value: str | None) -> float:
    """Unix seconds or an ISO 8601 time (UTC when it names no zone); empty means the beginning."""
    if not value:
        return 0.0
    try:
        return float(value)
    except ValueError:
        pass
    try:
        dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as e:
        raise ValueError(f"since: {value!r} is neither unix seconds nor an ISO 8601 time") from e
    return (dt if dt.tzinfo is not None else dt.replace(tzinfo=UTC)).timestamp()


MTIME_SLACK_S = 1.0  # a file's mtime can trail the clock by a kernel tick


def records_since(directory: str | Path, since: float) -> Iterator[list[dict[str, Any]]]:
    """Per task (in task id order), the records of the audit folder with `ts >= since`.
    Files not modified since `since` (less a second: file times are coarser than record times) are
    skipped unread."""
    for task_id in list_trails(directory):
        try:
            if trail_path(directory, task_id).stat().st_mtime < since - MTIME_SLACK_S:
                continue
        except (OSError, ValueError):
            continue
        records = [r for r in read_trail(directory, task_id) if _ts(r) >= since]
        if records:
            yield records


def _ts(record: dict[str, Any]) -> float:
    ts = record.get("ts")
    return float(ts) if isinstance(ts, int | float) else 0.0

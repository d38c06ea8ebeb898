"""Order a task's audit records as a tree of calls: each chained call's records are nested
under the call whose Txn-Token it presented (`parent_call_id`), in seq order at each level."""

from __future__ import annotations

from typing import Any

__all__ = ["call_tree"]

Record = dict[str, Any]


def _seq(r: Record) -> int:
    seq = r.get("seq")
    return seq if isinstance(seq, int) else 1 << 62


def call_tree(records: list[Record]) -> list[tuple[int, Record]]:
    """(depth, record) pairs: direct calls and task events at depth 0, a chained call one
    deeper than its parent. A call whose parent is not in the trail stays at the top."""
    by_call: dict[str, list[Record]] = {}
    parent: dict[str, str] = {}
    top: list[tuple[int, str | None, Record | None]] = []
    for r in sorted(records, key=_seq):
        cid = r.get("call_id")
        if not isinstance(cid, str):
            top.append((_seq(r), None, r))
            continue
        if cid not in by_call:
            by_call[cid] = []
        by_call[cid].append(r)
        if isinstance(r.get("parent_call_id"), str):
            parent[cid] = r["parent_call_id"]
    children: dict[str, list[str]] = {}
    for cid in by_call:
        p = parent.get(cid)
        if p is not None and p in by_call and p != cid:
            children.setdefault(p, []).append(cid)
        else:
            top.append((_seq(by_call[cid][0]), cid, None))
    out: list[tuple[int, Record]] = []

    def emit(cid: str, depth: int) -> None:
        items: list[tuple[int, str | None, Record | None]] = [(_seq(r), None, r) for r in by_call[cid]]
        items += [(_seq(by_call[c][0]), c, None) for c in children.get(cid, [])]
        for _, child, rec in sorted(items, key=lambda i: i[0]):
            if rec is not None:
                out.append((depth, rec))
            elif child is not None and depth < 64:
                emit(child, depth + 1)

    for _, cid, rec in sorted(top, key=lambda i: i[0]):
        if rec is not None:
            out.append((0, rec))
        elif cid is not None:
            emit(cid, 0)
    if len(out) < len(records):  # parent links that loop (never written by the guard): keep every record
        shown = {id(r) for _, r in out}
        out += [(0, r) for r in sorted(records, key=_seq) if id(r) not in shown]
    return out

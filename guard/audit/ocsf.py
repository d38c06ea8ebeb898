"""Audit records as OCSF events, for a SIEM: one API Activity event (class_uid 6003) per record.

`GET /v1/tasks/{id}/audit?format=ocsf` and `guard audit export --format ocsf` give them as NDJSON,
one event a line (docs/telemetry.md has the mapping). The record itself stays in the event: its
JSON in `raw_data` and its `hash`, `prev_hash` and `seq` in `unmapped` (`guard_hash`, ...), so a
trail exported as OCSF can still be verified (`records_of` + guard.hashchain.verify_chain)."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from guard import __version__
from guard.canonical import canonical_json

__all__ = ["OCSF_VERSION", "ocsf_event", "ocsf_lines", "records_of"]

OCSF_VERSION = "1.8.0"  # the schema the events are built and tested against
_CLASS_UID, _CATEGORY_UID = 6003, 6  # API Activity, Application Activity
_CREATE, _OTHER = 1, 99
_SEVERITY = {1: "Informational", 2: "Low", 3: "Medium"}
_STATUS = {0: "Unknown", 1: "Success", 2: "Failure"}


def ocsf_event(record: dict[str, Any]) -> dict[str, Any]:
    """One audit record as an OCSF 1.x API Activity event."""
    event = str(record.get("event") or "unknown")
    task_id, agent = str(record.get("task_id") or ""), str(record.get("agent") or "")
    tool, action, effect = record.get("tool"), record.get("action"), record.get("effect")
    status, seq = record.get("status"), record.get("seq")
    activity_id = _CREATE if event == "task_created" else _OTHER
    activity = "Create" if activity_id == _CREATE else event
    failed = effect in ("deny", "step_up") or (isinstance(status, int) and status >= 400)
    status_id = 2 if failed else 1
    severity_id = 3 if effect == "deny" else 2 if failed else 1
    operation = f"{tool}.{action}" if tool and action else event
    api: dict[str, Any] = {"operation": operation, "service": {"name": str(tool or "guard")}}
    if record.get("call_id"):
        api["request"] = {"uid": str(record["call_id"])}
    if isinstance(status, int) or record.get("detail"):
        api["response"] = {k: v for k, v in (("code", status if isinstance(status, int) else None),
                                              ("error", _text(record.get("detail")) if failed else None)) if v}
    actor: dict[str, Any] = {"user": {"uid": agent, "name": agent, "type_id": 4, "type": "Service"},
                             "session": {"uid": task_id}}
    if effect:
        grant: dict[str, Any] = {"decision": str(effect)}
        if record.get("rule_id"):
            grant["policy"] = {"uid": str(record["rule_id"]), "name": str(record["rule_id"])}
        actor["authorizations"] = [grant]
    chain = record.get("chain") or []
    src: dict[str, Any] = {"name": agent or "guard"}
    if chain:
        src["svc_name"] = str(chain[-1])  # a chained call comes from the last tool of its chain
    out: dict[str, Any] = {
        "class_uid": _CLASS_UID, "class_name": "API Activity",
        "category_uid": _CATEGORY_UID, "category_name": "Application Activity",
        "activity_id": activity_id, "activity_name": activity,
        "type_uid": _CLASS_UID * 100 + activity_id, "type_name": f"API Activity: {activity}",
        "severity_id": severity_id, "severity": _SEVERITY[severity_id],
        "status_id": status_id, "status": _STATUS[status_id],
        "time": round(float(record.get("ts") or 0) * 1000),
        "message": _message(event, operation if tool else None, effect, record.get("rule_id")),
        "metadata": {
            "version": OCSF_VERSION,
            "product": {"name": "guard", "vendor_name": "guard", "version": __version__},
            "uid": f"{task_id}:{seq}", "correlation_uid": task_id, "log_name": "audit", "event_code": event,
            **({"sequence": seq} if isinstance(seq, int) else {}),
        },
        "actor": actor,
        "api": api,
        "src_endpoint": src,
        "raw_data": canonical_json(record).decode(),
        "unmapped": {"guard_hash": record.get("hash"), "guard_prev_hash": record.get("prev_hash"),
                     "guard_seq": seq, "guard_event": event},
    }
    if tool:
        out["dst_endpoint"] = {"svc_name": str(tool)}
    if failed and record.get("detail"):
        out["status_detail"] = _text(record["detail"])
    if isinstance(status, int):
        out["status_code"] = str(status)
    return out


def ocsf_lines(records: Iterable[dict[str, Any]]) -> bytes:
    """NDJSON: one OCSF event a line."""
    return b"".join(json.dumps(ocsf_event(r), separators=(",", ":"), ensure_ascii=False).encode() + b"\n"
                    for r in records)


def records_of(events: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """The audit records inside OCSF events (from `raw_data`), for guard.hashchain.verify_chain.
    Raises ValueError when an event's `unmapped.guard_hash` is not its record's `hash`."""
    records = []
    for event in events:
        record = json.loads(event["raw_data"])
        if not isinstance(record, dict) or record.get("hash") != (event.get("unmapped") or {}).get("guard_hash"):
            raise ValueError(f"event {event.get('metadata', {}).get('uid')}: guard_hash is not its record's hash")
        records.append(record)
    return records


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, separators=(",", ":"), sort_keys=True)


def _message(event: str, operation: str | None, effect: Any, rule_id: Any) -> str:
    parts = [event] + ([operation] if operation else [])
    if effect:
        parts.append(f"{effect}" + (f" by rule {rule_id}" if rule_id else ""))
    return " ".join(parts)

"""The audit trail as OCSF for a SIEM: `GET /v1/tasks/{id}/audit?format=ocsf` and `guard audit export
--format ocsf` give one API Activity event (class_uid 6003) per record, NDJSON, each valid against
the OCSF schema (the official schema export, packaged by ocsf-json-schema, checked with jsonschema),
and the hash chain still verifies from the events."""

from __future__ import annotations

import json
import os
import subprocess
from functools import cache
from typing import Any

import aiohttp
import pytest

from guard.audit.ocsf import OCSF_VERSION, records_of
from guard.hashchain import verify_chain
from tests.app.conftest import AppFactory
from tests.support.app import AppGuard
from tests.support.client import AGENT, bearer, create_task, echo_policy
from tests.support.process import PY, require
from tests.support.upstream import Upstream


def _schema_missing() -> str | None:
    try:
        import jsonschema  # noqa: F401
        import ocsf_json_schema  # noqa: F401
    except ImportError:
        return "ocsf-json-schema and jsonschema are not installed (pip install -e '.[dev]')"
    return None


@cache
def _validator() -> Any:
    from jsonschema import Draft202012Validator
    from ocsf_json_schema import OcsfJsonSchemaEmbedded, get_ocsf_schema

    schema = OcsfJsonSchemaEmbedded(get_ocsf_schema(version=OCSF_VERSION))
    return Draft202012Validator(schema.get_class_schema(schema.lookup_class_name_from_uid(6003), []))


def _assert_valid(events: list[dict[str, Any]]) -> None:
    validator = _validator()
    for event in events:
        errors = [f"{'/'.join(map(str, e.path))}: {e.message}" for e in validator.iter_errors(event)]
        assert not errors, (event["metadata"]["event_code"], errors)


@pytest.fixture
async def guard(app_factory: AppFactory, upstream: Upstream) -> AppGuard:
    require(_schema_missing())
    return await app_factory(echo_policy(upstream.url))


async def _busy_task(guard: AppGuard, http: aiohttp.ClientSession) -> str:
    """A task with an allowed call, a denial, a step-up, an unknown action, and its end."""
    task = await create_task(http, guard.url, guard.token(AGENT))
    h = bearer(task["task_token"])
    for method, path, body, status in [("GET", "/items/1", None, 200), ("DELETE", "/items/1", None, 403),
                                       ("POST", "/pay", {"amount": 500}, 403), ("PATCH", "/items/1", None, 403)]:
        async with http.request(method, f"{guard.url}/tools/echo{path}", json=body, headers=h) as r:
            assert r.status == status
    async with http.post(f"{guard.url}/v1/tasks/{task['task_id']}/complete", headers=h) as r:
        assert r.status == 200
    return str(task["task_id"])


async def test_task_audit_as_ocsf(guard: AppGuard, http: aiohttp.ClientSession) -> None:
    task_id = await _busy_task(guard, http)
    auditor = bearer(guard.token("auditor@acme.example", "guard:auditor"))
    async with http.get(f"{guard.url}/v1/tasks/{task_id}/audit", headers=auditor) as r:
        records = (await r.json())["records"]
    async with http.get(f"{guard.url}/v1/tasks/{task_id}/audit?format=ocsf", headers=auditor) as r:
        assert r.status == 200 and r.content_type == "application/x-ndjson"
        lines = (await r.read()).decode().splitlines()
    events = [json.loads(line) for line in lines]
    assert len(events) == len(records) >= 6
    _assert_valid(events)
    assert {e["class_uid"] for e in events} == {6003}
    assert [e["unmapped"]["guard_hash"] for e in events] == [r["hash"] for r in records]
    assert [e["metadata"]["sequence"] for e in events] == [r["seq"] for r in records]

    allowed = next(e for e in events if e["unmapped"]["guard_event"] == "call_decided"
                   and e["actor"]["authorizations"][0]["decision"] == "allow")
    assert allowed["api"]["operation"] == "echo.read" and allowed["status"] == "Success"
    assert allowed["actor"]["user"]["uid"] == AGENT and allowed["metadata"]["correlation_uid"] == task_id
    denied = next(e for e in events if e["actor"].get("authorizations", [{}])[0].get("decision") == "deny"
                  and e["api"]["operation"] == "echo.delete")
    assert denied["status"] == "Failure" and denied["severity"] == "Medium"
    assert denied["actor"]["authorizations"][0]["policy"]["uid"] == "no-delete"
    assert denied["status_detail"] == "denied" and denied["api"]["response"]["code"] == 403
    assert events[0]["activity_name"] == "Create" and events[0]["type_uid"] == 600301

    # the chain verifies from the events alone; a record changed inside an event does not
    assert verify_chain(records_of(events)).verified
    forged = json.loads(events[1]["raw_data"])
    forged["agent"] = "spiffe://acme/agent/other"
    events[1]["raw_data"] = json.dumps(forged)
    assert verify_chain(records_of(events)).verified is False


async def test_unknown_format_is_refused(guard: AppGuard, http: aiohttp.ClientSession) -> None:
    task_id = await _busy_task(guard, http)
    auditor = bearer(guard.token("auditor@acme.example", "guard:auditor"))
    async with http.get(f"{guard.url}/v1/tasks/{task_id}/audit?format=cef", headers=auditor) as r:
        assert r.status == 400 and (await r.json(content_type=None))["code"] == "bad_request"
    async with http.get(f"{guard.url}/v1/audit?format=ocsf", headers=auditor) as r:
        events = [json.loads(line) for line in (await r.read()).decode().splitlines()]
    assert events and {e["metadata"]["correlation_uid"] for e in events} == {task_id}
    _assert_valid(events)


async def test_cli_export_ocsf(guard: AppGuard, http: aiohttp.ClientSession) -> None:
    task_id = await _busy_task(guard, http)
    out = subprocess.run([PY, "-m", "guard", "--config", guard.cfg.source, "audit", "export", "--format", "ocsf"],
                         cwd=guard.dir, capture_output=True, text=True, timeout=60, check=False,
                         env={**os.environ, **guard.cfg.environ})
    assert out.returncode == 0, out.stderr
    events = [json.loads(line) for line in out.stdout.splitlines()]
    records = [json.loads(line) for line in (guard.audit_dir() / f"{task_id}.jsonl").read_text().splitlines()]
    assert [e["unmapped"]["guard_hash"] for e in events] == [r["hash"] for r in records]
    _assert_valid(events)
    assert verify_chain(records_of(events)).verified

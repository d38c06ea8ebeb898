"""`Signals`: Shared Signals received from the configured transmitters, and what guard does about them.

    signals = Signals(cfg, base_dir, store, audit, ends, policies, metrics)
    await signals.start(http)              # one poller per `delivery: {method: poll}` transmitter
    outcome = await signals.receive(token)  # a pushed SET (POST /ssf/events); SetError when refused

A SET is checked (guard.signals.sets), its subjects read (guard.signals.subjects, an unknown format
refuses the SET), then its jti is used up in the store (a replay is refused, on every instance);
only then does anything change. Each event's effect:

- CAEP session-revoked, credential-change, assurance-level-change (decrease), device-compliance-change
  (to not-compliant), RISC account-disabled, account-purged: an agent named is suspended; a person
  named has their tasks revoked and their sessions ended;
- RISC account-disabled and account-purged also suspend the agents the person owns (`owner_gone`);
- anything else (and the two CAEP changes the other way) is audited and changes nothing.

SSF `verification` and `stream-updated` events change the stream's state (`streams`), nothing else.

Audit: `signal_received {event_type, transmitter, jti, subject, effect}` in the `signals` trail, in
the trail of every task it ends (then `task_revoked` with the jti), and in each affected agent's
history trail (`agent_trail`, then `agent_suspended` with the jti).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import secrets
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from prometheus_client import Counter, Gauge

from guard.audit.log import AuditLog
from guard.config import SecretSource, SignalsCfg, TransmitterCfg
from guard.domain import TaskState
from guard.log import get_logger
from guard.metrics import Metrics
from guard.policy import PolicySet
from guard.signals.sets import ReceivedSet, SetError, SetVerifier
from guard.signals.subjects import (
    SubjectError,
    SubjectId,
    agent_candidates,
    parse_subject,
    person_keys,
    same_person,
    sessions_ended_key,
)
from guard.stores.base import Store
from guard.tasks.ends import TaskEnds
from guard.tasks.suspend import suspend_agent

__all__ = ["SIGNALS_TRAIL", "Outcome", "Signals", "StreamState", "agent_trail"]

log = get_logger("guard.signals")

CAEP = "https://schemas.openid.net/secevent/caep/event-type/"
RISC = "https://schemas.openid.net/secevent/risc/event-type/"
SSF = "https://schemas.openid.net/secevent/ssf/event-type/"
_REVOKING = frozenset({CAEP + "session-revoked", CAEP + "credential-change", RISC + "account-disabled",
                       RISC + "account-purged"})
_OWNER_GONE = frozenset({RISC + "account-disabled", RISC + "account-purged"})
SIGNALS_TRAIL = "signals"  # the audit trail of every signal received, whatever it named


def agent_trail(agent: str) -> str:
    """The audit trail of an agent's history (signals received about it, its suspensions)."""
    return "agent-" + hashlib.sha256(agent.encode()).hexdigest()[:40]


def acted(event_type: str, payload: dict[str, Any]) -> bool:
    """Whether guard acts on this event (revokes, suspends)."""
    if event_type in _REVOKING:
        return True
    if event_type == CAEP + "assurance-level-change":
        return payload.get("change_direction") == "decrease"
    if event_type == CAEP + "device-compliance-change":
        return payload.get("current_status") == "not-compliant"
    return False


def short(event_type: str) -> str:
    return event_type.rstrip("/").rsplit("/", 1)[-1][:64]


@dataclass
class StreamState:
    """One transmitter's stream as this instance sees it (shown in /metrics and GET /v1/signals/streams)."""

    transmitter: str
    delivery: str
    status: str = "enabled"  # enabled | paused | disabled, from the transmitter's stream-updated events
    last_event_at: float | None = None
    received: int = 0
    refused: int = 0  # SETs refused (bad signature, stale, replayed, ...)
    failures: int = 0  # polls that failed (transmitter unreachable or answering an error)
    last_error: str | None = None
    verified_at: float | None = None


@dataclass
class Outcome:
    jti: str
    transmitter: str
    events: list[str] = field(default_factory=list)
    suspended: list[str] = field(default_factory=list)
    revoked: list[str] = field(default_factory=list)
    matched: bool = False


class Signals:
    def __init__(self, cfg: SignalsCfg, base_dir: Path, store: Store, audit: AuditLog, ends: TaskEnds,
                 policies: Callable[[], PolicySet], metrics: Metrics, session_ttl_s: float,
                 environ: dict[str, str]) -> None:
        self.cfg, self.store, self.audit, self.ends, self.policies = cfg, store, audit, ends, policies
        self.environ = environ
        self.verifier = SetVerifier(cfg, base_dir)
        self.session_ttl_s = session_ttl_s
        self.http: aiohttp.ClientSession | None = None
        self.streams = {t.issuer: StreamState(t.issuer, t.delivery.method) for t in cfg.transmitters}
        r = metrics.registry
        self._received = Counter("guard_signals_received", "Shared Signals SETs, by transmitter and result",
                                 ["transmitter", "result"], registry=r)
        self._failures = Counter("guard_signal_stream_failures", "Failed polls of a transmitter's stream",
                                 ["transmitter"], registry=r)
        self._last = Gauge("guard_signal_last_event_timestamp_seconds", "When a transmitter's last SET arrived",
                           ["transmitter"], registry=r)
        self._pollers: list[asyncio.Task[None]] = []
        self._verifying: dict[str, str] = {}  # transmitter -> the state of the verification guard asked for

    # -- lifecycle ----------------------------------------------------------------------------
    def start(self, http: aiohttp.ClientSession) -> None:
        self.http = http
        loop = asyncio.get_running_loop()
        self._pollers = [loop.create_task(self._poll_forever(t)) for t in self.cfg.transmitters
                         if t.delivery.method == "poll"]
        self._pollers += [loop.create_task(self._manage(t)) for t in self.cfg.transmitters if t.configuration_url]

    async def close(self) -> None:
        for p in self._pollers:
            p.cancel()
        for p in self._pollers:
            with contextlib.suppress(asyncio.CancelledError):
                await p

    # -- receiving ----------------------------------------------------------------------------
    async def receive(self, token: str, expect: str | None = None) -> Outcome:
        """Check a SET and act on it; SetError (nothing changed) when it is refused."""
        iss = None
        try:
            got = await self.verifier.verify(token, self.http, expect)
            iss = got.transmitter
            subjects = {t: self._subjects(got, t, p) for t, p in got.events.items()}
            if not await self.store.consume_signal_jti(got.replay_key, got.iat + self.cfg.max_iat_age_s + 60):
                raise SetError("invalid_request", "this SET's jti was received before (replay)")
        except SetError as e:
            self._refused(iss or e.transmitter or expect, e)
            raise
        return await self._act(got, subjects)

    def _subjects(self, got: ReceivedSet, event_type: str, payload: dict[str, Any]) -> list[SubjectId]:
        raw = got.sub_id if got.sub_id is not None else payload.get("subject")
        if raw is None:
            if event_type.startswith(SSF):
                return []  # stream events name the stream, not a subject
            raise SetError("invalid_request", f"{short(event_type)}: no subject (sub_id)")
        try:
            return parse_subject(raw)
        except SubjectError as e:
            raise SetError("invalid_request", str(e)) from e

    def _refused(self, iss: str | None, e: SetError) -> None:
        stream = self.streams.get(iss) if iss is not None else None
        if stream is not None:
            stream.refused += 1
            stream.last_error = e.err
        self._received.labels(stream.transmitter if stream else "-", e.err).inc()
        log.warning("signal_refused", transmitter=stream.transmitter if stream else None, err=e.err,
                    reason=e.description)

    async def _act(self, got: ReceivedSet, subjects: dict[str, list[SubjectId]]) -> Outcome:
        now = time.time()
        stream = self.streams[got.transmitter]
        stream.received += 1
        stream.last_event_at = now
        self._last.labels(got.transmitter).set(now)
        self._received.labels(got.transmitter, "accepted").inc()
        out = Outcome(got.jti, got.transmitter, list(got.events))
        for event_type, payload in got.events.items():
            if event_type.startswith(SSF):
                await self._stream_event(got, stream, event_type, payload)
                continue
            await self._event(got, event_type, payload, subjects[event_type], out)
        log.info("signal_received", transmitter=got.transmitter, jti=got.jti, events=[short(e) for e in got.events],
                 suspended=out.suspended, revoked_tasks=out.revoked, matched=out.matched)
        return out

    def _record(self, got: ReceivedSet, event_type: str, subject: str | None, effect: str) -> dict[str, Any]:
        return {"event_type": event_type, "transmitter": got.transmitter, "jti": got.jti, "subject": subject,
                "effect": effect}

    async def _stream_event(self, got: ReceivedSet, stream: StreamState, event_type: str,
                            payload: dict[str, Any]) -> None:
        kind = short(event_type)
        if kind == "verification":
            expected = self._verifying.get(got.transmitter)
            if expected is None or hmac.compare_digest(str(payload.get("state", "")), expected):
                stream.verified_at = time.time()
        elif kind == "stream-updated" and payload.get("status") in ("enabled", "paused", "disabled"):
            stream.status = str(payload["status"])
            log.warning("signal_stream_updated", transmitter=got.transmitter, status=stream.status,
                        reason=str(payload.get("reason", ""))[:200])
        await self.audit.append(SIGNALS_TRAIL, "signal_received", f"transmitter:{got.transmitter}",
                                **self._record(got, event_type, None, f"stream_{kind}"))

    async def _event(self, got: ReceivedSet, event_type: str, payload: dict[str, Any], subjects: list[SubjectId],
                     out: Outcome) -> None:
        policies = self.policies()
        known = set(await self.store.agent_stats())
        agents = {c for s in subjects for c in agent_candidates(s) if c in known or policies.agent_entry(c)}
        keys: set[str] = set().union(*(person_keys(s) for s in subjects)) if subjects else set()
        active = await self.store.list_tasks(status="active")
        people_tasks = [st for st in active if same_person(st.task.requested_by, keys)]
        owned = [e for e in policies.agents if same_person(e.owner, keys)] if event_type in _OWNER_GONE else []
        described = "; ".join(s.describe() for s in subjects)
        matched = bool(agents or people_tasks or owned or any(same_person(e.owner, keys) for e in policies.agents))
        out.matched = out.matched or matched
        effect = ("none" if not acted(event_type, payload) else "act" if matched else "no_match")
        await self.audit.append(SIGNALS_TRAIL, "signal_received", f"transmitter:{got.transmitter}",
                                **self._record(got, event_type, described, effect))
        if effect == "none":
            return
        if keys:  # a person's sessions are not indexed: whoever holds one under these keys is signed out
            await self._end_sessions(keys)
            await self.audit.append(SIGNALS_TRAIL, "sessions_ended", f"transmitter:{got.transmitter}",
                                    jti=got.jti, people=sorted(keys))
        kind = short(event_type)
        for agent in sorted(agents):
            await self._suspend(got, event_type, described, agent, f"signal {kind} from {got.transmitter}", out)
        for state in people_tasks:
            await self._revoke_task(got, event_type, described, state, out)
        for entry in owned:
            subs = {entry.pattern} if not any(c in entry.pattern for c in "*?[") else \
                {a for a in known | {st.task.agent for st in active} if policies.agent_entry(a) is entry}
            for agent in sorted(subs):
                await self._suspend(got, event_type, described, agent,
                                    f"owner_gone: {kind} of {entry.owner} from {got.transmitter}", out)

    async def _suspend(self, got: ReceivedSet, event_type: str, subject: str, agent: str, reason: str,
                       out: Outcome) -> None:
        actor = f"ssf:{got.transmitter}"
        record = self._record(got, event_type, subject, "agent_suspended")
        trail = agent_trail(agent)
        await self.audit.append(trail, "signal_received", agent, **record)

        async def note(state: TaskState) -> None:
            await self.audit.append(state.task.task_id, "signal_received", state.task.agent, **record)

        done = await suspend_agent(self.store, self.ends, agent, reason, actor, {"jti": got.jti}, note)
        await self.audit.append(trail, "agent_suspended", agent, actor=actor, detail=reason, jti=got.jti,
                                revoked_tasks=list(done.revoked), already=not done.newly)
        out.suspended.append(agent)
        out.revoked.extend(done.revoked)

    async def _revoke_task(self, got: ReceivedSet, event_type: str, subject: str, state: TaskState,
                           out: Outcome) -> None:
        task = state.task
        await self.audit.append(task.task_id, "signal_received", task.agent,
                                **self._record(got, event_type, subject, "task_revoked"))
        reason = f"signal {short(event_type)} from {got.transmitter}: person {task.requested_by}"
        if await self.ends.end(task.task_id, "revoked", f"ssf:{got.transmitter}", reason, "task_revoked",
                               {"jti": got.jti}) is not None:
            out.revoked.append(task.task_id)

    async def _end_sessions(self, keys: set[str]) -> None:
        """Sign-in sessions of these people that started before now stop working (guard.oauth.sessions)."""
        now = time.time()
        for key in keys:
            await self.store.put_grant("sessions_ended", sessions_ended_key(key), {"at": now}, self.session_ttl_s)

    # -- stream management (SSF 1.0), where the transmitter offers it ---------------------------------
    async def _manage(self, t: TransmitterCfg) -> None:
        """At start: read the transmitter's configuration, the stream's status, and ask for a
        verification event (its `state` is checked when it arrives). Failures are counted, not fatal."""
        assert self.http is not None and t.configuration_url is not None
        stream = self.streams[t.issuer]
        headers = {"Accept": "application/json"}
        if t.delivery.token is not None:
            headers["Authorization"] = f"Bearer {self._secret(t.delivery.token)}"
        timeout = aiohttp.ClientTimeout(total=10)
        try:
            async with self.http.get(t.configuration_url, headers=headers, timeout=timeout) as r:
                r.raise_for_status()
                meta = await r.json(content_type=None)
            status_url, verify_url = meta.get("status_endpoint"), meta.get("verification_endpoint")
            if isinstance(status_url, str):
                async with self.http.get(status_url, headers=headers, timeout=timeout) as r:
                    r.raise_for_status()
                    status = (await r.json(content_type=None)).get("status")
                if status in ("enabled", "paused", "disabled"):
                    stream.status = status
            if isinstance(verify_url, str):
                state = secrets.token_urlsafe(16)
                self._verifying[t.issuer] = state
                async with self.http.post(verify_url, json={"state": state}, headers=headers, timeout=timeout) as r:
                    r.raise_for_status()
            log.info("signal_stream_managed", transmitter=t.issuer, status=stream.status,
                     verification_requested=isinstance(verify_url, str))
        except (aiohttp.ClientError, TimeoutError, ValueError, AttributeError) as e:
            stream.failures += 1
            stream.last_error = type(e).__name__
            self._failures.labels(t.issuer).inc()
            log.warning("signal_stream_management_failed", transmitter=t.issuer, error=type(e).__name__)

    # -- poll delivery (RFC 8936) ---------------------------------------------------------------
    async def _poll_forever(self, t: TransmitterCfg) -> None:
        acks: list[str] = []
        errs: dict[str, dict[str, str]] = {}
        while True:
            try:
                acks, errs, more = await self.poll_once(t, acks, errs)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # the next poll tries again; the failure is visible
                stream = self.streams[t.issuer]
                stream.failures += 1
                stream.last_error = type(e).__name__
                self._failures.labels(t.issuer).inc()
                log.warning("signal_poll_failed", transmitter=t.issuer, error=type(e).__name__)
                more = False
            if not more:
                await asyncio.sleep(t.delivery.interval_s)

    async def poll_once(self, t: TransmitterCfg, acks: list[str], errs: dict[str, dict[str, str]]
                        ) -> tuple[list[str], dict[str, dict[str, str]], bool]:
        """One poll: acknowledge what the last one brought, receive what this one brings.
        Returns what to acknowledge next time and whether the transmitter has more."""
        assert self.http is not None and t.delivery.url is not None
        body = {"ack": acks, "returnImmediately": True, "maxEvents": t.delivery.max_events}
        if errs:
            body["setErrs"] = errs
        headers = {"Accept": "application/json"}
        if t.delivery.token is not None:
            headers["Authorization"] = f"Bearer {self._secret(t.delivery.token)}"
        async with self.http.post(t.delivery.url, json=body, headers=headers,
                                  timeout=aiohttp.ClientTimeout(total=10)) as r:
            if r.status != 200:
                raise aiohttp.ClientResponseError(r.request_info, (), status=r.status)
            answer = await r.json(content_type=None)
        sets = answer.get("sets") if isinstance(answer, dict) else None
        if not isinstance(sets, dict):
            raise ValueError("a poll answer has sets: {jti: SET}")
        next_acks: list[str] = []
        next_errs: dict[str, dict[str, str]] = {}
        for jti, token in list(sets.items())[: t.delivery.max_events]:
            if not isinstance(jti, str) or not isinstance(token, str):
                continue
            try:
                await self.receive(token, expect=t.issuer)
                next_acks.append(jti)
            except SetError as e:
                if "replay" in e.description:
                    next_acks.append(jti)  # received before (an ack that was lost): done with it
                else:
                    next_errs[jti] = e.body()
        return next_acks, next_errs, bool(answer.get("moreAvailable"))

    def _secret(self, src: SecretSource) -> str:
        if src.env is not None:
            return self.environ.get(src.env, "")
        assert src.file is not None
        return Path(src.file).read_text(encoding="utf-8").strip()

    def stream_views(self) -> list[dict[str, Any]]:
        return [asdict(s) for s in self.streams.values()]

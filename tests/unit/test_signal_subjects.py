"""Subject identifiers (RFC 9493) read from SETs, and who they name: agents and people."""

from __future__ import annotations

import pytest

from guard.signals.receiver import CAEP, RISC, acted
from guard.signals.subjects import SubjectError, agent_candidates, parse_subject, person_keys, same_person


def test_simple_formats_name_agents_and_people() -> None:
    (spiffe,) = parse_subject({"format": "uri", "uri": "spiffe://acme/agent/x"})
    assert agent_candidates(spiffe) == ["spiffe://acme/agent/x"] and person_keys(spiffe) == set()
    (mail,) = parse_subject({"format": "email", "email": "Alice@Acme.example"})
    assert agent_candidates(mail) == [] and person_keys(mail) == {"alice@acme.example"}
    (iss_sub,) = parse_subject({"format": "iss_sub", "iss": "https://idp", "sub": "notes-bot"})
    assert agent_candidates(iss_sub) == ["notes-bot", "client:notes-bot"]
    assert person_keys(iss_sub) == {"https://idp#notes-bot", "notes-bot"}
    (mailto,) = parse_subject({"format": "uri", "uri": "mailto:bob@acme.example"})
    assert person_keys(mailto) == {"bob@acme.example"}
    assert same_person("BOB@acme.example", person_keys(mailto)) and not same_person(None, person_keys(mailto))


def test_a_complex_subject_is_its_members() -> None:
    members = parse_subject({"format": "complex", "user": {"format": "email", "email": "a@b.example"},
                             "application": {"format": "opaque", "id": "app-1"}})
    assert [m.format for m in members] == ["email", "opaque"]


@pytest.mark.parametrize("raw", [
    {"format": "phone_number", "phone_number": "+1"},
    {"format": "email"},
    {"format": "email", "email": ""},
    {"format": "uri", "uri": "x" * 2000},
    "spiffe://acme/agent/x",
    {"format": "complex"},
    {"format": "complex", "user": {"format": "did", "url": "did:x"}},
])
def test_unreadable_subjects_are_refused(raw: object) -> None:
    with pytest.raises(SubjectError):
        parse_subject(raw)


def test_which_events_act() -> None:
    assert acted(CAEP + "session-revoked", {}) and acted(RISC + "account-purged", {})
    assert acted(CAEP + "assurance-level-change", {"change_direction": "decrease"})
    assert not acted(CAEP + "assurance-level-change", {"change_direction": "increase"})
    assert acted(CAEP + "device-compliance-change", {"current_status": "not-compliant"})
    assert not acted(CAEP + "device-compliance-change", {"current_status": "compliant"})
    assert not acted(CAEP + "token-claims-change", {}) and not acted(RISC + "account-enabled", {})

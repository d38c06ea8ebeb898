"""guard.oauth's small pure pieces: where sign-in may send a browser back to, redirect URI
patterns of dynamic registration, resources and the 401 challenge."""

from __future__ import annotations

from pathlib import Path

import pytest

from guard.config import Config, load_config
from guard.errors import ConfigError
from guard.oauth.clients import redirect_pattern
from guard.oauth.metadata import resource_url, server_metadata, tool_of_resource, www_authenticate
from guard.oauth.sessions import safe_next
from guard.oauth.sso import person_key

CFG = Config.model_validate({"public_url": "https://guard.acme.example"})


@pytest.mark.parametrize("value", ["https://evil.example/", "//evil.example/x", "/\\evil.example", "javascript:x",
                                   "", None, "/ok\r\nSet-Cookie: x=1", "evil"])
def test_sign_in_never_sends_the_browser_to_another_site(value: str | None) -> None:
    assert safe_next(value) == "/delegations"


def test_sign_in_returns_to_a_path_of_guard() -> None:
    assert safe_next("/oauth/consent?request=authz_1") == "/oauth/consent?request=authz_1"
    assert safe_next("/ui") == "/ui"


def test_redirect_uri_patterns_match_whole_uris_and_a_star_is_a_port() -> None:
    loopback = redirect_pattern("http://127.0.0.1:*/callback")
    assert loopback.fullmatch("http://127.0.0.1:33418/callback")
    assert loopback.fullmatch("http://127.0.0.1:1/callback")
    for bad in ("http://127.0.0.1:5555.evil.com/callback", "http://127.0.0.1:55;evil.com/callback",
                f"http://127.0.0.1:{'9' * 1960}/callback", "http://127.0.0.1:123456/callback",
                "http://127.0.0.1:/callback", "http://127.0.0.1:1/callback/x", "http://127.0.0.1:1@evil.example/callback",
                "http://127.0.0.1.evil.example:1/callback", "http://127.0.0.1:1/x/callback",
                "https://127.0.0.1:1/callback", "http://127.0.0.1:1/callback?x=1"):
        assert not loopback.fullmatch(bad), bad
    assert not redirect_pattern("https://app.example/cb").fullmatch("https://app.example/cb2")
    assert not redirect_pattern("https://app.example/cb").fullmatch("https://appXexample/cb")  # dots are literal


def test_resources_are_guards_mcp_endpoints() -> None:
    assert resource_url(CFG, "files") == "https://guard.acme.example/mcp/files"
    assert tool_of_resource(CFG, "https://guard.acme.example/mcp/files") == "files"
    for other in ("https://guard.acme.example/mcp/", "https://guard.acme.example/mcp/files/x",
                  "https://evil.example/mcp/files", "https://guard.acme.example/tools/files",
                  "https://guard.acme.example/mcp/files?x=1"):
        assert tool_of_resource(CFG, other) is None, other


def test_challenge_and_metadata() -> None:
    assert www_authenticate(CFG, "files") == \
        'Bearer resource_metadata="https://guard.acme.example/.well-known/oauth-protected-resource/mcp/files"'
    meta = server_metadata(CFG)
    assert meta["issuer"] == "https://guard.acme.example"
    assert meta["code_challenge_methods_supported"] == ["S256"]
    assert "implicit" not in meta["grant_types_supported"] and "password" not in meta["grant_types_supported"]
    assert "registration_endpoint" not in meta
    open_cfg = Config.model_validate({"public_url": "https://g.example", "oauth": {"registration": {"mode": "open"}}})
    assert server_metadata(open_cfg)["registration_endpoint"] == "https://g.example/oauth/register"


def test_sso_client_secret_must_be_found_at_load(tmp_path: Path) -> None:
    path = tmp_path / "guard.yaml"
    path.write_text("sso: {issuer: https://idp.example, client_id: guard, client_secret: {env: SSO_SECRET}}\n")
    with pytest.raises(ConfigError) as missing:
        load_config(path, env={})
    assert missing.value.key == "sso.client_secret.env" and "SSO_SECRET is not set" in str(missing.value)
    assert load_config(path, env={"SSO_SECRET": "s"}).sso is not None
    path.write_text("sso: {issuer: https://idp.example, client_id: guard, client_secret: {}}\n")
    with pytest.raises(ConfigError):
        load_config(path, env={})
    path.write_text("oauth: {registration: {mode: maybe}}\n")
    with pytest.raises(ConfigError) as bad:
        load_config(path, env={})
    assert bad.value.key == "oauth.registration.mode"


def test_people_are_keyed_on_iss_and_sub_and_named_by_a_verified_email_only() -> None:
    base = {"iss": "https://idp.example", "sub": "248289761001", "email": "alice@acme.example"}
    assert person_key({**base, "email_verified": True}) == ("https://idp.example#248289761001", "alice@acme.example")
    for unverified in ({}, {"email_verified": False}, {"email_verified": "true"}):
        assert person_key({**base, **unverified}) == ("https://idp.example#248289761001",) * 2
    other_idp = person_key({**base, "iss": "https://other.example", "email_verified": True})
    assert other_idp[0] != person_key({**base, "email_verified": True})[0]  # same email and sub, another person


def _cfg(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> Config:
    path = tmp_path / "guard.yaml"
    path.write_text(text)
    return load_config(path, env=env or {})


def test_development_mode_listens_on_loopback_only(tmp_path: Path) -> None:
    issuer = "issuers: [{issuer: https://idp.example, jwks_file: idp.jwks.json}]\n"
    sso = "sso: {issuer: https://idp.example, client_id: guard}\n"
    for dev in ("", "dev_issuer: true\n", issuer + "dev_issuer: true\n", sso + "dev_issuer: true\n"):
        for host in ("0.0.0.0", "::", "10.1.2.3", "guard.example"):
            with pytest.raises(ConfigError) as refused:
                _cfg(tmp_path, f"listen: {{host: '{host}'}}\n{dev}")
            assert refused.value.key == "listen.host" and "loopback" in refused.value.reason, (dev, host)
        with pytest.raises(ConfigError) as by_env:
            _cfg(tmp_path, dev, {"GUARD_LISTEN_HOST": "0.0.0.0"})
        assert str(by_env.value).startswith("GUARD_LISTEN_HOST: '0.0.0.0' is not a loopback address")
        for host in ("127.0.0.1", "127.0.0.2", "::1", "localhost"):
            assert _cfg(tmp_path, f"listen: {{host: '{host}'}}\n{dev}").dev_mode
    for real in (issuer, sso, issuer + sso):  # not development mode: any address
        cfg = _cfg(tmp_path, f"listen: {{host: 0.0.0.0}}\n{real}")
        assert not cfg.dev_mode and not cfg.dev_sign_in
    assert _cfg(tmp_path, "").dev_sign_in
    assert not _cfg(tmp_path, issuer + "dev_issuer: true\n").dev_sign_in  # dev tokens, but no dev sign-in

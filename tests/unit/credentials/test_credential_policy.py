"""Credential provider blocks: `guard policy check` (and start-up) refuse what cannot work, naming
the file, the key and the line."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from guard.errors import ConfigError
from guard.policy import load_policies
from tests.support.process import PY

HTTP = "kind: http, upstream: 'http://x', actions: {a: {method: GET, path: /}}"
OAUTH = "token_url: 'http://as/token', revocation_url: 'http://as/revoke', client_id: c"

CREDENTIAL_ERRORS = [
    ("{mode: static, header: X-Key, secret: {env: A}, scopes: {a: [x]}}", "tools.bad.credential.scopes"),
    ("{mode: static, secret: {env: A}, secret_env: B}", "tools.bad.credential.secret"),
    ("{mode: static, secret: {env: A, file: /f}}", "tools.bad.credential.secret"),
    ("{mode: static, secret: {vault: 'secret/tools/notes#key'}}", "tools.bad.credential.secret.vault"),
    ("{mode: static, secret: {vault: 'secret/data/tools/notes'}}", "tools.bad.credential.secret.vault"),
    ("{mode: static, secret: {vault: 'secret/data/x#k'}, format: 'Bearer {token}'}", "tools.bad.credential.format"),
    ("{mode: static, secret: {cloud: x}}", "tools.bad.credential.secret.cloud"),
    ("{mode: jwt, path: database/creds/x}", "tools.bad.credential.path"),
    ("{mode: oauth2, client_id: c}", "tools.bad.credential.token_url"),
    (f"{{mode: oauth2, {OAUTH}, client_auth: client_secret_basic}}", "tools.bad.credential.client_secret"),
    (f"{{mode: oauth2, {OAUTH}, client_secret: {{env: S}}}}", "tools.bad.credential.client_secret"),
    ("{mode: oauth2, token_url: 'http://as/token', client_id: c}", "tools.bad.credential.revocation_url"),
    (f"{{mode: token_exchange, {OAUTH}}}", "tools.bad.credential.audience"),
    (f"{{mode: token_exchange, {OAUTH}, audience: x, per_task: false}}", "tools.bad.credential.per_task"),
    (f"{{mode: oauth2, {OAUTH}, audience: x}}", "tools.bad.credential.audience"),
    ("{mode: vault_lease, path: database/creds/ro}", "tools.bad.credential.headers"),
    ("{mode: vault_lease, path: 'not a path', headers: {X-U: '{username}'}}", "tools.bad.credential.path"),
    ("{mode: vault_lease, path: database/creds/ro, headers: {X-U: '{username'}}", "tools.bad.credential.headers.X-U"),
]


@pytest.mark.parametrize(("credential", "key"), CREDENTIAL_ERRORS)
def test_credential_errors(tmp_path: Path, credential: str, key: str) -> None:
    (tmp_path / "t.yaml").write_text(f"tools:\n  bad: {{{HTTP}, credential: {credential}}}\n")
    with pytest.raises(ConfigError) as err:
        load_policies(tmp_path)
    assert err.value.key == key, err.value
    assert err.value.line == 2


def test_valid_blocks_compile(tmp_path: Path) -> None:
    (tmp_path / "t.yaml").write_text(f"""tools:
  kv: {{{HTTP}, credential: {{mode: static, header: Authorization, format: 'Bearer {{secret}}',
       secret: {{vault: 'secret/data/tools/notes#api_key'}}}}}}
  db: {{{HTTP}, credential: {{mode: vault_lease, path: database/creds/ro,
       headers: {{X-Db-User: '{{username}}', X-Db-Password: '{{password}}'}}}}}}
  as: {{{HTTP}, credential: {{mode: token_exchange, {OAUTH}, audience: 'https://n', scopes: {{a: [n:r]}}}}}}
""")
    tools = load_policies(tmp_path).tools
    assert tools["kv"].credential.secret is not None and tools["kv"].credential.secret.kind == "vault"
    assert tools["kv"].credential.format == "Bearer {secret}"
    assert tools["db"].credential.lease is not None and tools["db"].credential.lease.path == "database/creds/ro"
    oauth = tools["as"].credential.oauth
    assert oauth is not None and oauth.per_task and oauth.client_auth == "private_key_jwt"
    assert oauth.scopes_for("a") == ("n:r",) and tools["as"].credential.format == "Bearer {secret}"


def test_policy_check_needs_secrets_vault(tmp_path: Path) -> None:
    pol = tmp_path / "policies"
    pol.mkdir()
    (pol / "p.yaml").write_text(f"tools:\n  db: {{{HTTP}, credential: {{mode: vault_lease, path: database/creds/ro, "
                                "headers: {X-U: '{username}'}}}\n")
    cfg = tmp_path / "guard.yaml"
    cfg.write_text(f"policies: {pol}\n")
    out = subprocess.run([PY, "-m", "guard", "--config", str(cfg), "policy", "check"], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 1
    assert "tools.db.credential" in out.stderr and "secrets.vault" in out.stderr
    cfg.write_text(f"policies: {pol}\nsecrets: {{vault: {{url: 'http://127.0.0.1:1', "
                   "auth: {method: token, token_file: ./t}}}\n")
    out = subprocess.run([PY, "-m", "guard", "--config", str(cfg), "policy", "check"], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    cfg.write_text(f"policies: {pol}\nsecrets: {{vault: {{url: 'http://127.0.0.1:1', auth: {{method: approle}}}}}}\n")
    out = subprocess.run([PY, "-m", "guard", "--config", str(cfg), "policy", "check"], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 1 and "secrets.vault.auth" in out.stderr and "role_id_file" in out.stderr

"""Start-up failures are one line `error: FILE[:LINE]: KEY: REASON` (or `error: VARIABLE: REASON`)
and exit 2, whichever check fails; `guard config check` runs every check `guard serve` runs before
it listens; `guard dev-token` mints only tokens the configured guard accepts; `guard --version`."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from guard.app import build_app
from guard.config import load_config
from guard.errors import ConfigError
from guard.policy import load_policies
from tests.support.process import PY, ROOT, free_port

ONE_LINE = re.compile(r"^error: [^\n]+\n$")


def _guard(tmp: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PY, "-m", "guard", *args], cwd=tmp, capture_output=True, text=True, timeout=60,
                          env={"PATH": "/usr/bin:/bin", **(env or {})})


def _config(tmp: Path, text: str) -> Path:
    """A guard.yaml under `tmp` (policies: the repository's; keys and audit in tmp/var)."""
    (tmp / "var").mkdir(exist_ok=True)
    path = tmp / "guard.yaml"
    path.write_text(f"policies: {ROOT / 'policies'}\n" + text)
    return path


def _errors(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def _check(tmp: Path, text: str, env: dict[str, str] | None = None) -> str:
    """`guard config check` on this config: it fails with one line and exit 2; the line."""
    _config(tmp, text)
    out = _guard(tmp, "--config", "guard.yaml", "config", "check", env=env)
    assert out.returncode == 2, out
    assert _errors(out.stderr) == [out.stderr.splitlines()[-1]], out.stderr  # one line, the last
    assert "Traceback" not in out.stderr
    return out.stderr.splitlines()[-1] + "\n"


def test_unknown_key_is_named_with_its_line_in_the_policy_loaders_words(tmp_path: Path) -> None:
    err = _check(tmp_path, "listen:\n  host: 127.0.0.1\n  prot: 9000\n")
    assert err == "error: guard.yaml:4: listen.prot: unknown key\n"


def test_wrong_type_is_named_with_its_line(tmp_path: Path) -> None:
    err = _check(tmp_path, "approvals:\n  ttl_s: soon\n")
    assert err.startswith("error: guard.yaml:3: approvals.ttl_s: ") and "integer" in err


def test_an_environment_override_is_named_by_its_variable(tmp_path: Path) -> None:
    err = _check(tmp_path, "", env={"GUARD_LISTEN_PORT": "abc"})
    assert err.startswith("error: GUARD_LISTEN_PORT: ") and "integer" in err
    assert "embedded default" not in err


def test_a_corrupt_signing_key_is_named(tmp_path: Path) -> None:
    (tmp_path / "var").mkdir()
    (tmp_path / "var" / "signing-key.json").write_text('{"kty": "OKP", "d": ')
    err = _check(tmp_path, "signing:\n  key_file: var/signing-key.json\n")
    assert err.startswith("error: guard.yaml:3: signing.key_file: var/signing-key.json: ")
    assert "JSONDecodeError" not in err


def test_a_key_file_that_is_not_a_key_is_named(tmp_path: Path) -> None:
    (tmp_path / "var").mkdir()
    (tmp_path / "var" / "signing-key.json").write_text('{"hello": "world"}')
    err = _check(tmp_path, "signing: {key_file: var/signing-key.json}\n")
    assert err.startswith("error: guard.yaml:2: signing.key_file: var/signing-key.json: not a private JWK")


def test_a_mistyped_key_path_creates_no_folder_and_no_key(tmp_path: Path) -> None:
    """With several instances, a new key made by one of them breaks every token the others sign."""
    config = _config(tmp_path, "signing: {key_file: ./keyz/signing-key.json}\n")
    out = _guard(tmp_path, "--config", str(config), "serve")
    assert out.returncode == 2, out
    assert _errors(out.stderr) == [out.stderr.splitlines()[-1]]
    assert "signing.key_file" in out.stderr and "keyz" in out.stderr and "does not exist" in out.stderr
    assert not (tmp_path / "keyz").exists()


def test_a_new_key_is_created_in_an_existing_folder_and_logged(tmp_path: Path) -> None:
    from structlog.testing import capture_logs

    (tmp_path / "keys").mkdir()
    config = _config(tmp_path, f"signing: {{key_file: {tmp_path / 'keys' / 'k.json'}}}\n"
                     f"dev_key_file: {tmp_path / 'keys' / 'dev.json'}\naudit: {{dir: {tmp_path / 'audit'}}}\n")
    with capture_logs() as logs:
        build_app(load_config(config, env={}))
        build_app(load_config(config, env={}))  # the second start finds it
    created = [e for e in logs if e["event"] == "signing_key_created"]
    assert [e["file"] for e in created] == [str(tmp_path / "keys" / "k.json")]
    assert json.loads((tmp_path / "keys" / "k.json").read_text())["kty"] == "OKP"


def test_a_missing_jwks_file_is_named(tmp_path: Path) -> None:
    err = _check(tmp_path, "issuers:\n  - issuer: https://idp.example\n    jwks_file: idp-jwks.json\n")
    assert err.startswith("error: guard.yaml:4: issuers[0].jwks_file: ")
    assert "idp-jwks.json: cannot read: No such file or directory" in err


def test_a_missing_tls_file_is_named(tmp_path: Path) -> None:
    (tmp_path / "guard.pem").write_text("-----BEGIN CERTIFICATE-----\n")
    err = _check(tmp_path, f"listen:\n  tls:\n    cert_file: {tmp_path / 'guard.pem'}\n"
                 f"    key_file: {tmp_path / 'guard.key'}\n")
    assert err.startswith("error: guard.yaml:5: listen.tls.key_file: ")
    assert f"{tmp_path / 'guard.key'}: cannot read" in err


def test_a_missing_trust_bundle_stops_the_start(tmp_path: Path) -> None:
    """Today the guard starts and every SVID gets 401 with nothing logged."""
    err = _check(tmp_path, "dev_issuer: true\nissuers:\n  - x509:\n      trust_bundle_file: bundle.pem\n"
                 "      spiffe_id: spiffe://acme/agent/*\n")
    assert err.startswith("error: guard.yaml:5: issuers[0].x509.trust_bundle_file: bundle.pem: cannot read")


def test_a_port_in_use_is_one_line_before_anything_starts(tmp_path: Path) -> None:
    port = free_port()
    config = _config(tmp_path, f"listen: {{host: 127.0.0.1, port: {port}}}\n")
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", port))
        holder.listen()
        out = _guard(tmp_path, "--config", str(config), "serve")
    assert out.returncode == 2
    assert out.stderr.strip().splitlines()[-1] == (
        f"error: {config}:2: listen.port: cannot listen on 127.0.0.1:{port}: already in use")
    assert "Traceback" not in out.stderr and "guard_started" not in out.stdout + out.stderr


def test_config_check_passes_what_serve_accepts(tmp_path: Path) -> None:
    config = _config(tmp_path, "signing: {key_file: var/signing-key.json}\n")
    out = _guard(tmp_path, "--config", str(config), "config", "check")
    assert out.returncode == 0, out.stderr
    tools = len(load_policies(ROOT / "policies").tools)  # the repository's policies, which the config names
    assert out.stdout.startswith(f"ok: {config}: {tools} tools")
    assert not (tmp_path / "var" / "signing-key.json").exists()  # a check creates no key


def test_policy_check_can_pass_where_config_check_fails(tmp_path: Path) -> None:
    """`policy check` looks at policies only; `config check` finds what would stop `serve`."""
    (tmp_path / "var").mkdir()
    (tmp_path / "var" / "signing-key.json").write_text("not json")
    config = _config(tmp_path, "signing: {key_file: var/signing-key.json}\n")
    assert _guard(tmp_path, "--config", str(config), "policy", "check").returncode == 0
    served = _guard(tmp_path, "--config", str(config), "serve")
    checked = _guard(tmp_path, "--config", str(config), "config", "check")
    assert served.returncode == checked.returncode == 2
    assert served.stderr.splitlines()[-1] == checked.stderr.splitlines()[-1]


def test_version() -> None:
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    out = _guard(ROOT, "--version")
    assert out.returncode == 0 and out.stdout == f"guard {version}\n"


@pytest.mark.parametrize("config,why", [
    ({"issuers": [{"issuer": "https://idp.example", "jwks_url": "https://idp.example/jwks"}]},
     "issuers are configured"),
    ({"dev_issuer": False}, "dev_issuer is false"),
])
def test_dev_token_refuses_when_the_guard_does_not_trust_it(tmp_path: Path, config: dict[str, Any],
                                                            why: str) -> None:
    path = _config(tmp_path, yaml.safe_dump(config))
    out = _guard(tmp_path, "--config", str(path), "dev-token", "--sub", "spiffe://acme/agent/researcher")
    assert out.returncode == 2 and out.stdout == "", out
    assert ONE_LINE.match(out.stderr) and "dev_issuer" in out.stderr and why in out.stderr


def test_dev_token_refuses_a_role_guard_does_not_know(tmp_path: Path) -> None:
    path = _config(tmp_path, "")
    out = _guard(tmp_path, "--config", str(path), "dev-token", "--sub", "ops", "--role", "guard:root")
    assert out.returncode == 2 and out.stdout == ""
    assert "invalid choice: 'guard:root'" in out.stderr
    ok = _guard(tmp_path, "--config", str(path), "dev-token", "--sub", "ops", "--role", "guard:admin")
    assert ok.returncode == 0 and ok.stdout.count(".") == 2


def test_config_error_carries_the_line_of_the_key(tmp_path: Path) -> None:
    path = _config(tmp_path, "store:\n  url: memory://\naudit:\n  dir: null\n")
    with pytest.raises(ConfigError) as err:
        load_config(path, env={})
    assert str(err.value) == f"{path}:5: audit.dir: the memory store keeps nothing durable: an audit folder is required"


@pytest.mark.parametrize("command", [("keys", "init"), ("keys", "rotate")])
def test_key_commands_name_a_corrupt_key_file(tmp_path: Path, command: tuple[str, ...]) -> None:
    (tmp_path / "var").mkdir()
    (tmp_path / "var" / "signing-key.json").write_text("[1, 2")
    path = _config(tmp_path, "signing: {key_file: var/signing-key.json}\n")
    out = _guard(tmp_path, "--config", str(path), *command)
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    assert out.stderr == f"error: {path}:2: signing.key_file: var/signing-key.json: not a JSON key file (corrupt?)\n"


def test_a_default_that_fails_has_no_line(tmp_path: Path) -> None:
    """The key is not written in the file: the error names the key, not line 1."""
    (tmp_path / "var").mkdir()
    (tmp_path / "var" / "signing-key.json").write_text("{}")
    err = _check(tmp_path, "")  # signing.key_file: its default, ./var/signing-key.json
    assert err.startswith("error: guard.yaml: signing.key_file: var/signing-key.json: not a private JWK"), err

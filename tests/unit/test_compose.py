"""examples/compose: no Docker engine runs here, so the compose file is checked as far as can be
without one: valid YAML, the images and paths its README names, mounts that exist, and a guard
config and policies that pass guard's own checks."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from guard.config import load_config
from guard.policy import check_policies
from tests.support.process import ROOT

HERE = ROOT / "examples" / "compose"
PROVIDED = {"./idp-jwks.json", "./bao-token"}  # the README says the user provides these


def _compose() -> dict[str, Any]:
    data = yaml.safe_load((HERE / "compose.yaml").read_text())
    assert isinstance(data, dict)
    return data


def test_the_compose_file_runs_guard_redis_and_openbao_with_the_images_the_readme_names() -> None:
    services = _compose()["services"]
    assert set(services) == {"guard", "redis", "openbao"}
    readme = (HERE / "README.md").read_text()
    assert "no Docker engine" in readme
    for name in ("redis", "openbao"):
        assert f"`{services[name]['image']}`" in readme
    assert services["guard"]["image"] in readme
    assert (HERE / services["guard"]["build"]["context"] / services["guard"]["build"]["dockerfile"]).is_file()
    assert services["guard"]["ports"] == ["127.0.0.1:8080:8080"]  # published on loopback only
    assert "ports" not in services["redis"] and "ports" not in services["openbao"]


def test_every_mount_exists_or_is_provided_and_the_readme_names_it() -> None:
    compose = _compose()
    readme = (HERE / "README.md").read_text()
    guard = compose["services"]["guard"]
    inside: dict[str, str] = {}
    for volume in guard["volumes"]:
        source, target = volume.split(":")[:2]
        inside[target] = source
        assert f"`{target}`" in readme, target
        if source.startswith("./"):
            assert (HERE / source).exists() or source in PROVIDED, source
    for secret in guard["secrets"]:
        assert compose["secrets"][secret]["file"] in PROVIDED
        assert f"/run/secrets/{secret}" in readme
    assert guard["command"] == ["serve", "--config", "/etc/guard/guard.yaml"]
    assert inside["/etc/guard/guard.yaml"] == "./guard.yaml"


def test_the_mounted_config_and_policies_pass_guards_checks() -> None:
    cfg = load_config(HERE / "guard.yaml", env={}, secrets=False)
    assert cfg.listen.host == "0.0.0.0" and cfg.issuers  # not development mode: an IdP is named
    services = _compose()["services"]
    assert cfg.store.url == "redis://redis:6379/0" and "redis" in services
    text = (HERE / "guard.yaml").read_text()
    assert "http://openbao:8200" in text and "/run/secrets/bao_token" in text
    mounted = {v.split(":")[1]: v.split(":")[0] for v in services["guard"]["volumes"]}
    for path in re.findall(r"(/etc/guard/[\w./-]+)", text):
        assert path in mounted, f"guard.yaml names {path}, which compose does not mount"
    assert str(cfg.policies) == "/etc/guard/policies"
    policies, _ = check_policies(Path(HERE / mounted["/etc/guard/policies"]))
    assert set(policies.tools) == {"notes"}

"""`--config FILE` stands before or after any subcommand, at every level; GUARD_CONFIG still works."""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from guard.cli.main import build_parser, main
from tests.support.process import ROOT

Leaf = tuple[tuple[str, ...], argparse.ArgumentParser]


def _leaves(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> Iterator[Leaf]:
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield path, parser
        return
    for name, child in subs[0].choices.items():
        yield from _leaves(child, (*path, name))


def _required(parser: argparse.ArgumentParser) -> list[str]:
    """Values for the leaf's required arguments, so that only --config is under test."""
    out: list[str] = []
    for a in parser._actions:
        if not a.option_strings and a.nargs not in ("?", "*"):
            out.append(str(next(iter(a.choices))) if a.choices else "x")
        elif a.option_strings and a.required:
            out += [a.option_strings[0], "x"]
    return out


LEAVES = sorted(path for path, _ in _leaves(build_parser()))


def test_every_command_is_reached() -> None:
    assert {("serve",), ("policy", "check"), ("policy", "test"), ("audit", "show"), ("audit", "verify"),
            ("audit", "export"), ("agents",), ("keys", "init"), ("dev-token",)} <= set(LEAVES)


@pytest.mark.parametrize("path", LEAVES, ids=[" ".join(p) for p in LEAVES])
def test_config_before_or_after_any_subcommand(path: tuple[str, ...]) -> None:
    leaf = dict(_leaves(build_parser()))[path]
    rest = _required(leaf)
    for at in range(len(path) + 1):  # before the first word, between two, after the last
        argv = [*path[:at], "--config", "c.yaml", *path[at:], *rest]
        assert build_parser().parse_args(argv).config == "c.yaml", argv
    argv = ["--config", "first.yaml", *path, "--config", "last.yaml", *rest]
    assert build_parser().parse_args(argv).config == "last.yaml"
    assert build_parser().parse_args([*path, *rest]).config is None  # then load_config reads GUARD_CONFIG


def _config_with_policies(tmp_path: Path) -> Path:
    cfg = tmp_path / "guard.yaml"
    cfg.write_text(yaml.safe_dump({"policies": str(ROOT / "policies"), "audit": {"dir": str(tmp_path / "audit")}}))
    return cfg


@pytest.mark.parametrize("where", ["before", "after", "env"])
def test_the_config_given_is_the_one_used(where: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    cfg = _config_with_policies(tmp_path)
    monkeypatch.chdir(tmp_path)  # no ./policies here: only the config's folder has policies
    argv = {"before": ["--config", str(cfg), "policy", "check"], "after": ["policy", "check", "--config", str(cfg)],
            "env": ["policy", "check"]}[where]
    if where == "env":
        monkeypatch.setenv("GUARD_CONFIG", str(cfg))
    assert main(argv) == 0
    assert f"in {ROOT / 'policies'}" in capsys.readouterr().out


def test_commands_that_serve_nothing_do_not_need_webhook_secrets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The demo config names a webhook secret; reading it to check policies needs no secret."""
    monkeypatch.chdir(ROOT)
    monkeypatch.delenv("GUARD_WEBHOOK_SECRET_FINANCE", raising=False)
    assert main(["policy", "check", "--config", "examples/guard.yaml"]) == 0
    assert main(["serve", "--config", "examples/guard.yaml"]) == 2  # serving does
    assert "GUARD_WEBHOOK_SECRET_FINANCE is not set" in capsys.readouterr().err

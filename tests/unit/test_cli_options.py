"""The CLI's options: each one says what it does, and durations read as people write them."""

from __future__ import annotations

import argparse
from pathlib import Path

import jwt
import pytest

from guard.cli.main import build_parser, main


def _actions(p: argparse.ArgumentParser, name: str) -> list[tuple[str, argparse.Action]]:
    found: list[tuple[str, argparse.Action]] = []
    for a in p._actions:
        if isinstance(a, argparse._SubParsersAction):
            for sub_name, sub in a.choices.items():
                found += _actions(sub, f"{name} {sub_name}")
        elif not isinstance(a, argparse._HelpAction):
            found.append((name, a))
    return found


def test_every_option_and_argument_of_every_command_has_help() -> None:
    actions = _actions(build_parser(), "guard")
    assert len(actions) > 40  # every command group was walked
    missing = [f"{cmd}: {'/'.join(a.option_strings) or a.dest}" for cmd, a in actions if not a.help]
    assert missing == []


@pytest.mark.parametrize(("text", "seconds"), [("300", 300), ("45s", 45), ("5m", 300), ("2h", 7200), ("1d", 86400)])
def test_dev_token_ttl_takes_a_duration(text: str, seconds: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)  # the embedded default's development key goes to ./var
    assert main(["dev-token", "--sub", "spiffe://acme/agent/a", "--ttl", text]) == 0
    claims = jwt.decode(capsys.readouterr().out.strip(), options={"verify_signature": False})
    assert claims["exp"] - claims["iat"] == seconds


@pytest.mark.parametrize("text", ["0", "-5m", "5 minutes", "m", "1.5h", "5w"])
def test_a_bad_ttl_is_a_usage_error(text: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(["dev-token", "--sub", "x", f"--ttl={text}"])
    assert exited.value.code == 2
    assert "is not a duration" in capsys.readouterr().err

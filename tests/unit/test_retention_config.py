"""`retention` in guard.yaml and its environment overrides."""

from __future__ import annotations

from pathlib import Path

import pytest

from guard.config import load_config
from guard.errors import ConfigError


def test_defaults_keep_ended_tasks_a_week_and_trails_forever() -> None:
    cfg = load_config(None, {})
    assert (cfg.retention.ended_task_s, cfg.retention.audit_s) == (604800, None)


def test_file_values_and_null_from_the_environment(tmp_path: Path) -> None:
    path = tmp_path / "guard.yaml"
    path.write_text("retention: {ended_task_s: 60, audit_s: 86400}\n")
    cfg = load_config(path, {})
    assert (cfg.retention.ended_task_s, cfg.retention.audit_s) == (60, 86400)
    cfg = load_config(path, {"GUARD_RETENTION_ENDED_TASK_S": "null"})
    assert cfg.retention.ended_task_s is None


def test_a_bad_value_names_the_key(tmp_path: Path) -> None:
    path = tmp_path / "guard.yaml"
    path.write_text("retention: {ended_task_s: 0}\n")
    with pytest.raises(ConfigError) as err:
        load_config(path, {})
    assert "retention.ended_task_s" in str(err.value)

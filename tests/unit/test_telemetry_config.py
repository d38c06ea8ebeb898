"""`telemetry:` in guard.yaml: off by default, validated at load, and a clear start-up error when
it is on without the OpenTelemetry SDK (the optional extra guard[telemetry])."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from guard.config import load_config
from guard.errors import ConfigError
from guard.telemetry import open_tracing
from tests.support.otlp import proto_missing
from tests.support.process import PY, ROOT, require


def _config(tmp_path: Path, telemetry: object) -> Path:
    path = tmp_path / "guard.yaml"
    path.write_text(yaml.safe_dump({"policies": str(ROOT / "policies"), "audit": {"dir": str(tmp_path / "audit")},
                                    "telemetry": telemetry}))
    return path


def test_off_unless_configured(tmp_path: Path) -> None:
    cfg = load_config(None, env={})
    assert cfg.telemetry is None and open_tracing(cfg) is None
    on = load_config(None, env={"GUARD_TELEMETRY_OTLP_ENDPOINT": "http://127.0.0.1:4318/"})
    assert on.telemetry is not None
    assert (on.telemetry.otlp_endpoint, on.telemetry.service_name, on.telemetry.sample_ratio) == (
        "http://127.0.0.1:4318", "guard", 1.0)


@pytest.mark.parametrize(("telemetry", "key"), [
    ({"otlp_endpoint": "127.0.0.1:4317"}, "telemetry.otlp_endpoint"),
    ({"sample_ratio": 1.5}, "telemetry.sample_ratio"),
    ({"service_name": ""}, "telemetry.service_name"),
    ({"endpoint": "http://x"}, "telemetry.endpoint"),
])
def test_bad_values_stop_loading(tmp_path: Path, telemetry: dict[str, object], key: str) -> None:
    with pytest.raises(ConfigError) as e:
        load_config(_config(tmp_path, telemetry), env={})
    assert e.value.key == key


def test_sdk_missing_is_a_start_up_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = load_config(_config(tmp_path, {"otlp_endpoint": "http://127.0.0.1:4318"}), env={})
    monkeypatch.delitem(sys.modules, "guard.telemetry.otel", raising=False)
    monkeypatch.setitem(sys.modules, "opentelemetry.sdk.trace", None)  # as if not installed
    with pytest.raises(ConfigError) as e:
        open_tracing(cfg)
    assert e.value.key == "telemetry" and "pip install 'guard[telemetry]'" in e.value.reason


def test_guard_serve_says_which_extra_is_missing(tmp_path: Path) -> None:
    path = _config(tmp_path, {"otlp_endpoint": "http://127.0.0.1:4318"})
    hide = ("import sys; sys.modules['opentelemetry.sdk.trace'] = None; from guard.cli.main import main; "
            f"sys.exit(main(['--config', {str(path)!r}, 'serve']))")
    out = subprocess.run([PY, "-c", hide], cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode != 0
    assert [line for line in out.stderr.splitlines() if line.startswith("error:")] == [
        f"error: {path}: telemetry: the OpenTelemetry SDK is not installed (opentelemetry.sdk.trace): "
        "pip install 'guard[telemetry]'"]


def test_with_the_sdk_a_tracer_opens(tmp_path: Path) -> None:
    require(proto_missing())
    cfg = load_config(_config(tmp_path, {"otlp_endpoint": "http://127.0.0.1:4318", "service_name": "edge"}), env={})
    tracing = open_tracing(cfg)
    assert tracing is not None
    from guard.telemetry.otel import OtelTracing

    assert isinstance(tracing, OtelTracing)
    assert tracing.provider.resource.attributes["service.name"] == "edge"
    tracing.provider.shutdown()

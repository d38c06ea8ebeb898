"""A real OAuth 2.0 / OpenID Connect provider (npm `oidc-provider` v9) on a free loopback port.

The package is installed in the test-local prefix `tests/support/oidc/` (`npm ci` there; `make test` and
`.ci/run` do it). Each role the tests need is one small ES module beside the package, which reads its
configuration from the JSON file named on its command line and the port from `PORT`; for example a tool's
authorization server (client credentials, resource indicators, introspection, revocation, token exchange)
or the organisation's IdP that people sign in at.

    idp = OidcProvider(tmp_path, "idp.mjs", {"clients": [...]}).start()
    idp.issuer            # http://127.0.0.1:PORT
    idp.metadata()        # /.well-known/openid-configuration
"""

from __future__ import annotations

import json
import shutil
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support.process import Proc, free_port, spawn

__all__ = ["NODE_PREFIX", "OidcProvider", "oidc_provider_missing_reason"]

NODE_PREFIX = Path(__file__).resolve().parent / "oidc"


def oidc_provider_missing_reason() -> str | None:
    if shutil.which("node") is None:
        return "node is not installed (Debian package nodejs): it runs the oidc-provider test server"
    if not (NODE_PREFIX / "node_modules" / "oidc-provider" / "package.json").is_file():
        return "oidc-provider is not installed: run `npm ci --prefix tests/support/oidc` (make test does)"
    return None


@dataclass
class OidcProvider:
    """`node tests/support/oidc/<script> <config.json>` in `dir`, on a free loopback port."""

    dir: Path
    script: str
    config: dict[str, Any]
    port: int = field(default_factory=free_port)
    proc: Proc | None = None

    @property
    def issuer(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> OidcProvider:
        reason = oidc_provider_missing_reason()
        if reason is not None:
            raise RuntimeError(reason)
        self.dir.mkdir(parents=True, exist_ok=True)
        config_path = self.dir / f"{Path(self.script).stem}-{self.port}.json"
        config_path.write_text(json.dumps({"issuer": self.issuer, **self.config}))
        node = shutil.which("node") or "node"
        self.proc = spawn([node, str(NODE_PREFIX / self.script), str(config_path)], self.dir,
                          f"{Path(self.script).stem}-{self.port}.log", {"PORT": str(self.port)})
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.popen.poll() is not None:
                raise RuntimeError(f"{self.script} exited early with {self.proc.popen.returncode}\n{self.proc.log()}")
            try:
                self.metadata()
                return self
            except (OSError, ValueError):
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.script} did not answer on {self.port}\n{self.proc.log()}")
            time.sleep(0.1)

    def metadata(self) -> dict[str, Any]:
        """The provider's discovery document (`/.well-known/openid-configuration`)."""
        url = f"{self.issuer}/.well-known/openid-configuration"
        with urllib.request.urlopen(url, timeout=5) as resp:  # noqa: S310 (loopback only)
            doc: dict[str, Any] = json.loads(resp.read())
        return doc

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()

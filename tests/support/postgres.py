"""A private PostgreSQL cluster (`initdb` + `postgres`) on a free loopback port, in a temp dir,
stopped by PID. The binaries come from the Debian `postgresql` package (/usr/lib/postgresql/*/bin).

initdb refuses to run as root: as root, the cluster and the server run as the `postgres` user in a
temp dir it owns. The superuser `postgres` has a random password (scram-sha-256 over TCP), which
the tests give OpenBao's database secrets engine.

    pg = Postgres().start()
    pg.login("someone", "pw")    # True when that role may log in
    pg.stop()
"""

from __future__ import annotations

import glob
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.process import free_port

__all__ = ["Postgres", "postgres_missing_reason"]


def _bin_dir() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    return Path(found[-1]).parent if found else None


def postgres_missing_reason() -> str | None:
    if _bin_dir() is None:
        return "PostgreSQL is not installed (apt-get install -y postgresql): its initdb and postgres are needed"
    if shutil.which("psql") is None:
        return "psql is not installed (apt-get install -y postgresql-client)"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root, but there is no postgres user to run PostgreSQL as"
    return None


@dataclass
class Postgres:
    port: int = field(default_factory=free_port)
    password: str = field(default_factory=lambda: secrets.token_urlsafe(18))
    dir: Path | None = None
    popen: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """A connection URL template for OpenBao's database engine."""
        return f"postgresql://{{{{username}}}}:{{{{password}}}}@127.0.0.1:{self.port}/postgres?sslmode=disable"

    def _user(self) -> tuple[int, int] | None:
        if os.geteuid() != 0:
            return None
        pw = pwd.getpwnam("postgres")
        return pw.pw_uid, pw.pw_gid

    def start(self, timeout: float = 60.0) -> Postgres:
        bin_dir = _bin_dir()
        assert bin_dir is not None, postgres_missing_reason()
        # outside pytest's root-only tmp: the postgres user must reach it
        self.dir = Path(tempfile.mkdtemp(prefix="guard-pg-"))
        ids = self._user()
        if ids is not None:
            os.chown(self.dir, *ids)
        pwfile = self.dir / "pw"
        pwfile.write_text(self.password)
        if ids is not None:
            os.chown(pwfile, *ids)
        data, sock = self.dir / "data", self.dir / "sock"
        user = "postgres" if ids is not None else None
        subprocess.run([str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres", f"--pwfile={pwfile}",
                        "--auth-host=scram-sha-256", "--auth-local=trust", "-E", "UTF8", "--no-sync"],
                       check=True, capture_output=True, user=user, cwd=self.dir, timeout=120)
        sock.mkdir()
        if ids is not None:
            os.chown(sock, *ids)
        log = (self.dir / "postgres.log").open("ab")
        self.popen = subprocess.Popen(
            [str(bin_dir / "postgres"), "-D", str(data), "-p", str(self.port), "-h", "127.0.0.1",
             "-k", str(sock), "-c", "fsync=off"],
            stdout=log, stderr=subprocess.STDOUT, user=user, cwd=self.dir)
        log.close()
        deadline = time.monotonic() + timeout
        while not self.login("postgres", self.password):
            if self.popen.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"PostgreSQL did not start\n{self.log()}")
            time.sleep(0.2)
        return self

    def psql(self, user: str, password: str, sql: str = "select current_user") -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "PGPASSWORD": password, "PGCONNECT_TIMEOUT": "5"}
        return subprocess.run(["psql", "-h", "127.0.0.1", "-p", str(self.port), "-U", user, "-d", "postgres",
                               "-w", "-tAc", sql], capture_output=True, text=True, env=env, timeout=30)

    def login(self, user: str, password: str) -> bool:
        """Whether `user` may log in with `password` right now."""
        return self.psql(user, password).returncode == 0

    def log(self) -> str:
        p = self.dir / "postgres.log" if self.dir else None
        return p.read_text(errors="replace") if p and p.exists() else ""

    def stop(self) -> None:
        if self.popen is not None and self.popen.poll() is None:
            os.kill(self.popen.pid, signal.SIGINT)  # fast shutdown
            try:
                self.popen.wait(20)
            except subprocess.TimeoutExpired:
                os.kill(self.popen.pid, signal.SIGKILL)
                self.popen.wait(5)
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)

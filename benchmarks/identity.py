"""Sender-constrained tokens against the bearer allow path, in one run, on this machine.

    python -m benchmarks.identity            # 3 rounds of 4 s per scenario
    python -m benchmarks.identity --quick    # 1 round of 2 s

Two guards on the memory store: one listening with TLS (client certificates optional), one on
plain HTTP. Scenarios, interleaved round by round:
- "bearer (TLS)":  bearer task tokens over TLS, no client certificate;
- "mTLS-bound":    task tokens bound to the client's X.509-SVID (cnf.spiffe_id), same listener:
                   the binding check is a comparison, the handshake happens once per connection;
- "bearer (HTTP)": bearer task tokens over plain HTTP;
- "DPoP-bound":    DPoP-bound task tokens with a fresh proof per call, same listener: one
                   signature check and one replay check in the store per call.
Ratios: mTLS-bound ÷ bearer (TLS) (target ≥ 0.9), DPoP-bound ÷ bearer (HTTP) (reported).
The load generator signs its DPoP proofs before each phase, so their cost is not the guard's.
The certificates come from a throwaway CA made here with `cryptography`.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from benchmarks.common import PY, Proc, child_env, free_port, install_uvloop, spawn
from benchmarks.targets import policy

AGENT = "spiffe://bench/agent/worker"
MARK = "IDRESULT "


def _ca(folder: Path) -> None:
    """bundle.pem, guard.pem/key (127.0.0.1) and agent.pem/key (URI SAN AGENT) under `folder`."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bench CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
          .not_valid_after(now + datetime.timedelta(hours=2))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    (folder / "bundle.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    import ipaddress

    for name, san in (("guard", x509.IPAddress(ipaddress.ip_address("127.0.0.1"))),
                      ("agent", x509.UniformResourceIdentifier(AGENT))):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (x509.CertificateBuilder().subject_name(x509.Name([])).issuer_name(ca_name)
                .public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(minutes=5))
                .not_valid_after(now + datetime.timedelta(hours=1))
                .add_extension(x509.SubjectAlternativeName([san]), critical=True)
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .sign(ca_key, hashes.SHA256()))
        (folder / f"{name}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        (folder / f"{name}.key").write_bytes(key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))


def _client_ssl(folder: Path, with_cert: bool) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(folder / "bundle.pem"))
    if with_cert:
        ctx.load_cert_chain(str(folder / "agent.pem"), str(folder / "agent.key"))
    return ctx


def start_guard(workdir: Path, name: str, tls: bool) -> tuple[int, Proc, Path]:
    port = free_port()
    gdir = workdir / name
    gdir.mkdir()
    cfg: dict[str, Any] = {
        "listen": {"host": "127.0.0.1", "port": port},
        "audit": {"dir": str(gdir / "audit")},
        "signing": {"key_file": str(gdir / "signing-key.json")},
        "dev_key_file": str(gdir / "dev-issuer-key.json"),
        "policies": str(workdir / "policies"),
        "dev_issuer": True,
    }
    if tls:
        certs = workdir / "certs"
        cfg["listen"]["tls"] = {"cert_file": str(certs / "guard.pem"), "key_file": str(certs / "guard.key"),
                                "client_ca_file": str(certs / "bundle.pem"), "client_auth": "optional"}
        cfg["issuers"] = [{"x509": {"trust_bundle_file": str(certs / "bundle.pem"), "spiffe_id": AGENT}}]
    config = gdir / "guard.yaml"
    config.write_text(yaml.safe_dump(cfg))
    proc = spawn(name, [PY, "-m", "guard", "--config", str(config), "serve"], workdir, port)
    return port, proc, config


async def _tokens(url: str, n: int, headers_of: Any, ctx: ssl.SSLContext | None) -> list[str]:
    import aiohttp

    out = []
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx if ctx is not None else True)) as s:
        for _ in range(n):
            async with s.post(f"{url}/v1/tasks", json={"purpose": "benchmark"}, headers=headers_of()) as r:
                body = await r.json()
                assert r.status == 201, body
                out.append(body["task_token"])
    return out


def _dpop_key(pem: bytes | None = None) -> Any:
    """The agent's DPoP key (tests/support/dpop.py: proofs made by hand with cryptography)."""
    from tests.support.dpop import DpopKey

    return DpopKey(pem)


async def _generate(spec: dict[str, Any]) -> dict[str, Any]:
    """One closed-loop phase: `connections` workers, `seconds` long; the answers must be 200."""
    import aiohttp

    url = spec["url"] + "/tools/echo/items/1"
    ctx = _client_ssl(Path(spec["certs"]), spec["client_cert"]) if url.startswith("https") else None
    tokens: list[str] = spec["tokens"]
    key = _dpop_key(bytes.fromhex(spec["dpop_key"])) if spec["dpop"] else None
    per_token = max(1, int(spec["proofs"] / len(tokens)))
    proofs = [[key.proof("GET", url, t) for _ in range(per_token)] if key is not None else [] for t in tokens]
    latencies: list[float] = []
    wrong = 0
    stop_at = time.perf_counter() + spec["seconds"]
    scheme = "DPoP" if key is not None else "Bearer"

    async def worker(session: aiohttp.ClientSession, n: int) -> None:
        nonlocal wrong
        while time.perf_counter() < stop_at:
            i = n % len(tokens)
            n += 1
            headers = {"Authorization": f"{scheme} {tokens[i]}"}
            if key is not None:  # signed before the phase; on the fly only if the stock runs out
                headers["DPoP"] = proofs[i].pop() if proofs[i] else key.proof("GET", url, tokens[i])
            t0 = time.perf_counter()
            try:
                async with session.get(url, headers=headers) as r:
                    await r.read()
                    wrong += r.status != 200
            except aiohttp.ClientError:
                wrong += 1
            latencies.append((time.perf_counter() - t0) * 1000)

    conn = aiohttp.TCPConnector(limit=spec["connections"], ssl=ctx if ctx is not None else True)
    started = time.perf_counter()
    async with aiohttp.ClientSession(connector=conn) as session:
        await asyncio.gather(*(worker(session, i) for i in range(spec["connections"])))
    elapsed = time.perf_counter() - started
    latencies.sort()
    return {"requests": len(latencies), "seconds": elapsed, "p50_ms": latencies[len(latencies) // 2],
            "p99_ms": latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))], "wrong": wrong}


def run_phase(spec: dict[str, Any]) -> dict[str, Any]:
    out = subprocess.run([PY, "-m", "benchmarks.identity", "--generate", json.dumps(spec)], capture_output=True,
                         text=True, timeout=spec["seconds"] + 120, check=False, env=child_env())
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith(MARK)), None)
    if line is None:
        raise RuntimeError(f"load generator failed: {out.stderr[-1500:]}")
    result: dict[str, Any] = json.loads(line[len(MARK):])
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.identity", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--rounds", type=int)
    p.add_argument("--duration", type=float)
    p.add_argument("--connections", type=int, default=32)
    p.add_argument("--tasks", type=int, default=8)
    p.add_argument("--generate", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.generate:
        install_uvloop()
        print(MARK + json.dumps(asyncio.run(_generate(json.loads(a.generate)))), flush=True)
        return 0
    rounds, seconds = a.rounds or (1 if a.quick else 3), a.duration or (2.0 if a.quick else 4.0)
    print(f"load: aiohttp closed loop, {a.connections} connections for {seconds:g} s, {rounds} round(s) after a "
          f"warm-up; calls spread over {a.tasks} tasks")
    from benchmarks.upstream import __name__ as upstream_module

    with tempfile.TemporaryDirectory(prefix="guard-bench-id-") as tmp:
        work = Path(tmp)
        (work / "certs").mkdir()
        _ca(work / "certs")
        (work / "policies").mkdir()
        procs: list[Proc] = []
        try:
            up_port = free_port()
            (work / "policies" / "bench.yaml").write_text(yaml.safe_dump(policy(up_port)))
            procs.append(spawn("upstream", [PY, "-m", upstream_module, str(up_port)], work, up_port))
            tls_port, tls_proc, tls_cfg = start_guard(work, "guard-tls", tls=True)
            http_port, http_proc, http_cfg = start_guard(work, "guard-http", tls=False)
            procs += [tls_proc, http_proc]
            idp = subprocess.run([PY, "-m", "guard", "--config", str(http_cfg), "dev-token", "--sub", AGENT],
                                 capture_output=True, text=True, check=True, cwd=work).stdout.strip()
            idp_tls = subprocess.run([PY, "-m", "guard", "--config", str(tls_cfg), "dev-token", "--sub", AGENT],
                                     capture_output=True, text=True, check=True, cwd=work).stdout.strip()
            tls_url, http_url = f"https://127.0.0.1:{tls_port}", f"http://127.0.0.1:{http_port}"
            key = _dpop_key()
            bearer = {"Authorization": f"Bearer {idp}"}
            bearer_tls = {"Authorization": f"Bearer {idp_tls}"}
            t = a.tasks
            tok = {
                "bearer (TLS)": asyncio.run(_tokens(tls_url, t, lambda: bearer_tls,
                                                    _client_ssl(work / "certs", False))),
                "mTLS-bound": asyncio.run(_tokens(tls_url, t, dict, _client_ssl(work / "certs", True))),
                "bearer (HTTP)": asyncio.run(_tokens(http_url, t, lambda: bearer, None)),
                "DPoP-bound": asyncio.run(_tokens(http_url, t, lambda: {
                    **bearer, "DPoP": key.proof("POST", f"{http_url}/v1/tasks")}, None)),
            }
            scen = {
                "bearer (TLS)": {"url": tls_url, "client_cert": False, "dpop": False},
                "mTLS-bound": {"url": tls_url, "client_cert": True, "dpop": False},
                "bearer (HTTP)": {"url": http_url, "client_cert": False, "dpop": False},
                "DPoP-bound": {"url": http_url, "client_cert": False, "dpop": True},
            }
            results: dict[str, list[dict[str, Any]]] = {n: [] for n in scen}
            rate = 3000.0
            for r in range(rounds + 1):  # the first round warms up
                for name, sc in scen.items():
                    spec = {**sc, "certs": str(work / "certs"), "tokens": tok[name], "connections": a.connections,
                            "seconds": 1.0 if r == 0 else seconds, "dpop_key": key.pem().hex(),
                            "proofs": int(rate * (1.0 if r == 0 else seconds) * 1.5)}
                    res = run_phase(spec)
                    if r:
                        results[name].append(res)
        finally:
            for proc in reversed(procs):
                proc.stop()
    rows = []
    for name, rs in results.items():
        rps = statistics.median(x["requests"] / x["seconds"] for x in rs)
        rows.append((name, rps, statistics.median(x["p50_ms"] for x in rs),
                     statistics.median(x["p99_ms"] for x in rs), sum(x["wrong"] for x in rs)))
    print("| scenario | req/s | p50 ms | p99 ms | errors |")
    print("|---|---|---|---|---|")
    for name, rps, p50, p99, wrong in rows:
        print(f"| {name} | {rps:,.0f} | {p50:.2f} | {p99:.2f} | {wrong} |")

    def ratio(a_: str, b_: str) -> float:
        return float(statistics.median(x["requests"] / x["seconds"] / (y["requests"] / y["seconds"])
                                 for x, y in zip(results[a_], results[b_], strict=True)))

    mtls, dpop = ratio("mTLS-bound", "bearer (TLS)"), ratio("DPoP-bound", "bearer (HTTP)")
    print(f"\nmTLS-bound ÷ bearer (TLS): {mtls:.2f} ({'ok' if mtls >= 0.9 else 'MISS'}: target ≥ 0.9)")
    print(f"DPoP-bound ÷ bearer (HTTP): {dpop:.2f} (reported)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""guard against a bare aiohttp proxy, in one run, on this machine.

    python -m benchmarks.run            # the full run (a few minutes on 2 cores)
    python -m benchmarks.run --quick    # a smoke run of about a minute

Every target answers the same load in interleaved rounds (warm-up first): a closed-loop phase
with many keep-alive connections, then one connection for unloaded latency. Figures are medians
over rounds; ratios to the bare proxy are taken round by round, then their median.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.load import Request, Result, have_wrk, run_load
from benchmarks.targets import Environment, Target, redis_missing, text_body

BARE, MEM, REDIS = "bare proxy", "guard memory", "guard redis"
MEM_DETECTORS = "guard memory detectors"  # inspect: {detectors: [secrets, pii]}
MCP_BODY = ('{"jsonrpc":"2.0","id":1,"method":"tools/call",'
            '"params":{"name":"read_file","arguments":{"path":"/docs/a.md"}}}')


@dataclass(frozen=True)
class Scenario:
    name: str
    request: Callable[[Target, tuple[str, ...]], Request]  # (target, task tokens) -> what to send
    guard_expect: int = 200
    detectors: bool = False  # also against the guard with the content detectors on


SCENARIOS = [
    Scenario("http allow", lambda t, tok: Request("GET", "/tools/echo/items/1", tokens=tok)),
    Scenario("deny", lambda t, tok: Request("DELETE", "/tools/echo/items/1", tokens=tok,
                                            expect=200 if t.name == BARE else 403), guard_expect=403),
    Scenario("mcp tools/call", lambda t, tok: Request(
        "POST", "/mcp/files", {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"},
        MCP_BODY, tokens=tok)),
    Scenario("chained call", lambda t, tok: Request("GET", f"/tools/chainer/chain?via={t.port}", tokens=tok)),
    Scenario("allow 1 KiB", lambda t, tok: Request("POST", "/tools/echo/items", {"Content-Type": "application/json"},
                                                   text_body(1024), tokens=tok), detectors=True),
    Scenario("allow 64 KiB", lambda t, tok: Request("POST", "/tools/echo/items", {"Content-Type": "application/json"},
                                                    text_body(65536), tokens=tok), detectors=True),
]


@dataclass
class Rounds:
    loaded: list[Result] = field(default_factory=list)
    unloaded: list[Result] = field(default_factory=list)


@dataclass
class Settings:
    rounds: int
    seconds: float
    latency_seconds: float
    connections: int
    tasks: int
    rss_calls: tuple[int, int]
    wrk: bool


def parse_args(argv: list[str] | None) -> tuple[Settings, argparse.Namespace]:
    p = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="a smoke run of about a minute")
    p.add_argument("--rounds", type=int, help="measured rounds per scenario (default 3, quick 1)")
    p.add_argument("--duration", type=float, help="seconds of each closed-loop phase (default 4, quick 2)")
    p.add_argument("--latency-duration", type=float, help="seconds of each one-connection phase (default 3, quick 1)")
    p.add_argument("--connections", type=int, default=64, help="keep-alive connections of the closed loop")
    p.add_argument("--tasks", type=int, default=32, help="tasks the calls are spread over (one token each)")
    p.add_argument("--rss-calls", default=None, help="LOW,HIGH calls for the memory comparison (10000,200000)")
    p.add_argument("--no-wrk", action="store_true", help="use the aiohttp load generator even if wrk is installed")
    p.add_argument("--only", action="append", help="run only this scenario (repeatable; 'rss' for the memory one)")
    p.add_argument("--no-redis", action="store_true", help="skip the Redis targets")
    a = p.parse_args(argv)
    q = a.quick
    rss = a.rss_calls or ("2000,20000" if q else "10000,200000")
    lo, hi = (int(x) for x in rss.split(","))
    s = Settings(rounds=a.rounds or (1 if q else 3), seconds=a.duration or (2.0 if q else 4.0),
                 latency_seconds=a.latency_duration or (1.0 if q else 3.0), connections=a.connections,
                 tasks=a.tasks, rss_calls=(lo, hi), wrk=have_wrk() and not a.no_wrk)
    return s, a


def machine() -> str:
    model = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    system = f"{platform.system()} {platform.release()}"
    return f"{os.cpu_count()} cores ({model}), {system}, Python {platform.python_version()}"


def loader_name(s: Settings) -> str:
    if not s.wrk:
        return "aiohttp closed-loop generator (wrk not installed)"
    out = subprocess.run(["wrk", "--version"], capture_output=True, text=True, check=False)
    return (out.stdout or out.stderr).split("\n", 1)[0].split(" [")[0].strip() or "wrk"


def _med(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def summarize(name: str, results: dict[str, Rounds]) -> list[list[str]]:
    bare = results.get(BARE)
    rows = []
    for target, r in results.items():
        rps = _med([x.rps for x in r.loaded])
        row = [name, target, f"{rps:,.0f}", f"{_med([x.p50_ms for x in r.loaded]):.2f}",
               f"{_med([x.p99_ms for x in r.loaded]):.2f}", f"{_med([x.p50_ms for x in r.unloaded]):.3f}",
               f"{_med([x.p99_ms for x in r.unloaded]):.3f}"]
        if bare is not None and target != BARE:
            ratio = _med([g.rps / b.rps for g, b in zip(r.loaded, bare.loaded, strict=True) if b.rps])
            d50 = _med([(g.p50_ms - b.p50_ms) * 1000 for g, b in zip(r.unloaded, bare.unloaded, strict=True)])
            d99 = _med([(g.p99_ms - b.p99_ms) * 1000 for g, b in zip(r.unloaded, bare.unloaded, strict=True)])
            row += [f"{ratio:.2f}", f"{d50:+.0f}", f"{d99:+.0f}"]
        else:
            row += ["1.00" if target == BARE else "-", "-", "-"]
        bad = sum(x.unexpected for x in r.loaded + r.unloaded)
        row.append(str(bad))
        rows.append(row)
    return rows


HEADER = ["scenario", "target", "req/s", "p50 ms", "p99 ms", "1-conn p50", "1-conn p99",
          "÷ bare", "+p50 µs", "+p99 µs", "errors"]


def print_table(rows: list[list[str]]) -> None:
    widths = [max(len(r[i]) for r in [HEADER, *rows]) for i in range(len(HEADER))]
    print("| " + " | ".join(h.ljust(w) for h, w in zip(HEADER, widths, strict=True)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in rows:
        print("| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |")
    sys.stdout.flush()


def drive_calls(target: Target, calls: int, done: int, s: Settings) -> int:
    """Send http allow calls until `calls` have been made in total; returns the new total."""
    req = Request("GET", "/tools/echo/items/1", tokens=tuple(target.tokens))
    rate = 1000.0
    while done < calls:
        seconds = min(30.0, max(1.0, (calls - done) / rate))
        r = run_load(target.port, req, s.connections, seconds, s.wrk)
        done += r.requests
        rate = max(100.0, r.rps)
    return done


def rss_phase(env: Environment, s: Settings) -> list[str]:
    target = env.start_guard("guard memory rss", "memory://", s.tasks)
    lo, hi = s.rss_calls
    done = drive_calls(target, lo, 0, s)
    time.sleep(0.5)
    rss_lo = target.proc.rss_kib()
    done_hi = drive_calls(target, hi, done, s)
    time.sleep(0.5)
    rss_hi = target.proc.rss_kib()
    target.proc.stop()
    growth = (rss_hi - rss_lo) / rss_lo * 100
    return [f"guard memory RSS after {done:,} calls: {rss_lo / 1024:.1f} MiB; after {done_hi:,} calls: "
            f"{rss_hi / 1024:.1f} MiB ({growth:+.1f} %)", f"{growth:.1f}"]


def _over(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def check_targets(rows: list[list[str]], rss_growth: str | None) -> list[str]:
    def cell(scenario: str, target: str, col: str) -> float | None:
        i = HEADER.index(col)
        for r in rows:
            if r[0] == scenario and r[1] == target and r[i] not in ("-", "nan"):
                return float(r[i])
        return None

    checks = [
        ("HTTP allow, memory: throughput ÷ bare ≥ 0.4", cell("http allow", MEM, "÷ bare"), 0.4, True),
        ("allow 1 KiB, detectors on: ÷ bare over detectors off's ≥ 0.85", _over(
            cell("allow 1 KiB", MEM_DETECTORS, "÷ bare"), cell("allow 1 KiB", MEM, "÷ bare")), 0.85, True),
        ("HTTP allow, Redis: throughput ÷ bare ≥ 0.3", cell("http allow", REDIS, "÷ bare"), 0.3, True),
        ("deny path, memory ÷ bare ≥ 1.0", cell("deny", MEM, "÷ bare"), 1.0, True),
        ("MCP tools/call, memory ÷ bare ≥ 0.35", cell("mcp tools/call", MEM, "÷ bare"), 0.35, True),
        ("unloaded added p50, memory ≤ 250 µs", cell("http allow", MEM, "+p50 µs"), 250, False),
        ("unloaded added p50, Redis ≤ 400 µs", cell("http allow", REDIS, "+p50 µs"), 400, False),
        ("unloaded added p99, memory ≤ 500 µs", cell("http allow", MEM, "+p99 µs"), 500, False),
        ("RSS after many calls ≤ +10 %", float(rss_growth) if rss_growth else None, 10, False),
    ]
    out = []
    for label, value, limit, at_least in checks:
        if value is None:
            out.append(f"  -    {label}: not measured")
            continue
        ok = value >= limit if at_least else value <= limit
        out.append(f"  {'ok  ' if ok else 'MISS'} {label}: {value:g}")
    return out


def main(argv: list[str] | None = None) -> int:
    s, args = parse_args(argv)
    print(f"machine: {machine()}")
    print(f"load: {loader_name(s)}, {s.connections} connections closed loop for {s.seconds:g} s, then 1 connection "
          f"for {s.latency_seconds:g} s; {s.rounds} round(s) after a warm-up; calls spread over {s.tasks} tasks")
    skip = "the Redis targets are skipped (--no-redis)" if args.no_redis else redis_missing()
    if skip:
        print(f"note: {skip}")
    only = set(args.only or [])
    with tempfile.TemporaryDirectory(prefix="guard-bench-") as tmp:
        env = Environment(Path(tmp))
        try:
            env.start_upstream()
            targets = [env.start_bare(), env.start_guard(MEM, "memory://", s.tasks)]
            if not skip:
                targets.append(env.start_guard(REDIS, env.start_redis(), s.tasks))
            if any(sc.detectors and (not only or sc.name in only) for sc in SCENARIOS):
                targets.append(env.start_guard(MEM_DETECTORS, "memory://", s.tasks, detectors=True))
            print("targets: " + ", ".join(f"{t.name} (pid {t.proc.pid})" for t in targets), flush=True)
            rows: list[list[str]] = []
            for sc in SCENARIOS:
                if only and sc.name not in only:
                    continue
                rows += summarize(sc.name, run_scenario(
                    sc, [t for t in targets if sc.detectors or t.name != MEM_DETECTORS], s))
            print()
            print_table(rows)
            rss = None
            if not only or "rss" in only:
                line, rss = rss_phase(env, s)
                print(line)
            print("\ntargets:")
            print("\n".join(check_targets(rows, rss)))
        finally:
            env.stop()
    return 0


def run_scenario(sc: Scenario, targets: list[Target], s: Settings) -> dict[str, Rounds]:
    """Every target gets the tokens of its own tasks; the bare proxy sends the memory guard's
    (it ignores them), so the requests are byte for byte alike."""
    out = {t.name: Rounds() for t in targets}
    tokens = {t.name: tuple(t.tokens) for t in targets}
    tokens[BARE] = tokens[MEM]
    for t in targets:  # warm-up: 1 s, or a measured phase if that is shorter (a smoke run)
        run_load(t.port, sc.request(t, tokens[t.name]), s.connections, min(1.0, s.seconds), s.wrk)
    for _ in range(s.rounds):
        for t in targets:
            out[t.name].loaded.append(
                run_load(t.port, sc.request(t, tokens[t.name]), s.connections, s.seconds, s.wrk))
        for t in targets:
            out[t.name].unloaded.append(
                run_load(t.port, sc.request(t, tokens[t.name]), 1, s.latency_seconds, s.wrk))
    return out


if __name__ == "__main__":
    sys.exit(main())

"""Throughput when the load concentrates on one task, and when guard runs as several processes.

    python -m benchmarks.scale busy        # every connection on one task, memory and Redis stores
    python -m benchmarks.scale instances   # two guard processes on one Redis, the same tasks
    python -m benchmarks.scale workers     # guard serve --workers 2 on Redis, against 1 worker
    python -m benchmarks.scale             # the three, one after the other

Each compares two loads in interleaved rounds (warm-up first): spread load (the calls spread over
32 tasks) against one busy task; one instance against two (the load generator's connections
round-robin over their ports); one worker against two. The requests are an http POST with a
1 KiB JSON body and an MCP tools/call. Beside req/s and latency it prints the CPU time per call
of the guard processes and of redis-server (from /proc/<pid>/stat), and how busy each was, so a
run says whether guard, Redis or the load generator set the pace. Afterwards `guard audit verify`
checks the chains of the tasks that were used. `--baseline DIR` (repeatable) also runs the guard of
another checkout (DIR on PYTHONPATH) beside this one, for before/after ratios in one run; with
`--spread-only` the busy scenario measures only the spread load, each checkout over this one.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.common import PY, Proc, free_port, spawn
from benchmarks.load import Request, Result, have_wrk, run_load
from benchmarks.run import MCP_BODY, Settings, loader_name, machine
from benchmarks.targets import AGENT, Environment, _post_json, redis_missing

TICK = os.sysconf("SC_CLK_TCK")
POST_BODY = json.dumps({"title": "a note", "tags": ["bench", "scale"], "body": "x" * 960}, separators=(",", ":"))
SCENARIOS = ("busy", "instances", "workers")


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (0 when it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICK


def machine_busy() -> float:
    """CPU seconds all cores spent not idle, since boot (/proc/stat)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(fields[:8]) - fields[3] - fields[4]) / TICK


def scripts_run(redis_url: str) -> int:
    """Lua scripts redis-server has run (EVALSHA and EVAL calls, INFO commandstats): a record
    appended again after another instance appended first runs its script twice."""
    port = redis_url.rsplit(":", 1)[1].split("/", 1)[0]
    out = subprocess.run(["redis-cli", "-p", port, "info", "commandstats"], capture_output=True, text=True,
                         check=False).stdout
    total = 0
    for line in out.splitlines():
        if line.startswith(("cmdstat_evalsha:", "cmdstat_eval:")):
            total += int(line.split("calls=", 1)[1].split(",", 1)[0])
    return total


def with_children(pids: list[int]) -> list[int]:
    """The processes and their children (the workers of `guard serve --workers N`)."""
    out = list(pids)
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if ppid in pids:
            out.append(int(stat.parent.name))
    return out


@dataclass
class Setup:
    """What one load is sent to: one or more guard ports, with their processes and tasks."""

    name: str
    ports: tuple[int, ...]
    procs: list[Proc]
    configs: list[Path]
    tokens: list[str]  # 33 task tokens: 32 spread the load, the last one is the busy task
    task_ids: list[str]
    redis_pid: int | None


@dataclass
class Cell:
    setup: Setup
    request: str  # "http POST 1 KiB" or "mcp tools/call"
    load: str  # "spread over 32 tasks" or "one task"
    # the result, CPU seconds of guard, Redis, the load generator and the whole machine, and
    # the Lua scripts Redis ran
    results: list[tuple[Result, float, float, float, float, int]] = field(default_factory=list)


@dataclass
class Bench:
    env: Environment
    args: argparse.Namespace
    wrk: bool
    redis_url: str = ""
    redis_pid: int | None = None
    count: int = 0

    def redis(self) -> tuple[str, int]:
        if not self.redis_url:
            self.redis_url = self.env.start_redis()
            self.redis_pid = self.env.procs[-1].pid
        assert self.redis_pid is not None
        return self.redis_url, self.redis_pid

    def start(self, name: str, store_url: str, instances: int = 1, workers: int = 1,
              baseline: str | None = None) -> Setup:
        """`instances` guard processes on one store, sharing their keys (a task token works on
        each); the tasks are created on the first. `baseline`: the checkout whose guard runs."""
        self.count += 1
        gdir = self.env.dir / f"setup-{self.count}"
        gdir.mkdir()
        procs, ports, configs = [], [], []
        for i in range(instances):
            port = free_port()
            config = self.env.guard_config(gdir, port, store_url, f"-{i}")
            extra = ["--workers", str(workers)] if workers > 1 else []
            env = {"PYTHONPATH": baseline} if baseline else None
            procs.append(spawn(f"{name} {i}".replace(" ", "-"),
                               [PY, "-m", "guard", "--config", str(config), "serve", *extra], gdir, port, env))
            self.env.procs.append(procs[-1])
            ports.append(port)
            configs.append(config)
            if i == 0:  # the second instance reads the keys the first created
                time.sleep(0.2)
        idp = self.cli(configs[0], "dev-token", "--sub", AGENT)
        url = f"http://127.0.0.1:{ports[0]}/v1/tasks"
        made = [_post_json(url, {"purpose": "benchmark", "requested_by": "bench@example", "ttl_s": 3600}, idp)
                for _ in range(33)]
        redis_pid = self.redis_pid if store_url.startswith("redis") else None
        return Setup(name, tuple(ports), procs, configs, [m["task_token"] for m in made],
                     [m["task_id"] for m in made], redis_pid)

    def cli(self, config: Path, *args: str) -> str:
        out = subprocess.run([PY, "-m", "guard", "--config", str(config), *args], capture_output=True, text=True,
                             check=False, cwd=self.env.dir)
        if out.returncode != 0:
            raise RuntimeError(f"guard {' '.join(args[:3])} exited {out.returncode}: {out.stdout}{out.stderr}")
        return out.stdout.strip()


def request_for(cell: Cell) -> Request:
    tokens = tuple(cell.setup.tokens[:32]) if cell.load.startswith("spread") else (cell.setup.tokens[32],)
    if cell.request.startswith("mcp"):
        return Request("POST", "/mcp/files", {"Content-Type": "application/json",
                                              "Accept": "application/json, text/event-stream"}, MCP_BODY,
                       tokens=tokens)
    return Request("POST", "/tools/echo/items", {"Content-Type": "application/json"}, POST_BODY, tokens=tokens)


def children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def measure(cell: Cell, seconds: float, bench: Bench) -> tuple[Result, float, float, float, float, int]:
    """One closed-loop phase: the result, and the CPU seconds of guard, Redis, the load generator
    and the whole machine (other work on it shows there)."""
    pids = with_children([p.pid for p in cell.setup.procs])
    g0 = sum(cpu_seconds(p) for p in pids)
    r0 = cpu_seconds(cell.setup.redis_pid) if cell.setup.redis_pid else 0.0
    l0, m0 = children_cpu(), machine_busy()
    s0 = scripts_run(bench.redis_url) if cell.setup.redis_pid else 0
    result = run_load(cell.setup.ports, request_for(cell), bench.args.connections, seconds, bench.wrk)
    g1 = sum(cpu_seconds(p) for p in pids)
    r1 = cpu_seconds(cell.setup.redis_pid) if cell.setup.redis_pid else 0.0
    scripts = scripts_run(bench.redis_url) - s0 if cell.setup.redis_pid else 0
    return result, g1 - g0, r1 - r0, children_cpu() - l0, machine_busy() - m0, scripts


def run_cells(cells: list[Cell], bench: Bench) -> None:
    for cell in cells:
        # warm-up: 1 s, or a measured phase if that is shorter (a smoke run)
        run_load(cell.setup.ports, request_for(cell), bench.args.connections, min(1.0, bench.args.duration), bench.wrk)
    for _ in range(bench.args.rounds):
        for cell in cells:
            cell.results.append(measure(cell, bench.args.duration, bench))


def _med(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def figures(cell: Cell) -> dict[str, float]:
    rs = cell.results
    calls = [r.requests for r, *_ in rs]
    return {
        "rps": _med([r.rps for r, *_ in rs]),
        "p50": _med([r.p50_ms for r, *_ in rs]),
        "p99": _med([r.p99_ms for r, *_ in rs]),
        "guard_us": _med([x[1] / n * 1e6 for x, n in zip(rs, calls, strict=True) if n]),
        "redis_us": _med([x[2] / n * 1e6 for x, n in zip(rs, calls, strict=True) if n]),
        "guard_busy": _med([x[1] / x[0].seconds for x in rs]),
        "redis_busy": _med([x[2] / x[0].seconds for x in rs]),
        "load_busy": _med([x[3] / x[0].seconds for x in rs]),
        "machine_busy": _med([x[4] / x[0].seconds for x in rs]),
        "scripts": _med([x[5] / n for x, n in zip(rs, calls, strict=True) if n]),
        "errors": float(sum(r.unexpected for r, *_ in rs)),
    }


HEADER = ["setup", "request", "load", "req/s", "p50 ms", "p99 ms", "÷ first", "guard µs/call", "redis µs/call",
          "cores: guard / redis / load / machine", "errors"]


def table(cells: list[Cell], pairs: list[tuple[Cell, Cell]]) -> list[list[str]]:
    """One row per cell; `÷ first` is its req/s over its pair's first cell, round by round."""
    first = {id(b): a for a, b in pairs}
    rows = []
    for c in cells:
        f = figures(c)
        ratio = "1.00" if any(a is c for a, _ in pairs) else "-"
        if id(c) in first:
            a = first[id(c)]
            ratio = f"{_med([y.rps / x.rps for (x, *_), (y, *_) in zip(a.results, c.results, strict=True)]):.2f}"
        redis = f"{f['redis_us']:.0f}" if c.setup.redis_pid else "-"
        cores = f"{f['guard_busy']:.2f} / " + (f"{f['redis_busy']:.2f}" if c.setup.redis_pid else "-") + \
            f" / {f['load_busy']:.2f} / {f['machine_busy']:.2f}"
        rows.append([c.setup.name, c.request, c.load, f"{f['rps']:,.0f}", f"{f['p50']:.2f}", f"{f['p99']:.2f}", ratio,
                     f"{f['guard_us']:.0f}", redis, cores, f"{f['errors']:.0f}"])
    return rows


def print_table(rows: list[list[str]]) -> None:
    widths = [max(len(r[i]) for r in [HEADER, *rows]) for i in range(len(HEADER))]
    print("| " + " | ".join(h.ljust(w) for h, w in zip(HEADER, widths, strict=True)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in rows:
        print("| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |")
    sys.stdout.flush()


def pace(cell: Cell) -> str:
    """What set the pace of a phase: the busiest process, or the machine's cores all in use."""
    f = figures(cell)
    cores = os.cpu_count() or 1
    busy = {"guard": f["guard_busy"] / max(1, len(cell.setup.procs) * _workers(cell)),
            "redis-server": f["redis_busy"], "the load generator": f["load_busy"]}
    ours = f["guard_busy"] + f["redis_busy"] + f["load_busy"]
    if f["machine_busy"] >= 0.9 * cores:
        return f"the machine ({f['machine_busy']:.2f} of {cores} cores busy, {ours:.2f} of them this benchmark's)"
    who = max(busy, key=lambda k: busy[k])
    return f"{who} ({busy[who]:.2f} of a core)"


def _workers(cell: Cell) -> int:
    return 2 if "2 workers" in cell.setup.name else 1


def verify(bench: Bench, setups: list[Setup]) -> None:
    """`guard audit verify` on the busy task and a spread one of every setup (exit 2 if broken)."""
    checked = 0
    for s in setups:
        token = bench.cli(s.configs[0], "dev-token", "--sub", "bench-auditor", "--role", "guard:auditor")
        for task_id in (s.task_ids[32], s.task_ids[0]):
            out = bench.cli(s.configs[0], "audit", "verify", task_id, "--url", f"http://127.0.0.1:{s.ports[-1]}",
                            "--token", token)
            checked += 1
            if bench.args.verbose:
                print(f"  {s.name}: {out}")
    print(f"guard audit verify: {checked} chains verified (the busy task and a spread one of each setup)")


def scenario_busy(bench: Bench) -> tuple[list[Cell], list[tuple[Cell, Cell]], list[Setup]]:
    setups = [bench.start("guard memory", "memory://")]
    if bench.redis_url or not redis_missing():
        setups.append(bench.start("guard redis", bench.redis()[0]))
        for checkout in bench.args.baseline:  # the same code path before a change, side by side
            setups.append(bench.start(f"guard redis ({Path(checkout).name})", bench.redis()[0], baseline=checkout))
    cells, pairs = [], []
    ours: dict[tuple[str, bool], Cell] = {}  # this checkout's spread cell per request and store
    for s in setups:
        for req in ("http POST 1 KiB", "mcp tools/call"):
            spread, busy = Cell(s, req, "spread over 32 tasks"), Cell(s, req, "one task")
            if bench.args.spread_only:  # before/after of the common case: each checkout ÷ this one, same store
                first = ours.setdefault((req, s.redis_pid is not None), spread)
                cells.append(spread)
                pairs.append((first, spread))
                continue
            cells += [spread, busy]
            pairs.append((spread, busy))
    return cells, pairs, setups


def scenario_instances(bench: Bench) -> tuple[list[Cell], list[tuple[Cell, Cell]], list[Setup]]:
    url = bench.redis()[0]
    two = bench.start("guard redis, 2 instances", url, instances=2)
    one = Setup("guard redis, 1 instance", two.ports[:1], two.procs, two.configs, two.tokens, two.task_ids,
                two.redis_pid)
    cells, pairs = [], []
    for load in ("spread over 32 tasks", "one task"):
        a, b = Cell(one, "http POST 1 KiB", load), Cell(two, "http POST 1 KiB", load)
        cells += [a, b]
        pairs.append((a, b))
    return cells, pairs, [two]


def scenario_workers(bench: Bench) -> tuple[list[Cell], list[tuple[Cell, Cell]], list[Setup]]:
    url = bench.redis()[0]
    one = bench.start("guard redis, 1 worker", url)
    two = bench.start("guard redis, 2 workers", url, workers=2)
    cells, pairs = [], []
    for load in ("spread over 32 tasks", "one task"):
        a, b = Cell(one, "http POST 1 KiB", load), Cell(two, "http POST 1 KiB", load)
        cells += [a, b]
        pairs.append((a, b))
    return cells, pairs, [one, two]


def summary(name: str, pairs: list[tuple[Cell, Cell]]) -> Iterator[str]:
    for a, b in pairs:
        fa, fb = figures(a), figures(b)
        ratio = _med([y.rps / x.rps for (x, *_), (y, *_) in zip(a.results, b.results, strict=True)])
        if a.load == b.load and name == "busy":  # --spread-only: a checkout against this one
            line = f"  {b.setup.name}, {b.request}: ÷ {a.setup.name}: req/s {ratio:.2f}"
        else:
            line = f"  {b.setup.name}, {b.request}: {b.load if name == 'busy' else b.setup.name.split(', ')[-1]} " \
                   f"÷ {a.load if name == 'busy' else a.setup.name.split(', ')[-1]}: req/s {ratio:.2f}"
        if a.setup.redis_pid:
            line += (f", redis CPU per call {fb['redis_us'] / fa['redis_us']:.2f} "
                     f"(Lua scripts per call {fa['scripts']:.2f} → {fb['scripts']:.2f})")
        line += f"; paced by {pace(b)}"
        yield line


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.scale", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("scenario", nargs="*", help="busy, instances, workers (default: all)")
    p.add_argument("--rounds", type=int, default=2, help="measured rounds per cell (default 2)")
    p.add_argument("--duration", type=float, default=4.0, help="seconds of each closed-loop phase (default 4)")
    p.add_argument("--connections", type=int, default=64, help="keep-alive connections of the closed loop")
    p.add_argument("--no-wrk", action="store_true", help="use the aiohttp load generator even if wrk is installed")
    p.add_argument("--baseline", action="append", default=[], metavar="DIR",
                   help="also run the guard of this checkout (busy scenario), for before/after; repeatable")
    p.add_argument("--spread-only", action="store_true",
                   help="busy scenario: only the spread load (for before/after comparisons of the common case)")
    p.add_argument("--verbose", action="store_true", help="print each `guard audit verify` answer")
    args = p.parse_args(argv)
    unknown = set(args.scenario) - set(SCENARIOS)
    if unknown:
        p.error(f"unknown scenario {', '.join(sorted(unknown))} (choose from {', '.join(SCENARIOS)})")
    chosen = [s for s in SCENARIOS if not args.scenario or s in args.scenario]
    bench_wrk = have_wrk() and not args.no_wrk
    print(f"machine: {machine()}")
    loader = loader_name(Settings(1, 0, 0, 0, 0, (0, 0), bench_wrk))
    print(f"load: {loader}, {args.connections} connections closed loop for {args.duration:g} s, "
          f"{args.rounds} round(s) after a warm-up")
    skip = redis_missing()
    with tempfile.TemporaryDirectory(prefix="guard-scale-") as tmp:
        env = Environment(Path(tmp))
        bench = Bench(env, args, bench_wrk)
        try:
            env.start_upstream()
            for name in chosen:
                if skip and name != "busy":
                    print(f"\n{name}: skipped, {skip}")
                    continue
                cells, pairs, setups = {"busy": scenario_busy, "instances": scenario_instances,
                                        "workers": scenario_workers}[name](bench)
                run_cells(cells, bench)
                print(f"\n{name}:")
                print_table(table(cells, pairs))
                print("\n".join(summary(name, pairs)))
                verify(bench, setups)
                for s in setups:  # the next scenario has the machine to itself
                    for proc in s.procs:
                        proc.stop()
        finally:
            env.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())

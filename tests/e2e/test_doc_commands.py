"""Every `guard …` command line the documents show works: README.md and docs/*.md.

The command lines are read from the documents themselves: every fenced shell block (a line, or a
`$(…)`, `|` or `;` segment of one, that runs `guard`, `.venv/bin/guard` or `python -m guard`) and
every inline code span that starts with one. Placeholders (`<task_id>`, `TASK`, `task_3f…`, `N`,
`$TOKEN`, …) are filled with real values, and `--config`/`--url` get the running guard's.

- A fenced command line must parse with the real CLI parser, and then run against a real guard
  started from the repository's policies (exit 0; `guard serve` must start and answer
  /healthz). One that needs what this test cannot give (see NEEDS) runs with `--help` instead.
- An inline span is often a mention (`guard audit verify` in a sentence): it must parse, except
  that required arguments it leaves out may be missing.

A document that shows a command the CLI no longer takes, or a placeholder this test does not know,
fails here: documents and CLI cannot drift apart.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shlex
import shutil
import subprocess
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from guard.cli.main import build_parser
from tests.support.client import AGENT
from tests.support.guard import Guard, write_guard
from tests.support.process import PY, ROOT, free_port, spawn, wait_port

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
NOT_SHELL = {"yaml", "yml", "json", "python", "py", "js", "javascript", "toml", "ini", "html", "css", "http",
             "dockerfile", "mermaid"}
# flags whose command the test runs with --help only, and why
NEEDS = {"--workers": "more than one worker needs the Redis store"}
_FENCE = re.compile(r"^\s*(```+|~~~+)\s*([\w+-]*)")
_INLINE = re.compile(r"(?<!`)`([^`\n]+)`(?!`)")
_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
_PUNCTUATION = set("();<>|&")


@dataclass(frozen=True)
class DocCommand:
    where: str  # file:line
    text: str  # the command line as the document shows it
    args: tuple[str, ...]  # what follows `guard`
    fenced: bool


def _tokens(line: str) -> list[str]:
    # a `<placeholder>` is one word, not two redirections
    line = re.sub(r"<([A-Za-z][\w .-]*)>", lambda m: "\u27e8" + m.group(1).replace(" ", "_") + "\u27e9", line)
    lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    lexer.commenters = ""  # comments are cut before: a `#` inside a word is not one
    return [t.replace("\u27e8", "<").replace("\u27e9", ">") for t in lexer]


def _guard_args(segment: list[str]) -> list[str] | None:
    """The arguments of a `guard` invocation, or None when the segment runs something else."""
    while segment and _ASSIGNMENT.match(segment[0]):
        segment = segment[1:]
    if not segment:
        return None
    if Path(segment[0]).name == "guard":
        return segment[1:]
    if Path(segment[0]).name.startswith("python") and segment[1:3] == ["-m", "guard"]:
        return segment[3:]
    return None


def _segments(tokens: list[str]) -> Iterator[list[str]]:
    current: list[str] = []
    for t in tokens:
        if set(t) <= _PUNCTUATION:
            yield current
            current = []
        else:
            current.append(t)
    yield current


def _shell_lines(lines: list[str], start: int) -> Iterator[tuple[int, str]]:
    """Logical lines of a shell block (continuations joined, prompts and comments cut)."""
    pending, first = "", start
    for n, raw in enumerate(lines, start):
        line = re.sub(r"^\s*\$ ", "", raw) if not pending else raw
        line = re.sub(r"(^|\s)#.*$", "", line).rstrip()
        if not pending:
            first = n
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        yield first, pending + line
        pending = ""
    if pending:
        yield first, pending


def doc_commands(path: Path) -> list[DocCommand]:
    name = path.relative_to(ROOT).as_posix()
    out: list[DocCommand] = []
    lines = path.read_text(encoding="utf-8").splitlines()
    fence: str | None = None
    lang, block_start = "", 0
    block: list[str] = []
    for n, line in enumerate(lines, 1):
        m = _FENCE.match(line)
        if fence is None and m:
            fence, lang, block, block_start = m.group(1), m.group(2).lower(), [], n + 1
            continue
        if fence is not None:
            if line.strip().startswith(fence) and line.strip().strip(fence[0]) == "":
                if lang not in NOT_SHELL:
                    out += _fenced(name, block, block_start)
                fence = None
            else:
                block.append(line)
            continue
        for span in _INLINE.findall(line):
            try:
                segments = list(_segments(_tokens(span)))
            except ValueError:
                continue
            args = _guard_args(segments[0])
            if args is not None:
                out.append(DocCommand(f"{name}:{n}", span, tuple(args), fenced=False))
    return out


def _fenced(name: str, block: list[str], start: int) -> list[DocCommand]:
    out = []
    for n, line in _shell_lines(block, start):
        try:
            tokens = _tokens(line)
        except ValueError:  # not shell (a diagram, a log excerpt), unless it plainly runs guard
            assert not re.search(r"(^|\$\(|[|;&]\s*)(\S*/)?guard\s+[a-z-]", line), f"{name}:{n}: cannot split {line!r}"
            continue
        for segment in _segments(tokens):
            args = _guard_args(segment)
            if args is not None:
                out.append(DocCommand(f"{name}:{n}", line.strip(), tuple(args), fenced=True))
    return out


COMMANDS = [c for doc in DOCS for c in doc_commands(doc)]


# ------------------------------------------------------------------------------- placeholders


@dataclass(frozen=True)
class Values:
    task_id: str
    token: str
    url: str
    config: str
    policies: str


def _placeholder(name: str, v: Values) -> str | None:
    key = re.sub(r"[\s-]+", "_", name.strip().lower())
    known = {"task_id": v.task_id, "task": v.task_id, "id": v.task_id, "n": "2", "file": v.config,
             "config": v.config, "sub": AGENT, "agent": AGENT, "path": v.policies, "dir": v.policies,
             "url": v.url, "token": v.token, "since": "0"}
    return known.get(key)


def fill(cmd: DocCommand, v: Values) -> list[str]:
    """The documented arguments with every placeholder replaced; an unknown one fails the test."""
    out: list[str] = []
    for i, arg in enumerate(cmd.args):
        prev = cmd.args[i - 1] if i else None
        value: str | None = arg
        if prev == "--config":
            value = v.config
        elif prev == "--url":
            value = v.url
        elif arg.startswith("$"):
            name = arg.strip("${}()\"'").upper()
            value = (v.token if arg.startswith("$(") or any(w in name for w in ("TOKEN", "ADMIN", "AUDITOR"))
                     else v.url if "URL" in name or name == "GUARD"
                     else v.task_id if name in ("TASK_ID", "TASK") else None)
        elif "…" in arg or "..." in arg:
            value = v.task_id if arg.startswith("task_") else None
        elif m := re.fullmatch(r"<([^<>]+)>", arg):
            value = _placeholder(m.group(1), v)
        elif re.fullmatch(r"[A-Z][A-Z_]*", arg):
            value = _placeholder(arg, v)
        if value is None:
            pytest.fail(f"{cmd.where}: unknown placeholder {arg!r} in `{cmd.text}`: give it a value in "
                        "tests/e2e/test_doc_commands.py, or write the command differently")
        out.append(value)
    return out


def parse_error(args: list[str]) -> str | None:
    """What the real CLI parser says about these arguments (None: they parse)."""
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            build_parser().parse_args(args)
    except SystemExit as e:
        return (err.getvalue() or f"exit {e.code}") if e.code else None
    return None


# ------------------------------------------------------------------------------- a real guard


@dataclass
class World:
    guard: Guard
    values: Values
    env: dict[str, str]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    # the folder looks like the embedded default's (./policies, ./var/audit, ./var keys), so a
    # documented command without --config finds the same guard as one with it
    g = write_guard(tmp_path_factory.mktemp("docs"), ROOT / "policies")
    g.start()
    try:
        token = g.token("root@acme.example", "guard:admin", "guard:auditor")
        req = urllib.request.Request(  # noqa: S310 - the test's own guard on loopback
            f"{g.url}/v1/tasks", data=json.dumps({"purpose": "weekly research report"}).encode(),
            headers={"Authorization": f"Bearer {g.token(AGENT)}", "Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=15) as r:  # noqa: S310
            task_id = json.loads(r.read())["task_id"]
        env = {k: v for k, v in os.environ.items() if not k.startswith("GUARD_")}
        env.update(GUARD_URL=g.url, GUARD_TOKEN=token)
        values = Values(task_id, token, g.url, str(g.config_path), str(g.dir / "policies"))
        yield World(g, values, env)
    finally:
        g.stop()


def _serve(w: World, args: list[str]) -> None:
    """`guard serve …` as documented, on a port of its own: it starts and answers /healthz."""
    port = free_port()
    proc = spawn([PY, "-m", "guard", *args], w.guard.dir, f"doc-serve-{port}.log",
                 {**w.env, "GUARD_LISTEN_PORT": str(port)})
    try:
        wait_port(port, proc=proc.popen)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=10) as r:
            assert r.status == 200
    except (RuntimeError, TimeoutError, OSError) as e:
        pytest.fail(f"`guard {shlex.join(args)}` did not serve: {e}\n{proc.log()}")
    finally:
        proc.stop()


# ------------------------------------------------------------------------------------- tests


def test_the_documents_show_commands() -> None:
    """The reader of the documents finds the commands (so the test below cannot pass empty)."""
    fenced = {c.args[0] for c in COMMANDS if c.fenced and c.args}
    assert {"serve", "dev-token", "audit"} <= fenced, fenced
    assert any(c.args[:3] == ("serve", "--config", "guard.yaml") for c in COMMANDS)


def test_a_broken_command_line_is_caught() -> None:
    """The checks below do fail on a command line the CLI does not take."""
    assert parse_error(["serve", "--no-such-flag"])
    assert parse_error(["audit", "show"])  # a fenced line must give every required argument
    assert parse_error(["serve", "--config", "guard.yaml"]) is None


@pytest.mark.parametrize("cmd", COMMANDS, ids=[f"{c.where} guard {' '.join(c.args)}"[:90] for c in COMMANDS])
def test_documented_command_line_works(cmd: DocCommand, world: World) -> None:
    args = fill(cmd, world.values)
    problem = parse_error(args)
    if not cmd.fenced:  # a mention in a sentence may leave out the required arguments
        assert problem is None or "arguments are required" in problem, f"{cmd.where}: `{cmd.text}`: {problem}"
        return
    assert problem is None, f"{cmd.where}: `{cmd.text}` does not parse: {problem}"
    needs = [why for flag, why in NEEDS.items() if flag in args]
    if needs:
        args = [*args, "--help"]
    elif args[:1] == ["serve"]:
        _serve(world, args)
        return
    out = subprocess.run([PY, "-m", "guard", *args], cwd=world.guard.dir, env=world.env, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, f"{cmd.where}: `{cmd.text}` ran as `guard {shlex.join(args)}`:\n{out.stderr}"


# ------------------------------------------------------------------------- README's "By hand"


def by_hand_block() -> str:
    """The shell block under README's "By hand" heading, as the reader copies it."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    after = text[text.index("\nBy hand"):]
    start = after.index("```sh\n") + len("```sh\n")
    return after[start:after.index("\n```", start)] + "\n"


def test_readme_by_hand_steps_run_as_written(tmp_path: Path) -> None:
    """A newcomer's first steps, run line by line as the README shows them (in a folder laid out
    like the repository, on free ports instead of 8080 and 9101, which other runs may hold): the
    guard and the notes tool start, the task is created, the note is written and read back, and
    the task's audit trail shows both calls."""
    guard_port, notes_port = free_port(), free_port()
    script = by_hand_block()
    assert "examples.notes" in script and "localhost:8080/tools/notes" in script
    for name in (".venv", "examples"):
        (tmp_path / name).symlink_to(ROOT / name)
    shutil.copytree(ROOT / "policies", tmp_path / "policies")
    tools = tmp_path / "policies" / "tools.yaml"
    tools.write_text(tools.read_text().replace("127.0.0.1:9101", f"127.0.0.1:{notes_port}"))
    script = script.replace("8080", str(guard_port)).replace("9101", str(notes_port))
    env = {k: v for k, v in os.environ.items() if not k.startswith("GUARD_")}
    env["GUARD_LISTEN_PORT"] = str(guard_port)  # the embedded default's 8080
    out = subprocess.run(["timeout", "90", "bash", "-c", "set -e; trap 'kill $(jobs -p) 2>/dev/null' EXIT\n" + script],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, f"{out.stdout}\n{out.stderr}"
    note = json.loads(_json_lines(out.stdout)[-1])
    assert note["title"] == "first note" and note["body"] == "written through guard"
    assert re.search(r"call_forwarded\s+notes\.write\s+.*status=201", out.stdout), out.stdout
    assert re.search(r"call_forwarded\s+notes\.read\s+.*status=200", out.stdout), out.stdout


def _json_lines(text: str) -> list[str]:
    """The JSON objects curl printed (each answer is one, with no newline after it)."""
    return [m.group(0) for m in re.finditer(r"\{\"[^\n]*?\}(?=\{|\n|$)", text)]

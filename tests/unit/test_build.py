"""The locked build: each lock file pins, with hashes, every dependency that pyproject.toml names for
it, so that `make`, `.ci/run` and the image install what was tested; and the image copies only files
that exist."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[2]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _pins(lock: str) -> dict[str, str]:
    text = (ROOT / "requirements" / lock).read_text(encoding="utf-8")
    return {_norm(m[1]): m[2] for m in re.finditer(r"^([A-Za-z0-9_.-]+)==(\S+) \\$", text, re.M)}


def _named(extras: tuple[str, ...]) -> list[Requirement]:
    """The requirements of guard with these extras, guard's own extras followed."""
    found: list[Requirement] = [Requirement(r) for r in PROJECT["dependencies"]]
    todo, seen = list(extras), set()
    while todo:
        extra = todo.pop()
        if extra in seen:
            continue
        seen.add(extra)
        for raw in PROJECT["optional-dependencies"][extra]:
            req = Requirement(raw)
            if _norm(req.name) == "guard":
                todo.extend(req.extras)
            else:
                found.append(req)
    return [r for r in found if r.marker is None or r.marker.evaluate()]


@pytest.mark.parametrize(("lock", "extras"), [("runtime.lock", ()), ("demo.lock", ("demo",)),
                                              ("dev.lock", ("dev",))])
def test_a_lock_pins_every_dependency_it_is_for_within_its_range(lock: str, extras: tuple[str, ...]) -> None:
    pins = _pins(lock)
    for req in _named(extras):
        assert _norm(req.name) in pins, f"{lock} does not pin {req.name}: run make lock"
        assert req.specifier.contains(pins[_norm(req.name)], prereleases=True), (
            f"{lock} pins {req.name}=={pins[_norm(req.name)]}, outside {req.specifier}: run make lock")
    text = (ROOT / "requirements" / lock).read_text(encoding="utf-8")
    unhashed = re.findall(r"^([A-Za-z0-9_.-]+==\S+) \\\n(?!    --hash=sha256:)", text, re.M)
    assert not unhashed, f"{lock} pins without a hash: {unhashed}"


def test_the_image_installs_from_the_runtime_lock_and_copies_what_exists() -> None:
    text = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    assert "--require-hashes -r requirements/runtime.lock" in text
    for line in re.findall(r"^COPY (?!--from)(.+)$", text, re.M):
        *sources, _ = line.split()
        for source in sources:
            assert (ROOT / source).exists(), f"the Dockerfile copies {source}, which is not in the repository"

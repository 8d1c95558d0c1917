"""requirements.lock (scripts/lock, installed by install.sh with --require-hashes)
covers every dependency of pyproject.toml, and only versions pyproject allows;
requirements-test.lock (installed by scripts/test, so by CI) does the same for the
`test` extra, with the appliance's own dependencies at the very same pins."""

from __future__ import annotations

import re
import tomllib
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[2]
ENTRY = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)", re.MULTILINE)


def _lock(name: str = "requirements.lock") -> dict[str, tuple[str, list[str]]]:
    """name -> (version, hashes), from a lock file at the repository's root."""
    text = (REPO / name).read_text()
    entries: dict[str, tuple[str, list[str]]] = {}
    blocks = re.split(r"\n(?=[A-Za-z0-9])", text)
    for block in blocks:
        found = ENTRY.match(block)
        if found:
            hashes = re.findall(r"--hash=sha256:([0-9a-f]{64})", block)
            entries[canonicalize_name(found.group(1))] = (found.group(2), hashes)
    return entries


def _dependencies(extra: str | None = None) -> list[Requirement]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    specs = project["optional-dependencies"][extra] if extra else project["dependencies"]
    return [Requirement(spec) for spec in specs]


def test_every_pyproject_dependency_is_locked_at_an_allowed_version() -> None:
    lock = _lock()
    assert len(lock) >= len(_dependencies())
    for requirement in _dependencies():
        if requirement.marker is not None and not requirement.marker.evaluate():
            continue
        name = canonicalize_name(requirement.name)
        assert name in lock, f"{requirement} is not in requirements.lock: run scripts/lock"
        version = lock[name][0]
        assert requirement.specifier.contains(version, prereleases=True), (
            f"requirements.lock pins {name}=={version}, pyproject.toml wants {requirement}: "
            f"run scripts/lock"
        )


def test_every_locked_package_has_hashes() -> None:
    for name, (version, hashes) in _lock().items():
        assert hashes, f"{name}=={version} has no --hash: install.sh's --require-hashes fails"


def test_the_lock_is_closed_under_dependencies() -> None:
    """Each locked package's own requirements (as installed here) are locked too, so
    pip --require-hashes --no-deps leaves nothing out."""
    lock = _lock()
    for name in lock:
        try:
            requires = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            continue  # not installed in this venv (a platform-specific one)
        for spec in requires:
            requirement = Requirement(spec)
            if requirement.marker is not None and not requirement.marker.evaluate({"extra": ""}):
                continue
            assert canonicalize_name(requirement.name) in lock, (
                f"{name} needs {requirement.name}, missing from requirements.lock"
            )


def test_the_test_lock_covers_the_test_extra_and_the_runtime_pins() -> None:
    runtime, test = _lock(), _lock("requirements-test.lock")
    for requirement in _dependencies("test"):
        name = canonicalize_name(requirement.name)
        assert name in test, f"{requirement} is not in requirements-test.lock: run scripts/lock"
        assert requirement.specifier.contains(test[name][0], prereleases=True), (
            f"requirements-test.lock pins {name}=={test[name][0]}, pyproject.toml wants "
            f"{requirement}: run scripts/lock"
        )
    # What the appliance runs on is tested at the versions install.sh installs.
    for name, (version, _) in runtime.items():
        assert name in test, f"{name} is in requirements.lock, not in requirements-test.lock"
        assert test[name][0] == version, (
            f"{name}: requirements.lock pins {version}, requirements-test.lock "
            f"{test[name][0]}: run scripts/lock"
        )
    for name, (version, hashes) in test.items():
        assert hashes, f"{name}=={version} has no --hash: scripts/test's --require-hashes fails"

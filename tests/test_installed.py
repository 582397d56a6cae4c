"""The package as a user installs it: a wheel, installed outside the checkout, runs the guide's commands.

The wheel is built from a copy of the sources (``pip wheel --no-deps
--no-build-isolation``: nothing downloaded), installed with ``pip install
--no-deps --target DIR`` and run by this suite's interpreter with
``PYTHONPATH=DIR`` from a folder outside the checkout, where there is no
``scripts`` package.  Its ``thermospec`` console script must write the same
JSONL and CSV bytes as the checkout's commands with the same options and seed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from thermospec.cli.m1 import main as run_m1
from thermospec.cli.sweep import grid_main, plot_main, seed_main

REPO = Path(__file__).resolve().parent.parent
SOURCES = ("pyproject.toml", "setup.py", "README.md", "src")
COMMANDS = ("run", "check", "sweep", "grid", "drafts-sweep", "plot", "make-trace", "record-trace", "generate", "audit")
HELP_OF_EACH = """
import contextlib, io, sys
from thermospec.cli.commands import main
for command in sys.argv[1:]:
    text = io.StringIO()
    with contextlib.redirect_stdout(text):
        try:
            status = main([command, "--help"])
        except SystemExit as stop:
            status = stop.code
    print(command, status, " ".join(text.getvalue().split()[:3]))
"""
"""Every command's ``--help`` in one interpreter: lines ``COMMAND STATUS usage: thermospec COMMAND``."""


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, dict[str, str]]]:
    """(the target folder the wheel was installed into, the environment that runs it)."""
    root = tmp_path_factory.mktemp("wheel")
    copy = root / "source"
    copy.mkdir()
    skip = shutil.ignore_patterns("__pycache__", "*.so", "*.egg-info", "build")
    for name in SOURCES:
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, copy / name, ignore=skip)
        else:
            shutil.copy2(source, copy / name)
    env = {**os.environ, "PIP_NO_INDEX": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PYTHONDONTWRITEBYTECODE": "1"}
    env.pop("PYTHONPATH", None)
    pip = [sys.executable, "-m", "pip", "--quiet"]
    built = subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "--wheel-dir", str(root / "dist"),
                            str(copy)], env=env, cwd=root, timeout=300, capture_output=True, text=True, check=False)
    assert built.returncode == 0, f"pip wheel failed (the dev extra brings setuptools >= 70.1):\n{built.stderr[-2000:]}"
    (wheel,) = (root / "dist").glob("thermospec-*.whl")
    target = root / "site"
    subprocess.run([*pip, "install", "--no-deps", "--target", str(target), str(wheel)],
                   check=True, env=env, cwd=root, timeout=120, capture_output=True)
    yield target, {**env, "PYTHONPATH": str(target)}


def thermospec(installed: tuple[Path, dict[str, str]], cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run the installed console script from `cwd` (outside the checkout)."""
    target, env = installed
    return subprocess.run([str(target / "bin" / "thermospec"), *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300, check=False)


def only_folder(parent: Path) -> Path:
    (folder,) = parent.iterdir()
    return folder


def test_the_wheel_is_the_package_alone(installed: tuple[Path, dict[str, str]], tmp_path: Path) -> None:
    target, env = installed
    assert (target / "bin" / "thermospec").is_file() and (target / "thermospec" / "py.typed").is_file()
    assert not (target / "scripts").exists() and not (target / "benchmarks").exists()
    where = subprocess.run([sys.executable, "-c", "import thermospec, sys; print(thermospec.__file__); "
                            "print(any(m == 'scripts' or m.startswith('scripts.') for m in sys.modules))"],
                           cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60, check=True)
    module_file, scripts_loaded = where.stdout.split()
    assert Path(module_file).is_relative_to(target) and scripts_loaded == "False"


def test_python_m_thermospec_help_lists_every_command(installed: tuple[Path, dict[str, str]], tmp_path: Path) -> None:
    _, env = installed
    done = subprocess.run([sys.executable, "-m", "thermospec", "--help"], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    listed = [line.split()[0] for line in done.stdout.split("commands:")[1].split("options:")[0].splitlines() if line]
    assert listed == list(COMMANDS)
    version = thermospec(installed, tmp_path, "--version")
    assert version.returncode == 0 and version.stdout.startswith("thermospec 0.")
    every_help = subprocess.run([sys.executable, "-c", HELP_OF_EACH, *COMMANDS], cwd=tmp_path, env=env,
                                capture_output=True, text=True, timeout=120, check=False)
    assert every_help.returncode == 0, every_help.stderr
    assert every_help.stdout.splitlines() == [f"{c} 0 usage: thermospec {c}" for c in COMMANDS]


def test_installed_commands_write_the_checkouts_bytes(
    installed: tuple[Path, dict[str, str]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    outside, here = tmp_path / "outside", tmp_path / "checkout"
    outside.mkdir()
    done = thermospec(installed, outside, "run", "--steps", "2000", "--quiet", "--runs-dir", "runs")
    assert done.returncode == 0, done.stderr
    assert run_m1(["run", "--steps", "2000", "--quiet", "--runs-dir", str(here / "run")]) == 0
    jsonl = "m1_metrics.jsonl"
    installed_jsonl = (only_folder(outside / "runs") / jsonl).read_bytes()
    assert installed_jsonl == (only_folder(here / "run") / jsonl).read_bytes()
    assert len(installed_jsonl.splitlines()) == 2000

    grid = ["--steps", "1000", "--Ks", "8", "--taus", "1.0", "--seeds", "7", "--quiet"]
    done = thermospec(installed, outside, "grid", *grid, "--runs-dir", "sweeps")
    assert done.returncode == 0, done.stderr
    assert grid_main([*grid, "--runs-dir", str(here / "grid")]) == 0
    csv = "m1_sweep.csv"
    assert (only_folder(outside / "sweeps") / csv).read_bytes() == (only_folder(here / "grid") / csv).read_bytes()

    seeds = ["--steps", "500", "--seeds", "7", "--jobs", "1", "--quiet"]
    done = thermospec(installed, outside, "sweep", *seeds, "--runs-dir", "seeds")
    assert done.returncode == 0, done.stderr
    assert seed_main([*seeds, "--runs-dir", str(here / "seeds")]) == 0
    for name in ("m1_seeds.csv", "seed_7/m1_metrics.jsonl"):
        assert (only_folder(outside / "seeds") / name).read_bytes() == (only_folder(here / "seeds") / name).read_bytes()

    done = thermospec(installed, outside, "plot", str(only_folder(outside / "runs")))
    assert done.returncode == 0, done.stderr
    assert plot_main([str(only_folder(here / "run"))]) == 0
    pngs = sorted(p.name for p in only_folder(here / "run").glob("*.png"))
    assert pngs and pngs == sorted(p.name for p in only_folder(outside / "runs").glob("*.png"))
    for name in pngs:
        assert (only_folder(outside / "runs") / name).read_bytes() == (only_folder(here / "run") / name).read_bytes()

    capsys.readouterr()
    done = thermospec(installed, outside, "check", "--steps", "2000")
    status = run_m1(["check", "--steps", "2000"])
    assert (done.returncode, done.stdout) == (status, capsys.readouterr().out)
    assert "checks passed" in done.stdout

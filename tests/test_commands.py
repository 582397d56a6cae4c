"""The ``thermospec`` command in-process: its list of commands, its refusals, and help spelt for it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from thermospec import __version__
from thermospec.cli import m1
from thermospec.cli.commands import COMMANDS, main


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    try:
        status = main(argv)
    except SystemExit as stop:  # argparse's --help
        status = int(stop.code or 0)
    out, err = capsys.readouterr()
    return status, out, err


def test_help_lists_every_command_on_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run(["--help"], capsys)
    block = out.split("commands:\n")[1].split("\n\n")[0].splitlines()
    assert status == 0 and [line.split()[0] for line in block] == list(COMMANDS)
    guide = {"run", "check", "sweep", "grid", "drafts-sweep", "plot", "make-trace", "record-trace", "audit"}
    assert guide <= set(COMMANDS)
    assert run(["--version"], capsys)[:2] == (0, f"thermospec {__version__}\n")


@pytest.mark.parametrize(("argv", "says"), [([], "a command is required"), (["runn"], "unknown command 'runn'"),
                                            (["--verbose"], "unknown command")])
def test_no_or_an_unknown_command_is_one_line(argv: list[str], says: str, capsys: pytest.CaptureFixture[str]) -> None:
    status, out, err = run(argv, capsys)
    assert status == 2 and out == "" and says in err and err.count("\n") == 1


@pytest.mark.parametrize("name", ["run", "check", "sweep", "grid", "plot"])
def test_a_commands_help_shows_examples_it_can_run(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run([name, "--help"], capsys)
    assert status == 0 and out.startswith(f"usage: thermospec {name}")
    examples = out.split("examples:\n")[1].splitlines()
    assert examples[0].startswith(f"  thermospec {name}") and "python -m scripts." not in out


def test_the_checkout_script_keeps_its_own_spelling(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        m1.main(["run", "--help"])
    out = capsys.readouterr().out
    assert out.startswith("usage: run_m1 run") and "  python -m scripts.run_m1 run --vocab 256" in out


def test_errors_name_the_command_as_typed(capsys: pytest.CaptureFixture[str]) -> None:
    status, _, err = run(["grid", "--Ks", "0"], capsys)
    assert status == 2 and err.startswith("thermospec grid: error: argument --Ks")


def test_the_commands_page_maps_every_command_to_its_script() -> None:
    page = (Path(__file__).resolve().parent.parent / "docs" / "commands.md").read_text(encoding="utf-8")
    rows = re.findall(r"^\| `([a-z-]+)` \| `python -m ([a-z0-9_.]+(?: run| check)?)` \|", page, flags=re.M)
    assert dict(rows) == {name: command.script for name, command in COMMANDS.items()}
    for script in {c.script.split()[0] for c in COMMANDS.values()}:  # each checkout script exists
        assert (Path(__file__).resolve().parent.parent / (script.replace(".", "/") + ".py")).is_file(), script

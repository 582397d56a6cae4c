"""The ``thermospec`` command (and ``python -m thermospec``): one program, a subcommand per task.

Each subcommand is the parser of a checkout script, reached through the
package, so an installed wheel has every command the guide shows: the same
options, the same files, byte for byte.  ``thermospec COMMAND --help`` lists a
command's options; docs/commands.md maps each to the script it replaces.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from thermospec import __version__
from thermospec.cli import audit, drafts_sweep, generate, m1, make_trace, record_trace, sweep
from thermospec.cli.options import EXIT_USAGE

__all__ = ["COMMANDS", "Command", "main", "overview"]

PROG = "thermospec"


@dataclass(frozen=True)
class Command:
    """A subcommand: its one-line summary, the checkout script it replaces, and how to run it."""

    summary: str
    script: str
    run: Callable[[list[str], str], int]  # (arguments after the command's name, program name) -> exit status


COMMANDS: dict[str, Command] = {
    "run": Command("run the chain; write m1_metrics.jsonl and summary.json", "scripts.run_m1 run",
                   lambda argv, prog: m1.main(["run", *argv], prog=PROG)),
    "check": Command("the guide's success checklist: PASS/FAIL, exit 0 only if all pass", "scripts.run_m1 check",
                     lambda argv, prog: m1.main(["check", *argv], prog=PROG)),
    "sweep": Command("the guide's seed sweep: one full run per seed, m1_seeds.csv", "scripts.sweep_m1",
                     lambda argv, prog: sweep.seed_main(argv, prog=prog)),
    "grid": Command("the guide's grid sweep: (K, τ, seed) on a fixed context, m1_sweep.csv", "scripts.sweep_m1_grid",
                    lambda argv, prog: sweep.grid_main(argv, prog=prog)),
    "drafts-sweep": Command("acceptance of N drafts per target call, per verifier, against the limit",
                            "scripts.sweep_drafts", lambda argv, prog: drafts_sweep.main(argv, prog=prog)),
    "plot": Command("PNG figures beside the data of run and sweep folders", "scripts.plot",
                    lambda argv, prog: sweep.plot_main(argv, prog=prog)),
    "make-trace": Command("write a synthetic Zipf trace (.npy or .npz)", "scripts.make_trace",
                          lambda argv, prog: make_trace.main(argv, prog=prog)),
    "record-trace": Command("record a trace from a Hugging Face causal LM (extra: hf)", "scripts.record_trace",
                            lambda argv, prog: record_trace.main(argv, prog=prog)),
    "generate": Command("decode text with a Hugging Face model pair and the TSU drafting (extra: hf)",
                        "scripts.generate", lambda argv, prog: generate.main(argv, prog=prog)),
    "audit": Command("recompute a run's aggregates from its records and compare", "scripts.audit_run",
                     lambda argv, prog: audit.main(argv, prog=prog)),
}


def overview() -> str:
    """``thermospec --help``: usage, then every command with its one line."""
    width = max(map(len, COMMANDS)) + 2
    lines = [f"usage: {PROG} [-h] [--version] COMMAND [options]", "",
             "Thermo-Speculative Decoding: speculative sampling with a simulated TSU as the draft proposer.", "",
             "commands:"]
    lines += [f"  {name:<{width}}{command.summary}" for name, command in COMMANDS.items()]
    lines += ["", "options:", f"  {'-h, --help':<{width}}show this list and exit",
              f"  {'--version':<{width}}print the version and exit", "",
              f"'{PROG} COMMAND --help' lists a command's options. In a checkout, 'python -m scripts.NAME' runs",
              "the same parsers; docs/commands.md maps each command to its script."]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``thermospec`` console script and of ``python -m thermospec``; returns the exit status."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args:
        sys.stderr.write(f"{PROG}: error: a command is required: {', '.join(COMMANDS)} (see --help)\n")
        return EXIT_USAGE
    name, rest = args[0], args[1:]
    if name in ("-h", "--help"):
        sys.stdout.write(overview())
        return 0
    if name == "--version":
        sys.stdout.write(f"{PROG} {__version__}\n")
        return 0
    command = COMMANDS.get(name)
    if command is None:
        sys.stderr.write(f"{PROG}: error: unknown command {name!r}: one of {', '.join(COMMANDS)} (see --help)\n")
        return EXIT_USAGE
    return command.run(rest, f"{PROG} {name}")

"""Shared fixtures: the Tiny Shakespeare corpus, read from beside the clone, never committed."""

from __future__ import annotations

from pathlib import Path

import pytest

from thermospec.cli.m1 import main

REPO = Path(__file__).resolve().parent.parent
CORPUS_CANDIDATES = (
    REPO / "data" / "tinyshakespeare.txt",
    REPO.parent / "shared" / "data" / "tinyshakespeare.txt",
)


@pytest.fixture(scope="session")
def shakespeare() -> Path:
    """Path of the Tiny Shakespeare corpus; skips the test where it is absent."""
    for path in CORPUS_CANDIDATES:
        if path.is_file():
            return path
    pytest.skip("Tiny Shakespeare not found in data/ or ../shared/data/ (see README: Data)")


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """Call ``run_m1`` in-process; return (exit status, stdout, stderr)."""
    try:
        status = main(args)
    except SystemExit as exc:  # argparse exits on usage errors
        status = int(exc.code or 0)
    out, err = capsys.readouterr()
    return status, out, err

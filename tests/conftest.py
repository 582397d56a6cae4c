"""Shared fixtures: the Tiny Shakespeare corpus, read from beside the clone, never committed."""

from __future__ import annotations

from pathlib import Path

import pytest

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

"""``python -m scripts.fuzz_payload [libFuzzer options]``: coverage-guided fuzzing of the ψ decoder.

Needs the optional extra ``fuzz`` (atheris).  Every input must decode to a
payload that re-encodes to the same bytes and gives a finite F(ψ), or raise
`PayloadError`; anything else is a crash, saved by libFuzzer with its input.

Examples
--------
python -m scripts.fuzz_payload -runs=200000 -seed=1     # a bounded run
python -m scripts.fuzz_payload -max_total_time=600      # ten minutes
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np


def _seed_corpus() -> list[bytes]:
    from thermospec import craft_payload, encode_payload

    rng = np.random.default_rng(0)
    return [
        encode_payload(craft_payload(rng.dirichlet(np.full(V, 0.3)), K, 1.0, "auto"))
        for V, K in [(2, 1), (16, 16), (256, 64), (70_000, 3)]
    ]


def one_input(data: bytes) -> None:
    """The oracle: a valid payload (round trip, finite F) or a `PayloadError`."""
    from thermospec import PayloadError, SimTSU, decode_payload, encode_payload

    try:
        payload = decode_payload(data)
    except PayloadError:
        return
    if encode_payload(payload) != data:
        raise AssertionError("a decoded payload does not re-encode to the same bytes")
    q = SimTSU(payload).q
    if not (np.all(np.isfinite(q)) and np.all(q >= 0) and abs(float(q.sum()) - 1.0) < 1e-9):
        raise AssertionError("a decoded payload gives an F(ψ) that is not a probability vector")


def main(argv: list[str] | None = None) -> int:
    """Run libFuzzer on `one_input`, starting from valid payloads; return the exit status."""
    args = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in args):
        print(__doc__)
        return 0
    try:
        import atheris
    except ImportError:
        print("fuzz_payload: error: atheris is not installed (pip install 'thermospec[fuzz]')", file=sys.stderr)
        return 2
    if all(a.startswith("-") for a in args):
        # No corpus folder given: fuzz from valid payloads in a temporary folder, in a child process
        # (libFuzzer ends its process without returning), and remove the folder when it is done.
        with tempfile.TemporaryDirectory(prefix="psi-corpus-") as corpus:
            for i, data in enumerate(_seed_corpus()):
                (Path(corpus) / f"seed{i}").write_bytes(data)
            return subprocess.run([sys.executable, "-m", "scripts.fuzz_payload", *args, corpus], check=False).returncode
    with atheris.instrument_imports():
        import thermospec.core.payload
        import thermospec.core.proposal  # noqa: F401
    atheris.Setup([sys.argv[0], *args], one_input)
    atheris.Fuzz()
    return 0


if __name__ == "__main__":
    sys.exit(main())

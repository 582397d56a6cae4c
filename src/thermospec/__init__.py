"""thermospec: Thermo-Speculative Decoding with a Thermodynamic Sampling Unit as draft proposer.

The public API of the core is `SimTSU` (samples F(ψ), reports exact log q) and
`accept_correct_step` (the exact correction of speculative sampling).  Runs and
checks from Python: `run`, `check`, `sweep`, `config`, `Summary` (from `thermospec.api`,
imported on first use so that ``import thermospec`` stays light).
"""

from typing import Any

from thermospec.core.acceptance import accept_correct_step, residual
from thermospec.core.metrics import ce_gap_nats, overlap_mass, topk_mass
from thermospec.core.payload import Payload, PayloadError, craft_payload, decode_payload, encode_payload, payload_size
from thermospec.core.proposal import proposal_distribution
from thermospec.tsu.sim import SimTSU

__version__ = "0.1.0"

_API = ("CheckReport", "GenerateResult", "RunResult", "Summary", "SweepResult", "check", "config", "generate", "run",
        "sweep")


def __getattr__(name: str) -> Any:
    """`thermospec.run`, `thermospec.check`, ...: the notebook API, imported on first use."""
    if name in _API:
        from thermospec import api

        return getattr(api, name)
    raise AttributeError(f"module 'thermospec' has no attribute {name!r}")

__all__ = [
    "CheckReport",
    "GenerateResult",
    "Payload",
    "PayloadError",
    "RunResult",
    "SimTSU",
    "Summary",
    "SweepResult",
    "__version__",
    "accept_correct_step",
    "ce_gap_nats",
    "check",
    "config",
    "craft_payload",
    "decode_payload",
    "encode_payload",
    "generate",
    "overlap_mass",
    "payload_size",
    "proposal_distribution",
    "residual",
    "run",
    "sweep",
    "topk_mass",
]

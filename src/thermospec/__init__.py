"""thermospec: Thermo-Speculative Decoding with a Thermodynamic Sampling Unit as draft proposer.

The public API of the core is `SimTSU` (samples F(ψ), reports exact log q) and
`accept_correct_step` (the exact correction of speculative sampling).
"""

from thermospec.core.acceptance import accept_correct_step, residual
from thermospec.core.metrics import ce_gap_nats, overlap_mass, topk_mass
from thermospec.core.payload import Payload, PayloadError, craft_payload, decode_payload, encode_payload, payload_size
from thermospec.core.proposal import proposal_distribution
from thermospec.tsu.sim import SimTSU

__version__ = "0.1.0"

__all__ = [
    "Payload",
    "PayloadError",
    "SimTSU",
    "__version__",
    "accept_correct_step",
    "ce_gap_nats",
    "craft_payload",
    "decode_payload",
    "encode_payload",
    "overlap_mass",
    "payload_size",
    "proposal_distribution",
    "residual",
    "topk_mass",
]

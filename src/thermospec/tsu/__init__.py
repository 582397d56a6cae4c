"""Layer 1, the TSUs: `SimTSU` and the drafts a host sends them (ψ per context), fault-injected TSUs, THRML.

Imports only `core`.
"""

"""Layer 0, the mathematics: ψ wire format, F(ψ), sampling, the accept test, metrics, statistics.

NumPy only (SciPy's special functions for p-values, imported when first needed).
Nothing here knows about targets, TSUs, runs or files.
"""

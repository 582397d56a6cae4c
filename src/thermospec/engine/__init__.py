"""Layer 2, the engine: chunks of steps in, chunks of tokens out.

The per-step reference (`chain.run_chain_reference`), the compiled kernel
(`_kernels.c`) and its NumPy/Python fallback, on dense or compact tables; the
single chain, many chains (`batch`) and γ-token blocks (`blocks`).
"""

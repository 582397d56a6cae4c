"""Layer 1, the targets: bigram rows ``p(. | x)`` and their stationary law (dense, synthetic, corpus, BPE).

Each target is a `Target` (see `targets.bigram`): ``V``, ``row(x)``, ``pi``. Imports only `core`.
"""

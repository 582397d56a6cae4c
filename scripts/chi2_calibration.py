"""How often a run's χ² tests reject a *correct* chain: ``python -m scripts.chi2_calibration --help``.

For each seed, runs the chain (no files written) and records the guide's χ² p
(emitted counts against N·π, which treats correlated tokens as independent) and
the transition χ² p (per-context emitted counts against n_x·p(.|x)); prints the
fraction of seeds with p below 0.05 and 0.01 for both.  Optionally the same for
a plain bigram sampler without any TSU (``--bare``), which shows that the
marginal χ²'s excess rejections come from the chain's correlation, not the TSU.

Examples
--------
python -m scripts.chi2_calibration --corpus data/tinyshakespeare.txt --K 64 --seeds 300 --bare
python -m scripts.chi2_calibration --K 64 --seeds 300
"""

from __future__ import annotations

import argparse
import sys
from bisect import bisect_right

import numpy as np

from thermospec.core.statistics import pooled_chi2
from thermospec.core.streams import Stream, random_stream
from thermospec.engine.chain import run_chain, start_token
from thermospec.engine.tally import RunTally
from thermospec.runs.config import RunConfig
from thermospec.runs.prepare import prepare_run
from thermospec.runs.summary import summarise_run


def bare_chain_p_value(P: np.ndarray, pi: np.ndarray, steps: int, seed: int) -> float:
    """χ² p vs N·π of a plain bigram chain x_{t+1} ~ p(.|x_t) (inverse-CDF draws, no TSU)."""
    rng = random_stream(seed, Stream.CHECK, 1_000_000)
    cdfs = [row.tolist() for row in np.cumsum(P, axis=1)]
    x = start_token(pi, rng)
    counts = np.zeros(P.shape[0])
    for u in rng.random(steps).tolist():
        cdf = cdfs[x]
        x = min(bisect_right(cdf, u * cdf[-1]), P.shape[0] - 1)
        counts[x] += 1
    return pooled_chi2(counts, steps * pi).p_value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="chi2_calibration", description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", metavar="PATH", help="UTF-8 corpus (default: the synthetic target)")
    parser.add_argument("--K", type=int, default=64, help="top-K ids sent in ψ (default: 64)")
    parser.add_argument("--steps", type=int, default=50_000, help="steps per run (default: 50000)")
    parser.add_argument("--seeds", type=int, default=300, help="number of seeds, 0 .. S-1 (default: 300)")
    parser.add_argument("--bare", action="store_true", help="also a plain bigram sampler without a TSU")
    args = parser.parse_args(argv)
    run = prepare_run(RunConfig(corpus=args.corpus, K=args.K, steps=args.steps, seed=0))
    target = run.target
    marginal, transition, bare = [], [], []
    for seed in range(args.seeds):
        tally = RunTally(target.V, track_transitions=True)
        rng = random_stream(seed, Stream.CHAIN)
        for chunk in run_chain(target.row, target.pi, run.proposer.draft, args.steps, rng):
            tally.update(chunk)
        stats = summarise_run(tally, run.proposer.draft, target.pi, target.row)
        marginal.append(stats["p_value"])
        transition.append(stats["transition_p_value"])
        if args.bare and target.V <= 4096:
            bare.append(bare_chain_p_value(np.vstack([target.row(x) for x in range(target.V)]), target.pi,
                                           args.steps, seed))
    print(f"{args.seeds} correct runs of {args.steps} steps, K = {args.K}, "
          f"{'corpus ' + args.corpus if args.corpus else 'synthetic target'}")
    print(f"{'test':<40} {'p < 0.05':>9} {'p < 0.01':>9}")
    rows = [("chi2 vs N·pi (the guide's p_value)", marginal), ("transition chi2 (transition_p_value)", transition)]
    if bare:
        rows.append(("plain bigram sampler, chi2 vs N·pi", bare))
    for name, values in rows:
        p = np.array(values, dtype=np.float64)
        print(f"{name:<40} {np.mean(p < 0.05):>9.3f} {np.mean(p < 0.01):>9.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

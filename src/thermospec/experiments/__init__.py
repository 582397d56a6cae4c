"""Layer 5, experiments: seed, grid, γ and K sweeps, the parallel runner, plots."""

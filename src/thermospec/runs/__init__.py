"""Layer 3, a run on disk: config, preparation, executors, tally and summary, telemetry, storage, interrupts, replay."""

"""One-run layer: training on DeepSpeed (engine, loop, checkpoints, run directory, launcher)."""

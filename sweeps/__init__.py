"""Many-runs layer: sweep specs -> an Optuna study -> trials -> RunConfigs -> jobs (through slurm/)."""

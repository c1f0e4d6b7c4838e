"""Scaling-study suite: one run (RunConfig -> model + data + engine -> run directory)."""

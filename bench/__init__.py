"""luki-gateway benchmarks: the gateway against the baselines a user would pick instead."""

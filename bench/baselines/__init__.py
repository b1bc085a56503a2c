"""Baselines the gateway is measured against, each runnable as ``python -m bench.baselines.X``."""

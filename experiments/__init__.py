"""Experiment machinery: spec, data, training, runner, search, benchmarks."""

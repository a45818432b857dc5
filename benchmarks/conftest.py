"""Benchmarks are not tests: run them with `scripts/bench` (pytest-benchmark)."""

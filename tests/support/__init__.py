"""Helpers the tests and benchmarks share: processes, ports, real components."""

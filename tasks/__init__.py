"""Benchmark tasks. Each task owns its data loading, its training-batch stream and its scoring."""

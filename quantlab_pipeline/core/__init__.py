"""Pure computation: input readers and validation, truth and policy kernels, summary and sweep.

Nothing here imports Dagster, so every rule can be tested and benchmarked on its own.
"""

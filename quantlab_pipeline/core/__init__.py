"""Pure computation: the input rules, truth and policy kernels, summary, sweep and frontier.

Nothing here imports Dagster or touches files or databases (reading the inputs is
`quantlab_pipeline.sources`), so every rule can be tested and benchmarked on its own.
"""

"""The warm server: `quantlab` commands and `--parallel` run workers forked from one process that
has already imported Dagster and the definitions and loaded the compiled kernels (docs/running.md
"The warm server").

`client` is what the `quantlab` console script runs first (standard library only, a few
milliseconds); `server` is the preloaded process it forks commands from.
"""

"""The compiled kernels: numba loops over contiguous candle arrays, with public, documented names.

Each module holds the kernels of one subsystem; the frame API in `quantlab_pipeline.core` wraps
them (builds the arrays, calls the kernel, turns its outputs into Polars frames). The kernels take
and return only NumPy arrays and scalars, so they can be benchmarked and tested alone:

- `candles`  — ingest: scatter fetched batches into mint groups, sort, validate and de-duplicate
- `windows`  — per-alert `[start, stop)` candle row bounds
- `truth`    — the truth layer (entry, multiples hit, peak, drawdowns)
- `policy`   — exit-policy simulation, one policy or a grid
- `passage`  — a grid's single fixed stops and targets: their first-passage exits, one pass per window
- `features` — what was known at each alert: pre-alert candle features, the caller's prior record
- `bootstrap` — the median and mean of bootstrap resamples of a policy's returns
- `portfolio` — an account following the trades: marks gathered per trade, then event by event
- `sweep`    — a sweep's per-policy metrics and daily sums, one compiled pass per chunk of policies
"""

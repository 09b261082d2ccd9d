"""The compiled kernels: numba loops over contiguous candle arrays, with public, documented names.

Each module holds the kernels of one subsystem; the frame API in `quantlab_pipeline.core` wraps
them (builds the arrays, calls the kernel, turns its outputs into Polars frames). The kernels take
and return only NumPy arrays and scalars, so they can be benchmarked and tested alone:

- `candles`  — ingest: scatter fetched batches into mint groups, sort, validate and de-duplicate
- `windows`  — per-alert `[start, stop)` candle row bounds
- `truth`    — the truth layer (entry, multiples hit, peak, drawdowns)
- `policy`   — exit-policy simulation, one policy or a grid
- `features` — what was known at each alert: pre-alert candle features, the caller's prior record
- `bootstrap` — the median and mean of bootstrap resamples of a policy's returns
- `portfolio` — an account following the trades: marks gathered per trade, then event by event
"""

from __future__ import annotations

from typing import Any


def kernels_compiled(*, policy: bool = False, sweep: bool = False) -> bool:
    """Whether numba's on-disk cache holds a current build of the kernels a backtest runs: the
    window bounds and the truth kernel, plus the serial policy kernel, the summary's bootstrap and the
    portfolio's (`policy`) or the parallel policy kernel (`sweep`).

    The first backtest of a fresh install compiles them (seconds, silently); the CLI uses this
    to say so beforehand. Cheap: one small index file per kernel, which numba itself reads and
    checks against the source file's stamp before loading a cached build.
    """
    from quantlab_pipeline.core.nb import bootstrap, portfolio, truth, windows
    from quantlab_pipeline.core.nb import policy as policy_nb

    kernels: list[Any] = [windows.fill_window_bounds, truth.truth_kernel]  # numba dispatchers
    policy_kernels = [policy_nb.simulate_serial, bootstrap.resample_statistics]
    kernels += [*policy_kernels, portfolio.gather_marks, portfolio.simulate_account] if policy else []
    kernels += [policy_nb.simulate_parallel] if sweep else []
    # `_load_index` is numba's own staleness check, run before it loads a cached build: {} when cold.
    return all(kernel._cache._cache_file._load_index() for kernel in kernels)


def load_backtest_kernels() -> int:
    """Load every kernel build numba's on-disk cache holds for this machine (nothing is compiled).

    A process that will run backtests but has not yet (the warm server) loads them once, up
    front, instead of ~40 ms per kernel at its first call in every process it forks. Parallel
    kernels (the sweep) are left to their first call: loading one starts numba's OpenMP thread
    pool, and the OpenMP runtime kills any process forked after that. Returns the number of
    builds loaded: 0 on a cold cache, where the kernels compile at first call.
    """
    import numba.core.registry

    from quantlab_pipeline.core.nb import bootstrap, candles, features, policy, portfolio, truth, windows

    loaded = 0
    for module in (candles, windows, truth, policy, features, bootstrap, portfolio):
        kernels: list[Any] = [k for k in vars(module).values() if isinstance(k, numba.core.registry.CPUDispatcher)]
        for kernel in kernels:
            cache_file = getattr(kernel._cache, "_cache_file", None)  # kernels with cache=True have one
            if cache_file is None or kernel.targetoptions.get("parallel"):
                continue
            magic = kernel.targetctx.codegen().magic_tuple()
            for signature, key_magic, _ in cache_file._load_index():
                if key_magic == magic:
                    kernel.compile(signature)
                    loaded += 1
    return loaded

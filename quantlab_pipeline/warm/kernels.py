"""The numba kernels' on-disk cache (docs/performance.md, "First backtest"): whether it holds the
builds a backtest runs, the signatures `make install`'s prebuild compiled, and loading them up front
in the warm server. Only numba's public surface: dispatchers' `py_func`, `signatures` and
`compile`, and its documented cache layout (an index file per function under `NUMBA_CACHE_DIR`,
else `__pycache__` beside the source).
"""

from __future__ import annotations

import os
import pickle
import sys
from pathlib import Path
from typing import Any

SIGNATURES_FILE = "quantlab-kernel-signatures.pkl"


def _modules() -> tuple[Any, ...]:
    from quantlab_pipeline.core.nb import (
        bootstrap,
        candles,
        features,
        passage,
        policy,
        portfolio,
        sweep,
        truth,
        windows,
    )

    return candles, windows, truth, policy, passage, features, bootstrap, portfolio, sweep


def _kernels() -> list[Any]:
    """Every kernel (numba dispatcher) of the modules above."""
    import numba.core.registry

    return [
        k for module in _modules() for k in vars(module).values() if isinstance(k, numba.core.registry.CPUDispatcher)
    ]


def cache_root() -> Path:
    """Where numba keeps the kernels' builds: `NUMBA_CACHE_DIR` when set, else `__pycache__` next
    to the kernels' source (numba's documented default for an importable, writable package)."""
    configured = os.environ.get("NUMBA_CACHE_DIR")
    if configured:
        return Path(configured)
    from quantlab_pipeline.core import nb

    return Path(nb.__file__).resolve().parent / "__pycache__"


def _index_name(kernel: Any) -> str:
    """The name of a kernel's cache index file: `<module>.<function>-<line>.py<XY>.nbi` (numba's
    documented cache layout: one index per function beside its `.nbc` builds)."""
    func = kernel.py_func
    module = Path(func.__code__.co_filename).stem
    version = f"{sys.version_info.major}{sys.version_info.minor}"
    return f"{module}.{func.__qualname__}-{func.__code__.co_firstlineno}.py{version}.nbi"


def _cached(kernel: Any, indexes: set[str], root: Path) -> bool:
    """Whether a cache index of `kernel`, newer than its source file, is on disk under `root`."""
    source = Path(kernel.py_func.__code__.co_filename).stat().st_mtime
    name = _index_name(kernel)
    if name not in indexes:
        return False
    return any(found.stat().st_mtime >= source for found in root.rglob(name))


def kernels_compiled(*, policy: bool = False, sweep: bool = False) -> bool:
    """Whether numba's on-disk cache holds a build of the kernels a backtest runs, newer than
    their source: the window bounds and the truth kernel, plus the serial policy kernel, the
    summary's bootstrap and the account's (`policy`) or the parallel policy kernel, the
    first-passage kernel and the sweep's aggregation (`sweep`).

    The first backtest of a fresh install without `make install`'s prebuilt cache compiles them
    (seconds); the CLI uses this to say so beforehand. Cheap: a listing of the cache directory.
    """
    from quantlab_pipeline.core.nb import bootstrap, passage, portfolio, truth, windows
    from quantlab_pipeline.core.nb import policy as policy_nb
    from quantlab_pipeline.core.nb import sweep as sweep_nb

    kernels: list[Any] = [windows.fill_window_bounds, truth.truth_kernel]  # numba dispatchers
    policy_kernels = [policy_nb.simulate_serial, bootstrap.resample_statistics]
    kernels += [*policy_kernels, portfolio.simulate_account] if policy else []
    kernels += [policy_nb.simulate_parallel, passage.passage_parallel, sweep_nb.aggregate_policies] if sweep else []
    root = cache_root()
    if not root.is_dir():
        return False
    indexes = {path.name for path in root.rglob("*.nbi")}
    return all(_cached(kernel, indexes, root) for kernel in kernels)


def record_kernel_signatures() -> int:
    """Write the signatures of every kernel this process has compiled or loaded (`Dispatcher.signatures`)
    beside numba's cache, for `load_backtest_kernels`; `make install` calls it after a backtest of
    each run type on a tiny sample (docs/performance.md, "First backtest"). Returns how many."""
    signatures = {f"{k.py_func.__module__}.{k.py_func.__qualname__}": list(k.signatures) for k in _kernels()}
    root = cache_root()
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".{SIGNATURES_FILE}.{os.getpid()}"
    tmp.write_bytes(pickle.dumps({name: sigs for name, sigs in signatures.items() if sigs}))
    tmp.replace(root / SIGNATURES_FILE)
    return sum(len(sigs) for sigs in signatures.values())


def load_backtest_kernels() -> int:
    """Load the kernel builds `record_kernel_signatures` listed, from numba's on-disk cache
    (`Dispatcher.compile` with each recorded signature: a cached build is loaded, not compiled).

    A process that will run backtests but has not yet (the warm server) loads them once, up
    front, instead of ~40 ms per kernel at its first call in every process it forks. Parallel
    kernels (the sweep) are left to their first call: loading one starts numba's OpenMP thread
    pool, and the OpenMP runtime kills any process forked after that. Returns the number of
    builds loaded: 0 without a record, where the kernels load or compile at first call.
    """
    record = cache_root() / SIGNATURES_FILE
    try:
        signatures: dict[str, list[Any]] = pickle.loads(record.read_bytes())
    except (OSError, pickle.UnpicklingError, EOFError, AttributeError, ImportError):
        return 0
    loaded = 0
    for kernel in _kernels():
        if kernel.targetoptions.get("parallel"):
            continue
        for signature in signatures.get(f"{kernel.py_func.__module__}.{kernel.py_func.__qualname__}", []):
            kernel.compile(signature)
            loaded += 1
    return loaded

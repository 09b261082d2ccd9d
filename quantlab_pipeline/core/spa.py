"""Hansen's test of superior predictive ability, computed as `arch.bootstrap.SPA` 8.0 computes it
(docs/confidence.md "SPA"): the same operations in the same order on the same random stream, so
the p-values are arch's bit for bit (the tests compare them with arch called directly).

Why not arch itself: importing it brings pandas, scipy and statsmodels, about 3 s of a backtest
process under load, where the test takes milliseconds (docs/performance.md "Confidence").

arch's recipe with its defaults as the pipeline uses them (stationary bootstrap, block size
⌊√T⌋, studentized without nesting; a `seed` integer gives `numpy.random.default_rng(seed)`):

- loss differentials d = benchmark − model (T × k), their means d̄;
- a variance per model by the stationary bootstrap's kernel estimate, and the models the
  consistent p-value recentres: those with d̄ ≥ −√(var / T · 2 ln ln T);
- per repetition: T start indices `integers(T)` then T uniforms `random()`, a day continuing
  the previous one's block (index + 1, wrapping) when its uniform exceeds 1 / block size; the
  resampled differentials' means minus three recentrings (lower: d̄ clipped at 0 from below,
  consistent: d̄ where valid else 0, upper: d̄);
- p-value = the share of repetitions whose maximum over models exceeds max d̄ (the variance
  does not scale the statistic in arch 8.0: `studentize` only selects the consistent models).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class SpaPvalues:
    lower: float
    consistent: float
    upper: float


def spa_pvalues(benchmark_losses: np.ndarray, model_losses: np.ndarray, *, reps: int, seed: int) -> SpaPvalues:
    """`arch.bootstrap.SPA(benchmark_losses, model_losses, reps=reps, seed=seed)` (T and T × k
    losses; stationary bootstrap, default block size, studentized, not nested) `.pvalues`."""
    benchmark = np.asarray(benchmark_losses, dtype=np.float64)[:, None]
    models = np.asarray(model_losses, dtype=np.float64)
    t = benchmark.shape[0]
    block_size = int(np.sqrt(t))
    loss_diff = benchmark - models
    mean = loss_diff.mean(0)
    valid = mean >= -1.0 * np.sqrt((_variance(loss_diff, block_size) / t) * 2 * np.log(np.log(t)))
    consistent = mean.copy()
    consistent[~valid] = 0.0
    lower = mean.copy()
    lower[lower < 0] = 0.0
    recentred = (lower, consistent, mean)
    generator = np.random.default_rng(seed)
    p = 1.0 / block_size
    maxima = np.empty((reps, 3))
    for r in range(reps):
        drawn = np.asarray(generator.integers(t, size=t, dtype=np.int64))
        indices = _stationary(drawn, np.asarray(generator.random(t)), p)
        means = loss_diff[indices].mean(0)
        for j, centre in enumerate(recentred):
            maxima[r, j] = np.max(means - centre)
    pvalues = (maxima > np.max(mean)).mean(axis=0)
    return SpaPvalues(lower=float(pvalues[0]), consistent=float(pvalues[1]), upper=float(pvalues[2]))


def _variance(loss_diff: np.ndarray, block_size: int) -> np.ndarray:
    """arch's `SPA._compute_variance` without nesting: the stationary bootstrap's kernel weights."""
    t = loss_diff.shape[0]
    demeaned = loss_diff - loss_diff.mean(axis=0)
    p = 1.0 / block_size
    variances = np.sum(demeaned**2, 0) / t
    for i in range(1, t):
        kappa = ((1.0 - (i / t)) * ((1 - p) ** i)) + ((i / t) * ((1 - p) ** (t - i)))
        variances += 2 * kappa * np.sum(demeaned[: (t - i), :] * demeaned[i:, :], 0) / t
    return variances


def _stationary(indices: np.ndarray, u: np.ndarray, p: float) -> np.ndarray:
    """arch's `stationary_bootstrap_sample`, vectorised: day i keeps its drawn index when it starts
    a block (i = 0 or u[i] ≤ p), else continues the block: its start's index + the days since, mod T."""
    t = indices.shape[0]
    position = np.arange(t)
    starts = np.maximum.accumulate(np.where((position == 0) | (u <= p), position, 0))
    return (indices[starts] + (position - starts)) % t

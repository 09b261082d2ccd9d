"""The in-memory candle set every kernel reads: one contiguous array per column, grouped by mint.

Candles of mint `k` are rows `offsets[k]:offsets[k+1]`, sorted by `ts_ms`, validated and
de-duplicated (see `core.inputs`). Kernels receive plain NumPy arrays plus per-alert
`[start, stop)` row bounds, so no Python runs per candle.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import polars as pl
import pyarrow as pa

from quantlab_pipeline.core.nb.windows import build_mint_table, fill_window_bounds, lookup_mints


@dataclass(frozen=True)
class Candles:
    """Validated candles for a set of mints, in contiguous column arrays."""

    mints: tuple[str, ...]
    offsets: np.ndarray  # int64, len(mints) + 1
    ts: np.ndarray  # int64 candle open time, epoch ms
    open: np.ndarray  # float64
    high: np.ndarray
    low: np.ndarray
    close: np.ndarray
    # float64 traded volume (NaN where the source had none); only the features read it, so
    # candles built without it (kernel tests) leave it None and volume features are null.
    volume: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.ts.shape[0])

    @property
    def nbytes(self) -> int:
        """Bytes held by the column arrays (the in-memory size of the candles)."""
        columns = (self.offsets, self.ts, self.open, self.high, self.low, self.close, self.volume)
        return sum(a.nbytes for a in columns if a is not None)

    @cached_property
    def _mint_table(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """The mints' hash table and string bytes (`nb.windows.build_mint_table`), built once per candle set."""
        names = pl.Series(self.mints, dtype=pl.String)
        keys, rows = build_mint_table(names.hash().to_numpy())
        return keys, rows, *_string_buffers(names)

    def mint_index(self, mints: Sequence[str] | pl.Series) -> np.ndarray:
        """Row index into `offsets` for each mint; -1 where the mint has no candles (or is null).

        Polars hashes the names, a compiled probe of a table built once per candle set compares
        their bytes: a per-call join (hash table of every mint rebuilt, cold after a kernel has
        streamed the candles) took ~2 ms for the month's 20,000 alerts, a Python dict ~8 ms.
        """
        names = mints.cast(pl.String) if isinstance(mints, pl.Series) else pl.Series(list(mints), dtype=pl.String)
        keys, rows, mint_offsets, mint_data = self._mint_table
        out = np.empty(names.len(), dtype=np.int64)
        lookup_mints(keys, rows, mint_offsets, mint_data, names.hash().to_numpy(), *_string_buffers(names), out)
        if names.null_count():
            out[names.is_null().to_numpy()] = -1
        return out

    def window_bounds(
        self, mints: Sequence[str] | pl.Series, lo_ts: np.ndarray, hi_ts: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Per row, the `[start, stop)` candle rows of that mint with `lo_ts <= ts < hi_ts`."""
        idx = self.mint_index(mints)
        start = np.empty(idx.shape[0], dtype=np.int64)
        stop = np.empty(idx.shape[0], dtype=np.int64)
        fill_window_bounds(
            self.offsets,
            self.ts,
            idx,
            np.ascontiguousarray(lo_ts, dtype=np.int64),
            np.ascontiguousarray(hi_ts, dtype=np.int64),
            start,
            stop,
        )
        return start, stop

    @classmethod
    def from_frame(cls, frame: pl.DataFrame) -> Candles:
        """Build from clean rows (`mint, ts_ms, open, high, low, close`, optional `volume`); sorts,
        does not validate."""
        frame = frame.sort("mint", "ts_ms")
        groups = frame.group_by("mint", maintain_order=True).len()
        mints, counts = groups.get_column("mint").to_list(), groups.get_column("len").to_numpy()
        offsets = np.zeros(len(mints) + 1, dtype=np.int64)
        np.cumsum(counts, out=offsets[1:])

        def col(name: str, dtype) -> np.ndarray:
            return np.ascontiguousarray(frame.get_column(name).to_numpy(), dtype=dtype)

        return cls(
            mints=tuple(mints),
            offsets=offsets,
            ts=col("ts_ms", np.int64),
            open=col("open", np.float64),
            high=col("high", np.float64),
            low=col("low", np.float64),
            close=col("close", np.float64),
            volume=col("volume", np.float64) if "volume" in frame.columns else None,
        )

    @classmethod
    def empty(cls) -> Candles:
        z = np.zeros(0, dtype=np.float64)
        return cls(
            (), np.zeros(1, dtype=np.int64), np.zeros(0, dtype=np.int64), z, z.copy(), z.copy(), z.copy(), z.copy()
        )


def _string_buffers(names: pl.Series) -> tuple[np.ndarray, np.ndarray]:
    """A String series' Arrow offsets (int64, one more than its length) and bytes, without copying."""
    array = names.to_arrow().cast(pa.large_string())
    _, offsets, data = array.buffers()
    return (
        np.frombuffer(offsets, dtype=np.int64)[array.offset : array.offset + len(array) + 1],
        np.frombuffer(data, dtype=np.uint8) if data is not None else np.zeros(0, dtype=np.uint8),
    )


def plan_chunks(alerts: pl.DataFrame, *, candles_per_alert: int, max_candles: int) -> list[pl.DataFrame]:
    """Split a partition's alerts so each part's candles stay under `max_candles` (estimated).

    All alerts of one mint land in the same part (its candles are read once), parts follow mint
    order, and a single mint larger than the budget is a part of its own. One part means the
    whole partition is read at once; more bound peak memory by the part, not by the month.
    """
    if alerts.height == 0:
        return [alerts]
    per_mint = alerts.group_by("mint").len().sort("mint")
    part = np.zeros(per_mint.height, dtype=np.int64)
    budget = max(1, max_candles // max(1, candles_per_alert))  # alerts per part
    filled, current = 0, 0
    for i, n in enumerate(per_mint.get_column("len").to_list()):
        if filled and filled + n > budget:
            current, filled = current + 1, 0
        part[i] = current
        filled += n
    if current == 0:
        return [alerts]
    labelled = alerts.join(
        per_mint.select("mint", pl.Series("_part", part)), on="mint", how="left", maintain_order="left"
    )
    return [p.drop("_part") for p in labelled.partition_by("_part", maintain_order=True)]

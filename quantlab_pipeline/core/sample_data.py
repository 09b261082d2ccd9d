"""A deterministic, messy sample dataset: alerts from callers of different skill and memecoin-like
candles, as Arrow tables (`sources.sample_db` writes them to the DuckDB file the pipeline reads).

Everything is vectorised NumPy, a block of tokens at a time, so the reference month of docs/performance.md
"Performance" (20,000 alerts × 1,440 five-minute candles) is generated in seconds and in bounded
memory. The mess is deliberate — every data-quality rule of docs/inputs.md "Inputs" and of the truth layer
has rows to act on: gaps, tokens without candles, late first candles (delayed entries and
`no_entry`), repeated call ids (same month and across months), null call ids (derived ids), null
mints, a null timestamp, bad candles, and identical and conflicting duplicate candles.

Most tokens also trade before their first call (docs/research.md "Features"): `HISTORY_SHARE` of them have
26 to 48 hours of candles before it, the rest are brand new. The history comes from its own
random stream, so the candles from the first call on are the same with or without it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from quantlab_pipeline.core.durations import interval_ms
from quantlab_pipeline.core.errors import SpecError
from quantlab_pipeline.core.spec import date_to_ms, month_bounds, validate_month

# name, share of calls, probabilities of (runner, pump_dump, chop, bleed, rug): a few good callers
# (runners), a few bad ones (rugs and bleeds).
CALLERS: tuple[tuple[str, float, tuple[float, float, float, float, float]], ...] = (
    ("alpha_sniper", 0.10, (0.32, 0.25, 0.20, 0.13, 0.10)),
    ("whale_watcher", 0.12, (0.24, 0.28, 0.22, 0.14, 0.12)),
    ("steady_eddie", 0.15, (0.14, 0.26, 0.32, 0.16, 0.12)),
    ("moon_maxi", 0.18, (0.08, 0.30, 0.20, 0.22, 0.20)),
    ("degen_dan", 0.20, (0.05, 0.25, 0.15, 0.25, 0.30)),
    ("rug_radar", 0.15, (0.03, 0.20, 0.15, 0.27, 0.35)),
    ("late_larry", 0.10, (0.04, 0.16, 0.25, 0.35, 0.20)),
)
RUNNER, PUMP_DUMP, CHOP, BLEED, RUG = range(5)
CHAINS = ("solana", "base")
HORIZON_MS = 5 * 86_400_000  # every call's token gets five days of candles after it
_BASE_INTERVAL_MS = 300_000  # path parameters are written for 5-minute candles, then rescaled
_TOKENS_PER_BLOCK = 1_000
HISTORY_SHARE = 0.85  # tokens with candles before their first call; the others are brand new
HISTORY_HOURS = (26, 48)  # how far back their candles go
_HISTORY_STREAM = 1  # the history's random stream: np.random.default_rng([seed, _HISTORY_STREAM])
_BASE58 = np.frombuffer(b"123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz", dtype=np.uint8)


@dataclass(frozen=True)
class SampleTables:
    """The generated rows. `candle_blocks` yields the candles (columns `mint, chain, ts_ms, open,
    high, low, close, volume`; every row of `interval`) one block of tokens at a time, then the
    duplicate re-deliveries of all blocks: a single pass, so memory stays bounded by a block."""

    months: tuple[str, ...]
    interval: str
    alerts: pa.Table  # call_id, mint, caller_name, chain, alert_ts_ms
    candle_blocks: Iterator[pa.Table]
    tokens: int


@dataclass(frozen=True)
class _Tokens:
    """One row per token: the first call on it fixes its archetype and its first candle."""

    mint: np.ndarray  # str
    chain: np.ndarray  # int8 index into CHAINS
    archetype: np.ndarray  # int8
    first_candle_ts: np.ndarray  # int64: first interval boundary >= the first call
    n_candles: np.ndarray  # int64: covers every call on the token plus the horizon
    has_candles: np.ndarray  # bool


def _mints(rng: np.random.Generator, n: int) -> np.ndarray:
    """Base58 strings of 44 characters, like Solana token addresses."""
    chars = _BASE58[rng.integers(0, _BASE58.size, size=(n, 44))]
    return np.ascontiguousarray(chars).view("S44").ravel().astype(str)


def _month_ranges(months: list[str]) -> list[tuple[int, int]]:
    out = []
    for month in months:
        first, last = month_bounds(month)
        out.append((date_to_ms(first), date_to_ms(last) + 86_400_000))
    return out


def _alerts_and_tokens(
    rng: np.random.Generator, months: list[str], alerts_per_month: int, step_ms: int
) -> tuple[pa.Table, _Tokens]:
    """Alert rows (with their mess) and the tokens they call."""
    n_callers = len(CALLERS)
    caller_share = np.array([c[1] for c in CALLERS])
    caller_share /= caller_share.sum()
    archetype_p = np.array([c[2] for c in CALLERS])

    # Per month: fresh calls (one new token each), re-calls of a token by another caller, repeated
    # call ids, and two rows with a null mint.
    n_recall = max(1, alerts_per_month // 25)
    n_dup = max(1, alerts_per_month // 100)
    n_null_mint = 2
    n_fresh = max(1, alerts_per_month - n_recall - n_dup - n_null_mint)

    ts_parts, caller_parts = [], []
    for lo, hi in _month_ranges(months):
        ts_parts.append(np.sort(rng.integers(lo, hi, size=n_fresh)))
        caller_parts.append(rng.choice(n_callers, size=n_fresh, p=caller_share))
    fresh_ts = np.concatenate(ts_parts)
    fresh_caller = np.concatenate(caller_parts)
    n_tok = fresh_ts.size
    tok_ids = np.arange(n_tok)

    archetype = np.minimum((rng.random(n_tok)[:, None] > np.cumsum(archetype_p[fresh_caller], axis=1)).sum(axis=1), RUG)
    chain = (rng.random(n_tok) < 0.08).astype(np.int8)
    mint = _mints(rng, n_tok + 1)  # the last one belongs to the alert with a null timestamp

    # Re-calls: another caller, 30 minutes to 36 hours later; the token's candles cover both windows.
    recall_tok = rng.choice(tok_ids, size=n_recall * len(months), replace=False)
    recall_ts = fresh_ts[recall_tok] + rng.integers(1_800_000, 129_600_000, size=recall_tok.size)
    recall_caller = (fresh_caller[recall_tok] + rng.integers(1, n_callers, size=recall_tok.size)) % n_callers

    # Repeated call ids: half are the same row ingested twice, half a later repost (up to 10 days
    # later); the first repeat of the first month is always reposted in the next month.
    dup_src = np.concatenate(
        [rng.choice(np.arange(i * n_fresh, (i + 1) * n_fresh), size=n_dup, replace=False) for i in range(len(months))]
    )
    dup_delay = np.where(rng.random(dup_src.size) < 0.5, 0, rng.integers(3_600_000, 864_000_000, size=dup_src.size))
    if len(months) > 1:
        first_month_end = _month_ranges(months[:1])[0][1]
        dup_delay[0] = first_month_end - fresh_ts[dup_src[0]] + rng.integers(3_600_000, 172_800_000)

    null_mint_ts = np.concatenate([rng.integers(lo, hi, size=n_null_mint) for lo, hi in _month_ranges(months)])

    first_candle_ts = -(-fresh_ts // step_ms) * step_ms
    last_call_ts = fresh_ts.copy()
    np.maximum.at(last_call_ts, recall_tok, recall_ts)
    last_boundary = -(-last_call_ts // step_ms) * step_ms
    n_candles = (last_boundary - first_candle_ts) // step_ms + HORIZON_MS // step_ms
    has_candles = rng.random(n_tok) >= 0.02
    tokens = _Tokens(mint[:n_tok], chain, archetype.astype(np.int8), first_candle_ts, n_candles, has_candles)

    n_ids = n_tok + recall_tok.size + null_mint_ts.size + 1
    call_id = np.array([f"{x:016x}" for x in rng.integers(0, 2**63, size=n_ids)], dtype=object)
    fresh_ids = call_id[:n_tok].copy()
    no_id = rng.random(n_tok) < 0.03
    no_id[dup_src] = False  # a repeated call needs an explicit id
    fresh_ids[no_id] = None  # derived from (mint, alert_ts_ms, caller_name)
    recall_ids = call_id[n_tok : n_tok + recall_tok.size]
    null_mint_ids = call_id[n_tok + recall_tok.size : -1]

    caller_names = np.array([c[0] for c in CALLERS], dtype=object)
    chain_names = np.array(CHAINS, dtype=object)
    rows_call_id = np.concatenate([fresh_ids, recall_ids, fresh_ids[dup_src], null_mint_ids, call_id[-1:]])
    mint = mint.astype(object)
    rows_mint = np.concatenate([mint[:n_tok], mint[recall_tok], mint[dup_src], [None] * null_mint_ts.size, mint[-1:]])
    rows_caller = caller_names[
        np.concatenate(
            [fresh_caller, recall_caller, fresh_caller[dup_src], rng.integers(0, n_callers, null_mint_ts.size), [0]]
        )
    ]
    rows_chain = chain_names[
        np.concatenate([chain, chain[recall_tok], chain[dup_src], np.zeros(null_mint_ts.size + 1, int)])
    ]
    rows_ts = np.concatenate([fresh_ts, recall_ts, fresh_ts[dup_src] + dup_delay, null_mint_ts, [0]])
    n_rows = rows_ts.size
    rows_caller[rng.random(n_rows) < 0.01] = None  # defaults to 'unknown'
    rows_chain[rng.random(n_rows) < 0.01] = None  # defaults to 'solana'
    ts_valid = np.ones(n_rows, dtype=bool)
    ts_valid[-1] = False  # one alert with no timestamp

    alerts = pa.table(
        {
            "call_id": pa.array(rows_call_id, type=pa.string()),
            "mint": pa.array(rows_mint, type=pa.string()),
            "caller_name": pa.array(rows_caller, type=pa.string()),
            "chain": pa.array(rows_chain, type=pa.string()),
            "alert_ts_ms": pa.array(rows_ts.astype(np.int64), mask=~ts_valid),
        }
    )
    return alerts, tokens


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def _candle_block(
    rng: np.random.Generator, tokens: _Tokens, sel: np.ndarray, step_ms: int
) -> tuple[pa.Table, pa.Table]:
    """Candles of the tokens `sel` (in token order), and the duplicate rows to append at the end."""
    n_per = tokens.n_candles[sel]
    n_tok = sel.size
    total = int(n_per.sum())
    starts = np.zeros(n_tok, dtype=np.int64)
    np.cumsum(n_per[:-1], out=starts[1:])
    tok = np.repeat(np.arange(n_tok), n_per)
    t = np.arange(total, dtype=np.int64) - np.repeat(starts, n_per)
    scale = step_ms / _BASE_INTERVAL_MS  # 5-minute parameters rescaled to the interval
    horizon = HORIZON_MS // step_ms

    kind = tokens.archetype[sel]
    mu = (
        np.select([kind == BLEED, kind == CHOP], [rng.uniform(-0.0025, -0.0008, n_tok), np.zeros(n_tok)], 0.0001)
        * scale
    )
    sigma = rng.uniform(0.006, 0.02, n_tok) * np.sqrt(scale) * np.where(kind == CHOP, 0.6, 1.0)
    # Up to two smooth level shifts per token: +log(peak) around c1, -log(drop) around c2.
    up = np.zeros(n_tok)
    down = np.zeros(n_tok)
    c1 = rng.uniform(0.01, 0.5, n_tok) * horizon
    w1 = rng.uniform(2, 60, n_tok) / scale
    c2 = c1 + rng.uniform(0.05, 0.4, n_tok) * horizon
    w2 = rng.uniform(1, 80, n_tok) / scale
    is_runner, is_pump, is_rug = kind == RUNNER, kind == PUMP_DUMP, kind == RUG
    up[is_runner] = rng.uniform(np.log(3.0), np.log(60.0), is_runner.sum())
    down[is_runner] = rng.uniform(0.0, np.log(3.0), is_runner.sum())
    up[is_pump] = rng.uniform(np.log(1.4), np.log(4.0), is_pump.sum())
    down[is_pump] = up[is_pump] + rng.uniform(np.log(1.2), np.log(5.0), is_pump.sum())
    up[is_rug] = rng.uniform(0.0, np.log(1.5), is_rug.sum())
    down[is_rug] = up[is_rug] + rng.uniform(np.log(30.0), np.log(300.0), is_rug.sum())
    w2[is_rug] = rng.uniform(0.3, 2.0, is_rug.sum()) / scale  # a rug is a cliff

    steps = rng.standard_normal(total)
    steps *= sigma[tok]
    steps += mu[tok]
    log_close = np.cumsum(steps)
    log_close -= np.repeat(log_close[starts] - steps[starts], n_per)
    del steps
    log_close += up[tok] * _sigmoid((t - c1[tok]) / w1[tok])
    log_close -= down[tok] * _sigmoid((t - c2[tok]) / w2[tok])

    p_start = np.exp(rng.uniform(np.log(1e-5), np.log(5e-2), n_tok))
    close = p_start[tok] * np.exp(log_close)
    del log_close
    open_ = np.empty_like(close)
    open_[1:] = close[:-1]
    open_[starts] = p_start * np.exp(rng.normal(0.0, 0.003, n_tok))
    wick = sigma[tok] * 0.6
    high = np.maximum(open_, close) * np.exp(np.abs(rng.standard_normal(total)) * wick)
    low = np.minimum(open_, close) * np.exp(-np.abs(rng.standard_normal(total)) * wick)
    volume = np.exp(rng.normal(8.0, 1.0, total)) * (1.0 + 40.0 * np.abs(np.log(close / open_)))
    del wick

    # Gaps: 3% of tokens start 1-2 candles late (delayed entry), 1% 4-10 late (no entry with the
    # default 3-candle delay), 5% have one hole of 5-60 candles, and 0.3% of candles are missing.
    delay = np.zeros(n_tok, dtype=np.int64)
    r = rng.random(n_tok)
    delay[r < 0.03] = rng.integers(1, 3, (r < 0.03).sum())
    delay[(r >= 0.03) & (r < 0.04)] = rng.integers(4, 11, ((r >= 0.03) & (r < 0.04)).sum())
    hole_at = np.where(rng.random(n_tok) < 0.05, rng.uniform(0.02, 0.9, n_tok) * horizon, horizon * 10).astype(np.int64)
    hole_len = (rng.uniform(0.0035, 0.042, n_tok) * horizon).astype(np.int64) + 1
    keep = t >= delay[tok]
    keep &= (t < hole_at[tok]) | (t >= hole_at[tok] + hole_len[tok])
    keep &= rng.random(total) >= 0.003

    ts = tokens.first_candle_ts[sel][tok] + t * step_ms
    cols = {"tok": tok, "ts": ts, "open": open_, "high": high, "low": low, "close": close, "volume": volume}
    cols = {k: v[keep] for k, v in cols.items()}
    n = cols["ts"].size

    # A few bad candles: zero open, NaN close, high below the body, low above it, negative low.
    bad = rng.choice(n, size=min(n, 1 + n_tok // 250), replace=False)
    for i, row in enumerate(bad):
        case = i % 5
        if case == 0:
            cols["open"][row] = 0.0
        elif case == 1:
            cols["close"][row] = np.nan
        elif case == 2:
            cols["high"][row] = max(cols["open"][row], cols["close"][row]) * 0.9
        elif case == 3:
            cols["low"][row] = min(cols["open"][row], cols["close"][row]) * 1.1
        else:
            cols["low"][row] = -cols["low"][row]

    # Duplicate rows, appended at the end like late re-deliveries: identical copies, and conflicting
    # ones (another valid close and volume) where the highest volume must win.
    n_dup = min(n, 1 + n_tok // 250)
    ident = rng.choice(n, size=n_dup, replace=False)
    confl = rng.choice(n, size=n_dup, replace=False)
    dups = {k: np.concatenate([v[ident], v[confl]]) for k, v in cols.items()}
    lo, hi = dups["low"][n_dup:], dups["high"][n_dup:]
    dups["close"][n_dup:] = lo + rng.random(n_dup) * (hi - lo)
    dups["volume"][n_dup:] *= rng.uniform(0.3, 3.0, n_dup)

    return _to_arrow(tokens, sel, cols), _to_arrow(tokens, sel, dups)


def _history_block(
    rng: np.random.Generator, tokens: _Tokens, sel: np.ndarray, block: pa.Table, step_ms: int
) -> pa.Table:
    """Candles before the first call of the tokens `sel`: a quieter random walk that ends at the
    open of the token's first candle in `block`, up to the interval boundary before the call."""
    n_tok = sel.size
    hours = rng.uniform(*HISTORY_HOURS, n_tok)
    n_per = np.where(rng.random(n_tok) < HISTORY_SHARE, (hours * 3_600_000 // step_ms).astype(np.int64), 0)
    tok_of_row = block.column("mint").combine_chunks().indices.to_numpy()
    seen, first = np.unique(tok_of_row, return_index=True)
    has_rows = np.zeros(n_tok, dtype=bool)
    has_rows[seen] = True
    n_per[~has_rows] = 0  # every candle of the token was dropped: nothing to anchor on
    anchor = np.ones(n_tok)
    anchor[seen] = block.column("open").to_numpy()[first]

    total = int(n_per.sum())
    tok = np.repeat(np.arange(n_tok), n_per)
    ends = np.cumsum(n_per)
    back = np.repeat(ends, n_per) - np.arange(total)  # candles from this one to the first call: n..1
    scale = step_ms / _BASE_INTERVAL_MS
    sigma = rng.uniform(0.004, 0.012, n_tok) * np.sqrt(scale)
    steps = rng.standard_normal(total) * sigma[tok]
    # The last history candle closes at the anchor (the next candle's open); each earlier close is
    # the anchor walked back through the log returns of the candles after it: with `walked` the
    # sum of a token's steps from this candle to its last, log close = log anchor - (walked - step).
    suffix = np.concatenate([np.cumsum(steps[::-1])[::-1], [0.0]])
    walked = suffix[:-1] - np.repeat(suffix[ends], n_per)
    close = anchor[tok] * np.exp(-(walked - steps))
    open_ = close * np.exp(-steps)
    wick = sigma[tok] * 0.6
    high = np.maximum(open_, close) * np.exp(np.abs(rng.standard_normal(total)) * wick)
    low = np.minimum(open_, close) * np.exp(-np.abs(rng.standard_normal(total)) * wick)
    volume = np.exp(rng.normal(6.5, 1.0, total)) * (1.0 + 40.0 * np.abs(steps))
    ts = tokens.first_candle_ts[sel][tok] - back * step_ms
    keep = rng.random(total) >= 0.003
    cols = {"tok": tok, "ts": ts, "open": open_, "high": high, "low": low, "close": close, "volume": volume}
    return _to_arrow(tokens, sel, {k: v[keep] for k, v in cols.items()})


def _to_arrow(tokens: _Tokens, sel: np.ndarray, cols: dict[str, np.ndarray]) -> pa.Table:
    """Mint and chain as dictionary columns: one string per token, not per candle."""
    tok = cols["tok"].astype(np.int32)
    mints = pa.array(tokens.mint[sel], type=pa.string())
    chains = pa.array(list(CHAINS), type=pa.string())
    return pa.table(
        {
            "mint": pa.DictionaryArray.from_arrays(pa.array(tok), mints),
            "chain": pa.DictionaryArray.from_arrays(pa.array(tokens.chain[sel][tok]), chains),
            "ts_ms": cols["ts"],
            "open": cols["open"],
            "high": cols["high"],
            "low": cols["low"],
            "close": cols["close"],
            "volume": cols["volume"],
        }
    )


def generate_sample_tables(
    months: list[str], *, alerts_per_month: int, seed: int, interval: str = "5m"
) -> SampleTables:
    """The sample rows of `months`; the same arguments always produce the same rows. Bad arguments
    are one `SpecError` line, raised before anything is generated."""
    months = sorted({validate_month(m) for m in months})
    if not months:
        raise SpecError("months: give at least one month")
    if alerts_per_month < 10:
        raise SpecError(f"alerts_per_month: must be at least 10, got {alerts_per_month}")
    step_ms = interval_ms(interval)
    if HORIZON_MS % step_ms:
        raise SpecError(f"interval: {interval!r} does not divide the 5-day horizon of the sample candles")
    rng = np.random.default_rng(seed)
    alerts, tokens = _alerts_and_tokens(rng, months, alerts_per_month, step_ms)
    history = np.random.default_rng([seed, _HISTORY_STREAM])
    blocks = _candle_blocks(rng, history, tokens, step_ms)
    return SampleTables(tuple(months), interval, alerts, blocks, int(tokens.mint.size))


def _candle_blocks(
    rng: np.random.Generator, history: np.random.Generator, tokens: _Tokens, step_ms: int
) -> Iterator[pa.Table]:
    """Per block of tokens their history, then their candles from the first call on (so a mint's
    rows arrive in time order), then all the duplicate re-deliveries."""
    with_candles = np.flatnonzero(tokens.has_candles)
    duplicates = []
    for lo in range(0, with_candles.size, _TOKENS_PER_BLOCK):
        sel = with_candles[lo : lo + _TOKENS_PER_BLOCK]
        block, dups = _candle_block(rng, tokens, sel, step_ms)
        yield _history_block(history, tokens, sel, block, step_ms)
        yield block
        duplicates.append(dups)
    if duplicates:
        yield pa.concat_tables(duplicates)

"""The catalog sync's storage-level cost as the number of runs grows (docs/performance.md
"Catalog sync at scale"): one new run, reconciled incrementally through the journal, at N run
directories — and, for comparison, a full reconcile and the sensor's safety-net stat of every
terminal directory.

The N directories are synthesised (completed path-only months with two small Parquet artifacts,
recorded as the run-directory writer records them); the first sync of the new catalog validates
them all, hashes included. Every figure is the median of `--repeat` samples with min and max.

    .venv/bin/python bench/catalog_sync.py                  # N = 20, 1,000, 10,000
    .venv/bin/python bench/catalog_sync.py --sizes 20,1000 --repeat 5
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import tempfile
import time
import uuid
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from measure import summarize

from quantlab_pipeline.storage.catalog import sync_catalog, terminal_fingerprint
from quantlab_pipeline.storage.journal import Journal

_ARTIFACTS = {"alerts": "inputs/alerts.parquet", "paths": "truth/paths.parquet"}


def _parquet() -> bytes:
    buf = io.BytesIO()
    pq.write_table(pa.table({"call_id": ["a", "b", "c"], "x": [1, 2, 3]}), buf)
    return buf.getvalue()


def make_run(runs: Path, month: str, data: bytes) -> str:
    """A completed path-only month as the writer leaves it: artifacts, run.json, then _SUCCESS."""
    run_id = str(uuid.uuid4())
    run_dir = runs / month / f"run_id={run_id}"
    sha = hashlib.sha256(data).hexdigest()
    for rel in _ARTIFACTS.values():
        (run_dir / rel).parent.mkdir(parents=True, exist_ok=True)
        (run_dir / rel).write_bytes(data)
    manifest = {
        "run_id": run_id,
        "month": month,
        "run_type": "path-only",
        "status": "completed",
        "created_at": "2024-02-01T10:00:00Z",
        "started_at": "2024-02-01T10:00:00Z",
        "completed_at": "2024-02-01T10:05:00Z",
        "schema_version": {"manifest": "1.0.0", "artifacts": "1.0.0"},
        "spec": {"run_id": run_id, "run_type": "path-only", "interval": "5m", "features": False},
        "dataset": {"from": f"{month}-01", "to": f"{month}-28", "interval": "5m", "calls_count": 3},
        "provenance": {"git_commit": "abc", "git_branch": "main", "git_dirty": False, "dagster_runs": {}},
        "timing": {"alerts_ms": 1, "paths_ms": 1, "total_ms": 2},
        "artifacts": {
            name: {"path": rel, "rows": 3, "bytes": len(data), "sha256": sha, "inputs": {}}
            for name, rel in _ARTIFACTS.items()
        },
        "logs": {"stdout": "logs/stdout.txt", "stderr": "logs/stderr.txt"},
    }
    body = (json.dumps(manifest, indent=2) + "\n").encode()
    (run_dir / "run.json").write_bytes(body)
    marker = {"run_id": run_id, "month": month, "manifest_sha256": hashlib.sha256(body).hexdigest()}
    (run_dir / "_SUCCESS").write_text(json.dumps(marker))
    return run_id


def _timed(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def measure(n: int, repeat: int, root: Path) -> dict:
    runs, db = root / "runs", root / "catalog.duckdb"
    data = _parquet()
    months = [f"{2015 + i // 12}-{i % 12 + 1:02d}" for i in range(120)]
    journal = Journal(runs)
    for i in range(n):
        run_id = make_run(runs, months[i % len(months)], data)
    journal.append(months[(n - 1) % len(months)], run_id, "completed")  # the journal exists
    first = _timed(lambda: sync_catalog(db, runs))  # a new catalog: every directory, hashes included
    one_new = []
    for i in range(repeat):
        month = months[(n + i) % len(months)]
        journal.append(month, make_run(runs, month, data), "completed")
        report = None

        def incremental() -> None:
            nonlocal report
            report = sync_catalog(db, runs)

        one_new.append(_timed(incremental))
        assert report is not None and not report.full and len(report.registered) == 1, report
    full = [_timed(lambda: sync_catalog(db, runs, full=True)) for _ in range(repeat)]
    stat_all = [_timed(lambda: terminal_fingerprint(runs)) for _ in range(repeat)]
    return {
        "runs": n,
        "first_sync_s": first,
        "incremental_one_new_s": summarize(one_new, "s"),
        "full_sync_s": summarize(full, "s"),
        "sensor_stat_all_s": summarize(stat_all, "s"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="20,1000,10000")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    rows = []
    for n in [int(x) for x in args.sizes.split(",")]:
        with tempfile.TemporaryDirectory(prefix="ql-catalog-bench-") as tmp:
            rows.append(measure(n, args.repeat, Path(tmp)))
    print(f"{'runs':>7} {'first sync':>11} {'1 new (incremental)':>24} {'full reconcile':>20} {'sensor stat-all':>20}")
    for r in rows:
        inc, full, stat = r["incremental_one_new_s"], r["full_sync_s"], r["sensor_stat_all_s"]
        print(
            f"{r['runs']:>7} {r['first_sync_s']:>10.2f}s "
            f"{inc['median'] * 1000:>9.1f} ms ({inc['min'] * 1000:.1f}–{inc['max'] * 1000:.1f}) "
            f"{full['median']:>8.3f} s ({full['min']:.2f}–{full['max']:.2f}) "
            f"{stat['median']:>8.3f} s ({stat['min']:.2f}–{stat['max']:.2f})"
        )
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
